"""Shared health probes: grading boundaries, aggregation, and each probe against an independent reading."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import ValidationError

from services.framework import RunContext
from services.health import (
    CheckResult,
    LatencyThresholds,
    Probe,
    grade,
    probe_data_dir,
    probe_disk,
    probe_http,
    probe_memory,
    probe_postgres,
    probe_redis,
    run_probes,
    worst,
)
from services.health.probes import PROBE_FILE_PREFIX, existing_ancestor
from tests.conftest import make_settings
from tests.support import free_port

DB_URL = "postgresql://127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
WIDE = LatencyThresholds(warning_ms=10_000, failed_ms=20_000)


@pytest.fixture
def ctx_for(tmp_path: Path) -> Iterator:
    made: list[RunContext] = []

    def make(**overrides: object) -> RunContext:
        ctx = RunContext(component="health_monitor", settings=make_settings(tmp_path, **overrides), request_id=None)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        for resource in ctx.resources.values():
            resource.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(74.999, "ok"), (75.0, "warning"), (89.999, "warning"), (90.0, "failed"), (100.0, "failed"), (0.0, "ok")],
)
def test_grade_higher_is_worse_boundaries(value: float, expected: str) -> None:
    status, threshold = grade(value, 75.0, 90.0)
    assert status == expected
    assert threshold == (90.0 if expected == "failed" else 75.0)


@pytest.mark.parametrize(("value", "expected"), [(1.0, "ok"), (0.999, "warning"), (0.5, "warning"), (0.49, "failed")])
def test_grade_lower_is_worse_is_strict(value: float, expected: str) -> None:
    assert grade(value, 1.0, 0.5, higher_is_worse=False)[0] == expected


def test_worst_ignores_skipped_and_orders_the_rest() -> None:
    assert worst(["ok", "skipped"]) == "ok"
    assert worst(["skipped", "skipped"]) == "skipped"
    assert worst([]) == "skipped"
    assert worst(["ok", "warning", "skipped"]) == "warning"
    assert worst(["warning", "failed", "ok"]) == "failed"


def test_latency_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="failed_ms must be at least warning_ms"):
        LatencyThresholds(warning_ms=100, failed_ms=50)


@respx.mock
def test_probe_http_grades_answers_and_failures() -> None:
    respx.get("http://svc.test/ok").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    respx.get("http://svc.test/err").mock(return_value=httpx.Response(503, json={"detail": "x"}))
    respx.get("http://svc.test/text").mock(return_value=httpx.Response(200, text="hello"))
    respx.get("http://svc.test/down").mock(side_effect=httpx.ConnectError("refused"))

    ok, body = probe_http("a", "http://svc.test/ok", limits=WIDE, timeout_s=1)
    assert ok.status == "ok" and body == {"status": "ok"}
    assert ok.value == ok.latency_ms and ok.unit == "ms" and ok.threshold == 10_000
    # Any real round trip takes longer than a nanosecond: the warning threshold applies.
    slow, _ = probe_http(
        "a", "http://svc.test/ok", limits=LatencyThresholds(warning_ms=1e-6, failed_ms=600_000), timeout_s=1
    )
    assert slow.status == "warning" and slow.threshold == 1e-6
    err, body = probe_http("a", "http://svc.test/err", limits=WIDE, timeout_s=1)
    assert err.status == "failed" and "HTTP 503" in err.detail and body is None
    text, _ = probe_http("a", "http://svc.test/text", limits=WIDE, timeout_s=1)
    assert text.status == "failed" and "no JSON" in text.detail
    down, _ = probe_http("a", "http://svc.test/down", limits=WIDE, timeout_s=1)
    assert down.status == "failed" and "unreachable" in down.detail and "ConnectError" in down.detail


def test_probe_http_against_a_closed_port_fails_fast() -> None:
    start = time.perf_counter()
    check, _ = probe_http("svc", f"http://127.0.0.1:{free_port()}/health", limits=WIDE, timeout_s=1)
    assert check.status == "failed" and "unreachable" in check.detail
    assert time.perf_counter() - start < 1.5


def test_probe_data_dir_writes_reads_and_cleans_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    check = probe_data_dir(data, limits=WIDE)
    assert check.status == "ok" and check.latency_ms is not None and check.latency_ms > 0
    assert not [p for p in data.iterdir() if p.name.startswith(PROBE_FILE_PREFIX)]


def test_probe_data_dir_fails_when_the_directory_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    check = probe_data_dir(blocker / "data", limits=WIDE)
    assert check.status == "failed" and "not writable" in check.detail
    assert str(tmp_path) not in check.detail  # no absolute path in what callers see


def test_probe_disk_matches_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    expected_free_percent = 100.0 - used / (used + avail) * 100.0
    percent, gb = probe_disk(tmp_path, free_warning_percent=0, free_failed_percent=0, min_free_gb=0)
    assert percent.value == pytest.approx(expected_free_percent, abs=0.5)
    assert gb.value == pytest.approx(avail / 1e9, rel=0.01)
    assert percent.status == "ok" and gb.status == "ok"
    # Thresholds above what any disk has: both fail, naming the threshold crossed.
    percent, gb = probe_disk(tmp_path, free_warning_percent=100, free_failed_percent=100, min_free_gb=1e6)
    assert (percent.status, percent.threshold) == ("failed", 100)
    assert (gb.status, gb.threshold) == ("failed", 1e6)


def test_probe_disk_of_a_directory_not_made_yet_measures_its_ancestor(tmp_path: Path) -> None:
    assert existing_ancestor(tmp_path / "a" / "b") == tmp_path
    percent, _ = probe_disk(tmp_path / "a" / "b", free_warning_percent=0, free_failed_percent=0, min_free_gb=0)
    assert percent.status == "ok" and percent.value is not None


def _meminfo_used_percent() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(fields["MemTotal"].split()[0])
    available = int(fields["MemAvailable"].split()[0])
    return (total - available) / total * 100.0


def test_probe_memory_matches_proc_meminfo() -> None:
    before = _meminfo_used_percent()
    check = probe_memory(warning_percent=99.9, failed_percent=100)
    after = _meminfo_used_percent()
    assert min(before, after) - 1.0 <= check.value <= max(before, after) + 1.0
    assert probe_memory(warning_percent=1e-9, failed_percent=1e-9).status == "failed"


def test_dependencies_are_skipped_only_when_not_configured(ctx_for) -> None:
    ctx = ctx_for()
    pg = probe_postgres(ctx, limits=WIDE, timeout_s=1)
    rd = probe_redis(ctx, limits=WIDE)
    assert (pg.status, rd.status) == ("skipped", "skipped")
    assert "MLMESH_DATABASE_URL" in pg.detail and "MLMESH_REDIS_URL" in rd.detail


def test_real_postgres_and_redis_answer(ctx_for) -> None:
    ctx = ctx_for(database_url=DB_URL, redis_url=REDIS_URL)
    pg = probe_postgres(ctx, limits=WIDE, timeout_s=5)
    rd = probe_redis(ctx, limits=WIDE)
    assert pg.status == "ok" and pg.unit == "ms" and 0 < pg.value < 10_000
    assert rd.status == "ok" and 0 < rd.value < 10_000
    # The same server judged against a threshold no round trip can meet.
    assert probe_redis(ctx, limits=LatencyThresholds(warning_ms=1e-6, failed_ms=1e-6)).status == "failed"


def test_unreachable_redis_is_failed_not_skipped(ctx_for) -> None:
    ctx = ctx_for(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    check = probe_redis(ctx, limits=WIDE)
    assert check.status == "failed" and "unreachable" in check.detail


def test_run_probes_overlaps_and_keeps_order() -> None:
    def sleeper(name: str) -> Probe:
        def run() -> list[CheckResult]:
            time.sleep(0.3)
            return [CheckResult(name=name, status="ok", detail="slept")]

        return Probe(name, run)

    start = time.perf_counter()
    runs = run_probes([sleeper("a"), sleeper("b"), sleeper("c")])
    assert time.perf_counter() - start < 0.8  # 3 × 0.3 s would be 0.9 s in series
    assert [r.results[0].name for r in runs] == ["a", "b", "c"]
    assert all(r.checked_at <= time.time() for r in runs)
