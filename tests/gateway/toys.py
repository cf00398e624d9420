"""Toy components for gateway tests (declared outside the tier packages, so no tier serves them by default)."""

from __future__ import annotations

import threading

from pydantic import Field

from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, component


class ToyAddInput(ComponentInput):
    a: FiniteFloat
    b: FiniteFloat = 0.0


class ToyAddOutput(ComponentOutput):
    total: float
    request_id: str | None


@component("ToyAdd", tier="tier3", capabilities=["testing"], example={"a": 1, "b": 2})
def toy_add(request: ToyAddInput, ctx: RunContext) -> ToyAddOutput:
    """Add two numbers (a gateway test fixture)."""
    return ToyAddOutput(total=request.a + request.b, request_id=ctx.request_id)


class ToyWaitInput(ComponentInput):
    seconds: float = Field(ge=0, le=30)


class ToyWaitOutput(ComponentOutput):
    waited: float


@component("ToyWait", tier="tier3", capabilities=["testing"], example={"seconds": 0})
def toy_wait(request: ToyWaitInput) -> ToyWaitOutput:
    """Block for a while, to exercise the gateway's timeouts."""
    threading.Event().wait(request.seconds)
    return ToyWaitOutput(waited=request.seconds)
