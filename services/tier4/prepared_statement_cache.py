"""Real server-side prepared statements on PostgreSQL, bounded by an LRU, with a measured speed-up.

How: explicit SQL ``PREPARE <name> AS <statement>`` / ``EXECUTE <name>(…)`` / ``DEALLOCATE <name>``
on one dedicated session per service (kept in ``ctx.resources``; ``pg_prepared_statements`` is
per session, so a pooled connection would scatter the statements). The LRU (an ``OrderedDict`` of
statement text → name, capacity ``capacity``) is ours: a miss PREPAREs, a hit EXECUTEs the cached
name, and an insertion over capacity DEALLOCATEs the least recently used name on the server.
psycopg's own automatic preparation is switched off on that session (``prepare_threshold=None``)
so the server's ``pg_prepared_statements`` shows exactly the LRU. ``EXECUTE`` cannot take protocol
bind parameters, so its arguments are bound by psycopg's ``ClientCursor`` (psycopg's own literal
adaptation — no string formatting here), and the server casts them to the prepared types.

Which statements: the rule of :func:`services.tier4.type_safe_psycopg_client.parse_parameterised`
— exactly one SELECT / WITH / VALUES / INSERT / UPDATE / DELETE with ``%s`` or ``%(name)s``
placeholders, and no quotes, semicolons, comments or ``$``. So no DDL, no multi-statements, no
non-parameterised text (422 naming ``sql``). The caller's placeholders become ``$1..$n``.

Operations: ``execute`` (each parameter row, through the cache), ``benchmark`` (the same statement
N times with ``prepare=False`` — parsed and planned every time — then N times through EXECUTE of
the prepared name, on the same session; measured times and the ratio), ``status`` (LRU size,
capacity, hits / misses / evictions and the server's ``pg_prepared_statements`` rows; "not
configured" as data when ``MLMESH_DATABASE_URL`` is unset — the example).
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import threading
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field, RootModel

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.infra import postgres_errors, require_database_url
from services.tier4.type_safe_psycopg_client import Params, ParsedSQL, SqlText, parse_parameterised, server_error

__all__ = [
    "DEFAULT_CAPACITY",
    "PreparedBenchmarkOp",
    "PreparedExecuteOp",
    "PreparedStatementCacheInput",
    "PreparedStatementCacheOutput",
    "PreparedStatusOp",
    "StatementCache",
    "prepared_statement_cache",
]

DEFAULT_CAPACITY = 100
STATEMENT_TIMEOUT_MS = 10_000
RESOURCE_KEY = "prepared_statement_cache"
Capacity = Annotated[int, Field(ge=1, le=1000, description="LRU bound on prepared statements (resizes the cache)")]


# --------------------------------------------------------------------------- the cache


def _jsonable(value: Any) -> Any:
    """A database value as JSON (non-finite floats → None, decimals → text, times → ISO 8601)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


class StatementCache:
    """One dedicated PostgreSQL session and the LRU of statements prepared on it (thread-safe)."""

    def __init__(self, url: str, capacity: int = DEFAULT_CAPACITY) -> None:
        self.url = url
        self.capacity = capacity
        self.hits = self.misses = self.evictions = 0
        self._lru: OrderedDict[str, str] = OrderedDict()
        self._serial = 0
        self._conn: psycopg.Connection[Any] | None = None
        self.lock = threading.Lock()

    def connection(self) -> psycopg.Connection[Any]:
        """The session, (re)opened when needed; a new session has no prepared statements, so the LRU restarts."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            with postgres_errors():
                conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=5,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                )
            conn.prepare_threshold = None  # only our explicit PREPAREs on this session
            self._conn = conn
            self._lru.clear()
        return self._conn

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict_over(capacity)

    def _evict_over(self, bound: int) -> None:
        conn = self.connection()
        while len(self._lru) > bound:
            _, name = self._lru.popitem(last=False)
            with postgres_errors():
                conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
            self.evictions += 1

    def prepared_name(self, parsed: ParsedSQL) -> tuple[str, bool]:
        """The server-side name for ``parsed`` (PREPAREd on a miss) and whether it was a hit."""
        conn = self.connection()
        key = parsed.dollar_text
        name = self._lru.get(key)
        if name is not None:
            self._lru.move_to_end(key)
            self.hits += 1
            return name, True
        self._evict_over(self.capacity - 1)
        self._serial += 1
        name = f"mlmesh_ps_{self._serial}"
        with postgres_errors():
            try:
                # The caller's statement text (checked by parse_parameterised) is the body of the PREPARE.
                conn.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(key))  # type: ignore[arg-type]
            except (psycopg.ProgrammingError, psycopg.DataError) as exc:
                raise server_error(exc, "sql") from exc
        self._lru[key] = name
        self.misses += 1
        return name, False

    def execute_prepared(self, name: str, values: list[Any]) -> psycopg.ClientCursor[Any]:
        """``EXECUTE name(values…)`` with psycopg binding the values client-side."""
        cur = psycopg.ClientCursor(self.connection())
        args = sql.SQL(", ").join([sql.Placeholder()] * len(values))
        cur.execute(sql.SQL("EXECUTE {}({})").format(sql.Identifier(name), args), values)
        return cur

    def server_statements(self) -> list[dict[str, Any]]:
        """This session's rows of ``pg_prepared_statements`` (the server's own view)."""
        with postgres_errors():
            rows = (
                self.connection()
                .execute(
                    "SELECT name, statement, parameter_types::text[], from_sql, generic_plans, custom_plans,"
                    " prepare_time FROM pg_prepared_statements ORDER BY prepare_time",
                    prepare=False,
                )
                .fetchall()
            )
        keys = ("name", "statement", "parameter_types", "from_sql", "generic_plans", "custom_plans", "prepare_time")
        return [{k: _jsonable(v) for k, v in zip(keys, row, strict=True)} for row in rows]

    def lru_names(self) -> list[str]:
        """Cached names, least recently used first."""
        return list(self._lru.values())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _cache(ctx: RunContext) -> StatementCache:
    url = require_database_url(ctx.settings)
    cache = ctx.resources.get(RESOURCE_KEY)
    if cache is None:
        cache = ctx.resources.setdefault(RESOURCE_KEY, StatementCache(url))
    return cache  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- inputs


class PreparedExecuteOp(ComponentInput):
    operation: Literal["execute"]
    sql: SqlText
    params: list[Params] = Field(min_length=1, max_length=1000, description="one parameter set per execution")
    capacity: Capacity | None = None
    max_rows: int = Field(100, ge=0, le=1000, description="rows of the last execution returned at most")


class PreparedBenchmarkOp(ComponentInput):
    operation: Literal["benchmark"]
    sql: SqlText
    params: Params = Field(description="the parameter set used for every run")
    iterations: int = Field(200, ge=1, le=5000, description="executions per mode")
    warmup: int = Field(5, ge=0, le=100, description="untimed executions per mode first")
    capacity: Capacity | None = None


class PreparedStatusOp(ComponentInput):
    operation: Literal["status"]


class PreparedStatementCacheInput(
    RootModel[
        Annotated[Union[PreparedExecuteOp, PreparedBenchmarkOp, PreparedStatusOp], Field(discriminator="operation")]  # noqa: UP007
    ]
):
    """One of: execute, benchmark, status."""


# --------------------------------------------------------------------------- outputs


class CacheStats(BaseModel):
    capacity: int
    size: int
    hits: int
    misses: int
    evictions: int
    names: list[str] = Field(description="cached statement names, least recently used first")


class ExecutionResult(BaseModel):
    statement_name: str
    cache_hit: bool = Field(description="whether the statement was already prepared before this call")
    executions: int
    rowcounts: list[int]
    columns: list[str]
    rows: list[list[Any]] = Field(description="rows of the last execution (JSON-native values)")
    seconds: float


class BenchmarkResult(BaseModel):
    iterations: int
    unprepared_total_s: float
    prepared_total_s: float
    unprepared_median_ms: float
    prepared_median_ms: float
    speedup: float | None = Field(description="unprepared_total_s / prepared_total_s (None if a total is 0)")
    statement_name: str


class PreparedStatementCacheOutput(ComponentOutput):
    operation: str
    configured: bool = Field(description="whether MLMESH_DATABASE_URL is set")
    message: str | None = None
    cache: CacheStats | None = None
    server_statements: list[dict[str, Any]] | None = Field(None, description="pg_prepared_statements of the session")
    execution: ExecutionResult | None = None
    benchmark: BenchmarkResult | None = None


# --------------------------------------------------------------------------- operations


def _stats(cache: StatementCache) -> CacheStats:
    names = cache.lru_names()
    return CacheStats(
        capacity=cache.capacity,
        size=len(names),
        hits=cache.hits,
        misses=cache.misses,
        evictions=cache.evictions,
        names=names,
    )


def _checked(request: PreparedExecuteOp | PreparedBenchmarkOp) -> tuple[ParsedSQL, list[list[Any]]]:
    """The statement and its value rows in ``$n`` order, refused (422) before any connection is made."""
    parsed = parse_parameterised(request.sql)
    if isinstance(request, PreparedBenchmarkOp):
        if parsed.kind not in ("select", "values", "with"):
            raise InvalidInput("sql", "benchmark runs the statement many times: only SELECT / VALUES / WITH allowed")
        return parsed, [parsed.order(request.params, "params")]
    return parsed, [parsed.order(params, f"params[{i}]") for i, params in enumerate(request.params)]


def _execute(
    request: PreparedExecuteOp, parsed: ParsedSQL, value_rows: list[list[Any]], cache: StatementCache
) -> PreparedStatementCacheOutput:
    if request.capacity is not None:
        cache.resize(request.capacity)
    name, hit = cache.prepared_name(parsed)
    rowcounts: list[int] = []
    columns: list[str] = []
    rows: list[list[Any]] = []
    started = time.perf_counter()
    with postgres_errors():
        for i, values in enumerate(value_rows):
            try:
                cur = cache.execute_prepared(name, values)
            except (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError) as exc:
                raise server_error(exc, f"params[{i}]") from exc
            rowcounts.append(cur.rowcount)
            if i == len(value_rows) - 1 and cur.description:
                columns = [d.name for d in cur.description]
                rows = (
                    [[_jsonable(v) for v in row] for row in cur.fetchmany(request.max_rows)] if request.max_rows else []
                )
    seconds = time.perf_counter() - started
    return PreparedStatementCacheOutput(
        operation="execute",
        configured=True,
        cache=_stats(cache),
        execution=ExecutionResult(
            statement_name=name,
            cache_hit=hit,
            executions=len(value_rows),
            rowcounts=rowcounts,
            columns=columns,
            rows=rows,
            seconds=seconds,
        ),
    )


def _benchmark(
    request: PreparedBenchmarkOp, parsed: ParsedSQL, values: list[Any], cache: StatementCache
) -> PreparedStatementCacheOutput:
    if request.capacity is not None:
        cache.resize(request.capacity)
    name, _ = cache.prepared_name(parsed)
    conn = cache.connection()

    def unprepared() -> None:
        conn.execute(request.sql, request.params, prepare=False).fetchall()  # type: ignore[arg-type]

    def prepared() -> None:
        cache.execute_prepared(name, values).fetchall()

    timings: dict[str, list[float]] = {}
    with postgres_errors():
        try:
            for label, run in (("unprepared", unprepared), ("prepared", prepared)):
                for _ in range(request.warmup):
                    run()
                samples: list[float] = []
                for _ in range(request.iterations):
                    started = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - started)
                timings[label] = samples
        except (psycopg.ProgrammingError, psycopg.DataError) as exc:
            raise server_error(exc, "params") from exc
    un_total, pr_total = sum(timings["unprepared"]), sum(timings["prepared"])
    return PreparedStatementCacheOutput(
        operation="benchmark",
        configured=True,
        cache=_stats(cache),
        benchmark=BenchmarkResult(
            iterations=request.iterations,
            unprepared_total_s=un_total,
            prepared_total_s=pr_total,
            unprepared_median_ms=statistics.median(timings["unprepared"]) * 1000,
            prepared_median_ms=statistics.median(timings["prepared"]) * 1000,
            speedup=un_total / pr_total if un_total > 0 and pr_total > 0 else None,
            statement_name=name,
        ),
    )


@component(
    "PreparedStatementCache",
    tier="tier4",
    capabilities=["postgres", "prepared_statements", "lru_cache", "benchmark"],
    example={"operation": "status"},
    deterministic=False,
    errors={
        404: "the statement names a table that does not exist",
        409: "the statement violates an integrity constraint",
        503: "PostgreSQL not configured (set MLMESH_DATABASE_URL) or unreachable",
    },
)
def prepared_statement_cache(request: PreparedStatementCacheInput, ctx: RunContext) -> PreparedStatementCacheOutput:
    """Server-side prepared statements (PREPARE / EXECUTE / DEALLOCATE) behind an LRU, with a measured speed-up.

    One dedicated PostgreSQL session per service holds the statements; ``status`` shows the LRU
    and the server's ``pg_prepared_statements`` (or "not configured" as data).
    """
    op = request.root
    if isinstance(op, PreparedStatusOp) and not ctx.settings.database_url:
        return PreparedStatementCacheOutput(
            operation="status",
            configured=False,
            message="PostgreSQL is not configured: set MLMESH_DATABASE_URL (e.g. postgresql://127.0.0.1:5432/test)",
        )
    checked = None if isinstance(op, PreparedStatusOp) else _checked(op)
    cache = _cache(ctx)
    with cache.lock:
        if isinstance(op, PreparedExecuteOp) and checked:
            return _execute(op, *checked, cache)
        if isinstance(op, PreparedBenchmarkOp) and checked:
            return _benchmark(op, checked[0], checked[1][0], cache)
        statements = cache.server_statements()
        return PreparedStatementCacheOutput(
            operation="status", configured=True, message="connected", cache=_stats(cache), server_statements=statements
        )
