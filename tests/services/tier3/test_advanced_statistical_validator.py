"""Known-answer tests of advanced_statistical_validator: R's published sleep-data output, scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import stats
from statsmodels.stats.effect_size import _noncentrality_t
from statsmodels.stats.meta_analysis import effectsize_smd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.nonparametric import rank_compare_2indep
from statsmodels.stats.power import TTestIndPower

from mlmesh.errors import InvalidInput
from services.framework import RunContext
from services.tier3.advanced_statistical_validator import (
    AdvancedStatisticalValidatorInput,
    AdvancedStatisticalValidatorOutput,
    adjust_p_values,
    advanced_statistical_validator,
)
from tests.conftest import make_settings

# Student's sleep data (R `datasets::sleep`): extra hours of sleep under drug 1 (control) and drug 2 (treatment).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
ALTERNATIVES = ["two-sided", "greater", "less"]
SM_ALTERNATIVE = {"two-sided": "two-sided", "greater": "larger", "less": "smaller"}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    settings = make_settings(tmp_path_factory.mktemp("asv"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component="advanced_statistical_validator", settings=settings, request_id=None)


def run(ctx: RunContext, **fields: object) -> AdvancedStatisticalValidatorOutput:
    fields.setdefault("n_bootstrap", 0)
    return advanced_statistical_validator(AdvancedStatisticalValidatorInput(**fields), ctx)


def samples(seed: int, n1: int, n2: int, *, shift: float = 0.5, scale2: float = 2.0, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    c, t = rng.normal(0.0, 1.0, n1), rng.normal(shift, scale2, n2)
    if decimals is not None:
        c, t = np.round(c, decimals), np.round(t, decimals)
    return c, t


# ------------------------------------------------------------------------------------------- published values


def test_sleep_data_matches_published_r_output(ctx: RunContext) -> None:
    # R: t.test(extra ~ group, data = sleep) reports group 1 − group 2, so signs flip here (treatment − control):
    # t = -1.8608, df = 17.776, p-value = 0.07939, 95 % CI -3.3654832 0.2054832; var.equal = TRUE: df = 18,
    # p-value = 0.07919, CI -3.363874 0.203874; wilcox.test: W = 25.5, p-value = 0.06933 (normal approximation).
    out = run(ctx, control=SLEEP_1, treatment=SLEEP_2)
    assert out.mean_difference == pytest.approx(1.58)
    assert out.welch.statistic == pytest.approx(1.8608, abs=5e-5)
    assert out.welch.df == pytest.approx(17.776, abs=5e-4)
    assert out.welch.p_value == pytest.approx(0.07939, abs=5e-6)
    assert (out.welch.ci_low, out.welch.ci_high) == pytest.approx((-0.2054832, 3.3654832), abs=1e-7)
    assert out.student.df == 18
    assert out.student.p_value == pytest.approx(0.07919, abs=5e-6)
    assert (out.student.ci_low, out.student.ci_high) == pytest.approx((-0.203874, 3.363874), abs=1e-6)
    assert out.mann_whitney.u_control == 25.5
    assert out.mann_whitney.p_value == pytest.approx(0.06933, abs=5e-6)
    assert out.mann_whitney.method == "asymptotic"
    assert out.mann_whitney.tie_correction and out.mann_whitney.continuity_correction
    assert out.verdict.recommended_test == "welch_t"
    assert not out.verdict.significant


def test_exact_mann_whitney_distribution_is_the_gaussian_binomial(ctx: RunContext) -> None:
    # n1 = n2 = 3 with no ties: U takes 0..9 with counts 1,1,2,3,3,3,3,2,1,1 out of C(6,3) = 20 arrangements,
    # so P(U >= 8) = 2/20 and the two-sided p of complete separation (U = 9) is 2 · 1/20.
    out = run(ctx, control=[1.0, 2.0, 4.0], treatment=[3.0, 5.0, 6.0], alternative="greater")
    assert out.mann_whitney.u_treatment == 8
    assert out.mann_whitney.method == "exact"
    assert out.mann_whitney.p_value == pytest.approx(2 / 20, abs=1e-15)
    out = run(ctx, control=[1.0, 2.0, 3.0], treatment=[4.0, 5.0, 6.0])
    assert out.mann_whitney.p_value == pytest.approx(2 / 20, abs=1e-15)


# ------------------------------------------------------------------------------------------- scipy references


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize(("seed", "n1", "n2"), [(1, 12, 30), (2, 40, 9), (3, 200, 180)])
def test_t_tests_match_scipy(ctx: RunContext, alternative: str, seed: int, n1: int, n2: int) -> None:
    c, t = samples(seed, n1, n2)
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), alternative=alternative, confidence_level=0.9)
    for block, equal_var in ((out.welch, False), (out.student, True)):
        ref = stats.ttest_ind(t, c, equal_var=equal_var, alternative=alternative)
        assert block.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert block.df == pytest.approx(ref.df, rel=1e-12)
        assert block.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        ci = stats.ttest_ind(t, c, equal_var=equal_var).confidence_interval(0.9)
        assert (block.ci_low, block.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("use_continuity", [True, False])
def test_mann_whitney_asymptotic_with_ties_matches_scipy(
    ctx: RunContext, alternative: str, use_continuity: bool
) -> None:
    c, t = samples(4, 25, 31, decimals=0)  # rounding makes many ties
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), alternative=alternative, use_continuity=use_continuity)
    ref = stats.mannwhitneyu(t, c, alternative=alternative, use_continuity=use_continuity, method="asymptotic")
    assert out.mann_whitney.method == "asymptotic" and out.mann_whitney.tied_groups > 0
    assert out.mann_whitney.u_treatment == ref.statistic
    assert out.mann_whitney.p_value == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize(("n1", "n2"), [(2, 30), (7, 5), (20, 25), (60, 60)])
def test_mann_whitney_exact_matches_scipy(ctx: RunContext, alternative: str, n1: int, n2: int) -> None:
    c, t = samples(n1 * 100 + n2, n1, n2, scale2=1.0)
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), alternative=alternative, mann_whitney_method="exact")
    ref = stats.mannwhitneyu(t, c, alternative=alternative, method="exact")
    assert out.mann_whitney.method == "exact" and out.mann_whitney.z is None
    assert out.mann_whitney.u_treatment == ref.statistic
    assert out.mann_whitney.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


def test_mann_whitney_auto_is_exact_without_ties_and_asymptotic_with_them(ctx: RunContext) -> None:
    assert run(ctx, control=[1.0, 2.5, 3.0], treatment=[2.0, 4.0, 7.0, 9.0]).mann_whitney.method == "exact"
    tied = run(ctx, control=[1.0, 2.0, 3.0], treatment=[2.0, 4.0, 7.0])
    assert tied.mann_whitney.method == "asymptotic" and "tied" in tied.mann_whitney.method_reason


def test_assumption_checks_match_scipy(ctx: RunContext) -> None:
    c, t = samples(5, 35, 28, scale2=3.0)
    t = np.exp(t / 3)  # skewed treatment arm
    out = run(ctx, control=c.tolist(), treatment=t.tolist())
    for check, x in zip(out.assumptions.normality, (c, t), strict=True):
        ref = stats.shapiro(x)
        assert check.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert check.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    for block, center in ((out.assumptions.levene, "mean"), (out.assumptions.brown_forsythe, "median")):
        ref = stats.levene(c, t, center=center)
        assert block.statistic == pytest.approx(ref.statistic, rel=1e-10)
        assert block.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert out.assumptions.variance_ratio == pytest.approx(t.var(ddof=1) / c.var(ddof=1))


def test_shapiro_is_skipped_outside_its_sample_size_limits(ctx: RunContext) -> None:
    rng = np.random.default_rng(6)
    out = run(ctx, control=[1.0, 2.0], treatment=rng.normal(size=5001).tolist())
    small, large = out.assumptions.normality
    assert small.p_value is None and "at least 3" in small.note
    assert large.p_value is None and "5000" in large.note
    # n = 2 cannot be checked, so the verdict falls back to the rank test.
    assert out.verdict.recommended_test == "mann_whitney_u"


def test_verdict_prefers_mann_whitney_for_small_non_normal_samples(ctx: RunContext) -> None:
    rng = np.random.default_rng(7)
    c = rng.lognormal(0.0, 1.5, 20)
    t = rng.lognormal(1.0, 1.5, 20)
    out = run(ctx, control=c.tolist(), treatment=t.tolist())
    assert not all(check.looks_normal for check in out.assumptions.normality)
    assert out.verdict.recommended_test == "mann_whitney_u"
    assert out.verdict.p_value == out.mann_whitney.p_value
    assert "Mann–Whitney" in out.verdict.summary


# ------------------------------------------------------------------------------------------- effect sizes


@pytest.mark.parametrize(("seed", "n1", "n2", "conf"), [(8, 10, 10, 0.95), (9, 25, 14, 0.9), (10, 120, 80, 0.99)])
def test_effect_sizes_match_statsmodels(ctx: RunContext, seed: int, n1: int, n2: int, conf: float) -> None:
    c, t = samples(seed, n1, n2, shift=0.8, scale2=1.3, decimals=1)
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), confidence_level=conf)
    es = out.effect_sizes
    student_t = stats.ttest_ind(t, c).statistic
    scale = math.sqrt(1 / n1 + 1 / n2)
    assert es.cohens_d.estimate == pytest.approx(student_t * scale, rel=1e-12)
    nc = _noncentrality_t(student_t, n1 + n2 - 2, alpha=1 - conf).confint
    assert (es.cohens_d.ci_low, es.cohens_d.ci_high) == pytest.approx((nc[0] * scale, nc[1] * scale), rel=1e-6)
    # The defining property of the noncentral-t interval: the observed t sits at the (1 ± c)/2 quantiles.
    for bound, level in ((es.cohens_d.ci_low, 0.5 + conf / 2), (es.cohens_d.ci_high, 0.5 - conf / 2)):
        assert stats.nct.cdf(student_t, n1 + n2 - 2, bound / scale) == pytest.approx(level, abs=1e-10)
    assert "noncentral t" in es.cohens_d.ci_method
    # statsmodels uses the approximation J ≈ 1 − 3/(4N − 9) of the exact gamma-function factor.
    g_ref, _ = effectsize_smd(t.mean(), t.std(ddof=1), n2, c.mean(), c.std(ddof=1), n1)
    assert es.hedges_g.estimate == pytest.approx(g_ref, rel=2e-4)
    ratio = es.hedges_g.estimate / es.cohens_d.estimate
    assert es.hedges_g.ci_low == pytest.approx(es.cohens_d.ci_low * ratio)
    # Cliff's delta = 2·P(T > C) + P(T = C) − 1, with the Brunner–Munzel interval of statsmodels.
    u = stats.mannwhitneyu(t, c).statistic
    assert es.cliffs_delta.estimate == pytest.approx(2 * u / (n1 * n2) - 1, rel=1e-12)
    assert es.rank_biserial == pytest.approx(es.cliffs_delta.estimate)
    low, high = rank_compare_2indep(t, c).conf_int(alpha=1 - conf)
    assert (es.cliffs_delta.ci_low, es.cliffs_delta.ci_high) == pytest.approx(
        (max(-1.0, 2 * low - 1), min(1.0, 2 * high - 1)), rel=1e-9
    )


def test_effect_size_normal_interval_is_hedges_olkin(ctx: RunContext) -> None:
    out = run(ctx, control=SLEEP_1, treatment=SLEEP_2, effect_size_ci="normal")
    d, n1, n2 = out.effect_sizes.cohens_d.estimate, 10, 10
    se = math.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2 * (n1 + n2)))
    z = stats.norm.ppf(0.975)
    assert out.effect_sizes.cohens_d.ci_low == pytest.approx(d - z * se)
    assert out.effect_sizes.cohens_d.ci_high == pytest.approx(d + z * se)
    assert "normal" in out.effect_sizes.cohens_d.ci_method


# ------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize(("seed", "n1", "n2"), [(11, 15, 25), (12, 60, 40)])
def test_bootstrap_matches_scipy_on_the_same_random_stream(ctx: RunContext, seed: int, n1: int, n2: int) -> None:
    rng = np.random.default_rng(seed)
    c, t = rng.exponential(1.0, n1), rng.exponential(1.6, n2)  # skewed: BCa differs from percentile
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), n_bootstrap=5000, seed=seed, confidence_level=0.9)

    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return y.mean(axis=axis) - x.mean(axis=axis)

    # scipy draws each sample's resample indices in the same order from the same generator.
    common = dict(n_resamples=5000, confidence_level=0.9, vectorized=True)
    bca = stats.bootstrap((c, t), diff, method="BCa", rng=np.random.default_rng(seed), **common)
    pct = stats.bootstrap((c, t), diff, method="percentile", rng=np.random.default_rng(seed), **common)
    boot = out.bootstrap
    assert boot is not None
    assert boot.standard_error == pytest.approx(pct.standard_error, rel=1e-10)
    assert (boot.percentile_ci_low, boot.percentile_ci_high) == pytest.approx(tuple(pct.confidence_interval), rel=1e-10)
    assert (boot.bca_ci_low, boot.bca_ci_high) == pytest.approx(tuple(bca.confidence_interval), rel=1e-10)
    # An independent stream agrees within Monte Carlo error (here ~0.05 SE per endpoint; allow ~5 sd).
    other = stats.bootstrap((c, t), diff, method="BCa", rng=np.random.default_rng(seed + 1000), **common)
    assert abs(boot.bca_ci_low - other.confidence_interval.low) < 0.25 * boot.standard_error
    assert abs(boot.bca_ci_high - other.confidence_interval.high) < 0.25 * boot.standard_error


def test_bootstrap_is_seeded(ctx: RunContext) -> None:
    first = run(ctx, control=SLEEP_1, treatment=SLEEP_2, n_bootstrap=500, seed=3).bootstrap
    again = run(ctx, control=SLEEP_1, treatment=SLEEP_2, n_bootstrap=500, seed=3).bootstrap
    other = run(ctx, control=SLEEP_1, treatment=SLEEP_2, n_bootstrap=500, seed=4).bootstrap
    assert first == again
    assert first != other


# ------------------------------------------------------------------------------------------- power


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize(("n1", "n2", "alpha", "target"), [(10, 10, 0.05, 0.8), (30, 45, 0.01, 0.9), (8, 60, 0.1, 0.5)])
def test_power_and_mde_match_statsmodels(
    ctx: RunContext, alternative: str, n1: int, n2: int, alpha: float, target: float
) -> None:
    c, t = samples(n1 + n2, n1, n2, shift=0.6, scale2=1.0)
    out = run(ctx, control=c.tolist(), treatment=t.tolist(), alternative=alternative, alpha=alpha, target_power=target)
    power = TTestIndPower()
    d = out.effect_sizes.cohens_d.estimate
    kw = dict(nobs1=n1, alpha=alpha, ratio=n2 / n1, alternative=SM_ALTERNATIVE[alternative])
    assert out.power.effect_size_d == pytest.approx(d)
    assert out.power.power == pytest.approx(power.power(effect_size=d, **kw), rel=1e-8)
    mde = power.solve_power(effect_size=None, power=target, **kw)
    assert out.power.minimum_detectable_d == pytest.approx(mde, rel=1e-5)
    pooled_sd = out.mean_difference / d
    assert out.power.minimum_detectable_difference == pytest.approx(mde * pooled_sd, rel=1e-5)


# ------------------------------------------------------------------------------------------- corrections


@pytest.mark.parametrize("method", ["bonferroni", "holm", "fdr_bh", "fdr_by"])
def test_corrections_match_statsmodels(ctx: RunContext, method: str) -> None:
    rng = np.random.default_rng(13)
    p = np.concatenate([rng.uniform(0, 0.05, 6), rng.uniform(0, 1, 14), [0.01, 0.01, 1.0]])  # with ties
    out = run(ctx, control=SLEEP_1, treatment=SLEEP_2, p_values=p.tolist(), family_primary="none", alpha=0.1)
    reject, adjusted, _, _ = multipletests(p, alpha=0.1, method=method)
    mt = out.multiple_testing
    assert mt is not None and mt.labels[0] == "p_values[0]"
    assert mt.adjusted[method] == pytest.approx(adjusted.tolist(), rel=1e-12)
    assert mt.rejected[method] == reject.tolist()
    assert adjust_p_values(p, method) == pytest.approx(adjusted, rel=1e-12)


def test_primary_p_value_leads_the_family(ctx: RunContext) -> None:
    out = run(ctx, control=SLEEP_1, treatment=SLEEP_2, p_values=[0.001, 0.5], p_value_labels=["a", "b"])
    mt = out.multiple_testing
    assert mt is not None
    assert mt.labels == ["this comparison (welch_t)", "a", "b"]
    assert mt.p_values[0] == out.welch.p_value
    _, holm, _, _ = multipletests([out.welch.p_value, 0.001, 0.5], method="holm")
    assert mt.adjusted["holm"] == pytest.approx(holm.tolist())
    assert run(ctx, control=SLEEP_1, treatment=SLEEP_2, family_primary="none").multiple_testing is None


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"control": [1.0], "treatment": [1.0, 2.0]}, "control"),
        ({"control": [1.0, 2.0], "treatment": [3.0]}, "treatment"),
        ({"control": [2.0, 2.0, 2.0], "treatment": [5.0, 5.0]}, "control, treatment"),
        ({"control": [1.0, 2.0], "treatment": [1e101, 3.0]}, "treatment"),
        ({"control": [0.0, 1e-9], "treatment": [1e6, 1e6]}, "control, treatment"),
        (
            {"control": [1.0, 2.0, 3.0], "treatment": [3.0, 4.0, 5.0], "mann_whitney_method": "exact"},
            "mann_whitney_method",
        ),
    ],
)
def test_degenerate_input_is_rejected_naming_the_field(ctx: RunContext, fields: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        run(ctx, **fields)
    assert err.value.field == field
    assert err.value.detail.startswith(field + ":")


def test_bootstrap_work_is_bounded(ctx: RunContext) -> None:
    big = np.arange(3000.0)
    with pytest.raises(InvalidInput, match="n_bootstrap ≤ 8333") as err:
        run(ctx, control=big.tolist(), treatment=big.tolist(), n_bootstrap=10_000)
    assert err.value.field == "n_bootstrap"


@pytest.mark.parametrize(
    "fields",
    [
        {"control": [1.0, 2.0], "treatment": [1.0, 3.0], "n_bootstrap": 50},
        {"control": [1.0, 2.0], "treatment": [1.0, 3.0], "p_values": [0.1], "p_value_labels": ["a", "b"]},
        {"control": [1.0, 2.0], "treatment": [1.0, 3.0], "p_values": [1.5]},
        {"control": [1.0, 2.0], "treatment": [1.0, 3.0], "alpha": 0.0},
        {"control": [1.0, float("nan")], "treatment": [1.0, 3.0]},
        {"control": [1.0, 2.0]},
    ],
)
def test_invalid_fields_fail_validation(fields: dict) -> None:
    with pytest.raises(ValidationError):
        AdvancedStatisticalValidatorInput(**fields)


def test_one_constant_arm_is_a_defined_result(ctx: RunContext) -> None:
    out = run(ctx, control=[3.0, 3.0, 3.0, 3.0], treatment=[1.0, 4.0, 6.0, 2.5, 5.0], n_bootstrap=200)
    assert out.welch.df == pytest.approx(4.0)  # only the treatment variance counts
    assert out.assumptions.normality[0].looks_normal is False
    assert out.assumptions.variance_ratio is None


# ------------------------------------------------------------------------------------------- file references


def test_file_references_equal_inline(ctx: RunContext) -> None:
    c, t = samples(14, 40, 35)
    np.save(ctx.data_dir / "control.npy", c)
    (ctx.data_dir / "arms.csv").write_text(
        "id,treatment\n" + "\n".join(f"{i},{float(v)!r}" for i, v in enumerate(t)) + "\n", encoding="utf-8"
    )
    common = dict(n_bootstrap=300, seed=5, p_values=[0.2])
    inline = run(ctx, control=c.tolist(), treatment=t.tolist(), **common)
    by_file = run(ctx, control={"path": "control.npy"}, treatment={"path": "arms.csv", "column": "treatment"}, **common)
    assert by_file == inline


def test_file_reference_outside_data_dir_is_refused(ctx: RunContext) -> None:
    from mlmesh.errors import BadRequest

    with pytest.raises(BadRequest, match=r"control\.path"):
        run(ctx, control={"path": "../outside.npy"}, treatment=[1.0, 2.0])


# ------------------------------------------------------------------------------------------- HTTP


def test_http_envelope_and_problem(client_for) -> None:
    client = client_for(advanced_statistical_validator)
    ok = client.post(
        "/run/advanced_statistical_validator",
        json={"control": SLEEP_1, "treatment": SLEEP_2, "n_bootstrap": 200},
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["component"] == "advanced_statistical_validator"
    assert body["local_metadata"]["tier"] == "tier3"
    assert body["component_result"]["welch"]["df"] == pytest.approx(17.776, abs=5e-4)
    bad = client.post("/run/advanced_statistical_validator", json={"control": [1.0], "treatment": [1.0, 2.0]})
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("control:")
    assert client.post("/run/advanced_statistical_validator", json={}).status_code == 422


# ------------------------------------------------------------------------------------------- invariants

values = st.lists(st.integers(-200, 200).map(lambda v: v / 8), min_size=2, max_size=25)


@hsettings(max_examples=50, deadline=None)
@given(c=values, t=values, alternative=st.sampled_from(ALTERNATIVES))
def test_p_values_are_probabilities_and_swapping_arms_mirrors(ctx: RunContext, c, t, alternative: str) -> None:
    assume(np.ptp(c) > 0 or np.ptp(t) > 0)
    out = run(ctx, control=c, treatment=t, alternative=alternative, p_values=[0.3])
    swapped = run(ctx, control=t, treatment=c, alternative=alternative, p_values=[0.3])
    for result in (out, swapped):
        ps = [result.welch.p_value, result.student.p_value, result.mann_whitney.p_value]
        ps += [c.p_value for c in result.assumptions.normality if c.p_value is not None]
        assert result.multiple_testing is not None
        ps += [p for adjusted in result.multiple_testing.adjusted.values() for p in adjusted]
        assert all(0.0 <= p <= 1.0 for p in ps)
    assert swapped.mean_difference == pytest.approx(-out.mean_difference, abs=1e-12)
    assert swapped.effect_sizes.cliffs_delta.estimate == pytest.approx(-out.effect_sizes.cliffs_delta.estimate)
    mirror = {"two-sided": "two-sided", "greater": "less", "less": "greater"}[alternative]
    back = run(ctx, control=t, treatment=c, alternative=mirror)
    for a, b in ((out.welch, back.welch), (out.student, back.student), (out.mann_whitney, back.mann_whitney)):
        assert a.p_value == pytest.approx(b.p_value, rel=1e-9, abs=1e-15)
    if alternative == "two-sided":
        assert swapped.welch.p_value == pytest.approx(out.welch.p_value, rel=1e-9, abs=1e-15)
        assert swapped.mann_whitney.p_value == pytest.approx(out.mann_whitney.p_value, rel=1e-9, abs=1e-15)
