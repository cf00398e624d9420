"""Tune rule parameters by Gaussian-process Bayesian optimisation; a multi-objective Pareto mode.

Surrogate: scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor` with kernel
``C · Matern(ν = 5/2, one length scale per parameter) + WhiteKernel`` and normalised targets
(``normalize_y=True``), fitted on parameters mapped to the unit cube, ``u = (x − lower) / (upper − lower)``.
Its hyperparameters maximise the log marginal likelihood by seeded multi-start L-BFGS-B (scikit-learn's
objective, written out in numpy because it is evaluated hundreds of times per fit and checked against
``GaussianProcessRegressor.log_marginal_likelihood`` in the tests; run here so that hyperparameters at a
bound are *reported* in the result instead of raised as warnings); the regressor is then fitted with them.
Hyperparameter bounds: C ∈ [1e-2, 1e2], length scales ∈ [1e-2, 1e2] (unit-cube units), noise ∈ [1e-8, 1e-1]
(normalised-target units).

Acquisition: expected improvement in closed form. Internally the objective is minimised (scores are negated
when ``direction="maximize"``); with incumbent f* (best observed), posterior mean μ and sd σ,
``EI = (f* − μ − ξ) Φ(z) + σ φ(z)``, ``z = (f* − μ − ξ) / σ`` (and ``max(f* − μ − ξ, 0)`` where σ = 0);
ξ = ``xi`` × the targets' standard deviation (default 0: on Branin any positive margin measured in the
scores' SD, which the far-off values inflate, stalls the final approach). EI is maximised over dense seeded
uniform candidates in the box, the best few then refined by L-BFGS-B with the analytic gradient of EI.
Batches (``n_suggestions`` > 1) are built sequentially by the Kriging believer (each chosen point is added
with its posterior mean as if observed) or the constant liar (added with the incumbent value, "CL-min");
the GP keeps its fitted hyperparameters while fantasising.

Modes (field ``mode``):

* ``suggest`` — from observed (parameters, score) pairs, the next point(s) with EI and the posterior there.
  The pairs arrive inline or as a table under data/ (one column per parameter, named like it, and a score
  column); rows with the same parameters are averaged into one observation, so a log of many applications
  of a few settings stays within the GP's size bound.
* ``optimize`` — a full BO loop on a built-in benchmark (Branin, Hartmann-6, Rosenbrock, sphere; real
  functions in code, all minimised) for a budget of evaluations, with a Latin-hypercube initial design, the
  trace, and a same-budget uniform random search for comparison.
* ``pareto`` — the non-dominated front of points scored on two or more objectives (each with a direction),
  Pareto ranks by non-dominated sorting, and optionally ParEGO-style suggestions: objectives min–max
  normalised to [0, 1] (oriented to minimisation), scalarised by the augmented Chebyshev function
  ``max_j λ_j f_j + 0.05 Σ_j λ_j f_j`` with one weight vector λ drawn uniformly from the simplex (seeded),
  then EI on a GP of that scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, RootModel, field_validator
from scipy import linalg, optimize, special, stats
from scipy.stats import qmc
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, Seed, component
from services.framework.arrays import MatrixRef, read_matrix

__all__ = [
    "BENCHMARKS",
    "Posterior",
    "RuleOptimizerInput",
    "RuleOptimizerOutput",
    "expected_improvement",
    "log_marginal_likelihood",
    "make_kernel",
    "normalise_targets",
    "pareto_mask",
    "rule_optimizer",
]

MAX_DIMENSIONS = 20
MAX_OBSERVATIONS = 300
MAX_TABLE_CELLS = 5_000_000  # a table of observations is averaged down; this bounds what is read
MAX_PARETO_POINTS = 2000
MAX_OBJECTIVES = 10
CHEBYSHEV_RHO = 0.05  # ParEGO's augmentation weight
_LML_PENALTY = 1e25  # objective value where the kernel matrix is not positive definite
_SIGMA_FLOOR = 1e-12
_CHUNK_ELEMENTS = 2_000_000  # floats per block of pairwise differences
_SQRT_2PI = float(np.sqrt(2 * np.pi))

Direction = Literal["minimize", "maximize"]
BatchStrategy = Literal["kriging_believer", "constant_liar"]
Bound = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]
Score = Annotated[float, Field(ge=-1e15, le=1e15, allow_inf_nan=False)]


# ------------------------------------------------------------------------------------------------- benchmarks


def _branin(x: np.ndarray) -> np.ndarray:
    x1, x2 = x[:, 0], x[:, 1]
    b, c, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 1 / (8 * np.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def _hartmann6(x: np.ndarray) -> np.ndarray:
    inner = np.einsum("ij,nij->ni", _H6_A, (x[:, None, :] - _H6_P[None]) ** 2)
    return -np.exp(-inner) @ _H6_ALPHA


def _rosenbrock(x: np.ndarray) -> np.ndarray:
    return np.sum(100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2, axis=1)


def _sphere(x: np.ndarray) -> np.ndarray:
    return np.sum(x**2, axis=1)


@dataclass(frozen=True)
class Benchmark:
    """A test function to minimise: rows of ``x`` → values, its box and its known minimum."""

    fn: Callable[[np.ndarray], np.ndarray]
    box: Callable[[int], tuple[np.ndarray, np.ndarray]]
    minimum: float
    minimizers: Callable[[int], list[list[float]]]
    fixed_dimension: int | None


BENCHMARKS: dict[str, Benchmark] = {
    # Branin–Hoo on [−5, 10] × [0, 15]: three global minima of 0.397887 (Dixon & Szegő 1978).
    "branin": Benchmark(
        _branin,
        lambda d: (np.array([-5.0, 0.0]), np.array([10.0, 15.0])),
        0.39788735772973816,
        lambda d: [[-np.pi, 12.275], [np.pi, 2.275], [9.42477796076938, 2.475]],
        2,
    ),
    # Hartmann-6 on [0, 1]^6: minimum −3.32237.
    "hartmann6": Benchmark(
        _hartmann6,
        lambda d: (np.zeros(6), np.ones(6)),
        -3.3223680114155147,
        lambda d: [[0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]],
        6,
    ),
    # Rosenbrock on [−2.048, 2.048]^d: minimum 0 at (1, …, 1).
    "rosenbrock": Benchmark(
        _rosenbrock, lambda d: (np.full(d, -2.048), np.full(d, 2.048)), 0.0, lambda d: [[1.0] * d], None
    ),
    # Sphere on [−5.12, 5.12]^d: minimum 0 at the origin.
    "sphere": Benchmark(_sphere, lambda d: (np.full(d, -5.12), np.full(d, 5.12)), 0.0, lambda d: [[0.0] * d], None),
}


# ------------------------------------------------------------------------------------------------- inputs


class ParameterBox(ComponentInput):
    """One tunable parameter and its range."""

    name: str = Field(min_length=1, max_length=100)
    lower: Bound
    upper: Bound = Field(description="must be greater than lower")


class Observation(ComponentInput):
    """Parameters tried (in the order of ``parameters``) and the score they got."""

    x: list[Bound] = Field(min_length=1, max_length=MAX_DIMENSIONS)
    y: Score


class ObservationTable(ComponentInput):
    """Observations in a CSV/JSON/.npy table under data/: a column per parameter (named like it) and a score."""

    path: str = Field(min_length=1, max_length=1024, description="path relative to data/")
    score_column: str = Field(min_length=1, max_length=100, description="the score column's name")


class _Acquisition(ComponentInput):
    n_suggestions: int = Field(1, ge=1, le=20, description="points to suggest (a batch when > 1)")
    batch_strategy: BatchStrategy = Field("kriging_believer", description="how batch points are fantasised")
    xi: float = Field(0.0, ge=0, le=10, description="EI exploration margin, in units of the scores' SD")
    n_candidates: int = Field(2000, ge=100, le=10_000, description="random candidates for EI maximisation")
    n_local: int = Field(5, ge=0, le=10, description="best candidates refined by L-BFGS-B")
    n_restarts: int = Field(2, ge=0, le=10, description="extra random starts for the GP hyperparameters")
    seed: Seed = 0


class SuggestMode(_Acquisition):
    """Observed (parameters, score) pairs → next point(s) to try."""

    mode: Literal["suggest"]
    parameters: list[ParameterBox] = Field(min_length=1, max_length=MAX_DIMENSIONS)
    observations: list[Observation] | ObservationTable = Field(
        description=f"inline (2 to {MAX_OBSERVATIONS}) or a table whose distinct parameter rows are averaged"
    )
    direction: Direction = "maximize"

    @field_validator("observations")
    @classmethod
    def _enough(cls, value: list[Observation] | ObservationTable) -> list[Observation] | ObservationTable:
        if isinstance(value, list) and not 2 <= len(value) <= MAX_OBSERVATIONS:
            raise ValueError(f"needs 2 to {MAX_OBSERVATIONS} observations; got {len(value)}")
        return value


class OptimizeMode(ComponentInput):
    """A full BO loop on a built-in benchmark function, against random search with the same budget."""

    mode: Literal["optimize"]
    function: Literal["branin", "hartmann6", "rosenbrock", "sphere"]
    dimension: int | None = Field(
        None, ge=1, le=10, description="for rosenbrock (≥ 2) and sphere; default 2; branin is 2-D, hartmann6 6-D"
    )
    n_evaluations: int = Field(30, ge=3, le=100, description="total function evaluations (initial design included)")
    n_initial: int | None = Field(
        None, ge=2, le=100, description="Latin-hypercube initial design size; default min(2d + 1, n_evaluations − 1)"
    )
    xi: float = Field(0.0, ge=0, le=10, description="EI exploration margin, in units of the scores' SD")
    n_candidates: int = Field(1000, ge=100, le=10_000)
    n_local: int = Field(3, ge=0, le=10)
    n_restarts: int = Field(1, ge=0, le=10)
    seed: Seed = 0


class ObjectiveSpec(ComponentInput):
    name: str = Field(min_length=1, max_length=100)
    direction: Direction


class ParetoPoint(ComponentInput):
    values: list[Score] = Field(min_length=2, max_length=MAX_OBJECTIVES, description="one per objective")
    x: list[Bound] | None = Field(None, max_length=MAX_DIMENSIONS, description="parameters (for suggestions)")


class ParetoMode(_Acquisition):
    """Points scored on several objectives → the Pareto front (and, optionally, ParEGO suggestions)."""

    mode: Literal["pareto"]
    objectives: list[ObjectiveSpec] = Field(min_length=2, max_length=MAX_OBJECTIVES)
    points: list[ParetoPoint] = Field(min_length=1, max_length=MAX_PARETO_POINTS)
    parameters: list[ParameterBox] | None = Field(
        None, max_length=MAX_DIMENSIONS, description="the box; needed when n_suggestions > 0"
    )
    n_suggestions: int = Field(0, ge=0, le=20, description="ParEGO suggestions (0: front only)")


class RuleOptimizerInput(RootModel[Annotated[SuggestMode | OptimizeMode | ParetoMode, Field(discriminator="mode")]]):
    """One rule-optimiser request, chosen by ``mode``."""


# ------------------------------------------------------------------------------------------------- outputs


class GPSummary(ComponentOutput):
    kernel: str = Field(description="the fitted kernel (inputs in the unit cube, targets normalised)")
    theta: list[float] = Field(description="log hyperparameters, in scikit-learn's kernel.theta order")
    log_marginal_likelihood: float
    at_bounds: list[str] = Field(description="hyperparameters that ended at a bound of their range")
    y_mean: float = Field(description="mean used to normalise the (minimisation-oriented) targets")
    y_std: float


class Suggestion(ComponentOutput):
    x: list[float]
    parameters: dict[str, float]
    expected_improvement: float = Field(description="EI under the GP of the real observations (score units)")
    posterior_mean: float = Field(description="GP posterior mean of the score (caller's direction)")
    posterior_sd: float
    ei_when_selected: float = Field(description="EI under the fantasised GP when this batch point was chosen")


class SuggestResult(ComponentOutput):
    direction: Direction
    batch_strategy: BatchStrategy
    incumbent_x: list[float]
    incumbent_y: float
    xi_absolute: float = Field(description="ξ in score units")
    suggestions: list[Suggestion]
    gp: GPSummary
    notes: list[str]


class TraceEntry(ComponentOutput):
    x: list[float]
    y: float
    best_so_far: float
    phase: Literal["initial", "bo"]


class RandomSearchResult(ComponentOutput):
    best_value: float
    best_x: list[float]
    best_so_far: list[float]


class OptimizeResult(ComponentOutput):
    function: str
    dimension: int
    lower: list[float]
    upper: list[float]
    known_minimum: float
    known_minimizers: list[list[float]]
    n_evaluations: int
    n_initial: int
    best_value: float
    best_x: list[float]
    gap: float = Field(description="best_value − known_minimum")
    trace: list[TraceEntry]
    random_search: RandomSearchResult
    bo_better_than_random: bool


class ParetoResult(ComponentOutput):
    objectives: list[str]
    directions: list[Direction]
    front_indices: list[int] = Field(description="indices of non-dominated points, best first on the first objective")
    front: list[list[float]] = Field(description="their objective values")
    ranks: list[int] = Field(description="non-dominated sorting rank per point (1 = on the front)")
    scalarization: str | None
    weights: list[float] | None = Field(description="ParEGO weights λ used for the suggestions")
    suggestions: list[Suggestion]
    gp: GPSummary | None
    notes: list[str]


class RuleOptimizerOutput(ComponentOutput):
    mode: Literal["suggest", "optimize", "pareto"]
    suggest: SuggestResult | None = None
    optimize: OptimizeResult | None = None
    pareto: ParetoResult | None = None


# ------------------------------------------------------------------------------------------------- GP and EI


def make_kernel(dimension: int) -> Kernel:
    """The surrogate's kernel before fitting (inputs in the unit cube, targets normalised)."""
    return ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
        length_scale=np.full(dimension, 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5
    ) + WhiteKernel(1e-4, (1e-8, 1e-1))


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """Closed-form EI for *minimisation*: ``(f* − μ − ξ) Φ(z) + σ φ(z)``, ``z = (f* − μ − ξ)/σ``."""
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    gain = best - mu - xi
    positive = sigma > _SIGMA_FLOOR
    safe = np.where(positive, sigma, 1.0)
    z = gain / safe
    ei = np.where(positive, gain * stats.norm.cdf(z) + safe * stats.norm.pdf(z), np.maximum(gain, 0.0))
    return np.maximum(ei, 0.0)


def _gp(kernel: Kernel, u: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
    return GaussianProcessRegressor(kernel=kernel, optimizer=None, normalize_y=True).fit(u, y)


_GPR_JITTER = 1e-10  # GaussianProcessRegressor's default ``alpha``, added to the kernel matrix's diagonal


def normalise_targets(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(y − mean) / sd`` as ``normalize_y=True`` does (an SD below 10 machine epsilons counts as 1)."""
    mean, sd = float(np.mean(y)), float(np.std(y))
    sd = 1.0 if sd < 10 * np.finfo(float).eps else sd
    return (y - mean) / sd, mean, sd


def log_marginal_likelihood(u: np.ndarray, y_normalised: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """Log marginal likelihood of the surrogate and its gradient in log-hyperparameters ``theta``.

    The value ``GaussianProcessRegressor.log_marginal_likelihood(theta, eval_gradient=True)`` gives for
    :func:`make_kernel` (order: log C, log length scales, log noise), written out in numpy because the
    optimiser calls it hundreds of times per fit. ``−inf`` when the kernel matrix is not positive definite.
    """
    c, length, noise = np.exp(theta[0]), np.exp(theta[1:-1]), np.exp(theta[-1])
    sq = ((u[:, None, :] - u[None, :, :]) / length) ** 2  # (m, m, d)
    s5r = np.sqrt(5.0 * sq.sum(axis=2))
    decay = np.exp(-s5r)
    k_signal = c * (1.0 + s5r + s5r**2 / 3.0) * decay
    k = k_signal + (noise + _GPR_JITTER) * np.eye(len(u))
    try:
        chol = linalg.cholesky(k, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return -np.inf, np.zeros_like(theta)
    alpha = linalg.cho_solve((chol, True), y_normalised, check_finite=False)
    lml = -0.5 * y_normalised @ alpha - np.log(np.diag(chol)).sum() - 0.5 * len(u) * np.log(2 * np.pi)
    inner = np.outer(alpha, alpha) - linalg.cho_solve((chol, True), np.eye(len(u)), check_finite=False)
    d_length = (5.0 * c / 3.0) * ((1.0 + s5r) * decay)[:, :, None] * sq  # dK/dlog ℓ_j
    grad = np.concatenate(
        [
            [0.5 * np.sum(inner * k_signal)],
            0.5 * np.einsum("ij,ijd->d", inner, d_length),
            [0.5 * noise * np.trace(inner)],
        ]
    )
    return float(lml), grad


def _fit_gp(
    u: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    n_restarts: int,
    theta0: np.ndarray | None = None,
    field: str = "observations",
) -> tuple[GaussianProcessRegressor, float]:
    """Fit the GP, its hyperparameters by multi-start L-BFGS-B on the log marginal likelihood."""
    kernel = make_kernel(u.shape[1])
    bounds = kernel.bounds
    y_normalised, _, _ = normalise_targets(y)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        lml, grad = log_marginal_likelihood(u, y_normalised, theta)
        if not np.isfinite(lml):
            return _LML_PENALTY, np.zeros_like(theta)
        return -lml, -grad

    first = kernel.theta if theta0 is None else theta0
    starts = [first, *rng.uniform(bounds[:, 0], bounds[:, 1], size=(n_restarts, bounds.shape[0]))]
    fits = [optimize.minimize(objective, s, jac=True, method="L-BFGS-B", bounds=bounds) for s in starts]
    best = min(fits, key=lambda r: float(r.fun))
    if float(best.fun) >= _LML_PENALTY:
        raise InvalidInput(field, "the GP kernel matrix is singular at every start (many near-duplicate points?)")
    theta = np.clip(best.x, bounds[:, 0], bounds[:, 1])
    return _gp(kernel.clone_with_theta(theta), u, y), -float(best.fun)


def _summary(gp: GaussianProcessRegressor, lml: float) -> GPSummary:
    kernel = gp.kernel_
    bounds, theta = kernel.bounds, kernel.theta
    names = [
        f"{h.name}[{i}]" if h.n_elements > 1 else h.name
        for h in kernel.hyperparameters
        if not h.fixed
        for i in range(h.n_elements)
    ]
    close = np.isclose(theta[:, None], bounds, rtol=0, atol=1e-3).any(axis=1)
    return GPSummary(
        kernel=str(kernel),
        theta=theta.tolist(),
        log_marginal_likelihood=lml,
        at_bounds=[n for n, c in zip(names, close, strict=True) if c],
        y_mean=float(np.ravel(gp._y_train_mean)[0]),
        y_std=float(np.ravel(gp._y_train_std)[0]),
    )


class Posterior:
    """Posterior mean and sd of a fitted GP (the numbers ``gp.predict(u, return_std=True)`` gives), with gradients.

    Computed from the regressor's own fitted state (``kernel_``, ``X_train_``, ``alpha_``, ``L_``, the target
    normalisation) so that EI can be maximised with analytic gradients; like scikit-learn, the sd is that of a
    new noisy observation (the white-noise level is part of the prior variance) and negative variances from
    round-off are clipped to zero.
    """

    def __init__(self, gp: GaussianProcessRegressor) -> None:
        kernel = gp.kernel_
        self.c = float(kernel.k1.k1.constant_value)
        self.length = np.broadcast_to(np.asarray(kernel.k1.k2.length_scale, dtype=float), (gp.X_train_.shape[1],))
        self.prior_var = self.c + float(kernel.k2.noise_level)
        self.x_train = gp.X_train_
        self.alpha = np.ravel(gp.alpha_)
        self.chol = gp.L_
        self.y_mean = float(np.ravel(gp._y_train_mean)[0])
        self.y_std = float(np.ravel(gp._y_train_std)[0])

    def __call__(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # In chunks: the pairwise differences are (points × observations × dimensions).
        step = max(1, _CHUNK_ELEMENTS // (self.x_train.size + 1))
        parts = [self._evaluate(u[i : i + step], gradient=False)[:2] for i in range(0, len(u), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def with_gradient(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, sd and their gradients (n × d) with respect to the unit-cube inputs."""
        mu, sd, dmu, dsd = self._evaluate(u, gradient=True)
        assert dmu is not None and dsd is not None
        return mu, sd, dmu, dsd

    def _evaluate(
        self, u: np.ndarray, *, gradient: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        scaled = (u[:, None, :] - self.x_train[None, :, :]) / self.length  # (n, m, d)
        s5r = np.sqrt(5.0 * np.sum(scaled**2, axis=2))
        decay = np.exp(-s5r)
        k = self.c * (1.0 + s5r + s5r**2 / 3.0) * decay  # Matern 5/2
        v = linalg.solve_triangular(self.chol, k.T, lower=True, check_finite=False)  # (m, n)
        var = np.maximum(self.prior_var - np.sum(v**2, axis=0), 0.0)
        mu = self.y_mean + self.y_std * (k @ self.alpha)
        sd = self.y_std * np.sqrt(var)
        if not gradient:
            return mu, sd, None, None
        # dk/du = −(5c/3)(1 + √5 r) e^{−√5 r} (u − x)/ℓ²
        dk = (-(5.0 * self.c / 3.0) * (1.0 + s5r) * decay)[:, :, None] * scaled / self.length
        dmu = self.y_std * np.einsum("nmd,m->nd", dk, self.alpha)
        w = linalg.solve_triangular(self.chol.T, v, lower=False, check_finite=False)  # K⁻¹ k*, (m, n)
        dvar = -2.0 * np.einsum("nmd,mn->nd", dk, w)
        root = np.sqrt(var)[:, None]
        dsd = np.where(root > 0, self.y_std * dvar / (2.0 * np.where(root > 0, root, 1.0)), 0.0)
        return mu, sd, dmu, dsd


def _ei_and_gradient(post: Posterior, z: np.ndarray, best: float, xi: float) -> tuple[float, np.ndarray]:
    mu, sd, dmu, dsd = post.with_gradient(z[None, :])
    if sd[0] <= _SIGMA_FLOOR:
        gain = best - mu[0] - xi
        return max(gain, 0.0), (-dmu[0] if gain > 0 else np.zeros_like(z))
    t = (best - mu[0] - xi) / sd[0]
    cdf, pdf = special.ndtr(t), np.exp(-0.5 * t * t) / _SQRT_2PI
    ei = (best - mu[0] - xi) * cdf + sd[0] * pdf
    # dEI/dμ = −Φ(z), dEI/dσ = φ(z)
    return float(max(ei, 0.0)), -cdf * dmu[0] + pdf * dsd[0]


def _argmax_ei(
    post: Posterior, best: float, xi: float, rng: np.random.Generator, n_candidates: int, n_local: int
) -> tuple[np.ndarray, float]:
    """The unit-cube point of largest EI: dense random candidates, the best few refined by L-BFGS-B."""
    d = post.x_train.shape[1]
    cand = rng.random((n_candidates, d))
    mu, sd = post(cand)
    ei = expected_improvement(mu, sd, best, xi)
    if ei.max() <= 0.0:
        # EI underflowed everywhere: fall back to the most uncertain candidate (pure exploration).
        i = int(np.argmax(sd))
        return cand[i], 0.0
    order = np.argsort(-ei, kind="stable")
    best_u, best_ei = cand[order[0]], float(ei[order[0]])
    order = order[:n_local]

    def neg_ei(z: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _ei_and_gradient(post, z, best, xi)
        return -value, -grad

    for i in order:
        res = optimize.minimize(neg_ei, cand[i], jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * d)
        if -float(res.fun) > best_ei:
            best_u, best_ei = np.clip(res.x, 0.0, 1.0), -float(res.fun)
    return best_u, best_ei


def _batch(
    u: np.ndarray,
    y: np.ndarray,
    *,
    request: _Acquisition,
    lower: np.ndarray,
    upper: np.ndarray,
    names: list[str],
    sign: float,
    rng: np.random.Generator,
    field: str,
) -> tuple[list[Suggestion], GPSummary, float, list[str]]:
    """Suggestions for minimising ``y`` (already oriented), mapped back to the caller's units and direction."""
    gp, lml = _fit_gp(u, y, rng, request.n_restarts, field=field)
    summary = _summary(gp, lml)
    xi_abs = request.xi * summary.y_std
    theta = gp.kernel_.theta
    notes: list[str] = []
    fantasy_u, fantasy_y, fantasy = u, y, Posterior(gp)
    chosen: list[tuple[np.ndarray, float]] = []
    for _ in range(request.n_suggestions):
        point, ei_sel = _argmax_ei(fantasy, float(fantasy_y.min()), xi_abs, rng, request.n_candidates, request.n_local)
        if ei_sel == 0.0:
            notes.append("EI was zero at every candidate; a point of largest posterior sd was chosen instead")
        chosen.append((point, ei_sel))
        if len(chosen) < request.n_suggestions:
            # Fantasise the pending point, keeping the fitted hyperparameters.
            if request.batch_strategy == "kriging_believer":
                lie = float(fantasy(point[None, :])[0][0])
            else:
                lie = float(y.min())
            fantasy_u = np.vstack([fantasy_u, point])
            fantasy_y = np.append(fantasy_y, lie)
            fantasy = Posterior(_gp(gp.kernel_.clone_with_theta(theta), fantasy_u, fantasy_y))
    points = np.array([p for p, _ in chosen])
    mu, sd = Posterior(gp)(points)
    ei = expected_improvement(mu, sd, float(y.min()), xi_abs)
    x = lower + points * (upper - lower)
    suggestions = [
        Suggestion(
            x=x[i].tolist(),
            parameters=dict(zip(names, x[i].tolist(), strict=True)),
            expected_improvement=float(ei[i]),
            posterior_mean=float(sign * mu[i]),
            posterior_sd=float(sd[i]),
            ei_when_selected=chosen[i][1],
        )
        for i in range(len(chosen))
    ]
    if summary.at_bounds:
        notes.append(f"GP hyperparameters at a bound of their range: {', '.join(summary.at_bounds)}")
    return suggestions, summary, xi_abs, list(dict.fromkeys(notes))


# ------------------------------------------------------------------------------------------------- validation


def _box(parameters: list[ParameterBox], field: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    for i, p in enumerate(parameters):
        if not p.lower < p.upper:
            raise InvalidInput(f"{field}[{i}].upper", f"must be greater than lower ({p.lower}); got {p.upper}")
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise InvalidInput(field, "parameter names must be unique")
    return np.array([p.lower for p in parameters]), np.array([p.upper for p in parameters]), names


def _unit(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, field: str, rows: list[int]) -> np.ndarray:
    outside = (x < lower) | (x > upper)
    if outside.any():
        i = rows[int(np.flatnonzero(outside.any(axis=1))[0])]
        raise InvalidInput(f"{field}[{i}].x", "lies outside the parameter box")
    return (x - lower) / (upper - lower)


def _matrix(rows: list[list[float] | None], dimension: int, field: str) -> np.ndarray:
    for i, row in enumerate(rows):
        if row is None:
            raise InvalidInput(f"{field}[{i}].x", "is required for suggestions")
        if len(row) != dimension:
            raise InvalidInput(f"{field}[{i}].x", f"must have {dimension} values (one per parameter); got {len(row)}")
    return np.array(rows, dtype=float).reshape(len(rows), dimension)


# ------------------------------------------------------------------------------------------------- modes


def _observed(request: SuggestMode, names: list[str], ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) pairs: inline, or read from a table and averaged per distinct parameter row."""
    table = request.observations
    if isinstance(table, list):
        return _matrix([o.x for o in table], len(names), "observations"), np.array([o.y for o in table])
    ref = MatrixRef(path=table.path, columns=[*names, table.score_column])
    data, _ = read_matrix(ref, ctx.data_dir, field="observations", max_cells=MAX_TABLE_CELLS)
    if not np.isfinite(data).all():
        raise InvalidInput("observations", "the table has empty or non-finite cells in the chosen columns")
    x_rows, inverse = np.unique(data[:, :-1], axis=0, return_inverse=True)
    if not 2 <= len(x_rows) <= MAX_OBSERVATIONS:
        raise InvalidInput(
            "observations", f"needs 2 to {MAX_OBSERVATIONS} distinct parameter rows; the table has {len(x_rows)}"
        )
    y = np.bincount(inverse.ravel(), weights=data[:, -1]) / np.bincount(inverse.ravel())
    return x_rows, y


def _suggest(request: SuggestMode, ctx: RunContext) -> SuggestResult:
    lower, upper, names = _box(request.parameters, "parameters")
    x, scores = _observed(request, names, ctx)
    u = _unit(x, lower, upper, "observations", list(range(len(x))))
    sign = 1.0 if request.direction == "minimize" else -1.0
    y = sign * scores
    rng = np.random.default_rng(request.seed)
    suggestions, gp, xi_abs, notes = _batch(
        u, y, request=request, lower=lower, upper=upper, names=names, sign=sign, rng=rng, field="observations"
    )
    best = int(np.argmin(y))
    return SuggestResult(
        direction=request.direction,
        batch_strategy=request.batch_strategy,
        incumbent_x=x[best].tolist(),
        incumbent_y=float(sign * y[best]),
        xi_absolute=xi_abs,
        suggestions=suggestions,
        gp=gp,
        notes=notes,
    )


def _optimize(request: OptimizeMode) -> OptimizeResult:
    bench = BENCHMARKS[request.function]
    if bench.fixed_dimension is not None:
        if request.dimension not in (None, bench.fixed_dimension):
            raise InvalidInput("dimension", f"{request.function} is {bench.fixed_dimension}-dimensional")
        d = bench.fixed_dimension
    else:
        d = request.dimension or 2
        if request.function == "rosenbrock" and d < 2:
            raise InvalidInput("dimension", "rosenbrock needs at least 2 dimensions")
    n_init = request.n_initial if request.n_initial is not None else min(2 * d + 1, request.n_evaluations - 1)
    if n_init >= request.n_evaluations:
        raise InvalidInput("n_initial", f"must be less than n_evaluations ({request.n_evaluations})")
    lower, upper = bench.box(d)
    init_rng, bo_rng, random_rng = np.random.default_rng(request.seed).spawn(3)

    u = qmc.LatinHypercube(d, rng=init_rng).random(n_init)
    y = bench.fn(lower + u * (upper - lower))
    theta: np.ndarray | None = None
    for _ in range(request.n_evaluations - n_init):
        gp, _lml = _fit_gp(u, y, bo_rng, request.n_restarts, theta0=theta)
        theta = gp.kernel_.theta  # warm start for the next fit
        post = Posterior(gp)
        point, _ = _argmax_ei(
            post, float(y.min()), request.xi * post.y_std, bo_rng, request.n_candidates, request.n_local
        )
        u = np.vstack([u, point])
        y = np.append(y, bench.fn((lower + point * (upper - lower))[None, :]))
    x = lower + u * (upper - lower)
    running = np.minimum.accumulate(y)
    best = int(np.argmin(y))

    random_x = lower + random_rng.random((request.n_evaluations, d)) * (upper - lower)
    random_y = bench.fn(random_x)
    random_best = int(np.argmin(random_y))
    return OptimizeResult(
        function=request.function,
        dimension=d,
        lower=lower.tolist(),
        upper=upper.tolist(),
        known_minimum=bench.minimum,
        known_minimizers=bench.minimizers(d),
        n_evaluations=request.n_evaluations,
        n_initial=n_init,
        best_value=float(y[best]),
        best_x=x[best].tolist(),
        gap=float(y[best] - bench.minimum),
        trace=[
            TraceEntry(
                x=x[i].tolist(), y=float(y[i]), best_so_far=float(running[i]), phase="initial" if i < n_init else "bo"
            )
            for i in range(len(y))
        ],
        random_search=RandomSearchResult(
            best_value=float(random_y[random_best]),
            best_x=random_x[random_best].tolist(),
            best_so_far=np.minimum.accumulate(random_y).tolist(),
        ),
        bo_better_than_random=bool(y[best] < random_y[random_best]),
    )


def _dominance(costs: np.ndarray, block: int = 256) -> np.ndarray:
    """``dom[j, i]``: row j dominates row i (≤ in every objective, < in one; all minimised), in row blocks."""
    n = len(costs)
    dom = np.zeros((n, n), dtype=bool)
    for start in range(0, n, block):
        rows = costs[start : start + block, None, :]
        dom[start : start + block] = (rows <= costs[None]).all(axis=2) & (rows < costs[None]).any(axis=2)
    return dom


def pareto_mask(costs: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``costs`` (all objectives minimised): no other row is ≤ everywhere and < somewhere."""
    return ~_dominance(costs).any(axis=0)


def _ranks(costs: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: rank 1 is the front, rank 2 the front of the rest, and so on."""
    dom = _dominance(costs)
    dominators = dom.sum(axis=0)
    ranks = np.zeros(len(costs), dtype=int)
    rank = 0
    while (ranks == 0).any():
        rank += 1
        front = (ranks == 0) & (dominators == 0)
        ranks[front] = rank
        dominators -= dom[front].sum(axis=0)
    return ranks


def _pareto(request: ParetoMode) -> ParetoResult:
    m = len(request.objectives)
    for i, p in enumerate(request.points):
        if len(p.values) != m:
            raise InvalidInput(f"points[{i}].values", f"must have {m} values (one per objective); got {len(p.values)}")
    signs = np.array([1.0 if o.direction == "minimize" else -1.0 for o in request.objectives])
    values = np.array([p.values for p in request.points], dtype=float)
    costs = values * signs
    ranks = _ranks(costs)
    front = np.flatnonzero(ranks == 1)
    front = front[np.lexsort((front, costs[front, 0]))]
    suggestions: list[Suggestion] = []
    gp_summary, weights, scalarization, notes = None, None, None, []
    if request.n_suggestions > 0:
        if not request.parameters:
            raise InvalidInput("parameters", "the parameter box is required when n_suggestions > 0")
        lower, upper, names = _box(request.parameters, "parameters")
        x = _matrix([p.x for p in request.points], len(names), "points")
        if len(x) < 2:
            raise InvalidInput("points", "suggestions need at least 2 points")
        u = _unit(x, lower, upper, "points", list(range(len(x))))
        rng = np.random.default_rng(request.seed)
        lam = rng.dirichlet(np.ones(m))  # uniform on the simplex
        span = np.ptp(costs, axis=0)
        scaled = (costs - costs.min(axis=0)) / np.where(span > 0, span, 1.0)
        f = (scaled * lam).max(axis=1) + CHEBYSHEV_RHO * (scaled @ lam)
        suggestions, gp_summary, _, notes = _batch(
            u, f, request=request, lower=lower, upper=upper, names=names, sign=1.0, rng=rng, field="points"
        )
        weights = lam.tolist()
        scalarization = (
            f"augmented Chebyshev max_j(λ_j f_j) + {CHEBYSHEV_RHO}·Σ_j λ_j f_j of min–max normalised, "
            "minimisation-oriented objectives (ParEGO); suggestion scores are in these units"
        )
    return ParetoResult(
        objectives=[o.name for o in request.objectives],
        directions=[o.direction for o in request.objectives],
        front_indices=front.tolist(),
        front=values[front].tolist(),
        ranks=ranks.tolist(),
        scalarization=scalarization,
        weights=weights,
        suggestions=suggestions,
        gp=gp_summary,
        notes=notes,
    )


@component(
    "RuleOptimizer",
    tier="tier1",
    capabilities=["bayesian_optimization", "rule_tuning", "pareto_front"],
    example={
        "mode": "suggest",
        "parameters": [
            {"name": "threshold", "lower": 0.0, "upper": 1.0},
            {"name": "max_examples", "lower": 1.0, "upper": 10.0},
        ],
        "observations": [
            {"x": [0.1, 2.0], "y": 0.61},
            {"x": [0.4, 5.0], "y": 0.72},
            {"x": [0.7, 8.0], "y": 0.66},
            {"x": [0.9, 3.0], "y": 0.58},
            {"x": [0.5, 6.5], "y": 0.74},
        ],
        "direction": "maximize",
        "n_suggestions": 2,
        "seed": 7,
    },
    examples=[
        {"mode": "optimize", "function": "branin", "n_evaluations": 15, "seed": 1},
        {
            "mode": "pareto",
            "objectives": [
                {"name": "quality", "direction": "maximize"},
                {"name": "latency_ms", "direction": "minimize"},
            ],
            "points": [
                {"values": [0.70, 120.0]},
                {"values": [0.80, 180.0]},
                {"values": [0.75, 200.0]},
                {"values": [0.60, 90.0]},
            ],
        },
    ],
)
def rule_optimizer(request: RuleOptimizerInput, ctx: RunContext) -> RuleOptimizerOutput:
    """Tune rule parameters by Gaussian-process Bayesian optimisation with expected improvement.

    ``mode="suggest"``: from observed (parameters, score) pairs over a parameter box, the next point(s) to try
    (a batch by Kriging believer or constant liar) with their EI and GP posterior mean and sd.
    ``mode="optimize"``: a BO loop on a built-in benchmark (branin, hartmann6, rosenbrock, sphere) for a
    budget of evaluations, with the trace and a same-budget random search. ``mode="pareto"``: the
    non-dominated front of multi-objective points (e.g. quality vs latency) with Pareto ranks, and optional
    ParEGO suggestions (EI on a random augmented-Chebyshev scalarisation). Surrogate: scikit-learn's GP with
    a Matern-5/2 + white-noise kernel on the unit cube and normalised scores; all randomness from ``seed``.
    """
    op = request.root
    # The matrices are tiny and the work is many small BLAS calls, where waking BLAS threads costs more than it
    # saves (several times slower on a loaded machine); results do not depend on the thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        if isinstance(op, SuggestMode):
            return RuleOptimizerOutput(mode="suggest", suggest=_suggest(op, ctx))
        if isinstance(op, OptimizeMode):
            return RuleOptimizerOutput(mode="optimize", optimize=_optimize(op))
        return RuleOptimizerOutput(mode="pareto", pareto=_pareto(op))
