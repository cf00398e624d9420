"""RedisHealthMonitor against the real Redis: INFO figures checked against the test's own INFO reads."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.redis_health_monitor import (
    RedisHealthMonitorInput,
    hit_ratio,
    redact_url,
    redis_health_monitor,
)
from tests.conftest import AUTH, make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def redis_app(tmp_path: Path) -> Iterator[TestClient]:
    s = make_settings(tmp_path, redis_url=REDIS_URL)
    with TestClient(
        create_app("tier4", settings=s, components=[redis_health_monitor], announce=False), headers=AUTH
    ) as client:
        yield client


def _run(client: TestClient, body: dict) -> dict:
    r = client.post("/run/redis_health_monitor", json=body)
    assert r.status_code == 200, r.text
    return r.json()["component_result"]


def test_hit_ratio_matches_info_counters_around_known_hits_and_misses(redis_app: TestClient, raw: redis.Redis) -> None:
    prefix = f"test:rhm:{uuid.uuid4().hex}"
    keys = [f"{prefix}:{i}" for i in range(5)]
    try:
        before = raw.info("stats")
        raw.mset({k: "v" for k in keys})
        hits, misses = 7, 4
        for i in range(hits):
            assert raw.get(keys[i % len(keys)]) == b"v"
        for i in range(misses):
            assert raw.get(f"{prefix}:absent:{i}") is None
        result = _run(redis_app, {"operation": "check", "pings": 5})
        after = raw.info("stats")
    finally:
        raw.delete(*keys)
    stats = result["stats"]
    # Other clients may use the server meanwhile: the component's reading lies between the test's two reads
    # and includes the lookups made here.
    assert before["keyspace_hits"] + hits <= stats["keyspace_hits"] <= after["keyspace_hits"]
    assert before["keyspace_misses"] + misses <= stats["keyspace_misses"] <= after["keyspace_misses"]
    expected = stats["keyspace_hits"] / (stats["keyspace_hits"] + stats["keyspace_misses"])
    assert stats["hit_ratio"] == pytest.approx(expected, rel=1e-12)
    if (after["keyspace_hits"], after["keyspace_misses"]) == (
        before["keyspace_hits"] + hits,
        before["keyspace_misses"] + misses,
    ):  # a quiet server: the counters are exactly the hand count
        h, m = before["keyspace_hits"] + hits, before["keyspace_misses"] + misses
        assert stats["hit_ratio"] == pytest.approx(h / (h + m), rel=1e-12)


def test_percentiles_equal_numpy_on_returned_samples(redis_app: TestClient) -> None:
    latency = _run(redis_app, {"operation": "check", "pings": 40})["latency"]
    samples = np.asarray(latency["samples_ms"])
    assert samples.shape == (40,) and (samples > 0).all()
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    assert latency["p50_ms"] == pytest.approx(p50)
    assert latency["p95_ms"] == pytest.approx(p95)
    assert latency["p99_ms"] == pytest.approx(p99)
    assert latency["max_ms"] == pytest.approx(samples.max())
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]


def test_info_sections_match_the_server(redis_app: TestClient, raw: redis.Redis) -> None:
    result = _run(redis_app, {"operation": "check", "pings": 3})
    server = raw.info("server")
    assert result["server"]["redis_version"] == server["redis_version"]
    assert result["redis_version"] == server["redis_version"]
    assert result["server"]["uptime_in_seconds"] >= server["uptime_in_seconds"] - 1
    assert result["memory"]["used_memory"] > 0
    assert result["memory"]["maxmemory"] == raw.info("memory")["maxmemory"]
    assert result["clients"]["connected_clients"] >= 1
    assert result["clients"]["maxclients"] == raw.info("clients")["maxclients"]
    assert {"ok", "warning", "failed"} >= {result["status"]}


def test_thresholds_drive_status_and_reasons(redis_app: TestClient, raw: redis.Redis) -> None:
    # No PING takes under 1 ns, and at least one miss makes the ratio < 1: forced warning and failure.
    key = f"test:rhm:{uuid.uuid4().hex}"
    raw.get(key)  # a miss, so the hit ratio is below 1
    warn = _run(
        redis_app,
        {
            "operation": "check",
            "pings": 3,
            "latency_p99_warning_ms": 1e-6,
            "latency_p99_failed_ms": 1e4,
            "hit_ratio_warning": 1.0,
            "hit_ratio_min_lookups": 1,
        },
    )
    assert warn["status"] == "warning"
    assert {r["check"] for r in warn["reasons"]} == {"latency", "hit_ratio"}
    failed = _run(
        redis_app, {"operation": "check", "pings": 3, "latency_p99_warning_ms": 1e-6, "latency_p99_failed_ms": 1e-6}
    )
    assert failed["status"] == "failed"
    assert [r["level"] for r in failed["reasons"] if r["check"] == "latency"] == ["failed"]
    relaxed = _run(
        redis_app,
        {
            "operation": "check",
            "pings": 3,
            "latency_p99_warning_ms": 60_000,
            "latency_p99_failed_ms": 60_000,
            "hit_ratio_min_lookups": 2**62,
        },
    )
    assert relaxed["status"] == "ok" and relaxed["reasons"] == []


def test_status_with_redis_reports_version(redis_app: TestClient, raw: redis.Redis) -> None:
    result = _run(redis_app, {"operation": "status"})
    assert result["configured"] is True and result["reachable"] is True
    assert result["redis_version"] == raw.info("server")["redis_version"]


def test_not_configured(client_for: Callable[..., TestClient]) -> None:
    client = client_for(redis_health_monitor)
    status = _run(client, {"operation": "status"})
    assert status["configured"] is False and "MLMESH_REDIS_URL" in status["message"]
    r = client.post("/run/redis_health_monitor", json={"operation": "check"})
    assert r.status_code == 503
    assert "MLMESH_REDIS_URL" in r.json()["detail"]


def test_unreachable_is_503(tmp_path: Path) -> None:
    s = make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    with TestClient(
        create_app("tier4", settings=s, components=[redis_health_monitor], announce=False), headers=AUTH
    ) as client:
        for body in ({"operation": "check", "pings": 2}, {"operation": "status"}):
            r = client.post("/run/redis_health_monitor", json=body)
            assert r.status_code == 503, r.text
            assert "unreachable" in r.json()["detail"]


def test_threshold_order_is_validated(client_for: Callable[..., TestClient]) -> None:
    r = client_for(redis_health_monitor).post(
        "/run/redis_health_monitor",
        json={"operation": "check", "latency_p99_warning_ms": 50, "latency_p99_failed_ms": 5},
    )
    assert r.status_code == 422
    assert "latency_p99_failed_ms" in r.json()["detail"]


def test_plain_call_and_helpers(settings: Settings) -> None:
    out = redis_health_monitor(
        RedisHealthMonitorInput.model_validate({"operation": "status"}),
        RunContext("redis_health_monitor", settings, None),
    )
    assert out.configured is False
    assert hit_ratio(3, 1) == 0.75 and hit_ratio(0, 0) is None
    assert redact_url("redis://user:secret@host:6380/1") == "redis://user:***@host:6380/1"
    assert redact_url(REDIS_URL) == REDIS_URL
