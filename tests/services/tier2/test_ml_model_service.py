"""ml_model_service: held-out metrics and predictions against scikit-learn, leakage, persistence, safety."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, roc_auc_score
from sklearn.metrics import root_mean_squared_error as rmse
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    StratifiedKFold,
    StratifiedShuffleSplit,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.models import registry as reg
from services.models.registry import clear_cache
from services.tier2.ml_model_service import MLModelServiceInput, MLModelServiceOutput, ml_model_service
from tests.conftest import AUTH, make_settings

ROUTE = "/run/ml_model_service"
SEED = 7


def regression_data(n_sessions: int = 30, per: int = 4, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = n_sessions * per
    x = rng.normal(size=(n, 4))
    session_effect = np.repeat(rng.normal(scale=0.3, size=n_sessions), per)
    y = 0.5 + x @ np.array([0.8, -0.4, 0.0, 0.2]) + session_effect + rng.normal(scale=0.2, size=n)
    groups = np.repeat([f"s{i}" for i in range(n_sessions)], per)
    return {"x": x, "y": y, "groups": groups}


def classification_data(n: int = 120, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    logits = 1.5 * x[:, 0] - x[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(float)
    return x, y


def run(ctx: RunContext, **body: Any) -> MLModelServiceOutput:
    return ml_model_service(MLModelServiceInput.model_validate(body), ctx)


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    clear_cache()
    return RunContext(component="ml_model_service", settings=settings, request_id=None)


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    clear_cache()
    return client_for(ml_model_service)


def train_body(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operation": "train",
        "name": "eff",
        "features": data["x"].tolist(),
        "target": data["y"].tolist(),
        "groups": data["groups"].tolist(),
        "test_fraction": 0.25,
        "seed": SEED,
        **extra,
    }


# --------------------------------------------------------------------------- known answers against sklearn


def test_group_split_metrics_and_cv_equal_sklearn(ctx: RunContext) -> None:
    data = regression_data()
    x, y, groups = data["x"], data["y"], data["groups"]
    out = run(ctx, **train_body(data, params={"alpha": 2.0}))
    model = out.model
    assert model is not None and model.task == "regression" and model.version == 1

    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=SEED).split(x, y, groups))
    assert set(groups[train]).isdisjoint(groups[test])  # no session on both sides
    assert model.split.scheme == "group_shuffle" and model.split.shared_groups == 0
    assert (model.split.n_train, model.split.n_test) == (train.size, test.size)
    split = json.loads((ctx.settings.outputs_dir / "ml_model_service" / ctx.run_id / "split.json").read_text())
    assert split == {"train": sorted(train.tolist()), "test": sorted(test.tolist())}

    ref = make_pipeline(StandardScaler(), Ridge(alpha=2.0)).fit(x[train], y[train])
    pred = ref.predict(x[test])
    assert model.metrics.r2 == pytest.approx(r2_score(y[test], pred), rel=1e-12)
    assert model.metrics.mae == pytest.approx(mean_absolute_error(y[test], pred), rel=1e-12)
    assert model.metrics.rmse == pytest.approx(rmse(y[test], pred), rel=1e-12)
    assert model.baseline_metrics.mae == pytest.approx(
        mean_absolute_error(y[test], np.full(test.size, y[train].mean()))
    )
    assert model.metrics.r2 > 0.5 > (model.baseline_metrics.r2 or 0)

    cv = cross_val_score(
        make_pipeline(StandardScaler(), Ridge(alpha=2.0)),
        x[train],
        y[train],
        groups=groups[train],
        cv=GroupKFold(n_splits=5),
        scoring="r2",
    )
    assert model.cv.scheme == "group_kfold" and model.cv.folds == 5
    np.testing.assert_allclose(model.cv.scores, cv, rtol=1e-10)
    assert model.cv.mean == pytest.approx(cv.mean(), rel=1e-10)

    new = np.random.default_rng(5).normal(size=(7, 4))
    got = run(ctx, operation="predict", name="eff", features=new.tolist()).prediction
    assert got is not None and got.version == 1
    np.testing.assert_allclose(got.predictions, ref.predict(new), rtol=1e-12)


def test_classification_metrics_equal_sklearn(ctx: RunContext) -> None:
    x, y = classification_data()
    out = run(
        ctx,
        operation="train",
        name="clf",
        model_type="logistic",
        features=x.tolist(),
        target=y.tolist(),
        params={"C": 0.5},
        seed=SEED,
    )
    model = out.model
    assert model is not None and model.task == "classification" and model.classes == [0.0, 1.0]
    train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=SEED).split(x, y))
    train, test = np.sort(train), np.sort(test)  # the service keeps the rows in their original order
    assert model.split.scheme == "stratified_shuffle"
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000, random_state=SEED))
    ref.fit(x[train], y[train])
    proba = ref.predict_proba(x[test])
    assert model.metrics.accuracy == pytest.approx(accuracy_score(y[test], ref.predict(x[test])))
    assert model.metrics.roc_auc == pytest.approx(roc_auc_score(y[test], proba[:, 1]), rel=1e-9)
    assert model.metrics.log_loss == pytest.approx(log_loss(y[test], proba), rel=1e-9)
    cv = cross_val_score(ref, x[train], y[train], cv=StratifiedKFold(5, shuffle=True, random_state=SEED))
    np.testing.assert_allclose(model.cv.scores, cv, rtol=1e-12)
    got = run(ctx, operation="predict", name="clf", features=x[:9].tolist(), return_probabilities=True).prediction
    assert got is not None and got.classes == [0.0, 1.0]
    np.testing.assert_array_equal(got.predictions, ref.predict(x[:9]))
    np.testing.assert_allclose(got.probabilities, ref.predict_proba(x[:9]), rtol=1e-12)


def test_forest_and_boosting_predictions_equal_direct_fit_with_same_seed(ctx: RunContext) -> None:
    data = regression_data(seed=3)
    x, y, groups = data["x"], data["y"], data["groups"]
    run(
        ctx,
        **train_body(
            data, name="rf", model_type="random_forest", cv_folds=0, params={"n_estimators": 25, "min_samples_leaf": 2}
        ),
    )
    train, _ = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=SEED).split(x, y, groups))
    forest = RandomForestRegressor(n_estimators=25, min_samples_leaf=2, random_state=SEED, n_jobs=1)
    forest.fit(x[train], y[train])
    new = np.random.default_rng(11).normal(size=(20, 4))
    got = run(ctx, operation="predict", name="rf", features=new.tolist()).prediction
    assert got is not None
    np.testing.assert_array_equal(got.predictions, forest.predict(new))

    xc, yc = classification_data(seed=4)
    out = run(
        ctx,
        operation="train",
        name="gb",
        model_type="gradient_boosting",
        task="classification",
        features=xc.tolist(),
        target=yc.tolist(),
        params={"n_estimators": 20},
        cv_folds=0,
        seed=SEED,
    )
    assert out.model is not None and out.model.params["max_depth"] == 3
    train, _ = next(StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=SEED).split(xc, yc))
    boosting = GradientBoostingClassifier(n_estimators=20, random_state=SEED).fit(xc[train], yc[train])
    got = run(ctx, operation="predict", name="gb", features=xc.tolist(), return_probabilities=True).prediction
    assert got is not None
    np.testing.assert_allclose(got.probabilities, boosting.predict_proba(xc), rtol=1e-12)


# --------------------------------------------------------------------------- leakage and validation


def test_target_copied_into_features_is_refused(client: TestClient) -> None:
    data = regression_data()
    leaky = np.column_stack([data["x"], data["y"]])
    body = train_body(data, features=leaky.tolist(), feature_names=["a", "b", "c", "d", "effectiveness_copy"])
    r = client.post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert "features" in r.json()["detail"] and "effectiveness_copy" in r.json()["detail"]
    assert "leakage" in r.json()["detail"]


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.01, 100).map(lambda v: v) | st.floats(-100, -0.01),
    shift=st.floats(-1e3, 1e3),
    column=st.integers(0, 4),
)
def test_any_affine_copy_of_the_target_is_leakage(
    tmp_path_factory: pytest.TempPathFactory, scale: float, shift: float, column: int
) -> None:
    data = regression_data(n_sessions=5)
    x = np.insert(data["x"], column, scale * data["y"] + shift, axis=1)
    ctx = RunContext(
        component="ml_model_service", settings=make_settings(tmp_path_factory.mktemp("leak")), request_id=None
    )
    with pytest.raises(InvalidInput, match=rf"features: column 'x{column}' .*leakage"):
        run(ctx, **train_body(data, features=x.tolist()))


def test_predict_validates_features_against_the_model(client: TestClient) -> None:
    data = regression_data()
    names = ["clarity", "length", "specificity", "examples"]
    assert client.post(ROUTE, json=train_body(data, feature_names=names)).status_code == 200
    rows = data["x"][:5]
    base = client.post(ROUTE, json={"operation": "predict", "name": "eff", "features": rows.tolist()})
    assert base.status_code == 200
    wrong = client.post(ROUTE, json={"operation": "predict", "name": "eff", "features": rows[:, :3].tolist()})
    assert wrong.status_code == 422 and "expects 4" in wrong.json()["detail"]
    order = [3, 1, 0, 2]
    shuffled = client.post(
        ROUTE,
        json={
            "operation": "predict",
            "name": "eff",
            "features": rows[:, order].tolist(),
            "feature_names": [names[i] for i in order],
        },
    )
    assert shuffled.status_code == 200
    assert shuffled.json()["component_result"]["prediction"]["predictions"] == pytest.approx(
        base.json()["component_result"]["prediction"]["predictions"], rel=1e-12
    )
    unknown = client.post(
        ROUTE,
        json={
            "operation": "predict",
            "name": "eff",
            "features": rows.tolist(),
            "feature_names": ["clarity", "length", "specificity", "tone"],
        },
    )
    assert unknown.status_code == 422
    assert "feature_names" in unknown.json()["detail"] and "tone" in unknown.json()["detail"]
    ragged = client.post(ROUTE, json={"operation": "predict", "name": "eff", "features": [[1, 2, 3, 4], [1]]})
    assert ragged.status_code == 422


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"target": [1.0, 2.0]}, "target"),
        ({"groups": ["a"] * 120}, "groups"),
        ({"model_type": "logistic"}, "model_type"),  # a continuous target cannot be classified by logistic…
        ({"cv_folds": 1}, "cv_folds"),
        ({"name": "../escape"}, "name"),
        ({"params": {"alpha": 0}}, "params.alpha"),
        ({"target": [1e13] * 120}, "target"),
        ({"features": [[0.0, 1.0, 2.0, 1e13]] * 120}, "features"),
    ],
)
def test_bad_training_input_is_422_naming_the_field(client: TestClient, patch: dict[str, Any], field: str) -> None:
    body = train_body(regression_data()) | patch
    if field == "model_type":
        body["task"] = "regression"
    r = client.post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_paths_outside_data_are_rejected(client: TestClient, settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    np.save(settings.data_dir.parent / "secret.npy", np.zeros((20, 2)))
    for path in ("../secret.npy", str(settings.data_dir.parent / "secret.npy")):
        body = {"operation": "train", "name": "p", "features": {"path": path}, "target": [0.0] * 20}
        r = client.post(ROUTE, json=body)
        assert r.status_code == 400, r.text
        assert "features.path" in r.json()["detail"]
        assert str(settings.data_dir.parent) not in r.json()["detail"]
        r = client.post(ROUTE, json={"operation": "predict", "name": "p", "features": {"path": path}})
        assert r.status_code in (400, 404)


def test_training_from_files_under_data(client: TestClient, settings: Settings) -> None:
    data = regression_data()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    header = "clarity,length,specificity,examples,effectiveness"
    table = np.column_stack([data["x"], data["y"]])
    np.savetxt(settings.data_dir / "train.csv", table, delimiter=",", header=header, comments="")
    body = {
        "operation": "train",
        "name": "from-file",
        "features": {"path": "train.csv", "columns": ["clarity", "length", "specificity", "examples"]},
        "target": {"path": "train.csv", "column": "effectiveness"},
        "groups": data["groups"].tolist(),
        "seed": SEED,
    }
    r = client.post(ROUTE, json=body)
    assert r.status_code == 200, r.text
    info = r.json()["component_result"]["model"]
    assert info["feature_names"] == ["clarity", "length", "specificity", "examples"]
    assert r.json()["local_metadata"]["output_files"][0].endswith("split.json")
    # Predicting from the same file with its header reorders/validates by name.
    r = client.post(
        ROUTE,
        json={
            "operation": "predict",
            "name": "from-file",
            "features": {"path": "train.csv", "columns": ["examples", "clarity", "length", "specificity"]},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["component_result"]["prediction"]["n_rows"] == 120


# --------------------------------------------------------------------------- registry operations over HTTP


def test_list_get_promote_delete_over_http(client: TestClient) -> None:
    for _ in range(2):
        assert client.post(ROUTE, json={"operation": "list"}).status_code == 200
    data = regression_data()
    assert client.post(ROUTE, json=train_body(data, promote_to="production")).json()["component_result"]["model"][
        "aliases"
    ] == ["production"]
    assert client.post(ROUTE, json=train_body(data, cv_folds=0)).status_code == 200
    listing = client.post(ROUTE, json={"operation": "list"}).json()["component_result"]
    assert listing["total_models"] == 1
    assert listing["models"][0] | {"updated_at": 0} == {
        "name": "eff",
        "versions": [1, 2],
        "latest_version": 2,
        "aliases": {"production": 1},
        "task": "regression",
        "model_type": "ridge",
        "updated_at": 0,
    }
    got = client.post(ROUTE, json={"operation": "get", "name": "eff", "alias": "production"}).json()
    assert got["component_result"]["model"]["version"] == 1
    assert (
        client.post(
            ROUTE, json={"operation": "promote", "name": "eff", "alias": "production", "version": 9}
        ).status_code
        == 404
    )
    assert (
        client.post(
            ROUTE, json={"operation": "promote", "name": "nope", "alias": "production", "version": 1}
        ).status_code
        == 404
    )
    assert client.post(ROUTE, json={"operation": "predict", "name": "nope", "features": [[1.0]]}).status_code == 404
    assert client.post(ROUTE, json={"operation": "get", "name": "eff", "alias": "staging"}).status_code == 404
    r = client.post(ROUTE, json={"operation": "delete", "name": "eff", "version": 1})
    assert r.status_code == 409 and "production" in r.json()["detail"]
    r = client.post(ROUTE, json={"operation": "promote", "name": "eff", "alias": "production", "version": 2})
    assert r.json()["component_result"]["model"]["aliases"] == ["production"]
    r = client.post(ROUTE, json={"operation": "delete", "name": "eff", "version": 1})
    assert r.status_code == 200 and r.json()["component_result"]["deleted_versions"] == [1]
    assert client.post(ROUTE, json={"operation": "delete", "name": "eff"}).status_code == 409
    r = client.post(ROUTE, json={"operation": "delete", "name": "eff", "force": True})
    assert r.json()["component_result"] | {} == {
        "operation": "delete",
        "model": None,
        "prediction": None,
        "models": None,
        "total_models": None,
        "deleted_versions": [2],
        "removed_aliases": ["production"],
    }
    assert client.post(ROUTE, json={"operation": "list"}).json()["component_result"]["models"] == []


def test_tampered_artefact_is_409_and_never_loaded(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.post(ROUTE, json=train_body(regression_data())).status_code == 200
    path = settings.data_dir / "models" / "eff" / "1" / "model.skops"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0x01
    path.write_bytes(bytes(blob))
    clear_cache()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("deserialised a tampered artefact")

    monkeypatch.setattr(reg.sio, "loads", refuse)
    r = client.post(ROUTE, json={"operation": "predict", "name": "eff", "features": [[0.0, 0.0, 0.0, 0.0]]})
    assert r.status_code == 409
    assert "artefact corrupted" in r.json()["detail"] and str(settings.data_dir) not in r.json()["detail"]


# --------------------------------------------------------------------------- persistence and concurrency


def test_registry_survives_a_restart(settings: Settings) -> None:
    data = regression_data()
    rows = np.random.default_rng(2).normal(size=(6, 4)).tolist()
    predict = {"operation": "predict", "name": "eff", "alias": "production", "features": rows}
    clear_cache()
    with TestClient(
        create_app("tier2", settings=settings, components=[ml_model_service], announce=False), headers=AUTH
    ) as first:
        body = train_body(data, model_type="random_forest", params={"n_estimators": 10}, promote_to="production")
        assert first.post(ROUTE, json=body).status_code == 200
        before = first.post(ROUTE, json=predict).json()["component_result"]["prediction"]
    clear_cache()  # a new process has no model in memory: it must load from data/
    with TestClient(
        create_app("tier2", settings=settings, components=[ml_model_service], announce=False), headers=AUTH
    ) as second:
        after = second.post(ROUTE, json=predict).json()["component_result"]["prediction"]
    assert after == before


def test_concurrent_training_gives_two_distinct_loadable_versions(ctx: RunContext) -> None:
    data = regression_data()
    results: dict[int, MLModelServiceOutput] = {}
    barrier = threading.Barrier(2)

    def train(seed: int) -> None:
        barrier.wait()
        results[seed] = run(
            ctx, **train_body(data, model_type="random_forest", params={"n_estimators": 8}, cv_folds=0, seed=seed)
        )

    threads = [threading.Thread(target=train, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = {seed: out.model.version for seed, out in results.items() if out.model is not None}
    assert sorted(versions.values()) == [1, 2]
    clear_cache()
    x, y, groups = data["x"], data["y"], data["groups"]
    for seed, version in versions.items():
        got = run(ctx, operation="predict", name="eff", version=version, features=x[:10].tolist()).prediction
        train, _ = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=seed).split(x, y, groups))
        ref = RandomForestRegressor(n_estimators=8, random_state=seed, n_jobs=1).fit(x[train], y[train])
        assert got is not None and got.version == version
        np.testing.assert_array_equal(got.predictions, ref.predict(x[:10]))
