"""Mesh health: every service's ``/health``, the data store, PostgreSQL, Redis, disk and memory.

Each requested check is a probe (see :mod:`services.health.probes`); the probes run concurrently, so a
service that does not answer costs one ``timeout_s``, not one per service.

* ``services`` — ``GET <tier url>/health`` for every configured tier and replica (``settings.tiers``):
  failed unless it answers 200 with JSON within ``timeout_s``; its latency is graded against
  ``service_latency``.
* ``gateway`` — the same for ``GET <gateway_url>/health``.
* ``data_dir`` — the data directory is writable: a probe file is written, fsynced, read back and removed
  (latency against ``store_latency``).
* ``domain_store`` — the domain store's ``ping()`` (a trivial query on SQLite or PostgreSQL) against
  ``store_latency``.
* ``postgresql`` / ``redis`` — ``SELECT 1`` / ``PING`` round trips against ``dependency_latency``;
  ``skipped`` when ``MLMESH_DATABASE_URL`` / ``MLMESH_REDIS_URL`` is not set.
* ``disk`` — free percent of the data directory's file system (warning below
  ``disk_free_warning_percent``, failed below ``disk_free_failed_percent``) and free GB (failed below
  ``disk_min_free_gb``, default ``settings.resources.disk_min_free_gb``).
* ``memory`` — system memory in use (warning at ``memory_warning_percent``, failed at
  ``memory_failed_percent``).

The aggregate status is the worst check; ``skipped`` checks do not count. Every threshold is an input
with a documented default, and none is relaxed under load.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Literal, get_args

import httpx
import psycopg
from pydantic import Field, model_validator

from mlmesh.errors import MeshError
from mlmesh.settings import TIERS
from services.domain import SchemaTooNew, store_for
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import (
    CheckResult,
    LatencyThresholds,
    Probe,
    ProbeRun,
    Status,
    grade,
    latency_field,
    probe_data_dir,
    probe_disk,
    probe_http,
    probe_memory,
    probe_postgres,
    probe_redis,
    run_probes,
    worst,
)

__all__ = [
    "MONITOR_CHECKS",
    "HealthMonitorInput",
    "HealthMonitorOutput",
    "MonitorCheck",
    "ServiceRow",
    "health_monitor",
    "plan_probes",
    "service_rows",
]

MonitorCheck = Literal["services", "gateway", "data_dir", "domain_store", "postgresql", "redis", "disk", "memory"]
MONITOR_CHECKS: tuple[str, ...] = get_args(MonitorCheck)


class HealthMonitorInput(ComponentInput):
    """Which checks to run and the thresholds to judge them by."""

    checks: list[MonitorCheck] = Field(
        min_length=1, max_length=len(MONITOR_CHECKS), description=f"checks to run, any of {list(MONITOR_CHECKS)}"
    )
    timeout_s: float = Field(1.0, gt=0, le=30, description="per-request timeout of the HTTP probes")
    service_latency: LatencyThresholds = latency_field(250.0, 1000.0)
    store_latency: LatencyThresholds = latency_field(100.0, 1000.0)
    dependency_latency: LatencyThresholds = latency_field(50.0, 500.0)
    disk_free_warning_percent: float = Field(25.0, ge=0, le=100, description="free space below this: warning")
    disk_free_failed_percent: float = Field(10.0, ge=0, le=100, description="free space below this: failed")
    disk_min_free_gb: float | None = Field(
        None, ge=0, le=1_000_000, description="free GB below this: failed (default: settings.resources)"
    )
    memory_warning_percent: float = Field(75.0, gt=0, le=100, description="memory in use at or above: warning")
    memory_failed_percent: float = Field(90.0, gt=0, le=100, description="memory in use at or above: failed")

    @model_validator(mode="after")
    def _consistent(self) -> HealthMonitorInput:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks: each check may be named once")
        if self.disk_free_failed_percent > self.disk_free_warning_percent:
            raise ValueError(
                "disk_free_failed_percent must be at most disk_free_warning_percent "
                f"({self.disk_free_warning_percent:g}); got {self.disk_free_failed_percent:g}"
            )
        if self.memory_failed_percent < self.memory_warning_percent:
            raise ValueError(
                "memory_failed_percent must be at least memory_warning_percent "
                f"({self.memory_warning_percent:g}); got {self.memory_failed_percent:g}"
            )
        return self


class ServiceRow(ComponentOutput):
    """One mesh service as the dashboard shows it."""

    service: str = Field(description="tier1..tier4 or gateway")
    url: str
    status: Status
    latency_ms: float | None
    checked_at: float = Field(description="unix seconds when the probe finished")
    detail: str


class HealthMonitorOutput(ComponentOutput):
    status: Status = Field(description="the worst check (skipped checks do not count)")
    checks: list[CheckResult]
    services: list[ServiceRow] = Field(description="one row per probed mesh service")
    counts: dict[str, int] = Field(description="checks per status")
    message: str


def _domain_store_probe(ctx: RunContext, limits: LatencyThresholds) -> CheckResult:
    name = "domain_store"
    start = time.perf_counter()
    try:
        store = store_for(ctx)
        ping_ms = float(store.ping())
        backend = str(store.backend)
    except (MeshError, OSError, sqlite3.Error, psycopg.Error, SchemaTooNew) as exc:
        reason = exc.detail if isinstance(exc, MeshError) else type(exc).__name__
        elapsed = (time.perf_counter() - start) * 1000.0
        return CheckResult(
            name=name, status="failed", latency_ms=elapsed, unit="ms", detail=f"domain store unusable: {reason}"
        )
    status, threshold = grade(ping_ms, limits.warning_ms, limits.failed_ms)
    return CheckResult(
        name=name,
        status=status,
        latency_ms=ping_ms,
        value=ping_ms,
        threshold=threshold,
        unit="ms",
        detail=f"{backend} store answered a trivial query in {ping_ms:.2f} ms "
        f"({'≥' if status != 'ok' else '<'} {threshold:g} ms)",
    )


def plan_probes(request: HealthMonitorInput, ctx: RunContext, client: httpx.Client) -> list[Probe]:
    """The probes ``request`` asks for, in a stable order (each named after the check it reports)."""
    settings = ctx.settings
    probes: list[Probe] = []
    wanted = set(request.checks)

    def http(name: str, service: str, url: str) -> Probe:
        def run() -> list[CheckResult]:
            check, _ = probe_http(
                name, f"{url}/health", limits=request.service_latency, timeout_s=request.timeout_s, client=client
            )
            return [check]

        return Probe(name, run, service=service, url=url)

    if "services" in wanted:
        for tier in TIERS:
            for i, url in enumerate(settings.tier_urls(tier)):
                probes.append(http(f"service:{tier}" if i == 0 else f"service:{tier}@{url}", tier, url))
    if "gateway" in wanted:
        probes.append(http("gateway", "gateway", settings.gateway_url))
    if "data_dir" in wanted:
        probes.append(Probe("data_dir", lambda: [probe_data_dir(settings.data_dir, limits=request.store_latency)]))
    if "domain_store" in wanted:
        probes.append(Probe("domain_store", lambda: [_domain_store_probe(ctx, request.store_latency)]))
    if "postgresql" in wanted:
        probes.append(
            Probe(
                "postgresql",
                lambda: [probe_postgres(ctx, limits=request.dependency_latency, timeout_s=request.timeout_s)],
            )
        )
    if "redis" in wanted:
        probes.append(Probe("redis", lambda: [probe_redis(ctx, limits=request.dependency_latency)]))
    if "disk" in wanted:
        min_free = (
            request.disk_min_free_gb if request.disk_min_free_gb is not None else settings.resources.disk_min_free_gb
        )
        probes.append(
            Probe(
                "disk",
                lambda: probe_disk(
                    settings.data_dir,
                    free_warning_percent=request.disk_free_warning_percent,
                    free_failed_percent=request.disk_free_failed_percent,
                    min_free_gb=min_free,
                ),
            )
        )
    if "memory" in wanted:
        probes.append(
            Probe(
                "memory",
                lambda: [
                    probe_memory(
                        warning_percent=request.memory_warning_percent, failed_percent=request.memory_failed_percent
                    )
                ],
            )
        )
    return probes


def service_rows(runs: list[ProbeRun]) -> list[ServiceRow]:
    """A row per probed mesh service, from the runs of its probe."""
    rows = []
    for run in runs:
        if run.probe.service is None or run.probe.url is None:
            continue
        check = run.results[0]
        rows.append(
            ServiceRow(
                service=run.probe.service,
                url=run.probe.url,
                status=check.status,
                latency_ms=check.latency_ms,
                checked_at=run.checked_at,
                detail=check.detail,
            )
        )
    return rows


def counts(checks: list[CheckResult]) -> dict[str, int]:
    """How many checks have each status."""
    out = dict.fromkeys(("ok", "warning", "failed", "skipped"), 0)
    for check in checks:
        out[check.status] += 1
    return out


def summary(status: str, checks: list[CheckResult]) -> str:
    """``status: n checks; name: detail; …`` naming the checks that are not ok."""
    bad = [c for c in checks if c.status in ("warning", "failed")]
    if not bad:
        return f"{status}: {len(checks)} checks, none warning or failed"
    return f"{status}: " + "; ".join(f"{c.name} {c.status} ({c.detail})" for c in bad)


@component(
    "HealthMonitor",
    tier="tier4",
    capabilities=["health_checks", "service_probes", "dependency_probes"],
    example={"checks": ["services", "gateway", "data_dir", "disk", "memory"], "timeout_s": 0.5},
    examples=[{"checks": ["postgresql", "redis", "domain_store"]}],
    deterministic=False,  # latencies and readings change from call to call
)
def health_monitor(request: HealthMonitorInput, ctx: RunContext) -> HealthMonitorOutput:
    """Probe the mesh's services and dependencies (store, PostgreSQL, Redis, disk, memory) with thresholds.

    Every configured tier's and the gateway's ``/health`` over HTTP, the data directory (write + fsync +
    read), the domain store's ping, PostgreSQL ``SELECT 1`` and Redis ``PING`` latency (skipped when not
    configured), free disk and memory in use; each judged against its thresholds, the status is the worst.
    """
    with httpx.Client(timeout=request.timeout_s) as client:
        runs = run_probes(plan_probes(request, ctx, client))
    checks = [check for run in runs for check in run.results]
    status = worst(c.status for c in checks)
    return HealthMonitorOutput(
        status=status,
        checks=checks,
        services=service_rows(runs),
        counts=counts(checks),
        message=summary(status, checks),
    )
