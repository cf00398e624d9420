"""Known-answer, regret, concurrency and persistence tests for the bandit framework."""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from mlmesh.errors import Conflict, InvalidInput, NotFound
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier2.multiarmed_bandit_framework import (
    MultiarmedBanditFrameworkInput,
    MultiarmedBanditFrameworkOutput,
    multiarmed_bandit_framework,
)
from tests.conftest import AUTH, make_settings

ROUTE = "/run/multiarmed_bandit_framework"


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """One context (and so one database) for the pure known-answer tests; ids are unique per test."""
    return RunContext(
        component="multiarmed_bandit_framework",
        settings=make_settings(tmp_path_factory.mktemp("bandit")),
        request_id=None,
    )


def run(ctx: RunContext, **body: Any) -> MultiarmedBanditFrameworkOutput:
    return multiarmed_bandit_framework(MultiarmedBanditFrameworkInput.model_validate(body), ctx)


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def create(ctx: RunContext, arms: list[str], algorithm: str, **extra: Any) -> str:
    eid = new_id()
    run(ctx, operation="create", experiment_id=eid, arms=arms, algorithm=algorithm, **extra)
    return eid


def summary(ctx: RunContext, eid: str, **extra: Any) -> Any:
    out = run(ctx, operation="summary", experiment_id=eid, **extra).summary
    assert out is not None
    return out


# ----------------------------------------------------------------------------- UCB1


def test_ucb1_index_matches_hand_computation(module_ctx: RunContext) -> None:
    eid = create(module_ctx, ["a", "b", "c", "d"], "ucb1")
    run(module_ctx, operation="update", experiment_id=eid, arm="a", rewards=[1, 0, 1, 1])
    run(module_ctx, operation="update", experiment_id=eid, arm="b", rewards=[0, 1])
    run(module_ctx, operation="update", experiment_id=eid, arm="c", reward=1)
    s = summary(module_ctx, eid)
    n_total = 7
    # Auer et al. (2002): x̄_j + sqrt(2 ln n / n_j), by hand.
    expected = {
        "a": 0.75 + math.sqrt(2 * math.log(n_total) / 4),
        "b": 0.5 + math.sqrt(2 * math.log(n_total) / 2),
        "c": 1.0 + math.sqrt(2 * math.log(n_total) / 1),
    }
    got = {arm.arm: arm.ucb for arm in s.arms}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12)
    assert got["d"] is None  # unplayed: infinite index
    assert expected["c"] == pytest.approx(2.972769, abs=1e-6)  # 1 + sqrt(2·ln 7)
    # The unplayed arm is selected first; once it has a reward, the highest index wins.
    assert run(module_ctx, operation="select", experiment_id=eid).arm == "d"
    run(module_ctx, operation="update", experiment_id=eid, arm="d", reward=0)
    indices = {
        "a": 0.75 + math.sqrt(2 * math.log(8) / 4),
        "b": 0.5 + math.sqrt(2 * math.log(8) / 2),
        "c": 1.0 + math.sqrt(2 * math.log(8)),
        "d": 0.0 + math.sqrt(2 * math.log(8)),
    }
    assert run(module_ctx, operation="select", experiment_id=eid).arm == max(indices, key=indices.__getitem__)


def test_ucb1_exploration_coefficient_and_batch_spreads(module_ctx: RunContext) -> None:
    eid = create(module_ctx, ["a", "b"], "ucb1", params={"ucb_c": 0.5})
    run(module_ctx, operation="update", experiment_id=eid, arm="a", rewards=[1, 1, 0])
    run(module_ctx, operation="update", experiment_id=eid, arm="b", rewards=[0, 1])
    s = summary(module_ctx, eid)
    assert s.arms[0].ucb == pytest.approx(2 / 3 + 0.5 * math.sqrt(math.log(5) / 3))
    assert s.arms[1].ucb == pytest.approx(1 / 2 + 0.5 * math.sqrt(math.log(5) / 2))
    fresh = create(module_ctx, ["x", "y", "z"], "ucb1")
    picked = run(module_ctx, operation="select", experiment_id=fresh, count=3).arms
    assert sorted(picked or []) == ["x", "y", "z"]  # pending pulls make a batch try every unplayed arm


# ----------------------------------------------------------------------------- Thompson


def test_thompson_beta_posterior_parameters(module_ctx: RunContext) -> None:
    eid = create(module_ctx, ["a", "b"], "thompson_beta", params={"prior_alpha": 2, "prior_beta": 3})
    run(module_ctx, operation="update", experiment_id=eid, arm="a", rewards=[1, 1, 0, 1, 0.5])
    run(
        module_ctx,
        operation="update",
        experiment_id=eid,
        observations=[{"arm": "b", "reward": 0}, {"arm": "b", "reward": 1}, {"arm": "b", "reward": 0}],
    )
    s = summary(module_ctx, eid, mc_samples=100_000, seed=3)
    a, b = s.arms
    # Beta(α₀ + successes, β₀ + failures); the fractional reward counts half and half.
    assert (a.posterior.alpha, a.posterior.beta) == pytest.approx((5.5, 4.5))
    assert (b.posterior.alpha, b.posterior.beta) == pytest.approx((3.0, 5.0))
    assert a.posterior.mean == pytest.approx(5.5 / 10)
    assert a.posterior.variance == pytest.approx(5.5 * 4.5 / (100 * 11))
    assert a.posterior.ci95_low == pytest.approx(sps.beta(5.5, 4.5).ppf(0.025))
    # P(θ_a > θ_b) = ∫ f_a(x) F_b(x) dx, by quadrature.
    exact, _ = integrate.quad(lambda x: sps.beta(5.5, 4.5).pdf(x) * sps.beta(3, 5).cdf(x), 0, 1)
    assert a.prob_best == pytest.approx(exact, abs=4 * s.prob_best_mc_se_max)
    assert a.prob_best + b.prob_best == pytest.approx(1.0)
    assert s.best_arm == "a"


def test_thompson_beta_rejects_rewards_outside_unit_interval(module_ctx: RunContext) -> None:
    eid = create(module_ctx, ["a", "b"], "thompson_beta")
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="update", experiment_id=eid, arm="a", reward=2.0)
    assert err.value.field == "reward"
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="update", experiment_id=eid, observations=[{"arm": "b", "reward": -0.1}])
    assert err.value.field == "observations.reward"
    assert summary(module_ctx, eid).total_pulls == 0  # nothing half-written


def test_thompson_gaussian_posterior(module_ctx: RunContext) -> None:
    params = {"prior_mean": 0.0, "prior_variance": 1.0, "noise_variance": 4.0}
    eid = create(module_ctx, ["a", "b"], "thompson_gaussian", params=params)
    run(module_ctx, operation="update", experiment_id=eid, arm="a", rewards=[2.0, 4.0])
    a, b = summary(module_ctx, eid).arms
    # precision 1/1 + 2/4 = 1.5; mean (0/1 + 6/4)/1.5 = 1
    assert a.posterior.mean == pytest.approx(1.0)
    assert a.posterior.variance == pytest.approx(1 / 1.5)
    assert (b.posterior.mean, b.posterior.variance) == pytest.approx((0.0, 1.0))
    half = sps.norm.ppf(0.975) * math.sqrt(1 / 1.5)
    assert (a.posterior.ci95_low, a.posterior.ci95_high) == pytest.approx((1 - half, 1 + half))


@settings(max_examples=30, deadline=None)
@given(rewards=st.lists(st.sampled_from([0.0, 1.0, 0.25]), min_size=1, max_size=30))
def test_batch_and_single_updates_agree(module_ctx: RunContext, rewards: list[float]) -> None:
    one, many = (create(module_ctx, ["a", "b"], "thompson_beta") for _ in range(2))
    for r in rewards:
        run(module_ctx, operation="update", experiment_id=one, arm="a", reward=r)
    run(module_ctx, operation="update", experiment_id=many, arm="a", rewards=rewards[::-1])
    s1, s2 = summary(module_ctx, one, seed=1), summary(module_ctx, many, seed=1)
    assert s1.arms[0].posterior.alpha == pytest.approx(s2.arms[0].posterior.alpha)
    assert s1.arms[0].posterior.beta == pytest.approx(s2.arms[0].posterior.beta)
    assert all(0 <= arm.prob_best <= 1 for arm in s1.arms)


# ----------------------------------------------------------------------------- LinUCB


def reference_linucb(history: list[tuple[np.ndarray, int, float]], n_arms: int, d: int, alpha: float, x: np.ndarray):
    """Li, Chu, Langford & Schapire (2010), Algorithm 1, written out directly."""
    a_mats = [np.identity(d) for _ in range(n_arms)]
    b_vecs = [np.zeros(d) for _ in range(n_arms)]
    for ctx_x, arm, reward in history:
        a_mats[arm] = a_mats[arm] + np.outer(ctx_x, ctx_x)
        b_vecs[arm] = b_vecs[arm] + reward * ctx_x
    expected, scores = [], []
    for a_mat, b_vec in zip(a_mats, b_vecs, strict=True):
        theta = np.linalg.solve(a_mat, b_vec)
        expected.append(theta @ x)
        scores.append(theta @ x + alpha * math.sqrt(x @ np.linalg.solve(a_mat, x)))
    return np.array(expected), np.array(scores)


def test_linucb_matches_direct_implementation(module_ctx: RunContext) -> None:
    d, n_arms, alpha = 3, 3, 0.7
    eid = create(module_ctx, ["r0", "r1", "r2"], "linucb", params={"alpha": alpha, "dimension": d})
    rng = np.random.default_rng(42)
    true_theta = rng.normal(size=(n_arms, d))
    history: list[tuple[np.ndarray, int, float]] = []
    for _ in range(25):
        x = rng.normal(size=d)
        chosen = run(module_ctx, operation="select", experiment_id=eid, context=x.tolist()).arm
        arm = int(chosen[1])
        _, ref_scores = reference_linucb(history, n_arms, d, alpha, x)
        assert ref_scores[arm] == pytest.approx(ref_scores.max(), abs=1e-9)  # the component picked an argmax
        reward = float(true_theta[arm] @ x + 0.1 * rng.normal())
        history.append((x, arm, reward))
        run(module_ctx, operation="update", experiment_id=eid, arm=chosen, reward=reward, context=x.tolist())
    probe = np.array([0.3, -1.2, 0.8])
    expected, scores = reference_linucb(history, n_arms, d, alpha, probe)
    s = summary(module_ctx, eid, context=probe.tolist())
    assert [a.expected_reward for a in s.arms] == pytest.approx(expected.tolist(), rel=1e-9, abs=1e-12)
    assert [a.ucb for a in s.arms] == pytest.approx(scores.tolist(), rel=1e-9, abs=1e-12)
    assert s.best_arm == f"r{int(expected.argmax())}"
    # Batch form of update gives the same matrices as one-by-one updates.
    batch = create(module_ctx, ["r0", "r1", "r2"], "linucb", params={"alpha": alpha, "dimension": d})
    observations = [{"arm": f"r{a}", "reward": r, "context": x.tolist()} for x, a, r in history]
    run(module_ctx, operation="update", experiment_id=batch, observations=observations)
    s_batch = summary(module_ctx, batch, context=probe.tolist())
    assert [a.ucb for a in s_batch.arms] == pytest.approx(scores.tolist(), rel=1e-9, abs=1e-12)
    picked = run(module_ctx, operation="select", experiment_id=batch, contexts=[probe.tolist()] * 2).arms
    assert picked == [f"r{int(scores.argmax())}"] * 2


def test_linucb_context_dimension_is_checked(module_ctx: RunContext) -> None:
    eid = create(module_ctx, ["a", "b"], "linucb", params={"dimension": 2})
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="select", experiment_id=eid, context=[1.0, 2.0, 3.0])
    assert err.value.field == "context"
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="select", experiment_id=eid, contexts=[[1.0, 2.0], [1.0]])
    assert err.value.field == "contexts.1"
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="update", experiment_id=eid, arm="a", reward=1.0, context=[1.0])
    assert err.value.field == "context"
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="create", arms=["a", "b"], algorithm="linucb")
    assert err.value.field == "params.dimension"


# ----------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("algorithm", ["ucb1", "thompson_beta"])
def test_simulated_regret_is_sublinear(module_ctx: RunContext, algorithm: str) -> None:
    checkpoints = [100, 250, 500, 1250, 2500, 5000]
    sim = run(
        module_ctx,
        operation="simulate",
        algorithm=algorithm,
        arm_means=[0.3, 0.45, 0.6],
        horizon=5000,
        replications=8,
        checkpoints=checkpoints,
        seed=11,
    ).simulation
    regret = dict(zip(sim.checkpoints, sim.cumulative_regret, strict=True))
    assert sim.checkpoints == checkpoints
    assert np.all(np.diff(sim.regret_per_round) < 0)  # regret(T)/T keeps falling
    assert regret[5000] < 2.5 * regret[1250]  # linear regret would quadruple
    assert regret[5000] < 0.2 * 5000 * (0.3 + 0.15) / 3  # a fifth of uniformly random play
    assert sim.loglog_slope is not None and sim.loglog_slope < 0.7
    assert sim.pull_share[2] > 0.7


def test_fixed_epsilon_greedy_regret_is_linear(module_ctx: RunContext) -> None:
    # The contrast that shows the sub-linearity check can fail: constant exploration costs ε·gap per round.
    sim = run(
        module_ctx,
        operation="simulate",
        algorithm="epsilon_greedy",
        params={"epsilon": 0.3},
        arm_means=[0.3, 0.45, 0.6],
        horizon=4000,
        replications=8,
        checkpoints=[1000, 2000, 4000],
        seed=5,
    ).simulation
    assert sim.loglog_slope > 0.85
    assert sim.cumulative_regret[-1] == pytest.approx(4000 * 0.3 * (0.3 + 0.15) / 3, rel=0.15)


def test_simulation_is_seeded_and_exact_on_equal_arms(module_ctx: RunContext) -> None:
    body = {"operation": "simulate", "algorithm": "thompson_gaussian", "reward_model": "gaussian",
            "arm_means": [1.0, 2.0], "horizon": 300, "seed": 9}  # fmt: skip
    assert run(module_ctx, **body) == run(module_ctx, **body)
    flat = run(module_ctx, operation="simulate", algorithm="ucb1", arm_means=[0.5, 0.5], horizon=200).simulation
    assert set(flat.cumulative_regret) == {0.0}
    assert flat.loglog_slope is None
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="simulate", arm_means=[0.5, 1.5], horizon=100)
    assert err.value.field == "arm_means"


# ----------------------------------------------------------------------------- state


def test_concurrent_updates_and_selects_are_all_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    shared: dict[str, Any] = {}  # the service shares its databases across runs, like create_app does

    def ctx() -> RunContext:
        return RunContext(component="multiarmed_bandit_framework", settings=settings, request_id=None, databases=shared)

    eid = create(ctx(), ["a", "b", "c"], "thompson_beta", seed=1)

    def update(i: int) -> None:
        run(ctx(), operation="update", experiment_id=eid, arm="abc"[i % 3], reward=float(i % 2))

    def select(_: int) -> str:
        return run(ctx(), operation="select", experiment_id=eid).arm or ""

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(update, range(50)))
        picks = list(pool.map(select, range(50)))
    s = summary(ctx(), eid)
    assert s.total_pulls == 50
    assert [a.pulls for a in s.arms] == [17, 17, 16]
    assert sum(a.reward_sum for a in s.arms) == 25
    assert s.total_selections == 50 == len(picks)


def test_state_survives_restart_and_rng_stream_continues(settings: Settings) -> None:
    def service() -> TestClient:
        comp = multiarmed_bandit_framework
        return TestClient(create_app(comp.tier, settings=settings, components=[comp], announce=False), headers=AUTH)

    def post(client: TestClient, **body: Any) -> dict[str, Any]:
        response = client.post(ROUTE, json=body)
        assert response.status_code == 200, response.text
        return response.json()["component_result"]

    create_body = {"operation": "create", "arms": ["a", "b", "c"], "algorithm": "thompson_beta", "seed": 5}
    with service() as client:
        post(client, **create_body, experiment_id="across")
        post(client, **create_body, experiment_id="straight")
        post(client, operation="update", experiment_id="across", arm="b", rewards=[1, 1, 0])
        post(client, operation="update", experiment_id="straight", arm="b", rewards=[1, 1, 0])
        first = post(client, operation="select", experiment_id="across", count=10)["arms"]
        straight = post(client, operation="select", experiment_id="straight", count=20)["arms"]
    with service() as client:  # a new app over the same data directory
        s = post(client, operation="summary", experiment_id="across")["summary"]
        assert s["total_pulls"] == 3 and s["total_selections"] == 10
        assert s["arms"][1]["posterior"]["alpha"] == 3.0
        second = post(client, operation="select", experiment_id="across", count=10)["arms"]
        listed = post(client, operation="list")["experiments"]
    assert first + second == straight  # the stored bit-generator state continued the same stream
    assert {e["experiment_id"] for e in listed} == {"across", "straight"}


def test_errors_over_http(client_for: Any) -> None:
    client = client_for(multiarmed_bandit_framework)
    assert client.post(ROUTE, json={}).status_code == 422
    missing = client.post(ROUTE, json={"operation": "select", "experiment_id": "nope"})
    assert missing.status_code == 404 and missing.json()["component"] == "multiarmed_bandit_framework"
    body = {"operation": "create", "experiment_id": "e", "arms": ["a", "b"], "algorithm": "linucb",
            "params": {"dimension": 2}}  # fmt: skip
    assert client.post(ROUTE, json=body).status_code == 200
    assert client.post(ROUTE, json=body).status_code == 409
    bad = client.post(ROUTE, json={"operation": "select", "experiment_id": "e", "context": [1, 2, 3]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("context:")
    unknown_arm = client.post(
        ROUTE, json={"operation": "update", "experiment_id": "e", "arm": "zz", "reward": 1, "context": [1, 0]}
    )
    assert unknown_arm.status_code == 422 and unknown_arm.json()["detail"].startswith("arm:")
    assert client.post(ROUTE, json={"operation": "close", "experiment_id": "e"}).status_code == 200
    closed = client.post(ROUTE, json={"operation": "update", "experiment_id": "e", "arm": "a", "reward": 1,
                                      "context": [1, 0]})  # fmt: skip
    assert closed.status_code == 409
    assert client.post(ROUTE, json={"operation": "select", "experiment_id": "e", "context": [1, 0]}).status_code == 409
    assert client.post(ROUTE, json={"operation": "close", "experiment_id": "e"}).status_code == 409
    summary_after_close = client.post(ROUTE, json={"operation": "summary", "experiment_id": "e"})
    assert summary_after_close.json()["component_result"]["status"] == "closed"
    assert client.post(ROUTE, json={"operation": "delete", "experiment_id": "e"}).status_code == 200
    assert client.post(ROUTE, json={"operation": "delete", "experiment_id": "e"}).status_code == 404
    extra = client.post(ROUTE, json={"operation": "list", "bogus": 1})
    assert extra.status_code == 422


def test_unknown_ids_and_duplicate_arms(module_ctx: RunContext) -> None:
    for op in ("select", "summary", "close", "delete"):
        with pytest.raises(NotFound):
            run(module_ctx, operation=op, experiment_id="missing")
    with pytest.raises(NotFound):
        run(module_ctx, operation="update", experiment_id="missing", arm="a", reward=1)
    with pytest.raises(InvalidInput) as err:
        run(module_ctx, operation="create", arms=["a", "a"])
    assert err.value.field == "arms"
    eid = create(module_ctx, ["a", "b"], "ucb1")
    with pytest.raises(Conflict):
        run(module_ctx, operation="create", experiment_id=eid, arms=["a", "b"])
