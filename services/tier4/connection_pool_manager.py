"""The service's connection pools: live statistics, measured waits and sizing by Little's law.

* ``status`` — works without a database: the PostgreSQL pool's ``get_stats()`` if the service has opened
  one, and the HTTP client pools (httpx) the service holds, if any.
* ``stats`` — opens the service's PostgreSQL pool if needed and reports ``get_stats()``.
* ``probe`` — checks one connection out of the service pool (``SELECT 1``) and reports the wait. When the
  pool is exhausted the request waits at most the pool timeout and then answers **503**.
* ``exercise`` — ``checkouts`` concurrent checkouts over ``concurrency`` threads, each holding its connection
  for ``hold_ms`` on the server (``pg_sleep``); a seeded fraction ``failure_rate`` raises inside the
  ``with pool.connection()`` block. Reports wait percentiles, timeouts, injected failures and whether every
  connection came back (``pool_available == pool_size`` and ``requests_waiting == 0``).
* ``advise`` — Little's law: connections in use ``L = λ · W`` for an arrival rate ``λ`` (requests/s) and mean
  hold time ``W`` (s); recommended ``max_size = ceil(L · (1 + headroom))``. Missing inputs are measured on
  the live pool over ``sample_s`` seconds: ``λ = Δrequests_num / Δt`` and ``W = Δusage_ms / Δrequests_num``.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

import httpx
import numpy as np
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import Field, RootModel

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, Seed, component
from services.infra import pg_pool, postgres_errors

__all__ = [
    "ConnectionPoolManagerInput",
    "ConnectionPoolManagerOutput",
    "ExerciseResult",
    "PoolStats",
    "SizingAdvice",
    "connection_pool_manager",
    "littles_law",
]


class PoolStatusOp(ComponentInput):
    """Pools the service holds now (works without a database)."""

    operation: Literal["status"]


class PoolStatsOp(ComponentInput):
    """Statistics of the service's PostgreSQL pool (opened if needed)."""

    operation: Literal["stats"]


class PoolProbeOp(ComponentInput):
    """One checkout of the service pool; 503 after the pool timeout when it is exhausted."""

    operation: Literal["probe"]


class PoolExerciseOp(ComponentInput):
    """Concurrent checkouts of the service pool, with injected failures inside the checkout block."""

    operation: Literal["exercise"]
    checkouts: int = Field(100, ge=1, le=20_000, description="connections to check out in total")
    concurrency: int = Field(4, ge=1, le=64, description="threads checking out at once")
    hold_ms: float = Field(0.0, ge=0, le=1000, description="server-side hold per checkout (pg_sleep); 0: SELECT 1")
    failure_rate: float = Field(0.0, ge=0, le=1, description="fraction of checkouts that raise inside the block")
    checkout_timeout_s: float | None = Field(
        None, gt=0, le=30, description="wait at most this for a connection (default: the pool's timeout)"
    )
    seed: Seed = 0


class PoolAdviseOp(ComponentInput):
    """Pool size by Little's law from given or measured arrival rate and hold time."""

    operation: Literal["advise"]
    arrival_rate_per_s: float | None = Field(None, gt=0, le=1e7, description="λ; measured when omitted")
    mean_hold_ms: float | None = Field(None, gt=0, le=3.6e6, description="W; measured when omitted")
    headroom: float = Field(0.3, ge=0, le=10, description="extra capacity over L for bursts")
    sample_s: float = Field(2.0, gt=0, le=60, description="measuring window when λ or W is omitted")


class ConnectionPoolManagerInput(
    RootModel[
        Annotated[
            PoolStatusOp | PoolStatsOp | PoolProbeOp | PoolExerciseOp | PoolAdviseOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One pool-manager operation."""


class PoolStats(ComponentOutput):
    """psycopg_pool ``get_stats()`` (counters absent there are 0)."""

    name: str
    pool_min: int
    pool_max: int
    pool_size: int
    pool_available: int
    requests_waiting: int
    requests_num: int = 0
    requests_queued: int = 0
    requests_wait_ms: int = 0
    requests_errors: int = 0
    usage_ms: int = 0
    returns_bad: int = 0
    connections_num: int = 0
    connections_ms: int = 0
    connections_errors: int = 0
    connections_lost: int = 0
    timeout_s: float


class HttpPool(ComponentOutput):
    resource: str
    connections: int
    idle: int


class ExerciseResult(ComponentOutput):
    checkouts: int
    completed: int = Field(description="checkouts that ran their statement")
    injected_failures: int
    timed_out: int
    wait_ms_mean: float
    wait_ms_p50: float
    wait_ms_p95: float
    wait_ms_max: float
    elapsed_s: float
    all_returned: bool = Field(description="pool_available == pool_size and requests_waiting == 0 afterwards")


class SizingAdvice(ComponentOutput):
    arrival_rate_per_s: float
    mean_hold_ms: float
    measured: list[str] = Field(description="which of λ and W were measured on the live pool")
    concurrency_l: float = Field(description="L = λ · W: connections busy on average")
    headroom: float
    recommended_max_size: int = Field(description="ceil(L · (1 + headroom)), at least 1")
    current_max_size: int | None


class ConnectionPoolManagerOutput(ComponentOutput):
    operation: str
    configured: bool
    postgres: PoolStats | None = None
    postgres_after: PoolStats | None = Field(None, description="exercise: statistics after the run")
    http_pools: list[HttpPool] = Field(default_factory=list)
    wait_ms: float | None = Field(None, description="probe: time to obtain the connection")
    exercise: ExerciseResult | None = None
    advice: SizingAdvice | None = None
    message: str | None = None


def _stats(pool: ConnectionPool) -> PoolStats:
    raw: dict[str, Any] = pool.get_stats()
    known = {k: int(v) for k, v in raw.items() if k in PoolStats.model_fields}
    return PoolStats(name=pool.name, timeout_s=float(pool.timeout), **known)


def _existing_pool(ctx: RunContext) -> ConnectionPool | None:
    pools = [r for r in ctx.resources.values() if isinstance(r, ConnectionPool)]
    return pools[0] if pools else None


def _http_pools(ctx: RunContext) -> list[HttpPool]:
    found = []
    for key, resource in ctx.resources.items():
        if isinstance(resource, httpx.Client):
            # httpcore's pool lists its connections publicly; httpx keeps the pool on its transport.
            pool = getattr(getattr(resource, "_transport", None), "_pool", None)
            conns = list(getattr(pool, "connections", []))
            found.append(HttpPool(resource=key, connections=len(conns), idle=sum(c.is_idle() for c in conns)))
    return found


def littles_law(rate_per_s: float, hold_ms: float, headroom: float) -> tuple[float, int]:
    """``L = λ·W`` and the pool size ``ceil(L·(1+headroom))`` (at least 1)."""
    busy = rate_per_s * hold_ms / 1000.0
    return busy, max(1, math.ceil(busy * (1 + headroom) - 1e-9))


def _exercise(pool: ConnectionPool, op: PoolExerciseOp) -> ExerciseResult:
    fails = np.random.default_rng(op.seed).random(op.checkouts) < op.failure_rate
    waits = np.full(op.checkouts, np.nan)
    outcome = np.zeros(op.checkouts, dtype=np.int8)  # 1 ran, 2 injected failure, 3 timed out
    timeout = op.checkout_timeout_s if op.checkout_timeout_s is not None else pool.timeout
    next_index = iter(range(op.checkouts))
    lock = threading.Lock()

    class _Injected(Exception):
        pass

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            asked = time.perf_counter()
            try:
                with pool.connection(timeout=timeout) as conn:
                    waits[i] = (time.perf_counter() - asked) * 1000
                    if fails[i]:
                        raise _Injected
                    if op.hold_ms > 0:
                        conn.execute("SELECT pg_sleep(%s)", (op.hold_ms / 1000,))
                    else:
                        conn.execute("SELECT 1")
                    outcome[i] = 1
            except _Injected:
                outcome[i] = 2
            except PoolTimeout:
                waits[i] = (time.perf_counter() - asked) * 1000
                outcome[i] = 3

    start = time.perf_counter()
    with ThreadPoolExecutor(op.concurrency) as ex:
        for future in [ex.submit(worker) for _ in range(op.concurrency)]:
            future.result()
    elapsed = time.perf_counter() - start
    after = pool.get_stats()
    return ExerciseResult(
        checkouts=op.checkouts,
        completed=int((outcome == 1).sum()),
        injected_failures=int((outcome == 2).sum()),
        timed_out=int((outcome == 3).sum()),
        wait_ms_mean=float(waits.mean()),
        wait_ms_p50=float(np.percentile(waits, 50)),
        wait_ms_p95=float(np.percentile(waits, 95)),
        wait_ms_max=float(waits.max()),
        elapsed_s=elapsed,
        all_returned=after["pool_available"] == after["pool_size"] and after["requests_waiting"] == 0,
    )


def _advise(ctx: RunContext, op: PoolAdviseOp) -> SizingAdvice:
    rate, hold, measured = op.arrival_rate_per_s, op.mean_hold_ms, []
    pool: ConnectionPool | None = None
    if rate is None or hold is None:
        pool = pg_pool(ctx)
        first, t0 = pool.get_stats(), time.monotonic()
        time.sleep(op.sample_s)  # the measuring window over live traffic
        second, t1 = pool.get_stats(), time.monotonic()
        served = second.get("requests_num", 0) - first.get("requests_num", 0)
        if served <= 0:
            raise InvalidInput(
                "arrival_rate_per_s",
                f"no checkouts of the pool in the {op.sample_s:g}s window: give arrival_rate_per_s and mean_hold_ms",
            )
        if rate is None:
            rate, measured = served / (t1 - t0), [*measured, "arrival_rate_per_s"]
        if hold is None:
            used = second.get("usage_ms", 0) - first.get("usage_ms", 0)
            hold, measured = max(used, 1e-3) / served, [*measured, "mean_hold_ms"]
    pool = pool or _existing_pool(ctx)
    busy, size = littles_law(rate, hold, op.headroom)
    return SizingAdvice(
        arrival_rate_per_s=rate, mean_hold_ms=hold, measured=measured, concurrency_l=busy, headroom=op.headroom,
        recommended_max_size=size, current_max_size=pool.max_size if pool is not None else None,
    )  # fmt: skip


@component(
    "ConnectionPoolManager",
    tier="tier4",
    capabilities=["connection_pooling", "postgresql", "capacity_planning"],
    example={"operation": "advise", "arrival_rate_per_s": 200, "mean_hold_ms": 15, "headroom": 0.3},
    examples=[{"operation": "status"}, {"operation": "exercise", "checkouts": 50, "failure_rate": 0.1}],
    deterministic=False,
    errors={503: "PostgreSQL not configured or unreachable, or pool exhausted past its timeout"},
)
def connection_pool_manager(request: ConnectionPoolManagerInput, ctx: RunContext) -> ConnectionPoolManagerOutput:
    """Connection pools: live statistics, measured checkout waits and sizing by Little's law.

    ``status`` and ``advise`` with both λ and W work without a database; ``stats``, ``probe`` and
    ``exercise`` use the service's PostgreSQL pool (503 when not configured, unreachable or exhausted).
    """
    op = request.root
    configured = bool(ctx.settings.database_url)
    if isinstance(op, PoolStatusOp):
        pool = _existing_pool(ctx)
        return ConnectionPoolManagerOutput(
            operation="status", configured=configured, postgres=_stats(pool) if pool else None,
            http_pools=_http_pools(ctx),
            message=None if configured else "PostgreSQL is not configured: set MLMESH_DATABASE_URL",
        )  # fmt: skip
    if isinstance(op, PoolAdviseOp):
        return ConnectionPoolManagerOutput(operation="advise", configured=configured, advice=_advise(ctx, op))
    pool = pg_pool(ctx)
    if isinstance(op, PoolStatsOp):
        return ConnectionPoolManagerOutput(
            operation="stats", configured=True, postgres=_stats(pool), http_pools=_http_pools(ctx)
        )
    if isinstance(op, PoolProbeOp):
        asked = time.perf_counter()
        with postgres_errors(), pool.connection() as conn:
            wait_ms = (time.perf_counter() - asked) * 1000
            conn.execute("SELECT 1")
        return ConnectionPoolManagerOutput(operation="probe", configured=True, postgres=_stats(pool), wait_ms=wait_ms)
    before = _stats(pool)
    with postgres_errors():
        result = _exercise(pool, op)
    return ConnectionPoolManagerOutput(
        operation="exercise", configured=True, postgres=before, postgres_after=_stats(pool), exercise=result
    )
