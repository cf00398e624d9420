"""Redis health: PING latency percentiles and the figures of ``INFO``, judged against thresholds.

**Latency.** ``check`` sends ``pings`` PING commands one after another on the service's client and times
each round trip with ``time.perf_counter`` (after one untimed PING that opens the connection);
p50/p95/p99 are ``numpy.percentile`` (linear interpolation) of those samples, which are returned so the
caller can recompute them.

**INFO.** One ``INFO`` call (all sections) gives:

* memory — ``used_memory``, ``maxmemory`` (0 means no limit), ``mem_fragmentation_ratio``;
* clients — ``connected_clients``, ``blocked_clients``, ``maxclients``;
* stats — ``keyspace_hits``, ``keyspace_misses`` and the hit ratio ``hits / (hits + misses)`` (``None``
  before the first lookup), ``evicted_keys``, ``expired_keys``, ``instantaneous_ops_per_sec``;
* server — ``redis_version``, ``redis_mode``, ``uptime_in_seconds``;
* keyspace — keys, keys with an expiry and average TTL per database.

The counters are cumulative since the server started (or since ``CONFIG RESETSTAT``).

**Status.** Each threshold that is crossed adds a reason; the status is the worst level among them:

* latency — PING p99 ≥ ``latency_p99_warning_ms`` is a warning, ≥ ``latency_p99_failed_ms`` failed;
* memory — used/maxmemory ≥ ``memory_warning_fraction`` / ``memory_failed_fraction`` (only with a limit);
* clients — connected/maxclients ≥ ``clients_warning_fraction`` / ``clients_failed_fraction``;
* fragmentation — ratio ≥ ``fragmentation_warning`` while used memory ≥ ``fragmentation_min_used_bytes``
  (warning);
* hit ratio — below ``hit_ratio_warning`` once there were ``hit_ratio_min_lookups`` lookups (warning);
* evictions — ``evicted_keys`` ≥ ``evicted_keys_warning`` (warning; off unless given).

The fragmentation ratio is only judged above a memory floor because on a nearly empty server the
allocator's fixed overhead makes it large and meaningless (Redis' own ``MEMORY DOCTOR`` does the same).

``status`` says whether Redis is configured (``MLMESH_REDIS_URL``) and, when it is, answers with one PING
and the server version; it answers 200 without Redis. ``check`` needs Redis: 503 when it is not configured
or not reachable.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import Field, RootModel, model_validator

from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.infra import redis_client, redis_errors, require_redis_url

__all__ = [
    "ClientFigures",
    "KeyspaceDb",
    "LatencyFigures",
    "MemoryFigures",
    "Reason",
    "RedisCheckOp",
    "RedisHealthMonitorInput",
    "RedisHealthMonitorOutput",
    "RedisStatusOp",
    "ServerFigures",
    "StatsFigures",
    "hit_ratio",
    "redact_url",
    "redis_health_monitor",
]

Level = Literal["ok", "warning", "failed"]
_RANK = {"ok": 0, "warning": 1, "failed": 2}


class RedisStatusOp(ComponentInput):
    operation: Literal["status"] = Field(description="whether Redis is configured and answers one PING")


class RedisCheckOp(ComponentInput):
    operation: Literal["check"] = Field(description="latency percentiles and INFO figures against thresholds")
    pings: int = Field(50, ge=1, le=1000, description="PING round trips to time")
    latency_p99_warning_ms: float = Field(10.0, gt=0, le=60_000, description="p99 latency for a warning")
    latency_p99_failed_ms: float = Field(100.0, gt=0, le=60_000, description="p99 latency for failed")
    memory_warning_fraction: float = Field(0.75, gt=0, le=1, description="used/maxmemory for a warning")
    memory_failed_fraction: float = Field(0.9, gt=0, le=1, description="used/maxmemory for failed")
    clients_warning_fraction: float = Field(0.8, gt=0, le=1, description="connected/maxclients for a warning")
    clients_failed_fraction: float = Field(0.95, gt=0, le=1, description="connected/maxclients for failed")
    fragmentation_warning: float = Field(1.5, gt=1, le=100, description="fragmentation ratio for a warning")
    fragmentation_min_used_bytes: int = Field(
        64 * 2**20, ge=0, le=2**50, description="judge fragmentation only above this used memory"
    )
    hit_ratio_warning: float = Field(0.8, ge=0, le=1, description="keyspace hit ratio below which to warn")
    hit_ratio_min_lookups: int = Field(1000, ge=1, le=2**62, description="judge the hit ratio from this many lookups")
    evicted_keys_warning: int | None = Field(None, ge=1, le=2**62, description="evicted keys for a warning (off)")

    @model_validator(mode="after")
    def _ordered(self) -> RedisCheckOp:
        pairs = [
            ("latency_p99_failed_ms", self.latency_p99_warning_ms, self.latency_p99_failed_ms),
            ("memory_failed_fraction", self.memory_warning_fraction, self.memory_failed_fraction),
            ("clients_failed_fraction", self.clients_warning_fraction, self.clients_failed_fraction),
        ]
        for name, warning, failed in pairs:
            if failed < warning:
                raise ValueError(f"{name} must be at least the warning threshold ({warning:g}); got {failed:g}")
        return self


class RedisHealthMonitorInput(RootModel[Annotated[RedisStatusOp | RedisCheckOp, Field(discriminator="operation")]]):
    """``status`` (works without Redis) or ``check``."""


class LatencyFigures(ComponentOutput):
    pings: int
    samples_ms: list[float] = Field(description="each PING round trip, in order")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


class MemoryFigures(ComponentOutput):
    used_memory: int
    maxmemory: int = Field(description="0 means no limit")
    used_fraction: float | None = Field(description="used/maxmemory; None without a limit")
    fragmentation_ratio: float | None


class ClientFigures(ComponentOutput):
    connected_clients: int
    blocked_clients: int
    maxclients: int | None
    used_fraction: float | None


class StatsFigures(ComponentOutput):
    keyspace_hits: int
    keyspace_misses: int
    hit_ratio: float | None = Field(description="hits/(hits+misses); None before the first lookup")
    evicted_keys: int
    expired_keys: int
    instantaneous_ops_per_sec: int


class ServerFigures(ComponentOutput):
    redis_version: str
    redis_mode: str | None
    uptime_in_seconds: int


class KeyspaceDb(ComponentOutput):
    db: str
    keys: int
    expires: int
    avg_ttl_ms: int


class Reason(ComponentOutput):
    check: str
    level: Level
    message: str


class RedisHealthMonitorOutput(ComponentOutput):
    operation: Literal["status", "check"]
    configured: bool
    url: str | None = Field(None, description="the configured URL without its password")
    reachable: bool | None = None
    redis_version: str | None = None
    status: Level | None = None
    reasons: list[Reason] = Field(default_factory=list)
    latency: LatencyFigures | None = None
    memory: MemoryFigures | None = None
    clients: ClientFigures | None = None
    stats: StatsFigures | None = None
    server: ServerFigures | None = None
    keyspace: list[KeyspaceDb] = Field(default_factory=list)
    message: str


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def hit_ratio(hits: int, misses: int) -> float | None:
    """``hits / (hits + misses)``, or None when there was no lookup."""
    lookups = hits + misses
    return hits / lookups if lookups else None


def _int(info: dict[str, Any], key: str) -> int:
    return int(info.get(key, 0))


def _figures(
    info: dict[str, Any],
) -> tuple[MemoryFigures, ClientFigures, StatsFigures, ServerFigures, list[KeyspaceDb]]:
    used, maxmemory = _int(info, "used_memory"), _int(info, "maxmemory")
    frag = info.get("mem_fragmentation_ratio")
    memory = MemoryFigures(
        used_memory=used,
        maxmemory=maxmemory,
        used_fraction=used / maxmemory if maxmemory else None,
        fragmentation_ratio=float(frag) if frag is not None else None,
    )
    maxclients = info.get("maxclients")
    connected = _int(info, "connected_clients")
    clients = ClientFigures(
        connected_clients=connected,
        blocked_clients=_int(info, "blocked_clients"),
        maxclients=int(maxclients) if maxclients is not None else None,
        used_fraction=connected / int(maxclients) if maxclients else None,
    )
    hits, misses = _int(info, "keyspace_hits"), _int(info, "keyspace_misses")
    stats = StatsFigures(
        keyspace_hits=hits,
        keyspace_misses=misses,
        hit_ratio=hit_ratio(hits, misses),
        evicted_keys=_int(info, "evicted_keys"),
        expired_keys=_int(info, "expired_keys"),
        instantaneous_ops_per_sec=_int(info, "instantaneous_ops_per_sec"),
    )
    server = ServerFigures(
        redis_version=str(info.get("redis_version", "unknown")),
        redis_mode=info.get("redis_mode"),
        uptime_in_seconds=_int(info, "uptime_in_seconds"),
    )
    # redis-py parses "db0:keys=1,expires=0,avg_ttl=0" into {"db0": {"keys": 1, ...}}.
    keyspace = [
        KeyspaceDb(db=name, keys=int(v["keys"]), expires=int(v["expires"]), avg_ttl_ms=int(v.get("avg_ttl", 0)))
        for name, v in sorted(info.items())
        if name.startswith("db") and name[2:].isdigit() and isinstance(v, dict)
    ]
    return memory, clients, stats, server, keyspace


def _judge(
    op: RedisCheckOp, latency: LatencyFigures, memory: MemoryFigures, clients: ClientFigures, stats: StatsFigures
) -> list[Reason]:
    reasons: list[Reason] = []

    def graded(check: str, value: float | None, warning: float, failed: float, what: str) -> None:
        if value is None:
            return
        if value >= failed:
            reasons.append(Reason(check=check, level="failed", message=f"{what} {value:.4g} ≥ {failed:g}"))
        elif value >= warning:
            reasons.append(Reason(check=check, level="warning", message=f"{what} {value:.4g} ≥ {warning:g}"))

    graded("latency", latency.p99_ms, op.latency_p99_warning_ms, op.latency_p99_failed_ms, "PING p99 (ms)")
    graded("memory", memory.used_fraction, op.memory_warning_fraction, op.memory_failed_fraction, "used/maxmemory")
    graded(
        "clients",
        clients.used_fraction,
        op.clients_warning_fraction,
        op.clients_failed_fraction,
        "connected/maxclients",
    )
    frag = memory.fragmentation_ratio
    if frag is not None and memory.used_memory >= op.fragmentation_min_used_bytes and frag >= op.fragmentation_warning:
        reasons.append(
            Reason(
                check="fragmentation",
                level="warning",
                message=f"fragmentation ratio {frag:.3g} ≥ {op.fragmentation_warning:g}",
            )
        )
    lookups = stats.keyspace_hits + stats.keyspace_misses
    if stats.hit_ratio is not None and lookups >= op.hit_ratio_min_lookups and stats.hit_ratio < op.hit_ratio_warning:
        reasons.append(
            Reason(
                check="hit_ratio",
                level="warning",
                message=f"keyspace hit ratio {stats.hit_ratio:.4f} < {op.hit_ratio_warning:g} over {lookups} lookups",
            )
        )
    if op.evicted_keys_warning is not None and stats.evicted_keys >= op.evicted_keys_warning:
        reasons.append(
            Reason(
                check="evictions",
                level="warning",
                message=f"{stats.evicted_keys} evicted keys ≥ {op.evicted_keys_warning}",
            )
        )
    return reasons


@component(
    "RedisHealthMonitor",
    tier="tier4",
    capabilities=["redis_health", "latency_percentiles", "cache_hit_ratio"],
    example={"operation": "status"},
    examples=[{"operation": "check", "pings": 20}],
    errors={503: "Redis is not configured (set MLMESH_REDIS_URL) or not reachable"},
    deterministic=False,  # latencies and server counters change from call to call
)
def redis_health_monitor(request: RedisHealthMonitorInput, ctx: RunContext) -> RedisHealthMonitorOutput:
    """Redis health: PING latency percentiles, memory, clients and keyspace hit ratio from INFO.

    ``check`` times ``pings`` PINGs (p50/p95/p99 by numpy.percentile), reads INFO and judges the figures
    against the thresholds into ok/warning/failed with reasons; 503 when Redis is not configured or not
    reachable. ``status`` says whether Redis is configured and, if so, whether it answers a PING.
    """
    op = request.root
    if isinstance(op, RedisStatusOp):
        if not ctx.settings.redis_url:
            return RedisHealthMonitorOutput(
                operation="status",
                configured=False,
                message="Redis is not configured: set MLMESH_REDIS_URL (e.g. redis://127.0.0.1:6379/0)",
            )
        client = redis_client(ctx)
        with redis_errors():
            client.ping()
            version = str(client.info("server").get("redis_version", "unknown"))
        return RedisHealthMonitorOutput(
            operation="status",
            configured=True,
            url=redact_url(ctx.settings.redis_url),
            reachable=True,
            redis_version=version,
            message=f"Redis {version} answers PING",
        )

    url = require_redis_url(ctx.settings)
    client = redis_client(ctx)
    samples = np.empty(op.pings)
    with redis_errors():
        client.ping()  # warm-up: the first call may open the connection, which is not PING latency
        for i in range(op.pings):  # sequential round trips: the latency of each is what is measured
            start = time.perf_counter()
            client.ping()
            samples[i] = (time.perf_counter() - start) * 1000.0
        info = client.info("all")
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    latency = LatencyFigures(
        pings=op.pings,
        samples_ms=samples.tolist(),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(samples.mean()),
        max_ms=float(samples.max()),
    )
    memory, clients, stats, server, keyspace = _figures(info)
    reasons = _judge(op, latency, memory, clients, stats)
    status: Level = max((r.level for r in reasons), key=_RANK.__getitem__, default="ok")
    summary = "; ".join(r.message for r in reasons) if reasons else "every figure within its thresholds"
    return RedisHealthMonitorOutput(
        operation="check",
        configured=True,
        url=redact_url(url),
        reachable=True,
        redis_version=server.redis_version,
        status=status,
        reasons=reasons,
        latency=latency,
        memory=memory,
        clients=clients,
        stats=stats,
        server=server,
        keyspace=keyspace,
        message=f"{status}: {summary}",
    )
