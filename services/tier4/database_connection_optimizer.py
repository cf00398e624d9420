"""Session-level PostgreSQL settings from machine memory and workload, verified with EXPLAIN ANALYZE.

**Recommend.** From the machine's memory ``M`` (``psutil.virtual_memory().total`` unless given), the
workload (``oltp`` / ``olap`` / ``mixed``), the number of connections ``C``, the CPU count and the storage:

==================================  =============================================================
``effective_cache_size``            ¾ · M (what the OS cache plus shared_buffers can hold; a planner hint)
``work_mem``                        (M − ¼·M) / (C · k), k = 4 (oltp), 3 (mixed), 2 (olap) sorts/hashes
                                    per query; clamped to [4 MB, 2 GB]
``random_page_cost``                1.1 (ssd), 1.5 (network), 4.0 (hdd)
``effective_io_concurrency``        200 (ssd, network), 2 (hdd)
``jit``                             off for oltp (compile time dominates short queries), on otherwise
``max_parallel_workers_per_gather`` 0 (oltp), min(2, cpus/2) (mixed), min(4, cpus/2) (olap)
``enable_partitionwise_join/_agg``  on for olap (defaults are off; they help partitioned scans)
``enable_<node>``                   off for every node the caller names in ``disable_nodes`` (diagnosis)
==================================  =============================================================

Only settings a session may change are recommended: when a database is configured every name is checked
against ``pg_settings`` (``context = 'user'``) and anything else is dropped and listed in ``rejected``.

**Verify.** Runs a caller's read-only, parameterised ``SELECT`` with ``EXPLAIN (ANALYZE, BUFFERS, FORMAT
JSON)`` before and after applying the recommendation with ``set_config(name, value, is_local => true)``
(``SET LOCAL``), inside one ``READ ONLY`` transaction that is rolled back: the server's configuration and
other sessions are never touched, and a statement that tries to write fails (422). The query runs once
first (discarded) so both measured runs see a warm cache.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import psutil
import psycopg
from psycopg import sql as pgsql
from pydantic import Field, RootModel

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.infra import pg_connection, postgres_errors

__all__ = [
    "DatabaseConnectionOptimizerInput",
    "DatabaseConnectionOptimizerOutput",
    "OptimizerRecommendOp",
    "OptimizerStatusOp",
    "OptimizerVerifyOp",
    "PlanRun",
    "Recommendation",
    "database_connection_optimizer",
    "recommend_settings",
]

Workload = Literal["oltp", "olap", "mixed"]
Storage = Literal["ssd", "network", "hdd"]
PlanNode = Literal[
    "seqscan", "indexscan", "indexonlyscan", "bitmapscan", "nestloop", "hashjoin", "mergejoin", "hashagg",
    "sort", "material", "memoize", "incremental_sort", "tidscan", "gathermerge",
]  # fmt: skip
Param = Annotated[str, Field(max_length=10_000)] | int | float | bool | None

_KB = 1024
_MB = 1024 * _KB
_OPS_PER_QUERY = {"oltp": 4, "mixed": 3, "olap": 2}
_RANDOM_PAGE_COST = {"ssd": "1.1", "network": "1.5", "hdd": "4.0"}
_IO_CONCURRENCY = {"ssd": "200", "network": "200", "hdd": "2"}
# A statement verify will EXPLAIN: one SELECT/WITH/VALUES/TABLE statement, no second statement after a ';'.
_READ_ONLY_START = re.compile(r"^\s*(\(\s*)*(select|with|values|table)\b", re.IGNORECASE)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


class _Workload(ComponentInput):
    workload: Workload = Field(description="oltp: many short queries; olap: few large ones; mixed: both")
    connections: int = Field(20, ge=1, le=10_000, description="concurrent connections expected to run queries")
    memory_bytes: int | None = Field(
        None, ge=64 * _MB, le=2**50, description="machine memory to plan for (default: this machine's, psutil)"
    )
    cpus: int | None = Field(None, ge=1, le=4096, description="CPU count (default: this machine's)")
    storage: Storage = Field("ssd", description="storage behind the data files (random I/O cost)")
    disable_nodes: list[PlanNode] = Field(
        default_factory=list, max_length=14, description="plan nodes to switch off for this session (diagnosis)"
    )


class OptimizerStatusOp(ComponentInput):
    """Whether a database is configured (works without one)."""

    operation: Literal["status"]


class OptimizerRecommendOp(_Workload):
    """Recommend session settings (checked against pg_settings when a database is configured)."""

    operation: Literal["recommend"]


class OptimizerVerifyOp(_Workload):
    """EXPLAIN ANALYZE a read-only query before and after the recommendation (rolled back)."""

    operation: Literal["verify"]
    sql: str = Field(
        min_length=1, max_length=20_000, description="one read-only SELECT with %s placeholders for params"
    )
    params: list[Param] = Field(default_factory=list, max_length=100, description="values for the placeholders")
    timeout_ms: int = Field(10_000, ge=10, le=120_000, description="statement_timeout for each run")


class DatabaseConnectionOptimizerInput(
    RootModel[Annotated[OptimizerStatusOp | OptimizerRecommendOp | OptimizerVerifyOp, Field(discriminator="operation")]]
):
    """One optimizer operation."""


class Recommendation(ComponentOutput):
    name: str
    value: str = Field(description="the value as SET accepts it")
    reason: str
    current: str | None = Field(None, description="the session's current value (when checked against a server)")
    context: str | None = Field(None, description="pg_settings.context (always 'user' when checked)")


class PlanRun(ComponentOutput):
    planning_time_ms: float
    execution_time_ms: float
    total_cost: float
    node_types: list[str] = Field(description="plan nodes in depth-first order")
    shared_hit_blocks: int
    shared_read_blocks: int
    plan: dict[str, Any] = Field(description="EXPLAIN (FORMAT JSON) plan tree")


class Verification(ComponentOutput):
    before: PlanRun
    after: PlanRun
    plan_changed: bool = Field(description="the node sequence differs")
    execution_speedup: float | None = Field(description="before / after execution time; None if after is 0")


class DatabaseConnectionOptimizerOutput(ComponentOutput):
    operation: str
    configured: bool
    memory_bytes: int | None = None
    cpus: int | None = None
    checked_against_server: bool = Field(False, description="names were checked in pg_settings")
    recommendations: list[Recommendation] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list, description="settings dropped: not session-settable here")
    verification: Verification | None = None
    message: str | None = None


def recommend_settings(op: _Workload) -> tuple[int, int, list[Recommendation]]:
    """The recommendation for ``op`` before any server check: (memory, cpus, settings)."""
    memory = op.memory_bytes or int(psutil.virtual_memory().total)
    cpus = op.cpus or psutil.cpu_count() or 1
    work_mem_kb = int((memory - memory // 4) / (op.connections * _OPS_PER_QUERY[op.workload]) // _KB)
    work_mem_kb = min(max(work_mem_kb, 4 * _KB), 2 * _MB)
    gather = {"oltp": 0, "mixed": min(2, cpus // 2), "olap": min(4, cpus // 2)}[op.workload]
    recs = [
        Recommendation(
            name="effective_cache_size", value=f"{memory * 3 // 4 // _KB}kB",
            reason="¾ of machine memory: the cache the planner may assume for index scans",
        ),
        Recommendation(
            name="work_mem", value=f"{work_mem_kb}kB",
            reason=f"¾ of memory shared by {op.connections} connections × {_OPS_PER_QUERY[op.workload]} "
            f"sort/hash nodes per {op.workload} query, within [4MB, 2GB]",
        ),
        Recommendation(
            name="random_page_cost", value=_RANDOM_PAGE_COST[op.storage],
            reason=f"random reads on {op.storage} cost about this much more than sequential ones",
        ),
        Recommendation(
            name="effective_io_concurrency", value=_IO_CONCURRENCY[op.storage],
            reason=f"concurrent prefetch requests {op.storage} storage sustains (bitmap heap scans)",
        ),
        Recommendation(
            name="jit", value="off" if op.workload == "oltp" else "on",
            reason="JIT compilation time dominates short OLTP queries" if op.workload == "oltp"
            else "JIT pays off on long-running expression-heavy queries",
        ),
        Recommendation(
            name="max_parallel_workers_per_gather", value=str(gather),
            reason="no parallel plans for short queries" if op.workload == "oltp"
            else f"parallel scans on {cpus} CPUs, leaving CPUs for other sessions",
        ),
    ]  # fmt: skip
    if op.workload == "olap":
        recs += [
            Recommendation(name=f"enable_partitionwise_{kind}", value="on", reason=f"partition-wise {kind}s on "
                           "partitioned tables (off by default for planning cost)")
            for kind in ("join", "aggregate")
        ]  # fmt: skip
    recs += [
        Recommendation(name=f"enable_{node}", value="off", reason="requested: discourage this plan node")
        for node in dict.fromkeys(op.disable_nodes)
    ]
    return memory, cpus, recs


def _check_server(conn: psycopg.Connection, recs: list[Recommendation]) -> tuple[list[Recommendation], list[str]]:
    rows = conn.execute(
        "SELECT name, context, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", ([r.name for r in recs],)
    ).fetchall()
    known = {name: (context, current) for name, context, current in rows}
    kept = [
        r.model_copy(update={"context": known[r.name][0], "current": known[r.name][1]})
        for r in recs
        if r.name in known and known[r.name][0] == "user"
    ]
    return kept, [r.name for r in recs if r.name not in known or known[r.name][0] != "user"]


def _walk(node: dict[str, Any]) -> list[str]:
    return [node["Node Type"], *(t for child in node.get("Plans", []) for t in _walk(child))]


def _explain(conn: psycopg.Connection, sql: str, params: list[Any]) -> PlanRun:
    # The caller's statement is the point of verify; it runs read-only, with its values bound as parameters.
    query = pgsql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + pgsql.SQL(sql)  # type: ignore[arg-type]
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    doc = row[0][0]
    plan = doc["Plan"]
    return PlanRun(
        planning_time_ms=float(doc["Planning Time"]),
        execution_time_ms=float(doc["Execution Time"]),
        total_cost=float(plan["Total Cost"]),
        node_types=_walk(plan),
        shared_hit_blocks=int(plan.get("Shared Hit Blocks", 0)),
        shared_read_blocks=int(plan.get("Shared Read Blocks", 0)),
        plan=plan,
    )


def _read_only_statement(sql: str) -> str:
    body = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not _READ_ONLY_START.match(body):
        raise InvalidInput("sql", "only a read-only SELECT (or WITH/VALUES/TABLE) statement can be verified")
    if ";" in body:
        raise InvalidInput("sql", "one statement only (no ';' inside)")
    return body


def _verify(conn: psycopg.Connection, op: OptimizerVerifyOp, recs: list[Recommendation]) -> Verification:
    statement = _read_only_statement(op.sql)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(op.timeout_ms),))
            _explain(conn, statement, op.params)  # warm-up: both measured runs then see a warm cache
            before = _explain(conn, statement, op.params)
            for rec in recs:
                conn.execute("SELECT set_config(%s, %s, true)", (rec.name, rec.value))
            after = _explain(conn, statement, op.params)
    except psycopg.errors.QueryCanceled as exc:
        raise InvalidInput("timeout_ms", f"the query ran longer than {op.timeout_ms} ms") from exc
    except (psycopg.ProgrammingError, psycopg.DataError, psycopg.errors.ReadOnlySqlTransaction) as exc:
        raise InvalidInput("sql", f"PostgreSQL rejected the query: {str(exc).splitlines()[0]}") from exc
    speedup = before.execution_time_ms / after.execution_time_ms if after.execution_time_ms > 0 else None
    return Verification(
        before=before,
        after=after,
        plan_changed=before.node_types != after.node_types,
        execution_speedup=speedup if speedup is None or math.isfinite(speedup) else None,
    )


@component(
    "DatabaseConnectionOptimizer",
    tier="tier4",
    capabilities=["database_tuning", "postgresql", "query_plans"],
    example={"operation": "recommend", "workload": "oltp", "connections": 50, "memory_bytes": 8 * 1024**3},
    examples=[
        {"operation": "status"},
        {
            "operation": "verify",
            "workload": "olap",
            "sql": "SELECT count(*) FROM pg_class WHERE relpages > %s",
            "params": [0],
        },
    ],
    deterministic=False,
    errors={503: "PostgreSQL not configured (set MLMESH_DATABASE_URL) or unreachable (verify)"},
)
def database_connection_optimizer(
    request: DatabaseConnectionOptimizerInput, ctx: RunContext
) -> DatabaseConnectionOptimizerOutput:
    """Recommend session-level PostgreSQL settings; verify them with EXPLAIN ANALYZE before and after.

    ``recommend`` works without a database (names are then not checked against pg_settings); ``verify``
    needs one and never changes server-level configuration: SET LOCAL in a read-only, rolled-back
    transaction.
    """
    op = request.root
    configured = bool(ctx.settings.database_url)
    if isinstance(op, OptimizerStatusOp):
        return DatabaseConnectionOptimizerOutput(
            operation="status", configured=configured,
            message=None if configured else "PostgreSQL is not configured: set MLMESH_DATABASE_URL to check and "
            "verify recommendations",
        )  # fmt: skip
    memory, cpus, recs = recommend_settings(op)
    if isinstance(op, OptimizerRecommendOp) and not configured:
        return DatabaseConnectionOptimizerOutput(
            operation="recommend", configured=False, memory_bytes=memory, cpus=cpus, recommendations=recs,
            message="not checked against pg_settings: no database configured",
        )  # fmt: skip
    if isinstance(op, OptimizerVerifyOp):
        _read_only_statement(op.sql)  # 422 before touching the pool
    with pg_connection(ctx) as conn, postgres_errors():
        kept, rejected = _check_server(conn, recs)
        verification = _verify(conn, op, kept) if isinstance(op, OptimizerVerifyOp) else None
    return DatabaseConnectionOptimizerOutput(
        operation=op.operation, configured=True, memory_bytes=memory, cpus=cpus, checked_against_server=True,
        recommendations=kept, rejected=rejected, verification=verification,
    )  # fmt: skip
