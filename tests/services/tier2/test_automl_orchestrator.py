"""AutoML search: held-out and CV scores recomputed with scikit-learn itself, budgets, reproducibility, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_wine
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.automl_orchestrator import AutoMLOrchestratorInput, automl_orchestrator

NAME = "automl_orchestrator"
WINE_SVM = {
    "dataset": {"source": "bundled", "name": "wine"},
    "estimator": "svm",
    "strategy": "tpe",
    "max_trials": 10,
    "max_time_s": None,
    "report_timings": False,
    "seed": 0,
}


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


def run(ctx: RunContext, **body: Any) -> Any:
    return automl_orchestrator(AutoMLOrchestratorInput.model_validate(body), ctx)


@pytest.fixture(scope="module")
def wine_svm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import make_settings

    ctx = RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("automl")), request_id=None)
    return run(ctx, **WINE_SVM)


# ------------------------------------------------------------------------------------ tuned vs default, on held-out


def test_tuned_svm_beats_default_on_held_out_wine(wine_svm: Any) -> None:
    # SVC() on wine's unscaled features (proline is in the hundreds) is poor; the search may scale them.
    res = wine_svm
    assert res.task == "classification" and res.scoring == "accuracy"
    assert res.dataset.n_samples == 178 and res.dataset.n_classes == 3
    assert res.held_out.baseline < 0.85
    assert res.held_out.best >= res.held_out.baseline + 0.10
    assert res.best.cv_mean > res.baseline.cv_mean + 0.10
    assert res.best.params["scale"] is True


def test_held_out_scores_equal_scikit_learns_on_the_refitted_estimators(wine_svm: Any) -> None:
    res = wine_svm
    x, y = load_wine(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=res.random_states.split, stratify=y)
    assert (len(y_tr), len(y_te)) == (res.dataset.n_train, res.dataset.n_test)
    p = res.best.params
    best = make_pipeline(StandardScaler(with_std=p["scale"]), SVC(C=p["C"], gamma=p["gamma"])).fit(x_tr, y_tr)
    assert res.held_out.best == pytest.approx(accuracy_score(y_te, best.predict(x_te)), abs=1e-12)
    assert res.held_out.baseline == pytest.approx(accuracy_score(y_te, SVC().fit(x_tr, y_tr).predict(x_te)), abs=1e-12)
    assert res.held_out.improvement == pytest.approx(res.held_out.best - res.held_out.baseline)
    # The reported CV score of the best trial is scikit-learn's cross_val_score on the same folds.
    folds = StratifiedKFold(5, shuffle=True, random_state=res.random_states.cv)
    scores = cross_val_score(best, x_tr, y_tr, cv=folds, scoring="accuracy")
    assert res.best.cv_mean == pytest.approx(scores.mean(), abs=1e-12)
    assert res.best.cv_std == pytest.approx(scores.std(), abs=1e-12)
    assert res.baseline.cv_mean == pytest.approx(cross_val_score(SVC(), x_tr, y_tr, cv=folds).mean(), abs=1e-12)


def test_tuned_svr_beats_default_on_held_out_diabetes(ctx: RunContext) -> None:
    # SVR() with C=1 on an unscaled target in the hundreds barely fits (R² ≈ 0.1).
    res = run(
        ctx,
        dataset={"source": "bundled", "name": "diabetes"},
        estimator="svm",
        strategy="random",
        max_trials=12,
        max_time_s=None,
        seed=3,
    )
    assert res.task == "regression" and res.scoring == "r2" and res.dataset.n_classes is None
    assert res.held_out.baseline < 0.25
    assert res.held_out.best > res.held_out.baseline + 0.15
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=res.random_states.split)
    p = res.best.params
    model = make_pipeline(StandardScaler(with_std=p["scale"]), SVR(C=p["C"], gamma=p["gamma"])).fit(x_tr, y_tr)
    assert res.held_out.best == pytest.approx(r2_score(y_te, model.predict(x_te)), rel=1e-10)


# ------------------------------------------------------------------------------------ budgets and history


def test_trial_budget_and_history(wine_svm: Any) -> None:
    res = wine_svm
    assert res.n_trials == len(res.trials) == 10 and res.stopped_by == "max_trials"
    assert [t.number for t in res.trials] == list(range(10))
    assert all(t.state == "complete" and t.duration_s is None for t in res.trials)
    assert res.elapsed_s is None
    best = max(t.cv_mean for t in res.trials)
    assert res.best.cv_mean == best and res.trials[res.best.trial].params == res.best.params
    for t in res.trials:
        assert 1e-2 <= t.params["C"] <= 1e3 and 1e-4 <= t.params["gamma"] <= 10


def test_same_seed_same_history_and_another_seed_differs(wine_svm: Any, ctx: RunContext) -> None:
    again = run(ctx, **WINE_SVM)
    assert again.model_dump() == wine_svm.model_dump()
    other = run(ctx, **{**WINE_SVM, "seed": 1})
    assert [t.params for t in other.trials] != [t.params for t in wine_svm.trials]


def test_time_budget_stops_early(ctx: RunContext) -> None:
    res = run(
        ctx,
        dataset={"source": "bundled", "name": "wine"},
        estimator="svm",
        strategy="random",
        max_trials=200,
        max_time_s=0.5,
        seed=0,
    )
    assert res.stopped_by == "max_time"
    assert 1 <= res.n_trials < 200
    assert res.elapsed_s is not None and res.elapsed_s < 30  # generous: the budget is checked between trials
    assert all(t.duration_s is not None and t.duration_s > 0 for t in res.trials)


def test_successive_halving_respects_candidates_and_prunes(ctx: RunContext) -> None:
    res = run(
        ctx,
        dataset={"source": "bundled", "name": "breast_cancer"},
        estimator="linear",
        strategy="successive_halving",
        max_trials=12,
        max_time_s=None,
        seed=2,
    )
    states = [t.state for t in res.trials]
    assert res.n_trials == 12 and len(res.trials) == 12
    assert states.count("pruned") >= 1 and states.count("complete") >= 1
    complete = [t for t in res.trials if t.state == "complete"]
    assert res.trials[res.best.trial].state == "complete"
    assert res.best.cv_mean == max(t.cv_mean for t in complete)
    assert max(t.n_resources for t in res.trials) <= res.dataset.n_train
    assert min(t.n_resources for t in res.trials) < max(t.n_resources for t in res.trials)
    # LogisticRegression() on unscaled features stops at max_iter=100: reported, not raised.
    assert any("ConvergenceWarning" in n for n in res.notes)


def test_successive_halving_time_budget_lowers_candidates(ctx: RunContext) -> None:
    res = run(
        ctx,
        dataset={"source": "bundled", "name": "wine"},
        estimator="svm",
        strategy="successive_halving",
        max_trials=200,
        max_time_s=0.2,
        seed=0,
    )
    assert res.stopped_by == "max_time" and res.n_trials < 200
    assert any("successive halving cannot stop mid-search" in n for n in res.notes)


# ------------------------------------------------------------------------------------ other data sources


def test_csv_and_inline_data(ctx: RunContext) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(0, 0.3, 120)
    table = np.column_stack([x, y])
    np.savetxt(ctx.data_dir / "runs.csv", table, delimiter=",", header="a,b,c,score", comments="")
    res = run(
        ctx,
        dataset={"source": "csv", "path": "runs.csv", "target": "score", "features": ["a", "b"]},
        estimator="linear",
        strategy="random",
        max_trials=4,
        max_time_s=None,
    )
    assert res.task == "regression" and res.dataset.n_features == 2 and res.held_out.best > 0.8
    labels = (x[:, 0] > 0).astype(int)
    res = run(
        ctx,
        dataset={"source": "inline", "features": x.tolist(), "target": labels.tolist()},
        estimator="hist_gradient_boosting",
        strategy="tpe",
        max_trials=3,
        max_time_s=None,
        cv_folds=3,
    )
    assert res.task == "classification" and res.dataset.n_classes == 2 and res.n_trials == 3


# ------------------------------------------------------------------------------------ invalid input


@pytest.mark.parametrize(
    ("dataset", "options", "field"),
    [
        (
            {"source": "inline", "features": [[1.0, 2.0]] * 19 + [[1.0]], "target": [0, 1] * 10},
            {},
            "dataset.features[19]",
        ),
        (
            {"source": "inline", "features": [[float(i)] for i in range(20)], "target": [0, 1] * 11},
            {},
            "dataset.target",
        ),
        ({"source": "inline", "features": [[float(i)] for i in range(20)], "target": [1.0] * 20}, {}, "dataset.target"),
        ({"source": "bundled", "name": "iris"}, {"scoring": "r2"}, "scoring"),
        ({"source": "bundled", "name": "diabetes"}, {"scoring": "accuracy"}, "scoring"),
        (
            {"source": "inline", "features": [[float(i)] for i in range(24)], "target": [0] * 20 + [1] * 4},
            {},
            "cv_folds",
        ),
        ({"source": "csv", "path": "t.csv", "target": "nope"}, {}, "dataset.target"),
        ({"source": "csv", "path": "t.csv", "target": "y", "features": ["x", "zz"]}, {}, "dataset.features"),
    ],
)
def test_invalid_input_names_the_field(ctx: RunContext, dataset: dict, options: dict, field: str) -> None:
    (ctx.data_dir / "t.csv").write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)), encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        run(ctx, dataset=dataset, estimator="svm", max_trials=2, max_time_s=None, **options)
    assert info.value.field == field


def test_non_numeric_csv_is_422(ctx: RunContext) -> None:
    rows = "".join(f"{i},{'x' if i == 7 else i % 2}\n" for i in range(30))
    (ctx.data_dir / "bad.csv").write_text("a,y\n" + rows, encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        run(ctx, dataset={"source": "csv", "path": "bad.csv", "target": "y"}, estimator="svm")
    assert info.value.field == "dataset.path" and "numbers" in str(info.value)


def test_paths_are_confined_to_data(ctx: RunContext) -> None:
    with pytest.raises(BadRequest, match=r"dataset\.path"):
        run(ctx, dataset={"source": "csv", "path": "../etc/passwd", "target": "y"}, estimator="svm")
    with pytest.raises(BadRequest, match=r"dataset\.path"):
        run(ctx, dataset={"source": "csv", "path": "missing.csv", "target": "y"}, estimator="svm")


def test_http_envelope_and_422(client_for: Any, tmp_path: Path) -> None:
    client = client_for(automl_orchestrator)
    r = client.post(f"/run/{NAME}", json={**WINE_SVM, "max_trials": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["component"] == NAME and body["component_result"]["n_trials"] == 3
    r = client.post(f"/run/{NAME}", json={**WINE_SVM, "max_trials": 1000})
    assert r.status_code == 422 and "max_trials" in r.json()["detail"]
    r = client.post(f"/run/{NAME}", json={**WINE_SVM, "estimator": "xgboost"})
    assert r.status_code == 422 and "estimator" in r.json()["detail"]
    r = client.post(f"/run/{NAME}", json={**WINE_SVM, "scoring": "r2"})
    assert r.status_code == 422 and "scoring" in r.json()["detail"]
