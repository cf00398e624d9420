"""RetryManager: delays checked against tenacity's own wait_exponential, deadlines, classification, breakers."""

from __future__ import annotations

from pathlib import Path

import pytest
import tenacity
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.retry_manager import RetryManagerInput, retry_manager
from tests.conftest import AUTH, make_settings


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return RunContext(component="retry_manager", settings=make_settings(tmp_path), request_id=None)


def run(ctx: RunContext, **body: object):
    return retry_manager(RetryManagerInput.model_validate(body), ctx)


def _tenacity_wait(multiplier: float, cap: float, attempts: int) -> list[float]:
    # tenacity's own strategy, driven by the attempt number exactly as Retrying does.
    wait = tenacity.wait_exponential(multiplier=multiplier, max=cap)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    out = []
    for n in range(1, attempts):
        state.attempt_number = n
        out.append(wait(state))
    return out


# The context is only a carrier here (schedule keeps no state), so sharing it across examples is safe.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.floats(0.01, 5),
    cap=st.floats(0.05, 100),
    attempts=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_full_jitter_delays_within_bounds(base: float, cap: float, attempts: int, seed: int, ctx: RunContext) -> None:
    out = run(
        ctx,
        operation="schedule",
        seed=seed,
        policy={"base_s": base, "cap_s": cap, "max_attempts": attempts, "jitter": "full"},
    )
    assert len(out.delays_s) == attempts - 1
    for n, delay in enumerate(out.delays_s):
        assert 0.0 <= delay <= min(cap, base * 2.0**n) + 1e-12


def test_no_jitter_equals_tenacity_wait_exponential(ctx: RunContext) -> None:
    out = run(ctx, operation="schedule", policy={"base_s": 0.3, "cap_s": 7, "max_attempts": 9, "jitter": "none"})
    assert out.delays_s == pytest.approx(_tenacity_wait(0.3, 7, 9), abs=0, rel=1e-15)
    # Independent closed form as well: min(cap, base * 2^(n-1)).
    assert out.delays_s == pytest.approx([min(7, 0.3 * 2**n) for n in range(8)])
    assert out.stop_reason == "max_attempts" and out.attempts == 9


def test_same_seed_same_schedule_and_seeds_differ(ctx: RunContext) -> None:
    a = run(ctx, operation="schedule", seed=3, policy={"max_attempts": 10})
    b = run(ctx, operation="schedule", seed=3, policy={"max_attempts": 10})
    c = run(ctx, operation="schedule", seed=4, policy={"max_attempts": 10})
    assert a.delays_s == b.delays_s != c.delays_s


@pytest.mark.parametrize("duration", [0.0, 0.5])
def test_deadline_respected(ctx: RunContext, duration: float) -> None:
    policy = {"base_s": 1, "cap_s": 100, "max_attempts": 50, "jitter": "none", "deadline_s": 20}
    out = run(ctx, operation="schedule", policy=policy, attempt_duration_s=duration)
    assert out.stop_reason == "deadline"
    # Every attempt starts before the deadline, and the next backoff would have crossed it.
    starts, now = [0.0], duration
    for d in out.delays_s:
        now += d
        starts.append(now)
        now += duration
    assert max(starts) < 20
    next_delay = min(100, 2.0 ** len(out.delays_s))
    assert now + next_delay >= 20


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (429, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (408, "transient"),
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (422, "permanent"),
        (200, "success"),
        (500, "permanent"),
        ("TimeoutError", "transient"),
        ("httpx.ReadTimeout", "transient"),
        ("ConnectionResetError", "transient"),
        ("httpx.ConnectError", "transient"),
        ("redis.exceptions.ConnectionError", "transient"),
        ("ValueError", "permanent"),
        ("KeyError", "permanent"),
        ("503", "transient"),
    ],
)
def test_classification_table(ctx: RunContext, outcome: int | str, kind: str) -> None:
    row = run(ctx, operation="classify", outcomes=[outcome]).classifications[0]
    assert row.kind == kind and row.reason


def test_classify_rejects_impossible_status(ctx: RunContext) -> None:
    from mlmesh.errors import InvalidInput

    with pytest.raises(InvalidInput):
        run(ctx, operation="classify", outcomes=[42])


def test_simulate_breaker_opens_after_fail_max_consecutive_failures(ctx: RunContext) -> None:
    # One attempt per call, so every call is one breaker failure; fail_max=3 → open after the 3rd.
    out = run(
        ctx,
        operation="simulate",
        calls=6,
        call_interval_s=1,
        attempt_duration_s=0.1,
        outcomes=[503, 503, 503, 503],
        fail_max=3,
        reset_timeout_s=100,
        policy={"max_attempts": 1},
    )
    kinds = [a.kind for a in out.timeline]
    assert kinds == ["transient", "transient", "transient", "rejected", "rejected", "rejected"]
    assert out.breaker_opened_at_s == pytest.approx([2.1])
    assert (out.calls_failed, out.calls_rejected, out.calls_succeeded) == (3, 3, 0)


def test_simulate_success_resets_and_half_open_recovers(ctx: RunContext) -> None:
    out = run(
        ctx,
        operation="simulate",
        calls=6,
        call_interval_s=10,
        attempt_duration_s=0.0,
        outcomes=[503, 503, 200, 503, 503],
        fail_max=3,
        reset_timeout_s=15,
        policy={"max_attempts": 1},
    )
    # A success between failures resets the count: the breaker never opens.
    assert out.breaker_opened_at_s == []
    assert out.calls_succeeded == 2  # the 200 and the final call (outcomes exhausted → 200)


def test_simulate_retries_follow_schedule(ctx: RunContext) -> None:
    policy = {"base_s": 0.5, "cap_s": 10, "max_attempts": 4, "jitter": "none"}
    out = run(
        ctx,
        operation="simulate",
        calls=1,
        attempt_duration_s=0.0,
        outcomes=[503, 503, 503, 200],
        fail_max=10,
        policy=policy,
    )
    assert [a.start_s for a in out.timeline] == pytest.approx([0, 0.5, 1.5, 3.5])
    assert out.calls_succeeded == 1 and out.total_time_s == pytest.approx(3.5)


def test_record_and_breakers_in_resources(ctx: RunContext) -> None:
    out = run(ctx, operation="record", name="db.query", outcomes=[503, "TimeoutError"], fail_max=2)
    assert out.breakers[0].state == "open"
    run(ctx, operation="record", name="cache", outcomes=[200, 404])
    listed = {b.name: b for b in run(ctx, operation="breakers").breakers}
    assert listed["db.query"].state == "open" and listed["cache"].state == "closed"
    # Permanent errors do not count against the dependency.
    assert listed["cache"].fail_counter == 0


def test_http_example_and_bad_input(client_for) -> None:
    client = client_for(retry_manager)
    r = client.post("/run/retry_manager", json={"operation": "schedule", "policy": {"max_attempts": 0}})
    assert r.status_code == 422
    r = client.post("/run/retry_manager", json={"operation": "classify", "outcomes": [503]})
    assert r.status_code == 200
    assert r.json()["component_result"]["classifications"][0]["kind"] == "transient"


def test_service_stops_cleanly_after_recording(tmp_path: Path) -> None:
    # Regression (slow schemathesis run): the breakers lived in ctx.resources as a plain dict, so the service's
    # shutdown, which closes every resource, raised AttributeError. Stop and start twice over the same resources.
    app = create_app("tier4", settings=make_settings(tmp_path), components=[retry_manager], announce=False)
    for expected_failures in (1, 2):
        with TestClient(app, headers=AUTH) as client:
            body = {"operation": "record", "name": "db.query", "outcomes": [503], "fail_max": 5}
            r = client.post("/run/retry_manager", json=body)
            assert r.status_code == 200
            listed = client.post("/run/retry_manager", json={"operation": "breakers"}).json()["component_result"]
            assert listed["breakers"][0]["fail_counter"] == expected_failures
