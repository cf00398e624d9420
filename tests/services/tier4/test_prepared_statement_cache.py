"""prepared_statement_cache on the real PostgreSQL: server-side statements, LRU eviction, benchmark, refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.prepared_statement_cache import (
    RESOURCE_KEY,
    PreparedStatementCacheInput,
    PreparedStatementCacheOutput,
    StatementCache,
    prepared_statement_cache,
)
from tests.conftest import AUTH, make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"
ROUTE = "/run/prepared_statement_cache"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[RunContext]:
    context = RunContext(
        component="prepared_statement_cache", settings=make_settings(tmp_path, database_url=DB_URL), request_id=None
    )
    yield context
    for resource in context.resources.values():
        resource.close()


@pytest.fixture
def pg_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, database_url=DB_URL)
    app = create_app("tier4", settings=settings, components=[prepared_statement_cache], announce=False)
    with TestClient(app, headers=AUTH) as client:
        yield client


def run(ctx: RunContext, **body: Any) -> PreparedStatementCacheOutput:
    return prepared_statement_cache(PreparedStatementCacheInput.model_validate(body), ctx)


def server_view(ctx: RunContext) -> dict[str, tuple[str, list[str]]]:
    """pg_prepared_statements read directly on the cache's own session (not through the component)."""
    cache: StatementCache = ctx.resources[RESOURCE_KEY]
    rows = cache.connection().execute(
        "SELECT name, statement, parameter_types::text[] FROM pg_prepared_statements", prepare=False
    )
    return {name: (statement, types) for name, statement, types in rows.fetchall()}


def test_execute_prepares_on_the_server_and_hits_the_cache(ctx: RunContext) -> None:
    first = run(ctx, operation="execute", sql="SELECT %s::int + 1 AS y", params=[[1], [41]])
    assert first.execution is not None and first.cache is not None
    assert first.execution.rows == [[42]] and first.execution.rowcounts == [1, 1]
    assert first.execution.cache_hit is False
    name = first.execution.statement_name
    statement, types = server_view(ctx)[name]
    assert "$1::int + 1" in statement and types == ["integer"]

    second = run(ctx, operation="execute", sql="SELECT %s::int + 1 AS y", params=[[9]])
    assert second.execution is not None and second.cache is not None
    assert second.execution.cache_hit is True and second.execution.statement_name == name
    assert second.execution.rows == [[10]]
    assert (second.cache.hits, second.cache.misses) == (1, 1)
    assert list(server_view(ctx)) == [name]  # no second server statement for the same text


def test_named_placeholders_reuse_one_parameter(ctx: RunContext) -> None:
    out = run(ctx, operation="execute", sql="SELECT %(a)s::text || %(a)s AS y", params=[{"a": "x'; DROP"}])
    assert out.execution is not None
    # The quote travels as a value, not as SQL.
    assert out.execution.rows == [["x'; DROPx'; DROP"]]
    statement, types = server_view(ctx)[out.execution.statement_name]
    assert "$1::text || $1" in statement and types == ["text"]


def test_lru_bound_deallocates_the_least_recently_used(ctx: RunContext) -> None:
    def name_of(text: str) -> str:
        out = run(ctx, operation="execute", sql=text, params=[[3]], capacity=2)
        assert out.execution is not None
        return out.execution.statement_name

    a = name_of("SELECT %s::int * 2 AS y")
    b = name_of("SELECT %s::int * 3 AS y")
    assert name_of("SELECT %s::int * 2 AS y") == a  # touch a: b is now least recently used
    c = name_of("SELECT %s::int * 5 AS y")
    assert set(server_view(ctx)) == {a, c}  # b deallocated on the server
    assert b not in server_view(ctx)

    out = run(ctx, operation="execute", sql="SELECT %s::int * 7 AS y", params=[[1]])
    assert set(server_view(ctx)) == {c, out.execution.statement_name}  # type: ignore[union-attr]
    status = run(ctx, operation="status")
    assert status.cache is not None and status.server_statements is not None
    assert (status.cache.size, status.cache.capacity, status.cache.evictions) == (2, 2, 2)
    assert (status.cache.hits, status.cache.misses) == (1, 4)
    assert [s["name"] for s in status.server_statements] == status.cache.names


def test_shrinking_capacity_deallocates(ctx: RunContext) -> None:
    for k in range(3):
        run(ctx, operation="execute", sql=f"SELECT %s::int + {k} AS y", params=[[1]])
    assert len(server_view(ctx)) == 3
    run(ctx, operation="execute", sql="SELECT %s::int + 2 AS y", params=[[1]], capacity=1)
    assert len(server_view(ctx)) == 1


def test_benchmark_reports_measured_times(ctx: RunContext) -> None:
    out = run(
        ctx,
        operation="benchmark",
        sql="SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::oid",
        params=[1259],
        iterations=30,
    )
    bench = out.benchmark
    assert bench is not None
    assert bench.unprepared_total_s > 0 and bench.prepared_total_s > 0
    assert bench.unprepared_median_ms > 0 and bench.prepared_median_ms > 0
    assert bench.speedup == pytest.approx(bench.unprepared_total_s / bench.prepared_total_s)
    assert bench.statement_name in server_view(ctx)


def test_benchmark_refuses_writes(ctx: RunContext) -> None:
    with pytest.raises(InvalidInput, match="sql"):
        run(ctx, operation="benchmark", sql="DELETE FROM pg_class WHERE oid = %s", params=[0])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",  # not parameterised
        "SELECT %s::int; SELECT 2",  # two statements
        "CREATE TABLE x (a int) -- %s",  # DDL and a comment
        "DROP TABLE pg_class",
        "SELECT %s::text || 'x'",  # a literal string
        "SELECT $1::int",  # server-style placeholders are not ours
        "SELECT %d",
    ],
)
def test_refused_statements_are_422_and_prepare_nothing(pg_client: TestClient, sql: str) -> None:
    r = pg_client.post(ROUTE, json={"operation": "execute", "sql": sql, "params": [[1]]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("sql:")
    status = pg_client.post(ROUTE, json={"operation": "status"}).json()["component_result"]
    assert status["server_statements"] == [] and status["cache"]["misses"] == 0


def test_parameter_mismatch_and_bad_value_are_422(pg_client: TestClient) -> None:
    r = pg_client.post(ROUTE, json={"operation": "execute", "sql": "SELECT %s::int", "params": [[1, 2]]})
    assert r.status_code == 422 and r.json()["detail"].startswith("params[0]:")
    r = pg_client.post(ROUTE, json={"operation": "execute", "sql": "SELECT %s::int", "params": [[1], ["abc"]]})
    assert r.status_code == 422 and r.json()["detail"].startswith("params[1]:")
    r = pg_client.post(
        ROUTE, json={"operation": "execute", "sql": "SELECT a FROM no_such_table_x WHERE a = %s", "params": [[1]]}
    )
    assert r.status_code == 404


def test_status_over_http_lists_server_statements(pg_client: TestClient) -> None:
    r = pg_client.post(ROUTE, json={"operation": "execute", "sql": "SELECT %s::int AS v", "params": [[5]]})
    assert r.status_code == 200, r.text
    status = pg_client.post(ROUTE, json={"operation": "status"}).json()["component_result"]
    assert status["configured"] is True
    assert [s["name"] for s in status["server_statements"]] == status["cache"]["names"]
    assert status["server_statements"][0]["parameter_types"] == ["integer"]


def test_not_configured(client_for: Callable[..., TestClient], settings: Settings) -> None:
    assert settings.database_url is None
    client = client_for(prepared_statement_cache)
    r = client.post(ROUTE, json={"operation": "status"})
    assert r.status_code == 200
    assert r.json()["component_result"]["configured"] is False
    assert "MLMESH_DATABASE_URL" in r.json()["component_result"]["message"]
    r = client.post(ROUTE, json={"operation": "execute", "sql": "SELECT %s::int", "params": [[1]]})
    assert r.status_code == 503 and "MLMESH_DATABASE_URL" in r.json()["detail"]
    # A refused statement is refused before any connection is attempted.
    r = client.post(ROUTE, json={"operation": "execute", "sql": "SELECT 1", "params": [[1]]})
    assert r.status_code == 422


def test_reconnect_after_the_session_dies_restarts_the_lru(ctx: RunContext) -> None:
    run(ctx, operation="execute", sql="SELECT %s::int AS v", params=[[1]])
    cache: StatementCache = ctx.resources[RESOURCE_KEY]
    cache.connection().close()
    out = run(ctx, operation="execute", sql="SELECT %s::int AS v", params=[[2]])
    assert out.execution is not None and out.execution.cache_hit is False and out.execution.rows == [[2]]
    assert list(server_view(ctx)) == [out.execution.statement_name]
