"""DatabasePerformanceMonitor against the real PostgreSQL: unused index, dead tuples, cache hit ratio."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.database_performance_monitor import (
    DatabasePerformanceMonitorInput,
    database_performance_monitor,
)
from tests.conftest import AUTH, make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"


@pytest.fixture
def pg_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, database_url=DB_URL)


@pytest.fixture
def ctx(pg_settings: Settings) -> Iterator[RunContext]:
    context = RunContext(component="database_performance_monitor", settings=pg_settings, request_id=None)
    yield context
    for resource in context.resources.values():
        resource.close()


@pytest.fixture
def bloated_table() -> Iterator[tuple[str, str]]:
    """A table with 1000 rows, 400 deleted (no vacuum), and an index nothing ever scans."""
    table = f"perfmon_{uuid.uuid4().hex[:12]}"
    index = f"{table}_payload_idx"
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)").format(
                sql.Identifier(table)
            )
        )
        try:
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} (payload)").format(sql.Identifier(index), sql.Identifier(table))
            )
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 1000) g").format(
                    sql.Identifier(table)
                )
            )
            conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 400").format(sql.Identifier(table)))
            # Statistics are flushed lazily (PostgreSQL 15): force this backend's pending counters out.
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.execute("SELECT 1")
            yield table, index
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def report(ctx: RunContext, **fields: object) -> dict:
    body = {"operation": "report", "schema_name": "public", "limit": 1000, **fields}
    out = database_performance_monitor(DatabasePerformanceMonitorInput.model_validate(body), ctx)
    return out.model_dump()


def test_unused_index_and_dead_tuples_are_reported(ctx: RunContext, bloated_table: tuple[str, str]) -> None:
    table, index = bloated_table
    out = report(ctx, dead_tuple_min_rows=100)
    tables = {t["table"]: t for t in out["report"]["tables"]}
    row = tables[table]
    assert row["n_live_tup"] == 600
    assert row["n_dead_tup"] == 400
    assert row["dead_tuple_ratio"] == pytest.approx(400 / 1000)
    unused = {i["index"]: i for i in out["report"]["unused_indexes"]}
    assert unused[index]["idx_scan"] == 0
    assert unused[index]["size_bytes"] > 0
    assert unused[index]["enforces_constraint"] is False
    kinds = {(f["kind"], f["subject"]): f for f in out["findings"]}
    dead = kinds[("dead_tuples", f"public.{table}")]
    assert dead["severity"] == "critical"  # 0.4 ≥ default critical 0.3
    assert kinds[("unused_index", f"public.{index}")]["severity"] == "warning"
    # The primary key was never scanned either, but it enforces uniqueness: listed, not flagged.
    assert ("unused_index", f"public.{table}_pkey") not in kinds
    assert out["worst_severity"] == "critical"


def test_small_tables_are_not_graded_for_bloat(ctx: RunContext, bloated_table: tuple[str, str]) -> None:
    table, _ = bloated_table
    out = report(ctx, dead_tuple_min_rows=10_000)
    assert not [f for f in out["findings"] if f["kind"] == "dead_tuples" and f["subject"] == f"public.{table}"]


def test_cache_hit_ratio_matches_pg_stat_database(ctx: RunContext) -> None:
    query = "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        hit0, read0 = conn.execute(query).fetchone()
        out = report(ctx)["report"]
        hit1, read1 = conn.execute(query).fetchone()
    assert hit0 <= out["blks_hit"] <= hit1
    assert read0 <= out["blks_read"] <= read1
    expected = out["blks_hit"] / (out["blks_hit"] + out["blks_read"])
    assert out["cache_hit_ratio"] == pytest.approx(expected, rel=1e-12)
    # And the direct ratios bracket it (the counters only move by the few blocks the report read).
    direct = sorted([hit0 / (hit0 + read0), hit1 / (hit1 + read1)])
    assert direct[0] - 1e-3 <= out["cache_hit_ratio"] <= direct[1] + 1e-3


def test_connections_against_max_connections(ctx: RunContext) -> None:
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        (max_conn,) = conn.execute("SHOW max_connections").fetchone()
        out = report(ctx)["report"]
    assert out["max_connections"] == int(max_conn)
    assert out["total_backends"] >= 2  # this test's connection and the monitor's
    assert out["connection_ratio"] == pytest.approx(out["total_backends"] / int(max_conn))


def test_long_running_query_is_listed(ctx: RunContext) -> None:
    with psycopg.connect(DB_URL, autocommit=True) as other:
        sleeper = threading.Thread(target=lambda: other.execute("SELECT pg_sleep(1.5)"))
        sleeper.start()
        try:
            time.sleep(0.6)
            out = report(ctx, long_running_s=0.3)
        finally:
            sleeper.join()
    queries = out["report"]["long_running_queries"]
    assert any("pg_sleep(1.5)" in q["query"] and q["duration_s"] > 0.3 for q in queries)
    assert any(f["kind"] == "long_running_query" for f in out["findings"])


def test_pg_stat_statements_absence_is_reported(ctx: RunContext) -> None:
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    out = report(ctx)["report"]["pg_stat_statements"]
    if installed is None:
        assert out["available"] is False
        assert "not installed" in out["reason"]
        assert out["slow_statements"] == []
    else:  # pragma: no cover - depends on the server
        assert out["available"] or "not loaded" in out["reason"]


def test_status_without_database(settings: Settings) -> None:
    ctx = RunContext(component="database_performance_monitor", settings=settings, request_id=None)
    out = database_performance_monitor(DatabasePerformanceMonitorInput.model_validate({"operation": "status"}), ctx)
    assert out.configured is False
    assert "MLMESH_DATABASE_URL" in (out.message or "")


def test_status_with_database(ctx: RunContext) -> None:
    out = database_performance_monitor(DatabasePerformanceMonitorInput.model_validate({"operation": "status"}), ctx)
    assert out.configured is True and out.reachable is True
    assert out.pg_stat_statements is not None


def test_report_without_database_is_503(client_for) -> None:
    client = client_for(database_performance_monitor)
    r = client.post("/run/database_performance_monitor", json={"operation": "report"})
    assert r.status_code == 503
    assert "MLMESH_DATABASE_URL" in r.json()["detail"]


def test_http_report_and_bad_thresholds(pg_settings: Settings) -> None:
    app = create_app("tier4", settings=pg_settings, components=[database_performance_monitor], announce=False)
    with TestClient(app, headers=AUTH) as client:
        r = client.post("/run/database_performance_monitor", json={"operation": "report", "limit": 5})
        assert r.status_code == 200, r.text
        assert r.json()["component_result"]["report"]["max_connections"] > 0
        bad = client.post(
            "/run/database_performance_monitor",
            json={"operation": "report", "cache_hit_warning": 0.5, "cache_hit_critical": 0.9},
        )
        assert bad.status_code == 422
        assert "cache_hit_critical" in bad.json()["detail"]
