"""Group-sequential boundaries against published tables, scipy's multivariate normal and simulation; SPRT vs Wald."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.advanced_early_stopping_framework import (
    AdvancedEarlyStoppingFrameworkInput,
    advanced_early_stopping_framework,
)
from tests.conftest import make_settings

NAME = "advanced_early_stopping_framework"


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """A context that outlives one test function (Hypothesis re-runs a test body many times)."""
    return RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("gs")), request_id=None)


def run(ctx: RunContext, **body: Any) -> Any:
    body.setdefault("method", "group_sequential")
    out = advanced_early_stopping_framework(AdvancedEarlyStoppingFrameworkInput.model_validate(body), ctx)
    return out.group_sequential if body["method"] == "group_sequential" else out.sprt


def bounds(ctx: RunContext, **body: Any) -> np.ndarray:
    result = run(ctx, **body)
    return np.array([np.inf if look.z_boundary is None else look.z_boundary for look in result.looks])


def correlation(t: np.ndarray) -> np.ndarray:
    """Corr(Z_i, Z_j) = √(t_i / t_j) for i ≤ j: the canonical joint distribution of group-sequential z statistics."""
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


# ------------------------------------------------------------------------------------------ published boundaries


@pytest.mark.parametrize(
    ("spending", "n_looks", "published"),
    [
        # ldbounds::bounds(t, iuse=c(1,1), alpha=c(0.025,0.025)) and gsDesign sfLDOF; Jennison & Turnbull ch. 7.
        ("obrien_fleming", 5, [4.8769, 3.3569, 2.6803, 2.2898, 2.0310]),
        ("obrien_fleming", 3, [3.7103, 2.5114, 1.9930]),
        # Lan–DeMets Pocock type (ldbounds iuse=2, gsDesign sfLDPocock).
        ("pocock", 5, [2.438, 2.426, 2.410, 2.397, 2.390]),
    ],
)
def test_two_sided_boundaries_match_published_tables(ctx, spending, n_looks, published):
    got = bounds(ctx, n_looks=n_looks, alpha=0.05, sides=2, spending=spending)
    np.testing.assert_allclose(got, published, atol=0.01)


def test_one_sided_at_half_alpha_equals_two_sided_symmetric(ctx):
    one = bounds(ctx, n_looks=5, alpha=0.025, sides=1, spending="obrien_fleming")
    two = bounds(ctx, n_looks=5, alpha=0.05, sides=2, spending="obrien_fleming")
    np.testing.assert_allclose(one, two, atol=1e-3)  # the lower boundary adds only ~1e-7 of mass


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock", "hwang_shih_decani"])
def test_single_look_reduces_to_fixed_sample_test(ctx, spending):
    assert bounds(ctx, n_looks=1, alpha=0.05, sides=2, spending=spending)[0] == pytest.approx(1.959964, abs=1e-5)
    assert bounds(ctx, n_looks=1, alpha=0.05, sides=1, spending=spending)[0] == pytest.approx(1.644854, abs=1e-5)


def test_spending_functions_follow_their_formulas(ctx):
    t = np.array([0.1, 0.35, 0.6, 1.0])
    alpha = 0.05
    obf = run(ctx, information_fractions=t.tolist(), alpha=alpha, sides=1, spending="obrien_fleming")
    expected = 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))
    np.testing.assert_allclose([lk.alpha_spent for lk in obf.looks], expected, rtol=1e-10)
    pocock = run(ctx, information_fractions=t.tolist(), alpha=alpha, sides=2, spending="pocock")
    np.testing.assert_allclose([lk.alpha_spent for lk in pocock.looks], alpha * np.log(1 + (np.e - 1) * t), rtol=1e-10)
    hsd = run(ctx, information_fractions=t.tolist(), alpha=alpha, sides=1, spending="hwang_shih_decani", gamma=-4)
    expected = alpha * (1 - np.exp(4 * t)) / (1 - np.exp(4))
    np.testing.assert_allclose([lk.alpha_spent for lk in hsd.looks], expected, rtol=1e-10)
    linear = run(ctx, information_fractions=t.tolist(), alpha=alpha, sides=1, spending="hwang_shih_decani", gamma=0)
    np.testing.assert_allclose([lk.alpha_spent for lk in linear.looks], alpha * t, rtol=1e-10)


# -------------------------------------------------------------------------- independent check: multivariate normal


@pytest.mark.parametrize(
    ("fractions", "sides", "spending"),
    [
        ([0.2, 0.4, 0.6, 0.8, 1.0], 2, "obrien_fleming"),
        ([0.3, 0.55, 1.0], 1, "pocock"),
        ([0.25, 0.5, 0.7, 1.0], 2, "hwang_shih_decani"),
    ],
)
def test_boundaries_spend_alpha_by_scipy_multivariate_normal(ctx, fractions, sides, spending):
    """P_H0(cross by look k) from scipy's Genz integration equals α(t_k) at every look."""
    result = run(ctx, information_fractions=fractions, alpha=0.05, sides=sides, spending=spending, gamma=-2)
    t = np.array(fractions)
    b = np.array([lk.z_boundary for lk in result.looks])
    for k in range(1, t.size + 1):
        mvn = stats.multivariate_normal(mean=np.zeros(k), cov=correlation(t[:k]), abseps=1e-6, releps=1e-6)
        lower = -b[:k] if sides == 2 else np.full(k, -np.inf)
        no_stop = mvn.cdf(b[:k], lower_limit=lower, rng=np.random.default_rng(k))
        assert 1 - no_stop == pytest.approx(result.looks[k - 1].alpha_spent, abs=1e-5)


def test_design_drift_gives_the_stated_power_by_scipy_multivariate_normal(ctx):
    result = run(ctx, n_looks=4, alpha=0.025, sides=1, spending="obrien_fleming", power=0.9)
    t = np.arange(1, 5) / 4
    b = np.array([lk.z_boundary for lk in result.looks])
    mvn = stats.multivariate_normal(
        mean=result.design.design_drift * np.sqrt(t), cov=correlation(t), abseps=1e-6, releps=1e-6
    )
    power = 1 - mvn.cdf(b, rng=np.random.default_rng(0))
    assert power == pytest.approx(0.9, abs=1e-4)
    # A group-sequential design needs a little more information than the fixed-sample test.
    fixed = stats.norm.ppf(0.975) + stats.norm.ppf(0.9)
    assert result.design.fixed_sample_drift == pytest.approx(fixed)
    assert 1.0 < result.design.max_information_inflation < 1.05


# --------------------------------------------------------------------------------------------------- simulation


def simulate(t: np.ndarray, b: np.ndarray, sides: int, drift: float, n: int, seed: int) -> tuple[float, float]:
    """Brownian-motion simulation of the z statistics: (fraction of paths stopped, mean information at stop)."""
    rng = np.random.default_rng(seed)
    increments = rng.normal(drift * np.diff(t, prepend=0.0), np.sqrt(np.diff(t, prepend=0.0)), size=(n, t.size))
    z = np.cumsum(increments, axis=1) / np.sqrt(t)
    crossed = np.abs(z) >= b if sides == 2 else z >= b
    stopped = crossed.any(axis=1)
    stop_info = np.where(stopped, t[crossed.argmax(axis=1)], 1.0)
    return float(stopped.mean()), float(stop_info.mean())


@pytest.mark.parametrize(("sides", "spending"), [(2, "obrien_fleming"), (2, "pocock"), (1, "hwang_shih_decani")])
def test_simulated_type_one_error_matches_alpha(ctx, sides, spending):
    result = run(ctx, n_looks=5, alpha=0.05, sides=sides, spending=spending)
    t = np.arange(1, 6) / 5
    b = np.array([lk.z_boundary for lk in result.looks])
    n = 300_000
    rate, info_h0 = simulate(t, b, sides, 0.0, n, seed=11)
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    assert info_h0 == pytest.approx(result.design.expected_information_h0, abs=2e-3)
    power, info_h1 = simulate(t, b, sides, result.design.design_drift, n, seed=12)
    assert power == pytest.approx(0.8, abs=4 * np.sqrt(0.8 * 0.2 / n))  # includes the tiny lower-crossing mass
    assert info_h1 == pytest.approx(result.design.expected_information_h1, abs=3e-3)


def test_conditional_power_matches_lan_wittes_and_simulation(ctx):
    result = run(ctx, n_looks=4, alpha=0.05, sides=2, look=2, z=1.2, futility_threshold=0)
    cur = result.current
    c = result.looks[-1].z_boundary
    t, z = 0.5, 1.2
    theta_hat = z / np.sqrt(t)
    formula = 1 - stats.norm.cdf((c - z * np.sqrt(t) - theta_hat * (1 - t)) / np.sqrt(1 - t))
    assert cur.conditional_power_current_trend == pytest.approx(formula, rel=1e-10)
    # Simulate B(1) = B(t) + N(θ(1 − t), 1 − t) under the design drift and count Z(1) ≥ c.
    rng = np.random.default_rng(3)
    b1 = z * np.sqrt(t) + rng.normal(result.design.design_drift * (1 - t), np.sqrt(1 - t), size=400_000)
    assert cur.conditional_power_design == pytest.approx(np.mean(b1 >= c), abs=0.005)
    assert cur.conditional_power_h0 < cur.conditional_power_current_trend < cur.conditional_power_design


# ------------------------------------------------------------------------------------------------------ decisions


def test_decisions_at_the_current_look(ctx):
    design = {"n_looks": 5, "alpha": 0.05, "sides": 2, "spending": "obrien_fleming"}
    assert run(ctx, **design, look=3, z=2.9).current.decision == "stop_efficacy"
    assert run(ctx, **design, look=3, z=-2.9).current.decision == "stop_harm"
    assert run(ctx, **design, look=3, z=2.1).current.decision == "continue"
    futile = run(ctx, **design, look=3, z=0.1).current
    assert futile.decision == "stop_futility"
    assert futile.conditional_power_current_trend < 0.1
    assert any("futility" in r for r in futile.reasons)
    assert run(ctx, **design, look=3, z=0.1, futility_threshold=0).current.decision == "continue"
    final = run(ctx, **design, look=5, z=1.9).current
    assert final.decision == "final_no_rejection"
    assert final.conditional_power_current_trend is None
    assert run(ctx, **design, look=5, z=2.05).current.decision == "stop_efficacy"
    assert run(ctx, **design).current is None


def test_z_from_raw_data_file_and_summaries_agree_with_statsmodels(ctx):
    rng = np.random.default_rng(5)
    control, treatment = rng.normal(10, 2, 300), rng.normal(10.4, 2.5, 280)
    np.save(ctx.data_dir / "treatment.npy", treatment)
    common = {"n_looks": 3, "look": 2, "futility_threshold": 0}
    raw = run(ctx, **common, control=control.tolist(), treatment={"path": "treatment.npy"}).current
    summary = run(
        ctx,
        **common,
        control_stats={"n": 300, "sum": control.sum(), "sum_sq": (control**2).sum()},
        treatment_stats={"n": 280, "sum": treatment.sum(), "sum_sq": (treatment**2).sum()},
    ).current
    reference, _ = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).ztest_ind(usevar="unequal")
    assert raw.z_source == "raw" and summary.z_source == "summary"
    assert raw.z == pytest.approx(reference, rel=1e-9)
    assert summary.z == pytest.approx(raw.z, rel=1e-9)
    assert summary.decision == raw.decision
    lower = run(ctx, **common, control=control.tolist(), treatment=treatment.tolist(), direction="lower").current
    assert lower.z == pytest.approx(-raw.z)


def test_binary_z_matches_statsmodels_two_proportion_test(ctx):
    control = np.r_[np.ones(60), np.zeros(440)]
    treatment = np.r_[np.ones(84), np.zeros(416)]
    body = {"n_looks": 4, "look": 2, "metric": "binary"}
    raw = run(ctx, **body, control=control.tolist(), treatment=treatment.tolist()).current
    summary = run(ctx, **body, control_stats={"n": 500, "sum": 60}, treatment_stats={"n": 500, "sum": 84}).current
    reference, _ = proportions_ztest([84, 60], [500, 500])
    assert raw.z == pytest.approx(reference, rel=1e-12)
    assert summary.z == pytest.approx(reference, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------ SPRT


def test_sprt_matches_wald_and_binomial_likelihoods(ctx):
    rng = np.random.default_rng(8)
    outcomes = (rng.random(400) < 0.16).astype(float)
    p0, p1, alpha, beta = 0.1, 0.2, 0.05, 0.1
    res = run(ctx, method="sprt", p0=p0, p1=p1, alpha=alpha, beta=beta, outcomes=outcomes.tolist())
    assert pytest.approx((1 - beta) / alpha) == res.A
    assert pytest.approx(beta / (1 - alpha)) == res.B
    n, s = outcomes.size, int(outcomes.sum())
    llr = stats.binom.logpmf(s, n, p1) - stats.binom.logpmf(s, n, p0)  # binomial coefficients cancel
    assert res.llr == pytest.approx(llr, rel=1e-10)
    path = np.cumsum(stats.bernoulli.logpmf(outcomes, p1) - stats.bernoulli.logpmf(outcomes, p0))
    np.testing.assert_allclose(res.path_llr, path, rtol=1e-10)
    first = np.flatnonzero((path >= np.log(res.A)) | (path <= np.log(res.B)))[0]
    assert res.stopped_at == first + 1
    assert res.decision == ("accept_h1" if path[first] > 0 else "accept_h0")
    totals = run(ctx, method="sprt", p0=p0, p1=p1, alpha=alpha, beta=beta, successes=s, trials=n)
    assert totals.llr == pytest.approx(res.llr, rel=1e-12)
    assert totals.stopped_at is None and totals.path_llr is None


def test_sprt_expected_sample_sizes_are_walds_and_beat_fixed_sample(ctx):
    p0, p1, alpha, beta = 0.3, 0.45, 0.05, 0.2
    res = run(ctx, method="sprt", p0=p0, p1=p1, alpha=alpha, beta=beta, successes=0, trials=1)
    a, b = np.log((1 - beta) / alpha), np.log(beta / (1 - alpha))
    z0 = p0 * np.log(p1 / p0) + (1 - p0) * np.log((1 - p1) / (1 - p0))
    assert res.expected_n_h0 == pytest.approx(((1 - alpha) * b + alpha * a) / z0)
    assert max(res.expected_n_h0, res.expected_n_h1) < res.fixed_sample_n


def test_sprt_simulated_error_rates_respect_wald_bounds(ctx):
    """Wald: the realised error rates are at most α/(1 − β) and β/(1 − α)."""
    rng = np.random.default_rng(21)
    p0, p1, alpha, beta = 0.2, 0.35, 0.05, 0.1
    per_s, per_f = np.log(p1 / p0), np.log((1 - p1) / (1 - p0))
    res = run(ctx, method="sprt", p0=p0, p1=p1, alpha=alpha, beta=beta, successes=0, trials=1)
    for p, wrong_sign, bound in ((p0, 1, alpha / (1 - beta)), (p1, -1, beta / (1 - alpha))):
        x = rng.random((4000, 600)) < p
        path = np.cumsum(np.where(x, per_s, per_f), axis=1)
        out = (path >= res.log_A) | (path <= res.log_B)
        first = out.argmax(axis=1)
        assert out.any(axis=1).all()
        errors = np.sign(path[np.arange(4000), first]) == wrong_sign
        assert errors.mean() <= bound + 3 * np.sqrt(bound / 4000)


# ------------------------------------------------------------------------------------------------------ invariants


@hypothesis_settings(max_examples=30, deadline=None)
@given(
    gaps=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=6),
    alpha=st.floats(0.005, 0.2),
    sides=st.sampled_from([1, 2]),
    spending=st.sampled_from(["obrien_fleming", "pocock", "hwang_shih_decani"]),
    z=st.floats(-6, 6),
    data=st.data(),
)
def test_invariants(module_ctx, gaps, alpha, sides, spending, z, data):
    ctx = module_ctx
    t = np.cumsum(gaps) / np.sum(gaps)
    look = data.draw(st.integers(1, t.size))
    body = {"information_fractions": t.tolist(), "alpha": alpha, "sides": sides, "spending": spending, "look": look}
    body["futility_threshold"] = 0
    res = run(ctx, **body, z=z)
    spent = [lk.alpha_spent for lk in res.looks]
    assert spent[-1] == pytest.approx(alpha, rel=1e-9)
    assert all(np.diff(spent) >= 0)
    assert res.looks[-1].crossing_probability_h0 == pytest.approx(alpha, rel=1e-4)
    for lk in res.looks:
        assert 0 <= lk.nominal_p <= lk.alpha_spent + 1e-12
    cur = res.current
    assert 0 <= cur.nominal_p <= 1
    for cp in (cur.conditional_power_current_trend, cur.conditional_power_design, cur.conditional_power_h0):
        assert cp is None or 0 <= cp <= 1
    if sides == 2:  # symmetric design: swapping the arms swaps efficacy and harm
        mirrored = run(ctx, **body, z=-z).current.decision
        swap = {"stop_efficacy": "stop_harm", "stop_harm": "stop_efficacy"}
        assert mirrored == swap.get(cur.decision, cur.decision)
    # Conditional power grows with the observed z.
    if cur.conditional_power_h0 is not None:
        higher = run(ctx, **body, z=z + 0.5).current
        assert higher.conditional_power_h0 >= cur.conditional_power_h0
        assert higher.conditional_power_current_trend >= cur.conditional_power_current_trend


# ------------------------------------------------------------------------------------------------ errors and HTTP


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"information_fractions": [0.5, 0.4, 1.0]}, "information_fractions"),
        ({"information_fractions": [0.5, 0.9]}, "information_fractions"),
        ({}, "information_fractions"),
        ({"n_looks": 3, "look": 4, "z": 1.0}, "look"),
        ({"n_looks": 3, "z": 1.0}, "look"),
        ({"n_looks": 3, "look": 1}, "z"),
        ({"n_looks": 3, "look": 1, "z": 1.0, "control": [1, 2], "treatment": [1, 3]}, "z"),
        ({"n_looks": 3, "look": 1, "control": [1.0, 2.0]}, "treatment"),
        ({"n_looks": 3, "look": 1, "control": [1, 1, 1], "treatment": [2, 2]}, "treatment"),
        ({"n_looks": 3, "look": 1, "control": [1], "treatment": [2, 3]}, "control"),
        ({"n_looks": 3, "look": 1, "metric": "binary", "control": [0, 2], "treatment": [1, 0]}, "control"),
        (
            {"n_looks": 3, "look": 1, "control_stats": {"n": 5, "sum": 10}, "treatment_stats": {"n": 5, "sum": 9}},
            "control_stats.sum_sq",
        ),
        (
            {
                "n_looks": 3,
                "look": 1,
                "control_stats": {"n": 5, "sum": 10, "sum_sq": 1},
                "treatment_stats": {"n": 5, "sum": 9, "sum_sq": 30},
            },
            "control_stats.sum_sq",
        ),
        ({"n_looks": 3, "power": 0.04}, "power"),
        ({"method": "sprt", "p0": 0.2, "p1": 0.2, "trials": 4, "successes": 1}, "p1"),
        ({"method": "sprt", "p0": 0.2, "p1": 0.3, "outcomes": [0, 1, 3]}, "outcomes"),
        ({"method": "sprt", "p0": 0.2, "p1": 0.3, "trials": 4, "successes": 5}, "successes"),
        ({"method": "sprt", "p0": 0.2, "p1": 0.3, "trials": 4}, "successes"),
        ({"method": "sprt", "p0": 0.2, "p1": 0.3, "outcomes": [0, 1], "trials": 2, "successes": 1}, "outcomes"),
    ],
)
def test_degenerate_input_names_the_field(ctx, body, field):
    with pytest.raises(InvalidInput) as err:
        run(ctx, **body)
    assert err.value.field == field


def test_http_envelope_and_problems(client_for):
    client = client_for(advanced_early_stopping_framework)
    ok = client.post(f"/run/{NAME}", json=advanced_early_stopping_framework.example)
    assert ok.status_code == 200
    body = ok.json()
    assert body["component"] == NAME and body["local_metadata"]["tier"] == "tier2"
    assert len(body["component_result"]["group_sequential"]["looks"]) == 5
    for example in advanced_early_stopping_framework.examples:
        assert client.post(f"/run/{NAME}", json=example).status_code == 200
    empty = client.post(f"/run/{NAME}", json={})
    assert empty.status_code == 422 and "method" in empty.json()["detail"]
    bad = client.post(f"/run/{NAME}", json={"method": "group_sequential", "n_looks": 3, "look": 1, "z": 1, "x": 1})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("group_sequential.x:")
    zero = client.post(
        f"/run/{NAME}",
        json={"method": "group_sequential", "n_looks": 2, "look": 1, "control": [1, 1], "treatment": [1, 1]},
    )
    assert zero.status_code == 422
    assert zero.json()["detail"].startswith("treatment:")


def test_same_input_same_result(ctx):
    body = {"n_looks": 4, "spending": "pocock", "look": 2, "z": 1.5}
    assert run(ctx, **body) == run(ctx, **body)
