"""RealTimeAnalyticsService: streamed moments equal the batch computation; state, restarts, concurrency, errors."""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from mlmesh.errors import Conflict, NotFound
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier4.real_time_analytics_service import (
    RealTimeAnalyticsServiceInput,
    RealTimeAnalyticsServiceOutput,
    real_time_analytics_service,
)
from tests.conftest import make_settings

ROUTE = "/run/real_time_analytics_service"


def call(settings: Settings, **body: Any) -> RealTimeAnalyticsServiceOutput:
    """One direct call with a fresh context (its own database handle, like a separate process)."""
    ctx = RunContext(component="real_time_analytics_service", settings=settings, request_id=None)
    return real_time_analytics_service(RealTimeAnalyticsServiceInput.model_validate(body), ctx)


def events(arms: np.ndarray, values: np.ndarray) -> list[dict[str, Any]]:
    return [{"arm": str(a), "value": float(v)} for a, v in zip(arms, values, strict=True)]


def create(settings: Settings, stream_id: str = "exp", **extra: Any) -> RealTimeAnalyticsServiceOutput:
    body = {"arms": ["control", "treatment"], "planned_n_per_arm": 1000, "target_mde": 0.2} | extra
    return call(settings, operation="create", stream_id=stream_id, **body)


def assert_matches_batch(summary: Any, data: dict[str, np.ndarray]) -> None:
    """The streamed summary against numpy/scipy on the concatenated events."""
    by_arm = {a.arm: a for a in summary.arms}
    for arm, x in data.items():
        assert by_arm[arm].n == x.size
        assert by_arm[arm].mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert by_arm[arm].variance == pytest.approx(x.var(ddof=1), rel=1e-10)
    control = data[summary.control_arm]
    for comp in summary.comparisons:
        x = data[comp.arm]
        ref = stats.ttest_ind(x, control, equal_var=False)
        assert comp.welch_t == pytest.approx(ref.statistic, rel=1e-9)
        assert comp.p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)
        assert comp.df == pytest.approx(ref.df, rel=1e-9)
        ci = ref.confidence_interval(1 - summary.alpha)
        assert (comp.ci_low, comp.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
        pooled = ((x.size - 1) * x.var(ddof=1) + (control.size - 1) * control.var(ddof=1)) / (x.size + control.size - 2)
        assert comp.cohens_d == pytest.approx((x.mean() - control.mean()) / math.sqrt(pooled), rel=1e-9)


# --- results equal the batch computation -----------------------------------------------------------------------------


def test_streamed_batches_equal_the_batch_computation(settings: Settings) -> None:
    call(settings, operation="create", stream_id="abc", arms=["a", "b", "c"], planned_n_per_arm=500, target_mde=0.3)
    rng = np.random.default_rng(0)
    seen: dict[str, list[np.ndarray]] = {"a": [], "b": [], "c": []}
    for size in (1, 7, 250, 33, 600):
        arms = rng.choice(["a", "b", "c"], size=size)
        values = rng.normal(3.0, 2.0, size) + (arms == "b") * 0.4
        out = call(settings, operation="ingest", stream_id="abc", events=events(arms, values))
        assert out.ingested == size
        for arm in seen:
            seen[arm].append(values[arms == arm])
    summary = call(settings, operation="summary", stream_id="abc").summary
    assert summary is not None
    data = {arm: np.concatenate(parts) for arm, parts in seen.items()}
    assert_matches_batch(summary, data)
    assert summary.total_events == 891
    assert summary.batches == 5
    assert summary.progress == pytest.approx(min(x.size for x in data.values()) / 500)
    assert [c.arm for c in summary.comparisons] == ["b", "c"]


def test_large_offsets_stay_accurate(settings: Settings) -> None:
    # Values near 1e8 with unit noise: Σx² would cancel catastrophically; Chan's merge must not.
    create(settings)
    rng = np.random.default_rng(1)
    data: dict[str, list[np.ndarray]] = {"control": [], "treatment": []}
    for _ in range(20):
        arms = rng.choice(["control", "treatment"], 100)
        values = 1e8 + rng.normal(0, 1, 100)
        call(settings, operation="ingest", stream_id="exp", events=events(arms, values))
        for arm in data:
            data[arm].append(values[arms == arm])
    summary = call(settings, operation="summary", stream_id="exp").summary
    assert summary is not None
    for arm_stats in summary.arms:
        x = np.concatenate(data[arm_stats.arm])
        assert arm_stats.variance == pytest.approx(x.var(ddof=1), rel=1e-6)


def test_arm_values_from_files_and_inline_lists(settings: Settings) -> None:
    create(settings)
    rng = np.random.default_rng(2)
    c1, t1, c2 = rng.exponential(2.0, 3000), rng.exponential(2.2, 2800), rng.exponential(2.0, 10)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    np.save(settings.data_dir / "c1.npy", c1)
    np.savetxt(settings.data_dir / "t1.csv", t1, fmt="%.17g")
    arm_values = [
        {"arm": "control", "values": {"path": "c1.npy"}},
        {"arm": "treatment", "values": {"path": "t1.csv"}},
    ]
    call(settings, operation="ingest", stream_id="exp", arm_values=arm_values)
    out = call(settings, operation="ingest", stream_id="exp", arm_values=[{"arm": "control", "values": c2.tolist()}])
    assert out.ingested == 10
    assert out.summary is not None
    assert_matches_batch(out.summary, {"control": np.concatenate([c1, c2]), "treatment": t1})


def test_power_matches_statsmodels_and_progress_is_capped(settings: Settings) -> None:
    # Treatment = control + shift: equal n and variances, so Welch's df is 2n - 2 and the power is the t-test's.
    create(settings, planned_n_per_arm=100, target_mde=0.25)
    base = np.random.default_rng(3).normal(0, 1, 150)
    arms = np.repeat(["control", "treatment"], 150)
    call(settings, operation="ingest", stream_id="exp", events=events(arms, np.concatenate([base, base + 0.1])))
    summary = call(settings, operation="summary", stream_id="exp").summary
    assert summary is not None
    ref = TTestIndPower().power(effect_size=0.25 / base.std(ddof=1), nobs1=150, alpha=0.05, ratio=1)
    assert summary.comparisons[0].power == pytest.approx(ref, rel=1e-6)
    assert summary.progress == 1.0


def test_undefined_statistics_are_none_with_a_reason(settings: Settings) -> None:
    out = create(settings, target_mde=None)
    assert out.summary is not None
    assert out.summary.arms[0].mean is None
    assert out.summary.comparisons[0].p_value is None
    assert "two events" in (out.summary.comparisons[0].reason or "")
    call(
        settings,
        operation="ingest",
        stream_id="exp",
        events=events(np.array(["control"] * 3 + ["treatment"] * 3), np.ones(6)),
    )
    summary = call(settings, operation="summary", stream_id="exp").summary
    assert summary is not None
    comparison = summary.comparisons[0]
    assert comparison.difference == 0.0 and comparison.p_value is None
    assert "zero variance" in (comparison.reason or "")


# --- state: lifecycle, errors, restarts, concurrency -----------------------------------------------------------------


def test_lifecycle_and_state_errors(settings: Settings) -> None:
    assert create(settings).status == "open"
    with pytest.raises(Conflict):
        create(settings)
    with pytest.raises(NotFound):
        call(settings, operation="summary", stream_id="nope")
    with pytest.raises(NotFound):
        call(settings, operation="ingest", stream_id="nope", events=[{"arm": "control", "value": 1.0}])
    call(settings, operation="ingest", stream_id="exp", events=[{"arm": "control", "value": 1.0}] * 3)
    reset = call(settings, operation="reset", stream_id="exp")
    assert reset.summary is not None and reset.summary.total_events == 0 and reset.summary.batches == 0
    assert call(settings, operation="close", stream_id="exp").status == "closed"
    with pytest.raises(Conflict):
        call(settings, operation="close", stream_id="exp")
    with pytest.raises(Conflict):
        call(settings, operation="ingest", stream_id="exp", events=[{"arm": "control", "value": 1.0}])
    assert call(settings, operation="summary", stream_id="exp").status == "closed"
    assert call(settings, operation="delete", stream_id="exp").summary is None
    with pytest.raises(Conflict):
        call(settings, operation="ingest", stream_id="exp", events=[{"arm": "control", "value": 1.0}])
    with pytest.raises(Conflict):
        call(settings, operation="summary", stream_id="exp")


def test_concurrent_ingests_lose_nothing(settings: Settings) -> None:
    create(settings)
    rng = np.random.default_rng(4)
    batches = [(rng.choice(["control", "treatment"], 200), rng.normal(size=200)) for _ in range(24)]
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[np.ndarray, np.ndarray]]) -> None:
        try:
            for arms, values in chunk:
                call(settings, operation="ingest", stream_id="exp", events=events(arms, values))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(batches[i::6],)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    summary = call(settings, operation="summary", stream_id="exp").summary
    assert summary is not None and summary.batches == 24
    arms = np.concatenate([a for a, _ in batches])
    values = np.concatenate([v for _, v in batches])
    assert_matches_batch(summary, {arm: values[arms == arm] for arm in ("control", "treatment")})


def test_state_survives_a_restart_over_http(client_for: Callable[..., TestClient]) -> None:
    first = client_for(real_time_analytics_service)
    r = first.post(ROUTE, json={"operation": "create", "arms": ["a", "b"], "planned_n_per_arm": 10})
    assert r.status_code == 200, r.text
    stream_id = r.json()["component_result"]["stream_id"]
    body = {
        "operation": "ingest",
        "stream_id": stream_id,
        "events": [{"arm": "a", "value": v} for v in (1.0, 2.0, 4.0)],
    }
    assert first.post(ROUTE, json=body).status_code == 200
    first.__exit__(None, None, None)  # shut the first service down

    second = client_for(real_time_analytics_service)
    r = second.post(ROUTE, json={"operation": "summary", "stream_id": stream_id})
    assert r.status_code == 200, r.text
    arm_a = r.json()["component_result"]["summary"]["arms"][0]
    assert arm_a["n"] == 3
    assert arm_a["mean"] == pytest.approx(7 / 3)
    assert arm_a["variance"] == pytest.approx(np.var([1.0, 2.0, 4.0], ddof=1))


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "body"),
        ({"operation": "create", "arms": ["a"], "planned_n_per_arm": 10}, 422, "arms"),
        ({"operation": "create", "arms": ["a", "a"], "planned_n_per_arm": 10}, 422, "create"),
        ({"operation": "create", "arms": ["a", "b"], "planned_n_per_arm": 10, "control_arm": "z"}, 422, "create"),
        ({"operation": "create", "arms": ["a", "b"], "planned_n_per_arm": 10, "bogus": 1}, 422, "bogus"),
        ({"operation": "ingest", "stream_id": "s"}, 422, "ingest"),
        ({"operation": "ingest", "stream_id": "s", "events": [{"arm": "x", "value": 1}]}, 422, "events.arm"),
        ({"operation": "ingest", "stream_id": "s", "events": [{"arm": "a", "value": "NaN"}]}, 422, "value"),
        (
            {"operation": "ingest", "stream_id": "s", "arm_values": [{"arm": "a", "values": {"path": "../x.npy"}}]},
            400,
            "path",
        ),
        ({"operation": "summary", "stream_id": "unknown"}, 404, "stream_id"),
        ({"operation": "explode", "stream_id": "s"}, 422, "operation"),
    ],
)
def test_bad_requests_over_http(
    client_for: Callable[..., TestClient], body: dict[str, Any], status: int, field: str
) -> None:
    client = client_for(real_time_analytics_service)
    assert (
        client.post(
            ROUTE, json={"operation": "create", "stream_id": "s", "arms": ["a", "b"], "planned_n_per_arm": 5}
        ).status_code
        == 200
    )
    r = client.post(ROUTE, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]
    assert r.json()["component"] == "real_time_analytics_service"


# --- invariants ------------------------------------------------------------------------------------------------------


@hypothesis_settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=6, max_size=80),
    st.lists(st.integers(1, 79), max_size=5),
    st.randoms(use_true_random=False),
)
def test_batching_and_order_do_not_change_the_summary(values: list[float], cuts: list[int], rnd: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = make_settings(Path(tmp))
        x = np.asarray(values)
        arms = np.where(np.arange(x.size) % 2 == 0, "control", "treatment")
        order = list(range(x.size))
        rnd.shuffle(order)
        x, arms = x[order], arms[order]
        create(s, stream_id="one")
        create(s, stream_id="many")
        call(s, operation="ingest", stream_id="one", events=events(arms, x))
        for part in np.split(np.arange(x.size), sorted({c for c in cuts if c < x.size})):
            if part.size:
                call(s, operation="ingest", stream_id="many", events=events(arms[part], x[part]))
        one = call(s, operation="summary", stream_id="one").summary
        many = call(s, operation="summary", stream_id="many").summary
        assert one is not None and many is not None
        for a, b in zip(one.arms, many.arms, strict=True):
            assert a.n == b.n
            assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9)
            assert a.variance == pytest.approx(b.variance, rel=1e-7, abs=1e-7)
        p_one, p_many = one.comparisons[0].p_value, many.comparisons[0].p_value
        assert (p_one is None) == (p_many is None)
        if p_one is not None and p_many is not None:
            assert 0.0 <= p_one <= 1.0
            assert p_one == pytest.approx(p_many, rel=1e-5, abs=1e-9)
