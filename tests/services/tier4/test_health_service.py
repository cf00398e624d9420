"""HealthService: per-service rows follow real servers; each unit's circuit breaker opens and recovers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app as create_gateway
from mlmesh.settings import TIERS, Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.health_service import (
    BREAKERS_RESOURCE,
    CHECKERS,
    HealthServiceInput,
    HealthServiceOutput,
    health_service,
)
from tests.conftest import make_settings
from tests.support import ServerThread, free_port


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, gateway={"port": free_port()}, tiers={tier: {"port": free_port()} for tier in TIERS})


@pytest.fixture
def ctx(settings: Settings) -> Iterator[RunContext]:
    # One context reused across calls stands for one service process (its ctx.resources persist).
    context = RunContext(component="health_service", settings=settings, request_id=None)
    yield context
    for resource in [*context.resources.values(), *context.databases.values()]:
        resource.close()


def run(ctx: RunContext, **fields: Any) -> HealthServiceOutput:
    return health_service(HealthServiceInput.model_validate({"checkers": ["health_monitor"], **fields}), ctx)


def rows(out: HealthServiceOutput) -> dict[str, str]:
    return {r.service: r.status for r in out.services}


def test_killing_a_tier_turns_its_row_failed_on_the_next_call(settings: Settings, ctx: RunContext) -> None:
    servers = {
        t: ServerThread(create_app(t, settings=settings, components=[], announce=False), settings.tiers[t].port).start()
        for t in TIERS
    }
    try:
        before = run(ctx, timeout_s=1.0)
        assert rows(before) == {"tier1": "ok", "tier2": "ok", "tier3": "ok", "tier4": "ok", "gateway": "failed"}
        started = time.time()
        servers["tier2"].stop()
        after = run(ctx, timeout_s=1.0)
    finally:
        for server in servers.values():
            server.stop()
    assert rows(after)["tier2"] == "failed"
    assert {k: v for k, v in rows(after).items() if k != "tier2"} == {
        k: v for k, v in rows(before).items() if k != "tier2"
    }
    tier2 = next(r for r in after.services if r.service == "tier2")
    assert tier2.checked_at >= started and tier2.url == settings.tier_url("tier2")
    assert after.status == "failed"


def test_breaker_opens_after_fail_max_and_recovers_after_reset(settings: Settings, ctx: RunContext) -> None:
    fields = {"timeout_s": 0.5, "breaker_fail_max": 2, "breaker_reset_s": 0.5}
    for _ in range(2):
        out = run(ctx, **fields)
        gateway = next(c for c in out.checks if c.name == "health_monitor.gateway")
        assert gateway.status == "failed" and "unreachable" in gateway.detail
    breaker = {b.name: b for b in out.breakers}["health_monitor.gateway"]
    assert (breaker.state, breaker.fail_counter) == ("open", 2)

    opened = run(ctx, **fields)
    gateway = next(c for c in opened.checks if c.name == "health_monitor.gateway")
    assert gateway.status == "failed" and "circuit open" in gateway.detail and gateway.latency_ms is None
    assert rows(opened)["gateway"] == "failed"
    # Units that pass keep closed breakers.
    assert {b.name: b.state for b in opened.breakers}["health_monitor.memory"] == "closed"

    server = ServerThread(create_gateway(settings, poll=False), port=settings.gateway.port).start()
    try:
        time.sleep(0.6)  # past the reset timeout: the next call is the half-open trial
        recovered = run(ctx, **fields)
    finally:
        server.stop()
    gateway = next(c for c in recovered.checks if c.name == "health_monitor.gateway")
    assert gateway.status == "ok" and rows(recovered)["gateway"] == "ok"
    assert {b.name: b.state for b in recovered.breakers}["health_monitor.gateway"] == "closed"


def test_breakers_live_in_the_service_resources(settings: Settings, ctx: RunContext) -> None:
    run(ctx, checkers=["ml_resource_manager_health_checker"])
    assert BREAKERS_RESOURCE in ctx.resources
    fresh = RunContext(component="health_service", settings=settings, request_id=None)
    out = run(fresh, checkers=["ml_resource_manager_health_checker"])
    assert [b.name for b in out.breakers] == ["ml_resource_manager_health_checker"]


def test_every_checker_is_aggregated_into_the_worst_status(ctx: RunContext) -> None:
    out = run(ctx, checkers=list(CHECKERS), timeout_s=0.5)
    assert set(out.checkers) == set(CHECKERS)
    prefixes = {c.name.split(".", 1)[0] for c in out.checks}
    assert prefixes == set(CHECKERS)
    # The gateway and the tiers are down here: the orchestrator checker and the monitor fail.
    assert out.checkers["ml_orchestrator_health_checker"] == "failed"
    assert out.checkers["ml_service_health_checker"] == "ok"  # an empty registry is healthy
    order = {"skipped": 0, "ok": 1, "warning": 2, "failed": 3}
    assert out.status == max((c.status for c in out.checks), key=order.__getitem__) == "failed"
    assert sum(out.counts.values()) == len(out.checks)


def test_bad_input_over_http(client_for: Callable[..., TestClient]) -> None:
    client = client_for(health_service)
    url = "/run/health_service"
    r = client.post(url, json={"checkers": ["health_monitor", "health_monitor"]})
    assert r.status_code == 422 and "checkers" in r.json()["detail"]
    r = client.post(url, json={"checkers": ["health_monitor"], "breaker_fail_max": 0})
    assert r.status_code == 422 and "breaker_fail_max" in r.json()["detail"]
    r = client.post(url, json={"checkers": []})
    assert r.status_code == 422 and "checkers" in r.json()["detail"]
