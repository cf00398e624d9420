"""The domain store: prompts, rules, sessions, rule applications and feedback, on SQLite or PostgreSQL.

    store = open_store(settings)            # PostgreSQL (schema ``mlmesh``) if database_url, else data/domain.sqlite
    store.add_prompts([{"id": "p1", "text": "Explain joins", "domain": "sql", "created_at": 1.7e9}])
    rows = store.applications(since=t0, rule_id="clarity")

Inside a component, :func:`store_for` gives the service's one store (cached in ``ctx.resources`` and
closed with the service).

Tables (the same columns on both backends; JSON columns are TEXT on SQLite and JSONB on PostgreSQL,
decoded on read; timestamps are unix seconds)::

    prompts(id, text, domain, created_at)
    rules(id, name, category, parameters, enabled, priority, created_at)
    sessions(id, prompt_id → prompts, user_id, original_prompt, improved_prompt, started_at, finished_at)
    rule_applications(id, session_id → sessions, rule_id → rules, parameters, before_quality, after_quality,
                      improvement_score, latency_ms, context, applied_at, success)
    feedback(id, session_id → sessions, rating 1..5, text, created_at)

Migration *i* (0-based) brings the schema to version *i + 1*; the ``schema_version`` table records each
applied version, and a database newer than the code is refused (:class:`SchemaTooNew`, 503). Inserts are
bulk (``executemany``) and idempotent by id (``ON CONFLICT (id) DO NOTHING``: a row whose id is already
stored is skipped, its stored content kept). Rows are validated before they reach the database; a bad row
raises :class:`~mlmesh.errors.InvalidInput` naming ``rows[i].field``. All SQL is parameterised.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlmesh.errors import InvalidInput, ServiceUnavailable
from mlmesh.settings import Settings
from services.framework.context import RunContext

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "DomainStore",
    "SchemaTooNew",
    "open_store",
    "store_for",
]

TABLES = ("prompts", "rules", "sessions", "rule_applications", "feedback")
DEFAULT_SCHEMA = "mlmesh"
SQLITE_FILE = "domain.sqlite"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BUSY_TIMEOUT_S = 30.0
_POOL_TIMEOUT_S = 5.0

# One DDL text per migration; ``{json}`` is TEXT on SQLite and JSONB on PostgreSQL. DOUBLE PRECISION is a
# REAL on SQLite and an 8-byte float on PostgreSQL (PostgreSQL's REAL is only 4 bytes).
_MIGRATIONS: tuple[str, ...] = (
    # v1: the core tables.
    """
    CREATE TABLE prompts (
        id TEXT PRIMARY KEY,
        text TEXT NOT NULL,
        domain TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE rules (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        parameters {json} NOT NULL,
        enabled BOOLEAN NOT NULL,
        priority INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        prompt_id TEXT REFERENCES prompts(id),
        user_id TEXT,
        original_prompt TEXT NOT NULL,
        improved_prompt TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        CHECK (finished_at IS NULL OR finished_at >= started_at)
    );
    CREATE TABLE rule_applications (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        rule_id TEXT NOT NULL REFERENCES rules(id),
        parameters {json} NOT NULL,
        before_quality DOUBLE PRECISION NOT NULL CHECK (before_quality >= 0 AND before_quality <= 1),
        after_quality DOUBLE PRECISION NOT NULL CHECK (after_quality >= 0 AND after_quality <= 1),
        improvement_score DOUBLE PRECISION NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL CHECK (latency_ms >= 0),
        context {json} NOT NULL,
        applied_at DOUBLE PRECISION NOT NULL,
        success BOOLEAN NOT NULL
    );
    """,
    # v2: feedback, and the indexes the time-window and per-rule reads use.
    """
    CREATE TABLE feedback (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        rating INTEGER NOT NULL CHECK (rating >= 1 AND rating <= 5),
        text TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX rule_applications_applied_at ON rule_applications (applied_at);
    CREATE INDEX rule_applications_rule_id ON rule_applications (rule_id, applied_at);
    CREATE INDEX rule_applications_session_id ON rule_applications (session_id);
    CREATE INDEX feedback_session_id ON feedback (session_id);
    CREATE INDEX feedback_created_at ON feedback (created_at);
    CREATE INDEX sessions_prompt_id ON sessions (prompt_id);
    CREATE INDEX prompts_domain ON prompts (domain);
    """,
    # v3: when a rule was added, so that latest() reports freshness for rules too.
    """
    ALTER TABLE rules ADD COLUMN created_at DOUBLE PRECISION;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


class SchemaTooNew(ServiceUnavailable):
    """The store was migrated by a newer version of the code; this code refuses to touch it."""


# --------------------------------------------------------------------------- row validation

Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1, max_length=100_000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Timestamp = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False, description="unix seconds")]
Quality = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


R = TypeVar("R", bound=_Row)


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    try:
        # Round-trip: rejects NaN/inf and non-JSON values, and makes the stored form canonical.
        return json.loads(json.dumps(value, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable without NaN or infinity ({exc})") from exc


class PromptRow(_Row):
    id: Id
    text: Text
    domain: Name
    created_at: Timestamp


class RuleRow(_Row):
    id: Id
    name: Name
    category: Name
    parameters: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    created_at: Timestamp | None = None

    _json = field_validator("parameters")(_json_object)


class SessionRow(_Row):
    id: Id
    prompt_id: Id | None = None
    user_id: Name | None = None
    original_prompt: Text
    improved_prompt: Annotated[str, Field(max_length=100_000)] | None = None
    started_at: Timestamp
    finished_at: Timestamp | None = None

    @field_validator("finished_at")
    @classmethod
    def _after_start(cls, value: float | None, info: Any) -> float | None:
        started = info.data.get("started_at")
        if value is not None and started is not None and value < started:
            raise ValueError("must not be before started_at")
        return value


class ApplicationRow(_Row):
    id: Id
    session_id: Id
    rule_id: Id
    parameters: dict[str, Any] = Field(default_factory=dict)
    before_quality: Quality
    after_quality: Quality
    improvement_score: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False)
    latency_ms: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    context: dict[str, Any] = Field(default_factory=dict)
    applied_at: Timestamp
    success: bool

    _json = field_validator("parameters", "context")(_json_object)


class FeedbackRow(_Row):
    id: Id
    session_id: Id
    rating: int = Field(ge=1, le=5)
    text: Annotated[str, Field(max_length=100_000)] | None = None
    created_at: Timestamp


def _validate(model: type[R], rows: Sequence[Mapping[str, Any]]) -> list[R]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidInput("rows", "must be a list of row objects")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidInput(f"rows[{i}]", "must be an object with the table's columns")
        try:
            out.append(model.model_validate(dict(row)))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidInput(f"rows[{i}].{where}" if where else f"rows[{i}]", err["msg"]) from exc
    return out


# --------------------------------------------------------------------------- SQL (parameterised, %s style)

_INSERT = {
    "prompts": "INSERT INTO prompts (id, text, domain, created_at) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
    "rules": (
        "INSERT INTO rules (id, name, category, parameters, enabled, priority, created_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
    ),
    "sessions": (
        "INSERT INTO sessions (id, prompt_id, user_id, original_prompt, improved_prompt, started_at, finished_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
    ),
    "rule_applications": (
        "INSERT INTO rule_applications (id, session_id, rule_id, parameters, before_quality, after_quality, "
        "improvement_score, latency_ms, context, applied_at, success) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
    ),
    "feedback": (
        "INSERT INTO feedback (id, session_id, rating, text, created_at) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
    ),
}
# Foreign keys per table: (column, referenced table, existence query).
_REFERENCES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sessions": (("prompt_id", "prompt", "SELECT 1 FROM prompts WHERE id = %s"),),
    "rule_applications": (
        ("session_id", "session", "SELECT 1 FROM sessions WHERE id = %s"),
        ("rule_id", "rule", "SELECT 1 FROM rules WHERE id = %s"),
    ),
    "feedback": (("session_id", "session", "SELECT 1 FROM sessions WHERE id = %s"),),
}
_COUNT = {
    "prompts": "SELECT COUNT(*) AS n FROM prompts",
    "rules": "SELECT COUNT(*) AS n FROM rules",
    "sessions": "SELECT COUNT(*) AS n FROM sessions",
    "rule_applications": "SELECT COUNT(*) AS n FROM rule_applications",
    "feedback": "SELECT COUNT(*) AS n FROM feedback",
}
_LATEST = {
    "prompts": "SELECT MAX(created_at) AS t FROM prompts",
    "rules": "SELECT MAX(created_at) AS t FROM rules",
    "sessions": "SELECT MAX(COALESCE(finished_at, started_at)) AS t FROM sessions",
    "rule_applications": "SELECT MAX(applied_at) AS t FROM rule_applications",
    "feedback": "SELECT MAX(created_at) AS t FROM feedback",
}
# Optional filters as ``(CAST(%s AS type) IS NULL OR ...)`` keep every query a constant string.
_SELECT_RULES = (
    "SELECT id, name, category, parameters, enabled, priority, created_at FROM rules "
    "WHERE (CAST(%s AS BOOLEAN) IS NULL OR enabled = %s) ORDER BY priority DESC, id"
)
_SELECT_PROMPTS = (
    "SELECT id, text, domain, created_at FROM prompts WHERE (CAST(%s AS TEXT) IS NULL OR domain = %s) "
    "ORDER BY created_at, id LIMIT %s"
)
_SELECT_SESSIONS = (
    "SELECT id, prompt_id, user_id, original_prompt, improved_prompt, started_at, finished_at FROM sessions "
    "WHERE (CAST(%s AS DOUBLE PRECISION) IS NULL OR started_at >= %s) "
    "AND (CAST(%s AS DOUBLE PRECISION) IS NULL OR started_at < %s) ORDER BY started_at, id LIMIT %s"
)
_SELECT_APPLICATIONS = (
    "SELECT a.id, a.session_id, a.rule_id, a.parameters, a.before_quality, a.after_quality, a.improvement_score, "
    "a.latency_ms, a.context, a.applied_at, a.success, s.prompt_id, p.domain, p.text AS prompt_text "
    "FROM rule_applications a JOIN sessions s ON s.id = a.session_id LEFT JOIN prompts p ON p.id = s.prompt_id "
    "WHERE (CAST(%s AS DOUBLE PRECISION) IS NULL OR a.applied_at >= %s) "
    "AND (CAST(%s AS DOUBLE PRECISION) IS NULL OR a.applied_at < %s) "
    "AND (CAST(%s AS TEXT) IS NULL OR a.rule_id = %s) "
    "ORDER BY a.applied_at, a.id LIMIT %s"
)
_SELECT_FEEDBACK = (
    "SELECT id, session_id, rating, text, created_at FROM feedback "
    "WHERE (CAST(%s AS DOUBLE PRECISION) IS NULL OR created_at >= %s) "
    "AND (CAST(%s AS DOUBLE PRECISION) IS NULL OR created_at < %s) ORDER BY created_at, id"
)
_SELECT_FEEDBACK_RULES = (
    "SELECT DISTINCT f.session_id, a.rule_id FROM feedback f JOIN rule_applications a ON a.session_id = f.session_id "
    "WHERE (CAST(%s AS DOUBLE PRECISION) IS NULL OR f.created_at >= %s) "
    "AND (CAST(%s AS DOUBLE PRECISION) IS NULL OR f.created_at < %s)"
)
_JSON_COLUMNS = frozenset({"parameters", "context"})
_BOOL_COLUMNS = frozenset({"enabled", "success"})


# --------------------------------------------------------------------------- backends


class _SQLite:
    """SQLite with WAL, one connection per thread, foreign keys on."""

    name = "sqlite"
    no_limit = -1  # SQLite's "LIMIT -1" is unbounded

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ServiceUnavailable("the domain store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @staticmethod
    def _sql(query: str) -> str:
        return query.replace("%s", "?")

    def json_param(self, value: Any) -> Any:
        return json.dumps(value, allow_nan=False, sort_keys=True)

    def query(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self._conn().execute(self._sql(query), tuple(params)).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[_SQLiteTx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self, target: int) -> int:
        with self.transaction() as tx:
            tx.execute(_SCHEMA_VERSION_DDL)
            return _apply_migrations(tx, target, json_type="TEXT", where=self.path.name)

    integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(query.replace("%s", "?"), tuple(params)).fetchall()]

    def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> int:
        before = self.conn.total_changes
        self.conn.executemany(query.replace("%s", "?"), rows)
        return self.conn.total_changes - before


class _Postgres:
    """PostgreSQL through a small psycopg pool; every connection's search_path is the store's schema."""

    name = "postgresql"
    no_limit = None  # PostgreSQL's "LIMIT NULL" is unbounded

    def __init__(self, url: str, schema: str) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise InvalidInput("schema", f"must match {_SCHEMA_NAME.pattern}; got {schema!r}")
        self.url = url
        self.schema = schema
        set_path = pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema))

        def configure(conn: psycopg.Connection) -> None:
            conn.execute(set_path)

        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            timeout=_POOL_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": 5, "row_factory": dict_row},
            configure=configure,
            open=False,
            name=f"mlmesh-domain-{schema}",
        )
        from services.infra.postgres import open_pool

        open_pool(self.pool)

    def json_param(self, value: Any) -> Any:
        return Jsonb(value)

    def query(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with _pg_errors(), self.pool.connection() as conn:
            return list(conn.execute(query, tuple(params)).fetchall())  # type: ignore[arg-type]

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        with _pg_errors(), self.pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    def migrate(self, target: int) -> int:
        with _pg_errors(), self.pool.connection() as conn, conn.transaction():
            # One migrator at a time per schema, across processes.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mlmesh.domain.{self.schema}",))
            conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema)))
            tx = _PostgresTx(conn)
            tx.execute(_SCHEMA_VERSION_DDL)
            return _apply_migrations(tx, target, json_type="JSONB", where=f"schema {self.schema!r}")

    integrity_errors: tuple[type[Exception], ...] = (psycopg.IntegrityError,)

    def close(self) -> None:
        self.pool.close()


class _PostgresTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.conn.execute(query, tuple(params))  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []

    def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(query, rows)  # type: ignore[arg-type]
            return max(cur.rowcount, 0)


@contextmanager
def _pg_errors() -> Iterator[None]:
    """An unreachable server or an exhausted pool is a 503, as for every PostgreSQL user in the mesh."""
    from services.infra.postgres import postgres_errors

    with postgres_errors():
        yield


def _apply_migrations(tx: Any, target: int, *, json_type: str, where: str) -> int:
    rows = tx.execute("SELECT MAX(version) AS v FROM schema_version")
    current = int(rows[0]["v"] or 0)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"domain store {where} has schema version {current}; this code knows up to {SCHEMA_VERSION}: "
            "upgrade mlmesh (or point MLMESH_DATABASE_URL / data_dir at another store)"
        )
    for version in range(current + 1, target + 1):
        for statement in _MIGRATIONS[version - 1].format(json=json_type).split(";"):
            if statement.strip():
                tx.execute(statement.strip())
        tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (version, time.time()))
    return max(current, target)


# --------------------------------------------------------------------------- the store


class DomainStore:
    """Prompts, rules, sessions, rule applications and feedback: validated bulk writes, decoded reads.

    Build one with :func:`open_store` (or :meth:`sqlite` / :meth:`postgres`); it is migrated on open and
    safe to share between threads. Every read returns plain dicts with JSON columns decoded and booleans
    as ``bool``.
    """

    def __init__(self, backend: _SQLite | _Postgres, *, version: int | None = None) -> None:
        self._backend = backend
        target = SCHEMA_VERSION if version is None else version
        if not 1 <= target <= SCHEMA_VERSION:
            backend.close()
            raise InvalidInput("version", f"must be between 1 and {SCHEMA_VERSION}; got {target}")
        try:
            self._version = backend.migrate(target)
        except BaseException:
            backend.close()
            raise

    @classmethod
    def sqlite(cls, path: Path, *, version: int | None = None) -> DomainStore:
        """A store in the SQLite file ``path`` (created and migrated; ``version`` caps the migration)."""
        return cls(_SQLite(Path(path)), version=version)

    @classmethod
    def postgres(cls, url: str, *, schema: str = DEFAULT_SCHEMA, version: int | None = None) -> DomainStore:
        """A store in ``schema`` of the PostgreSQL database at ``url`` (created and migrated)."""
        return cls(_Postgres(url, schema), version=version)

    # ----------------------------------------------------------------- facts

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return self._backend.name  # type: ignore[return-value]

    @property
    def schema_version(self) -> int:
        return self._version

    def close(self) -> None:
        """Close every connection (further calls answer 503)."""
        self._backend.close()

    def __enter__(self) -> DomainStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> float:
        """Milliseconds for a trivial round trip to the database."""
        started = time.perf_counter()
        self._backend.query("SELECT 1 AS one")
        return (time.perf_counter() - started) * 1000.0

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {table: int(self._backend.query(_COUNT[table])[0]["n"]) for table in TABLES}

    def latest(self) -> dict[str, float | None]:
        """The newest timestamp per table (None when empty): how fresh the data is."""
        out: dict[str, float | None] = {}
        for table in TABLES:
            value = self._backend.query(_LATEST[table])[0]["t"]
            out[table] = None if value is None else float(value)
        return out

    # ----------------------------------------------------------------- writes

    def add_prompts(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert prompts (skipping ids already stored); returns how many were new."""
        valid = _validate(PromptRow, rows)
        return self._insert("prompts", valid, [(r.id, r.text, r.domain, r.created_at) for r in valid])

    def add_rules(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rules (skipping ids already stored); ``created_at`` defaults to now."""
        valid = _validate(RuleRow, rows)
        now = time.time()
        j = self._backend.json_param
        params = [
            (
                r.id,
                r.name,
                r.category,
                j(r.parameters),
                r.enabled,
                r.priority,
                now if r.created_at is None else r.created_at,
            )
            for r in valid
        ]
        return self._insert("rules", valid, params)

    def add_sessions(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert sessions; each ``prompt_id`` (if given) must name a stored prompt."""
        valid = _validate(SessionRow, rows)
        params = [
            (r.id, r.prompt_id, r.user_id, r.original_prompt, r.improved_prompt, r.started_at, r.finished_at)
            for r in valid
        ]
        return self._insert("sessions", valid, params)

    def add_applications(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert rule applications; each names a stored session and rule."""
        valid = _validate(ApplicationRow, rows)
        j = self._backend.json_param
        params = [
            (
                r.id,
                r.session_id,
                r.rule_id,
                j(r.parameters),
                r.before_quality,
                r.after_quality,
                r.improvement_score,
                r.latency_ms,
                j(r.context),
                r.applied_at,
                r.success,
            )
            for r in valid
        ]
        return self._insert("rule_applications", valid, params)

    def add_feedback(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert feedback; each names a stored session; ``rating`` is 1..5."""
        valid = _validate(FeedbackRow, rows)
        params = [(r.id, r.session_id, r.rating, r.text, r.created_at) for r in valid]
        return self._insert("feedback", valid, params)

    def _insert(self, table: str, valid: Sequence[_Row], params: list[tuple[Any, ...]]) -> int:
        if not params:
            return 0
        try:
            with self._backend.transaction() as tx:
                return tx.executemany(_INSERT[table], params)
        except self._backend.integrity_errors as exc:
            self._explain_integrity_error(table, valid, exc)
            raise  # unreachable: the explanation always raises

    def _explain_integrity_error(self, table: str, valid: Sequence[_Row], exc: Exception) -> None:
        """Find the row and column that broke a constraint (only on the error path: one query per id)."""
        for column, noun, exists in _REFERENCES.get(table, ()):
            known: dict[str, bool] = {}
            for i, row in enumerate(valid):
                ref = getattr(row, column)
                if ref is None:
                    continue
                if ref not in known:
                    known[ref] = bool(self._backend.query(exists, (ref,)))
                if not known[ref]:
                    raise InvalidInput(
                        f"rows[{i}].{column}", f"no {noun} with id {ref!r} in the store; add the {noun} first"
                    ) from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput("rows", f"violate a constraint of table {table}: {reason}") from exc

    # ----------------------------------------------------------------- reads

    def _limit(self, limit: int | None) -> Any:
        if limit is None:
            return self._backend.no_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit", f"must be a positive integer or None; got {limit!r}")
        return limit

    def _read(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return [_decode(row) for row in self._backend.query(query, params)]

    def rules(self, enabled: bool | None = None) -> list[dict[str, Any]]:
        """Rules by descending priority, optionally only the enabled (or disabled) ones."""
        return self._read(_SELECT_RULES, (enabled, enabled))

    def prompts(self, domain: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Prompts by creation time, optionally of one domain."""
        return self._read(_SELECT_PROMPTS, (domain, domain, self._limit(limit)))

    def sessions(
        self, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Sessions started in ``[since, until)``, by start time."""
        since, until = _window(since, until)
        return self._read(_SELECT_SESSIONS, (since, since, until, until, self._limit(limit)))

    def applications(
        self,
        since: float | None = None,
        until: float | None = None,
        rule_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rule applications applied in ``[since, until)``, by time; each with ``prompt_id``, ``domain``,
        ``prompt_text`` of its session's prompt (None when the session has no stored prompt)."""
        since, until = _window(since, until)
        params = (since, since, until, until, rule_id, rule_id, self._limit(limit))
        return self._read(_SELECT_APPLICATIONS, params)

    def feedback(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Feedback created in ``[since, until)``, by time; each with the sorted ``rule_ids`` applied in its
        session."""
        since, until = _window(since, until)
        params = (since, since, until, until)
        rows = self._read(_SELECT_FEEDBACK, params)
        by_session: dict[str, set[str]] = {}
        for pair in self._backend.query(_SELECT_FEEDBACK_RULES, params):
            by_session.setdefault(pair["session_id"], set()).add(pair["rule_id"])
        for row in rows:
            row["rule_ids"] = sorted(by_session.get(row["session_id"], ()))
        return rows


def _window(since: float | None, until: float | None) -> tuple[float | None, float | None]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise InvalidInput(name, f"must be a finite unix time in seconds or None; got {value!r}")
    if since is not None and until is not None and until < since:
        raise InvalidInput("until", "must not be before since")
    return (None if since is None else float(since), None if until is None else float(until))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if key in _JSON_COLUMNS and isinstance(value, str):
            row[key] = json.loads(value)
        elif key in _BOOL_COLUMNS and value is not None:
            row[key] = bool(value)
    return row


# --------------------------------------------------------------------------- opening


def open_store(settings: Settings, *, schema: str = DEFAULT_SCHEMA) -> DomainStore:
    """PostgreSQL (``schema``) when ``settings.database_url`` is set, else SQLite ``data/domain.sqlite``."""
    if settings.database_url:
        return DomainStore.postgres(settings.database_url, schema=schema)
    return DomainStore.sqlite(settings.data_dir / SQLITE_FILE)


def store_for(ctx: RunContext) -> DomainStore:
    """The service's domain store: opened on first use, cached in ``ctx.resources``, closed with the service."""
    key = f"domain_store:{ctx.settings.database_url or ctx.settings.data_dir}"
    store = ctx.resources.get(key)
    if store is None:
        opened = open_store(ctx.settings)
        store = ctx.resources.setdefault(key, opened)
        if store is not opened:  # another thread won the race
            opened.close()
    return store  # type: ignore[no-any-return]
