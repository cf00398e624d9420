"""Resource-usage health: CPU, memory and disk of this process and of the system, from psutil.

**Readings** (:func:`read_usage`):

* CPU, system — busy share of all CPU time over a sampling window of ``sample_s`` seconds, from two
  ``psutil.cpu_times()`` snapshots: busy = total − idle − iowait (guest time is already inside user/nice
  on Linux, so it is not counted twice), the formula ``psutil.cpu_percent`` uses. Computed here from the
  snapshots rather than with ``cpu_percent(interval=None)``, whose baseline is shared by every caller in
  the process.
* CPU, process — this process's user + system CPU time over the same window, as a percent of the
  machine's capacity (wall time × logical CPUs).
* memory, system — ``virtual_memory().percent``, i.e. (total − available) / total; process — resident
  set size / total memory.
* disk, system — ``disk_usage(data_dir).percent`` (used / (used + free), as ``df`` shows). Disk is a
  file-system figure: there is no per-process share of it.

**Classification** (:func:`classify`, a pure function of the readings): a reading ≥ its failed threshold
(default 90 %) is failed, ≥ its warning threshold (default 75 %) a warning, otherwise ok. The aggregate is
the worst check.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import psutil
from pydantic import Field, model_validator

from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import CheckResult, Status, existing_ancestor, grade, worst

__all__ = [
    "RESOURCE_CHECKS",
    "MLResourceManagerHealthCheckerInput",
    "MLResourceManagerHealthCheckerOutput",
    "ResourceCheck",
    "Usage",
    "classify",
    "cpu_busy_percent",
    "ml_resource_manager_health_checker",
    "read_usage",
]

ResourceCheck = Literal["cpu", "memory", "disk"]
RESOURCE_CHECKS: tuple[str, ...] = get_args(ResourceCheck)


class MLResourceManagerHealthCheckerInput(ComponentInput):
    """Which resources to check, the CPU sampling window, and the thresholds (percent of capacity)."""

    checks: list[ResourceCheck] = Field(
        min_length=1, max_length=len(RESOURCE_CHECKS), description=f"any of {list(RESOURCE_CHECKS)}"
    )
    sample_s: float = Field(0.2, ge=0.05, le=5, description="CPU sampling window")
    cpu_warning_percent: float = Field(75.0, gt=0, le=100)
    cpu_failed_percent: float = Field(90.0, gt=0, le=100)
    memory_warning_percent: float = Field(75.0, gt=0, le=100)
    memory_failed_percent: float = Field(90.0, gt=0, le=100)
    disk_warning_percent: float = Field(75.0, gt=0, le=100)
    disk_failed_percent: float = Field(90.0, gt=0, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> MLResourceManagerHealthCheckerInput:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks: each check may be named once")
        for what in RESOURCE_CHECKS:
            warning = getattr(self, f"{what}_warning_percent")
            failed = getattr(self, f"{what}_failed_percent")
            if failed < warning:
                raise ValueError(f"{what}_failed_percent must be at least {what}_warning_percent ({warning:g})")
        return self


@dataclass(frozen=True)
class Usage:
    """Resource readings in percent of capacity (``None``: not read)."""

    cpu_system: float | None = None
    cpu_process: float | None = None
    memory_system: float | None = None
    memory_process: float | None = None
    disk_system: float | None = None
    sample_s: float | None = None
    read_ms: dict[str, float] | None = None


class MLResourceManagerHealthCheckerOutput(ComponentOutput):
    status: Status
    checks: list[CheckResult]
    cpu_count: int
    memory_total_mb: float
    message: str


def cpu_busy_percent(before: Any, after: Any) -> float:
    """System CPU busy percent between two ``psutil.cpu_times()`` snapshots (psutil's own formula)."""

    def split(t: Any) -> tuple[float, float]:
        total = float(sum(t))
        # Linux counts guest time inside user and nice already.
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total, total - idle

    total0, busy0 = split(before)
    total1, busy1 = split(after)
    d_total = total1 - total0
    if d_total <= 0:
        return 0.0
    return float(min(100.0, max(0.0, (busy1 - busy0) / d_total * 100.0)))


def read_usage(checks: list[str], *, data_dir: Path, sample_s: float) -> Usage:
    """Read the figures ``checks`` need (CPU over a ``sample_s`` window)."""
    proc = psutil.Process()
    values: dict[str, float | None] = {}
    read_ms: dict[str, float] = {}
    if "cpu" in checks:
        start = time.perf_counter()
        sys0, proc0, wall0 = psutil.cpu_times(), proc.cpu_times(), time.monotonic()
        time.sleep(sample_s)
        sys1, proc1, wall1 = psutil.cpu_times(), proc.cpu_times(), time.monotonic()
        values["cpu_system"] = cpu_busy_percent(sys0, sys1)
        used = (proc1.user + proc1.system) - (proc0.user + proc0.system)
        capacity = (wall1 - wall0) * (psutil.cpu_count() or 1)
        values["cpu_process"] = max(0.0, used / capacity * 100.0) if capacity > 0 else 0.0
        read_ms["cpu"] = (time.perf_counter() - start) * 1000.0
    if "memory" in checks:
        start = time.perf_counter()
        memory = psutil.virtual_memory()
        values["memory_system"] = float(memory.percent)
        values["memory_process"] = proc.memory_info().rss / memory.total * 100.0
        read_ms["memory"] = (time.perf_counter() - start) * 1000.0
    if "disk" in checks:
        start = time.perf_counter()
        values["disk_system"] = float(psutil.disk_usage(str(existing_ancestor(data_dir))).percent)
        read_ms["disk"] = (time.perf_counter() - start) * 1000.0
    return Usage(**values, sample_s=sample_s if "cpu" in checks else None, read_ms=read_ms)


def classify(usage: Usage, request: MLResourceManagerHealthCheckerInput) -> list[CheckResult]:
    """Each reading of ``usage`` judged against the thresholds of ``request`` (pure: no reading happens)."""
    rows = [
        ("cpu", "system", usage.cpu_system, "CPU busy, all cores"),
        ("cpu", "process", usage.cpu_process, "CPU used by this process, share of all cores"),
        ("memory", "system", usage.memory_system, "memory in use"),
        ("memory", "process", usage.memory_process, "resident memory of this process, share of total"),
        ("disk", "system", usage.disk_system, "data directory's file system used"),
    ]
    checks = []
    for resource, scope, value, what in rows:
        if resource not in request.checks:
            continue
        if value is None:
            raise ValueError(f"no {resource} {scope} reading to classify")
        warning = getattr(request, f"{resource}_warning_percent")
        failed = getattr(request, f"{resource}_failed_percent")
        status, threshold = grade(value, warning, failed)
        window = f" over {usage.sample_s:g} s" if resource == "cpu" and usage.sample_s else ""
        checks.append(
            CheckResult(
                name=f"{resource}_{scope}",
                status=status,
                latency_ms=(usage.read_ms or {}).get(resource),
                value=value,
                threshold=threshold,
                unit="%",
                detail=f"{what}{window}: {value:.1f} % ({'≥' if status != 'ok' else '<'} {threshold:g} %)",
            )
        )
    return checks


@component(
    "MLResourceManagerHealthChecker",
    tier="tier4",
    capabilities=["health_checks", "resource_usage"],
    example={"checks": ["cpu", "memory", "disk"], "sample_s": 0.1},
    deterministic=False,  # live readings
)
def ml_resource_manager_health_checker(
    request: MLResourceManagerHealthCheckerInput, ctx: RunContext
) -> MLResourceManagerHealthCheckerOutput:
    """Resource-usage health: CPU, memory and disk percent of this process and the system vs thresholds.

    CPU is sampled over ``sample_s`` from psutil's CPU-time counters; memory from ``virtual_memory`` and the
    process's RSS; disk from ``disk_usage`` of the data directory. ≥ the failed threshold (default 90 %) is
    failed, ≥ the warning threshold (default 75 %) a warning; the status is the worst.
    """
    usage = read_usage(list(request.checks), data_dir=ctx.data_dir, sample_s=request.sample_s)
    checks = classify(usage, request)
    status = worst(c.status for c in checks)
    bad = [f"{c.name} {c.status} ({c.value:.1f} % ≥ {c.threshold:g} %)" for c in checks if c.status != "ok"]
    return MLResourceManagerHealthCheckerOutput(
        status=status,
        checks=checks,
        cpu_count=psutil.cpu_count() or os.cpu_count() or 1,
        memory_total_mb=psutil.virtual_memory().total / 2**20,
        message=f"{status}: " + ("; ".join(bad) if bad else f"{len(checks)} readings below their thresholds"),
    )
