"""The model store: versioning, content hashes, safe loading, aliases, concurrency, feature matrices."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from mlmesh.errors import BadRequest, Conflict, InvalidInput, MeshError, NotFound
from services.models import registry as reg
from services.models.registry import (
    EstimatorParams,
    MatrixRef,
    ModelRegistry,
    build_estimator,
    clear_cache,
    infer_task,
    load_matrix,
)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3))
    return x, x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=60)


def _ridge(seed: int = 0) -> Ridge:
    x, y = _data(seed)
    return Ridge(alpha=1.0).fit(x, y)


def _double(x: np.ndarray) -> np.ndarray:
    return 2 * x


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    clear_cache()
    return ModelRegistry(tmp_path / "data")


def test_save_writes_hashed_artefact_and_index(registry: ModelRegistry) -> None:
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={"feature_names": ["a"]})
    path = registry.data_dir / "models" / "m" / "1" / "model.skops"
    assert record.version == 1 and record.artefact == "models/m/1/model.skops"
    assert path.is_file()
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.size_bytes == path.stat().st_size
    assert (registry.data_dir / "models" / "registry.sqlite").is_file()
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed, not left behind


def test_roundtrip_predicts_like_the_original(registry: ModelRegistry) -> None:
    model = _ridge()
    record = registry.save("m", model, model_type="ridge", task="regression", meta={})
    clear_cache()
    loaded = ModelRegistry(registry.data_dir).load(ModelRegistry(registry.data_dir).resolve("m"))
    x, _ = _data(1)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert record.trusted_types == ()


def test_tree_types_are_recorded_as_trusted(registry: ModelRegistry) -> None:
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y > 0)
    record = registry.save("forest", forest, model_type="random_forest", task="classification", meta={})
    assert "sklearn.tree._tree.Tree" in record.trusted_types
    clear_cache()
    np.testing.assert_array_equal(registry.load(record).predict(x), forest.predict(x))


def test_estimator_with_foreign_types_is_refused_and_nothing_is_stored(registry: ModelRegistry) -> None:
    x, y = _data()
    model = make_pipeline(FunctionTransformer(_double), Ridge()).fit(x, y)
    with pytest.raises(MeshError, match="outside scikit-learn"):
        registry.save("odd", model, model_type="ridge", task="regression", meta={})
    assert registry.versions("odd") == []
    assert not (registry.data_dir / "models" / "odd").exists()


def test_tampered_artefact_is_refused_without_deserialising(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    path = registry.data_dir / record.artefact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    clear_cache()

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tampered artefact must not be deserialised")

    monkeypatch.setattr(reg.sio, "loads", never)
    monkeypatch.setattr(reg.sio, "load", never)
    with pytest.raises(Conflict, match="artefact corrupted"):
        registry.load(record)


def test_cached_model_is_still_verified(registry: ModelRegistry) -> None:
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    registry.load(record)  # now cached
    path = registry.data_dir / record.artefact
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(Conflict, match="corrupted"):
        registry.load(record)


def test_fresh_artefact_is_rehashed_even_when_cached(registry: ModelRegistry) -> None:
    # Just written, so its timestamps may not move on a quick in-place edit: it must be hashed every time.
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    registry.load(record)
    path = registry.data_dir / record.artefact
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x01  # same size, same inode
    path.write_bytes(bytes(blob))
    with pytest.raises(Conflict, match="corrupted"):
        registry.load(record)


def test_settled_unchanged_artefact_is_not_rehashed_but_a_change_is_caught(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reg, "_SETTLE_NS", -1)  # treat every file as settled
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    first = registry.load(record)
    hashed: list[int] = []
    real_sha256 = reg.hashlib.sha256
    monkeypatch.setattr(reg.hashlib, "sha256", lambda data: hashed.append(len(data)) or real_sha256(data))
    assert registry.load(record) is first and hashed == []
    time.sleep(0.05)  # past any timestamp granularity
    path = registry.data_dir / record.artefact
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(Conflict, match="corrupted"):
        registry.load(record)
    assert hashed


def test_missing_artefact_is_a_conflict_and_deleted_version_not_found(registry: ModelRegistry) -> None:
    record = registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    (registry.data_dir / record.artefact).unlink()
    with pytest.raises(Conflict, match="missing"):
        registry.load(record)
    registry.delete("m", 1)
    with pytest.raises(NotFound):
        registry.load(record)


def test_versions_are_monotonic_and_never_reused(registry: ModelRegistry) -> None:
    for _ in range(3):
        registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    registry.delete("m", 3)
    assert registry.save("m", _ridge(), model_type="ridge", task="regression", meta={}).version == 4
    assert [r.version for r in registry.versions("m")] == [1, 2, 4]
    assert registry.resolve("m").version == 4  # latest
    assert registry.resolve("m", version=2).version == 2


def test_aliases_promote_resolve_and_protect_deletion(registry: ModelRegistry) -> None:
    registry.save("m", _ridge(0), model_type="ridge", task="regression", meta={})
    registry.save("m", _ridge(1), model_type="ridge", task="regression", meta={})
    assert registry.promote("m", "production", 1).aliases == ("production",)
    assert registry.resolve("m", alias="production").version == 1
    registry.promote("m", "production", 2)  # moves
    assert registry.resolve("m", alias="production").version == 2
    assert registry.resolve("m", version=1).aliases == ()
    with pytest.raises(NotFound, match="no version 7"):
        registry.promote("m", "production", 7)
    with pytest.raises(NotFound, match="no model named"):
        registry.promote("other", "production", 1)
    with pytest.raises(NotFound, match="no alias 'staging'"):
        registry.resolve("m", alias="staging")
    with pytest.raises(Conflict, match="production"):
        registry.delete("m", 2)
    with pytest.raises(Conflict):
        registry.delete("m")
    assert registry.delete("m", 1) == ([1], [])
    assert registry.delete("m", 2, force=True) == ([2], ["production"])
    with pytest.raises(NotFound):
        registry.resolve("m")
    assert not (registry.data_dir / "models" / "m" / "2").exists()


def test_delete_whole_model_restarts_numbering(registry: ModelRegistry) -> None:
    registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    registry.save("m", _ridge(), model_type="ridge", task="regression", meta={})
    assert registry.delete("m") == ([1, 2], [])
    assert not (registry.data_dir / "models" / "m").exists()
    with pytest.raises(NotFound):
        registry.delete("m")
    assert registry.save("m", _ridge(), model_type="ridge", task="regression", meta={}).version == 1


def test_concurrent_saves_get_distinct_loadable_versions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ModelRegistry(data)  # migrate once
    models = [_ridge(seed) for seed in range(6)]
    saved: list[tuple[reg.ModelRecord, Ridge]] = []
    barrier = threading.Barrier(len(models))
    lock = threading.Lock()

    def save(model: Ridge) -> None:
        own = ModelRegistry(data)  # separate StateDB and connection, as in two processes
        barrier.wait()
        record = own.save("m", model, model_type="ridge", task="regression", meta={})
        with lock:
            saved.append((record, model))

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.version for r, _ in saved) == [1, 2, 3, 4, 5, 6]
    clear_cache()
    fresh = ModelRegistry(data)
    x, _ = _data(9)
    for record, model in saved:  # each version holds the model that was saved under it
        loaded = fresh.load(fresh.resolve("m", version=record.version))
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_state_survives_a_new_registry_instance(registry: ModelRegistry) -> None:
    model = _ridge()
    registry.save("m", model, model_type="ridge", task="regression", meta={"feature_names": ["a", "b", "c"]})
    registry.promote("m", "production", 1)
    clear_cache()
    again = ModelRegistry(registry.data_dir)
    record = again.resolve("m", alias="production")
    assert record.feature_names == ["a", "b", "c"]
    x, _ = _data(3)
    np.testing.assert_array_equal(again.load(record).predict(x), model.predict(x))


def test_resolve_rejects_version_and_alias_together(registry: ModelRegistry) -> None:
    with pytest.raises(InvalidInput, match="either version or alias"):
        registry.resolve("m", version=1, alias="production")


# --------------------------------------------------------------------------- feature matrices


def test_load_matrix_inline_and_ragged(tmp_path: Path) -> None:
    x, names = load_matrix([[1.0, 2.0], [3.0, 4.0]], tmp_path, field="features")
    assert x.shape == (2, 2) and names is None
    with pytest.raises(InvalidInput, match=r"features: .*row 1 has 1"):
        load_matrix([[1.0, 2.0], [3.0]], tmp_path, field="features")


def test_load_matrix_files(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=float).reshape(4, 3)
    np.save(tmp_path / "x.npy", arr)
    (tmp_path / "x.csv").write_text("a,b,c\n" + "\n".join(",".join(map(str, row)) for row in arr) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(arr.tolist()))
    got, names = load_matrix(MatrixRef(path="x.npy"), tmp_path, field="features")
    np.testing.assert_array_equal(got, arr)
    got, names = load_matrix(MatrixRef(path="x.csv", columns=["c", "a"]), tmp_path, field="features")
    np.testing.assert_array_equal(got, arr[:, [2, 0]])
    assert names == ["c", "a"]
    got, _ = load_matrix(MatrixRef(path="x.json", columns=[1]), tmp_path, field="features")
    np.testing.assert_array_equal(got, arr[:, [1]])
    with pytest.raises(InvalidInput, match="no column named 'z'"):
        load_matrix(MatrixRef(path="x.csv", columns=["z"]), tmp_path, field="features")


def test_load_matrix_confines_paths_and_refuses_pickles(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(tmp_path / "outside.npy", np.zeros((2, 2)))
    for bad in ("../outside.npy", str(tmp_path / "outside.npy"), "a/../../outside.npy"):
        with pytest.raises(BadRequest, match=r"features\.path"):
            load_matrix(MatrixRef(path=bad), data, field="features")
    np.save(data / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="could not read"):
        load_matrix(MatrixRef(path="objects.npy"), data, field="features")
    with pytest.raises(BadRequest, match="no such file"):
        load_matrix(MatrixRef(path="missing.npy"), data, field="features")


def test_load_matrix_rejects_non_finite(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(InvalidInput, match="finite"):
        load_matrix(MatrixRef(path="nan.npy"), tmp_path, field="features")


# --------------------------------------------------------------------------- estimators


def test_build_estimator_matches_task() -> None:
    params = EstimatorParams()
    with pytest.raises(InvalidInput, match="model_type"):
        build_estimator("ridge", "classification", params, 0)
    with pytest.raises(InvalidInput, match="model_type"):
        build_estimator("logistic", "regression", params, 0)
    model = build_estimator("ridge", "regression", params, 0)
    assert isinstance(model.steps[0][1], StandardScaler)
    assert build_estimator("gradient_boosting", "regression", params, 3).max_depth == 3
    assert build_estimator("random_forest", "classification", params, 7).random_state == 7


def test_infer_task() -> None:
    assert infer_task("auto", "logistic", np.array([0.5, 1.5])) == "classification"
    assert infer_task("auto", "random_forest", np.array([0.0, 1.0, 1.0, 2.0])) == "classification"
    assert infer_task("auto", "random_forest", np.array([0.1, 0.7, 0.4])) == "regression"
    assert infer_task("auto", "ridge", np.arange(50.0)) == "regression"
    assert infer_task("auto", "ridge", np.array([0.0, 1.0, 1.0])) == "regression"  # ridge only regresses
    assert infer_task("auto", "random_forest", np.ones(5)) == "regression"  # one value is no class set
    assert infer_task("regression", "random_forest", np.array([0.0, 1.0])) == "regression"
