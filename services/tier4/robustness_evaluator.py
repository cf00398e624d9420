"""Robustness of a real model under noise, feature dropout, adversarial and text perturbations.

The model is one of:

* ``registry`` — a stored version from the model registry (``ml_model_service``), evaluated on the rows
  given (its artefact is hash-verified before loading; features are checked against its feature names);
* ``train`` — a scikit-learn estimator trained here on a split of the given data (logistic, ridge, random
  forest, gradient boosting, decision tree, k-NN) and evaluated on the held-out rows;
* ``text`` — TF-IDF + logistic regression trained on a split of the given texts and labels.

Perturbations, each at several levels (level 0 is the unperturbed data, so every curve starts at the clean
metric — accuracy for classification, R² for regression):

* ``gaussian_noise`` — x + ε with ε_j ~ N(0, (level·σ_j)²), σ_j the feature's training standard deviation;
* ``feature_dropout`` — each value replaced by its feature's training mean with probability ``level``;
* ``adversarial`` — gradient-free attacks in the L∞ box |δ_j| ≤ level·σ_j, counted per row: (1) a
  decision-based boundary search (classification): bisection (8 steps) on the segments from the row towards
  the ``adversarial_queries // 8`` nearest evaluation rows predicted as another class, keeping the
  verified-misclassified end; the row is broken at every budget ≥ the σ-scaled L∞ distance found. (2) for
  the rows it does not break, a score-based random search (after Andriushchenko et al., Square Attack, 2020)
  of ``adversarial_queries`` model queries per row and budget: each query redraws a random subset of
  coordinates at the box's vertices and keeps the candidate if it lowers the margin p(true class) −
  max p(other class) (regression: raises |prediction − target|); a row stops once misclassified. The final
  points are predicted once more, so the adversarial metric is measured, not inferred;
* text: ``char_swap`` (each adjacent character pair swapped with probability ``level``), ``char_delete``
  (each character deleted with probability ``level``), ``word_dropout`` (each word dropped with
  probability ``level``).

Random perturbations are averaged over ``repeats`` draws. Each point reports the metric, its drop from the
clean metric and the *agreement* (share of predictions unchanged; regression: R² of the perturbed against the
clean predictions, floored at 0). Per curve: ``auc`` = area under metric(level) ÷ level span (the curve's
average metric), ``retention`` = auc ÷ clean metric (clipped to [0, 1]), ``stability`` = the same area for
agreement, and ``score`` = retention × stability. A model that is already wrong keeps its accuracy under
noise by chance; it does not keep its predictions, which is why stability is part of the score. The
robustness score is the mean of the curves' scores (1 = unaffected).
Every draw comes from ``np.random.default_rng([seed, perturbation, level])``: same seed, same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, Numbers, RunContext, Seed, component
from services.models.registry import (
    MAX_FEATURES,
    AliasName,
    EstimatorParams,
    Matrix,
    ModelName,
    ModelRegistry,
    build_estimator,
    effective_params,
    infer_task,
    load_matrix,
    load_vector,
)

__all__ = [
    "CurvePoint",
    "PerturbationCurve",
    "RegistryModelSource",
    "RobustnessEvaluatorInput",
    "RobustnessEvaluatorOutput",
    "TextModelSource",
    "TrainModelSource",
    "robustness_evaluator",
]

TABULAR = ("gaussian_noise", "feature_dropout", "adversarial")
TEXTUAL = ("char_swap", "char_delete", "word_dropout")
ALL_KINDS = TABULAR + TEXTUAL
UNITS = {
    "gaussian_noise": "noise standard deviation, in training standard deviations of each feature",
    "feature_dropout": "probability that a value is replaced by its feature's training mean",
    "adversarial": "L∞ budget, in training standard deviations of each feature",
    "char_swap": "probability that an adjacent character pair is swapped",
    "char_delete": "probability that a character is deleted",
    "word_dropout": "probability that a word is dropped",
}
MIN_ROWS = 10
# Model queries the adversarial search may spend in all (rows × queries × budgets): bounds the run time.
MAX_ATTACK_QUERIES = 5_000_000
# Bisection steps of the boundary search (2⁻⁸ of a segment), and chunk sizes that bound its memory.
BOUNDARY_STEPS = 8
NEIGHBOUR_CHUNK = 256
PAIR_CELLS = 2_000_000
Kind = Literal["gaussian_noise", "feature_dropout", "adversarial", "char_swap", "char_delete", "word_dropout"]
Label = Annotated[str, Field(max_length=200)] | int


def _levels(default: list[float], what: str) -> Any:
    return Field(
        default_factory=lambda: list(default), min_length=1, max_length=20, description=f"{what} (0 is always included)"
    )


Level = Annotated[float, Field(ge=0, allow_inf_nan=False)]


# --------------------------------------------------------------------------- inputs


class RegistryModelSource(ComponentInput):
    """A stored model, evaluated on the rows given."""

    source: Literal["registry"]
    name: ModelName
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(None, description="default: alias or latest")
    alias: AliasName | None = None
    features: Matrix = Field(description="evaluation rows × features")
    target: Numbers = Field(description="true label (classification) or value (regression) per row")
    feature_names: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=MAX_FEATURES, description="the columns' names, in any order (checked)"
    )


class TrainModelSource(ComponentInput):
    """An estimator trained here on a split of the data; evaluated on the held-out rows."""

    source: Literal["train"]
    model_type: Literal["logistic", "ridge", "random_forest", "gradient_boosting", "decision_tree", "knn"]
    task: Literal["auto", "regression", "classification"] = "auto"
    params: EstimatorParams = Field(default_factory=EstimatorParams)
    features: Matrix
    target: Numbers
    test_fraction: float = Field(0.3, ge=0.1, le=0.5)


class TextModelSource(ComponentInput):
    """TF-IDF + logistic regression trained on a split of the texts; evaluated on the held-out texts."""

    source: Literal["text"]
    # Bounded so that even an over-long request stays under the body limit and is refused field by field.
    texts: list[Annotated[str, Field(max_length=2000)]] = Field(min_length=MIN_ROWS, max_length=5000)
    labels: list[Label] = Field(min_length=MIN_ROWS, max_length=5000, description="one class label per text")
    analyzer: Literal["word", "char_wb"] = "word"
    ngram_max: int = Field(1, ge=1, le=3, description="n-grams from 1 to this")
    max_features: int = Field(20_000, ge=10, le=200_000)
    C: float = Field(1.0, gt=0, le=1e6, description="inverse L2 penalty of the logistic regression")
    test_fraction: float = Field(0.3, ge=0.1, le=0.5)


class RobustnessEvaluatorInput(ComponentInput):
    model: Annotated[RegistryModelSource | TrainModelSource | TextModelSource, Field(discriminator="source")] = Field(
        description="which model to evaluate, with its data"
    )
    perturbations: list[Kind] | None = Field(
        None, min_length=1, max_length=6, description="default: the three tabular or the three text ones"
    )
    noise_levels: list[Annotated[Level, Field(le=10)]] = _levels([0.0, 0.1, 0.25, 0.5, 1.0], "gaussian_noise levels")
    dropout_levels: list[Annotated[Level, Field(le=1)]] = _levels([0.0, 0.1, 0.25, 0.5], "feature_dropout levels")
    adversarial_budgets: list[Annotated[Level, Field(le=5)]] = _levels([0.0, 0.05, 0.1, 0.25], "adversarial budgets")
    text_levels: list[Annotated[Level, Field(le=1)]] = _levels([0.0, 0.05, 0.1, 0.2], "text perturbation levels")
    adversarial_queries: int = Field(50, ge=1, le=1000, description="model queries per sample and budget")
    repeats: int = Field(3, ge=1, le=20, description="draws averaged per random perturbation level")
    max_eval_rows: int = Field(2000, ge=MIN_ROWS, le=20_000, description="evaluation rows (seeded subsample)")
    seed: Seed = 0


# --------------------------------------------------------------------------- outputs


class CurvePoint(ComponentOutput):
    level: float
    metric: float
    metric_sd: float | None = Field(description="standard deviation across repeats; None for one draw")
    drop: float = Field(description="clean metric − metric")
    agreement: float = Field(
        description="share of predictions unchanged from the clean ones (regression: their R² against the clean "
        "predictions, floored at 0)"
    )
    attack_success_rate: float | None = Field(
        None, description="adversarial classification: share of correctly classified rows that were flipped"
    )


class PerturbationCurve(ComponentOutput):
    perturbation: str
    level_unit: str
    points: list[CurvePoint]
    auc: float = Field(description="area under metric(level) ÷ level span: the average metric over the levels")
    retention: float | None = Field(description="auc ÷ clean metric, clipped to [0, 1]; None if the clean metric ≤ 0")
    stability: float = Field(description="area under agreement(level) ÷ level span")
    score: float | None = Field(description="retention × stability, in [0, 1] (1 = unaffected)")


class RobustnessEvaluatorOutput(ComponentOutput):
    source: str
    model: str = Field(description="model type, or registry name:version")
    task: str
    metric: str = Field(description="accuracy (classification) or r2 (regression)")
    n_train: int | None = Field(description="rows the model was trained on here (None for a registry model)")
    n_eval: int
    clean_metric: float
    curves: list[PerturbationCurve]
    robustness_score: float | None = Field(description="mean of the curves' scores")
    notes: list[str]


# --------------------------------------------------------------------------- model preparation


class _Prepared:
    """The fitted model, its evaluation rows and what perturbations are relative to."""

    def __init__(
        self,
        *,
        model: Any,
        task: str,
        label: str,
        x: Any,
        y: np.ndarray,
        n_train: int | None,
        means: np.ndarray | None = None,
        stds: np.ndarray | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.model, self.task, self.label, self.x, self.y = model, task, label, x, y
        self.n_train, self.means, self.stds = n_train, means, stds
        self.notes = notes or []
        self.clean_pred: np.ndarray = np.empty(0)


def _holdout(y: np.ndarray, classify: bool, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_test = math.ceil(test_fraction * y.size)
    dummy = np.zeros((y.size, 1))
    if classify:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and min(n_test, y.size - n_test) >= counts.size:
            splitter: Any = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
            return next(splitter.split(dummy, y))
    return next(ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(dummy, y))


def _check_classes(y: np.ndarray, field: str) -> None:
    if np.unique(y).size < 2:
        raise InvalidInput(field, "needs at least two classes")


def _prepare_train(src: TrainModelSource, ctx: RunContext, seed: int) -> _Prepared:
    x, _ = load_matrix(src.features, ctx.data_dir, field="model.features")
    y = load_vector(src.target, ctx.data_dir, field="model.target")
    if y.size != x.shape[0]:
        raise InvalidInput("model.target", f"has {y.size} values for {x.shape[0]} feature rows")
    if y.size < MIN_ROWS:
        raise InvalidInput("model.target", f"needs at least {MIN_ROWS} rows; got {y.size}")
    task = infer_task(src.task, src.model_type, y)
    estimator = build_estimator(src.model_type, task, src.params, seed)
    if task == "classification":
        _check_classes(y, "model.target")
    train, test = _holdout(y, task == "classification", src.test_fraction, seed)
    if task == "classification" and np.unique(y[train]).size < 2:
        raise InvalidInput("model.target", "the training split holds only one class")
    if src.model_type == "knn" and train.size < src.params.n_neighbors:
        raise InvalidInput("model.params.n_neighbors", f"exceeds the {train.size} training rows")
    model = estimator.fit(x[train], y[train])
    params = ", ".join(f"{k}={v}" for k, v in effective_params(src.model_type, src.params).items())
    return _Prepared(
        model=model,
        task=task,
        label=f"{src.model_type}({params})",
        x=x[test],
        y=y[test],
        n_train=int(train.size),
        means=x[train].mean(axis=0),
        stds=x[train].std(axis=0),
    )


def _prepare_registry(src: RegistryModelSource, ctx: RunContext) -> _Prepared:
    registry = ModelRegistry.for_context(ctx)
    record = registry.resolve(src.name, version=src.version, alias=src.alias)
    x, file_names = load_matrix(src.features, ctx.data_dir, field="model.features")
    y = load_vector(src.target, ctx.data_dir, field="model.target")
    if y.size != x.shape[0]:
        raise InvalidInput("model.target", f"has {y.size} values for {x.shape[0]} feature rows")
    stored = record.feature_names
    names = src.feature_names if src.feature_names is not None else file_names
    if names is not None:
        if len(names) != x.shape[1] or len(set(names)) != len(names) or set(names) != set(stored):
            raise InvalidInput("model.feature_names", f"columns {names} do not match the model's features {stored}")
        x = x[:, [names.index(s) for s in stored]]
    elif x.shape[1] != len(stored):
        raise InvalidInput("model.features", f"has {x.shape[1]} columns; the model expects {len(stored)}")
    notes = []
    means, stds = record.meta.get("feature_means"), record.meta.get("feature_stds")
    if means is None or stds is None:
        notes.append("the registry has no training statistics for this model; perturbations use the given rows'")
        means, stds = x.mean(axis=0).tolist(), x.std(axis=0).tolist()
    return _Prepared(
        model=registry.load(record),
        task=record.task,
        label=f"{record.name}:{record.version} ({record.model_type})",
        x=x,
        y=y,
        n_train=None,
        means=np.asarray(means, dtype=np.float64),
        stds=np.asarray(stds, dtype=np.float64),
        notes=notes,
    )


def _prepare_text(src: TextModelSource, seed: int) -> _Prepared:
    if len(src.labels) != len(src.texts):
        raise InvalidInput("model.labels", f"has {len(src.labels)} labels for {len(src.texts)} texts")
    # Labels arrive as JSON strings or integers; compare them as text.
    y = np.asarray([str(label) for label in src.labels])
    _check_classes(y, "model.labels")
    train, test = _holdout(y, True, src.test_fraction, seed)
    if np.unique(y[train]).size < 2:
        raise InvalidInput("model.labels", "the training split holds only one class")
    texts = np.asarray(src.texts, dtype=object)
    model = Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    analyzer=src.analyzer,
                    ngram_range=(1, src.ngram_max),
                    max_features=src.max_features,
                    sublinear_tf=True,
                ),
            ),
            ("model", LogisticRegression(C=src.C, max_iter=1000, random_state=seed)),
        ]
    )
    try:
        model.fit(list(texts[train]), y[train])
    except ValueError as exc:  # e.g. an empty vocabulary: only stop words or empty texts
        raise InvalidInput("model.texts", f"cannot build TF-IDF features: {exc}") from exc
    return _Prepared(
        model=model,
        task="classification",
        label=f"tfidf({src.analyzer}, 1-{src.ngram_max} grams)+logistic(C={src.C})",
        x=list(texts[test]),
        y=y[test],
        n_train=int(train.size),
    )


# --------------------------------------------------------------------------- perturbations


def _metric(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "classification":
        return float(accuracy_score(y, pred))
    return float(r2_score(y, pred))


def _agreement(prep: _Prepared, pred: np.ndarray) -> float:
    """Share of rows whose prediction is unchanged (classification); R² of the perturbed predictions against
    the clean ones, floored at 0 (regression; 1 when the clean predictions are constant and unchanged)."""
    clean = prep.clean_pred
    if prep.task == "classification":
        return float(np.mean(pred == clean))
    spread = float(np.sum((clean - clean.mean()) ** 2))
    err = float(np.sum((pred - clean) ** 2))
    if spread == 0:
        return 1.0 if err == 0 else 0.0
    return max(0.0, 1.0 - err / spread)


def _margin(model: Any, x: np.ndarray, y_index: np.ndarray) -> np.ndarray:
    """p(true class) − max p(other class): negative exactly when the sample is misclassified (ties aside)."""
    proba = model.predict_proba(x)
    rows = np.arange(x.shape[0])
    true = proba[rows, y_index]
    proba[rows, y_index] = -np.inf
    return true - proba.max(axis=1)


def _sigma_linf(diff: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Row-wise L∞ norm of ``diff`` in units of each feature's σ (infinite where a zero-σ feature changes)."""
    scaled = np.abs(diff) / np.where(stds > 0, stds, 1.0)
    return np.where((stds > 0) | (diff == 0), scaled, np.inf).max(axis=1)


def _boundary_search(prep: _Prepared, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Decision-based line search towards the nearest rows the model puts in another class.

    For each correctly classified row, the ``queries // BOUNDARY_STEPS`` nearest evaluation rows (standardised
    Euclidean distance) whose prediction differs from its label are starting points; a bisection on the segment
    between the row and each start keeps the end that is verified misclassified. Returns, per row, the smallest
    σ-scaled L∞ distance found (inf if none) and that misclassified point. Shared by every budget; it needs no
    scores, so it also finds the nearby islands of piecewise-constant models (trees, 1-NN) where a score-based
    search sees no signal.
    """
    x0, y, model = prep.x, prep.y, prep.model
    assert prep.stds is not None
    n, d = x0.shape
    pred = prep.clean_pred
    dist = np.full(n, np.inf)
    adv = x0.copy()
    rows = np.flatnonzero(pred == y)
    k = min(max(1, queries // BOUNDARY_STEPS), n)
    if rows.size == 0:
        return dist, adv
    z = x0 / np.where(prep.stds > 0, prep.stds, 1.0)
    sq = (z * z).sum(axis=1)
    pair_i, pair_j = [], []
    for start in range(0, rows.size, NEIGHBOUR_CHUNK):
        chunk = rows[start : start + NEIGHBOUR_CHUNK]
        d2 = sq[chunk, None] + sq[None, :] - 2.0 * (z[chunk] @ z.T)
        d2[pred[None, :] == y[chunk, None]] = np.inf  # only rows predicted as another class are adversarial starts
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        ok = np.isfinite(np.take_along_axis(d2, nearest, axis=1))
        pair_i.append(np.repeat(chunk, k).reshape(-1, k)[ok])
        pair_j.append(nearest[ok])
    i_all, j_all = np.concatenate(pair_i), np.concatenate(pair_j)
    step = max(1, PAIR_CELLS // d)
    for start in range(0, i_all.size, step):
        i, j = i_all[start : start + step], j_all[start : start + step]
        diff = x0[j] - x0[i]
        lo, hi = np.zeros(i.size), np.ones(i.size)  # hi = 1 is row j itself: verified misclassified
        for _ in range(BOUNDARY_STEPS):
            mid = (lo + hi) / 2
            wrong = model.predict(x0[i] + mid[:, None] * diff) != y[i]
            hi = np.where(wrong, mid, hi)
            lo = np.where(wrong, lo, mid)
        pair_dist = hi * _sigma_linf(diff, prep.stds)
        better = pair_dist < dist[i]
        # Several pairs of one row may improve in one chunk: keep the smallest (sort so it is written last).
        order = np.argsort(-pair_dist[better], kind="stable")
        bi, bdist = i[better][order], pair_dist[better][order]
        dist[bi] = bdist
        adv[bi] = (x0[i] + hi[:, None] * diff)[better][order]
    return dist, adv


def _attack(
    prep: _Prepared,
    budget: float,
    queries: int,
    rng: np.random.Generator,
    boundary: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[float, float, float | None]:
    """Adversarial metric and agreement within the L∞ budget, and the attack success rate (classification).

    A row counts as broken if the boundary search found a misclassified point within the budget; the others
    get a score-based random search (Square-Attack-like) inside the box. The final points are predicted once
    more, so the metric is measured, not inferred.
    """
    x0, y, model = prep.x, prep.y, prep.model
    assert prep.stds is not None
    radius = budget * prep.stds
    n, d = x0.shape
    classify = prep.task == "classification"
    if classify:
        classes = model.classes_
        known = np.isin(y, classes)
        y_index = np.searchsorted(classes, y).clip(0, classes.size - 1)

        def loss(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
            margin = _margin(model, x, y_index[rows])
            return np.where(known[rows], margin, -np.inf)  # a label the model cannot predict is always wrong
    else:

        def loss(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return -np.abs(model.predict(x) - y[rows])

    found = np.zeros(n, dtype=bool) if boundary is None else boundary[0] <= budget * (1 + 1e-12)
    delta = np.zeros_like(x0)
    best = loss(x0, np.arange(n))
    best[found] = -np.inf
    for t in range(queries):
        active = np.flatnonzero(best > 0) if classify else np.arange(n)
        if active.size == 0:
            break
        # Redraw many coordinates early and few late (at least one per row), at the box's vertices.
        share = max(1.0 / d, 0.5 * (1 - t / queries))
        redraw = rng.random((active.size, d)) < share
        redraw[np.arange(active.size), rng.integers(0, d, active.size)] = True
        vertex = radius * rng.choice(np.array([-1.0, 1.0]), size=(active.size, d))
        candidate = np.where(redraw, vertex, delta[active])
        value = loss(x0[active] + candidate, active)
        better = value < best[active]
        delta[active[better]] = candidate[better]
        best[active[better]] = value[better]
    final = x0 + delta
    if boundary is not None:
        final[found] = boundary[1][found]
    pred = model.predict(final)
    metric, agree = _metric(prep.task, y, pred), _agreement(prep, pred)
    if not classify:
        return metric, agree, None
    clean_correct = prep.clean_pred == y
    flipped = clean_correct & (pred != y)
    return metric, agree, float(flipped.sum() / clean_correct.sum()) if clean_correct.any() else None


def _char_swap(text: str, level: float, rng: np.random.Generator) -> str:
    if len(text) < 2:
        return text
    chars = list(text)
    picks = np.flatnonzero(rng.random(len(chars) - 1) < level)
    last = -2
    for i in picks:  # non-overlapping adjacent swaps, left to right
        if i > last + 1:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            last = i
    return "".join(chars)


def _char_delete(text: str, level: float, rng: np.random.Generator) -> str:
    keep = rng.random(len(text)) >= level
    return "".join(c for c, k in zip(text, keep, strict=True) if k)


def _word_dropout(text: str, level: float, rng: np.random.Generator) -> str:
    words = text.split()
    keep = rng.random(len(words)) >= level
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


_TEXT_OPS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "char_swap": _char_swap,
    "char_delete": _char_delete,
    "word_dropout": _word_dropout,
}


def _perturbed_metric(
    prep: _Prepared,
    kind: str,
    level: float,
    rng: np.random.Generator,
    request: RobustnessEvaluatorInput,
    boundary: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[list[float], list[float], float | None]:
    """Metric and agreement of each repeat (one draw for the attack), and the attack success rate."""
    if kind == "adversarial":
        metric, agree, success = _attack(prep, level, request.adversarial_queries, rng, boundary)
        return [metric], [agree], success
    values, agreement = [], []
    for _ in range(request.repeats):
        if kind == "gaussian_noise":
            assert prep.stds is not None
            x = prep.x + rng.standard_normal(prep.x.shape) * (level * prep.stds)
        elif kind == "feature_dropout":
            x = np.where(rng.random(prep.x.shape) < level, prep.means, prep.x)
        else:
            op = _TEXT_OPS[kind]
            x = [op(text, level, rng) for text in prep.x]
        pred = prep.model.predict(x)
        values.append(_metric(prep.task, prep.y, pred))
        agreement.append(_agreement(prep, pred))
    return values, agreement, None


def _curve(
    prep: _Prepared, kind: str, kind_index: int, clean: float, request: RobustnessEvaluatorInput
) -> PerturbationCurve:
    raw = {
        "gaussian_noise": request.noise_levels,
        "feature_dropout": request.dropout_levels,
        "adversarial": request.adversarial_budgets,
    }.get(kind, request.text_levels)
    levels = np.unique(np.concatenate([[0.0], np.asarray(raw, dtype=np.float64)]))
    boundary = None
    if kind == "adversarial" and prep.task == "classification" and levels.size > 1:
        boundary = _boundary_search(prep, request.adversarial_queries)
    points = []
    for level_index, level in enumerate(levels):
        if level == 0:
            values, agreement = [clean], [1.0]
            success = 0.0 if kind == "adversarial" and prep.task == "classification" else None
        else:
            rng = np.random.default_rng([request.seed, kind_index, level_index])
            values, agreement, success = _perturbed_metric(prep, kind, float(level), rng, request, boundary)
        arr = np.asarray(values)
        mean = float(arr.mean())
        points.append(
            CurvePoint(
                level=float(level),
                metric=mean,
                metric_sd=float(arr.std(ddof=1)) if arr.size > 1 else None,
                drop=clean - mean,
                agreement=float(np.mean(agreement)),
                attack_success_rate=success,
            )
        )
    auc = _normalised_area(levels, np.array([p.metric for p in points]))
    stability = _normalised_area(levels, np.array([p.agreement for p in points]))
    retention = float(np.clip(auc / clean, 0.0, 1.0)) if clean > 0 else None
    return PerturbationCurve(
        perturbation=kind,
        level_unit=UNITS[kind],
        points=points,
        auc=auc,
        retention=retention,
        stability=stability,
        score=None if retention is None else retention * stability,
    )


def _normalised_area(levels: np.ndarray, values: np.ndarray) -> float:
    """Trapezoidal area under values(level) divided by the level span: the curve's average height."""
    span = float(levels[-1] - levels[0])
    return float(np.trapezoid(values, levels) / span) if span > 0 else float(values[0])


# --------------------------------------------------------------------------- the component


def _subsample(prep: _Prepared, limit: int, seed: int) -> None:
    n = len(prep.y)
    if n <= limit:
        return
    rows = np.sort(np.random.default_rng([seed, 99]).choice(n, size=limit, replace=False))
    prep.x = [prep.x[i] for i in rows] if isinstance(prep.x, list) else prep.x[rows]
    prep.y = prep.y[rows]
    prep.notes.append(f"evaluated on a seeded subsample of {limit} of the {n} evaluation rows")


@component(
    "RobustnessEvaluator",
    tier="tier4",
    capabilities=["model_robustness", "adversarial_evaluation", "text_perturbation"],
    example={
        "model": {
            "source": "train",
            "model_type": "logistic",
            "features": [
                [0.1, 1.2],
                [0.3, 0.9],
                [0.2, 1.1],
                [0.4, 1.4],
                [0.5, 0.8],
                [0.25, 1.0],
                [0.35, 1.3],
                [0.15, 0.7],
                [1.1, 0.1],
                [1.3, 0.4],
                [1.2, 0.2],
                [1.4, 0.3],
                [0.9, 0.0],
                [1.25, 0.5],
                [1.05, 0.35],
                [1.35, 0.15],
            ],
            "target": [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        },
        "adversarial_queries": 20,
        "seed": 0,
    },
    examples=[
        {
            "model": {
                "source": "text",
                "texts": [
                    "please summarise this report clearly",
                    "summarise the quarterly report please",
                    "give a clear summary of the report",
                    "write a short summary of this document",
                    "summarise the meeting notes clearly",
                    "translate this sentence into french",
                    "translate the paragraph into german",
                    "please translate this text to spanish",
                    "translate these notes into italian",
                    "give a translation of this sentence",
                ],
                "labels": ["summary"] * 5 + ["translation"] * 5,
            },
            "seed": 0,
        },
        {
            "model": {
                "source": "registry",
                "name": "rule-effectiveness",
                "alias": "production",
                "features": [[0.2, 1.0], [0.8, 0.0]],
                "target": [0.3, 0.8],
            }
        },
    ],
)
def robustness_evaluator(request: RobustnessEvaluatorInput, ctx: RunContext) -> RobustnessEvaluatorOutput:
    """Accuracy-drop curves of a real model under noise, feature dropout, adversarial or text perturbations.

    The model comes from the model registry, or is trained here on the given features or texts; see the
    module docstring for each perturbation, the curve's area and the robustness score.
    """
    src = request.model
    allowed = TEXTUAL if isinstance(src, TextModelSource) else TABULAR
    kinds = list(dict.fromkeys(request.perturbations or allowed))
    wrong = [k for k in kinds if k not in allowed]
    if wrong:
        raise InvalidInput("perturbations", f"{wrong} do not apply to a {src.source} model; use {list(allowed)}")
    if isinstance(src, RegistryModelSource):
        prep = _prepare_registry(src, ctx)
    elif isinstance(src, TrainModelSource):
        prep = _prepare_train(src, ctx, request.seed)
    else:
        prep = _prepare_text(src, request.seed)
    _subsample(prep, request.max_eval_rows, request.seed)
    if "adversarial" in kinds:
        cost = len(prep.y) * request.adversarial_queries * len(request.adversarial_budgets)
        if cost > MAX_ATTACK_QUERIES:
            raise InvalidInput(
                "adversarial_queries",
                f"rows × queries × budgets = {cost:,} exceeds {MAX_ATTACK_QUERIES:,}; lower one of them",
            )
        if prep.task == "classification" and not hasattr(prep.model, "predict_proba"):
            raise InvalidInput("perturbations", "the adversarial search needs a model with predict_proba")
    if prep.task == "regression" and (len(prep.y) < 2 or np.ptp(prep.y) == 0):
        raise InvalidInput("model.target", "R² is undefined on fewer than two or constant targets; give varied rows")
    prep.clean_pred = np.asarray(prep.model.predict(prep.x))
    clean = _metric(prep.task, prep.y, prep.clean_pred)
    curves = [_curve(prep, kind, ALL_KINDS.index(kind), clean, request) for kind in kinds]
    scores = [c.score for c in curves if c.score is not None]
    return RobustnessEvaluatorOutput(
        source=src.source,
        model=prep.label,
        task=prep.task,
        metric="accuracy" if prep.task == "classification" else "r2",
        n_train=prep.n_train,
        n_eval=len(prep.y),
        clean_metric=clean,
        curves=curves,
        robustness_score=float(np.mean(scores)) if scores else None,
        notes=prep.notes,
    )
