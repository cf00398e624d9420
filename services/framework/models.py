"""Base models for component inputs and outputs, and the shared wire types."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ComponentInput",
    "ComponentOutput",
    "Envelope",
    "FiniteFloat",
    "LocalMetadata",
    "Seed",
]

# Randomness always comes from a seed in the input (numpy's default_rng accepts any non-negative int).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="seed for every random draw of this run")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ComponentInput(BaseModel):
    """Base of every component input: unknown fields and NaN/infinity are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


class ComponentOutput(BaseModel):
    """Base of every component output: JSON-native, and never NaN or infinity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LocalMetadata(BaseModel):
    execution_time_ms: float
    peak_memory_mb: float
    output_files: list[str]
    component_version: str
    tier: str
    request_id: str | None


class Envelope(BaseModel):
    """The success envelope every ``POST /run/{component}`` answers with."""

    orchestrator_compatible: bool = True
    component: str
    component_result: dict[str, Any]
    local_metadata: LocalMetadata
