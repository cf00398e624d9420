"""Shared health probes and the one check-result shape of every health checker.

Public surface::

    CheckResult, Status            one check: {name, status, latency_ms, value, threshold, unit, detail}
    LatencyThresholds              a warning/failed pair in milliseconds (latency_field: an input field of one)
    Probe, ProbeRun, run_probes    named probes run concurrently
    grade, worst, skipped          classification and aggregation
    probe_http, probe_data_dir     mesh services and the data directory
    probe_postgres, probe_redis    the optional dependencies (skipped when not configured)
    probe_disk, probe_memory       psutil readings against thresholds
"""

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
    skipped,
    worst,
)

__all__ = [
    "CheckResult",
    "LatencyThresholds",
    "Probe",
    "ProbeRun",
    "Status",
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
