"""ML service health: the model registry is readable, its models load, and they predict in time.

* ``registry`` — lists every stored version from the registry index (``data/models/registry.sqlite``, see
  :mod:`services.models.registry`); failed if the index cannot be read. Value: models registered; the
  listing's latency is graded against ``registry_latency``.
* ``load`` — the latest version of each of the ``max_models`` most recently trained models is loaded the
  way the model service loads it: the artefact's SHA-256 is checked against the index before its bytes
  are deserialised with skops. A missing or corrupted artefact is failed, naming the model and version.
* ``predict`` — each loaded model predicts one row: the training split's feature means when the model
  recorded them, else zeros; failed if the prediction is not finite, latency graded against
  ``predict_latency``.

An empty registry is healthy (nothing to load): the registry check says so with a value of 0.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from mlmesh.errors import MeshError
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import CheckResult, LatencyThresholds, Status, grade, latency_field, worst
from services.models.registry import ModelRecord, ModelRegistry

__all__ = [
    "ML_SERVICE_CHECKS",
    "MLServiceCheck",
    "MLServiceHealthCheckerInput",
    "MLServiceHealthCheckerOutput",
    "ml_service_health_checker",
]

MLServiceCheck = Literal["registry", "load", "predict"]
ML_SERVICE_CHECKS: tuple[str, ...] = get_args(MLServiceCheck)


class MLServiceHealthCheckerInput(ComponentInput):
    """Which checks to run, on how many models, and the latency thresholds."""

    checks: list[MLServiceCheck] = Field(
        min_length=1, max_length=len(ML_SERVICE_CHECKS), description=f"any of {list(ML_SERVICE_CHECKS)}"
    )
    max_models: int = Field(5, ge=1, le=100, description="check the latest version of this many newest models")
    registry_latency: LatencyThresholds = latency_field(100.0, 1000.0)
    load_latency: LatencyThresholds = latency_field(2000.0, 10_000.0)
    predict_latency: LatencyThresholds = latency_field(50.0, 500.0)

    @model_validator(mode="after")
    def _unique(self) -> MLServiceHealthCheckerInput:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks: each check may be named once")
        return self


class MLServiceHealthCheckerOutput(ComponentOutput):
    status: Status
    checks: list[CheckResult]
    models_registered: int | None = Field(None, description="distinct model names (None: registry unreadable)")
    models_checked: list[str] = Field(description="name@version of each model loaded or predicted")
    message: str


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _timed(name: str, elapsed: float, limits: LatencyThresholds, what: str) -> CheckResult:
    status, threshold = grade(elapsed, limits.warning_ms, limits.failed_ms)
    return CheckResult(
        name=name,
        status=status,
        latency_ms=elapsed,
        value=elapsed,
        threshold=threshold,
        unit="ms",
        detail=f"{what} in {elapsed:.2f} ms ({'≥' if status != 'ok' else '<'} {threshold:g} ms)",
    )


def _probe_row(record: ModelRecord) -> np.ndarray:
    """One feature row: the training means when recorded (a typical input), else zeros."""
    n_features = len(record.feature_names)
    means = record.meta.get("feature_means")
    if isinstance(means, list) and len(means) == n_features:
        return np.asarray(means, dtype=np.float64)[None, :]
    return np.zeros((1, n_features))


def _latest(records: list[ModelRecord], max_models: int) -> list[ModelRecord]:
    """The latest version of each model, newest models first, at most ``max_models``."""
    latest: dict[str, ModelRecord] = {}
    for record in records:
        if record.name not in latest or record.version > latest[record.name].version:
            latest[record.name] = record
    return sorted(latest.values(), key=lambda r: (-r.created_at, r.name))[:max_models]


@component(
    "MLServiceHealthChecker",
    tier="tier4",
    capabilities=["health_checks", "model_registry_health"],
    example={"checks": ["registry", "load", "predict"], "max_models": 3},
    deterministic=False,  # latencies
)
def ml_service_health_checker(request: MLServiceHealthCheckerInput, ctx: RunContext) -> MLServiceHealthCheckerOutput:
    """ML model service health: registry readable, models loadable (hash-checked), prediction latency.

    Reads the registry index, loads the latest version of the ``max_models`` newest models with the SHA-256
    check (a corrupted or missing artefact fails, naming the model), and times one prediction of each on
    its training feature means against the latency threshold.
    """
    checks: list[CheckResult] = []
    wanted = set(request.checks)
    start = time.perf_counter()
    try:
        registry = ModelRegistry.for_context(ctx)
        records = registry.versions()
    except (sqlite3.Error, OSError) as exc:
        checks.append(
            CheckResult(
                name="registry",
                status="failed",
                latency_ms=_ms(start),
                detail=f"model registry index unreadable ({type(exc).__name__}: {exc})",
            )
        )
        return MLServiceHealthCheckerOutput(
            status="failed", checks=checks, models_checked=[], message=f"failed: {checks[0].detail}"
        )
    elapsed = _ms(start)
    names = {r.name for r in records}
    if "registry" in wanted:
        what = f"{len(names)} models ({len(records)} versions) listed from the registry index"
        checks.append(_timed("registry", elapsed, request.registry_latency, what))
    checked: list[str] = []
    if wanted & {"load", "predict"}:
        for record in _latest(records, request.max_models):
            label = f"{record.name}@v{record.version}"
            checked.append(label)
            start = time.perf_counter()
            try:
                model = registry.load(record)
            except MeshError as exc:
                failed = CheckResult(
                    name=f"load:{label}",
                    status="failed",
                    latency_ms=_ms(start),
                    detail=f"model {record.name!r} version {record.version} not loadable: {exc.detail}",
                )
                # Reported once, under the load check when it was asked for, else under predict.
                checks.append(failed if "load" in wanted else failed.model_copy(update={"name": f"predict:{label}"}))
                continue
            if "load" in wanted:
                checks.append(
                    _timed(f"load:{label}", _ms(start), request.load_latency, "artefact hash-checked and loaded")
                )
            if "predict" in wanted:
                row = _probe_row(record)
                start = time.perf_counter()
                prediction = np.asarray(model.predict(row), dtype=np.float64)
                elapsed = _ms(start)
                if not np.isfinite(prediction).all():
                    checks.append(
                        CheckResult(
                            name=f"predict:{label}",
                            status="failed",
                            latency_ms=elapsed,
                            value=elapsed,
                            unit="ms",
                            detail=f"model {record.name!r} version {record.version} predicted a non-finite value",
                        )
                    )
                else:
                    checks.append(_timed(f"predict:{label}", elapsed, request.predict_latency, "one row predicted"))
    status = worst(c.status for c in checks) if checks else "ok"
    bad = [f"{c.name}: {c.detail}" for c in checks if c.status in ("warning", "failed")]
    return MLServiceHealthCheckerOutput(
        status=status,
        checks=checks,
        models_registered=len(names),
        models_checked=checked,
        message=f"{status}: " + ("; ".join(bad) if bad else f"{len(names)} models registered, {len(checked)} checked"),
    )
