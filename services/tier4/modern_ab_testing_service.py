"""ModernABTestingService: a two-arm A/B test for a binary or a continuous metric.

Each arm arrives as raw values (inline or a file under data/), as counts (binary metric) or as sufficient
statistics (n, Σy, Σy² and, for CUPED, Σx, Σx², Σxy). Every form is reduced to the same per-arm moments first, so
the same data give the same result whichever form they come in. The statistics themselves live in
:mod:`services.stats.abtest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, Numbers, RunContext, Seed, component
from services.framework.arrays import load_numbers
from services.stats import abtest

__all__ = [
    "ABArm",
    "ModernABTestingServiceInput",
    "ModernABTestingServiceOutput",
    "modern_ab_testing_service",
]


class ABArm(ComponentInput):
    """One arm's data in exactly one form: ``values`` (+ ``covariate``), counts, or sufficient statistics."""

    values: Numbers | None = Field(None, description="the metric per unit (0/1 for a binary metric), inline or a file")
    covariate: Numbers | None = Field(
        None, description="pre-experiment covariate per unit, aligned with values; enables CUPED"
    )
    conversions: int | None = Field(None, ge=0, le=10**13, description="binary metric: units that converted")
    n: int | None = Field(None, ge=1, le=10**13, description="units in the arm (with conversions or with the sums)")
    sum: FiniteFloat | None = Field(None, description="Σy over the arm's units")
    sum_sq: FiniteFloat | None = Field(None, ge=0, description="Σy² (required for a continuous metric)")
    sum_x: FiniteFloat | None = Field(None, description="Σx of the covariate (CUPED)")
    sum_x_sq: FiniteFloat | None = Field(None, ge=0, description="Σx² of the covariate (CUPED)")
    sum_xy: FiniteFloat | None = Field(None, description="Σxy, metric times covariate (CUPED)")

    @model_validator(mode="after")
    def _one_form(self) -> ABArm:
        sums = (self.sum, self.sum_sq)
        cov_sums = (self.sum_x, self.sum_x_sq, self.sum_xy)
        if self.values is not None:
            if self.conversions is not None or self.n is not None or any(v is not None for v in (*sums, *cov_sums)):
                raise ValueError("give values (with an optional covariate) or counts or sums, not several forms")
        elif self.covariate is not None:
            raise ValueError("covariate needs values; with sufficient statistics give sum_x, sum_x_sq and sum_xy")
        elif self.conversions is not None:
            if self.n is None:
                raise ValueError("conversions need n, the number of units")
            if any(v is not None for v in (*sums, *cov_sums)):
                raise ValueError("give counts (conversions, n) or sums (n, sum, sum_sq), not both")
            if self.conversions > self.n:
                raise ValueError(f"conversions ({self.conversions}) cannot exceed n ({self.n})")
        elif self.sum is not None:
            if self.n is None:
                raise ValueError("sufficient statistics need n")
            given = sum(v is not None for v in cov_sums)
            if given not in (0, 3):
                raise ValueError("covariate sums need all of sum_x, sum_x_sq and sum_xy")
        else:
            raise ValueError("give values, counts (conversions and n) or sufficient statistics (n, sum, sum_sq)")
        return self

    @property
    def form(self) -> Literal["values", "counts", "stats"]:
        if self.values is not None:
            return "values"
        return "counts" if self.conversions is not None else "stats"


class ModernABTestingServiceInput(ComponentInput):
    """A two-arm test: the metric type, both arms, and the analysis options."""

    metric: Literal["binary", "continuous"] = Field(description="binary (conversions) or continuous metric")
    control: ABArm = Field(description="the control arm")
    treatment: ABArm = Field(description="the treatment arm")
    # 1e-9 is below any corrected level in use (genome-wide 5e-8); far smaller alphas push quantiles to inf.
    alpha: float = Field(0.05, ge=1e-9, lt=0.5, description="significance level; intervals are (1 - alpha)")
    prior_alpha: float = Field(1.0, gt=0, le=1e6, description="binary: Beta prior alpha (1 = uniform prior)")
    prior_beta: float = Field(1.0, gt=0, le=1e6, description="binary: Beta prior beta")
    bayes_method: Literal["exact", "monte_carlo"] = Field(
        "exact", description="P(T>C) and expected loss by numerical integration/closed form or seeded Monte Carlo"
    )
    monte_carlo_draws: int = Field(200_000, ge=1_000, le=10_000_000, description="draws for bayes_method=monte_carlo")
    cuped: bool = Field(True, description="apply CUPED when both arms carry a covariate")
    msprt_tau2: float | None = Field(
        None, gt=0, le=1e12, description="mSPRT mixing variance τ² in squared metric units; default (0.1·σ)²"
    )
    previous_sequential_p_value: float | None = Field(
        None, ge=0, le=1, description="always-valid p-value of the previous look (keeps the sequence monotone)"
    )
    # A share within 1e-6 of 0 or 1 is no experiment; at subnormal shares the chi-square statistic overflows.
    treatment_share: float = Field(
        0.5, ge=1e-6, le=1 - 1e-6, description="planned share of units in treatment (SRM check)"
    )
    srm_threshold: float = Field(0.001, gt=0, lt=1, description="flag a sample-ratio mismatch below this p-value")
    bootstrap_resamples: int = Field(
        0, ge=0, le=10_000, description="percentile bootstrap of the mean difference (0 = off; needs raw values)"
    )
    seed: Seed = 0


class ArmResult(ComponentOutput):
    form: Literal["values", "counts", "stats"]
    n: int
    mean: float = Field(description="mean of the metric (the conversion rate for a binary metric)")
    variance: float | None = Field(description="sample variance (ddof=1); None with a single unit")
    conversions: int | None
    ci_low: float | None
    ci_high: float | None
    interval: Literal["wilson", "t"]


class FixedHorizonResult(ComponentOutput):
    test: Literal["two_proportion_z", "welch_t"]
    difference: float = Field(description="treatment minus control")
    relative_lift: float | None = Field(description="difference / control mean; None when the control mean is 0")
    statistic: float | None
    df: float | None
    p_value: float
    ci_low: float
    ci_high: float
    interval: Literal["newcombe_hybrid_score", "welch_t"]
    note: str | None = None


class Posterior(ComponentOutput):
    distribution: Literal["beta", "normal"]
    a: float | None = Field(description="Beta alpha (beta posteriors only)")
    b: float | None = Field(description="Beta beta (beta posteriors only)")
    mean: float
    sd: float


class BayesianResult(ComponentOutput):
    model: Literal["beta_binomial", "normal"]
    method: Literal["exact", "monte_carlo"]
    prior: str
    treatment: Posterior
    control: Posterior
    prob_treatment_better: float
    expected_loss_treatment: float = Field(description="E[max(control - treatment, 0)]: the risk of shipping")
    expected_loss_control: float = Field(description="E[max(treatment - control, 0)]: the risk of keeping control")
    prob_se: float | None = Field(description="Monte Carlo standard error; None when exact")
    loss_treatment_se: float | None
    loss_control_se: float | None
    draws: int | None


class CupedResult(ComponentOutput):
    applied: bool
    reason: str
    theta: float | None = None
    variance_reduction: float | None = Field(None, description="1 - Var(adjusted difference) / Var(difference)")
    difference: float | None = None
    statistic: float | None = None
    df: float | None = None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class SequentialResult(ComponentOutput):
    method: Literal["msprt_normal_mixture"]
    estimate: Literal["two_proportion_z", "welch_t", "cuped_welch_t"]
    tau2: float | None
    tau2_source: Literal["given", "default_0.1_sd"] | None
    log_likelihood_ratio: float | None
    p_value: float = Field(description="always-valid p-value: min(previous, 1/Λ)")
    previous_p_value: float | None
    fixed_horizon_p_value: float
    note: str | None = None


class SrmResult(ComponentOutput):
    planned_treatment_share: float
    observed_treatment_share: float
    chi2: float
    p_value: float
    threshold: float
    mismatch: bool


class BootstrapResult(ComponentOutput):
    resamples: int
    method: str
    ci_low: float
    ci_high: float
    se: float


class ModernABTestingServiceOutput(ComponentOutput):
    metric: Literal["binary", "continuous"]
    alpha: float
    control: ArmResult
    treatment: ArmResult
    fixed_horizon: FixedHorizonResult
    bayesian: BayesianResult
    cuped: CupedResult
    sequential: SequentialResult
    srm: SrmResult
    bootstrap: BootstrapResult | None
    decision: Literal["ship_treatment", "keep_control", "inconclusive", "invalid_sample_ratio"]
    decided_by: Literal["two_proportion_z", "welch_t", "cuped_welch_t", "srm_check"]
    reasons: list[str]


@dataclass
class _ArmData:
    form: Literal["values", "counts", "stats"]
    moments: abtest.Moments
    successes: int | None
    co: abtest.CoMoments | None
    values: np.ndarray | None


def _binary_counts_from_npy(value: Numbers, ctx: RunContext, field: str) -> tuple[int, int] | None:
    """(conversions, n) straight from an integer or boolean .npy column, without converting it to float64.

    Compact 0/1 files (uint8, bool) are how conversions are stored at scale, and counting them in their own dtype
    is several times faster than loading them as float64. Anything else returns None and goes through
    ``load_numbers``, which also reports the errors.
    """
    if isinstance(value, list) or not value.path.lower().endswith(".npy"):
        return None
    path = ctx.data_path(value.path, field=f"{field}.path")
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return None
    if arr.ndim == 2 and isinstance(value.column, int) and value.column < arr.shape[1]:
        arr = arr[:, value.column]
    if arr.ndim != 1 or arr.size == 0 or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        return None
    if arr.dtype != np.bool_ and (arr.min() < 0 or arr.max() > 1):
        raise InvalidInput(field, "a binary metric takes only 0 and 1")
    return int(np.count_nonzero(arr)), int(arr.size)


def _load_arm(arm: ABArm, field: str, metric: str, ctx: RunContext) -> _ArmData:
    if metric == "binary" and arm.values is not None and arm.covariate is None:
        counts = _binary_counts_from_npy(arm.values, ctx, f"{field}.values")
        if counts is not None:
            k, n = counts
            return _ArmData("values", abtest.Moments(n, k / n, k * (n - k) / n), k, None, None)
    co: abtest.CoMoments | None = None
    values: np.ndarray | None = None
    successes: int | None = None
    if arm.values is not None:
        values = load_numbers(arm.values, ctx.data_dir, field=f"{field}.values")
        if arm.covariate is not None:
            covariate = load_numbers(arm.covariate, ctx.data_dir, field=f"{field}.covariate")
            if covariate.size != values.size:
                raise InvalidInput(
                    f"{field}.covariate", f"has {covariate.size} values; the metric has {values.size} (align them)"
                )
            co = abtest.CoMoments.from_values(values, covariate)
        if metric == "binary":
            if not np.all((values == 0.0) | (values == 1.0)):
                raise InvalidInput(f"{field}.values", "a binary metric takes only 0 and 1")
            successes = int(values.sum())
        if co is not None:
            moments = co.y
        elif successes is None:
            moments = abtest.Moments.from_values(values)
        else:
            moments = abtest.Moments(values.size, 0.0, 0.0)  # set below from the counts
    elif arm.conversions is not None:
        if metric != "binary":
            raise InvalidInput(f"{field}.conversions", "counts apply to a binary metric; give values or n, sum, sum_sq")
        successes = arm.conversions
        moments = abtest.Moments(0, 0.0, 0.0)  # set below from the counts
    else:
        n, total = int(arm.n or 0), float(arm.sum or 0.0)
        if metric == "binary":
            if total != round(total) or not 0 <= total <= n:
                raise InvalidInput(f"{field}.sum", f"a binary metric's sum counts conversions: 0..n; got {total}")
            if arm.sum_sq is not None and arm.sum_sq != total:
                raise InvalidInput(f"{field}.sum_sq", "equals sum for a 0/1 metric")
            successes = round(total)
            sum_sq = total
        elif arm.sum_sq is None:
            raise InvalidInput(f"{field}.sum_sq", "required for a continuous metric")
        else:
            sum_sq = arm.sum_sq
        if arm.sum_x is not None:
            co = abtest.CoMoments.from_sums(n, total, sum_sq, arm.sum_x, arm.sum_x_sq or 0.0, arm.sum_xy or 0.0)
        moments = abtest.Moments.from_sums(n, total, sum_sq)
    if successes is not None:
        # 0/1 data: the moments follow exactly from the counts, the same in every input form.
        n = moments.n if arm.conversions is None else int(arm.n or 0)
        moments = abtest.Moments(n, successes / n, successes * (n - successes) / n)
    if metric == "continuous" and moments.n < 2:
        raise InvalidInput(field, f"a continuous metric needs at least two units per arm; got {moments.n}")
    return _ArmData(arm.form, moments, successes, co, values)


def _arm_result(data: _ArmData, metric: str, alpha: float) -> ArmResult:
    m = data.moments
    variance = m.variance if m.n >= 2 else None
    if metric == "binary":
        lo, hi = abtest.wilson_interval(data.successes or 0, m.n, alpha)
        return ArmResult(
            form=data.form,
            n=m.n,
            mean=m.mean,
            variance=variance,
            conversions=data.successes,
            ci_low=lo,
            ci_high=hi,
            interval="wilson",
        )
    half = float(stats.t.ppf(1 - alpha / 2, m.n - 1)) * math.sqrt(m.variance / m.n)
    return ArmResult(
        form=data.form,
        n=m.n,
        mean=m.mean,
        variance=variance,
        conversions=None,
        ci_low=m.mean - half,
        ci_high=m.mean + half,
        interval="t",
    )


def _welch(t: abtest.Moments, c: abtest.Moments, alpha: float) -> abtest.WelchResult:
    try:
        return abtest.welch_test(t.n, t.mean, t.variance, c.n, c.mean, c.variance, alpha)
    except abtest.DegenerateData as exc:
        raise InvalidInput("control, treatment", f"{exc}; Welch's test is undefined") from exc


def _cuped(
    t: _ArmData, c: _ArmData, request: ModernABTestingServiceInput, plain_se: float
) -> tuple[CupedResult, abtest.WelchResult | None, abtest.CupedResult | None]:
    if (t.co is None) != (c.co is None):
        missing = "treatment" if t.co is None else "control"
        raise InvalidInput(f"{missing}.covariate", "give a covariate for both arms or for neither")
    if t.co is None or c.co is None:
        return CupedResult(applied=False, reason="no covariate given"), None, None
    if not request.cuped:
        return CupedResult(applied=False, reason="disabled (cuped=false)"), None, None
    try:
        adj = abtest.cuped(t.co, c.co)
        welch = abtest.welch_test(
            adj.treatment.n,
            adj.treatment.mean,
            adj.treatment.variance,
            adj.control.n,
            adj.control.mean,
            adj.control.variance,
            request.alpha,
        )
    except abtest.DegenerateData as exc:
        return CupedResult(applied=False, reason=f"not applied: {exc}"), None, None
    reduction = 1.0 - (welch.se / plain_se) ** 2
    out = CupedResult(
        applied=True,
        reason="theta = cov(y, x) / var(x) over both arms pooled",
        theta=adj.theta,
        variance_reduction=reduction,
        difference=welch.difference,
        statistic=welch.t,
        df=welch.df,
        p_value=welch.p_value,
        ci_low=welch.ci_low,
        ci_high=welch.ci_high,
    )
    return out, welch, adj


def _check_exact_beta(*posteriors: tuple[str, float, float]) -> None:
    # The quadrature of abtest.beta_compare cannot follow a density's pole at 0 or 1 (a shape below 1): it
    # overflows or returns NaN. A shape below 1 needs a prior below 1 and no (or only) conversions in that arm.
    for arm, a, b in posteriors:
        if min(a, b) < 1.0:
            field = "prior_alpha" if a < 1.0 else "prior_beta"
            raise InvalidInput(
                field,
                f"bayes_method=exact needs Beta posteriors with both parameters ≥ 1; the {arm} arm's is "
                f"Beta({a:.6g}, {b:.6g}): use bayes_method=monte_carlo, or {field} ≥ 1",
            )


def _bayesian(
    request: ModernABTestingServiceInput,
    t: _ArmData,
    c: _ArmData,
    adjusted: abtest.CupedResult | None,
    rng: np.random.Generator,
) -> BayesianResult:
    mc = request.bayes_method == "monte_carlo"
    if request.metric == "binary":
        a0, b0 = request.prior_alpha, request.prior_beta
        nt, nc = t.moments.n, c.moments.n
        kt, kc = t.successes or 0, c.successes or 0
        # n − k first: (b0 + n) − k loses a small b0 when n is large.
        at, bt, ac, bc = a0 + kt, b0 + (nt - kt), a0 + kc, b0 + (nc - kc)
        if mc:
            cmp = abtest.monte_carlo_beta(at, bt, ac, bc, request.monte_carlo_draws, rng)
        else:
            _check_exact_beta(("treatment", at, bt), ("control", ac, bc))
            cmp = abtest.beta_compare(at, bt, ac, bc)

        def beta_post(a: float, b: float) -> Posterior:
            sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
            return Posterior(distribution="beta", a=a, b=b, mean=a / (a + b), sd=sd)

        post_t, post_c = beta_post(at, bt), beta_post(ac, bc)
        model, prior = "beta_binomial", f"Beta({a0:g}, {b0:g}) on each arm's rate"
    else:
        mt, mc_ = (adjusted.treatment, adjusted.control) if adjusted else (t.moments, c.moments)
        sd_t, sd_c = math.sqrt(mt.variance / mt.n), math.sqrt(mc_.variance / mc_.n)
        post_t = Posterior(distribution="normal", a=None, b=None, mean=mt.mean, sd=sd_t)
        post_c = Posterior(distribution="normal", a=None, b=None, mean=mc_.mean, sd=sd_c)
        if mc:
            cmp = abtest.monte_carlo_normal(mt.mean, sd_t, mc_.mean, sd_c, request.monte_carlo_draws, rng)
        else:
            diff, sd = mt.mean - mc_.mean, math.hypot(sd_t, sd_c)
            lt, lc = abtest.normal_expected_loss(diff, sd)
            cmp = abtest.PosteriorComparison(abtest.normal_prob_greater(diff, sd), lt, lc)
        model = "normal"
        prior = "flat prior on each arm's mean; Normal(mean, s²/n) posteriors" + (
            " of the CUPED-adjusted metric" if adjusted else ""
        )
    return BayesianResult(
        model=model,
        method=request.bayes_method,
        prior=prior,
        treatment=post_t,
        control=post_c,
        prob_treatment_better=cmp.prob_treatment_better,
        expected_loss_treatment=cmp.expected_loss_treatment,
        expected_loss_control=cmp.expected_loss_control,
        prob_se=cmp.prob_se,
        loss_treatment_se=cmp.loss_treatment_se,
        loss_control_se=cmp.loss_control_se,
        draws=request.monte_carlo_draws if mc else None,
    )


Estimate = Literal["two_proportion_z", "welch_t", "cuped_welch_t"]
Decision = Literal["ship_treatment", "keep_control", "inconclusive", "invalid_sample_ratio"]


@dataclass(frozen=True)
class _Primary:
    """The estimate the decision and the sequential test use, with its variance and the metric's variance."""

    test: Estimate
    p_value: float
    difference: float
    variance: float  # of the difference
    sigma2: float  # pooled per-unit variance of the metric (scales the default mSPRT τ²)
    ci: tuple[float, float]


def _fixed_horizon(
    request: ModernABTestingServiceInput, t: _ArmData, c: _ArmData
) -> tuple[FixedHorizonResult, _Primary, float]:
    """The fixed-horizon test, the primary estimate, and the unpooled standard error of the difference."""
    if request.metric == "binary":
        kt, kc, nt, nc = t.successes or 0, c.successes or 0, t.moments.n, c.moments.n
        z = abtest.two_proportion_ztest(kt, nt, kc, nc)
        diff, lo, hi = abtest.newcombe_interval(kt, nt, kc, nc, request.alpha)
        fixed = FixedHorizonResult(
            test="two_proportion_z",
            difference=diff,
            relative_lift=diff / c.moments.mean if c.moments.mean > 0 else None,
            statistic=z.z,
            df=None,
            p_value=z.p_value,
            ci_low=lo,
            ci_high=hi,
            interval="newcombe_hybrid_score",
            note=None if z.z is not None else "no variation: every unit converted or none did, so z is undefined",
        )
        plain_se = math.sqrt(t.moments.variance / nt + c.moments.variance / nc) if nt > 1 and nc > 1 else 0.0
        sigma2 = z.pooled_rate * (1 - z.pooled_rate)
        return fixed, _Primary("two_proportion_z", z.p_value, diff, z.se_pooled**2, sigma2, (lo, hi)), plain_se
    w = _welch(t.moments, c.moments, request.alpha)
    fixed = FixedHorizonResult(
        test="welch_t",
        difference=w.difference,
        relative_lift=w.difference / c.moments.mean if c.moments.mean != 0 else None,
        statistic=w.t,
        df=w.df,
        p_value=w.p_value,
        ci_low=w.ci_low,
        ci_high=w.ci_high,
        interval="welch_t",
    )
    sigma2 = (t.moments.m2 + c.moments.m2) / (t.moments.n + c.moments.n - 2)
    return fixed, _Primary("welch_t", w.p_value, w.difference, w.se**2, sigma2, (w.ci_low, w.ci_high)), w.se


def _sequential(request: ModernABTestingServiceInput, primary: _Primary) -> SequentialResult:
    previous = request.previous_sequential_p_value
    start = 1.0 if previous is None else previous
    if not (primary.variance > 0.0 and primary.sigma2 > 0.0):
        return SequentialResult(
            method="msprt_normal_mixture",
            estimate=primary.test,
            tau2=request.msprt_tau2,
            tau2_source=None,
            log_likelihood_ratio=None,
            p_value=start,
            previous_p_value=previous,
            fixed_horizon_p_value=primary.p_value,
            note="the metric does not vary, so the data carry no evidence; the p-value stays where it was",
        )
    # Default mixing sd: a tenth of the metric's per-unit sd, the scale of effects an A/B test usually hunts.
    tau2 = request.msprt_tau2 if request.msprt_tau2 is not None else 0.01 * primary.sigma2
    log_lr = float(abtest.msprt_log_lr(primary.difference, primary.variance, tau2))
    p = float(abtest.msprt_p_values([primary.difference], [primary.variance], tau2, previous=start)[0])
    return SequentialResult(
        method="msprt_normal_mixture",
        estimate=primary.test,
        tau2=tau2,
        tau2_source="given" if request.msprt_tau2 is not None else "default_0.1_sd",
        log_likelihood_ratio=log_lr,
        p_value=p,
        previous_p_value=previous,
        fixed_horizon_p_value=primary.p_value,
    )


def _decide(
    request: ModernABTestingServiceInput,
    primary: _Primary,
    srm: SrmResult,
    bayes: BayesianResult,
    sequential: SequentialResult,
    cuped: CupedResult,
) -> tuple[Decision, Estimate | Literal["srm_check"], list[str]]:
    """The decision, what decided it, and the reasons in the order they matter."""
    alpha, (lo, hi) = request.alpha, primary.ci
    reasons: list[str] = []
    decision: Decision
    if srm.mismatch:
        decision = "invalid_sample_ratio"
        reasons.append(
            f"sample-ratio mismatch: treatment has {srm.observed_treatment_share:.4f} of units against a planned "
            f"{srm.planned_treatment_share:g} (chi-square p = {srm.p_value:.3g} < {srm.threshold:g}); the "
            "assignment or logging is broken, so no effect estimate can be trusted"
        )
    elif primary.p_value < alpha:
        decision = "ship_treatment" if primary.difference > 0 else "keep_control"
        reasons.append(
            f"{primary.test} p = {primary.p_value:.3g} < alpha = {alpha:g}: the difference "
            f"{primary.difference:+.4g} has a {1 - alpha:.0%} interval [{lo:.4g}, {hi:.4g}] that excludes 0"
        )
    else:
        decision = "inconclusive"
        reasons.append(
            f"{primary.test} p = {primary.p_value:.3g} ≥ alpha = {alpha:g}: the {1 - alpha:.0%} interval "
            f"[{lo:.4g}, {hi:.4g}] of the difference includes 0"
        )
    reasons.append(
        f"P(treatment better) = {bayes.prob_treatment_better:.4f}; expected loss of shipping treatment "
        f"{bayes.expected_loss_treatment:.3g}, of keeping control {bayes.expected_loss_control:.3g}"
    )
    if sequential.p_value < alpha:
        reasons.append(
            f"always-valid mSPRT p = {sequential.p_value:.3g} < alpha: the conclusion holds under continuous monitoring"
        )
    else:
        reasons.append(
            f"always-valid mSPRT p = {sequential.p_value:.3g} ≥ alpha: if the results were watched while data came "
            "in, keep collecting before acting"
        )
    if cuped.applied and cuped.variance_reduction is not None:
        reasons.append(f"CUPED reduced the variance of the difference by {cuped.variance_reduction:.1%}")
    return decision, "srm_check" if srm.mismatch else primary.test, reasons


def _bootstrap(
    request: ModernABTestingServiceInput, t: _ArmData, c: _ArmData, rng: np.random.Generator
) -> BootstrapResult | None:
    b = request.bootstrap_resamples
    if b == 0:
        return None
    rng_t, rng_c = rng.spawn(2)
    if request.metric == "binary":
        means_t = abtest.bootstrap_binary_means(t.successes or 0, t.moments.n, b, rng_t)
        means_c = abtest.bootstrap_binary_means(c.successes or 0, c.moments.n, b, rng_c)
        method = "percentile; the resampled conversion count is exactly Binomial(n, rate) for 0/1 data"
    else:
        for name, data in (("control", c), ("treatment", t)):
            if data.values is None:
                raise InvalidInput(f"{name}.values", "the bootstrap of a continuous metric needs raw values")
        assert t.values is not None and c.values is not None
        means_t = abtest.bootstrap_means(t.values, b, rng_t)
        means_c = abtest.bootstrap_means(c.values, b, rng_c)
        method = "percentile; per-resample sums from block-multinomial index draws (exact bootstrap)"
    diffs = means_t - means_c
    lo, hi = np.quantile(diffs, [request.alpha / 2, 1 - request.alpha / 2])
    return BootstrapResult(
        resamples=b, method=method, ci_low=float(lo), ci_high=float(hi), se=float(diffs.std(ddof=1)) if b > 1 else 0.0
    )


@component(
    "ModernABTestingService",
    tier="tier4",
    capabilities=["ab_testing", "hypothesis_testing", "bayesian_inference", "variance_reduction", "sequential_testing"],
    example={
        "metric": "continuous",
        "control": {
            "values": [10.2, 9.8, 11.1, 10.5, 9.9, 10.7, 10.1, 9.6, 10.4, 10.0],
            "covariate": [10.0, 9.9, 10.8, 10.2, 10.1, 10.5, 9.8, 9.7, 10.3, 10.1],
        },
        "treatment": {
            "values": [10.9, 10.4, 11.6, 11.2, 10.3, 11.0, 10.8, 10.2, 11.3, 10.6],
            "covariate": [10.1, 9.8, 10.9, 10.4, 9.9, 10.3, 10.2, 9.6, 10.5, 10.0],
        },
        "bootstrap_resamples": 500,
        "seed": 7,
    },
)
def modern_ab_testing_service(request: ModernABTestingServiceInput, ctx: RunContext) -> ModernABTestingServiceOutput:
    """A/B test: z-test or Welch, Wilson and Newcombe intervals, Bayesian P(T>C), CUPED, mSPRT and an SRM check.

    Binary metrics get the pooled two-proportion z-test, a Wilson interval per arm, Newcombe's hybrid score
    interval for the difference and Beta–Binomial posteriors (prior configurable). Continuous metrics get Welch's
    t-test and Normal posteriors; with a pre-experiment covariate on both arms, CUPED (theta = cov/var over both
    arms pooled) adjusts the estimate and the variance reduction is reported. P(T>C) and the expected loss of
    each decision come from numerical integration / closed forms or from seeded Monte Carlo with standard errors.
    The always-valid mSPRT p-value (normal mixture, τ² configurable) stands next to the fixed-horizon p-value, and
    a chi-square test flags a sample-ratio mismatch against the planned allocation. Arms may be given as raw
    values (inline or a .npy/.csv/.json file under data/), counts, or sufficient statistics; the result is the
    same whichever form the same data come in.
    """
    t = _load_arm(request.treatment, "treatment", request.metric, ctx)
    c = _load_arm(request.control, "control", request.metric, ctx)
    rng_bayes, rng_boot = np.random.default_rng(request.seed).spawn(2)
    fixed, primary, plain_se = _fixed_horizon(request, t, c)
    if plain_se > 0:
        cuped_out, cuped_welch, adjusted = _cuped(t, c, request, plain_se)
    else:
        cuped_out, cuped_welch, adjusted = CupedResult(applied=False, reason="the metric does not vary"), None, None
    if cuped_welch is not None and adjusted is not None:
        pooled = (adjusted.treatment.m2 + adjusted.control.m2) / (t.moments.n + c.moments.n - 2)
        primary = _Primary(
            "cuped_welch_t",
            cuped_welch.p_value,
            cuped_welch.difference,
            cuped_welch.se**2,
            pooled,
            (cuped_welch.ci_low, cuped_welch.ci_high),
        )
    bayes = _bayesian(request, t, c, adjusted if request.metric == "continuous" else None, rng_bayes)
    sequential = _sequential(request, primary)

    n_t, n_c = t.moments.n, c.moments.n
    chi2, p_srm = abtest.srm_test([n_c, n_t], [1 - request.treatment_share, request.treatment_share])
    srm = SrmResult(
        planned_treatment_share=request.treatment_share,
        observed_treatment_share=n_t / (n_t + n_c),
        chi2=chi2,
        p_value=p_srm,
        threshold=request.srm_threshold,
        mismatch=p_srm < request.srm_threshold,
    )
    decision, decided_by, reasons = _decide(request, primary, srm, bayes, sequential, cuped_out)
    if fixed.note:
        reasons.append(fixed.note)
    return ModernABTestingServiceOutput(
        metric=request.metric,
        alpha=request.alpha,
        control=_arm_result(c, request.metric, request.alpha),
        treatment=_arm_result(t, request.metric, request.alpha),
        fixed_horizon=fixed,
        bayesian=bayes,
        cuped=cuped_out,
        sequential=sequential,
        srm=srm,
        bootstrap=_bootstrap(request, t, c, rng_boot),
        decision=decision,
        decided_by=decided_by,
        reasons=reasons,
    )
