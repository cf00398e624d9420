"""The dashboard page, its static files and ``/dashboard/data`` (rates, quantiles, alerts)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app as create_gateway
from gateway.dashboard import (
    STATIC_DIR,
    DashboardData,
    Sample,
    Totals,
    interval_point,
    traffic_totals,
)
from mlmesh.prometheus import histogram_quantile
from mlmesh.web import LATENCY_BUCKETS, RequestMetrics
from services.framework.app import create_app as create_tier
from tests.conftest import make_settings
from tests.gateway.conftest import gateway_settings
from tests.gateway.toys import toy_add, toy_wait
from tests.support import serving

PAGE_FILES = ("dashboard.html", "dashboard.js", "dashboard.css")


@pytest.fixture
def offline(tmp_path: Path, tier_ports: dict[str, int]) -> TestClient:
    """A gateway with no tier running and no health polling."""
    with TestClient(create_gateway(gateway_settings(tmp_path, tier_ports), poll=False)) as client:
        yield client


# ---- the page ------------------------------------------------------------------------------


def test_dashboard_page_is_html_with_a_strict_policy(offline: TestClient) -> None:
    response = offline.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert '<script src="/static/dashboard.js"' in html
    assert 'href="/static/dashboard.css"' in html
    for section in ("services", "alerts", "chart-rate", "chart-latency", "runs", "components"):
        assert f'id="{section}"' in html


@pytest.mark.parametrize(
    ("name", "media"), [("dashboard.js", "javascript"), ("dashboard.css", "text/css"), ("dashboard.html", "text/html")]
)
def test_static_files_are_served(offline: TestClient, name: str, media: str) -> None:
    response = offline.get(f"/static/{name}")
    assert response.status_code == 200
    assert media in response.headers["content-type"]
    assert response.text == (STATIC_DIR / name).read_text(encoding="utf-8")


def test_static_files_stay_in_their_folder(offline: TestClient) -> None:
    assert offline.get("/static/nope.js").status_code == 404
    assert offline.get("/static/../dashboard.py").status_code == 404
    assert offline.get("/static/%2e%2e/dashboard.py").status_code == 404


def test_page_references_no_external_host() -> None:
    files = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css"))
    assert {p.name for p in files} >= set(PAGE_FILES)
    external = re.compile(r"https?://|(?:src|href)\s*=\s*[\"']?//|url\(\s*[\"']?//|@import", re.IGNORECASE)
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not external.search(text), f"{path.name} references an external URL: {external.search(text)}"
    # What the page fetches is the gateway's own public GET endpoints, by absolute path.
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    fetched = set(re.findall(r'getJSON\("([^"]+)"\)', script))
    assert fetched == {"/health", "/dashboard/data", "/runs?limit=20", "/components"}


def test_page_never_writes_server_text_as_html() -> None:
    script = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and 'setAttribute("style"' not in script


def test_dashboard_is_in_the_gateway_docs(offline: TestClient) -> None:
    paths = offline.get("/openapi.json").json()["paths"]
    assert "/dashboard" in paths and "/dashboard/data" in paths


# ---- /dashboard/data ----------------------------------------------------------------------


def test_data_lists_the_gateway_and_every_service(offline: TestClient) -> None:
    body = offline.get("/dashboard/data").json()
    data = DashboardData.model_validate(body)
    assert data.services[0].id == "gateway"
    assert sorted(s.tier for s in data.services[1:]) == ["tier1", "tier2", "tier3", "tier4"]
    for service in data.services[1:]:
        assert service.status == "unknown" and service.breaker == "closed"
        assert service.metrics_error is not None and "/metrics failed" in service.metrics_error
    # One sample so far: no interval, no point.
    assert all(s.points == [] and s.current is None for s in data.services)
    unknown = [a for a in data.alerts if a.kind == "service_unknown"]
    assert len(unknown) == 4 and all(a.severity == "warning" for a in unknown)


def test_data_counts_the_gateways_own_requests_but_not_monitoring(offline: TestClient) -> None:
    offline.app.state.dashboard.min_interval_s = 0
    offline.get("/dashboard/data")
    for _ in range(3):
        assert offline.get("/components/nope").status_code == 404
        offline.get("/health")
        offline.get("/metrics")
        offline.get("/static/dashboard.css")
    body = offline.get("/dashboard/data").json()
    gateway = body["services"][0]
    assert gateway["id"] == "gateway"
    (point,) = gateway["points"]
    assert point["requests"] == 3 and point["errors"] == 0 and point["error_rate"] == 0.0
    assert point["rate_rps"] == pytest.approx(3 / point["interval_s"], rel=1e-3)
    assert 0 < point["p50_ms"] <= point["p95_ms"]
    assert gateway["current"] == point


def test_data_with_a_real_tier(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    tier = create_tier("tier3", settings=make_settings(tmp_path / "t3"), components=[toy_add, toy_wait], announce=False)
    settings = gateway_settings(tmp_path / "gw", tier_ports, breaker_fail_max=2, breaker_reset_s=60, retries=0)
    with serving(tier, tier_ports["tier3"]) as server, TestClient(create_gateway(settings, poll=False)) as gw:
        gw.app.state.dashboard.min_interval_s = 0
        gw.portal.call(gw.app.state.discovery.poll_once)
        gw.get("/dashboard/data")
        sent = 12
        for i in range(sent):
            assert gw.post("/run/toy_add", json={"a": i}).status_code == 200
        assert gw.post("/run/toy_add", json={"b": 1}).status_code == 422  # a 4xx is not an error
        # A timeout is a 504 from the gateway (and a 200 later from the tier).
        for _ in range(2):
            assert (
                gw.post("/run/toy_wait", json={"seconds": 0.3}, headers={"X-MLMesh-Timeout": "0.05"}).status_code == 504
            )
        body = gw.get("/dashboard/data").json()
        rows = {s["tier"]: s for s in body["services"]}
        assert rows["tier3"]["status"] == "up" and rows["tier3"]["metrics_error"] is None
        assert rows["tier1"]["status"] == "down"
        tier_point = rows["tier3"]["current"]
        # The tier counts the calls it finished by the time it was scraped (the two waits may still run).
        assert sent + 1 <= tier_point["requests"] <= sent + 3
        assert tier_point["errors"] == 0
        gateway_point = rows["gateway"]["current"]
        assert gateway_point["requests"] == sent + 3
        assert gateway_point["errors"] == 2
        assert gateway_point["error_rate"] == pytest.approx(2 / (sent + 3), abs=1e-4)
        # p95 of 15 calls with two 50 ms timeouts among them lies in a bucket above 25 ms.
        assert gateway_point["p95_ms"] >= 25
        alerts = {(a["kind"], a["service"]) for a in body["alerts"]}
        assert ("service_down", rows["tier1"]["id"]) in alerts
        assert ("error_rate", "gateway") in alerts
        assert not any(a["service"] == rows["tier3"]["id"] for a in body["alerts"])

        # The breaker opens after repeated connection failures: a critical alert.
        server.stop()
        registry = gw.app.state.registry
        entry = registry.services[rows["tier3"]["id"]]
        for _ in range(2):
            registry.mark_up(entry)  # as if the poller had not noticed yet, so each call really tries
            assert gw.post("/run/toy_add", json={"a": 1}).status_code == 503
        registry.mark_up(entry)
        body = gw.get("/dashboard/data").json()
        breaker = [a for a in body["alerts"] if a["kind"] == "breaker_open"]
        assert [(a["service"], a["severity"]) for a in breaker] == [(entry.id, "critical")]
        assert next(s for s in body["services"] if s["id"] == entry.id)["metrics_error"].startswith("/metrics failed")


# ---- the numbers --------------------------------------------------------------------------


def test_histogram_quantile_lands_in_the_bucket_of_the_exact_quantile() -> None:
    # Against numpy on the raw observations: the estimate lies in the same bucket as the true quantile.
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=math.log(0.02), sigma=1.0, size=2000)
    metrics = RequestMetrics("test")
    for value in latencies:
        metrics.latency.labels("/run/x", "POST").observe(float(value))
        metrics.requests.labels("/run/x", "POST", "200").inc()
    totals = traffic_totals(s for f in metrics.registry.collect() for s in f.samples)
    bounds = [0.0, *LATENCY_BUCKETS, math.inf]
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = float(np.quantile(latencies, q))
        estimate = histogram_quantile(q, totals.buckets)
        k = int(np.searchsorted(bounds, exact))
        assert bounds[k - 1] <= estimate <= bounds[k], (q, exact, estimate)


def test_totals_from_collect_and_from_exposition_text_agree() -> None:
    metrics = RequestMetrics("test")
    for route, status, seconds in [
        ("/run/a", "200", 0.003),
        ("/run/a", "503", 0.2),
        ("/run/b", "422", 0.001),
        ("/health", "200", 0.0001),
        ("/metrics", "200", 0.0001),
        ("/dashboard/data", "200", 0.002),
    ]:
        metrics.requests.labels(route, "GET", status).inc()
        metrics.latency.labels(route, "GET").observe(seconds)
    direct = traffic_totals(s for f in metrics.registry.collect() for s in f.samples)
    text = generate_latest(metrics.registry).decode()
    parsed = traffic_totals(s for f in text_string_to_metric_families(text) for s in f.samples)
    assert direct == parsed
    assert direct.requests == 3 and direct.errors == 1
    assert dict(direct.buckets)[math.inf] == 3
    assert dict(direct.buckets)[0.0025] == 1  # the 1 ms call only


def _sample(t: float, requests: float, errors: float, buckets: list[tuple[float, float]]) -> Sample:
    return Sample(wall=1_000_000.0 + t, mono=t, totals=Totals(requests, errors, tuple(buckets)))


def test_interval_point_rates_and_reset() -> None:
    a = _sample(0.0, 10, 1, [(0.01, 5), (0.1, 10), (math.inf, 10)])
    b = _sample(2.0, 30, 3, [(0.01, 15), (0.1, 30), (math.inf, 30)])
    point = interval_point(a, b)
    assert point is not None
    assert (point.requests, point.errors, point.rate_rps, point.error_rate) == (20, 2, 10.0, 0.1)
    assert point.p50_ms == pytest.approx(10.0)  # rank 10 of 20 is the top of the first bucket
    assert point.p95_ms == pytest.approx(10 + 90 * (19 - 10) / 10)
    # A restarted process starts its counters at zero: the later sample alone is the interval.
    restarted = _sample(4.0, 4, 0, [(0.01, 4), (0.1, 4), (math.inf, 4)])
    point = interval_point(b, restarted)
    assert point is not None and point.requests == 4 and point.rate_rps == 2.0
    # No traffic: a zero rate and no quantiles; a failed scrape: no point at all.
    idle = interval_point(restarted, _sample(5.0, 4, 0, [(0.01, 4), (0.1, 4), (math.inf, 4)]))
    assert idle is not None and idle.rate_rps == 0 and idle.p50_ms is None and idle.error_rate is None
    assert interval_point(a, Sample(wall=0.0, mono=3.0, totals=None, error="down")) is None
