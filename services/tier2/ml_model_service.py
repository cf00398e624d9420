"""Model registry service: train (features → rule effectiveness), version, predict, promote, delete.

Operations (``operation``):

* ``train`` — fits a scikit-learn model (ridge / logistic / random forest / gradient boosting) on a
  training split and stores it as the next version of ``name``. The split is group-aware when ``groups``
  (e.g. session ids) are given: ``GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)``,
  so no group is on both sides. Otherwise ``StratifiedShuffleSplit`` for classification (``ShuffleSplit`` if
  a class is too small to stratify) and ``ShuffleSplit`` for regression, with the same arguments. Held-out
  metrics (R², MAE, RMSE / accuracy, balanced accuracy, ROC AUC, log loss) are computed with
  ``sklearn.metrics`` on the test split next to a dummy baseline (training mean / class prior), and k-fold
  cross-validation runs on the training split only (``GroupKFold`` with groups, else ``StratifiedKFold`` /
  ``KFold`` with ``shuffle=True, random_state=seed``). The stored model is the one fitted on the training
  split — the one the metrics describe; both sides of the split keep the rows in their original order.
  A feature column equal to the target, or an exact linear function of it (|r| = 1), is label leakage and
  refused with 422.
* ``predict`` — by name and version or alias (latest when neither); the features are checked against the
  stored feature names / count (422). The artefact's SHA-256 is verified before it is loaded (409 if not).
* ``list``, ``get``, ``promote`` (alias → version), ``delete`` (a version or the whole model; 409 when an
  alias points at it unless ``force``).

Artefacts and the index live in ``data/models`` (see :mod:`services.models.registry`), so a restarted
service predicts exactly as before, and concurrent trainings of one model get distinct versions.
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Any, Literal

import numpy as np
import sklearn
from pydantic import Field, RootModel
from sklearn.base import BaseEstimator, clone
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    KFold,
    ShuffleSplit,
    StratifiedKFold,
    StratifiedShuffleSplit,
)

from mlmesh.errors import InvalidInput
from services.framework import (
    ComponentInput,
    ComponentOutput,
    FileRef,
    Numbers,
    RunContext,
    Seed,
    component,
)
from services.models.registry import (
    MAX_FEATURES,
    MAX_INLINE_ROWS,
    AliasName,
    EstimatorParams,
    Matrix,
    ModelName,
    ModelRecord,
    ModelRegistry,
    build_estimator,
    effective_params,
    infer_task,
    load_matrix,
    load_vector,
)

__all__ = [
    "CrossValidation",
    "DeleteModelOp",
    "GetModelOp",
    "HeldOutMetrics",
    "ListModelsOp",
    "MLModelServiceInput",
    "MLModelServiceOutput",
    "ModelSummary",
    "ModelVersionInfo",
    "PredictOp",
    "Prediction",
    "PromoteModelOp",
    "SplitSummary",
    "TrainOp",
    "ml_model_service",
]

MIN_SAMPLES = 10
MAX_CLASSES = 100
ServiceModelType = Literal["ridge", "logistic", "random_forest", "gradient_boosting"]
FeatureName = Annotated[str, Field(min_length=1, max_length=200)]
GroupId = Annotated[str, Field(max_length=200)] | int
Version = Annotated[int, Field(ge=1, le=2**31 - 1, description="version number")]


# --------------------------------------------------------------------------- inputs


class TrainOp(ComponentInput):
    """Train and store the next version of a model."""

    operation: Literal["train"]
    name: ModelName
    features: Matrix = Field(description="rows × features, inline or {path, columns} under data/")
    target: Numbers = Field(description="one target per row: rule effectiveness (regression) or a class label")
    feature_names: list[FeatureName] | None = Field(
        None, min_length=1, max_length=MAX_FEATURES, description="default: the CSV header, else x0, x1, …"
    )
    target_name: FeatureName = "effectiveness"
    task: Literal["auto", "regression", "classification"] = Field(
        "auto",
        description="auto: regression for ridge, classification for logistic; otherwise classification for an "
        "integer target with 2 to 10 distinct values",
    )
    model_type: ServiceModelType = "ridge"
    params: EstimatorParams = Field(default_factory=EstimatorParams)
    groups: Annotated[list[GroupId], Field(max_length=MAX_INLINE_ROWS)] | FileRef | None = Field(
        None, description="group id per row (e.g. session); no group spans train and test"
    )
    test_fraction: float = Field(0.2, ge=0.05, le=0.5, description="share of rows (or of groups) held out")
    cv_folds: int = Field(5, ge=0, le=10, description="k-fold CV on the training split; 0 = none")
    promote_to: AliasName | None = Field(None, description="point this alias at the new version")
    description: str | None = Field(None, max_length=500)
    seed: Seed = 0


class PredictOp(ComponentInput):
    """Predict with a stored model."""

    operation: Literal["predict"]
    name: ModelName
    version: Version | None = Field(None, description="default: the alias, else the latest version")
    alias: AliasName | None = None
    features: Matrix
    feature_names: list[FeatureName] | None = Field(
        None, min_length=1, max_length=MAX_FEATURES, description="the columns' names, in any order (checked)"
    )
    return_probabilities: bool = Field(False, description="classification: also return class probabilities")


class ListModelsOp(ComponentInput):
    operation: Literal["list"]
    name: ModelName | None = Field(None, description="only this model")
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class GetModelOp(ComponentInput):
    operation: Literal["get"]
    name: ModelName
    version: Version | None = None
    alias: AliasName | None = None


class PromoteModelOp(ComponentInput):
    operation: Literal["promote"]
    name: ModelName
    alias: AliasName
    version: Version


class DeleteModelOp(ComponentInput):
    operation: Literal["delete"]
    name: ModelName
    version: Version | None = Field(None, description="default: every version of the model")
    force: bool = Field(False, description="also remove aliases that point at the deleted version(s)")


class MLModelServiceInput(
    RootModel[
        Annotated[
            TrainOp | PredictOp | ListModelsOp | GetModelOp | PromoteModelOp | DeleteModelOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One model-registry operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class HeldOutMetrics(ComponentOutput):
    r2: float | None = Field(None, description="regression: R² (None if the test target is constant)")
    mae: float | None = None
    rmse: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    roc_auc: float | None = Field(None, description="binary, or one-vs-rest macro; None if a class is absent")
    log_loss: float | None = None
    notes: list[str] = Field(default_factory=list, description="why a metric is None")


class CrossValidation(ComponentOutput):
    scheme: str | None = Field(description="group_kfold, stratified_kfold or kfold; None when skipped")
    folds: int
    scoring: str
    scores: list[float | None]
    mean: float | None
    std: float | None
    reason: str | None = Field(None, description="why CV was skipped or folds were reduced")


class SplitSummary(ComponentOutput):
    scheme: str
    test_fraction: float
    n_train: int
    n_test: int
    n_train_groups: int | None
    n_test_groups: int | None
    shared_groups: int | None = Field(description="groups on both sides (0 by construction)")


class ModelVersionInfo(ComponentOutput):
    name: str
    version: int
    aliases: list[str]
    task: str
    model_type: str
    params: dict[str, Any]
    feature_names: list[str]
    target_name: str
    classes: list[float] | None
    n_samples: int
    split: SplitSummary
    metrics: HeldOutMetrics
    baseline_metrics: HeldOutMetrics = Field(description="a dummy model (training mean / class prior)")
    cv: CrossValidation
    seed: int
    description: str | None
    sha256: str
    size_bytes: int
    artefact: str = Field(description="path under data/")
    sklearn_version: str
    training_seconds: float
    created_at: float


class ModelSummary(ComponentOutput):
    name: str
    versions: list[int]
    latest_version: int
    aliases: dict[str, int]
    task: str
    model_type: str = Field(description="of the latest version")
    updated_at: float


class Prediction(ComponentOutput):
    name: str
    version: int
    task: str
    n_rows: int
    predictions: list[float]
    classes: list[float] | None = None
    probabilities: list[list[float]] | None = Field(None, description="rows × classes, in `classes` order")


class MLModelServiceOutput(ComponentOutput):
    operation: str
    model: ModelVersionInfo | None = None
    prediction: Prediction | None = None
    models: list[ModelSummary] | None = None
    total_models: int | None = None
    deleted_versions: list[int] | None = None
    removed_aliases: list[str] | None = None


# --------------------------------------------------------------------------- helpers


def _feature_names(given: list[str] | None, from_file: list[str] | None, width: int) -> list[str]:
    names = given if given is not None else from_file
    if names is None:
        return [f"x{i}" for i in range(width)]
    if len(names) != width:
        raise InvalidInput("feature_names", f"has {len(names)} names for {width} feature columns")
    if len(set(names)) != len(names):
        raise InvalidInput("feature_names", "names must be unique")
    return list(names)


def _check_leakage(x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    """Refuse a feature that is the target (or an exact linear function of it): label leakage."""
    same = np.flatnonzero((x == y[:, None]).all(axis=0))
    if same.size:
        raise InvalidInput(
            "features", f"column {names[same[0]]!r} is identical to the target (label leakage); remove it"
        )
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    x_norm = np.sqrt((xc * xc).sum(axis=0))
    y_norm = math.sqrt(float(yc @ yc))
    if y_norm == 0:
        return
    usable = x_norm > 0
    corr = np.zeros(x.shape[1])
    corr[usable] = (xc[:, usable].T @ yc) / (x_norm[usable] * y_norm)
    linear = np.flatnonzero(np.abs(corr) >= 1 - 1e-12)
    if linear.size:
        raise InvalidInput(
            "features",
            f"column {names[linear[0]]!r} is an exact linear function of the target (|r| = 1, label leakage); "
            "remove it",
        )


def _groups(value: Any, n: int, ctx: RunContext) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, FileRef):
        raw = load_vector(value, ctx.data_dir, field="groups")
        groups = raw.astype(str)
    else:
        # Ids arrive as JSON strings or integers; compare them as text.
        groups = np.asarray([str(g) for g in value])
    if groups.size != n:
        raise InvalidInput("groups", f"has {groups.size} ids for {n} rows")
    if np.unique(groups).size < 2:
        raise InvalidInput("groups", "needs at least two distinct groups to hold one out")
    return groups


def _split(
    task: str, y: np.ndarray, groups: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """(train indices, test indices, scheme, notes)."""
    dummy = np.zeros((y.size, 1))
    notes: list[str] = []
    if groups is not None:
        splitter: Any = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        scheme = "group_shuffle"
    elif task == "classification":
        n_test = math.ceil(test_fraction * y.size)
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and min(n_test, y.size - n_test) >= counts.size:
            splitter, scheme = (
                StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed),
                "stratified_shuffle",
            )
        else:
            splitter, scheme = ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed), "shuffle"
            notes.append("a class has fewer than 2 rows (or the split is too small); split without stratification")
    else:
        splitter, scheme = ShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed), "shuffle"
    train, test = next(splitter.split(dummy, y, groups))
    return np.sort(train), np.sort(test), scheme, notes


def _regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> HeldOutMetrics:
    notes = []
    r2 = None
    if y_true.size < 2:
        notes.append("R² needs at least two held-out rows")
    elif np.ptp(y_true) == 0:
        notes.append("R² is undefined: the held-out target is constant")
    else:
        r2 = float(r2_score(y_true, y_pred))
    return HeldOutMetrics(
        r2=r2,
        mae=float(mean_absolute_error(y_true, y_pred)),
        rmse=float(root_mean_squared_error(y_true, y_pred)),
        notes=notes,
    )


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, present: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition, without its warning about
    predicted classes absent from ``y_true``)."""
    index = np.searchsorted(present, y_true)
    hits = np.bincount(index, weights=(y_pred == y_true).astype(np.float64), minlength=present.size)
    return float((hits / np.bincount(index, minlength=present.size)).mean())


def _classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> HeldOutMetrics:
    notes = []
    present = np.unique(y_true)
    roc = None
    if present.size < classes.size:
        notes.append(f"ROC AUC is undefined: {classes.size - present.size} class(es) absent from the held-out rows")
    elif classes.size == 2:
        roc = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        roc = float(roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))
    return HeldOutMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=_balanced_accuracy(y_true, y_pred, present),
        roc_auc=roc,
        log_loss=float(log_loss(y_true, proba, labels=classes)),
        notes=notes,
    )


def _evaluate(
    model: BaseEstimator, task: str, x: np.ndarray, y: np.ndarray, classes: np.ndarray | None
) -> HeldOutMetrics:
    pred = model.predict(x)
    if task == "regression":
        return _regression_metrics(y, pred)
    assert classes is not None
    # Columns for every class of the target: a class missing from the training split gets probability 0.
    proba = np.zeros((x.shape[0], classes.size))
    proba[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(x)
    return _classification_metrics(y, pred, proba, classes)


def _cross_validate(
    estimator: BaseEstimator,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    folds: int,
    seed: int,
) -> CrossValidation:
    scoring = "r2" if task == "regression" else "accuracy"
    if folds == 0:
        return CrossValidation(
            scheme=None, folds=0, scoring=scoring, scores=[], mean=None, std=None, reason="cv_folds = 0"
        )
    reasons = []
    if groups is not None:
        limit, scheme, what = np.unique(groups).size, "group_kfold", "training groups"
    elif task == "classification":
        limit, scheme, what = (
            int(np.unique(y, return_counts=True)[1].min()),
            "stratified_kfold",
            "rows of the rarest class",
        )
    else:
        limit, scheme, what = y.size // 2, "kfold", "half the training rows"
    k = min(folds, limit)
    if k < 2:
        return CrossValidation(
            scheme=None,
            folds=0,
            scoring=scoring,
            scores=[],
            mean=None,
            std=None,
            reason=f"too few {what} ({limit}) for 2 folds",
        )
    if k < folds:
        reasons.append(f"folds reduced from {folds} to {k}: only {limit} {what}")
    if scheme == "group_kfold":
        splitter: Any = GroupKFold(n_splits=k)
    elif scheme == "stratified_kfold":
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    scores: list[float | None] = []
    for train, test in splitter.split(x, y, groups):
        if task == "classification" and np.unique(y[train]).size < 2:
            scores.append(None)
            reasons.append("a fold's training part has one class; its score is None")
            continue
        model = clone(estimator).fit(x[train], y[train])
        pred = model.predict(x[test])
        if task == "classification":
            scores.append(float(accuracy_score(y[test], pred)))
        elif test.size >= 2 and np.ptp(y[test]) > 0:
            scores.append(float(r2_score(y[test], pred)))
        else:
            scores.append(None)
            reasons.append("a fold's held-out target is constant or a single row; its R² is None")
    valid = np.array([s for s in scores if s is not None])
    return CrossValidation(
        scheme=scheme,
        folds=k,
        scoring=scoring,
        scores=scores,
        mean=float(valid.mean()) if valid.size else None,
        std=float(valid.std(ddof=1)) if valid.size > 1 else None,
        reason="; ".join(dict.fromkeys(reasons)) or None,
    )


def _info(record: ModelRecord) -> ModelVersionInfo:
    m = record.meta
    return ModelVersionInfo(
        name=record.name,
        version=record.version,
        aliases=list(record.aliases),
        task=record.task,
        model_type=record.model_type,
        params=m["params"],
        feature_names=m["feature_names"],
        target_name=m["target_name"],
        classes=m["classes"],
        n_samples=m["n_samples"],
        split=SplitSummary.model_validate(m["split"]),
        metrics=HeldOutMetrics.model_validate(m["metrics"]),
        baseline_metrics=HeldOutMetrics.model_validate(m["baseline_metrics"]),
        cv=CrossValidation.model_validate(m["cv"]),
        seed=m["seed"],
        description=m["description"],
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        artefact=record.artefact,
        sklearn_version=m["sklearn_version"],
        training_seconds=m["training_seconds"],
        created_at=record.created_at,
    )


# --------------------------------------------------------------------------- operations


def _train(op: TrainOp, ctx: RunContext) -> MLModelServiceOutput:
    x, file_names = load_matrix(op.features, ctx.data_dir, field="features")
    y = load_vector(op.target, ctx.data_dir, field="target")
    n, width = x.shape
    if y.size != n:
        raise InvalidInput("target", f"has {y.size} values for {n} feature rows")
    if n < MIN_SAMPLES:
        raise InvalidInput("target", f"needs at least {MIN_SAMPLES} rows to train and hold some out; got {n}")
    if op.cv_folds == 1:
        raise InvalidInput("cv_folds", "must be 0 (no cross-validation) or at least 2")
    names = _feature_names(op.feature_names, file_names, width)
    task = infer_task(op.task, op.model_type, y)
    estimator = build_estimator(op.model_type, task, op.params, op.seed)
    _check_leakage(x, y, names)
    groups = _groups(op.groups, n, ctx)

    classes = None
    if task == "classification":
        classes = np.unique(y)
        if classes.size < 2:
            raise InvalidInput("target", "classification needs at least two classes")
        if classes.size > MAX_CLASSES:
            raise InvalidInput("target", f"at most {MAX_CLASSES} classes; got {classes.size} (is this regression?)")

    started = time.perf_counter()
    train, test, scheme, notes = _split(task, y, groups, op.test_fraction, op.seed)
    if task == "classification" and np.unique(y[train]).size < 2:
        raise InvalidInput("groups" if groups is not None else "target", "the training split holds only one class")
    model = clone(estimator).fit(x[train], y[train])
    metrics = _evaluate(model, task, x[test], y[test], classes)
    if classes is not None and model.classes_.size < classes.size:
        unseen = np.setdiff1d(classes, model.classes_).tolist()
        notes.append(f"class(es) {unseen} absent from the training split: the model never predicts them")
    metrics.notes[:0] = notes
    dummy = DummyRegressor(strategy="mean") if task == "regression" else DummyClassifier(strategy="prior")
    baseline = _evaluate(dummy.fit(x[train], y[train]), task, x[test], y[test], classes)
    cv = _cross_validate(
        estimator, task, x[train], y[train], None if groups is None else groups[train], op.cv_folds, op.seed
    )
    elapsed = time.perf_counter() - started

    split = SplitSummary(
        scheme=scheme,
        test_fraction=op.test_fraction,
        n_train=int(train.size),
        n_test=int(test.size),
        n_train_groups=None if groups is None else int(np.unique(groups[train]).size),
        n_test_groups=None if groups is None else int(np.unique(groups[test]).size),
        shared_groups=None if groups is None else int(np.intersect1d(groups[train], groups[test]).size),
    )
    x_train = x[train]
    meta = {
        "params": effective_params(op.model_type, op.params),
        "feature_names": names,
        "target_name": op.target_name,
        # The classes the model can predict, in its probability columns' order.
        "classes": None if classes is None else model.classes_.tolist(),
        "n_samples": n,
        "split": split.model_dump(),
        "metrics": metrics.model_dump(),
        "baseline_metrics": baseline.model_dump(),
        "cv": cv.model_dump(),
        "seed": op.seed,
        "description": op.description,
        "sklearn_version": sklearn.__version__,
        "training_seconds": round(elapsed, 6),
        # Training-split feature statistics: what robustness checks perturb relative to.
        "feature_means": x_train.mean(axis=0).tolist(),
        "feature_stds": x_train.std(axis=0).tolist(),
    }
    registry = ModelRegistry.for_context(ctx)
    record = registry.save(op.name, model, model_type=op.model_type, task=task, meta=meta)
    if op.promote_to is not None:
        record = registry.promote(op.name, op.promote_to, record.version)
    ctx.write_output("split.json", json.dumps({"train": train.tolist(), "test": test.tolist()}))
    return MLModelServiceOutput(operation="train", model=_info(record))


def _ordered_features(op: PredictOp, record: ModelRecord, ctx: RunContext) -> np.ndarray:
    x, file_names = load_matrix(op.features, ctx.data_dir, field="features")
    stored = record.feature_names
    names = op.feature_names if op.feature_names is not None else file_names
    if names is not None:
        field = "feature_names" if op.feature_names is not None else "features"
        if len(names) != x.shape[1]:
            raise InvalidInput(field, f"has {len(names)} names for {x.shape[1]} feature columns")
        if len(set(names)) != len(names) or set(names) != set(stored):
            missing = sorted(set(stored) - set(names))
            extra = sorted(set(names) - set(stored))
            raise InvalidInput(
                field,
                f"columns do not match the model's features {stored}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
                + ("; duplicated names" if len(set(names)) != len(names) else ""),
            )
        return x[:, [names.index(s) for s in stored]]
    if x.shape[1] != len(stored):
        raise InvalidInput(
            "features",
            f"has {x.shape[1]} columns; model {record.name!r} v{record.version} expects {len(stored)} "
            f"({', '.join(stored)})",
        )
    return x


def _predict(op: PredictOp, ctx: RunContext) -> MLModelServiceOutput:
    registry = ModelRegistry.for_context(ctx)
    record = registry.resolve(op.name, version=op.version, alias=op.alias)
    x = _ordered_features(op, record, ctx)
    model = registry.load(record)
    predictions = np.asarray(model.predict(x), dtype=np.float64)
    classes = probabilities = None
    if record.task == "classification":
        classes = record.meta["classes"]
        if op.return_probabilities:
            probabilities = model.predict_proba(x).tolist()
    elif op.return_probabilities:
        raise InvalidInput("return_probabilities", f"model {record.name!r} is a regression model")
    return MLModelServiceOutput(
        operation="predict",
        prediction=Prediction(
            name=record.name,
            version=record.version,
            task=record.task,
            n_rows=int(x.shape[0]),
            predictions=predictions.tolist(),
            classes=classes,
            probabilities=probabilities,
        ),
    )


def _list(op: ListModelsOp, ctx: RunContext) -> MLModelServiceOutput:
    records = ModelRegistry.for_context(ctx).versions(op.name)
    by_name: dict[str, list[ModelRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    summaries = []
    for name in sorted(by_name)[op.offset : op.offset + op.limit]:
        versions = by_name[name]
        latest = versions[-1]
        summaries.append(
            ModelSummary(
                name=name,
                versions=[r.version for r in versions],
                latest_version=latest.version,
                aliases={alias: r.version for r in versions for alias in r.aliases},
                task=latest.task,
                model_type=latest.model_type,
                updated_at=max(r.created_at for r in versions),
            )
        )
    return MLModelServiceOutput(operation="list", models=summaries, total_models=len(by_name))


def _get(op: GetModelOp, ctx: RunContext) -> MLModelServiceOutput:
    record = ModelRegistry.for_context(ctx).resolve(op.name, version=op.version, alias=op.alias)
    return MLModelServiceOutput(operation="get", model=_info(record))


def _promote(op: PromoteModelOp, ctx: RunContext) -> MLModelServiceOutput:
    record = ModelRegistry.for_context(ctx).promote(op.name, op.alias, op.version)
    return MLModelServiceOutput(operation="promote", model=_info(record))


def _delete(op: DeleteModelOp, ctx: RunContext) -> MLModelServiceOutput:
    versions, aliases = ModelRegistry.for_context(ctx).delete(op.name, op.version, force=op.force)
    return MLModelServiceOutput(operation="delete", deleted_versions=versions, removed_aliases=aliases)


_OPERATIONS: dict[type, Any] = {
    TrainOp: _train,
    PredictOp: _predict,
    ListModelsOp: _list,
    GetModelOp: _get,
    PromoteModelOp: _promote,
    DeleteModelOp: _delete,
}

_TRAIN_EXAMPLE = {
    "operation": "train",
    "name": "rule-effectiveness",
    "model_type": "ridge",
    "features": [
        [0.2, 1.0],
        [0.4, 0.0],
        [0.5, 1.0],
        [0.7, 0.0],
        [0.9, 1.0],
        [0.1, 0.0],
        [0.3, 1.0],
        [0.6, 0.0],
        [0.8, 1.0],
        [1.0, 0.0],
        [0.35, 1.0],
        [0.65, 0.0],
    ],
    "feature_names": ["clarity", "has_examples"],
    "target": [0.31, 0.38, 0.62, 0.55, 0.93, 0.12, 0.45, 0.50, 0.85, 0.80, 0.52, 0.58],
    "groups": ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4", "s5", "s5", "s6", "s6"],
    "promote_to": "production",
    "seed": 0,
}


@component(
    "MLModelService",
    tier="tier2",
    capabilities=["model_registry", "model_training", "model_serving"],
    example={"operation": "list"},
    examples=[
        _TRAIN_EXAMPLE,
        {"operation": "predict", "name": "rule-effectiveness", "alias": "production", "features": [[0.5, 1.0]]},
        {"operation": "promote", "name": "rule-effectiveness", "alias": "production", "version": 1},
        {"operation": "delete", "name": "rule-effectiveness", "version": 1, "force": True},
    ],
    deterministic=False,
)
def ml_model_service(request: MLModelServiceInput, ctx: RunContext) -> MLModelServiceOutput:
    """Model registry: train with held-out metrics, version, predict, list, promote and delete models.

    Artefacts are written by the service only (skops, SHA-256 in a SQLite index under data/models) and
    verified before every load; a caller names a model, never a file to load. See the module docstring
    for the split, metrics and leakage rules.
    """
    op = request.root
    return _OPERATIONS[type(op)](op, ctx)
