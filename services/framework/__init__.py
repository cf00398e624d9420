"""The component framework: declare a component once, get a route, schema, manifest entry and tests.

Public surface::

    component, Component, snake_case      declaring components
    ComponentInput, ComponentOutput       base models (unknown fields and NaN rejected)
    FiniteFloat, Seed, Numbers, FileRef   shared wire types
    RunContext                            what a run may ask of its service
    StateDB                               SQLite state in the data directory
    confine, load_numbers                 caller paths and arrays
    services.framework.app.create_app     the tier app factory
"""

from mlmesh.state import StateDB
from services.framework.arrays import FileRef, Numbers, load_numbers
from services.framework.context import RunContext
from services.framework.declare import Component, DeclarationError, component, registered, snake_case
from services.framework.models import ComponentInput, ComponentOutput, Envelope, FiniteFloat, Seed
from services.framework.paths import confine

__all__ = [
    "Component",
    "ComponentInput",
    "ComponentOutput",
    "DeclarationError",
    "Envelope",
    "FileRef",
    "FiniteFloat",
    "Numbers",
    "RunContext",
    "Seed",
    "StateDB",
    "component",
    "confine",
    "load_numbers",
    "registered",
    "snake_case",
]
