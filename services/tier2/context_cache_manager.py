"""TTL/LRU caches for linguistic and domain analysis results, keyed by content hash and analyzer version.

**Keys.** An entry belongs to a namespace (``"linguistic"``, ``"domain"``, …) and is keyed by
``(analyzer, analyzer_version, content_hash)``, where ``content_hash`` is the SHA-256 of the text after Unicode
NFC normalisation (so composed and decomposed spellings of one text share an entry). The version is part of the key:
a new analyzer version never reads an entry an older one wrote. The key's text form is
``<analyzer>:<version>:<content_hash>`` (neither name may contain ``:``).

**Memory and disk.** Each namespace is a ``cachetools.TLRUCache`` of at most ``max_items`` entries in the service
process, written through to the service's SQLite (``data/context_cache_manager.sqlite``): the disk holds exactly the
entries the cache holds, so a restarted service finds its warm cache there. Entries are restored lazily — a lookup
that misses memory reads the disk and, if the entry is still live, brings it back into memory (``source:
"disk"``). Entries not read since a restart count as less recently used than every entry read since; among them
the earliest stored is evicted first.

**Expiry.** ``ttl_s`` (omitted: the namespace's ``default_ttl_s``, 1 h unless configured; ``null``: no expiry)
fixes a wall-clock expiry time ``expires_at = now + ttl_s``, stored with the entry, so a restart honours it. An
entry is expired once ``now ≥ expires_at``.

**Operations.** ``get`` / ``get_many`` (by text), ``put`` / ``put_many`` (a JSON value per text, at most 256 KiB
serialised), ``invalidate`` (one ``key``, every entry of a ``text``, every entry of an ``analyzer`` — optionally
one ``analyzer_version`` — or the whole namespace), ``stats``, ``configure`` (``max_items`` and ``default_ttl_s``,
kept on disk; shrinking evicts the least recently used entries).

**Stats.** Counters are per service process (since it started): hits (from memory or disk), misses, hit ratio
``hits / (hits + misses)`` (None before the first lookup), evictions for room (LRU) and by expiry (TTL), entries
restored from disk; ``size`` is the number of live entries (memory and disk), ``memory_items`` those loaded, and
``memory_bytes`` an estimate of the loaded entries' footprint (``sys.getsizeof`` of each key tuple, its strings
and the serialised value, plus the cache's per-entry bookkeeping).

All operations on a namespace are serialised by one lock per namespace, so concurrent puts never lose an entry or
break the LRU bound.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from cachetools import Cache, TLRUCache
from pydantic import Field, JsonValue, RootModel, model_validator

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, StateDB, component

__all__ = [
    "ContextCacheConfigureOp",
    "ContextCacheGetManyOp",
    "ContextCacheGetOp",
    "ContextCacheInvalidateOp",
    "ContextCacheManagerInput",
    "ContextCacheManagerOutput",
    "ContextCachePutManyOp",
    "ContextCachePutOp",
    "ContextCacheStatsOp",
    "ContextCaches",
    "LookupResult",
    "NamespaceStats",
    "PutItem",
    "cache_key",
    "content_hash",
    "context_cache_manager",
]

RESOURCE = "context_cache_manager"
STATE = "context_cache_manager"
MAX_TEXT_CHARS = 1_000_000
MAX_VALUE_BYTES = 256 * 1024
MAX_BATCH = 1_000
MAX_ITEMS = 100_000
MAX_TTL_S = 30 * 86_400.0
DEFAULT_MAX_ITEMS = 10_000
DEFAULT_TTL_S = 3_600.0
# A rough allowance for TLRUCache's per-entry bookkeeping (a dict slot, an OrderedDict node, a heap item).
_ENTRY_OVERHEAD_BYTES = 300
_MIGRATIONS = [
    """
    CREATE TABLE context_entry (
        namespace TEXT NOT NULL,
        analyzer TEXT NOT NULL,
        version TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        value TEXT NOT NULL,
        stored_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (namespace, analyzer, version, content_hash)
    );
    CREATE INDEX context_entry_hash ON context_entry (namespace, content_hash);
    CREATE INDEX context_entry_stored ON context_entry (namespace, stored_at);
    CREATE INDEX context_entry_expiry ON context_entry (namespace, expires_at);
    CREATE TABLE context_namespace (
        namespace TEXT PRIMARY KEY,
        max_items INTEGER NOT NULL,
        default_ttl_s REAL
    );
    """
]

Namespace = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="cache namespace, e.g. linguistic or domain")
]
Analyzer = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="analyzer name (no ':')")]
Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,32}$", description="analyzer version, e.g. 1.2.0")]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS, description="the analysed text (hashed, never stored)")]
Ttl = Annotated[float, Field(gt=0, le=MAX_TTL_S, description="seconds to live")]
Key = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.+-]{1,32}:[0-9a-f]{64}$",
        description="<analyzer>:<version>:<content_hash>",
    ),
]


def content_hash(text: str) -> str:
    """SHA-256 (hex) of ``text`` in Unicode NFC (lone surrogates kept as they are)."""
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")).hexdigest()


def cache_key(analyzer: str, version: str, text_hash: str) -> str:
    """The text form of an entry's key: ``<analyzer>:<version>:<content_hash>``."""
    return f"{analyzer}:{version}:{text_hash}"


# --------------------------------------------------------------------------- input


class _Op(ComponentInput):
    namespace: Namespace


class _Analyzed(_Op):
    analyzer: Analyzer
    analyzer_version: Version


class ContextCacheGetOp(_Analyzed):
    """Look up the analyzer's result for one text."""

    operation: Literal["get"]
    text: Text


class ContextCacheGetManyOp(_Analyzed):
    """Look up the analyzer's results for several texts."""

    operation: Literal["get_many"]
    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH)


class ContextCachePutOp(_Analyzed):
    """Store the analyzer's result for one text."""

    operation: Literal["put"]
    text: Text
    value: JsonValue = Field(description=f"any JSON (at most {MAX_VALUE_BYTES // 1024} KiB serialised)")
    ttl_s: Ttl | None = Field(None, description="omitted: the namespace's default_ttl_s; null: no expiry")


class PutItem(ComponentInput):
    text: Text
    value: JsonValue
    ttl_s: Ttl | None = Field(None, description="omitted: the namespace's default_ttl_s; null: no expiry")


class ContextCachePutManyOp(_Analyzed):
    """Store the analyzer's results for several texts (one transaction)."""

    operation: Literal["put_many"]
    items: list[PutItem] = Field(min_length=1, max_length=MAX_BATCH)


class ContextCacheInvalidateOp(_Op):
    """Remove one key, a text's entries, an analyzer's (version's) entries, or the whole namespace."""

    operation: Literal["invalidate"]
    key: Key | None = None
    text: Text | None = Field(None, description="every analyzer's entry for this text")
    analyzer: Analyzer | None = None
    analyzer_version: Version | None = Field(None, description="with analyzer: only this version")

    @model_validator(mode="after")
    def _one_target(self) -> ContextCacheInvalidateOp:
        given = [name for name in ("key", "text", "analyzer") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of key, text or analyzer (none clears the namespace); got {given}")
        if self.analyzer_version is not None and self.analyzer is None:
            raise ValueError("analyzer_version needs analyzer")
        return self


class ContextCacheStatsOp(_Op):
    operation: Literal["stats"]


class ContextCacheConfigureOp(_Op):
    operation: Literal["configure"]
    max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1, le=MAX_ITEMS, description="capacity (LRU eviction beyond it)")
    default_ttl_s: Ttl | None = Field(DEFAULT_TTL_S, description="TTL of puts without one; null: no expiry")


class ContextCacheManagerInput(
    RootModel[
        Annotated[
            ContextCacheGetOp
            | ContextCacheGetManyOp
            | ContextCachePutOp
            | ContextCachePutManyOp
            | ContextCacheInvalidateOp
            | ContextCacheStatsOp
            | ContextCacheConfigureOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """``get``, ``get_many``, ``put``, ``put_many``, ``invalidate``, ``stats`` or ``configure`` on a namespace."""


# --------------------------------------------------------------------------- output


class LookupResult(ComponentOutput):
    key: str
    content_hash: str
    hit: bool
    source: Literal["memory", "disk"] | None = None
    value: JsonValue = None
    expires_in_s: float | None = Field(None, description="None: no expiry, or a miss")


class NamespaceStats(ComponentOutput):
    hits: int
    misses: int
    hit_ratio: float | None = Field(description="hits / (hits + misses); None before the first lookup")
    size: int = Field(description="live entries (in memory or on disk)")
    memory_items: int
    max_items: int
    default_ttl_s: float | None
    evictions_lru: int
    evictions_ttl: int
    restored_from_disk: int
    memory_bytes: int = Field(description="estimated footprint of the entries in memory")


class ContextCacheManagerOutput(ComponentOutput):
    operation: Literal["get", "get_many", "put", "put_many", "invalidate", "stats", "configure"]
    namespace: str
    results: list[LookupResult] = Field(default_factory=list, description="get/get_many: one per text, in order")
    keys: list[str] = Field(default_factory=list, description="put/put_many: the keys stored")
    removed: int | None = None
    stats: NamespaceStats | None = None
    message: str


# --------------------------------------------------------------------------- the caches

EntryKey = tuple[str, str, str]  # (analyzer, version, content_hash)


@dataclass(frozen=True)
class _Entry:
    text: str  # the serialised JSON value
    expires_at: float | None  # wall clock (the manager's clock)


def _ttu(_key: EntryKey, entry: _Entry, _now: float) -> float:
    return entry.expires_at if entry.expires_at is not None else float("inf")


class _Memory(TLRUCache):  # type: ignore[type-arg]
    """TLRU cache that reports what it dropped, for room or by expiry (cachetools' subclassing hooks)."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        super().__init__(maxsize, ttu=_ttu, timer=clock)
        self.clock = clock
        self.evicted: list[EntryKey] = []
        self.expired: list[EntryKey] = []

    def expire(self, time: float | None = None) -> list[tuple[EntryKey, _Entry]]:
        gone = list(super().expire(time))
        self.expired.extend(key for key, _ in gone)
        return gone

    def popitem(self) -> tuple[EntryKey, _Entry]:
        key, value = super().popitem()
        self.evicted.append(key)
        return key, value


@dataclass
class _Namespace:
    name: str
    memory: _Memory
    max_items: int
    default_ttl_s: float | None
    lock: threading.RLock = field(default_factory=threading.RLock)
    hits: int = 0
    misses: int = 0
    evictions_lru: int = 0
    evictions_ttl: int = 0
    restored: int = 0


class ContextCaches:
    """Every namespace of this service process; lives in ``ctx.resources``. ``clock`` is wall-clock seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()

    def namespace(self, name: str, db: StateDB) -> _Namespace:
        with self._lock:
            ns = self._namespaces.get(name)
            if ns is None:
                row = (
                    db.connect()
                    .execute("SELECT max_items, default_ttl_s FROM context_namespace WHERE namespace = ?", (name,))
                    .fetchone()
                )
                items, ttl = (row[0], row[1]) if row else (DEFAULT_MAX_ITEMS, DEFAULT_TTL_S)
                ns = self._namespaces[name] = _Namespace(name, _Memory(items, self.clock), items, ttl)
            return ns

    def close(self) -> None:
        with self._lock:
            self._namespaces.clear()


def _flush(ns: _Namespace, conn: sqlite3.Connection) -> None:
    """Delete from disk what memory dropped, and count it."""
    mem = ns.memory
    for keys, kind in ((mem.evicted, "lru"), (mem.expired, "ttl")):
        if not keys:
            continue
        conn.executemany(
            "DELETE FROM context_entry WHERE namespace = ? AND analyzer = ? AND version = ? AND content_hash = ?",
            [(ns.name, *key) for key in keys],
        )
        if kind == "lru":
            ns.evictions_lru += len(keys)
        else:
            ns.evictions_ttl += len(keys)
        keys.clear()


def _purge_expired(ns: _Namespace, conn: sqlite3.Connection, now: float) -> None:
    """Drop expired entries from memory, then the expired rows only on disk (each counted once)."""
    ns.memory.expire(now)
    _flush(ns, conn)
    removed = conn.execute("DELETE FROM context_entry WHERE namespace = ? AND expires_at <= ?", (ns.name, now)).rowcount
    ns.evictions_ttl += removed


def _disk_only_oldest(
    ns: _Namespace, conn: sqlite3.Connection, count: int, keep: frozenset[EntryKey]
) -> list[EntryKey]:
    """The ``count`` earliest-stored rows that are not in memory (never read since a restart)."""
    out: list[EntryKey] = []
    cursor = conn.execute(
        "SELECT analyzer, version, content_hash FROM context_entry WHERE namespace = ? ORDER BY stored_at, rowid",
        (ns.name,),
    )
    for row in cursor:
        key = (row[0], row[1], row[2])
        if key not in ns.memory and key not in keep:
            out.append(key)
            if len(out) == count:
                break
    return out


def _size(ns: _Namespace, conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM context_entry WHERE namespace = ?", (ns.name,)).fetchone()[0])


def _make_room(
    ns: _Namespace, conn: sqlite3.Connection, new_keys: int, keep: frozenset[EntryKey] = frozenset()
) -> None:
    """Keep disk (= the cache) within ``max_items`` before ``new_keys`` new entries arrive (``keep``: being updated).

    Entries only on disk have not been read since a restart, so they are the least recently used: they go first.
    When memory itself is full there are none left on disk only, and the TLRU cache evicts its own LRU entry.
    """
    size = _size(ns, conn)
    excess = size + new_keys - ns.max_items
    disk_only = size - len(ns.memory)  # memory is a subset of the disk
    if excess <= 0 or disk_only <= 0:
        return
    doomed = _disk_only_oldest(ns, conn, min(excess, disk_only), keep)
    if doomed:
        conn.executemany(
            "DELETE FROM context_entry WHERE namespace = ? AND analyzer = ? AND version = ? AND content_hash = ?",
            [(ns.name, *key) for key in doomed],
        )
        ns.evictions_lru += len(doomed)


def _serialise(value: JsonValue, field: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidInput(field, f"must be JSON without NaN or infinity ({exc})") from exc
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise InvalidInput(field, f"serialises to {size:,} bytes; at most {MAX_VALUE_BYTES:,} are cached")
    return text


def _lookup(ns: _Namespace, conn: sqlite3.Connection, key: EntryKey, now: float) -> LookupResult:
    text_key = cache_key(*key)
    entry = ns.memory.get(key)
    source: Literal["memory", "disk"] | None = "memory" if entry is not None else None
    if entry is None:
        row = conn.execute(
            "SELECT value, expires_at FROM context_entry "
            "WHERE namespace = ? AND analyzer = ? AND version = ? AND content_hash = ?",
            (ns.name, *key),
        ).fetchone()
        if row is not None and (row["expires_at"] is None or now < row["expires_at"]):
            entry = _Entry(row["value"], row["expires_at"])
            ns.memory[key] = entry  # lazily restored; may evict the memory LRU (flushed by the caller)
            ns.restored += 1
            source = "disk"
    if entry is None:
        ns.misses += 1
        return LookupResult(key=text_key, content_hash=key[2], hit=False)
    ns.hits += 1
    return LookupResult(
        key=text_key,
        content_hash=key[2],
        hit=True,
        source=source,
        value=json.loads(entry.text),
        expires_in_s=None if entry.expires_at is None else entry.expires_at - now,
    )


def _put(ns: _Namespace, db: StateDB, rows: list[tuple[EntryKey, str, float | None]], now: float) -> None:
    # Several puts of one key in a batch: the last wins, as if they ran one after another.
    latest = {key: (text, expires) for key, text, expires in rows}
    with db.transaction() as conn:
        _purge_expired(ns, conn, now)
        existing = {
            key
            for key in latest
            if conn.execute(
                "SELECT 1 FROM context_entry WHERE namespace = ? AND analyzer = ? AND version = ? AND content_hash = ?",
                (ns.name, *key),
            ).fetchone()
        }
        _make_room(ns, conn, len(latest) - len(existing), keep=frozenset(latest))
        conn.executemany(
            "INSERT INTO context_entry (namespace, analyzer, version, content_hash, value, stored_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, analyzer, version, content_hash) "
            "DO UPDATE SET value = excluded.value, stored_at = excluded.stored_at, expires_at = excluded.expires_at",
            [(ns.name, *key, text, now, expires) for key, (text, expires) in latest.items()],
        )
        for key, (text, expires) in latest.items():
            ns.memory[key] = _Entry(text, expires)
        # A batch larger than max_items evicts some of its own keys: delete their rows after the insert.
        _flush(ns, conn)


def _invalidate(ns: _Namespace, db: StateDB, op: ContextCacheInvalidateOp, now: float) -> tuple[int, str]:
    clauses, params, what = ["namespace = ?"], [ns.name], "the namespace"
    match: Callable[[EntryKey], bool] = lambda _key: True  # noqa: E731
    if op.key is not None:
        analyzer, version, digest = op.key.split(":")
        clauses += ["analyzer = ?", "version = ?", "content_hash = ?"]
        params += [analyzer, version, digest]
        match, what = (lambda k: k == (analyzer, version, digest)), f"key {op.key}"
    elif op.text is not None:
        digest = content_hash(op.text)
        clauses.append("content_hash = ?")
        params.append(digest)
        match, what = (lambda k: k[2] == digest), f"every analyzer's entry for text {digest[:12]}…"
    elif op.analyzer is not None:
        clauses.append("analyzer = ?")
        params.append(op.analyzer)
        what = f"analyzer {op.analyzer}"
        if op.analyzer_version is not None:
            clauses.append("version = ?")
            params.append(op.analyzer_version)
            what += f" version {op.analyzer_version}"
        analyzer, version = op.analyzer, op.analyzer_version
        match = lambda k: k[0] == analyzer and (version is None or k[1] == version)  # noqa: E731
    with db.transaction() as conn:
        _purge_expired(ns, conn, now)  # expired entries count as expired, not as invalidated
        for key in [k for k in list(ns.memory.keys()) if match(k)]:
            del ns.memory[key]
        removed = conn.execute(f"DELETE FROM context_entry WHERE {' AND '.join(clauses)}", params).rowcount  # noqa: S608
    return int(removed), what


def _peek(memory: _Memory, key: EntryKey) -> _Entry | None:
    """An entry without touching its recency (``Cache.__getitem__`` skips the LRU bookkeeping)."""
    try:
        return Cache.__getitem__(memory, key)  # type: ignore[no-any-return]
    except KeyError:
        return None


def _memory_bytes(memory: _Memory) -> int:
    total = 0
    for key in list(memory.keys()):
        entry = _peek(memory, key)
        if entry is None:
            continue
        total += sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)
        total += sys.getsizeof(entry) + sys.getsizeof(entry.text) + _ENTRY_OVERHEAD_BYTES
    return total


def _stats(ns: _Namespace, db: StateDB, now: float) -> NamespaceStats:
    with db.transaction() as conn:
        _purge_expired(ns, conn, now)
        size = _size(ns, conn)
    lookups = ns.hits + ns.misses
    return NamespaceStats(
        hits=ns.hits,
        misses=ns.misses,
        hit_ratio=ns.hits / lookups if lookups else None,
        size=size,
        memory_items=len(ns.memory),
        max_items=ns.max_items,
        default_ttl_s=ns.default_ttl_s,
        evictions_lru=ns.evictions_lru,
        evictions_ttl=ns.evictions_ttl,
        restored_from_disk=ns.restored,
        memory_bytes=_memory_bytes(ns.memory),
    )


def _configure(ns: _Namespace, db: StateDB, op: ContextCacheConfigureOp, now: float) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO context_namespace (namespace, max_items, default_ttl_s) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace) DO UPDATE SET max_items = excluded.max_items, "
            "default_ttl_s = excluded.default_ttl_s",
            (ns.name, op.max_items, op.default_ttl_s),
        )
        _purge_expired(ns, conn, now)
        ns.max_items, ns.default_ttl_s = op.max_items, op.default_ttl_s
        # Entries only on disk are the least recently used: trim them first (judged against the current memory).
        _make_room(ns, conn, 0)
        old = ns.memory
        ns.memory = _Memory(op.max_items, old.clock)
        # popitem() hands the old entries over least recently used first, so the new cache keeps their order and,
        # when smaller, evicts from the same end.
        while len(old):
            try:
                key, entry = old.popitem()
            except KeyError:  # the rest expired meanwhile
                break
            ns.memory[key] = entry
        ns.memory.expired.extend(old.expired)
        _flush(ns, conn)


# --------------------------------------------------------------------------- the component


@component(
    "ContextCacheManager",
    tier="tier2",
    capabilities=["caching", "context_cache", "analysis_cache"],
    example={"operation": "stats", "namespace": "linguistic"},
    examples=[
        {
            "operation": "put",
            "namespace": "linguistic",
            "analyzer": "readability",
            "analyzer_version": "1.0.0",
            "text": "Summarise the attached report in three bullet points.",
            "value": {"flesch_reading_ease": 48.2, "sentences": 1},
            "ttl_s": 3600,
        },
        {
            "operation": "get",
            "namespace": "linguistic",
            "analyzer": "readability",
            "analyzer_version": "1.0.0",
            "text": "Summarise the attached report in three bullet points.",
        },
        {"operation": "invalidate", "namespace": "linguistic", "analyzer": "readability"},
        {"operation": "configure", "namespace": "domain", "max_items": 5000, "default_ttl_s": 86400},
    ],
    deterministic=False,  # a cache: results depend on what was stored before
)
def context_cache_manager(request: ContextCacheManagerInput, ctx: RunContext) -> ContextCacheManagerOutput:
    """TTL/LRU cache of linguistic and domain analysis results, keyed by text hash and analyzer version.

    ``get``/``get_many`` look a text up (memory, then the service's SQLite, restoring lazily); ``put``/``put_many``
    store JSON results with a TTL; ``invalidate`` removes a key, a text's entries, an analyzer's (version's)
    entries or a namespace; ``stats`` reports hits, misses, hit ratio, size, LRU and TTL evictions and a memory
    estimate; ``configure`` sets a namespace's capacity and default TTL. Entries survive a restart.
    """
    op = request.root
    db = ctx.state(STATE, _MIGRATIONS)
    caches = ctx.resources.get(RESOURCE)
    if caches is None:
        caches = ctx.resources.setdefault(RESOURCE, ContextCaches())
    ns = caches.namespace(op.namespace, db)
    base = {"operation": op.operation, "namespace": op.namespace}
    with ns.lock:
        now = caches.clock()
        if isinstance(op, ContextCacheGetOp | ContextCacheGetManyOp):
            texts = [op.text] if isinstance(op, ContextCacheGetOp) else op.texts
            with db.transaction() as conn:
                _purge_expired(ns, conn, now)
                results = [
                    _lookup(ns, conn, (op.analyzer, op.analyzer_version, content_hash(text)), now) for text in texts
                ]
                _flush(ns, conn)  # restoring from disk may have evicted memory's LRU entries
            hits = sum(r.hit for r in results)
            return ContextCacheManagerOutput(**base, results=results, message=f"{hits} of {len(results)} found")

        if isinstance(op, ContextCachePutOp | ContextCachePutManyOp):
            puts: list[ContextCachePutOp | PutItem] = [op] if isinstance(op, ContextCachePutOp) else list(op.items)
            rows = []
            for i, put in enumerate(puts):
                field_name = "value" if isinstance(op, ContextCachePutOp) else f"items[{i}].value"
                key = (op.analyzer, op.analyzer_version, content_hash(put.text))
                # An explicit null is "no expiry"; an omitted ttl_s takes the namespace's default.
                ttl = put.ttl_s if "ttl_s" in put.model_fields_set else ns.default_ttl_s
                value = put.value
                rows.append((key, _serialise(value, field_name), None if ttl is None else now + ttl))
            _put(ns, db, rows, now)
            keys = [cache_key(*key) for key, _, _ in rows]
            return ContextCacheManagerOutput(**base, keys=keys, message=f"stored {len(keys)} entries")

        if isinstance(op, ContextCacheInvalidateOp):
            removed, what = _invalidate(ns, db, op, now)
            return ContextCacheManagerOutput(**base, removed=removed, message=f"invalidated {what}: {removed} removed")

        if isinstance(op, ContextCacheConfigureOp):
            _configure(ns, db, op, now)
            ttl = "no expiry" if op.default_ttl_s is None else f"a default TTL of {op.default_ttl_s:g} s"
            return ContextCacheManagerOutput(
                **base,
                stats=_stats(ns, db, now),
                message=f"{op.namespace!r} now holds up to {op.max_items} entries with {ttl}",
            )

        return ContextCacheManagerOutput(
            **base, stats=_stats(ns, db, now), message="counters since this service process started"
        )
