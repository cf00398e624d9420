"""MLServiceHealthChecker on a real registry: trained models load and predict; corrupted ones fail by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.framework import RunContext
from services.models.registry import ModelRegistry
from services.tier2.ml_model_service import MLModelServiceInput, ml_model_service
from services.tier4.ml_service_health_checker import MLServiceHealthCheckerInput, ml_service_health_checker
from tests.conftest import make_settings

ALL = ["registry", "load", "predict"]


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[RunContext]:
    context = RunContext(component="ml_service_health_checker", settings=make_settings(tmp_path), request_id=None)
    yield context
    for db in context.databases.values():
        db.close()


def train(ctx: RunContext, name: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 3.0 + rng.normal(scale=0.1, size=40)
    body = {
        "operation": "train",
        "name": name,
        "features": x.tolist(),
        "target": y.tolist(),
        "model_type": "ridge",
        "cv_folds": 0,
        "seed": seed,
    }
    ml_model_service(MLModelServiceInput.model_validate(body), ctx)


def check(ctx: RunContext, **fields: object):
    return ml_service_health_checker(MLServiceHealthCheckerInput.model_validate({"checks": ALL, **fields}), ctx)


def artefact(ctx: RunContext, name: str) -> Path:
    record = ModelRegistry.for_context(ctx).resolve(name)
    return ctx.data_dir / record.artefact


def test_empty_registry_is_healthy(ctx: RunContext) -> None:
    out = check(ctx)
    assert out.status == "ok" and out.models_registered == 0 and out.models_checked == []
    assert [c.name for c in out.checks] == ["registry"]


def test_trained_model_loads_and_predicts(ctx: RunContext) -> None:
    train(ctx, "effectiveness")
    out = check(ctx)
    assert out.status == "ok", out.message
    assert out.models_registered == 1 and out.models_checked == ["effectiveness@v1"]
    names = {c.name: c for c in out.checks}
    assert set(names) == {"registry", "load:effectiveness@v1", "predict:effectiveness@v1"}
    predict = names["predict:effectiveness@v1"]
    assert predict.unit == "ms" and 0 < predict.value < 50 and predict.threshold == 50


def test_predict_latency_is_judged_against_the_threshold(ctx: RunContext) -> None:
    train(ctx, "m")
    out = check(ctx, checks=["predict"], predict_latency={"warning_ms": 1e-6, "failed_ms": 1e-6})
    assert out.status == "failed" and out.checks[0].name == "predict:m@v1" and out.checks[0].threshold == 1e-6


def test_corrupted_artefact_fails_naming_the_model(ctx: RunContext) -> None:
    train(ctx, "good", seed=1)
    train(ctx, "bad", seed=2)
    assert check(ctx).status == "ok"
    path = artefact(ctx, "bad")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = check(ctx)
    assert out.status == "failed"
    failed = [c for c in out.checks if c.status == "failed"]
    assert [c.name for c in failed] == ["load:bad@v1"]
    assert "'bad'" in failed[0].detail and "corrupted" in failed[0].detail
    assert "predict:bad@v1" not in {c.name for c in out.checks}  # reported once, under load
    assert {c.name: c.status for c in out.checks}["predict:good@v1"] == "ok"
    # Asked for predictions only, the unloadable model fails under predict.
    only = check(ctx, checks=["predict"])
    assert {c.name: c.status for c in only.checks}["predict:bad@v1"] == "failed"


def test_missing_artefact_fails(ctx: RunContext) -> None:
    train(ctx, "gone")
    artefact(ctx, "gone").unlink()
    out = check(ctx, checks=["load"])
    assert out.status == "failed" and "missing" in out.checks[0].detail and "'gone'" in out.checks[0].detail


def test_only_the_newest_models_are_checked(ctx: RunContext) -> None:
    for i, name in enumerate(["first", "second", "third"]):
        train(ctx, name, seed=i)
    out = check(ctx, max_models=2)
    assert out.models_registered == 3
    assert out.models_checked == ["third@v1", "second@v1"]


def test_bad_input_over_http(client_for: Callable[..., TestClient]) -> None:
    client = client_for(ml_service_health_checker)
    url = "/run/ml_service_health_checker"
    r = client.post(url, json={"checks": ALL, "max_models": 0})
    assert r.status_code == 422 and "max_models" in r.json()["detail"]
    r = client.post(url, json={"checks": ["load", "load"]})
    assert r.status_code == 422 and "checks" in r.json()["detail"]
    r = client.post(url, json={"checks": ALL, "predict_latency": {"warning_ms": 10, "failed_ms": 5}})
    assert r.status_code == 422 and "failed_ms" in r.json()["detail"]
