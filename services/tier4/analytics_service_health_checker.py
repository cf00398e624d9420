"""Health of the analytics data: store reachable, data freshness, query latency and row counts.

Every check reads the domain store the analytics components read (PostgreSQL when ``MLMESH_DATABASE_URL`` is
set, else the embedded SQLite store) and is judged against thresholds the input fixes; the checker never
relaxes them and does not judge its own age or uptime.

* ``store_reachable`` — open the store and time ``ping()`` (a trivial query). An unreachable or refused
  store fails this check with the reason, and every other check fails as "not measured";
* ``application_freshness`` / ``feedback_freshness`` — age of the newest rule application / feedback
  (``now − latest()``) against ``*_warning_s`` and ``*_failed_s``. An empty table gets the status
  ``when_empty`` says; a newest timestamp in the future (clock skew) is a warning;
* ``query_latency`` — ``repetitions`` runs of the analytics read (the applications and feedback of the last
  ``query_window_s``, at most ``query_limit`` applications), each timed with ``time.perf_counter``; the p50
  (``numpy.percentile``, linear) is judged against ``latency_p50_warning_ms`` / ``latency_p50_failed_ms`` and
  the slowest run against ``latency_max_failed_ms``; the samples are returned;
* ``row_counts`` — rule applications stored against ``min_applications_warning`` / ``min_applications_failed``;
  every table's count is in the answer.

``checks`` names the checks to run (``store_reachable`` is always measured: the others need it). The overall
status is the worst of the checks (ok < warning < failed).
"""

from __future__ import annotations

import sqlite3
import time
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import psycopg
from pydantic import Field, model_validator

from mlmesh.errors import MeshError
from services.domain import store_for
from services.framework import ComponentInput, ComponentOutput, RunContext, component

__all__ = [
    "AnalyticsServiceHealthCheckerInput",
    "AnalyticsServiceHealthCheckerOutput",
    "Check",
    "analytics_service_health_checker",
    "grade",
]

Status = Literal["ok", "warning", "failed"]
CheckName = Literal["store_reachable", "application_freshness", "feedback_freshness", "query_latency", "row_counts"]
CHECKS: tuple[str, ...] = typing.get_args(CheckName)
_RANK = {"ok": 0, "warning": 1, "failed": 2}
DAY_S = 86_400.0
MAX_AGE_S = 10 * 365 * DAY_S
T = TypeVar("T")
# What an unreachable or broken store raises: the mesh's 503s, and driver errors the store did not wrap.
_STORE_ERRORS = (MeshError, psycopg.Error, sqlite3.Error, OSError)


class AnalyticsServiceHealthCheckerInput(ComponentInput):
    checks: list[CheckName] = Field(
        min_length=1,
        max_length=len(CHECKS),
        description=f"any of {list(CHECKS)}; store_reachable is always measured (the others need it)",
    )
    application_max_age_warning_s: float = Field(DAY_S, gt=0, le=MAX_AGE_S, description="newest application age")
    application_max_age_failed_s: float = Field(7 * DAY_S, gt=0, le=MAX_AGE_S)
    feedback_max_age_warning_s: float = Field(2 * DAY_S, gt=0, le=MAX_AGE_S, description="newest feedback age")
    feedback_max_age_failed_s: float = Field(14 * DAY_S, gt=0, le=MAX_AGE_S)
    when_empty: Status = Field("warning", description="status of a freshness check when its table is empty")
    repetitions: int = Field(5, ge=1, le=100, description="timed runs of the analytics query")
    query_window_s: float = Field(7 * DAY_S, gt=0, le=MAX_AGE_S, description="the query reads this much history")
    query_limit: int = Field(1000, ge=1, le=100_000, description="at most this many applications per query")
    latency_p50_warning_ms: float = Field(100.0, gt=0, le=600_000)
    latency_p50_failed_ms: float = Field(1000.0, gt=0, le=600_000)
    latency_max_failed_ms: float = Field(5000.0, gt=0, le=600_000, description="the slowest run for failed")
    min_applications_warning: int = Field(1, ge=0, le=10**12, description="fewer stored applications: warning")
    min_applications_failed: int = Field(0, ge=0, le=10**12, description="fewer stored applications: failed")

    @model_validator(mode="after")
    def _ordered(self) -> AnalyticsServiceHealthCheckerInput:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks: each check may be named once")
        pairs = [
            ("application_max_age_failed_s", self.application_max_age_warning_s, self.application_max_age_failed_s),
            ("feedback_max_age_failed_s", self.feedback_max_age_warning_s, self.feedback_max_age_failed_s),
            ("latency_p50_failed_ms", self.latency_p50_warning_ms, self.latency_p50_failed_ms),
        ]
        for name, warning, failed in pairs:
            if failed < warning:
                raise ValueError(f"{name} must be at least its warning threshold ({warning:g}); got {failed:g}")
        if self.min_applications_failed > self.min_applications_warning:
            raise ValueError(
                f"min_applications_failed must not exceed min_applications_warning ({self.min_applications_warning})"
            )
        return self


class Check(ComponentOutput):
    name: CheckName
    status: Status
    value: float | None = Field(description="the measured figure (None when it could not be measured)")
    unit: str
    warning_threshold: float | None
    failed_threshold: float | None
    latency_ms: float | None = Field(description="time the check itself took")
    message: str


class LatencySamples(ComponentOutput):
    repetitions: int
    samples_ms: list[float]
    p50_ms: float
    max_ms: float
    rows_read: int = Field(description="applications + feedback rows the query returned (last run)")


class AnalyticsServiceHealthCheckerOutput(ComponentOutput):
    status: Status
    backend: Literal["sqlite", "postgresql"] | None
    checked_at: float = Field(description="unix seconds the ages are measured from")
    checks: list[Check]
    counts: dict[str, int] | None
    latest: dict[str, float | None] | None
    latency: LatencySamples | None
    message: str


def grade(value: float, warning: float, failed: float) -> Status:
    """``failed`` at or above ``failed``, ``warning`` at or above ``warning``, else ``ok``."""
    return "failed" if value >= failed else "warning" if value >= warning else "ok"


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000.0


def _reason(exc: BaseException) -> str:
    text = exc.detail if isinstance(exc, MeshError) else str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _freshness(
    name: Literal["application_freshness", "feedback_freshness"],
    newest: float | None,
    now: float,
    warning: float,
    failed: float,
    when_empty: Status,
    latency_ms: float,
) -> Check:
    what = "rule application" if name == "application_freshness" else "feedback"
    common: dict[str, Any] = {
        "name": name,
        "unit": "s",
        "warning_threshold": warning,
        "failed_threshold": failed,
        "latency_ms": latency_ms,
    }
    if newest is None:
        return Check(status=when_empty, value=None, message=f"no {what} stored", **common)
    age = now - newest
    if age < 0:
        return Check(
            status="warning",
            value=age,
            message=f"newest {what} is {-age:.0f} s in the future: check the clocks of the writers",
            **common,
        )
    status = grade(age, warning, failed)
    bound = {"ok": f"< {warning:g} s", "warning": f"≥ {warning:g} s", "failed": f"≥ {failed:g} s"}[status]
    return Check(status=status, value=age, message=f"newest {what} is {age:.0f} s old ({bound})", **common)


def _unmeasured(request: AnalyticsServiceHealthCheckerInput, why: str) -> list[Check]:
    def check(name: Any, unit: str, warning: float | None, failed: float | None) -> Check:
        return Check(
            name=name,
            status="failed",
            value=None,
            unit=unit,
            warning_threshold=warning,
            failed_threshold=failed,
            latency_ms=None,
            message=f"not measured: {why}",
        )

    r = request
    every = [
        check("application_freshness", "s", r.application_max_age_warning_s, r.application_max_age_failed_s),
        check("feedback_freshness", "s", r.feedback_max_age_warning_s, r.feedback_max_age_failed_s),
        check("query_latency", "ms", r.latency_p50_warning_ms, r.latency_p50_failed_ms),
        check("row_counts", "rows", float(r.min_applications_warning), float(r.min_applications_failed)),
    ]
    return [c for c in every if c.name in r.checks]


def _overall(checks: list[Check]) -> tuple[Status, str]:
    status: Status = max((c.status for c in checks), key=_RANK.__getitem__)
    bad = [f"{c.name}: {c.message}" for c in checks if c.status != "ok"]
    return status, f"{status}: " + ("; ".join(bad) if bad else "every check within its thresholds")


@component(
    "AnalyticsServiceHealthChecker",
    tier="tier4",
    capabilities=["analytics_health", "data_freshness", "query_latency"],
    example={"checks": list(CHECKS), "repetitions": 3},
    deterministic=False,  # ages and latencies change from call to call
)
def analytics_service_health_checker(
    request: AnalyticsServiceHealthCheckerInput, ctx: RunContext
) -> AnalyticsServiceHealthCheckerOutput:
    """Analytics data health: store reachable, freshness of applications and feedback, query latency, row counts.

    Each check is ok/warning/failed against the thresholds in the input, with its value and how long it took;
    the overall status is the worst. An unreachable store is a failed check with the reason (200), not an
    error: reporting it is this component's job.
    """
    started = time.perf_counter()
    now = time.time()
    try:
        store = store_for(ctx)
        ping_ms = store.ping()
    except _STORE_ERRORS as exc:
        why = f"the store is unreachable ({_reason(exc)})"
        checks = [
            Check(
                name="store_reachable",
                status="failed",
                value=None,
                unit="ms",
                warning_threshold=None,
                failed_threshold=None,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                message=why,
            ),
            *_unmeasured(request, "the store is unreachable"),
        ]
        status, message = _overall(checks)
        return AnalyticsServiceHealthCheckerOutput(
            status=status,
            backend=None,
            checked_at=now,
            checks=checks,
            counts=None,
            latest=None,
            latency=None,
            message=message,
        )

    checks = [
        Check(
            name="store_reachable",
            status="ok",
            value=ping_ms,
            unit="ms",
            warning_threshold=None,
            failed_threshold=None,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            message=f"{store.backend} store answers a trivial query in {ping_ms:.3g} ms",
        )
    ]
    r = request
    wanted = set(r.checks)
    counts = latest = samples = None
    try:
        if wanted & {"application_freshness", "feedback_freshness"}:
            latest, latest_ms = _timed(store.latest)
            now = time.time()
        if "application_freshness" in wanted:
            assert latest is not None
            checks.append(
                _freshness(
                    "application_freshness",
                    latest.get("rule_applications"),
                    now,
                    r.application_max_age_warning_s,
                    r.application_max_age_failed_s,
                    r.when_empty,
                    latest_ms,
                )
            )
        if "feedback_freshness" in wanted:
            assert latest is not None
            checks.append(
                _freshness(
                    "feedback_freshness",
                    latest.get("feedback"),
                    now,
                    r.feedback_max_age_warning_s,
                    r.feedback_max_age_failed_s,
                    r.when_empty,
                    latest_ms,
                )
            )

        if "query_latency" in wanted:
            since = now - r.query_window_s
            timings = np.empty(r.repetitions)
            rows_read = 0
            for i in range(r.repetitions):  # one after another: each run's latency is what is measured
                t0 = time.perf_counter()
                apps = store.applications(since=since, limit=r.query_limit)
                feedback = store.feedback(since=since)
                timings[i] = (time.perf_counter() - t0) * 1000.0
                rows_read = len(apps) + len(feedback)
            p50, worst = float(np.percentile(timings, 50)), float(timings.max())
            samples = LatencySamples(
                repetitions=r.repetitions, samples_ms=timings.tolist(), p50_ms=p50, max_ms=worst, rows_read=rows_read
            )
            status = grade(p50, r.latency_p50_warning_ms, r.latency_p50_failed_ms)
            message = f"p50 {p50:.3g} ms, max {worst:.3g} ms over {r.repetitions} run(s) reading {rows_read} rows"
            if worst >= r.latency_max_failed_ms:
                status = "failed"
                message += f"; the slowest run ≥ {r.latency_max_failed_ms:g} ms"
            checks.append(
                Check(
                    name="query_latency",
                    status=status,
                    value=p50,
                    unit="ms",
                    warning_threshold=r.latency_p50_warning_ms,
                    failed_threshold=r.latency_p50_failed_ms,
                    latency_ms=float(timings.sum()),
                    message=message,
                )
            )

        if "row_counts" in wanted:
            counts, counts_ms = _timed(store.counts)
            n_apps = counts.get("rule_applications", 0)
            if n_apps < r.min_applications_failed:
                count_status: Status = "failed"
            elif n_apps < r.min_applications_warning:
                count_status = "warning"
            else:
                count_status = "ok"
            checks.append(
                Check(
                    name="row_counts",
                    status=count_status,
                    value=float(n_apps),
                    unit="rows",
                    warning_threshold=float(r.min_applications_warning),
                    failed_threshold=float(r.min_applications_failed),
                    latency_ms=counts_ms,
                    message=f"{n_apps} rule applications stored (at least {r.min_applications_warning} expected); "
                    + ", ".join(f"{table} {n}" for table, n in counts.items()),
                )
            )
    except _STORE_ERRORS as exc:  # the store went away between checks
        done = {c.name for c in checks}
        checks += [c for c in _unmeasured(r, f"the store failed ({_reason(exc)})") if c.name not in done]
    status, message = _overall(checks)
    return AnalyticsServiceHealthCheckerOutput(
        status=status,
        backend=store.backend,
        checked_at=now,
        checks=checks,
        counts=counts,
        latest=latest,
        latency=samples,
        message=message,
    )
