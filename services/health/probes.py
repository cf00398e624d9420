"""Health probes shared by every health checker, and the one check-result shape they all report.

Every check answers ``{name, status, latency_ms, value, threshold, unit, detail}``:

* ``status`` — ``ok``, ``warning``, ``failed``, or ``skipped``. ``skipped`` means only one thing: the
  dependency is not configured (PostgreSQL without ``MLMESH_DATABASE_URL``, Redis without
  ``MLMESH_REDIS_URL``), and ``detail`` says so. A configured dependency that does not answer is ``failed``.
* ``latency_ms`` — how long the probe itself took (``None`` when nothing was run).
* ``value`` / ``threshold`` / ``unit`` — the measured figure, the threshold it was judged against (the one
  it crossed, else the warning threshold) and its unit.

Thresholds always come from the caller (each checker documents its defaults); nothing here relaxes them
under load, and no check is judged by the age of anything. An aggregate status is the worst of its checks
(:func:`worst`); ``skipped`` checks do not degrade it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
import psycopg
import redis
from pydantic import Field, model_validator

from mlmesh.errors import ServiceUnavailable
from services.framework import ComponentInput, ComponentOutput, RunContext
from services.infra import pg_connection, redis_client

__all__ = [
    "PROBE_FILE_PREFIX",
    "CheckResult",
    "LatencyThresholds",
    "Probe",
    "ProbeRun",
    "Status",
    "existing_ancestor",
    "grade",
    "latency_field",
    "probe_data_dir",
    "probe_disk",
    "probe_http",
    "probe_memory",
    "probe_postgres",
    "probe_redis",
    "run_probes",
    "skipped",
    "worst",
]

Status = Literal["ok", "warning", "failed", "skipped"]
# skipped ranks lowest: a dependency that is not configured never makes the aggregate worse.
_RANK: dict[str, int] = {"skipped": 0, "ok": 1, "warning": 2, "failed": 3}
PROBE_FILE_PREFIX = ".health-probe-"


class CheckResult(ComponentOutput):
    """One health check: what was measured, against which threshold, and the verdict."""

    name: str
    status: Status
    latency_ms: float | None = Field(None, description="time the probe took (None: nothing was run)")
    value: float | None = Field(None, description="the measured figure")
    threshold: float | None = Field(None, description="the threshold crossed, else the warning threshold")
    unit: str | None = None
    detail: str


class LatencyThresholds(ComponentInput):
    """A latency at or above ``warning_ms`` is a warning; at or above ``failed_ms`` it is failed."""

    warning_ms: float = Field(gt=0, le=600_000)
    failed_ms: float = Field(gt=0, le=600_000)

    @model_validator(mode="after")
    def _ordered(self) -> LatencyThresholds:
        if self.failed_ms < self.warning_ms:
            raise ValueError(f"failed_ms must be at least warning_ms ({self.warning_ms:g}); got {self.failed_ms:g}")
        return self


def latency_field(warning_ms: float, failed_ms: float) -> Any:
    """An input field of :class:`LatencyThresholds` with these defaults, described in the docs."""
    return Field(
        default_factory=lambda: LatencyThresholds(warning_ms=warning_ms, failed_ms=failed_ms),
        description=f"latency thresholds (default: warning at {warning_ms:g} ms, failed at {failed_ms:g} ms)",
    )


def worst(statuses: Iterable[str]) -> Status:
    """The worst status (failed > warning > ok > skipped); ``skipped`` when there is none."""
    return max(statuses, key=_RANK.__getitem__, default="skipped")  # type: ignore[return-value]


def grade(value: float, warning: float, failed: float, *, higher_is_worse: bool = True) -> tuple[Status, float]:
    """``value`` judged against a warning and a failed threshold: (status, the threshold that applied).

    With ``higher_is_worse`` a value ≥ ``failed`` is failed and ≥ ``warning`` a warning; otherwise a value
    below ``failed`` is failed and below ``warning`` a warning (e.g. free disk space, a share of healthy
    services: a share of exactly 1.0 against a warning threshold of 1.0 is ok).
    """
    if higher_is_worse:
        if value >= failed:
            return "failed", failed
        if value >= warning:
            return "warning", warning
        return "ok", warning
    if value < failed:
        return "failed", failed
    if value < warning:
        return "warning", warning
    return "ok", warning


def skipped(name: str, detail: str) -> CheckResult:
    """A check of a dependency that is not configured."""
    return CheckResult(name=name, status="skipped", detail=detail)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _latency_check(name: str, latency_ms: float, limits: LatencyThresholds, what: str) -> CheckResult:
    status, threshold = grade(latency_ms, limits.warning_ms, limits.failed_ms)
    relation = "≥" if status != "ok" else "<"
    return CheckResult(
        name=name,
        status=status,
        latency_ms=latency_ms,
        value=latency_ms,
        threshold=threshold,
        unit="ms",
        detail=f"{what} in {latency_ms:.2f} ms ({relation} {threshold:g} ms)",
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe_http(
    name: str,
    url: str,
    *,
    limits: LatencyThresholds,
    timeout_s: float,
    client: httpx.Client | None = None,
) -> tuple[CheckResult, dict[str, Any] | None]:
    """``GET url`` (a ``/health`` endpoint): failed unless it answers 200 in time; latency graded.

    Returns the check and the decoded JSON body (``None`` when there was no usable answer).
    """
    start = time.perf_counter()
    try:
        response = (client or httpx).get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        elapsed = _ms(start)
        return CheckResult(
            name=name, status="failed", latency_ms=elapsed, unit="ms", detail=f"{url} unreachable ({_reason(exc)})"
        ), None
    elapsed = _ms(start)
    if response.status_code != 200:
        return CheckResult(
            name=name,
            status="failed",
            latency_ms=elapsed,
            value=elapsed,
            unit="ms",
            detail=f"{url} answered HTTP {response.status_code}",
        ), None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return CheckResult(
            name=name, status="failed", latency_ms=elapsed, value=elapsed, unit="ms", detail=f"{url} answered no JSON"
        ), None
    return _latency_check(name, elapsed, limits, f"{url} answered 200"), body


def probe_data_dir(data_dir: Path, *, limits: LatencyThresholds, name: str = "data_dir") -> CheckResult:
    """The data directory is writable: write a probe file, fsync it, read it back, remove it; timed."""
    payload = secrets.token_bytes(64)
    path = Path(data_dir) / f"{PROBE_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    start = time.perf_counter()
    created = False
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        read_back = path.read_bytes()
    except OSError as exc:
        # strerror only: the exception's text would carry the absolute path.
        return CheckResult(
            name=name,
            status="failed",
            latency_ms=_ms(start),
            unit="ms",
            detail=f"data directory not writable: {exc.strerror or type(exc).__name__}",
        )
    finally:
        if created:
            path.unlink(missing_ok=True)
    elapsed = _ms(start)
    if read_back != payload:
        return CheckResult(
            name=name,
            status="failed",
            latency_ms=elapsed,
            value=elapsed,
            unit="ms",
            detail="data directory returned different bytes than were written",
        )
    return _latency_check(name, elapsed, limits, "probe file written, fsynced and read back")


def probe_postgres(
    ctx: RunContext, *, limits: LatencyThresholds, timeout_s: float, name: str = "postgresql"
) -> CheckResult:
    """``SELECT 1`` round trip on the service's pool; skipped without ``MLMESH_DATABASE_URL``."""
    if not ctx.settings.database_url:
        return skipped(name, "PostgreSQL is not configured (MLMESH_DATABASE_URL is not set)")
    start = time.perf_counter()
    try:
        with pg_connection(ctx, timeout=timeout_s) as conn:
            start = time.perf_counter()  # the query's round trip, not the wait for a pooled connection
            row = conn.execute("SELECT 1").fetchone()
            elapsed = _ms(start)
    except (ServiceUnavailable, psycopg.Error) as exc:
        detail = exc.detail if isinstance(exc, ServiceUnavailable) else f"PostgreSQL error ({_reason(exc)})"
        return CheckResult(name=name, status="failed", latency_ms=_ms(start), unit="ms", detail=detail)
    if row is None or row[0] != 1:
        return CheckResult(
            name=name, status="failed", latency_ms=elapsed, unit="ms", detail=f"SELECT 1 returned {row!r}"
        )
    return _latency_check(name, elapsed, limits, "SELECT 1 answered")


def probe_redis(ctx: RunContext, *, limits: LatencyThresholds, name: str = "redis") -> CheckResult:
    """``PING`` round trip on the service's client; skipped without ``MLMESH_REDIS_URL``."""
    if not ctx.settings.redis_url:
        return skipped(name, "Redis is not configured (MLMESH_REDIS_URL is not set)")
    client = redis_client(ctx)
    start = time.perf_counter()
    try:
        answered = client.ping()
    except redis.RedisError as exc:
        return CheckResult(
            name=name, status="failed", latency_ms=_ms(start), unit="ms", detail=f"Redis unreachable ({_reason(exc)})"
        )
    elapsed = _ms(start)
    if answered is not True:
        return CheckResult(name=name, status="failed", latency_ms=elapsed, unit="ms", detail="PING was not answered")
    return _latency_check(name, elapsed, limits, "PING answered")


def probe_disk(
    path: Path, *, free_warning_percent: float, free_failed_percent: float, min_free_gb: float
) -> list[CheckResult]:
    """Free space of the file system holding ``path``: free percent and free GB (``psutil.disk_usage``).

    Free percent is ``100 - psutil's percent``, i.e. ``free / (used + free)`` as ``df`` shows it (blocks
    reserved for root count as unavailable). Free GB below ``min_free_gb`` is failed. A path that does not
    exist yet is measured at its nearest existing ancestor.
    """
    start = time.perf_counter()
    try:
        usage = psutil.disk_usage(str(existing_ancestor(path)))
    except OSError as exc:
        detail = f"disk usage unreadable: {exc.strerror or type(exc).__name__}"
        return [
            CheckResult(name="disk_free_percent", status="failed", latency_ms=_ms(start), detail=detail),
            CheckResult(name="disk_free_gb", status="failed", latency_ms=_ms(start), detail=detail),
        ]
    elapsed = _ms(start)
    free_percent = 100.0 - float(usage.percent)
    free_gb = usage.free / 1e9
    status, threshold = grade(free_percent, free_warning_percent, free_failed_percent, higher_is_worse=False)
    gb_status: Status = "failed" if free_gb < min_free_gb else "ok"
    return [
        CheckResult(
            name="disk_free_percent",
            status=status,
            latency_ms=elapsed,
            value=free_percent,
            threshold=threshold,
            unit="%",
            detail=f"{free_percent:.1f} % of the data directory's file system free "
            f"({'<' if status != 'ok' else '≥'} {threshold:g} %)",
        ),
        CheckResult(
            name="disk_free_gb",
            status=gb_status,
            latency_ms=elapsed,
            value=free_gb,
            threshold=min_free_gb,
            unit="GB",
            detail=f"{free_gb:.2f} GB free ({'<' if gb_status == 'failed' else '≥'} {min_free_gb:g} GB)",
        ),
    ]


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing ancestor: a directory not made yet is on its ancestor's file system."""
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    return target


def probe_memory(*, warning_percent: float, failed_percent: float) -> CheckResult:
    """System memory in use (``psutil.virtual_memory().percent``: (total − available) / total)."""
    start = time.perf_counter()
    memory = psutil.virtual_memory()
    elapsed = _ms(start)
    used = float(memory.percent)
    status, threshold = grade(used, warning_percent, failed_percent)
    return CheckResult(
        name="memory",
        status=status,
        latency_ms=elapsed,
        value=used,
        threshold=threshold,
        unit="%",
        detail=f"{used:.1f} % of {memory.total / 2**30:.1f} GiB in use "
        f"({'≥' if status != 'ok' else '<'} {threshold:g} %)",
    )


@dataclass(frozen=True)
class Probe:
    """A named probe to run: ``run()`` returns its check(s). ``service`` names the mesh service it probes."""

    name: str
    run: Callable[[], list[CheckResult]]
    service: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ProbeRun:
    """A probe's checks and when they finished (unix seconds)."""

    probe: Probe
    results: list[CheckResult]
    checked_at: float


def run_probes(probes: Sequence[Probe], *, max_workers: int = 8) -> list[ProbeRun]:
    """Run ``probes`` concurrently (so their timeouts overlap rather than add up), in the given order."""
    if not probes:
        return []

    def one(probe: Probe) -> ProbeRun:
        results = probe.run()
        return ProbeRun(probe, results, time.time())

    with ThreadPoolExecutor(max_workers=min(max_workers, len(probes)), thread_name_prefix="health-probe") as pool:
        return list(pool.map(one, probes))
