"""ModernABTestingService: known answers (statsmodels, scipy, closed forms), input-form equivalence, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import special, stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier4.modern_ab_testing_service import (
    ModernABTestingServiceInput,
    ModernABTestingServiceOutput,
    modern_ab_testing_service,
)
from tests.conftest import make_settings

ROUTE = "/run/modern_ab_testing_service"


def run(settings: Settings, **body: Any) -> ModernABTestingServiceOutput:
    ctx = RunContext(component="modern_ab_testing_service", settings=settings, request_id=None)
    return modern_ab_testing_service(ModernABTestingServiceInput.model_validate(body), ctx)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Recursive equality with float tolerance, ignoring the arms' input ``form``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            if key != "form":
                assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-8, abs=1e-12), path
    elif "reasons[" in path:
        # Reasons print the numbers compared above; only their wording must agree.
        assert a.split(" ")[:2] == b.split(" ")[:2], path
    else:
        assert a == b, path


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return (rng.random(4000) < 0.118).astype(float), (rng.random(4100) < 0.131).astype(float)


@pytest.fixture
def continuous_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x_c, x_t = rng.gamma(4.0, 2.5, 3000), rng.gamma(4.0, 2.5, 3200)
    return {
        "x_c": x_c,
        "x_t": x_t,
        "y_c": 5 + 0.9 * x_c + rng.normal(0, 3, 3000),
        "y_t": 5.25 + 0.9 * x_t + rng.normal(0, 3, 3200),
    }


def stats_of(y: np.ndarray, x: np.ndarray | None = None) -> dict[str, float | int]:
    out: dict[str, float | int] = {"n": y.size, "sum": float(y.sum()), "sum_sq": float(np.dot(y, y))}
    if x is not None:
        out |= {"sum_x": float(x.sum()), "sum_x_sq": float(np.dot(x, x)), "sum_xy": float(np.dot(x, y))}
    return out


# --- known answers ---------------------------------------------------------------------------------------------------


def test_binary_counts_match_statsmodels(settings: Settings) -> None:
    out = run(
        settings, metric="binary", control={"conversions": 120, "n": 1000}, treatment={"conversions": 151, "n": 1010}
    )
    z, p = proportions_ztest([151, 120], [1010, 1000])
    assert out.fixed_horizon.statistic == pytest.approx(z, rel=1e-12)
    assert out.fixed_horizon.p_value == pytest.approx(p, rel=1e-10)
    lo, hi = confint_proportions_2indep(151, 1010, 120, 1000, method="newcomb", compare="diff")
    assert (out.fixed_horizon.ci_low, out.fixed_horizon.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert (out.control.ci_low, out.control.ci_high) == pytest.approx(proportion_confint(120, 1000, method="wilson"))
    assert (out.treatment.ci_low, out.treatment.ci_high) == pytest.approx(
        proportion_confint(151, 1010, method="wilson")
    )
    assert out.fixed_horizon.relative_lift == pytest.approx((151 / 1010 - 0.12) / 0.12)


def test_binary_bayesian_exact_matches_closed_form_and_monte_carlo_error(settings: Settings) -> None:
    body = {"metric": "binary", "control": {"conversions": 12, "n": 100}, "treatment": {"conversions": 30, "n": 200}}
    exact = run(settings, **body, prior_alpha=1, prior_beta=1)
    # Evan Miller's closed form for integer posterior parameters: treatment Beta(31, 171), control Beta(13, 89).
    i = np.arange(31)
    closed = np.exp(
        special.betaln(13 + i, 89 + 171) - np.log(171 + i) - special.betaln(1 + i, 171) - special.betaln(13, 89)
    )
    assert exact.bayesian.prob_treatment_better == pytest.approx(closed.sum(), abs=1e-9)
    assert exact.bayesian.treatment.a == 31 and exact.bayesian.control.b == 89
    mc = run(settings, **body, bayes_method="monte_carlo", monte_carlo_draws=400_000, seed=3)
    assert mc.bayesian.prob_se is not None and mc.bayesian.loss_treatment_se is not None
    assert abs(mc.bayesian.prob_treatment_better - closed.sum()) < 4 * mc.bayesian.prob_se
    assert abs(mc.bayesian.expected_loss_treatment - exact.bayesian.expected_loss_treatment) < (
        4 * mc.bayesian.loss_treatment_se
    )


def test_continuous_values_match_scipy_welch(settings: Settings, continuous_data: dict[str, np.ndarray]) -> None:
    d = continuous_data
    out = run(
        settings, metric="continuous", control={"values": d["y_c"].tolist()}, treatment={"values": d["y_t"].tolist()}
    )
    ref = stats.ttest_ind(d["y_t"], d["y_c"], equal_var=False)
    ci = ref.confidence_interval(0.95)
    fh = out.fixed_horizon
    assert fh.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert fh.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert fh.df == pytest.approx(ref.df, rel=1e-10)
    assert (fh.ci_low, fh.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # Normal posteriors with a flat prior: P(T>C) = Φ(diff / se).
    se = math.sqrt(d["y_t"].var(ddof=1) / d["y_t"].size + d["y_c"].var(ddof=1) / d["y_c"].size)
    assert out.bayesian.prob_treatment_better == pytest.approx(stats.norm.cdf(fh.difference / se), rel=1e-10)
    assert not out.cuped.applied


def test_continuous_stats_match_ttest_ind_from_stats(settings: Settings) -> None:
    n_t, m_t, s_t, n_c, m_c, s_c = 500, 3.4, 1.3, 450, 3.2, 1.1
    arm = lambda n, m, s: {"n": n, "sum": n * m, "sum_sq": (n - 1) * s * s + n * m * m}  # noqa: E731
    out = run(settings, metric="continuous", control=arm(n_c, m_c, s_c), treatment=arm(n_t, m_t, s_t))
    ref = stats.ttest_ind_from_stats(m_t, s_t, n_t, m_c, s_c, n_c, equal_var=False)
    assert out.fixed_horizon.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert out.fixed_horizon.p_value == pytest.approx(ref.pvalue, rel=1e-8)


def test_cuped_theta_reduction_and_adjusted_test(settings: Settings, continuous_data: dict[str, np.ndarray]) -> None:
    d = continuous_data
    out = run(
        settings,
        metric="continuous",
        control={"values": d["y_c"].tolist(), "covariate": d["x_c"].tolist()},
        treatment={"values": d["y_t"].tolist(), "covariate": d["x_t"].tolist()},
    )
    y, x = np.concatenate([d["y_t"], d["y_c"]]), np.concatenate([d["x_t"], d["x_c"]])
    theta = np.cov(y, x)[0, 1] / np.var(x, ddof=1)
    assert out.cuped.applied
    assert out.cuped.theta == pytest.approx(theta, rel=1e-10)
    adj_t, adj_c = d["y_t"] - theta * (d["x_t"] - x.mean()), d["y_c"] - theta * (d["x_c"] - x.mean())
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    assert out.cuped.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert out.cuped.p_value == pytest.approx(ref.pvalue, rel=1e-7)
    rho2 = np.corrcoef(y, x)[0, 1] ** 2
    assert out.cuped.variance_reduction == pytest.approx(rho2, abs=0.02)
    assert out.decided_by == "cuped_welch_t"
    assert out.sequential.estimate == "cuped_welch_t"


def test_srm_matches_scipy_and_blocks_the_decision(settings: Settings) -> None:
    out = run(
        settings,
        metric="binary",
        control={"conversions": 500, "n": 10_000},
        treatment={"conversions": 700, "n": 10_600},
    )
    ref = stats.chisquare([10_000, 10_600], [10_300, 10_300])
    assert out.srm.chi2 == pytest.approx(ref.statistic)
    assert out.srm.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert out.srm.mismatch
    assert out.decision == "invalid_sample_ratio"
    assert "sample-ratio mismatch" in out.reasons[0]
    planned = run(
        settings,
        metric="binary",
        control={"conversions": 500, "n": 10_000},
        treatment={"conversions": 700, "n": 10_600},
        treatment_share=10_600 / 20_600,
    )
    assert not planned.srm.mismatch
    assert planned.decision == "ship_treatment"


def test_msprt_p_value_follows_the_paper_and_the_previous_look(settings: Settings) -> None:
    # Balanced arms with equal variances: Welch's V = 2σ²/n, so the paper's expression applies directly.
    n, sigma2, tau2 = 400, 2.25, 0.04
    base = np.random.default_rng(1).normal(0, 1.5, n)
    base = (base - base.mean()) / base.std(ddof=1) * math.sqrt(sigma2)
    c, t = base, base + 0.3
    out = run(
        settings, metric="continuous", control={"values": c.tolist()}, treatment={"values": t.tolist()}, msprt_tau2=tau2
    )
    diff = 0.3
    lam = math.sqrt(2 * sigma2 / (2 * sigma2 + n * tau2)) * math.exp(
        n**2 * tau2 * diff**2 / (4 * sigma2 * (2 * sigma2 + n * tau2))
    )
    assert out.sequential.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-9)
    assert out.sequential.fixed_horizon_p_value == out.fixed_horizon.p_value
    later = run(
        settings,
        metric="continuous",
        control={"values": c.tolist()},
        treatment={"values": t.tolist()},
        msprt_tau2=tau2,
        previous_sequential_p_value=1e-4,
    )
    assert later.sequential.p_value == 1e-4  # never rises above an earlier look


def test_bootstrap_agrees_with_welch_interval_and_is_seeded(
    settings: Settings, continuous_data: dict[str, np.ndarray]
) -> None:
    d = continuous_data
    body = {
        "metric": "continuous",
        "control": {"values": d["y_c"].tolist()},
        "treatment": {"values": d["y_t"].tolist()},
        "bootstrap_resamples": 1000,
        "seed": 5,
    }
    out = run(settings, **body)
    assert out.bootstrap is not None
    welch_se = (out.fixed_horizon.ci_high - out.fixed_horizon.ci_low) / (2 * 1.96)
    assert out.bootstrap.se == pytest.approx(welch_se, rel=0.1)
    assert out.bootstrap.ci_low == pytest.approx(out.fixed_horizon.ci_low, abs=0.25 * welch_se)
    assert out.bootstrap.ci_high == pytest.approx(out.fixed_horizon.ci_high, abs=0.25 * welch_se)
    assert run(settings, **body).bootstrap == out.bootstrap


def test_decision_ships_a_clear_winner(settings: Settings) -> None:
    out = run(
        settings,
        metric="binary",
        control={"conversions": 1000, "n": 10_000},
        treatment={"conversions": 1300, "n": 10_000},
    )
    assert out.decision == "ship_treatment"
    assert out.bayesian.prob_treatment_better > 0.999
    assert any("P(treatment better)" in r for r in out.reasons)
    worse = run(
        settings,
        metric="binary",
        control={"conversions": 1300, "n": 10_000},
        treatment={"conversions": 1000, "n": 10_000},
    )
    assert worse.decision == "keep_control"


def test_no_conversions_at_all_is_a_defined_result(settings: Settings) -> None:
    out = run(settings, metric="binary", control={"conversions": 0, "n": 50}, treatment={"conversions": 0, "n": 50})
    assert out.fixed_horizon.statistic is None
    assert out.fixed_horizon.p_value == 1.0
    assert out.decision == "inconclusive"
    assert out.fixed_horizon.relative_lift is None
    assert out.sequential.p_value == 1.0


# --- the same data in every form give the same result ----------------------------------------------------------------


def test_binary_forms_are_equivalent(settings: Settings, binary_data: tuple[np.ndarray, np.ndarray]) -> None:
    c, t = binary_data
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "c.npy", c.astype(np.uint8))  # compact 0/1 files are counted in their own dtype
    np.save(data / "c2.npy", np.column_stack([np.zeros(c.size), c]).astype(np.int16))
    np.save(data / "t.npy", t)
    np.savetxt(data / "t.csv", t, delimiter=",", header="converted", comments="", fmt="%d")
    common = {"metric": "binary", "bootstrap_resamples": 300, "seed": 9, "bayes_method": "monte_carlo"}
    forms = [
        {"control": {"values": c.tolist()}, "treatment": {"values": t.tolist()}},
        {"control": {"values": {"path": "c.npy"}}, "treatment": {"values": {"path": "t.csv", "column": "converted"}}},
        {"control": {"values": {"path": "c2.npy", "column": 1}}, "treatment": {"values": {"path": "t.npy"}}},
        {
            "control": {"conversions": int(c.sum()), "n": c.size},
            "treatment": {"conversions": int(t.sum()), "n": t.size},
        },
        {"control": {"n": c.size, "sum": float(c.sum())}, "treatment": stats_of(t)},
    ]
    results = [run(settings, **common, **f).model_dump() for f in forms]
    for other in results[1:]:
        assert_same(results[0], other)
    assert [r["control"]["form"] for r in results] == ["values", "values", "values", "counts", "stats"]


def test_binary_file_with_other_values_is_rejected(client: TestClient, settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    np.save(settings.data_dir / "bad.npy", np.array([0, 1, 2], dtype=np.uint8))
    body = {"metric": "binary", "control": {"values": {"path": "bad.npy"}}, "treatment": {"conversions": 1, "n": 3}}
    r = client.post(ROUTE, json=body)
    assert r.status_code == 422
    assert "control.values" in r.json()["detail"]


def test_continuous_forms_are_equivalent(settings: Settings, continuous_data: dict[str, np.ndarray]) -> None:
    d = continuous_data
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "yc.npy", d["y_c"])
    np.save(data / "both_t.npy", np.column_stack([d["y_t"], d["x_t"]]))
    np.savetxt(data / "xc.csv", d["x_c"], delimiter=",", fmt="%.17g")
    common = {"metric": "continuous", "bayes_method": "monte_carlo", "seed": 4, "msprt_tau2": 0.05}
    forms = [
        {
            "control": {"values": d["y_c"].tolist(), "covariate": d["x_c"].tolist()},
            "treatment": {"values": d["y_t"].tolist(), "covariate": d["x_t"].tolist()},
        },
        {
            "control": {"values": {"path": "yc.npy"}, "covariate": {"path": "xc.csv"}},
            "treatment": {
                "values": {"path": "both_t.npy", "column": 0},
                "covariate": {"path": "both_t.npy", "column": 1},
            },
        },
        {"control": stats_of(d["y_c"], d["x_c"]), "treatment": stats_of(d["y_t"], d["x_t"])},
    ]
    results = [run(settings, **common, **f).model_dump() for f in forms]
    assert results[0]["cuped"]["applied"]
    for other in results[1:]:
        assert_same(results[0], other)


# --- invariants ------------------------------------------------------------------------------------------------------

arm_counts = st.integers(min_value=1, max_value=100_000).flatmap(
    lambda n: st.builds(lambda k: {"conversions": k, "n": n}, st.integers(0, n))
)


@hypothesis_settings(max_examples=40, deadline=None)
@given(arm_counts, arm_counts)
def test_swapping_arms_is_symmetric(a: dict[str, int], b: dict[str, int]) -> None:
    s = make_settings(Path("/nonexistent-not-used"))
    ab = run(s, metric="binary", control=a, treatment=b)
    ba = run(s, metric="binary", control=b, treatment=a)
    for out in (ab, ba):
        assert 0.0 <= out.fixed_horizon.p_value <= 1.0
        assert 0.0 <= out.sequential.p_value <= 1.0
        assert 0.0 <= out.srm.p_value <= 1.0
        assert 0.0 <= out.bayesian.prob_treatment_better <= 1.0
    assert ab.fixed_horizon.p_value == pytest.approx(ba.fixed_horizon.p_value, rel=1e-9)
    assert ab.fixed_horizon.difference == pytest.approx(-ba.fixed_horizon.difference, abs=1e-15)
    assert ab.fixed_horizon.ci_low == pytest.approx(-ba.fixed_horizon.ci_high, abs=1e-12)
    assert ab.bayesian.prob_treatment_better + ba.bayesian.prob_treatment_better == pytest.approx(1.0, abs=1e-8)
    assert ab.bayesian.expected_loss_treatment == pytest.approx(ba.bayesian.expected_loss_control, rel=1e-6, abs=1e-12)
    assert ab.sequential.p_value == pytest.approx(ba.sequential.p_value, rel=1e-9)
    assert ab.srm.p_value == pytest.approx(ba.srm.p_value, rel=1e-9)


# --- HTTP and errors -------------------------------------------------------------------------------------------------


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(modern_ab_testing_service)


def test_example_runs_over_http(client: TestClient) -> None:
    r = client.post(ROUTE, json=modern_ab_testing_service.example)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["component"] == "modern_ab_testing_service"
    assert body["component_result"]["cuped"]["applied"]
    assert body["local_metadata"]["tier"] == "tier4"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "metric"),
        (
            {"metric": "binary", "control": {"conversions": 5, "n": 4}, "treatment": {"conversions": 1, "n": 9}},
            422,
            "control",
        ),
        ({"metric": "binary", "control": {"conversions": 5}, "treatment": {"conversions": 1, "n": 9}}, 422, "control"),
        (
            {"metric": "binary", "control": {"values": [1, 0], "n": 2}, "treatment": {"conversions": 1, "n": 9}},
            422,
            "control",
        ),
        (
            {"metric": "binary", "control": {"values": [1, 0, 2]}, "treatment": {"values": [1, 0]}},
            422,
            "control.values",
        ),
        (
            {"metric": "continuous", "control": {"conversions": 1, "n": 9}, "treatment": {"values": [1, 2]}},
            422,
            "control.conversions",
        ),
        (
            {"metric": "continuous", "control": {"n": 9, "sum": 3.0}, "treatment": {"values": [1, 2]}},
            422,
            "control.sum_sq",
        ),
        (
            {"metric": "continuous", "control": {"values": [1, 1, 1]}, "treatment": {"values": [2, 2]}},
            422,
            "control, treatment",
        ),
        ({"metric": "continuous", "control": {"values": [1.0]}, "treatment": {"values": [2, 3]}}, 422, "control"),
        (
            {
                "metric": "continuous",
                "control": {"values": [1, 2, 3], "covariate": [1, 2]},
                "treatment": {"values": [2, 3]},
            },
            422,
            "control.covariate",
        ),
        (
            {
                "metric": "continuous",
                "control": {"values": [1, 2, 3], "covariate": [1, 2, 4]},
                "treatment": {"values": [2, 3]},
            },
            422,
            "treatment.covariate",
        ),
        (
            {
                "metric": "continuous",
                "control": {"n": 9, "sum": 3.0, "sum_sq": 9.0},
                "treatment": {"values": [1, 2]},
                "bootstrap_resamples": 10,
            },
            422,
            "control.values",
        ),
        (
            {"metric": "continuous", "control": {"values": {"path": "../etc/passwd"}}, "treatment": {"values": [1, 2]}},
            400,
            "control.values.path",
        ),
        (
            {"metric": "continuous", "control": {"values": {"path": "missing.npy"}}, "treatment": {"values": [1, 2]}},
            400,
            "control.values.path",
        ),
        (
            {
                "metric": "binary",
                "control": {"conversions": 1, "n": 2},
                "treatment": {"conversions": 1, "n": 2},
                "alpha": 0.7,
            },
            422,
            "alpha",
        ),
        (
            {
                "metric": "binary",
                "control": {"conversions": 1, "n": 2},
                "treatment": {"conversions": 1, "n": 2},
                "extra": 1,
            },
            422,
            "extra",
        ),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    client: TestClient, body: dict[str, Any], status: int, field: str
) -> None:
    r = client.post(ROUTE, json=body)
    assert r.status_code == status, r.text
    problem = r.json()
    assert problem["status"] == status
    assert field in problem["detail"]
    assert problem["component"] == "modern_ab_testing_service"


# Regressions from the thorough schemathesis run: subnormal values that passed gt=0 and ended in a 500.
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alpha": 5e-324}, "alpha"),  # t quantile inf → non-finite interval in FixedHorizonResult
        ({"alpha": 5e-324, "msprt_tau2": 5e-324}, "alpha"),
        ({"treatment_share": 5e-324}, "treatment_share"),  # SRM chi-square overflowed
        ({"treatment_share": 1 - 1e-12}, "treatment_share"),
    ],
)
def test_subnormal_inputs_are_refused_naming_the_field(client: TestClient, change: dict[str, Any], field: str) -> None:
    r = client.post(ROUTE, json={**modern_ab_testing_service.example, **change})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}:")


@pytest.mark.parametrize("metric", ["binary", "continuous"])
def test_smallest_accepted_alpha_and_share_give_finite_results(settings: Settings, metric: str) -> None:
    arms = (
        {"control": {"conversions": 40, "n": 400}, "treatment": {"conversions": 55, "n": 410}}
        if metric == "binary"
        else {"control": {"values": [10.2, 9.8, 11.1, 10.5]}, "treatment": {"values": [10.9, 10.4, 11.6, 11.2]}}
    )
    out = run(settings, metric=metric, alpha=1e-9, treatment_share=1e-6, msprt_tau2=5e-324, **arms)
    # 1 - 1e-9 intervals: the quantile is large but finite; the SRM check flags the planned 1e-6 share.
    assert math.isfinite(out.fixed_horizon.ci_low) and math.isfinite(out.fixed_horizon.ci_high)
    assert out.fixed_horizon.ci_low < out.fixed_horizon.difference < out.fixed_horizon.ci_high
    assert math.isfinite(out.srm.chi2) and out.srm.mismatch


def test_exact_beta_comparison_refuses_posteriors_with_a_pole(client: TestClient, settings: Settings) -> None:
    # Regression: a prior below 1 with no conversions gives a Beta posterior with a pole at 0, which the exact
    # quadrature cannot integrate (OverflowError or NaN → 500). It is a 422 naming the prior; Monte Carlo copes.
    body = {
        "metric": "binary",
        "control": {"conversions": 0, "n": 400},
        "treatment": {"conversions": 55, "n": 410},
        "prior_alpha": 5e-324,
        "prior_beta": 1e6,
    }
    r = client.post(ROUTE, json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith("prior_alpha:"), r.text
    out = run(settings, **body, bayes_method="monte_carlo", monte_carlo_draws=2000)
    # Control's posterior mean is ~1e-324, treatment's 55 / 1,000,410: every draw favours treatment.
    assert out.bayesian.prob_treatment_better == 1.0
    assert out.bayesian.control.mean == pytest.approx(0.0, abs=1e-300)


def test_small_prior_beta_survives_a_huge_all_converting_arm(settings: Settings) -> None:
    # Regression: b0 + n − k was computed as (b0 + n) − k, which rounds a small b0 away when n is 1e13 (→ 500).
    n = 10**13
    out = run(
        settings,
        metric="binary",
        control={"conversions": n // 2, "n": n},
        treatment={"conversions": n, "n": n},
        prior_beta=1e-6,
        bayes_method="monte_carlo",
        monte_carlo_draws=1000,
    )
    assert out.bayesian.treatment.b == pytest.approx(1e-6, rel=1e-12)
    assert out.bayesian.prob_treatment_better == 1.0
