"""DatabaseConnectionOptimizer: session-only settings (checked in pg_settings) and EXPLAIN ANALYZE verify."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.database_connection_optimizer import (
    DatabaseConnectionOptimizerInput,
    database_connection_optimizer,
)
from tests.conftest import AUTH, make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"
GiB = 1024**3


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[RunContext]:
    s = make_settings(tmp_path, database_url=DB_URL)
    context = RunContext(component="database_connection_optimizer", settings=s, request_id=None)
    yield context
    for resource in context.resources.values():
        resource.close()


@pytest.fixture
def table() -> Iterator[str]:
    name = f"dbopt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, grp int, v float8)").format(sql.Identifier(name)))
        try:
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, g % 50, g * 0.5 FROM generate_series(1, 20000) g").format(
                    sql.Identifier(name)
                )
            )
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))
            yield name
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def run(ctx: RunContext, **body: object):
    return database_connection_optimizer(DatabaseConnectionOptimizerInput.model_validate(body), ctx)


@pytest.mark.parametrize("workload", ["oltp", "olap", "mixed"])
def test_every_recommended_setting_is_session_settable(ctx: RunContext, workload: str) -> None:
    out = run(ctx, operation="recommend", workload=workload, disable_nodes=["nestloop", "seqscan"], memory_bytes=GiB)
    assert out.checked_against_server and out.rejected == []
    names = [r.name for r in out.recommendations]
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        contexts = dict(conn.execute("SELECT name, context FROM pg_settings WHERE name = ANY(%s)", (names,)).fetchall())
        assert set(contexts) == set(names)
        assert set(contexts.values()) == {"user"}
        # And every value is accepted by SET LOCAL on the real server.
        with conn.transaction(force_rollback=True):
            for r in out.recommendations:
                conn.execute("SELECT set_config(%s, %s, true)", (r.name, r.value))


def test_work_mem_by_hand(settings: Settings) -> None:
    ctx = RunContext(component="database_connection_optimizer", settings=settings, request_id=None)
    out = run(ctx, operation="recommend", workload="mixed", connections=10, memory_bytes=16 * GiB, cpus=8)
    recs = {r.name: r.value for r in out.recommendations}
    # (16 GiB · 3/4) / (10 connections · 3 nodes) = 12 · 1024² kB / 30 = 419430.4 kB → 419430 kB
    assert recs["work_mem"] == "419430kB"
    assert recs["effective_cache_size"] == f"{12 * 1024 * 1024}kB"
    assert recs["jit"] == "on" and recs["max_parallel_workers_per_gather"] == "2"
    assert not out.checked_against_server and out.configured is False
    tiny = run(ctx, operation="recommend", workload="oltp", connections=10_000, memory_bytes=GiB)
    assert {r.name: r.value for r in tiny.recommendations}["work_mem"] == "4096kB"  # clamped at 4 MB


def test_verify_returns_both_plans_and_times(ctx: RunContext, table: str) -> None:
    query = f"SELECT grp, sum(v) FROM {table} WHERE id > %s GROUP BY grp ORDER BY grp"
    out = run(ctx, operation="verify", workload="oltp", sql=query, params=[100], disable_nodes=["hashagg", "sort"])
    v = out.verification
    assert v is not None
    for plan_run in (v.before, v.after):
        assert plan_run.planning_time_ms >= 0 and plan_run.execution_time_ms > 0
        assert plan_run.plan["Node Type"] == plan_run.node_types[0]
        assert plan_run.total_cost > 0
    # enable_hashagg / enable_sort off must change how the planner groups (or at least what it costs).
    assert v.plan_changed or v.after.total_cost > v.before.total_cost
    # Nothing leaked out of the rolled-back transaction into the pooled session.
    with ctx.resources[f"postgres:{DB_URL}"].connection() as conn:
        assert conn.execute("SHOW enable_hashagg").fetchone()[0] == "on"
        assert conn.execute("SHOW jit").fetchone()[0] == "on"


def test_verify_rejects_writes(ctx: RunContext, table: str) -> None:
    with pytest.raises(InvalidInput) as err:
        run(ctx, operation="verify", workload="oltp", sql=f"DELETE FROM {table}")
    assert err.value.field == "sql"
    # A data-modifying CTE passes the keyword check but fails in the READ ONLY transaction.
    with pytest.raises(InvalidInput) as err:
        cte = f"WITH d AS (DELETE FROM {table} RETURNING 1) SELECT 1"
        run(ctx, operation="verify", workload="oltp", sql=cte)
    assert err.value.field == "sql"
    with pytest.raises(InvalidInput):
        run(ctx, operation="verify", workload="oltp", sql="SELECT 1; DROP TABLE x")
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0] == 20000


def test_http_non_select_is_422_and_no_database_is_503(tmp_path: Path, client_for) -> None:
    s = make_settings(tmp_path, database_url=DB_URL)
    app = create_app("tier4", settings=s, components=[database_connection_optimizer], announce=False)
    with TestClient(app, headers=AUTH) as client:
        r = client.post(
            "/run/database_connection_optimizer",
            json={"operation": "verify", "workload": "oltp", "sql": "UPDATE pg_class SET relpages = 0"},
        )
        assert r.status_code == 422
        assert r.json()["detail"].startswith("sql:")
        bad = client.post(
            "/run/database_connection_optimizer",
            json={"operation": "verify", "workload": "oltp", "sql": "SELECT * FROM no_such_table_x"},
        )
        assert bad.status_code == 422
    plain = client_for(database_connection_optimizer)
    r = plain.post(
        "/run/database_connection_optimizer", json={"operation": "verify", "workload": "oltp", "sql": "SELECT 1"}
    )
    assert r.status_code == 503
    assert "MLMESH_DATABASE_URL" in r.json()["detail"]
    ok = plain.post("/run/database_connection_optimizer", json={"operation": "status"})
    assert ok.status_code == 200 and ok.json()["component_result"]["configured"] is False
