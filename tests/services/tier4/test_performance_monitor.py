"""PerformanceMonitor: percentiles against numpy, the SRE workbook's burn-rate example,
and the logs and metrics sources against a real tier service."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlmesh.prometheus import histogram_quantile
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.performance_monitor import (
    PerformanceMonitorInput,
    PerformanceMonitorOutput,
    parse_metrics,
    performance_monitor,
    sum_buckets,
)
from services.tier4.redis_health_monitor import redis_health_monitor
from tests.conftest import AUTH
from tests.support import serving, wait_for

NOW = 1_700_000_000.0


def run(body: dict[str, Any], settings: Settings) -> PerformanceMonitorOutput:
    ctx = RunContext(component="performance_monitor", settings=settings, request_id=None)
    return performance_monitor(PerformanceMonitorInput.model_validate(body), ctx)


def records(latency: np.ndarray, status: np.ndarray, stamp: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"latency_ms": float(a), "status": int(b), "timestamp": float(c)}
        for a, b, c in zip(latency, status, stamp, strict=True)
    ]


def hour_of_traffic(failures_per_block: list[int]) -> list[dict[str, Any]]:
    """30,000 requests evenly over the hour before NOW, in twelve 5-minute blocks of 2,500.

    Each timestamp sits half a step (0.06 s) inside its slot, so no request falls on a window boundary.
    """
    k = np.arange(30_000)
    stamp = NOW - 3600 + (k + 0.5) * 0.12
    status = np.full(k.size, 200)
    for block, failed in enumerate(failures_per_block):
        status[block * 2500 : block * 2500 + failed] = 500
    return records(np.full(k.size, 10.0), status, stamp)


# ---------------------------------------------------------------- percentiles and availability


def test_percentiles_equal_numpy_linear(settings: Settings) -> None:
    rng = np.random.default_rng(7)
    latency = rng.lognormal(3.0, 0.8, size=997)
    stamp = NOW - rng.uniform(0, 86400, size=latency.size)
    result = run({"source": "records", "records": records(latency, np.full(latency.size, 200), stamp)}, settings)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99], method="linear")
    assert result.latency.p50_ms == pytest.approx(p50, rel=1e-12)
    assert result.latency.p95_ms == pytest.approx(p95, rel=1e-12)
    assert result.latency.p99_ms == pytest.approx(p99, rel=1e-12)
    assert result.latency.mean_ms == pytest.approx(latency.mean(), rel=1e-12)
    assert result.latency.max_ms == latency.max()
    assert result.requests == 997 and result.availability == 1.0 and result.grade == "A"


def test_429_and_5xx_are_failures_other_4xx_are_served(settings: Settings) -> None:
    status = np.array([200, 404, 429, 503, 500, 200, 200, 200, 302, 422])
    stamp = NOW - np.arange(status.size)
    result = run({"source": "records", "records": records(np.ones(status.size), status, stamp)}, settings)
    assert result.failures == 3
    assert result.availability == pytest.approx(0.7)
    assert result.status_classes == {"1xx": 0, "2xx": 4, "3xx": 1, "4xx": 2, "429": 1, "5xx": 2}


def test_latency_threshold_makes_slow_requests_bad(settings: Settings) -> None:
    latency = np.array([10.0, 20.0, 300.0, 400.0, 15.0, 800.0, 12.0, 11.0])
    status = np.array([200, 200, 200, 500, 200, 200, 200, 200])
    body = {
        "source": "records",
        "slo_target": 0.9,
        "latency_threshold_ms": 250,
        "records": records(latency, status, NOW - np.arange(8)),
    }
    result = run(body, settings)
    # bad: 300 (slow), 400 (500 and slow, once), 800 (slow) → 3 of 8.
    assert result.availability == pytest.approx(7 / 8)
    assert result.sli == pytest.approx(5 / 8)
    assert result.error_budget.bad == 3
    assert result.error_budget.allowed_bad == pytest.approx(0.8)
    assert result.error_budget.consumed == pytest.approx(3 / 0.8)


def test_requests_outside_the_slo_window_are_left_out(settings: Settings) -> None:
    stamp = np.array([NOW - 8 * 86400, NOW - 3 * 86400, NOW - 10, NOW, NOW + 50])
    status = np.array([500, 200, 200, 200, 500])
    body = {"source": "records", "slo_window_days": 7, "now": NOW, "records": records(np.ones(5), status, stamp)}
    result = run(body, settings)
    assert result.requests == 3 and result.excluded == 2
    assert result.failures == 0 and result.window_end == NOW and result.window_start == NOW - 3 * 86400


# ---------------------------------------------------------------- error budget, burn rates, alerts


def test_workbook_example_14_4_burn_over_1h_and_5m_pages(settings: Settings) -> None:
    # SLO 99.9 %, 1.44 % errors over the last hour and its last five minutes: burn 0.0144 / 0.001 = 14.4.
    body = {"source": "records", "slo_target": 0.999, "now": NOW, "records": hour_of_traffic([36] * 12)}
    result = run(body, settings)
    windows = {w.window: w for w in result.burn_rates}
    assert (windows["1h"].requests, windows["1h"].bad) == (30_000, 432)
    assert (windows["5m"].requests, windows["5m"].bad) == (2_500, 36)
    assert (windows["30m"].requests, windows["30m"].bad) == (15_000, 216)
    assert windows["1h"].burn_rate == pytest.approx(14.4, rel=1e-12)
    assert windows["5m"].burn_rate == pytest.approx(14.4, rel=1e-12)
    # 14.4 × 1 h / 30 days = 2 % of the budget: the workbook's figure for this alert.
    assert windows["1h"].budget_consumed == pytest.approx(0.02, rel=1e-12)
    assert windows["1h"].coverage == pytest.approx(1.0, abs=1e-4)
    assert windows["2h"].coverage == pytest.approx(0.5, abs=1e-4)
    alerts = {(a.long_window, a.short_window): a for a in result.alerts}
    page = alerts[("1h", "5m")]
    assert page.firing and page.severity == "page" and page.threshold == 14.4
    assert page.budget_consumed_at_threshold == pytest.approx(0.02)
    assert alerts[("6h", "30m")].budget_consumed_at_threshold == pytest.approx(0.05)
    assert alerts[("1d", "2h")].budget_consumed_at_threshold == pytest.approx(0.10)
    assert alerts[("3d", "6h")].budget_consumed_at_threshold == pytest.approx(0.10)
    # The budget over the data: 0.1 % of 30,000 = 30 bad requests allowed, 432 spent.
    assert result.error_budget.allowed_bad == pytest.approx(30.0)
    assert result.error_budget.consumed == pytest.approx(14.4)
    assert result.error_budget.remaining == pytest.approx(-13.4)
    assert result.grade == "F"


def test_just_below_14_4_does_not_page_on_1h_5m_but_6h_30m_does(settings: Settings) -> None:
    # One failure fewer in the last block: 5m burns 35/2500/0.001 = 14.0, 1h 431/30000/0.001 ≈ 14.37.
    body = {"source": "records", "slo_target": 0.999, "now": NOW, "records": hour_of_traffic([36] * 11 + [35])}
    result = run(body, settings)
    alerts = {(a.long_window, a.short_window): a for a in result.alerts}
    assert alerts[("1h", "5m")].short_burn_rate == pytest.approx(14.0)
    assert alerts[("1h", "5m")].long_burn_rate == pytest.approx(431 / 30)
    assert not alerts[("1h", "5m")].firing
    assert alerts[("6h", "30m")].firing and alerts[("1d", "2h")].firing and alerts[("3d", "6h")].firing


def test_short_window_resets_the_page_once_errors_stop(settings: Settings) -> None:
    # 440 failures in the first 55 minutes (1h burn 14.67) but a clean last 5 minutes: no 1h/5m page.
    body = {"source": "records", "slo_target": 0.999, "now": NOW, "records": hour_of_traffic([40] * 11 + [0])}
    result = run(body, settings)
    alerts = {(a.long_window, a.short_window): a for a in result.alerts}
    assert alerts[("1h", "5m")].long_burn_rate == pytest.approx(440 / 30)
    assert alerts[("1h", "5m")].short_burn_rate == 0.0
    assert not alerts[("1h", "5m")].firing
    assert alerts[("6h", "30m")].firing  # the last 30 minutes still burn 200/15000/0.001 = 13.3


def test_grades_follow_budget_and_alerts(settings: Settings) -> None:
    # A day of traffic, one request a minute-ish: 1,440 requests, SLO 99 % allows 14.4 bad.
    stamp = NOW - 86400 + 60.0 * np.arange(1, 1441)

    def grade(bad_at: list[int]) -> str | None:
        status = np.full(stamp.size, 200)
        status[bad_at] = 503
        body = {"source": "records", "slo_target": 0.99, "records": records(np.ones(stamp.size), status, stamp)}
        return run(body, settings).grade

    assert grade([]) == "A"
    assert grade(list(range(0, 600, 100))) == "B"  # 6 early failures: 42 % of the budget, nothing recent
    assert grade(list(range(0, 1200, 100))) == "C"  # 12: 83 %
    assert grade(list(range(0, 1000, 50))) == "F"  # 20 > 14.4
    # The last 9 minutes fail: 1h burns 9/60/0.01 = 15, 5m 100, while 62.5 % of the budget is spent.
    assert grade(list(range(1431, 1440))) == "D"
    assert grade([1439]) == "A"  # one failure: 5m burns 20 but 1h only 1.7, and 7 % of the budget


# ---------------------------------------------------------------- file, logs and metrics sources


def test_file_sources_give_the_same_answer_as_inline_records(settings: Settings) -> None:
    rng = np.random.default_rng(3)
    latency = rng.gamma(2.0, 20.0, size=200).round(3)
    status = rng.choice([200, 200, 200, 500, 404, 429], size=200)
    stamp = NOW - rng.uniform(0, 7200, size=200).round(3)
    rows = records(latency, status, stamp)
    data = settings.data_dir
    data.mkdir(parents=True)
    (data / "r.json").write_text(json.dumps(rows))
    (data / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lines = ["path,latency_ms,status,timestamp"] + [
        f"/run/x,{r['latency_ms']!r},{r['status']},{r['timestamp']!r}" for r in rows
    ]
    (data / "r.csv").write_text("\n".join(lines) + "\n")
    inline = run({"source": "records", "records": rows}, settings).model_dump()
    for name in ("r.json", "r.jsonl", "r.csv"):
        from_file = run({"source": "file", "path": name}, settings).model_dump()
        assert {**from_file, "source": "records"} == inline, name


def test_file_errors_are_4xx_naming_path(settings: Settings, client_for: Callable[..., TestClient]) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "bad.csv").write_text("latency_ms,status\n1,200\n")
    client = client_for(performance_monitor)
    for body, status in [
        ({"source": "file", "path": "../etc/passwd"}, 400),
        ({"source": "file", "path": "missing.csv"}, 400),
        ({"source": "file", "path": "bad.csv"}, 422),
    ]:
        r = client.post("/run/performance_monitor", json=body)
        assert r.status_code == status, r.text
        assert r.json()["detail"].startswith("path")
    r = client.post("/run/performance_monitor", json={"source": "file", "path": "bad.csv"})
    assert "timestamp" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"source": "records", "slo_target": 1.0, "records": [{"latency_ms": 1, "status": 200, "timestamp": 1}]},
            "slo_target",
        ),
        ({"source": "records", "records": []}, "records"),
        ({"source": "records", "records": [{"latency_ms": 1, "status": 700, "timestamp": 1}]}, "status"),
        ({"source": "metrics", "base_urls": ["http://10.0.0.5:8004"]}, "base_urls"),
        ({"source": "metrics", "base_urls": ["http://127.0.0.1:8004/metrics"]}, "base_urls"),
        ({"source": "nothing"}, "source"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(performance_monitor).post("/run/performance_monitor", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_logs_source_reads_the_real_access_log(settings: Settings, client_for: Callable[..., TestClient]) -> None:
    client = client_for(performance_monitor, redis_health_monitor)
    for _ in range(6):
        assert client.post("/run/redis_health_monitor", json={"operation": "status"}).status_code == 200
    for _ in range(2):  # Redis is not configured in these settings: 503
        assert client.post("/run/redis_health_monitor", json={"operation": "check"}).status_code == 503
    assert client.post("/run/redis_health_monitor", json={"operation": "nope"}).status_code == 422
    assert client.get("/health").status_code == 200  # not under /run/: left out
    r = client.post("/run/performance_monitor", json={"source": "logs", "slo_target": 0.99})
    assert r.status_code == 200, r.text
    result = r.json()["component_result"]
    # The test reads the same log itself: the durations of the nine /run/ lines written before the call.
    lines = [json.loads(line) for line in (settings.logs_dir / "tier4.log").read_text().splitlines()]
    access = [x for x in lines if x["logger"] == "mlmesh.access" and x["path"].startswith("/run/")][:9]
    durations = np.array([x["duration_ms"] for x in access])
    assert result["requests"] == 9
    assert result["failures"] == 2
    assert result["status_classes"]["4xx"] == 1
    assert result["availability"] == pytest.approx(7 / 9)
    assert result["latency"]["p95_ms"] == pytest.approx(np.percentile(durations, 95), rel=1e-12)
    only_gateway = client.post("/run/performance_monitor", json={"source": "logs", "processes": ["gateway"]}).json()
    assert only_gateway["component_result"]["requests"] == 0
    assert only_gateway["component_result"]["grade"] is None


def test_metrics_source_scrapes_a_real_service(settings: Settings) -> None:
    app = create_app("tier4", settings=settings, components=[redis_health_monitor], announce=False)
    with serving(app) as server, httpx.Client(base_url=server.url, headers=AUTH) as http:
        for _ in range(5):
            http.post("/run/redis_health_monitor", json={"operation": "status"})
        for _ in range(3):
            http.post("/run/redis_health_monitor", json={"operation": "check"})
        http.get("/health")

        def scraped() -> Any:
            scrape = parse_metrics(http.get("/metrics").text)
            return scrape if sum(scrape.requests.values()) >= 9 else None

        own = wait_for(scraped, what="the service to count the requests")
        result = run({"source": "metrics", "base_urls": [server.url]}, settings)
    assert result.requests == 8 and result.failures == 3
    assert result.availability == pytest.approx(5 / 8)
    assert result.burn_rates == [] and result.alerts == []
    (service,) = result.services
    assert service.up and service.requests == 8
    buckets = sum_buckets(own.buckets, "/run/")
    assert result.latency.p50_ms == pytest.approx(histogram_quantile(0.5, buckets) * 1000)
    assert result.latency.p99_ms == pytest.approx(histogram_quantile(0.99, buckets) * 1000)
    assert result.latency.mean_ms > 0


def test_metrics_source_reports_an_unreachable_service(settings: Settings) -> None:
    app = create_app("tier4", settings=settings, components=[redis_health_monitor], announce=False)
    with serving(app) as server:
        url = server.url
    result = run({"source": "metrics", "base_urls": [url]}, settings)
    assert not result.services[0].up and result.services[0].error
    assert result.requests == 0 and result.grade is None
