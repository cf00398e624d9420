"""The durable queue: priorities, leases, retries with full-jitter backoff, dead letters, and a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmesh.errors import Conflict, NotFound
from services.framework import StateDB
from services.queues import QUEUE_MIGRATIONS, LeaseLost, TaskQueue, full_jitter_backoff

ROOT = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    state = StateDB(tmp_path / "q.sqlite", QUEUE_MIGRATIONS)
    yield state
    state.close()


def test_claims_highest_priority_first_then_fifo(db: StateDB) -> None:
    q = TaskQueue(db)
    ids = {name: q.enqueue({"n": name}, priority=p)[0].task_id for name, p in [("a", 0), ("b", 5), ("c", 0), ("d", 9)]}
    order = [q.claim().task_id for _ in range(4)]
    assert order == [ids["d"], ids["b"], ids["a"], ids["c"]]
    assert q.claim() is None
    assert q.counts() == {"ready": 0, "running": 4, "done": 0, "dead": 0, "cancelled": 0}


def test_enqueue_is_durable_and_idempotent(db: StateDB, tmp_path: Path) -> None:
    q = TaskQueue(db)
    first, created = q.enqueue({"x": 1}, idempotency_key="k1")
    again, created_again = q.enqueue({"x": 1}, idempotency_key="k1")
    assert created and not created_again and again.task_id == first.task_id
    with pytest.raises(Conflict):
        q.enqueue({"x": 2}, idempotency_key="k1")
    other = StateDB(tmp_path / "q.sqlite", QUEUE_MIGRATIONS)  # a fresh connection sees the committed task
    try:
        assert TaskQueue(other).get(first.task_id).payload == {"x": 1}
    finally:
        other.close()


def test_complete_and_result(db: StateDB) -> None:
    q = TaskQueue(db)
    q.enqueue({"x": 1})
    task = q.claim()
    assert task.state == "running" and task.attempts == 1 and task.lease_id
    done = q.complete(task, {"answer": 42})
    assert done.state == "done" and done.result == {"answer": 42} and done.finished_at is not None
    with pytest.raises(LeaseLost):
        q.complete(task)


def test_fail_retries_after_full_jitter_backoff_then_dead_letters(db: StateDB) -> None:
    clock = Clock()
    q = TaskQueue(db, clock=clock)
    task, _ = q.enqueue({"x": 1}, max_attempts=3, base_backoff_s=2.0, max_backoff_s=5.0)
    caps = [2.0, 4.0]  # min(5, 2 · 2^(attempt-1)) for attempts 1, 2
    for attempt, cap in enumerate(caps, start=1):
        claimed = q.claim()
        after = q.fail(claimed, f"boom {attempt}")
        assert after.state == "ready" and after.last_error == f"boom {attempt}"
        delay = after.ready_at - clock.now
        assert 0.0 <= delay <= cap
        if delay > 0:
            assert q.claim() is None  # not before the backoff has passed
        clock.now += cap
    final = q.fail(q.claim(), "boom 3")
    assert final.state == "dead" and final.attempts == 3
    assert [t.task_id for t in q.list(state="dead")[0]] == [task.task_id]


def test_permanent_failure_dead_letters_at_once(db: StateDB) -> None:
    q = TaskQueue(db)
    q.enqueue({"x": 1}, max_attempts=5)
    after = q.fail(q.claim(), "HTTP 404", permanent=True)
    assert after.state == "dead" and after.attempts == 1


@settings(max_examples=50, deadline=None)
@given(
    attempt=st.integers(1, 80),
    base=st.floats(0.0, 100.0),
    cap=st.floats(0.0, 1000.0),
    task_id=st.text(max_size=20),
)
def test_full_jitter_is_bounded_and_reproducible(attempt: int, base: float, cap: float, task_id: str) -> None:
    delay = full_jitter_backoff(task_id, attempt, base, cap)
    assert 0.0 <= delay <= min(cap, base * 2.0 ** (attempt - 1)) + 1e-9
    assert delay == full_jitter_backoff(task_id, attempt, base, cap)


def test_jitter_spreads_tasks() -> None:
    delays = {full_jitter_backoff(f"task-{i}", 3, 1.0, 60.0) for i in range(50)}
    assert len(delays) == 50 and max(delays) <= 4.0


def test_cancel_states(db: StateDB) -> None:
    q = TaskQueue(db)
    ready, _ = q.enqueue({"x": 1})
    q.enqueue({"x": 2})
    assert q.cancel(ready.task_id).state == "cancelled"
    with pytest.raises(Conflict):
        q.cancel(ready.task_id)
    running = q.claim()
    q.cancel(running.task_id)
    with pytest.raises(LeaseLost):  # the worker learns its task was cancelled
        q.complete(running)
    with pytest.raises(NotFound):
        q.cancel("task-unknown")


def test_expired_lease_is_requeued_and_the_stale_worker_is_fenced(db: StateDB) -> None:
    clock = Clock()
    q = TaskQueue(db, lease_s=0.5, clock=clock)
    q.enqueue({"x": 1}, max_attempts=2)
    stale = q.claim()
    assert q.claim() is None
    clock.now += 0.6
    fresh = q.claim()
    assert fresh.task_id == stale.task_id and fresh.attempts == 2 and fresh.lease_id != stale.lease_id
    with pytest.raises(LeaseLost):
        q.complete(stale)
    clock.now += 0.6  # the second lease expires too, with no attempts left: a dead letter, not a loss
    assert q.requeue_expired() == 1
    assert q.get(fresh.task_id).state == "dead"


def test_heartbeat_extends_the_lease(db: StateDB) -> None:
    clock = Clock()
    q = TaskQueue(db, lease_s=0.5, clock=clock)
    q.enqueue({"x": 1})
    task = q.claim()
    clock.now += 0.4
    task = q.heartbeat(task)
    clock.now += 0.4
    assert q.claim() is None
    assert q.complete(task).state == "done"


def test_concurrent_claimers_take_each_task_once(db: StateDB) -> None:
    q = TaskQueue(db)
    for i in range(40):
        q.enqueue({"i": i})
    taken: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            while (task := q.claim()) is not None:
                with lock:
                    taken.append(task.task_id)
                q.complete(task)
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 40 and len(set(taken)) == 40
    assert q.counts()["done"] == 40


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from services.framework import StateDB
    from services.queues import QUEUE_MIGRATIONS, TaskQueue
    q = TaskQueue(StateDB(Path(sys.argv[1]), QUEUE_MIGRATIONS), lease_s=0.5)
    if sys.argv[2] == "enqueue":
        task, _ = q.enqueue({"job": "accepted then killed"})
    else:
        task = q.claim()
    print(task.task_id, flush=True)
    time.sleep(60)  # "mid-task": killed here
    """
)


def _run_and_kill(path: Path, mode: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), mode], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return line


def test_no_accepted_task_is_lost_under_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "kill.sqlite"
    db = StateDB(path, QUEUE_MIGRATIONS)
    try:
        q = TaskQueue(db, lease_s=5.0)
        # 1. A producer killed right after enqueue answered: the task is on disk.
        accepted = _run_and_kill(path, "enqueue")
        assert q.get(accepted).state == "ready"
        # 2. A worker killed mid-task: the task stays leased, then is claimable again and completes.
        claimed = _run_and_kill(path, "claim")
        assert claimed == accepted
        assert q.get(claimed).state == "running"
        deadline = time.monotonic() + 10
        task = q.claim()
        while task is None and time.monotonic() < deadline:
            time.sleep(0.1)
            task = q.claim()
        assert task is not None and task.task_id == accepted and task.attempts == 2
        assert task.last_error == "lease expired (worker lost)"
        assert q.complete(task, {"ok": True}).state == "done"
    finally:
        db.close()
