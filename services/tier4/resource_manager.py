"""CPU and memory reservations under limits: admit work now, or queue it in priority/FIFO order.

**Accounting.** A work item declares what it will use: ``cpu_cores`` (a share of the machine's cores,
e.g. 0.5) and ``memory_mb``. Admitted items hold a lease; the sum of the leases' reservations never
exceeds the limits. Limits are ``limits`` in the input, else ``settings.resources``: ``cpu_limit_percent``
of the logical cores and ``memory_limit_percent`` of the total memory. Admission is by reservation, not by
the momentary load, so a decision does not depend on a noisy reading; ``status`` reports both.

**Operations.**

* ``acquire`` — an item larger than a limit itself can never run: 422 naming the field. While the data
  directory's file system has less than ``disk_min_free_gb`` free, no work is taken (429). Otherwise the
  item is admitted at once if it fits beside the current leases and no queued item ranks ahead of it
  (priority ≥ its own); else it is queued, and the answer gives its ``position``. A lease expires
  ``ttl_s`` after admission; a queued item gives up after ``max_wait_s``.
* ``release`` — frees a lease (or withdraws a queued item), then admits queued items in order.
* ``queue`` — the queued items, in order, with their positions.
* ``status`` — limits, reservations, leases, queue, and the machine's usage now (psutil).

**Order.** The queue is ordered by priority (higher first), then arrival. Queued items are admitted from
the head while the head fits; the first that does not fit stops the admission (head-of-line), so a large
item is never starved by a stream of small ones.

**Durability and concurrency.** Items live in ``data/resource_manager.sqlite``, so leases survive a
restart. Every operation first reclaims expired leases and queue entries, then admits what now fits, in
one ``BEGIN IMMEDIATE`` transaction: concurrent callers (threads or processes) are serialised, so the
limits hold however many acquire at once.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

import psutil
from pydantic import Field, RootModel

from mlmesh.errors import InvalidInput, NotFound, Overloaded
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.health.probes import existing_ancestor

__all__ = [
    "MIGRATIONS",
    "STATE_NAME",
    "AcquireOp",
    "Limits",
    "QueueOp",
    "ReleaseOp",
    "Reserved",
    "ResourceManagerInput",
    "ResourceManagerOutput",
    "StatusOp",
    "UsageNow",
    "WorkItem",
    "resource_manager",
]

STATE_NAME = "resource_manager"
MIGRATIONS = [
    """
    CREATE TABLE work_item (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        cpu_cores REAL NOT NULL,
        memory_mb REAL NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'admitted')),
        seq INTEGER NOT NULL UNIQUE,
        ttl_s REAL NOT NULL,
        enqueued_at REAL NOT NULL,
        admitted_at REAL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX work_item_order ON work_item (state, priority DESC, seq);
    CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """
]
# Reservations are sums of floats: allow for rounding when comparing them with a limit.
_EPS = 1e-9
MAX_CORES = 4096.0
MAX_MEMORY_MB = float(2**30)


def _now() -> float:
    return time.time()


class Limits(ComponentInput):
    """Limits for this call (default: ``settings.resources`` applied to this machine)."""

    # Floors of a millicore and a kilobyte keep reserved / limit finite (a subnormal limit made it inf).
    cpu_cores: float = Field(ge=1e-3, le=MAX_CORES, description="cores that leases may reserve in total")
    memory_mb: float = Field(ge=1e-3, le=MAX_MEMORY_MB, description="memory (MB) that leases may reserve in total")


class _Op(ComponentInput):
    limits: Limits | None = Field(None, description="default: settings.resources × this machine's capacity")


class StatusOp(_Op):
    operation: Literal["status"]


class AcquireOp(_Op):
    operation: Literal["acquire"]
    name: str = Field(min_length=1, max_length=200, description="what the work is (for the queue listing)")
    cpu_cores: float = Field(ge=0, le=MAX_CORES, description="estimated CPU share in cores, e.g. 0.5")
    memory_mb: float = Field(ge=0, le=MAX_MEMORY_MB, description="estimated memory in MB")
    priority: int = Field(0, ge=0, le=100, description="higher is admitted first; equal priorities are FIFO")
    ttl_s: float = Field(300.0, gt=0, le=86_400, description="the lease expires this long after admission")
    max_wait_s: float = Field(600.0, gt=0, le=86_400, description="a queued item gives up after this long")


class ReleaseOp(_Op):
    operation: Literal["release"]
    id: str = Field(min_length=1, max_length=64, description="lease id (or queued item id) from acquire")


class QueueOp(_Op):
    operation: Literal["queue"]


class ResourceManagerInput(
    RootModel[Annotated[StatusOp | AcquireOp | ReleaseOp | QueueOp, Field(discriminator="operation")]]
):
    """``status``, ``acquire``, ``release`` or ``queue``."""


class WorkItem(ComponentOutput):
    id: str = Field(description="the lease id once admitted")
    name: str
    state: Literal["admitted", "queued", "released", "withdrawn"]
    cpu_cores: float
    memory_mb: float
    priority: int
    enqueued_at: float
    admitted_at: float | None = None
    expires_at: float | None = Field(None, description="lease expiry, or when a queued item gives up")
    position: int | None = Field(None, description="1-based place in the queue")


class Reserved(ComponentOutput):
    cpu_cores: float
    memory_mb: float
    cpu_fraction: float = Field(description="reserved / limit")
    memory_fraction: float
    leases: int
    queued: int


class LimitsOut(ComponentOutput):
    cpu_cores: float
    memory_mb: float
    disk_min_free_gb: float
    source: Literal["input", "settings"]


class UsageNow(ComponentOutput):
    cpu_count: int
    cpu_percent: float = Field(description="system CPU busy over 50 ms")
    memory_total_mb: float
    memory_percent: float
    memory_available_mb: float
    disk_free_gb: float
    disk_percent: float


class ResourceManagerOutput(ComponentOutput):
    operation: Literal["status", "acquire", "release", "queue"]
    limits: LimitsOut
    reserved: Reserved
    item: WorkItem | None = None
    admitted: list[WorkItem] = Field(default_factory=list, description="queued items this call admitted")
    reclaimed: int = Field(description="expired leases and queue entries removed by this call")
    leases: list[WorkItem] = Field(default_factory=list)
    queue: list[WorkItem] = Field(default_factory=list)
    usage: UsageNow | None = None
    message: str


@dataclass(frozen=True)
class _Limits:
    cpu_cores: float
    memory_mb: float
    source: Literal["input", "settings"]


def _limits(op: _Op, ctx: RunContext) -> _Limits:
    if op.limits is not None:
        return _Limits(op.limits.cpu_cores, op.limits.memory_mb, "input")
    conf = ctx.settings.resources
    cores = (psutil.cpu_count() or 1) * conf.cpu_limit_percent / 100.0
    memory = psutil.virtual_memory().total / 2**20 * conf.memory_limit_percent / 100.0
    return _Limits(cores, memory, "settings")


def _item(row: sqlite3.Row, *, state: str | None = None, position: int | None = None) -> WorkItem:
    return WorkItem(
        id=row["id"],
        name=row["name"],
        state=state or row["state"],
        cpu_cores=row["cpu_cores"],
        memory_mb=row["memory_mb"],
        priority=row["priority"],
        enqueued_at=row["enqueued_at"],
        admitted_at=row["admitted_at"],
        expires_at=row["expires_at"],
        position=position,
    )


def _reserved(conn: sqlite3.Connection) -> tuple[float, float, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(cpu_cores), 0), COALESCE(SUM(memory_mb), 0), COUNT(*) FROM work_item "
        "WHERE state = 'admitted'"
    ).fetchone()
    return float(row[0]), float(row[1]), int(row[2])


def _queued(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM work_item WHERE state = 'queued' ORDER BY priority DESC, seq").fetchall()


def _fits(cpu: float, memory: float, reserved: tuple[float, float, int], limits: _Limits) -> bool:
    return reserved[0] + cpu <= limits.cpu_cores + _EPS and reserved[1] + memory <= limits.memory_mb + _EPS


def _bump(conn: sqlite3.Connection, name: str, by: int) -> None:
    if by:
        conn.execute(
            "INSERT INTO counter (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )


def _reclaim(conn: sqlite3.Connection, now: float) -> int:
    """Remove expired leases and queued items past their wait; returns how many."""
    leases = conn.execute("DELETE FROM work_item WHERE state = 'admitted' AND expires_at <= ?", (now,)).rowcount
    waits = conn.execute("DELETE FROM work_item WHERE state = 'queued' AND expires_at <= ?", (now,)).rowcount
    _bump(conn, "leases_expired", leases)
    _bump(conn, "queue_expired", waits)
    return int(leases + waits)


def _drain(conn: sqlite3.Connection, limits: _Limits, now: float) -> list[WorkItem]:
    """Admit queued items from the head while the head fits (head-of-line: no overtaking)."""
    admitted = []
    reserved = _reserved(conn)
    for row in _queued(conn):
        if not _fits(row["cpu_cores"], row["memory_mb"], reserved, limits):
            break
        conn.execute(
            "UPDATE work_item SET state = 'admitted', admitted_at = ?, expires_at = ? WHERE id = ?",
            (now, now + row["ttl_s"], row["id"]),
        )
        reserved = (reserved[0] + row["cpu_cores"], reserved[1] + row["memory_mb"], reserved[2] + 1)
        updated = conn.execute("SELECT * FROM work_item WHERE id = ?", (row["id"],)).fetchone()
        admitted.append(_item(updated))
    _bump(conn, "admitted_from_queue", len(admitted))
    return admitted


def _usage(ctx: RunContext) -> UsageNow:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(ctx.data_dir))
    return UsageNow(
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=float(psutil.cpu_percent(interval=0.05)),  # a window of its own: no shared baseline
        memory_total_mb=memory.total / 2**20,
        memory_percent=float(memory.percent),
        memory_available_mb=memory.available / 2**20,
        disk_free_gb=disk.free / 1e9,
        disk_percent=float(disk.percent),
    )


def _acquire(op: AcquireOp, conn: sqlite3.Connection, limits: _Limits, now: float) -> WorkItem:
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM work_item").fetchone()
    seq = int(row[0])
    ahead = conn.execute(
        "SELECT COUNT(*) FROM work_item WHERE state = 'queued' AND priority >= ?", (op.priority,)
    ).fetchone()[0]
    item_id = uuid.uuid4().hex
    if ahead == 0 and _fits(op.cpu_cores, op.memory_mb, _reserved(conn), limits):
        conn.execute(
            "INSERT INTO work_item (id, name, cpu_cores, memory_mb, priority, state, seq, ttl_s, enqueued_at, "
            "admitted_at, expires_at) VALUES (?, ?, ?, ?, ?, 'admitted', ?, ?, ?, ?, ?)",
            (item_id, op.name, op.cpu_cores, op.memory_mb, op.priority, seq, op.ttl_s, now, now, now + op.ttl_s),
        )
        _bump(conn, "admitted_at_once", 1)
        position = None
    else:
        conn.execute(
            "INSERT INTO work_item (id, name, cpu_cores, memory_mb, priority, state, seq, ttl_s, enqueued_at, "
            "admitted_at, expires_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, NULL, ?)",
            (item_id, op.name, op.cpu_cores, op.memory_mb, op.priority, seq, op.ttl_s, now, now + op.max_wait_s),
        )
        _bump(conn, "queued", 1)
        position = int(ahead) + 1
    stored = conn.execute("SELECT * FROM work_item WHERE id = ?", (item_id,)).fetchone()
    return _item(stored, position=position)


@component(
    "ResourceManager",
    tier="tier4",
    capabilities=["resource_accounting", "admission_control", "work_queue"],
    example={"operation": "status"},
    examples=[
        {"operation": "acquire", "name": "train model", "cpu_cores": 0.5, "memory_mb": 256, "ttl_s": 60},
        {"operation": "queue"},
    ],
    errors={
        404: "no lease or queued item with that id (released, expired or never issued)",
        429: "the data directory's file system is below disk_min_free_gb",
    },
    deterministic=False,  # lease ids and times differ per call
)
def resource_manager(request: ResourceManagerInput, ctx: RunContext) -> ResourceManagerOutput:
    """CPU and memory accounting: admit work under limits with a lease, or queue it (priority, then FIFO).

    ``acquire`` admits an item (cores, MB) with a lease id and expiry when it fits under the limits, queues
    it with its position otherwise, and answers 422 when it exceeds a limit by itself; ``release`` frees a
    lease and admits queued items in order; ``queue`` and ``status`` list them. Expired leases are reclaimed
    by every call; state is in SQLite, so leases survive restarts.
    """
    op = request.root
    limits = _limits(op, ctx)
    disk_min_free_gb = ctx.settings.resources.disk_min_free_gb
    if isinstance(op, AcquireOp):
        for field, value, limit in (
            ("cpu_cores", op.cpu_cores, limits.cpu_cores),
            ("memory_mb", op.memory_mb, limits.memory_mb),
        ):
            if value > limit + _EPS:
                raise InvalidInput(field, f"{value:g} exceeds the limit itself ({limit:g}); it could never be admitted")
        free_gb = psutil.disk_usage(str(existing_ancestor(ctx.data_dir))).free / 1e9
        if free_gb < disk_min_free_gb:
            raise Overloaded(
                f"only {free_gb:.2f} GB free in the data directory's file system (< {disk_min_free_gb:g} GB); "
                "free space before submitting work",
                retry_after=30,
            )
    db = ctx.state(STATE_NAME, MIGRATIONS)
    now = _now()
    item: WorkItem | None = None
    with db.transaction() as conn:
        reclaimed = _reclaim(conn, now)
        admitted = _drain(conn, limits, now)
        if isinstance(op, AcquireOp):
            item = _acquire(op, conn, limits, now)
        elif isinstance(op, ReleaseOp):
            row = conn.execute("SELECT * FROM work_item WHERE id = ?", (op.id,)).fetchone()
            if row is None:
                raise NotFound(f"no lease or queued item {op.id!r} (released, expired or never issued)")
            conn.execute("DELETE FROM work_item WHERE id = ?", (op.id,))
            released = row["state"] == "admitted"
            _bump(conn, "released" if released else "withdrawn", 1)
            item = _item(row, state="released" if released else "withdrawn")
            admitted += _drain(conn, limits, now)
        cpu, memory, leases = _reserved(conn)
        queued_rows = _queued(conn)
        queue = [_item(r, position=i + 1) for i, r in enumerate(queued_rows)]
        lease_rows = []
        if isinstance(op, StatusOp):
            lease_rows = conn.execute("SELECT * FROM work_item WHERE state = 'admitted' ORDER BY seq").fetchall()
    reserved = Reserved(
        cpu_cores=cpu,
        memory_mb=memory,
        cpu_fraction=cpu / limits.cpu_cores,
        memory_fraction=memory / limits.memory_mb,
        leases=leases,
        queued=len(queue),
    )
    limits_out = LimitsOut(
        cpu_cores=limits.cpu_cores,
        memory_mb=limits.memory_mb,
        disk_min_free_gb=disk_min_free_gb,
        source=limits.source,
    )
    state = f"{cpu:g}/{limits.cpu_cores:g} cores and {memory:g}/{limits.memory_mb:g} MB reserved by {leases} leases"
    if isinstance(op, AcquireOp):
        assert item is not None
        verdict = "admitted" if item.state == "admitted" else f"queued at position {item.position}"
        message = f"{op.name!r} {verdict}; {state}"
    elif isinstance(op, ReleaseOp):
        assert item is not None
        message = f"{item.state} {op.id}; admitted {len(admitted)} queued item(s); {state}"
    else:
        message = f"{state}; {len(queue)} queued"
    return ResourceManagerOutput(
        operation=op.operation,
        limits=limits_out,
        reserved=reserved,
        item=item,
        admitted=admitted,
        reclaimed=reclaimed,
        leases=[_item(r) for r in lease_rows],
        queue=queue,
        usage=_usage(ctx) if isinstance(op, StatusOp) else None,
        message=message,
    )
