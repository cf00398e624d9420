"""mlmesh: a local ML-pipeline orchestrator over a mesh of HTTP services."""

__version__ = "0.1.0"
