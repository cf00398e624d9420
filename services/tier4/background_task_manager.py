"""Durable priority task queue for component calls, worked through the gateway.

Tasks are stored in ``data/background_tasks.sqlite`` by :class:`services.queues.TaskQueue` before
``submit`` answers, so an accepted task survives a crash or restart of the service. ``work`` claims
ready tasks (highest priority first) and calls each named component through the gateway
(``POST {gateway_url}/run/{component}`` with the mesh token), then records the outcome.

Failure policy (``classify_status``):

* 2xx — done; the component's ``component_result`` is kept as the task's result.
* 4xx (except 408, 425, 429) — permanent: the request itself is wrong (unknown component → 404,
  invalid input → 422), retrying cannot help, so the task goes straight to the dead letters.
* 408, 425, 429, 5xx, connection errors and timeouts — transient: retried after exponential backoff
  with full jitter until ``max_attempts``, then dead-lettered.

A worker that dies mid-task leaves a lease that expires; the task then becomes ready again
(at-least-once delivery). States: ready → running → done | ready (retry) | dead; ready/running →
cancelled. Unknown task → 404; cancelling a finished task → 409.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

import httpx
from pydantic import Field, RootModel

from mlmesh.errors import InvalidInput
from mlmesh.security import TOKEN_HEADER, mesh_token
from mlmesh.settings import Settings
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.queues import QUEUE_MIGRATIONS, LeaseLost, Task, TaskQueue

__all__ = [
    "BackgroundTaskManagerInput",
    "BackgroundTaskManagerOutput",
    "CallOutcome",
    "TaskCancelOp",
    "TaskDeadLettersOp",
    "TaskListOp",
    "TaskStatsOp",
    "TaskStatusOp",
    "TaskSubmitOp",
    "TaskView",
    "TaskWorkOp",
    "WorkOutcome",
    "background_task_manager",
    "call_component",
    "classify_status",
]

SELF = "background_task_manager"
MAX_PAYLOAD_BYTES = 256 * 1024
ComponentName = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_]{0,99}$", description="the component to call, e.g. `input_sanitizer`")
]
TaskId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^task-[0-9a-f]{32}$")]
State = Literal["ready", "running", "done", "dead", "cancelled"]
TRANSIENT_4XX = frozenset({408, 425, 429})


# --------------------------------------------------------------------------- calling through the gateway


class CallOutcome(ComponentOutput):
    """What one component call through the gateway gave."""

    ok: bool
    status_code: int | None = Field(description="HTTP status; None when no answer came (connection error, timeout)")
    transient: bool = Field(description="whether retrying may help (5xx, 408/425/429, connection errors)")
    result: dict[str, Any] | None = Field(None, description="the component_result on success")
    error: str | None = None


def classify_status(status: int) -> bool:
    """Whether a failed HTTP status is transient (worth retrying): 5xx, 408, 425, 429."""
    return status >= 500 or status in TRANSIENT_4XX


def call_component(
    client: httpx.Client, settings: Settings, name: str, payload: dict[str, Any], *, timeout_s: float
) -> CallOutcome:
    """``POST {gateway}/run/{name}`` with the mesh token; never raises for HTTP or network failures."""
    url = f"{settings.gateway_url.rstrip('/')}/run/{name}"
    try:
        response = client.post(url, json=payload, headers={TOKEN_HEADER: mesh_token(settings)}, timeout=timeout_s)
    except httpx.HTTPError as exc:  # connection refused, timeout, protocol error: the call may succeed later
        return CallOutcome(ok=False, status_code=None, transient=True, error=f"{type(exc).__name__}: {exc}"[:1000])
    if response.status_code == 200:
        try:
            result = response.json()["component_result"]
        except (ValueError, KeyError, TypeError) as exc:
            return CallOutcome(
                ok=False, status_code=200, transient=False, error=f"malformed success body: {exc}"[:1000]
            )
        return CallOutcome(ok=True, status_code=200, transient=False, result=result)
    return CallOutcome(
        ok=False,
        status_code=response.status_code,
        transient=classify_status(response.status_code),
        error=f"HTTP {response.status_code}: {response.text[:500]}",
    )


# --------------------------------------------------------------------------- inputs


class TaskSubmitOp(ComponentInput):
    """Queue a call of ``component`` with ``input``; stored before the answer."""

    operation: Literal["submit"]
    component: ComponentName
    input: dict[str, Any] = Field(default_factory=dict, description="the component's request body")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts before the task is dead-lettered")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="a repeated submit with this key returns the first task"
    )
    backoff_base_s: float = Field(1.0, ge=0.0, le=600.0, description="backoff cap of the first retry, seconds")
    backoff_max_s: float = Field(300.0, ge=0.0, le=86400.0, description="largest backoff cap, seconds")
    delay_s: float = Field(0.0, ge=0.0, le=86400.0, description="not ready before this many seconds")


class TaskStatusOp(ComponentInput):
    operation: Literal["status"]
    task_id: TaskId


class TaskListOp(ComponentInput):
    operation: Literal["list"]
    state: State | None = None
    component: ComponentName | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class TaskCancelOp(ComponentInput):
    operation: Literal["cancel"]
    task_id: TaskId


class TaskDeadLettersOp(ComponentInput):
    operation: Literal["dead_letters"]
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class TaskWorkOp(ComponentInput):
    """Run up to ``max_tasks`` ready tasks now, one after another."""

    operation: Literal["work"]
    max_tasks: int = Field(10, ge=1, le=100)
    timeout_s: float = Field(30.0, gt=0, le=300.0, description="per call; the lease is this plus 10 s")


class TaskStatsOp(ComponentInput):
    operation: Literal["stats"]


class BackgroundTaskManagerInput(
    RootModel[
        Annotated[
            TaskSubmitOp | TaskStatusOp | TaskListOp | TaskCancelOp | TaskDeadLettersOp | TaskWorkOp | TaskStatsOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One queue operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class TaskView(ComponentOutput):
    task_id: str
    component: str
    state: State
    priority: int
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    created_at: float = Field(description="unix time, seconds")
    ready_at: float = Field(description="not claimed before this time (backoff)")
    finished_at: float | None
    last_error: str | None
    result: dict[str, Any] | None = Field(description="the component_result once done")


class WorkOutcome(ComponentOutput):
    task_id: str
    component: str
    attempt: int
    outcome: Literal["done", "retry", "dead", "cancelled_while_running"]
    status_code: int | None
    error: str | None
    elapsed_ms: float


class BackgroundTaskManagerOutput(ComponentOutput):
    operation: str
    task: TaskView | None = None
    created: bool | None = Field(None, description="submit: False when the idempotency key matched a task")
    tasks: list[TaskView] = Field(default_factory=list)
    total: int | None = Field(None, description="list/dead_letters: how many match in all")
    worked: list[WorkOutcome] = Field(default_factory=list, description="work: one entry per attempt made")
    counts: dict[str, int] | None = Field(None, description="stats: tasks per state")
    oldest_ready_age_s: float | None = Field(None, description="stats: wait of the oldest claimable task")


def task_view(task: Task) -> TaskView:
    return TaskView(
        task_id=task.task_id,
        component=task.payload["component"],
        state=task.state,  # type: ignore[arg-type]
        priority=task.priority,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        idempotency_key=task.idempotency_key,
        created_at=task.created_at,
        ready_at=task.ready_at,
        finished_at=task.finished_at,
        last_error=task.last_error,
        result=task.result,
    )


def _queue(ctx: RunContext) -> TaskQueue:
    return TaskQueue(ctx.state("background_tasks", QUEUE_MIGRATIONS), "component_calls")


def _work(queue: TaskQueue, op: TaskWorkOp, ctx: RunContext) -> list[WorkOutcome]:
    outcomes: list[WorkOutcome] = []
    with httpx.Client() as client:
        for _ in range(op.max_tasks):
            task = queue.claim(lease_s=op.timeout_s + 10.0)
            if task is None:
                break
            name = task.payload["component"]
            start = time.perf_counter()
            call = call_component(client, ctx.settings, name, task.payload["input"], timeout_s=op.timeout_s)
            try:
                if call.ok:
                    after = queue.complete(task, call.result)
                else:
                    after = queue.fail(task, call.error or "failed", permanent=not call.transient)
                outcome = {"done": "done", "ready": "retry", "dead": "dead"}[after.state]
            except LeaseLost:  # cancelled (or re-claimed after lease expiry) while the call ran
                outcome = "cancelled_while_running"
            outcomes.append(
                WorkOutcome(
                    task_id=task.task_id,
                    component=name,
                    attempt=task.attempts,
                    outcome=outcome,  # type: ignore[arg-type]
                    status_code=call.status_code,
                    error=call.error,
                    elapsed_ms=(time.perf_counter() - start) * 1000.0,
                )
            )
    return outcomes


@component(
    "BackgroundTaskManager",
    tier="tier4",
    capabilities=["task_queue", "background_jobs", "retry", "dead_letter_queue"],
    example={"operation": "stats"},
    examples=[{"operation": "list", "state": "ready"}],
    deterministic=False,
)
def background_task_manager(request: BackgroundTaskManagerInput, ctx: RunContext) -> BackgroundTaskManagerOutput:
    """Durable priority task queue for component calls: retries with backoff, dead letters, cancel, status.

    ``submit`` stores a call (component + input + priority + max_attempts) durably and returns its
    task id; ``work`` runs up to N ready tasks now through the gateway: 4xx answers are permanent
    (dead letter at once), 5xx and connection errors are retried with full-jitter exponential
    backoff until ``max_attempts``. A task whose worker died is claimable again once its lease
    expires. Unknown task → 404; cancelling a finished task → 409.
    """
    op = request.root
    queue = _queue(ctx)
    match op:
        case TaskSubmitOp():
            if op.component == SELF:
                raise InvalidInput("component", "a task cannot call the background task manager itself")
            if len(json.dumps(op.input)) > MAX_PAYLOAD_BYTES:
                raise InvalidInput("input", f"must serialise to at most {MAX_PAYLOAD_BYTES} bytes")
            task, created = queue.enqueue(
                {"component": op.component, "input": op.input},
                priority=op.priority,
                max_attempts=op.max_attempts,
                idempotency_key=op.idempotency_key,
                tag=op.component,
                delay_s=op.delay_s,
                base_backoff_s=op.backoff_base_s,
                max_backoff_s=max(op.backoff_max_s, op.backoff_base_s),
            )
            return BackgroundTaskManagerOutput(operation=op.operation, task=task_view(task), created=created)
        case TaskStatusOp():
            return BackgroundTaskManagerOutput(operation=op.operation, task=task_view(queue.get(op.task_id)))
        case TaskListOp():
            tasks, total = queue.list(state=op.state, tag=op.component, limit=op.limit, offset=op.offset)
            return BackgroundTaskManagerOutput(operation=op.operation, tasks=[task_view(t) for t in tasks], total=total)
        case TaskCancelOp():
            return BackgroundTaskManagerOutput(operation=op.operation, task=task_view(queue.cancel(op.task_id)))
        case TaskDeadLettersOp():
            tasks, total = queue.list(state="dead", limit=op.limit, offset=op.offset)
            return BackgroundTaskManagerOutput(operation=op.operation, tasks=[task_view(t) for t in tasks], total=total)
        case TaskWorkOp():
            return BackgroundTaskManagerOutput(operation=op.operation, worked=_work(queue, op, ctx))
        case TaskStatsOp():
            return BackgroundTaskManagerOutput(
                operation=op.operation,
                counts=queue.counts(),
                oldest_ready_age_s=queue.oldest_ready_age_s(),
            )
    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover - the union is exhaustive
