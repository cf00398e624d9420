"""Benchmarks of real workloads, stored baselines, and regression detection by a one-sided Mann–Whitney test.

* ``benchmark`` — time a built-in workload ``repeats`` times (after ``warmup`` untimed runs) with
  ``perf_counter``: ``sort`` (np.sort of n uniform floats), ``json_roundtrip`` (json dumps+loads of n
  records), ``sha256`` (of n random bytes), ``matmul`` (n×n float64 product). Inputs come from the seed;
  the timings are what this machine measured, so results differ run to run.
* ``baseline`` — store samples (given, or a fresh benchmark) as the baseline of a name in
  ``data/performance_optimizer.sqlite``; a later baseline for the name replaces it (version + 1).
* ``compare`` — current samples (given, or a fresh run of the baseline's workload) against the baseline:
  Mann–Whitney U with alternative "current is slower" (exact distribution when a sample has at most 8
  values and nothing ties, else the normal approximation with tie and continuity corrections — the rule
  scipy uses), plus a minimum relative slowdown of the medians. Regression = p < alpha and
  median ratio ≥ 1 + min_slowdown.
* ``list`` — stored baselines.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, RootModel, model_validator
from scipy import special, stats

from mlmesh.errors import InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component

__all__ = [
    "BaselineInfo",
    "BenchmarkSpec",
    "PerfBaselineOp",
    "PerfBenchmarkOp",
    "PerfCompareOp",
    "PerfListOp",
    "PerformanceOptimizerInput",
    "PerformanceOptimizerOutput",
    "TimingSummary",
    "mann_whitney_greater",
    "performance_optimizer",
]

MIGRATIONS = [
    """CREATE TABLE baseline (
        name TEXT PRIMARY KEY,
        spec TEXT,
        samples TEXT NOT NULL,
        created REAL NOT NULL,
        version INTEGER NOT NULL
    )"""
]
MAX_SIZE = {"sort": 500_000, "json_roundtrip": 20_000, "sha256": 16 * 1024 * 1024, "matmul": 512}
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
# At most a million seconds (11.6 days) per run: squares of larger timings overflowed the SD (a 500).
Timing = Annotated[FiniteFloat, Field(ge=0, le=1e6)]
Samples = Annotated[list[Timing], Field(min_length=3, max_length=1000, description="timings in seconds")]


class BenchmarkSpec(ComponentInput):
    """A built-in workload, its size and how often to time it."""

    workload: Literal["sort", "json_roundtrip", "sha256", "matmul"] = Field(
        description="sort: n floats; json_roundtrip: n records; sha256: n bytes; matmul: n×n"
    )
    size: int = Field(ge=1, le=16 * 1024 * 1024, description=f"n (at most {MAX_SIZE} per workload)")
    repeats: int = Field(20, ge=3, le=200, description="timed runs")
    warmup: int = Field(1, ge=0, le=10, description="untimed runs first")
    seed: Seed = 0

    @model_validator(mode="after")
    def _size_bound(self) -> BenchmarkSpec:
        if self.size > MAX_SIZE[self.workload]:
            raise ValueError(f"size for {self.workload} must be at most {MAX_SIZE[self.workload]}; got {self.size}")
        return self


class PerfBenchmarkOp(BenchmarkSpec):
    """Time a workload."""

    operation: Literal["benchmark"]


class PerfBaselineOp(ComponentInput):
    """Store a baseline: the given samples, or a fresh benchmark of ``spec``."""

    operation: Literal["baseline"]
    name: Name
    samples: Samples | None = None
    spec: BenchmarkSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PerfBaselineOp:
        if (self.samples is None) == (self.spec is None):
            raise ValueError("give exactly one of samples or spec")
        return self


class PerfCompareOp(ComponentInput):
    """Current timings against the stored baseline."""

    operation: Literal["compare"]
    name: Name
    samples: Samples | None = Field(None, description="current timings; a fresh benchmark when omitted")
    spec: BenchmarkSpec | None = Field(None, description="workload to run when samples are omitted (baseline's)")
    alpha: float = Field(0.01, gt=0, lt=1, description="significance level of the one-sided test")
    min_slowdown: float = Field(0.1, ge=0, le=100, description="median ratio must reach 1 + this to count")


class PerfListOp(ComponentInput):
    """Every stored baseline."""

    operation: Literal["list"]


class PerformanceOptimizerInput(
    RootModel[
        Annotated[PerfBenchmarkOp | PerfBaselineOp | PerfCompareOp | PerfListOp, Field(discriminator="operation")]
    ]
):
    """One performance-optimizer operation, chosen by ``operation``."""


class TimingSummary(ComponentOutput):
    n: int
    median_s: float
    mean_s: float
    std_s: float
    min_s: float
    max_s: float


class BaselineInfo(ComponentOutput):
    name: str
    version: int
    created: float
    workload: str | None
    size: int | None
    summary: TimingSummary


class PerformanceOptimizerOutput(ComponentOutput):
    operation: str
    name: str | None = None
    workload: str | None = None
    samples_s: list[float] | None = None
    summary: TimingSummary | None = None
    baseline: BaselineInfo | None = None
    u_statistic: float | None = Field(None, description="Mann–Whitney U of the current samples")
    p_value: float | None = Field(None, description="P(U ≥ observed) if current and baseline had one distribution")
    method: Literal["exact", "asymptotic"] | None = None
    ratio: float | None = Field(None, description="median(current) / median(baseline); None if the baseline is 0")
    regression: bool | None = None
    reason: str | None = None
    baselines: list[BaselineInfo] | None = None


def _workload(spec: BenchmarkSpec) -> Callable[[], Any]:
    rng = np.random.default_rng(spec.seed)
    n = spec.size
    if spec.workload == "sort":
        values = rng.random(n)
        return lambda: np.sort(values)
    if spec.workload == "json_roundtrip":
        records = [{"id": int(i), "value": float(v), "label": f"r{i}"} for i, v in enumerate(rng.random(n))]
        return lambda: json.loads(json.dumps(records))
    if spec.workload == "sha256":
        data = rng.bytes(n)
        return lambda: hashlib.sha256(data).digest()
    a, b = rng.random((n, n)), rng.random((n, n))
    return lambda: a @ b


def _run(spec: BenchmarkSpec) -> list[float]:
    work = _workload(spec)
    for _ in range(spec.warmup):
        work()
    samples = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> TimingSummary:
    x = np.asarray(samples, dtype=float)
    return TimingSummary(
        n=x.size,
        median_s=float(np.median(x)),
        mean_s=float(x.mean()),
        std_s=float(x.std(ddof=1)),
        min_s=float(x.min()),
        max_s=float(x.max()),
    )


def _exact_sf(u: int, m: int, n: int) -> float:
    """P(U ≥ u) under H0: coefficients of the Gaussian binomial [m+n choose m]_q, in exact integers."""
    size = m * n + 1
    poly = np.zeros(size, dtype=object)
    poly[0] = 1
    for i in range(1, min(m, n) + 1):
        shift = max(m, n) + i
        if shift < size:  # multiply by (1 - q^shift), truncated: only higher terms change
            poly[shift:] = poly[shift:] - poly[: size - shift]
        for r in range(i):  # divide by (1 - q^i): a running sum along each residue class
            poly[r::i] = np.cumsum(poly[r::i])
    return float(sum(poly[u:])) / float(math.comb(m + n, m))


def mann_whitney_greater(current: list[float], baseline: list[float]) -> tuple[float, float, str]:
    """``(U, p, method)`` of the one-sided test "current tends to be larger than baseline"."""
    x, y = np.asarray(current, dtype=float), np.asarray(baseline, dtype=float)
    n1, n2 = x.size, y.size
    ranks = stats.rankdata(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    _, ties = np.unique(np.concatenate([x, y]), return_counts=True)
    if (n1 <= 8 or n2 <= 8) and not np.any(ties > 1):
        return u1, min(1.0, _exact_sf(round(u1), n1, n2)), "exact"
    n = n1 + n2
    tie_term = float(np.sum(ties.astype(float) ** 3 - ties))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value ties: no evidence either way
        return u1, 1.0, "asymptotic"
    z = (u1 - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return u1, float(min(1.0, max(0.0, special.ndtr(-z)))), "asymptotic"


def _info(row: Any) -> BaselineInfo:
    spec = json.loads(row["spec"]) if row["spec"] else None
    return BaselineInfo(
        name=row["name"],
        version=row["version"],
        created=row["created"],
        workload=spec["workload"] if spec else None,
        size=spec["size"] if spec else None,
        summary=_summary(json.loads(row["samples"])),
    )


def _load(db: Any, name: str) -> Any:
    row = db.connect().execute("SELECT * FROM baseline WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no baseline named {name!r}; store one with operation 'baseline'")
    return row


def _compare(op: PerfCompareOp, db: Any) -> PerformanceOptimizerOutput:
    row = _load(db, op.name)
    base_samples = json.loads(row["samples"])
    spec = op.spec
    if op.samples is not None:
        current = list(op.samples)
    else:
        if spec is None:
            if not row["spec"]:
                raise InvalidInput("samples", f"baseline {op.name!r} was stored from samples; give samples or spec")
            spec = BenchmarkSpec.model_validate(json.loads(row["spec"]))
        current = _run(spec)
    u, p, method = mann_whitney_greater(current, base_samples)
    base_median = float(np.median(base_samples))
    ratio = float(np.median(current)) / base_median if base_median > 0 else None
    significant = p < op.alpha
    large = ratio is not None and ratio >= 1 + op.min_slowdown
    if ratio is None:
        reason = "baseline median is 0: no relative slowdown can be measured"
    elif significant and large:
        reason = f"slower: p={p:.3g} < {op.alpha} and median ratio {ratio:.3f} ≥ {1 + op.min_slowdown:.3f}"
    elif significant:
        reason = f"significant (p={p:.3g}) but median ratio {ratio:.3f} < {1 + op.min_slowdown:.3f}"
    else:
        reason = f"not significant: p={p:.3g} ≥ {op.alpha} (median ratio {ratio:.3f})"
    return PerformanceOptimizerOutput(
        operation="compare",
        name=op.name,
        workload=spec.workload if spec else None,
        samples_s=current,
        summary=_summary(current),
        baseline=_info(row),
        u_statistic=u,
        p_value=p,
        method=method,  # type: ignore[arg-type]
        ratio=ratio,
        regression=bool(significant and large),
        reason=reason,
    )


@component(
    "PerformanceOptimizer",
    tier="tier4",
    capabilities=["benchmarking", "baselines", "regression_detection"],
    example={"operation": "benchmark", "workload": "sha256", "size": 65536, "repeats": 10},
    examples=[
        {"operation": "baseline", "name": "sort-10k", "spec": {"workload": "sort", "size": 10000, "repeats": 10}},
        {"operation": "compare", "name": "sort-10k"},
        {"operation": "list"},
    ],
    deterministic=False,
    errors={404: "no baseline stored under that name"},
)
def performance_optimizer(request: PerformanceOptimizerInput, ctx: RunContext) -> PerformanceOptimizerOutput:
    """Benchmark built-in workloads, keep baselines, detect regressions (one-sided Mann–Whitney + min slowdown).

    Timings are real measurements on this machine; baselines persist in the data directory.
    """
    op = request.root
    if isinstance(op, PerfBenchmarkOp):
        samples = _run(op)
        return PerformanceOptimizerOutput(
            operation="benchmark", workload=op.workload, samples_s=samples, summary=_summary(samples)
        )
    db = ctx.state("performance_optimizer", MIGRATIONS)
    if isinstance(op, PerfBaselineOp):
        samples = list(op.samples) if op.samples is not None else _run(op.spec)  # type: ignore[arg-type]
        spec = op.spec.model_dump_json() if op.spec is not None else None
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO baseline (name, spec, samples, created, version) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, samples = excluded.samples,"
                " created = excluded.created, version = baseline.version + 1",
                (op.name, spec, json.dumps(samples), time.time()),
            )
            row = conn.execute("SELECT * FROM baseline WHERE name = ?", (op.name,)).fetchone()
        return PerformanceOptimizerOutput(
            operation="baseline",
            name=op.name,
            workload=op.spec.workload if op.spec else None,
            samples_s=samples,
            summary=_summary(samples),
            baseline=_info(row),
        )
    if isinstance(op, PerfCompareOp):
        return _compare(op, db)
    rows = db.connect().execute("SELECT * FROM baseline ORDER BY name").fetchall()
    return PerformanceOptimizerOutput(operation="list", baselines=[_info(r) for r in rows])
