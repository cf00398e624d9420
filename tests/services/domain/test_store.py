"""The domain store on both backends: round trips, idempotence, filters, migrations, restarts, constraints."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mlmesh.errors import InvalidInput, ServiceUnavailable
from services.domain import SCHEMA_VERSION, TABLES, DomainStore, SchemaTooNew, open_store, store_for
from services.framework import RunContext
from tests.conftest import make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"
Opener = Callable[..., DomainStore]


class Backend:
    """How a test opens the store again and reaches the raw database behind it."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "domain.sqlite"
        self.schema = f"t_domain_{uuid.uuid4().hex[:12]}"
        self.opened: list[DomainStore] = []

    def open(self, version: int | None = None) -> DomainStore:
        if self.kind == "sqlite":
            store = DomainStore.sqlite(self.path, version=version)
        else:
            store = DomainStore.postgres(DB_URL, schema=self.schema, version=version)
        self.opened.append(store)
        return store

    def raw(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL directly (bypassing the store's validation), in its own transaction."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                conn.execute("PRAGMA foreign_keys=ON")
                with conn:
                    return conn.execute(query.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        with psycopg.connect(DB_URL, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
        if self.kind == "postgresql":
            with psycopg.connect(DB_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend: Backend) -> DomainStore:
    return backend.open()


def prompt(i: int, domain: str = "sql", t: float = 1000.0) -> dict[str, Any]:
    return {"id": f"p{i}", "text": f"Explain query {i}", "domain": domain, "created_at": t + i}


def rule(rid: str, *, enabled: bool = True, priority: int = 0) -> dict[str, Any]:
    return {
        "id": rid,
        "name": rid.title(),
        "category": "core",
        "parameters": {"w": 0.5, "tags": ["a", "b"]},
        "enabled": enabled,
        "priority": priority,
        "created_at": 900.0,
    }


def session(i: int, prompt_id: str | None = "p1", t: float = 1000.0) -> dict[str, Any]:
    return {
        "id": f"s{i}",
        "prompt_id": prompt_id,
        "user_id": "u1",
        "original_prompt": "Explain query",
        "improved_prompt": "Explain the query step by step",
        "started_at": t + i,
        "finished_at": t + i + 5,
    }


def application(i: int, session_id: str = "s1", rule_id: str = "clarity", t: float = 1000.0) -> dict[str, Any]:
    return {
        "id": f"a{i}",
        "session_id": session_id,
        "rule_id": rule_id,
        "parameters": {"w": 0.5},
        "before_quality": 0.4,
        "after_quality": 0.55,
        "improvement_score": 0.15,
        "latency_ms": 12.5,
        "context": {"domain": "sql", "prompt_length": 13},
        "applied_at": t + i,
        "success": True,
    }


def seed(store: DomainStore) -> None:
    store.add_prompts([prompt(1, "sql"), prompt(2, "coding")])
    store.add_rules([rule("clarity", priority=5), rule("few_shot", priority=9), rule("role", enabled=False)])
    store.add_sessions([session(1, "p1"), session(2, "p2"), session(3, None)])
    store.add_applications(
        [
            application(3, "s2", "few_shot"),
            application(1, "s1", "clarity"),
            application(2, "s1", "few_shot"),
            application(4, "s3", "clarity"),
        ]
    )
    store.add_feedback(
        [
            {"id": "f1", "session_id": "s1", "rating": 5, "text": "great", "created_at": 1010.0},
            {"id": "f2", "session_id": "s3", "rating": 2, "created_at": 1020.0},
        ]
    )


# --------------------------------------------------------------------------- round trips and reads


def test_round_trip_decodes_json_and_booleans_and_joins_the_prompt(backend: Backend, store: DomainStore) -> None:
    seed(store)
    apps = store.applications()
    assert [a["id"] for a in apps] == ["a1", "a2", "a3", "a4"]  # by applied_at, not insertion order
    first = apps[0]
    assert first["parameters"] == {"w": 0.5} and first["context"] == {"domain": "sql", "prompt_length": 13}
    assert first["success"] is True
    assert (first["prompt_id"], first["domain"], first["prompt_text"]) == ("p1", "sql", "Explain query 1")
    assert apps[2]["domain"] == "coding"
    # A session without a stored prompt still lists its applications, with no prompt fields.
    assert (apps[3]["prompt_id"], apps[3]["domain"], apps[3]["prompt_text"]) == (None, None, None)
    rules = store.rules()
    assert [r["id"] for r in rules] == ["few_shot", "clarity", "role"]  # by descending priority
    assert rules[0]["parameters"] == {"w": 0.5, "tags": ["a", "b"]} and rules[0]["enabled"] is True
    assert [r["id"] for r in store.rules(enabled=False)] == ["role"]
    assert [r["id"] for r in store.rules(enabled=True)] == ["few_shot", "clarity"]
    feedback = store.feedback()
    assert [(f["id"], f["rating"], f["rule_ids"]) for f in feedback] == [
        ("f1", 5, ["clarity", "few_shot"]),
        ("f2", 2, ["clarity"]),
    ]
    assert feedback[1]["text"] is None
    assert store.backend == backend.kind
    assert store.schema_version == SCHEMA_VERSION


def test_filters_windows_and_limits(store: DomainStore) -> None:
    seed(store)
    assert [a["id"] for a in store.applications(since=1002)] == ["a2", "a3", "a4"]
    assert [a["id"] for a in store.applications(since=1002, until=1004)] == ["a2", "a3"]  # [since, until)
    assert [a["id"] for a in store.applications(rule_id="few_shot")] == ["a2", "a3"]
    assert [a["id"] for a in store.applications(rule_id="clarity", limit=1)] == ["a1"]
    assert store.applications(rule_id="missing") == []
    assert [p["id"] for p in store.prompts(domain="coding")] == ["p2"]
    assert [p["id"] for p in store.prompts(limit=1)] == ["p1"]
    assert [f["id"] for f in store.feedback(since=1015)] == ["f2"]
    assert [f["id"] for f in store.feedback(until=1015)] == ["f1"]
    assert [s["id"] for s in store.sessions(since=1002)] == ["s2", "s3"]


def test_counts_latest_and_ping(store: DomainStore) -> None:
    assert store.counts() == dict.fromkeys(TABLES, 0)
    assert store.latest() == dict.fromkeys(TABLES, None)
    seed(store)
    assert store.counts() == {"prompts": 2, "rules": 3, "sessions": 3, "rule_applications": 4, "feedback": 2}
    assert store.latest() == {
        "prompts": 1002.0,
        "rules": 900.0,
        "sessions": 1008.0,  # the latest finished_at
        "rule_applications": 1004.0,
        "feedback": 1020.0,
    }
    assert 0 <= store.ping() < 5000


def test_inserts_are_idempotent_by_id(store: DomainStore) -> None:
    seed(store)
    before = store.counts()
    changed = {**prompt(1), "text": "something else"}
    assert store.add_prompts([changed, prompt(3)]) == 1  # only p3 is new
    assert store.add_applications([application(1), application(2, rule_id="few_shot")]) == 0
    assert store.counts() == {**before, "prompts": 3}
    assert store.prompts(limit=1)[0]["text"] == "Explain query 1"  # the stored row is kept
    assert store.add_prompts([]) == 0


# --------------------------------------------------------------------------- validation and constraints


@pytest.mark.parametrize(
    ("method", "rows", "field"),
    [
        ("add_prompts", [prompt(1), {**prompt(2), "text": ""}], "rows[1].text"),
        ("add_prompts", [{**prompt(1), "created_at": float("nan")}], "rows[0].created_at"),
        ("add_prompts", [{**prompt(1), "colour": "red"}], "rows[0].colour"),
        ("add_prompts", [{"id": "p9", "text": "x", "created_at": 1.0}], "rows[0].domain"),
        ("add_rules", [{**rule("r"), "parameters": [1, 2]}], "rows[0].parameters"),
        ("add_sessions", [{**session(1), "finished_at": 10.0}], "rows[0].finished_at"),
        ("add_applications", [application(1), {**application(2), "before_quality": 1.5}], "rows[1].before_quality"),
        ("add_applications", [{**application(1), "latency_ms": -1.0}], "rows[0].latency_ms"),
        ("add_applications", [{**application(1), "context": {"x": float("inf")}}], "rows[0].context"),
        ("add_feedback", [{"id": "f", "session_id": "s1", "rating": 7, "created_at": 1.0}], "rows[0].rating"),
        ("add_feedback", "not rows", "rows"),
        ("add_feedback", [42], "rows[0]"),
    ],
)
def test_bad_rows_name_the_row_and_field(store: DomainStore, method: str, rows: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        getattr(store, method)(rows)
    assert info.value.field == field
    assert info.value.status == 422
    assert store.counts() == dict.fromkeys(TABLES, 0)  # nothing half-written


def test_unknown_references_name_the_row_and_column(store: DomainStore) -> None:
    seed(store)
    with pytest.raises(InvalidInput) as info:
        store.add_applications([application(10), application(11, session_id="nope")])
    assert info.value.field == "rows[1].session_id" and "no session with id 'nope'" in info.value.detail
    with pytest.raises(InvalidInput) as info:
        store.add_applications([application(12, rule_id="ghost")])
    assert info.value.field == "rows[0].rule_id"
    with pytest.raises(InvalidInput) as info:
        store.add_sessions([session(9, prompt_id="p404")])
    assert info.value.field == "rows[0].prompt_id"
    with pytest.raises(InvalidInput) as info:
        store.add_feedback([{"id": "f9", "session_id": "s404", "rating": 3, "created_at": 1.0}])
    assert info.value.field == "rows[0].session_id"
    assert store.counts()["rule_applications"] == 4  # the batch with a bad row wrote nothing


def test_database_constraints_hold_without_the_store(backend: Backend) -> None:
    seed(backend.open())
    errors = (sqlite3.IntegrityError, psycopg.IntegrityError)
    bad = [
        ("INSERT INTO feedback (id, session_id, rating, created_at) VALUES (%s, %s, %s, %s)", ("fx", "s1", 6, 1.0)),
        ("INSERT INTO feedback (id, session_id, rating, created_at) VALUES (%s, %s, %s, %s)", ("fx", "zz", 3, 1.0)),
        (
            "INSERT INTO rule_applications (id, session_id, rule_id, parameters, before_quality, after_quality, "
            "improvement_score, latency_ms, context, applied_at, success) "
            "VALUES (%s, %s, %s, '{}', %s, %s, 0, 1, '{}', 1, %s)",
            ("ax", "s1", "clarity", 0.5, 1.2, True),
        ),
        ("INSERT INTO prompts (id, text, domain, created_at) VALUES (%s, %s, %s, %s)", ("p1", "dup", "sql", 1.0)),
    ]
    for query, params in bad:
        with pytest.raises(errors):
            backend.raw(query, params)


def test_bad_arguments_are_422(store: DomainStore) -> None:
    for call, field in [
        (lambda: store.applications(limit=0), "limit"),
        (lambda: store.prompts(limit=True), "limit"),
        (lambda: store.applications(since=float("nan")), "since"),
        (lambda: store.feedback(since=10, until=5), "until"),
    ]:
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.field == field


# --------------------------------------------------------------------------- migrations and restarts


def test_restart_loses_nothing(backend: Backend) -> None:
    first = backend.open()
    seed(first)
    snapshot = (first.counts(), first.applications(), first.feedback(), first.rules(), first.sessions())
    first.close()
    with pytest.raises(ServiceUnavailable):
        first.counts()
    second = backend.open()
    assert (second.counts(), second.applications(), second.feedback(), second.rules(), second.sessions()) == snapshot


def test_migrates_from_v1_to_current_keeping_data(backend: Backend) -> None:
    old = backend.open(version=1)
    assert old.schema_version == 1
    old.add_prompts([prompt(1)])
    backend.raw(  # v1 has no rules.created_at: write the rule as v1 code would
        "INSERT INTO rules (id, name, category, parameters, enabled, priority) VALUES (%s, %s, %s, %s, %s, %s)",
        ("clarity", "Clarity", "core", '{"w": 1}', True, 1),
    )
    old.add_sessions([session(1)])
    with pytest.raises(Exception):  # noqa: B017 - v1 has no feedback table
        old.add_feedback([{"id": "f1", "session_id": "s1", "rating": 4, "created_at": 1.0}])
    old.close()

    new = backend.open()
    assert new.schema_version == SCHEMA_VERSION
    versions = [row[0] for row in backend.raw("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert new.rules() == [
        {
            "id": "clarity",
            "name": "Clarity",
            "category": "core",
            "parameters": {"w": 1},
            "enabled": True,
            "priority": 1,
            "created_at": None,
        }
    ]
    new.add_applications([application(1)])
    new.add_feedback([{"id": "f1", "session_id": "s1", "rating": 4, "created_at": 1.0}])
    assert new.counts() == {"prompts": 1, "rules": 1, "sessions": 1, "rule_applications": 1, "feedback": 1}
    indexes = backend_indexes(backend)
    assert {"rule_applications_applied_at", "rule_applications_rule_id", "rule_applications_session_id"} <= indexes


def backend_indexes(backend: Backend) -> set[str]:
    if backend.kind == "sqlite":
        rows = backend.raw("SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = backend.raw("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (backend.schema,))
    return {row[0] for row in rows}


def test_refuses_a_schema_newer_than_the_code(backend: Backend) -> None:
    backend.open().close()
    backend.raw("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (SCHEMA_VERSION + 1, 1.0))
    with pytest.raises(SchemaTooNew) as info:
        backend.open()
    assert info.value.status == 503
    assert f"schema version {SCHEMA_VERSION + 1}" in info.value.detail


def test_version_argument_is_checked(backend: Backend) -> None:
    with pytest.raises(InvalidInput):
        backend.open(version=SCHEMA_VERSION + 1)


# --------------------------------------------------------------------------- sharing


def test_concurrent_writers_and_readers(store: DomainStore) -> None:
    store.add_prompts([prompt(1)])
    store.add_rules([rule("clarity")])
    store.add_sessions([session(1)])
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(worker: int) -> None:
        barrier.wait()
        try:
            for batch in range(5):
                base = worker * 1000 + batch * 10
                store.add_applications([application(base + k, t=1000.0 + base) for k in range(10)])
                store.applications(rule_id="clarity", limit=5)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    assert errors == []
    assert store.counts()["rule_applications"] == 6 * 5 * 10


def test_open_store_and_store_for_pick_the_backend_and_cache(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with open_store(settings) as store:
        assert store.backend == "sqlite"
    assert (settings.data_dir / "domain.sqlite").is_file()
    ctx = RunContext(component="x", settings=settings, request_id=None)
    first = store_for(ctx)
    assert store_for(RunContext(component="y", settings=settings, request_id=None, resources=ctx.resources)) is first
    for resource in ctx.resources.values():
        resource.close()

    schema = f"t_domain_{uuid.uuid4().hex[:12]}"
    try:
        with open_store(make_settings(tmp_path, database_url=DB_URL), schema=schema) as pg:
            assert pg.backend == "postgresql" and pg.counts()["prompts"] == 0
    finally:
        with psycopg.connect(DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_schema_name_is_checked() -> None:
    with pytest.raises(InvalidInput) as info:
        DomainStore.postgres(DB_URL, schema='x"; DROP SCHEMA public; --')
    assert info.value.field == "schema"
