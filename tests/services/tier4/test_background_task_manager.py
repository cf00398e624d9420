"""Background task manager over HTTP, with the gateway mocked by respx (the tier app itself is real).

Policy under test: 4xx answers are permanent (dead letter at once), 5xx and connection errors are
transient (retried with backoff until max_attempts, then dead-lettered).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from mlmesh.security import TOKEN_HEADER
from mlmesh.settings import Settings
from services.framework.app import create_app
from services.tier4.background_task_manager import background_task_manager
from tests.conftest import AUTH, TEST_TOKEN, make_settings

ROOT = Path(__file__).resolve().parents[3]
RUN = "/run/background_task_manager"


def envelope(result: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"component": "x", "component_result": result, "local_metadata": {}})


@pytest.fixture
def gateway(settings: Settings) -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=settings.gateway_url, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def client(client_for: Any) -> TestClient:
    return client_for(background_task_manager)


def call(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = client.post(RUN, json=body)
    assert r.status_code == status, r.text
    return r.json()["component_result"] if status == 200 else r.json()


def submit(client: TestClient, **fields: Any) -> str:
    return call(client, {"operation": "submit", "component": "echo", **fields})["task"]["task_id"]


def test_work_respects_priorities_and_sends_the_mesh_token(client: TestClient, gateway: respx.MockRouter) -> None:
    seen: list[str] = []

    def echo(request: httpx.Request) -> httpx.Response:
        assert request.headers[TOKEN_HEADER] == TEST_TOKEN
        seen.append(json.loads(request.content)["tag"])
        return envelope({"tag": seen[-1]})

    gateway.post("/run/echo").mock(side_effect=echo)
    for tag, priority in [("low", -5), ("mid", 0), ("high", 7), ("mid2", 0)]:
        submit(client, input={"tag": tag}, priority=priority)
    worked = call(client, {"operation": "work", "max_tasks": 10})["worked"]
    assert seen == ["high", "mid", "mid2", "low"]
    assert [w["outcome"] for w in worked] == ["done"] * 4
    done = call(client, {"operation": "list", "state": "done"})
    assert done["total"] == 4 and {t["result"]["tag"] for t in done["tasks"]} == {"low", "mid", "high", "mid2"}
    stats = call(client, {"operation": "stats"})
    assert stats["counts"]["done"] == 4 and stats["counts"]["ready"] == 0


def test_transient_failures_retry_with_backoff_then_dead_letter(client: TestClient, gateway: respx.MockRouter) -> None:
    route = gateway.post("/run/echo").mock(return_value=httpx.Response(500, json={"detail": "boom"}))
    task_id = submit(client, max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.2)
    t0 = time.time()
    first = call(client, {"operation": "work"})["worked"]
    assert [w["outcome"] for w in first] == ["retry"]
    status = call(client, {"operation": "status", "task_id": task_id})["task"]
    assert status["state"] == "ready" and status["attempts"] == 1 and "HTTP 500" in status["last_error"]
    assert t0 <= status["ready_at"] <= time.time() + 0.05  # full jitter: at most the first cap (0.05 s)
    deadline = time.monotonic() + 10
    while call(client, {"operation": "status", "task_id": task_id})["task"]["state"] != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        call(client, {"operation": "work"})
    assert route.call_count == 3
    dead = call(client, {"operation": "dead_letters"})
    assert dead["total"] == 1 and dead["tasks"][0]["task_id"] == task_id and dead["tasks"][0]["attempts"] == 3


def test_connection_errors_are_transient(client: TestClient, gateway: respx.MockRouter) -> None:
    route = gateway.post("/run/echo")
    route.side_effect = [httpx.ConnectError("refused"), envelope({"ok": True})]
    task_id = submit(client, backoff_base_s=0.0)
    assert [w["outcome"] for w in call(client, {"operation": "work"})["worked"]] == ["retry", "done"]
    task = call(client, {"operation": "status", "task_id": task_id})["task"]
    assert task["state"] == "done" and task["attempts"] == 2 and task["result"] == {"ok": True}


def test_unknown_component_is_a_permanent_failure(client: TestClient, gateway: respx.MockRouter) -> None:
    gateway.post("/run/nope").mock(return_value=httpx.Response(404, json={"detail": "unknown component 'nope'"}))
    task_id = call(client, {"operation": "submit", "component": "nope", "max_attempts": 5})["task"]["task_id"]
    worked = call(client, {"operation": "work"})["worked"]
    assert [(w["outcome"], w["status_code"]) for w in worked] == [("dead", 404)]
    task = call(client, {"operation": "status", "task_id": task_id})["task"]
    assert task["state"] == "dead" and task["attempts"] == 1


def test_cancel_and_errors(client: TestClient, gateway: respx.MockRouter) -> None:
    route = gateway.post("/run/echo").mock(return_value=envelope({}))
    task_id = submit(client)
    assert call(client, {"operation": "cancel", "task_id": task_id})["task"]["state"] == "cancelled"
    assert call(client, {"operation": "work"})["worked"] == []
    assert route.call_count == 0
    problem = call(client, {"operation": "cancel", "task_id": task_id}, status=409)
    assert "cancelled" in problem["detail"]
    call(client, {"operation": "status", "task_id": "task-" + "0" * 32}, status=404)
    problem = call(client, {"operation": "submit", "component": "background_task_manager"}, status=422)
    assert "component" in problem["detail"]
    call(client, {"operation": "submit", "component": "echo", "priority": 10**6}, status=422)


def test_idempotent_submit(client: TestClient) -> None:
    first = call(client, {"operation": "submit", "component": "echo", "input": {"a": 1}, "idempotency_key": "k"})
    again = call(client, {"operation": "submit", "component": "echo", "input": {"a": 1}, "idempotency_key": "k"})
    assert first["created"] is True and again["created"] is False
    assert again["task"]["task_id"] == first["task"]["task_id"]
    call(client, {"operation": "submit", "component": "echo", "input": {"a": 2}, "idempotency_key": "k"}, status=409)


def _app(s: Settings) -> TestClient:
    return TestClient(
        create_app("tier4", settings=s, components=[background_task_manager], announce=False), headers=AUTH
    )


def test_tasks_survive_a_restart(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    with _app(s) as first:
        task_id = submit(first, input={"v": 1}, priority=3)
    with _app(s) as second, respx.mock(base_url=s.gateway_url) as gateway:
        gateway.post("/run/echo").mock(return_value=envelope({"v": 1}))
        assert call(second, {"operation": "status", "task_id": task_id})["task"]["state"] == "ready"
        assert [w["task_id"] for w in call(second, {"operation": "work"})["worked"]] == [task_id]
        assert call(second, {"operation": "status", "task_id": task_id})["task"]["state"] == "done"


KILLED_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from services.framework import StateDB
    from services.queues import QUEUE_MIGRATIONS, TaskQueue
    # The component's own queue: data/background_tasks.sqlite, queue "component_calls".
    q = TaskQueue(StateDB(Path(sys.argv[1]), QUEUE_MIGRATIONS), "component_calls", lease_s=0.5)
    print(q.claim().task_id, flush=True)
    time.sleep(60)
    """
)


def test_a_task_whose_worker_is_killed_completes_later(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    with _app(s) as client, respx.mock(base_url=s.gateway_url) as gateway:
        route = gateway.post("/run/echo").mock(return_value=envelope({"ok": True}))
        task_id = submit(client)
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WORKER, str(s.data_dir / "background_tasks.sqlite")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            claimed = proc.stdout.readline().strip()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
        assert claimed == task_id
        assert call(client, {"operation": "status", "task_id": task_id})["task"]["state"] == "running"
        deadline = time.monotonic() + 10
        while call(client, {"operation": "status", "task_id": task_id})["task"]["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)
            call(client, {"operation": "work"})
        task = call(client, {"operation": "status", "task_id": task_id})["task"]
        assert task["attempts"] == 2 and task["result"] == {"ok": True}
        assert route.call_count == 1
