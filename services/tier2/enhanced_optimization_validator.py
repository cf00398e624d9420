"""Is the optimised variant really better than the baseline? Several tests, effect sizes, a Bayesian view, a verdict.

Everything is computed on the *oriented* improvement: ``mean(optimized) − mean(baseline)`` when higher is better,
``mean(baseline) − mean(optimized)`` when lower is better (internally both samples are negated), so a positive
improvement is always good and one-sided tests look in the improvement direction.

Tests: Welch t (one- and two-sided), Mann–Whitney U (normal approximation with tie and continuity correction), a
seeded permutation test of the mean difference (p = (b + 1)/(m + 1)), percentile and BCa bootstrap intervals.
Effect sizes: Cohen's d, Hedges' g (exact small-sample factor), Cliff's delta. Bayesian comparison: independent
Normal models with Jeffreys priors p(μ, σ²) ∝ 1/σ² per arm, so each mean's posterior is ``x̄ + s/√n · t_{n−1}``;
the posterior of the difference (Behrens–Fisher) is sampled by seeded Monte Carlo, and its Welch-type
approximation (a scaled t with Welch–Satterthwaite degrees of freedom) is given in closed form next to it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy import special, stats

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
    "EnhancedOptimizationValidatorInput",
    "EnhancedOptimizationValidatorOutput",
    "enhanced_optimization_validator",
]

# Resampling work is bounded: (resamples × pooled sample size) elements, done in batches of this many.
MAX_RESAMPLING_WORK = 200_000_000
_BATCH_ELEMENTS = 4_000_000
_SHAPIRO_MAX_N = 5000  # scipy's Shapiro–Wilk p-value is unreliable (and warns) beyond this
_LARGE_SAMPLE = 30
_DEFAULT_RESAMPLES = 2000
_MIN_RESAMPLES = 100
# Welch–Satterthwaite squares variances and the skewness cubes deviations: values beyond ±1e50 overflow them and a
# spread below 1e-50 underflows them. A metric that needs either is in the wrong unit.
_MAX_ABS = 1e50
_MIN_SPREAD = 1e-50


class EnhancedOptimizationValidatorInput(ComponentInput):
    """Baseline and optimised samples of one metric, and how to judge them."""

    baseline: Numbers = Field(description="metric values of the baseline (inline or a file under data/)")
    optimized: Numbers = Field(description="metric values of the optimised variant")
    direction: Literal["higher", "lower"] = Field("higher", description="whether higher or lower values are better")
    # 1e-9 is below any corrected level in use (genome-wide 5e-8); far smaller alphas push t quantiles to inf.
    alpha: float = Field(0.05, ge=1e-9, lt=0.5, description="significance level; intervals are at 1 − alpha")
    min_practical_effect: float = Field(
        0.0, ge=0, le=1e12, description="smallest improvement (metric units) worth shipping"
    )
    seed: Seed = 0
    n_permutations: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="permutation resamples (0: skip; else at least 100); default 2000, fewer if the data are large",
    )
    n_bootstrap: int | None = Field(
        None,
        ge=0,
        le=50_000,
        description="bootstrap resamples (0: skip; else at least 100); default 2000, fewer if the data are large",
    )
    n_posterior_draws: int = Field(20_000, ge=1000, le=1_000_000, description="Monte Carlo posterior draws")


class SampleSummary(ComponentOutput):
    n: int
    mean: float
    sd: float
    skewness: float | None = Field(description="None when the sample is constant")
    shapiro_p: float | None = Field(description=f"Shapiro–Wilk p; None when n < 3, n > {_SHAPIRO_MAX_N} or constant")


class ValidationWelch(ComponentOutput):
    t: float
    df: float
    standard_error: float
    p_one_sided: float = Field(description="H1: improvement > 0")
    p_two_sided: float
    ci: list[float] = Field(description="1 − alpha confidence interval of the improvement")


class ValidationMannWhitney(ComponentOutput):
    u: float = Field(description="U of the optimised sample (oriented): pairs where it wins, ties counting ½")
    z: float
    p_one_sided: float
    p_two_sided: float
    method: str


class ValidationPermutation(ComponentOutput):
    n_permutations: int
    p_one_sided: float = Field(description="(b + 1)/(m + 1), b = resamples with difference ≥ observed")
    p_two_sided: float = Field(description="twice the smaller one-sided p, capped at 1")
    mc_standard_error: float = Field(description="Monte Carlo standard error of the one-sided p")


class ValidationBootstrap(ComponentOutput):
    n_bootstrap: int
    confidence_level: float
    percentile: list[float]
    bca: list[float] | None = Field(description="None when the bias correction is infinite")
    bias_correction: float | None = Field(description="z0")
    acceleration: float = Field(description="a (jackknife)")
    note: str | None


class ValidationEffectSizes(ComponentOutput):
    cohens_d: float = Field(description="improvement / pooled SD")
    hedges_g: float = Field(description="d × exact small-sample correction J(n1 + n2 − 2)")
    cliffs_delta: float = Field(description="P(opt better) − P(opt worse) over all pairs")


class ValidationBayes(ComponentOutput):
    model: str
    posterior_mean: float
    credible_interval: list[float] = Field(description="equal-tailed 1 − alpha interval (Monte Carlo)")
    p_improvement: float = Field(description="P(improvement > 0 | data), Monte Carlo")
    p_practical: float = Field(description="P(improvement > min_practical_effect | data), Monte Carlo")
    mc_standard_error: float = Field(description="largest Monte Carlo standard error of the two probabilities")
    draws: int
    approx_df: float = Field(description="Welch–Satterthwaite df of the scaled-t approximation")
    approx_p_improvement: float
    approx_p_practical: float
    approx_credible_interval: list[float]


class ValidationChecks(ComponentOutput):
    statistically_significant: bool
    practically_significant: bool
    tests_agree: bool
    assumptions_ok: bool


class EnhancedOptimizationValidatorOutput(ComponentOutput):
    direction: Literal["higher", "lower"]
    baseline: SampleSummary
    optimized: SampleSummary
    improvement: float = Field(description="oriented difference of means: > 0 means the optimised variant is better")
    relative_improvement: float | None = Field(
        description="improvement / |baseline mean|; None if that mean is 0 or the ratio overflows"
    )
    welch: ValidationWelch
    mann_whitney: ValidationMannWhitney
    permutation: ValidationPermutation | None
    bootstrap: ValidationBootstrap | None
    effect_sizes: ValidationEffectSizes
    bayesian: ValidationBayes
    checks: ValidationChecks
    decision: Literal["accept", "reject"]
    reasons: list[str]
    notes: list[str] = Field(description="how the request was adapted (e.g. fewer resamples for large data)")


# ------------------------------------------------------------------------------------------------------ statistics


def _arm_summary(x: np.ndarray, sign: float) -> SampleSummary:
    raw = sign * x  # back to the caller's units
    centred = x - x.mean()
    m2 = float(np.mean(centred**2))
    skew = float(np.mean(centred**3) / m2**1.5) if m2 > 0 else None
    shapiro_p = None
    if 3 <= x.size <= _SHAPIRO_MAX_N and np.ptp(x) > 0:
        shapiro_p = float(stats.shapiro(x).pvalue)
    return SampleSummary(
        n=int(x.size),
        mean=float(raw.mean()),
        sd=float(x.std(ddof=1)),
        skewness=None if skew is None else sign * skew,
        shapiro_p=shapiro_p,
    )


def _relative(improvement: float, base_mean: float) -> float | None:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        ratio = float(np.float64(improvement) / abs(base_mean))
    # A (near-)zero baseline mean has no meaningful relative change; the ratio is then 0/0 or overflows.
    return ratio if np.isfinite(ratio) else None


def _welch(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[ValidationWelch, float, float]:
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    df = float((vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)))
    diff = float(x.mean() - y.mean())
    t = diff / se
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    result = ValidationWelch(
        t=t,
        df=df,
        standard_error=se,
        p_one_sided=float(stats.t.sf(t, df)),
        p_two_sided=float(min(1.0, 2 * stats.t.sf(abs(t), df))),
        ci=[diff - half, diff + half],
    )
    return result, se, df


def _mann_whitney(x: np.ndarray, y: np.ndarray) -> tuple[ValidationMannWhitney, float]:
    n1, n2 = x.size, y.size
    n = n1 + n2
    ranks = stats.rankdata(np.concatenate((x, y)))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    _, ties = np.unique(np.concatenate((x, y)), return_counts=True)
    tie_term = float(((ties.astype(np.float64) ** 3 - ties).sum()) / (n * (n - 1)))
    sd = float(np.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term)))
    mu = n1 * n2 / 2
    z_greater = (u1 - mu - 0.5) / sd
    u_max = max(u1, n1 * n2 - u1)
    result = ValidationMannWhitney(
        u=u1,
        z=(u1 - mu) / sd,
        p_one_sided=float(special.ndtr(-z_greater)),
        p_two_sided=float(min(1.0, 2 * special.ndtr(-(u_max - mu - 0.5) / sd))),
        method="normal approximation with tie correction and continuity correction",
    )
    # Cliff's delta from U (ties count ½): P(X > Y) − P(X < Y) = 2U/(n1 n2) − 1.
    return result, 2 * u1 / (n1 * n2) - 1


def _batches(total: int, row_len: int) -> list[int]:
    size = max(1, _BATCH_ELEMENTS // max(row_len, 1))
    return [min(size, total - start) for start in range(0, total, size)]


def _random_subset_sums(pooled: np.ndarray, k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of ``size`` uniformly random ``k``-subsets of ``pooled``.

    A permutation only decides which values form each group, so draw the subset as the k smallest of iid uniform
    keys: a partition per row, several times cheaper than shuffling the rows.
    """
    keys = rng.random((size, pooled.size))
    chosen = keys <= np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    tied = np.flatnonzero(chosen.sum(axis=1) != k)
    if tied.size:  # equal keys at the k-th place (probability ~ n / 2**53): choose exactly k
        chosen[tied] = False
        chosen[tied[:, None], np.argpartition(keys[tied], k - 1, axis=1)[:, :k]] = True
    return chosen.astype(np.float64) @ pooled


def _permutation(x: np.ndarray, y: np.ndarray, m: int, rng: np.random.Generator) -> ValidationPermutation:
    pooled = np.concatenate((x, y))
    n1, total = x.size, pooled.sum()
    observed = x.mean() - y.mean()
    # Same tolerance as scipy.stats.permutation_test so that ties with the observed value count.
    gamma = abs(1e-14 * observed)
    k = min(x.size, y.size)  # draw the smaller group; the other is the rest
    greater = less = 0
    for size in _batches(m, pooled.size):
        picked = _random_subset_sums(pooled, k, size, rng)
        sx = picked if k == n1 else total - picked
        diffs = sx / n1 - (total - sx) / y.size
        greater += int(np.count_nonzero(diffs >= observed - gamma))
        less += int(np.count_nonzero(diffs <= observed + gamma))
    p_greater = (greater + 1) / (m + 1)
    p_less = (less + 1) / (m + 1)
    return ValidationPermutation(
        n_permutations=m,
        p_one_sided=p_greater,
        p_two_sided=min(1.0, 2 * min(p_greater, p_less)),
        mc_standard_error=float(np.sqrt(p_greater * (1 - p_greater) / m)),
    )


def _resampled_means(x: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(b)
    start = 0
    for size in _batches(b, x.size):
        idx = rng.integers(0, x.size, size=(size, x.size))
        out[start : start + size] = x[idx].mean(axis=1)
        start += size
    return out


def _bootstrap(x: np.ndarray, y: np.ndarray, b: int, alpha: float, rng: np.random.Generator) -> ValidationBootstrap:
    boot = _resampled_means(x, b, rng) - _resampled_means(y, b, rng)
    observed = x.mean() - y.mean()
    percentile = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    # Jackknife acceleration for a difference of means, in closed form: the leave-one-out influence values are
    # x_i − x̄ for the optimised sample and −(y_j − ȳ) for the baseline (as scipy.stats.bootstrap combines samples).
    dx, dy = x - x.mean(), y - y.mean()
    num = (dx**3).sum() / x.size**3 - (dy**3).sum() / y.size**3
    den = (dx**2).sum() / x.size**2 + (dy**2).sum() / y.size**2
    accel = float(num / (6 * den**1.5)) if den > 0 else 0.0
    share = (np.count_nonzero(boot < observed) + np.count_nonzero(boot <= observed)) / (2 * b)
    bca = z0 = None
    note = None
    if 0 < share < 1:
        z0 = float(special.ndtri(share))
        ends = z0 + special.ndtri(np.array([alpha / 2, 1 - alpha / 2]))
        denominators = 1 - accel * ends
        if np.all(denominators > 0):
            levels = special.ndtr(z0 + ends / denominators)
            bca = np.percentile(boot, 100 * levels).tolist()
        else:
            note = "the acceleration is so large that the BCa adjustment is undefined; use the percentile interval"
    else:
        note = "every bootstrap difference lies on one side of the observed one: the BCa bias correction is infinite"
    return ValidationBootstrap(
        n_bootstrap=b,
        confidence_level=1 - alpha,
        percentile=percentile.tolist(),
        bca=bca,
        bias_correction=z0,
        acceleration=accel,
        note=note,
    )


def _bayesian(
    x: np.ndarray,
    y: np.ndarray,
    req: EnhancedOptimizationValidatorInput,
    se: float,
    df: float,
    rng: np.random.Generator,
) -> ValidationBayes:
    mpe, alpha, draws = req.min_practical_effect, req.alpha, req.n_posterior_draws
    diff = float(x.mean() - y.mean())
    # Jeffreys prior per arm: μ | data ~ x̄ + s/√n · t_{n−1}.
    mu_x = x.mean() + x.std(ddof=1) / np.sqrt(x.size) * rng.standard_t(x.size - 1, size=draws)
    mu_y = y.mean() + y.std(ddof=1) / np.sqrt(y.size) * rng.standard_t(y.size - 1, size=draws)
    post = mu_x - mu_y
    p_imp = float(np.mean(post > 0))
    p_prac = float(np.mean(post > mpe))
    mc_se = float(max(np.sqrt(p_imp * (1 - p_imp) / draws), np.sqrt(p_prac * (1 - p_prac) / draws)))
    q = stats.t.ppf(1 - alpha / 2, df)
    return ValidationBayes(
        model="independent Normal arms, Jeffreys prior p(μ, σ²) ∝ 1/σ² each; Behrens–Fisher posterior of the "
        "difference by Monte Carlo, with its Welch-type scaled-t approximation",
        posterior_mean=float(post.mean()),
        credible_interval=np.quantile(post, [alpha / 2, 1 - alpha / 2]).tolist(),
        p_improvement=p_imp,
        p_practical=p_prac,
        mc_standard_error=mc_se,
        draws=draws,
        approx_df=df,
        approx_p_improvement=float(stats.t.cdf(diff / se, df)),
        approx_p_practical=float(stats.t.cdf((diff - mpe) / se, df)),
        approx_credible_interval=[diff - q * se, diff + q * se],
    )


def _resamples(name: str, requested: int | None, size: int, notes: list[str]) -> int:
    """The number of resamples to draw: the caller's (checked against the work limit) or the bounded default."""
    if requested is not None:
        _check_work(name, requested, size)
        return requested
    fits = MAX_RESAMPLING_WORK // size
    if fits < _MIN_RESAMPLES:
        notes.append(f"{name}: skipped, fewer than {_MIN_RESAMPLES} resamples of {size} values fit the work limit")
        return 0
    if fits < _DEFAULT_RESAMPLES:
        notes.append(f"{name}: {fits} instead of {_DEFAULT_RESAMPLES} resamples to stay within the work limit")
    return min(fits, _DEFAULT_RESAMPLES)


def _check_work(name: str, resamples: int, size: int) -> None:
    if 0 < resamples < _MIN_RESAMPLES:
        raise InvalidInput(name, f"must be 0 (skip) or at least 100; got {resamples}")
    if resamples * size > MAX_RESAMPLING_WORK:
        raise InvalidInput(
            name,
            f"{resamples} resamples of {size} values exceed the work limit of {MAX_RESAMPLING_WORK:,} values; "
            f"use at most {MAX_RESAMPLING_WORK // size} (or 0 to skip)",
        )


# ------------------------------------------------------------------------------------------------------- component


@component(
    "EnhancedOptimizationValidator",
    tier="tier2",
    capabilities=["optimization_validation", "hypothesis_testing", "effect_size", "bayesian_inference"],
    example={
        "baseline": [0.61, 0.58, 0.64, 0.55, 0.6, 0.57, 0.63, 0.59, 0.62, 0.56, 0.6, 0.58],
        "optimized": [0.66, 0.69, 0.63, 0.71, 0.65, 0.68, 0.7, 0.64, 0.67, 0.72, 0.66, 0.69],
        "direction": "higher",
        "min_practical_effect": 0.02,
        "seed": 7,
        "n_permutations": 2000,
        "n_bootstrap": 2000,
    },
)
def enhanced_optimization_validator(
    request: EnhancedOptimizationValidatorInput, ctx: RunContext
) -> EnhancedOptimizationValidatorOutput:
    """Is the optimised variant really better than the baseline? Welch, Mann–Whitney, permutation, bootstrap, Bayes.

    Tests the improvement (optimised vs baseline, oriented so that positive is better) with Welch's t, Mann–Whitney
    U and a seeded permutation test of the mean difference; gives percentile and BCa bootstrap intervals, Cohen's d,
    Hedges' g and Cliff's delta, and a Bayesian comparison (Jeffreys-prior Normal arms: P(improvement > 0) and
    P(improvement > the minimum practical effect)). Accepts the optimisation only when the improvement is
    statistically significant, at least the minimum practical effect, and the tests agree; the reasons say why.
    """
    sign = 1.0 if request.direction == "higher" else -1.0
    x = sign * load_numbers(request.optimized, ctx.data_dir, field="optimized")
    y = sign * load_numbers(request.baseline, ctx.data_dir, field="baseline")
    for name, arr in (("baseline", y), ("optimized", x)):
        if arr.size < 2:
            raise InvalidInput(name, f"needs at least 2 values; got {arr.size}")
        if np.max(np.abs(arr)) > _MAX_ABS:
            raise InvalidInput(name, f"values must lie within ±{_MAX_ABS:g}; rescale the metric")
        if 0 < np.ptp(arr) < _MIN_SPREAD:
            raise InvalidInput(name, f"the values differ by less than {_MIN_SPREAD:g}; rescale the metric")
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        raise InvalidInput(
            "optimized", "optimized and baseline both have zero variance; the tests and intervals are undefined"
        )
    notes: list[str] = []
    n_permutations = _resamples("n_permutations", request.n_permutations, x.size + y.size, notes)
    n_bootstrap = _resamples("n_bootstrap", request.n_bootstrap, x.size + y.size, notes)
    alpha, mpe = request.alpha, request.min_practical_effect
    rng = np.random.default_rng(request.seed)

    improvement = float(x.mean() - y.mean())
    welch, se, df = _welch(x, y, alpha)
    mw, cliffs = _mann_whitney(x, y)
    permutation = _permutation(x, y, n_permutations, rng) if n_permutations else None
    bootstrap = _bootstrap(x, y, n_bootstrap, alpha, rng) if n_bootstrap else None
    bayes = _bayesian(x, y, request, se, df, rng)

    n1, n2 = x.size, y.size
    pooled_sd = float(np.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2)))
    d = improvement / pooled_sd
    dof = n1 + n2 - 2
    j = float(np.exp(special.gammaln(dof / 2) - special.gammaln((dof - 1) / 2)) / np.sqrt(dof / 2))
    effects = ValidationEffectSizes(cohens_d=d, hedges_g=d * j, cliffs_delta=float(cliffs))

    base_summary, opt_summary = _arm_summary(y, sign), _arm_summary(x, sign)
    base_mean = base_summary.mean
    reasons: list[str] = []

    significant = welch.p_one_sided < alpha
    reasons.append(
        f"Welch one-sided p = {welch.p_one_sided:.4g} {'<' if significant else '≥'} alpha = {alpha}: "
        + ("the improvement is statistically significant" if significant else "no significant improvement")
    )
    practical = improvement >= mpe and improvement > 0
    reasons.append(
        f"observed improvement {improvement:.4g} {'meets' if practical else 'falls short of'} the minimum practical "
        f"effect {mpe:g}; P(improvement > {mpe:g} | data) = {bayes.p_practical:.3f}"
    )
    agreements = {"Mann–Whitney": mw.p_one_sided < alpha}
    if permutation is not None:
        agreements["permutation"] = permutation.p_one_sided < alpha
    if bootstrap is not None:
        interval = bootstrap.bca or bootstrap.percentile
        agreements[f"bootstrap {'BCa' if bootstrap.bca else 'percentile'} interval"] = interval[0] > 0
    agreeing = [name for name, ok in agreements.items() if ok == significant]
    disagreeing = [name for name, ok in agreements.items() if ok != significant]
    tests_agree = not disagreeing
    if tests_agree:
        reasons.append(f"the other tests agree with Welch: {', '.join(agreeing)}")
    else:
        reasons.append(f"tests disagree with Welch: {', '.join(disagreeing)}")

    assumption_notes = []
    for name, arm in (("baseline", base_summary), ("optimized", opt_summary)):
        if arm.n < _LARGE_SAMPLE and arm.shapiro_p is not None and arm.shapiro_p < alpha:
            assumption_notes.append(
                f"{name} is small (n = {arm.n}) and not normal (Shapiro–Wilk p = {arm.shapiro_p:.3g})"
            )
        elif arm.n < _LARGE_SAMPLE and arm.shapiro_p is None:
            assumption_notes.append(f"{name} is small (n = {arm.n}) and its normality cannot be checked")
    assumptions_ok = not assumption_notes
    if assumptions_ok:
        reasons.append("assumptions: samples large enough or consistent with normality; Welch allows unequal variances")
    else:
        reasons.append("assumptions: " + "; ".join(assumption_notes) + " — rely on the rank and resampling tests")

    accepted = significant and practical and tests_agree
    reasons.insert(
        0,
        "accept: the optimised variant is better" if accepted else "reject: the improvement is not established",
    )
    return EnhancedOptimizationValidatorOutput(
        direction=request.direction,
        baseline=base_summary,
        optimized=opt_summary,
        improvement=improvement,
        relative_improvement=_relative(improvement, base_mean),
        welch=welch,
        mann_whitney=mw,
        permutation=permutation,
        bootstrap=bootstrap,
        effect_sizes=effects,
        bayesian=bayes,
        checks=ValidationChecks(
            statistically_significant=significant,
            practically_significant=practical,
            tests_agree=tests_agree,
            assumptions_ok=assumptions_ok,
        ),
        decision="accept" if accepted else "reject",
        reasons=reasons,
        notes=notes,
    )
