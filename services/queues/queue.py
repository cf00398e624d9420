"""A small durable priority queue on SQLite (:class:`~mlmesh.state.StateDB`).

Tasks live in the ``queue_task`` table of a database in ``data/``; every change is a
``BEGIN IMMEDIATE`` transaction, so an accepted task is on disk before :meth:`TaskQueue.enqueue`
returns and concurrent workers (threads or processes) never claim the same task twice.

State machine::

                 enqueue
                    │
                    ▼         claim (lease)            complete
    ┌──────────► ready ───────────────────► running ─────────────► done
    │   fail,       │                        │  │
    │   attempts    │ cancel                 │  │ fail (permanent, or attempts == max_attempts)
    │   left        ▼                        │  └───────────────────────────► dead   (dead letter)
    │           cancelled ◄──── cancel ──────┤
    │                                        │ lease expired (the worker died): requeue_expired
    └────────────────────────────────────────┘ (→ dead instead when no attempts are left)

* ``claim`` takes the ready task with the highest ``priority`` (then the earliest ``ready_at``,
  then the oldest), counts an attempt and gives it a lease of ``lease_s`` seconds identified by
  a fresh ``lease_id``. ``complete``, ``fail`` and ``heartbeat`` need that ``lease_id``: a worker
  whose lease expired (and whose task was claimed again) or whose task was cancelled gets
  :class:`LeaseLost` (a 409) instead of overwriting newer state.
* ``fail`` retries after exponential backoff with *full jitter* (AWS architecture blog,
  "Exponential Backoff and Jitter"): ``uniform(0, min(max_backoff_s, base_backoff_s · 2^(attempt-1)))``
  drawn from ``random.Random(f"{task_id}:{attempt}")`` — reproducible per task and attempt, yet
  spread across tasks.
* A worker killed mid-task leaves its task ``running`` with a lease in the past;
  ``requeue_expired`` (also run by every ``claim``) puts it back to ``ready``: this is how work
  resumes after a crash or restart, and why no accepted task is lost. Delivery is therefore
  at-least-once: a task's side effects may happen twice if its worker dies after them.

A database that hosts a queue starts its migrations with :data:`QUEUE_MIGRATIONS` (a component
may append its own tables after them), so a component's own rows and its queue can change in
one transaction: every method takes an optional ``conn`` of an open transaction.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlmesh.errors import Conflict, NotFound
from mlmesh.state import StateDB

__all__ = [
    "FINAL_STATES",
    "QUEUE_MIGRATIONS",
    "STATES",
    "LeaseLost",
    "Task",
    "TaskQueue",
    "full_jitter_backoff",
]

STATES = ("ready", "running", "done", "dead", "cancelled")
FINAL_STATES = ("done", "dead", "cancelled")

QUEUE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE queue_task (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        tag TEXT,
        state TEXT NOT NULL CHECK (state IN ('ready', 'running', 'done', 'dead', 'cancelled')),
        priority INTEGER NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        base_backoff_s REAL NOT NULL,
        max_backoff_s REAL NOT NULL,
        idempotency_key TEXT,
        ready_at REAL NOT NULL,
        lease_id TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        last_error TEXT,
        result TEXT,
        UNIQUE (queue, idempotency_key)
    );
    CREATE INDEX queue_task_ready ON queue_task (queue, state, priority DESC, ready_at, seq);
    CREATE INDEX queue_task_tag ON queue_task (queue, tag, state);
    """,
)


class LeaseLost(Conflict):
    """The caller no longer holds the task's lease (it expired and was re-claimed, or was cancelled)."""


@dataclass(frozen=True)
class Task:
    """One queued task as stored."""

    task_id: str
    queue: str
    tag: str | None
    state: str
    priority: int
    payload: Any
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    ready_at: float
    lease_id: str | None
    lease_until: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    last_error: str | None
    result: Any

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Task:
        return cls(
            task_id=row["task_id"],
            queue=row["queue"],
            tag=row["tag"],
            state=row["state"],
            priority=row["priority"],
            payload=json.loads(row["payload"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            idempotency_key=row["idempotency_key"],
            ready_at=row["ready_at"],
            lease_id=row["lease_id"],
            lease_until=row["lease_until"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            last_error=row["last_error"],
            result=None if row["result"] is None else json.loads(row["result"]),
        )


def full_jitter_backoff(task_id: str, attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``uniform(0, min(max_s, base_s · 2^(attempt-1)))``."""
    cap = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    # Seeded by task and attempt: reproducible, and different tasks do not retry in lockstep.
    return random.Random(f"{task_id}:{attempt}").uniform(0.0, cap)  # noqa: S311 - jitter, not crypto


class TaskQueue:
    """A named durable priority queue in a :class:`StateDB` whose migrations start with :data:`QUEUE_MIGRATIONS`.

    Args:
        db: the database (``ctx.state(name, [*QUEUE_MIGRATIONS, ...])``).
        queue: the queue's name; several queues may share one table.
        lease_s: default lease a claim grants.
        clock: wall-clock seconds (``time.time``); injectable for tests.
    """

    def __init__(
        self,
        db: StateDB,
        queue: str = "default",
        *,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.queue = queue
        self.lease_s = lease_s
        self.clock = clock

    @contextmanager
    def _tx(self, conn: sqlite3.Connection | None) -> Iterator[sqlite3.Connection]:
        if conn is not None:  # the caller's open transaction
            yield conn
        else:
            with self.db.transaction() as own:
                yield own

    # ------------------------------------------------------------------ producing

    def enqueue(
        self,
        payload: Any,
        *,
        priority: int = 0,
        max_attempts: int = 3,
        idempotency_key: str | None = None,
        tag: str | None = None,
        delay_s: float = 0.0,
        base_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        conn: sqlite3.Connection | None = None,
    ) -> tuple[Task, bool]:
        """Store a ready task (committed before returning); ``(task, created)``.

        With an ``idempotency_key`` already used in this queue the existing task is returned
        (``created`` False) when its payload is the same, and :class:`Conflict` raised otherwise.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1; got {max_attempts}")
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        now = self.clock()
        with self._tx(conn) as tx:
            if idempotency_key is not None:
                row = tx.execute(
                    "SELECT * FROM queue_task WHERE queue = ? AND idempotency_key = ?", (self.queue, idempotency_key)
                ).fetchone()
                if row is not None:
                    if row["payload"] != body:
                        raise Conflict(f"idempotency key {idempotency_key!r} was used for another payload")
                    return Task.from_row(row), False
            task_id = f"task-{uuid.uuid4().hex}"
            tx.execute(
                """INSERT INTO queue_task (task_id, queue, tag, state, priority, payload, max_attempts,
                       base_backoff_s, max_backoff_s, idempotency_key, ready_at, created_at, updated_at)
                   VALUES (?, ?, ?, 'ready', ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    task_id,
                    self.queue,
                    tag,
                    priority,
                    body,
                    max_attempts,
                    base_backoff_s,
                    max_backoff_s,
                    idempotency_key,
                    now + delay_s,
                    now,
                    now,
                ),
            )
            return self._get(tx, task_id), True

    # ------------------------------------------------------------------ consuming

    def requeue_expired(self, *, conn: sqlite3.Connection | None = None) -> int:
        """Put running tasks whose lease has expired back to ready (dead when no attempts are left)."""
        now = self.clock()
        with self._tx(conn) as tx:
            dead = tx.execute(
                """UPDATE queue_task SET state = 'dead', lease_id = NULL, lease_until = NULL, finished_at = ?,
                       updated_at = ?, last_error = 'lease expired (worker lost) on the last attempt'
                   WHERE queue = ? AND state = 'running' AND lease_until <= ? AND attempts >= max_attempts""",
                (now, now, self.queue, now),
            ).rowcount
            back = tx.execute(
                """UPDATE queue_task SET state = 'ready', lease_id = NULL, lease_until = NULL, ready_at = ?,
                       updated_at = ?, last_error = 'lease expired (worker lost)'
                   WHERE queue = ? AND state = 'running' AND lease_until <= ?""",
                (now, now, self.queue, now),
            ).rowcount
            return int(dead + back)

    def claim(
        self, *, lease_s: float | None = None, tag: str | None = None, conn: sqlite3.Connection | None = None
    ) -> Task | None:
        """Atomically take the highest-priority ready task (of ``tag`` if given) and lease it; None if none."""
        lease = self.lease_s if lease_s is None else lease_s
        with self._tx(conn) as tx:
            self.requeue_expired(conn=tx)
            now = self.clock()
            where, args = "queue = ? AND state = 'ready' AND ready_at <= ?", [self.queue, now]
            if tag is not None:
                where += " AND tag = ?"
                args.append(tag)
            row = tx.execute(
                f"SELECT task_id FROM queue_task WHERE {where} ORDER BY priority DESC, ready_at, seq LIMIT 1",  # noqa: S608
                args,
            ).fetchone()
            if row is None:
                return None
            tx.execute(
                """UPDATE queue_task SET state = 'running', attempts = attempts + 1, lease_id = ?,
                       lease_until = ?, updated_at = ? WHERE task_id = ?""",
                (uuid.uuid4().hex, now + lease, now, row["task_id"]),
            )
            return self._get(tx, row["task_id"])

    def heartbeat(self, task: Task, *, lease_s: float | None = None, conn: sqlite3.Connection | None = None) -> Task:
        """Extend a held lease by ``lease_s`` from now."""
        lease = self.lease_s if lease_s is None else lease_s
        with self._tx(conn) as tx:
            self._held(tx, task)
            now = self.clock()
            tx.execute(
                "UPDATE queue_task SET lease_until = ?, updated_at = ? WHERE task_id = ?",
                (now + lease, now, task.task_id),
            )
            return self._get(tx, task.task_id)

    def complete(self, task: Task, result: Any = None, *, conn: sqlite3.Connection | None = None) -> Task:
        """Mark a held task done, storing ``result`` (JSON)."""
        body = None if result is None else json.dumps(result, separators=(",", ":"), allow_nan=False)
        with self._tx(conn) as tx:
            self._held(tx, task)
            now = self.clock()
            tx.execute(
                """UPDATE queue_task SET state = 'done', result = ?, lease_id = NULL, lease_until = NULL,
                       finished_at = ?, updated_at = ? WHERE task_id = ?""",
                (body, now, now, task.task_id),
            )
            return self._get(tx, task.task_id)

    def fail(self, task: Task, error: str, *, permanent: bool = False, conn: sqlite3.Connection | None = None) -> Task:
        """Record a failed attempt: back to ready after jittered backoff, or dead when permanent or exhausted."""
        with self._tx(conn) as tx:
            row = self._held(tx, task)
            now = self.clock()
            if permanent or row["attempts"] >= row["max_attempts"]:
                tx.execute(
                    """UPDATE queue_task SET state = 'dead', last_error = ?, lease_id = NULL, lease_until = NULL,
                           finished_at = ?, updated_at = ? WHERE task_id = ?""",
                    (error, now, now, task.task_id),
                )
            else:
                delay = full_jitter_backoff(task.task_id, row["attempts"], row["base_backoff_s"], row["max_backoff_s"])
                tx.execute(
                    """UPDATE queue_task SET state = 'ready', last_error = ?, lease_id = NULL, lease_until = NULL,
                           ready_at = ?, updated_at = ? WHERE task_id = ?""",
                    (error, now + delay, now, task.task_id),
                )
            return self._get(tx, task.task_id)

    # ------------------------------------------------------------------ managing

    def cancel(self, task_id: str, *, conn: sqlite3.Connection | None = None) -> Task:
        """Cancel a ready or running task (a running worker then loses its lease); 409 once it is final."""
        with self._tx(conn) as tx:
            row = self._row(tx, task_id)
            if row["state"] in FINAL_STATES:
                raise Conflict(f"task {task_id} is already {row['state']}")
            now = self.clock()
            tx.execute(
                """UPDATE queue_task SET state = 'cancelled', lease_id = NULL, lease_until = NULL,
                       finished_at = ?, updated_at = ? WHERE task_id = ?""",
                (now, now, task_id),
            )
            return self._get(tx, task_id)

    def cancel_tag(self, tag: str, *, conn: sqlite3.Connection | None = None) -> int:
        """Cancel every ready or running task carrying ``tag``; how many."""
        now = self.clock()
        with self._tx(conn) as tx:
            return int(
                tx.execute(
                    """UPDATE queue_task SET state = 'cancelled', lease_id = NULL, lease_until = NULL,
                           finished_at = ?, updated_at = ?
                       WHERE queue = ? AND tag = ? AND state IN ('ready', 'running')""",
                    (now, now, self.queue, tag),
                ).rowcount
            )

    def get(self, task_id: str) -> Task:
        """One task; :class:`NotFound` when unknown."""
        return Task.from_row(self._row(self.db.connect(), task_id))

    def list(
        self, *, state: str | None = None, tag: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Task], int]:
        """A page of tasks (highest priority, then oldest, first) and how many match in all."""
        where, args = ["queue = ?"], [self.queue]
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if tag is not None:
            where.append("tag = ?")
            args.append(tag)
        clause = " AND ".join(where)
        conn = self.db.connect()
        total = conn.execute(f"SELECT COUNT(*) FROM queue_task WHERE {clause}", args).fetchone()[0]  # noqa: S608
        rows = conn.execute(
            f"SELECT * FROM queue_task WHERE {clause} ORDER BY priority DESC, seq LIMIT ? OFFSET ?",  # noqa: S608
            [*args, limit, offset],
        ).fetchall()
        return [Task.from_row(r) for r in rows], int(total)

    def counts(self, *, tag: str | None = None) -> dict[str, int]:
        """How many tasks are in each state (every state present, zeros included)."""
        where, args = "queue = ?", [self.queue]
        if tag is not None:
            where += " AND tag = ?"
            args.append(tag)
        rows = self.db.connect().execute(
            f"SELECT state, COUNT(*) FROM queue_task WHERE {where} GROUP BY state",  # noqa: S608
            args,
        )
        found = {state: int(n) for state, n in rows}
        return {state: found.get(state, 0) for state in STATES}

    def oldest_ready_age_s(self) -> float | None:
        """Seconds the oldest claimable task has waited since it became ready (None when none is)."""
        now = self.clock()
        row = (
            self.db.connect()
            .execute(
                "SELECT MIN(ready_at) FROM queue_task WHERE queue = ? AND state = 'ready' AND ready_at <= ?",
                (self.queue, now),
            )
            .fetchone()
        )
        return None if row[0] is None else max(0.0, now - row[0])

    # ------------------------------------------------------------------ helpers

    def _row(self, conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM queue_task WHERE task_id = ? AND queue = ?", (task_id, self.queue)).fetchone()
        if row is None:
            raise NotFound(f"unknown task {task_id!r}")
        return row

    def _get(self, conn: sqlite3.Connection, task_id: str) -> Task:
        return Task.from_row(self._row(conn, task_id))

    def _held(self, conn: sqlite3.Connection, task: Task) -> sqlite3.Row:
        row = self._row(conn, task.task_id)
        if row["state"] != "running" or row["lease_id"] is None or row["lease_id"] != task.lease_id:
            raise LeaseLost(f"task {task.task_id} is {row['state']} and no longer leased to this worker")
        return row
