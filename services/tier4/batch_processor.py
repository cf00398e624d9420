"""Runs a batch of records through a component in chunks, with bounded concurrency, retries and priorities.

``create`` stores the records (inline, or a JSONL/CSV file under ``data/``) in
``data/batch_processor.sqlite`` and enqueues one task per chunk in a durable
:class:`services.queues.TaskQueue` (priority = the batch's priority), all in one transaction.
``run`` claims up to N chunks and works them with ``concurrency`` threads; each record is one
call of the target component through the gateway (see
:func:`services.tier4.background_task_manager.call_component`):

* 2xx — the record is ``done`` with the component's result;
* a permanent failure (4xx except 408/425/429) — the record is ``failed`` with the error; retrying
  the same input cannot help;
* a transient failure (5xx, 408/425/429, connection error) — the record stays ``pending`` and the
  chunk is retried after full-jitter exponential backoff (its finished records are kept and not
  called again); once the chunk's ``max_attempts`` are spent its pending records are ``failed``.

A chunk's results and its completion are written in one transaction, so a chunk is recorded
exactly once; a worker that dies mid-chunk leaves a lease that expires, after which another
``run`` takes the chunk again (resumable; calls are at-least-once). Throughput is records
finished per wall-clock second of the ``run`` calls that worked on the batch.
Unknown batch → 404; cancelling a finished or cancelled batch → 409.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, RootModel, model_validator

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, RunContext, StateDB, component
from services.queues import QUEUE_MIGRATIONS, LeaseLost, Task, TaskQueue
from services.tier4.background_task_manager import ComponentName, call_component

__all__ = [
    "BatchCancelOp",
    "BatchCreateOp",
    "BatchListOp",
    "BatchProcessorInput",
    "BatchProcessorOutput",
    "BatchResultsOp",
    "BatchRunOp",
    "BatchStatusOp",
    "BatchView",
    "RecordResult",
    "RunReport",
    "batch_processor",
]

SELF = "batch_processor"
MAX_INLINE_RECORDS = 10_000
MAX_FILE_RECORDS = 100_000
MAX_FILE_BYTES = 64 * 1024 * 1024
LEASE_MARGIN_S = 10.0
BatchId = Annotated[str, Field(pattern=r"^batch-[0-9a-f]{32}$", description="batch id (batch-…)")]
MIGRATIONS = (
    *QUEUE_MIGRATIONS,
    """
    CREATE TABLE batch (
        batch_id TEXT PRIMARY KEY,
        component TEXT NOT NULL,
        source TEXT NOT NULL,
        total_records INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        concurrency INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        created_at REAL NOT NULL,
        cancelled_at REAL,
        processed_records INTEGER NOT NULL DEFAULT 0,
        run_seconds REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE batch_record (
        batch_id TEXT NOT NULL REFERENCES batch (batch_id),
        idx INTEGER NOT NULL,
        input TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
        result TEXT,
        error TEXT,
        PRIMARY KEY (batch_id, idx)
    );
    CREATE INDEX batch_record_status ON batch_record (batch_id, status, idx);
    """,
)


# --------------------------------------------------------------------------- inputs


class BatchCreateOp(ComponentInput):
    """Store a batch and enqueue its chunks."""

    operation: Literal["create"]
    component: ComponentName
    records: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_INLINE_RECORDS, description="request bodies, one per record"
    )
    file: str | None = Field(
        None, min_length=1, max_length=500, description="a .jsonl (one object a line) or .csv file under data/"
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="fields merged under every record")
    chunk_size: int = Field(50, ge=1, le=1000)
    concurrency: int = Field(4, ge=1, le=16, description="chunks worked at once by `run`")
    priority: int = Field(0, ge=-1000, le=1000, description="higher-priority batches' chunks run first")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per chunk before its pending records fail")
    backoff_base_s: float = Field(1.0, ge=0.0, le=600.0, description="backoff cap of a chunk's first retry")

    @model_validator(mode="after")
    def _one_source(self) -> BatchCreateOp:
        if (self.records is None) == (self.file is None):
            raise ValueError("give exactly one of `records` (inline) or `file` (a .jsonl or .csv under data/)")
        return self


class BatchRunOp(ComponentInput):
    """Work up to ``max_chunks`` ready chunks now (of one batch, or by priority across batches)."""

    operation: Literal["run"]
    batch_id: BatchId | None = None
    max_chunks: int = Field(10, ge=1, le=1000)
    concurrency: int | None = Field(None, ge=1, le=16, description="default: the batch's, or 4 across batches")
    timeout_s: float = Field(30.0, gt=0, le=300.0, description="per record call")


class BatchStatusOp(ComponentInput):
    operation: Literal["status"]
    batch_id: BatchId


class BatchResultsOp(ComponentInput):
    operation: Literal["results"]
    batch_id: BatchId
    status: Literal["pending", "done", "failed"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_FILE_RECORDS)


class BatchCancelOp(ComponentInput):
    operation: Literal["cancel"]
    batch_id: BatchId


class BatchListOp(ComponentInput):
    operation: Literal["list"]
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)


class BatchProcessorInput(
    RootModel[
        Annotated[
            BatchCreateOp | BatchRunOp | BatchStatusOp | BatchResultsOp | BatchCancelOp | BatchListOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One batch operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class BatchView(ComponentOutput):
    batch_id: str
    component: str
    source: str = Field(description="`inline` or the data/ file the records came from")
    state: Literal["pending", "running", "completed", "cancelled"]
    total_records: int
    records: dict[str, int] = Field(description="records per status: pending, done, failed")
    chunks: dict[str, int] = Field(description="chunks per queue state")
    progress: float = Field(description="share of records finished (done or failed)")
    chunk_size: int
    concurrency: int
    priority: int
    created_at: float
    run_seconds: float = Field(description="wall-clock seconds of the runs that worked on this batch")
    throughput_records_per_s: float | None = Field(description="records finished per run second (None before a run)")


class RecordResult(ComponentOutput):
    index: int
    status: Literal["pending", "done", "failed"]
    result: dict[str, Any] | None
    error: str | None


class RunReport(ComponentOutput):
    chunks_completed: int
    chunks_retrying: int = Field(description="chunks with transient failures put back after backoff")
    chunks_dead: int
    chunks_lost: int = Field(description="chunks cancelled while they ran (results discarded)")
    records_done: int
    records_failed: int
    records_retrying: int
    elapsed_s: float
    throughput_records_per_s: float = Field(description="records finished per second of this run")


class BatchProcessorOutput(ComponentOutput):
    operation: str
    batch: BatchView | None = None
    batches: list[BatchView] = Field(default_factory=list)
    run: RunReport | None = None
    results: list[RecordResult] = Field(default_factory=list)
    total: int | None = Field(None, description="list/results: how many match in all")


# --------------------------------------------------------------------------- records


def _scalar(text: str) -> Any:
    # CSV cells are text; numbers become numbers so that numeric inputs validate downstream.
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return text
        return value
    return text


def _load_file(path: Path, field: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise NotFound(f"{field}: no file {path.name!r} under data/")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidInput(field, f"file is over {MAX_FILE_BYTES} bytes")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(field, f"line {number} is not JSON: {exc.msg}") from exc
            if not isinstance(value, dict):
                raise InvalidInput(field, f"line {number} is not a JSON object")
            records.append(value)
    elif suffix == ".csv":
        records = [
            {k: _scalar(v) for k, v in row.items() if k is not None} for row in csv.DictReader(io.StringIO(text))
        ]
    else:
        raise InvalidInput(field, f"must end in .jsonl or .csv; got {suffix or 'no suffix'!r}")
    if not records:
        raise InvalidInput(field, "holds no records")
    if len(records) > MAX_FILE_RECORDS:
        raise InvalidInput(field, f"holds {len(records)} records; at most {MAX_FILE_RECORDS}")
    return records


# --------------------------------------------------------------------------- store


def _db(ctx: RunContext) -> StateDB:
    return ctx.state("batch_processor", MIGRATIONS)


def _queue(db: StateDB) -> TaskQueue:
    return TaskQueue(db, "batch_chunks")


def _batch_row(db: StateDB, batch_id: str) -> Any:
    row = db.connect().execute("SELECT * FROM batch WHERE batch_id = ?", (batch_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown batch {batch_id!r}")
    return row


def _view(db: StateDB, queue: TaskQueue, row: Any) -> BatchView:
    counts = dict(
        db.connect().execute(
            "SELECT status, COUNT(*) FROM batch_record WHERE batch_id = ? GROUP BY status", (row["batch_id"],)
        )
    )
    records = {status: int(counts.get(status, 0)) for status in ("pending", "done", "failed")}
    chunks = queue.counts(tag=row["batch_id"])
    finished = records["done"] + records["failed"]
    if row["cancelled_at"] is not None:
        state = "cancelled"
    elif chunks["ready"] + chunks["running"] == 0:
        state = "completed"
    else:
        state = "running" if finished or chunks["running"] else "pending"
    seconds = float(row["run_seconds"])
    return BatchView(
        batch_id=row["batch_id"],
        component=row["component"],
        source=row["source"],
        state=state,
        total_records=row["total_records"],
        records=records,
        chunks=chunks,
        progress=finished / row["total_records"],
        chunk_size=row["chunk_size"],
        concurrency=row["concurrency"],
        priority=row["priority"],
        created_at=row["created_at"],
        run_seconds=seconds,
        throughput_records_per_s=row["processed_records"] / seconds if seconds > 0 else None,
    )


def _create(op: BatchCreateOp, db: StateDB, queue: TaskQueue, ctx: RunContext) -> BatchView:
    if op.component == SELF:
        raise InvalidInput("component", "a batch cannot target the batch processor itself")
    if op.records is not None:
        records, source = op.records, "inline"
    else:
        path = ctx.data_path(op.file or "", field="file")
        records, source = _load_file(path, "file"), str(op.file)
    batch_id = f"batch-{uuid.uuid4().hex}"
    chunks = math.ceil(len(records) / op.chunk_size)
    now = time.time()
    with db.transaction() as tx:  # the batch, its records and its chunks appear together or not at all
        tx.execute(
            """INSERT INTO batch (batch_id, component, source, total_records, chunk_size, chunks, concurrency,
                   priority, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (batch_id, op.component, source, len(records), op.chunk_size, chunks, op.concurrency, op.priority, now),
        )
        tx.executemany(
            "INSERT INTO batch_record (batch_id, idx, input, status) VALUES (?, ?, ?, 'pending')",
            ((batch_id, i, json.dumps({**op.defaults, **record}, allow_nan=False)) for i, record in enumerate(records)),
        )
        for start in range(0, len(records), op.chunk_size):
            queue.enqueue(
                {"batch_id": batch_id, "start": start, "stop": min(start + op.chunk_size, len(records))},
                priority=op.priority,
                max_attempts=op.max_attempts,
                tag=batch_id,
                base_backoff_s=op.backoff_base_s,
                conn=tx,
            )
    return _view(db, queue, _batch_row(db, batch_id))


class _Tally:
    """Counts shared by the run's worker threads."""

    def __init__(self, budget: int) -> None:
        self.lock = threading.Lock()
        self.budget = budget
        self.counts = dict.fromkeys(
            ("chunks_completed", "chunks_retrying", "chunks_dead", "chunks_lost", "done", "failed", "retrying"), 0
        )
        self.batches: set[str] = set()
        self.finished_by_batch: dict[str, int] = {}

    def take(self) -> bool:
        with self.lock:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def add(self, batch_id: str, **counts: int) -> None:
        with self.lock:
            self.batches.add(batch_id)
            for key, n in counts.items():
                self.counts[key] += n
            self.finished_by_batch[batch_id] = (
                self.finished_by_batch.get(batch_id, 0) + counts.get("done", 0) + counts.get("failed", 0)
            )


def _work_chunk(
    task: Task, db: StateDB, queue: TaskQueue, client: httpx.Client, op: BatchRunOp, ctx: RunContext, tally: _Tally
) -> None:
    batch_id, start, stop = task.payload["batch_id"], task.payload["start"], task.payload["stop"]
    conn = db.connect()
    name = conn.execute("SELECT component FROM batch WHERE batch_id = ?", (batch_id,)).fetchone()["component"]
    pending = conn.execute(
        "SELECT idx, input FROM batch_record WHERE batch_id = ? AND idx >= ? AND idx < ? AND status = 'pending'"
        " ORDER BY idx",
        (batch_id, start, stop),
    ).fetchall()
    done: list[tuple[str, int]] = []
    failed: list[tuple[str, int]] = []
    transient: list[str] = []
    lease_s = op.timeout_s + LEASE_MARGIN_S
    for row in pending:
        outcome = call_component(client, ctx.settings, name, json.loads(row["input"]), timeout_s=op.timeout_s)
        if outcome.ok:
            done.append((json.dumps(outcome.result, allow_nan=False), row["idx"]))
        elif outcome.transient:
            transient.append(f"record {row['idx']}: {outcome.error}")
        else:
            failed.append((outcome.error or "failed", row["idx"]))
        try:  # a long chunk keeps its lease while it makes progress
            task = queue.heartbeat(task, lease_s=lease_s)
        except LeaseLost:  # cancelled mid-chunk: stop calling
            tally.add(batch_id, chunks_lost=1)
            return
    dead = 0
    try:
        with db.transaction() as tx:  # results and the chunk's fate commit together: recorded exactly once
            tx.executemany(
                "UPDATE batch_record SET status = 'done', result = ?, error = NULL WHERE batch_id = ? AND idx = ?",
                [(result, batch_id, idx) for result, idx in done],
            )
            tx.executemany(
                "UPDATE batch_record SET status = 'failed', error = ? WHERE batch_id = ? AND idx = ?",
                [(error, batch_id, idx) for error, idx in failed],
            )
            if transient:
                after = queue.fail(task, "; ".join(transient)[:2000], conn=tx)
                if after.state == "dead":
                    dead = tx.execute(
                        """UPDATE batch_record SET status = 'failed', error = ?
                           WHERE batch_id = ? AND idx >= ? AND idx < ? AND status = 'pending'""",
                        (f"gave up after {after.attempts} attempts: {after.last_error}", batch_id, start, stop),
                    ).rowcount
            else:
                queue.complete(task, {"done": len(done), "failed": len(failed)}, conn=tx)
            finished = len(done) + len(failed) + dead
            tx.execute(
                "UPDATE batch SET processed_records = processed_records + ? WHERE batch_id = ?", (finished, batch_id)
            )
    except LeaseLost:  # the batch was cancelled (or the lease expired and another run took the chunk)
        tally.add(batch_id, chunks_lost=1)
        return
    if not transient:
        tally.add(batch_id, chunks_completed=1, done=len(done), failed=len(failed))
    elif dead:
        tally.add(batch_id, chunks_dead=1, done=len(done), failed=len(failed) + dead)
    else:
        tally.add(batch_id, chunks_retrying=1, done=len(done), failed=len(failed), retrying=len(transient))


def _run(op: BatchRunOp, db: StateDB, queue: TaskQueue, ctx: RunContext) -> RunReport:
    if op.batch_id is not None:
        row = _batch_row(db, op.batch_id)
        if row["cancelled_at"] is not None:
            raise Conflict(f"batch {op.batch_id} is cancelled")
        concurrency = op.concurrency or row["concurrency"]
    else:
        concurrency = op.concurrency or 4
    tally = _Tally(op.max_chunks)
    lease_s = op.timeout_s + LEASE_MARGIN_S

    def worker(client: httpx.Client) -> None:
        try:
            while tally.take():
                task = queue.claim(lease_s=lease_s, tag=op.batch_id)
                if task is None:
                    return
                _work_chunk(task, db, queue, client, op, ctx, tally)
        finally:
            db.close()  # this worker thread's SQLite connection

    started = time.perf_counter()
    with httpx.Client() as client, ThreadPoolExecutor(concurrency, thread_name_prefix="batch") as pool:
        futures = [pool.submit(worker, client) for _ in range(concurrency)]
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    with db.transaction() as tx:
        for batch_id in tally.batches:
            tx.execute("UPDATE batch SET run_seconds = run_seconds + ? WHERE batch_id = ?", (elapsed, batch_id))
    c = tally.counts
    return RunReport(
        chunks_completed=c["chunks_completed"],
        chunks_retrying=c["chunks_retrying"],
        chunks_dead=c["chunks_dead"],
        chunks_lost=c["chunks_lost"],
        records_done=c["done"],
        records_failed=c["failed"],
        records_retrying=c["retrying"],
        elapsed_s=elapsed,
        throughput_records_per_s=(c["done"] + c["failed"]) / elapsed if elapsed > 0 else 0.0,
    )


def _results(op: BatchResultsOp, db: StateDB) -> tuple[list[RecordResult], int]:
    _batch_row(db, op.batch_id)
    where, args = "batch_id = ?", [op.batch_id]
    if op.status is not None:
        where += " AND status = ?"
        args.append(op.status)
    conn = db.connect()
    total = conn.execute(f"SELECT COUNT(*) FROM batch_record WHERE {where}", args).fetchone()[0]  # noqa: S608
    rows = conn.execute(
        f"SELECT idx, status, result, error FROM batch_record WHERE {where} ORDER BY idx LIMIT ? OFFSET ?",  # noqa: S608
        [*args, op.limit, op.offset],
    ).fetchall()
    page = [
        RecordResult(
            index=r["idx"],
            status=r["status"],
            result=None if r["result"] is None else json.loads(r["result"]),
            error=r["error"],
        )
        for r in rows
    ]
    return page, int(total)


def _cancel(batch_id: str, db: StateDB, queue: TaskQueue) -> BatchView:
    with db.transaction() as tx:
        row = tx.execute("SELECT * FROM batch WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown batch {batch_id!r}")
        if row["cancelled_at"] is not None:
            raise Conflict(f"batch {batch_id} is already cancelled")
        if queue.cancel_tag(batch_id, conn=tx) == 0:
            raise Conflict(f"batch {batch_id} has no unfinished chunks left to cancel")
        tx.execute("UPDATE batch SET cancelled_at = ? WHERE batch_id = ?", (time.time(), batch_id))
    return _view(db, queue, _batch_row(db, batch_id))


@component(
    "BatchProcessor",
    tier="tier4",
    capabilities=["batch_processing", "bounded_concurrency", "retry", "resumable_jobs", "throughput"],
    example={"operation": "list"},
    deterministic=False,
)
def batch_processor(request: BatchProcessorInput, ctx: RunContext) -> BatchProcessorOutput:
    """Runs a batch of records through a component in chunks with bounded concurrency, retries and priorities.

    ``create`` stores the records (inline or a data/ JSONL/CSV file) and enqueues their chunks in a
    durable queue; ``run`` works up to N chunks now through the gateway with a bounded thread pool,
    retrying transient failures with jittered backoff; ``status`` reports progress and measured
    throughput (records/s); ``results`` pages per-record results and errors; ``cancel`` stops a
    batch. A crashed run's chunks are taken again once their leases expire (resumable).
    """
    op = request.root
    db = _db(ctx)
    queue = _queue(db)
    match op:
        case BatchCreateOp():
            return BatchProcessorOutput(operation=op.operation, batch=_create(op, db, queue, ctx))
        case BatchRunOp():
            report = _run(op, db, queue, ctx)
            batch = _view(db, queue, _batch_row(db, op.batch_id)) if op.batch_id else None
            return BatchProcessorOutput(operation=op.operation, run=report, batch=batch)
        case BatchStatusOp():
            return BatchProcessorOutput(operation=op.operation, batch=_view(db, queue, _batch_row(db, op.batch_id)))
        case BatchResultsOp():
            page, total = _results(op, db)
            return BatchProcessorOutput(operation=op.operation, results=page, total=total)
        case BatchCancelOp():
            return BatchProcessorOutput(operation=op.operation, batch=_cancel(op.batch_id, db, queue))
        case BatchListOp():
            conn = db.connect()
            total = conn.execute("SELECT COUNT(*) FROM batch").fetchone()[0]
            rows = conn.execute(
                "SELECT * FROM batch ORDER BY created_at DESC LIMIT ? OFFSET ?", (op.limit, op.offset)
            ).fetchall()
            return BatchProcessorOutput(
                operation=op.operation, batches=[_view(db, queue, r) for r in rows], total=int(total)
            )
    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover - the union is exhaustive
