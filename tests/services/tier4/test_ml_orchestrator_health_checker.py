"""MLOrchestratorHealthChecker against the real gateway (with real tiers announcing) and respx edge cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from gateway.app import create_app as create_gateway
from mlmesh.settings import TIERS, Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.ml_orchestrator_health_checker import (
    MLOrchestratorHealthCheckerInput,
    MLOrchestratorHealthCheckerOutput,
    ml_orchestrator_health_checker,
)
from tests.conftest import make_settings
from tests.support import ServerThread, free_port, get_json, wait_for

ALL = ["gateway", "freshness", "healthy_share", "backlog"]


def run(settings: Settings, **fields: Any) -> MLOrchestratorHealthCheckerOutput:
    ctx = RunContext(component="ml_orchestrator_health_checker", settings=settings, request_id=None)
    request = MLOrchestratorHealthCheckerInput.model_validate({"checks": ALL, **fields})
    return ml_orchestrator_health_checker(request, ctx)


def by_name(out: MLOrchestratorHealthCheckerOutput) -> dict[str, Any]:
    return {c.name: c for c in out.checks}


def service(i: int, status: str = "up", last_seen: float | None = 1.0) -> dict[str, Any]:
    return {"id": f"http://127.0.0.1:{9000 + i}", "tier": f"tier{i}", "status": status, "last_seen_s": last_seen}


@pytest.fixture
def mocked(tmp_path: Path):
    settings = make_settings(tmp_path, gateway={"port": 18999})
    with respx.mock(base_url=settings.gateway_url, assert_all_called=False) as router:
        yield settings, router


def test_fresh_registry_all_up_and_small_backlog_is_ok(mocked) -> None:
    settings, router = mocked
    router.get("/health").mock(
        return_value=httpx.Response(200, json={"status": "ok", "services": [service(1), service(2, last_seen=2.5)]})
    )
    router.get("/runs", params={"status": "queued"}).mock(
        return_value=httpx.Response(200, json={"runs": [], "counts": {"queued": 3, "running": 2}})
    )
    router.get("/runs", params={"status": "running"}).mock(
        return_value=httpx.Response(200, json={"runs": [{}, {}], "counts": {"queued": 3, "running": 2}})
    )
    out = run(settings)
    checks = by_name(out)
    assert out.status == "ok", out.message
    assert checks["freshness"].value == 2.5 and checks["freshness"].threshold == 10
    assert checks["healthy_share"].value == 1.0
    assert checks["backlog"].value == 3 and "2 running" in checks["backlog"].detail
    assert (out.services, out.services_up, out.queued_runs, out.running_runs) == (2, 2, 3, 2)


def test_stale_entry_half_down_and_backlog_are_graded(mocked) -> None:
    settings, router = mocked
    services = [service(1, last_seen=31.0), service(2, status="down", last_seen=0.5)]
    router.get("/health").mock(return_value=httpx.Response(200, json={"services": services}))
    # Counts absent: the listed runs are counted.
    router.get("/runs", params={"status": "queued"}).mock(
        return_value=httpx.Response(200, json={"runs": [{"status": "queued"}] * 12})
    )
    router.get("/runs", params={"status": "running"}).mock(return_value=httpx.Response(200, json={"runs": []}))
    checks = by_name(run(settings))
    assert checks["freshness"].status == "failed" and checks["freshness"].threshold == 30
    assert "http://127.0.0.1:9001" in checks["freshness"].detail
    # 1 of 2 up: 0.5 is below the warning share (1.0) but not below the failed share (0.5).
    assert checks["healthy_share"].status == "warning" and checks["healthy_share"].value == 0.5
    assert "9002 (down)" in checks["healthy_share"].detail
    assert checks["backlog"].status == "warning" and checks["backlog"].value == 12
    checks = by_name(run(settings, healthy_share_failed=0.75, backlog_failed=12))
    assert checks["healthy_share"].status == "failed" and checks["backlog"].status == "failed"


def test_never_seen_service_and_empty_registry_fail(mocked) -> None:
    settings, router = mocked
    route = router.get("/health")
    route.mock(return_value=httpx.Response(200, json={"services": [service(1), service(3, last_seen=None)]}))
    router.get("/runs").mock(return_value=httpx.Response(404, json={"detail": "not found"}))
    out = run(settings)
    checks = by_name(out)
    assert checks["freshness"].status == "failed" and "never heard from 1 service" in checks["freshness"].detail
    assert checks["backlog"].status == "skipped" and "404" in checks["backlog"].detail
    route.mock(return_value=httpx.Response(200, json={"services": []}))
    checks = by_name(run(settings))
    assert checks["freshness"].status == checks["healthy_share"].status == "failed"


def test_gateway_down_fails_every_check(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, gateway={"port": free_port()})
    out = run(settings, timeout_s=0.5)
    assert out.status == "failed"
    assert {c.name: c.status for c in out.checks} == dict.fromkeys(ALL, "failed")
    assert all("unreachable" in c.detail for c in out.checks)


def test_gateway_error_on_runs_is_failed_not_skipped(mocked) -> None:
    settings, router = mocked
    router.get("/health").mock(return_value=httpx.Response(200, json={"services": [service(1)]}))
    router.get("/runs").mock(return_value=httpx.Response(500, json={"detail": "bug"}))
    checks = by_name(run(settings, checks=["backlog"]))
    assert checks["backlog"].status == "failed" and "HTTP 500" in checks["backlog"].detail


def test_real_gateway_with_announcing_tiers_then_one_stops(tmp_path: Path) -> None:
    ports = {tier: free_port() for tier in TIERS}
    settings = make_settings(
        tmp_path,
        gateway={"port": free_port(), "heartbeat_timeout_s": 0.6},  # tiers announce every 0.2 s
        tiers={tier: {"port": port} for tier, port in ports.items()},
    )
    gateway = ServerThread(create_gateway(settings, poll=False), port=settings.gateway.port).start()
    tiers = {
        t: ServerThread(create_app(t, settings=settings, components=[], announce=True), port=ports[t]).start()
        for t in TIERS
    }
    try:

        def all_up() -> bool:
            services = get_json(f"{settings.gateway_url}/health")["services"]
            return len(services) == 4 and all(s["status"] == "up" for s in services)

        wait_for(all_up, timeout=15, what="every tier registered and up")
        out = run(settings, freshness_warning_s=0.8, freshness_failed_s=1.5)
        checks = by_name(out)
        assert checks["gateway"].status == "ok"
        assert checks["freshness"].status == "ok" and checks["freshness"].value < 0.8
        assert checks["healthy_share"].value == 1.0 and out.services == 4
        assert checks["backlog"].status in ("ok", "skipped")  # skipped only if the gateway has no /runs
        if checks["backlog"].status == "ok":
            assert out.queued_runs == 0

        tiers["tier4"].stop()

        def tier4_stale() -> MLOrchestratorHealthCheckerOutput | None:
            result = run(settings, freshness_warning_s=0.8, freshness_failed_s=1.5, checks=["freshness"])
            return result if result.checks[0].status == "failed" else None

        stale = wait_for(tier4_stale, timeout=10, interval=0.2, what="tier4's registry entry to go stale")
        assert f"tier4@127.0.0.1:{ports['tier4']}" in stale.checks[0].detail
    finally:
        for server in tiers.values():
            server.stop()
        gateway.stop()


def test_bad_input_over_http(client_for: Callable[..., TestClient]) -> None:
    client = client_for(ml_orchestrator_health_checker)
    url = "/run/ml_orchestrator_health_checker"
    r = client.post(url, json={"checks": ALL, "freshness_warning_s": 20, "freshness_failed_s": 10})
    assert r.status_code == 422 and "freshness_failed_s" in r.json()["detail"]
    r = client.post(url, json={"checks": ALL, "healthy_share_warning": 1.5})
    assert r.status_code == 422 and "healthy_share_warning" in r.json()["detail"]
    r = client.post(url, json={"checks": ["tea"]})
    assert r.status_code == 422 and "checks" in r.json()["detail"]
