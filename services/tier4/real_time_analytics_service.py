"""RealTimeAnalyticsService: streaming experiment statistics kept as running moments in SQLite.

A stream is an experiment with named arms. Each ingest merges the batch's per-arm (n, mean, M2) into the stored
moments with Chan's parallel update (the batch's own moments are two-pass), inside one ``BEGIN IMMEDIATE``
transaction, so concurrent ingests from any number of threads or processes serialise and none is lost. A
summary is computed from the stored moments alone and equals the batch computation on all events so far.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import uuid
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, RootModel, model_validator

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, Numbers, RunContext, component
from services.framework.arrays import load_numbers
from services.stats import abtest

__all__ = [
    "RealTimeAnalyticsServiceInput",
    "RealTimeAnalyticsServiceOutput",
    "StreamSummary",
    "real_time_analytics_service",
]

MIGRATIONS = [
    """
    CREATE TABLE stream (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        arms TEXT NOT NULL,
        control_arm TEXT NOT NULL,
        planned_n_per_arm INTEGER NOT NULL,
        target_mde REAL,
        alpha REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'deleted')),
        batches INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE arm_moments (
        stream_id TEXT NOT NULL REFERENCES stream(id),
        arm TEXT NOT NULL,
        position INTEGER NOT NULL,
        n INTEGER NOT NULL,
        mean REAL NOT NULL,
        m2 REAL NOT NULL,
        PRIMARY KEY (stream_id, arm)
    );
    """
]

StreamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="stream id")]
ArmName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="arm name")]


class CreateStream(ComponentInput):
    """Create a stream (an experiment) over named arms."""

    operation: Literal["create"]
    stream_id: StreamId | None = Field(None, description="id to use; a fresh one is generated when omitted")
    name: str = Field("", max_length=200, description="human-readable name")
    arms: list[ArmName] = Field(min_length=2, max_length=20, description="arm names; the first is control by default")
    control_arm: ArmName | None = Field(None, description="the arm the others are compared with")
    planned_n_per_arm: int = Field(ge=2, le=10**12, description="planned units per arm (progress)")
    target_mde: float | None = Field(
        None, gt=0, le=1e12, description="minimum detectable difference, in metric units (power)"
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level of the tests and the power")

    @model_validator(mode="after")
    def _arms(self) -> CreateStream:
        if len(set(self.arms)) != len(self.arms):
            raise ValueError("arms must be unique")
        if self.control_arm is not None and self.control_arm not in self.arms:
            raise ValueError(f"control_arm {self.control_arm!r} is not one of the arms")
        return self


class Event(ComponentInput):
    arm: ArmName
    value: FiniteFloat


class ArmValues(ComponentInput):
    arm: ArmName
    values: Numbers = Field(description="the arm's new values, inline or a file under data/")


class IngestEvents(ComponentInput):
    """Add a batch of events: a list of (arm, value) or, for bulk loads, values per arm."""

    operation: Literal["ingest"]
    stream_id: StreamId
    events: list[Event] | None = Field(None, min_length=1, max_length=100_000, description="(arm, value) events")
    arm_values: list[ArmValues] | None = Field(
        None, min_length=1, max_length=20, description="per-arm value arrays (inline or file references)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> IngestEvents:
        if (self.events is None) == (self.arm_values is None):
            raise ValueError("give exactly one of events or arm_values")
        return self


class StreamOp(ComponentInput):
    operation: Literal["summary", "close", "reset", "delete"] = Field(
        description="summary: statistics now; close: stop ingesting; reset: drop all events; delete: remove"
    )
    stream_id: StreamId


RealTimeOp = Annotated[CreateStream | IngestEvents | StreamOp, Field(discriminator="operation")]


class RealTimeAnalyticsServiceInput(RootModel[RealTimeOp]):
    """One operation on a stream, chosen by ``operation``."""


class ArmStats(ComponentOutput):
    arm: str
    n: int
    mean: float | None = Field(description="None before the first event")
    variance: float | None = Field(description="sample variance (ddof=1); None below two events")
    sd: float | None


class Comparison(ComponentOutput):
    arm: str
    control_arm: str
    difference: float | None = Field(description="arm mean minus control mean")
    cohens_d: float | None
    welch_t: float | None
    df: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    power: float | None = Field(description="power of Welch's test at the current n to detect target_mde")
    reason: str | None = Field(description="why a statistic is None")


class StreamSummary(ComponentOutput):
    stream_id: str
    name: str
    status: Literal["open", "closed", "deleted"]
    control_arm: str
    planned_n_per_arm: int
    target_mde: float | None
    alpha: float
    total_events: int
    batches: int
    progress: float = Field(description="smallest arm size / planned_n_per_arm, capped at 1")
    arms: list[ArmStats]
    comparisons: list[Comparison]
    created_at: float
    updated_at: float


class RealTimeAnalyticsServiceOutput(ComponentOutput):
    operation: Literal["create", "ingest", "summary", "close", "reset", "delete"]
    stream_id: str
    status: Literal["open", "closed", "deleted"]
    ingested: int = Field(0, description="events added by this call")
    summary: StreamSummary | None = Field(description="the stream's statistics after the operation (None if deleted)")


def _stream_row(conn: sqlite3.Connection, stream_id: str, *, live: bool = True) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM stream WHERE id = ?", (stream_id,)).fetchone()
    if row is None:
        raise NotFound(f"stream_id: no stream {stream_id!r}")
    if live and row["status"] == "deleted":
        raise Conflict(f"stream {stream_id!r} was deleted")
    return row


def _moments(conn: sqlite3.Connection, stream_id: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rows = conn.execute(
        "SELECT arm, n, mean, m2 FROM arm_moments WHERE stream_id = ? ORDER BY position", (stream_id,)
    ).fetchall()
    arms = [r["arm"] for r in rows]
    return (
        arms,
        np.array([r["n"] for r in rows], dtype=np.int64),
        np.array([r["mean"] for r in rows], dtype=np.float64),
        np.array([r["m2"] for r in rows], dtype=np.float64),
    )


def _compare(arm: str, control: str, t: abtest.Moments, c: abtest.Moments, row: sqlite3.Row) -> Comparison:
    alpha, mde = float(row["alpha"]), row["target_mde"]
    empty = {"difference": None, "cohens_d": None, "welch_t": None, "df": None, "p_value": None}
    if t.n < 2 or c.n < 2:
        return Comparison(
            arm=arm,
            control_arm=control,
            **empty,
            ci_low=None,
            ci_high=None,
            power=None,
            reason="needs at least two events in each arm",
        )
    difference = t.mean - c.mean
    try:
        welch = abtest.welch_test(t.n, t.mean, t.variance, c.n, c.mean, c.variance, alpha)
    except abtest.DegenerateData as exc:
        return Comparison(
            arm=arm,
            control_arm=control,
            **{**empty, "difference": difference},
            ci_low=None,
            ci_high=None,
            power=None,
            reason=str(exc),
        )
    d = abtest.cohens_d(t.n, t.mean, t.variance, c.n, c.mean, c.variance)
    power = abtest.welch_power(welch.se, welch.df, mde, alpha) if mde is not None else None
    return Comparison(
        arm=arm,
        control_arm=control,
        difference=difference,
        cohens_d=d,
        welch_t=welch.t,
        df=welch.df,
        p_value=welch.p_value,
        ci_low=welch.ci_low,
        ci_high=welch.ci_high,
        power=power,
        reason=None if mde is not None else "power needs target_mde",
    )


def _summary(conn: sqlite3.Connection, row: sqlite3.Row) -> StreamSummary:
    arms, n, mean, m2 = _moments(conn, row["id"])
    moments = {a: abtest.Moments(int(k), float(mu), float(s)) for a, k, mu, s in zip(arms, n, mean, m2, strict=True)}
    stats = [
        ArmStats(
            arm=a,
            n=m.n,
            mean=m.mean if m.n else None,
            variance=m.variance if m.n >= 2 else None,
            sd=math.sqrt(m.variance) if m.n >= 2 else None,
        )
        for a, m in moments.items()
    ]
    control = row["control_arm"]
    comparisons = [_compare(a, control, m, moments[control], row) for a, m in moments.items() if a != control]
    planned = int(row["planned_n_per_arm"])
    return StreamSummary(
        stream_id=row["id"],
        name=row["name"],
        status=row["status"],
        control_arm=control,
        planned_n_per_arm=planned,
        target_mde=row["target_mde"],
        alpha=row["alpha"],
        total_events=int(n.sum()),
        batches=int(row["batches"]),
        progress=min(1.0, int(n.min()) / planned) if n.size else 0.0,
        arms=stats,
        comparisons=comparisons,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _batch(op: IngestEvents, arms: list[str], ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Codes (arm positions) and values of the batch, as arrays."""
    index = {a: i for i, a in enumerate(arms)}
    if op.events is not None:
        names = [e.arm for e in op.events]
        values = np.fromiter((e.value for e in op.events), dtype=np.float64, count=len(op.events))
        unknown = sorted(set(names) - index.keys())
        if unknown:
            raise InvalidInput("events.arm", f"unknown arm(s) {unknown}; the stream's arms are {arms}")
        return np.fromiter((index[a] for a in names), dtype=np.intp, count=len(names)), values
    assert op.arm_values is not None
    codes, chunks = [], []
    for i, item in enumerate(op.arm_values):
        if item.arm not in index:
            raise InvalidInput(f"arm_values.{i}.arm", f"unknown arm {item.arm!r}; the stream's arms are {arms}")
        x = load_numbers(item.values, ctx.data_dir, field=f"arm_values.{i}.values")
        chunks.append(x)
        codes.append(np.full(x.size, index[item.arm], dtype=np.intp))
    return np.concatenate(codes), np.concatenate(chunks)


def _create(db_conn: sqlite3.Connection, op: CreateStream) -> RealTimeAnalyticsServiceOutput:
    stream_id = op.stream_id or uuid.uuid4().hex
    if db_conn.execute("SELECT 1 FROM stream WHERE id = ?", (stream_id,)).fetchone():
        raise Conflict(f"stream {stream_id!r} already exists (ids of deleted streams are not reused)")
    now = time.time()
    control = op.control_arm or op.arms[0]
    db_conn.execute(
        "INSERT INTO stream (id, name, arms, control_arm, planned_n_per_arm, target_mde, alpha, status, batches,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', 0, ?, ?)",
        (stream_id, op.name, json.dumps(op.arms), control, op.planned_n_per_arm, op.target_mde, op.alpha, now, now),
    )
    db_conn.executemany(
        "INSERT INTO arm_moments (stream_id, arm, position, n, mean, m2) VALUES (?, ?, ?, 0, 0.0, 0.0)",
        [(stream_id, arm, i) for i, arm in enumerate(op.arms)],
    )
    row = _stream_row(db_conn, stream_id)
    return RealTimeAnalyticsServiceOutput(
        operation="create", stream_id=stream_id, status="open", summary=_summary(db_conn, row)
    )


@component(
    "RealTimeAnalyticsService",
    tier="tier4",
    capabilities=["streaming_analytics", "experiment_monitoring", "hypothesis_testing", "power_analysis"],
    example={
        "operation": "create",
        "name": "checkout button colour",
        "arms": ["control", "treatment"],
        "planned_n_per_arm": 5000,
        "target_mde": 0.5,
    },
    deterministic=False,
)
def real_time_analytics_service(
    request: RealTimeAnalyticsServiceInput, ctx: RunContext
) -> RealTimeAnalyticsServiceOutput:
    """Streaming experiment statistics: running moments per arm, effect size, Welch p-value, power, progress.

    Operations: ``create`` a stream over named arms (planned size per arm, target MDE, alpha); ``ingest`` a
    batch of (arm, value) events or per-arm arrays (inline or a file under data/); ``summary`` for per-arm n,
    mean and variance, and for each arm against control the difference, Cohen's d, Welch's t, p-value and
    interval, the power at the current n to detect the target MDE, and progress toward the planned size;
    ``close`` stops ingestion (later ingests get 409); ``reset`` drops all events; ``delete`` removes the stream
    (its id then answers 409). Moments merge with Chan's parallel update in a BEGIN IMMEDIATE transaction, so
    the summary equals the batch computation over every event ingested, across restarts and concurrent calls.
    """
    op = request.root
    db = ctx.state("real_time_analytics", MIGRATIONS)
    if isinstance(op, CreateStream):
        with db.transaction() as conn:
            return _create(conn, op)

    if isinstance(op, IngestEvents):
        # Validate the stream and arms before parsing files, then merge under the write lock.
        row = _stream_row(db.connect(), op.stream_id)
        if row["status"] != "open":
            raise Conflict(f"stream {op.stream_id!r} is {row['status']}; it takes no more events")
        arms = json.loads(row["arms"])
        codes, values = _batch(op, arms, ctx)
        bn, bmean, bm2 = abtest.group_moments(codes, values, len(arms))
        with db.transaction() as conn:
            row = _stream_row(conn, op.stream_id)
            if row["status"] != "open":
                raise Conflict(f"stream {op.stream_id!r} is {row['status']}; it takes no more events")
            stored_arms, n, mean, m2 = _moments(conn, op.stream_id)
            n, mean, m2 = abtest.merge_moments(n, mean, m2, bn, bmean, bm2)
            conn.executemany(
                "UPDATE arm_moments SET n = ?, mean = ?, m2 = ? WHERE stream_id = ? AND arm = ?",
                [
                    (int(k), float(mu), float(s), op.stream_id, a)
                    for a, k, mu, s in zip(stored_arms, n, mean, m2, strict=True)
                ],
            )
            conn.execute(
                "UPDATE stream SET batches = batches + 1, updated_at = ? WHERE id = ?", (time.time(), op.stream_id)
            )
            row = _stream_row(conn, op.stream_id)
            return RealTimeAnalyticsServiceOutput(
                operation="ingest",
                stream_id=op.stream_id,
                status="open",
                ingested=int(values.size),
                summary=_summary(conn, row),
            )

    if op.operation == "summary":
        conn = db.connect()
        conn.execute("BEGIN")  # a read snapshot: the stream row and its moments from the same commit
        try:
            row = _stream_row(conn, op.stream_id)
            summary = _summary(conn, row)
        finally:
            conn.execute("COMMIT")
        return RealTimeAnalyticsServiceOutput(
            operation="summary", stream_id=op.stream_id, status=summary.status, summary=summary
        )

    with db.transaction() as conn:
        row = _stream_row(conn, op.stream_id)
        if op.operation == "close":
            if row["status"] != "open":
                raise Conflict(f"stream {op.stream_id!r} is already {row['status']}")
            conn.execute("UPDATE stream SET status = 'closed', updated_at = ? WHERE id = ?", (time.time(), row["id"]))
        elif op.operation == "reset":
            conn.execute("UPDATE arm_moments SET n = 0, mean = 0.0, m2 = 0.0 WHERE stream_id = ?", (row["id"],))
            conn.execute("UPDATE stream SET batches = 0, updated_at = ? WHERE id = ?", (time.time(), row["id"]))
        elif op.operation == "delete":
            conn.execute("DELETE FROM arm_moments WHERE stream_id = ?", (row["id"],))
            conn.execute("UPDATE stream SET status = 'deleted', updated_at = ? WHERE id = ?", (time.time(), row["id"]))
            return RealTimeAnalyticsServiceOutput(
                operation="delete", stream_id=op.stream_id, status="deleted", summary=None
            )
        row = _stream_row(conn, op.stream_id)
        return RealTimeAnalyticsServiceOutput(
            operation=op.operation, stream_id=op.stream_id, status=row["status"], summary=_summary(conn, row)
        )
