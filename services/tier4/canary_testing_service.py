"""Staged canary rollouts, persisted in SQLite: bucketing, observations, tests, promote or roll back.

Bucketing: ``bucket = int.from_bytes(sha256(f"{canary_id}:{unit_id}")[:8], "big") % 10000``; a unit is
in the canary when ``bucket < 100 · stage percentage``. The hash needs no state or seed, so every
process gives the same answer, and a unit in the canary at 5 % stays in it at 25 %.

Evaluation (canary vs baseline, on the current stage's observations by default):

* Error rate — two-proportion z-test with the pooled proportion, one-sided (H₁: canary rate >
  baseline rate). A regression needs significance *and* an increase above the tolerated
  ``max_error_rate_increase``.
* Latency — when every latency observation of both groups arrived as raw samples: the Mann–Whitney U
  test, one-sided (canary stochastically larger), normal approximation with tie and continuity
  correction. Otherwise (some arrived as log-moment summaries): Welch's t-test on log-latency from the
  sufficient statistics (n, mean and M₂ of ln latency, merged with Chan's parallel formula). The p95
  ratio comes from the samples (numpy's linear-interpolation percentile) or, for summaries, from the
  lognormal fit exp(mean + 1.645·sd) — the output says which. A regression needs significance *and* a
  p95 ratio above ``max_p95_latency_ratio``.
* Decision — ``rollback`` on any regression; else ``hold`` while data are short or a point estimate
  breaches a threshold without significance; else ``promote``. Each test runs at ``alpha``.

States: ``running`` → (promote through the stages) → ``completed`` at 100 %; ``running`` or
``completed`` → ``rolled_back``. Wrong transitions are 409, unknown ids 404.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, RootModel
from scipy import stats

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, Numbers, RunContext, component, load_numbers

__all__ = [
    "BUCKETS",
    "CanaryAssignOp",
    "CanaryCreateOp",
    "CanaryErrorRateTest",
    "CanaryEvaluateOp",
    "CanaryEvaluation",
    "CanaryGroupObservations",
    "CanaryIngestOp",
    "CanaryLatencyTest",
    "CanaryListOp",
    "CanaryLogLatencyStats",
    "CanaryPromoteOp",
    "CanaryRollbackOp",
    "CanaryStatusOp",
    "CanaryTestingServiceInput",
    "CanaryTestingServiceOutput",
    "CanaryThresholds",
    "bucket_of",
    "canary_testing_service",
]

BUCKETS = 10_000
STATE_NAME = "canary_testing_service"
MAX_STORED_SAMPLES = 1_000_000  # raw latency samples kept per stage and group
GROUPS = ("canary", "baseline")
Z95 = 1.6448536269514722  # standard normal 0.95 quantile, for the lognormal p95

MIGRATIONS = [
    """
    CREATE TABLE canary (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'rolled_back')),
        stage_index INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE canary_stats (
        canary_id TEXT NOT NULL REFERENCES canary (id) ON DELETE CASCADE,
        stage_index INTEGER NOT NULL,
        grp TEXT NOT NULL CHECK (grp IN ('canary', 'baseline')),
        errors INTEGER NOT NULL,
        total INTEGER NOT NULL,
        lat_n INTEGER NOT NULL,
        lat_mean_log REAL NOT NULL,
        lat_m2_log REAL NOT NULL,
        lat_samples INTEGER NOT NULL,
        PRIMARY KEY (canary_id, stage_index, grp)
    );
    CREATE TABLE canary_latency (
        id INTEGER PRIMARY KEY,
        canary_id TEXT NOT NULL REFERENCES canary (id) ON DELETE CASCADE,
        stage_index INTEGER NOT NULL,
        grp TEXT NOT NULL,
        samples BLOB NOT NULL
    );
    CREATE INDEX canary_latency_key ON canary_latency (canary_id, stage_index, grp);
    CREATE TABLE canary_event (
        id INTEGER PRIMARY KEY,
        canary_id TEXT NOT NULL REFERENCES canary (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        from_stage INTEGER,
        to_stage INTEGER,
        decision TEXT,
        reasons TEXT NOT NULL
    );
    CREATE INDEX canary_event_key ON canary_event (canary_id, id);
    """
]

CanaryId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", description="canary id")
]
Count = Annotated[int, Field(ge=0, le=10**12)]


def bucket_of(canary_id: str, unit_id: str) -> int:
    """The unit's bucket in [0, 10000): the first 8 bytes of sha256("canary_id:unit_id"), big-endian, mod 10000."""
    digest = hashlib.sha256(f"{canary_id}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


# --------------------------------------------------------------------------- inputs


class CanaryThresholds(ComponentInput):
    """What counts as a regression worth rolling back, and how much data a decision needs."""

    max_error_rate_increase: float = Field(
        0.005, ge=0, le=1, description="tolerated absolute increase of the error rate (0.005 = 0.5 points)"
    )
    max_p95_latency_ratio: float = Field(1.2, ge=1, le=100, description="tolerated canary/baseline p95 latency ratio")
    min_requests: int = Field(100, ge=1, le=10**9, description="requests per group before a stage can be judged")
    min_latency_samples: int = Field(20, ge=2, le=10**7, description="latency observations per group needed")
    require_latency: bool = Field(True, description="hold while latency data are missing")


class CanaryCreateOp(ComponentInput):
    operation: Literal["create"]
    canary_id: CanaryId | None = Field(None, description="id to use; generated when omitted")
    stages: list[Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]] = Field(
        default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0],
        min_length=1,
        max_length=20,
        description="canary traffic percentages, strictly increasing, ending at 100 (steps of 0.01)",
    )
    thresholds: CanaryThresholds = Field(default_factory=CanaryThresholds)
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of each one-sided test")
    description: str = Field("", max_length=2000)


class CanaryAssignOp(ComponentInput):
    operation: Literal["assign"]
    canary_id: CanaryId
    unit_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=100_000)


class CanaryLogLatencyStats(ComponentInput):
    """Sufficient statistics of natural-log latency (ms): n, Σ ln x, Σ (ln x)²."""

    n: int = Field(ge=1, le=10**12)
    sum: float = Field(ge=-1e15, le=1e15, allow_inf_nan=False)
    sum_sq: float = Field(ge=0, le=1e18, allow_inf_nan=False)


class CanaryGroupObservations(ComponentInput):
    errors: Count = 0
    total: Count = Field(0, description="requests observed (errors ≤ total)")
    latency_ms: Numbers | None = Field(None, description="latency samples in ms (> 0), inline or by file")
    latency_log_stats: CanaryLogLatencyStats | None = Field(None, description="latency as log-moment summaries")


class CanaryIngestOp(ComponentInput):
    operation: Literal["ingest"]
    canary_id: CanaryId
    canary: CanaryGroupObservations | None = None
    baseline: CanaryGroupObservations | None = None


class CanaryEvaluateOp(ComponentInput):
    operation: Literal["evaluate"]
    canary_id: CanaryId
    scope: Literal["current_stage", "all_stages"] = "current_stage"


class CanaryPromoteOp(ComponentInput):
    operation: Literal["promote"]
    canary_id: CanaryId


class CanaryRollbackOp(ComponentInput):
    operation: Literal["rollback"]
    canary_id: CanaryId
    reason: str = Field("manual rollback", max_length=2000)


class CanaryStatusOp(ComponentInput):
    operation: Literal["status"]
    canary_id: CanaryId


class CanaryListOp(ComponentInput):
    operation: Literal["list"]
    status: Literal["running", "completed", "rolled_back"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class CanaryTestingServiceInput(
    RootModel[
        Annotated[
            CanaryCreateOp
            | CanaryAssignOp
            | CanaryIngestOp
            | CanaryEvaluateOp
            | CanaryPromoteOp
            | CanaryRollbackOp
            | CanaryStatusOp
            | CanaryListOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One canary operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class CanaryErrorRateTest(ComponentOutput):
    method: str = "two-proportion z-test, pooled, one-sided (canary > baseline)"
    canary_errors: int
    canary_total: int
    baseline_errors: int
    baseline_total: int
    canary_rate: float
    baseline_rate: float
    difference: float
    z: float | None = Field(description="None when no request failed or all did (no variation)")
    p_value: float | None
    significant: bool
    max_increase: float


class CanaryLatencyTest(ComponentOutput):
    method: Literal["mann_whitney_u", "welch_log_latency"]
    canary_n: int
    baseline_n: int
    statistic: float | None = Field(description="U of the canary sample, or Welch's t on ln latency")
    z: float | None = Field(None, description="Mann–Whitney normal deviate")
    df: float | None = Field(None, description="Welch–Satterthwaite degrees of freedom")
    p_value: float | None = Field(description="None when neither group varies")
    significant: bool
    prob_canary_slower: float | None = Field(None, description="Mann–Whitney U/(n₁n₂): P(canary > baseline) + ½P(tie)")
    geometric_mean_ratio: float = Field(description="exp(mean ln canary − mean ln baseline)")
    canary_p95_ms: float
    baseline_p95_ms: float
    p95_ratio: float
    p95_method: Literal["samples", "lognormal_fit"]
    max_p95_ratio: float


class CanaryEvaluation(ComponentOutput):
    decision: Literal["promote", "hold", "rollback"]
    reasons: list[str]
    scope: str
    stage_index: int
    percentage: float
    alpha: float
    error_rate: CanaryErrorRateTest | None
    latency: CanaryLatencyTest | None


class CanaryGroupSummary(ComponentOutput):
    errors: int
    total: int
    error_rate: float | None
    latency_n: int
    latency_raw_samples: int
    latency_geometric_mean_ms: float | None


class CanaryStageSummary(ComponentOutput):
    stage_index: int
    percentage: float
    canary: CanaryGroupSummary
    baseline: CanaryGroupSummary


class CanaryState(ComponentOutput):
    canary_id: str
    status: str
    stage_index: int
    percentage: float = Field(description="current share of units in the canary (0 after rollback)")
    stages: list[float]
    thresholds: dict[str, float | int | bool]
    alpha: float
    description: str
    created_at: float
    updated_at: float


class CanaryAssignment(ComponentOutput):
    unit_id: str
    bucket: int
    variant: Literal["canary", "baseline"]


class CanaryEvent(ComponentOutput):
    at: float
    action: str
    from_stage: int | None
    to_stage: int | None
    decision: str | None
    reasons: list[str]


class CanaryTestingServiceOutput(ComponentOutput):
    operation: str
    canary_id: str | None = None
    canary: CanaryState | None = None
    assignments: list[CanaryAssignment] | None = None
    canary_share: float | None = Field(None, description="assign: share of the given units in the canary")
    evaluation: CanaryEvaluation | None = None
    stages: list[CanaryStageSummary] | None = None
    events: list[CanaryEvent] | None = None
    canaries: list[CanaryState] | None = None


# --------------------------------------------------------------------------- statistics


@dataclass
class _Group:
    """Accumulated observations of one group: counts, log-latency moments, raw samples."""

    errors: int = 0
    total: int = 0
    lat_n: int = 0
    mean_log: float = 0.0
    m2_log: float = 0.0
    lat_samples: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def merge_moments(self, n: int, mean: float, m2: float) -> None:
        """Chan et al.'s pairwise update of (n, mean, M₂)."""
        if n == 0:
            return
        total = self.lat_n + n
        delta = mean - self.mean_log
        self.mean_log += delta * n / total
        self.m2_log += m2 + delta * delta * self.lat_n * n / total
        self.lat_n = total

    def merge(self, other: _Group) -> None:
        self.errors += other.errors
        self.total += other.total
        self.merge_moments(other.lat_n, other.mean_log, other.m2_log)
        self.lat_samples += other.lat_samples
        self.samples.extend(other.samples)

    @property
    def all_raw(self) -> bool:
        return self.lat_n > 0 and self.lat_samples == self.lat_n

    def raw(self) -> np.ndarray:
        return np.concatenate(self.samples) if self.samples else np.empty(0)

    def summary(self) -> CanaryGroupSummary:
        return CanaryGroupSummary(
            errors=self.errors,
            total=self.total,
            error_rate=self.errors / self.total if self.total else None,
            latency_n=self.lat_n,
            latency_raw_samples=self.lat_samples,
            latency_geometric_mean_ms=math.exp(self.mean_log) if self.lat_n else None,
        )


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float | None, float | None]:
    """Pooled two-proportion z and one-sided p-value for H₁: p₁ > p₂ (None when the pooled rate is 0 or 1)."""
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None, None
    z = (x1 / n1 - x2 / n2) / se
    return z, float(stats.norm.sf(z))


def mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None, float | None]:
    """U of ``x``, z and one-sided p for H₁: x stochastically larger (normal approx., tie + continuity corr.)."""
    n1, n2 = x.size, y.size
    combined = np.concatenate([x, y])
    ranks = stats.rankdata(combined)
    u1 = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2
    _, ties = np.unique(combined, return_counts=True)
    ties = ties.astype(float)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1)))
    if var <= 0:
        return u1, None, None
    z = (u1 - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return u1, z, float(stats.norm.sf(z))


def welch_greater(a: _Group, b: _Group) -> tuple[float | None, float | None, float | None]:
    """Welch's t, df and one-sided p for H₁: mean ln latency of ``a`` > ``b``, from sufficient statistics."""
    va, vb = a.m2_log / (a.lat_n - 1), b.m2_log / (b.lat_n - 1)
    sa, sb = va / a.lat_n, vb / b.lat_n
    if sa + sb <= 0:
        return None, None, None
    t = (a.mean_log - b.mean_log) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (a.lat_n - 1) + sb**2 / (b.lat_n - 1))
    return t, df, float(stats.t.sf(t, df))


def _error_test(c: _Group, b: _Group, th: dict[str, Any], alpha: float) -> CanaryErrorRateTest:
    z, p = two_proportion_test(c.errors, c.total, b.errors, b.total)
    rc, rb = c.errors / c.total, b.errors / b.total
    return CanaryErrorRateTest(
        canary_errors=c.errors,
        canary_total=c.total,
        baseline_errors=b.errors,
        baseline_total=b.total,
        canary_rate=rc,
        baseline_rate=rb,
        difference=rc - rb,
        z=z,
        p_value=p,
        significant=p is not None and p < alpha,
        max_increase=th["max_error_rate_increase"],
    )


def _p95(g: _Group, raw: bool) -> float:
    if raw:
        return float(np.percentile(g.raw(), 95))
    sd = math.sqrt(g.m2_log / (g.lat_n - 1)) if g.lat_n > 1 else 0.0
    return math.exp(g.mean_log + Z95 * sd)


def _latency_test(c: _Group, b: _Group, th: dict[str, Any], alpha: float) -> CanaryLatencyTest:
    raw = c.all_raw and b.all_raw
    if raw:
        u, z, p = mann_whitney_greater(c.raw(), b.raw())
        statistic, df, prob = u, None, u / (c.lat_n * b.lat_n)
    else:
        statistic, df, p = welch_greater(c, b)
        z = prob = None
    p95_c, p95_b = _p95(c, raw), _p95(b, raw)
    return CanaryLatencyTest(
        method="mann_whitney_u" if raw else "welch_log_latency",
        canary_n=c.lat_n,
        baseline_n=b.lat_n,
        statistic=statistic,
        z=z,
        df=df,
        p_value=p,
        significant=p is not None and p < alpha,
        prob_canary_slower=prob,
        geometric_mean_ratio=math.exp(c.mean_log - b.mean_log),
        canary_p95_ms=p95_c,
        baseline_p95_ms=p95_b,
        p95_ratio=p95_c / p95_b,
        p95_method="samples" if raw else "lognormal_fit",
        max_p95_ratio=th["max_p95_latency_ratio"],
    )


def evaluate_groups(
    c: _Group, b: _Group, spec: dict[str, Any], *, scope: str, stage_index: int, percentage: float
) -> CanaryEvaluation:
    """Decision and reasons for the canary group ``c`` against the baseline ``b``."""
    th, alpha = spec["thresholds"], spec["alpha"]
    rollback: list[str] = []
    hold: list[str] = []
    fine: list[str] = []

    err = None
    if c.total == 0 or b.total == 0:
        hold.append(f"no requests yet (canary {c.total}, baseline {b.total})")
    else:
        err = _error_test(c, b, th, alpha)
        p_text = f"p={err.p_value:.4g}" if err.p_value is not None else "no errors to compare"
        rates = f"canary error rate {err.canary_rate:.4%} vs baseline {err.baseline_rate:.4%}"
        if err.significant and err.difference > err.max_increase:
            rollback.append(f"{rates}: increase {err.difference:.4%} > tolerated {err.max_increase:.4%}, {p_text}")
        elif c.total < th["min_requests"] or b.total < th["min_requests"]:
            hold.append(f"only {c.total} canary / {b.total} baseline requests; need {th['min_requests']} per group")
        elif err.difference > err.max_increase:
            hold.append(f"{rates}: above tolerance but not significant ({p_text}); gather more data")
        else:
            fine.append(f"{rates}: no error-rate regression ({p_text})")

    lat = None
    if c.lat_n < 2 or b.lat_n < 2:
        text = f"latency: {c.lat_n} canary / {b.lat_n} baseline observations; need ≥ 2 per group to compare"
        (hold if th["require_latency"] else fine).append(text)
    else:
        lat = _latency_test(c, b, th, alpha)
        p_text = f"p={lat.p_value:.4g}" if lat.p_value is not None else "no variation"
        ratio = f"p95 {lat.canary_p95_ms:.4g} ms vs {lat.baseline_p95_ms:.4g} ms (ratio {lat.p95_ratio:.3f})"
        test = "Mann–Whitney" if lat.method == "mann_whitney_u" else "Welch on ln latency"
        if lat.significant and lat.p95_ratio > lat.max_p95_ratio:
            rollback.append(f"latency regression: {ratio} > {lat.max_p95_ratio}, {test} {p_text}")
        elif min(c.lat_n, b.lat_n) < th["min_latency_samples"]:
            hold.append(
                f"latency: {c.lat_n} canary / {b.lat_n} baseline observations; "
                f"need {th['min_latency_samples']} per group"
            )
        elif lat.p95_ratio > lat.max_p95_ratio:
            hold.append(f"latency: {ratio} above tolerance but not significant ({test} {p_text})")
        else:
            fine.append(f"latency: {ratio}, no significant regression beyond tolerance ({test} {p_text})")

    decision: Literal["promote", "hold", "rollback"] = "rollback" if rollback else "hold" if hold else "promote"
    return CanaryEvaluation(
        decision=decision,
        reasons=rollback + hold + fine,
        scope=scope,
        stage_index=stage_index,
        percentage=percentage,
        alpha=alpha,
        error_rate=err,
        latency=lat,
    )


# --------------------------------------------------------------------------- persistence


@dataclass
class _Canary:
    id: str
    spec: dict[str, Any]
    status: str
    stage_index: int
    created_at: float
    updated_at: float

    @property
    def percentage(self) -> float:
        if self.status == "rolled_back":
            return 0.0
        return float(self.spec["stages"][self.stage_index])

    def state(self) -> CanaryState:
        return CanaryState(
            canary_id=self.id,
            status=self.status,
            stage_index=self.stage_index,
            percentage=self.percentage,
            stages=self.spec["stages"],
            thresholds=self.spec["thresholds"],
            alpha=self.spec["alpha"],
            description=self.spec["description"],
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def _row_to_canary(row: Any) -> _Canary:
    return _Canary(
        id=row["id"],
        spec=json.loads(row["spec"]),
        status=row["status"],
        stage_index=row["stage_index"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _load(conn: Any, canary_id: str) -> _Canary:
    row = conn.execute("SELECT * FROM canary WHERE id = ?", (canary_id,)).fetchone()
    if row is None:
        raise NotFound(f"no canary {canary_id!r}")
    return _row_to_canary(row)


def _groups(conn: Any, canary_id: str, stage_index: int | None, *, with_samples: bool) -> dict[int, dict[str, _Group]]:
    """Stats per stage and group (all stages when ``stage_index`` is None)."""
    where, args = "canary_id = ?", [canary_id]
    if stage_index is not None:
        where, args = "canary_id = ? AND stage_index = ?", [canary_id, stage_index]
    out: dict[int, dict[str, _Group]] = {}
    for r in conn.execute(f"SELECT * FROM canary_stats WHERE {where}", args):  # noqa: S608 - fixed clauses only
        out.setdefault(r["stage_index"], {g: _Group() for g in GROUPS})[r["grp"]] = _Group(
            errors=r["errors"],
            total=r["total"],
            lat_n=r["lat_n"],
            mean_log=r["lat_mean_log"],
            m2_log=r["lat_m2_log"],
            lat_samples=r["lat_samples"],
        )
    if with_samples:
        query = f"SELECT stage_index, grp, samples FROM canary_latency WHERE {where} ORDER BY id"  # noqa: S608
        for r in conn.execute(query, args):
            out[r["stage_index"]][r["grp"]].samples.append(np.frombuffer(r["samples"], dtype="<f8"))
    return out


def _evaluate(conn: Any, canary: _Canary, scope: str) -> CanaryEvaluation:
    stage = canary.stage_index if scope == "current_stage" else None
    groups = {g: _Group() for g in GROUPS}
    for per_stage in _groups(conn, canary.id, stage, with_samples=True).values():
        for g in GROUPS:
            groups[g].merge(per_stage[g])
    return evaluate_groups(
        groups["canary"],
        groups["baseline"],
        canary.spec,
        scope=scope,
        stage_index=canary.stage_index,
        percentage=canary.percentage,
    )


def _event(
    conn: Any, canary: _Canary, action: str, to_stage: int | None, decision: str | None, reasons: list[str]
) -> None:
    from_stage = None if action == "create" else canary.stage_index
    conn.execute(
        "INSERT INTO canary_event (canary_id, at, action, from_stage, to_stage, decision, reasons) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (canary.id, time.time(), action, from_stage, to_stage, decision, json.dumps(reasons)),
    )


# --------------------------------------------------------------------------- operations


def _create(op: CanaryCreateOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    stages = [float(s) for s in op.stages]
    for i, s in enumerate(stages):
        if abs(s * 100 - round(s * 100)) > 1e-9:
            raise InvalidInput(f"stages.{i}", f"percentages go in steps of 0.01 (one bucket in 10000); got {s}")
    if any(b <= a for a, b in itertools.pairwise(stages)):
        raise InvalidInput("stages", "must be strictly increasing")
    if stages[-1] != 100:
        raise InvalidInput("stages", f"the last stage must be 100 (full rollout); got {stages[-1]}")
    spec = {
        "stages": stages,
        "thresholds": op.thresholds.model_dump(),
        "alpha": op.alpha,
        "description": op.description,
    }
    canary_id = op.canary_id or f"canary-{uuid.uuid4().hex}"
    now = time.time()
    # One stage of 100 % is a full rollout from the start.
    status = "completed" if len(stages) == 1 else "running"
    with ctx.state(STATE_NAME, MIGRATIONS).transaction() as conn:
        if conn.execute("SELECT 1 FROM canary WHERE id = ?", (canary_id,)).fetchone():
            raise Conflict(f"canary {canary_id!r} already exists")
        conn.execute(
            "INSERT INTO canary (id, spec, status, stage_index, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?)",
            (canary_id, json.dumps(spec), status, now, now),
        )
        canary = _Canary(canary_id, spec, status, 0, now, now)
        _event(conn, canary, "create", 0, None, [f"stages {stages}"])
    return CanaryTestingServiceOutput(operation="create", canary_id=canary_id, canary=canary.state())


def _assign(op: CanaryAssignOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    canary = _load(ctx.state(STATE_NAME, MIGRATIONS).connect(), op.canary_id)
    cut = round(canary.percentage * 100)
    buckets = np.fromiter((bucket_of(canary.id, u) for u in op.unit_ids), dtype=np.int64, count=len(op.unit_ids))
    inside = buckets < cut
    # Built from validated parts: skip per-object validation (up to 100k units per call).
    assignments = [
        CanaryAssignment.model_construct(unit_id=u, bucket=b, variant="canary" if c else "baseline")
        for u, b, c in zip(op.unit_ids, buckets.tolist(), inside.tolist(), strict=True)
    ]
    return CanaryTestingServiceOutput(
        operation="assign",
        canary_id=canary.id,
        canary=canary.state(),
        assignments=assignments,
        canary_share=float(inside.mean()),
    )


def _prepare_group(obs: CanaryGroupObservations, name: str, ctx: RunContext) -> tuple[_Group, np.ndarray | None]:
    if obs.errors > obs.total:
        raise InvalidInput(f"{name}.errors", f"must be ≤ {name}.total ({obs.total}); got {obs.errors}")
    g = _Group(errors=obs.errors, total=obs.total)
    samples = None
    if obs.latency_ms is not None:
        samples = load_numbers(obs.latency_ms, ctx.data_dir, field=f"{name}.latency_ms")
        if (samples <= 0).any():
            raise InvalidInput(f"{name}.latency_ms", "latencies must be > 0 ms")
        logs = np.log(samples)
        mean = float(logs.mean())
        g.merge_moments(logs.size, mean, float(((logs - mean) ** 2).sum()))
        g.lat_samples = int(samples.size)
    if obs.latency_log_stats is not None:
        s = obs.latency_log_stats
        mean = s.sum / s.n
        g.merge_moments(s.n, mean, max(s.sum_sq - s.sum * mean, 0.0))
    return g, samples


def _ingest(op: CanaryIngestOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    if op.canary is None and op.baseline is None:
        raise InvalidInput("canary", "give observations for `canary`, `baseline` or both")
    prepared = {
        name: _prepare_group(obs, name, ctx)
        for name, obs in (("canary", op.canary), ("baseline", op.baseline))
        if obs is not None
    }
    with ctx.state(STATE_NAME, MIGRATIONS).transaction() as conn:
        canary = _load(conn, op.canary_id)
        if canary.status != "running":
            raise Conflict(f"canary {canary.id!r} is {canary.status}; it takes no more observations")
        stored = _groups(conn, canary.id, canary.stage_index, with_samples=False).get(canary.stage_index, {})
        for name, (new, samples) in prepared.items():
            g = stored.get(name, _Group())
            if samples is not None and g.lat_samples + samples.size > MAX_STORED_SAMPLES:
                raise InvalidInput(
                    f"{name}.latency_ms",
                    f"this stage would hold over {MAX_STORED_SAMPLES} raw samples; send latency_log_stats instead",
                )
            g.merge(new)
            conn.execute(
                "INSERT OR REPLACE INTO canary_stats (canary_id, stage_index, grp, errors, total, lat_n, "
                "lat_mean_log, lat_m2_log, lat_samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (canary.id, canary.stage_index, name, g.errors, g.total, g.lat_n, g.mean_log, g.m2_log, g.lat_samples),
            )
            if samples is not None:
                conn.execute(
                    "INSERT INTO canary_latency (canary_id, stage_index, grp, samples) VALUES (?, ?, ?, ?)",
                    (canary.id, canary.stage_index, name, samples.astype("<f8").tobytes()),
                )
            stored[name] = g
        conn.execute("UPDATE canary SET updated_at = ? WHERE id = ?", (time.time(), canary.id))
    summary = CanaryStageSummary(
        stage_index=canary.stage_index,
        percentage=canary.percentage,
        canary=stored.get("canary", _Group()).summary(),
        baseline=stored.get("baseline", _Group()).summary(),
    )
    return CanaryTestingServiceOutput(operation="ingest", canary_id=canary.id, canary=canary.state(), stages=[summary])


def _evaluate_op(op: CanaryEvaluateOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    conn = ctx.state(STATE_NAME, MIGRATIONS).connect()
    # A read transaction so the stats and the samples come from one snapshot.
    conn.execute("BEGIN")
    try:
        canary = _load(conn, op.canary_id)
        evaluation = _evaluate(conn, canary, op.scope)
    finally:
        conn.execute("COMMIT")
    return CanaryTestingServiceOutput(
        operation="evaluate", canary_id=canary.id, canary=canary.state(), evaluation=evaluation
    )


def _promote(op: CanaryPromoteOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    with ctx.state(STATE_NAME, MIGRATIONS).transaction() as conn:
        canary = _load(conn, op.canary_id)
        if canary.status != "running":
            raise Conflict(f"canary {canary.id!r} is {canary.status}; there is no stage to promote to")
        evaluation = _evaluate(conn, canary, "current_stage")
        if evaluation.decision == "rollback":
            raise Conflict(f"canary {canary.id!r} must not be promoted: " + "; ".join(evaluation.reasons))
        to_stage = canary.stage_index + 1
        _event(conn, canary, "promote", to_stage, evaluation.decision, evaluation.reasons)
        canary.stage_index = to_stage
        canary.status = "completed" if to_stage == len(canary.spec["stages"]) - 1 else "running"
        canary.updated_at = time.time()
        conn.execute(
            "UPDATE canary SET stage_index = ?, status = ?, updated_at = ? WHERE id = ?",
            (canary.stage_index, canary.status, canary.updated_at, canary.id),
        )
    return CanaryTestingServiceOutput(
        operation="promote", canary_id=canary.id, canary=canary.state(), evaluation=evaluation
    )


def _rollback(op: CanaryRollbackOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    with ctx.state(STATE_NAME, MIGRATIONS).transaction() as conn:
        canary = _load(conn, op.canary_id)
        if canary.status == "rolled_back":
            raise Conflict(f"canary {canary.id!r} is already rolled back")
        _event(conn, canary, "rollback", None, None, [op.reason])
        canary.status, canary.updated_at = "rolled_back", time.time()
        conn.execute(
            "UPDATE canary SET status = ?, updated_at = ? WHERE id = ?", (canary.status, canary.updated_at, canary.id)
        )
    return CanaryTestingServiceOutput(operation="rollback", canary_id=canary.id, canary=canary.state())


def _status(op: CanaryStatusOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    conn = ctx.state(STATE_NAME, MIGRATIONS).connect()
    conn.execute("BEGIN")
    try:
        canary = _load(conn, op.canary_id)
        per_stage = _groups(conn, canary.id, None, with_samples=False)
        events = conn.execute(
            "SELECT at, action, from_stage, to_stage, decision, reasons FROM canary_event WHERE canary_id = ? "
            "ORDER BY id",
            (canary.id,),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    stages = [
        CanaryStageSummary(
            stage_index=i,
            percentage=float(canary.spec["stages"][i]),
            canary=groups["canary"].summary(),
            baseline=groups["baseline"].summary(),
        )
        for i, groups in sorted(per_stage.items())
    ]
    return CanaryTestingServiceOutput(
        operation="status",
        canary_id=canary.id,
        canary=canary.state(),
        stages=stages,
        events=[
            CanaryEvent(
                at=e["at"],
                action=e["action"],
                from_stage=e["from_stage"],
                to_stage=e["to_stage"],
                decision=e["decision"],
                reasons=json.loads(e["reasons"]),
            )
            for e in events
        ],
    )


def _list(op: CanaryListOp, ctx: RunContext) -> CanaryTestingServiceOutput:
    rows = (
        ctx.state(STATE_NAME, MIGRATIONS)
        .connect()
        .execute(
            "SELECT * FROM canary WHERE (? IS NULL OR status = ?) ORDER BY created_at, id LIMIT ? OFFSET ?",
            (op.status, op.status, op.limit, op.offset),
        )
        .fetchall()
    )
    return CanaryTestingServiceOutput(operation="list", canaries=[_row_to_canary(r).state() for r in rows])


@component(
    "CanaryTestingService",
    tier="tier4",
    capabilities=["canary_release", "staged_rollout", "experimentation", "hypothesis_testing"],
    example={
        "operation": "create",
        "stages": [1, 5, 25, 50, 100],
        "thresholds": {"max_error_rate_increase": 0.005, "max_p95_latency_ratio": 1.2, "min_requests": 200},
        "alpha": 0.05,
        "description": "roll out the new clarity rule",
    },
    deterministic=False,
)
def canary_testing_service(request: CanaryTestingServiceInput, ctx: RunContext) -> CanaryTestingServiceOutput:
    """Staged rollouts: deterministic bucketing, stages, promote or roll back from canary vs baseline tests.

    Operations (field ``operation``): ``create`` a canary with its stages (percent of units) and
    regression thresholds; ``assign`` units (sha256 bucketing, the same in every process); ``ingest``
    error counts and latencies (raw samples, inline or by file, or log-moment summaries) for canary and
    baseline at the current stage; ``evaluate`` (one-sided two-proportion z-test on error rates,
    Mann–Whitney on raw latencies or Welch on log-latency from summaries, p95 ratio → promote / hold /
    rollback with reasons); ``promote`` to the next stage (409 when the evaluation says rollback or the
    rollout is complete); ``rollback``; ``status``; ``list``. State lives in
    ``data/canary_testing_service.sqlite``. Unknown id → 404, wrong state change → 409.
    """
    op = request.root
    handlers: dict[type, Any] = {
        CanaryCreateOp: _create,
        CanaryAssignOp: _assign,
        CanaryIngestOp: _ingest,
        CanaryEvaluateOp: _evaluate_op,
        CanaryPromoteOp: _promote,
        CanaryRollbackOp: _rollback,
        CanaryStatusOp: _status,
        CanaryListOp: _list,
    }
    return handlers[type(op)](op, ctx)
