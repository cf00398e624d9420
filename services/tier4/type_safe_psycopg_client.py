"""Parameterised PostgreSQL queries with typed rows, and bulk COPY — never SQL built from caller strings.

Operations (``operation`` discriminates):

* ``query`` — one parameterised statement plus its parameters; the rows come back validated by a
  pydantic model created on the fly (:func:`pydantic.create_model`) from the caller's column type
  map. A row that fails validation is a 422 naming ``rows[i].column``.
* ``copy_in`` — bulk-load rows with ``COPY <table> (<columns>) FROM STDIN`` through psycopg's
  ``cursor.copy()``; table, schema and column names are ``sql.Identifier`` values (and must be
  plain identifiers), the rows go through ``copy.write_row`` — no string formatting. One
  transaction: a bad row loads nothing.
* ``status`` — whether PostgreSQL is configured (reported as data; the example), and reachable.

The rule for the SQL text (:func:`parse_parameterised`): values only travel as parameters, so the
text must be exactly one SELECT / WITH / VALUES / INSERT / UPDATE / DELETE statement with at least
one placeholder (``%s`` or ``%(name)s``, not mixed) and none of ``' " ` ; $ \\`` or comment
markers (``--``, ``/*``). String literals, quoted identifiers, dollar quoting, a second statement
and comments are therefore impossible; numeric literals (``LIMIT 10``) remain allowed as they
cannot carry text. Anything else is a 422 naming ``sql``.

Statuses: 422 for a refused statement, a parameter mismatch, a server-side syntax / type error or a
row failing its type; 404 for ``copy_in`` into a table that does not exist; 409 for an integrity
violation; 503 when PostgreSQL is not configured, unreachable, or the pool has no free connection
within ``pool_timeout_s``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, create_model

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, component
from services.infra import pg_connection

__all__ = [
    "COLUMN_TYPES",
    "Params",
    "ParsedSQL",
    "SqlText",
    "TypeSafeCopyInOp",
    "TypeSafePsycopgClientInput",
    "TypeSafePsycopgClientOutput",
    "TypeSafeQueryOp",
    "TypeSafeStatusOp",
    "parse_parameterised",
    "server_error",
    "type_safe_psycopg_client",
]

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
Identifier = Annotated[
    str, Field(pattern=IDENTIFIER, description="a plain SQL identifier (letters, digits, underscore; no quotes)")
]
Scalar = Union[bool, int, FiniteFloat, Annotated[str, Field(max_length=100_000)], None]  # noqa: UP007
Params = Union[  # noqa: UP007
    Annotated[list[Scalar], Field(max_length=1000)],
    Annotated[dict[Annotated[str, Field(pattern=r"^\w{1,63}$")], Scalar], Field(max_length=1000)],
]
SqlText = Annotated[str, Field(min_length=1, max_length=20_000, description="one parameterised SQL statement")]
PoolTimeout = Annotated[
    float, Field(gt=0, le=30, description="seconds to wait for a free pooled connection before answering 503")
]

# Column type names → python types validated by pydantic (strict: no "12" → 12 coercion).
_BASE_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "datetime": dt.datetime,
    "date": dt.date,
    "decimal": Decimal,
}
COLUMN_TYPES = tuple([*_BASE_TYPES, *(f"{name}?" for name in _BASE_TYPES)])
ColumnType = Literal[
    "int", "float", "str", "bool", "datetime", "date", "decimal",
    "int?", "float?", "str?", "bool?", "datetime?", "date?", "decimal?",
]  # fmt: skip

_ALLOWED_KINDS = ("select", "with", "values", "insert", "update", "delete")
_FORBIDDEN = re.compile(r"""['"`;$\\]|--|/\*|\*/""")
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[A-Za-z_]\w{0,62})\))?(?P<kind>[sbt%])|%")


# --------------------------------------------------------------------------- the SQL rule


@dataclass(frozen=True)
class ParsedSQL:
    """A statement that passed the rule: its kind, its text with ``$n`` placeholders, its parameter names."""

    kind: str
    dollar_text: str
    positional: int  # number of %s placeholders (0 when named)
    names: tuple[str, ...]  # named placeholders, in $n order

    @property
    def n_params(self) -> int:
        return self.positional or len(self.names)

    def order(self, params: Any, field: str) -> list[Any]:
        """The parameter values in ``$n`` order, checked against the placeholders (422 naming ``field``)."""
        if self.names:
            if not isinstance(params, dict):
                raise InvalidInput(field, "the statement uses named placeholders: give an object of values")
            missing = [n for n in self.names if n not in params]
            extra = sorted(set(params) - set(self.names))
            if missing or extra:
                raise InvalidInput(field, f"missing values for {missing}; unused values {extra}")
            return [params[n] for n in self.names]
        if not isinstance(params, list):
            raise InvalidInput(field, "the statement uses %s placeholders: give a list of values")
        if len(params) != self.positional:
            raise InvalidInput(field, f"{len(params)} values for {self.positional} placeholders")
        return list(params)


def parse_parameterised(text: str, *, field: str = "sql") -> ParsedSQL:
    """Check ``text`` against the parameterised-statement rule (module docstring); 422 naming ``field``."""
    bad = _FORBIDDEN.search(text)
    if bad:
        raise InvalidInput(
            field,
            f"{bad.group()!r} is not allowed: values go in params, one statement, no quotes, comments or $-quoting",
        )
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text):
        raise InvalidInput(field, "control characters are not allowed")
    words = text.split(None, 1)
    kind = words[0].lower() if words else ""
    if kind not in _ALLOWED_KINDS:
        raise InvalidInput(field, f"only {', '.join(k.upper() for k in _ALLOWED_KINDS)} statements are allowed")
    names: list[str] = []
    positional = 0
    pieces: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        pieces.append(text[last : match.start()])
        last = match.end()
        kind_char, name = match.group("kind"), match.group("name")
        if kind_char == "%" and name is None:
            pieces.append("%")
            continue
        if kind_char not in ("s", "b", "t") or kind_char == "%":
            raise InvalidInput(field, f"malformed placeholder {match.group()!r}: use %s or %(name)s (%% for a %)")
        if name is None:
            positional += 1
            pieces.append(f"${positional}")
        else:
            if name not in names:
                names.append(name)
            pieces.append(f"${names.index(name) + 1}")
    pieces.append(text[last:])
    if positional and names:
        raise InvalidInput(field, "do not mix %s and %(name)s placeholders")
    if not positional and not names:
        raise InvalidInput(field, "not a parameterised statement: give values as %s or %(name)s placeholders")
    return ParsedSQL(kind=kind, dollar_text="".join(pieces), positional=positional, names=tuple(names))


def server_error(exc: psycopg.Error, field: str) -> Exception:
    """The domain error for a statement the server refused (never a 500)."""
    first = (exc.diag.message_primary or str(exc)).strip().splitlines()
    message = first[0] if first else type(exc).__name__
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return NotFound(message)
    if isinstance(exc, psycopg.IntegrityError):
        return Conflict(message)
    return InvalidInput(field, message)


# --------------------------------------------------------------------------- inputs


class TypeSafeQueryOp(ComponentInput):
    operation: Literal["query"]
    sql: SqlText
    params: Params = Field(description="values for the placeholders: a list for %s, an object for %(name)s")
    columns: dict[Identifier, ColumnType] = Field(
        min_length=1,
        max_length=200,
        description="every result column and its type (int, float, str, bool, datetime, date, decimal; "
        "a trailing ? allows NULL)",
    )
    max_rows: int = Field(1000, ge=1, le=10_000, description="rows returned at most (the rest are counted only)")
    pool_timeout_s: PoolTimeout = 5.0


class TypeSafeCopyInOp(ComponentInput):
    operation: Literal["copy_in"]
    table: Identifier
    db_schema: Identifier | None = Field(None, description="schema of the table (search_path when omitted)")
    columns: list[Identifier] = Field(min_length=1, max_length=200)
    rows: list[Annotated[list[Scalar], Field(max_length=200)]] = Field(min_length=1, max_length=200_000)
    pool_timeout_s: PoolTimeout = 5.0


class TypeSafeStatusOp(ComponentInput):
    operation: Literal["status"]


class TypeSafePsycopgClientInput(
    RootModel[Annotated[Union[TypeSafeQueryOp, TypeSafeCopyInOp, TypeSafeStatusOp], Field(discriminator="operation")]]  # noqa: UP007
):
    """One of: query, copy_in, status."""


# --------------------------------------------------------------------------- outputs


class TypeSafePsycopgClientOutput(ComponentOutput):
    operation: str
    configured: bool = Field(description="whether MLMESH_DATABASE_URL is set")
    message: str | None = None
    server_version: str | None = None
    columns: list[str] | None = None
    rows: list[dict[str, Any]] | None = Field(None, description="validated rows (datetimes ISO 8601, decimals as text)")
    row_count: int | None = Field(None, description="rows returned by the query, or rows loaded by COPY")
    truncated: bool | None = None
    seconds: float | None = Field(None, description="measured wall time of the statement / COPY")
    rows_per_second: float | None = None


# --------------------------------------------------------------------------- operations


def _row_model(columns: dict[str, str]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, type_name in columns.items():
        base = _BASE_TYPES[type_name.rstrip("?")]
        fields[name] = (base | None, ...) if type_name.endswith("?") else (base, ...)
    config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    return create_model("TypedRow", __config__=config, **fields)


def _query(request: TypeSafeQueryOp, ctx: RunContext) -> TypeSafePsycopgClientOutput:
    parsed = parse_parameterised(request.sql)
    parsed.order(request.params, "params")  # placeholder/value agreement, before touching the server
    model = _row_model(request.columns)
    with pg_connection(ctx, timeout=request.pool_timeout_s) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        try:
            # The caller's text is the statement; values are bound server-side, never interpolated.
            cur.execute(request.sql, request.params, prepare=False)  # type: ignore[arg-type]
            names = [d.name for d in cur.description] if cur.description else []
            fetched = cur.fetchmany(request.max_rows + 1) if names else []
        except (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError) as exc:
            raise server_error(exc, "sql") from exc
        seconds = time.perf_counter() - started
    if not names:
        raise InvalidInput("sql", "the statement returns no rows: add RETURNING or use a SELECT")
    unmapped = [n for n in names if n not in request.columns]
    absent = [n for n in request.columns if n not in names]
    if len(set(names)) != len(names):
        raise InvalidInput("sql", f"duplicate result column names {names}: alias them")
    if unmapped or absent:
        raise InvalidInput("columns", f"result columns {names}; not typed: {unmapped}; typed but absent: {absent}")
    truncated = len(fetched) > request.max_rows
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(fetched[: request.max_rows]):
        try:
            typed = model.model_validate(dict(zip(names, row, strict=True)))
        except ValidationError as exc:
            err = exc.errors()[0]
            column = err["loc"][0] if err["loc"] else "?"
            raise InvalidInput(
                f"rows[{i}].{column}",
                f"{err['msg']} (declared {request.columns.get(str(column))}, got {type(err['input']).__name__})",
            ) from exc
        rows.append(typed.model_dump(mode="json"))
    return TypeSafePsycopgClientOutput(
        operation="query",
        configured=True,
        columns=names,
        rows=rows,
        row_count=len(rows),
        truncated=truncated,
        seconds=seconds,
    )


def _copy_in(request: TypeSafeCopyInOp, ctx: RunContext) -> TypeSafePsycopgClientOutput:
    width = len(request.columns)
    if len(set(request.columns)) != width:
        raise InvalidInput("columns", "column names must be distinct")
    bad = next((i for i, row in enumerate(request.rows) if len(row) != width), None)
    if bad is not None:
        raise InvalidInput(f"rows[{bad}]", f"{len(request.rows[bad])} values for {width} columns")
    table = sql.Identifier(request.db_schema, request.table) if request.db_schema else sql.Identifier(request.table)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        table, sql.SQL(", ").join(map(sql.Identifier, request.columns))
    )
    with pg_connection(ctx, timeout=request.pool_timeout_s) as conn:
        started = time.perf_counter()
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(statement) as copy:
                    for row in request.rows:
                        copy.write_row(row)
                # The server's own count from the COPY command tag.
                loaded = cur.rowcount
        except (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError) as exc:
            raise server_error(exc, "rows") from exc
        seconds = time.perf_counter() - started
    return TypeSafePsycopgClientOutput(
        operation="copy_in",
        configured=True,
        row_count=loaded,
        seconds=seconds,
        rows_per_second=loaded / seconds if seconds > 0 else None,
    )


def _status(ctx: RunContext) -> TypeSafePsycopgClientOutput:
    if not ctx.settings.database_url:
        return TypeSafePsycopgClientOutput(
            operation="status",
            configured=False,
            message="PostgreSQL is not configured: set MLMESH_DATABASE_URL (e.g. postgresql://127.0.0.1:5432/test)",
        )
    with pg_connection(ctx) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return TypeSafePsycopgClientOutput(
        operation="status", configured=True, message="connected", server_version=str(version[0]) if version else None
    )


@component(
    "TypeSafePsycopgClient",
    tier="tier4",
    capabilities=["postgres", "parameterised_query", "typed_rows", "bulk_copy"],
    example={"operation": "status"},
    deterministic=False,
    errors={
        404: "copy_in into a table that does not exist",
        409: "the statement violates an integrity constraint",
        503: "PostgreSQL not configured (set MLMESH_DATABASE_URL), unreachable, or no pooled connection in time",
    },
)
def type_safe_psycopg_client(request: TypeSafePsycopgClientInput, ctx: RunContext) -> TypeSafePsycopgClientOutput:
    """Parameterised PostgreSQL queries returning pydantic-typed rows, bulk COPY, timings.

    Values travel only as parameters and identifiers only as ``sql.Identifier``; a statement that is
    not a single parameterised SELECT/WITH/VALUES/INSERT/UPDATE/DELETE (quotes, semicolons,
    comments, $-quoting, no placeholder) is refused with 422 naming ``sql``.
    """
    op = request.root
    if isinstance(op, TypeSafeQueryOp):
        return _query(op, ctx)
    if isinstance(op, TypeSafeCopyInOp):
        return _copy_in(op, ctx)
    return _status(ctx)
