"""ResourceManager: admission arithmetic, priority/FIFO order, expiry, concurrency and restarts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient

from mlmesh.errors import InvalidInput, NotFound, Overloaded
from services.framework import RunContext
from services.tier4 import resource_manager as rm_module
from services.tier4.resource_manager import ResourceManagerInput, ResourceManagerOutput, resource_manager
from tests.conftest import make_settings

LIMITS = {"cpu_cores": 2.0, "memory_mb": 1000.0}


def context(root: Path, **overrides: Any) -> RunContext:
    return RunContext(component="resource_manager", settings=make_settings(root, **overrides), request_id=None)


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return context(tmp_path)


def call(ctx: RunContext, **body: Any) -> ResourceManagerOutput:
    body.setdefault("limits", LIMITS)
    return resource_manager(ResourceManagerInput.model_validate(body), ctx)


def acquire(ctx: RunContext, name: str, cpu: float, mem: float, **extra: Any) -> ResourceManagerOutput:
    return call(ctx, operation="acquire", name=name, cpu_cores=cpu, memory_mb=mem, **extra)


def test_admission_arithmetic_on_both_resources(ctx: RunContext) -> None:
    a = acquire(ctx, "a", 1.25, 400)
    assert a.item.state == "admitted" and a.item.position is None
    assert a.item.expires_at == pytest.approx(a.item.admitted_at + 300)
    assert (a.reserved.cpu_cores, a.reserved.memory_mb, a.reserved.leases) == (1.25, 400, 1)
    assert a.reserved.cpu_fraction == pytest.approx(1.25 / 2) and a.reserved.memory_fraction == pytest.approx(0.4)
    b = acquire(ctx, "b", 0.75, 600)  # exactly fills both limits: admitted
    assert b.item.state == "admitted"
    assert (b.reserved.cpu_cores, b.reserved.memory_mb) == (2.0, 1000.0)
    c = acquire(ctx, "c", 0.0, 1)  # one MB over the memory limit
    assert c.item.state == "queued" and c.item.position == 1
    d = acquire(ctx, "d", 0.1, 0)  # over the CPU limit
    assert d.item.state == "queued" and d.item.position == 2
    assert [q.name for q in call(ctx, operation="queue").queue] == ["c", "d"]


def test_item_larger_than_a_limit_is_422_naming_the_field(ctx: RunContext) -> None:
    with pytest.raises(InvalidInput) as cpu:
        acquire(ctx, "big", 2.5, 10)
    assert cpu.value.field == "cpu_cores" and "exceeds the limit itself" in cpu.value.detail
    with pytest.raises(InvalidInput) as mem:
        acquire(ctx, "big", 0.1, 1000.5)
    assert mem.value.field == "memory_mb"


def test_release_admits_queued_items_by_priority_then_fifo(ctx: RunContext) -> None:
    blocker = acquire(ctx, "blocker", 2.0, 100)
    low1 = acquire(ctx, "low1", 0.5, 10, priority=1)
    high = acquire(ctx, "high", 0.5, 10, priority=5)
    low2 = acquire(ctx, "low2", 0.5, 10, priority=1)
    high2 = acquire(ctx, "high2", 0.5, 10, priority=5)
    assert (low1.item.position, high.item.position, low2.item.position, high2.item.position) == (1, 1, 3, 2)
    queue = call(ctx, operation="queue").queue
    assert [(q.name, q.position) for q in queue] == [("high", 1), ("high2", 2), ("low1", 3), ("low2", 4)]
    released = call(ctx, operation="release", id=blocker.item.id)
    assert released.item.state == "released"
    assert [a.name for a in released.admitted] == ["high", "high2", "low1", "low2"]
    assert released.reserved.cpu_cores == pytest.approx(2.0) and released.reserved.queued == 0


def test_head_of_line_blocks_smaller_items_behind_it(ctx: RunContext) -> None:
    a = acquire(ctx, "a", 1.5, 10)
    big = acquire(ctx, "big", 1.0, 10)  # does not fit beside a
    small = acquire(ctx, "small", 0.25, 10)  # would fit, but big is ahead of it
    assert big.item.state == small.item.state == "queued"
    assert small.item.position == 2
    # A higher priority item that fits goes straight in: nothing queued ranks ahead of it.
    urgent = acquire(ctx, "urgent", 0.5, 10, priority=9)
    assert urgent.item.state == "admitted"
    released = call(ctx, operation="release", id=a.item.id)
    assert [x.name for x in released.admitted] == ["big", "small"]


def test_withdrawing_a_queued_item_and_unknown_ids(ctx: RunContext) -> None:
    acquire(ctx, "a", 2.0, 10)
    queued = acquire(ctx, "q", 1.0, 10)
    out = call(ctx, operation="release", id=queued.item.id)
    assert out.item.state == "withdrawn" and out.reserved.queued == 0
    with pytest.raises(NotFound, match="released, expired or never issued"):
        call(ctx, operation="release", id=queued.item.id)


def test_expired_leases_are_reclaimed_and_the_queue_moves(ctx: RunContext, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(rm_module, "_now", lambda: clock[0])
    first = acquire(ctx, "short", 2.0, 10, ttl_s=30)
    waiting = acquire(ctx, "waiting", 1.0, 10, ttl_s=60, max_wait_s=100)
    assert first.item.expires_at == 1_000_030.0 and waiting.item.expires_at == 1_000_100.0
    clock[0] += 29.999
    assert call(ctx, operation="status").reserved.leases == 1
    clock[0] = 1_000_030.0  # the lease expires at its expiry time
    status = call(ctx, operation="status")
    assert status.reclaimed == 1
    assert [lease.name for lease in status.leases] == ["waiting"]
    assert status.leases[0].admitted_at == 1_000_030.0 and status.leases[0].expires_at == 1_000_090.0
    with pytest.raises(NotFound):
        call(ctx, operation="release", id=first.item.id)


def test_queued_items_give_up_after_max_wait(ctx: RunContext, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [5_000.0]
    monkeypatch.setattr(rm_module, "_now", lambda: clock[0])
    acquire(ctx, "holder", 2.0, 10, ttl_s=1000)
    acquire(ctx, "impatient", 1.0, 10, max_wait_s=5)
    clock[0] += 5
    out = call(ctx, operation="queue")
    assert out.reclaimed == 1 and out.queue == [] and out.reserved.leases == 1


def test_concurrent_acquires_never_exceed_the_limit(tmp_path: Path) -> None:
    shared = context(tmp_path)
    results: list[ResourceManagerOutput] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(5):
            out = acquire(shared, f"w{i}-{j}", 0.3, 50)
            with lock:
                results.append(out)
        for db in shared.databases.values():
            db.close()  # this thread's connection (StateDB keeps one per thread)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = [r for r in results if r.item.state == "admitted"]
    # floor(2.0 / 0.3) = 6 fit; the other 34 queue behind them.
    assert len(admitted) == 6 and len(results) == 40
    assert all(r.reserved.cpu_cores <= 2.0 + 1e-9 for r in results)
    status = call(shared, operation="status")
    assert status.reserved.cpu_cores == pytest.approx(1.8) and status.reserved.queued == 34
    assert sorted(q.position for q in status.queue) == list(range(1, 35))


def test_leases_survive_a_restart(tmp_path: Path) -> None:
    before = context(tmp_path)
    lease = acquire(before, "durable", 1.0, 100)
    queued = acquire(before, "queued", 1.5, 100)
    for db in before.databases.values():
        db.close()
    after = context(tmp_path)  # a new service process: fresh connections, same data directory
    status = call(after, operation="status")
    assert [x.id for x in status.leases] == [lease.item.id]
    assert [x.id for x in status.queue] == [queued.item.id]
    released = call(after, operation="release", id=lease.item.id)
    assert [x.id for x in released.admitted] == [queued.item.id]


def test_limits_default_to_settings_times_this_machine(tmp_path: Path) -> None:
    ctx = context(tmp_path, resources={"cpu_limit_percent": 50, "memory_limit_percent": 25, "disk_min_free_gb": 0})
    out = resource_manager(ResourceManagerInput.model_validate({"operation": "status"}), ctx)
    assert out.limits.source == "settings"
    assert out.limits.cpu_cores == pytest.approx((psutil.cpu_count() or 1) * 0.5)
    assert out.limits.memory_mb == pytest.approx(psutil.virtual_memory().total / 2**20 * 0.25)
    assert out.usage is not None and out.usage.memory_total_mb == pytest.approx(psutil.virtual_memory().total / 2**20)
    assert out.usage.disk_free_gb == pytest.approx(psutil.disk_usage(str(ctx.data_dir)).free / 1e9, rel=0.01)


def test_no_work_is_taken_below_the_disk_floor(tmp_path: Path) -> None:
    ctx = context(tmp_path, resources={"disk_min_free_gb": 1e6})
    with pytest.raises(Overloaded, match="GB free in the data directory"):
        acquire(ctx, "a", 0.1, 1)


def test_bad_input_over_http(client_for: Callable[..., TestClient]) -> None:
    client = client_for(resource_manager)
    url = "/run/resource_manager"
    r = client.post(url, json={"operation": "acquire", "name": "x", "cpu_cores": -1, "memory_mb": 1})
    assert r.status_code == 422 and "cpu_cores" in r.json()["detail"]
    r = client.post(url, json={"operation": "acquire", "name": "x", "cpu_cores": 3, "memory_mb": 1, "limits": LIMITS})
    assert r.status_code == 422 and "cpu_cores" in r.json()["detail"]
    r = client.post(url, json={"operation": "release", "id": "nope"})
    assert r.status_code == 404
    ok = client.post(
        url, json={"operation": "acquire", "name": "x", "cpu_cores": 0.5, "memory_mb": 1, "limits": LIMITS}
    )
    assert ok.status_code == 200 and ok.json()["component_result"]["item"]["state"] == "admitted"


def test_subnormal_limits_are_refused_over_http(client_for: Callable[..., TestClient]) -> None:
    # Regression (slow schemathesis): with a lease held, limits.cpu_cores = 5e-324 made reserved / limit inf (a 500).
    client = client_for(resource_manager)
    url = "/run/resource_manager"
    held = {"operation": "acquire", "name": "held", "cpu_cores": 1.5, "memory_mb": 300, "limits": LIMITS}
    assert client.post(url, json=held).status_code == 200
    for field, limits in (
        ("cpu_cores", {"cpu_cores": 5e-324, "memory_mb": 1073741823.0}),
        ("memory_mb", {"cpu_cores": 2.0, "memory_mb": 5e-324}),
    ):
        body = {"operation": "acquire", "name": "0", "cpu_cores": 0.0, "memory_mb": 0.0, "limits": limits}
        r = client.post(url, json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(f"acquire.limits.{field}:"), r.text
    # The smallest accepted limits keep the fractions finite: the held lease is 1500× and 300,000× over them.
    r = client.post(url, json={"operation": "status", "limits": {"cpu_cores": 1e-3, "memory_mb": 1e-3}})
    reserved = r.json()["component_result"]["reserved"]
    assert reserved["cpu_fraction"] == pytest.approx(1500) and reserved["memory_fraction"] == pytest.approx(3e5)
