"""Synthetic prompt-feature datasets from fitted statistical models, seeded and reproducible, with quality figures.

Two modes (a discriminated union on ``mode``):

``fit`` — learn the joint distribution of real feature data (inline ``rows`` or a CSV under ``data/``) and sample
``n`` new rows from it.

* Categorical columns: rows are grouped into strata by their joint category combination. Stratum sizes of the
  synthetic table are multinomial with the real shares; inside a stratum the numeric columns come from a model
  fitted to that stratum (if it has at least ``min_stratum_rows`` real rows, at most 50 strata), else from one
  model fitted to all rows. This keeps the category–category and category–numeric dependence.
* ``gaussian_copula``: each numeric column's empirical marginal is mapped to normal scores
  ``z_ij = Φ⁻¹(rank_ij / (m + 1))`` (ties: average rank); the copula correlation is
  ``R_jk = corr(z_j, z_k) / (a_j a_k)``, where ``a_j`` is the shrinkage of a latent normal's correlations by column
  j's tied normal scores (the ad hoc polyserial correction of Olsson, Drasgow & Dorans 1982; ≈ 1 for continuous
  columns, ≈ 0.8 for a balanced binary one), then made positive definite if needed.
  Sampling: ``g ~ N(0, R)``, ``u = Φ(g)``, ``x = F̂_j⁻¹(u)``
  where ``F̂_j⁻¹`` interpolates linearly between the order statistics at plotting positions ``i / (m + 1)``
  (so values stay within the observed range); discrete columns (≤ 10 levels and at most m/2) use the step
  quantile ``x_(⌈u m⌉)`` so that only observed levels appear with their observed shares.
* ``gaussian_mixture``: scikit-learn's ``GaussianMixture`` (full covariances) on the standardised columns, the
  number of components chosen by the lowest BIC within ``[min_components, max_components]``; samples are drawn
  from the fitted weights, means and covariances with the run's generator, clipped to the observed range,
  discrete columns snapped to the nearest observed level.
* Integer-valued columns are rounded. Quality: :mod:`services.stats.fidelity` figures (KS per column, Pearson and
  Spearman correlation-matrix errors, moments, total variation per categorical column, distance to closest
  record) of the synthetic table against the real one, and the same figures for the naive baseline that resamples
  every column independently (same ``n``). The fitted model should beat that baseline on correlation error.

``prompt_features`` — the documented prompt-feature generator (all parameters in the input, with defaults):

* Latent normal scores ``z = (z_clarity, z_length, z_specificity, z_complexity, z_context_richness,
  z_actionability) ~ N(0, R)`` with ``R`` = ``correlation`` (default :data:`DEFAULT_CORRELATION`); each feature is
  ``x_j = F_j⁻¹(Φ(z_j))`` (a Gaussian copula), so Spearman's ρ between features j and k is exactly
  ``(6/π)·arcsin(R_jk / 2)``.
* Marginals: clarity ~ Beta(5, 2), specificity ~ Beta(4, 3), complexity ~ Beta(2, 3), context_richness ~ Beta(2, 4),
  actionability ~ Beta(4, 2) — all scores in [0, 1]; length (words) ~ LogNormal(ln 120, 0.6) truncated to
  [5, 4000] and rounded to an integer.
* ``domain`` ~ Categorical(weights), independent of the features; default :data:`DEFAULT_DOMAINS`.
* Effectiveness: latent ``e = Σ_j β_j z_j + σ ε`` with ``ε ~ N(0, 1)`` (defaults β = clarity 0.35, length 0.05,
  specificity 0.30, complexity −0.15, context_richness 0.20, actionability 0.30; σ = 0.5), so
  ``s² = Var(e) = βᵀRβ + σ²`` and ``corr(e, z_j) = (Rβ)_j / s``. ``effectiveness_score = Φ(e / s)`` is uniform on
  (0, 1) (a model percentile); ``effectiveness_tier`` cuts it at ``tier_cuts`` (default 0.3, 0.7 → low 30 %,
  medium 40 %, high 30 %).
* Model check: sample mean and SD of every column against the model's (Beta: ``a/(a+b)``,
  ``ab/((a+b)²(a+b+1))``; truncated log-normal: ``E[X^k] = e^{kμ+k²σ²/2} [Φ(β'−kσ) − Φ(α'−kσ)] / [Φ(β') − Φ(α')]``
  with ``α' = (ln lo − μ)/σ``, ``β' = (ln hi − μ)/σ``; score: 1/2 and 1/√12), the Spearman matrix against
  ``(6/π)·arcsin(R̃/2)`` (R̃: R extended by the effectiveness row ``(Rβ)/s``), and domain and tier shares against
  their probabilities (total variation, chi-square).

Output: the rows inline when ``n ≤ 5000`` (``output="auto"`` or ``"inline"``), else a CSV written to
``outputs/…/synthetic.csv`` and listed in the envelope. Same seed → identical rows.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, RootModel
from scipy import special, stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from mlmesh.errors import BadRequest, InvalidInput
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component
from services.stats import fidelity

__all__ = [
    "DEFAULT_CORRELATION",
    "DEFAULT_DOMAINS",
    "FEATURES",
    "FitRequest",
    "ProductionSyntheticDataGeneratorInput",
    "ProductionSyntheticDataGeneratorOutput",
    "PromptFeaturesRequest",
    "production_synthetic_data_generator",
]

MAX_ROWS = 200_000  # synthetic rows per run
MAX_INLINE_ROWS = 5_000  # rows returned in the JSON body; more go to a CSV file
MAX_FIT_ROWS = 100_000  # real rows accepted for fitting
MAX_FIT_COLUMNS = 50
MAX_CSV_BYTES = 200 * 1024 * 1024
MIN_FIT_ROWS = 10
MAX_STRATA = 50  # strata with a model of their own; smaller ones share the pooled model
DISCRETE_MAX_LEVELS = 10
MIN_QUALITY_ROWS = 20
DCR_SYNTHETIC_ROWS = 2_000  # privacy figures on row subsamples: k-d tree queries grow fast with dimension
DCR_REAL_ROWS = 5_000

FEATURES = ("clarity", "length", "specificity", "complexity", "context_richness", "actionability")
SCORE_FEATURES = ("clarity", "specificity", "complexity", "context_richness", "actionability")

# Latent (normal-score) correlation of the prompt features, in FEATURES order. Clear prompts tend to be specific
# and actionable; long prompts tend to be complex and rich in context; complexity slightly hurts clarity.
DEFAULT_CORRELATION: tuple[tuple[float, ...], ...] = (
    (1.0, -0.1, 0.5, -0.2, 0.3, 0.5),
    (-0.1, 1.0, 0.2, 0.5, 0.5, 0.0),
    (0.5, 0.2, 1.0, 0.1, 0.4, 0.4),
    (-0.2, 0.5, 0.1, 1.0, 0.3, -0.1),
    (0.3, 0.5, 0.4, 0.3, 1.0, 0.2),
    (0.5, 0.0, 0.4, -0.1, 0.2, 1.0),
)
DEFAULT_DOMAINS: dict[str, float] = {
    "general": 0.30,
    "coding": 0.25,
    "writing": 0.20,
    "analysis": 0.15,
    "education": 0.10,
}

ColumnName = Annotated[str, Field(min_length=1, max_length=100)]
Cell = FiniteFloat | Annotated[str, Field(max_length=200)]


# --------------------------------------------------------------------------------------------------------- inputs


class FitRequest(ComponentInput):
    """Fit a Gaussian copula or mixture to real feature data and sample from it."""

    mode: Literal["fit"]
    rows: list[Annotated[dict[ColumnName, Cell], Field(max_length=MAX_FIT_COLUMNS + 10)]] | None = Field(
        None,
        max_length=MAX_FIT_ROWS,
        description="real records, each an object of column → number (or string for categorical columns)",
    )
    data_path: str | None = Field(
        None, min_length=1, max_length=1024, description="CSV with a header row, relative to data/ (instead of rows)"
    )
    columns: list[ColumnName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FIT_COLUMNS,
        description="numeric columns to model; default: every column not listed as categorical",
    )
    categorical: list[ColumnName] = Field(
        default_factory=list, max_length=10, description="categorical columns (values compared as strings)"
    )
    model: Literal["gaussian_copula", "gaussian_mixture"] = "gaussian_copula"
    min_components: int = Field(1, ge=1, le=20, description="mixture: fewest components tried")
    max_components: int = Field(6, ge=1, le=20, description="mixture: most components tried (lowest BIC wins)")
    min_stratum_rows: int = Field(
        30, ge=5, le=MAX_FIT_ROWS, description="real rows a category combination needs for a model of its own"
    )
    n: int | None = Field(None, ge=1, le=MAX_ROWS, description="synthetic rows; default: as many as the real rows")
    output: Literal["auto", "inline", "file"] = Field(
        "auto", description=f"auto: inline up to {MAX_INLINE_ROWS} rows, else a CSV file"
    )
    seed: Seed = 0


class BetaMarginal(ComponentInput):
    """Beta(alpha, beta) on [0, 1]."""

    # Shapes below 1e-6 put all mass at 0 and 1 anyway; subnormal ones underflow the model SD to 0.
    alpha: float = Field(ge=1e-6, le=1000)
    beta: float = Field(ge=1e-6, le=1000)


class LengthMarginal(ComponentInput):
    """Prompt length in words: LogNormal(ln median, sigma) truncated to [minimum, maximum], rounded."""

    median: float = Field(120.0, gt=0, le=1e6, description="median of the untruncated log-normal (words)")
    sigma: float = Field(0.6, ge=1e-6, le=5, description="SD of log(length)")  # subnormal: standardising overflowed
    minimum: int = Field(5, ge=1, le=1_000_000)
    maximum: int = Field(4000, ge=2, le=1_000_000)


class EffectivenessModel(ComponentInput):
    """Latent linear model ``e = Σ β_j z_j + σ ε`` on the features' normal scores; tiers cut Φ(e / sd(e))."""

    clarity: float = Field(0.35, ge=-10, le=10)
    length: float = Field(0.05, ge=-10, le=10)
    specificity: float = Field(0.30, ge=-10, le=10)
    complexity: float = Field(-0.15, ge=-10, le=10)
    context_richness: float = Field(0.20, ge=-10, le=10)
    actionability: float = Field(0.30, ge=-10, le=10)
    noise_sd: float = Field(0.5, ge=1e-6, le=100, description="σ of the noise ε")  # subnormal: sd(e) underflowed to 0
    tier_cuts: list[float] = Field(
        default_factory=lambda: [0.3, 0.7],
        min_length=1,
        max_length=9,
        description="increasing cut points in (0, 1) of the effectiveness score",
    )
    tier_labels: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=lambda: ["low", "medium", "high"],
        min_length=2,
        max_length=10,
        description="one more label than cut points, lowest tier first",
    )


class PromptFeaturesRequest(ComponentInput):
    """Sample the documented prompt-feature model (see the component description for the model)."""

    mode: Literal["prompt_features"]
    n: int = Field(1000, ge=1, le=MAX_ROWS, description="synthetic rows")
    clarity: BetaMarginal = BetaMarginal(alpha=5, beta=2)
    specificity: BetaMarginal = BetaMarginal(alpha=4, beta=3)
    complexity: BetaMarginal = BetaMarginal(alpha=2, beta=3)
    context_richness: BetaMarginal = BetaMarginal(alpha=2, beta=4)
    actionability: BetaMarginal = BetaMarginal(alpha=4, beta=2)
    length: LengthMarginal = LengthMarginal()
    correlation: list[Annotated[list[FiniteFloat], Field(min_length=6, max_length=6)]] | None = Field(
        None,
        min_length=6,
        max_length=6,
        description="6 × 6 latent correlation in the order " + ", ".join(FEATURES) + "; default DEFAULT_CORRELATION",
    )
    domains: dict[Annotated[str, Field(min_length=1, max_length=50)], Annotated[float, Field(ge=0, le=1e6)]] | None = (
        Field(None, min_length=1, max_length=50, description="domain → weight (normalised); default DEFAULT_DOMAINS")
    )
    effectiveness: EffectivenessModel = EffectivenessModel()
    output: Literal["auto", "inline", "file"] = Field(
        "auto", description=f"auto: inline up to {MAX_INLINE_ROWS} rows, else a CSV file"
    )
    seed: Seed = 0


class ProductionSyntheticDataGeneratorInput(
    RootModel[Annotated[FitRequest | PromptFeaturesRequest, Field(discriminator="mode")]]
):
    """``mode="fit"`` (copula or mixture fitted to real data) or ``mode="prompt_features"`` (documented model)."""


# -------------------------------------------------------------------------------------------------------- outputs


class ColumnInfo(ComponentOutput):
    name: str
    kind: Literal["continuous", "integer", "discrete", "categorical"]


class MatrixErrorFigures(ComponentOutput):
    frobenius: float = Field(description="||A − B||_F over the full matrix")
    mean_abs: float = Field(description="mean |a_jk − b_jk| over pairs j < k")
    max_abs: float


class DcrFigures(ComponentOutput):
    synthetic_rows: int
    real_rows: int
    synthetic_median: float = Field(description="median distance (real-SD units) of a synthetic row to the real rows")
    synthetic_p05: float
    baseline_median: float = Field(description="median distance of a real row to its nearest other real row")
    baseline_p05: float
    median_ratio: float | None = Field(description="synthetic / baseline median; None when the baseline median is 0")
    exact_match_share: float = Field(description="share of synthetic rows identical to a real row")
    baseline_exact_match_share: float


class FidelityFigures(ComponentOutput):
    ks: dict[str, float] = Field(description="two-sample KS statistic per numeric column")
    ks_mean: float
    ks_max: float
    pearson_error: MatrixErrorFigures | None
    spearman_error: MatrixErrorFigures | None
    standardized_mean_difference: dict[str, float] | None
    sd_ratio: dict[str, float] | None
    total_variation: dict[str, float] = Field(description="per categorical column")
    dcr: DcrFigures | None
    notes: list[str]


class FitQuality(ComponentOutput):
    synthetic: FidelityFigures
    independent_baseline: FidelityFigures = Field(description="every column resampled independently from the data")
    beats_baseline_pearson: bool | None
    beats_baseline_spearman: bool | None


class BicEntry(ComponentOutput):
    n_components: int
    bic: float
    converged: bool


class StratumFit(ComponentOutput):
    categories: dict[str, str] = Field(description="the category combination; empty without categorical columns")
    real_rows: int
    synthetic_rows: int
    model: Literal["own", "pooled"]
    n_components: int | None = Field(description="mixture: components chosen by BIC")
    bic: list[BicEntry] | None


class FitSummary(ComponentOutput):
    real_rows: int
    numeric_columns: list[str]
    categorical_columns: list[str]
    dropped_columns: list[str]
    strata: list[StratumFit]
    pooled_model_rows: int | None = Field(description="rows of the pooled model when some strata use it")
    pooled_bic: list[BicEntry] | None
    pooled_n_components: int | None


class ColumnMoments(ComponentOutput):
    column: str
    expected_mean: float
    observed_mean: float
    mean_z: float | None = Field(description="(observed − expected) / (expected SD / √n); None when n < 2")
    expected_sd: float
    observed_sd: float | None
    lower_bound: float
    upper_bound: float
    observed_min: float
    observed_max: float


class SharesCheck(ComponentOutput):
    column: str
    expected: dict[str, float]
    observed: dict[str, float]
    total_variation: float
    chi_square_p: float | None = Field(description="goodness of fit; None when an expected count is below 5")


class ModelCheck(ComponentOutput):
    moments: list[ColumnMoments]
    spearman_columns: list[str]
    expected_spearman: list[list[float]]
    observed_spearman: list[list[float]] | None
    spearman_error: MatrixErrorFigures | None
    latent_effectiveness_correlation: dict[str, float] = Field(description="corr(e, z_j) = (Rβ)_j / sd(e)")
    shares: list[SharesCheck]
    notes: list[str]


class ProductionSyntheticDataGeneratorOutput(ComponentOutput):
    mode: Literal["fit", "prompt_features"]
    model: Literal["gaussian_copula", "gaussian_mixture", "prompt_feature_model"]
    seed: int
    n_rows: int
    columns: list[ColumnInfo]
    rows: list[dict[str, float | int | str]] | None = Field(description=f"the data when inline (≤ {MAX_INLINE_ROWS})")
    file: str | None = Field(description="outputs/… path of the CSV when written to a file")
    fit: FitSummary | None
    quality: FitQuality | None = Field(description="fit mode: fidelity against the real data and the baseline")
    model_check: ModelCheck | None = Field(description="prompt_features mode: the sample against the model")
    notes: list[str]


# ---------------------------------------------------------------------------------------------------- data tables


@dataclass
class _Table:
    numeric: NDArray[np.float64]  # (rows, numeric columns)
    numeric_names: list[str]
    categorical: NDArray[np.str_]  # (rows, categorical columns)
    categorical_names: list[str]
    dropped: list[str]


def _inline_rows(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[Any]], int, str]:
    """Column names, column values and row count of inline rows (every row must have the same columns)."""
    if not rows:
        raise InvalidInput("rows", f"need at least {MIN_FIT_ROWS} rows to fit; got 0")
    names = list(rows[0])
    keys = set(names)
    bad = next((i for i, row in enumerate(rows) if set(row) != keys), None)
    if bad is not None:
        raise InvalidInput(f"rows[{bad}]", f"must have the same columns as rows[0] ({', '.join(names)})")
    return names, {c: [row[c] for row in rows] for c in names}, len(rows), "rows"


def _read_csv_file(path: Path) -> tuple[list[str], dict[str, list[Any]], int, str]:
    if not path.is_file():
        raise BadRequest("data_path: no such file in the data directory")
    if path.suffix.lower() != ".csv":
        raise InvalidInput("data_path", f"must be a .csv file with a header row; got {path.suffix or 'no suffix'}")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise InvalidInput("data_path", f"file is larger than {MAX_CSV_BYTES // 2**20} MiB")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        records = list(csv.reader(fh))
    if not records or not records[0]:
        raise InvalidInput("data_path", "the file is empty; need a header row and data rows")
    names = [name.strip() for name in records[0]]
    if len(set(names)) != len(names) or any(not name for name in names):
        raise InvalidInput("data_path", "header names must be non-empty and distinct")
    body = [r for r in records[1:] if r]
    if len(body) > MAX_FIT_ROWS:
        raise InvalidInput("data_path", f"at most {MAX_FIT_ROWS} data rows; got {len(body)}")
    ragged = next((i for i, r in enumerate(body) if len(r) != len(names)), None)
    if ragged is not None:
        raise InvalidInput(
            "data_path", f"line {ragged + 2} has {len(body[ragged])} fields; the header has {len(names)}"
        )
    values = list(zip(*body, strict=True)) if body else [() for _ in names]
    return names, {c: list(v) for c, v in zip(names, values, strict=True)}, len(body), "data_path"


def _to_float(values: list[Any], column: str, where: str) -> NDArray[np.float64]:
    if where == "rows":
        bad = next((i for i, v in enumerate(values) if isinstance(v, str)), None)
        if bad is not None:
            raise InvalidInput(
                f"rows[{bad}].{column}",
                f"column {column!r} must be numeric; list it in categorical if it holds categories",
            )
        return np.asarray(values, dtype=np.float64)
    try:
        arr = np.asarray([v.strip() for v in values], dtype=np.float64)
    except ValueError as exc:
        raise InvalidInput(
            where, f"column {column!r} must be numeric (list it in categorical if it holds categories): {exc}"
        ) from exc
    if not np.isfinite(arr).all():
        raise InvalidInput(where, f"column {column!r} contains NaN or infinity")
    return arr


def _build_table(req: FitRequest, ctx: RunContext) -> _Table:
    if (req.rows is None) == (req.data_path is None):
        raise InvalidInput("rows", "give exactly one of rows or data_path")
    if req.rows is not None:
        names, values, n_rows, where = _inline_rows(req.rows)
    else:
        names, values, n_rows, where = _read_csv_file(ctx.data_path(req.data_path or "", field="data_path"))
    if n_rows < MIN_FIT_ROWS:
        raise InvalidInput(where, f"need at least {MIN_FIT_ROWS} rows to fit; got {n_rows}")
    missing = [c for c in req.categorical if c not in values]
    if missing:
        raise InvalidInput("categorical", f"no column named {missing[0]!r}; columns are {', '.join(names)}")
    if len(set(req.categorical)) != len(req.categorical):
        raise InvalidInput("categorical", "names must be distinct")
    if req.columns is not None:
        unknown = [c for c in req.columns if c not in values]
        if unknown:
            raise InvalidInput("columns", f"no column named {unknown[0]!r}; columns are {', '.join(names)}")
        overlap = [c for c in req.columns if c in req.categorical]
        if overlap:
            raise InvalidInput("columns", f"{overlap[0]!r} is also listed as categorical")
        if len(set(req.columns)) != len(req.columns):
            raise InvalidInput("columns", "names must be distinct")
        numeric_names = list(req.columns)
    else:
        numeric_names = [c for c in names if c not in req.categorical]
    if not numeric_names:
        raise InvalidInput("columns", "need at least one numeric column to model")
    if len(numeric_names) > MAX_FIT_COLUMNS:
        raise InvalidInput("columns", f"at most {MAX_FIT_COLUMNS} numeric columns; got {len(numeric_names)}")
    numeric = np.column_stack([_to_float(values[c], c, where) for c in numeric_names])
    constant = [c for c, j in zip(numeric_names, range(numeric.shape[1]), strict=True) if np.ptp(numeric[:, j]) == 0]
    if constant:
        raise InvalidInput(
            "columns", f"column {constant[0]!r} is constant; it needs no model (name the other columns in columns)"
        )
    if req.categorical:
        categorical = np.column_stack([np.asarray([str(v).strip() for v in values[c]]) for c in req.categorical])
    else:
        categorical = np.empty((n_rows, 0), dtype=str)
    dropped = [c for c in names if c not in numeric_names and c not in req.categorical]
    return _Table(numeric, numeric_names, categorical, list(req.categorical), dropped)


def _column_kinds(x: NDArray[np.float64]) -> list[Literal["continuous", "integer", "discrete"]]:
    kinds: list[Literal["continuous", "integer", "discrete"]] = []
    for j in range(x.shape[1]):
        col = x[:, j]
        levels = np.unique(col).size
        if levels <= min(DISCRETE_MAX_LEVELS, x.shape[0] // 2):
            kinds.append("discrete")
        elif np.all(col == np.round(col)) and np.abs(col).max() <= 2**53:  # exactly representable integers
            kinds.append("integer")
        else:
            kinds.append("continuous")
    return kinds


# ------------------------------------------------------------------------------------------------------- models


def _positive_definite_factor(r: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cholesky factor of the nearest (eigenvalue-clipped, unit-diagonal) correlation matrix to ``r``."""
    w, v = np.linalg.eigh((r + r.T) / 2)
    if w.min() < 1e-8:
        fixed = (v * np.clip(w, 1e-8, None)) @ v.T
        scale = np.sqrt(np.diag(fixed))
        r = fixed / np.outer(scale, scale)
    try:
        return np.linalg.cholesky(r)
    except np.linalg.LinAlgError:
        # Clipping left the matrix on the edge of definiteness: shrink a little towards the identity.
        return np.linalg.cholesky((1 - 1e-6) * r + 1e-6 * np.eye(r.shape[0]))


def _score_attenuation(col: NDArray[np.float64]) -> float:
    """``a = corr(s(Z), Z)``: how much a column's normal scores ``s`` shrink a latent normal ``Z``'s correlations.

    The column is read as ``Z ~ N(0, 1)`` cut at ``τ_k = Φ⁻¹(c_k)`` (``c_k``: cumulative shares of its sorted
    distinct values); level k gets the normal score ``s_k`` of its average rank. Then
    ``cov(s(Z), Z) = Σ_k s_k (φ(τ_{k−1}) − φ(τ_k))`` and ``a = cov / sd(s)``. With ties (discrete columns) ``a``
    is well below 1 (≈ 0.8 for a balanced binary column); dividing the normal-score correlation by ``a_j a_k`` is
    the ad hoc polyserial correction of Olsson, Drasgow & Dorans (1982), exact for one discrete column against a
    normal one and close for two, so the copula's thresholded samples reproduce the data's correlations.
    """
    _, counts = np.unique(col, return_counts=True)
    m = int(counts.sum())
    cum = np.cumsum(counts)
    s = special.ndtri((cum - (counts - 1) / 2) / (m + 1))
    tau = special.ndtri(cum[:-1] / m)
    phi = np.concatenate(([0.0], np.exp(-(tau**2) / 2) / np.sqrt(2 * np.pi), [0.0]))
    p = counts / m
    mean_s = float(p @ s)
    return float(s @ (phi[:-1] - phi[1:]) / np.sqrt(p @ s**2 - mean_s**2))


@dataclass(frozen=True)
class _Copula:
    sorted_values: NDArray[np.float64]  # (m, d), each column sorted
    factor: NDArray[np.float64]  # Cholesky factor of the copula correlation

    @classmethod
    def fit(cls, x: NDArray[np.float64]) -> _Copula:
        m, d = x.shape
        scores = special.ndtri(stats.rankdata(x, axis=0) / (m + 1))
        sd = scores.std(axis=0)
        varying = sd > 0  # a column constant within a stratum carries no dependence there
        r = np.eye(d)
        if varying.sum() >= 2:
            z = (scores[:, varying] - scores[:, varying].mean(axis=0)) / sd[varying]
            a = np.array([_score_attenuation(x[:, j]) for j in np.flatnonzero(varying)])
            r[np.ix_(varying, varying)] = np.clip(z.T @ z / m / np.outer(a, a), -1.0, 1.0)
            np.fill_diagonal(r, 1.0)
        return cls(np.sort(x, axis=0), _positive_definite_factor(r))

    def sample(self, count: int, discrete: list[bool], rng: np.random.Generator) -> NDArray[np.float64]:
        m, d = self.sorted_values.shape
        u = special.ndtr(rng.standard_normal((count, d)) @ self.factor.T)
        knots = np.arange(1, m + 1) / (m + 1)
        out = np.empty((count, d))
        for j in range(d):  # columns, not rows
            col = self.sorted_values[:, j]
            if discrete[j]:
                out[:, j] = col[np.clip(np.ceil(u[:, j] * m).astype(np.int64) - 1, 0, m - 1)]
            else:
                out[:, j] = np.interp(u[:, j], knots, col)
        return out


@dataclass(frozen=True)
class _Mixture:
    weights: NDArray[np.float64]
    means: NDArray[np.float64]
    factors: NDArray[np.float64]  # Cholesky factors of the covariances (standardised scale)
    centre: NDArray[np.float64]
    scale: NDArray[np.float64]
    bic: list[BicEntry]

    @property
    def n_components(self) -> int:
        return int(self.weights.size)

    @classmethod
    def fit(cls, x: NDArray[np.float64], k_min: int, k_max: int, random_state: int) -> _Mixture:
        m = x.shape[0]
        centre, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        xs = (x - centre) / scale
        best: GaussianMixture | None = None
        best_bic = np.inf
        table: list[BicEntry] = []
        for k in range(min(k_min, m), min(k_max, m) + 1):
            gm = GaussianMixture(
                n_components=k,
                covariance_type="full",
                reg_covar=1e-6,
                init_params="k-means++",
                n_init=2,
                max_iter=300,
                random_state=random_state,
            )
            # Small d × d products: multi-threaded BLAS only adds contention (as scikit-learn's own KMeans does).
            with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
                # Non-convergence is reported in the BIC table rather than raised.
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(xs)
            bic = float(gm.bic(xs))
            table.append(BicEntry(n_components=k, bic=bic, converged=bool(gm.converged_)))
            if bic < best_bic:
                best, best_bic = gm, bic
        assert best is not None  # the range is never empty: 1 ≤ min(k_min, m) ≤ min(k_max, m)
        weights = np.asarray(best.weights_, dtype=np.float64)
        return cls(
            weights=weights / weights.sum(),
            means=np.asarray(best.means_),
            factors=np.linalg.cholesky(np.asarray(best.covariances_)),
            centre=centre,
            scale=scale,
            bic=table,
        )

    def sample(self, count: int, rng: np.random.Generator) -> NDArray[np.float64]:
        per = rng.multinomial(count, self.weights)
        d = self.means.shape[1]
        parts = [
            self.means[k] + rng.standard_normal((per[k], d)) @ self.factors[k].T
            for k in range(self.n_components)  # components, not rows
        ]
        return np.concatenate(parts) * self.scale + self.centre


def _snap(x: NDArray[np.float64], levels: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each value replaced by the nearest of the sorted ``levels``."""
    idx = np.clip(np.searchsorted(levels, x), 1, levels.size - 1) if levels.size > 1 else np.zeros(x.size, int)
    if levels.size == 1:
        return np.full_like(x, levels[0])
    lower, upper = levels[idx - 1], levels[idx]
    return np.where(np.abs(x - lower) <= np.abs(upper - x), lower, upper)


def _postprocess(
    x: NDArray[np.float64], real: NDArray[np.float64], kinds: list[str], model: str
) -> NDArray[np.float64]:
    out = x.copy()
    if model == "gaussian_mixture":
        out = np.clip(out, real.min(axis=0), real.max(axis=0))
    for j, kind in enumerate(kinds):
        if kind == "discrete" and model == "gaussian_mixture":
            out[:, j] = _snap(out[:, j], np.unique(real[:, j]))
        elif kind == "integer":
            out[:, j] = np.round(out[:, j])
    return out


# ----------------------------------------------------------------------------------------------------- fit mode


def _strata(table: _Table) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Stratum index of every row, the first row of each stratum, and the stratum sizes."""
    n = table.numeric.shape[0]
    if not table.categorical_names:
        return np.zeros(n, dtype=np.int64), np.zeros(1, dtype=np.int64), np.array([n])
    codes, dims = [], []
    for j in range(table.categorical.shape[1]):
        levels, code = np.unique(table.categorical[:, j], return_inverse=True)
        codes.append(code)
        dims.append(levels.size)
    key = np.ravel_multi_index(codes, dims)
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    return inverse.astype(np.int64), first.astype(np.int64), counts.astype(np.int64)


def _fit_model(x: NDArray[np.float64], req: FitRequest, rng: np.random.Generator) -> _Copula | _Mixture:
    if req.model == "gaussian_copula":
        return _Copula.fit(x)
    return _Mixture.fit(x, req.min_components, req.max_components, int(rng.integers(0, 2**31 - 1)))


def _draw(model: _Copula | _Mixture, count: int, discrete: list[bool], rng: np.random.Generator) -> NDArray[np.float64]:
    if isinstance(model, _Copula):
        return model.sample(count, discrete, rng)
    return model.sample(count, rng)


def _figures(summary: fidelity.FidelitySummary) -> FidelityFigures:
    def matrix(err: fidelity.MatrixError | None) -> MatrixErrorFigures | None:
        if err is None:
            return None
        return MatrixErrorFigures(frobenius=err.frobenius, mean_abs=err.mean_abs, max_abs=err.max_abs)

    names = summary.columns
    dcr = None
    if summary.dcr is not None:
        d = summary.dcr
        dcr = DcrFigures(
            synthetic_rows=int(d.synthetic.size),
            real_rows=int(d.baseline.size),
            synthetic_median=d.synthetic_median,
            synthetic_p05=d.synthetic_p05,
            baseline_median=d.baseline_median,
            baseline_p05=d.baseline_p05,
            median_ratio=d.median_ratio,
            exact_match_share=d.exact_match_share,
            baseline_exact_match_share=d.baseline_exact_match_share,
        )
    moments = summary.moments
    return FidelityFigures(
        ks=summary.ks,
        ks_mean=summary.ks_mean,
        ks_max=summary.ks_max,
        pearson_error=matrix(summary.pearson),
        spearman_error=matrix(summary.spearman),
        standardized_mean_difference=None
        if moments is None
        else dict(zip(names, moments.standardized_mean_difference.tolist(), strict=True)),
        sd_ratio=None if moments is None else dict(zip(names, moments.sd_ratio.tolist(), strict=True)),
        total_variation=summary.total_variation,
        dcr=dcr,
        notes=summary.notes,
    )


def _quality(
    table: _Table,
    synth: NDArray[np.float64],
    synth_cat: NDArray[np.str_],
    rng: np.random.Generator,
) -> tuple[FitQuality | None, list[str]]:
    n = synth.shape[0]
    if n < MIN_QUALITY_ROWS:
        return None, [f"quality figures need at least {MIN_QUALITY_ROWS} synthetic rows; got {n}"]
    real, m = table.numeric, table.numeric.shape[0]
    d, c = real.shape[1], table.categorical.shape[1]
    # Naive baseline: every column (numeric and categorical) resampled independently from the real data.
    idx = rng.integers(0, m, size=(n, d + c))
    base = real[idx[:, :d], np.arange(d)]
    base_cat = table.categorical[idx[:, d:], np.arange(c)] if c else np.empty((n, 0), dtype=str)
    real_ref = real[rng.choice(m, DCR_REAL_ROWS, replace=False)] if m > DCR_REAL_ROWS else real
    pick = rng.choice(n, DCR_SYNTHETIC_ROWS, replace=False) if n > DCR_SYNTHETIC_ROWS else np.arange(n)

    def summarise(x: NDArray[np.float64], cats: NDArray[np.str_]) -> fidelity.FidelitySummary:
        return fidelity.fidelity_summary(
            real,
            x,
            columns=table.numeric_names,
            real_categorical={name: table.categorical[:, j] for j, name in enumerate(table.categorical_names)},
            synthetic_categorical={name: cats[:, j] for j, name in enumerate(table.categorical_names)},
            dcr_real=real_ref,
            dcr_synthetic=x[pick],
        )

    synth_fig, base_fig = _figures(summarise(synth, synth_cat)), _figures(summarise(base, base_cat))

    def beats(ours: MatrixErrorFigures | None, theirs: MatrixErrorFigures | None) -> bool | None:
        return None if ours is None or theirs is None else ours.frobenius < theirs.frobenius

    notes = []
    if m > DCR_REAL_ROWS or n > DCR_SYNTHETIC_ROWS:
        notes.append(
            f"distance to closest record on random subsamples ({min(n, DCR_SYNTHETIC_ROWS)} synthetic rows against "
            f"{min(m, DCR_REAL_ROWS)} real rows)"
        )
    quality = FitQuality(
        synthetic=synth_fig,
        independent_baseline=base_fig,
        beats_baseline_pearson=beats(synth_fig.pearson_error, base_fig.pearson_error),
        beats_baseline_spearman=beats(synth_fig.spearman_error, base_fig.spearman_error),
    )
    return quality, notes


def _fit_mode(req: FitRequest, ctx: RunContext) -> ProductionSyntheticDataGeneratorOutput:
    if req.min_components > req.max_components:
        raise InvalidInput("min_components", f"must not exceed max_components ({req.max_components})")
    table = _build_table(req, ctx)
    n = req.n if req.n is not None else table.numeric.shape[0]
    _check_output(req.output, n)
    sample_rng, quality_rng = np.random.default_rng(req.seed).spawn(2)
    kinds = _column_kinds(table.numeric)
    discrete = [k == "discrete" for k in kinds]

    stratum_of, first_row, sizes = _strata(table)
    order = np.argsort(-sizes, kind="stable")
    own = np.zeros(sizes.size, dtype=bool)
    own[order[:MAX_STRATA]] = sizes[order[:MAX_STRATA]] >= req.min_stratum_rows
    if sizes.size == 1:
        own[:] = True  # without categories (or with one combination) the whole table is the stratum
    counts = sample_rng.multinomial(n, sizes / sizes.sum())

    models: dict[int, _Copula | _Mixture] = {}
    for s in np.flatnonzero(own):  # strata, not rows
        models[int(s)] = _fit_model(table.numeric[stratum_of == s], req, sample_rng)
    pooled = _fit_model(table.numeric, req, sample_rng) if not own.all() else None

    numeric_parts, cat_parts, stratum_fits = [], [], []
    for s in range(sizes.size):
        model = models.get(s, pooled)
        assert model is not None
        numeric_parts.append(_draw(model, int(counts[s]), discrete, sample_rng))
        cat_parts.append(np.repeat(table.categorical[first_row[s]][None, :], counts[s], axis=0))
        stratum_fits.append(
            StratumFit(
                categories={
                    name: str(table.categorical[first_row[s], j]) for j, name in enumerate(table.categorical_names)
                },
                real_rows=int(sizes[s]),
                synthetic_rows=int(counts[s]),
                model="own" if own[s] else "pooled",
                n_components=model.n_components if isinstance(model, _Mixture) and own[s] else None,
                bic=model.bic if isinstance(model, _Mixture) and own[s] else None,
            )
        )
    shuffle = sample_rng.permutation(n)
    synth = _postprocess(np.concatenate(numeric_parts), table.numeric, kinds, req.model)[shuffle]
    synth_cat = np.concatenate(cat_parts)[shuffle]

    quality, notes = _quality(table, synth, synth_cat, quality_rng)
    if table.dropped:
        notes.append("columns neither numeric nor categorical were dropped: " + ", ".join(table.dropped))
    if req.model == "gaussian_copula":
        notes.append("copula marginals are empirical: synthetic values stay within each stratum's observed range")
    columns = [ColumnInfo(name=c, kind="categorical") for c in table.categorical_names] + [
        ColumnInfo(name=c, kind=k) for c, k in zip(table.numeric_names, kinds, strict=True)
    ]
    data: dict[str, list[Any]] = {c: synth_cat[:, j].tolist() for j, c in enumerate(table.categorical_names)}
    for j, (name, kind) in enumerate(zip(table.numeric_names, kinds, strict=True)):
        data[name] = synth[:, j].astype(np.int64).tolist() if kind == "integer" else synth[:, j].tolist()
    rows, file = _emit(data, n, req.output, ctx)
    fit = FitSummary(
        real_rows=int(table.numeric.shape[0]),
        numeric_columns=table.numeric_names,
        categorical_columns=table.categorical_names,
        dropped_columns=table.dropped,
        strata=stratum_fits,
        pooled_model_rows=int(table.numeric.shape[0]) if pooled is not None else None,
        pooled_bic=pooled.bic if isinstance(pooled, _Mixture) else None,
        pooled_n_components=pooled.n_components if isinstance(pooled, _Mixture) else None,
    )
    return ProductionSyntheticDataGeneratorOutput(
        mode="fit",
        model=req.model,
        seed=req.seed,
        n_rows=n,
        columns=columns,
        rows=rows,
        file=file,
        fit=fit,
        quality=quality,
        model_check=None,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------- output


def _check_output(output: str, n: int) -> None:
    if output == "inline" and n > MAX_INLINE_ROWS:
        raise InvalidInput("output", f"inline output holds at most {MAX_INLINE_ROWS} rows; got n = {n} (use file)")


def _emit(
    data: dict[str, list[Any]], n: int, output: str, ctx: RunContext
) -> tuple[list[dict[str, Any]] | None, str | None]:
    names = list(data)
    if output == "inline" or (output == "auto" and n <= MAX_INLINE_ROWS):
        return [dict(zip(names, values, strict=True)) for values in zip(*data.values(), strict=True)], None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(zip(*data.values(), strict=True))
    ctx.write_output("synthetic.csv", buffer.getvalue())
    return None, ctx.output_files[-1]


# ------------------------------------------------------------------------------------------ prompt-feature mode


@dataclass(frozen=True)
class _LengthLaw:
    mu: float
    sigma: float
    lo: float
    hi: float
    p_lo: float
    p_hi: float

    @classmethod
    def of(cls, spec: LengthMarginal) -> _LengthLaw:
        if spec.minimum >= spec.maximum:
            raise InvalidInput("length.maximum", f"must exceed length.minimum ({spec.minimum})")
        mu = float(np.log(spec.median))
        a = (np.log(spec.minimum) - mu) / spec.sigma
        b = (np.log(spec.maximum) - mu) / spec.sigma
        p_lo, p_hi = float(special.ndtr(a)), float(special.ndtr(b))
        if p_hi - p_lo < 1e-3:
            raise InvalidInput("length", "the log-normal puts less than 0.1 % of its mass in [minimum, maximum]")
        return cls(mu, spec.sigma, float(spec.minimum), float(spec.maximum), p_lo, p_hi)

    def quantile(self, u: NDArray[np.float64]) -> NDArray[np.float64]:
        """Inverse CDF of the truncated law: ``exp(μ + σ Φ⁻¹(Φ(α') + u (Φ(β') − Φ(α'))))``."""
        x = np.exp(self.mu + self.sigma * special.ndtri(self.p_lo + u * (self.p_hi - self.p_lo)))
        return np.clip(x, self.lo, self.hi)

    def raw_moment(self, k: int) -> float:
        """``E[X^k | lo ≤ X ≤ hi]`` in closed form (see the module docstring)."""
        a = (np.log(self.lo) - self.mu) / self.sigma
        b = (np.log(self.hi) - self.mu) / self.sigma
        mass = special.ndtr(b - k * self.sigma) - special.ndtr(a - k * self.sigma)
        return float(np.exp(k * self.mu + k**2 * self.sigma**2 / 2) * mass / (self.p_hi - self.p_lo))


def _correlation(req: PromptFeaturesRequest) -> NDArray[np.float64]:
    r = np.asarray(req.correlation if req.correlation is not None else DEFAULT_CORRELATION, dtype=np.float64)
    if r.shape != (6, 6):
        raise InvalidInput("correlation", f"must be 6 × 6; got {list(r.shape)}")
    if not np.allclose(r, r.T, atol=1e-9):
        raise InvalidInput("correlation", "must be symmetric")
    if not np.allclose(np.diag(r), 1.0, atol=1e-9):
        raise InvalidInput("correlation", "must have ones on the diagonal")
    if np.abs(r).max() > 1:
        raise InvalidInput("correlation", "entries must lie in [-1, 1]")
    if np.linalg.eigvalsh((r + r.T) / 2).min() <= 1e-8:
        raise InvalidInput("correlation", "must be positive definite")
    return (r + r.T) / 2


def _shares_check(column: str, labels: NDArray[np.str_], expected: dict[str, float]) -> SharesCheck:
    probs = np.asarray(list(expected.values()), dtype=np.float64)
    probs = probs / probs.sum()
    shares = fidelity.category_shares(labels, list(expected))
    n = labels.size
    chi_p = None
    positive = probs > 0
    if np.all(n * probs[positive] >= 5) and positive.sum() >= 2:
        observed = shares[positive] * n
        chi_p = float(stats.chisquare(observed, probs[positive] * observed.sum()).pvalue)
    return SharesCheck(
        column=column,
        expected=dict(zip(expected, probs.tolist(), strict=True)),
        observed=dict(zip(expected, shares.tolist(), strict=True)),
        total_variation=fidelity.total_variation_to(labels, expected),
        chi_square_p=chi_p,
    )


def _prompt_features_mode(req: PromptFeaturesRequest, ctx: RunContext) -> ProductionSyntheticDataGeneratorOutput:
    eff = req.effectiveness
    cuts = np.asarray(eff.tier_cuts, dtype=np.float64)
    if np.any(cuts <= 0) or np.any(cuts >= 1) or np.any(np.diff(cuts) <= 0):
        raise InvalidInput("effectiveness.tier_cuts", "must be strictly increasing and inside (0, 1)")
    if len(eff.tier_labels) != cuts.size + 1:
        raise InvalidInput("effectiveness.tier_labels", f"need {cuts.size + 1} labels for {cuts.size} cut points")
    if len(set(eff.tier_labels)) != len(eff.tier_labels):
        raise InvalidInput("effectiveness.tier_labels", "labels must be distinct")
    domains = dict(req.domains) if req.domains is not None else dict(DEFAULT_DOMAINS)
    weights = np.asarray(list(domains.values()), dtype=np.float64)
    if weights.sum() <= 0:
        raise InvalidInput("domains", "weights must not all be zero")
    weights = weights / weights.sum()
    r = _correlation(req)
    length_law = _LengthLaw.of(req.length)
    _check_output(req.output, req.n)
    n = req.n
    rng = np.random.default_rng(req.seed)

    # Latent Gaussian copula, then the marginals.
    z = rng.standard_normal((n, 6)) @ np.linalg.cholesky(r).T
    u = special.ndtr(z)
    values: dict[str, NDArray[np.float64]] = {}
    for j, name in enumerate(FEATURES):
        if name == "length":
            values[name] = np.round(length_law.quantile(u[:, j]))
        else:
            spec: BetaMarginal = getattr(req, name)
            values[name] = special.betaincinv(spec.alpha, spec.beta, u[:, j])
    beta = np.array([getattr(eff, name) for name in FEATURES])
    sd_e = float(np.sqrt(beta @ r @ beta + eff.noise_sd**2))
    latent = z @ beta + eff.noise_sd * rng.standard_normal(n)
    score = special.ndtr(latent / sd_e)
    tier_index = np.searchsorted(cuts, score, side="right")
    tiers = np.asarray(eff.tier_labels)[tier_index]
    domain = np.asarray(list(domains))[rng.choice(len(domains), size=n, p=weights)]

    # Model check: moments, Spearman structure, shares.
    moments = []
    expected = {name: _expected_moments(req, name, length_law) for name in FEATURES}
    expected["effectiveness_score"] = (0.5, float(np.sqrt(1 / 12)), 0.0, 1.0)
    observed = {**values, "effectiveness_score": score}
    for name, (mean, sd, lo, hi) in expected.items():
        x = observed[name]
        moments.append(
            ColumnMoments(
                column=name,
                expected_mean=mean,
                observed_mean=float(x.mean()),
                mean_z=float((x.mean() - mean) / (sd / np.sqrt(n))) if n >= 2 else None,
                expected_sd=sd,
                observed_sd=float(x.std(ddof=1)) if n >= 2 else None,
                lower_bound=lo,
                upper_bound=hi,
                observed_min=float(x.min()),
                observed_max=float(x.max()),
            )
        )
    rho_e = r @ beta / sd_e
    full = np.block([[r, rho_e[:, None]], [rho_e[None, :], np.ones((1, 1))]])
    expected_spearman = 6 / np.pi * np.arcsin(full / 2)
    spearman_cols = [*FEATURES, "effectiveness_score"]
    table = np.column_stack([observed[c] for c in spearman_cols])
    check_notes = ["length is rounded to whole words; its expected moments are those of the continuous law"]
    observed_spearman = spearman_error = None
    if n >= 3 and np.all(np.ptp(table, axis=0) > 0):
        obs = fidelity.spearman_matrix(table)
        err = fidelity.matrix_error(expected_spearman, obs)
        observed_spearman = obs.tolist()
        spearman_error = MatrixErrorFigures(frobenius=err.frobenius, mean_abs=err.mean_abs, max_abs=err.max_abs)
    else:
        check_notes.append("the Spearman check needs at least three rows and no constant column")
    tier_probs = np.diff(np.concatenate(([0.0], cuts, [1.0])))
    shares = [
        _shares_check("domain", domain, dict(zip(domains, weights.tolist(), strict=True))),
        _shares_check("effectiveness_tier", tiers, dict(zip(eff.tier_labels, tier_probs.tolist(), strict=True))),
    ]
    check = ModelCheck(
        moments=moments,
        spearman_columns=spearman_cols,
        expected_spearman=expected_spearman.tolist(),
        observed_spearman=observed_spearman,
        spearman_error=spearman_error,
        latent_effectiveness_correlation=dict(zip(FEATURES, rho_e.tolist(), strict=True)),
        shares=shares,
        notes=check_notes,
    )
    data: dict[str, list[Any]] = {"domain": domain.tolist()}
    for name in FEATURES:
        data[name] = values[name].astype(np.int64).tolist() if name == "length" else values[name].tolist()
    data["effectiveness_score"] = score.tolist()
    data["effectiveness_tier"] = tiers.tolist()
    rows, file = _emit(data, n, req.output, ctx)
    columns = [
        ColumnInfo(name="domain", kind="categorical"),
        *(ColumnInfo(name=c, kind="integer" if c == "length" else "continuous") for c in FEATURES),
        ColumnInfo(name="effectiveness_score", kind="continuous"),
        ColumnInfo(name="effectiveness_tier", kind="categorical"),
    ]
    return ProductionSyntheticDataGeneratorOutput(
        mode="prompt_features",
        model="prompt_feature_model",
        seed=req.seed,
        n_rows=n,
        columns=columns,
        rows=rows,
        file=file,
        fit=None,
        quality=None,
        model_check=check,
        notes=[],
    )


def _expected_moments(
    req: PromptFeaturesRequest, name: str, length_law: _LengthLaw
) -> tuple[float, float, float, float]:
    """Mean, SD and bounds of one feature's marginal under the model."""
    if name == "length":
        m1, m2 = length_law.raw_moment(1), length_law.raw_moment(2)
        return m1, float(np.sqrt(max(m2 - m1**2, 0.0))), length_law.lo, length_law.hi
    spec: BetaMarginal = getattr(req, name)
    a, b = spec.alpha, spec.beta
    return a / (a + b), float(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))), 0.0, 1.0


# ------------------------------------------------------------------------------------------------------ component

_FIT_EXAMPLE_ROWS = [
    {"domain": d, "clarity": c, "specificity": s, "length": ln}
    for d, c, s, ln in [
        ("coding", 0.81, 0.74, 140),
        ("coding", 0.62, 0.55, 95),
        ("coding", 0.90, 0.83, 210),
        ("coding", 0.45, 0.40, 60),
        ("coding", 0.71, 0.69, 150),
        ("coding", 0.55, 0.47, 88),
        ("writing", 0.68, 0.52, 310),
        ("writing", 0.77, 0.61, 420),
        ("writing", 0.50, 0.33, 180),
        ("writing", 0.84, 0.70, 390),
        ("writing", 0.59, 0.44, 260),
        ("writing", 0.73, 0.58, 350),
    ]
]


@component(
    "ProductionSyntheticDataGenerator",
    tier="tier2",
    capabilities=["synthetic_data", "gaussian_copula", "gaussian_mixture", "data_fidelity"],
    example={"mode": "prompt_features", "n": 300, "seed": 7},
    examples=[
        {"mode": "fit", "rows": _FIT_EXAMPLE_ROWS, "categorical": ["domain"], "n": 200, "seed": 3},
        {
            "mode": "fit",
            "rows": _FIT_EXAMPLE_ROWS,
            "columns": ["clarity", "specificity", "length"],
            "model": "gaussian_mixture",
            "max_components": 3,
            "n": 100,
        },
    ],
)
def production_synthetic_data_generator(
    request: ProductionSyntheticDataGeneratorInput, ctx: RunContext
) -> ProductionSyntheticDataGeneratorOutput:
    """Generate seeded synthetic prompt-feature data from a fitted copula or mixture, or the documented model.

    ``mode="fit"`` fits a Gaussian copula (empirical marginals, normal-score correlation) or a BIC-selected
    Gaussian mixture to real rows (inline or a CSV under data/), stratified by categorical columns, samples ``n``
    rows and scores them against the real data and a naive independent-marginals baseline (KS per column,
    Pearson/Spearman correlation error, total variation, distance to closest record). ``mode="prompt_features"``
    samples clarity, length, specificity, complexity, context_richness and actionability (Beta and truncated
    log-normal marginals joined by a Gaussian copula), a domain, and an effectiveness score and tier from a latent
    linear model, and checks the sample's moments, Spearman correlations and shares against the model. Rows come
    back inline up to 5000, otherwise as a CSV file in the run's outputs.
    """
    req = request.root
    if isinstance(req, FitRequest):
        return _fit_mode(req, ctx)
    return _prompt_features_mode(req, ctx)
