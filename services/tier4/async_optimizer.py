"""Many async calls under an adaptive (AIMD) concurrency limit, identical calls executed once.

* The limit follows AIMD: each success adds ``increase`` (up to ``max_limit``); a failure, or a success
  slower than ``latency_target_ms``, multiplies it by ``decrease_factor`` (down to ``min_limit``). At
  most ``floor(limit)`` calls are in flight.
* Identical calls (same component and canonical JSON payload, or the same benchmark chunk) share one
  execution for the whole batch (single-flight): the first runs, the rest await its result.
* ``mode="calls"`` — component calls through the gateway (``POST {gateway_url}/run/<component>`` with
  the mesh token). A 5xx, 429 or transport error is a failure for AIMD; a 4xx is reported but is the
  caller's fault, not overload. Every call failing to connect → 503. The sequential comparison (each
  call once more, one at a time) is opt-in because it repeats the calls.
* ``mode="benchmark"`` — a real local workload: each task compresses (zlib) and hashes (SHA-256)
  ``rounds`` times a seeded random chunk in a thread pool (both release the GIL on large buffers). The
  same tasks are also run one by one without dedup; speed-up = sequential time / optimised time, both
  measured in this run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

import httpx
import numpy as np
from pydantic import Field, JsonValue, RootModel, model_validator

from mlmesh.errors import ServiceUnavailable
from mlmesh.security import TOKEN_HEADER, mesh_token
from services.framework import ComponentInput, ComponentOutput, RunContext, Seed, component

__all__ = [
    "AIMDController",
    "AsyncBenchmarkRequest",
    "AsyncCallsRequest",
    "AsyncOptimizerInput",
    "AsyncOptimizerOutput",
    "CallResult",
    "ComponentCall",
    "LimitPoint",
    "SingleFlight",
    "async_optimizer",
]

MAX_TIMELINE = 200
MAX_WORK_KIB = 64 * 1024


class AIMDController:
    """Additive-increase / multiplicative-decrease concurrency limit."""

    def __init__(
        self,
        *,
        initial: float = 1.0,
        min_limit: float = 1.0,
        max_limit: float = 64.0,
        increase: float = 1.0,
        decrease_factor: float = 0.5,
        latency_target_s: float | None = None,
    ) -> None:
        if not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be in (0, 1); got {decrease_factor}")
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 ≤ min_limit ≤ max_limit; got {min_limit}, {max_limit}")
        self.min_limit, self.max_limit = float(min_limit), float(max_limit)
        self.limit = min(max(float(initial), self.min_limit), self.max_limit)
        self.increase, self.decrease_factor = increase, decrease_factor
        self.latency_target_s = latency_target_s
        self.increases = self.decreases = 0

    @property
    def window(self) -> int:
        """Calls allowed in flight now."""
        return max(int(self.min_limit), math.floor(self.limit))

    def on_success(self, latency_s: float = 0.0) -> None:
        if self.latency_target_s is not None and latency_s > self.latency_target_s:
            self.on_failure()
            return
        self.limit = min(self.max_limit, self.limit + self.increase)
        self.increases += 1

    def on_failure(self) -> None:
        self.limit = max(self.min_limit, self.limit * self.decrease_factor)
        self.decreases += 1


class SingleFlight:
    """Identical keys share one execution: the first caller runs it, later callers await its result."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self.deduplicated = 0

    async def run(self, key: str, factory: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """``(result, shared)``; ``shared`` is True when another caller's execution was reused."""
        existing = self._flights.get(key)
        if existing is not None:
            self.deduplicated += 1
            return await asyncio.shield(existing), True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            result = await factory()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unshared failure does not warn as never retrieved
            raise
        future.set_result(result)
        return result, False

    @property
    def executed(self) -> int:
        return len(self._flights)


class _Limiter:
    """At most ``controller.window`` holders at once; the window moves with the controller."""

    def __init__(self, controller: AIMDController) -> None:
        self.controller = controller
        self.in_flight = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.controller.window)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()


class _AIMDFields(ComponentInput):
    initial_limit: int = Field(1, ge=1, le=64, description="concurrency limit at the start")
    min_limit: int = Field(1, ge=1, le=64)
    max_limit: int = Field(8, ge=1, le=64)
    increase: float = Field(1.0, gt=0, le=16, description="added to the limit per success")
    decrease_factor: float = Field(0.5, gt=0, lt=1, description="limit multiplier on failure or slow success")
    latency_target_ms: float | None = Field(None, gt=0, le=600_000, description="slower successes count as overload")


class AsyncBenchmarkRequest(_AIMDFields):
    """Hash-and-compress tasks on seeded random chunks, optimised vs one by one."""

    mode: Literal["benchmark"]
    tasks: int = Field(48, ge=1, le=400, description="tasks to run")
    distinct: int = Field(24, ge=1, le=400, description="distinct chunks the tasks draw from (others are duplicates)")
    chunk_kib: int = Field(64, ge=1, le=1024, description="chunk size in KiB")
    rounds: int = Field(2, ge=1, le=20, description="compress+hash rounds per task")
    seed: Seed = 0

    @model_validator(mode="after")
    def _work_bound(self) -> AsyncBenchmarkRequest:
        # Bounded memory (the distinct chunks) and bounded time (every task runs twice: sequential + optimised).
        memory, work = self.distinct * self.chunk_kib, self.tasks * self.chunk_kib * self.rounds
        if memory > MAX_WORK_KIB:
            raise ValueError(f"distinct × chunk_kib must be at most {MAX_WORK_KIB}; got {memory}")
        if work > MAX_WORK_KIB:
            raise ValueError(f"tasks × chunk_kib × rounds must be at most {MAX_WORK_KIB}; got {work}")
        return self


class ComponentCall(ComponentInput):
    component: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="component name")
    payload: dict[str, JsonValue] = Field(default_factory=dict, description="its request body")


class AsyncCallsRequest(_AIMDFields):
    """Component calls through the gateway."""

    mode: Literal["calls"]
    calls: list[ComponentCall] = Field(min_length=1, max_length=200)
    timeout_s: float = Field(30.0, gt=0, le=300, description="per-call timeout")
    measure_sequential: bool = Field(False, description="also run every call one by one to measure the speed-up")


class AsyncOptimizerInput(RootModel[Annotated[AsyncBenchmarkRequest | AsyncCallsRequest, Field(discriminator="mode")]]):
    """A benchmark or a batch of gateway calls, chosen by ``mode``."""


class LimitPoint(ComponentOutput):
    t_s: float
    limit: float


class CallResult(ComponentOutput):
    index: int
    component: str
    status: int | None = Field(None, description="HTTP status; None on a transport error")
    ok: bool
    latency_ms: float
    shared: bool = Field(description="result reused from an identical call in flight")
    error: str | None = None
    component_result: JsonValue = None


class AsyncOptimizerOutput(ComponentOutput):
    mode: str
    tasks: int
    executed: int = Field(description="executions actually run (after dedup)")
    deduplicated: int = Field(description="calls served by an identical call's execution")
    failures: int
    optimised_s: float
    sequential_s: float | None = Field(None, description="the same work one at a time, without dedup")
    speed_up: float | None = Field(None, description="sequential_s / optimised_s, measured in this run")
    throughput_per_s: float = Field(description="calls completed per second, optimised")
    peak_in_flight: int
    final_limit: float
    limit_increases: int
    limit_decreases: int
    limit_timeline: list[LimitPoint] = Field(description=f"limit after each change (at most {MAX_TIMELINE} points)")
    results: list[CallResult] | None = None


def _controller(req: _AIMDFields) -> AIMDController:
    target = req.latency_target_ms / 1e3 if req.latency_target_ms is not None else None
    return AIMDController(
        initial=req.initial_limit,
        min_limit=req.min_limit,
        max_limit=max(req.max_limit, req.min_limit),
        increase=req.increase,
        decrease_factor=req.decrease_factor,
        latency_target_s=target,
    )


def _thin(points: list[LimitPoint]) -> list[LimitPoint]:
    if len(points) <= MAX_TIMELINE:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, MAX_TIMELINE).round().astype(int))
    return [points[i] for i in keep]


class _Run:
    """One optimised batch: limiter, single-flight and the limit's timeline."""

    def __init__(self, controller: AIMDController) -> None:
        self.controller = controller
        self.limiter = _Limiter(controller)
        self.flights = SingleFlight()
        self.start = time.perf_counter()
        self.timeline = [LimitPoint(t_s=0.0, limit=controller.limit)]

    def record(self, ok: bool, latency_s: float) -> None:
        before = self.controller.limit
        if ok:
            self.controller.on_success(latency_s)
        else:
            self.controller.on_failure()
        if self.controller.limit != before:
            self.timeline.append(LimitPoint(t_s=time.perf_counter() - self.start, limit=self.controller.limit))


def _work(chunk: bytes, rounds: int) -> str:
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(zlib.compress(chunk + digest, 6)).digest()
    return digest.hex()


async def _benchmark(req: AsyncBenchmarkRequest) -> AsyncOptimizerOutput:
    rng = np.random.default_rng(req.seed)
    chunks = [rng.bytes(req.chunk_kib * 1024) for _ in range(req.distinct)]
    picks = rng.integers(0, req.distinct, req.tasks).tolist()
    loop = asyncio.get_running_loop()

    t0 = time.perf_counter()
    expected = [_work(chunks[i], req.rounds) for i in picks]
    sequential = time.perf_counter() - t0

    run = _Run(_controller(req))
    with ThreadPoolExecutor(max_workers=max(req.max_limit, req.min_limit)) as pool:

        async def task(i: int) -> str:
            async with run.limiter:
                started = time.perf_counter()
                digest = await loop.run_in_executor(pool, _work, chunks[i], req.rounds)
                run.record(True, time.perf_counter() - started)
                return digest

        t0 = time.perf_counter()
        got = await asyncio.gather(*(run.flights.run(str(i), lambda i=i: task(i)) for i in picks))
        optimised = time.perf_counter() - t0
    # The optimised path must compute exactly what the sequential one did.
    assert [digest for digest, _ in got] == expected
    return _output(req, run, "benchmark", req.tasks, 0, optimised, sequential, None)


def _output(
    req: _AIMDFields,
    run: _Run,
    mode: str,
    tasks: int,
    failures: int,
    optimised: float,
    sequential: float | None,
    results: list[CallResult] | None,
) -> AsyncOptimizerOutput:
    return AsyncOptimizerOutput(
        mode=mode,
        tasks=tasks,
        executed=run.flights.executed,
        deduplicated=run.flights.deduplicated,
        failures=failures,
        optimised_s=optimised,
        sequential_s=sequential,
        speed_up=sequential / optimised if sequential is not None and optimised > 0 else None,
        throughput_per_s=tasks / optimised if optimised > 0 else 0.0,
        peak_in_flight=run.limiter.peak,
        final_limit=run.controller.limit,
        limit_increases=run.controller.increases,
        limit_decreases=run.controller.decreases,
        limit_timeline=_thin(run.timeline),
        results=results,
    )


async def _calls(req: AsyncCallsRequest, base_url: str, token: str) -> AsyncOptimizerOutput:
    headers = {TOKEN_HEADER: token}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=req.timeout_s) as client:

        async def post(call: ComponentCall) -> tuple[int | None, float, str | None, Any]:
            started = time.perf_counter()
            try:
                r = await client.post(f"/run/{call.component}", json=call.payload)
            except httpx.HTTPError as exc:
                return None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}", None
            body = r.json().get("component_result") if r.is_success else None
            error = None if r.is_success else r.text[:500]
            return r.status_code, time.perf_counter() - started, error, body

        sequential = None
        if req.measure_sequential:
            t0 = time.perf_counter()
            for call in req.calls:
                await post(call)
            sequential = time.perf_counter() - t0

        run = _Run(_controller(req))

        async def limited(call: ComponentCall) -> tuple[int | None, float, str | None, Any]:
            async with run.limiter:
                status, latency, error, body = await post(call)
                overload = status is None or status >= 500 or status == 429
                run.record(not overload, latency)
                return status, latency, error, body

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                run.flights.run(f"{c.component}\n{json.dumps(c.payload, sort_keys=True)}", lambda c=c: limited(c))
                for c in req.calls
            )
        )
        optimised = time.perf_counter() - t0
    results = [
        CallResult(
            index=i,
            component=c.component,
            status=status,
            ok=status is not None and 200 <= status < 300,
            latency_ms=latency * 1e3,
            shared=shared,
            error=error,
            component_result=body,
        )
        for i, (c, ((status, latency, error, body), shared)) in enumerate(zip(req.calls, outcomes, strict=True))
    ]
    if all(r.status is None for r in results):
        raise ServiceUnavailable(f"gateway at {base_url} unreachable: {results[0].error}", retry_after=5)
    failures = sum(not r.ok for r in results)
    return _output(req, run, "calls", len(req.calls), failures, optimised, sequential, results)


@component(
    "AsyncOptimizer",
    tier="tier4",
    capabilities=["adaptive_concurrency", "aimd", "request_deduplication"],
    example={"mode": "benchmark", "tasks": 24, "distinct": 12, "chunk_kib": 32, "max_limit": 4},
    examples=[{"mode": "calls", "calls": [{"component": "input_sanitizer", "payload": {"text": "hello"}}]}],
    deterministic=False,
    errors={503: "the gateway could not be reached for any call"},
)
def async_optimizer(request: AsyncOptimizerInput, ctx: RunContext) -> AsyncOptimizerOutput:
    """Run many async calls under an AIMD concurrency limit with in-flight dedup; report the measured speed-up.

    ``benchmark`` measures a real hashing/compression workload; ``calls`` sends component calls through
    the gateway.
    """
    req = request.root
    if isinstance(req, AsyncBenchmarkRequest):
        return asyncio.run(_benchmark(req))
    return asyncio.run(_calls(req, ctx.settings.gateway_url, mesh_token(ctx.settings)))
