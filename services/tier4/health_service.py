"""One health status for the mesh: every health checker, each behind its own circuit breaker.

**Units.** Each probe of :mod:`~services.tier4.health_monitor` (every tier, the gateway, the data
directory, the domain store, PostgreSQL, Redis, disk, memory) is a unit of its own, named
``health_monitor.<check>``; each other checker — ``ml_service_health_checker``,
``ml_orchestrator_health_checker``, ``analytics_service_health_checker``,
``ml_resource_manager_health_checker`` — is one unit, run with all its checks and default thresholds.
The checkers' checks are reported under ``<checker>.<check>``.

**Breakers.** Every unit runs through its own ``pybreaker.CircuitBreaker`` kept in the service's
``ctx.resources`` (so it lives as long as the service process). A unit whose checks include a failed one
counts as a failure; ``breaker_fail_max`` failures in a row open the breaker, and while it is open the unit
is not run at all: it is reported failed with "circuit open". ``breaker_reset_s`` after opening, the next
call runs the unit once (half-open) and closes the breaker if it no longer fails. A checker that raises a
mesh error (e.g. 503 for a dependency) counts as failed with that error's detail.

**Services.** The answer has one row per mesh service (tier1..tier4 and their replicas, and the gateway):
``{service, url, status, latency_ms, checked_at}`` from this call's probe of its ``/health``, so a tier that
was killed shows failed on the very next call.

The aggregate status is the worst check (``skipped`` ones do not count). Units run concurrently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, get_args

import httpx
import pybreaker
from pydantic import Field, model_validator

from mlmesh.errors import MeshError
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import CheckResult, Probe, Status, run_probes, worst
from services.tier4.analytics_service_health_checker import analytics_service_health_checker
from services.tier4.health_monitor import (
    MONITOR_CHECKS,
    HealthMonitorInput,
    ServiceRow,
    counts,
    plan_probes,
    service_rows,
    summary,
)
from services.tier4.ml_orchestrator_health_checker import (
    ORCHESTRATOR_CHECKS,
    MLOrchestratorHealthCheckerInput,
    ml_orchestrator_health_checker,
)
from services.tier4.ml_resource_manager_health_checker import (
    RESOURCE_CHECKS,
    MLResourceManagerHealthCheckerInput,
    ml_resource_manager_health_checker,
)
from services.tier4.ml_service_health_checker import (
    ML_SERVICE_CHECKS,
    MLServiceHealthCheckerInput,
    ml_service_health_checker,
)

__all__ = [
    "BREAKERS_RESOURCE",
    "CHECKERS",
    "BreakerState",
    "Breakers",
    "Checker",
    "HealthServiceInput",
    "HealthServiceOutput",
    "health_service",
]

Checker = Literal[
    "health_monitor",
    "ml_service_health_checker",
    "ml_orchestrator_health_checker",
    "analytics_service_health_checker",
    "ml_resource_manager_health_checker",
]
CHECKERS: tuple[str, ...] = get_args(Checker)
BREAKERS_RESOURCE = "health_service:breakers"


class HealthServiceInput(ComponentInput):
    """Which checkers to aggregate and how their circuit breakers behave."""

    checkers: list[Checker] = Field(min_length=1, max_length=len(CHECKERS), description=f"any of {list(CHECKERS)}")
    timeout_s: float = Field(1.0, gt=0, le=30, description="timeout of each HTTP probe")
    breaker_fail_max: int = Field(3, ge=1, le=100, description="failed runs in a row that open a unit's breaker")
    breaker_reset_s: float = Field(30.0, gt=0, le=3600, description="seconds an open breaker waits before a trial")

    @model_validator(mode="after")
    def _unique(self) -> HealthServiceInput:
        if len(set(self.checkers)) != len(self.checkers):
            raise ValueError("checkers: each checker may be named once")
        return self


class BreakerState(ComponentOutput):
    name: str
    state: Literal["closed", "open", "half-open"]
    fail_counter: int = Field(description="failures in a row so far")


class HealthServiceOutput(ComponentOutput):
    status: Status = Field(description="the worst check (skipped checks do not count)")
    checks: list[CheckResult]
    services: list[ServiceRow] = Field(description="one row per mesh service probed by this call")
    checkers: dict[str, Status] = Field(description="each checker's own worst status")
    breakers: list[BreakerState]
    counts: dict[str, int]
    message: str


class Breakers:
    """The service's circuit breakers, one per unit (lives in ``ctx.resources``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def get(self, name: str, fail_max: int, reset_s: float) -> pybreaker.CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                # The unit's own failure surfaces on the tripping call, so its results are still reported.
                breaker = pybreaker.CircuitBreaker(
                    fail_max=fail_max, reset_timeout=reset_s, name=name, throw_new_error_on_trip=False
                )
                self._breakers[name] = breaker
            else:
                breaker.fail_max, breaker.reset_timeout = fail_max, reset_s
            return breaker

    def states(self, names: list[str]) -> list[BreakerState]:
        with self._lock:
            found = [self._breakers[n] for n in names if n in self._breakers]
        return [BreakerState(name=b.name, state=b.current_state, fail_counter=b.fail_counter) for b in found]

    def close(self) -> None:
        """Nothing to release (called when the service stops)."""


class _UnitFailed(Exception):
    def __init__(self, results: list[CheckResult]) -> None:
        super().__init__("a check failed")
        self.results = results


def _guard(
    breakers: Breakers, name: str, run: Callable[[], list[CheckResult]], request: HealthServiceInput
) -> Callable[[], list[CheckResult]]:
    """``run`` behind the unit's breaker: failed results count as failures; an open circuit is not run."""
    breaker = breakers.get(name, request.breaker_fail_max, request.breaker_reset_s)

    def checked() -> list[CheckResult]:
        try:
            results = run()
        except MeshError as exc:  # e.g. a dependency's 503: the unit failed, with the error's reason
            results = [CheckResult(name=name, status="failed", detail=f"{exc.title}: {exc.detail}")]
        if worst(r.status for r in results) == "failed":
            raise _UnitFailed(results)
        return results

    def guarded() -> list[CheckResult]:
        try:
            return breaker.call(checked)
        except _UnitFailed as exc:
            return exc.results
        except pybreaker.CircuitBreakerError:
            return [
                CheckResult(
                    name=name,
                    status="failed",
                    detail=f"circuit open: failed {breaker.fail_max} times in a row; not run until "
                    f"{breaker.reset_timeout:g} s after the circuit opened",
                )
            ]

    return guarded


def _prefixed(checker: str, results: list[CheckResult]) -> list[CheckResult]:
    return [r.model_copy(update={"name": f"{checker}.{r.name}"}) for r in results]


def _analytics(ctx: RunContext) -> list[CheckResult]:
    """The analytics checker on its documented example input, in the shared check shape."""
    comp = analytics_service_health_checker
    out = comp(comp.input_model.model_validate(comp.example), ctx)
    return [
        CheckResult(
            name=check.name,
            status=check.status,
            latency_ms=check.latency_ms,
            value=check.value,
            # The threshold crossed, else the warning one (the checker reports both).
            threshold=check.failed_threshold if check.status == "failed" else check.warning_threshold,
            unit=check.unit,
            detail=check.message,
        )
        for check in out.checks
    ]


def _units(request: HealthServiceInput, ctx: RunContext, client: httpx.Client) -> list[Probe]:
    """Every unit the request asks for, each a probe named after its breaker."""
    units: list[Probe] = []
    wanted = set(request.checkers)
    if "health_monitor" in wanted:
        monitor = HealthMonitorInput(checks=list(MONITOR_CHECKS), timeout_s=request.timeout_s)  # type: ignore[arg-type]
        for probe in plan_probes(monitor, ctx, client):
            name = f"health_monitor.{probe.name}"
            units.append(
                Probe(name, lambda run=probe.run: _prefixed("health_monitor", run()), probe.service, probe.url)
            )
    checkers: dict[str, Callable[[], list[CheckResult]]] = {
        "ml_service_health_checker": lambda: (
            ml_service_health_checker(
                MLServiceHealthCheckerInput(checks=list(ML_SERVICE_CHECKS)),  # type: ignore[arg-type]
                ctx,
            ).checks
        ),
        "ml_orchestrator_health_checker": lambda: (
            ml_orchestrator_health_checker(
                MLOrchestratorHealthCheckerInput(checks=list(ORCHESTRATOR_CHECKS), timeout_s=request.timeout_s),  # type: ignore[arg-type]
                ctx,
            ).checks
        ),
        "ml_resource_manager_health_checker": lambda: (
            ml_resource_manager_health_checker(
                MLResourceManagerHealthCheckerInput(checks=list(RESOURCE_CHECKS)),  # type: ignore[arg-type]
                ctx,
            ).checks
        ),
    }
    checkers["analytics_service_health_checker"] = lambda: _analytics(ctx)
    for checker in CHECKERS[1:]:
        if checker in wanted:
            units.append(Probe(checker, lambda c=checker: _prefixed(c, checkers[c]())))
    return units


@component(
    "HealthService",
    tier="tier4",
    capabilities=["health_checks", "health_aggregation", "circuit_breaker"],
    example={"checkers": ["health_monitor", "ml_resource_manager_health_checker"], "timeout_s": 0.5},
    examples=[{"checkers": list(CHECKERS)}],
    deterministic=False,  # live probes
)
def health_service(request: HealthServiceInput, ctx: RunContext) -> HealthServiceOutput:
    """Aggregate every health checker into one status, each check behind its own circuit breaker.

    Runs the health monitor's probes and the ML service, orchestrator, analytics and resource checkers
    concurrently, each unit through a pybreaker circuit breaker kept by the service (open → reported failed
    "circuit open" without running), and answers the worst status with a row per mesh service.
    """
    breakers = ctx.resources.get(BREAKERS_RESOURCE)
    if breakers is None:
        breakers = ctx.resources.setdefault(BREAKERS_RESOURCE, Breakers())
    with httpx.Client(timeout=request.timeout_s) as client:
        units = _units(request, ctx, client)
        guarded = [Probe(u.name, _guard(breakers, u.name, u.run, request), u.service, u.url) for u in units]
        runs = run_probes(guarded)
    checks = [check for run in runs for check in run.results]
    by_checker: dict[str, list[str]] = {}
    for run in runs:
        checker = run.probe.name.split(".", 1)[0]
        by_checker.setdefault(checker, []).extend(r.status for r in run.results)
    status = worst(c.status for c in checks)
    skipped = sorted(set(request.checkers) - set(by_checker))
    message = summary(status, checks)
    if skipped:
        message += f" (not in this build, not run: {', '.join(skipped)})"
    return HealthServiceOutput(
        status=status,
        checks=checks,
        services=service_rows(runs),
        checkers={name: worst(statuses) for name, statuses in by_checker.items()},
        breakers=breakers.states([u.name for u in units]),
        counts=counts(checks),
        message=message,
    )
