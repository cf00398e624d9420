"""What every mesh process shares on the HTTP side: request ids, the body limit,
request metrics, the request log line and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.responses import PlainTextResponse, Response

from mlmesh.errors import problem_response
from mlmesh.logs import new_request_id, set_request_id, valid_request_id
from mlmesh.settings import Settings

__all__ = ["MeshMiddleware", "RequestMetrics", "add_metrics_route", "snapshot_loop", "snapshot_metrics"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("mlmesh.access")
REQUEST_ID_HEADER = b"x-request-id"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestMetrics:
    """Prometheus request counters of one process, in a registry of its own."""

    def __init__(self, process: str) -> None:
        self.registry = CollectorRegistry()
        self.process = process
        # Resident memory, CPU seconds and open files of this process (process_* series), for the monitors.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "mlmesh_http_requests_total", "HTTP requests handled", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mlmesh_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


def _route_label(path: str) -> str:
    # Bounded label cardinality: /run/<component> keeps the component, ids are folded.
    parts = path.strip("/").split("/")
    if parts[0] == "run" and len(parts) == 2:
        return path
    if parts[0] in ("runs", "services", "components", "pipelines") and len(parts) > 1:
        return f"/{parts[0]}/{{id}}" + ("/" + "/".join(parts[2:]) if len(parts) > 2 else "")
    return path if len(parts) <= 2 else "/" + "/".join(parts[:2]) + "/..."


class MeshMiddleware:
    """Pure ASGI middleware: request id in and out, body size limit, metrics, one log line."""

    def __init__(self, app: ASGIApp, *, metrics: RequestMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = valid_request_id(headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")) or new_request_id()
        set_request_id(request_id)
        start = time.perf_counter()
        status_holder = [500]
        limit = self.max_body_bytes

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, request_id, status_holder)
            self._observe(scope, status_holder[0], start)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send, request_id, status_holder)
        finally:
            self._observe(scope, status_holder[0], start)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, request_id: str, holder: list[int]) -> None:
        holder[0] = 413
        response = problem_response(413, f"request body is over the limit of {self.max_body_bytes} bytes")
        response.headers["x-request-id"] = request_id
        await response(scope, receive, send)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        route = _route_label(scope["path"])
        method = scope["method"]
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route, method).observe(elapsed)
        access_log.info(
            "%s %s %s",
            method,
            scope["path"],
            status,
            extra={"method": method, "path": scope["path"], "status": status, "duration_ms": round(elapsed * 1e3, 3)},
        )


class _BodyTooLarge(Exception):
    pass


def add_metrics_route(app: FastAPI, metrics: RequestMetrics) -> None:
    """``GET /metrics`` in the Prometheus text format."""

    @app.get(
        "/metrics",
        tags=["mesh"],
        summary="Prometheus metrics of this process",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def snapshot_metrics(metrics: RequestMetrics, metrics_dir: Path) -> Path:
    """Write the current metric values as one JSON line to ``metrics/<process>.jsonl``."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    samples = [
        {"name": s.name, "labels": s.labels, "value": s.value}
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    path = metrics_dir / f"{metrics.process}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": time.time(), "process": metrics.process, "samples": samples}) + "\n")
    return path


async def snapshot_loop(metrics: RequestMetrics, settings: Settings) -> None:
    """Every ``metrics_snapshot_s``, append a snapshot to ``metrics/<process>.jsonl``."""
    while True:
        await asyncio.sleep(settings.metrics_snapshot_s)
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(snapshot_metrics, metrics, settings.metrics_dir)
