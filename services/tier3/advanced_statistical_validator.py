"""Control vs treatment: Welch and Student t, Mann–Whitney U, assumption checks, effect sizes, bootstrap, power.

Every difference is *treatment − control*; ``alternative="greater"`` means the treatment is larger. Confidence
intervals are two-sided at ``confidence_level`` whatever the alternative; p-values follow the alternative.

:func:`adjust_p_values` (Bonferroni, Holm, Benjamini–Hochberg, Benjamini–Yekutieli) is also used by
``pattern_significance_analyzer``; :func:`mann_whitney_u` is public for the same kind of reuse.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import optimize, special, stats

from mlmesh.errors import InvalidInput
from services.framework import (
    ComponentInput,
    ComponentOutput,
    Numbers,
    RunContext,
    Seed,
    component,
    load_numbers,
)

__all__ = [
    "CORRECTION_METHODS",
    "AdvancedStatisticalValidatorInput",
    "AdvancedStatisticalValidatorOutput",
    "adjust_p_values",
    "advanced_statistical_validator",
    "mann_whitney_u",
]

Alternative = Literal["two-sided", "greater", "less"]
CORRECTION_METHODS = ("bonferroni", "holm", "fdr_bh", "fdr_by")
MAX_SAMPLE = 1_000_000
# Bound on bootstrap work (resampled values drawn in total) so one call cannot pin a worker for minutes.
MAX_BOOTSTRAP_DRAWS = 50_000_000
# Bound on the exact Mann–Whitney distribution: min(n1, n2) passes over an n1·n2 + 1 integer polynomial.
MAX_EXACT_MWU_WORK = 500_000
# scipy.stats.shapiro is only accurate up to 5000 observations (it warns beyond).
SHAPIRO_MAX_N = 5000
# From this size per arm the t-test is trusted by the central limit theorem whatever Shapiro–Wilk says.
CLT_N = 30
_BOOTSTRAP_CHUNK = 2_000_000
# Values beyond this overflow the moment computations (sums of squares of up to a million values).
MAX_ABS_VALUE = 1e100
# Beyond this many pooled SDs apart the within-arm spread is numerically nil and every interval degenerates.
MAX_STANDARDIZED_EFFECT = 1e6
# The noncentral t of scipy loses accuracy, then returns NaN, for larger noncentralities; power is 0 or 1 there.
MAX_NONCENTRALITY = 1e4

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class AdvancedStatisticalValidatorInput(ComponentInput):
    """Two independent samples and the options of the analysis."""

    control: Numbers = Field(description="control sample: inline numbers or a file reference under data/")
    treatment: Numbers = Field(description="treatment sample: inline numbers or a file reference under data/")
    alternative: Alternative = Field(
        "two-sided", description="H1 about treatment − control: 'two-sided', 'greater' (treatment larger) or 'less'"
    )
    alpha: float = Field(0.05, ge=1e-6, le=0.5, description="significance level of every test")
    confidence_level: float = Field(0.95, ge=0.5, le=0.9999, description="coverage of every (two-sided) interval")
    assumption_alpha: float = Field(
        0.05, ge=1e-6, le=0.5, description="level at which Shapiro–Wilk and Levene/Brown–Forsythe reject"
    )
    mann_whitney_method: Literal["auto", "exact", "asymptotic"] = Field(
        "auto",
        description="'exact' needs no ties; 'auto' is exact when there are no ties and the samples are small",
    )
    use_continuity: bool = Field(True, description="continuity correction of the Mann–Whitney normal approximation")
    effect_size_ci: Literal["noncentral_t", "normal"] = Field(
        "noncentral_t", description="interval for Cohen's d and Hedges' g: noncentral t inversion or normal approx."
    )
    n_bootstrap: int = Field(
        10_000, ge=0, le=20_000, description="bootstrap resamples of the mean difference (0 skips; else ≥ 100)"
    )
    target_power: float = Field(0.8, ge=0.01, le=0.999, description="power at which the detectable effect is solved")
    p_values: list[Probability] = Field(
        default_factory=list, max_length=10_000, description="other p-values of the same family to correct together"
    )
    p_value_labels: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=10_000, description="labels of p_values (same length)"
    )
    family_primary: Literal["recommended", "welch_t", "mann_whitney_u", "none"] = Field(
        "recommended", description="which p-value of this comparison joins the multiple-testing family (first)"
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _consistent(self) -> AdvancedStatisticalValidatorInput:
        if 0 < self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be 0 (skip) or between 100 and 20000; got {self.n_bootstrap}")
        if self.p_value_labels is not None and len(self.p_value_labels) != len(self.p_values):
            raise ValueError(
                f"p_value_labels must have one label per p-value ({len(self.p_values)}); got {len(self.p_value_labels)}"
            )
        return self


class ArmSummary(ComponentOutput):
    n: int
    mean: float
    sd: float
    median: float
    minimum: float
    maximum: float


class TTest(ComponentOutput):
    statistic: float
    df: float
    p_value: float
    mean_difference: float = Field(description="treatment − control")
    standard_error: float
    ci_low: float
    ci_high: float


class MannWhitney(ComponentOutput):
    u_treatment: float = Field(description="pairs with treatment > control, ties counted half")
    u_control: float
    p_value: float
    method: Literal["exact", "asymptotic"]
    method_reason: str
    z: float | None = Field(description="normal score of u_treatment (asymptotic method only)")
    continuity_correction: bool
    tie_correction: bool = Field(description="whether the variance was corrected for ties")
    tied_groups: int
    probability_of_superiority: float = Field(description="P(T > C) + ½ P(T = C), estimated by U / (n1·n2)")


class NormalityCheck(ComponentOutput):
    arm: Literal["control", "treatment"]
    test: Literal["shapiro_wilk"] = "shapiro_wilk"
    n: int
    statistic: float | None
    p_value: float | None
    looks_normal: bool | None = Field(description="None when the test could not run (see note)")
    note: str


class VarianceCheck(ComponentOutput):
    test: Literal["levene_mean", "brown_forsythe_median"]
    statistic: float | None
    p_value: float | None
    equal_variances: bool | None
    note: str


class Assumptions(ComponentOutput):
    normality: list[NormalityCheck]
    levene: VarianceCheck
    brown_forsythe: VarianceCheck
    variance_ratio: float | None = Field(description="var(treatment) / var(control); None if var(control) = 0")


class Verdict(ComponentOutput):
    recommended_test: Literal["welch_t", "mann_whitney_u"]
    p_value: float
    significant: bool
    tests_agree: bool = Field(description="Welch and Mann–Whitney reach the same decision at alpha")
    reasons: list[str]
    summary: str


class EffectSize(ComponentOutput):
    estimate: float
    ci_low: float | None
    ci_high: float | None
    ci_method: str


class EffectSizes(ComponentOutput):
    cohens_d: EffectSize
    hedges_g: EffectSize
    cliffs_delta: EffectSize
    rank_biserial: float = Field(description="2U/(n1·n2) − 1 for the treatment; equals Cliff's delta")


class Bootstrap(ComponentOutput):
    n_bootstrap: int
    statistic: Literal["mean difference (treatment − control)"] = "mean difference (treatment − control)"
    standard_error: float
    percentile_ci_low: float
    percentile_ci_high: float
    bca_ci_low: float | None
    bca_ci_high: float | None
    bias_correction_z0: float | None
    acceleration: float | None
    note: str


class Power(ComponentOutput):
    method: str
    effect_size_d: float = Field(description="observed Cohen's d used as the true effect")
    power: float
    target_power: float
    minimum_detectable_d: float | None = Field(description="signed in the direction of the alternative")
    minimum_detectable_difference: float | None = Field(description="minimum_detectable_d × pooled SD")
    note: str


class MultipleTesting(ComponentOutput):
    labels: list[str]
    p_values: list[float]
    adjusted: dict[str, list[float]] = Field(description="adjusted p-values per method")
    rejected: dict[str, list[bool]] = Field(description="adjusted p ≤ alpha per method")
    alpha: float


class AdvancedStatisticalValidatorOutput(ComponentOutput):
    alternative: Alternative
    alpha: float
    confidence_level: float
    control: ArmSummary
    treatment: ArmSummary
    mean_difference: float = Field(description="mean(treatment) − mean(control)")
    welch: TTest
    student: TTest
    mann_whitney: MannWhitney
    assumptions: Assumptions
    verdict: Verdict
    effect_sizes: EffectSizes
    bootstrap: Bootstrap | None
    power: Power
    multiple_testing: MultipleTesting | None


# --------------------------------------------------------------------------------------------- shared helpers


def adjust_p_values(p_values: np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values (Bonferroni, Holm, Benjamini–Hochberg ``fdr_bh`` or Benjamini–Yekutieli ``fdr_by``)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adjusted = np.maximum.accumulate(ranked * (m - rank + 1))
    elif method in ("fdr_bh", "fdr_by"):
        scale = float(np.sum(1.0 / rank)) if method == "fdr_by" else 1.0
        # step-up: the q-value of rank i is the smallest scaled p over ranks ≥ i.
        adjusted = np.minimum.accumulate((ranked * m * scale / rank)[::-1])[::-1]
    else:
        raise ValueError(f"method must be one of {CORRECTION_METHODS}; got {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _mwu_exact_counts(n1: int, n2: int) -> np.ndarray:
    """Number of arrangements giving U = 0..n1·n2 (coefficients of the Gaussian binomial [n1+n2, n1]_q).

    Exact integers: the product ∏ (1 − q^(n+i)) / (1 − q^i), each factor applied as a shifted difference and a
    strided cumulative sum, so the work is min(n1, n2) vector passes. Every intermediate is bounded by
    C(n1 + n2, n1), so int64 is exact when that fits; Python integers (object array) otherwise.
    """
    k, big = min(n1, n2), max(n1, n2)
    length = k * big + 1
    dtype = np.int64 if math.comb(n1 + n2, k) < 2**62 else object
    poly = np.zeros(length, dtype=dtype)
    poly[:] = 0
    poly[0] = 1
    for i in range(1, k + 1):
        shift = big + i
        if shift < length:
            poly[shift:] = poly[shift:] - poly[:-shift]
        pad = (-length) % i
        padded = np.concatenate([poly, np.zeros(pad, dtype=dtype)]) if pad else poly
        poly = np.cumsum(padded.reshape(-1, i), axis=0).reshape(-1)[:length]
    return poly


def mann_whitney_u(
    control: np.ndarray,
    treatment: np.ndarray,
    *,
    alternative: str = "two-sided",
    method: str = "auto",
    use_continuity: bool = True,
) -> MannWhitney:
    """Mann–Whitney U of the treatment against the control (ties get average ranks).

    ``method="auto"`` is exact when there are no ties and the exact distribution is small enough, else the
    normal approximation with the tie-corrected variance (and the continuity correction if asked).
    Raises :class:`InvalidInput` for ``method="exact"`` with ties or with samples too large.
    """
    n1, n2 = control.size, treatment.size
    combined = np.concatenate([control, treatment])
    ranks = stats.rankdata(combined)
    u_t = float(ranks[n1:].sum() - n2 * (n2 + 1) / 2.0)
    u_c = n1 * n2 - u_t
    _, counts = np.unique(combined, return_counts=True)
    tied_groups = int(np.count_nonzero(counts > 1))
    work = min(n1, n2) * n1 * n2
    if method == "exact":
        if tied_groups:
            raise InvalidInput(
                "mann_whitney_method",
                f"the exact distribution assumes no ties; the samples have {tied_groups} tied values; "
                "use 'asymptotic' or 'auto'",
            )
        if work > MAX_EXACT_MWU_WORK:
            raise InvalidInput(
                "mann_whitney_method",
                f"samples of {n1} and {n2} are too large for the exact distribution "
                f"(min(n)·n1·n2 = {work} > {MAX_EXACT_MWU_WORK}); use 'asymptotic' or 'auto'",
            )
        chosen, reason = "exact", "exact distribution of U, as requested (no ties)"
    elif method == "asymptotic":
        chosen, reason = "asymptotic", "normal approximation, as requested"
    elif tied_groups:
        chosen = "asymptotic"
        reason = f"normal approximation: {tied_groups} tied values make the exact (no-ties) distribution invalid"
    elif work > MAX_EXACT_MWU_WORK:
        chosen = "asymptotic"
        reason = f"normal approximation: samples too large for the exact distribution (min(n)·n1·n2 = {work})"
    else:
        chosen, reason = "exact", "exact distribution of U: no ties and small enough samples"

    # The p-value is an upper tail of U: of U_treatment for 'greater', of U_control for 'less'
    # (by symmetry), of the larger of the two (doubled) for 'two-sided' — as scipy does.
    if alternative == "greater":
        u_tail, factor = u_t, 1.0
    elif alternative == "less":
        u_tail, factor = u_c, 1.0
    else:
        u_tail, factor = max(u_t, u_c), 2.0

    mu = n1 * n2 / 2.0
    z_report: float | None = None
    if chosen == "exact":
        dist = _mwu_exact_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        p = int(dist[round(u_tail) :].sum()) / total
    else:
        n = n1 + n2
        tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts))
        sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
        cc = 0.5 if use_continuity else 0.0
        p = float(special.ndtr(-(u_tail - mu - cc) / sigma))
        shift = u_t - mu
        z_report = float(math.copysign(max(abs(shift) - cc, 0.0), shift) / sigma)
    return MannWhitney(
        u_treatment=u_t,
        u_control=u_c,
        p_value=float(min(1.0, max(0.0, factor * p))),
        method=chosen,
        method_reason=reason,
        z=z_report,
        continuity_correction=chosen == "asymptotic" and use_continuity,
        tie_correction=chosen == "asymptotic" and tied_groups > 0,
        tied_groups=tied_groups,
        probability_of_superiority=u_t / (n1 * n2),
    )


# --------------------------------------------------------------------------------------------- pieces


# scipy.special's distribution functions are used directly: the stats.* objects cost ~0.3 ms per call in
# argument handling, which adds up inside root-finding.


def _nct_cdf(x: float, df: float, nc: float) -> float:
    """P(T ≤ x) for the noncentral t.

    scipy's (Boost's) noncentral t answers NaN in some far tails, where the probability is within ~1e-10 of 0
    or 1; there the normal approximation of Abramowitz & Stegun 26.7.10 gives that 0 or 1.
    """
    value = float(special.nctdtr(df, nc, x))
    if math.isnan(value):
        value = float(special.ndtr((x * (1.0 - 1.0 / (4.0 * df)) - nc) / math.sqrt(1.0 + x * x / (2.0 * df))))
    return value


def _t_p_value(t: float, df: float, alternative: str) -> float:
    if alternative == "greater":
        return float(special.stdtr(df, -t))
    if alternative == "less":
        return float(special.stdtr(df, t))
    return float(min(1.0, 2.0 * special.stdtr(df, -abs(t))))


def _t_test(diff: float, se: float, df: float, alternative: str, confidence: float) -> TTest:
    t = diff / se
    half = float(special.stdtrit(df, 0.5 + confidence / 2.0)) * se
    return TTest(
        statistic=t,
        df=df,
        p_value=_t_p_value(t, df, alternative),
        mean_difference=diff,
        standard_error=se,
        ci_low=diff - half,
        ci_high=diff + half,
    )


def _summary(x: np.ndarray) -> ArmSummary:
    return ArmSummary(
        n=int(x.size),
        mean=float(x.mean()),
        sd=float(x.std(ddof=1)),
        median=float(np.median(x)),
        minimum=float(x.min()),
        maximum=float(x.max()),
    )


def _shapiro(x: np.ndarray, arm: Literal["control", "treatment"], level: float) -> NormalityCheck:
    n = int(x.size)
    if n < 3:
        return NormalityCheck(
            arm=arm, n=n, statistic=None, p_value=None, looks_normal=None, note="Shapiro–Wilk needs at least 3 values"
        )
    if n > SHAPIRO_MAX_N:
        return NormalityCheck(
            arm=arm,
            n=n,
            statistic=None,
            p_value=None,
            looks_normal=None,
            note=f"not run: Shapiro–Wilk p-values are unreliable above n = {SHAPIRO_MAX_N}",
        )
    if np.ptp(x) == 0:
        return NormalityCheck(
            arm=arm,
            n=n,
            statistic=None,
            p_value=None,
            looks_normal=False,
            note="all values are equal: not a normal sample",
        )
    # Any scipy warning is reported in the note rather than raised or dropped.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w, p = stats.shapiro(x)
    note = "; ".join(str(c.message) for c in caught) or "ok"
    return NormalityCheck(arm=arm, n=n, statistic=float(w), p_value=float(p), looks_normal=bool(p >= level), note=note)


def _levene(c: np.ndarray, t: np.ndarray, center: str, level: float) -> VarianceCheck:
    name: Literal["levene_mean", "brown_forsythe_median"] = (
        "levene_mean" if center == "mean" else "brown_forsythe_median"
    )
    centre = np.mean if center == "mean" else np.median
    zc, zt = np.abs(c - centre(c)), np.abs(t - centre(t))
    n = c.size + t.size
    grand = (zc.sum() + zt.sum()) / n
    between = float(c.size * (zc.mean() - grand) ** 2 + t.size * (zt.mean() - grand) ** 2)
    within = float(np.sum((zc - zc.mean()) ** 2) + np.sum((zt - zt.mean()) ** 2))
    if within <= 0.0:
        return VarianceCheck(
            test=name,
            statistic=None,
            p_value=None,
            equal_variances=None,
            note="undefined: the absolute deviations are constant within each arm",
        )
    f = (n - 2) * between / within  # Python floats: overflow gives inf, handled below
    if not math.isfinite(f):
        return VarianceCheck(
            test=name,
            statistic=None,
            p_value=None,
            equal_variances=None,
            note="undefined: the absolute deviations are numerically constant within each arm",
        )
    p = float(special.fdtrc(1, n - 2, f))
    return VarianceCheck(test=name, statistic=f, p_value=p, equal_variances=bool(p >= level), note="ok")


def _nct_ci_for_t(t_obs: float, df: float, confidence: float) -> tuple[float, float] | None:
    """Noncentrality (lo, hi) with P(T ≤ t_obs | nc) = (1 + c)/2 and (1 − c)/2; None if not bracketed."""

    def solve(target: float) -> float | None:
        def f(nc: float) -> float:
            return _nct_cdf(t_obs, df, nc) - target

        width = 2.0 + abs(t_obs) * 0.5
        lo, hi = t_obs - width, t_obs + width
        for _ in range(60):
            if f(lo) > 0 > f(hi):
                return float(optimize.brentq(f, lo, hi, xtol=1e-12, rtol=1e-12, maxiter=200))
            width *= 2.0
            lo, hi = t_obs - width, t_obs + width
        return None

    if abs(t_obs) > MAX_NONCENTRALITY:
        return None
    lo, hi = solve(0.5 + confidence / 2.0), solve(0.5 - confidence / 2.0)
    if lo is None or hi is None:
        return None
    return lo, hi


def _effect_sizes(
    c: np.ndarray, t: np.ndarray, diff: float, sp: float, mwu: MannWhitney, method: str, confidence: float
) -> EffectSizes:
    n1, n2 = c.size, t.size
    df = n1 + n2 - 2
    d = diff / sp
    # Exact small-sample bias factor J(df) = Γ(df/2) / (√(df/2) Γ((df−1)/2)).
    j = math.exp(special.gammaln(df / 2.0) - 0.5 * math.log(df / 2.0) - special.gammaln((df - 1) / 2.0))
    scale = math.sqrt((n1 + n2) / (n1 * n2))
    bounds: tuple[float, float] | None = None
    ci_method = "normal approximation, se² = (n1+n2)/(n1·n2) + d²/(2(n1+n2)) (Hedges & Olkin)"
    if method == "noncentral_t":
        nc = _nct_ci_for_t(d / scale, df, confidence)
        if nc is not None:
            bounds = (nc[0] * scale, nc[1] * scale)
            ci_method = "noncentral t inversion of the pooled-variance t statistic"
        else:
            ci_method += " (the noncentral t inversion is out of its accurate range here)"
    if bounds is None:
        se = math.sqrt((n1 + n2) / (n1 * n2) + d * d / (2.0 * (n1 + n2)))
        z = float(special.ndtri(0.5 + confidence / 2.0))
        bounds = (d - z * se, d + z * se)
    cohen = EffectSize(estimate=d, ci_low=bounds[0], ci_high=bounds[1], ci_method=ci_method)
    hedges = EffectSize(
        estimate=j * d, ci_low=j * bounds[0], ci_high=j * bounds[1], ci_method=ci_method + ", scaled by J(df)"
    )
    return EffectSizes(
        cohens_d=cohen,
        hedges_g=hedges,
        cliffs_delta=_cliffs_delta(c, t, confidence),
        rank_biserial=2.0 * mwu.probability_of_superiority - 1.0,
    )


def _cliffs_delta(c: np.ndarray, t: np.ndarray, confidence: float) -> EffectSize:
    """Cliff's delta with a Brunner–Munzel (placement-variance) t interval, as statsmodels rank_compare_2indep."""
    n1, n2 = c.size, t.size
    sc, st = np.sort(c), np.sort(t)
    # Placements: for each treatment value, control values below it (ties half), and vice versa. Only their
    # mean and variance matter, so sorted queries are used (much faster searches on large arrays).
    place_t = (np.searchsorted(sc, st, side="left") + np.searchsorted(sc, st, side="right")) / 2.0
    place_c = (np.searchsorted(st, sc, side="left") + np.searchsorted(st, sc, side="right")) / 2.0
    prob = float(place_t.mean() / n1)  # P(T > C) + ½ P(T = C)
    delta = 2.0 * prob - 1.0
    s_t = float(np.var(place_t, ddof=1))
    s_c = float(np.var(place_c, ddof=1))
    var_prob = s_t / (n1**2 * n2) + s_c / (n2**2 * n1)
    method = "Brunner–Munzel placement variance, t with Satterthwaite df, clipped to [−1, 1]"
    if var_prob <= 0.0:
        return EffectSize(
            estimate=delta,
            ci_low=None,
            ci_high=None,
            ci_method=method + "; undefined: zero variance estimate (arms completely separated)",
        )
    a, b = n2 * s_t, n1 * s_c  # n_i · S_i of Brunner–Munzel with sample 1 = treatment
    df = (a + b) ** 2 / (a**2 / (n2 - 1) + b**2 / (n1 - 1))
    half = float(special.stdtrit(df, 0.5 + confidence / 2.0)) * math.sqrt(var_prob)
    lo, hi = max(-1.0, 2.0 * (prob - half) - 1.0), min(1.0, 2.0 * (prob + half) - 1.0)
    return EffectSize(estimate=delta, ci_low=lo, ci_high=hi, ci_method=method)


def _bootstrap(c: np.ndarray, t: np.ndarray, n_boot: int, confidence: float, seed: int) -> Bootstrap:
    """Percentile and BCa intervals of mean(t) − mean(c), resampling each arm independently."""
    rng = np.random.default_rng(seed)
    stats_b = np.empty(n_boot)
    chunk = max(1, _BOOTSTRAP_CHUNK // max(c.size, t.size))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        mc = c[rng.integers(0, c.size, size=(size, c.size))].mean(axis=1)
        mt = t[rng.integers(0, t.size, size=(size, t.size))].mean(axis=1)
        stats_b[start : start + size] = mt - mc
    theta = float(t.mean() - c.mean())
    a = 1.0 - confidence
    pct = np.quantile(stats_b, [a / 2.0, 1.0 - a / 2.0])

    # BCa (Efron & Tibshirani 14.3, 15.4): z0 from the share below θ̂ (ties half), acceleration from the
    # jackknife of each arm; leave-one-out means are closed-form.
    share = (np.count_nonzero(stats_b < theta) + np.count_nonzero(stats_b <= theta)) / (2.0 * n_boot)
    # The acceleration is scale-free: scale the jackknife terms by their largest magnitude so that tiny
    # spreads cannot underflow when cubed.
    terms = []
    for x, sign in ((c, -1.0), (t, 1.0)):
        loo = sign * (x.sum() - x) / (x.size - 1)
        terms.append(((x.size - 1) * (loo.mean() - loo), x.size))
    scale = max(float(np.abs(u).max()) for u, _ in terms)
    nums = sum(float(np.sum((u / scale) ** 3)) / m**3 for u, m in terms) if scale > 0 else 0.0
    dens = sum(float(np.sum((u / scale) ** 2)) / m**2 for u, m in terms) if scale > 0 else 0.0
    bca_lo = bca_hi = z0 = accel = None
    note = "percentile and BCa (bias-corrected, accelerated) intervals; each arm resampled independently"
    if 0.0 < share < 1.0 and dens > 0.0:
        z0 = float(special.ndtri(share))
        accel = nums / (6.0 * dens**1.5)
        za = float(special.ndtri(a / 2.0))
        nums_q = np.array([z0 + za, z0 - za])
        denom = 1.0 - accel * nums_q
        if np.all(denom > 0):
            levels = special.ndtr(z0 + nums_q / denom)
            bca_lo, bca_hi = (float(v) for v in np.quantile(stats_b, levels))
        else:
            note = "BCa undefined: the acceleration is too large for this confidence level; percentile only"
    else:
        note = "BCa undefined: all replicates lie on one side of the estimate, or no jackknife spread; percentile only"
    return Bootstrap(
        n_bootstrap=n_boot,
        standard_error=float(stats_b.std(ddof=1)),
        percentile_ci_low=float(pct[0]),
        percentile_ci_high=float(pct[1]),
        bca_ci_low=bca_lo,
        bca_ci_high=bca_hi,
        bias_correction_z0=z0,
        acceleration=accel,
        note=note,
    )


def _t_power(d: float, n1: int, n2: int, alpha: float, alternative: str) -> float:
    """Power of the pooled two-sample t-test when the true standardized effect is ``d`` (noncentral t)."""
    df = n1 + n2 - 2
    # Clipping is exact to double precision: at |nc| = 1e4 the power is already 0 or 1.
    nc = min(MAX_NONCENTRALITY, max(-MAX_NONCENTRALITY, d * math.sqrt(n1 * n2 / (n1 + n2))))
    if alternative == "greater":
        return 1.0 - _nct_cdf(-float(special.stdtrit(df, alpha)), df, nc)
    if alternative == "less":
        return _nct_cdf(float(special.stdtrit(df, alpha)), df, nc)
    crit = -float(special.stdtrit(df, alpha / 2.0))
    return 1.0 - _nct_cdf(crit, df, nc) + _nct_cdf(-crit, df, nc)


def _power(d: float, sp: float, n1: int, n2: int, alpha: float, target: float, alternative: str) -> Power:
    power = _t_power(d, n1, n2, alpha, alternative)
    sign = -1.0 if alternative == "less" else 1.0
    mde: float | None = None
    note = "post-hoc power treats the observed d as the true effect; prefer the minimum detectable effect"
    if target <= alpha:
        note += f"; target_power {target} ≤ alpha {alpha}: any effect reaches it, no minimum detectable effect"
    else:

        def gap(m: float) -> float:
            return _t_power(sign * m, n1, n2, alpha, alternative) - target

        hi = 1.0
        while gap(hi) < 0 and hi < 1e4:
            hi *= 2.0
        if gap(hi) >= 0:
            mde = sign * float(optimize.brentq(gap, 0.0, hi, xtol=1e-10, rtol=1e-12))
        else:
            note += "; the target power is out of reach for any d up to 1e4"
    return Power(
        method="two-sample pooled t-test, noncentral t (as statsmodels TTestIndPower)",
        effect_size_d=d,
        power=power,
        target_power=target,
        minimum_detectable_d=mde,
        minimum_detectable_difference=None if mde is None else mde * sp,
        note=note,
    )


def _verdict(
    request: AdvancedStatisticalValidatorInput,
    normality: list[NormalityCheck],
    bf: VarianceCheck,
    welch: TTest,
    student: TTest,
    mwu: MannWhitney,
    diff: float,
) -> Verdict:
    reasons: list[str] = []
    trust_t = True
    for check in normality:
        if check.n >= CLT_N:
            extra = "" if check.looks_normal in (True, None) else " although Shapiro–Wilk rejects normality"
            reasons.append(f"{check.arm}: n = {check.n} ≥ {CLT_N}, the mean is close to normal (CLT){extra}")
        elif check.looks_normal:
            reasons.append(f"{check.arm}: Shapiro–Wilk p = {check.p_value:.3g}, no evidence against normality")
        else:
            trust_t = False
            why = f"Shapiro–Wilk p = {check.p_value:.3g}" if check.p_value is not None else check.note
            reasons.append(f"{check.arm}: small sample (n = {check.n}) and normality not supported ({why})")
    if bf.equal_variances is False:
        reasons.append(f"variances differ (Brown–Forsythe p = {bf.p_value:.3g}): trust Welch, not Student's t")
    elif bf.equal_variances:
        reasons.append(f"no evidence of unequal variances (Brown–Forsythe p = {bf.p_value:.3g}); Welch ≈ Student")
        if abs(welch.p_value - student.p_value) > 0.01:
            reasons.append(f"Welch p = {welch.p_value:.3g} and Student p = {student.p_value:.3g} still differ")
    else:
        reasons.append(f"equal variances not assessable ({bf.note}); Welch does not need them")
    recommended: Literal["welch_t", "mann_whitney_u"] = "welch_t" if trust_t else "mann_whitney_u"
    p = welch.p_value if trust_t else mwu.p_value
    alpha = request.alpha
    significant = p < alpha
    agree = (welch.p_value < alpha) == (mwu.p_value < alpha)
    if not agree:
        reasons.append(
            f"Welch (p = {welch.p_value:.3g}) and Mann–Whitney (p = {mwu.p_value:.3g}) disagree at alpha = {alpha}"
        )
    name = "Welch's t-test" if trust_t else "the Mann–Whitney U test"
    direction = {"two-sided": "differs from", "greater": "exceeds", "less": "is below"}[request.alternative]
    summary = (
        f"Trust {name}. Treatment − control = {diff:.4g} "
        f"({request.confidence_level * 100:g}% Welch CI {welch.ci_low:.4g} to {welch.ci_high:.4g}); "
        f"p = {p:.3g}: {'evidence' if significant else 'no significant evidence'} at alpha = {alpha} "
        f"that the treatment {direction} the control."
    )
    return Verdict(
        recommended_test=recommended,
        p_value=p,
        significant=significant,
        tests_agree=agree,
        reasons=reasons,
        summary=summary,
    )


def _multiple_testing(
    request: AdvancedStatisticalValidatorInput, verdict: Verdict, welch: TTest, mwu: MannWhitney
) -> MultipleTesting | None:
    if not request.p_values:
        return None  # no family to correct over
    labels = list(request.p_value_labels or [f"p_values[{i}]" for i in range(len(request.p_values))])
    values = list(request.p_values)
    primary = request.family_primary
    if primary == "recommended":
        primary = verdict.recommended_test
    if primary != "none":
        labels.insert(0, f"this comparison ({primary})")
        values.insert(0, welch.p_value if primary == "welch_t" else mwu.p_value)
    p = np.asarray(values)
    adjusted = {m: adjust_p_values(p, m) for m in CORRECTION_METHODS}
    return MultipleTesting(
        labels=labels,
        p_values=p.tolist(),
        adjusted={m: a.tolist() for m, a in adjusted.items()},
        rejected={m: (a <= request.alpha).tolist() for m, a in adjusted.items()},
        alpha=request.alpha,
    )


def _ratio(num: float, den: float) -> float | None:
    """num / den, or None when it is undefined or overflows."""
    if den <= 0.0:
        return None
    value = num / den
    return value if math.isfinite(value) else None


def _load(request: AdvancedStatisticalValidatorInput, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    arms = []
    for field in ("control", "treatment"):
        x = load_numbers(getattr(request, field), ctx.data_dir, field=field)
        if x.size < 2:
            raise InvalidInput(field, f"needs at least 2 values; got {x.size}")
        if x.size > MAX_SAMPLE:
            raise InvalidInput(field, f"at most {MAX_SAMPLE} values; got {x.size}")
        if np.abs(x).max() > MAX_ABS_VALUE:
            raise InvalidInput(field, f"values must lie within ±{MAX_ABS_VALUE:g}; rescale the data")
        arms.append(x)
    c, t = arms
    if np.ptp(c) == 0 and np.ptp(t) == 0:
        raise InvalidInput(
            "control, treatment",
            "both arms have zero variance (every value equal within each arm): no test or effect size is defined",
        )
    if request.n_bootstrap * (c.size + t.size) > MAX_BOOTSTRAP_DRAWS:
        allowed = MAX_BOOTSTRAP_DRAWS // (c.size + t.size)
        advice = f"use n_bootstrap ≤ {allowed} (or 0 to skip)" if allowed >= 100 else "use n_bootstrap = 0 (skip)"
        raise InvalidInput(
            "n_bootstrap",
            f"n_bootstrap × (n_control + n_treatment) must be ≤ {MAX_BOOTSTRAP_DRAWS}; "
            f"with {c.size + t.size} values {advice}",
        )
    return c, t


@component(
    "AdvancedStatisticalValidator",
    tier="tier3",
    capabilities=["hypothesis_testing", "effect_size", "power_analysis", "multiple_testing", "bootstrap"],
    example={
        "control": [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0],
        "treatment": [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4],
        "alternative": "two-sided",
        "alpha": 0.05,
        "n_bootstrap": 2000,
        "p_values": [0.01, 0.04, 0.2],
        "seed": 7,
    },
)
def advanced_statistical_validator(
    request: AdvancedStatisticalValidatorInput, ctx: RunContext
) -> AdvancedStatisticalValidatorOutput:
    """Control vs treatment: Welch t, Mann–Whitney, assumption checks, effect sizes, bootstrap, power, corrections.

    Welch's t-test (Welch–Satterthwaite df) with Student's t for reference; Mann–Whitney U (exact or normal
    approximation with tie and continuity corrections, stated in the output); Shapiro–Wilk per arm and
    Levene/Brown–Forsythe with a plain-language verdict on which test to trust; Cohen's d and Hedges' g
    (noncentral-t or normal interval) and Cliff's delta; a seeded percentile and BCa bootstrap interval of the
    mean difference; power of the design and the minimum detectable effect; Bonferroni, Holm,
    Benjamini–Hochberg and Benjamini–Yekutieli over `p_values`. Differences are treatment − control.
    Samples with fewer than 2 values, or with zero variance in both arms, are rejected with 422.
    """
    c, t = _load(request, ctx)
    n1, n2 = c.size, t.size
    v1, v2 = float(c.var(ddof=1)), float(t.var(ddof=1))
    diff = float(t.mean() - c.mean())
    conf = request.confidence_level

    a1, a2 = v1 / n1, v2 / n2
    sp = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    if a1 + a2 == 0.0 or sp == 0.0:
        raise InvalidInput("control, treatment", "both arms have a variance too small to represent (underflow)")
    if abs(diff) / sp > MAX_STANDARDIZED_EFFECT:
        raise InvalidInput(
            "control, treatment",
            f"the means are {abs(diff) / sp:.3g} pooled standard deviations apart (> {MAX_STANDARDIZED_EFFECT:g}): "
            "the within-arm spread is numerically nil, so no test or interval is meaningful",
        )
    # Welch–Satterthwaite df written with the variance share r so that squaring tiny variances cannot underflow.
    r = a1 / (a1 + a2)
    welch_df = 1.0 / (r**2 / (n1 - 1) + (1.0 - r) ** 2 / (n2 - 1))
    welch = _t_test(diff, math.sqrt(a1 + a2), welch_df, request.alternative, conf)
    student = _t_test(diff, sp * math.sqrt(1.0 / n1 + 1.0 / n2), n1 + n2 - 2, request.alternative, conf)
    mwu = mann_whitney_u(
        c, t, alternative=request.alternative, method=request.mann_whitney_method, use_continuity=request.use_continuity
    )

    level = request.assumption_alpha
    normality = [_shapiro(c, "control", level), _shapiro(t, "treatment", level)]
    levene = _levene(c, t, "mean", level)
    bf = _levene(c, t, "median", level)
    verdict = _verdict(request, normality, bf, welch, student, mwu, diff)

    return AdvancedStatisticalValidatorOutput(
        alternative=request.alternative,
        alpha=request.alpha,
        confidence_level=conf,
        control=_summary(c),
        treatment=_summary(t),
        mean_difference=diff,
        welch=welch,
        student=student,
        mann_whitney=mwu,
        assumptions=Assumptions(normality=normality, levene=levene, brown_forsythe=bf, variance_ratio=_ratio(v2, v1)),
        verdict=verdict,
        effect_sizes=_effect_sizes(c, t, diff, sp, mwu, request.effect_size_ci, conf),
        bootstrap=_bootstrap(c, t, request.n_bootstrap, conf, request.seed) if request.n_bootstrap else None,
        power=_power(diff / sp, sp, n1, n2, request.alpha, request.target_power, request.alternative),
        multiple_testing=_multiple_testing(request, verdict, welch, mwu),
    )
