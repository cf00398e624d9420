"""PerformanceOptimizer: the Mann–Whitney test against scipy, planted regressions, persistent baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from mlmesh.errors import InvalidInput, NotFound
from services.framework import RunContext
from services.tier4.performance_optimizer import (
    PerformanceOptimizerInput,
    mann_whitney_greater,
    performance_optimizer,
)
from tests.conftest import make_settings


def make_ctx(root: Path) -> RunContext:
    return RunContext(component="performance_optimizer", settings=make_settings(root), request_id=None)


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return make_ctx(tmp_path)


def run(ctx: RunContext, **body: object):
    return performance_optimizer(PerformanceOptimizerInput.model_validate(body), ctx)


@pytest.mark.parametrize(
    ("n1", "n2", "ties"),
    [(5, 7, False), (8, 30, False), (3, 3, False), (12, 15, False), (40, 25, False), (6, 6, True), (20, 20, True)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_mannwhitneyu_greater(n1: int, n2: int, ties: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.lognormal(0.1, 0.3, n1), rng.lognormal(0.0, 0.3, n2)
    if ties:
        x, y = np.round(x, 1), np.round(y, 1)
    ref = mannwhitneyu(x, y, alternative="greater")
    u, p, _ = mann_whitney_greater(x.tolist(), y.tolist())
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.integers(0, 30), min_size=3, max_size=12),
    y=st.lists(st.integers(0, 30), min_size=3, max_size=12),
)
def test_matches_scipy_on_arbitrary_small_samples(x: list[int], y: list[int]) -> None:
    if len(set(x + y)) == 1:
        return  # scipy's z is 0/0 there; covered by the all-ties test
    ref = mannwhitneyu(x, y, alternative="greater")
    u, p, _ = mann_whitney_greater([float(v) for v in x], [float(v) for v in y])
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
    assert 0.0 <= p <= 1.0


def test_all_ties_is_not_a_regression(ctx: RunContext) -> None:
    run(ctx, operation="baseline", name="flat", samples=[0.01] * 10)
    out = run(ctx, operation="compare", name="flat", samples=[0.01] * 10)
    assert out.p_value == 1.0 and out.regression is False


def test_planted_2x_slowdown_detected_and_equal_not(ctx: RunContext) -> None:
    rng = np.random.default_rng(42)
    base = rng.normal(0.010, 0.0005, 30).clip(0.001)
    run(ctx, operation="baseline", name="op", samples=base.tolist())
    slow = (2 * rng.normal(0.010, 0.0005, 30)).clip(0.001)
    out = run(ctx, operation="compare", name="op", samples=slow.tolist())
    assert out.regression is True and out.p_value < 1e-6 and out.ratio == pytest.approx(2, rel=0.1)
    same = rng.normal(0.010, 0.0005, 30).clip(0.001)
    out = run(ctx, operation="compare", name="op", samples=same.tolist())
    assert out.regression is False and out.p_value > 0.01
    # Significant but tiny slowdown: the minimum relative slowdown keeps it from counting.
    tiny = base * 1.03
    out = run(ctx, operation="compare", name="op", samples=tiny.tolist(), alpha=0.2)
    assert out.ratio == pytest.approx(1.03) and out.regression is False


def test_benchmark_runs_real_workloads(ctx: RunContext) -> None:
    for workload, size in [("sort", 20000), ("json_roundtrip", 500), ("sha256", 1 << 16), ("matmul", 64)]:
        out = run(ctx, operation="benchmark", workload=workload, size=size, repeats=5)
        assert len(out.samples_s) == 5 and all(s > 0 for s in out.samples_s)
        assert out.summary.median_s == pytest.approx(float(np.median(out.samples_s)))
    # Bigger work takes longer: 16× the bytes to hash is measurably slower.
    small = run(ctx, operation="benchmark", workload="sha256", size=1 << 16, repeats=7).summary.median_s
    big = run(ctx, operation="benchmark", workload="sha256", size=1 << 20, repeats=7).summary.median_s
    assert big > 4 * small


def test_baselines_persist_across_restart(tmp_path: Path) -> None:
    first = make_ctx(tmp_path)
    run(first, operation="baseline", name="sort-1k", spec={"workload": "sort", "size": 1000, "repeats": 5})
    run(first, operation="baseline", name="sort-1k", spec={"workload": "sort", "size": 1000, "repeats": 5})
    for db in first.databases.values():
        db.close()
    again = make_ctx(tmp_path)  # a new service: fresh context, same data directory
    listed = run(again, operation="list").baselines
    assert [(b.name, b.version, b.workload, b.size) for b in listed] == [("sort-1k", 2, "sort", 1000)]
    out = run(again, operation="compare", name="sort-1k")  # reruns the stored workload
    assert out.workload == "sort" and len(out.samples_s) == 5 and out.p_value is not None


def test_errors(ctx: RunContext, client_for) -> None:
    with pytest.raises(NotFound):
        run(ctx, operation="compare", name="nope", samples=[1, 2, 3])
    run(ctx, operation="baseline", name="given", samples=[1, 2, 3])
    with pytest.raises(InvalidInput):
        run(ctx, operation="compare", name="given")
    client = client_for(performance_optimizer)
    bad = [
        {"operation": "benchmark", "workload": "matmul", "size": 100000},
        {"operation": "baseline", "name": "x"},
        {"operation": "baseline", "name": "x", "samples": [1, -2, 3]},
        {"operation": "compare", "name": "x", "samples": [1, 2]},
    ]
    for body in bad:
        assert client.post("/run/performance_optimizer", json=body).status_code == 422, body
    r = client.post("/run/performance_optimizer", json={"operation": "compare", "name": "absent", "samples": [1, 2, 3]})
    assert r.status_code == 404


def test_timings_beyond_a_million_seconds_are_refused(client_for) -> None:
    # Regression (slow schemathesis): a baseline of ~1e200 s overflowed the SD, in its own call and in every later
    # "list". Timings are bounded, and the largest accepted ones summarise finitely.
    client = client_for(performance_optimizer)
    route = "/run/performance_optimizer"
    r = client.post(route, json={"operation": "baseline", "name": "huge", "samples": [0.0, 1e200, 2e200]})
    assert r.status_code == 422 and r.json()["detail"].startswith("baseline.samples.1:"), r.text
    r = client.post(route, json={"operation": "baseline", "name": "long", "samples": [0.0, 1e6, 1e6]})
    assert r.status_code == 200, r.text
    assert r.json()["component_result"]["summary"]["std_s"] == pytest.approx(1e6 / np.sqrt(3), rel=1e-12)
    listed = client.post(route, json={"operation": "list"})
    assert listed.status_code == 200 and len(listed.json()["component_result"]["baselines"]) == 1, listed.text
