"""The gateway app factory: registry, discovery, router, docs and metrics in one process."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi_offline import FastAPIOffline
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

import mlmesh
from gateway import pipeline_api
from gateway.dashboard import install_dashboard
from gateway.discovery import Discovery
from gateway.jobs import Jobs, RunStore
from gateway.openapi import install_openapi
from gateway.pipelines import load_pipeline_files
from gateway.registry import Registry
from gateway.router import Router
from mlmesh.errors import InvalidInput, NotFound, install_error_handlers
from mlmesh.logs import configure_logging, current_request_id
from mlmesh.security import mesh_token, require_token
from mlmesh.settings import TIERS, Settings
from mlmesh.web import MeshMiddleware, RequestMetrics, add_metrics_route, snapshot_loop

__all__ = ["create_app"]

log = logging.getLogger("mlmesh.gateway")
COMPONENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
ComponentName = Annotated[str, Path(pattern=COMPONENT_NAME.pattern, description="component name")]
TIMEOUT_HEADER = "x-mlmesh-timeout"


class Announcement(BaseModel):
    """A service registering itself, or its heartbeat."""

    model_config = ConfigDict(extra="forbid")

    tier: str = Field(description=f"one of {list(TIERS)}")
    base_url: str = Field(max_length=300, description="http://host:port of the service (loopback or allow-listed)")
    instance_id: str | None = Field(default=None, max_length=64, description="changes when the service restarts")


def create_app(settings: Settings | None = None, *, poll: bool = True) -> FastAPI:
    """Build the gateway. ``poll=False`` leaves health polling to the caller (tests)."""
    settings = settings or Settings()
    registry = Registry()
    token = mesh_token(settings)
    router = Router(registry, settings.gateway, token=token)
    discovery = Discovery(registry, router, settings)
    metrics = RequestMetrics("gateway")
    upstream = Counter(
        "mlmesh_gateway_upstream_total",
        "Component calls routed, by component, service and upstream status",
        ["component", "service", "status"],
        registry=metrics.registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("gateway", settings.logs_dir)
        discovery.seed()
        tasks = [asyncio.create_task(snapshot_loop(metrics, settings))]
        if poll:
            await discovery.poll_once()  # know who is there before the first request
            tasks.append(asyncio.create_task(discovery.run()))
        store = RunStore(settings.data_dir / "gateway_runs.sqlite")
        jobs = Jobs(store, registry, router, settings)
        files, problems = load_pipeline_files(settings.gateway.pipelines_dir)
        for file, problem in problems.items():
            log.warning("pipeline file %s ignored: %s", file, problem)
        app.state.jobs = jobs
        app.state.catalogue = pipeline_api.Catalogue(files, problems, jobs)
        resumed = jobs.resume_unfinished()
        log.info(
            "gateway ready at %s with %d services, %d pipelines, %d runs resumed",
            settings.gateway_url,
            len(registry.services),
            len(files),
            resumed,
        )
        try:
            yield
        finally:
            await jobs.close()
            for task in tasks:
                task.cancel()
            await router.close()
            store.close()

    # The docs page's scripts are served by the process itself: /docs works with no network.
    app = FastAPIOffline(
        title="mlmesh gateway",
        version=mlmesh.__version__,
        description="Registry, router and docs of the mlmesh services. Every component runs at POST /run/<name>.",
        lifespan=lifespan,
    )
    app.state.registry, app.state.router, app.state.discovery = registry, router, discovery
    app.add_middleware(MeshMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    add_metrics_route(app, metrics)
    install_openapi(app, registry)

    @app.get("/health", tags=["mesh"], summary="The mesh at a glance: every service's status and latency")
    async def health() -> dict[str, Any]:
        now = time.monotonic()
        services = [s.describe(now, router.breaker_state(s)) for s in registry.services.values()]
        up = sum(s["status"] == "up" for s in services)
        status = "ok" if services and up == len(services) else ("down" if up == 0 else "degraded")
        return {
            "status": status,
            "version": mlmesh.__version__,
            "components": len(registry.components()),
            "services": sorted(services, key=lambda s: (s["tier"], s["base_url"])),
        }

    @app.get(
        "/components", tags=["registry"], summary="Every component in the mesh, with tier, location, status and schemas"
    )
    async def components() -> dict[str, Any]:
        return {"components": [c.describe() for c in registry.components().values()]}

    @app.get(
        "/components/{name}", tags=["registry"], summary="One component", responses={404: {"description": "unknown"}}
    )
    async def component(name: ComponentName) -> dict[str, Any]:
        entry = registry.components().get(name)
        if entry is None:
            raise NotFound(f"unknown component {name!r}")
        return entry.describe()

    @app.get("/services", tags=["registry"], summary="Registered services")
    async def services() -> dict[str, Any]:
        return await health()

    members_only = [Depends(require_token(token, why="only mesh services may register or deregister"))]
    member_errors: dict[int | str, dict[str, Any]] = {
        400: {"description": "a host that may not register"},
        401: {"description": "missing or wrong mesh token"},
        404: {"description": "unknown service"},
    }

    @app.post(
        "/services",
        tags=["registry"],
        summary="Register a service or send its heartbeat",
        dependencies=members_only,
        responses={k: v for k, v in member_errors.items() if k != 404},
    )
    async def announce(body: Announcement) -> dict[str, Any]:
        entry = await discovery.announce(body.tier, body.base_url, body.instance_id)
        return {"id": entry.id, "status": entry.status, "components": len(entry.manifest)}

    @app.delete(
        "/services/{service_id:path}",
        tags=["registry"],
        summary="Remove a service from the registry",
        dependencies=members_only,
        responses={k: v for k, v in member_errors.items() if k != 400},
    )
    async def deregister(service_id: str) -> dict[str, Any]:
        if registry.remove(service_id) is None:
            raise NotFound(f"unknown service {service_id!r}")
        await router.forget(service_id)
        return {"id": service_id, "removed": True}

    async def run(request: Request) -> Response:
        # A plain Starlette route: the hot path skips FastAPI's parameter machinery, and the tier
        # validates the body, so the gateway passes the bytes through untouched.
        name = request.path_params["name"]
        if not COMPONENT_NAME.fullmatch(name):
            raise NotFound(f"unknown component {name!r}")
        result = await router.run(
            name, await request.body(), request_id=current_request_id(), timeout_s=_timeout_header(request)
        )
        upstream.labels(name, result.service.id, str(result.status_code)).inc()
        headers = {**result.headers, "x-served-by": result.service.id}
        return Response(result.content, status_code=result.status_code, headers=headers)

    app.router.add_route("/run/{name}", run, methods=["POST"], include_in_schema=False)
    app.include_router(pipeline_api.router)
    install_dashboard(app)
    return app


def _timeout_header(request: Request) -> float | None:
    """The caller's per-call timeout (``X-MLMesh-Timeout`` seconds), if any."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise InvalidInput("X-MLMesh-Timeout", f"must be seconds in (0, 3600]; got {raw[:20]!r}")
    return value
