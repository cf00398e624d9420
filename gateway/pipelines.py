"""Pipeline specs: named steps over components, bound to earlier steps' outputs, forming a DAG.

A spec (``configs/pipelines/<name>.yaml`` or ``POST /pipelines``)::

    name: experiment-review
    params:                          # run inputs, with defaults (a run may override them)
      alpha: 0.05
    steps:
      - id: ab
        component: modern_ab_testing_service
        input: {control: ..., treatment: ..., alpha: $params.alpha}
      - id: insights
        component: insight_generation_engine
        input: {upstream: {ab: $steps.ab}}          # a whole result, or a field: $steps.ab.p_value
        timeout_s: 30
        retries: 2
        on_failure: continue

A value that is exactly ``$steps.<id>[.<field>…]`` or ``$params.<name>[.<field>…]`` is replaced, when the
step runs, by that step's ``component_result`` (or a field of it; list items by index) or the run's
parameter. Bindings make their steps dependencies; ``depends_on`` adds ordering-only ones. Independent
steps run in parallel.

:func:`validate` checks a spec against the registry before anything runs: unknown components, fields the
component's input schema does not have, missing required fields, static values its schema refuses,
bindings to unknown steps or to fields the producing component's output schema does not have, and
cycles — each a 422 naming the field (``steps[2].input.alpha``).
"""

from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.registry import ComponentEntry
from mlmesh.errors import InvalidInput, describe_validation_errors

__all__ = [
    "BINDING",
    "PipelineSpec",
    "StepSpec",
    "bind_params",
    "binding_of",
    "dependencies",
    "load_pipeline_files",
    "parse_spec",
    "resolve_bindings",
    "validate",
]

SLUG = r"^[a-z0-9][a-z0-9_-]{0,63}$"
BINDING = re.compile(r"^\$(steps|params)\.([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_-]+)*)$")
MAX_STEPS = 500


class StepSpec(BaseModel):
    """One step: a component, its input (static values and bindings), and its failure policy."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=SLUG, description="unique within the pipeline")
    component: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$")
    input: dict[str, Any] = Field(default_factory=dict, description="the component's input; values may be bindings")
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_STEPS, description="ordering-only deps")
    timeout_s: float | None = Field(None, gt=0, le=3600, description="per attempt; the gateway's default if unset")
    retries: int = Field(2, ge=0, le=10, description="extra attempts after a retriable failure (503, 504, 429)")
    on_failure: Literal["fail", "continue"] = Field(
        "fail", description="fail: the run fails and pending steps are cancelled; continue: only dependents skip"
    )


class PipelineSpec(BaseModel):
    """A pipeline: its name, parameters with defaults, and steps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SLUG)
    description: str = Field("", max_length=2000)
    params: dict[str, Any] = Field(default_factory=dict, description="run parameters and their defaults")
    steps: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS)

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen: set[str] = set()
        for i, step in enumerate(steps):
            if step.id in seen:
                raise ValueError(f"steps[{i}].id {step.id!r} is used twice")
            seen.add(step.id)
        return steps

    @model_validator(mode="after")
    def _acyclic(self) -> PipelineSpec:
        ids = {s.id for s in self.steps}
        for i, step in enumerate(self.steps):
            for j, dep in enumerate(step.depends_on):
                if dep not in ids:
                    raise ValueError(f"steps[{i}].depends_on[{j}]: unknown step {dep!r}")
        try:
            tuple(TopologicalSorter(dependencies(self)).static_order())
        except CycleError as exc:
            raise ValueError(f"steps form a cycle: {' → '.join(exc.args[1])}") from None
        return self


def parse_spec(raw: Any, *, source: str = "body") -> PipelineSpec:
    """A :class:`PipelineSpec` from decoded JSON/YAML, or 422 naming the field."""
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(source, describe_validation_errors(exc.errors(include_url=False))) from None


def load_pipeline_files(directory: Path) -> tuple[dict[str, PipelineSpec], dict[str, str]]:
    """Every ``*.yaml`` / ``*.yml`` spec in ``directory``: the good ones, and each bad file's problem."""
    specs: dict[str, PipelineSpec] = {}
    problems: dict[str, str] = {}
    if not directory.is_dir():
        return specs, problems
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            spec = parse_spec(yaml.safe_load(path.read_text(encoding="utf-8")), source=path.name)
        except (yaml.YAMLError, InvalidInput, OSError) as exc:
            problems[path.name] = str(getattr(exc, "detail", exc))
            continue
        if spec.name != path.stem:
            problems[path.name] = f"name {spec.name!r} must equal the file name {path.stem!r}"
        elif spec.name in specs:
            problems[path.name] = f"pipeline {spec.name!r} is defined twice"
        else:
            specs[spec.name] = spec
    return specs, problems


def binding_of(value: Any) -> tuple[str, str, list[str]] | None:
    """``("steps", "ab", ["p_value"])`` for ``"$steps.ab.p_value"``; None for a static value."""
    if not isinstance(value, str):
        return None
    match = BINDING.match(value)
    if match is None:
        return None
    kind, name, rest = match.groups()
    return kind, name, [p for p in rest.split(".") if p]


def _walk(value: Any, where: str) -> list[tuple[str, Any]]:
    """Every binding inside ``value`` (nested dicts and lists), with where it sits."""
    if binding_of(value) is not None:
        return [(where, value)]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in _walk(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [b for i, v in enumerate(value) for b in _walk(v, f"{where}[{i}]")]
    return []


def dependencies(spec: PipelineSpec) -> dict[str, set[str]]:
    """Each step's dependencies: its ``depends_on`` plus the steps its bindings read."""
    deps: dict[str, set[str]] = {}
    for step in spec.steps:
        bound = {binding_of(v)[1] for _, v in _walk(step.input, "input") if binding_of(v)[0] == "steps"}  # type: ignore[index]
        deps[step.id] = set(step.depends_on) | bound
    return deps


def resolve_bindings(value: Any, results: dict[str, Any], params: dict[str, Any], *, where: str) -> Any:
    """``value`` with every binding replaced by the step result or parameter it names.

    Raises KeyError with a message naming the binding when the result lacks the field.
    """
    parsed = binding_of(value)
    if parsed is not None:
        kind, name, path = parsed
        current: Any = results[name] if kind == "steps" else params[name]
        for part in path:
            if isinstance(current, dict) and part in current:
                current = current[part]
            elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                raise KeyError(f"{where}: {value} — the {kind[:-1]} {name!r} has no field {part!r}")
        return current
    if isinstance(value, dict):
        return {k: resolve_bindings(v, results, params, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_bindings(v, results, params, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def bind_params(spec: PipelineSpec, params: dict[str, Any]) -> PipelineSpec:
    """``spec`` with every ``$params`` binding replaced by its value (``$steps`` bindings stay).

    Validating this copy checks a run's parameters against the schemas of the inputs they feed.
    """

    def substitute(value: Any, where: str) -> Any:
        parsed = binding_of(value)
        if parsed is not None:
            return resolve_bindings(value, {}, params, where=where) if parsed[0] == "params" else value
        if isinstance(value, dict):
            return {k: substitute(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [substitute(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    steps = [s.model_copy(update={"input": substitute(s.input, f"{s.id}.input")}) for s in spec.steps]
    return spec.model_copy(update={"steps": steps})


# --- validation against the registry's schemas ---------------------------------------------------------


def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            break
        schema = root.get("$defs", {}).get(ref.rsplit("/", 1)[1], {})
    return schema


def _variant(schema: dict[str, Any], static: dict[str, Any], where: str) -> dict[str, Any]:
    """The object schema that applies: for a discriminated union, the member named by its discriminator."""
    top = _deref(schema, schema)
    members = top.get("oneOf") or top.get("anyOf")
    if not members:
        return top
    discriminator = top.get("discriminator", {})
    key = discriminator.get("propertyName")
    if key is None:
        return {}  # an undiscriminated union: leave the check to the component
    if key not in static or binding_of(static[key]) is not None:
        options = sorted(discriminator.get("mapping", {}))
        raise InvalidInput(f"{where}.{key}", f"is required and must be static, one of {options}")
    ref = discriminator.get("mapping", {}).get(static[key])
    if ref is None:
        options = sorted(discriminator.get("mapping", {}))
        raise InvalidInput(f"{where}.{key}", f"must be one of {options}; got {static[key]!r}")
    return _deref({"$ref": ref}, schema)


def _check_input(step: StepSpec, entry: ComponentEntry, where: str) -> None:
    schema = entry.manifest["input_schema"]
    variant = _variant(schema, step.input, f"{where}.input")
    properties = variant.get("properties")
    if properties is None:
        return
    for key in step.input:
        if key not in properties:
            raise InvalidInput(
                f"{where}.input.{key}", f"{entry.name} has no input field {key!r}; it has {sorted(properties)}"
            )
    for key in variant.get("required", []):
        if key not in step.input:
            raise InvalidInput(f"{where}.input.{key}", f"is required by {entry.name}")
    for key, value in step.input.items():
        if _walk(value, key):
            continue  # bound (wholly or in part) at run time; the component validates it then
        sub = {**properties[key], "$defs": schema.get("$defs", {})}
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(sub).iter_errors(value))
        if error is not None:
            inner = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise InvalidInput(f"{where}.input.{key}{inner}", error.message)


def _output_fields(entry: ComponentEntry) -> set[str] | None:
    schema = entry.manifest["output_schema"]
    top = _deref(schema, schema)
    if "properties" in top:
        return set(top["properties"])
    return None  # a union of outputs (per operation): any field may be there


def validate(spec: PipelineSpec, components: dict[str, ComponentEntry]) -> None:
    """Check ``spec`` against the registry (see the module docstring); 422 naming the field."""
    by_id = {s.id: s for s in spec.steps}
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        entry = components.get(step.component)
        if entry is None:
            raise InvalidInput(f"{where}.component", f"unknown component {step.component!r}")
        _check_input(step, entry, where)
        for at, value in _walk(step.input, "input"):
            kind, name, path = binding_of(value)  # type: ignore[misc]
            if kind == "params":
                if name not in spec.params:
                    raise InvalidInput(f"{where}.{at}", f"{value}: no parameter {name!r} (declare it under params)")
                continue
            producer = by_id.get(name)
            if producer is None or name == step.id:
                raise InvalidInput(f"{where}.{at}", f"{value}: no earlier step {name!r}")
            fields = _output_fields(components[producer.component]) if producer.component in components else None
            if path and fields is not None and path[0] not in fields:
                raise InvalidInput(
                    f"{where}.{at}",
                    f"{value}: {producer.component} has no output field {path[0]!r}; it has {sorted(fields)}",
                )
