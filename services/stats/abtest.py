"""A/B-test statistics on numbers and numpy arrays: pure functions, no I/O.

Conventions: "t" is the treatment arm and "c" the control arm; a difference is always ``t - c``. Functions raise
:class:`DegenerateData` (a ``ValueError``) when the data do not define the statistic, so a caller can name the field
at fault instead of returning NaN.

Contents:

* running moments — :class:`Moments`, :class:`CoMoments` (values, sufficient statistics, Chan's parallel merge),
  :func:`merge_moments`, :func:`group_moments`;
* proportions — :func:`wilson_interval`, :func:`newcombe_interval` (hybrid score), :func:`two_proportion_ztest`;
* means — :func:`welch_test` from sufficient statistics, :func:`cohens_d`, :func:`welch_power`;
* Bayesian — :func:`beta_compare`, :func:`beta_prob_greater`, :func:`beta_expected_loss` (integration),
  :func:`normal_prob_greater`, :func:`normal_expected_loss` (closed form), :func:`monte_carlo_beta`,
  :func:`monte_carlo_normal` (seeded, with standard errors);
* :func:`cuped` (theta = cov(Y, X) / var(X) on both arms pooled);
* :func:`msprt_log_lr`, :func:`msprt_p_values` — always-valid p-values (Johari et al. 2017);
* :func:`srm_test` — sample-ratio mismatch;
* :func:`bootstrap_means`, :func:`bootstrap_binary_means` — the nonparametric bootstrap of a mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

__all__ = [
    "CoMoments",
    "CupedResult",
    "DegenerateData",
    "Moments",
    "PosteriorComparison",
    "WelchResult",
    "ZTestResult",
    "beta_compare",
    "beta_expected_loss",
    "beta_prob_greater",
    "bootstrap_binary_means",
    "bootstrap_means",
    "cohens_d",
    "cuped",
    "group_moments",
    "merge_moments",
    "monte_carlo_beta",
    "monte_carlo_normal",
    "msprt_log_lr",
    "msprt_p_values",
    "newcombe_interval",
    "normal_expected_loss",
    "normal_prob_greater",
    "srm_test",
    "two_proportion_ztest",
    "welch_power",
    "welch_test",
    "wilson_interval",
]

FloatArray = NDArray[np.float64]


class DegenerateData(ValueError):
    """The data do not define the statistic (zero variance, too few observations, ...)."""


# --------------------------------------------------------------------------------------------------------------------
# Running moments

_EPS = float(np.finfo(np.float64).eps)


def _above_rounding(m2: ArrayLike, n: ArrayLike, mean: ArrayLike) -> FloatArray:
    """M2 with values below the rounding floor n·(4ε·|mean|)² set to exactly 0.

    A constant sample's deviations from its computed mean are rounding noise of about ε·|mean| each; without the
    floor, the same constant data would give M2 = 0 or M2 ≈ 1e-30 depending on how it was batched, and a Welch
    test on it would be defined or not by accident.
    """
    m2 = np.asarray(m2, dtype=np.float64)
    floor = np.asarray(n, dtype=np.float64) * (4.0 * _EPS * np.abs(np.asarray(mean, dtype=np.float64))) ** 2
    return np.asarray(np.where(m2 <= floor, 0.0, m2), dtype=np.float64)


def _above_cancellation(m2: float, total_sq: float) -> float:
    """M2 = Σx² - (Σx)²/n is exact only to about ε·Σx²; anything below that is rounding."""
    return 0.0 if m2 <= 8.0 * _EPS * abs(total_sq) else m2


def merge_moments(
    n_a: ArrayLike, mean_a: ArrayLike, m2_a: ArrayLike, n_b: ArrayLike, mean_b: ArrayLike, m2_b: ArrayLike
) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations), elementwise.

    Numerically stable: it never forms Σx², so merging many batches loses no more precision than one pass of
    Welford's update.
    """
    na, nb = np.asarray(n_a, dtype=np.int64), np.asarray(n_b, dtype=np.int64)
    ma, mb = np.asarray(mean_a, dtype=np.float64), np.asarray(mean_b, dtype=np.float64)
    n = na + nb
    safe = np.maximum(n, 1).astype(np.float64)
    delta = mb - ma
    mean = ma + delta * (nb / safe)
    m2 = np.asarray(m2_a, dtype=np.float64) + np.asarray(m2_b, dtype=np.float64) + delta * delta * (na * (nb / safe))
    return n, mean, _above_rounding(m2, n, mean)


def group_moments(codes: ArrayLike, values: ArrayLike, k: int) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
    """(count, mean, sum of squared deviations) of ``values`` per group code in ``0..k-1``, in two passes."""
    codes = np.asarray(codes, dtype=np.intp)
    values = np.asarray(values, dtype=np.float64)
    n = np.bincount(codes, minlength=k).astype(np.int64)
    sums = np.bincount(codes, weights=values, minlength=k)
    mean = np.divide(sums, n, out=np.zeros(k), where=n > 0)
    dev = values - mean[codes]
    m2 = np.bincount(codes, weights=dev * dev, minlength=k)
    return n, mean, _above_rounding(m2, n, mean)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of one sample."""

    n: int
    mean: float
    m2: float

    @classmethod
    def from_values(cls, values: ArrayLike) -> Moments:
        """Two-pass moments of raw values."""
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return cls(0, 0.0, 0.0)
        mean = float(x.mean())
        dev = x - mean
        return cls(int(x.size), mean, float(_above_rounding(np.dot(dev, dev), x.size, mean)))

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Moments:
        """Moments from sufficient statistics ``n, Σx, Σx²`` (M2 clipped at 0 against rounding)."""
        if n < 1:
            raise DegenerateData("n must be at least 1")
        mean = total / n
        m2 = max(float(total_sq) - float(total) * mean, 0.0)
        return cls(int(n), float(mean), _above_cancellation(m2, total_sq))

    @property
    def total(self) -> float:
        return self.n * self.mean

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN below two observations."""
        return self.m2 / (self.n - 1) if self.n >= 2 else math.nan

    def merge(self, other: Moments) -> Moments:
        """The moments of both samples together (Chan's merge)."""
        n, mean, m2 = merge_moments(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        return Moments(int(n), float(mean), float(m2))


@dataclass(frozen=True)
class CoMoments:
    """Moments of a metric ``y`` and a covariate ``x`` with their co-moment Σ(x - x̄)(y - ȳ)."""

    n: int
    mean_y: float
    m2_y: float
    mean_x: float
    m2_x: float
    c_xy: float

    @classmethod
    def from_values(cls, y: ArrayLike, x: ArrayLike) -> CoMoments:
        ya, xa = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
        if ya.shape != xa.shape:
            raise DegenerateData(f"metric and covariate differ in length ({ya.size} vs {xa.size})")
        my, mx = float(ya.mean()), float(xa.mean())
        dy, dx = ya - my, xa - mx
        m2y = float(_above_rounding(np.dot(dy, dy), ya.size, my))
        m2x = float(_above_rounding(np.dot(dx, dx), xa.size, mx))
        return cls(int(ya.size), my, m2y, mx, m2x, float(np.dot(dx, dy)) if m2y and m2x else 0.0)

    @classmethod
    def from_sums(cls, n: int, sy: float, syy: float, sx: float, sxx: float, sxy: float) -> CoMoments:
        """From ``n, Σy, Σy², Σx, Σx², Σxy``."""
        if n < 1:
            raise DegenerateData("n must be at least 1")
        my, mx = sy / n, sx / n
        m2y = _above_cancellation(max(syy - sy * my, 0.0), syy)
        m2x = _above_cancellation(max(sxx - sx * mx, 0.0), sxx)
        return cls(int(n), my, m2y, mx, m2x, sxy - sx * my if m2y and m2x else 0.0)

    @property
    def y(self) -> Moments:
        return Moments(self.n, self.mean_y, self.m2_y)

    def merge(self, other: CoMoments) -> CoMoments:
        n = self.n + other.n
        dy, dx = other.mean_y - self.mean_y, other.mean_x - self.mean_x
        w = self.n * other.n / n
        return CoMoments(
            n,
            self.mean_y + dy * other.n / n,
            self.m2_y + other.m2_y + dy * dy * w,
            self.mean_x + dx * other.n / n,
            self.m2_x + other.m2_x + dx * dx * w,
            self.c_xy + other.c_xy + dx * dy * w,
        )


# --------------------------------------------------------------------------------------------------------------------
# Proportions


def _z(alpha: float) -> float:
    return float(special.ndtri(1.0 - alpha / 2.0))


def wilson_interval(successes: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion (no continuity correction)."""
    if n < 1:
        raise DegenerateData("n must be at least 1")
    z = _z(alpha)
    p = successes / n
    z2n = z * z / n
    denom = 1.0 + z2n
    center = (p + z2n / 2.0) / denom
    half = z * math.sqrt(max(p * (1.0 - p), 0.0) / n + z2n / (4.0 * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def newcombe_interval(
    successes_t: float, n_t: int, successes_c: float, n_c: int, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval (method 10) for ``p_t - p_c``; returns (difference, low, high)."""
    p_t, p_c = successes_t / n_t, successes_c / n_c
    lo_t, hi_t = wilson_interval(successes_t, n_t, alpha)
    lo_c, hi_c = wilson_interval(successes_c, n_c, alpha)
    diff = p_t - p_c
    low = diff - math.sqrt((p_t - lo_t) ** 2 + (hi_c - p_c) ** 2)
    high = diff + math.sqrt((hi_t - p_t) ** 2 + (p_c - lo_c) ** 2)
    return diff, max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class ZTestResult:
    """Pooled two-proportion z-test; ``z`` is None when the pooled rate is 0 or 1 (no variation at all)."""

    difference: float
    z: float | None
    p_value: float
    pooled_rate: float
    se_pooled: float


def two_proportion_ztest(successes_t: float, n_t: int, successes_c: float, n_c: int) -> ZTestResult:
    """Two-sided pooled z-test of ``p_t = p_c``.

    When every unit converted or none did, both rates are equal and the test has no variance: z is undefined
    and the p-value is 1 (the data show no difference).
    """
    p_t, p_c = successes_t / n_t, successes_c / n_c
    pooled = (successes_t + successes_c) / (n_t + n_c)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_t + 1.0 / n_c))
    if se == 0.0:
        return ZTestResult(p_t - p_c, None, 1.0, pooled, 0.0)
    z = (p_t - p_c) / se
    return ZTestResult(p_t - p_c, z, float(2.0 * special.ndtr(-abs(z))), pooled, se)


# --------------------------------------------------------------------------------------------------------------------
# Means


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test for ``mean_t - mean_c`` with its (1 - alpha) interval."""

    difference: float
    se: float
    t: float
    df: float
    p_value: float
    ci_low: float
    ci_high: float


def welch_test(
    n_t: int, mean_t: float, var_t: float, n_c: int, mean_c: float, var_c: float, alpha: float = 0.05
) -> WelchResult:
    """Two-sided Welch t-test from per-arm count, mean and sample variance (ddof=1)."""
    if n_t < 2 or n_c < 2:
        raise DegenerateData("each arm needs at least two observations")
    vt, vc = var_t / n_t, var_c / n_c
    se2 = vt + vc
    if not se2 > 0.0:
        raise DegenerateData("the metric has zero variance in both arms")
    se = math.sqrt(se2)
    # Welch–Satterthwaite on the variances scaled by the larger: the same value, without underflow for tiny ones.
    a, b = vt / max(vt, vc), vc / max(vt, vc)
    df = (a + b) ** 2 / (a * a / (n_t - 1) + b * b / (n_c - 1))
    diff = mean_t - mean_c
    t = diff / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    return WelchResult(diff, se, t, df, min(p, 1.0), diff - q * se, diff + q * se)


def cohens_d(n_t: int, mean_t: float, var_t: float, n_c: int, mean_c: float, var_c: float) -> float:
    """Standardised difference ``(mean_t - mean_c) / pooled sd``."""
    if n_t + n_c < 3:
        raise DegenerateData("needs at least three observations in all")
    pooled = ((n_t - 1) * var_t + (n_c - 1) * var_c) / (n_t + n_c - 2)
    if not pooled > 0.0:
        raise DegenerateData("the pooled standard deviation is zero")
    return (mean_t - mean_c) / math.sqrt(pooled)


def welch_power(se: float, df: float, mde: float, alpha: float = 0.05) -> float:
    """Power of the two-sided Welch test to detect a true difference ``mde`` at standard error ``se``.

    Uses the noncentral t with the Welch degrees of freedom (the normal limit beyond 10⁶ degrees of freedom, where
    the two agree to well under 1e-6 and scipy's noncentral t gets slow).
    """
    if not se > 0.0:
        raise DegenerateData("standard error is zero")
    ncp = abs(mde) / se
    if df > 1e6:
        z = _z(alpha)
        return float(special.ndtr(ncp - z) + special.ndtr(-ncp - z))
    q = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    return float(min(1.0, stats.nct.sf(q, df, ncp) + stats.nct.cdf(-q, df, ncp)))


# --------------------------------------------------------------------------------------------------------------------
# Bayesian comparisons


@dataclass(frozen=True)
class PosteriorComparison:
    """P(T > C) and the expected losses, with Monte Carlo standard errors (None when exact)."""

    prob_treatment_better: float
    expected_loss_treatment: float
    expected_loss_control: float
    prob_se: float | None = None
    loss_treatment_se: float | None = None
    loss_control_se: float | None = None


# Quadrature breakpoints: quantiles of each posterior, one per decade in the tails, so every panel holds little mass
# of either distribution and Gauss–Legendre on it is accurate even when one posterior is much narrower than the other.
_TAIL = np.logspace(-14, -1, 14)
_PROBS = np.unique(np.concatenate([_TAIL, np.linspace(0.1, 0.9, 9), 1.0 - _TAIL]))
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)


def _check_beta(*params: float) -> None:
    if not all(p > 0 for p in params):
        raise DegenerateData("Beta parameters must be positive")


def beta_compare(a_t: float, b_t: float, a_c: float, b_c: float) -> PosteriorComparison:
    """P(p_t > p_c) and both expected losses for independent Beta posteriors, by numerical integration.

    P(p_t > p_c) = ∫ f_t(x) F_c(x) dx. For the losses the inner integral is closed form,
    ∫_x^1 (y - x) f_c(y) dy = m_c·(1 - I_x(a_c + 1, b_c)) - x·(1 - I_x(a_c, b_c)), so only the outer integral
    over f_t is numerical; E[max(p_t - p_c, 0)] = (m_t - m_c) + E[max(p_c - p_t, 0)].
    """
    _check_beta(a_t, b_t, a_c, b_c)
    breaks = np.unique(
        np.clip(np.concatenate([stats.beta.ppf(_PROBS, a_t, b_t), stats.beta.ppf(_PROBS, a_c, b_c)]), 0.0, 1.0)
    )
    lo, hi = breaks[:-1], breaks[1:]
    half, mid = (hi - lo) / 2.0, (hi + lo) / 2.0
    x = (mid[:, None] + half[:, None] * _GL_X).ravel()
    wf = (half[:, None] * _GL_W).ravel() * stats.beta.pdf(x, a_t, b_t)
    upper_c = special.betaincc(a_c, b_c, x)  # P(p_c > x)
    m_t, m_c = a_t / (a_t + b_t), a_c / (a_c + b_c)
    prob = float(np.dot(wf, 1.0 - upper_c))
    inner = m_c * special.betaincc(a_c + 1.0, b_c, x) - x * upper_c
    loss_t = max(0.0, float(np.dot(wf, np.maximum(inner, 0.0))))
    return PosteriorComparison(min(1.0, max(0.0, prob)), loss_t, max(0.0, (m_t - m_c) + loss_t))


def beta_prob_greater(a_t: float, b_t: float, a_c: float, b_c: float) -> float:
    """P(p_t > p_c) for independent Beta(a_t, b_t) and Beta(a_c, b_c) (see :func:`beta_compare`)."""
    return beta_compare(a_t, b_t, a_c, b_c).prob_treatment_better


def beta_expected_loss(a_t: float, b_t: float, a_c: float, b_c: float) -> tuple[float, float]:
    """Expected loss (E[max(p_c - p_t, 0)], E[max(p_t - p_c, 0)]) of choosing treatment, control."""
    cmp = beta_compare(a_t, b_t, a_c, b_c)
    return cmp.expected_loss_treatment, cmp.expected_loss_control


def normal_prob_greater(mean_diff: float, sd_diff: float) -> float:
    """P(D > 0) for D ~ Normal(mean_diff, sd_diff²)."""
    if not sd_diff > 0.0:
        raise DegenerateData("posterior standard deviation is zero")
    return float(special.ndtr(mean_diff / sd_diff))


def normal_expected_loss(mean_diff: float, sd_diff: float) -> tuple[float, float]:
    """(E[max(-D, 0)], E[max(D, 0)]) for D = μ_t - μ_c ~ Normal(mean_diff, sd_diff²): losses of choosing t, c."""
    if not sd_diff > 0.0:
        raise DegenerateData("posterior standard deviation is zero")
    z = mean_diff / sd_diff
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    loss_t = sd_diff * pdf - mean_diff * float(special.ndtr(-z))
    loss_c = sd_diff * pdf + mean_diff * float(special.ndtr(z))
    return max(0.0, loss_t), max(0.0, loss_c)


def _monte_carlo(
    draw_pair: Callable[[int], tuple[FloatArray, FloatArray]], draws: int, chunk: int
) -> PosteriorComparison:
    wins = 0
    sums = np.zeros(4)  # Σ loss_t, Σ loss_t², Σ loss_c, Σ loss_c²
    done = 0
    while done < draws:
        size = min(chunk, draws - done)
        t, c = draw_pair(size)
        d = t - c
        wins += int(np.count_nonzero(d > 0))
        lt, lc = np.maximum(-d, 0.0), np.maximum(d, 0.0)
        sums += (lt.sum(), np.dot(lt, lt), lc.sum(), np.dot(lc, lc))
        done += size
    p = wins / draws
    mt, mc = sums[0] / draws, sums[2] / draws
    se_t = math.sqrt(max(sums[1] / draws - mt * mt, 0.0) / draws)
    se_c = math.sqrt(max(sums[3] / draws - mc * mc, 0.0) / draws)
    return PosteriorComparison(p, float(mt), float(mc), math.sqrt(p * (1.0 - p) / draws), se_t, se_c)


def monte_carlo_beta(
    a_t: float, b_t: float, a_c: float, b_c: float, draws: int, rng: np.random.Generator, chunk: int = 1_000_000
) -> PosteriorComparison:
    """Seeded Monte Carlo version of :func:`beta_prob_greater` and :func:`beta_expected_loss`."""
    _check_beta(a_t, b_t, a_c, b_c)
    return _monte_carlo(lambda size: (rng.beta(a_t, b_t, size), rng.beta(a_c, b_c, size)), draws, chunk)


def monte_carlo_normal(
    mean_t: float, sd_t: float, mean_c: float, sd_c: float, draws: int, rng: np.random.Generator, chunk: int = 1_000_000
) -> PosteriorComparison:
    """Seeded Monte Carlo for independent Normal posteriors of the two arm means."""
    return _monte_carlo(lambda size: (rng.normal(mean_t, sd_t, size), rng.normal(mean_c, sd_c, size)), draws, chunk)


# --------------------------------------------------------------------------------------------------------------------
# CUPED


@dataclass(frozen=True)
class CupedResult:
    """CUPED-adjusted moments of each arm: ``y - theta·(x - x̄)`` with x̄ the mean over both arms."""

    theta: float
    treatment: Moments
    control: Moments


def cuped(arm_t: CoMoments, arm_c: CoMoments) -> CupedResult:
    """CUPED (Deng et al. 2013) with theta = cov(Y, X) / var(X) computed on both arms pooled.

    Pooling uses Chan's merge of the co-moments, so theta equals the OLS slope of y on x over the concatenated
    data, and the adjusted per-arm variances follow from Var(y) - 2θ Cov(x, y) + θ² Var(x) without a second pass.
    """
    pooled = arm_t.merge(arm_c)
    if not pooled.m2_x > 0.0:
        raise DegenerateData("the covariate is constant over both arms")
    theta = pooled.c_xy / pooled.m2_x

    def adjust(arm: CoMoments) -> Moments:
        m2 = arm.m2_y - 2.0 * theta * arm.c_xy + theta * theta * arm.m2_x
        return Moments(arm.n, arm.mean_y - theta * (arm.mean_x - pooled.mean_x), max(m2, 0.0))

    return CupedResult(theta, adjust(arm_t), adjust(arm_c))


# --------------------------------------------------------------------------------------------------------------------
# Sequential testing


def msprt_log_lr(estimate: ArrayLike, variance: ArrayLike, tau2: float, theta0: float = 0.0) -> FloatArray:
    """log of the mixture likelihood ratio Λ for an estimate ~ Normal(θ, variance) and mixing θ ~ Normal(θ0, τ²).

    Λ = sqrt(V / (V + τ²)) · exp(τ² (d - θ0)² / (2 V (V + τ²))). With V = 2σ²/n this is Johari, Koomen, Pekelis &
    Walsh (2017), eq. for the two-sample normal mSPRT: sqrt(2σ²/(2σ² + nτ²)) exp(n²τ²(Ȳ - X̄ - θ0)² /
    (4σ²(2σ² + nτ²))); written in V it also covers unequal arm sizes.
    """
    d = np.asarray(estimate, dtype=np.float64) - theta0
    v = np.asarray(variance, dtype=np.float64)
    if not np.all(v > 0.0) or not tau2 > 0.0:
        raise DegenerateData("variance and tau² must be positive")
    return np.asarray(0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2)), dtype=np.float64)


def msprt_p_values(
    estimates: ArrayLike, variances: ArrayLike, tau2: float, theta0: float = 0.0, previous: float = 1.0
) -> FloatArray:
    """Always-valid p-values over successive looks: p_n = min(p_{n-1}, 1 / Λ_n), starting from ``previous``."""
    log_lr = np.atleast_1d(msprt_log_lr(estimates, variances, tau2, theta0))
    inverse = np.exp(-np.maximum(log_lr, 0.0))  # 1/Λ capped at 1; underflows quietly to 0
    return np.minimum.accumulate(np.minimum(inverse, previous))


# --------------------------------------------------------------------------------------------------------------------
# Sample-ratio mismatch, bootstrap


def srm_test(observed: ArrayLike, expected_shares: ArrayLike) -> tuple[float, float]:
    """Pearson chi-square of arm sizes against planned shares; returns (statistic, p-value)."""
    obs = np.asarray(observed, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    expected = obs.sum() * shares / shares.sum()
    stat = float(np.sum((obs - expected) ** 2 / expected))
    return stat, float(stats.chi2.sf(stat, obs.size - 1))


def bootstrap_binary_means(successes: int, n: int, resamples: int, rng: np.random.Generator) -> FloatArray:
    """Bootstrap means of a 0/1 sample: the resampled count is exactly Binomial(n, successes / n)."""
    return np.asarray(rng.binomial(n, successes / n, size=resamples) / n, dtype=np.float64)


_BLOCK = 16_384  # values per block: 128 KiB of float64, resident in L2 while its draws are gathered
_GROUP = 8  # resamples per random stream: streams, not threads, fix the result


def bootstrap_means(
    values: FloatArray, resamples: int, rng: np.random.Generator, *, workers: int | None = None
) -> FloatArray:
    """Nonparametric bootstrap of the mean: ``resamples`` means of n draws with replacement from ``values``.

    Method (exact, cache friendly): n uniform draws from n indices are distributed as (1) how many draws land in
    each contiguous block of the array — Multinomial(n, block sizes / n) — and (2) uniform offsets within each
    block. Drawing the block counts first and laying the offsets out block by block makes the gather sequential in
    memory instead of random, which halves the time of a plain ``values[rng.integers(0, n, n)]`` on large arrays;
    the mean does not depend on the order of draws, so the distribution is exactly the ordinary bootstrap's.

    Resamples are split into groups of eight with one child stream each (``rng.spawn``), so results depend on
    the seed only, not on the number of worker threads that compute the groups in parallel.
    """
    x = np.ascontiguousarray(values, dtype=np.float64)
    n = x.size
    if n == 0 or resamples < 1:
        raise DegenerateData("needs values and at least one resample")
    block = min(_BLOCK, n)
    starts = np.arange(0, n, block, dtype=np.intp)
    sizes = np.minimum(block, n - starts)
    shares = sizes / n
    tail = int(sizes[-1])
    groups = [(g, min(_GROUP, resamples - g)) for g in range(0, resamples, _GROUP)]
    streams = rng.spawn(len(groups))
    out = np.empty(resamples)

    def run(job: tuple[tuple[int, int], np.random.Generator]) -> None:
        (first, count), gen = job
        for r in range(first, first + count):
            counts = gen.multinomial(n, shares)
            idx = gen.integers(0, block, size=n, dtype=np.intp)
            if tail < block and counts[-1]:
                idx[n - counts[-1] :] = gen.integers(0, tail, size=counts[-1], dtype=np.intp)
            np.add(idx, np.repeat(starts, counts), out=idx)
            out[r] = x[idx].sum() / n

    jobs = list(zip(groups, streams, strict=True))
    workers = workers or min(4, os.cpu_count() or 1)
    if workers == 1 or n * resamples < 4_000_000:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bootstrap") as pool:
            list(pool.map(run, jobs))
    return out
