"""Known answers against scipy and statsmodels, exact enumeration, brute force; invariants; degenerate input."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.meta_analysis import effectsize_smd

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.enhanced_optimization_validator import (
    EnhancedOptimizationValidatorInput,
    enhanced_optimization_validator,
)
from tests.conftest import make_settings

NAME = "enhanced_optimization_validator"


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """A context that outlives one test function (Hypothesis re-runs a test body many times)."""
    return RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("eov")), request_id=None)


def run(ctx: RunContext, baseline: Any, optimized: Any, **options: Any) -> Any:
    body = {"baseline": _plain(baseline), "optimized": _plain(optimized), **options}
    return enhanced_optimization_validator(EnhancedOptimizationValidatorInput.model_validate(body), ctx)


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """A modest, skewed improvement with ties (rounded), where the tests are informative (p ≈ 0.01–0.1)."""
    rng = np.random.default_rng(2024)
    baseline = np.round(rng.gamma(2.0, 1.0, 45), 1)
    optimized = np.round(rng.gamma(2.0, 1.0, 52) + 0.45, 1)
    return baseline, optimized


def mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


# ------------------------------------------------------------------------------------------------ known answers


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_welch_matches_scipy(ctx, samples, direction):
    baseline, optimized = samples
    res = run(ctx, baseline, optimized, direction=direction, n_permutations=0, n_bootstrap=0)
    # "lower is better" flips which sample must be larger.
    better, worse = (optimized, baseline) if direction == "higher" else (baseline, optimized)
    one = stats.ttest_ind(better, worse, equal_var=False, alternative="greater")
    two = stats.ttest_ind(better, worse, equal_var=False, alternative="two-sided")
    assert res.welch.t == pytest.approx(one.statistic, rel=1e-10)
    assert res.welch.df == pytest.approx(one.df, rel=1e-10)
    assert res.welch.p_one_sided == pytest.approx(one.pvalue, rel=1e-9)
    assert res.welch.p_two_sided == pytest.approx(two.pvalue, rel=1e-9)
    np.testing.assert_allclose(res.welch.ci, two.confidence_interval(0.95), rtol=1e-9)
    assert res.improvement == pytest.approx(better.mean() - worse.mean())


def test_mann_whitney_matches_scipy_with_ties(ctx, samples):
    baseline, optimized = samples
    assert len(np.unique(np.r_[baseline, optimized])) < baseline.size + optimized.size  # there are ties
    res = run(ctx, baseline, optimized, n_permutations=0, n_bootstrap=0)
    one = stats.mannwhitneyu(optimized, baseline, alternative="greater", method="asymptotic")
    two = stats.mannwhitneyu(optimized, baseline, alternative="two-sided", method="asymptotic")
    assert res.mann_whitney.u == pytest.approx(one.statistic)
    assert res.mann_whitney.p_one_sided == pytest.approx(one.pvalue, rel=1e-9)
    assert res.mann_whitney.p_two_sided == pytest.approx(two.pvalue, rel=1e-9)


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_permutation_matches_scipy_within_monte_carlo_error(ctx, samples, alternative):
    baseline, optimized = samples
    m = 20_000
    res = run(ctx, baseline, optimized, n_permutations=m, n_bootstrap=0, seed=3)
    ref = stats.permutation_test(
        (optimized, baseline), mean_diff, vectorized=True, n_resamples=m, alternative=alternative, rng=9
    )
    ours = res.permutation.p_one_sided if alternative == "greater" else res.permutation.p_two_sided
    assert 0.005 < ref.pvalue < 0.3  # an informative regime, not a p pinned at 1/(m+1)
    se = np.sqrt(2 * ref.pvalue * (1 - ref.pvalue) / m) * (2 if alternative == "two-sided" else 1)
    assert ours == pytest.approx(ref.pvalue, abs=4 * se)


def test_permutation_p_matches_exact_enumeration(ctx):
    baseline = np.array([3.1, 2.4, 4.0, 2.9, 3.3])
    optimized = np.array([3.9, 4.4, 3.0, 4.8, 3.6])
    pooled = np.r_[optimized, baseline]
    observed = optimized.mean() - baseline.mean()
    diffs = []
    for idx in itertools.combinations(range(10), 5):
        mask = np.zeros(10, bool)
        mask[list(idx)] = True
        diffs.append(pooled[mask].mean() - pooled[~mask].mean())
    exact = np.mean(np.array(diffs) >= observed - 1e-12)
    m = 50_000
    res = run(ctx, baseline, optimized, n_permutations=m, n_bootstrap=0, seed=1)
    assert res.permutation.p_one_sided == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / m) + 1 / m)
    assert res.permutation.p_one_sided >= 1 / (m + 1)


@pytest.mark.parametrize("tied", [False, True])
def test_permutation_draws_uniform_subsets_of_exact_size(tied):
    """Each resample sums exactly k values, every k-subset equally likely (powers of two make sums unique)."""
    from services.tier2.enhanced_optimization_validator import _random_subset_sums

    class TiedKeys:  # every key equal: the k-th place is always tied
        def random(self, shape: tuple[int, int]) -> np.ndarray:
            return np.zeros(shape)

    pooled = 2.0 ** np.arange(6)
    rng = TiedKeys() if tied else np.random.default_rng(0)
    sums = _random_subset_sums(pooled, 2, 15_000, rng).astype(int)  # type: ignore[arg-type]
    assert all(bin(v).count("1") == 2 for v in sums)
    if not tied:
        _, counts = np.unique(sums, return_counts=True)
        assert counts.size == 15  # C(6, 2)
        assert stats.chisquare(counts).pvalue > 0.001


def test_bootstrap_intervals_match_scipy_within_monte_carlo_error(ctx, samples):
    baseline, optimized = samples
    b = 8000
    res = run(ctx, baseline, optimized, n_permutations=0, n_bootstrap=b, seed=5)
    se = res.welch.standard_error
    for method, ours in (("BCa", res.bootstrap.bca), ("percentile", res.bootstrap.percentile)):
        ref = stats.bootstrap(
            (optimized, baseline), mean_diff, vectorized=True, n_resamples=b, method=method, rng=17
        ).confidence_interval
        # Quantile Monte Carlo error at B = 8000 is about 0.04 SE per estimate.
        np.testing.assert_allclose(ours, [ref.low, ref.high], atol=0.2 * se)


def test_bca_acceleration_is_the_jackknife_value(ctx):
    rng = np.random.default_rng(0)
    baseline, optimized = rng.exponential(1.0, 25), rng.exponential(1.6, 30)
    res = run(ctx, baseline, optimized, n_permutations=0, n_bootstrap=1000)
    # Brute-force leave-one-out jackknife over each sample, combined as in Efron & Tibshirani / scipy.
    nums, dens = [], []
    for j, sample in enumerate((optimized, baseline)):
        loo = []
        for i in range(sample.size):
            reduced = np.delete(sample, i)
            loo.append(mean_diff(reduced, baseline) if j == 0 else mean_diff(optimized, reduced))
        loo = np.array(loo)
        u = (sample.size - 1) * (loo.mean() - loo)
        nums.append((u**3).sum() / sample.size**3)
        dens.append((u**2).sum() / sample.size**2)
    assert res.bootstrap.acceleration == pytest.approx(sum(nums) / (6 * sum(dens) ** 1.5), rel=1e-9)


def test_effect_sizes_match_statsmodels_and_brute_force(ctx, samples):
    baseline, optimized = samples
    res = run(ctx, baseline, optimized, n_permutations=0, n_bootstrap=0)
    n = baseline.size + optimized.size
    g_approx, _ = effectsize_smd(
        optimized.mean(), optimized.std(ddof=1), optimized.size, baseline.mean(), baseline.std(ddof=1), baseline.size
    )
    assert res.effect_sizes.cohens_d == pytest.approx(g_approx / (1 - 3 / (4 * n - 9)), rel=1e-10)
    assert res.effect_sizes.hedges_g == pytest.approx(g_approx, rel=1e-4)  # exact J vs Hedges' approximation
    pairwise = np.sign(optimized[:, None] - baseline[None, :]).mean()
    assert res.effect_sizes.cliffs_delta == pytest.approx(pairwise, rel=1e-12)


def test_bayesian_comparison(ctx, samples):
    baseline, optimized = samples
    draws = 200_000
    res = run(
        ctx, baseline, optimized, n_permutations=0, n_bootstrap=0, n_posterior_draws=draws, min_practical_effect=0.3
    )
    bayes = res.bayesian
    # Welch-type approximation: P(Δ > 0 | data) = 1 − (Welch one-sided p).
    welch = stats.ttest_ind(optimized, baseline, equal_var=False, alternative="greater")
    assert bayes.approx_p_improvement == pytest.approx(1 - welch.pvalue, rel=1e-9)
    two_sided = stats.ttest_ind(optimized, baseline, equal_var=False)
    np.testing.assert_allclose(bayes.approx_credible_interval, two_sided.confidence_interval(0.95), rtol=1e-9)
    # Jeffreys posterior of each mean is x̄ + s/√n · t_{n−1}: sample it independently with scipy.
    rng = np.random.default_rng(99)
    mu = [
        x.mean() + x.std(ddof=1) / np.sqrt(x.size) * stats.t.rvs(x.size - 1, size=draws, random_state=rng)
        for x in (optimized, baseline)
    ]
    post = mu[0] - mu[1]
    for ours, ref in ((bayes.p_improvement, np.mean(post > 0)), (bayes.p_practical, np.mean(post > 0.3))):
        assert ours == pytest.approx(ref, abs=5 * np.sqrt(2 * ref * (1 - ref) / draws) + 1e-5)
    np.testing.assert_allclose(bayes.credible_interval, np.quantile(post, [0.025, 0.975]), atol=0.02)
    assert bayes.posterior_mean == pytest.approx(res.improvement, abs=0.01)


# ---------------------------------------------------------------------------------------------------- decisions


def test_clear_improvement_is_accepted(ctx):
    rng = np.random.default_rng(1)
    res = run(ctx, rng.normal(10, 1, 80), rng.normal(11, 1, 80), min_practical_effect=0.5)
    assert res.decision == "accept"
    assert all(res.checks.model_dump().values())
    assert res.reasons[0].startswith("accept")


def test_lower_is_better(ctx):
    rng = np.random.default_rng(2)
    latency_base, latency_opt = rng.normal(200, 20, 60), rng.normal(180, 20, 60)
    assert run(ctx, latency_base, latency_opt, direction="lower").decision == "accept"
    higher = run(ctx, latency_base, latency_opt, direction="higher")
    assert higher.decision == "reject" and higher.improvement < 0
    assert not higher.checks.statistically_significant


def test_no_difference_is_rejected(ctx):
    rng = np.random.default_rng(4)
    res = run(ctx, rng.normal(5, 1, 50), rng.normal(5, 1, 50))
    assert res.decision == "reject"
    assert any("no significant improvement" in r for r in res.reasons)


def test_significant_but_below_practical_effect_is_rejected(ctx):
    rng = np.random.default_rng(6)
    res = run(ctx, rng.normal(100, 1, 2000), rng.normal(100.2, 1, 2000), min_practical_effect=1.0)
    assert res.checks.statistically_significant and not res.checks.practically_significant
    assert res.decision == "reject"
    assert any("falls short of the minimum practical effect" in r for r in res.reasons)


def test_disagreeing_tests_block_acceptance(ctx):
    # A few large wins drive the mean (Welch significant) while most values got slightly worse (ranks disagree).
    rng = np.random.default_rng(0)
    baseline = rng.normal(0, 1, 100)
    optimized = baseline - 0.15
    optimized[:10] += 8
    res = run(ctx, baseline, optimized)
    assert res.checks.statistically_significant
    assert res.mann_whitney.p_one_sided > 0.05
    assert not res.checks.tests_agree
    assert res.decision == "reject"
    assert any("disagree" in r and "Mann–Whitney" in r for r in res.reasons)


def test_one_constant_arm_gives_a_defined_result(ctx):
    res = run(ctx, [1.0] * 10, [1.1, 1.3, 1.2, 1.4, 1.25, 1.15, 1.35, 1.2, 1.3, 1.1])
    assert res.baseline.skewness is None and res.baseline.shapiro_p is None
    assert res.welch.df == pytest.approx(9.0)
    assert res.decision == "accept"


# --------------------------------------------------------------------------------------------------- invariants

values = st.lists(st.integers(-50, 50).map(lambda v: v / 4), min_size=2, max_size=25)


@hypothesis_settings(max_examples=40, deadline=None)
@given(baseline=values, optimized=values, shift=st.integers(-1000, 1000), data=st.data())
def test_invariants(module_ctx, baseline, optimized, shift, data):
    options = {"n_permutations": 200, "n_bootstrap": 200, "n_posterior_draws": 1000, "seed": 0}
    if np.ptp(baseline) == 0 and np.ptp(optimized) == 0:
        with pytest.raises(InvalidInput) as err:
            run(module_ctx, baseline, optimized, **options)
        assert err.value.field == "optimized"
        return
    res = run(module_ctx, baseline, optimized, **options)
    for p in (
        res.welch.p_one_sided,
        res.welch.p_two_sided,
        res.mann_whitney.p_one_sided,
        res.mann_whitney.p_two_sided,
        res.permutation.p_one_sided,
        res.permutation.p_two_sided,
        res.bayesian.p_improvement,
        res.bayesian.p_practical,
    ):
        assert 0 <= p <= 1
    assert -1 <= res.effect_sizes.cliffs_delta <= 1
    assert res.bootstrap.percentile[0] <= res.bootstrap.percentile[1]

    def deterministic(r: Any) -> list[float]:
        return [r.improvement, r.welch.t, r.welch.p_two_sided, r.mann_whitney.p_one_sided, r.effect_sizes.cliffs_delta]

    # Swapping the samples and flipping the direction is the same question.
    swapped = run(module_ctx, optimized, baseline, direction="lower", **options)
    np.testing.assert_allclose(deterministic(swapped), deterministic(res), rtol=1e-9, atol=1e-12)
    # Shifting both samples changes nothing; neither does the order of the rows.
    moved = run(module_ctx, [v + shift for v in baseline], [v + shift for v in optimized], **options)
    np.testing.assert_allclose(deterministic(moved), deterministic(res), rtol=1e-6, atol=1e-9)
    order = data.draw(st.permutations(range(len(optimized))))
    shuffled = run(module_ctx, baseline, [optimized[i] for i in order], **options)
    np.testing.assert_allclose(deterministic(shuffled), deterministic(res), rtol=1e-9, atol=1e-12)


def test_same_seed_same_result_and_file_inputs_identical(ctx, samples):
    baseline, optimized = samples
    inline = run(ctx, baseline, optimized, seed=12)
    assert run(ctx, baseline, optimized, seed=12) == inline
    assert run(ctx, baseline, optimized, seed=13).permutation != inline.permutation
    np.save(ctx.data_dir / "baseline.npy", baseline)
    np.savetxt(ctx.data_dir / "optimized.csv", optimized, fmt="%.17g", header="score", comments="")
    from_files = run(ctx, {"path": "baseline.npy"}, {"path": "optimized.csv", "column": "score"}, seed=12)
    assert from_files == inline


# ------------------------------------------------------------------------------------------ errors and HTTP


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"baseline": [1.0], "optimized": [1.0, 2.0]}, "baseline"),
        ({"baseline": [1.0, 2.0], "optimized": [3.0]}, "optimized"),
        ({"baseline": [], "optimized": [1.0, 2.0]}, "baseline"),
        ({"baseline": [2.0, 2.0, 2.0], "optimized": [3.0, 3.0]}, "optimized"),
        ({"baseline": [1.0, 2.0], "optimized": [3.0, 4.0], "n_permutations": 50}, "n_permutations"),
        ({"baseline": [1.0, 2.0], "optimized": [3.0, 4.0], "n_bootstrap": 10}, "n_bootstrap"),
    ],
)
def test_degenerate_input_names_the_field(ctx, body, field):
    with pytest.raises(InvalidInput) as err:
        enhanced_optimization_validator(EnhancedOptimizationValidatorInput.model_validate(body), ctx)
    assert err.value.field == field


def test_resampling_work_is_bounded(ctx, monkeypatch):
    import services.tier2.enhanced_optimization_validator as module

    monkeypatch.setattr(module, "MAX_RESAMPLING_WORK", 30_000)
    baseline, optimized = list(range(60)), list(range(1, 61))
    with pytest.raises(InvalidInput) as err:
        run(ctx, baseline, optimized, n_permutations=0, n_bootstrap=500)
    assert err.value.field == "n_bootstrap" and "at most 250" in str(err.value)
    # Defaults shrink to fit the limit (and say so) instead of failing.
    adapted = run(ctx, baseline, optimized)
    assert adapted.permutation.n_permutations == 250 and adapted.bootstrap.n_bootstrap == 250
    assert len(adapted.notes) == 2
    monkeypatch.setattr(module, "MAX_RESAMPLING_WORK", 6_000)
    skipped = run(ctx, baseline, optimized)
    assert skipped.permutation is None and skipped.bootstrap is None
    assert all("skipped" in note for note in skipped.notes)


def test_http_envelope_and_problems(client_for):
    client = client_for(enhanced_optimization_validator)
    ok = client.post(f"/run/{NAME}", json=enhanced_optimization_validator.example)
    assert ok.status_code == 200
    body = ok.json()
    assert body["component"] == NAME and body["component_result"]["decision"] == "accept"
    assert client.post(f"/run/{NAME}", json={}).status_code == 422
    nan = client.post(f"/run/{NAME}", content='{"baseline": [1, NaN], "optimized": [1, 2]}')
    assert nan.status_code == 422
    flat = client.post(f"/run/{NAME}", json={"baseline": [1, 1], "optimized": [1, 1]})
    assert flat.status_code == 422 and flat.json()["detail"].startswith("optimized:")
    outside = client.post(f"/run/{NAME}", json={"baseline": {"path": "../x.npy"}, "optimized": [1, 2]})
    assert outside.status_code == 400 and "baseline.path" in outside.json()["detail"]


def test_subnormal_alpha_is_refused_and_the_smallest_alpha_gives_finite_intervals(client_for, ctx, samples):
    # Regression (slow schemathesis): alpha = 5e-324 passed gt=0, the t quantile was inf and the answer a 500.
    client = client_for(enhanced_optimization_validator)
    r = client.post(f"/run/{NAME}", json={**enhanced_optimization_validator.example, "alpha": 5e-324})
    assert r.status_code == 422 and r.json()["detail"].startswith("alpha:"), r.text
    baseline, optimized = samples
    res = run(ctx, baseline, optimized, alpha=1e-9, n_permutations=0, n_bootstrap=0, n_posterior_draws=1000)
    t = stats.ttest_ind(optimized, baseline, equal_var=False)
    np.testing.assert_allclose(res.welch.ci, t.confidence_interval(confidence_level=1 - 1e-9), rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Regressions (slow schemathesis): variances overflowed in Welch's df (RuntimeWarning → 500).
        ({"baseline": [0.0, 0.0], "optimized": [0.0, 2.6815615859885194e154]}, "optimized"),
        ({"baseline": [0.0, 0.0], "optimized": [0.0, 2.315841784746324e77]}, "optimized"),
        ({"baseline": [-1e51, 0.0], "optimized": [0.0, 1.0]}, "baseline"),
        # ... and spreads that underflow them.
        ({"baseline": [0.0, 0.0], "optimized": [0.0, 1e-150]}, "optimized"),
    ],
)
def test_values_out_of_numeric_range_are_refused_over_http(client_for, body, field):
    r = client_for(enhanced_optimization_validator).post(f"/run/{NAME}", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}:"), r.text


def test_extreme_accepted_scales_give_finite_results(ctx):
    options = {"n_permutations": 100, "n_bootstrap": 100, "n_posterior_draws": 1000}
    wide = run(ctx, [-1e50, 0.0, 1e50], [0.0, 1e50, 1e50], **options)
    assert wide.welch.t == pytest.approx(stats.ttest_ind([0.0, 1e50, 1e50], [-1e50, 0.0, 1e50], equal_var=False)[0])
    # A subnormal baseline mean has no meaningful relative change (the ratio overflowed into a 500).
    tiny = run(ctx, [5e-324, 5e-324], [0.0, 1.0], **options)
    assert tiny.relative_improvement is None and tiny.improvement == pytest.approx(0.5)
