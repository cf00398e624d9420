"""ConnectionPoolManager on the real PostgreSQL: exhaustion → 503, 10,000 checkouts with failures, Little's law."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from mlmesh.errors import ServiceUnavailable
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier4.connection_pool_manager import ConnectionPoolManagerInput, connection_pool_manager
from tests.conftest import make_settings

DB_URL = "postgresql://127.0.0.1:5432/test"


def small_pool_ctx(tmp_path: Path, *, size: int, timeout: float) -> RunContext:
    """A run context whose service pool (the key pg_pool uses) is a small pool we control."""
    ctx = RunContext(
        component="connection_pool_manager", settings=make_settings(tmp_path, database_url=DB_URL), request_id=None
    )
    pool = ConnectionPool(
        DB_URL, min_size=size, max_size=size, timeout=timeout, kwargs={"autocommit": True}, open=False, name="t"
    )
    pool.open(wait=True, timeout=5)
    ctx.resources[f"postgres:{DB_URL}"] = pool
    return ctx


@pytest.fixture
def ctx2(tmp_path: Path) -> Iterator[RunContext]:
    ctx = small_pool_ctx(tmp_path, size=2, timeout=0.5)
    yield ctx
    for resource in ctx.resources.values():
        resource.close()


def run(ctx: RunContext, **body: object):
    return connection_pool_manager(ConnectionPoolManagerInput.model_validate(body), ctx)


def test_exhausted_pool_waits_the_timeout_then_503(ctx2: RunContext) -> None:
    pool: ConnectionPool = ctx2.resources[f"postgres:{DB_URL}"]
    held, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with pool.connection():
            held.wait()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    held.wait()
    try:
        start = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as err:
            run(ctx2, operation="probe")
        waited = time.perf_counter() - start
    finally:
        release.set()
        for t in threads:
            t.join()
    assert 0.45 <= waited < 5.0  # the pool timeout (0.5 s) and some scheduling slack, not forever
    assert "exhausted" in err.value.detail
    ok = run(ctx2, operation="probe")  # freed: served at once
    assert ok.wait_ms is not None and ok.wait_ms < 500
    assert ok.postgres is not None and ok.postgres.requests_errors >= 1


def test_ten_thousand_checkouts_with_failures_return_every_connection(tmp_path: Path) -> None:
    ctx = small_pool_ctx(tmp_path, size=4, timeout=5.0)
    try:
        out = run(ctx, operation="exercise", checkouts=10_000, concurrency=4, failure_rate=0.2, seed=7)
        result, after = out.exercise, out.postgres_after
        assert result is not None and after is not None
        assert result.checkouts == 10_000 and result.timed_out == 0
        assert result.injected_failures + result.completed == 10_000
        assert 1800 <= result.injected_failures <= 2200  # ~20 % (seeded)
        assert result.all_returned
        # The same check straight from psycopg_pool, independently of the component's flag.
        stats = ctx.resources[f"postgres:{DB_URL}"].get_stats()
        assert stats["pool_available"] == stats["pool_size"] == 4
        assert stats["requests_waiting"] == 0
        assert after.requests_num - (out.postgres.requests_num if out.postgres else 0) == 10_000
    finally:
        for resource in ctx.resources.values():
            resource.close()


def test_exercise_measures_waits_when_pool_is_smaller_than_concurrency(ctx2: RunContext) -> None:
    out = run(ctx2, operation="exercise", checkouts=12, concurrency=6, hold_ms=50)
    result = out.exercise
    assert result is not None and result.completed == 12 and result.all_returned
    # 12 holds of 50 ms on 2 connections: at least 6 rounds, and somebody waited about a hold.
    assert result.elapsed_s >= 0.3
    assert result.wait_ms_max >= 40


def test_littles_law_by_hand(settings: Settings) -> None:
    ctx = RunContext(component="connection_pool_manager", settings=settings, request_id=None)
    out = run(ctx, operation="advise", arrival_rate_per_s=200, mean_hold_ms=15, headroom=0.3)
    advice = out.advice
    assert advice is not None
    # L = 200/s · 0.015 s = 3 busy connections; 3 · 1.3 = 3.9 → 4.
    assert advice.concurrency_l == pytest.approx(3.0)
    assert advice.recommended_max_size == 4
    assert advice.measured == []
    other = run(ctx, operation="advise", arrival_rate_per_s=1000, mean_hold_ms=42, headroom=0.5).advice
    assert other is not None and other.recommended_max_size == math.ceil(1000 * 0.042 * 1.5)  # 63


def test_advise_measures_live_traffic(ctx2: RunContext) -> None:
    pool: ConnectionPool = ctx2.resources[f"postgres:{DB_URL}"]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.01)")
            time.sleep(0.01)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        advice = run(ctx2, operation="advise", sample_s=0.5).advice
    finally:
        stop.set()
        worker.join()
    assert advice is not None and set(advice.measured) == {"arrival_rate_per_s", "mean_hold_ms"}
    assert 10 <= advice.arrival_rate_per_s <= 60  # one thread: at most one checkout per ~20 ms
    assert 5 <= advice.mean_hold_ms <= 100
    assert advice.current_max_size == 2


def test_status_and_stats_without_database(settings: Settings, client_for) -> None:
    ctx = RunContext(component="connection_pool_manager", settings=settings, request_id=None)
    status = run(ctx, operation="status")
    assert status.configured is False and status.postgres is None
    client = client_for(connection_pool_manager)
    r = client.post("/run/connection_pool_manager", json={"operation": "stats"})
    assert r.status_code == 503 and "MLMESH_DATABASE_URL" in r.json()["detail"]
    r = client.post("/run/connection_pool_manager", json={"operation": "advise", "headroom": 11})
    assert r.status_code == 422 and "headroom" in r.json()["detail"]


def test_stats_reports_psycopg_pool(ctx2: RunContext) -> None:
    out = run(ctx2, operation="stats")
    assert out.postgres is not None
    assert out.postgres.pool_max == 2 and out.postgres.pool_size == 2 and out.postgres.timeout_s == 0.5
