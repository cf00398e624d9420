"""AsyncOptimizer: the AIMD controller, single-flight dedup, the benchmark and gateway calls (respx-mocked)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import respx

from mlmesh.errors import ServiceUnavailable
from services.framework import RunContext
from services.tier4.async_optimizer import AIMDController, AsyncOptimizerInput, SingleFlight, async_optimizer
from tests.conftest import TEST_TOKEN, make_settings


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return RunContext(component="async_optimizer", settings=make_settings(tmp_path), request_id=None)


def run(ctx: RunContext, **body: object):
    return async_optimizer(AsyncOptimizerInput.model_validate(body), ctx)


def test_aimd_rises_additively_and_halves_on_failure() -> None:
    c = AIMDController(initial=1, min_limit=1, max_limit=10, increase=1, decrease_factor=0.5)
    for expected in [2, 3, 4, 5, 6, 7, 8]:
        c.on_success()
        assert c.limit == expected
    c.on_failure()
    assert c.limit == 4 and c.window == 4
    c.on_failure()
    c.on_failure()
    c.on_failure()
    assert c.limit == 1  # floored at min_limit
    for _ in range(50):
        c.on_success()
    assert c.limit == 10  # capped at max_limit
    assert (c.increases, c.decreases) == (57, 4)


def test_aimd_latency_above_target_counts_as_overload() -> None:
    c = AIMDController(initial=8, max_limit=16, latency_target_s=0.1)
    c.on_success(0.05)
    assert c.limit == 9
    c.on_success(0.5)
    assert c.limit == 4.5 and c.window == 4
    with pytest.raises(ValueError, match="decrease_factor"):
        AIMDController(decrease_factor=1.0)


def test_single_flight_executes_identical_keys_once() -> None:
    executions: list[str] = []

    async def main() -> tuple[list, SingleFlight]:
        flights = SingleFlight()

        async def work(key: str) -> str:
            executions.append(key)
            await asyncio.sleep(0.01)
            return key.upper()

        keys = ["a", "b", "a", "c", "a", "b", "c", "c", "a", "b"]
        return await asyncio.gather(*(flights.run(k, lambda k=k: work(k)) for k in keys)), flights

    results, flights = asyncio.run(main())
    assert sorted(executions) == ["a", "b", "c"]
    assert flights.deduplicated == 7 and flights.executed == 3
    assert [r for r, _ in results] == ["A", "B", "A", "C", "A", "B", "C", "C", "A", "B"]
    assert sum(shared for _, shared in results) == 7


def test_single_flight_shares_failures() -> None:
    async def main() -> list:
        flights = SingleFlight()

        async def boom() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("down")

        return await asyncio.gather(*(flights.run("k", boom) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_benchmark_dedups_respects_limit_and_measures_speed_up(ctx: RunContext) -> None:
    out = run(ctx, mode="benchmark", tasks=32, distinct=4, chunk_kib=64, rounds=3, max_limit=3, seed=5)
    assert out.executed <= 4 and out.executed + out.deduplicated == 32
    assert 1 <= out.peak_in_flight <= 3
    assert out.sequential_s > 0 and out.optimised_s > 0
    assert out.speed_up == pytest.approx(out.sequential_s / out.optimised_s)
    # Eight times less work after dedup: the optimised run must win even on a loaded machine.
    assert out.speed_up > 1
    limits = [p.limit for p in out.limit_timeline]
    assert limits[0] == 1 and max(limits) == 3 and out.limit_decreases == 0
    one = run(ctx, mode="benchmark", tasks=10, distinct=1, chunk_kib=4)
    assert (one.executed, one.deduplicated) == (1, 9)


def test_gateway_calls_dedup_token_and_results(ctx: RunContext) -> None:
    base = ctx.settings.gateway_url
    seen: list[dict] = []

    def reply(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-MLMesh-Token"] == TEST_TOKEN
        body = json.loads(request.content)
        seen.append(body)
        return httpx.Response(200, json={"component": "echo", "component_result": {"got": body}})

    calls = [{"component": "echo", "payload": {"n": i % 3, "x": [1, 2]}} for i in range(6)]
    calls.append({"component": "echo", "payload": {"x": [1, 2], "n": 0}})  # same payload, other key order
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{base}/run/echo").mock(side_effect=reply)
        out = run(ctx, mode="calls", calls=calls, max_limit=4)
    assert route.call_count == 3 and len(seen) == 3
    assert (out.executed, out.deduplicated, out.failures) == (3, 4, 0)
    assert [r.component_result for r in out.results] == [{"got": c["payload"]} for c in calls]
    assert out.sequential_s is None and out.speed_up is None


def test_gateway_failures_shrink_the_limit_and_sequential_is_measured(ctx: RunContext) -> None:
    base = ctx.settings.gateway_url
    calls = [{"component": "flaky", "payload": {"i": i}} for i in range(8)]
    with respx.mock:
        respx.post(f"{base}/run/flaky").mock(return_value=httpx.Response(503, json={"detail": "down"}))
        respx.post(f"{base}/run/bad").mock(return_value=httpx.Response(422, json={"detail": "bad"}))
        out = run(ctx, mode="calls", calls=calls, initial_limit=8, max_limit=8, measure_sequential=True)
        client_error = run(ctx, mode="calls", calls=[{"component": "bad"}], initial_limit=2, max_limit=4)
    assert out.failures == 8 and out.limit_decreases == 8 and out.final_limit == 1
    assert all(r.status == 503 and not r.ok for r in out.results)
    assert out.sequential_s > 0 and out.speed_up is not None
    # A 4xx is the caller's fault, not overload: the limit still grows.
    assert client_error.results[0].status == 422 and client_error.final_limit == 3


def test_unreachable_gateway_is_503(ctx: RunContext, client_for) -> None:
    base = ctx.settings.gateway_url
    with respx.mock:
        respx.post(f"{base}/run/x").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(ServiceUnavailable):
            run(ctx, mode="calls", calls=[{"component": "x"}])
    client = client_for(async_optimizer)
    assert client.post("/run/async_optimizer", json={}).status_code == 422
    for body in (
        {"mode": "calls", "calls": []},
        {"mode": "benchmark", "tasks": 400, "chunk_kib": 1024, "rounds": 20},
        {"mode": "benchmark", "distinct": 400, "chunk_kib": 1024},
    ):
        assert client.post("/run/async_optimizer", json=body).status_code == 422, body
