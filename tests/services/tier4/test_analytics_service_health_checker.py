"""analytics_service_health_checker on real stores: fresh → ok, stale → as configured, unreachable → failed check."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from mlmesh.settings import Settings
from services.domain import DomainStore, open_store
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4 import analytics_service_health_checker as module
from services.tier4.analytics_service_health_checker import (
    CHECKS,
    AnalyticsServiceHealthCheckerInput,
    AnalyticsServiceHealthCheckerOutput,
    analytics_service_health_checker,
    grade,
)
from tests.conftest import AUTH, make_settings
from tests.services.tier4.test_analytics_service import fill_store

DB_URL = "postgresql://127.0.0.1:5432/test"
ROUTE = "/run/analytics_service_health_checker"
DAY = 86_400.0


def run(settings: Settings, **body: Any) -> AnalyticsServiceHealthCheckerOutput:
    ctx = RunContext(component="analytics_service_health_checker", settings=settings, request_id=None)
    body = {"checks": list(CHECKS), **body}
    return analytics_service_health_checker(AnalyticsServiceHealthCheckerInput.model_validate(body), ctx)


def by_name(out: AnalyticsServiceHealthCheckerOutput) -> dict[str, Any]:
    return {c.name: c for c in out.checks}


def fill(store: DomainStore, app_age_s: float, feedback_age_s: float, n: int = 5) -> float:
    now = time.time()
    apps = [{"rule_id": "clarity", "improvement_score": 0.1 * i, "applied_at": now - app_age_s - i} for i in range(n)]
    fill_store(store, apps, [{"rating": 4, "created_at": now - feedback_age_s, "rule_ids": ["clarity"]}])
    return now


def test_fresh_store_is_ok(settings: Settings) -> None:
    with open_store(settings) as store:
        fill(store, app_age_s=30, feedback_age_s=60)
    out = run(settings)
    assert out.status == "ok", out.message
    checks = by_name(out)
    assert list(checks) == [
        "store_reachable",
        "application_freshness",
        "feedback_freshness",
        "query_latency",
        "row_counts",
    ]
    assert out.backend == "sqlite"
    assert 30 <= checks["application_freshness"].value < 30 + 60  # the test's own clock bounds the age
    assert 60 <= checks["feedback_freshness"].value < 60 + 60
    # fill_store adds one application per feedback session (dated long ago): 5 + 1.
    assert checks["row_counts"].value == 6 and out.counts is not None and out.counts["feedback"] == 1
    assert out.latest is not None and out.latest["rule_applications"] == pytest.approx(out.checked_at - 30, abs=60)
    latency = out.latency
    assert latency is not None and len(latency.samples_ms) == 5
    assert latency.p50_ms == pytest.approx(float(np.percentile(latency.samples_ms, 50)), rel=1e-12)
    assert latency.max_ms == max(latency.samples_ms) and checks["query_latency"].value == latency.p50_ms
    assert latency.rows_read == 5 + 1  # the week's applications and feedback; the old application is outside


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        ({}, "warning"),  # 2 days old: ≥ 1 day (warning), < 7 days (failed)
        ({"application_max_age_failed_s": 1.5 * DAY}, "failed"),
        ({"application_max_age_warning_s": 3 * DAY, "application_max_age_failed_s": 4 * DAY}, "ok"),
    ],
)
def test_stale_applications_are_graded_as_configured(
    settings: Settings, thresholds: dict[str, float], expected: str
) -> None:
    with open_store(settings) as store:
        fill(store, app_age_s=2 * DAY, feedback_age_s=60)
    out = run(settings, **thresholds)
    check = by_name(out)["application_freshness"]
    assert check.status == expected, check.message
    assert check.warning_threshold == thresholds.get("application_max_age_warning_s", DAY)
    assert out.status == expected and by_name(out)["feedback_freshness"].status == "ok"


def test_empty_store_follows_when_empty(settings: Settings) -> None:
    out = run(settings, when_empty="failed", min_applications_warning=10, min_applications_failed=1)
    checks = by_name(out)
    assert checks["store_reachable"].status == "ok"
    assert checks["application_freshness"].status == "failed" and checks["application_freshness"].value is None
    assert checks["row_counts"].status == "failed" and checks["row_counts"].value == 0
    assert out.status == "failed"
    assert run(settings, min_applications_warning=0).status == "warning"  # when_empty defaults to warning


def test_future_timestamps_are_a_warning(settings: Settings) -> None:
    with open_store(settings) as store:
        fill(store, app_age_s=-3600, feedback_age_s=60)
    check = by_name(run(settings))["application_freshness"]
    assert check.status == "warning" and "future" in check.message and check.value < 0


def test_latency_thresholds_are_applied_not_relaxed(settings: Settings) -> None:
    out = run(settings, latency_p50_warning_ms=1e-6, latency_p50_failed_ms=1e-6, repetitions=3)
    check = by_name(out)["query_latency"]
    assert check.status == "failed" and check.failed_threshold == 1e-6
    out = run(settings, latency_p50_warning_ms=1e-6, latency_p50_failed_ms=1e5, latency_max_failed_ms=1e5)
    assert by_name(out)["query_latency"].status == "warning"
    out = run(settings, latency_max_failed_ms=1e-6)
    assert by_name(out)["query_latency"].status == "failed"
    assert "slowest" in by_name(out)["query_latency"].message


def test_grade() -> None:
    assert [grade(v, 1.0, 2.0) for v in (0.5, 1.0, 1.9, 2.0, 5.0)] == ["ok", "warning", "warning", "failed", "failed"]


def test_unreachable_postgres_is_a_failed_check_not_a_500(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url="postgresql://127.0.0.1:1/test")  # nothing listens on port 1
    app = create_app("tier4", settings=settings, components=[analytics_service_health_checker], announce=False)
    with TestClient(app, headers=AUTH) as client:
        r = client.post(ROUTE, json={"checks": list(CHECKS)})
    assert r.status_code == 200, r.text
    result = r.json()["component_result"]
    assert result["status"] == "failed" and result["backend"] is None
    reach = result["checks"][0]
    assert reach["name"] == "store_reachable" and reach["status"] == "failed"
    assert "PostgreSQL" in reach["message"] and "unreachable" in reach["message"]
    assert all(c["status"] == "failed" and c["value"] is None for c in result["checks"])


@pytest.fixture
def pg_store() -> Iterator[DomainStore]:
    schema = f"test_ashc_{uuid.uuid4().hex[:12]}"
    store = DomainStore.postgres(DB_URL, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(DB_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_real_postgres_store(tmp_path: Path, pg_store: DomainStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(pg_store, app_age_s=10, feedback_age_s=3 * DAY)
    monkeypatch.setattr(module, "store_for", lambda ctx: pg_store)  # the test's own schema, not `mlmesh`
    out = run(make_settings(tmp_path, database_url=DB_URL))
    checks = by_name(out)
    assert out.backend == "postgresql" and checks["store_reachable"].status == "ok"
    assert checks["application_freshness"].status == "ok"
    assert checks["feedback_freshness"].status == "warning"  # 3 days ≥ 2 days
    assert out.counts == pg_store.counts() and out.status == "warning"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"application_max_age_warning_s": 10.0, "application_max_age_failed_s": 5.0}, "application_max_age_failed_s"),
        ({"latency_p50_warning_ms": 10.0, "latency_p50_failed_ms": 1.0}, "latency_p50_failed_ms"),
        ({"min_applications_warning": 1, "min_applications_failed": 5}, "min_applications_failed"),
        ({"repetitions": 0}, "repetitions"),
        ({"when_empty": "fine"}, "when_empty"),
        ({"checks": []}, "checks"),
        ({"checks": ["row_counts", "row_counts"]}, "checks"),
        ({"checks": ["uptime"]}, "checks"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(analytics_service_health_checker).post(ROUTE, json={"checks": list(CHECKS), **body})
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_only_the_named_checks_run(settings: Settings) -> None:
    with open_store(settings) as store:
        fill(store, app_age_s=30, feedback_age_s=60)
    out = run(settings, checks=["row_counts"])
    assert [c.name for c in out.checks] == ["store_reachable", "row_counts"]
    assert out.latency is None and out.latest is None and out.status == "ok"
    out = run(settings, checks=["query_latency", "feedback_freshness"], repetitions=2)
    assert [c.name for c in out.checks] == ["store_reachable", "feedback_freshness", "query_latency"]
    assert out.latency is not None and len(out.latency.samples_ms) == 2 and out.counts is None
