"""Batch processor over HTTP. The gateway's /run is mocked with respx (an HTTP target's happy path; the
tier app, its SQLite queue and the thread pool are real)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from mlmesh.settings import Settings
from services.framework import StateDB
from services.queues import TaskQueue
from services.tier4.batch_processor import MIGRATIONS, batch_processor

RUN = "/run/batch_processor"


@pytest.fixture
def gateway(settings: Settings) -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=settings.gateway_url, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def client(client_for: Any) -> TestClient:
    return client_for(batch_processor)


def call(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    r = client.post(RUN, json=body)
    assert r.status_code == status, r.text
    return r.json()["component_result"] if status == 200 else r.json()


class Doubler:
    """A fake target: doubles ``x``; counts calls per record and the peak number in flight."""

    def __init__(self, delay_s: float = 0.0, fail: dict[int, list[int]] | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail or {}  # x → statuses to answer before succeeding
        self.calls: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        x = json.loads(request.content)["x"]
        with self.lock:
            self.calls[x] += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            queued = self.fail.get(x, [])
            status = queued.pop(0) if queued else 200
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        if status != 200:
            return httpx.Response(status, json={"detail": f"status {status}"})
        return httpx.Response(200, json={"component_result": {"y": 2 * x}, "local_metadata": {}})


def create(client: TestClient, n: int, **fields: Any) -> str:
    body = {"operation": "create", "component": "doubler", "records": [{"x": i} for i in range(n)], **fields}
    return call(client, body)["batch"]["batch_id"]


def test_happy_path_bounded_concurrency_results_and_throughput(client: TestClient, gateway: respx.MockRouter) -> None:
    target = Doubler(delay_s=0.01)
    gateway.post("/run/doubler").mock(side_effect=target)
    batch_id = create(client, 25, chunk_size=4, concurrency=3)
    before = call(client, {"operation": "status", "batch_id": batch_id})["batch"]
    assert (
        before["state"] == "pending" and before["chunks"]["ready"] == 7 and before["throughput_records_per_s"] is None
    )
    out = call(client, {"operation": "run", "batch_id": batch_id, "max_chunks": 100})
    assert out["run"]["chunks_completed"] == 7 and out["run"]["records_done"] == 25
    assert out["run"]["throughput_records_per_s"] > 0
    assert 1 <= target.peak <= 3  # never more calls in flight than the batch's concurrency
    assert set(target.calls) == set(range(25)) and set(target.calls.values()) == {1}
    batch = out["batch"]
    assert batch["state"] == "completed" and batch["progress"] == 1.0
    assert batch["records"] == {"pending": 0, "done": 25, "failed": 0}
    assert batch["throughput_records_per_s"] > 0 and batch["run_seconds"] > 0
    page = call(client, {"operation": "results", "batch_id": batch_id, "offset": 20, "limit": 10})
    assert page["total"] == 25
    assert [(r["index"], r["result"]["y"]) for r in page["results"]] == [(i, 2 * i) for i in range(20, 25)]
    listed = call(client, {"operation": "list"})
    assert [b["batch_id"] for b in listed["batches"]] == [batch_id]


def test_permanent_record_errors_and_transient_chunk_retries(client: TestClient, gateway: respx.MockRouter) -> None:
    target = Doubler(fail={1: [422], 3: [503]})
    gateway.post("/run/doubler").mock(side_effect=target)
    batch_id = create(client, 6, chunk_size=3, backoff_base_s=0.05, defaults={"unused": True, "x": -1})
    first = call(client, {"operation": "run", "batch_id": batch_id})["run"]
    # chunk [0,3): record 1 fails for good (422), the chunk completes; chunk [3,6): record 3 gets a 503 and is
    # retried after a full-jitter backoff, which can be short enough to fall within this same run.
    assert first["chunks_completed"] >= 1 and first["chunks_completed"] + first["chunks_retrying"] >= 2
    assert first["records_failed"] == 1 and first["records_done"] >= 4
    deadline = time.monotonic() + 10
    while call(client, {"operation": "status", "batch_id": batch_id})["batch"]["state"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
        call(client, {"operation": "run", "batch_id": batch_id})
    assert target.calls == Counter({0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1})  # finished records are not called again
    failed = call(client, {"operation": "results", "batch_id": batch_id, "status": "failed"})["results"]
    assert [(r["index"], "422" in r["error"]) for r in failed] == [(1, True)]


def test_chunks_that_keep_failing_fail_their_records(client: TestClient, gateway: respx.MockRouter) -> None:
    gateway.post("/run/doubler").mock(return_value=httpx.Response(502))
    batch_id = create(client, 2, max_attempts=2, backoff_base_s=0.0)
    out = call(client, {"operation": "run", "batch_id": batch_id})
    assert out["run"]["chunks_retrying"] == 1 and out["run"]["chunks_dead"] == 1
    assert out["batch"]["records"] == {"pending": 0, "done": 0, "failed": 2}
    assert out["batch"]["chunks"]["dead"] == 1 and out["batch"]["state"] == "completed"


def test_resumes_after_a_crash_and_processes_each_record_once(
    client: TestClient, gateway: respx.MockRouter, settings: Settings
) -> None:
    target = Doubler()
    gateway.post("/run/doubler").mock(side_effect=target)
    batch_id = create(client, 9, chunk_size=3)
    db = StateDB(settings.data_dir / "batch_processor.sqlite", MIGRATIONS)
    try:  # a worker claims a chunk and "crashes": it never completes nor fails it
        dropped = TaskQueue(db, "batch_chunks", lease_s=0.5).claim(tag=batch_id)
    finally:
        db.close()
    first = call(client, {"operation": "run", "batch_id": batch_id})
    assert first["run"]["chunks_completed"] == 2 and first["batch"]["state"] == "running"
    assert first["batch"]["chunks"]["running"] == 1
    time.sleep(0.6)  # the dropped chunk's lease expires
    second = call(client, {"operation": "run", "batch_id": batch_id})
    assert second["run"]["chunks_completed"] == 1 and second["batch"]["state"] == "completed"
    assert set(target.calls) == set(range(9)) and set(target.calls.values()) == {1}
    start = dropped.payload["start"]
    redone = call(client, {"operation": "results", "batch_id": batch_id, "offset": start, "limit": 3})["results"]
    assert [r["result"]["y"] for r in redone] == [2 * i for i in range(start, start + 3)]


def test_higher_priority_batches_run_first(client: TestClient, gateway: respx.MockRouter) -> None:
    target = Doubler()
    gateway.post("/run/doubler").mock(side_effect=target)
    low = create(client, 2, priority=-1)
    high = create(client, 2, priority=5)
    out = call(client, {"operation": "run", "max_chunks": 1, "concurrency": 1})
    assert out["run"]["chunks_completed"] == 1 and out["batch"] is None
    assert call(client, {"operation": "status", "batch_id": high})["batch"]["state"] == "completed"
    assert call(client, {"operation": "status", "batch_id": low})["batch"]["state"] == "pending"


def test_records_from_jsonl_and_csv_files(client: TestClient, gateway: respx.MockRouter, settings: Settings) -> None:
    gateway.post("/run/doubler").mock(side_effect=Doubler())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "in.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    (settings.data_dir / "in.csv").write_text("x,label\n3,a\n4,b\n")
    for name, expected in [("in.jsonl", [2, 4]), ("in.csv", [6, 8])]:
        batch = call(client, {"operation": "create", "component": "doubler", "file": name})["batch"]
        assert batch["source"] == name and batch["total_records"] == 2
        call(client, {"operation": "run", "batch_id": batch["batch_id"]})
        results = call(client, {"operation": "results", "batch_id": batch["batch_id"]})["results"]
        assert [r["result"]["y"] for r in results] == expected
    (settings.data_dir / "bad.jsonl").write_text('{"x": 1}\n[1]\n')
    assert "line 2" in call(client, {"operation": "create", "component": "doubler", "file": "bad.jsonl"}, 422)["detail"]
    (settings.data_dir / "in.txt").write_text("x")
    call(client, {"operation": "create", "component": "doubler", "file": "in.txt"}, 422)
    call(client, {"operation": "create", "component": "doubler", "file": "../outside.jsonl"}, 400)
    call(client, {"operation": "create", "component": "doubler", "file": "missing.jsonl"}, 404)


def test_validation_cancel_and_unknown_ids(client: TestClient, gateway: respx.MockRouter) -> None:
    route = gateway.post("/run/doubler").mock(side_effect=Doubler())
    call(client, {"operation": "create", "component": "doubler"}, 422)  # neither records nor file
    call(client, {"operation": "create", "component": "doubler", "records": [{}], "file": "a.jsonl"}, 422)
    call(client, {"operation": "create", "component": "doubler", "records": [{"x": 1}], "concurrency": 17}, 422)
    call(client, {"operation": "create", "component": "batch_processor", "records": [{"x": 1}]}, 422)
    batch_id = create(client, 3, chunk_size=1)
    cancelled = call(client, {"operation": "cancel", "batch_id": batch_id})["batch"]
    assert cancelled["state"] == "cancelled" and cancelled["chunks"]["cancelled"] == 3
    call(client, {"operation": "cancel", "batch_id": batch_id}, 409)
    call(client, {"operation": "run", "batch_id": batch_id}, 409)
    assert route.call_count == 0
    unknown = "batch-" + "0" * 32
    for op in ("status", "results", "cancel", "run"):
        call(client, {"operation": op, "batch_id": unknown}, 404)
