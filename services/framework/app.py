"""The one app factory that builds every tier service from its component declarations."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import psutil
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.responses import Response

import mlmesh
from mlmesh.errors import MeshError, ServiceUnavailable, document_problems, install_error_handlers
from mlmesh.logs import configure_logging, current_request_id
from mlmesh.security import TOKEN_HEADER, mesh_token, require_token
from mlmesh.settings import TIERS, Settings
from mlmesh.web import MeshMiddleware, RequestMetrics, add_metrics_route, snapshot_loop
from services.framework.context import RunContext
from services.framework.declare import Component, DeclarationError, registered
from services.framework.models import Envelope

__all__ = ["create_app", "load_tier"]

log = logging.getLogger("mlmesh.service")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text}
    for status, text in {
        400: "malformed input or a path outside data/",
        401: "missing or wrong mesh token (call through the gateway)",
        404: "unknown id",
        409: "conflicting state",
        413: "body over the limit",
        422: "invalid input (the detail names the field)",
        503: "dependency not configured or unreachable",
    }.items()
}


def load_tier(tier: str) -> list[Component]:
    """Import every module of the package ``services.<tier>`` and return the components it declares."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}; got {tier!r}")
    package = importlib.import_module(f"services.{tier}")
    for module in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
        importlib.import_module(module.name)
    prefix = f"{package.__name__}."
    found = [c for c in registered().values() if c.fn.__module__.startswith(prefix)]
    misplaced = [c.name for c in found if c.tier != tier]
    if misplaced:
        raise DeclarationError(f"{misplaced} live in services.{tier} but declare another tier")
    return sorted(found, key=lambda c: c.name)


class _PeakMemory:
    """Peak resident memory a run added, from the kernel's high-water mark (``VmHWM``).

    The mark is reset (``/proc/self/clear_refs``) when a run starts with no other run
    active; with concurrent runs a run's figure is the process peak above its starting
    RSS. Unlike tracemalloc this costs about 50 µs a run and sees native allocations
    (BLAS, SQLite) too. Without /proc (not Linux) it falls back to the RSS growth.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._proc = Path("/proc/self")
        self._resettable = (self._proc / "clear_refs").exists()

    def _status_kb(self, key: str) -> int:
        for line in (self._proc / "status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        raise KeyError(key)

    def _rss_kb(self) -> int:
        return self._status_kb("VmRSS:") if self._resettable else psutil.Process().memory_info().rss // 1024

    def start(self) -> int:
        with self._lock:
            if self._active == 0 and self._resettable:
                try:
                    (self._proc / "clear_refs").write_text("5")
                except OSError:
                    self._resettable = False
            self._active += 1
            return self._rss_kb()

    def stop(self, baseline_kb: int) -> float:
        with self._lock:
            self._active -= 1
            peak = self._status_kb("VmHWM:") if self._resettable else self._rss_kb()
        return max(0, peak - baseline_kb) / 1024


def create_app(
    tier: str,
    *,
    settings: Settings | None = None,
    components: Sequence[Component] | None = None,
    announce: bool = True,
) -> FastAPI:
    """Build the FastAPI service for ``tier`` hosting ``components`` (default: the tier's own)."""
    settings = settings or Settings()
    hosted = list(components) if components is not None else load_tier(tier)
    by_name = {c.name: c for c in hosted}
    metrics = RequestMetrics(tier)
    instance_id = uuid.uuid4().hex
    advertise_url = settings.advertise_url or settings.tier_url(tier)
    databases: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    peak_memory = _PeakMemory()
    token = mesh_token(settings)
    token_required = require_token(token, why="components run through the gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(tier, settings.logs_dir)
        for directory in (settings.data_dir, settings.outputs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        tasks = [asyncio.create_task(snapshot_loop(metrics, settings))]
        if announce:
            tasks.append(asyncio.create_task(_announce_loop(tier, advertise_url, instance_id, settings, token)))
        app.state.started = time.monotonic()
        app.state.ready = True
        log.info("%s ready with %d components at %s", tier, len(hosted), advertise_url)
        try:
            yield
        finally:
            app.state.ready = False
            for task in tasks:
                task.cancel()
            for resource in [*databases.values(), *resources.values()]:
                resource.close()

    # The docs page's scripts are served by the process itself: /docs works with no network.
    app = FastAPIOffline(
        title=f"mlmesh {tier}",
        version=mlmesh.__version__,
        description=f"mlmesh {tier} service: {len(hosted)} components, each at POST /run/<name>.",
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.started = time.monotonic()
    app.add_middleware(MeshMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    add_metrics_route(app, metrics)

    @app.get("/health", tags=["mesh"], summary="Liveness of this service")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "tier": tier,
            "version": mlmesh.__version__,
            "instance_id": instance_id,
            "uptime_s": round(time.monotonic() - app.state.started, 3),
            "components": len(hosted),
        }

    @app.get(
        "/ready",
        tags=["mesh"],
        summary="Readiness: 503 while starting or draining",
        responses={503: {"description": "starting or draining"}},
    )
    async def ready() -> dict[str, Any]:
        if not app.state.ready:
            raise ServiceUnavailable(f"{tier} is starting or draining", retry_after=1)
        return {"ready": True, "tier": tier}

    manifest_cache: list[dict[str, Any]] = []

    @app.get("/components", tags=["mesh"], summary="Manifest of the components this service hosts")
    async def manifest() -> dict[str, Any]:
        if not manifest_cache:
            manifest_cache.extend(c.manifest() for c in hosted)
        return {"tier": tier, "instance_id": instance_id, "version": mlmesh.__version__, "components": manifest_cache}

    async def execute(comp: Component, payload: BaseModel) -> Response:
        ctx = RunContext(
            component=comp.name,
            settings=settings,
            request_id=current_request_id(),
            databases=databases,
            resources=resources,
        )
        args = (payload, ctx) if comp.takes_context else (payload,)
        start = time.perf_counter()
        baseline = peak_memory.start()
        try:
            if comp.is_async:
                result = await comp.fn(*args)
            else:
                result = await anyio.to_thread.run_sync(comp.fn, *args)
        finally:
            peak_mb = peak_memory.stop(baseline)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if not isinstance(result, comp.output_model):
            raise MeshError(f"{comp.name} returned {type(result).__name__}, not {comp.output_model.__name__}")
        meta = {
            "execution_time_ms": round(elapsed_ms, 3),
            "peak_memory_mb": round(peak_mb, 3),
            "output_files": ctx.output_files,
            "component_version": comp.version,
            "tier": tier,
            "request_id": ctx.request_id,
        }
        body = (
            b'{"orchestrator_compatible":true,"component":'
            + json.dumps(comp.name).encode()
            + b',"component_result":'
            + result.model_dump_json().encode()
            + b',"local_metadata":'
            + json.dumps(meta).encode()
            + b"}"
        )
        return Response(body, media_type="application/json")

    for comp in hosted:
        _add_run_route(app, comp, execute, token_required)
    app.state.components = by_name
    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_run_route(app: FastAPI, comp: Component, execute: Any, token_required: Any) -> None:
    model = comp.input_model

    async def run(payload: Any) -> Response:
        return await execute(comp, payload)

    # FastAPI reads the body model from the annotation: give it this component's own model.
    run.__annotations__["payload"] = model
    run.__name__ = f"run_{comp.name}"
    app.add_api_route(
        f"/run/{comp.name}",
        run,
        methods=["POST"],
        tags=[comp.tier],
        summary=comp.summary,
        description=comp.description,
        response_model=None,
        dependencies=[Depends(token_required)],
        responses={
            200: {"model": Envelope, "description": "the success envelope"},
            **ERROR_RESPONSES,
            **{status: {"description": text} for status, text in comp.errors},
        },
        openapi_extra={"requestBody": {"content": {"application/json": {"example": comp.example}}}},
    )


async def _announce_loop(tier: str, base_url: str, instance_id: str, settings: Settings, token: str) -> None:
    """Register with the gateway and keep sending heartbeats; either side may start first."""
    interval = max(0.2, settings.gateway.heartbeat_timeout_s / 3)
    body = {"tier": tier, "base_url": base_url, "instance_id": instance_id}
    failures = 0
    async with httpx.AsyncClient(
        base_url=settings.gateway_url, timeout=settings.gateway.connect_timeout_s, headers={TOKEN_HEADER: token}
    ) as client:
        while True:
            try:
                response = await client.post("/services", json=body)
                if response.status_code >= 400:
                    log.warning("gateway refused registration (%s): %s", response.status_code, response.text[:300])
                elif failures:
                    log.info("registered with the gateway at %s", settings.gateway_url)
                failures = 0
            except httpx.HTTPError as exc:
                if failures == 0:
                    log.info("gateway at %s not reachable yet (%s); will keep trying", settings.gateway_url, exc)
                failures += 1
            await asyncio.sleep(interval)
