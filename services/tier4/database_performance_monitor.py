"""PostgreSQL health from the statistics views: cache hits, connections, slow queries, unused indexes, bloat.

``operation="report"`` reads, for the configured database (``MLMESH_DATABASE_URL``):

* ``pg_stat_database`` — cache hit ratio ``blks_hit / (blks_hit + blks_read)``, commits, rollbacks
  (rollback ratio), deadlocks, temporary bytes, and backends against ``max_connections``;
* ``pg_stat_user_tables`` — dead-tuple ratio ``n_dead_tup / (n_live_tup + n_dead_tup)`` and sequential
  against index scans per table;
* ``pg_stat_user_indexes`` — indexes never scanned (``idx_scan = 0``) with their size; indexes that
  back a primary-key, unique or exclusion constraint are listed but not flagged (they enforce integrity);
* ``pg_stat_activity`` — non-idle statements of other sessions running longer than a threshold;
* ``pg_stat_statements`` — the slowest statements by mean execution time, when the extension is installed
  and loaded; otherwise the report says which of the two is missing.

Each breach of a threshold becomes a finding with a severity (``warning`` / ``critical``). Ratios whose
denominator is zero (a fresh database, an empty table) are ``None`` with a reason, never a guessed value.

``operation="status"`` works without a database: it says whether one is configured and, if so, whether it
answers and whether ``pg_stat_statements`` is available.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import psycopg
from pydantic import Field, RootModel, model_validator

from mlmesh.errors import ServiceUnavailable
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.infra import pg_connection

__all__ = [
    "DatabasePerformanceMonitorInput",
    "DatabasePerformanceMonitorOutput",
    "DatabaseReport",
    "Finding",
    "MonitorReportOp",
    "MonitorStatusOp",
    "database_performance_monitor",
]

Severity = Literal["info", "warning", "critical"]
_QUERY_CHARS = 500


class MonitorReportOp(ComponentInput):
    """Read the statistics views and grade them against thresholds."""

    operation: Literal["report"]
    cache_hit_warning: float = Field(0.99, gt=0, le=1, description="cache hit ratio below this is a warning")
    cache_hit_critical: float = Field(0.90, gt=0, le=1, description="cache hit ratio below this is critical")
    connections_warning: float = Field(0.8, gt=0, le=1, description="backends / max_connections above: warning")
    connections_critical: float = Field(0.95, gt=0, le=1, description="backends / max_connections above: critical")
    dead_tuple_warning: float = Field(0.1, gt=0, le=1, description="dead-tuple ratio above this is a warning")
    dead_tuple_critical: float = Field(0.3, gt=0, le=1, description="dead-tuple ratio above this is critical")
    dead_tuple_min_rows: int = Field(
        1000, ge=0, le=10**12, description="tables with fewer live+dead tuples are not graded for bloat"
    )
    rollback_warning: float = Field(0.05, gt=0, le=1, description="rollbacks / transactions above: warning")
    long_running_s: float = Field(60.0, gt=0, le=86_400, description="active statements older than this are listed")
    slow_query_ms: float = Field(100.0, gt=0, le=3_600_000, description="pg_stat_statements mean time above this")
    schema_name: str | None = Field(
        None, min_length=1, max_length=63, description="only tables and indexes of this schema (default: all)"
    )
    limit: int = Field(50, ge=1, le=1000, description="most rows listed per section")

    @model_validator(mode="after")
    def _ordered(self) -> MonitorReportOp:
        if self.cache_hit_critical > self.cache_hit_warning:
            raise ValueError("cache_hit_critical must not exceed cache_hit_warning")
        if self.connections_critical < self.connections_warning:
            raise ValueError("connections_critical must be at least connections_warning")
        if self.dead_tuple_critical < self.dead_tuple_warning:
            raise ValueError("dead_tuple_critical must be at least dead_tuple_warning")
        return self


class MonitorStatusOp(ComponentInput):
    """Whether a database is configured and reachable (works without one)."""

    operation: Literal["status"]


class DatabasePerformanceMonitorInput(
    RootModel[Annotated[MonitorReportOp | MonitorStatusOp, Field(discriminator="operation")]]
):
    """One monitor operation."""


class Finding(ComponentOutput):
    kind: str = Field(description="cache_hit_ratio, connections, rollback_ratio, dead_tuples, unused_index, ...")
    severity: Severity
    subject: str = Field(description="database, table or index the finding is about")
    value: float | None = None
    threshold: float | None = None
    message: str


class TableStats(ComponentOutput):
    schema_name: str
    table: str
    n_live_tup: int
    n_dead_tup: int
    dead_tuple_ratio: float | None = Field(description="None when the table holds no tuples")
    seq_scan: int
    idx_scan: int | None = Field(description="None when the table has no index")
    last_vacuum: str | None
    last_autovacuum: str | None


class IndexStats(ComponentOutput):
    schema_name: str
    table: str
    index: str
    idx_scan: int
    size_bytes: int
    enforces_constraint: bool = Field(description="backs a primary-key, unique or exclusion constraint")


class LongRunningQuery(ComponentOutput):
    pid: int
    state: str | None
    duration_s: float
    wait_event_type: str | None
    query: str = Field(description=f"first {_QUERY_CHARS} characters")


class SlowStatement(ComponentOutput):
    query: str = Field(description=f"first {_QUERY_CHARS} characters (normalised by pg_stat_statements)")
    calls: int
    mean_exec_time_ms: float
    total_exec_time_ms: float
    rows: int


class StatementsStatus(ComponentOutput):
    available: bool
    reason: str | None = Field(None, description="why pg_stat_statements could not be read")
    slow_statements: list[SlowStatement] = Field(default_factory=list)


class DatabaseReport(ComponentOutput):
    database: str
    server_version: str
    blks_hit: int
    blks_read: int
    cache_hit_ratio: float | None = Field(description="blks_hit / (blks_hit + blks_read); None before any read")
    xact_commit: int
    xact_rollback: int
    rollback_ratio: float | None
    deadlocks: int
    temp_bytes: int
    numbackends: int = Field(description="backends connected to this database")
    total_backends: int = Field(description="backends connected to every database of the server")
    max_connections: int
    connection_ratio: float = Field(description="total_backends / max_connections")
    tables: list[TableStats]
    unused_indexes: list[IndexStats]
    long_running_queries: list[LongRunningQuery]
    pg_stat_statements: StatementsStatus


class DatabasePerformanceMonitorOutput(ComponentOutput):
    operation: str
    configured: bool
    reachable: bool | None = Field(None, description="status only: None when not configured")
    message: str | None = None
    pg_stat_statements: StatementsStatus | None = Field(None, description="status only")
    report: DatabaseReport | None = None
    findings: list[Finding] = Field(default_factory=list)
    worst_severity: Severity | None = Field(None, description="most severe finding; None when there are none")


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def _statements(conn: psycopg.Connection, slow_ms: float, limit: int) -> StatementsStatus:
    installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    if installed is None:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone()
        hint = "CREATE EXTENSION pg_stat_statements" if available else "install the contrib package"
        return StatementsStatus(
            available=False,
            reason=f"extension pg_stat_statements is not installed in this database ({hint}, and add it to "
            "shared_preload_libraries)",
        )
    # Installed but not preloaded raises "must be loaded via shared_preload_libraries" (55000).
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT left(query, %s), calls, mean_exec_time, total_exec_time, rows FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND mean_exec_time > %s ORDER BY mean_exec_time DESC LIMIT %s",
                (_QUERY_CHARS, slow_ms, limit),
            ).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        return StatementsStatus(available=False, reason=f"pg_stat_statements is installed but not loaded: {exc}")
    return StatementsStatus(
        available=True,
        slow_statements=[
            SlowStatement(query=q, calls=c, mean_exec_time_ms=float(m), total_exec_time_ms=float(t), rows=r)
            for q, c, m, t, r in rows
        ],
    )


def _grade(value: float, warning: float, critical: float, *, above: bool) -> Severity | None:
    if (value >= critical) if above else (value <= critical):
        return "critical"
    if (value > warning) if above else (value < warning):
        return "warning"
    return None


def _report(conn: psycopg.Connection, op: MonitorReportOp) -> tuple[DatabaseReport, list[Finding]]:
    db = conn.execute(
        "SELECT datname, blks_hit, blks_read, xact_commit, xact_rollback, deadlocks, temp_bytes, numbackends "
        "FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert db is not None  # the current database always has a row
    datname, hit, read, commit, rollback, deadlocks, temp_bytes, numbackends = db
    total_backends, max_conn, version = conn.execute(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
        "current_setting('max_connections')::int, current_setting('server_version')"
    ).fetchone() or (0, 1, "")
    params: dict[str, Any] = {"schema": op.schema_name, "limit": op.limit}
    tables = [
        TableStats(
            schema_name=s,
            table=t,
            n_live_tup=live,
            n_dead_tup=dead,
            dead_tuple_ratio=_ratio(dead, live + dead),
            seq_scan=seq or 0,
            idx_scan=idx,
            last_vacuum=lv and lv.isoformat(),
            last_autovacuum=la and la.isoformat(),
        )
        for s, t, live, dead, seq, idx, lv, la in conn.execute(
            "SELECT schemaname, relname, n_live_tup, n_dead_tup, seq_scan, idx_scan, last_vacuum, last_autovacuum "
            "FROM pg_stat_user_tables WHERE (%(schema)s::text IS NULL OR schemaname = %(schema)s) "
            "ORDER BY n_dead_tup DESC, schemaname, relname LIMIT %(limit)s",
            params,
        ).fetchall()
    ]
    unused = [
        IndexStats(schema_name=s, table=t, index=i, idx_scan=n, size_bytes=size, enforces_constraint=enforces)
        for s, t, i, n, size, enforces in conn.execute(
            "SELECT u.schemaname, u.relname, u.indexrelname, u.idx_scan, pg_relation_size(u.indexrelid), "
            "(x.indisprimary OR x.indisunique OR x.indisexclusion) "
            "FROM pg_stat_user_indexes u JOIN pg_index x ON x.indexrelid = u.indexrelid "
            "WHERE u.idx_scan = 0 AND (%(schema)s::text IS NULL OR u.schemaname = %(schema)s) "
            "ORDER BY pg_relation_size(u.indexrelid) DESC, u.indexrelname LIMIT %(limit)s",
            params,
        ).fetchall()
    ]
    long_running = [
        LongRunningQuery(pid=pid, state=state, duration_s=float(d), wait_event_type=w, query=q or "")
        for pid, state, d, w, q in conn.execute(
            "SELECT pid, state, extract(epoch FROM clock_timestamp() - query_start), wait_event_type, "
            "left(query, %(chars)s) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle' AND query_start IS NOT NULL "
            "AND backend_type = 'client backend' "
            "AND clock_timestamp() - query_start > make_interval(secs => %(secs)s) "
            "ORDER BY query_start LIMIT %(limit)s",
            {"chars": _QUERY_CHARS, "secs": op.long_running_s, "limit": op.limit},
        ).fetchall()
    ]
    statements = _statements(conn, op.slow_query_ms, op.limit)
    report = DatabaseReport(
        database=datname, server_version=version, blks_hit=hit, blks_read=read,
        cache_hit_ratio=_ratio(hit, hit + read), xact_commit=commit, xact_rollback=rollback,
        rollback_ratio=_ratio(rollback, commit + rollback), deadlocks=deadlocks, temp_bytes=temp_bytes,
        numbackends=numbackends, total_backends=total_backends, max_connections=max_conn,
        connection_ratio=total_backends / max_conn, tables=tables, unused_indexes=unused,
        long_running_queries=long_running, pg_stat_statements=statements,
    )  # fmt: skip
    return report, _findings(report, op)


def _findings(r: DatabaseReport, op: MonitorReportOp) -> list[Finding]:
    found: list[Finding] = []
    if r.cache_hit_ratio is not None:
        sev = _grade(r.cache_hit_ratio, op.cache_hit_warning, op.cache_hit_critical, above=False)
        if sev:
            threshold = op.cache_hit_critical if sev == "critical" else op.cache_hit_warning
            found.append(Finding(
                kind="cache_hit_ratio", severity=sev, subject=r.database, value=r.cache_hit_ratio,
                threshold=threshold, message=f"cache hit ratio {r.cache_hit_ratio:.4f} below {threshold:g}: "
                "consider more shared_buffers or fewer full scans",
            ))  # fmt: skip
    sev = _grade(r.connection_ratio, op.connections_warning, op.connections_critical, above=True)
    if sev:
        threshold = op.connections_critical if sev == "critical" else op.connections_warning
        found.append(Finding(
            kind="connections", severity=sev, subject=r.database, value=r.connection_ratio, threshold=threshold,
            message=f"{r.total_backends} of max_connections={r.max_connections} in use: pool connections",
        ))  # fmt: skip
    if r.rollback_ratio is not None and r.rollback_ratio > op.rollback_warning:
        found.append(Finding(
            kind="rollback_ratio", severity="warning", subject=r.database, value=r.rollback_ratio,
            threshold=op.rollback_warning, message=f"{r.rollback_ratio:.2%} of transactions roll back",
        ))  # fmt: skip
    if r.deadlocks:
        found.append(Finding(
            kind="deadlocks", severity="warning", subject=r.database, value=float(r.deadlocks),
            message=f"{r.deadlocks} deadlocks since the statistics were reset",
        ))  # fmt: skip
    for t in r.tables:
        if t.dead_tuple_ratio is None or t.n_live_tup + t.n_dead_tup < op.dead_tuple_min_rows:
            continue
        sev = _grade(t.dead_tuple_ratio, op.dead_tuple_warning, op.dead_tuple_critical, above=True)
        if sev:
            threshold = op.dead_tuple_critical if sev == "critical" else op.dead_tuple_warning
            found.append(Finding(
                kind="dead_tuples", severity=sev, subject=f"{t.schema_name}.{t.table}", value=t.dead_tuple_ratio,
                threshold=threshold, message=f"{t.n_dead_tup} dead of {t.n_live_tup + t.n_dead_tup} tuples: "
                "VACUUM the table or tune autovacuum",
            ))  # fmt: skip
    for t in r.tables:
        if t.idx_scan is not None and t.seq_scan > 10 * max(t.idx_scan, 1) and t.n_live_tup >= op.dead_tuple_min_rows:
            found.append(Finding(
                kind="sequential_scans", severity="info", subject=f"{t.schema_name}.{t.table}",
                value=float(t.seq_scan), message=f"{t.seq_scan} sequential against {t.idx_scan} index scans",
            ))  # fmt: skip
    for i in r.unused_indexes:
        if not i.enforces_constraint:
            found.append(Finding(
                kind="unused_index", severity="warning", subject=f"{i.schema_name}.{i.index}", value=0.0,
                message=f"index on {i.table} never scanned since the statistics were reset; "
                f"{i.size_bytes} bytes and write cost for nothing",
            ))  # fmt: skip
    for q in r.long_running_queries:
        found.append(Finding(
            kind="long_running_query", severity="warning", subject=f"pid {q.pid}", value=q.duration_s,
            threshold=op.long_running_s, message=f"{q.state} for {q.duration_s:.1f}s: {q.query[:80]}",
        ))  # fmt: skip
    for s in r.pg_stat_statements.slow_statements:
        found.append(Finding(
            kind="slow_statement", severity="warning", subject=s.query[:80], value=s.mean_exec_time_ms,
            threshold=op.slow_query_ms, message=f"mean {s.mean_exec_time_ms:.1f} ms over {s.calls} calls",
        ))  # fmt: skip
    return found


def _worst(findings: list[Finding]) -> Severity | None:
    order: dict[Severity, int] = {"info": 0, "warning": 1, "critical": 2}
    return max((f.severity for f in findings), key=order.__getitem__, default=None)


@component(
    "DatabasePerformanceMonitor",
    tier="tier4",
    capabilities=["database_monitoring", "postgresql", "index_usage", "bloat_detection"],
    example={"operation": "status"},
    examples=[{"operation": "report", "long_running_s": 30, "slow_query_ms": 50}],
    deterministic=False,
    errors={503: "PostgreSQL not configured (set MLMESH_DATABASE_URL) or unreachable"},
)
def database_performance_monitor(
    request: DatabasePerformanceMonitorInput, ctx: RunContext
) -> DatabasePerformanceMonitorOutput:
    """PostgreSQL health: cache hit ratio, connections, slow and long queries, unused indexes, dead tuples.

    ``report`` reads pg_stat_database, pg_stat_user_tables, pg_stat_user_indexes, pg_stat_activity and
    (when installed and loaded) pg_stat_statements, and grades them against the given thresholds.
    ``status`` says whether a database is configured and answers, without failing when it is not.
    """
    op = request.root
    if isinstance(op, MonitorStatusOp):
        if not ctx.settings.database_url:
            return DatabasePerformanceMonitorOutput(
                operation="status", configured=False, message="PostgreSQL is not configured: set MLMESH_DATABASE_URL"
            )
        try:
            with pg_connection(ctx) as conn:
                statements = _statements(conn, 0.0, 1)
        except ServiceUnavailable as exc:  # status reports reachability as data; report raises 503
            return DatabasePerformanceMonitorOutput(
                operation="status", configured=True, reachable=False, message=exc.detail
            )
        return DatabasePerformanceMonitorOutput(
            operation="status",
            configured=True,
            reachable=True,
            pg_stat_statements=statements.model_copy(update={"slow_statements": []}),
        )
    with pg_connection(ctx) as conn:
        report, findings = _report(conn, op)
    return DatabasePerformanceMonitorOutput(
        operation="report", configured=True, reachable=True, report=report, findings=findings,
        worst_severity=_worst(findings),
    )  # fmt: skip
