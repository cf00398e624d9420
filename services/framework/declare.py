"""Declaring a component: one decorator, checked at import.

    @component(
        "StructuralAnalyzer",
        tier="tier3",
        capabilities=["prompt_structure"],
        example={"prompt": "# Task\\nSummarise the text."},
    )
    def structural_analyzer(request: StructuralInput) -> StructuralOutput:
        \"\"\"Structure of a prompt: sections, lists, code, XML tags.\"\"\"

The function's name must be the snake_case of the class name; its first
parameter's annotation is the input model and its return annotation the output
model; an optional second parameter receives the :class:`RunContext`. From this
one declaration the component gets its route, OpenAPI schema, manifest entry
and the contract tests.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, RootModel, ValidationError

from services.framework.models import ComponentOutput

__all__ = ["Component", "DeclarationError", "component", "registered", "snake_case"]

TIERS = ("tier1", "tier2", "tier3", "tier4")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_CAPABILITY = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_REGISTRY: dict[str, Component] = {}


class DeclarationError(TypeError):
    """A component declaration is malformed or duplicated."""


def snake_case(class_name: str) -> str:
    """``ModernABTestingService`` → ``modern_ab_testing_service``."""
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", class_name)
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words)
    return words.lower()


@dataclass(frozen=True)
class Component:
    """A declared component: its metadata and the plain function that computes it."""

    name: str
    class_name: str
    tier: str
    capabilities: tuple[str, ...]
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    version: str
    example: dict[str, Any]
    fn: Callable[..., Any]
    takes_context: bool
    is_async: bool
    # False for stateful or timing components whose result legitimately differs between runs.
    deterministic: bool = True
    examples: tuple[dict[str, Any], ...] = field(default=())
    # Statuses this component answers beyond the common ones, with what they mean (for the docs).
    errors: tuple[tuple[int, str], ...] = field(default=())

    def __call__(self, *args: Any) -> Any:
        """Call the plain function (no HTTP), e.g. ``structural_analyzer(StructuralInput(...))``."""
        return self.fn(*args)

    @property
    def summary(self) -> str:
        return self.description.split("\n", 1)[0]

    def manifest(self) -> dict[str, Any]:
        """The component's entry in a service manifest (``GET /components``)."""
        return {
            "name": self.name,
            "class_name": self.class_name,
            "tier": self.tier,
            "capabilities": list(self.capabilities),
            "description": self.description,
            "version": self.version,
            "deterministic": self.deterministic,
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
            "example": self.example,
        }


def _forbids_extra(model: Any) -> bool:
    """Whether ``model`` (or every member of a root union) rejects unknown fields."""
    if isinstance(model, type) and issubclass(model, RootModel):
        root = model.model_fields["root"].annotation
        return _forbids_extra(root)
    origin = typing.get_origin(model)
    if origin is typing.Annotated:
        return _forbids_extra(typing.get_args(model)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_forbids_extra(arg) for arg in typing.get_args(model))
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_config.get("extra") == "forbid"
    return False


def _signature_models(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel], bool]:
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if not 1 <= len(params) <= 2:
        raise DeclarationError(f"{fn.__name__}: takes (request) or (request, ctx); got {params}")
    input_model = hints.get(params[0])
    output_model = hints.get("return")
    if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
        raise DeclarationError(f"{fn.__name__}: first parameter must be annotated with a pydantic input model")
    if not (isinstance(output_model, type) and issubclass(output_model, ComponentOutput)):
        raise DeclarationError(f"{fn.__name__}: return annotation must be a ComponentOutput subclass")
    return input_model, output_model, len(params) == 2


def component(
    class_name: str,
    *,
    tier: str,
    capabilities: list[str],
    example: dict[str, Any],
    version: str = "1.0.0",
    deterministic: bool = True,
    examples: list[dict[str, Any]] | None = None,
    errors: dict[int, str] | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare the decorated function as a mesh component (see the module docstring).

    ``name`` is only for the catalogue's few names that are not the snake_case of
    their class (``AutoMLOrchestrator`` is ``automl_orchestrator``).
    """

    def decorate(fn: Callable[..., Any]) -> Component:
        where = f"component {class_name!r}"
        if name is not None and not _NAME.match(name):
            raise DeclarationError(f"{where}: name must be snake_case; got {name!r}")
        declared_name = name or snake_case(class_name)
        if fn.__name__ != declared_name:
            raise DeclarationError(
                f"{where}: function must be named {declared_name!r} (the component's name); got {fn.__name__!r}"
            )
        if tier not in TIERS:
            raise DeclarationError(f"{where}: tier must be one of {TIERS}; got {tier!r}")
        if not _VERSION.match(version):
            raise DeclarationError(f"{where}: version must look like 1.2.3; got {version!r}")
        if any(not 400 <= status <= 599 for status in errors or {}):
            raise DeclarationError(f"{where}: errors must map HTTP error statuses (4xx/5xx) to descriptions")
        if not capabilities or not all(_CAPABILITY.match(c) for c in capabilities):
            raise DeclarationError(f"{where}: capabilities must be non-empty snake_case words; got {capabilities!r}")
        description = inspect.cleandoc(fn.__doc__ or "")
        if not description:
            raise DeclarationError(f"{where}: needs a docstring (its first line is the OpenAPI summary)")
        input_model, output_model, takes_context = _signature_models(fn)
        if not _forbids_extra(input_model):
            raise DeclarationError(f"{where}: input model must forbid unknown fields (extend ComponentInput)")
        for sample in [example, *(examples or [])]:
            try:
                input_model.model_validate(sample)
            except ValidationError as exc:
                raise DeclarationError(f"{where}: example does not validate: {exc}") from exc
        if declared_name in _REGISTRY:
            raise DeclarationError(f"{where}: a component named {declared_name!r} is already declared")
        declared = Component(
            name=declared_name,
            class_name=class_name,
            tier=tier,
            capabilities=tuple(capabilities),
            description=description,
            input_model=input_model,
            output_model=output_model,
            version=version,
            example=example,
            fn=fn,
            takes_context=takes_context,
            is_async=inspect.iscoroutinefunction(fn),
            deterministic=deterministic,
            examples=tuple(examples or ()),
            errors=tuple(sorted((errors or {}).items())),
        )
        _REGISTRY[declared_name] = declared
        return declared

    return decorate


def registered() -> dict[str, Component]:
    """Every component declared so far (import the tier packages to declare theirs)."""
    return dict(_REGISTRY)
