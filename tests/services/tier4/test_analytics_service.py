"""analytics_service: hand-computed buckets, scipy/statsmodels intervals and trends, real SQLite and PG stores."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from mlmesh.settings import Settings
from services.domain import DomainStore, open_store
from services.framework import RunContext
from services.tier4 import analytics_service as module
from services.tier4.analytics_service import (
    AnalyticsServiceInput,
    AnalyticsServiceOutput,
    analytics_service,
    period_starts,
)
from tests.conftest import make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"
ROUTE = "/run/analytics_service"
MON = 1_704_067_200.0  # 2024-01-01 00:00 UTC, a Monday
DAY = 86_400.0

APPS = [
    {"rule_id": "A", "improvement_score": 0.1, "applied_at": MON + 0 * DAY + 60, "success": True},
    {"rule_id": "A", "improvement_score": 0.3, "applied_at": MON + 1 * DAY, "success": False},
    {"rule_id": "A", "improvement_score": 0.2, "applied_at": MON + 8 * DAY, "success": True},
    {"rule_id": "A", "improvement_score": 0.4, "applied_at": MON + 9 * DAY, "success": True},
    {"rule_id": "B", "improvement_score": 0.05, "applied_at": MON + 0 * DAY + 120},
    {"rule_id": "B", "improvement_score": 0.15, "applied_at": MON + 30 * DAY + 7200},  # 2024-01-31
    {"rule_id": "B", "improvement_score": 0.25, "applied_at": MON + 31 * DAY},  # 2024-02-01 00:00
]
FEEDBACK = [
    {"rating": 5, "created_at": MON + 0.5 * DAY, "rule_ids": ["A"]},
    {"rating": 4, "created_at": MON + 1.5 * DAY, "rule_ids": ["A", "B"]},
    {"rating": 4, "created_at": MON + 2.5 * DAY, "rule_ids": ["B"]},
    {"rating": 3, "created_at": MON + 7.5 * DAY, "rule_ids": ["A"]},
    {"rating": 2, "created_at": MON + 8.5 * DAY, "rule_ids": []},
    {"rating": 1, "created_at": MON + 9.5 * DAY, "rule_ids": ["B"]},
    {"rating": 5, "created_at": MON + 10.5 * DAY, "rule_ids": ["A"]},
]


def run(settings: Settings, **body: Any) -> AnalyticsServiceOutput:
    ctx = RunContext(component="analytics_service", settings=settings, request_id=None)
    return analytics_service(AnalyticsServiceInput.model_validate(body), ctx)


def t_interval(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x)
    return stats.t.interval(0.95, a.size - 1, loc=a.mean(), scale=stats.sem(a))


def test_rule_periods_by_hand_and_scipy(settings: Settings) -> None:
    out = run(settings, applications=APPS, period="week")
    a = next(r for r in out.rules if r.rule_id == "A")
    assert (a.n, a.mean) == (4, pytest.approx(0.25))
    assert (a.ci_low, a.ci_high) == pytest.approx(t_interval([0.1, 0.3, 0.2, 0.4]), rel=1e-12)
    assert (a.success_n, a.success_rate) == (4, 0.75)
    assert (a.success_ci_low, a.success_ci_high) == pytest.approx(proportion_confint(3, 4, method="wilson"), rel=1e-12)
    assert [(p.period, p.n, p.mean) for p in a.periods] == [
        ("2024-01-01", 2, pytest.approx(0.2)),
        ("2024-01-08", 2, pytest.approx(0.3)),
    ]
    assert a.periods[1].start == MON + 7 * DAY and a.periods[1].end == MON + 14 * DAY
    assert (a.periods[0].ci_low, a.periods[0].ci_high) == pytest.approx(t_interval([0.1, 0.3]), rel=1e-12)
    assert (a.periods[1].success_rate, a.periods[1].success_n) == (1.0, 2)
    b = next(r for r in out.rules if r.rule_id == "B")
    assert b.success_n == 0 and b.success_rate is None and b.success_ci_low is None
    assert [(p.period, p.n) for p in b.periods] == [("2024-01-01", 1), ("2024-01-29", 2)]  # Wed 31st, Thu 1st
    assert out.overall is not None and out.overall.rule_id == "*" and out.overall.n == 7

    monthly = run(settings, applications=APPS, period="month")
    b = next(r for r in monthly.rules if r.rule_id == "B")
    assert [(p.period, p.n) for p in b.periods] == [("2024-01-01", 2), ("2024-02-01", 1)]
    assert b.periods[0].end == MON + 31 * DAY == b.periods[1].start
    feb = b.periods[1]
    assert feb.end == MON + (31 + 29) * DAY  # 2024 is a leap year
    assert (feb.sd, feb.ci_low, feb.ci_high) == (None, None, None)  # one application: no interval

    daily = run(settings, applications=APPS, period="day")
    assert [p.period for p in daily.overall.periods][:2] == ["2024-01-01", "2024-01-02"]  # type: ignore[union-attr]


def test_period_starts_match_calendar() -> None:
    t = np.array([MON - 1, MON, MON + 6 * DAY + 86_399, MON + 7 * DAY, 951_782_400.0])  # last: 2000-02-29
    assert period_starts(t, "week").tolist() == [MON - 7 * DAY, MON, MON, MON + 7 * DAY, 951_782_400.0 - DAY]
    assert period_starts(t, "month").tolist() == [1_701_388_800.0, MON, MON, MON, 949_363_200.0]
    assert period_starts(t, "day").tolist() == [MON - DAY, MON, MON + 6 * DAY, MON + 7 * DAY, 951_782_400.0]


def test_trends_equal_linregress(settings: Settings) -> None:
    out = run(settings, applications=APPS, feedback=FEEDBACK)
    t0 = min(x["applied_at"] for x in APPS)
    a = [x for x in APPS if x["rule_id"] == "A"]
    ref = stats.linregress([(x["applied_at"] - t0) / DAY for x in a], [x["improvement_score"] for x in a])
    trend = next(r for r in out.rules if r.rule_id == "A").trend
    assert trend is not None
    assert (trend.slope_per_day, trend.p_value, trend.stderr, trend.r, trend.intercept) == pytest.approx(
        (ref.slope, ref.pvalue, ref.stderr, ref.rvalue, ref.intercept), rel=1e-10
    )
    ref = stats.linregress([x["created_at"] / DAY for x in FEEDBACK], [x["rating"] for x in FEEDBACK])
    assert out.satisfaction is not None and out.satisfaction.trend is not None
    got = out.satisfaction.trend
    assert (got.slope_per_day, got.p_value, got.r) == pytest.approx((ref.slope, ref.pvalue, ref.rvalue), rel=1e-10)
    only_two = run(settings, applications=APPS[:2])
    assert only_two.rules[0].trend is None and any("needs 3" in n for n in only_two.notes)


def test_satisfaction_shares_net_score_and_mean(settings: Settings) -> None:
    out = run(settings, feedback=FEEDBACK, period="week")
    assert out.overall is None and out.satisfaction is not None
    s = out.satisfaction.overall
    assert s.distribution == {"1": 1, "2": 1, "3": 1, "4": 2, "5": 2}
    assert (s.positive.count, s.neutral.count, s.negative.count) == (4, 1, 2)
    for share, k in ((s.positive, 4), (s.neutral, 1), (s.negative, 2)):
        assert share.share == pytest.approx(k / 7)
        assert (share.ci_low, share.ci_high) == pytest.approx(proportion_confint(k, 7, method="wilson"), rel=1e-12)
    assert s.net_score == pytest.approx(100 * 2 / 7)
    # The net score is the mean of +1/0/−1 per rating; its standard error is their population sd / √n.
    scores = np.array([1, 1, 1, 0, -1, -1, 1])
    half = 100 * stats.norm.ppf(0.975) * scores.std() / np.sqrt(7)
    assert (s.net_ci_low, s.net_ci_high) == pytest.approx((100 * 2 / 7 - half, 100 * 2 / 7 + half), rel=1e-12)
    assert s.mean_rating == pytest.approx(24 / 7)
    assert (s.ci_low, s.ci_high) == pytest.approx(t_interval([5, 4, 4, 3, 2, 1, 5]), rel=1e-12)
    weeks = out.satisfaction.periods
    assert [(w.period, w.n) for w in weeks] == [("2024-01-01", 3), ("2024-01-08", 4)]
    assert weeks[0].net_score == pytest.approx(100.0) and weeks[0].net_ci_high == 100.0  # clipped to the scale
    by_rule = {r.rule_id: r for r in out.satisfaction.by_rule}
    assert (by_rule["A"].n, by_rule["A"].mean_rating) == (4, pytest.approx(17 / 4))
    assert (by_rule["B"].n, by_rule["B"].negative.count) == (3, 1)


def test_filters_by_time_and_rule(settings: Settings) -> None:
    out = run(settings, applications=APPS, feedback=FEEDBACK, rule_ids=["A"], since=MON + DAY, until=MON + 9 * DAY)
    assert [r.rule_id for r in out.rules] == ["A"] and out.rules[0].n == 2  # day 1 and day 8
    assert out.satisfaction is not None
    # Feedback in [day 1, day 9) on sessions that applied A: the ratings 4 (day 1.5) and 3 (day 7.5).
    assert out.n_feedback == 2 and out.satisfaction.overall.mean_rating == pytest.approx(3.5)
    empty = run(settings, applications=APPS, since=MON + 100 * DAY)
    assert empty.n_applications == 0 and empty.overall is None and "no rule applications in the window" in empty.notes


# --------------------------------------------------------------------------------------------- stores


def fill_store(store: DomainStore, apps: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> None:
    """Store every application in its own session, and each feedback in a session applying its rule_ids."""
    rules = sorted({a["rule_id"] for a in apps} | {r for f in feedback for r in f["rule_ids"]})
    store.add_rules([{"id": r, "name": r, "category": "test"} for r in rules])
    sessions, applications, ratings = [], [], []
    for i, a in enumerate(apps):
        sessions.append({"id": f"sa{i}", "original_prompt": "p", "started_at": a["applied_at"]})
        applications.append(
            {
                "id": f"a{i}",
                "session_id": f"sa{i}",
                "rule_id": a["rule_id"],
                "before_quality": 0.4,
                "after_quality": 0.4,
                "improvement_score": a["improvement_score"],
                "latency_ms": 2.0,
                "applied_at": a["applied_at"],
                "success": a.get("success", True),
            }
        )
    store.add_sessions(sessions)
    store.add_applications(applications)
    return_sessions, extra_apps = [], []
    for i, f in enumerate(feedback):
        return_sessions.append({"id": f"sf{i}", "original_prompt": "p", "started_at": f["created_at"] - 1})
        for j, rule in enumerate(f["rule_ids"]):
            extra_apps.append(
                {
                    "id": f"f{i}_{j}",
                    "session_id": f"sf{i}",
                    "rule_id": rule,
                    "before_quality": 0.4,
                    "after_quality": 0.5,
                    "improvement_score": 0.1,
                    "latency_ms": 2.0,
                    # Before the window the tests read, so that only `apps` count as applications.
                    "applied_at": 1_000.0 + i,
                    "success": True,
                }
            )
        ratings.append({"id": f"r{i}", "session_id": f"sf{i}", "rating": f["rating"], "created_at": f["created_at"]})
    store.add_sessions(return_sessions)
    store.add_applications(extra_apps)
    store.add_feedback(ratings)


def with_success(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**a, "success": a.get("success", True)} for a in apps]


def test_sqlite_store_gives_the_inline_answer(settings: Settings) -> None:
    with open_store(settings) as store:
        assert store.backend == "sqlite"
        fill_store(store, APPS, FEEDBACK)
    window = {"since": MON, "period": "week"}
    from_store = run(settings, source="store", **window)
    inline = run(settings, applications=with_success(APPS), feedback=FEEDBACK, **window)
    assert from_store.source == "store" and from_store.n_applications == 7 and from_store.n_feedback == 7
    assert from_store.model_dump(exclude={"source"}) == inline.model_dump(exclude={"source"})
    one = run(settings, source="store", rule_ids=["B"], **window)
    assert [r.rule_id for r in one.rules] == ["B"] and one.n_feedback == 3


@pytest.fixture
def pg_store() -> Iterator[DomainStore]:
    schema = f"test_analytics_{uuid.uuid4().hex[:12]}"
    store = DomainStore.postgres(DB_URL, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(DB_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_postgres_store_gives_the_inline_answer(
    tmp_path: Path, pg_store: DomainStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_store(pg_store, APPS, FEEDBACK)
    settings = make_settings(tmp_path, database_url=DB_URL)
    monkeypatch.setattr(module, "store_for", lambda ctx: pg_store)  # the test's own schema, not `mlmesh`
    window = {"since": MON, "period": "month"}
    from_store = run(settings, source="store", **window)
    inline = run(settings, applications=with_success(APPS), feedback=FEEDBACK, **window)
    assert pg_store.backend == "postgresql" and from_store.n_applications == 7
    assert from_store.model_dump(exclude={"source"}) == inline.model_dump(exclude={"source"})


# --------------------------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"feedback": [{"rating": 6, "created_at": MON}]}, "rating"),
        ({"applications": [{"rule_id": "A", "improvement_score": 0.1}]}, "applied_at"),
        ({"source": "store", "applications": APPS[:1]}, "applications"),
        ({"applications": APPS[:1], "since": MON, "until": MON - 1}, "until"),
        ({"applications": APPS[:1], "period": "year"}, "period"),
        ({"applications": APPS[:1], "rule_ids": []}, "rule_ids"),
        ({"applications": APPS[:1], "confidence_level": 1.0}, "confidence_level"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(analytics_service).post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_http_run_answers_the_envelope(client_for: Callable[..., TestClient]) -> None:
    r = client_for(analytics_service).post(ROUTE, json={"applications": APPS, "feedback": FEEDBACK})
    assert r.status_code == 200, r.text
    result = r.json()["component_result"]
    assert result["n_applications"] == 7 and result["satisfaction"]["overall"]["n"] == 7
