"""Pipeline runs as durable jobs: a SQLite run store and the executor that drives runs through the router.

**States.** A run is ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``. A step is
``pending`` → ``running`` (``retrying`` between attempts) → ``succeeded`` | ``failed`` | ``skipped`` (a
dependency failed) | ``cancelled``.

**Durability.** The run, its spec (a snapshot: editing the YAML never changes a run already accepted) and
every step transition are committed before the executor moves on, in ``data/gateway_runs.sqlite`` (WAL).
The executor is the gateway's event loop: every write happens on that one thread, so concurrent runs never
contend for the database. After a crash (``kill -9``) the gateway finds the runs left ``queued`` or
``running`` and resumes them: finished steps keep their stored results and are not run again; a step that
was running when the gateway died is run again if its retry budget allows (the component may have run
once already — the same trade-off as any at-least-once job queue), else it fails with that reason. No run
stays ``running`` once the gateway is back.

**Retries.** A step attempt that ends in 429, 502, 503 or 504 (a tier down, restarting, overloaded or
slow; also a component that no registered service hosts right now) is retried after an exponential
backoff with jitter (at least the service's Retry-After), up to the step's ``retries``. Any other error
(a 4xx for bad input, a 500 bug) fails the step at once.

**Reports.** A finished run writes ``outputs/runs/<run-id>/report.json`` and ``report.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.pipelines import PipelineSpec, StepSpec, bind_params, dependencies, resolve_bindings, validate
from gateway.registry import Registry
from gateway.router import Router
from mlmesh.errors import Conflict, InvalidInput, MeshError, NotFound
from mlmesh.logs import set_request_id
from mlmesh.settings import Settings
from mlmesh.state import StateDB

__all__ = ["FINISHED", "Jobs", "RunStore"]

log = logging.getLogger("mlmesh.gateway.jobs")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
RETRIABLE = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 8.0

MIGRATIONS = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        spec TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        resumed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_created ON runs (created_at);
    CREATE INDEX runs_status ON runs (status);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        component TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        duration_ms REAL,
        result TEXT,
        metadata TEXT,
        files TEXT,
        error TEXT,
        PRIMARY KEY (run_id, step_id)
    );
    CREATE TABLE pipelines (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class RunStore:
    """Runs, their steps and API-defined pipelines in SQLite (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.db = StateDB(path, MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    # --- pipelines defined over the API --------------------------------------------------------------

    def save_pipeline(self, spec: PipelineSpec) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO pipelines (name, spec, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, created_at = excluded.created_at",
                (spec.name, spec.model_dump_json(), time.time()),
            )

    def pipelines(self) -> dict[str, PipelineSpec]:
        rows = self.db.connect().execute("SELECT spec FROM pipelines ORDER BY name").fetchall()
        specs = [PipelineSpec.model_validate_json(row["spec"]) for row in rows]
        return {s.name: s for s in specs}

    # --- runs ----------------------------------------------------------------------------------------

    def create(self, run_id: str, spec: PipelineSpec, params: dict[str, Any]) -> None:
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, pipeline, spec, params, status, created_at) VALUES (?, ?, ?, ?, 'queued', ?)",
                (run_id, spec.name, spec.model_dump_json(), _json(params), now),
            )
            conn.executemany(
                "INSERT INTO steps (run_id, step_id, position, component, status) VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, s.id, i, s.component) for i, s in enumerate(spec.steps)],
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        columns = ", ".join(f"{k} = ?" for k in fields)
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*fields.values(), run_id))  # noqa: S608 - column names are ours

    def update_step(self, run_id: str, step_id: str, **fields: Any) -> None:
        encoded = {
            k: _json(v) if k in ("result", "metadata", "files", "error") and v is not None else v
            for k, v in fields.items()
        }
        columns = ", ".join(f"{k} = ?" for k in encoded)
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE steps SET {columns} WHERE run_id = ? AND step_id = ?",  # noqa: S608 - column names are ours
                (*encoded.values(), run_id, step_id),
            )

    def finish_open_steps(self, run_id: str, status: str, reason: str) -> None:
        """Mark every step not yet finished (pending, running, retrying) as ``status``."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE steps SET status = ?, error = ?, finished_at = ? "
                "WHERE run_id = ? AND status IN ('pending', 'running', 'retrying')",
                (status, _json({"status": None, "detail": reason}), time.time(), run_id),
            )

    def row(self, run_id: str) -> dict[str, Any] | None:
        run = self.db.connect().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if run is None else dict(run)

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.connect().execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
        return [dict(r) for r in rows]

    def unfinished(self) -> list[str]:
        rows = (
            self.db.connect()
            .execute("SELECT id FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at")
            .fetchall()
        )
        return [r["id"] for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.db.connect().execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status").fetchall()
        counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def list(
        self, *, status: str | None, pipeline: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        conn = self.db.connect()
        total = conn.execute(f"SELECT COUNT(*) FROM runs {clause}", args).fetchone()[0]  # noqa: S608
        rows = conn.execute(
            f"SELECT id FROM runs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",  # noqa: S608
            [*args, limit, offset],
        ).fetchall()
        return [self.describe(r["id"], details=False) for r in rows], int(total)  # type: ignore[misc]

    def describe(self, run_id: str, *, details: bool = True) -> dict[str, Any] | None:
        """The run as the API shows it; ``details`` adds the params, the spec and each step's result."""
        run = self.row(run_id)
        if run is None:
            return None
        steps = []
        for s in self.steps(run_id):
            step = {
                "id": s["step_id"],
                "component": s["component"],
                "status": s["status"],
                "attempts": s["attempts"],
                "started_at": _iso(s["started_at"]),
                "finished_at": _iso(s["finished_at"]),
                "duration_ms": s["duration_ms"],
                "error": _loads(s["error"]),
            }
            if details:
                step["result"] = _loads(s["result"])
                step["metadata"] = _loads(s["metadata"])
                step["files"] = _loads(s["files"]) or []
            steps.append(step)
        end = run["finished_at"] or (time.time() if run["started_at"] else None)
        described = {
            "id": run["id"],
            "pipeline": run["pipeline"],
            "status": run["status"],
            "created_at": _iso(run["created_at"]),
            "started_at": _iso(run["started_at"]),
            "finished_at": _iso(run["finished_at"]),
            "duration_ms": None
            if end is None or run["started_at"] is None
            else round((end - run["started_at"]) * 1e3, 3),
            "error": run["error"],
            "resumed": run["resumed"],
            "steps": steps,
        }
        if details:
            described["params"] = _loads(run["params"])
            described["spec"] = _loads(run["spec"])
        return described


class Jobs:
    """Accepts runs, executes them on the event loop, resumes them after a restart, cancels them."""

    def __init__(self, store: RunStore, registry: Registry, router: Router, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.router = router
        self.settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(settings.gateway.max_active_runs)
        self._cancelled: set[str] = set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def submit(self, spec: PipelineSpec, params: dict[str, Any]) -> str:
        """Validate ``spec`` and ``params``, store the run as ``queued`` and start it; its id."""
        unknown = sorted(set(params) - set(spec.params))
        if unknown:
            raise InvalidInput(
                f"params.{unknown[0]}", f"{spec.name} has no parameter {unknown[0]!r}; it has {sorted(spec.params)}"
            )
        validate(spec, self.registry.components())
        merged = {**spec.params, **params}
        try:
            # The run's parameters, in place, must satisfy the schemas of the inputs they feed.
            validate(bind_params(spec, merged), self.registry.components())
        except InvalidInput as exc:
            raise InvalidInput("params", f"with these parameters, {exc.detail}") from None
        except KeyError as exc:
            raise InvalidInput("params", str(exc.args[0])) from None
        run_id = uuid.uuid4().hex
        self.store.create(run_id, spec, merged)
        self._start(run_id)
        return run_id

    def _start(self, run_id: str) -> None:
        task = asyncio.create_task(self._guarded(run_id), name=f"run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    def resume_unfinished(self) -> int:
        """Restart every run a previous gateway left queued or running (see the module docstring)."""
        resumed = self.store.unfinished()
        for run_id in resumed:
            run = self.store.row(run_id)
            assert run is not None
            self.store.update_run(run_id, resumed=run["resumed"] + 1)
            log.info("resuming run %s of %s after a gateway restart", run_id, run["pipeline"])
            self._start(run_id)
        return len(resumed)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        run = self.store.row(run_id)
        if run is None:
            raise NotFound(f"unknown run {run_id!r}")
        if run["status"] in FINISHED:
            raise Conflict(f"run {run_id} already {run['status']}")
        self._cancelled.add(run_id)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.store.row(run_id)["status"] not in FINISHED:  # type: ignore[index]
            self._finish(run_id, "cancelled", "cancelled by request")
        return self.store.describe(run_id)  # type: ignore[return-value]

    async def close(self) -> None:
        """Stop executing (the gateway is shutting down): runs stay open and resume at the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- execution -----------------------------------------------------------------------------------

    async def _guarded(self, run_id: str) -> None:
        try:
            async with self._slots:
                await self._execute(run_id)
        except asyncio.CancelledError:
            if run_id in self._cancelled:
                self._finish(run_id, "cancelled", "cancelled by request")
                self._cancelled.discard(run_id)
            raise
        except Exception as exc:  # a bug in the executor must not leave the run open forever
            log.exception("run %s failed in the executor", run_id)
            self._finish(run_id, "failed", f"internal error in the executor: {type(exc).__name__}")

    async def _execute(self, run_id: str) -> None:
        run = self.store.row(run_id)
        assert run is not None
        spec = PipelineSpec.model_validate_json(run["spec"])
        params = _loads(run["params"])
        deps = dependencies(spec)
        by_id = {s.id: s for s in spec.steps}
        state: dict[str, str] = {}
        results: dict[str, Any] = {}
        attempts: dict[str, int] = {}
        for row in self.store.steps(run_id):
            state[row["step_id"]] = row["status"]
            attempts[row["step_id"]] = row["attempts"]
            if row["status"] == "succeeded":
                results[row["step_id"]] = _loads(row["result"])
            elif row["status"] in ("running", "retrying"):
                state[row["step_id"]] = "pending"  # interrupted by a gateway restart: run it again if allowed
        self.store.update_run(run_id, status="running", started_at=run["started_at"] or time.time())
        in_flight: dict[asyncio.Task[str], str] = {}
        failed_hard: str | None = None
        try:
            while True:
                for step_id, status in state.items():
                    if status != "pending":
                        continue
                    blocked = [d for d in deps[step_id] if state[d] in ("failed", "skipped", "cancelled")]
                    if blocked:
                        state[step_id] = "skipped"
                        self.store.update_step(
                            run_id,
                            step_id,
                            status="skipped",
                            finished_at=time.time(),
                            error={"status": None, "detail": f"skipped: dependency {blocked[0]!r} did not succeed"},
                        )
                if failed_hard is None:
                    for step_id, status in state.items():
                        if status == "pending" and all(state[d] == "succeeded" for d in deps[step_id]):
                            state[step_id] = "running"
                            task = asyncio.create_task(
                                self._run_step(run_id, by_id[step_id], results, params, attempts[step_id])
                            )
                            in_flight[task] = step_id
                if not in_flight:
                    break
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step_id = in_flight.pop(task)
                    state[step_id] = task.result()
                    if state[step_id] == "failed" and by_id[step_id].on_failure == "fail" and failed_hard is None:
                        failed_hard = step_id
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        if failed_hard is not None:
            self.store.finish_open_steps(run_id, "cancelled", f"cancelled: step {failed_hard!r} failed")
            self._finish(run_id, "failed", f"step {failed_hard!r} failed")
        else:
            leftover = [s for s, status in state.items() if status == "pending"]
            if leftover:  # cannot happen in an acyclic spec; say so rather than loop
                self._finish(run_id, "failed", f"steps never became ready: {leftover}")
            else:
                self._finish(run_id, "succeeded", None)

    async def _run_step(
        self, run_id: str, step: StepSpec, results: dict[str, Any], params: dict[str, Any], used: int
    ) -> str:
        """Run one step until it succeeds or its retries are spent; its final status."""
        first_start = time.time()
        timeout = step.timeout_s or self.settings.gateway.request_timeout_s
        attempt = used
        while True:
            if attempt > step.retries:
                self.store.update_step(
                    run_id,
                    step.id,
                    status="failed",
                    finished_at=time.time(),
                    error={
                        "status": None,
                        "detail": f"interrupted by a gateway restart after {attempt} attempt(s); retries spent",
                    },
                )
                return "failed"
            attempt += 1
            self.store.update_step(run_id, step.id, status="running", attempts=attempt, started_at=first_start)
            try:
                body = resolve_bindings(step.input, results, params, where=f"{step.id}.input")
            except KeyError as exc:
                self._fail_step(run_id, step, first_start, 422, str(exc.args[0]))
                return "failed"
            started = time.perf_counter()
            status, detail, retry_after = await self._call(run_id, step, attempt, body, timeout)
            log.info(
                "run %s step %s (%s) attempt %d answered %d in %.1f ms",
                run_id,
                step.id,
                step.component,
                attempt,
                status,
                (time.perf_counter() - started) * 1e3,
            )
            if status == 200:
                envelope = detail
                self.store.update_step(
                    run_id,
                    step.id,
                    status="succeeded",
                    finished_at=time.time(),
                    duration_ms=round((time.perf_counter() - started) * 1e3, 3),
                    result=envelope["component_result"],
                    metadata=envelope["local_metadata"],
                    files=self._hash_files(envelope["local_metadata"].get("output_files", [])),
                    error=None,
                )
                results[step.id] = envelope["component_result"]
                return "succeeded"
            if status in RETRIABLE and attempt <= step.retries:
                wait = max(
                    retry_after or 0.0,
                    min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0),  # noqa: S311 - jitter, not secrecy
                )
                self.store.update_step(
                    run_id,
                    step.id,
                    status="retrying",
                    error={"status": status, "detail": detail, "retry_in_s": round(wait, 3)},
                )
                await asyncio.sleep(wait)
                continue
            self._fail_step(run_id, step, first_start, status, detail)
            return "failed"

    async def _call(
        self, run_id: str, step: StepSpec, attempt: int, body: Any, timeout: float
    ) -> tuple[int, Any, float | None]:
        """One attempt through the router: (200, envelope, None) or (status, detail, retry-after)."""
        request_id = f"{run_id[:12]}-{step.id}-{attempt}"[:64]
        # This step's task has its own context: the gateway's log lines for the call carry the step's request
        # id, the same the tier logs, so `mlmesh logs --request` finds both sides.
        set_request_id(request_id)
        try:
            response = await self.router.run(
                step.component, orjson.dumps(body), request_id=request_id, timeout_s=timeout
            )
        except NotFound:
            # The spec was validated against the registry when the run was accepted: the component is unknown now
            # because no service hosting it has been seen since (e.g. the gateway restarted while its tier was
            # down). That is a tier being away, so it is retried like one.
            return 503, f"no service hosting {step.component} is registered right now", None
        except MeshError as exc:
            return exc.status, exc.detail, getattr(exc, "retry_after", None)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return 502, f"{step.component} answered {response.status_code} with a body that is not JSON", None
        if response.status_code == 200:
            return 200, payload, None
        detail = payload.get("detail") if isinstance(payload, dict) else None
        retry_after = response.headers.get("retry-after")
        return (
            response.status_code,
            str(detail or f"{step.component} answered {response.status_code}"),
            float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
        )

    def _fail_step(self, run_id: str, step: StepSpec, started: float, status: int | None, detail: Any) -> None:
        self.store.update_step(
            run_id,
            step.id,
            status="failed",
            finished_at=time.time(),
            duration_ms=round((time.time() - started) * 1e3, 3),
            error={"status": status, "detail": detail},
        )

    def _hash_files(self, output_files: list[str]) -> list[dict[str, Any]]:
        """Content hashes of a step's output files, so a later reader can tell they are the same bytes."""
        base = self.settings.outputs_dir.parent
        described = []
        for name in output_files:
            path = base / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            described.append({"path": name, "sha256": digest, "bytes": path.stat().st_size if path.is_file() else None})
        return described

    def _finish(self, run_id: str, status: str, error: str | None) -> None:
        if status != "succeeded":
            self.store.finish_open_steps(run_id, "cancelled", error or status)
        self.store.update_run(run_id, status=status, finished_at=time.time(), error=error)
        self._write_report(run_id)
        log.info("run %s %s%s", run_id, status, f": {error}" if error else "")

    def _write_report(self, run_id: str) -> None:
        run = self.store.describe(run_id)
        assert run is not None
        directory = self.settings.outputs_dir / "runs" / run_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.json").write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
        (directory / "report.md").write_text(_markdown(run), encoding="utf-8")


def _scalar_summary(result: Any, limit: int = 8) -> str:
    if not isinstance(result, dict):
        return ""
    scalars = [(k, v) for k, v in result.items() if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 60]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars[:limit])


def _markdown(run: dict[str, Any]) -> str:
    lines = [
        f"# Run {run['id']} — {run['pipeline']}",
        "",
        f"- status: **{run['status']}**" + (f" ({run['error']})" if run["error"] else ""),
        f"- created: {run['created_at']}; started: {run['started_at']}; finished: {run['finished_at']}",
        f"- duration: {run['duration_ms']} ms; resumed after a restart: {run['resumed']} time(s)",
        "",
        "| step | component | status | attempts | ms | summary |",
        "|---|---|---|---|---|---|",
    ]
    for s in run["steps"]:
        summary = _scalar_summary(s.get("result")) or (s["error"] or {}).get("detail") or ""
        lines.append(
            f"| {s['id']} | {s['component']} | {s['status']} | {s['attempts']} | {s['duration_ms'] or ''} "
            f"| {str(summary).replace('|', '/')[:300]} |"
        )
    files = [f["path"] for s in run["steps"] for f in s.get("files", [])]
    if files:
        lines += ["", "## Files", "", *[f"- `{f}`" for f in files]]
    return "\n".join(lines) + "\n"
