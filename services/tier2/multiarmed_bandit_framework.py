"""Stateful multi-armed bandit experiments over rules, persisted in SQLite.

Algorithms (all on the arms' stats ``pulls`` n_k, reward sum S_k):

* ``epsilon_greedy`` — with probability ε a uniformly random arm, else the best empirical mean
  (unplayed arms first).
* ``ucb1`` (Auer, Cesa-Bianchi & Fischer 2002) — index ``S_k/n_k + c·sqrt(ln N / n_k)`` with N the
  number of recorded rewards; ``c = √2`` is the textbook UCB1. Unplayed arms have an infinite index.
* ``thompson_beta`` — Beta(α₀ + S_k, β₀ + n_k − S_k) posterior for rewards in [0, 1] (a fractional
  reward r counts as r successes and 1 − r failures).
* ``thompson_gaussian`` — conjugate Normal posterior of the arm mean with known noise variance σ²:
  precision 1/τ₀² + n_k/σ², mean (μ₀/τ₀² + S_k/σ²)/precision.
* ``linucb`` — disjoint LinUCB (Li, Chu, Langford & Schapire 2010, Algorithm 1): per arm
  A_k = λI + Σ x xᵀ, b_k = Σ r x, θ_k = A_k⁻¹ b_k, score θ_kᵀx + α·sqrt(xᵀ A_k⁻¹ x).

Ties are broken uniformly at random. Every random draw of an experiment comes from its own PCG64
stream, seeded at creation; the bit generator's state is stored with the experiment after every
selection, so a restarted service continues the same stream. Each select or update is one
``BEGIN IMMEDIATE`` transaction: one SELECT and one UPDATE of the experiment's row.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, RootModel
from scipy import stats

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component

__all__ = [
    "ArmSummary",
    "BanditCloseOp",
    "BanditCreateOp",
    "BanditDeleteOp",
    "BanditExperimentListing",
    "BanditListOp",
    "BanditObservation",
    "BanditParams",
    "BanditPosterior",
    "BanditSelectOp",
    "BanditSimulateOp",
    "BanditSimulationReport",
    "BanditSummaryOp",
    "BanditUpdateOp",
    "MultiarmedBanditFrameworkInput",
    "MultiarmedBanditFrameworkOutput",
    "multiarmed_bandit_framework",
]

STATE_NAME = "multiarmed_bandit_framework"
MIGRATIONS = [
    """
    CREATE TABLE bandit_experiment (
        id TEXT PRIMARY KEY,
        algorithm TEXT NOT NULL,
        params TEXT NOT NULL,
        arms TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'closed')),
        seed INTEGER NOT NULL,
        rng_state TEXT NOT NULL,
        stats TEXT NOT NULL,
        total_pulls INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        closed_at REAL
    );
    CREATE INDEX bandit_experiment_status ON bandit_experiment (status, created_at);
    """
]

Algorithm = Literal["epsilon_greedy", "ucb1", "thompson_beta", "thompson_gaussian", "linucb"]
ExperimentId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", description="experiment id")
]
ArmName = Annotated[str, Field(min_length=1, max_length=200)]
Vector = Annotated[list[FiniteFloat], Field(min_length=1, max_length=64)]
THOMPSON = ("thompson_beta", "thompson_gaussian")
# LinUCB keeps K·d² numbers per experiment in one row; bound it so a select stays cheap.
MAX_LINUCB_CELLS = 65_536


# --------------------------------------------------------------------------- inputs


class BanditParams(ComponentInput):
    """Algorithm parameters; each algorithm reads only its own (the others are ignored)."""

    epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: exploration probability")
    ucb_c: float = Field(math.sqrt(2), gt=0, le=100, description="ucb1: exploration coefficient (√2 = UCB1)")
    prior_alpha: float = Field(1.0, gt=0, le=1e6, description="thompson_beta: prior successes α₀")
    prior_beta: float = Field(1.0, gt=0, le=1e6, description="thompson_beta: prior failures β₀")
    prior_mean: float = Field(0.0, ge=-1e9, le=1e9, description="thompson_gaussian: prior mean μ₀ of an arm")
    prior_variance: float = Field(1.0, gt=0, le=1e12, description="thompson_gaussian: prior variance τ₀²")
    noise_variance: float = Field(1.0, gt=0, le=1e12, description="thompson_gaussian: known reward variance σ²")
    alpha: float = Field(1.0, ge=0, le=100, description="linucb: exploration width α")
    ridge: float = Field(1.0, gt=0, le=1e6, description="linucb: A starts at ridge·I (1 in Li et al. 2010)")
    dimension: int | None = Field(None, ge=1, le=64, description="linucb: context dimension d (required)")


class BanditCreateOp(ComponentInput):
    operation: Literal["create"]
    experiment_id: ExperimentId | None = Field(None, description="id to use; generated when omitted")
    arms: list[ArmName] = Field(min_length=2, max_length=1000, description="arm (rule) names, unique")
    algorithm: Algorithm = "thompson_beta"
    params: BanditParams = Field(default_factory=BanditParams)
    seed: Seed = 0


class BanditSelectOp(ComponentInput):
    operation: Literal["select"]
    experiment_id: ExperimentId
    count: int = Field(1, ge=1, le=1000, description="how many arms to select at once")
    context: Vector | None = Field(None, description="linucb: the context vector of this selection")
    contexts: list[Vector] | None = Field(
        None, min_length=1, max_length=1000, description="linucb: one context per selection (batch)"
    )


class BanditObservation(ComponentInput):
    arm: ArmName
    reward: FiniteFloat = Field(ge=-1e9, le=1e9)
    context: Vector | None = Field(None, description="linucb: the context the arm was selected in")


class BanditUpdateOp(ComponentInput):
    operation: Literal["update"]
    experiment_id: ExperimentId
    arm: ArmName | None = Field(None, description="the arm the reward(s) belong to")
    reward: FiniteFloat | None = Field(None, ge=-1e9, le=1e9, description="one reward for `arm`")
    rewards: list[Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, max_length=100_000, description="several rewards for `arm` (not linucb)"
    )
    context: Vector | None = Field(None, description="linucb: context of the single reward")
    observations: list[BanditObservation] | None = Field(
        None, min_length=1, max_length=100_000, description="batch form: rewards for any arms"
    )


class BanditSummaryOp(ComponentInput):
    operation: Literal["summary"]
    experiment_id: ExperimentId
    context: Vector | None = Field(None, description="linucb: score every arm for this context")
    mc_samples: int = Field(20_000, ge=1000, le=200_000, description="Monte Carlo draws for P(best) (Thompson)")
    seed: Seed = 0


class BanditListOp(ComponentInput):
    operation: Literal["list"]
    status: Literal["active", "closed"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class BanditCloseOp(ComponentInput):
    operation: Literal["close"]
    experiment_id: ExperimentId


class BanditDeleteOp(ComponentInput):
    operation: Literal["delete"]
    experiment_id: ExperimentId


class BanditSimulateOp(ComponentInput):
    operation: Literal["simulate"]
    algorithm: Algorithm = "thompson_beta"
    params: BanditParams = Field(default_factory=BanditParams)
    arm_means: list[Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]] = Field(
        min_length=2, max_length=100, description="true mean reward of each arm"
    )
    reward_model: Literal["bernoulli", "gaussian"] = "bernoulli"
    noise_sd: float = Field(1.0, gt=0, le=1e6, description="gaussian: reward noise standard deviation")
    horizon: int = Field(1000, ge=10, le=100_000)
    replications: int = Field(1, ge=1, le=200, description="independent runs averaged")
    checkpoints: list[Annotated[int, Field(ge=1, le=100_000)]] | None = Field(
        None, min_length=1, max_length=200, description="rounds at which regret is reported (default log-spaced)"
    )
    seed: Seed = 0


class MultiarmedBanditFrameworkInput(
    RootModel[
        Annotated[
            BanditCreateOp
            | BanditSelectOp
            | BanditUpdateOp
            | BanditSummaryOp
            | BanditListOp
            | BanditCloseOp
            | BanditDeleteOp
            | BanditSimulateOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One bandit operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class BanditPosterior(ComponentOutput):
    family: Literal["beta", "normal"]
    alpha: float | None = None
    beta: float | None = None
    mean: float
    variance: float
    ci95_low: float
    ci95_high: float


class ArmSummary(ComponentOutput):
    arm: str
    pulls: int
    selections: int
    reward_sum: float
    mean_reward: float | None = Field(description="None until the arm has a reward")
    reward_sd: float | None = Field(description="sample standard deviation; None below two rewards")
    ucb: float | None = Field(None, description="ucb1 / linucb index; None when infinite (unplayed) or n/a")
    posterior: BanditPosterior | None = None
    prob_best: float | None = Field(None, description="Thompson: Monte Carlo P(arm has the highest mean)")
    expected_reward: float | None = Field(None, description="linucb: θᵀx for the given context")
    theta: list[float] | None = None


class BanditSummary(ComponentOutput):
    experiment_id: str
    algorithm: str
    status: str
    params: dict[str, float | int]
    seed: int
    total_pulls: int
    total_selections: int
    arms: list[ArmSummary]
    best_arm: str | None
    best_arm_basis: str
    prob_best_mc_samples: int | None = None
    prob_best_mc_se_max: float | None = Field(None, description="bound 0.5/√draws on each P(best)'s MC error")
    created_at: float
    updated_at: float
    closed_at: float | None


class BanditExperimentListing(ComponentOutput):
    experiment_id: str
    algorithm: str
    status: str
    n_arms: int
    total_pulls: int
    created_at: float
    updated_at: float


class BanditSimulationReport(ComponentOutput):
    algorithm: str
    reward_model: str
    horizon: int
    replications: int
    best_arm: int
    checkpoints: list[int]
    cumulative_regret: list[float] = Field(description="mean pseudo-regret Σ(μ* − μ_a_t) up to each checkpoint")
    cumulative_regret_se: list[float] = Field(description="standard error across replications (0 for one run)")
    regret_per_round: list[float]
    loglog_slope: float | None = Field(
        description="least-squares slope of log regret on log t over checkpoints ≥ horizon/10 "
        "(1 = linear, ~0 = logarithmic); None when regret is zero there"
    )
    pull_share: list[float] = Field(description="share of all pulls each arm received")


class MultiarmedBanditFrameworkOutput(ComponentOutput):
    operation: str
    experiment_id: str | None = None
    status: str | None = None
    arm: str | None = Field(None, description="select: the (first) selected arm")
    arms: list[str] | None = Field(None, description="select: every selected arm, in order")
    recorded: int | None = Field(None, description="update: number of rewards recorded")
    total_pulls: int | None = None
    summary: BanditSummary | None = None
    experiments: list[BanditExperimentListing] | None = None
    simulation: BanditSimulationReport | None = None


# --------------------------------------------------------------------------- algorithm core


def _argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise argmax of ``scores`` (R, K), ties broken uniformly at random."""
    top = scores == scores.max(axis=1, keepdims=True)
    if int(top.sum(axis=1).max()) == 1:  # no ties: no draw, so the stream only moves when it must
        return scores.argmax(axis=1)
    return np.where(top, rng.random(scores.shape), -1.0).argmax(axis=1)


def _means(pulls: np.ndarray, sums: np.ndarray) -> np.ndarray:
    return np.divide(sums, pulls, out=np.zeros_like(sums, dtype=float), where=pulls > 0)


def _ucb1_index(pulls: np.ndarray, sums: np.ndarray, total: np.ndarray | float, c: float) -> np.ndarray:
    """UCB1 indices; +inf for unplayed arms."""
    log_t = np.log(np.maximum(total, 1.0))
    safe = np.maximum(pulls, 1.0)
    index = sums / safe + c * np.sqrt(np.broadcast_to(log_t, np.shape(pulls)) / safe)
    return np.where(pulls > 0, index, np.inf)


def _beta_params(p: dict[str, Any], pulls: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return p["prior_alpha"] + sums, p["prior_beta"] + np.maximum(pulls - sums, 0.0)


def _normal_posterior(p: dict[str, Any], pulls: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision = 1.0 / p["prior_variance"] + pulls / p["noise_variance"]
    mean = (p["prior_mean"] / p["prior_variance"] + sums / p["noise_variance"]) / precision
    return mean, 1.0 / precision


def _choose(
    algorithm: str, p: dict[str, Any], pulls: np.ndarray, sums: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One selection per row of ``pulls``/``sums`` (R, K) for the non-contextual algorithms."""
    if algorithm == "ucb1":
        return _argmax_random_ties(_ucb1_index(pulls, sums, pulls.sum(axis=1, keepdims=True), p["ucb_c"]), rng)
    if algorithm == "thompson_beta":
        a, b = _beta_params(p, pulls, sums)
        return _argmax_random_ties(rng.beta(a, b), rng)
    if algorithm == "thompson_gaussian":
        mean, var = _normal_posterior(p, pulls, sums)
        return _argmax_random_ties(rng.normal(mean, np.sqrt(var)), rng)
    # epsilon_greedy: unplayed arms look best so every arm is tried once before exploiting.
    explore = rng.random(pulls.shape[0]) < p["epsilon"]
    random_arm = rng.integers(pulls.shape[1], size=pulls.shape[0])
    greedy = _argmax_random_ties(np.where(pulls > 0, _means(pulls, sums), np.inf), rng)
    return np.where(explore, random_arm, greedy)


def _linucb_scores(a: np.ndarray, b: np.ndarray, x: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected rewards θ_kᵀx and LinUCB scores for contexts ``x`` (m, d), arms' A (K, d, d), b (K, d)."""
    a_inv = np.linalg.inv(a)
    theta = np.einsum("kij,kj->ki", a_inv, b)
    expected = x @ theta.T
    width = np.einsum("mi,kij,mj->mk", x, a_inv, x)
    return expected, expected + alpha * np.sqrt(np.maximum(width, 0.0))


# --------------------------------------------------------------------------- persistence helpers


def _rng(state: str) -> np.random.Generator:
    bit_generator = np.random.PCG64(0)
    bit_generator.state = json.loads(state)
    return np.random.Generator(bit_generator)


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


class _Experiment:
    """An experiment row decoded into numpy arrays."""

    def __init__(self, row: Any) -> None:
        self.id: str = row["id"]
        self.algorithm: str = row["algorithm"]
        self.params: dict[str, Any] = json.loads(row["params"])
        self.arms: list[str] = json.loads(row["arms"])
        self.status: str = row["status"]
        self.seed: int = row["seed"]
        self.rng_state: str = row["rng_state"]
        self.created_at: float = row["created_at"]
        self.updated_at: float = row["updated_at"]
        self.closed_at: float | None = row["closed_at"]
        raw = json.loads(row["stats"])
        self.pulls = np.asarray(raw["pulls"], dtype=np.int64)
        self.selections = np.asarray(raw["selections"], dtype=np.int64)
        self.sums = np.asarray(raw["sum"], dtype=float)
        self.sumsq = np.asarray(raw["sumsq"], dtype=float)
        self.a = np.asarray(raw["A"], dtype=float) if "A" in raw else None
        self.b = np.asarray(raw["b"], dtype=float) if "b" in raw else None

    def stats_json(self) -> str:
        raw: dict[str, Any] = {
            "pulls": self.pulls.tolist(),
            "selections": self.selections.tolist(),
            "sum": self.sums.tolist(),
            "sumsq": self.sumsq.tolist(),
        }
        if self.a is not None and self.b is not None:
            raw["A"], raw["b"] = self.a.tolist(), self.b.tolist()
        return json.dumps(raw)

    def arm_index(self, name: str, field: str) -> int:
        try:
            return self.arms.index(name)
        except ValueError:
            raise InvalidInput(field, f"unknown arm {name!r}; the experiment's arms are {self.arms[:20]}") from None


def _load(conn: Any, experiment_id: str) -> _Experiment:
    row = conn.execute("SELECT * FROM bandit_experiment WHERE id = ?", (experiment_id,)).fetchone()
    if row is None:
        raise NotFound(f"no bandit experiment {experiment_id!r}")
    return _Experiment(row)


def _require_active(exp: _Experiment, action: str) -> None:
    if exp.status != "active":
        raise Conflict(f"experiment {exp.id!r} is {exp.status}; cannot {action}")


def _context_matrix(rows: list[Any], dimension: int, field: str, *, single: bool = False) -> np.ndarray:
    """Contexts as an (m, d) array; a wrong length is a 422 naming ``field`` (and the row when batched)."""
    for i, row in enumerate(rows):
        if len(row) != dimension:
            where = field if single else f"{field}.{i}"
            raise InvalidInput(where, f"must have {dimension} values (the experiment's dimension); got {len(row)}")
    return np.asarray(rows, dtype=float)


# --------------------------------------------------------------------------- operations


def _params_for(algorithm: str, params: BanditParams) -> dict[str, Any]:
    keys = {
        "epsilon_greedy": ("epsilon",),
        "ucb1": ("ucb_c",),
        "thompson_beta": ("prior_alpha", "prior_beta"),
        "thompson_gaussian": ("prior_mean", "prior_variance", "noise_variance"),
        "linucb": ("alpha", "ridge", "dimension"),
    }[algorithm]
    return {k: getattr(params, k) for k in keys}


def _create(op: BanditCreateOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    if len(set(op.arms)) != len(op.arms):
        raise InvalidInput("arms", "arm names must be unique")
    params = _params_for(op.algorithm, op.params)
    k = len(op.arms)
    stats_raw: dict[str, Any] = {"pulls": [0] * k, "selections": [0] * k, "sum": [0.0] * k, "sumsq": [0.0] * k}
    if op.algorithm == "linucb":
        d = op.params.dimension
        if d is None:
            raise InvalidInput("params.dimension", "linucb needs the context dimension")
        if k * d * d > MAX_LINUCB_CELLS:
            raise InvalidInput("params.dimension", f"arms × dimension² must be ≤ {MAX_LINUCB_CELLS}; got {k * d * d}")
        stats_raw["A"] = np.broadcast_to(op.params.ridge * np.eye(d), (k, d, d)).tolist()
        stats_raw["b"] = np.zeros((k, d)).tolist()
    experiment_id = op.experiment_id or f"bandit-{uuid.uuid4().hex}"
    now = time.time()
    rng = np.random.default_rng(op.seed)
    db = ctx.state(STATE_NAME, MIGRATIONS)
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM bandit_experiment WHERE id = ?", (experiment_id,)).fetchone():
            raise Conflict(f"bandit experiment {experiment_id!r} already exists")
        conn.execute(
            "INSERT INTO bandit_experiment (id, algorithm, params, arms, status, seed, rng_state, stats, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)",
            (
                experiment_id,
                op.algorithm,
                json.dumps(params),
                json.dumps(op.arms),
                op.seed,
                _rng_state(rng),
                json.dumps(stats_raw),
                now,
                now,
            ),
        )
    return MultiarmedBanditFrameworkOutput(
        operation="create", experiment_id=experiment_id, status="active", total_pulls=0
    )


def _select_indices(exp: _Experiment, op: BanditSelectOp, rng: np.random.Generator) -> np.ndarray:
    p = exp.params
    if exp.algorithm == "linucb":
        if (op.context is None) == (op.contexts is None):
            raise InvalidInput("context", "linucb needs exactly one of `context` or `contexts`")
        if op.contexts is not None:
            if op.count not in (1, len(op.contexts)):
                raise InvalidInput("count", "with `contexts` leave count at 1 or set it to len(contexts)")
            x = _context_matrix(op.contexts, p["dimension"], "contexts")
        else:
            x = np.repeat(_context_matrix([op.context], p["dimension"], "context", single=True), op.count, axis=0)
        assert exp.a is not None and exp.b is not None  # linucb rows always carry A and b
        _, scores = _linucb_scores(exp.a, exp.b, x, p["alpha"])
        return _argmax_random_ties(scores, rng)
    if op.context is not None or op.contexts is not None:
        raise InvalidInput("context", f"only linucb takes a context; this experiment uses {exp.algorithm}")
    pulls, sums = exp.pulls.astype(float)[None, :], exp.sums[None, :]
    if exp.algorithm != "ucb1" or op.count == 1:
        # Random algorithms: `count` independent draws from the same state.
        return _choose(exp.algorithm, p, np.repeat(pulls, op.count, 0), np.repeat(sums, op.count, 0), rng)
    # UCB1 is deterministic: for a batch, count each chosen arm as a pending pull (mean unchanged) so the
    # batch spreads over arms instead of repeating one.
    pending = np.zeros_like(pulls)
    chosen = np.empty(op.count, dtype=np.int64)
    means = _means(pulls, sums)
    for i in range(op.count):
        n = pulls + pending
        index = _ucb1_index(n, means * n, n.sum(), p["ucb_c"])
        chosen[i] = _argmax_random_ties(index, rng)[0]
        pending[0, chosen[i]] += 1
    return chosen


def _select(op: BanditSelectOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    db = ctx.state(STATE_NAME, MIGRATIONS)
    with db.transaction() as conn:
        exp = _load(conn, op.experiment_id)
        _require_active(exp, "select")
        rng = _rng(exp.rng_state)
        chosen = _select_indices(exp, op, rng)
        exp.selections += np.bincount(chosen, minlength=len(exp.arms))
        conn.execute(
            "UPDATE bandit_experiment SET rng_state = ?, stats = ?, updated_at = ? WHERE id = ?",
            (_rng_state(rng), exp.stats_json(), time.time(), exp.id),
        )
    names = [exp.arms[i] for i in chosen.tolist()]
    return MultiarmedBanditFrameworkOutput(
        operation="select",
        experiment_id=exp.id,
        status=exp.status,
        arm=names[0],
        arms=names,
        total_pulls=int(exp.pulls.sum()),
    )


def _observations(op: BanditUpdateOp, exp: _Experiment) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(arm indices, rewards, contexts or None, reward field name) from either form of an update."""
    linucb = exp.algorithm == "linucb"
    single = op.arm is not None or op.reward is not None or op.rewards is not None or op.context is not None
    if single == (op.observations is not None):
        raise InvalidInput("observations", "give either `arm` with `reward`/`rewards`, or `observations`")
    if op.observations is not None:
        arms = np.asarray([exp.arm_index(o.arm, f"observations.{i}.arm") for i, o in enumerate(op.observations)])
        rewards = np.asarray([o.reward for o in op.observations], dtype=float)
        contexts = None
        if linucb:
            for i, o in enumerate(op.observations):
                if o.context is None:
                    raise InvalidInput(f"observations.{i}.context", "linucb needs the context of every reward")
                if len(o.context) != exp.params["dimension"]:
                    raise InvalidInput(
                        f"observations.{i}.context",
                        f"must have {exp.params['dimension']} values (the experiment's dimension); "
                        f"got {len(o.context)}",
                    )
            contexts = np.asarray([o.context for o in op.observations], dtype=float)
        elif any(o.context is not None for o in op.observations):
            raise InvalidInput("observations.context", f"only linucb takes a context; this is {exp.algorithm}")
        return arms, rewards, contexts, "observations.reward"
    if op.arm is None:
        raise InvalidInput("arm", "name the arm the reward belongs to")
    if (op.reward is None) == (op.rewards is None):
        raise InvalidInput("reward", "give exactly one of `reward` or `rewards`")
    index = exp.arm_index(op.arm, "arm")
    rewards = np.asarray([op.reward] if op.reward is not None else op.rewards, dtype=float)
    field = "reward" if op.reward is not None else "rewards"
    if not linucb:
        if op.context is not None:
            raise InvalidInput("context", f"only linucb takes a context; this experiment uses {exp.algorithm}")
        return np.full(rewards.size, index), rewards, None, field
    if op.rewards is not None:
        raise InvalidInput("rewards", "linucb needs a context per reward; use `observations`")
    if op.context is None:
        raise InvalidInput("context", "linucb needs the context the arm was selected in")
    contexts = _context_matrix([op.context], exp.params["dimension"], "context", single=True)
    return np.array([index]), rewards, contexts, field


def _update(op: BanditUpdateOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    db = ctx.state(STATE_NAME, MIGRATIONS)
    with db.transaction() as conn:
        exp = _load(conn, op.experiment_id)
        _require_active(exp, "record rewards")
        arms, rewards, contexts, field = _observations(op, exp)
        if exp.algorithm == "thompson_beta" and ((rewards < 0) | (rewards > 1)).any():
            raise InvalidInput(field, "thompson_beta rewards must lie in [0, 1] (Bernoulli outcomes or fractions)")
        k = len(exp.arms)
        exp.pulls += np.bincount(arms, minlength=k)
        exp.sums += np.bincount(arms, weights=rewards, minlength=k)
        exp.sumsq += np.bincount(arms, weights=rewards**2, minlength=k)
        if contexts is not None and exp.a is not None and exp.b is not None:
            np.add.at(exp.a, arms, np.einsum("ni,nj->nij", contexts, contexts))
            np.add.at(exp.b, arms, rewards[:, None] * contexts)
        conn.execute(
            "UPDATE bandit_experiment SET stats = ?, total_pulls = ?, updated_at = ? WHERE id = ?",
            (exp.stats_json(), int(exp.pulls.sum()), time.time(), exp.id),
        )
    return MultiarmedBanditFrameworkOutput(
        operation="update",
        experiment_id=exp.id,
        status=exp.status,
        recorded=int(rewards.size),
        total_pulls=int(exp.pulls.sum()),
    )


def _count_wins(draw: Any, total: int, k: int) -> np.ndarray:
    """How often each arm has the highest of ``total`` posterior draws, drawn in chunks of ≤ 2M numbers."""
    wins = np.zeros(k, dtype=np.int64)
    chunk = max(1, 2_000_000 // k)
    for start in range(0, total, chunk):
        wins += np.bincount(draw(min(chunk, total - start)).argmax(axis=1), minlength=k)
    return wins


def _summary(op: BanditSummaryOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    db = ctx.state(STATE_NAME, MIGRATIONS)
    exp = _load(db.connect(), op.experiment_id)
    if op.context is not None and exp.algorithm != "linucb":
        raise InvalidInput("context", f"only linucb takes a context; this experiment uses {exp.algorithm}")
    p, k = exp.params, len(exp.arms)
    pulls, sums = exp.pulls.astype(float), exp.sums
    means = _means(pulls, sums)
    with np.errstate(invalid="ignore"):
        var = np.where(pulls > 1, (exp.sumsq - pulls * means**2) / np.maximum(pulls - 1, 1), np.nan)
    sd = np.sqrt(np.maximum(var, 0.0))
    ucb: list[float | None] = [None] * k
    posteriors: list[BanditPosterior | None] = [None] * k
    prob_best: list[float | None] = [None] * k
    expected: list[float | None] = [None] * k
    thetas: list[list[float] | None] = [None] * k
    mc_samples = mc_se = None
    best, basis = None, "no rewards recorded yet"
    played = pulls > 0
    if played.any():
        best = int(np.where(played, means, -np.inf).argmax())
        basis = "highest mean reward among arms with rewards"

    if exp.algorithm == "ucb1":
        index = _ucb1_index(pulls, sums, pulls.sum(), p["ucb_c"])
        ucb = [float(v) if np.isfinite(v) else None for v in index]
    elif exp.algorithm in THOMPSON:
        draws_rng = np.random.default_rng(op.seed)
        if exp.algorithm == "thompson_beta":
            a, b = _beta_params(p, pulls, sums)
            post_mean, post_var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
            low, high = stats.beta.ppf(0.025, a, b), stats.beta.ppf(0.975, a, b)
            wins = _count_wins(lambda n: draws_rng.beta(a, b, size=(n, k)), op.mc_samples, k)
            posteriors = [
                BanditPosterior(
                    family="beta",
                    alpha=float(a[i]),
                    beta=float(b[i]),
                    mean=float(post_mean[i]),
                    variance=float(post_var[i]),
                    ci95_low=float(low[i]),
                    ci95_high=float(high[i]),
                )
                for i in range(k)
            ]
        else:
            post_mean, post_var = _normal_posterior(p, pulls, sums)
            half = stats.norm.ppf(0.975) * np.sqrt(post_var)
            wins = _count_wins(lambda n: draws_rng.normal(post_mean, np.sqrt(post_var), size=(n, k)), op.mc_samples, k)
            posteriors = [
                BanditPosterior(
                    family="normal",
                    mean=float(post_mean[i]),
                    variance=float(post_var[i]),
                    ci95_low=float(post_mean[i] - half[i]),
                    ci95_high=float(post_mean[i] + half[i]),
                )
                for i in range(k)
            ]
        prob_best = [float(v) for v in wins / op.mc_samples]
        mc_samples, mc_se = op.mc_samples, 0.5 / math.sqrt(op.mc_samples)
        best, basis = int(np.argmax(post_mean)), "highest posterior mean"
    elif exp.algorithm == "linucb":
        assert exp.a is not None and exp.b is not None  # linucb rows always carry A and b
        thetas = np.einsum("kij,kj->ki", np.linalg.inv(exp.a), exp.b).tolist()
        if op.context is not None:
            x = _context_matrix([op.context], p["dimension"], "context", single=True)
            exp_reward, scores = _linucb_scores(exp.a, exp.b, x, p["alpha"])
            expected, ucb = exp_reward[0].tolist(), scores[0].tolist()
            best, basis = int(exp_reward[0].argmax()), "highest expected reward θᵀx for the given context"
    arms = [
        ArmSummary(
            arm=exp.arms[i],
            pulls=int(exp.pulls[i]),
            selections=int(exp.selections[i]),
            reward_sum=float(sums[i]),
            mean_reward=float(means[i]) if played[i] else None,
            reward_sd=float(sd[i]) if pulls[i] > 1 else None,
            ucb=ucb[i],
            posterior=posteriors[i],
            prob_best=prob_best[i],
            expected_reward=expected[i],
            theta=thetas[i],
        )
        for i in range(k)
    ]
    summary = BanditSummary(
        experiment_id=exp.id,
        algorithm=exp.algorithm,
        status=exp.status,
        params=p,
        seed=exp.seed,
        total_pulls=int(exp.pulls.sum()),
        total_selections=int(exp.selections.sum()),
        arms=arms,
        best_arm=exp.arms[best] if best is not None else None,
        best_arm_basis=basis,
        prob_best_mc_samples=mc_samples,
        prob_best_mc_se_max=mc_se,
        created_at=exp.created_at,
        updated_at=exp.updated_at,
        closed_at=exp.closed_at,
    )
    return MultiarmedBanditFrameworkOutput(
        operation="summary", experiment_id=exp.id, status=exp.status, total_pulls=summary.total_pulls, summary=summary
    )


def _list(op: BanditListOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    conn = ctx.state(STATE_NAME, MIGRATIONS).connect()
    rows = conn.execute(
        "SELECT id, algorithm, status, arms, total_pulls, created_at, updated_at FROM bandit_experiment "
        "WHERE (? IS NULL OR status = ?) ORDER BY created_at, id LIMIT ? OFFSET ?",
        (op.status, op.status, op.limit, op.offset),
    ).fetchall()
    listing = [
        BanditExperimentListing(
            experiment_id=r["id"],
            algorithm=r["algorithm"],
            status=r["status"],
            n_arms=len(json.loads(r["arms"])),
            total_pulls=r["total_pulls"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]
    return MultiarmedBanditFrameworkOutput(operation="list", experiments=listing)


def _close(op: BanditCloseOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    db = ctx.state(STATE_NAME, MIGRATIONS)
    with db.transaction() as conn:
        exp = _load(conn, op.experiment_id)
        _require_active(exp, "close it again")
        now = time.time()
        conn.execute(
            "UPDATE bandit_experiment SET status = 'closed', closed_at = ?, updated_at = ? WHERE id = ?",
            (now, now, exp.id),
        )
    return MultiarmedBanditFrameworkOutput(
        operation="close", experiment_id=exp.id, status="closed", total_pulls=int(exp.pulls.sum())
    )


def _delete(op: BanditDeleteOp, ctx: RunContext) -> MultiarmedBanditFrameworkOutput:
    db = ctx.state(STATE_NAME, MIGRATIONS)
    with db.transaction() as conn:
        if conn.execute("DELETE FROM bandit_experiment WHERE id = ?", (op.experiment_id,)).rowcount == 0:
            raise NotFound(f"no bandit experiment {op.experiment_id!r}")
    return MultiarmedBanditFrameworkOutput(operation="delete", experiment_id=op.experiment_id, status="deleted")


def _simulate(op: BanditSimulateOp) -> BanditSimulationReport:
    mu = np.asarray(op.arm_means, dtype=float)
    if op.reward_model == "bernoulli" and ((mu < 0) | (mu > 1)).any():
        raise InvalidInput("arm_means", "bernoulli arm means must lie in [0, 1]")
    if op.algorithm == "thompson_beta" and op.reward_model != "bernoulli":
        raise InvalidInput("reward_model", "thompson_beta needs rewards in [0, 1]; use bernoulli")
    if op.horizon * op.replications > 2_000_000:
        raise InvalidInput("replications", "horizon × replications must be ≤ 2,000,000")
    if op.checkpoints is not None:
        checkpoints = np.unique(np.asarray(op.checkpoints))
        if checkpoints[-1] > op.horizon:
            raise InvalidInput("checkpoints", f"every checkpoint must be ≤ horizon ({op.horizon})")
    else:
        checkpoints = np.unique(np.geomspace(10, op.horizon, 20).round().astype(np.int64))
    p = _params_for(op.algorithm, op.params)
    # LinUCB on context-free arms: the constant context [1] (an intercept) — ridge-regularised UCB on the means.
    rng = np.random.default_rng(op.seed)
    r, k = op.replications, mu.size
    pulls, sums = np.zeros((r, k)), np.zeros((r, k))
    gaps = mu.max() - mu
    regret = np.zeros((op.horizon, r))
    rows = np.arange(r)
    for t in range(op.horizon):
        if op.algorithm == "linucb":
            a_scalar = p["ridge"] + pulls
            arms = _argmax_random_ties(sums / a_scalar + p["alpha"] * np.sqrt(1.0 / a_scalar), rng)
        else:
            arms = _choose(op.algorithm, p, pulls, sums, rng)
        means = mu[arms]
        if op.reward_model == "bernoulli":
            rewards = (rng.random(r) < means).astype(float)
        else:
            rewards = means + op.noise_sd * rng.standard_normal(r)
        pulls[rows, arms] += 1.0
        sums[rows, arms] += rewards
        regret[t] = gaps[arms]
    cumulative = np.cumsum(regret, axis=0)[checkpoints - 1]  # (checkpoints, r)
    mean_regret = cumulative.mean(axis=1)
    se = cumulative.std(axis=1, ddof=1) / math.sqrt(r) if r > 1 else np.zeros_like(mean_regret)
    tail = (checkpoints >= op.horizon / 10) & (mean_regret > 0)
    slope = None
    if tail.sum() >= 2:
        slope = float(np.polyfit(np.log(checkpoints[tail]), np.log(mean_regret[tail]), 1)[0])
    return BanditSimulationReport(
        algorithm=op.algorithm,
        reward_model=op.reward_model,
        horizon=op.horizon,
        replications=r,
        best_arm=int(mu.argmax()),
        checkpoints=checkpoints.tolist(),
        cumulative_regret=mean_regret.tolist(),
        cumulative_regret_se=se.tolist(),
        regret_per_round=(mean_regret / checkpoints).tolist(),
        loglog_slope=slope,
        pull_share=(pulls.sum(axis=0) / pulls.sum()).tolist(),
    )


@component(
    "MultiarmedBanditFramework",
    tier="tier2",
    capabilities=["bandits", "experimentation", "thompson_sampling", "ucb", "contextual_bandits"],
    example={
        "operation": "create",
        "arms": ["rule_clarity", "rule_specificity", "rule_examples"],
        "algorithm": "thompson_beta",
        "params": {"prior_alpha": 1, "prior_beta": 1},
        "seed": 7,
    },
    examples=[
        {
            "operation": "simulate",
            "algorithm": "ucb1",
            "arm_means": [0.3, 0.5, 0.7],
            "horizon": 2000,
            "replications": 4,
            "seed": 1,
        }
    ],
    deterministic=False,
)
def multiarmed_bandit_framework(
    request: MultiarmedBanditFrameworkInput, ctx: RunContext
) -> MultiarmedBanditFrameworkOutput:
    """Stateful bandit experiments over rules: ε-greedy, UCB1, Thompson (Beta, Gaussian), LinUCB.

    Operations (field ``operation``): ``create`` an experiment over named arms; ``select`` one or
    ``count`` arms (LinUCB takes a ``context`` or ``contexts``); ``update`` with observed rewards (one,
    several for an arm, or a batch of ``observations``); ``summary`` (pulls, means, UCB indices,
    posteriors, P(best) by seeded Monte Carlo for Thompson); ``list``; ``close`` (no more selections or
    rewards); ``delete``; ``simulate`` (no state: seeded runs on given arm means, reporting cumulative
    pseudo-regret at checkpoints). State lives in ``data/multiarmed_bandit_framework.sqlite`` and the
    experiment's random stream is stored with it, so a restart continues where it left off.
    Unknown id → 404; ``create`` on an existing id, or select/update/close on a closed experiment → 409.
    """
    op = request.root
    if isinstance(op, BanditCreateOp):
        return _create(op, ctx)
    if isinstance(op, BanditSelectOp):
        return _select(op, ctx)
    if isinstance(op, BanditUpdateOp):
        return _update(op, ctx)
    if isinstance(op, BanditSummaryOp):
        return _summary(op, ctx)
    if isinstance(op, BanditListOp):
        return _list(op, ctx)
    if isinstance(op, BanditCloseOp):
        return _close(op, ctx)
    if isinstance(op, BanditDeleteOp):
        return _delete(op, ctx)
    return MultiarmedBanditFrameworkOutput(operation="simulate", simulation=_simulate(op))
