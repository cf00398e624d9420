"""type_safe_psycopg_client on the real PostgreSQL: COPY, typed rows, injection refused, 503 paths."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mlmesh.errors import InvalidInput, NotFound, ServiceUnavailable
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.infra import pg_pool
from services.tier4.type_safe_psycopg_client import (
    TypeSafePsycopgClientInput,
    TypeSafePsycopgClientOutput,
    parse_parameterised,
    type_safe_psycopg_client,
)
from tests.conftest import AUTH, make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"
ROUTE = "/run/type_safe_psycopg_client"
TYPES = {"id": "int", "x": "float", "name": "str", "ts": "datetime", "d": "date", "amount": "decimal"}


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    """An independent connection, used to set up and to check what the component did."""
    with psycopg.connect(DB_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"tsp_{uuid.uuid4().hex[:12]}"
    admin.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, x float8, name text, ts timestamptz, d date, amount numeric(12, 2))"
    )
    try:
        yield name
    finally:
        admin.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[RunContext]:
    context = RunContext(
        component="type_safe_psycopg_client", settings=make_settings(tmp_path, database_url=DB_URL), request_id=None
    )
    yield context
    for resource in context.resources.values():
        resource.close()


@pytest.fixture
def pg_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, database_url=DB_URL)
    app = create_app("tier4", settings=settings, components=[type_safe_psycopg_client], announce=False)
    with TestClient(app, headers=AUTH) as client:
        yield client


def run(ctx: RunContext, **body: Any) -> TypeSafePsycopgClientOutput:
    return type_safe_psycopg_client(TypeSafePsycopgClientInput.model_validate(body), ctx)


def table_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    row = admin.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def test_copy_10k_rows(ctx: RunContext, admin: psycopg.Connection[Any], table: str) -> None:
    n = 10_000
    rows = [[i, i / 4, f"row {i}", "2024-03-01T12:00:00+00:00", "2024-03-01", "1.50"] for i in range(n)]
    out = run(ctx, operation="copy_in", table=table, columns=list(TYPES), rows=rows)
    assert out.row_count == n and out.seconds is not None and out.seconds > 0
    count, id_sum, x_sum, amount_sum = admin.execute(
        f"SELECT count(*), sum(id), sum(x), sum(amount) FROM {table}"
    ).fetchone()  # type: ignore[misc]
    assert count == n and id_sum == n * (n - 1) // 2
    assert x_sum == pytest.approx(n * (n - 1) / 8) and amount_sum == Decimal("15000.00")


def test_copy_is_one_transaction_and_names_bad_rows(
    ctx: RunContext, admin: psycopg.Connection[Any], table: str
) -> None:
    with pytest.raises(InvalidInput, match=r"^rows\[1\]"):
        run(ctx, operation="copy_in", table=table, columns=["id", "x"], rows=[[1, 1.0], [2]])
    with pytest.raises(InvalidInput, match=r"^rows"):
        run(ctx, operation="copy_in", table=table, columns=["id", "x"], rows=[[1, 1.0], [2, "not a number"]])
    with pytest.raises(InvalidInput, match=r"^columns"):
        run(ctx, operation="copy_in", table=table, columns=["id", "id"], rows=[[1, 1]])
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    with pytest.raises(NotFound):
        run(ctx, operation="copy_in", table=f"{table}_missing", columns=["id"], rows=[[1]])


def test_typed_rows_match_the_table(ctx: RunContext, admin: psycopg.Connection[Any], table: str) -> None:
    ts = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    admin.execute(
        f"INSERT INTO {table} VALUES (1, 2.5, 'ünï', %s, '2024-05-06', 10.25), (2, -0.125, 'b', %s, '1999-12-31', 0)",
        [ts, ts + dt.timedelta(days=1)],
    )
    out = run(
        ctx,
        operation="query",
        sql=f"SELECT id, x, name, ts, d, amount FROM {table} WHERE id >= %s ORDER BY id",
        params=[1],
        columns=TYPES,
    )
    assert out.columns == list(TYPES) and out.row_count == 2 and out.truncated is False
    first = out.rows[0]  # type: ignore[index]
    assert first["id"] == 1 and type(first["id"]) is int
    assert first["x"] == 2.5 and type(first["x"]) is float
    assert first["name"] == "ünï"
    assert dt.datetime.fromisoformat(first["ts"]) == ts
    assert first["d"] == "2024-05-06" and Decimal(first["amount"]) == Decimal("10.25")
    assert out.rows[1]["x"] == -0.125  # type: ignore[index]


def test_named_params_and_truncation(ctx: RunContext, admin: psycopg.Connection[Any], table: str) -> None:
    admin.execute(f"INSERT INTO {table} (id, name) SELECT g, 'n' FROM generate_series(1, 5) g")
    out = run(
        ctx,
        operation="query",
        sql=f"SELECT id, name FROM {table} WHERE id > %(lo)s AND name = %(n)s ORDER BY id",
        params={"lo": 1, "n": "n"},
        columns={"id": "int", "name": "str"},
        max_rows=3,
    )
    assert [r["id"] for r in out.rows] == [2, 3, 4] and out.truncated is True  # type: ignore[union-attr]


def test_rows_failing_their_type_are_422_naming_row_and_column(
    ctx: RunContext, admin: psycopg.Connection[Any], table: str
) -> None:
    admin.execute(f"INSERT INTO {table} (id, x, name) VALUES (1, 1.5, 'a'), (2, NULL, 'b')")
    base = {"operation": "query", "sql": f"SELECT id, x FROM {table} WHERE id >= %s ORDER BY id", "params": [0]}
    with pytest.raises(InvalidInput, match=r"^rows\[0\]\.x: .*declared int"):
        run(ctx, **base, columns={"id": "int", "x": "int"})
    with pytest.raises(InvalidInput, match=r"^rows\[1\]\.x"):
        run(ctx, **base, columns={"id": "int", "x": "float"})
    out = run(ctx, **base, columns={"id": "int", "x": "float?"})
    assert out.rows == [{"id": 1, "x": 1.5}, {"id": 2, "x": None}]
    with pytest.raises(InvalidInput, match=r"^columns"):
        run(ctx, **base, columns={"id": "int"})
    admin.execute(f"UPDATE {table} SET x = 'NaN' WHERE id = 1")
    with pytest.raises(InvalidInput, match=r"^rows\[0\]\.x"):
        run(ctx, **base, columns={"id": "int", "x": "float?"})


@pytest.mark.parametrize(
    "sql",
    [
        "'; DROP TABLE {t}; --",
        "SELECT id FROM {t} WHERE name = '%s'",
        "SELECT id FROM {t} WHERE id = %s; DROP TABLE {t}",
        "SELECT id FROM {t} WHERE id = %s -- comment",
        "SELECT id FROM {t} WHERE id = %s /* c */",
        'SELECT "id" FROM {t} WHERE id = %s',
        "SELECT id FROM {t} WHERE name = $$x$$ AND id = %s",
        "DROP TABLE {t}",
        "SELECT id FROM {t}",  # no placeholder
    ],
)
def test_injection_attempts_are_refused(
    pg_client: TestClient, admin: psycopg.Connection[Any], table: str, sql: str
) -> None:
    body = {"operation": "query", "sql": sql.format(t=table), "params": [1], "columns": {"id": "int"}}
    r = pg_client.post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("sql:")
    assert table_exists(admin, table)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table", 'x"; DROP TABLE {t}; --'),
        ("table", "{t}'"),
        ("columns", ['id"); DROP TABLE {t}; --']),
        ("db_schema", 'public"'),
    ],
)
def test_copy_identifiers_with_quotes_are_refused(
    pg_client: TestClient, admin: psycopg.Connection[Any], table: str, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"operation": "copy_in", "table": table, "columns": ["id"], "rows": [[1]]}
    body[field] = [v.format(t=table) for v in value] if isinstance(value, list) else value.format(t=table)
    r = pg_client.post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert table_exists(admin, table)
    assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_http_query_and_status(pg_client: TestClient, admin: psycopg.Connection[Any], table: str) -> None:
    admin.execute(f"INSERT INTO {table} (id, name) VALUES (7, 'seven')")
    body = {
        "operation": "query",
        "sql": f"SELECT id, name FROM {table} WHERE id = %s",
        "params": [7],
        "columns": {"id": "int", "name": "str"},
    }
    r = pg_client.post(ROUTE, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["component_result"]["rows"] == [{"id": 7, "name": "seven"}]
    status = pg_client.post(ROUTE, json={"operation": "status"}).json()["component_result"]
    server_version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    assert status["configured"] is True and status["server_version"] == server_version
    r = pg_client.post(ROUTE, json={**body, "params": [7, 8]})
    assert r.status_code == 422 and r.json()["detail"].startswith("params:")
    dup = {**body, "sql": f"INSERT INTO {table} (id) VALUES (%s) RETURNING id", "columns": {"id": "int"}}
    assert pg_client.post(ROUTE, json=dup).status_code == 409


def test_not_configured(client_for: Callable[..., TestClient], settings: Settings) -> None:
    assert settings.database_url is None
    client = client_for(type_safe_psycopg_client)
    r = client.post(ROUTE, json={"operation": "status"})
    assert r.status_code == 200 and r.json()["component_result"]["configured"] is False
    body = {"operation": "query", "sql": "SELECT %s::int AS a", "params": [1], "columns": {"a": "int"}}
    r = client.post(ROUTE, json=body)
    assert r.status_code == 503 and "MLMESH_DATABASE_URL" in r.json()["detail"]


def test_pool_timeout_is_503(ctx: RunContext) -> None:
    pool = pg_pool(ctx, max_size=1)  # the service's pool, sized so one held connection exhausts it
    with pool.connection(), pytest.raises(ServiceUnavailable, match="pool exhausted"):
        run(ctx, operation="query", sql="SELECT %s::int AS a", params=[1], columns={"a": "int"}, pool_timeout_s=0.2)
    assert run(ctx, operation="query", sql="SELECT %s::int AS a", params=[1], columns={"a": "int"}).rows == [{"a": 1}]


@hsettings(max_examples=50, deadline=None)
@given(
    prefix=st.text(max_size=20),
    bad=st.sampled_from(["'", '"', ";", "--", "/*", "$", "\\", "`"]),
    rest=st.text(max_size=20),
)
def test_rule_never_accepts_quotes_semicolons_or_comments(prefix: str, bad: str, rest: str) -> None:
    with pytest.raises(InvalidInput, match=r"^sql"):
        parse_parameterised(f"SELECT %s {prefix}{bad}{rest}")
