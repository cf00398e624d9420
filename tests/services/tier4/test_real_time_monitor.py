"""RealTimeMonitor against real tier services in threads: exact request counts between samples, latency from
the bucket increases, a restarted service, a stopped service, and resident memory from a process collector."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlmesh.settings import Settings
from services.framework.app import create_app
from services.tier4.performance_monitor import Scrape, histogram_quantile, parse_metrics
from services.tier4.real_time_monitor import RealTimeMonitorInput, RealTimeMonitorOutput, monitor, real_time_monitor
from services.tier4.redis_health_monitor import redis_health_monitor
from tests.conftest import AUTH
from tests.support import ServerThread, serving, wait_for


def tier_app(settings: Settings) -> Any:
    # Redis is not configured in the test settings, so the `check` operation answers 503: real failures.
    return create_app("tier4", settings=settings, components=[redis_health_monitor], announce=False)


def scrape(url: str) -> Scrape:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=5).text)


def counted(url: str) -> float:
    """Requests the service has counted, apart from its /metrics scrapes."""
    return sum(v for (route, _, _), v in scrape(url).requests.items() if route != "/metrics")


def traffic(url: str, *, ok: int, failing: int, invalid: int, health: int) -> int:
    """Make real requests and wait until the service has counted them (it counts after answering)."""
    before = counted(url)
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as http:
        for _ in range(ok):
            assert http.post("/run/redis_health_monitor", json={"operation": "status"}).status_code == 200
        for _ in range(failing):
            assert http.post("/run/redis_health_monitor", json={"operation": "check"}).status_code == 503
        for _ in range(invalid):
            assert http.post("/run/redis_health_monitor", json={"operation": "nope"}).status_code == 422
        for _ in range(health):
            assert http.get("/health").status_code == 200
    total = ok + failing + invalid + health
    wait_for(lambda: counted(url) >= before + total, what="the service to count the requests")
    return total


def run_monitor(body: dict[str, Any], settings: Settings, between: Callable[[int], object] | None = None) -> Any:
    return asyncio.run(monitor(RealTimeMonitorInput.model_validate(body), settings, between=between))


@pytest.fixture
def live(settings: Settings) -> Iterator[ServerThread]:
    with serving(tier_app(settings)) as server:
        yield server


def test_counts_rates_and_latency_between_samples_are_exact(settings: Settings, live: ServerThread) -> None:
    traffic(live.url, ok=2, failing=1, invalid=0, health=0)  # before the first sample: not in the window
    own: list[Scrape] = []

    def between(i: int) -> None:
        own.append(scrape(live.url))
        if i == 0:
            traffic(live.url, ok=5, failing=2, invalid=1, health=1)
        else:
            traffic(live.url, ok=3, failing=1, invalid=1, health=0)
        own.append(scrape(live.url))

    body = {"base_urls": [live.url], "samples": 3, "interval_s": 0.05, "error_rate_critical": 0.2}
    result: RealTimeMonitorOutput = run_monitor(body, settings, between)
    (svc,) = result.services
    assert svc.status == "up" and svc.samples_ok == 3 and svc.counter_resets == 0
    assert svc.requests == 14
    assert svc.errors_5xx == 3 and svc.throttled_429 == 0
    assert svc.error_rate == pytest.approx(3 / 14)
    assert svc.request_rate_per_s == pytest.approx(14 / svc.window_s)
    # The latency buckets' increase over the two bursts, read by the test's own scrapes around each burst.
    increase: dict[float, float] = {}
    for before, after in [(own[0], own[1]), (own[2], own[3])]:
        for (route, method, le), value in after.buckets.items():
            if route != "/metrics":
                increase[le] = increase.get(le, 0.0) + value - before.buckets.get((route, method, le), 0.0)
    merged = sorted(increase.items())
    assert merged[-1][1] == 14
    assert svc.latency_p50_ms == pytest.approx(histogram_quantile(0.5, merged) * 1000)
    assert svc.latency_p95_ms == pytest.approx(histogram_quantile(0.95, merged) * 1000)
    (alert,) = [a for a in result.alerts if a.metric == "error_rate"]
    assert alert.severity == "critical" and alert.value == pytest.approx(3 / 14) and alert.threshold == 0.2


def test_route_prefix_and_min_requests(settings: Settings, live: ServerThread) -> None:
    def between(i: int) -> None:
        traffic(live.url, ok=1, failing=1, invalid=0, health=3)

    body = {"base_urls": [live.url], "samples": 2, "interval_s": 0.05, "route_prefix": "/run/", "min_requests": 3}
    result = run_monitor(body, settings, between)
    (svc,) = result.services
    assert svc.requests == 2 and svc.errors_5xx == 1 and svc.error_rate == 0.5
    # Two requests are below min_requests: the error rate is reported but not judged.
    assert not [a for a in result.alerts if a.metric == "error_rate"]
    judged = run_monitor({**body, "min_requests": 2}, settings, between)
    assert [a.severity for a in judged.alerts if a.metric == "error_rate"] == ["critical"]


def test_restarted_service_counts_from_zero(settings: Settings) -> None:
    servers = [ServerThread(tier_app(settings)).start()]

    def between(i: int) -> None:
        if i == 0:
            traffic(servers[0].url, ok=4, failing=0, invalid=0, health=0)
        else:  # a restart on the same port: its counters start again
            port = servers[0].port
            servers[0].stop()
            servers.append(ServerThread(tier_app(settings), port=port).start())
            traffic(servers[1].url, ok=2, failing=0, invalid=0, health=0)

    try:
        body = {"base_urls": [servers[0].url], "samples": 3, "interval_s": 0.05}
        (svc,) = run_monitor(body, settings, between).services
    finally:
        servers[-1].stop()
    assert svc.status == "up"
    assert svc.requests == 6 and svc.counter_resets >= 1


def test_stopped_service_is_down_with_a_critical_alert(
    settings: Settings, live: ServerThread, client_for: Callable[..., TestClient]
) -> None:
    with serving(tier_app(settings)) as stopped:
        dead = stopped.url
    client = client_for(real_time_monitor)
    body = {"base_urls": [live.url, dead], "samples": 2, "interval_s": 0.1}
    r = client.post("/run/real_time_monitor", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["component_result"]
    up, down = result["services"]
    assert up["status"] == "up" and up["requests"] == 0 and up["error_rate"] is None
    assert down["status"] == "down" and down["samples_ok"] == 0 and "ConnectError" in down["last_error"]
    assert result["status"] == "critical"
    (alert,) = [a for a in result["alerts"] if a["service"] == dead]
    assert (alert["metric"], alert["value"], alert["threshold"], alert["severity"]) == ("up", 0.0, 1.0, "critical")


def test_memory_from_process_resident_memory_bytes(settings: Settings) -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/metrics", metrics)])
    with serving(app) as server:
        body = {"base_urls": [server.url], "samples": 2, "interval_s": 0.05, "memory_warning_mb": 1.0}
        result = run_monitor(body, settings)
    # The server runs in this process: its resident memory is ours.
    rss_mb = psutil.Process().memory_info().rss / 2**20
    (svc,) = result.services
    assert svc.memory_mb == pytest.approx(rss_mb, rel=0.2)
    assert svc.requests == 0  # a service without the mesh's request metrics
    (alert,) = result.alerts
    assert alert.metric == "memory_mb" and alert.severity == "warning"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"samples": 2, "interval_s": 0.1, "base_urls": ["http://192.168.1.4:8004"]}, "base_urls"),
        ({"samples": 2, "interval_s": 0.1, "base_urls": ["ftp://127.0.0.1:8004"]}, "base_urls"),
        ({"samples": 31, "interval_s": 2.5}, "interval_s"),
        ({"samples": 1, "interval_s": 0.1}, "samples"),
        ({"samples": 2, "interval_s": 0.1, "error_rate_warning": 0.5, "error_rate_critical": 0.1}, "error_rate"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(real_time_monitor).post("/run/real_time_monitor", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
