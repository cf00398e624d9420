"""Average treatment effects from observational or panel data, with diagnostics.

Estimators (all with a standard error, a normal-approximation CI and a two-sided p-value):

- **naive**: difference in means (Welch standard error), the unadjusted baseline.
- **did**: 2×2 difference-in-differences, OLS of ``outcome ~ treated + post + treated:post``; the
  interaction is the effect on the treated. HC1 standard errors, or cluster-robust CR1
  (``G/(G-1)·(n-1)/(n-k)``, as statsmodels and Stata) when ``cluster`` gives unit ids. A parallel-trends
  placebo re-runs the same regression on the pre-period rows with the last pre-period as a fake "post".
- **ipw**: inverse propensity weighting with normalised (Hájek) weights, ATE and ATT. The propensity score
  is a logit (or probit) fitted by our own Newton–Raphson; propensities are clipped to
  ``[c, 1-c]`` and the number clipped is reported. The standard error is the M-estimation sandwich of the
  stacked estimating equations (propensity score equations included), as Stata's ``teffects ipw``.
- **aipw**: augmented IPW (doubly robust), linear outcome model per arm + propensity; standard error from
  the influence function corrected for the estimation of both nuisance models (the same sandwich).
- **matching**: nearest-neighbour matching with replacement (Abadie–Imbens), M matches on the covariates
  (Mahalanobis or inverse-variance metric) or on the propensity score, every tie at the M-th distance
  included; optional regression bias correction (Abadie–Imbens 2011); ATE and ATT with the Abadie–Imbens
  (2006) population variance, σ²(x) being the sample variance of a row and its J nearest same-arm rows —
  the "AI robust" standard error of Stata's ``teffects nnmatch``. The bootstrap is not used: it is not
  valid for matching (Abadie–Imbens 2008). Matching SEs take the metric (and propensity) as fixed.

Diagnostics: standardised mean differences per covariate before and after weighting/matching (denominator
is always the unweighted pooled SD ``sqrt((s²_t + s²_c)/2)``, so the change shows mean differences only), a
permuted-treatment placebo (effect ≈ 0), an optional placebo outcome, the DiD pre-period placebo, and the
E-value of VanderWeele & Ding (2017) for the primary estimate (risk-ratio scale for a 0/1 outcome with IPW
or AIPW, otherwise the approximation ``RR ≈ exp(0.91·d)`` with ``d`` = effect / pooled outcome SD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints, model_validator
from scipy import sparse, special, stats
from sklearn.neighbors import KDTree

from mlmesh.errors import InvalidInput
from services.framework import (
    ComponentInput,
    ComponentOutput,
    FileRef,
    FiniteFloat,
    RunContext,
    Seed,
    component,
    load_numbers,
)

__all__ = [
    "CausalInferenceAnalyzerInput",
    "CausalInferenceAnalyzerOutput",
    "CovariateBalance",
    "CovariateFile",
    "DidSummary",
    "EffectEstimate",
    "MatchingSummary",
    "PlaceboResult",
    "PropensitySummary",
    "Sensitivity",
    "causal_inference_analyzer",
    "e_value",
]

MAX_ROWS = 100_000
MAX_COVARIATES = 50
_MAX_NEWTON_ITER = 100
# A fitted propensity this close to 0 or 1 means the covariates (quasi-)separate the arms.
_SEPARATION_EPS = 1e-9
# Matching: distances within this of the M-th one count as ties; bound on the tied pairs kept in memory.
_TIE_TOLERANCE = 1e-9
_SPARE_NEIGHBORS = 4
MAX_MATCH_PAIRS = 10_000_000
MATCHING_LOW_DIM = 5
MATCHING_MAX_ROWS_HIGH_DIM = 20_000
MATCHING_PLACEBO_MAX_ROWS = 10_000

Name = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Column = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_ROWS)] | FileRef
CovariateRow = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_COVARIATES)]
Method = Literal["did", "ipw", "aipw", "matching"]


class CovariateFile(ComponentInput):
    """Covariate columns of a CSV file under the data directory."""

    path: str = Field(min_length=1, max_length=1024, description="CSV path relative to data/")
    columns: list[Name | Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=MAX_COVARIATES, description="column names (or indices) to use as covariates"
    )


class CausalInferenceAnalyzerInput(ComponentInput):
    """Unit-level rows: outcome, treatment 0/1, covariates; optional period columns for DiD."""

    outcome: Column = Field(description="outcome per row (inline or a FileRef to a .npy/.csv/.json column)")
    treatment: Column = Field(description="treatment indicator per row, 0 or 1 (for DiD: the treated group)")
    covariates: (
        Annotated[list[CovariateRow], Field(min_length=1, max_length=MAX_ROWS)]
        | Annotated[dict[Name, Annotated[list[FiniteFloat], Field(max_length=MAX_ROWS)]], Field(max_length=50)]
        | CovariateFile
        | None
    ) = Field(
        default=None,
        description="pre-treatment covariates: rows (list of lists), named columns {name: values}, or CSV columns",
    )
    covariate_names: list[Name] | None = Field(
        default=None, max_length=MAX_COVARIATES, description="names for the columns of row-form covariates"
    )
    propensity_covariates: list[Name] | None = Field(
        default=None, min_length=1, max_length=MAX_COVARIATES, description="subset used by the propensity model"
    )
    outcome_covariates: list[Name] | None = Field(
        default=None, min_length=1, max_length=MAX_COVARIATES, description="subset used by the outcome models"
    )
    post: Column | None = Field(default=None, description="DiD: 1 for rows after the treatment started, else 0")
    time: Column | None = Field(default=None, description="DiD: period of each row (enables the pre-trend placebo)")
    cluster: Column | None = Field(default=None, description="DiD: unit id per row for cluster-robust SEs")
    placebo_outcome: Column | None = Field(
        default=None, description="an outcome the treatment cannot affect (e.g. measured before it); effect ≈ 0"
    )
    methods: Literal["all"] | Annotated[list[Method], Field(min_length=1, max_length=4)] = Field(
        default="all",
        description="'all' = did when post is given, else ipw+aipw+matching when covariates are given",
    )
    propensity_link: Literal["logit", "probit"] = Field("logit", description="propensity model link")
    propensity_clip: float = Field(0.01, ge=0.0, le=0.1, description="clip propensities to [c, 1-c] (0 = no clipping)")
    matching_covariates: list[Name] | None = Field(
        default=None, min_length=1, max_length=MAX_COVARIATES, description="subset matched on (default: all)"
    )
    matching_on: Literal["covariates", "propensity"] = Field("covariates", description="matching space")
    matching_metric: Literal["mahalanobis", "inverse_variance"] = Field(
        "mahalanobis", description="covariate distance: Mahalanobis (Stata's default) or inverse-variance (diagonal)"
    )
    matching_neighbors: int = Field(1, ge=1, le=10, description="M, matches per unit")
    variance_neighbors: int = Field(2, ge=1, le=10, description="J, same-arm neighbours for σ²(x) (Abadie–Imbens)")
    matching_bias_correction: bool = Field(True, description="regression bias correction (Abadie–Imbens 2011)")
    placebo_permutations: int = Field(
        20, ge=0, le=200, description="permuted-treatment placebo draws (0 = off; otherwise at least 2)"
    )
    alpha: float = Field(0.05, ge=0.001, le=0.5, description="1 - confidence level")
    seed: Seed = 0

    @model_validator(mode="after")
    def _consistent(self) -> CausalInferenceAnalyzerInput:
        if self.placebo_permutations == 1:
            raise ValueError("placebo_permutations must be 0 (off) or at least 2")
        if isinstance(self.methods, list) and len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must not repeat a method")
        if self.covariate_names is not None and not (
            isinstance(self.covariates, list) and len(self.covariate_names) == len(self.covariates[0])
        ):
            raise ValueError("covariate_names is only for row-form covariates and must name every column")
        return self


class EffectEstimate(ComponentOutput):
    method: Literal["naive", "did", "ipw", "aipw", "matching"]
    estimand: Literal["ATE", "ATT"]
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    z: float | None = Field(description="None when the standard error is zero")
    p_value: float | None = Field(description="two-sided, normal approximation; None when the SE is zero")
    n: int
    se_method: str


class PropensitySummary(ComponentOutput):
    link: Literal["logit", "probit"]
    covariates: list[str]
    coefficients: dict[str, float]
    iterations: int
    clip: float
    n_clipped_low: int
    n_clipped_high: int
    min_treated: float
    max_treated: float
    min_control: float
    max_control: float
    share_outside_common_support: float = Field(description="share of rows outside the overlap of the arms' ranges")
    ess_treated: float = Field(description="Kish effective sample size of the treated ATE weights")
    ess_control: float


class CovariateBalance(ComponentOutput):
    covariate: str
    mean_treated: float
    mean_control: float
    smd_before: float | None = Field(description="None when both arms are constant in this covariate")
    smd_weighted: float | None = Field(description="after IPW (ATE weights)")
    smd_matched: float | None = Field(description="after matching (imputed-covariate ATE sample)")
    variance_ratio: float | None = Field(description="treated / control variance before adjustment")


class MatchingSummary(ComponentOutput):
    on: Literal["covariates", "propensity"]
    metric: str
    neighbors: int
    variance_neighbors: int
    bias_corrected: bool
    mean_distance: float = Field(description="mean distance to the M-th match, in the matching metric")
    controls_used: int = Field(description="distinct controls used as matches for the treated")
    max_times_used: int = Field(description="largest number of times one unit served as a match")


class DidCoefficient(ComponentOutput):
    term: str
    estimate: float
    std_error: float
    p_value: float


class DidCell(ComponentOutput):
    treated: int
    post: int
    n: int
    mean: float


class DidSummary(ComponentOutput):
    se_type: str
    n_clusters: int | None
    coefficients: list[DidCoefficient]
    cells: list[DidCell]


class PlaceboResult(ComponentOutput):
    kind: Literal["permuted_treatment", "placebo_outcome", "pre_period_did"]
    method: str | None
    estimate: float | None
    std_error: float | None
    p_value: float | None
    n_draws: int
    n_skipped: int
    rejection_rate: float | None = Field(description="permutations: share of draws significant at alpha (≈ alpha)")
    passed: bool | None = Field(description="True when the placebo effect is not significant at alpha")
    detail: str


class Sensitivity(ComponentOutput):
    kind: Literal["e_value"]
    basis: str = Field(description="which estimate the E-value is for")
    scale: str
    risk_ratio: float
    risk_ratio_ci: list[float]
    e_value: float = Field(description="minimum confounder–treatment and confounder–outcome risk ratio to explain away")
    e_value_ci: float = Field(description="same for the CI limit closest to the null (1 when the CI covers it)")
    interpretation: str


class CausalInferenceAnalyzerOutput(ComponentOutput):
    n: int
    n_treated: int
    n_control: int
    covariates: list[str]
    methods_run: list[str]
    naive: EffectEstimate
    estimates: list[EffectEstimate]
    propensity: PropensitySummary | None
    matching: MatchingSummary | None
    did: DidSummary | None
    balance: list[CovariateBalance]
    placebo: list[PlaceboResult]
    sensitivity: Sensitivity | None
    notes: list[str]


# --------------------------------------------------------------------------- internals


class _NotEstimable(Exception):
    """A model cannot be fitted on this sample; becomes a 422 naming ``field`` (or a skipped placebo draw)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class _Est:
    method: str
    estimand: str
    estimate: float
    se: float
    n: int
    se_method: str
    mu1: float | None = None
    mu0: float | None = None
    psi1: np.ndarray | None = None
    psi0: np.ndarray | None = None


@dataclass(frozen=True)
class _Options:
    link: str
    clip: float
    matching_on: str
    metric: str
    m: int
    j: int
    bias_correction: bool
    ps_idx: list[int]
    out_idx: list[int]
    match_idx: list[int]
    ps_field: str
    out_field: str
    match_field: str


@dataclass(frozen=True)
class _Propensity:
    gamma: np.ndarray
    e: np.ndarray  # clipped
    f: np.ndarray  # de/dη, 0 where clipped
    score: np.ndarray  # (n, p) per-row score of the propensity likelihood
    hess: np.ndarray  # (p, p) mean observed Hessian
    iterations: int
    n_low: int
    n_high: int


def _design(cols: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(cols.shape[0]), cols])


def _binary_terms(eta: np.ndarray, t: np.ndarray, link: str) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Log-likelihood, d loglik/dη, -d² loglik/dη² and e(η) for a binary GLM, without overflow."""
    q = 2.0 * t - 1.0
    if link == "logit":
        e = special.expit(eta)
        return float(-np.logaddexp(0.0, -q * eta).sum()), t - e, e * (1.0 - e), e
    log_pdf = -0.5 * eta**2 - 0.5 * math.log(2.0 * math.pi)
    log_cdf_q = special.log_ndtr(q * eta)
    lam = q * np.exp(log_pdf - log_cdf_q)  # q·φ(qη)/Φ(qη): the probit score in η
    return float(log_cdf_q.sum()), lam, lam * (lam + eta), special.ndtr(eta)


def _fit_propensity(x: np.ndarray, t: np.ndarray, opts: _Options) -> _Propensity:
    """Maximum likelihood by Newton–Raphson with step halving; 422 on (quasi-)separation."""
    n, p = x.shape
    if np.linalg.matrix_rank(x) < p:
        raise _NotEstimable(opts.ps_field, "the propensity covariates are collinear (or one is constant); drop one")
    gamma = np.zeros(p)
    ll, dl, w, e = _binary_terms(x @ gamma, t, opts.link)
    converged, iterations = False, 0
    for iterations in range(1, _MAX_NEWTON_ITER + 1):  # noqa: B007 - iterations is reported
        try:
            step = np.linalg.solve((x * w[:, None]).T @ x, x.T @ dl)
        except np.linalg.LinAlgError as exc:
            raise _NotEstimable(opts.ps_field, _SEPARATION) from exc
        scale = 1.0
        while True:
            candidate = gamma + scale * step
            ll_new, dl_new, w_new, e_new = _binary_terms(x @ candidate, t, opts.link)
            if ll_new >= ll - 1e-12 * abs(ll) or scale < 1e-10:
                break
            scale /= 2.0
        gamma, ll, dl, w, e = candidate, ll_new, dl_new, w_new, e_new
        if np.max(np.abs(scale * step)) < 1e-10 * (1.0 + np.max(np.abs(gamma))):
            converged = True
            break
    if not converged or e.min() < _SEPARATION_EPS or e.max() > 1.0 - _SEPARATION_EPS:
        raise _NotEstimable(opts.ps_field, _SEPARATION)
    eta = x @ gamma
    f = (
        special.expit(eta) * special.expit(-eta)
        if opts.link == "logit"
        else np.exp(-0.5 * eta**2) / math.sqrt(2.0 * math.pi)
    )
    low, high = e < opts.clip, e > 1.0 - opts.clip
    e_c = np.clip(e, opts.clip, 1.0 - opts.clip)
    f = np.where(low | high, 0.0, f)  # clipped propensities no longer move with γ
    return _Propensity(
        gamma=gamma,
        e=e_c,
        f=f,
        score=x * dl[:, None],
        hess=-(x * w[:, None]).T @ x / n,
        iterations=iterations,
        n_low=int(low.sum()),
        n_high=int(high.sum()),
    )


_SEPARATION = (
    "the covariates (quasi-)perfectly separate treated from control rows (a fitted propensity reached 0 or 1); "
    "there is no overlap, so the effect is not identified without extrapolation — drop or coarsen the "
    "separating covariate or restrict the sample to the region of overlap"
)


def _correction(h: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per-row term D'A⁻¹h_i that removes the first-order effect of an estimated nuisance parameter."""
    return h @ np.linalg.solve(a, d)


class _Sample:
    """One (outcome, treatment) sample with its lazily fitted nuisance models and estimators."""

    def __init__(self, y: np.ndarray, t: np.ndarray, x: np.ndarray, o: _Options):
        self.y, self.t, self.x, self.o = y, t, x, o
        self.n = y.size
        self.xp = _design(x[:, o.ps_idx])
        self.xo = _design(x[:, o.out_idx])
        self.match_idx = o.match_idx
        self.t1 = t == 1

    @cached_property
    def ps(self) -> _Propensity:
        return _fit_propensity(self.xp, self.t, self.o)

    @cached_property
    def outcome_models(self) -> tuple[np.ndarray, np.ndarray]:
        """OLS fitted values of the outcome in each arm, predicted for every row: (m1, m0)."""
        fitted = []
        for arm, label in ((self.t1, "treated"), (~self.t1, "control")):
            xa = self.xo[arm]
            if np.linalg.matrix_rank(xa) < xa.shape[1]:
                raise _NotEstimable(
                    self.o.out_field,
                    f"the outcome model of the {label} arm is not identified: among its {int(arm.sum())} rows the "
                    "outcome covariates are collinear or constant; drop one or use more data",
                )
            beta = np.linalg.lstsq(xa, self.y[arm], rcond=None)[0]
            fitted.append(self.xo @ beta)
        return fitted[0], fitted[1]

    # -- IPW
    def ipw(self) -> list[_Est]:
        y, t, n, ps = self.y, self.t, self.n, self.ps
        e, f, xp = ps.e, ps.f, self.xp
        w1, w0 = t / e, (1.0 - t) / (1.0 - e)
        mu1, mu0 = float(w1 @ y / w1.sum()), float(w0 @ y / w0.sum())
        d1 = (xp * (-t * (y - mu1) * f / e**2)[:, None]).mean(axis=0)
        d0 = (xp * ((1.0 - t) * (y - mu0) * f / (1.0 - e) ** 2)[:, None]).mean(axis=0)
        psi1 = (w1 * (y - mu1) - _correction(ps.score, ps.hess, d1)) / w1.mean()
        psi0 = (w0 * (y - mu0) - _correction(ps.score, ps.hess, d0)) / w0.mean()
        se_method = "M-estimation sandwich, stacked with the propensity score equations"
        ate = _Est("ipw", "ATE", mu1 - mu0, _se(psi1 - psi0), n, se_method, mu1, mu0, psi1, psi0)
        # ATT: treated mean against controls weighted by the odds e/(1-e).
        v = (1.0 - t) * e / (1.0 - e)
        mu1t, mu0t = float(y[self.t1].mean()), float(v @ y / v.sum())
        d0t = (xp * ((1.0 - t) * (y - mu0t) * f / (1.0 - e) ** 2)[:, None]).mean(axis=0)
        psi1t = t * (y - mu1t) / t.mean()
        psi0t = (v * (y - mu0t) - _correction(ps.score, ps.hess, d0t)) / v.mean()
        att = _Est("ipw", "ATT", mu1t - mu0t, _se(psi1t - psi0t), n, se_method)
        return [ate, att]

    # -- AIPW
    def aipw(self) -> list[_Est]:
        y, t, n, ps = self.y, self.t, self.n, self.ps
        e, f, xp, xo = ps.e, ps.f, self.xp, self.xo
        m1, m0 = self.outcome_models
        r1, r0 = t * (y - m1), (1.0 - t) * (y - m0)
        g1, g0 = m1 + r1 / e, m0 + r0 / (1.0 - e)
        mu1, mu0 = float(g1.mean()), float(g0.mean())
        a1, a0 = -(xo * t[:, None]).T @ xo / n, -(xo * (1.0 - t)[:, None]).T @ xo / n
        psi1 = (
            g1
            - mu1
            - _correction(ps.score, ps.hess, (xp * (-r1 * f / e**2)[:, None]).mean(axis=0))
            - _correction(xo * r1[:, None], a1, (xo * (1.0 - t / e)[:, None]).mean(axis=0))
        )
        psi0 = (
            g0
            - mu0
            - _correction(ps.score, ps.hess, (xp * (r0 * f / (1.0 - e) ** 2)[:, None]).mean(axis=0))
            - _correction(xo * r0[:, None], a0, (xo * (1.0 - (1.0 - t) / (1.0 - e))[:, None]).mean(axis=0))
        )
        se_method = "influence function corrected for the estimated propensity and outcome models (M-estimation)"
        return [_Est("aipw", "ATE", mu1 - mu0, _se(psi1 - psi0), n, se_method, mu1, mu0, psi1, psi0)]

    # -- matching
    @cached_property
    def match_space(self) -> tuple[np.ndarray, str]:
        if self.o.matching_on == "propensity":
            return self.ps.e[:, None], "absolute difference of propensity scores"
        xm = self.x[:, self.match_idx]
        if self.o.metric == "mahalanobis":
            # Euclidean distance after whitening by the Cholesky factor of the inverse sample covariance.
            cov = np.atleast_2d(np.cov(xm, rowvar=False))
            if np.linalg.matrix_rank(cov) < cov.shape[0]:
                raise _NotEstimable(self.o.match_field, "the matching covariates are collinear (or one is constant)")
            return xm @ np.linalg.cholesky(np.linalg.inv(cov)), "Mahalanobis (inverse sample covariance)"
        sd = xm.std(axis=0)
        return xm / np.where(sd > 0, sd, 1.0), "inverse variance (covariates scaled by their SDs)"

    @cached_property
    def matches(self) -> dict[str, Any]:
        """Matches of every row in the other arm, and its J nearest same-arm rows, both with ties included."""
        z = self.match_space[0]
        m, j = self.o.m, self.o.j
        idx1, idx0 = np.flatnonzero(self.t1), np.flatnonzero(~self.t1)
        if m > min(idx1.size, idx0.size):
            raise _NotEstimable("matching_neighbors", f"M={m} exceeds the size of the smaller arm")
        if j > min(idx1.size, idx0.size) - 1:
            raise _NotEstimable("variance_neighbors", f"J={j} needs at least J+1 rows in each arm")
        rows, cols, dist_m, same_rows, same_cols = [], [], [], [], []
        for own, other in ((idx1, idx0), (idx0, idx1)):
            r, c, d = _tied_neighbors(z[other], z[own], m, self.o.match_field)
            rows.append(own[r])
            cols.append(other[c])
            dist_m.append(d)
            # J + 1 nearest of the own arm include the row itself (distance 0), which is then dropped.
            r, c, _ = _tied_neighbors(z[own], z[own], j + 1, self.o.match_field)
            keep = r != c
            same_rows.append(own[r[keep]])
            same_cols.append(own[c[keep]])
        return {
            "match": _row_average(np.concatenate(rows), np.concatenate(cols), self.n),
            "same": _row_average(np.concatenate(same_rows), np.concatenate(same_cols), self.n),
            "times_used": np.bincount(np.concatenate(cols), minlength=self.n),
            "dist": np.concatenate(dist_m),
        }

    def matching(self) -> list[_Est]:
        y, t1, n = self.y, self.t1, self.n
        match, same = self.matches["match"], self.matches["same"]
        imputed = match @ y
        if self.o.bias_correction:
            m1, m0 = self.outcome_models
            # The regression of the arm the matches come from, at the row and at its matches.
            imputed = imputed + np.where(t1, m0 - match @ m0, m1 - match @ m1)
        y1 = np.where(t1, y, imputed)
        y0 = np.where(t1, imputed, y)
        # K_M(i): times row i serves as a match, each use weighted by 1/(number of tied matches of that row);
        # K'_M(i) sums the squared weights (= K_M(i)/M without ties), as in Abadie–Imbens (2006).
        k = np.asarray(match.sum(axis=0)).ravel()
        k2 = np.asarray(match.power(2).sum(axis=0)).ravel()
        # σ²(x): sample variance of the row and its J nearest same-arm rows (ties included).
        n_same = np.diff(same.indptr)
        set_mean = (y + n_same * (same @ y)) / (n_same + 1.0)
        sigma2 = (
            (y - set_mean) ** 2 + n_same * (same @ y**2) - 2.0 * n_same * set_mean * (same @ y) + n_same * set_mean**2
        ) / n_same
        tau = float((y1 - y0).mean())
        v_ate = (((y1 - y0 - tau) ** 2).mean() + ((k**2 + 2.0 * k - k2) * sigma2).mean()) / n
        n1 = int(t1.sum())
        tau_t = float((y - y0)[t1].mean())
        v_att = (((y - y0 - tau_t)[t1] ** 2).sum() + ((k**2 - k2) * sigma2)[~t1].sum()) / n1**2
        se_method = (
            f"Abadie–Imbens (2006) population variance, σ²(x) from J={self.o.j} same-arm neighbours "
            "(as Stata's teffects nnmatch vce(robust))"
        )
        return [
            _Est("matching", "ATE", tau, math.sqrt(max(v_ate, 0.0)), n, se_method, float(y1.mean()), float(y0.mean())),
            _Est("matching", "ATT", tau_t, math.sqrt(max(v_att, 0.0)), n, se_method),
        ]

    def run(self, method: str) -> list[_Est]:
        return {"ipw": self.ipw, "aipw": self.aipw, "matching": self.matching, "naive": self.naive}[method]()

    def naive(self) -> list[_Est]:
        return [_naive(self.y, self.t1)]


def _tied_neighbors(
    points: np.ndarray, queries: np.ndarray, k: int, field: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All points within each query's k-th nearest distance (ties included): (query, point, k-th distance)."""
    tree = KDTree(points)
    # A few spare neighbours settle the ties of most rows in one pass; the rest get a radius query.
    spare = min(k + _SPARE_NEIGHBORS, points.shape[0])
    dist, ind = tree.query(queries, k=spare)
    kth = dist[:, k - 1]
    radius = kth * (1.0 + 1e-9) + _TIE_TOLERANCE
    within = dist <= radius[:, None]
    open_ended = within[:, -1].copy() if spare < points.shape[0] else np.zeros(queries.shape[0], dtype=bool)
    within[open_ended] = False
    rows, slots = np.nonzero(within)
    cols = ind[rows, slots]
    if open_ended.any():
        where = np.flatnonzero(open_ended)
        counts = tree.query_radius(queries[where], radius[where], count_only=True)
        if counts.sum() + rows.size > MAX_MATCH_PAIRS:
            raise _NotEstimable(
                field,
                f"the matching covariates are so coarse that over {MAX_MATCH_PAIRS} tied neighbour pairs arise; "
                "add a continuous covariate or match on the propensity score",
            )
        found = tree.query_radius(queries[where], radius[where])
        rows = np.concatenate([rows, np.repeat(where, counts)])
        cols = np.concatenate([cols, *found])
    return rows, cols, kth


def _row_average(rows: np.ndarray, cols: np.ndarray, n: int) -> sparse.csr_array:
    """Sparse n × n operator whose row i averages the rows matched to i."""
    counts = np.bincount(rows, minlength=n)
    return sparse.csr_array((1.0 / counts[rows], (rows, cols)), shape=(n, n))


def _se(psi: np.ndarray) -> float:
    return math.sqrt(float(psi @ psi) / psi.size**2)


def _naive(y: np.ndarray, t1: np.ndarray) -> _Est:
    a, b = y[t1], y[~t1]
    if min(a.size, b.size) < 2:
        raise _NotEstimable("post", "the post period needs at least 2 treated and 2 control rows")
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return _Est("naive", "ATE", float(a.mean() - b.mean()), se, y.size, "Welch (unequal variances)")


def _to_output(est: _Est, alpha: float) -> EffectEstimate:
    zcrit = float(stats.norm.ppf(1.0 - alpha / 2.0))
    has_se = est.se > 1e-12 * max(1.0, abs(est.estimate))
    z = est.estimate / est.se if has_se else None
    return EffectEstimate(
        method=est.method,  # type: ignore[arg-type]
        estimand=est.estimand,  # type: ignore[arg-type]
        estimate=est.estimate,
        std_error=est.se,
        ci_low=est.estimate - zcrit * est.se,
        ci_high=est.estimate + zcrit * est.se,
        z=z,
        p_value=float(2.0 * stats.norm.sf(abs(z))) if z is not None else None,
        n=est.n,
        se_method=est.se_method,
    )


# --------------------------------------------------------------------------- DiD


def _ols_robust(xd: np.ndarray, y: np.ndarray, cluster: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int | None]:
    """OLS coefficients and HC1 or CR1 cluster-robust covariance (statsmodels' and Stata's corrections)."""
    n, k = xd.shape
    bread = np.linalg.inv(xd.T @ xd)
    beta = bread @ (xd.T @ y)
    resid = y - xd @ beta
    scores = xd * resid[:, None]
    if cluster is None:
        meat, factor, groups = scores.T @ scores, n / (n - k), None
    else:
        _, inverse = np.unique(cluster, return_inverse=True)
        groups = int(inverse.max()) + 1
        if groups < 2:
            raise _NotEstimable("cluster", "these rows fall in a single cluster; cluster-robust SEs need 2 or more")
        summed = np.column_stack([np.bincount(inverse, weights=scores[:, c], minlength=groups) for c in range(k)])
        meat = summed.T @ summed
        factor = groups / (groups - 1) * (n - 1) / (n - k)
    return beta, factor * bread @ meat @ bread, groups


def _did(
    y: np.ndarray, t: np.ndarray, post: np.ndarray, cluster: np.ndarray | None, field: str
) -> tuple[_Est, DidSummary]:
    cells = []
    for g in (1, 0):
        for p in (0, 1):
            sel = (t == g) & (post == p)
            count = int(sel.sum())
            if count < 2:
                raise _NotEstimable(
                    field, f"the cell treated={g}, post={p} has {count} row(s); each group × period cell needs 2"
                )
            cells.append(DidCell(treated=g, post=p, n=count, mean=float(y[sel].mean())))
    xd = np.column_stack([np.ones_like(y), t, post, t * post])
    beta, cov, groups = _ols_robust(xd, y, cluster)
    se = np.sqrt(np.diag(cov))
    if se[3] <= 0.0:
        raise _NotEstimable("outcome", "has no variation within the group × period cells; the DiD SE is zero")
    se_type = "HC1" if groups is None else f"cluster-robust CR1 over {groups} clusters"
    terms = ["intercept", "treated", "post", "treated:post"]
    coefs = [
        DidCoefficient(term=name, estimate=float(b), std_error=float(s), p_value=float(2 * stats.norm.sf(abs(b / s))))
        for name, b, s in zip(terms, beta, se, strict=True)
        if s > 0
    ]
    summary = DidSummary(se_type=se_type, n_clusters=groups, coefficients=coefs, cells=cells)
    return _Est("did", "ATT", float(beta[3]), float(se[3]), y.size, se_type), summary


# --------------------------------------------------------------------------- diagnostics


def e_value(rr: float) -> float:
    """E-value of a risk ratio (VanderWeele & Ding 2017): RR + sqrt(RR·(RR−1)), with RR < 1 inverted first."""
    rr = 1.0 / rr if rr < 1.0 else rr
    return rr + math.sqrt(rr * (rr - 1.0))


def _sensitivity(est: _Est, y: np.ndarray, t1: np.ndarray, alpha: float) -> Sensitivity:
    zcrit = float(stats.norm.ppf(1.0 - alpha / 2.0))
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if binary and est.psi1 is not None and est.psi0 is not None and est.mu1 and est.mu0 and min(est.mu1, est.mu0) > 0:
        log_rr = math.log(est.mu1 / est.mu0)
        se = _se(est.psi1 / est.mu1 - est.psi0 / est.mu0)
        rr, lo, hi = math.exp(log_rr), math.exp(log_rr - zcrit * se), math.exp(log_rr + zcrit * se)
        scale = "risk ratio of the potential-outcome means (0/1 outcome), delta-method CI"
    else:
        a, b = y[t1], y[~t1]
        sd = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (y.size - 2))
        d = est.estimate / sd
        rr = math.exp(0.91 * d)
        lo, hi = math.exp(0.91 * (d - zcrit * est.se / sd)), math.exp(0.91 * (d + zcrit * est.se / sd))
        scale = f"approximate risk ratio exp(0.91·d), d = effect / pooled outcome SD = {d:.4g}"
    limit = lo if rr >= 1.0 else hi
    ev_ci = 1.0 if (lo <= 1.0 <= hi) else e_value(limit)
    ev = e_value(rr)
    return Sensitivity(
        kind="e_value",
        basis=f"{est.method} {est.estimand}",
        scale=scale,
        risk_ratio=rr,
        risk_ratio_ci=[lo, hi],
        e_value=ev,
        e_value_ci=ev_ci,
        interpretation=(
            f"an unmeasured confounder associated with both treatment and outcome by a risk ratio of {ev:.3g} each "
            f"(above the measured covariates) could explain the estimate away; {ev_ci:.3g} would move the CI to "
            "include no effect"
        ),
    )


def _balance(sample: _Sample, names: list[str], with_matching: bool) -> list[CovariateBalance]:
    x, t1 = sample.x, sample.t1
    x1, x0 = x[t1], x[~t1]
    m1, m0 = x1.mean(axis=0), x0.mean(axis=0)
    v1, v0 = x1.var(axis=0, ddof=1), x0.var(axis=0, ddof=1)
    pooled = np.sqrt((v1 + v0) / 2.0)
    ok = pooled > 0
    denom = np.where(ok, pooled, 1.0)
    e = sample.ps.e
    w1, w0 = t1 / e, (~t1) / (1.0 - e)
    smd_w = ((w1 @ x) / w1.sum() - (w0 @ x) / w0.sum()) / denom
    smd_m = None
    if with_matching:
        imputed = sample.matches["match"] @ x  # (n, k): mean covariates of each row's matches
        x1_hat, x0_hat = np.where(t1[:, None], x, imputed), np.where(t1[:, None], imputed, x)
        smd_m = (x1_hat.mean(axis=0) - x0_hat.mean(axis=0)) / denom
    out = []
    for c, name in enumerate(names):
        out.append(
            CovariateBalance(
                covariate=name,
                mean_treated=float(m1[c]),
                mean_control=float(m0[c]),
                smd_before=float((m1[c] - m0[c]) / denom[c]) if ok[c] else None,
                smd_weighted=float(smd_w[c]) if ok[c] else None,
                smd_matched=float(smd_m[c]) if smd_m is not None and ok[c] else None,
                variance_ratio=float(v1[c] / v0[c]) if v0[c] > 0 else None,
            )
        )
    return out


def _propensity_summary(sample: _Sample, names: list[str], link: str, clip: float) -> PropensitySummary:
    ps, t1 = sample.ps, sample.t1
    e1, e0 = ps.e[t1], ps.e[~t1]
    lo, hi = max(e1.min(), e0.min()), min(e1.max(), e0.max())
    w1, w0 = 1.0 / e1, 1.0 / (1.0 - e0)
    return PropensitySummary(
        link=link,  # type: ignore[arg-type]
        covariates=names,
        coefficients=dict(zip(["intercept", *names], map(float, ps.gamma), strict=True)),
        iterations=ps.iterations,
        clip=clip,
        n_clipped_low=ps.n_low,
        n_clipped_high=ps.n_high,
        min_treated=float(e1.min()),
        max_treated=float(e1.max()),
        min_control=float(e0.min()),
        max_control=float(e0.max()),
        share_outside_common_support=float(((ps.e < lo) | (ps.e > hi)).mean()),
        ess_treated=float(w1.sum() ** 2 / (w1 @ w1)),
        ess_control=float(w0.sum() ** 2 / (w0 @ w0)),
    )


def _p_of(est: _Est) -> float:
    return float(2.0 * stats.norm.sf(abs(est.estimate / est.se))) if est.se > 0 else 1.0


def _permutation_placebo(sample: _Sample, method: str, draws: int, alpha: float, seed: int) -> PlaceboResult:
    if method == "matching" and sample.n > MATCHING_PLACEBO_MAX_ROWS:
        return PlaceboResult(
            kind="permuted_treatment", method=method, estimate=None, std_error=None, p_value=None, n_draws=0,
            n_skipped=0, rejection_rate=None, passed=None,
            detail=f"not run: re-matching {draws} times is limited to {MATCHING_PLACEBO_MAX_ROWS} rows; "
            "request ipw or aipw as well for this placebo",
        )  # fmt: skip
    rng = np.random.default_rng(seed)
    estimates, pvals, skipped = [], [], 0
    for _ in range(draws):
        permuted = _Sample(sample.y, rng.permutation(sample.t), sample.x, sample.o)
        try:
            est = permuted.run(method)[0]
        except _NotEstimable:
            skipped += 1  # reported: a permutation on which the model cannot be fitted is not a placebo draw
            continue
        estimates.append(est.estimate)
        pvals.append(_p_of(est))
    if len(estimates) < 2:
        return PlaceboResult(
            kind="permuted_treatment",
            method=method,
            estimate=None,
            std_error=None,
            p_value=None,
            n_draws=draws,
            n_skipped=skipped,
            rejection_rate=None,
            passed=None,
            detail="fewer than 2 permutations could be estimated; the sample is too small for this placebo",
        )
    arr = np.asarray(estimates)
    mean, mc_se = float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))
    p = float(2.0 * stats.norm.sf(abs(mean / mc_se))) if mc_se > 0 else 1.0
    return PlaceboResult(
        kind="permuted_treatment",
        method=method,
        estimate=mean,
        std_error=mc_se,
        p_value=p,
        n_draws=draws,
        n_skipped=skipped,
        rejection_rate=float(np.mean(np.asarray(pvals) < alpha)),
        passed=p >= alpha,
        detail=(
            f"{method} ATE re-estimated with the treatment randomly permuted {arr.size} times (seeded); estimate is "
            "the mean placebo effect and std_error its Monte Carlo SE; the effect should be ≈ 0 and the "
            "rejection rate ≈ alpha"
        ),
    )


def _placebo_from(est: _Est, kind: str, alpha: float, detail: str) -> PlaceboResult:
    p = _p_of(est)
    return PlaceboResult(
        kind=kind,  # type: ignore[arg-type]
        method=f"{est.method} {est.estimand}",
        estimate=est.estimate,
        std_error=est.se,
        p_value=p,
        n_draws=1,
        n_skipped=0,
        rejection_rate=None,
        passed=p >= alpha,
        detail=detail,
    )


def _did_placebo(
    y: np.ndarray, t: np.ndarray, post: np.ndarray, time: np.ndarray | None, cluster: np.ndarray | None, alpha: float
) -> PlaceboResult:
    def unavailable(why: str) -> PlaceboResult:
        return PlaceboResult(
            kind="pre_period_did",
            method="did",
            estimate=None,
            std_error=None,
            p_value=None,
            n_draws=0,
            n_skipped=0,
            rejection_rate=None,
            passed=None,
            detail=why,
        )

    if time is None:
        return unavailable("not run: give time (the period of each row) with at least 2 pre-periods")
    pre = post == 0
    periods = np.unique(time[pre])
    if periods.size < 2:
        return unavailable(f"not run: the pre-period rows cover {periods.size} period(s); 2 are needed")
    fake_post = (time[pre] == periods[-1]).astype(np.float64)
    try:
        est, _ = _did(y[pre], t[pre], fake_post, None if cluster is None else cluster[pre], "time")
    except _NotEstimable as exc:
        return unavailable(f"not run: {exc.message}")
    return _placebo_from(
        est,
        "pre_period_did",
        alpha,
        f"DiD on the pre-period rows with the last pre-period ({periods[-1]:g}) as a fake post period; "
        "a significant effect suggests the parallel-trends assumption fails",
    )


# --------------------------------------------------------------------------- inputs


def _load(value: list[float] | FileRef, ctx: RunContext, field: str, n: int | None) -> np.ndarray:
    arr = load_numbers(value, ctx.data_dir, field=field)
    if arr.size > MAX_ROWS:
        raise InvalidInput(field, f"has {arr.size} rows; at most {MAX_ROWS} are supported")
    if n is not None and arr.size != n:
        raise InvalidInput(field, f"has {arr.size} values but outcome has {n}; give one per row")
    return arr


def _binary(arr: np.ndarray, field: str) -> np.ndarray:
    if not np.isin(arr, (0.0, 1.0)).all():
        raise InvalidInput(field, "must contain only 0 and 1")
    return arr


def _load_covariates(request: CausalInferenceAnalyzerInput, ctx: RunContext, n: int) -> tuple[np.ndarray, list[str]]:
    cov = request.covariates
    if cov is None:
        return np.empty((n, 0)), []
    if isinstance(cov, list):
        try:
            x = np.asarray(cov, dtype=np.float64)
        except ValueError as exc:
            raise InvalidInput("covariates", "every row must have the same number of columns") from exc
        if x.shape[0] != n:
            raise InvalidInput("covariates", f"has {x.shape[0]} rows but outcome has {n}")
        names = list(request.covariate_names or [f"x{c + 1}" for c in range(x.shape[1])])
    elif isinstance(cov, dict):
        if not cov:
            raise InvalidInput("covariates", "give at least one named column")
        names = list(cov)
        cols = [np.asarray(v, dtype=np.float64) for v in cov.values()]
        for name, col in zip(names, cols, strict=True):
            if col.size != n:
                raise InvalidInput(f"covariates.{name}", f"has {col.size} values but outcome has {n}")
        x = np.column_stack(cols)
    else:
        names = [str(c) for c in cov.columns]
        cols = [
            _load(FileRef(path=cov.path, column=c), ctx, f"covariates.columns[{i}]", n)
            for i, c in enumerate(cov.columns)
        ]
        x = np.column_stack(cols)
    if len(set(names)) != len(names):
        raise InvalidInput("covariates", "covariate names must be distinct")
    return x, names


def _subset(chosen: list[str] | None, names: list[str], field: str) -> list[int]:
    if chosen is None:
        return list(range(len(names)))
    if not names:
        raise InvalidInput(field, "needs covariates")
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise InvalidInput(field, f"unknown covariate(s) {unknown}; known: {names}")
    return [names.index(c) for c in dict.fromkeys(chosen)]


def _resolve_methods(
    request: CausalInferenceAnalyzerInput,
    has_covariates: bool,
    has_post: bool,
    n: int,
    match_dims: int,
    notes: list[str],
) -> list[str]:
    # Nearest-neighbour search degrades towards O(n²) in many dimensions: bound the work.
    matching_too_big = n > MATCHING_MAX_ROWS_HIGH_DIM and match_dims > MATCHING_LOW_DIM
    too_big = (
        f"matching on {match_dims} covariates is limited to {MATCHING_MAX_ROWS_HIGH_DIM} rows (got {n}); use "
        f"matching_on='propensity', matching_covariates with at most {MATCHING_LOW_DIM} columns, or fewer rows"
    )
    if request.methods == "all":
        if has_post:
            return ["did"]
        if not has_covariates:
            return []
        if matching_too_big:
            notes.append(f"matching skipped: {too_big}")
            return ["ipw", "aipw"]
        return ["ipw", "aipw", "matching"]
    for method in request.methods:
        if method == "did" and not has_post:
            raise InvalidInput("post", "difference-in-differences needs post (and treatment as the treated group)")
        if method != "did" and not has_covariates:
            raise InvalidInput("covariates", f"{method} needs covariates to adjust for")
        if method == "matching" and matching_too_big:
            raise InvalidInput("methods", too_big)
    return list(request.methods)


def _raise(exc: _NotEstimable) -> InvalidInput:
    return InvalidInput(exc.field, exc.message)


# --------------------------------------------------------------------------- component

_EX_X = [0.1, -1.2, 0.8, 1.5, -0.3, 0.4, -0.9, 1.1, -1.6, 0.2, 0.6, -0.5, 1.8, -0.1, 0.9, -1.0]
_EX_T = [0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1]
_EX_Y = [1.3, -0.4, 4.6, 5.2, 1.0, 3.1, 0.2, 4.1, -0.9, 1.7, 3.3, 2.2, 5.9, 1.1, 2.4, 1.9]


@component(
    "CausalInferenceAnalyzer",
    tier="tier3",
    capabilities=["causal_inference", "treatment_effects", "difference_in_differences", "propensity_score"],
    example={
        "outcome": _EX_Y,
        "treatment": _EX_T,
        "covariates": {"x": _EX_X},
        "methods": "all",
        "placebo_permutations": 5,
        "seed": 7,
    },
)
def causal_inference_analyzer(request: CausalInferenceAnalyzerInput, ctx: RunContext) -> CausalInferenceAnalyzerOutput:
    """Average treatment effect by DiD, IPW, doubly robust AIPW and matching, with balance, placebo and E-value.

    Rows carry an outcome, a 0/1 treatment and pre-treatment covariates (inline rows, named columns or CSV
    columns under data/). With ``post`` (and optionally ``time`` and ``cluster``) the rows are a panel or
    repeated cross-section and a 2×2 difference-in-differences is run. Every estimate has a standard error
    (stated per method), a normal CI and a p-value. Degenerate input (no treated or control rows, a constant
    outcome, perfect separation by the covariates) answers 422 naming the field.
    """
    y = _load(request.outcome, ctx, "outcome", None)
    n = y.size
    t = _binary(_load(request.treatment, ctx, "treatment", n), "treatment")
    n1 = int(t.sum())
    if n1 < 2 or n - n1 < 2:
        which = "treated" if n1 < 2 else "control"
        raise InvalidInput("treatment", f"has {min(n1, n - n1)} {which} row(s); need at least 2 treated and 2 control")
    if np.ptp(y) == 0:
        raise InvalidInput("outcome", f"is constant (every value is {y[0]:g}); no effect can be estimated")
    x, names = _load_covariates(request, ctx, n)
    post = _binary(_load(request.post, ctx, "post", n), "post") if request.post is not None else None
    for field in ("time", "cluster"):
        if getattr(request, field) is not None and post is None:
            raise InvalidInput(field, "is only used by difference-in-differences; give post as well")
    time = _load(request.time, ctx, "time", n) if request.time is not None else None
    cluster = _load(request.cluster, ctx, "cluster", n) if request.cluster is not None else None
    if cluster is not None and np.unique(cluster).size < 2:
        raise InvalidInput("cluster", "needs at least 2 distinct clusters")
    placebo_y = None
    if request.placebo_outcome is not None:
        placebo_y = _load(request.placebo_outcome, ctx, "placebo_outcome", n)
    if placebo_y is not None and np.ptp(placebo_y) == 0:
        raise InvalidInput("placebo_outcome", "is constant; no placebo effect can be estimated")
    ps_idx = _subset(request.propensity_covariates, names, "propensity_covariates")
    out_idx = _subset(request.outcome_covariates, names, "outcome_covariates")
    match_idx = _subset(request.matching_covariates, names, "matching_covariates")
    notes: list[str] = []
    match_dims = 1 if request.matching_on == "propensity" else len(match_idx)
    methods = _resolve_methods(request, bool(names), post is not None, n, match_dims, notes)
    opts = _Options(
        link=request.propensity_link,
        clip=request.propensity_clip,
        matching_on=request.matching_on,
        metric=request.matching_metric,
        m=request.matching_neighbors,
        j=request.variance_neighbors,
        bias_correction=request.matching_bias_correction,
        ps_field="propensity_covariates" if request.propensity_covariates else "covariates",
        out_field="outcome_covariates" if request.outcome_covariates else "covariates",
        match_field="matching_covariates" if request.matching_covariates else "covariates",
        ps_idx=ps_idx,
        out_idx=out_idx,
        match_idx=match_idx,
    )
    alpha = request.alpha
    ests: list[_Est] = []
    placebo: list[PlaceboResult] = []
    did_summary = None
    try:
        if "did" in methods:
            assert post is not None
            did_est, did_summary = _did(y, t, post, cluster, "post")
            ests.append(did_est)
            placebo.append(_did_placebo(y, t, post, time, cluster, alpha))
            if names:
                notes.append("the 2×2 DiD does not use covariates")
        # The naive baseline for panel rows: treated vs control in the post period.
        naive = _naive(y, t == 1) if post is None else _naive(y[post == 1], t[post == 1] == 1)
        cross = [m for m in ("aipw", "ipw", "matching") if m in methods]
        sample = _Sample(y, t, x, opts)
        for method in ("ipw", "aipw", "matching"):
            if method in cross:
                ests.extend(sample.run(method))
        propensity = _propensity_summary(sample, [names[i] for i in ps_idx], opts.link, opts.clip) if cross else None
        balance = _balance(sample, names, "matching" in cross) if cross else []
        primary_method = cross[0] if cross else ("did" if "did" in methods else "naive")
        if cross and request.placebo_permutations:
            placebo.insert(0, _permutation_placebo(sample, cross[0], request.placebo_permutations, alpha, request.seed))
        if placebo_y is not None:
            if cross:
                est = _Sample(placebo_y, t, x, opts).run(cross[0])[0]
            elif "did" in methods:
                assert post is not None
                est = _did(placebo_y, t, post, cluster, "post")[0]
            else:
                est = _naive(placebo_y, t == 1)
            placebo.append(
                _placebo_from(est, "placebo_outcome", alpha, "the primary estimator applied to placebo_outcome")
            )
    except _NotEstimable as exc:
        raise _raise(exc) from exc
    primary = next((e for e in ests if e.method == primary_method and e.estimand == "ATE"), None)
    primary = primary or next((e for e in ests if e.method == primary_method), naive)
    # The outcome SD that scales the E-value: post-period rows for panel data.
    rows = np.ones(n, dtype=bool) if post is None else post == 1
    if not methods:
        notes.append("no covariates and no post: only the naive difference in means could be computed")
    if propensity is not None and (propensity.n_clipped_low or propensity.n_clipped_high):
        notes.append(
            f"{propensity.n_clipped_low + propensity.n_clipped_high} propensities were clipped to "
            f"[{opts.clip:g}, {1 - opts.clip:g}]"
        )
    if "matching" in cross:
        notes.append("matching SEs treat the matching metric as fixed (propensity estimation is not accounted for)")
    matching_summary = None
    if "matching" in cross:
        matching_summary = MatchingSummary(
            on=opts.matching_on,  # type: ignore[arg-type]
            metric=sample.match_space[1],
            neighbors=opts.m,
            variance_neighbors=opts.j,
            bias_corrected=opts.bias_correction,
            mean_distance=float(sample.matches["dist"].mean()),
            controls_used=int(np.count_nonzero(sample.matches["times_used"][t == 0])),
            max_times_used=int(sample.matches["times_used"].max()),
        )
    return CausalInferenceAnalyzerOutput(
        n=n,
        n_treated=n1,
        n_control=n - n1,
        covariates=names,
        methods_run=["naive", *methods],
        naive=_to_output(naive, alpha),
        estimates=[_to_output(e, alpha) for e in ests],
        propensity=propensity,
        matching=matching_summary,
        did=did_summary,
        balance=balance,
        placebo=placebo,
        sensitivity=_sensitivity(primary, y[rows], t[rows] == 1, alpha) if primary.se > 0 else None,
        notes=notes,
    )
