"""How good is a (synthetic or real) training set? Fidelity, utility, diversity, consistency and privacy.

A *candidate* table is scored against a *reference* table of real records with the same numeric columns (inline
rows, or ``{path, columns}`` under data/). Missing values (``null`` inline, NaN in a file) count against
consistency; every other measure uses the complete rows of each table.

**Fidelity** (does it look like the reference?):

* per column: the two-sample Kolmogorov–Smirnov statistic (:func:`services.stats.fidelity.ks_distances`, equal to
  ``scipy.stats.ks_2samp``) and the 1-Wasserstein distance (``scipy.stats.wasserstein_distance``), raw and divided
  by the reference column's SD;
* the Pearson correlation-matrix error (:func:`services.stats.fidelity.correlation_error`: Frobenius, mean and max
  absolute difference of the off-diagonal entries);
* a propensity (discriminator) score: a logistic regression (``C = 1``) on the standardised columns expanded to
  degree 2 (``PolynomialFeatures(2)``: squares and pairwise products, so shifts of scale and of correlation show,
  not only of the mean; squares only beyond 10 columns), standardised again, tells candidate rows (label 1) from
  reference rows (label 0). Its out-of-fold probabilities (``StratifiedKFold(5, shuffle=True,
  random_state=seed)`` over the reference rows stacked above the candidate rows) give the ROC AUC — 0.5 means
  indistinguishable — and ``pMSE = mean((p_i − c)²)`` with ``c`` the candidate share.
* score = mean of ``1 − mean KS``, ``max(0, 1 − mean standardised Wasserstein)``, ``1 − min(1, mean |Δr|)`` and
  ``1 − 2·max(0, AUC − 0.5)`` (those that are defined).

**Utility** (TSTR, only with ``target``): the reference is split by ``train_test_split(test_size=
holdout_fraction, random_state=seed)`` (stratified for classification when every class has two rows). A model —
``StandardScaler`` + ``Ridge(alpha=1)`` for a regression target, + ``LogisticRegression(C=1)`` for a class target —
is trained on the candidate (TSTR) and on the reference's training part (TRTR); both are tested on the reference's
held-out part. Metric: R² (regression; chance = 0) or balanced accuracy (classification; chance = 1/k for the k
classes in the test part). ``ratio = (TSTR − chance) / (TRTR − chance)``, score = ratio clipped to [0, 1]. A
candidate derived from the *whole* reference has seen the held-out rows: generate it from a part of the data and
pass the rest as the reference for an honest figure.

**Diversity**: columns standardised by the reference's mean and SD; on seeded equal-size subsamples of the two
tables (nearest-neighbour distances shrink with the number of rows, so the sizes must match) the mean distance of
each row to its nearest other row, and the mean pairwise distance (at most 2,000 rows), each as a ratio to the
reference's; and the duplicate-row share (rows equal to an earlier row) of each table. Score = mean of
``min(1, nn ratio)``, ``min(1, pairwise ratio)`` and ``1 − max(0, duplicate share − the reference's)``.

**Consistency**: the share of missing cells (per column) and the share of candidate rows that are complete and
satisfy every constraint — ``bounds`` where given, else (``check_reference_range``) the reference's observed
``[min, max]`` per column. Score = that valid-row share.

**Privacy**: distance to closest record (:func:`services.stats.fidelity.distance_to_closest_record`: Euclidean in
reference-SD units, k-d tree) of each sampled candidate row to the sampled reference rows, against the reference's
own leave-one-out DCR. ``p05_ratio = 5th percentile of candidate DCR / 5th percentile of reference DCR``; exact
copies are rows at distance ≤ 1e-9. Score = ``min(1, p05_ratio) × (1 − exact-copy share)`` (the median ratio
replaces the p05 ratio when the reference's p05 is 0; the copy share alone when both are 0).

**Overall** = Σ wᵢ·scoreᵢ / Σ wᵢ over the dimensions that have a score (default weights: fidelity 0.30, utility
0.25, diversity 0.15, consistency 0.15, privacy 0.15). Tier: ``excellent`` ≥ 0.85, ``good`` ≥ 0.70, ``fair`` ≥
0.50, else ``poor`` — but at most ``fair`` when more than 10 % of the sampled candidate rows are exact copies of
reference records: a copied set is perfectly faithful and useful, and still not a good training set to share.

Propensity, diversity and privacy use seeded subsamples of at most ``sample_rows`` rows per table (all rows, in
order, when there are fewer); KS, Wasserstein, correlations, utility and consistency use every row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator
from scipy import stats
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler
from threadpoolctl import threadpool_limits

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component
from services.framework.arrays import MatrixRef, read_matrix
from services.stats import fidelity
from services.stats.abtest import DegenerateData

__all__ = [
    "COPY_SHARE_CAP",
    "DEFAULT_WEIGHTS",
    "TIER_THRESHOLDS",
    "Bound",
    "ColumnFidelity",
    "ConsistencyFigures",
    "DiversityFigures",
    "EnhancedQualityScorerInput",
    "EnhancedQualityScorerOutput",
    "FidelityFigures",
    "PrivacyFigures",
    "UtilityFigures",
    "Weights",
    "balanced_accuracy",
    "enhanced_quality_scorer",
    "quality_tier",
]

MAX_ROWS = 100_000
MAX_COLUMNS = 200
MAX_CELLS = 5_000_000  # 40 MB of float64 per table
MAX_ABS_VALUE = 1e12  # squares and sums over many rows stay finite
MIN_ROWS = 10  # complete rows per table: five-fold CV needs five of each label
PAIRWISE_MAX_ROWS = 2_000  # pdist holds n(n − 1)/2 distances: 2,000 rows is 16 MB
POLY_MAX_COLUMNS = 10  # degree-2 expansion up to here (65 terms); squares only beyond
PROPENSITY_FOLDS = 5
AUTO_MAX_CLASSES = 10
DEFAULT_WEIGHTS = {"fidelity": 0.30, "utility": 0.25, "diversity": 0.15, "consistency": 0.15, "privacy": 0.15}
TIER_THRESHOLDS = (("excellent", 0.85), ("good", 0.70), ("fair", 0.50))
COPY_SHARE_CAP = 0.10  # beyond this share of exact copies the tier is at most "fair"

Tier = Literal["excellent", "good", "fair", "poor"]
Dimension = Literal["fidelity", "utility", "diversity", "consistency", "privacy"]
ColumnName = Annotated[str, Field(min_length=1, max_length=200)]
Cell = FiniteFloat | None
Row = Annotated[list[Cell], Field(min_length=1, max_length=MAX_COLUMNS)]
Table = Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)] | MatrixRef
Weight = Annotated[float, Field(ge=0, le=1)]


# --------------------------------------------------------------------------- input


class Bound(ComponentInput):
    """An allowed closed range for one column (either side may be open)."""

    min: FiniteFloat | None = None
    max: FiniteFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Weights(ComponentInput):
    """Weights of the five dimensions in the overall score (renormalised over the dimensions scored)."""

    fidelity: Weight = DEFAULT_WEIGHTS["fidelity"]
    utility: Weight = DEFAULT_WEIGHTS["utility"]
    diversity: Weight = DEFAULT_WEIGHTS["diversity"]
    consistency: Weight = DEFAULT_WEIGHTS["consistency"]
    privacy: Weight = DEFAULT_WEIGHTS["privacy"]

    @model_validator(mode="after")
    def _positive(self) -> Weights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return self


class EnhancedQualityScorerInput(ComponentInput):
    """A candidate training set and the real reference set it is scored against."""

    candidate: Table = Field(description="the set to score: rows × columns, inline (null = missing) or a file")
    reference: Table = Field(description="real records with the same columns, inline or a file")
    columns: list[ColumnName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_COLUMNS,
        description="column names for inline rows and header-less files (default: a CSV header, else x0, x1, …)",
    )
    target: ColumnName | None = Field(None, description="column to predict for the utility (TSTR) measure")
    task: Literal["auto", "regression", "classification"] = Field(
        "auto", description="auto: classification for an integer target with 2 to 10 values in the reference"
    )
    holdout_fraction: float = Field(0.3, ge=0.1, le=0.5, description="reference rows held out to test TSTR/TRTR")
    bounds: dict[ColumnName, Bound] | None = Field(
        None, max_length=MAX_COLUMNS, description="allowed range per column (consistency)"
    )
    check_reference_range: bool = Field(
        True, description="columns without bounds must lie within the reference's observed [min, max]"
    )
    weights: Weights = Field(default_factory=Weights)
    sample_rows: int = Field(
        2_000, ge=100, le=20_000, description="rows per table for the propensity, diversity and privacy measures"
    )
    seed: Seed = 0


# --------------------------------------------------------------------------- output


class ColumnFidelity(ComponentOutput):
    column: str
    ks_statistic: float
    wasserstein: float
    wasserstein_standardized: float | None = Field(description="divided by the reference SD; None if it is 0")
    missing_share: float = Field(description="share of the candidate's cells in this column that are missing")


class CorrelationErrorFigures(ComponentOutput):
    frobenius: float
    mean_abs: float
    max_abs: float


class FidelityFigures(ComponentOutput):
    score: float
    ks_mean: float
    ks_max: float
    wasserstein_standardized_mean: float | None
    correlation_error: CorrelationErrorFigures | None = Field(description="Pearson; None with a note if undefined")
    propensity_auc: float = Field(description="discriminator ROC AUC, out of fold; 0.5 = indistinguishable")
    propensity_pmse: float
    propensity_terms: int = Field(description="features the discriminator saw after the expansion")
    columns: list[ColumnFidelity]


class UtilityFigures(ComponentOutput):
    score: float | None
    target: str
    task: Literal["regression", "classification"]
    model: Literal["ridge", "logistic"]
    metric: Literal["r2", "balanced_accuracy"]
    tstr: float | None = Field(description="trained on the candidate, tested on held-out reference rows")
    trtr: float | None = Field(description="trained on the reference's training part, same test rows")
    chance: float
    ratio: float | None = Field(description="(TSTR − chance) / (TRTR − chance)")
    tstr_secondary: float | None = Field(description="MAE (regression) or accuracy (classification)")
    trtr_secondary: float | None
    candidate_train_rows: int
    reference_train_rows: int
    reference_test_rows: int
    stratified: bool


class DiversityFigures(ComponentOutput):
    score: float
    rows_compared: int = Field(description="rows per table in the nearest-neighbour comparison")
    nn_distance_mean: float
    reference_nn_distance_mean: float
    nn_ratio: float | None
    pairwise_distance_mean: float
    reference_pairwise_distance_mean: float
    pairwise_ratio: float | None
    duplicate_share: float
    reference_duplicate_share: float


class ConsistencyFigures(ComponentOutput):
    score: float
    valid_row_share: float = Field(description="complete rows within every constraint")
    complete_row_share: float
    missing_cell_share: float
    within_constraints_share: float | None = Field(description="among complete rows; None without constraints")
    violations: dict[str, int] = Field(description="complete rows outside each column's constraint")
    constraint_source: dict[str, Literal["bounds", "reference_range"]]


class PrivacyFigures(ComponentOutput):
    score: float
    candidate_rows: int
    reference_rows: int
    dcr_p05: float
    reference_dcr_p05: float = Field(description="leave-one-out DCR within the reference")
    p05_ratio: float | None
    dcr_median: float
    reference_dcr_median: float
    median_ratio: float | None
    exact_copy_share: float
    reference_exact_copy_share: float


class EnhancedQualityScorerOutput(ComponentOutput):
    overall_score: float | None
    tier: Tier | None = Field(
        description="excellent ≥ 0.85, good ≥ 0.70, fair ≥ 0.50, else poor; at most fair with > 10 % exact copies"
    )
    scores: dict[Dimension, float | None]
    weights_used: dict[Dimension, float] = Field(description="the weights renormalised over the scored dimensions")
    columns: list[str]
    candidate_rows: int
    reference_rows: int
    candidate_complete_rows: int
    reference_complete_rows: int
    fidelity: FidelityFigures
    utility: UtilityFigures | None
    diversity: DiversityFigures
    consistency: ConsistencyFigures
    privacy: PrivacyFigures
    notes: list[str]


# --------------------------------------------------------------------------- loading


def _load(value: list[list[float | None]] | MatrixRef, ctx: RunContext, field: str) -> tuple[NDArray, list | None]:
    names = None
    if isinstance(value, list):
        widths = {len(row) for row in value}
        if len(widths) != 1:
            bad = next(i for i, row in enumerate(value) if len(row) != len(value[0]))
            raise InvalidInput(field, f"rows must all have the same length; row {bad} has {len(value[bad])}")
        arr = np.array([[np.nan if v is None else v for v in row] for row in value], dtype=np.float64)
    else:
        arr, names = read_matrix(value, ctx.data_dir, field=field, max_cells=MAX_CELLS)
        if arr.ndim == 1:
            arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise InvalidInput(field, f"must be a non-empty matrix (rows × columns); got shape {list(arr.shape)}")
    n, p = arr.shape
    if n > MAX_ROWS or p > MAX_COLUMNS or arr.size > MAX_CELLS:
        raise InvalidInput(
            field, f"at most {MAX_ROWS:,} rows, {MAX_COLUMNS} columns and {MAX_CELLS:,} cells; got {n:,} × {p}"
        )
    if np.isinf(arr).any():
        raise InvalidInput(field, "must not contain infinity (a missing value is null, or NaN in a file)")
    finite = arr[np.isfinite(arr)]
    if finite.size and float(np.abs(finite).max()) > MAX_ABS_VALUE:
        raise InvalidInput(field, f"values must lie within ±{MAX_ABS_VALUE:g}; rescale the data")
    return arr, names


def _column_names(req: EnhancedQualityScorerInput, ref_names: list | None, cand_names: list | None, p: int) -> list:
    given = list(req.columns) if req.columns is not None else None
    if given is not None:
        if len(given) != p:
            raise InvalidInput("columns", f"names {len(given)} columns but the tables have {p}")
        if len(set(given)) != p:
            raise InvalidInput("columns", "names must be distinct")
        for field, found in (("reference", ref_names), ("candidate", cand_names)):
            if found is not None and found != given:
                raise InvalidInput("columns", f"differ from the {field} file's header {found}")
        return given
    if ref_names is not None and cand_names is not None and ref_names != cand_names:
        raise InvalidInput("candidate", f"columns {cand_names} differ from the reference's {ref_names}")
    names = ref_names or cand_names or [f"x{j}" for j in range(p)]
    if len(set(names)) != p:
        raise InvalidInput("columns", f"the header names a column twice ({names}); pass distinct columns")
    return names


# --------------------------------------------------------------------------- helpers


def quality_tier(score: float) -> Tier:
    """``excellent`` ≥ 0.85, ``good`` ≥ 0.70, ``fair`` ≥ 0.50, else ``poor``."""
    for name, threshold in TIER_THRESHOLDS:
        if score >= threshold:
            return name  # type: ignore[return-value]
    return "poor"


def _subsample(x: NDArray, size: int, rng: np.random.Generator) -> NDArray:
    """At most ``size`` rows, drawn without replacement and kept in their original order."""
    if x.shape[0] <= size:
        return x
    return x[np.sort(rng.choice(x.shape[0], size, replace=False))]


def _standardiser(ref: NDArray) -> tuple[NDArray, NDArray]:
    mean = ref.mean(axis=0)
    sd = ref.std(axis=0, ddof=1)
    return mean, np.where(sd > 0, sd, 1.0)


def _with_squares(z: NDArray) -> NDArray:
    return np.hstack((z, z * z))


def balanced_accuracy(y_true: NDArray, y_pred: NDArray) -> float:
    """Mean recall over the classes present in ``y_true`` (a prediction of an unseen class counts as wrong)."""
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


# --------------------------------------------------------------------------- the dimensions


def _propensity(ref: NDArray, cand: NDArray, seed: int) -> tuple[float, float, int, bool]:
    x = np.vstack((ref, cand))
    y = np.concatenate((np.zeros(ref.shape[0], dtype=int), np.ones(cand.shape[0], dtype=int)))
    expand = (
        PolynomialFeatures(degree=2, include_bias=False)
        if x.shape[1] <= POLY_MAX_COLUMNS
        else FunctionTransformer(_with_squares)
    )
    model: Pipeline = make_pipeline(StandardScaler(), expand, StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(PROPENSITY_FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    share = cand.shape[0] / x.shape[0]
    d = x.shape[1]
    terms = d + d * (d + 1) // 2 if d <= POLY_MAX_COLUMNS else 2 * d
    return float(roc_auc_score(y, p)), float(np.mean((p - share) ** 2)), terms, converged


def _fidelity(
    ref: NDArray, cand: NDArray, ref_s: NDArray, cand_s: NDArray, names: list, missing: NDArray, seed: int
) -> tuple[FidelityFigures, list[str]]:
    try:
        summary = fidelity.fidelity_summary(ref, cand, columns=names)
    except DegenerateData as exc:
        raise InvalidInput("candidate", str(exc)) from exc
    notes = list(summary.notes)
    sd = ref.std(axis=0, ddof=1)
    columns = []
    w_std = []
    for j, name in enumerate(names):
        w = float(stats.wasserstein_distance(ref[:, j], cand[:, j]))
        ws = w / float(sd[j]) if sd[j] > 0 else None
        if ws is not None:
            w_std.append(ws)
        columns.append(
            ColumnFidelity(
                column=name,
                ks_statistic=summary.ks[name],
                wasserstein=w,
                wasserstein_standardized=ws,
                missing_share=float(missing[j]),
            )
        )
    auc, pmse, terms, converged = _propensity(ref_s, cand_s, seed)
    if not converged:
        notes.append("the propensity model did not fully converge in 2,000 iterations; its AUC is approximate")
    corr = summary.pearson
    w_mean = float(np.mean(w_std)) if w_std else None
    parts = [1.0 - summary.ks_mean, 1.0 - 2.0 * max(0.0, auc - 0.5)]
    if w_mean is not None:
        parts.append(max(0.0, 1.0 - w_mean))
    if corr is not None:
        parts.append(1.0 - min(1.0, corr.mean_abs))
    figures = FidelityFigures(
        score=float(np.mean(parts)),
        ks_mean=summary.ks_mean,
        ks_max=summary.ks_max,
        wasserstein_standardized_mean=w_mean,
        correlation_error=None
        if corr is None
        else CorrelationErrorFigures(frobenius=corr.frobenius, mean_abs=corr.mean_abs, max_abs=corr.max_abs),
        propensity_auc=auc,
        propensity_pmse=pmse,
        propensity_terms=terms,
        columns=columns,
    )
    return figures, notes


def _infer_task(requested: str, y: NDArray) -> Literal["regression", "classification"]:
    if requested != "auto":
        return requested  # type: ignore[return-value]
    integral = bool(np.all(y == np.round(y)))
    return "classification" if integral and 2 <= np.unique(y).size <= AUTO_MAX_CLASSES else "regression"


def _utility(
    req: EnhancedQualityScorerInput, ref: NDArray, cand: NDArray, names: list
) -> tuple[UtilityFigures, list[str]]:
    assert req.target is not None
    if req.target not in names:
        raise InvalidInput("target", f"no column named {req.target!r}; the columns are {names}")
    t = names.index(req.target)
    if len(names) < 2:
        raise InvalidInput("target", "the utility needs at least one feature column besides the target")
    features = [j for j in range(len(names)) if j != t]
    y_ref, y_cand = ref[:, t], cand[:, t]
    if np.ptp(y_ref) == 0:
        raise InvalidInput("target", f"{req.target!r} is constant in the reference; there is nothing to predict")
    task = _infer_task(req.task, y_ref)
    notes: list[str] = []
    classify = task == "classification"
    if classify and not (np.all(y_ref == np.round(y_ref)) and np.unique(y_ref).size <= 100):
        raise InvalidInput("task", f"classification needs integer class labels in {req.target!r} (at most 100)")
    counts = np.unique(y_ref, return_counts=True)[1]
    stratified = classify and int(counts.min()) >= 2
    if classify and not stratified:
        notes.append("a reference class has a single row: the utility split is not stratified")
    idx = np.arange(ref.shape[0])
    train_idx, test_idx = train_test_split(
        idx, test_size=req.holdout_fraction, random_state=req.seed, stratify=y_ref if stratified else None
    )
    x_tr, y_tr = ref[train_idx][:, features], y_ref[train_idx]
    x_te, y_te = ref[test_idx][:, features], y_ref[test_idx]
    x_c = cand[:, features]

    def fit_predict(x: NDArray, y: NDArray) -> NDArray:
        if classify:
            if np.unique(y).size < 2:  # one class: the only model is the constant prediction
                return np.full(x_te.shape[0], y[0])
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        else:
            model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            pred = model.fit(x, y).predict(x_te)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes.append("a utility model did not fully converge in 2,000 iterations")
        return np.asarray(pred, dtype=np.float64)

    pred_c, pred_r = fit_predict(x_c, y_cand), fit_predict(x_tr, y_tr)
    if classify:
        if np.unique(y_cand).size < 2:
            notes.append("the candidate's target has a single class: TSTR predicts it for every row")
        chance = 1.0 / np.unique(y_te).size
        tstr, trtr = balanced_accuracy(y_te, pred_c), balanced_accuracy(y_te, pred_r)
        sec_c, sec_r = float(np.mean(pred_c == y_te)), float(np.mean(pred_r == y_te))
    else:
        chance = 0.0
        sec_c, sec_r = float(mean_absolute_error(y_te, pred_c)), float(mean_absolute_error(y_te, pred_r))
        if np.ptp(y_te) == 0:
            notes.append("the held-out target is constant: R² is undefined")
            tstr = trtr = None
        else:
            tstr, trtr = float(r2_score(y_te, pred_c)), float(r2_score(y_te, pred_r))
    ratio = None
    if tstr is not None and trtr is not None:
        ratio = _ratio(tstr - chance, trtr - chance)
        if ratio is None:
            notes.append(
                "the model trained on the reference does no better than chance: the utility ratio is undefined"
            )
    return (
        UtilityFigures(
            score=None if ratio is None else min(1.0, max(0.0, ratio)),
            target=req.target,
            task=task,
            model="logistic" if classify else "ridge",
            metric="balanced_accuracy" if classify else "r2",
            tstr=tstr,
            trtr=trtr,
            chance=chance,
            ratio=ratio,
            tstr_secondary=sec_c,
            trtr_secondary=sec_r,
            candidate_train_rows=int(x_c.shape[0]),
            reference_train_rows=int(train_idx.size),
            reference_test_rows=int(test_idx.size),
            stratified=stratified,
        ),
        notes,
    )


def _nn_mean(z: NDArray) -> float:
    return float(np.mean(cKDTree(z).query(z, k=2)[0][:, 1]))


def _diversity(
    ref: NDArray, cand: NDArray, ref_s: NDArray, cand_s: NDArray, rng: np.random.Generator
) -> DiversityFigures:
    mean, sd = _standardiser(ref_s)
    m = min(ref_s.shape[0], cand_s.shape[0])
    zr = (_subsample(ref_s, m, rng) - mean) / sd
    zc = (_subsample(cand_s, m, rng) - mean) / sd
    nn_c, nn_r = _nn_mean(zc), _nn_mean(zr)
    k = min(m, PAIRWISE_MAX_ROWS)
    pw_c = float(np.mean(pdist(_subsample(zc, k, rng))))
    pw_r = float(np.mean(pdist(_subsample(zr, k, rng))))
    dup_c = 1.0 - np.unique(cand, axis=0).shape[0] / cand.shape[0]
    dup_r = 1.0 - np.unique(ref, axis=0).shape[0] / ref.shape[0]
    nn_ratio, pw_ratio = _ratio(nn_c, nn_r), _ratio(pw_c, pw_r)
    parts = [1.0 - max(0.0, dup_c - dup_r)]
    parts += [min(1.0, r) for r in (nn_ratio, pw_ratio) if r is not None]
    return DiversityFigures(
        score=float(np.mean(parts)),
        rows_compared=m,
        nn_distance_mean=nn_c,
        reference_nn_distance_mean=nn_r,
        nn_ratio=nn_ratio,
        pairwise_distance_mean=pw_c,
        reference_pairwise_distance_mean=pw_r,
        pairwise_ratio=pw_ratio,
        duplicate_share=float(dup_c),
        reference_duplicate_share=float(dup_r),
    )


def _consistency(
    req: EnhancedQualityScorerInput, cand_all: NDArray, ref: NDArray, names: list
) -> tuple[ConsistencyFigures, float]:
    bounds = dict(req.bounds or {})
    unknown = sorted(set(bounds) - set(names))
    if unknown:
        raise InvalidInput(f"bounds.{unknown[0]}", f"no such column; the columns are {names}")
    missing = np.isnan(cand_all)
    complete = ~missing.any(axis=1)
    n = cand_all.shape[0]
    ok = complete.copy()
    violations: dict[str, int] = {}
    source: dict[str, Literal["bounds", "reference_range"]] = {}
    within_all = np.ones(n, dtype=bool)
    for j, name in enumerate(names):
        if name in bounds:
            lo, hi = bounds[name].min, bounds[name].max
            source[name] = "bounds"
        elif req.check_reference_range:
            lo, hi = float(ref[:, j].min()), float(ref[:, j].max())
            source[name] = "reference_range"
        else:
            continue
        col = cand_all[:, j]
        inside = np.ones(n, dtype=bool)
        if lo is not None:
            inside &= col >= lo
        if hi is not None:
            inside &= col <= hi
        violations[name] = int(np.sum(complete & ~inside))
        within_all &= inside
    ok &= within_all
    n_complete = int(complete.sum())
    within = float(np.sum(complete & within_all) / n_complete) if source and n_complete else None
    valid = float(ok.mean())
    figures = ConsistencyFigures(
        score=valid,
        valid_row_share=valid,
        complete_row_share=float(complete.mean()),
        missing_cell_share=float(missing.mean()),
        within_constraints_share=within,
        violations=violations,
        constraint_source=source,
    )
    return figures, float(valid)


def _privacy(ref_s: NDArray, cand_s: NDArray) -> tuple[PrivacyFigures, list[str]]:
    dcr = fidelity.distance_to_closest_record(ref_s, cand_s)
    notes = []
    p05_ratio = _ratio(dcr.synthetic_p05, dcr.baseline_p05)
    copies = dcr.exact_match_share
    if p05_ratio is not None:
        closeness = min(1.0, p05_ratio)
    elif dcr.median_ratio is not None:
        closeness = min(1.0, dcr.median_ratio)
        notes.append("the reference's 5th-percentile DCR is 0 (duplicated records): privacy uses the median ratio")
    else:
        closeness = 1.0
        notes.append("the reference's DCR median is 0 (mostly duplicated records): privacy counts exact copies only")
    return (
        PrivacyFigures(
            score=closeness * (1.0 - copies),
            candidate_rows=int(cand_s.shape[0]),
            reference_rows=int(ref_s.shape[0]),
            dcr_p05=dcr.synthetic_p05,
            reference_dcr_p05=dcr.baseline_p05,
            p05_ratio=p05_ratio,
            dcr_median=dcr.synthetic_median,
            reference_dcr_median=dcr.baseline_median,
            median_ratio=dcr.median_ratio,
            exact_copy_share=copies,
            reference_exact_copy_share=dcr.baseline_exact_match_share,
        ),
        notes,
    )


@dataclass(frozen=True)
class _Tables:
    names: list
    cand_all: NDArray
    ref_all: NDArray
    cand: NDArray
    ref: NDArray


def _tables(req: EnhancedQualityScorerInput, ctx: RunContext) -> _Tables:
    ref_all, ref_names = _load(req.reference, ctx, "reference")
    cand_all, cand_names = _load(req.candidate, ctx, "candidate")
    p = ref_all.shape[1]
    if cand_all.shape[1] != p:
        raise InvalidInput("candidate", f"has {cand_all.shape[1]} columns but the reference has {p}")
    names = _column_names(req, ref_names, cand_names, p)
    ref = ref_all[~np.isnan(ref_all).any(axis=1)]
    cand = cand_all[~np.isnan(cand_all).any(axis=1)]
    for field, table in (("reference", ref), ("candidate", cand)):
        if table.shape[0] < MIN_ROWS:
            raise InvalidInput(
                field, f"needs at least {MIN_ROWS} complete rows (no missing value); has {table.shape[0]}"
            )
    return _Tables(names, cand_all, ref_all, cand, ref)


@component(
    "EnhancedQualityScorer",
    tier="tier2",
    capabilities=["data_quality", "synthetic_data_evaluation", "fidelity", "privacy_risk"],
    example={
        "reference": [
            [0.2, 1.0, 0],
            [0.4, 1.9, 0],
            [0.5, 2.6, 1],
            [0.9, 4.1, 1],
            [0.1, 0.7, 0],
            [0.7, 3.2, 1],
            [0.3, 1.6, 0],
            [0.8, 3.9, 1],
            [0.6, 2.8, 1],
            [0.35, 1.5, 0],
            [0.55, 2.4, 1],
            [0.15, 0.9, 0],
        ],
        "candidate": [
            [0.25, 1.2, 0],
            [0.45, 2.1, 0],
            [0.5, 2.4, 1],
            [0.85, 3.8, 1],
            [0.2, 0.9, 0],
            [0.65, 3.0, 1],
            [0.3, 1.4, 0],
            [0.75, 3.6, 1],
            [0.6, 2.9, 1],
            [0.4, 1.8, 0],
            [0.05, 0.4, 0],
            [None, 2.2, 1],
        ],
        "columns": ["clarity", "specificity", "success"],
        "target": "success",
        "bounds": {"clarity": {"min": 0, "max": 1}},
        "seed": 0,
    },
)
def enhanced_quality_scorer(request: EnhancedQualityScorerInput, ctx: RunContext) -> EnhancedQualityScorerOutput:
    """Score a training set against real data: fidelity, utility (TSTR), diversity, consistency, privacy.

    Fidelity: KS and Wasserstein per column, correlation-matrix error, discriminator AUC. Utility: train on the
    candidate, test on held-out reference rows, as a ratio to training on the reference. Diversity:
    nearest-neighbour and pairwise distances and duplicates relative to the reference. Consistency: missing
    values and rows outside the bounds. Privacy: distance to the closest reference record against the
    reference's own. A weighted overall score and its tier (excellent ≥ 0.85, good ≥ 0.70, fair ≥ 0.50).
    """
    req = request
    tables = _tables(req, ctx)
    names, ref, cand = tables.names, tables.ref, tables.cand
    if req.target is None and sum(v for k, v in req.weights.model_dump().items() if k != "utility") <= 0:
        raise InvalidInput("weights", "only utility has weight, but utility needs a target column")
    notes: list[str] = []
    rng = np.random.default_rng(req.seed)
    sample_rng, diversity_rng = rng.spawn(2)
    ref_s = _subsample(ref, req.sample_rows, sample_rng)
    cand_s = _subsample(cand, req.sample_rows, sample_rng)
    if ref.shape[0] > req.sample_rows or cand.shape[0] > req.sample_rows:
        notes.append(
            f"propensity, diversity and privacy use seeded subsamples of {ref_s.shape[0]} reference and "
            f"{cand_s.shape[0]} candidate rows"
        )
    missing = np.isnan(tables.cand_all).mean(axis=0)
    # Small tables fit faster on one thread than with BLAS threads spinning up on a shared machine.
    with threadpool_limits(limits=1):
        fid, fid_notes = _fidelity(ref, cand, ref_s, cand_s, names, missing, req.seed)
        utility, util_notes = _utility(req, ref, cand, names) if req.target is not None else (None, [])
        diversity = _diversity(ref, cand, ref_s, cand_s, diversity_rng)
    consistency, _ = _consistency(req, tables.cand_all, ref, names)
    privacy, priv_notes = _privacy(ref_s, cand_s)
    notes += fid_notes + util_notes + priv_notes
    dropped = tables.ref_all.shape[0] - ref.shape[0]
    if dropped:
        notes.append(f"{dropped} reference rows with missing values were left out")
    scores: dict[Dimension, float | None] = {
        "fidelity": fid.score,
        "utility": None if utility is None else utility.score,
        "diversity": diversity.score,
        "consistency": consistency.score,
        "privacy": privacy.score,
    }
    weights = req.weights.model_dump()
    scored = {d: weights[d] for d, s in scores.items() if s is not None and weights[d] > 0}
    total = sum(scored.values())
    overall = None
    weights_used: dict[Dimension, float] = {}
    if total > 0:
        weights_used = {d: w / total for d, w in scored.items()}  # type: ignore[misc]
        overall = float(sum(w * scores[d] for d, w in weights_used.items()))  # type: ignore[operator]
    else:
        notes.append("no dimension with a positive weight could be scored: there is no overall score")
    tier = None if overall is None else quality_tier(overall)
    if tier in ("excellent", "good") and privacy.exact_copy_share > COPY_SHARE_CAP:
        tier = "fair"
        notes.append(
            f"{privacy.exact_copy_share:.0%} of the candidate rows are exact copies of reference records: "
            "the tier is capped at fair"
        )
    return EnhancedQualityScorerOutput(
        overall_score=overall,
        tier=tier,
        scores=scores,
        weights_used=weights_used,
        columns=names,
        candidate_rows=int(tables.cand_all.shape[0]),
        reference_rows=int(tables.ref_all.shape[0]),
        candidate_complete_rows=int(cand.shape[0]),
        reference_complete_rows=int(ref.shape[0]),
        fidelity=fid,
        utility=utility,
        diversity=diversity,
        consistency=consistency,
        privacy=privacy,
        notes=notes,
    )
