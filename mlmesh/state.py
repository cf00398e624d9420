"""SQLite state for stateful components: WAL, busy timeout, versioned schema.

    db = StateDB(data_dir / "bandits.sqlite", migrations=[
        "CREATE TABLE experiment (id TEXT PRIMARY KEY, spec TEXT NOT NULL)",
        "ALTER TABLE experiment ADD COLUMN created REAL",
    ])
    with db.transaction() as conn:
        conn.execute("INSERT INTO experiment VALUES (?, ?, ?)", ...)

Migration *i* (0-based) brings the schema to version *i + 1*, recorded in
``PRAGMA user_version``; a database newer than the code is refused.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SchemaTooNew", "StateDB"]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the code."""


class StateDB:
    """A SQLite database in the data directory, one connection per thread."""

    def __init__(self, path: Path, migrations: Sequence[str], *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.migrations = tuple(migrations)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._migrate_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use :meth:`transaction` to group writes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            self._use_wal(conn)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once rather than waiting
        # on the busy timeout: two threads or processes opening the same new database retry here instead.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: writers queue on the busy timeout instead of failing."""
        conn = self.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self.connect().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._migrate_lock, self.transaction() as conn:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(self.migrations):
                raise SchemaTooNew(
                    f"{self.path.name} has schema version {current}; this code knows {len(self.migrations)}"
                )
            for version, script in enumerate(self.migrations[current:], start=current + 1):
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split on complete statements instead.
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
