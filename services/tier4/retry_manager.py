"""Retry policies on tenacity and per-operation circuit breakers on pybreaker.

* ``schedule`` — the backoff delays a policy gives: tenacity's own wait and stop strategy objects are
  called with a :class:`tenacity.RetryCallState` driven on a virtual clock (no sleeping). Full jitter
  is tenacity's ``wait_random_exponential`` with its uniform draw taken from the request's seed
  (tenacity draws from the global ``random`` module, which a service must not reseed).
* ``classify`` — HTTP statuses and exception names → transient (worth retrying) or permanent.
* ``simulate`` — calls against a policy and a circuit breaker on a virtual clock: when each attempt
  happens, when the breaker opens, how long the whole run takes.
* ``record`` / ``breakers`` — real per-operation breakers kept in ``ctx.resources``: feed outcomes
  of an operation to its breaker, and read every breaker's state.

The deadline is tenacity's ``stop_before_delay``: no retry is scheduled whose sleep would end at or
after the deadline, so every scheduled attempt starts before it.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from typing import Annotated, Any, Literal

import numpy as np
import pybreaker
import tenacity
from pydantic import Field, RootModel

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, Seed, component

__all__ = [
    "BreakerState",
    "RetryBreakersOp",
    "RetryClassifyOp",
    "RetryManagerInput",
    "RetryManagerOutput",
    "RetryPolicy",
    "RetryRecordOp",
    "RetryScheduleOp",
    "RetrySimulateOp",
    "SeededFullJitter",
    "classify_outcome",
    "retry_manager",
    "wait_strategy",
]

_RESOURCE = "retry_manager.breakers"
_LOCK = threading.Lock()
TRANSIENT_STATUSES = {
    408: "request timeout",
    429: "rate limited",
    502: "bad gateway",
    503: "unavailable",
    504: "gateway timeout",
}
# Exception names (last dotted part) that mean "the network or the peer hiccupped", by family.
_TIMEOUT_NAMES = {
    "timeout",
    "timeouterror",
    "timeoutexception",
    "readtimeout",
    "connecttimeout",
    "writetimeout",
    "pooltimeout",
    "timeoutexpired",
    "querycanceled",
    "deadlineexceeded",
}
_CONNECTION_NAMES = {
    "connectionerror",
    "connecterror",
    "networkerror",
    "remoteprotocolerror",
    "readerror",
    "writeerror",
    "connectionreseterror",
    "connectionrefusederror",
    "connectionabortederror",
    "brokenpipeerror",
    "operationalerror",
    "serverdisconnectederror",
    "clientconnectionerror",
    "busyloadingerror",
    "tryagain",
}
Outcome = Annotated[
    int | str,
    Field(description="an HTTP status (100–599) or an exception name such as 'TimeoutError', 'httpx.ConnectError'"),
]


class RetryPolicy(ComponentInput):
    """Exponential backoff ``min(cap, base·2^(n-1))`` before retry n, optional full jitter, bounded attempts."""

    base_s: float = Field(0.1, gt=0, le=60, description="first backoff bound in seconds (tenacity multiplier)")
    cap_s: float = Field(10.0, gt=0, le=3600, description="largest backoff in seconds (tenacity max)")
    jitter: Literal["full", "none"] = Field("full", description="full: uniform in [0, bound]; none: the bound")
    max_attempts: int = Field(5, ge=1, le=50, description="attempts in all, the first included")
    deadline_s: float | None = Field(None, gt=0, le=86400, description="no retry may start at or after this")


class RetryScheduleOp(ComponentInput):
    """The exact delays the policy would sleep between attempts."""

    operation: Literal["schedule"]
    policy: RetryPolicy = Field(default_factory=RetryPolicy)
    attempt_duration_s: float = Field(0.0, ge=0, le=3600, description="time each failing attempt takes")
    seed: Seed = 0


class RetryClassifyOp(ComponentInput):
    """Transient or permanent, for each status or exception name."""

    operation: Literal["classify"]
    outcomes: list[Outcome] = Field(min_length=1, max_length=500)


class RetrySimulateOp(ComponentInput):
    """Calls through a policy and a circuit breaker on a virtual clock."""

    operation: Literal["simulate"]
    policy: RetryPolicy = Field(default_factory=RetryPolicy)
    calls: int = Field(10, ge=1, le=500, description="calls made, one after another")
    call_interval_s: float = Field(1.0, ge=0, le=3600, description="time between call starts (at least)")
    attempt_duration_s: float = Field(0.05, ge=0, le=3600, description="time each attempt takes")
    outcomes: list[Outcome] | None = Field(
        None, max_length=5000, description="outcome of each attempt in order (200 once exhausted)"
    )
    failure_rate: float = Field(0.3, ge=0, le=1, description="P(503) per attempt when outcomes are not given")
    fail_max: int = Field(5, ge=1, le=1000, description="consecutive failures that open the breaker")
    reset_timeout_s: float = Field(30.0, gt=0, le=86400, description="open time before a trial call")
    seed: Seed = 0


class RetryRecordOp(ComponentInput):
    """Feed real outcomes of an operation to its circuit breaker (created on first use)."""

    operation: Literal["record"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    outcomes: list[Outcome] = Field(min_length=1, max_length=1000)
    fail_max: int = Field(5, ge=1, le=1000, description="used when the breaker is created")
    reset_timeout_s: float = Field(30.0, gt=0, le=86400, description="used when the breaker is created")


class RetryBreakersOp(ComponentInput):
    """State of every named breaker of this service."""

    operation: Literal["breakers"]


class RetryManagerInput(
    RootModel[
        Annotated[
            RetryScheduleOp | RetryClassifyOp | RetrySimulateOp | RetryRecordOp | RetryBreakersOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One retry-manager operation, chosen by ``operation``."""


class Classification(ComponentOutput):
    outcome: int | str
    kind: Literal["success", "transient", "permanent"]
    reason: str


class Attempt(ComponentOutput):
    call: int
    attempt: int
    start_s: float
    outcome: str = Field(description="status, exception name, or 'rejected' when the breaker is open")
    kind: Literal["success", "transient", "permanent", "rejected"]
    breaker_state: str = Field(description="breaker state after the attempt")


class BreakerState(ComponentOutput):
    name: str
    state: str
    fail_counter: int
    fail_max: int
    reset_timeout_s: float


class RetryManagerOutput(ComponentOutput):
    operation: str
    delays_s: list[float] | None = Field(None, description="schedule: sleep before retry 1, 2, …")
    upper_bounds_s: list[float] | None = Field(None, description="schedule: min(cap, base·2^(n-1)) per retry")
    attempts: int | None = Field(None, description="schedule: attempts the policy allows before stopping")
    stop_reason: Literal["max_attempts", "deadline"] | None = None
    total_sleep_s: float | None = None
    classifications: list[Classification] | None = None
    timeline: list[Attempt] | None = Field(None, description="simulate: every attempt (first 1000)")
    breaker_opened_at_s: list[float] | None = Field(None, description="simulate: virtual times the breaker opened")
    calls_succeeded: int | None = None
    calls_failed: int | None = None
    calls_rejected: int | None = None
    total_time_s: float | None = None
    breakers: list[BreakerState] | None = None


class SeededFullJitter(tenacity.wait_random_exponential):
    """tenacity's full-jitter wait, drawing its uniform from a seeded generator instead of ``random``."""

    def __init__(self, rng: np.random.Generator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        high = tenacity.wait_exponential.__call__(self, retry_state)
        return float(self._rng.uniform(self.min, high))


def wait_strategy(policy: RetryPolicy, rng: np.random.Generator) -> tenacity.wait.wait_base:
    """The tenacity wait object of ``policy``."""
    if policy.jitter == "none":
        return tenacity.wait_exponential(multiplier=policy.base_s, max=policy.cap_s, exp_base=2)
    return SeededFullJitter(rng, multiplier=policy.base_s, max=policy.cap_s, exp_base=2)


def _stops(policy: RetryPolicy) -> tuple[tenacity.stop.stop_base, tenacity.stop.stop_base | None]:
    deadline = tenacity.stop_before_delay(policy.deadline_s) if policy.deadline_s is not None else None
    return tenacity.stop_after_attempt(policy.max_attempts), deadline


class _VirtualCall:
    """A RetryCallState whose clock is ours: outcome times are set, never read from time.monotonic()."""

    def __init__(self, policy: RetryPolicy, wait: tenacity.wait.wait_base, start: float) -> None:
        self.state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        self.state.start_time = start
        self.wait = wait
        self.by_attempts, self.by_deadline = _stops(policy)

    def after_failure(self, now: float) -> tuple[float | None, str | None]:
        """(sleep before the next attempt, None) or (None, why it stops) — tenacity's order: wait, then stop."""
        self.state.outcome_timestamp = now
        self.state.upcoming_sleep = self.wait(self.state)
        if self.by_attempts(self.state):
            return None, "max_attempts"
        if self.by_deadline is not None and self.by_deadline(self.state):
            return None, "deadline"
        sleep = self.state.upcoming_sleep
        self.state.idle_for += sleep
        self.state.prepare_for_next_attempt()
        return sleep, None


def classify_outcome(outcome: int | str) -> tuple[str, str]:
    """``(kind, reason)`` for an HTTP status or an exception name."""
    if isinstance(outcome, int):
        if not 100 <= outcome <= 599:
            raise InvalidInput("outcomes", f"HTTP statuses are 100–599; got {outcome}")
        if outcome < 400:
            return "success", f"{outcome} is not an error"
        if outcome in TRANSIENT_STATUSES:
            return "transient", f"{outcome} {TRANSIENT_STATUSES[outcome]}: the same request may succeed later"
        if outcome < 500:
            return "permanent", f"{outcome} is a client error: the request itself must change"
        return "permanent", f"{outcome} is a server error that a retry of the same request rarely fixes"
    text = outcome.strip()
    if text.isdigit():
        return classify_outcome(int(text))
    last = text.rsplit(".", 1)[-1]
    builtin = getattr(builtins, last, None)
    if (isinstance(builtin, type) and issubclass(builtin, TimeoutError)) or last.lower() in _TIMEOUT_NAMES:
        return "transient", f"{text} is a timeout: the peer may answer in time on a retry"
    if (isinstance(builtin, type) and issubclass(builtin, ConnectionError)) or last.lower() in _CONNECTION_NAMES:
        return "transient", f"{text} is a connection error: a new connection may succeed"
    return "permanent", f"{text} is not a known transient error kind; retrying it would repeat the failure"


class _Breakers(dict[str, pybreaker.CircuitBreaker]):
    """The service's breakers by operation name (lives in ``ctx.resources``, whose entries close at shutdown)."""

    def close(self) -> None:
        """Nothing to release (called when the service stops)."""


def _breakers(ctx: RunContext) -> dict[str, pybreaker.CircuitBreaker]:
    with _LOCK:
        return ctx.resources.setdefault(_RESOURCE, _Breakers())


def _breaker_state(name: str, breaker: pybreaker.CircuitBreaker) -> BreakerState:
    return BreakerState(
        name=name,
        state=str(breaker.current_state),
        fail_counter=breaker.fail_counter,
        fail_max=breaker.fail_max,
        reset_timeout_s=float(breaker.reset_timeout),
    )


class _Transient(Exception):
    """A failure the breaker counts."""


class _Permanent(Exception):
    """A failure the breaker ignores: the dependency answered, the request was wrong."""


def _feed(breaker: pybreaker.CircuitBreaker, kind: str) -> None:
    def attempt() -> None:
        if kind == "transient":
            raise _Transient
        if kind == "permanent":
            raise _Permanent

    # The breaker has counted the failure; the caller reads the resulting state.
    with contextlib.suppress(_Transient, _Permanent, pybreaker.CircuitBreakerError):
        breaker.call(attempt)


def _schedule(op: RetryScheduleOp) -> RetryManagerOutput:
    policy = op.policy
    call = _VirtualCall(policy, wait_strategy(policy, np.random.default_rng(op.seed)), 0.0)
    delays: list[float] = []
    bounds: list[float] = []
    now = op.attempt_duration_s
    while True:
        bound = min(policy.cap_s, policy.base_s * 2.0 ** (call.state.attempt_number - 1))
        sleep, reason = call.after_failure(now)
        if sleep is None:
            break
        delays.append(sleep)
        bounds.append(bound)
        now += sleep + op.attempt_duration_s
    return RetryManagerOutput(
        operation="schedule",
        delays_s=delays,
        upper_bounds_s=bounds,
        attempts=len(delays) + 1,
        stop_reason=reason,
        total_sleep_s=float(sum(delays)),
    )


def _simulate(op: RetrySimulateOp) -> RetryManagerOutput:
    rng = np.random.default_rng(op.seed)
    wait = wait_strategy(op.policy, rng)
    # A fresh breaker per simulation; its open → half-open transition follows the virtual clock below.
    breaker = pybreaker.CircuitBreaker(fail_max=op.fail_max, reset_timeout=op.reset_timeout_s, exclude=[_Permanent])
    scripted = list(op.outcomes or [])
    timeline: list[Attempt] = []
    opened: list[float] = []
    opened_at = 0.0
    now = 0.0
    succeeded = failed = rejected = 0
    for index in range(op.calls):
        now = max(now, index * op.call_interval_s)
        call = _VirtualCall(op.policy, wait, now)
        while True:
            if breaker.current_state == pybreaker.STATE_OPEN:
                if now < opened_at + op.reset_timeout_s:
                    rejected += 1
                    timeline.append(
                        Attempt(
                            call=index,
                            attempt=call.state.attempt_number,
                            start_s=now,
                            outcome="rejected",
                            kind="rejected",
                            breaker_state="open",
                        )
                    )
                    break
                breaker.half_open()
            if scripted:
                outcome: int | str = scripted.pop(0)
            else:
                outcome = 503 if rng.random() < op.failure_rate else 200
            kind, _ = classify_outcome(outcome)
            before = breaker.current_state
            _feed(breaker, kind)
            state = breaker.current_state
            if state == pybreaker.STATE_OPEN and before != pybreaker.STATE_OPEN:
                opened_at = now + op.attempt_duration_s
                opened.append(opened_at)
            timeline.append(
                Attempt(
                    call=index,
                    attempt=call.state.attempt_number,
                    start_s=now,
                    outcome=str(outcome),
                    kind=kind,
                    breaker_state=str(state),
                )
            )
            now += op.attempt_duration_s
            if kind == "success":
                succeeded += 1
                break
            if kind == "permanent":
                failed += 1
                break
            sleep, _ = call.after_failure(now)
            if sleep is None:
                failed += 1
                break
            now += sleep
    return RetryManagerOutput(
        operation="simulate",
        timeline=timeline[:1000],
        breaker_opened_at_s=opened,
        calls_succeeded=succeeded,
        calls_failed=failed,
        calls_rejected=rejected,
        total_time_s=now,
    )


@component(
    "RetryManager",
    tier="tier4",
    capabilities=["retry_policy", "backoff", "circuit_breaker", "error_classification"],
    example={"operation": "schedule", "policy": {"base_s": 0.1, "cap_s": 5, "max_attempts": 6}, "seed": 7},
    examples=[
        {"operation": "classify", "outcomes": [429, 404, 503, "TimeoutError", "ValueError"]},
        {"operation": "simulate", "calls": 20, "failure_rate": 0.6, "fail_max": 3, "seed": 1},
        {"operation": "breakers"},
    ],
    deterministic=False,
)
def retry_manager(request: RetryManagerInput, ctx: RunContext) -> RetryManagerOutput:
    """Retry policies (exponential backoff, full jitter, deadlines), error classification and circuit breakers.

    ``schedule`` gives the delays tenacity's strategies produce for a policy and seed; ``classify`` sorts
    statuses and exception names into transient and permanent; ``simulate`` runs calls through a policy
    and a pybreaker breaker on a virtual clock; ``record`` and ``breakers`` keep real per-operation
    breakers for this service.
    """
    op = request.root
    if isinstance(op, RetryScheduleOp):
        return _schedule(op)
    if isinstance(op, RetryClassifyOp):
        rows = [Classification(outcome=o, kind=k, reason=r) for o in op.outcomes for k, r in [classify_outcome(o)]]
        return RetryManagerOutput(operation="classify", classifications=rows)
    if isinstance(op, RetrySimulateOp):
        return _simulate(op)
    breakers = _breakers(ctx)
    if isinstance(op, RetryRecordOp):
        kinds = [classify_outcome(o)[0] for o in op.outcomes]
        with _LOCK:
            breaker = breakers.get(op.name)
            if breaker is None:
                breaker = breakers[op.name] = pybreaker.CircuitBreaker(
                    fail_max=op.fail_max, reset_timeout=op.reset_timeout_s, exclude=[_Permanent], name=op.name
                )
        for kind in kinds:
            _feed(breaker, kind)
        return RetryManagerOutput(operation="record", breakers=[_breaker_state(op.name, breaker)])
    with _LOCK:
        items = sorted(breakers.items())
    return RetryManagerOutput(operation="breakers", breakers=[_breaker_state(n, b) for n, b in items])
