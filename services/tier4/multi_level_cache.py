"""Two-level cache: an in-process LRU/TTL first level over Redis (or the embedded store) as the second.

**Levels.** L1 is a ``cachetools.TLRUCache`` per namespace, held in the service's ``ctx.resources``: it
evicts the least recently used entry when full (``l1_max_items``) and drops entries when their TTL runs
out (cachetools' per-item variant of ``TTLCache``, because each ``set`` carries its own TTL). L2 is Redis
when ``MLMESH_REDIS_URL`` is set — keys ``mlmesh:cache:<namespace>:<key>`` with ``PX`` expiry — and
otherwise the embedded store, a table of ``data/multi_level_cache.sqlite`` that survives restarts.

**Operations.**

* ``get`` — L1, then L2, then a miss. An L2 hit is promoted into L1 with the TTL L2 has left (capped by
  ``l1_max_ttl_s``).
* ``set`` — writes L2 first, then L1 (so a failed L2 write leaves L1 unchanged). ``ttl_s`` absent means no
  expiry in L2; L1 still keeps the entry at most ``l1_max_ttl_s``.
* ``invalidate`` — one ``key``, every key starting with ``prefix``, or (neither) the whole namespace, in
  both levels. L1 is cleared first: dropping an entry is always safe.
* ``stats`` — per level: hits, misses, hit ratio (``None`` before the first lookup), size, evictions.
  L1 counts lookups; L2 counts the lookups that reached it (L1 misses), so ``l1.misses = l2.hits +
  l2.misses``. L2 evictions are ``None``: Redis reports evictions for the whole server, not a namespace,
  and the embedded store never evicts (expired rows are deleted).
* ``configure`` — sets a namespace's L1 size and TTL cap (kept in the embedded store so a restarted
  service uses them); it replaces the namespace's L1, which drops its entries and resets its counters.

Values are any JSON; each level stores the serialised text, so a caller never shares an object with the
cache. Counters are per service process, since it started or the namespace was last configured.

**Several processes.** Each process has its own L1: an invalidation reaches L2 and this process's L1;
another process may serve its L1 copy for at most ``l1_max_ttl_s`` (default 60 s) — the bound on
staleness across processes.

**Redis down.** With ``MLMESH_REDIS_URL`` set but Redis unreachable, every operation that needs L2
(``set``, ``invalidate``, ``stats`` and a ``get`` that misses L1) answers 503; there is deliberately no
fallback to the embedded store, which would split the cache in two and serve values invalidated in
Redis. A ``get`` that hits L1 still answers.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

import redis
from cachetools import TLRUCache
from pydantic import Field, JsonValue, RootModel, model_validator

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, StateDB, component
from services.infra import redis_client, redis_errors

__all__ = [
    "KEY_PREFIX",
    "CacheConfigureOp",
    "CacheGetOp",
    "CacheInvalidateOp",
    "CacheSetOp",
    "CacheStatsOp",
    "LevelStats",
    "MultiLevelCacheInput",
    "MultiLevelCacheOutput",
    "multi_level_cache",
    "redis_key",
]

KEY_PREFIX = "mlmesh:cache"
MAX_VALUE_BYTES = 1 << 20
MAX_TTL_S = 30 * 86_400.0
DEFAULT_L1_MAX_ITEMS = 1024
DEFAULT_L1_MAX_TTL_S = 60.0
_RESOURCE = "multi_level_cache:l1"
_BATCH = 500
_MIGRATIONS = [
    """
    CREATE TABLE cache_entry (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        expires_at REAL,
        PRIMARY KEY (namespace, key)
    );
    CREATE TABLE namespace_config (
        namespace TEXT PRIMARY KEY,
        l1_max_items INTEGER NOT NULL,
        l1_max_ttl_s REAL
    );
    """
]

# No ':' in a namespace, so one namespace's keys are never a prefix match of another's.
Namespace = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="cache namespace (letters, digits, _ . -)")
]
Key = Annotated[str, Field(min_length=1, max_length=512, description="cache key")]


class _Op(ComponentInput):
    namespace: Namespace


class CacheGetOp(_Op):
    operation: Literal["get"]
    key: Key


class CacheSetOp(_Op):
    operation: Literal["set"]
    key: Key
    value: JsonValue = Field(description="any JSON value (at most 1 MiB serialised)")
    ttl_s: float | None = Field(None, gt=0, le=MAX_TTL_S, description="time to live; absent means no expiry")


class CacheInvalidateOp(_Op):
    operation: Literal["invalidate"]
    key: Key | None = Field(None, description="one key")
    prefix: str | None = Field(None, min_length=1, max_length=512, description="every key starting with this")

    @model_validator(mode="after")
    def _one_target(self) -> CacheInvalidateOp:
        if self.key is not None and self.prefix is not None:
            raise ValueError("give key or prefix, not both (neither invalidates the whole namespace)")
        return self


class CacheStatsOp(_Op):
    operation: Literal["stats"]


class CacheConfigureOp(_Op):
    operation: Literal["configure"]
    l1_max_items: int = Field(DEFAULT_L1_MAX_ITEMS, ge=1, le=100_000, description="L1 capacity (LRU beyond it)")
    l1_max_ttl_s: float | None = Field(
        DEFAULT_L1_MAX_TTL_S, gt=0, le=MAX_TTL_S, description="longest an entry stays in L1; absent means no cap"
    )


class MultiLevelCacheInput(
    RootModel[
        Annotated[
            CacheGetOp | CacheSetOp | CacheInvalidateOp | CacheStatsOp | CacheConfigureOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """``get``, ``set``, ``invalidate``, ``stats`` or ``configure`` on one namespace."""


class LevelStats(ComponentOutput):
    level: Literal["l1", "l2"]
    backend: Literal["memory", "redis", "embedded"]
    hits: int
    misses: int
    hit_ratio: float | None = Field(description="hits/(hits+misses); None before the first lookup")
    size: int = Field(description="live entries in this namespace")
    max_size: int | None = None
    evictions: int | None = Field(description="entries dropped for room (None: not observable per namespace)")
    expirations: int | None = None


class MultiLevelCacheOutput(ComponentOutput):
    operation: Literal["get", "set", "invalidate", "stats", "configure"]
    namespace: str
    l2_backend: Literal["redis", "embedded"]
    key: str | None = None
    hit: bool | None = None
    level: Literal["l1", "l2"] | None = Field(None, description="where a get found the value")
    value: JsonValue = None
    ttl_remaining_s: float | None = Field(None, description="L2's remaining TTL (None: no expiry or a miss)")
    removed_l1: int | None = None
    removed_l2: int | None = None
    levels: list[LevelStats] = Field(default_factory=list)
    overall_hit_ratio: float | None = None
    l1_max_items: int | None = None
    l1_max_ttl_s: float | None = None
    message: str


# --------------------------------------------------------------------------- L1


@dataclass(frozen=True)
class _Entry:
    text: str
    ttl_s: float  # math.inf for no expiry


def _ttu(_key: str, entry: _Entry, now: float) -> float:
    return now + entry.ttl_s


class _L1(TLRUCache):  # type: ignore[type-arg]
    """TLRU cache that counts size evictions and TTL expirations (cachetools' documented subclassing hooks)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, ttu=_ttu)
        self.evictions = 0
        self.expirations = 0

    def expire(self, time: float | None = None) -> list[tuple[str, _Entry]]:
        expired = list(super().expire(time))
        self.expirations += len(expired)
        return expired

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item  # type: ignore[no-any-return]


@dataclass
class _Namespace:
    l1: _L1
    max_ttl_s: float | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0

    def l1_ttl(self, ttl_s: float | None) -> float:
        caps = [t for t in (ttl_s, self.max_ttl_s) if t is not None]
        return min(caps) if caps else math.inf


class _L1Caches:
    """Every namespace's L1 of this service process (lives in ``ctx.resources``)."""

    def __init__(self) -> None:
        self.namespaces: dict[str, _Namespace] = {}
        self.lock = threading.Lock()

    def get(self, name: str, db: StateDB) -> _Namespace:
        with self.lock:
            ns = self.namespaces.get(name)
            if ns is None:
                row = (
                    db.connect()
                    .execute("SELECT l1_max_items, l1_max_ttl_s FROM namespace_config WHERE namespace = ?", (name,))
                    .fetchone()
                )
                items, ttl = (row[0], row[1]) if row else (DEFAULT_L1_MAX_ITEMS, DEFAULT_L1_MAX_TTL_S)
                ns = self.namespaces[name] = _Namespace(_L1(items), ttl)
            return ns

    def replace(self, name: str, max_items: int, max_ttl_s: float | None) -> None:
        with self.lock:
            self.namespaces[name] = _Namespace(_L1(max_items), max_ttl_s)

    def close(self) -> None:
        with self.lock:
            self.namespaces.clear()


# --------------------------------------------------------------------------- L2


class _L2(Protocol):
    backend: Literal["redis", "embedded"]

    def get(self, key: str) -> tuple[str, float | None] | None: ...
    def set(self, key: str, text: str, ttl_s: float | None) -> None: ...
    def delete(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def size(self) -> int: ...


def redis_key(namespace: str, key: str) -> str:
    """The Redis key of ``key`` in ``namespace``: ``mlmesh:cache:<namespace>:<key>``."""
    return f"{KEY_PREFIX}:{namespace}:{key}"


_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


class _RedisL2:
    backend: Literal["redis", "embedded"] = "redis"

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def get(self, key: str) -> tuple[str, float | None] | None:
        pipe = self.client.pipeline(transaction=True)  # GET and PTTL of the same instant
        raw, pttl = pipe.get(redis_key(self.namespace, key)).pttl(redis_key(self.namespace, key)).execute()
        if raw is None:
            return None
        return raw.decode("utf-8"), (pttl / 1000.0 if pttl >= 0 else None)

    def set(self, key: str, text: str, ttl_s: float | None) -> None:
        px = max(1, round(ttl_s * 1000)) if ttl_s is not None else None
        self.client.set(redis_key(self.namespace, key), text.encode("utf-8"), px=px)

    def delete(self, key: str) -> int:
        return int(self.client.unlink(redis_key(self.namespace, key)))

    def _scan(self, prefix: str) -> Iterator[bytes]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", redis_key(self.namespace, prefix)) + "*"
        return self.client.scan_iter(match=pattern, count=_BATCH)  # type: ignore[no-any-return]

    def delete_prefix(self, prefix: str) -> int:
        removed, batch = 0, []
        for name in self._scan(prefix):
            batch.append(name)
            if len(batch) >= _BATCH:
                removed += int(self.client.unlink(*batch))
                batch = []
        if batch:
            removed += int(self.client.unlink(*batch))
        return removed

    def size(self) -> int:
        return sum(1 for _ in self._scan(""))


class _EmbeddedL2:
    backend: Literal["redis", "embedded"] = "embedded"

    def __init__(self, db: StateDB, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    def get(self, key: str) -> tuple[str, float | None] | None:
        row = (
            self.db.connect()
            .execute("SELECT value, expires_at FROM cache_entry WHERE namespace = ? AND key = ?", (self.namespace, key))
            .fetchone()
        )
        if row is None:
            return None
        now = time.time()
        if row["expires_at"] is not None and row["expires_at"] <= now:
            with self.db.transaction() as conn:  # expired: delete it unless a newer set replaced it meanwhile
                conn.execute(
                    "DELETE FROM cache_entry WHERE namespace = ? AND key = ? AND expires_at <= ?",
                    (self.namespace, key, now),
                )
            return None
        return row["value"], (row["expires_at"] - now if row["expires_at"] is not None else None)

    def set(self, key: str, text: str, ttl_s: float | None) -> None:
        expires = time.time() + ttl_s if ttl_s is not None else None
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO cache_entry (namespace, key, value, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (self.namespace, key, text, expires),
            )

    def delete(self, key: str) -> int:
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM cache_entry WHERE namespace = ? AND key = ?", (self.namespace, key)
            ).rowcount

    def delete_prefix(self, prefix: str) -> int:
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM cache_entry WHERE namespace = ? AND substr(key, 1, ?) = ?",
                (self.namespace, len(prefix), prefix),
            ).rowcount

    def size(self) -> int:
        with self.db.transaction() as conn:
            now = time.time()
            conn.execute("DELETE FROM cache_entry WHERE namespace = ? AND expires_at <= ?", (self.namespace, now))
            return int(
                conn.execute("SELECT COUNT(*) FROM cache_entry WHERE namespace = ?", (self.namespace,)).fetchone()[0]
            )


# --------------------------------------------------------------------------- the component


def _ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def _serialise(value: JsonValue) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidInput("value", f"must be JSON without NaN or infinity ({exc})") from exc
    size = len(text.encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise InvalidInput("value", f"serialises to {size} bytes; at most {MAX_VALUE_BYTES} are cached")
    return text


def _stats(ns: _Namespace, l2: _L2) -> tuple[list[LevelStats], float | None]:
    l2_size = l2.size()
    with ns.lock:
        ns.l1.expire()
        l1 = LevelStats(
            level="l1",
            backend="memory",
            hits=ns.l1_hits,
            misses=ns.l1_misses,
            hit_ratio=_ratio(ns.l1_hits, ns.l1_misses),
            size=len(ns.l1),
            max_size=int(ns.l1.maxsize),
            evictions=ns.l1.evictions,
            expirations=ns.l1.expirations,
        )
        l2_stats = LevelStats(
            level="l2",
            backend=l2.backend,
            hits=ns.l2_hits,
            misses=ns.l2_misses,
            hit_ratio=_ratio(ns.l2_hits, ns.l2_misses),
            size=l2_size,
            evictions=None,
        )
        overall = _ratio(ns.l1_hits + ns.l2_hits, ns.l2_misses)
    return [l1, l2_stats], overall


@component(
    "MultiLevelCache",
    tier="tier4",
    capabilities=["caching", "multi_level_cache", "cache_invalidation"],
    example={"operation": "stats", "namespace": "example"},
    examples=[
        {"operation": "set", "namespace": "example", "key": "user:1", "value": {"name": "Ada"}, "ttl_s": 60},
        {"operation": "get", "namespace": "example", "key": "user:1"},
        {"operation": "invalidate", "namespace": "example", "prefix": "user:"},
        {"operation": "configure", "namespace": "example", "l1_max_items": 256, "l1_max_ttl_s": 30},
    ],
    errors={503: "Redis is configured but not reachable (no fallback to the embedded store)"},
    deterministic=False,  # a cache: results depend on what was stored before
)
def multi_level_cache(request: MultiLevelCacheInput, ctx: RunContext) -> MultiLevelCacheOutput:
    """Two-level cache: in-process LRU/TTL over Redis (or the embedded store without Redis).

    ``get`` looks in L1, then L2 (promoting an L2 hit into L1); ``set`` writes both levels with a TTL;
    ``invalidate`` removes a key, a key prefix or the whole namespace from both levels; ``stats`` reports
    hits, misses, hit ratio, size and evictions per level; ``configure`` sets a namespace's L1 size and TTL
    cap. With Redis configured but unreachable, operations that need L2 answer 503.
    """
    op = request.root
    db = ctx.state("multi_level_cache", _MIGRATIONS)
    caches = ctx.resources.get(_RESOURCE)
    if caches is None:
        caches = ctx.resources.setdefault(_RESOURCE, _L1Caches())
    l2: _L2 = _RedisL2(redis_client(ctx), op.namespace) if ctx.settings.redis_url else _EmbeddedL2(db, op.namespace)
    base = {"operation": op.operation, "namespace": op.namespace, "l2_backend": l2.backend}

    if isinstance(op, CacheConfigureOp):
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO namespace_config (namespace, l1_max_items, l1_max_ttl_s) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace) DO UPDATE SET l1_max_items = excluded.l1_max_items, "
                "l1_max_ttl_s = excluded.l1_max_ttl_s",
                (op.namespace, op.l1_max_items, op.l1_max_ttl_s),
            )
        caches.replace(op.namespace, op.l1_max_items, op.l1_max_ttl_s)
        return MultiLevelCacheOutput(
            **base,
            l1_max_items=op.l1_max_items,
            l1_max_ttl_s=op.l1_max_ttl_s,
            message=f"L1 of {op.namespace!r} now holds up to {op.l1_max_items} entries; its entries were dropped",
        )

    ns = caches.get(op.namespace, db)
    with redis_errors():
        if isinstance(op, CacheGetOp):
            with ns.lock:
                entry = ns.l1.get(op.key)
                if entry is not None:
                    ns.l1_hits += 1
            if entry is not None:
                return MultiLevelCacheOutput(
                    **base, key=op.key, hit=True, level="l1", value=json.loads(entry.text), message="L1 hit"
                )
            found = l2.get(op.key)
            with ns.lock:
                ns.l1_misses += 1
                if found is None:
                    ns.l2_misses += 1
                else:
                    ns.l2_hits += 1
                    ttl = ns.l1_ttl(found[1])
                    if ttl > 0:  # PTTL may read 0 ms left: nothing to promote then
                        ns.l1[op.key] = _Entry(found[0], ttl)
            if found is None:
                return MultiLevelCacheOutput(**base, key=op.key, hit=False, message="miss in both levels")
            return MultiLevelCacheOutput(
                **base,
                key=op.key,
                hit=True,
                level="l2",
                value=json.loads(found[0]),
                ttl_remaining_s=found[1],
                message="L2 hit, promoted into L1",
            )

        if isinstance(op, CacheSetOp):
            text = _serialise(op.value)
            l2.set(op.key, text, op.ttl_s)
            with ns.lock:
                ns.l1[op.key] = _Entry(text, ns.l1_ttl(op.ttl_s))
            return MultiLevelCacheOutput(**base, key=op.key, ttl_remaining_s=op.ttl_s, message="stored in both levels")

        if isinstance(op, CacheInvalidateOp):
            prefix = op.prefix or ""
            with ns.lock:
                if op.key is not None:
                    removed_l1 = int(ns.l1.pop(op.key, None) is not None)
                else:
                    doomed = [k for k in list(ns.l1.keys()) if k.startswith(prefix)]
                    for k in doomed:
                        del ns.l1[k]
                    removed_l1 = len(doomed)
            removed_l2 = l2.delete(op.key) if op.key is not None else l2.delete_prefix(prefix)
            what = f"key {op.key!r}" if op.key is not None else (f"prefix {prefix!r}" if prefix else "the namespace")
            return MultiLevelCacheOutput(
                **base,
                key=op.key,
                removed_l1=removed_l1,
                removed_l2=removed_l2,
                message=f"invalidated {what}: {removed_l1} L1 and {removed_l2} L2 entries removed",
            )

        levels, overall = _stats(ns, l2)
        return MultiLevelCacheOutput(
            **base,
            levels=levels,
            overall_hit_ratio=overall,
            l1_max_items=levels[0].max_size,
            l1_max_ttl_s=ns.max_ttl_s,
            message="counters since this service process started or the namespace was last configured",
        )
