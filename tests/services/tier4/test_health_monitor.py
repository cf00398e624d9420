"""HealthMonitor against real tier servers, the real PostgreSQL and Redis, and the local disk and memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlmesh.settings import TIERS, Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.health.probes import PROBE_FILE_PREFIX
from services.tier4.health_monitor import HealthMonitorInput, HealthMonitorOutput, health_monitor
from tests.conftest import make_settings
from tests.support import ServerThread, free_port

DB_URL = "postgresql://127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def mesh_settings(root: Path, **overrides: Any) -> Settings:
    return make_settings(
        root,
        gateway={"port": free_port()},
        tiers={tier: {"port": free_port()} for tier in TIERS},
        **overrides,
    )


def run(settings: Settings, contexts: list[RunContext] | None = None, **fields: Any) -> HealthMonitorOutput:
    ctx = RunContext(component="health_monitor", settings=settings, request_id=None)
    if contexts is not None:
        contexts.append(ctx)
    return health_monitor(HealthMonitorInput.model_validate(fields), ctx)


@pytest.fixture
def contexts() -> Iterator[list[RunContext]]:
    made: list[RunContext] = []
    yield made
    for ctx in made:
        for resource in [*ctx.resources.values(), *ctx.databases.values()]:
            resource.close()


def test_services_up_and_down_are_told_apart(tmp_path: Path) -> None:
    settings = mesh_settings(tmp_path)
    up = [
        ServerThread(create_app(t, settings=settings, components=[], announce=False), port=settings.tiers[t].port)
        for t in ("tier1", "tier3")
    ]
    for server in up:
        server.start()
    try:
        out = run(settings, checks=["services", "gateway"], timeout_s=1.0)
    finally:
        for server in up:
            server.stop()
    statuses = {c.name: c.status for c in out.checks}
    assert statuses == {
        "service:tier1": "ok",
        "service:tier2": "failed",
        "service:tier3": "ok",
        "service:tier4": "failed",
        "gateway": "failed",
    }
    assert out.status == "failed" and out.counts == {"ok": 2, "warning": 0, "failed": 3, "skipped": 0}
    rows = {r.service: r for r in out.services}
    assert set(rows) == {*TIERS, "gateway"}
    assert rows["tier1"].url == settings.tier_url("tier1") and rows["tier1"].latency_ms > 0
    assert rows["tier2"].status == "failed" and "unreachable" in rows["tier2"].detail
    assert "service:tier2 failed" in out.message


def test_latency_threshold_applies_to_answering_services(tmp_path: Path) -> None:
    settings = mesh_settings(tmp_path)
    server = ServerThread(
        create_app("tier2", settings=settings, components=[], announce=False), settings.tiers["tier2"].port
    )
    server.start()
    try:
        out = run(settings, checks=["services"], service_latency={"warning_ms": 1e-6, "failed_ms": 60_000})
    finally:
        server.stop()
    tier2 = next(c for c in out.checks if c.name == "service:tier2")
    assert tier2.status == "warning" and tier2.threshold == 1e-6 and tier2.value == tier2.latency_ms


def test_local_checks_are_healthy_and_leave_nothing_behind(tmp_path: Path, contexts: list[RunContext]) -> None:
    settings = mesh_settings(tmp_path)
    out = run(settings, contexts, checks=["data_dir", "domain_store", "disk", "memory", "postgresql", "redis"])
    statuses = {c.name: c.status for c in out.checks}
    assert statuses["data_dir"] == statuses["domain_store"] == "ok"
    assert statuses["postgresql"] == statuses["redis"] == "skipped"
    assert statuses["disk_free_gb"] == "ok"  # the default floor is 1 GB
    assert not [p for p in settings.data_dir.iterdir() if p.name.startswith(PROBE_FILE_PREFIX)]
    # Skipped checks never make the aggregate worse; alone they are all there is.
    assert run(settings, contexts, checks=["postgresql", "redis"]).status == "skipped"


def test_disk_and_memory_thresholds_from_input(tmp_path: Path) -> None:
    settings = mesh_settings(tmp_path)
    out = run(
        settings,
        checks=["disk", "memory"],
        disk_free_warning_percent=100,
        disk_free_failed_percent=100,
        disk_min_free_gb=1e6,
        memory_warning_percent=1e-9,
        memory_failed_percent=1e-9,
    )
    assert {c.name: c.status for c in out.checks} == {
        "disk_free_percent": "failed",
        "disk_free_gb": "failed",
        "memory": "failed",
    }


def test_real_postgres_and_redis(tmp_path: Path, contexts: list[RunContext]) -> None:
    settings = mesh_settings(tmp_path, database_url=DB_URL, redis_url=REDIS_URL)
    out = run(settings, contexts, checks=["postgresql", "redis"], timeout_s=5)
    assert out.status == "ok", out.message
    for check in out.checks:
        assert check.unit == "ms" and 0 < check.value < 500 and check.threshold == 50


def test_unreachable_redis_is_failed(tmp_path: Path, contexts: list[RunContext]) -> None:
    settings = mesh_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    out = run(settings, contexts, checks=["redis"])
    assert out.status == "failed" and "unreachable" in out.checks[0].detail


def test_bad_input_over_http(client_for: Callable[..., TestClient]) -> None:
    client = client_for(health_monitor)
    url = "/run/health_monitor"
    r = client.post(url, json={"checks": ["disk", "disk"]})
    assert r.status_code == 422 and "checks" in r.json()["detail"]
    r = client.post(url, json={"checks": ["coffee"]})
    assert r.status_code == 422 and "checks" in r.json()["detail"]
    r = client.post(url, json={"checks": ["disk"], "disk_free_warning_percent": 5, "disk_free_failed_percent": 10})
    assert r.status_code == 422 and "disk_free_failed_percent" in r.json()["detail"]
    r = client.post(url, json={"checks": ["services"], "timeout_s": 0})
    assert r.status_code == 422 and "timeout_s" in r.json()["detail"]
    ok = client.post(url, json={"checks": ["memory"]})
    assert ok.status_code == 200 and ok.json()["component_result"]["checks"][0]["name"] == "memory"
