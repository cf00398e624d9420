"""Orchestrator health: the gateway answers, its registry is fresh, enough services are up, no job backlog.

All figures come from the gateway at ``settings.gateway_url``:

* ``gateway`` — ``GET /health`` answers 200 with JSON within ``timeout_s``; latency graded against
  ``gateway_latency``. Every other check needs this answer (if the gateway does not answer, they are
  failed for that reason).
* ``freshness`` — the largest ``last_seen_s`` (seconds since the gateway last heard from a service by
  poll or heartbeat) over the registered services, against ``freshness_warning_s`` /
  ``freshness_failed_s``. A service the gateway never heard from is failed, named.
* ``healthy_share`` — services with status ``up`` / services registered; below
  ``healthy_share_warning`` a warning (default 1.0: any service down), below ``healthy_share_failed``
  failed (default 0.5). No service registered is failed.
* ``backlog`` — the queued runs from ``GET /runs?status=queued`` (the ``counts.queued`` figure when the
  gateway gives counts, else the runs listed), with the running ones from ``?status=running`` in the
  detail; ≥ ``backlog_warning`` queued is a warning, ≥ ``backlog_failed`` failed. A gateway without a run
  store (``/runs`` answers 404) gives ``skipped``, saying so.
"""

from __future__ import annotations

import time
from typing import Any, Literal, get_args

import httpx
from pydantic import Field, model_validator

from mlmesh.security import TOKEN_HEADER, mesh_token
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import CheckResult, LatencyThresholds, Status, grade, probe_http, worst

__all__ = [
    "ORCHESTRATOR_CHECKS",
    "MLOrchestratorHealthCheckerInput",
    "MLOrchestratorHealthCheckerOutput",
    "OrchestratorCheck",
    "ml_orchestrator_health_checker",
]

OrchestratorCheck = Literal["gateway", "freshness", "healthy_share", "backlog"]
ORCHESTRATOR_CHECKS: tuple[str, ...] = get_args(OrchestratorCheck)


class MLOrchestratorHealthCheckerInput(ComponentInput):
    """Which checks to run and their thresholds."""

    checks: list[OrchestratorCheck] = Field(
        min_length=1, max_length=len(ORCHESTRATOR_CHECKS), description=f"any of {list(ORCHESTRATOR_CHECKS)}"
    )
    timeout_s: float = Field(2.0, gt=0, le=30, description="per-request timeout")
    gateway_latency: LatencyThresholds = Field(
        default_factory=lambda: LatencyThresholds(warning_ms=250.0, failed_ms=1000.0),
        description="latency of GET /health (default: warning at 250 ms, failed at 1000 ms)",
    )
    freshness_warning_s: float = Field(10.0, gt=0, le=86_400, description="oldest last_seen_s for a warning")
    freshness_failed_s: float = Field(30.0, gt=0, le=86_400, description="oldest last_seen_s for failed")
    healthy_share_warning: float = Field(1.0, ge=0, le=1, description="share of services up below which: warning")
    healthy_share_failed: float = Field(0.5, ge=0, le=1, description="share of services up below which: failed")
    backlog_warning: int = Field(10, ge=1, le=1_000_000, description="queued runs for a warning")
    backlog_failed: int = Field(100, ge=1, le=1_000_000, description="queued runs for failed")

    @model_validator(mode="after")
    def _consistent(self) -> MLOrchestratorHealthCheckerInput:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks: each check may be named once")
        if self.freshness_failed_s < self.freshness_warning_s:
            raise ValueError(f"freshness_failed_s must be at least freshness_warning_s ({self.freshness_warning_s:g})")
        if self.healthy_share_failed > self.healthy_share_warning:
            raise ValueError(
                f"healthy_share_failed must be at most healthy_share_warning ({self.healthy_share_warning:g})"
            )
        if self.backlog_failed < self.backlog_warning:
            raise ValueError(f"backlog_failed must be at least backlog_warning ({self.backlog_warning})")
        return self


class MLOrchestratorHealthCheckerOutput(ComponentOutput):
    status: Status
    checks: list[CheckResult]
    gateway_url: str
    services: int | None = Field(None, description="services registered at the gateway")
    services_up: int | None = None
    queued_runs: int | None = None
    running_runs: int | None = None
    message: str


def _failed(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, status="failed", detail=detail)


def _freshness(services: list[dict[str, Any]], request: MLOrchestratorHealthCheckerInput) -> CheckResult:
    if not services:
        return _failed("freshness", "the gateway has no service registered")
    never = sorted(str(s.get("id") or s.get("base_url")) for s in services if s.get("last_seen_s") is None)
    if never:
        return CheckResult(
            name="freshness",
            status="failed",
            unit="s",
            detail=f"the gateway never heard from {len(never)} service(s): {', '.join(never)}",
        )
    ages = [(float(s["last_seen_s"]), str(s.get("id") or s.get("base_url"))) for s in services]
    oldest, who = max(ages)
    status, threshold = grade(oldest, request.freshness_warning_s, request.freshness_failed_s)
    return CheckResult(
        name="freshness",
        status=status,
        value=oldest,
        threshold=threshold,
        unit="s",
        detail=f"oldest registry entry {who} last seen {oldest:.2f} s ago ({'≥' if status != 'ok' else '<'} "
        f"{threshold:g} s)",
    )


def _healthy_share(services: list[dict[str, Any]], request: MLOrchestratorHealthCheckerInput) -> CheckResult:
    if not services:
        return _failed("healthy_share", "the gateway has no service registered")
    up = [s for s in services if s.get("status") == "up"]
    share = len(up) / len(services)
    status, threshold = grade(share, request.healthy_share_warning, request.healthy_share_failed, higher_is_worse=False)
    down = sorted(f"{s.get('id') or s.get('base_url')} ({s.get('status')})" for s in services if s not in up)
    detail = f"{len(up)} of {len(services)} services up ({share:.0%}; {'<' if status != 'ok' else '≥'} {threshold:g})"
    if down:
        detail += f"; not up: {', '.join(down)}"
    return CheckResult(
        name="healthy_share", status=status, value=share, threshold=threshold, unit="share", detail=detail
    )


def _runs(client: httpx.Client, url: str, status: str) -> tuple[int | None, str | None, float]:
    """(count of runs with ``status``, reason when unavailable, latency ms)."""
    start = time.perf_counter()
    try:
        response = client.get(f"{url}/runs", params={"status": status})
    except httpx.HTTPError as exc:
        return None, f"GET /runs unreachable ({type(exc).__name__})", (time.perf_counter() - start) * 1000.0
    elapsed = (time.perf_counter() - start) * 1000.0
    if response.status_code == 404:
        return None, "404", elapsed
    if response.status_code != 200:
        return None, f"GET /runs?status={status} answered HTTP {response.status_code}", elapsed
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return None, f"GET /runs?status={status} answered no JSON object", elapsed
    counts = body.get("counts")
    if isinstance(counts, dict) and isinstance(counts.get(status), int):
        return int(counts[status]), None, elapsed
    runs = body.get("runs")
    if isinstance(runs, list):
        return sum(1 for r in runs if not isinstance(r, dict) or r.get("status", status) == status), None, elapsed
    return None, f"GET /runs?status={status} answered neither counts nor runs", elapsed


def _backlog(
    client: httpx.Client, url: str, request: MLOrchestratorHealthCheckerInput
) -> tuple[CheckResult, int | None, int | None]:
    queued, why, queued_ms = _runs(client, url, "queued")
    if why == "404":
        return (
            CheckResult(
                name="backlog",
                status="skipped",
                latency_ms=queued_ms,
                detail="the gateway has no run store (GET /runs answered 404)",
            ),
            None,
            None,
        )
    if queued is None:
        return CheckResult(name="backlog", status="failed", latency_ms=queued_ms, detail=str(why)), None, None
    running, why, running_ms = _runs(client, url, "running")
    if running is None:
        return CheckResult(name="backlog", status="failed", latency_ms=running_ms, detail=str(why)), queued, None
    status, threshold = grade(queued, request.backlog_warning, request.backlog_failed)
    return (
        CheckResult(
            name="backlog",
            status=status,
            latency_ms=queued_ms + running_ms,
            value=float(queued),
            threshold=float(threshold),
            unit="runs",
            detail=f"{queued} runs queued ({'≥' if status != 'ok' else '<'} {threshold:g}), {running} running",
        ),
        queued,
        running,
    )


@component(
    "MLOrchestratorHealthChecker",
    tier="tier4",
    capabilities=["health_checks", "orchestrator_health"],
    example={"checks": ["gateway", "freshness", "healthy_share", "backlog"], "timeout_s": 0.5},
    deterministic=False,  # live gateway state
)
def ml_orchestrator_health_checker(
    request: MLOrchestratorHealthCheckerInput, ctx: RunContext
) -> MLOrchestratorHealthCheckerOutput:
    """Orchestrator (gateway) health: registry freshness, share of healthy services, job backlog.

    Reads the gateway's ``/health`` (each service's status and ``last_seen_s``) and ``/runs`` by status,
    and judges the oldest registry entry, the share of services up and the queued runs against the
    thresholds; 404 from ``/runs`` makes the backlog check ``skipped``.
    """
    url = ctx.settings.gateway_url
    wanted = set(request.checks)
    checks: list[CheckResult] = []
    services: list[dict[str, Any]] | None = None
    queued = running = None
    headers = {TOKEN_HEADER: mesh_token(ctx.settings)}
    with httpx.Client(base_url=url, timeout=request.timeout_s, headers=headers) as client:
        gateway, body = probe_http(
            "gateway", f"{url}/health", limits=request.gateway_latency, timeout_s=request.timeout_s, client=client
        )
        if "gateway" in wanted:
            checks.append(gateway)
        if body is not None:
            listed = body.get("services")
            services = [s for s in listed if isinstance(s, dict)] if isinstance(listed, list) else None
        for name in ("freshness", "healthy_share"):
            if name not in wanted:
                continue
            if services is None:
                reason = gateway.detail if body is None else "the gateway's /health listed no services"
                checks.append(_failed(name, reason))
            else:
                checks.append((_freshness if name == "freshness" else _healthy_share)(services, request))
        if "backlog" in wanted:
            if body is None:
                checks.append(_failed("backlog", gateway.detail))
            else:
                backlog, queued, running = _backlog(client, url, request)
                checks.append(backlog)
    status = worst(c.status for c in checks)
    bad = [f"{c.name}: {c.detail}" for c in checks if c.status in ("warning", "failed")]
    return MLOrchestratorHealthCheckerOutput(
        status=status,
        checks=checks,
        gateway_url=url,
        services=None if services is None else len(services),
        services_up=None if services is None else sum(s.get("status") == "up" for s in services),
        queued_runs=queued,
        running_runs=running,
        message=f"{status}: " + ("; ".join(bad) if bad else f"{len(checks)} checks within their thresholds"),
    )
