"""Memory admission control: estimate a request's memory from its shapes and refuse it before allocating.

**Estimate.** Each array costs ``np.dtype(dtype).itemsize × prod(shape)`` bytes, computed in exact
integer arithmetic (the same figure as ``np.empty(shape, dtype).nbytes``, without allocating). An array
whose byte size exceeds numpy's limit (2⁶³ − 1) is invalid (422). The ``computation`` adds the memory the
operation itself allocates on top of its inputs:

=====================  =============================================================================
``none``               the inputs only
``copy``               2 × inputs (the inputs and one copy)
``sort``               2 × inputs (``np.sort`` returns a sorted copy)
``argsort``            inputs + 8 bytes (intp index) per element
``concatenate``        inputs + the result: every element in the common dtype (``np.result_type``)
``elementwise``        inputs + one output of the broadcast shape in the common dtype
``matmul``             inputs + output: ``(…, n, k) @ (…, k, m)`` → ``(…, n, m)`` in the common dtype
                       (numpy's rules: 1-D operands promoted, batch dimensions broadcast)
``pairwise_distances`` inputs + ``n·m·8`` bytes for the float64 distance matrix of ``X (n, d)`` and
                       ``Y (m, d)``; with one array, ``n²·8`` (``·4`` when every input is float32, which
                       scikit-learn keeps)
=====================  =============================================================================

``overhead_bytes`` adds workspace the caller knows about.

**Budget.** ``budget_bytes`` when given, otherwise ``budget_fraction`` (default 0.5) of the machine's
memory: physical memory (``psutil.virtual_memory().total``), or the cgroup limit when the process runs
under a smaller one. The budget is a cap on the whole process (its RSS). It is tied to total rather
than currently available memory on purpose: a request larger than the budget can never run (413, do
not retry), while free memory changes from moment to moment (507, retry later).

**Verdict.** With ``free = min(system available, budget − RSS)``:

* estimate > budget → **413** Payload too large (the request alone exceeds the budget);
* estimate > free → **507** Insufficient storage (it fits the budget, not the memory free now);
* otherwise **admit**.

Every refusal carries the figures (estimate, budget, RSS, available) in its detail. The guard never
allocates the arrays it estimates. ``operation="status"`` reports the process RSS against the budget.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import psutil
from pydantic import BeforeValidator, Field, RootModel, ValidationInfo, field_validator

from mlmesh.errors import InvalidInput, MeshError, PayloadTooLarge
from services.framework import ComponentInput, ComponentOutput, component

__all__ = [
    "COMPUTATIONS",
    "ArrayEstimate",
    "ArraySpec",
    "InsufficientStorage",
    "MemoryCheckOp",
    "MemoryFigures",
    "MemoryGuardInput",
    "MemoryGuardOutput",
    "MemoryStatusOp",
    "array_bytes",
    "computation_bytes",
    "format_bytes",
    "memory_guard",
    "parse_dtype",
]

NUMPY_MAX_BYTES = 2**63 - 1  # numpy's largest array (bytes must fit in intp)
# Input bound for sizes and dimensions: 1 EB, exactly representable as a JSON/float64 number (2⁶³ − 1 is not,
# so a schema maximum of 2⁶³ − 1 would admit numbers above it).
MAX_INPUT = 10**18
MAX_DIMS = 64  # numpy 2's NPY_MAXDIMS
COMPUTATIONS = (
    "none",
    "copy",
    "sort",
    "argsort",
    "concatenate",
    "elementwise",
    "matmul",
    "pairwise_distances",
)
INDEX_BYTES = 8  # np.intp on 64-bit platforms
DISTANCE_BYTES = 8  # float64 distances
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


class InsufficientStorage(MeshError):
    """507: the request fits the budget but not the memory free right now."""

    status, title = 507, "Insufficient storage"


def parse_dtype(name: str) -> np.dtype:
    """``np.dtype(name)`` for a fixed-size dtype; ValueError with an actionable message otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deprecated aliases are refused rather than guessed
        try:
            dt = np.dtype(name)
        except (TypeError, ValueError, SyntaxError, OverflowError, KeyError, Warning) as exc:
            why = "a deprecated alias" if isinstance(exc, Warning) else "unknown"
            raise ValueError(
                f"dtype {name!r} is {why}; use a numpy name like 'float64', 'int32', 'bool', 'complex128', "
                "'U16' or 'S8'"
            ) from None
    if dt.hasobject:
        raise ValueError(f"dtype {name!r} holds Python objects, whose size cannot be estimated")
    if dt.itemsize == 0:
        raise ValueError(f"dtype {name!r} has no size; give one, e.g. 'U16' or 'S8'")
    return dt


def array_bytes(shape: list[int] | tuple[int, ...], dtype: np.dtype) -> int:
    """Exact ``itemsize × prod(shape)`` as a Python int (no overflow, no allocation)."""
    return dtype.itemsize * math.prod(shape)


def format_bytes(n: int | float) -> str:
    """Binary-prefixed size, e.g. ``7.45 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- inputs


def _integral(value: object) -> object:
    """Accept whole JSON numbers written as floats (``1e6``), as JSON Schema's ``integer`` does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Field before the validator, so the bounds land in the JSON schema as minimum/maximum.
Dim = Annotated[int, Field(ge=0, le=MAX_INPUT), BeforeValidator(_integral)]
Bytes = Annotated[int, Field(ge=0, le=MAX_INPUT), BeforeValidator(_integral)]
# The dtype names the schema admits: numpy's fixed-size scalar types by name or type code, sized strings,
# bytes and void, and datetime/timedelta with a unit. Each parses with np.dtype; anything else is a 422.
DTYPE_PATTERN = (
    r"^(?:bool|u?int(?:8|16|32|64)|float(?:16|32|64)|complex(?:64|128)|c?longdouble|u?intp|u?byte|u?short|u?intc"
    r"|u?long|u?longlong|half|single|double|csingle|cdouble|[<>=|]?(?:b1|[iu][1248]|f[248]|c(?:8|16))"
    r"|[USV][1-9][0-9]{0,5}|(?:datetime64|timedelta64|M8|m8)\[(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])$"
)


class ArraySpec(ComponentInput):
    """One array the request will hold: a name, a shape and a numpy dtype."""

    name: str = Field("array", min_length=1, max_length=128)
    dtype: str = Field(
        "float64",
        min_length=1,
        max_length=64,
        pattern=DTYPE_PATTERN,
        description="numpy dtype name, e.g. float64, int8, complex128, U16, S8, datetime64[ns]",
    )
    shape: list[Dim] = Field(max_length=MAX_DIMS, description="dimensions (≥ 0); [] is a scalar")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        parse_dtype(value)
        return value

    @field_validator("shape")
    @classmethod
    def _fits_numpy(cls, shape: list[int], info: ValidationInfo) -> list[int]:
        if "dtype" not in info.data:  # the dtype already failed; that error is reported
            return shape
        nbytes = array_bytes(shape, parse_dtype(info.data["dtype"]))
        if nbytes > NUMPY_MAX_BYTES:
            raise ValueError(
                f"{math.prod(shape)} elements of {info.data['dtype']} need {nbytes} bytes, more than numpy can "
                f"address ({NUMPY_MAX_BYTES}); the shape overflows"
            )
        return shape


class _BudgetFields(ComponentInput):
    budget_bytes: Annotated[int, Field(ge=1, le=MAX_INPUT), BeforeValidator(_integral)] | None = Field(
        None, description="process memory budget; default budget_fraction × memory"
    )
    budget_fraction: float = Field(
        0.5, gt=0, le=1, description="share of physical (or cgroup) memory used when budget_bytes is unset"
    )


class MemoryCheckOp(_BudgetFields):
    operation: Literal["check"]
    arrays: list[ArraySpec] = Field(min_length=1, max_length=256, description="arrays the request will hold")
    computation: Literal[
        "none", "copy", "sort", "argsort", "concatenate", "elementwise", "matmul", "pairwise_distances"
    ] = Field("none", description="what is done with the arrays (see the multipliers in the description)")
    overhead_bytes: Bytes = Field(0, description="extra workspace the caller knows about")


class MemoryStatusOp(_BudgetFields):
    operation: Literal["status"]


class MemoryGuardInput(RootModel[Annotated[MemoryCheckOp | MemoryStatusOp, Field(discriminator="operation")]]):
    """``check`` a request's estimate against the budget, or report the process ``status``."""


# --------------------------------------------------------------------------- outputs


class ArrayEstimate(ComponentOutput):
    name: str
    shape: list[int]
    dtype: str
    itemsize: int
    elements: int
    bytes: int


class MemoryFigures(ComponentOutput):
    budget_bytes: int
    budget_source: str
    rss_bytes: int = Field(description="resident set size of this process")
    system_total_bytes: int
    system_available_bytes: int = Field(description="psutil available, capped by the cgroup's headroom")
    cgroup_limit_bytes: int | None
    free_bytes: int = Field(description="min(system available, budget − RSS), at least 0")
    budget_used_fraction: float = Field(description="RSS / budget")


class MemoryGuardOutput(ComponentOutput):
    operation: Literal["check", "status"]
    verdict: Literal["admit"] | None = Field(None, description="check: admit (refusals are 413/507 errors)")
    level: Literal["ok", "warning", "critical"] = Field(description="RSS vs budget: warning ≥ 75 %, critical ≥ 90 %")
    estimate_bytes: int | None = None
    inputs_bytes: int | None = None
    computation: str | None = None
    computation_bytes: int | None = Field(None, description="memory the computation allocates beyond its inputs")
    computation_formula: str | None = None
    overhead_bytes: int | None = None
    arrays: list[ArrayEstimate] = Field(default_factory=list)
    headroom_after_bytes: int | None = Field(None, description="free − estimate")
    budget_fraction_after: float | None = Field(None, description="(RSS + estimate) / budget")
    figures: MemoryFigures
    summary: str


# --------------------------------------------------------------------------- estimate


def _broadcast(shapes: list[list[int]], field: str) -> list[int]:
    """numpy broadcasting of shapes (right-aligned; each dimension equal or 1)."""
    ndim = max((len(s) for s in shapes), default=0)
    out: list[int] = []
    for axis in range(1, ndim + 1):
        dims = {s[-axis] for s in shapes if len(s) >= axis} - {1}
        if len(dims) > 1:
            raise InvalidInput(field, f"shapes {shapes} do not broadcast (axis -{axis} has sizes {sorted(dims)})")
        out.append(dims.pop() if dims else 1)
    return out[::-1]


def _result_dtype(dtypes: list[np.dtype]) -> np.dtype:
    try:
        return np.result_type(*dtypes)
    except TypeError as exc:  # numpy's DTypePromotionError is a TypeError
        names = [str(d) for d in dtypes]
        raise InvalidInput("arrays", f"dtypes {names} have no common type: {exc}") from None


def computation_bytes(kind: str, shapes: list[list[int]], dtypes: list[np.dtype]) -> tuple[int, str]:
    """Bytes ``kind`` allocates beyond its inputs, and the formula used (InvalidInput on impossible shapes)."""
    sizes = [array_bytes(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    elements = [math.prod(s) for s in shapes]
    if kind == "none":
        return 0, "inputs"
    if kind in ("copy", "sort"):
        return sum(sizes), "2 × inputs"
    if kind == "argsort":
        return INDEX_BYTES * sum(elements), "inputs + 8 bytes × elements"
    if kind == "concatenate":
        dt = _result_dtype(dtypes)
        return dt.itemsize * sum(elements), f"inputs + Σ elements × {dt.itemsize} ({dt})"
    if kind == "elementwise":
        dt = _result_dtype(dtypes)
        out = _broadcast(shapes, "arrays")
        return array_bytes(out, dt), f"inputs + output {out} × {dt.itemsize} ({dt})"
    if kind == "matmul":
        if len(shapes) != 2:
            raise InvalidInput("arrays", f"matmul needs exactly two arrays; got {len(shapes)}")
        a, b = shapes
        if not a or not b:
            raise InvalidInput("arrays", "matmul operands must have at least one dimension")
        a2 = [1, *a] if len(a) == 1 else a
        b2 = [*b, 1] if len(b) == 1 else b
        if a2[-1] != b2[-2]:
            raise InvalidInput("arrays", f"matmul inner dimensions differ: {a} @ {b} ({a2[-1]} ≠ {b2[-2]})")
        out = [*_broadcast([a2[:-2], b2[:-2]], "arrays"), a2[-2], b2[-1]]
        if len(b) == 1:
            out.pop(-1)
        if len(a) == 1:
            out.pop(-2 if len(b) > 1 else -1)
        dt = _result_dtype(dtypes)
        return array_bytes(out, dt), f"inputs + output {out} × {dt.itemsize} ({dt})"
    if kind == "pairwise_distances":
        if len(shapes) not in (1, 2) or any(len(s) != 2 for s in shapes):
            raise InvalidInput("arrays", "pairwise_distances needs X (n, d) and optionally Y (m, d), both 2-D")
        if len(shapes) == 2 and shapes[0][1] != shapes[1][1]:
            raise InvalidInput("arrays", f"X and Y need the same number of columns; got {shapes[0]} and {shapes[1]}")
        n, m = shapes[0][0], shapes[-1][0]
        # scikit-learn keeps float32 when every input is float32; everything else gives float64.
        width = 4 if all(d == np.float32 for d in dtypes) else DISTANCE_BYTES
        kind_name = "float32" if width == 4 else "float64"
        return width * n * m, f"inputs + {n}·{m}·{width} ({kind_name} distance matrix)"
    raise InvalidInput("computation", f"unknown computation {kind!r}; expected one of {COMPUTATIONS}")


# --------------------------------------------------------------------------- measurements


def _read_int(path: str) -> int | None:
    """An integer from a cgroup file; None when it is missing, says ``max`` or is not a number."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup() -> tuple[int | None, int | None]:
    """(limit, usage) of this process's memory cgroup, when one limits it."""
    for limit_file, usage_file in _CGROUP_FILES:
        limit = _read_int(limit_file)
        if limit is not None:
            return limit, _read_int(usage_file)
    return None, None


def _figures(budget_bytes: int | None, budget_fraction: float) -> MemoryFigures:
    vm = psutil.virtual_memory()
    rss = int(psutil.Process().memory_info().rss)
    limit, usage = _cgroup()
    if limit is not None and limit >= vm.total:  # v1 reports "unlimited" as a huge number
        limit = None
    total = min(int(vm.total), limit) if limit is not None else int(vm.total)
    available = int(vm.available)
    if limit is not None and usage is not None:
        available = min(available, max(0, limit - usage))
    if budget_bytes is not None:
        budget, source = budget_bytes, "budget_bytes"
    else:
        budget = max(1, int(total * budget_fraction))
        source = f"{budget_fraction:g} × {'cgroup limit' if limit is not None else 'physical memory'}"
    return MemoryFigures(
        budget_bytes=budget,
        budget_source=source,
        rss_bytes=rss,
        system_total_bytes=total,
        system_available_bytes=available,
        cgroup_limit_bytes=limit,
        free_bytes=max(0, min(available, budget - rss)),
        budget_used_fraction=rss / budget,
    )


def _level(fraction: float) -> Literal["ok", "warning", "critical"]:
    return "critical" if fraction >= 0.9 else "warning" if fraction >= 0.75 else "ok"


def _describe(f: MemoryFigures) -> str:
    return (
        f"budget {format_bytes(f.budget_bytes)} ({f.budget_bytes} bytes, {f.budget_source}); process RSS "
        f"{format_bytes(f.rss_bytes)} ({f.rss_bytes} bytes); system available {format_bytes(f.system_available_bytes)} "
        f"({f.system_available_bytes} bytes); free for this process {format_bytes(f.free_bytes)} ({f.free_bytes} bytes)"
    )


# --------------------------------------------------------------------------- the component


@component(
    "MemoryGuard",
    tier="tier4",
    capabilities=["memory_admission", "resource_limits", "memory_status"],
    errors={
        413: "the request alone is over the memory budget (figures in the detail)",
        507: "the request fits the budget but not the memory free right now; retry later",
    },
    example={
        "operation": "check",
        "arrays": [{"name": "X", "shape": [1000, 50], "dtype": "float64"}],
        "computation": "pairwise_distances",
    },
    examples=[{"operation": "status"}],
    deterministic=False,  # RSS and free memory change from call to call
)
def memory_guard(request: MemoryGuardInput) -> MemoryGuardOutput:
    """Check a request's memory estimate against the process budget and refuse it before allocating.

    ``check`` estimates the bytes of the given arrays (itemsize × prod(shape), exactly) plus what the
    ``computation`` allocates, then admits it, or raises 413 when it exceeds the budget on its own and
    507 when it fits the budget but not the memory free now — with the figures in the detail.
    ``status`` reports the process RSS against the budget. See the module docstring for the formulas.
    """
    op = request.root
    figures = _figures(op.budget_bytes, op.budget_fraction)
    level = _level(figures.budget_used_fraction)
    if isinstance(op, MemoryStatusOp):
        return MemoryGuardOutput(
            operation="status",
            level=level,
            figures=figures,
            summary=f"RSS is {figures.budget_used_fraction:.1%} of the budget ({level}); " + _describe(figures),
        )

    dtypes = [parse_dtype(a.dtype) for a in op.arrays]
    shapes = [list(a.shape) for a in op.arrays]
    estimates = [
        ArrayEstimate(
            name=a.name,
            shape=shape,
            dtype=str(dt),
            itemsize=dt.itemsize,
            elements=math.prod(shape),
            bytes=array_bytes(shape, dt),
        )
        for a, shape, dt in zip(op.arrays, shapes, dtypes, strict=True)
    ]
    inputs = sum(e.bytes for e in estimates)
    extra, formula = computation_bytes(op.computation, shapes, dtypes)
    estimate = inputs + extra + op.overhead_bytes
    what = (
        f"the request needs an estimated {format_bytes(estimate)} ({estimate} bytes: inputs {inputs}, "
        f"{op.computation} {extra}, overhead {op.overhead_bytes}; {formula})"
    )
    if estimate > figures.budget_bytes:
        raise PayloadTooLarge(
            f"{what}, more than the whole {_describe(figures)}. Use smaller shapes or dtypes, or process in chunks."
        )
    if estimate > figures.free_bytes:
        raise InsufficientStorage(
            f"{what}; it fits the budget but not the memory free now: {_describe(figures)}. Retry when memory "
            "is released, or process in chunks."
        )
    after = (figures.rss_bytes + estimate) / figures.budget_bytes
    return MemoryGuardOutput(
        operation="check",
        verdict="admit",
        level=level,
        estimate_bytes=estimate,
        inputs_bytes=inputs,
        computation=op.computation,
        computation_bytes=extra,
        computation_formula=formula,
        overhead_bytes=op.overhead_bytes,
        arrays=estimates,
        headroom_after_bytes=figures.free_bytes - estimate,
        budget_fraction_after=after,
        figures=figures,
        summary=f"admit: {what}; " + _describe(figures),
    )
