"""MLResourceManagerHealthChecker: classification at the boundaries (injected readings) and real readings."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient

from services.framework import RunContext
from services.tier4.ml_resource_manager_health_checker import (
    MLResourceManagerHealthCheckerInput,
    Usage,
    classify,
    cpu_busy_percent,
    ml_resource_manager_health_checker,
    read_usage,
)
from tests.conftest import make_settings

ALL = {"checks": ["cpu", "memory", "disk"]}
CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def request(**fields: object) -> MLResourceManagerHealthCheckerInput:
    return MLResourceManagerHealthCheckerInput.model_validate({**ALL, **fields})


def usage(value: float) -> Usage:
    return Usage(
        cpu_system=value, cpu_process=value, memory_system=value, memory_process=value, disk_system=value, sample_s=0.1
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, "ok"), (74.99, "ok"), (75.0, "warning"), (89.99, "warning"), (90.0, "failed")]
)
def test_default_thresholds_classify_the_boundaries(value: float, expected: str) -> None:
    checks = classify(usage(value), request())
    assert [c.name for c in checks] == ["cpu_system", "cpu_process", "memory_system", "memory_process", "disk_system"]
    assert {c.status for c in checks} == {expected}
    assert all(c.value == value and c.unit == "%" for c in checks)
    assert {c.threshold for c in checks} == {90.0 if expected == "failed" else 75.0}


def test_thresholds_are_per_resource_and_only_requested_checks_run() -> None:
    req = request(checks=["memory"], memory_warning_percent=10, memory_failed_percent=20)
    checks = classify(Usage(memory_system=15.0, memory_process=25.0), req)
    assert [(c.name, c.status) for c in checks] == [("memory_system", "warning"), ("memory_process", "failed")]


def test_inverted_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="disk_failed_percent must be at least"):
        request(disk_warning_percent=80, disk_failed_percent=70)


def test_cpu_busy_percent_is_psutils_formula_by_hand() -> None:
    before = CpuTimes(100, 0, 50, 800, 50, 0, 0, 0, 10, 0)
    # +30 user, +10 system, +50 idle, +10 iowait, +5 guest (inside user already): 100 s of real time.
    after = CpuTimes(130, 0, 60, 850, 60, 0, 0, 0, 15, 0)
    assert cpu_busy_percent(before, after) == pytest.approx(40.0)
    assert cpu_busy_percent(before, before) == 0.0


def test_real_readings_match_independent_sources(tmp_path: Path) -> None:
    u = read_usage(["memory", "disk"], data_dir=tmp_path, sample_s=0.05)
    assert u.disk_system == pytest.approx(psutil.disk_usage(str(tmp_path)).percent, abs=0.5)
    rss_percent = psutil.Process().memory_info().rss / psutil.virtual_memory().total * 100
    assert u.memory_process == pytest.approx(rss_percent, rel=0.2)
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(fields[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
    assert u.memory_system == pytest.approx((total - available) / total * 100, abs=1.5)
    assert u.cpu_system is None  # not asked for


def test_a_busy_thread_shows_in_this_process_cpu(tmp_path: Path) -> None:
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(i * i for i in range(1000))

    worker = threading.Thread(target=burn, daemon=True)
    worker.start()
    try:
        time.sleep(0.05)
        u = read_usage(["cpu"], data_dir=tmp_path, sample_s=0.4)
    finally:
        stop.set()
        worker.join()
    cores = psutil.cpu_count() or 1
    # One spinning thread is up to one core of ``cores``; on a shared machine it gets at least a good part of it.
    assert 100 / cores * 0.3 <= u.cpu_process <= 100.0
    assert u.cpu_system is not None and u.cpu_system >= u.cpu_process * 0.5


def test_component_reports_worst_status(tmp_path: Path) -> None:
    ctx = RunContext(component="ml_resource_manager_health_checker", settings=make_settings(tmp_path), request_id=None)
    out = ml_resource_manager_health_checker(
        request(checks=["disk"], disk_warning_percent=1e-9, disk_failed_percent=1e-9), ctx
    )
    assert out.status == "failed" and out.checks[0].name == "disk_system"
    assert "disk_system failed" in out.message


def test_bad_input_over_http_names_the_field(client_for: Callable[..., TestClient]) -> None:
    client = client_for(ml_resource_manager_health_checker)
    url = "/run/ml_resource_manager_health_checker"
    r = client.post(url, json={"checks": ["gpu"]})
    assert r.status_code == 422 and "checks" in r.json()["detail"]
    r = client.post(url, json={**ALL, "sample_s": 60})
    assert r.status_code == 422 and "sample_s" in r.json()["detail"]
    r = client.post(url, json={**ALL, "cpu_warning_percent": 95, "cpu_failed_percent": 90})
    assert r.status_code == 422 and "cpu_failed_percent" in r.json()["detail"]
    ok = client.post(url, json={"checks": ["memory"]})
    assert ok.status_code == 200 and ok.json()["component_result"]["checks"][0]["name"] == "memory_system"
