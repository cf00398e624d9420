"""Budgeted, cross-validated hyperparameter search for one model family on one dataset.

The catalogue (COMPONENTS.md) names this component ``automl_orchestrator`` with the class name
``AutoMLOrchestrator``, whose snake_case would be ``auto_ml_orchestrator``: the declaration names it explicitly.

Data: scikit-learn's bundled datasets by name (iris, wine, breast_cancer, digits: classification; diabetes:
regression — read from files shipped with scikit-learn, no download), an inline feature matrix and target,
or a numeric CSV under ``data/``. A seeded ``train_test_split`` (stratified for classification) holds out
``test_size`` of the rows; every search decision uses only the training part, by k-fold cross-validation
(``StratifiedKFold`` / ``KFold``, shuffled, seeded).

Families and search spaces (names as reported; the model is the last step of a pipeline):

* ``random_forest`` — n_estimators ∈ [20, 200], max_depth ∈ [2, 20], min_samples_leaf ∈ [1, 10]
  (integers), max_features ∈ [0.1, 1.0].
* ``gradient_boosting`` — n_estimators ∈ [20, 300], learning_rate ∈ [0.005, 0.5] (log), max_depth ∈ [1, 6],
  subsample ∈ [0.5, 1.0], min_samples_leaf ∈ [1, 20].
* ``hist_gradient_boosting`` — max_iter ∈ [20, 300], learning_rate ∈ [0.005, 0.5] (log), max_leaf_nodes ∈
  [4, 64], min_samples_leaf ∈ [2, 50], l2_regularization ∈ [1e-6, 10] (log).
* ``linear`` — logistic regression (classification; C ∈ [1e-3, 1e3] log, max_iter fixed at 1000) or ridge
  (regression; alpha ∈ [1e-3, 1e3] log); scale ∈ {true, false}.
* ``svm`` — SVC / SVR with an RBF kernel: C ∈ [1e-2, 1e3] (log), gamma ∈ [1e-4, 10] (log); scale ∈ {true,
  false}.

``scale`` standardises the features before the model (``StandardScaler(with_std=scale)``; centring alone
changes none of these models). The baseline is the family's scikit-learn estimator with its default
parameters on the raw features (e.g. ``SVC()``), fitted on the same training rows and scored on the same
held-out rows as the refitted best configuration.

Strategies: ``random`` (Optuna ``RandomSampler``) and ``tpe`` (Optuna ``TPESampler``), both seeded and
sequential, stop at ``max_trials`` or once ``max_time_s`` has passed since the run began (checked between
trials by Optuna's ``timeout``; at least one trial runs, and the final refits come on top).
``successive_halving`` is scikit-learn's ``HalvingRandomSearchCV`` (factor 3, resource = training rows,
``max_trials`` candidates); it cannot stop mid-search, so the time budget is applied beforehand: the candidate
count is lowered until an estimate of the cost (the baseline's measured CV time, scaled by the rows each
halving round uses) fits the time left. With a trial budget only, the same seed gives the same result; when
the time budget binds, the number of trials depends on the machine.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import optuna
from pydantic import Field
from scipy import stats
from sklearn import datasets
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (makes HalvingRandomSearchCV importable)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score, get_scorer, make_scorer
from sklearn.model_selection import (
    HalvingRandomSearchCV,
    KFold,
    StratifiedKFold,
    cross_val_score,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR
from threadpoolctl import threadpool_limits

from mlmesh.errors import BadRequest, InvalidInput
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component

__all__ = [
    "SEARCH_SPACES",
    "AutoMLOrchestratorInput",
    "AutoMLOrchestratorOutput",
    "automl_orchestrator",
    "build_estimator",
    "default_estimator",
]

MAX_INLINE_ROWS = 5000
MAX_COLUMNS = 200
MAX_CSV_ROWS = 50_000
MAX_CSV_BYTES = 20 * 2**20
MIN_ROWS = 20
AUTO_CLASSES = 20  # "auto": an integer-valued target with at most this many values is a classification target
HALVING_FACTOR = 3

Family = Literal["random_forest", "gradient_boosting", "hist_gradient_boosting", "linear", "svm"]
Task = Literal["classification", "regression"]
ParamValue = float | int | bool


# ------------------------------------------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: its reported name, its pipeline key and its range."""

    name: str
    key: str
    kind: Literal["int", "float", "bool"]
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def optuna(self, trial: optuna.Trial) -> ParamValue:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return bool(trial.suggest_categorical(self.name, [True, False]))

    def scipy(self) -> Any:
        if self.kind == "int":
            return stats.randint(int(self.low), int(self.high) + 1)
        if self.kind == "float":
            return stats.loguniform(self.low, self.high) if self.log else stats.uniform(self.low, self.high - self.low)
        return [True, False]


_SCALE = Dim("scale", "scaler__with_std", "bool")
SEARCH_SPACES: dict[tuple[str, str], tuple[Dim, ...]] = {}
for _task in ("classification", "regression"):
    SEARCH_SPACES[("random_forest", _task)] = (
        Dim("n_estimators", "model__n_estimators", "int", 20, 200),
        Dim("max_depth", "model__max_depth", "int", 2, 20),
        Dim("min_samples_leaf", "model__min_samples_leaf", "int", 1, 10),
        Dim("max_features", "model__max_features", "float", 0.1, 1.0),
    )
    SEARCH_SPACES[("gradient_boosting", _task)] = (
        Dim("n_estimators", "model__n_estimators", "int", 20, 300),
        Dim("learning_rate", "model__learning_rate", "float", 0.005, 0.5, log=True),
        Dim("max_depth", "model__max_depth", "int", 1, 6),
        Dim("subsample", "model__subsample", "float", 0.5, 1.0),
        Dim("min_samples_leaf", "model__min_samples_leaf", "int", 1, 20),
    )
    SEARCH_SPACES[("hist_gradient_boosting", _task)] = (
        Dim("max_iter", "model__max_iter", "int", 20, 300),
        Dim("learning_rate", "model__learning_rate", "float", 0.005, 0.5, log=True),
        Dim("max_leaf_nodes", "model__max_leaf_nodes", "int", 4, 64),
        Dim("min_samples_leaf", "model__min_samples_leaf", "int", 2, 50),
        Dim("l2_regularization", "model__l2_regularization", "float", 1e-6, 10.0, log=True),
    )
    SEARCH_SPACES[("svm", _task)] = (
        _SCALE,
        Dim("C", "model__C", "float", 1e-2, 1e3, log=True),
        Dim("gamma", "model__gamma", "float", 1e-4, 10.0, log=True),
    )
SEARCH_SPACES[("linear", "classification")] = (_SCALE, Dim("C", "model__C", "float", 1e-3, 1e3, log=True))
SEARCH_SPACES[("linear", "regression")] = (_SCALE, Dim("alpha", "model__alpha", "float", 1e-3, 1e3, log=True))

_MODELS: dict[tuple[str, str], Callable[..., BaseEstimator]] = {
    ("random_forest", "classification"): RandomForestClassifier,
    ("random_forest", "regression"): RandomForestRegressor,
    ("gradient_boosting", "classification"): GradientBoostingClassifier,
    ("gradient_boosting", "regression"): GradientBoostingRegressor,
    ("hist_gradient_boosting", "classification"): HistGradientBoostingClassifier,
    ("hist_gradient_boosting", "regression"): HistGradientBoostingRegressor,
    ("linear", "classification"): LogisticRegression,
    ("linear", "regression"): Ridge,
    ("svm", "classification"): SVC,
    ("svm", "regression"): SVR,
}
_STOCHASTIC = {"random_forest", "gradient_boosting", "hist_gradient_boosting"}
# Fixed in the search (not in the default baseline): enough iterations for logistic regression to converge.
_FIXED: dict[tuple[str, str], dict[str, Any]] = {("linear", "classification"): {"max_iter": 1000}}


def _seeded(family: str, random_state: int) -> dict[str, Any]:
    if family not in _STOCHASTIC:
        return {}
    return {"random_state": random_state, **({"n_jobs": 1} if family == "random_forest" else {})}


def default_estimator(family: str, task: str, random_state: int) -> BaseEstimator:
    """The baseline: the family's scikit-learn estimator with default parameters (seeded where it is random)."""
    return _MODELS[(family, task)](**_seeded(family, random_state))


def build_estimator(family: str, task: str, params: dict[str, ParamValue], random_state: int) -> Pipeline:
    """The searched pipeline for reported ``params`` (``scale`` → ``StandardScaler(with_std=scale)``)."""
    space = SEARCH_SPACES[(family, task)]
    model_params = {d.name: params[d.name] for d in space if d.key.startswith("model__")}
    model = _MODELS[(family, task)](**model_params, **_FIXED.get((family, task), {}), **_seeded(family, random_state))
    scaler: Any = StandardScaler(with_std=bool(params["scale"])) if _SCALE in space else "passthrough"
    return Pipeline([("scaler", scaler), ("model", model)])


def _template(family: str, task: str, random_state: int) -> Pipeline:
    """The pipeline HalvingRandomSearchCV sets keys on (every searched key is overwritten)."""
    start = {d.name: _native(d.low, d) for d in SEARCH_SPACES[(family, task)]}
    return build_estimator(family, task, start, random_state)


# ------------------------------------------------------------------------------------------------- inputs


class BundledDataset(ComponentInput):
    source: Literal["bundled"]
    name: Literal["iris", "wine", "breast_cancer", "diabetes", "digits"] = Field(
        description="a dataset shipped with scikit-learn (diabetes is regression, the others classification)"
    )


class InlineDataset(ComponentInput):
    source: Literal["inline"]
    features: list[Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_COLUMNS)]] = Field(
        min_length=MIN_ROWS, max_length=MAX_INLINE_ROWS, description="rows of numeric features"
    )
    target: list[FiniteFloat] = Field(min_length=MIN_ROWS, max_length=MAX_INLINE_ROWS, description="one per row")


class CsvDataset(ComponentInput):
    source: Literal["csv"]
    path: str = Field(min_length=1, max_length=1024, description="CSV with a header row, under data/")
    target: str = Field(min_length=1, max_length=200, description="name of the target column")
    features: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=MAX_COLUMNS, description="feature columns (default: all but the target)"
    )


class AutoMLOrchestratorInput(ComponentInput):
    """What to tune, on which data, with which search and budget."""

    dataset: Annotated[BundledDataset | InlineDataset | CsvDataset, Field(discriminator="source")]
    estimator: Family = Field(description="model family (see the search spaces in the description)")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description=f"auto: classification for an integer target with ≤ {AUTO_CLASSES} values"
    )
    strategy: Literal["random", "successive_halving", "tpe"] = "tpe"
    scoring: Literal[
        "default",
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "r2",
        "neg_mean_squared_error",
        "neg_mean_absolute_error",
    ] = Field("default", description="default: accuracy (classification) or r2 (regression); higher is better")
    max_trials: int = Field(20, ge=2, le=200, description="trials (successive halving: candidates)")
    max_time_s: float | None = Field(
        30.0, gt=0, le=600, description="wall-time budget in seconds; null: trials only (reproducible)"
    )
    cv_folds: int = Field(5, ge=2, le=10)
    test_size: float = Field(0.25, ge=0.1, le=0.5, description="held-out fraction")
    report_timings: bool = Field(
        True, description="report per-trial durations and elapsed time (false: the result is a function of the input)"
    )
    seed: Seed = 0


# ------------------------------------------------------------------------------------------------- outputs


class DatasetSummary(ComponentOutput):
    source: str
    name: str | None
    n_samples: int
    n_features: int
    n_classes: int | None
    n_train: int
    n_test: int


class SpaceEntry(ComponentOutput):
    name: str
    kind: Literal["int", "float", "bool"]
    low: float | None
    high: float | None
    log: bool


class TrialRecord(ComponentOutput):
    number: int
    params: dict[str, ParamValue]
    cv_mean: float | None = Field(description="mean CV score (None for a failed trial)")
    cv_std: float | None
    duration_s: float | None = Field(description="None unless report_timings")
    state: Literal["complete", "pruned", "fail"] = Field(description="pruned: eliminated by successive halving")
    n_resources: int | None = Field(description="successive halving: training rows in its last round")
    rounds: int | None = Field(description="successive halving: rounds the candidate took part in")


class BestConfiguration(ComponentOutput):
    trial: int
    params: dict[str, ParamValue]
    fixed_params: dict[str, ParamValue]
    cv_mean: float
    cv_std: float


class BaselineResult(ComponentOutput):
    estimator: str = Field(description="the default-parameter estimator")
    cv_mean: float
    cv_std: float


class HeldOut(ComponentOutput):
    best: float = Field(description="score of the refitted best configuration on the held-out rows")
    baseline: float = Field(description="score of the default-parameter estimator on the same rows")
    improvement: float = Field(description="best − baseline (scores are higher-is-better)")


class RandomStates(ComponentOutput):
    split: int
    cv: int
    search: int
    estimator: int


class AutoMLOrchestratorOutput(ComponentOutput):
    task: Task
    estimator: Family
    strategy: str
    scoring: str
    dataset: DatasetSummary
    search_space: list[SpaceEntry]
    n_trials: int
    stopped_by: Literal["max_trials", "max_time"]
    elapsed_s: float | None
    best: BestConfiguration
    baseline: BaselineResult
    held_out: HeldOut
    trials: list[TrialRecord]
    random_states: RandomStates
    notes: list[str]


# ------------------------------------------------------------------------------------------------- data


def _load(dataset: BundledDataset | InlineDataset | CsvDataset, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(dataset, BundledDataset):
        loader = getattr(datasets, f"load_{dataset.name}")
        data = loader()
        return np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=float)
    if isinstance(dataset, InlineDataset):
        width = len(dataset.features[0])
        for i, row in enumerate(dataset.features):
            if len(row) != width:
                raise InvalidInput(f"dataset.features[{i}]", f"has {len(row)} values; row 0 has {width}")
        if len(dataset.target) != len(dataset.features):
            raise InvalidInput(
                "dataset.target", f"has {len(dataset.target)} values for {len(dataset.features)} feature rows"
            )
        return np.array(dataset.features, dtype=float), np.array(dataset.target, dtype=float)
    return _read_csv(dataset, ctx)


def _read_csv(dataset: CsvDataset, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    path = ctx.data_path(dataset.path, field="dataset.path")
    if not path.is_file():
        raise BadRequest("dataset.path: no such file in the data directory")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise InvalidInput("dataset.path", f"file is larger than {MAX_CSV_BYTES // 2**20} MB")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"dataset.path: could not read {path.name}: {type(exc).__name__}") from exc
    if len(lines) < MIN_ROWS + 1:
        raise InvalidInput("dataset.path", f"needs a header row and at least {MIN_ROWS} data rows")
    if len(lines) > MAX_CSV_ROWS + 1:
        raise InvalidInput("dataset.path", f"more than {MAX_CSV_ROWS} data rows")
    header = [c.strip() for c in lines[0].split(",")]
    if dataset.target not in header:
        raise InvalidInput("dataset.target", f"no column named {dataset.target!r} in {path.name}")
    names = dataset.features or [c for c in header if c != dataset.target]
    missing = [c for c in names if c not in header]
    if missing:
        raise InvalidInput("dataset.features", f"no column(s) {missing} in {path.name}")
    if not names or len(names) > MAX_COLUMNS or dataset.target in names:
        raise InvalidInput("dataset.features", f"need 1–{MAX_COLUMNS} feature columns other than the target")
    columns = [header.index(c) for c in [*names, dataset.target]]
    try:
        table = np.loadtxt(lines[1:], delimiter=",", usecols=columns, dtype=float, ndmin=2)
    except ValueError as exc:
        raise InvalidInput("dataset.path", f"{path.name} must hold numbers in the chosen columns: {exc}") from exc
    if not np.isfinite(table).all():
        raise InvalidInput("dataset.path", "the chosen columns must hold finite numbers (no NaN or infinity)")
    return table[:, :-1], table[:, -1]


def _task(request: AutoMLOrchestratorInput, y: np.ndarray) -> Task:
    if request.task != "auto":
        return request.task
    if isinstance(request.dataset, BundledDataset):
        return "regression" if request.dataset.name == "diabetes" else "classification"
    integer = bool(np.all(y == np.round(y)))
    return "classification" if integer and np.unique(y).size <= AUTO_CLASSES else "regression"


def _scorer(name: str, task: Task) -> tuple[str, Any]:
    classification = {"accuracy", "balanced_accuracy", "f1_macro"}
    if name == "default":
        name = "accuracy" if task == "classification" else "r2"
    if (name in classification) != (task == "classification"):
        raise InvalidInput("scoring", f"{name!r} does not apply to a {task} task")
    if name == "f1_macro":
        # A class with no predictions in a fold scores 0 instead of warning.
        return name, make_scorer(f1_score, average="macro", zero_division=0.0)
    return name, get_scorer(name)


# ------------------------------------------------------------------------------------------------- searches


@dataclass
class _Search:
    trials: list[TrialRecord]
    best_index: int
    stopped_by: Literal["max_trials", "max_time"]
    notes: list[str]


def _optuna_search(
    request: AutoMLOrchestratorInput,
    family: str,
    task: Task,
    x: np.ndarray,
    y: np.ndarray,
    cv: Any,
    scorer: Any,
    seeds: RandomStates,
    time_left: float | None,
) -> _Search:
    space = SEARCH_SPACES[(family, task)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: optuna.samplers.BaseSampler
    if request.strategy == "tpe":
        startup = max(3, min(10, request.max_trials // 3))
        sampler = optuna.samplers.TPESampler(seed=seeds.search, n_startup_trials=startup)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seeds.search)
    study = optuna.create_study(direction="maximize", sampler=sampler)  # in memory: nothing on disk

    def objective(trial: optuna.Trial) -> float:
        params = {d.name: d.optuna(trial) for d in space}
        start = time.perf_counter()
        scores = cross_val_score(
            build_estimator(family, task, params, seeds.estimator), x, y, cv=cv, scoring=scorer, error_score="raise"
        )
        trial.set_user_attr("duration_s", time.perf_counter() - start)
        trial.set_user_attr("cv_std", float(np.std(scores)))
        return float(np.mean(scores))  # NaN (an undefined score) marks the trial failed

    study.optimize(objective, n_trials=request.max_trials, timeout=time_left)
    records = []
    for t in study.trials:
        done = t.state == optuna.trial.TrialState.COMPLETE
        records.append(
            TrialRecord(
                number=t.number,
                params={d.name: t.params[d.name] for d in space if d.name in t.params},
                cv_mean=float(t.value) if done and t.value is not None else None,
                cv_std=t.user_attrs.get("cv_std") if done else None,
                duration_s=t.user_attrs.get("duration_s") if request.report_timings else None,
                state="complete" if done else "fail",
                n_resources=None,
                rounds=None,
            )
        )
    complete = [r for r in records if r.cv_mean is not None]
    if not complete:
        raise InvalidInput("dataset", "every trial failed to produce a finite CV score; check the target")
    best = max(complete, key=lambda r: (r.cv_mean, -r.number))
    stopped = "max_trials" if len(records) >= request.max_trials else "max_time"
    return _Search(records, best.number, stopped, [])


def _halving_plan(n_candidates: int, min_resources: int, max_resources: int) -> list[tuple[int, int]]:
    """(candidates, rows) per round, as HalvingRandomSearchCV schedules them with min_resources='smallest'."""
    required = 1 + math.floor(math.log(n_candidates, HALVING_FACTOR))
    possible = 1 + math.floor(math.log(max_resources // min_resources, HALVING_FACTOR))
    plan, remaining = [], n_candidates
    for i in range(min(required, possible)):
        plan.append((remaining, min(min_resources * HALVING_FACTOR**i, max_resources)))
        remaining = math.ceil(remaining / HALVING_FACTOR)
    return plan


def _halving_search(
    request: AutoMLOrchestratorInput,
    family: str,
    task: Task,
    x: np.ndarray,
    y: np.ndarray,
    cv: Any,
    scorer: Any,
    seeds: RandomStates,
    baseline_cv_s: float,
    time_left: float | None,
) -> _Search:
    space = SEARCH_SPACES[(family, task)]
    n_classes = np.unique(y).size if task == "classification" else 1
    min_resources = 2 * request.cv_folds * n_classes  # scikit-learn's 'smallest'
    if min_resources > len(y):
        raise InvalidInput(
            "strategy",
            f"successive halving needs at least {min_resources} training rows (2 × folds × classes); got {len(y)}",
        )
    n_candidates, notes, stopped = request.max_trials, [], "max_trials"
    if time_left is not None:

        def estimate(n: int) -> float:
            # A fit's cost: a fixed part and a part proportional to the rows (a rough model, stated as such).
            plan = _halving_plan(n, min_resources, len(y))
            return sum(c * (0.3 + 0.7 * rows / len(y)) * baseline_cv_s for c, rows in plan)

        while n_candidates > HALVING_FACTOR and estimate(n_candidates) > time_left:
            n_candidates = max(HALVING_FACTOR, int(n_candidates * 0.8))
        if n_candidates < request.max_trials:
            stopped = "max_time"
            notes.append(
                f"successive halving cannot stop mid-search: {n_candidates} candidates instead of "
                f"{request.max_trials} so that the estimated time ({estimate(n_candidates):.1f} s, from the "
                "baseline's CV time) fits the time left"
            )
    search = HalvingRandomSearchCV(
        _template(family, task, seeds.estimator),
        {d.key: d.scipy() for d in space},
        n_candidates=n_candidates,
        factor=HALVING_FACTOR,
        min_resources="smallest",
        cv=cv,
        scoring=scorer,
        refit=False,
        random_state=seeds.search,
        error_score="raise",
        return_train_score=False,
        n_jobs=1,
    )
    search.fit(x, y)
    res = search.cv_results_
    names = {d.key: d for d in space}
    last_round = int(np.max(res["iter"]))
    by_candidate: dict[tuple[Any, ...], list[int]] = {}
    for row, params in enumerate(res["params"]):
        by_candidate.setdefault(tuple(sorted(params.items())), []).append(row)
    records = []
    best_index = 0
    for number, rows in enumerate(by_candidate.values()):
        last = rows[-1]
        params = {names[k].name: _native(v, names[k]) for k, v in res["params"][last].items()}
        duration = float(sum((res["mean_fit_time"][r] + res["mean_score_time"][r]) * request.cv_folds for r in rows))
        mean, sd = float(res["mean_test_score"][last]), float(res["std_test_score"][last])
        records.append(
            TrialRecord(
                number=number,
                params=params,
                cv_mean=mean if np.isfinite(mean) else None,
                cv_std=sd if np.isfinite(sd) else None,
                duration_s=duration if request.report_timings else None,
                state="complete" if int(res["iter"][last]) == last_round else "pruned",
                n_resources=int(res["n_resources"][last]),
                rounds=len(rows),
            )
        )
        if search.best_index_ in rows:
            best_index = number
    if records[best_index].cv_mean is None:
        raise InvalidInput("dataset", "the best candidate has no finite CV score; check the target")
    return _Search(records, best_index, stopped, notes)


def _native(value: Any, dim: Dim) -> ParamValue:
    if dim.kind == "int":
        return int(value)
    if dim.kind == "bool":
        return bool(value)
    return float(value)


# ------------------------------------------------------------------------------------------------- component


@component(
    "AutoMLOrchestrator",
    name="automl_orchestrator",
    tier="tier2",
    capabilities=["hyperparameter_search", "automl", "model_selection"],
    example={
        "dataset": {"source": "bundled", "name": "wine"},
        "estimator": "svm",
        "strategy": "tpe",
        "max_trials": 10,
        "max_time_s": None,
        "report_timings": False,
        "seed": 0,
    },
)
def automl_orchestrator(request: AutoMLOrchestratorInput, ctx: RunContext) -> AutoMLOrchestratorOutput:
    """Budgeted hyperparameter search (random, successive halving, TPE) with k-fold CV and a default baseline.

    Tunes one model family (random forest, gradient boosting, histogram gradient boosting, logistic/ridge,
    SVM) on a bundled scikit-learn dataset, an inline matrix or a CSV under data/, within ``max_trials`` and
    ``max_time_s``. Returns the best configuration with its CV score, the trial history (parameters, CV mean
    and sd, duration, state), and the held-out score of the refitted best configuration next to the
    default-parameter estimator of the same family on the same seeded train/test split. Random and TPE search
    run on Optuna (seeded, in memory); successive halving is scikit-learn's HalvingRandomSearchCV.
    """
    started = time.perf_counter()
    x, y = _load(request.dataset, ctx)
    if len(x) < MIN_ROWS:
        raise InvalidInput("dataset", f"needs at least {MIN_ROWS} rows; got {len(x)}")
    task = _task(request, y)
    family = request.estimator
    scoring_name, scorer = _scorer(request.scoring, task)
    rng = np.random.default_rng(request.seed)
    split, cv_seed, search_seed, model_seed = (int(v) for v in rng.integers(0, 2**31 - 1, size=4))
    seeds = RandomStates(split=split, cv=cv_seed, search=search_seed, estimator=model_seed)

    n_classes = None
    if task == "classification":
        _, y, counts = np.unique(y, return_inverse=True, return_counts=True)
        n_classes = len(counts)
        if n_classes < 2:
            raise InvalidInput("dataset.target", "classification needs at least two classes")
        if counts.min() < 2:
            raise InvalidInput("dataset.target", "every class needs at least two rows for a stratified split")
    elif np.ptp(y) == 0:
        raise InvalidInput("dataset.target", "the regression target is constant")
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=request.test_size, random_state=split, stratify=y if task == "classification" else None
        )
    except ValueError as exc:  # e.g. fewer held-out rows than classes
        raise InvalidInput("test_size", str(exc)) from exc
    if task == "classification":
        smallest = int(np.bincount(y_train).min())
        if smallest < request.cv_folds:
            raise InvalidInput(
                "cv_folds", f"the smallest class has {smallest} training rows; use at most that many folds"
            )
        cv: Any = StratifiedKFold(request.cv_folds, shuffle=True, random_state=cv_seed)
    else:
        cv = KFold(request.cv_folds, shuffle=True, random_state=cv_seed)

    # One thread everywhere (n_jobs=1, and OpenMP/BLAS pools of one): trials are sequential, results do not depend
    # on thread counts, and a second pool only contends with the other services on the machine.
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
        # Poor configurations legitimately fail to converge; count such warnings and report them as notes.
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        baseline_scores = cross_val_score(
            default_estimator(family, task, model_seed), x_train, y_train, cv=cv, scoring=scorer, error_score="raise"
        )
        now = time.perf_counter()
        baseline_cv_s = now - t0
        # The wall-time budget counts from the start of the run; the search gets what is left (at least one trial).
        time_left = None if request.max_time_s is None else max(request.max_time_s - (now - started), 1e-3)
        if request.strategy == "successive_halving":
            found = _halving_search(
                request, family, task, x_train, y_train, cv, scorer, seeds, baseline_cv_s, time_left
            )
        else:
            found = _optuna_search(request, family, task, x_train, y_train, cv, scorer, seeds, time_left)
        best_trial = found.trials[found.best_index]
        best_model = build_estimator(family, task, best_trial.params, model_seed).fit(x_train, y_train)
        baseline_model = default_estimator(family, task, model_seed).fit(x_train, y_train)
        held_best = float(scorer(best_model, x_test, y_test))
        held_base = float(scorer(baseline_model, x_test, y_test))
    notes = found.notes + [
        f"{n} × {name} during fitting (e.g. a configuration that did not converge)"
        for name, n in sorted(Counter(type(w.message).__name__ for w in caught).items())
    ]
    if not (np.isfinite(baseline_scores).all() and np.isfinite([held_best, held_base]).all()):
        raise InvalidInput("scoring", "the score is undefined on this data (e.g. a constant held-out target)")
    space = SEARCH_SPACES[(family, task)]
    return AutoMLOrchestratorOutput(
        task=task,
        estimator=family,
        strategy=request.strategy,
        scoring=scoring_name,
        dataset=DatasetSummary(
            source=request.dataset.source,
            name=getattr(request.dataset, "name", None) or getattr(request.dataset, "path", None),
            n_samples=len(x),
            n_features=x.shape[1],
            n_classes=n_classes,
            n_train=len(y_train),
            n_test=len(y_test),
        ),
        search_space=[
            SpaceEntry(
                name=d.name,
                kind=d.kind,
                low=None if d.kind == "bool" else d.low,
                high=None if d.kind == "bool" else d.high,
                log=d.log,
            )
            for d in space
        ],
        n_trials=len(found.trials),
        stopped_by=found.stopped_by,
        elapsed_s=time.perf_counter() - started if request.report_timings else None,
        best=BestConfiguration(
            trial=best_trial.number,
            params=best_trial.params,
            fixed_params=_FIXED.get((family, task), {}),
            cv_mean=float(best_trial.cv_mean or 0.0),
            cv_std=float(best_trial.cv_std or 0.0),
        ),
        baseline=BaselineResult(
            estimator=f"{type(baseline_model).__name__}() with scikit-learn defaults",
            cv_mean=float(np.mean(baseline_scores)),
            cv_std=float(np.std(baseline_scores)),
        ),
        held_out=HeldOut(best=held_best, baseline=held_base, improvement=held_best - held_base),
        trials=found.trials,
        random_states=seeds,
        notes=notes,
    )
