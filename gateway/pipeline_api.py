"""HTTP surface of pipelines and runs: ``/pipelines`` and ``/runs``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from gateway.jobs import Jobs
from gateway.pipelines import PipelineSpec, dependencies, validate
from gateway.registry import Registry
from mlmesh.errors import Conflict, MeshError, NotFound

__all__ = ["Catalogue", "router"]

PipelineName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="pipeline name")]
RunId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="run id")]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

router = APIRouter(tags=["pipelines"])


class RunRequest(BaseModel):
    """Parameters for a run; those left out take the pipeline's defaults."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)


class Catalogue:
    """The pipelines the gateway knows: from ``configs/pipelines/*.yaml`` and from ``POST /pipelines``."""

    def __init__(self, files: dict[str, PipelineSpec], file_problems: dict[str, str], jobs: Jobs) -> None:
        self.files = files
        self.file_problems = file_problems
        self.jobs = jobs

    def all(self) -> dict[str, tuple[PipelineSpec, str]]:
        defined = {name: (spec, "api") for name, spec in self.jobs.store.pipelines().items()}
        return {**defined, **{name: (spec, "file") for name, spec in self.files.items()}}

    def get(self, name: str) -> tuple[PipelineSpec, str]:
        found = self.all().get(name)
        if found is None:
            raise NotFound(f"unknown pipeline {name!r}; GET /pipelines lists them")
        return found

    def add(self, spec: PipelineSpec, registry: Registry) -> None:
        if spec.name in self.files:
            raise Conflict(f"pipeline {spec.name!r} is defined by a file in the pipelines directory; rename yours")
        validate(spec, registry.components())
        self.jobs.store.save_pipeline(spec)


def _describe(spec: PipelineSpec, source: str, registry: Registry) -> dict[str, Any]:
    try:
        validate(spec, registry.components())
        problem = None
    except MeshError as exc:
        problem = exc.detail
    deps = dependencies(spec)
    return {
        "name": spec.name,
        "description": spec.description,
        "source": source,
        "params": spec.params,
        "steps": [{"id": s.id, "component": s.component, "depends_on": sorted(deps[s.id])} for s in spec.steps],
        "valid": problem is None,
        "problem": problem,
    }


def _state(request: Request) -> tuple[Catalogue, Jobs, Registry]:
    state = request.app.state
    return state.catalogue, state.jobs, state.registry


@router.get("/pipelines", summary="Every pipeline, with its steps and whether it validates against the registry now")
async def list_pipelines(request: Request) -> dict[str, Any]:
    catalogue, _, registry = _state(request)
    pipelines = [_describe(spec, source, registry) for spec, source in catalogue.all().values()]
    return {"pipelines": sorted(pipelines, key=lambda p: p["name"]), "invalid_files": catalogue.file_problems}


@router.get("/pipelines/{name}", summary="One pipeline's spec", responses={404: {"description": "unknown pipeline"}})
async def get_pipeline(request: Request, name: PipelineName) -> dict[str, Any]:
    catalogue, _, registry = _state(request)
    spec, source = catalogue.get(name)
    return {**_describe(spec, source, registry), "spec": spec.model_dump()}


@router.post(
    "/pipelines",
    status_code=201,
    summary="Define (or replace) a pipeline; validated against the registry's schemas",
    responses={409: {"description": "a file-defined pipeline has that name"}},
)
async def define_pipeline(request: Request, spec: PipelineSpec) -> dict[str, Any]:
    catalogue, _, registry = _state(request)
    catalogue.add(spec, registry)
    return _describe(spec, "api", registry)


@router.post(
    "/pipelines/{name}/runs",
    status_code=202,
    summary="Start a run; answers at once with its id (GET /runs/{id} follows it)",
    responses={404: {"description": "unknown pipeline"}},
)
async def start_run(
    request: Request, name: PipelineName, body: Annotated[RunRequest | None, Body()] = None
) -> JSONResponse:
    catalogue, jobs, _ = _state(request)
    spec, _ = catalogue.get(name)
    run_id = await jobs.submit(spec, (body or RunRequest()).params)
    location = f"/runs/{run_id}"
    return JSONResponse(
        {"id": run_id, "pipeline": name, "status": "queued", "url": location},
        status_code=202,
        headers={"location": location},
    )


@router.get("/runs", summary="Run history, newest first, with each step's state")
async def list_runs(
    request: Request,
    status: Annotated[RunStatus | None, Query()] = None,
    pipeline: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    _, jobs, _ = _state(request)
    runs, total = jobs.store.list(status=status, pipeline=pipeline, limit=limit, offset=offset)
    return {"runs": runs, "total": total, "counts": jobs.store.counts()}


@router.get(
    "/runs/{run_id}",
    summary="One run: each step's state, timings, result and error",
    responses={404: {"description": "unknown run"}},
)
async def get_run(request: Request, run_id: RunId) -> dict[str, Any]:
    _, jobs, _ = _state(request)
    run = jobs.store.describe(run_id)
    if run is None:
        raise NotFound(f"unknown run {run_id!r}")
    return run


@router.post(
    "/runs/{run_id}/cancel",
    summary="Cancel a queued or running run",
    responses={404: {"description": "unknown run"}, 409: {"description": "the run already finished"}},
)
async def cancel_run(request: Request, run_id: RunId) -> dict[str, Any]:
    _, jobs, _ = _state(request)
    return await jobs.cancel(run_id)
