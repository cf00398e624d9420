"""Known-answer tests of services.stats.abtest against statsmodels, scipy, numpy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from services.stats import abtest


def miller_prob_greater(a_t: int, b_t: int, a_c: int, b_c: int) -> float:
    """Evan Miller's closed form of P(p_t > p_c) for Beta posteriors with integer a_t."""
    i = np.arange(a_t)
    log_terms = (
        special.betaln(a_c + i, b_c + b_t) - np.log(b_t + i) - special.betaln(1 + i, b_t) - special.betaln(a_c, b_c)
    )
    return float(np.exp(log_terms).sum())


# --- proportions -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (7, 10), (10, 10), (123, 1000), (5_001, 1_000_000)])
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_wilson_matches_statsmodels(k: int, n: int, alpha: float) -> None:
    lo, hi = abtest.wilson_interval(k, n, alpha)
    ref = proportion_confint(k, n, alpha=alpha, method="wilson")
    assert lo == pytest.approx(ref[0], abs=1e-12)
    assert hi == pytest.approx(ref[1], abs=1e-12)


@pytest.mark.parametrize(("kt", "nt", "kc", "nc"), [(30, 200, 12, 100), (0, 50, 3, 60), (45, 45, 40, 50), (1, 3, 2, 4)])
def test_newcombe_matches_statsmodels(kt: int, nt: int, kc: int, nc: int) -> None:
    diff, lo, hi = abtest.newcombe_interval(kt, nt, kc, nc, 0.05)
    ref_lo, ref_hi = confint_proportions_2indep(kt, nt, kc, nc, method="newcomb", compare="diff", alpha=0.05)
    assert diff == pytest.approx(kt / nt - kc / nc)
    assert lo == pytest.approx(ref_lo, abs=1e-12)
    assert hi == pytest.approx(ref_hi, abs=1e-12)


@pytest.mark.parametrize(("kt", "nt", "kc", "nc"), [(30, 200, 12, 100), (520, 10_000, 480, 10_000), (0, 50, 3, 60)])
def test_two_proportion_ztest_matches_statsmodels(kt: int, nt: int, kc: int, nc: int) -> None:
    res = abtest.two_proportion_ztest(kt, nt, kc, nc)
    z, p = proportions_ztest([kt, kc], [nt, nc])
    assert res.z == pytest.approx(z, rel=1e-12)
    assert res.p_value == pytest.approx(p, rel=1e-10)


def test_two_proportion_ztest_without_variation_is_defined() -> None:
    res = abtest.two_proportion_ztest(0, 100, 0, 80)
    assert res.z is None
    assert res.p_value == 1.0


# --- means -----------------------------------------------------------------------------------------------------------


def test_welch_matches_scipy_on_raw_data() -> None:
    rng = np.random.default_rng(3)
    t, c = rng.normal(1.2, 2.0, 40), rng.normal(1.0, 0.7, 25)
    res = abtest.welch_test(t.size, t.mean(), t.var(ddof=1), c.size, c.mean(), c.var(ddof=1), alpha=0.1)
    ref = stats.ttest_ind(t, c, equal_var=False)
    ci = ref.confidence_interval(0.9)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.df == pytest.approx(ref.df, rel=1e-12)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_welch_matches_ttest_ind_from_stats() -> None:
    res = abtest.welch_test(1000, 10.3, 4.0**2, 900, 10.0, 3.5**2)
    ref = stats.ttest_ind_from_stats(10.3, 4.0, 1000, 10.0, 3.5, 900, equal_var=False)
    assert res.t == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_welch_rejects_degenerate_data() -> None:
    with pytest.raises(abtest.DegenerateData):
        abtest.welch_test(5, 1.0, 0.0, 5, 2.0, 0.0)
    with pytest.raises(abtest.DegenerateData):
        abtest.welch_test(1, 1.0, 1.0, 5, 2.0, 1.0)


def test_welch_power_matches_statsmodels_for_equal_arms() -> None:
    # Equal n and equal variances: Welch's df is exactly 2n - 2, the pooled t-test's.
    n, sd, mde = 60, 2.0, 0.8
    se = sd * math.sqrt(2 / n)
    power = abtest.welch_power(se, 2 * n - 2, mde, alpha=0.05)
    assert power == pytest.approx(TTestIndPower().power(effect_size=mde / sd, nobs1=n, alpha=0.05, ratio=1), rel=1e-8)


def test_cohens_d_matches_definition() -> None:
    rng = np.random.default_rng(1)
    t, c = rng.normal(1, 1, 30), rng.normal(0, 2, 50)
    pooled = np.sqrt(((t.size - 1) * t.var(ddof=1) + (c.size - 1) * c.var(ddof=1)) / (t.size + c.size - 2))
    d = abtest.cohens_d(t.size, t.mean(), t.var(ddof=1), c.size, c.mean(), c.var(ddof=1))
    assert d == pytest.approx((t.mean() - c.mean()) / pooled, rel=1e-12)


# --- moments ---------------------------------------------------------------------------------------------------------


def test_chan_merge_is_stable_where_naive_sums_fail() -> None:
    rng = np.random.default_rng(5)
    x = 1e9 + rng.normal(0, 1e-3, 20_000)  # Σx² - (Σx)²/n would lose every digit here
    acc = abtest.Moments(0, 0.0, 0.0)
    for chunk in np.array_split(x, 37):
        acc = acc.merge(abtest.Moments.from_values(chunk))
    assert acc.n == x.size
    assert acc.mean == pytest.approx(x.mean(), rel=1e-15)
    assert acc.variance == pytest.approx(np.var(x, ddof=1), rel=1e-4)
    naive = abtest.Moments.from_sums(x.size, x.sum(), np.dot(x, x))
    assert naive.variance != pytest.approx(np.var(x, ddof=1), rel=0.5)


def test_group_moments_match_numpy() -> None:
    rng = np.random.default_rng(8)
    codes, values = rng.integers(0, 4, 5000), rng.exponential(3.0, 5000)
    n, mean, m2 = abtest.group_moments(codes, values, 5)
    for g in range(4):
        sel = values[codes == g]
        assert n[g] == sel.size
        assert mean[g] == pytest.approx(sel.mean(), rel=1e-12)
        assert m2[g] / (n[g] - 1) == pytest.approx(sel.var(ddof=1), rel=1e-10)
    assert n[4] == 0


def test_moments_from_sums_equal_moments_from_values() -> None:
    x = np.random.default_rng(2).normal(5, 2, 1000)
    a, b = abtest.Moments.from_values(x), abtest.Moments.from_sums(x.size, x.sum(), (x * x).sum())
    assert a.mean == pytest.approx(b.mean, rel=1e-12)
    assert a.variance == pytest.approx(b.variance, rel=1e-9)


# --- Bayesian --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a_t", "b_t", "a_c", "b_c"), [(31, 171, 13, 89), (2, 9, 3, 8), (400, 9600, 350, 9650)])
def test_beta_prob_greater_matches_closed_form(a_t: int, b_t: int, a_c: int, b_c: int) -> None:
    assert abtest.beta_prob_greater(a_t, b_t, a_c, b_c) == pytest.approx(
        miller_prob_greater(a_t, b_t, a_c, b_c), abs=1e-9
    )


def test_beta_posteriors_against_independent_monte_carlo() -> None:
    # Non-integer parameters (Jeffreys prior) and very unequal widths; reference draws from scipy's own generator.
    a_t, b_t, a_c, b_c = 0.5 + 40, 0.5 + 960, 0.5 + 300, 0.5 + 9700
    rs = np.random.RandomState(12345)
    draws = 2_000_000
    t = stats.beta.rvs(a_t, b_t, size=draws, random_state=rs)
    c = stats.beta.rvs(a_c, b_c, size=draws, random_state=rs)
    p_ref = np.mean(t > c)
    loss_t_ref, loss_c_ref = np.mean(np.maximum(c - t, 0)), np.mean(np.maximum(t - c, 0))
    p = abtest.beta_prob_greater(a_t, b_t, a_c, b_c)
    loss_t, loss_c = abtest.beta_expected_loss(a_t, b_t, a_c, b_c)
    assert p == pytest.approx(p_ref, abs=5 * math.sqrt(p_ref * (1 - p_ref) / draws))
    assert loss_t == pytest.approx(loss_t_ref, rel=0.01)
    assert loss_c == pytest.approx(loss_c_ref, rel=0.01)


def test_monte_carlo_beta_is_within_its_stated_error() -> None:
    exact_p = miller_prob_greater(31, 171, 13, 89)
    exact_lt, exact_lc = abtest.beta_expected_loss(31, 171, 13, 89)
    mc = abtest.monte_carlo_beta(31, 171, 13, 89, 400_000, np.random.default_rng(0), chunk=150_000)
    assert mc.prob_se is not None and mc.loss_treatment_se is not None and mc.loss_control_se is not None
    assert abs(mc.prob_treatment_better - exact_p) < 4 * mc.prob_se
    assert abs(mc.expected_loss_treatment - exact_lt) < 4 * mc.loss_treatment_se
    assert abs(mc.expected_loss_control - exact_lc) < 4 * mc.loss_control_se
    again = abtest.monte_carlo_beta(31, 171, 13, 89, 400_000, np.random.default_rng(0), chunk=150_000)
    assert again == mc


def test_normal_closed_forms_against_monte_carlo() -> None:
    mean, sd = 0.3, 0.5
    d = np.random.default_rng(9).normal(mean, sd, 2_000_000)
    assert abtest.normal_prob_greater(mean, sd) == pytest.approx(stats.norm.sf(0, mean, sd), rel=1e-12)
    loss_t, loss_c = abtest.normal_expected_loss(mean, sd)
    assert loss_t == pytest.approx(np.mean(np.maximum(-d, 0)), rel=0.01)
    assert loss_c == pytest.approx(np.mean(np.maximum(d, 0)), rel=0.01)
    assert loss_c - loss_t == pytest.approx(mean, rel=1e-12)  # E[max(D,0)] - E[max(-D,0)] = E[D]


# --- CUPED -----------------------------------------------------------------------------------------------------------


def test_cuped_theta_is_the_pooled_slope_and_adjusts_each_arm() -> None:
    rng = np.random.default_rng(21)
    x_t, x_c = rng.normal(10, 2, 800), rng.normal(10, 2, 700)
    y_t = 3 + 0.8 * x_t + rng.normal(0, 1, 800) + 0.2
    y_c = 3 + 0.8 * x_c + rng.normal(0, 1, 700)
    res = abtest.cuped(abtest.CoMoments.from_values(y_t, x_t), abtest.CoMoments.from_values(y_c, x_c))
    y, x = np.concatenate([y_t, y_c]), np.concatenate([x_t, x_c])
    cov = np.cov(y, x)
    assert res.theta == pytest.approx(cov[0, 1] / cov[1, 1], rel=1e-10)
    assert res.theta == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    for arm, ya, xa in ((res.treatment, y_t, x_t), (res.control, y_c, x_c)):
        adjusted = ya - res.theta * (xa - x.mean())
        assert arm.mean == pytest.approx(adjusted.mean(), rel=1e-12)
        assert arm.variance == pytest.approx(adjusted.var(ddof=1), rel=1e-9)
    # Variance kept ≈ 1 - ρ² with ρ the correlation of y and x.
    rho2 = np.corrcoef(y_c, x_c)[0, 1] ** 2
    assert res.control.variance / y_c.var(ddof=1) == pytest.approx(1 - rho2, abs=0.01)


def test_cuped_from_sums_equals_from_values() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    a = abtest.CoMoments.from_values(y, x)
    b = abtest.CoMoments.from_sums(300, y.sum(), (y * y).sum(), x.sum(), (x * x).sum(), (x * y).sum())
    for field in ("mean_y", "m2_y", "mean_x", "m2_x", "c_xy"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-9, abs=1e-12)


def test_cuped_rejects_a_constant_covariate() -> None:
    ones = np.ones(10)
    with pytest.raises(abtest.DegenerateData):
        abtest.cuped(abtest.CoMoments.from_values(np.arange(10.0), ones), abtest.CoMoments.from_values(ones, ones))


# --- mSPRT -----------------------------------------------------------------------------------------------------------


def test_msprt_matches_johari_two_sample_formula() -> None:
    # Johari et al. (2017): Λ_n = sqrt(2σ²/(2σ² + nτ²)) · exp(n²τ²(Ȳ_n - X̄_n - θ0)² / (4σ²(2σ² + nτ²))).
    sigma2, tau2, n, diff, theta0 = 4.0, 0.09, 500, 0.31, 0.05
    hand = math.sqrt(2 * sigma2 / (2 * sigma2 + n * tau2)) * math.exp(
        n**2 * tau2 * (diff - theta0) ** 2 / (4 * sigma2 * (2 * sigma2 + n * tau2))
    )
    log_lr = abtest.msprt_log_lr(diff, 2 * sigma2 / n, tau2, theta0)
    assert float(log_lr) == pytest.approx(math.log(hand), rel=1e-12)
    p = abtest.msprt_p_values([diff], [2 * sigma2 / n], tau2, theta0)
    assert p[0] == pytest.approx(min(1.0, 1.0 / hand), rel=1e-12)


def test_msprt_p_values_are_monotone_and_bounded_over_looks() -> None:
    rng = np.random.default_rng(11)
    t, c = rng.normal(0.1, 1, 5000), rng.normal(0, 1, 5000)
    looks = np.arange(50, 5001, 50)
    diffs = np.array([t[:k].mean() - c[:k].mean() for k in looks])
    variances = np.array([t[:k].var(ddof=1) / k + c[:k].var(ddof=1) / k for k in looks])
    p = abtest.msprt_p_values(diffs, variances, tau2=0.01)
    assert np.all(np.diff(p) <= 0)
    assert np.all((p >= 0) & (p <= 1))
    assert p[-1] < 0.05  # a real effect of 0.1 sd is found by 5,000 per arm
    resumed = abtest.msprt_p_values(diffs[60:], variances[60:], tau2=0.01, previous=float(p[59]))
    assert np.allclose(resumed, p[60:])


# --- SRM and bootstrap -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "shares"), [([5000, 5210], [0.5, 0.5]), ([3300, 6700], [1, 2]), ([10, 10], [1, 1])]
)
def test_srm_matches_scipy_chisquare(observed: list[int], shares: list[float]) -> None:
    stat, p = abtest.srm_test(observed, shares)
    exp = np.sum(observed) * np.asarray(shares) / np.sum(shares)
    ref = stats.chisquare(observed, exp)
    assert stat == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)


def test_bootstrap_block_draws_are_exactly_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of 2 over 5 values (two full blocks and a tail of 1); values 10^i make each resample's sum encode
    # how often each index was drawn, which must be Multinomial(5, 1/5): mean 1, variance 0.8, covariance -0.2.
    monkeypatch.setattr(abtest, "_BLOCK", 2)
    x = 10.0 ** np.arange(5)
    means = abtest.bootstrap_means(x, 15_000, np.random.default_rng(6), workers=1)
    sums = np.rint(means * 5).astype(np.int64)
    counts = np.stack([(sums // 10**i) % 10 for i in range(5)], axis=1)
    assert np.all(counts.sum(axis=1) == 5)
    cov = np.cov(counts.T)
    assert np.allclose(counts.mean(axis=0), 1.0, atol=0.03)
    assert np.allclose(np.diag(cov), 0.8, atol=0.04)
    assert np.allclose(cov[~np.eye(5, dtype=bool)], -0.2, atol=0.04)


def test_bootstrap_matches_ordinary_bootstrap_and_ignores_worker_count() -> None:
    rng = np.random.default_rng(13)
    x = rng.lognormal(0, 1, 40_000)  # two full blocks and a tail
    ours = abtest.bootstrap_means(x, 400, np.random.default_rng(1), workers=1)
    assert np.array_equal(ours, abtest.bootstrap_means(x, 400, np.random.default_rng(1), workers=3))
    plain = np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(400)])
    assert stats.ks_2samp(ours, plain).pvalue > 0.01
    assert ours.std(ddof=1) == pytest.approx(x.std() / math.sqrt(x.size), rel=0.15)


def test_bootstrap_binary_means_are_binomial() -> None:
    means = abtest.bootstrap_binary_means(30, 200, 50_000, np.random.default_rng(2))
    assert means.mean() == pytest.approx(0.15, abs=0.001)
    assert means.var() == pytest.approx(0.15 * 0.85 / 200, rel=0.03)


# --- invariants ------------------------------------------------------------------------------------------------------

counts = st.integers(min_value=1, max_value=5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@settings(max_examples=50, deadline=None)
@given(counts, counts)
def test_proportion_tests_are_symmetric_and_bounded(t: tuple[int, int], c: tuple[int, int]) -> None:
    z1, z2 = abtest.two_proportion_ztest(*t, *c), abtest.two_proportion_ztest(*c, *t)
    assert 0.0 <= z1.p_value <= 1.0
    assert z1.p_value == pytest.approx(z2.p_value, rel=1e-12)
    d1, lo1, hi1 = abtest.newcombe_interval(*t, *c)
    _, lo2, hi2 = abtest.newcombe_interval(*c, *t)
    assert lo1 <= d1 <= hi1
    assert (lo1, hi1) == pytest.approx((-hi2, -lo2), abs=1e-12)
    p1 = abtest.beta_prob_greater(1 + t[0], 1 + t[1] - t[0], 1 + c[0], 1 + c[1] - c[0])
    p2 = abtest.beta_prob_greater(1 + c[0], 1 + c[1] - c[0], 1 + t[0], 1 + t[1] - t[0])
    assert 0.0 <= p1 <= 1.0
    assert p1 + p2 == pytest.approx(1.0, abs=1e-8)


moments = st.tuples(st.integers(2, 10_000), st.floats(-1e3, 1e3), st.floats(1e-3, 1e3))  # (n, mean, variance)


@settings(max_examples=50, deadline=None)
@given(moments, moments)
def test_welch_is_symmetric_and_bounded(t: tuple[int, float, float], c: tuple[int, float, float]) -> None:
    a, b = abtest.welch_test(*t, *c), abtest.welch_test(*c, *t)
    assert 0.0 <= a.p_value <= 1.0
    assert a.p_value == pytest.approx(b.p_value, rel=1e-9, abs=1e-300)
    assert a.t == pytest.approx(-b.t, rel=1e-12)
    assert (a.ci_low, a.ci_high) == pytest.approx((-b.ci_high, -b.ci_low), rel=1e-9, abs=1e-9)
