"""Group-sequential monitoring of an experiment, and Wald's SPRT for binary outcomes.

Group-sequential designs use Lan–DeMets alpha spending. Boundaries for the planned looks are computed by numerical
integration over the looks: the recursive (Armitage–McPherson–Rowe) density of the z statistic among the paths that
have not stopped, on the grid and Simpson weights of Jennison & Turnbull (2000), *Group Sequential Methods*, ch. 19 —
the algorithm of gsDesign and ldbounds. Spending is per side: a one-sided design spends ``α`` on the upper side, a
two-sided symmetric design spends ``α/2`` on each side, so that ``alpha=0.05, sides=2`` reproduces the gsDesign /
ldbounds tables (K=5 O'Brien–Fleming type: 4.877, 3.357, 2.680, 2.290, 2.031).

Futility uses conditional power in the B-value form of Lan & Wittes (1988): with ``B(t) = Z(t)√t`` and drift ``θ``
(the expected z at full information), ``CP(θ) = 1 − Φ((c − B(t) − θ(1 − t)) / √(1 − t))``, where ``c`` is the final
boundary of the design (``z_{1−α}`` in a fixed-sample design). Futility stopping is non-binding: the efficacy
boundaries do not take credit for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, RootModel
from scipy import optimize, special

from mlmesh.errors import InvalidInput
from services.framework import (
    ComponentInput,
    ComponentOutput,
    FiniteFloat,
    Numbers,
    RunContext,
    component,
    load_numbers,
)

__all__ = [
    "AdvancedEarlyStoppingFrameworkInput",
    "AdvancedEarlyStoppingFrameworkOutput",
    "ArmSufficientStats",
    "GroupSequentialRequest",
    "SPRTRequest",
    "advanced_early_stopping_framework",
    "crossing_probabilities",
    "design_drift",
    "group_sequential_bounds",
    "spending_function",
]

Spending = Literal["obrien_fleming", "pocock", "hwang_shih_decani"]
# Points per unit of the Jennison–Turnbull grid (they recommend r >= 16; 32 puts errors near 1e-7).
GRID_R = 32
# Below this an increment of alpha cannot be represented as a finite z boundary (Φ̄(37) ≈ 6e-300).
_NO_SPEND = 1e-250
_Z_MAX = 37.0
_MAX_PATH_POINTS = 2000


# --------------------------------------------------------------------------------------------- spending and bounds


def spending_function(t: np.ndarray, alpha: float, kind: Spending, gamma: float = -4.0) -> np.ndarray:
    """Cumulative alpha spent on one side by information fraction ``t`` (``alpha`` = that side's level).

    Args:
        t: information fractions in (0, 1].
        alpha: the side's level (α for a one-sided design, α/2 per side for a two-sided one).
        kind: ``obrien_fleming``: ``2 − 2Φ(z_{α/2}/√t)``; ``pocock``: ``α·ln(1 + (e − 1)t)``;
            ``hwang_shih_decani``: ``α(1 − e^{−γt})/(1 − e^{−γ})`` (``α·t`` when γ = 0).
        gamma: the Hwang–Shih–DeCani parameter.
    """
    t = np.asarray(t, dtype=np.float64)
    if kind == "obrien_fleming":
        return 2.0 * special.ndtr(-special.ndtri(1.0 - alpha / 2.0) / np.sqrt(t))
    if kind == "pocock":
        return alpha * np.log1p((np.e - 1.0) * t)
    if gamma == 0.0:
        return alpha * t
    return alpha * -np.expm1(-gamma * t) / -np.expm1(-gamma)


@dataclass(frozen=True)
class _Stage:
    """Simpson points, weights and the sub-density of Z_k over the paths still running after look k."""

    t: float
    z: np.ndarray
    w: np.ndarray
    h: np.ndarray


def _simpson_grid(mean: float, lo: float, hi: float, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Jennison–Turnbull grid around ``mean`` trimmed to (lo, hi), with composite Simpson weights."""
    i = np.arange(1, 6 * r, dtype=np.float64)
    # Dense in mean ± 3, logarithmically sparser out to mean ± (3 + 4 ln r).
    x = mean + np.where(
        i < r,
        -3.0 - 4.0 * np.log(r / i),
        np.where(i <= 5 * r, -3.0 + 3.0 * (i - r) / (2.0 * r), 3.0 + 4.0 * np.log(r / (6.0 * r - i))),
    )
    points = x[(x > lo) & (x < hi)]
    if lo > x[0]:
        points = np.concatenate(([lo], points))
    if hi < x[-1]:
        points = np.concatenate((points, [hi]))
    if points.size < 2:  # the continuation region lies where the density is negligible
        return np.empty(0), np.empty(0)
    d = np.diff(points)
    z = np.empty(2 * points.size - 1)
    z[0::2] = points
    z[1::2] = points[:-1] + d / 2.0
    w = np.zeros_like(z)
    w[1::2] = 4.0 * d / 6.0
    w[0:-1:2] += d / 6.0
    w[2::2] += d / 6.0
    return z, w


def _next_stage(prev: _Stage | None, t: float, eta: float, lo: float, hi: float, r: int) -> _Stage:
    """Density of Z at information ``t`` on the continuation region (lo, hi), given the previous stage."""
    mean = eta * np.sqrt(t)
    z, w = _simpson_grid(mean, lo, hi, r)
    if prev is None:
        h = np.exp(-0.5 * (z - mean) ** 2) / np.sqrt(2.0 * np.pi)
    elif prev.z.size == 0:
        h = np.zeros_like(z)
    else:
        dt = t - prev.t
        sd = np.sqrt(dt)
        # B(t) = Z√t has independent increments N(η·dt, dt).
        arg = (z[:, None] * np.sqrt(t) - prev.z[None, :] * np.sqrt(prev.t) - eta * dt) / sd
        kernel = np.exp(-0.5 * arg**2) / np.sqrt(2.0 * np.pi)
        h = kernel @ (prev.w * prev.h) * (np.sqrt(t) / sd)
    return _Stage(t=t, z=z, w=w, h=h)


def _cross(prev: _Stage | None, t: float, eta: float, bound: float, upper: bool) -> float:
    """P(no earlier stop and Z_t ≥ bound) (``upper``) or P(no earlier stop and Z_t ≤ bound)."""
    if not np.isfinite(bound):
        return 0.0
    if prev is None:
        arg = np.array(bound - eta * np.sqrt(t))
        return float(special.ndtr(-arg) if upper else special.ndtr(arg))
    if prev.z.size == 0:
        return 0.0
    dt = t - prev.t
    arg = (bound * np.sqrt(t) - prev.z * np.sqrt(prev.t) - eta * dt) / np.sqrt(dt)
    tail = special.ndtr(-arg) if upper else special.ndtr(arg)
    return float(np.dot(prev.w * prev.h, tail))


def group_sequential_bounds(
    fractions: np.ndarray,
    alpha: float,
    sides: int,
    kind: Spending,
    gamma: float = -4.0,
    r: int = GRID_R,
) -> tuple[np.ndarray, np.ndarray]:
    """Upper z boundaries (``inf`` where nothing is spent) and the cumulative alpha spent per side.

    Each boundary solves ``P_H0(no earlier crossing, Z_k ≥ b_k) = α(t_k) − α(t_{k−1})`` by root finding on the
    numerically integrated crossing probability. Two-sided designs are symmetric (lower boundary ``−b_k``).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    alpha_side = alpha / sides
    spent = np.minimum(spending_function(fractions, alpha_side, kind, gamma), alpha_side)
    increments = np.diff(spent, prepend=0.0)
    bounds = np.full(fractions.size, np.inf)
    prev: _Stage | None = None
    for k, t in enumerate(fractions):
        target = increments[k]
        if target > _NO_SPEND:
            low = 0.0 if sides == 2 else -_Z_MAX
            bounds[k] = optimize.brentq(
                lambda b, prev=prev, t=t, target=target: _cross(prev, t, 0.0, b, True) - target,
                low,
                _Z_MAX,
                xtol=1e-12,
                rtol=1e-12,
            )
        lower = -bounds[k] if sides == 2 else -np.inf
        prev = _next_stage(prev, float(t), 0.0, lower, bounds[k], r)
    return bounds, spent


def crossing_probabilities(
    fractions: np.ndarray, upper: np.ndarray, lower: np.ndarray, eta: float, r: int = GRID_R
) -> tuple[np.ndarray, np.ndarray]:
    """Per-look probabilities of first crossing the upper and the lower boundary when E[Z(1)] = ``eta``."""
    up = np.zeros(len(fractions))
    low = np.zeros(len(fractions))
    prev: _Stage | None = None
    for k, t in enumerate(np.asarray(fractions, dtype=np.float64)):
        up[k] = _cross(prev, float(t), eta, upper[k], True)
        low[k] = _cross(prev, float(t), eta, lower[k], False)
        prev = _next_stage(prev, float(t), eta, lower[k], upper[k], r)
    return up, low


def design_drift(fractions: np.ndarray, upper: np.ndarray, lower: np.ndarray, power: float, r: int = GRID_R) -> float:
    """The drift ``θ = E[Z(1)]`` under which the design crosses the upper (improvement) boundary w.p. ``power``."""

    def shortfall(eta: float) -> float:
        up, _ = crossing_probabilities(fractions, upper, lower, eta, r)
        return float(up.sum()) - power

    return float(optimize.brentq(shortfall, 0.0, 20.0, xtol=1e-10))


def _conditional_power(z: float, t: float, final_bound: float, theta: float) -> float:
    """Lan–Wittes B-value form: P(Z(1) ≥ c | B(t) = z√t, drift θ)."""
    arg = (final_bound - z * np.sqrt(t) - theta * (1.0 - t)) / np.sqrt(1.0 - t)
    return float(special.ndtr(-arg))


# --------------------------------------------------------------------------------------------------------- models


class ArmSufficientStats(ComponentInput):
    """Sufficient statistics of one arm (for binary outcomes ``sum`` is the number of successes)."""

    n: int = Field(ge=1, le=10**12, description="number of observations")
    sum: FiniteFloat = Field(description="Σx")
    sum_sq: FiniteFloat | None = Field(None, ge=0, description="Σx² (required for continuous metrics)")


class GroupSequentialRequest(ComponentInput):
    """A group-sequential design and, optionally, the observation at the current look."""

    method: Literal["group_sequential"]
    alpha: float = Field(0.05, gt=0, lt=0.5, description="overall type-I error (two-sided total when sides=2)")
    sides: Literal[1, 2] = Field(2, description="1: one-sided (upper) test; 2: symmetric two-sided test")
    spending: Spending = Field("obrien_fleming", description="Lan–DeMets spending function type")
    gamma: float = Field(-4.0, ge=-40, le=40, description="Hwang–Shih–DeCani γ (−4 ≈ O'Brien–Fleming, 1 ≈ Pocock)")
    information_fractions: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, min_length=1, max_length=25, description="increasing information fractions of the looks, ending at 1"
    )
    n_looks: int | None = Field(None, ge=1, le=25, description="equally spaced looks (instead of the fractions)")
    power: float = Field(0.8, gt=0, lt=1, description="power the design was planned for (gives the design drift)")
    design_drift: float | None = Field(
        None, ge=0, le=20, description="E[Z] at full information under the design effect; default: from `power`"
    )
    look: int | None = Field(None, ge=1, le=25, description="current look (1-based); omit for the design only")
    z: FiniteFloat | None = Field(None, ge=-50, le=50, description="observed z at the current look (+ = improvement)")
    control: Numbers | None = Field(None, description="raw control outcomes (instead of z)")
    treatment: Numbers | None = Field(None, description="raw treatment outcomes (instead of z)")
    control_stats: ArmSufficientStats | None = Field(None, description="control sufficient statistics (instead of z)")
    treatment_stats: ArmSufficientStats | None = Field(
        None, description="treatment sufficient statistics (instead of z)"
    )
    metric: Literal["continuous", "binary"] = Field(
        "continuous", description="continuous: Welch z; binary: pooled two-proportion z"
    )
    direction: Literal["higher", "lower"] = Field(
        "higher", description="which way is an improvement, for a z computed from data"
    )
    futility_threshold: float = Field(0.1, ge=0, lt=1, description="stop for futility when CP falls below (0: off)")
    futility_basis: Literal["current_trend", "design_effect"] = Field(
        "current_trend", description="the drift conditional power assumes for the futility decision"
    )


class SPRTRequest(ComponentInput):
    """Wald's sequential probability ratio test of p0 against p1 on binary outcomes."""

    method: Literal["sprt"]
    p0: float = Field(gt=0, lt=1, description="success probability under H0")
    p1: float = Field(gt=0, lt=1, description="success probability under H1")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="type-I error")
    beta: float = Field(0.2, gt=0, lt=0.5, description="type-II error")
    outcomes: Numbers | None = Field(None, description="0/1 outcomes in arrival order")
    successes: int | None = Field(None, ge=0, le=10**12, description="total successes (instead of outcomes)")
    trials: int | None = Field(None, ge=0, le=10**12, description="total trials (instead of outcomes)")


class AdvancedEarlyStoppingFrameworkInput(
    RootModel[Annotated[GroupSequentialRequest | SPRTRequest, Field(discriminator="method")]]
):
    """``method``: ``group_sequential`` or ``sprt``."""


class GroupSequentialLook(ComponentOutput):
    look: int
    information_fraction: float
    z_boundary: float | None = Field(description="upper z boundary (lower is −z for two-sided); None: cannot stop")
    nominal_p: float = Field(description="nominal p-value of the boundary (two-sided when sides=2)")
    alpha_increment: float = Field(description="alpha spent at this look (all sides)")
    alpha_spent: float = Field(description="cumulative alpha spent by the spending function (all sides)")
    crossing_probability_h0: float = Field(description="cumulative P(stop for efficacy or harm) under H0, integrated")
    power_cumulative: float = Field(description="cumulative P(reject H0) under the design drift")


class GroupSequentialDesign(ComponentOutput):
    alpha: float
    sides: int
    spending: str
    gamma: float | None
    n_looks: int
    power: float
    design_drift: float = Field(description="E[Z(1)] under the design effect")
    fixed_sample_drift: float = Field(description="z_{1−α/sides} + z_{power}: the drift a fixed-sample test needs")
    max_information_inflation: float = Field(description="(design drift / fixed-sample drift)², when from `power`")
    expected_information_h0: float = Field(description="E[information at stop] under H0, fraction of the maximum")
    expected_information_h1: float = Field(description="the same under the design drift")
    grid_points_per_unit: int


class GroupSequentialDecision(ComponentOutput):
    look: int
    information_fraction: float
    z: float
    z_source: Literal["z", "raw", "summary"]
    estimate: float | None = Field(description="treatment − control (oriented) when z came from data")
    standard_error: float | None
    z_boundary: float | None
    nominal_p: float = Field(description="nominal p-value of the observed z (two-sided when sides=2)")
    conditional_power_current_trend: float | None = Field(description="CP with θ = z/√t; None at the final look")
    conditional_power_design: float | None = Field(description="CP with θ = the design drift")
    conditional_power_h0: float | None = Field(description="CP with θ = 0")
    decision: Literal["stop_efficacy", "stop_harm", "stop_futility", "continue", "final_no_rejection"]
    reasons: list[str]


class GroupSequentialResult(ComponentOutput):
    design: GroupSequentialDesign
    looks: list[GroupSequentialLook]
    current: GroupSequentialDecision | None


class SPRTResult(ComponentOutput):
    p0: float
    p1: float
    alpha: float
    beta: float
    A: float = Field(description="(1 − β)/α: accept H1 when LR ≥ A")
    B: float = Field(description="β/(1 − α): accept H0 when LR ≤ B")
    log_A: float
    log_B: float
    llr_per_success: float
    llr_per_failure: float
    n: int
    successes: int
    llr: float = Field(description="log-likelihood ratio after all observations")
    stopped_at: int | None = Field(description="first n at which the LLR left (log B, log A); None if never/no path")
    llr_at_stop: float | None
    decision: Literal["accept_h1", "accept_h0", "continue"]
    path_n: list[int] | None = Field(description="observation counts of the LLR path (thinned past 2000 points)")
    path_llr: list[float] | None
    expected_n_h0: float = Field(description="Wald's approximation of E[N] under p0")
    expected_n_h1: float = Field(description="Wald's approximation of E[N] under p1")
    fixed_sample_n: float = Field(description="n of the one-sided fixed-sample binomial z-test with the same α, β")
    reasons: list[str]


class AdvancedEarlyStoppingFrameworkOutput(ComponentOutput):
    method: Literal["group_sequential", "sprt"]
    group_sequential: GroupSequentialResult | None = None
    sprt: SPRTResult | None = None


# ------------------------------------------------------------------------------------------------------ component


def _fractions(req: GroupSequentialRequest) -> np.ndarray:
    if req.information_fractions is not None:
        t = np.asarray(req.information_fractions, dtype=np.float64)
        if req.n_looks is not None and req.n_looks != t.size:
            raise InvalidInput("n_looks", f"is {req.n_looks} but information_fractions has {t.size} looks")
        if t.size > 1 and not np.all(np.diff(t) > 0):
            raise InvalidInput("information_fractions", "must be strictly increasing")
        if abs(t[-1] - 1.0) > 1e-9:
            raise InvalidInput("information_fractions", f"must end at 1 (the final look); got {t[-1]}")
        t[-1] = 1.0
        return t
    if req.n_looks is None:
        raise InvalidInput("information_fractions", "give the looks' information fractions or n_looks")
    return np.arange(1, req.n_looks + 1, dtype=np.float64) / req.n_looks


def _arm_moments(
    value: Numbers | None, summary: ArmSufficientStats | None, metric: str, field: str, ctx: RunContext
) -> tuple[int, float, float | None]:
    """(n, mean, variance) of one arm from raw values or sufficient statistics."""
    if value is not None:
        x = load_numbers(value, ctx.data_dir, field=field)
        if metric == "binary":
            if not np.isin(x, (0.0, 1.0)).all():
                raise InvalidInput(field, "binary outcomes must be 0 or 1")
            return x.size, float(x.mean()), None
        if x.size < 2:
            raise InvalidInput(field, "needs at least 2 values for a variance")
        return x.size, float(x.mean()), float(x.var(ddof=1))
    assert summary is not None
    n, mean = summary.n, summary.sum / summary.n
    if metric == "binary":
        if not 0 <= summary.sum <= n:
            raise InvalidInput(f"{field}_stats.sum", "successes must lie between 0 and n")
        return n, mean, None
    if summary.sum_sq is None:
        raise InvalidInput(f"{field}_stats.sum_sq", "is required for a continuous metric")
    if n < 2:
        raise InvalidInput(f"{field}_stats.n", "needs at least 2 observations for a variance")
    m2 = summary.sum_sq - summary.sum * mean
    if m2 < -1e-9 * max(summary.sum_sq, 1.0):
        raise InvalidInput(f"{field}_stats.sum_sq", "is smaller than sum²/n, so it is not a sum of squares")
    return n, mean, max(m2, 0.0) / (n - 1)


def _observed_z(req: GroupSequentialRequest, ctx: RunContext) -> tuple[float, str, float | None, float | None]:
    raw = (req.control is not None, req.treatment is not None)
    stats = (req.control_stats is not None, req.treatment_stats is not None)
    forms = int(req.z is not None) + int(any(raw)) + int(any(stats))
    if forms > 1:
        raise InvalidInput("z", "give exactly one of z, control+treatment, control_stats+treatment_stats")
    if req.z is not None:
        return req.z, "z", None, None
    if any(raw) and not all(raw):
        raise InvalidInput("treatment" if raw[0] else "control", "raw data needs both control and treatment")
    if any(stats) and not all(stats):
        missing = "treatment_stats" if stats[0] else "control_stats"
        raise InvalidInput(missing, "sufficient statistics need both control_stats and treatment_stats")
    nc, mc, vc = _arm_moments(req.control, req.control_stats, req.metric, "control", ctx)
    nt, mt, vt = _arm_moments(req.treatment, req.treatment_stats, req.metric, "treatment", ctx)
    if req.metric == "binary":
        pooled = (mc * nc + mt * nt) / (nc + nt)
        se = float(np.sqrt(pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt)))
        zero_reason = "all outcomes are identical across both arms (pooled rate 0 or 1); z is undefined"
    else:
        assert vc is not None and vt is not None
        se = float(np.sqrt(vc / nc + vt / nt))
        zero_reason = "both arms have zero variance; z is undefined"
    if not se > 0:
        raise InvalidInput("treatment" if any(raw) else "treatment_stats", zero_reason)
    estimate = (mt - mc) if req.direction == "higher" else (mc - mt)
    return estimate / se, "raw" if any(raw) else "summary", estimate, se


def _run_group_sequential(req: GroupSequentialRequest, ctx: RunContext) -> GroupSequentialResult:
    t = _fractions(req)
    k_max = t.size
    if req.power <= req.alpha:
        raise InvalidInput("power", f"must exceed alpha ({req.alpha}); got {req.power}")
    upper, spent_side = group_sequential_bounds(t, req.alpha, req.sides, req.spending, req.gamma)
    lower = -upper if req.sides == 2 else np.full(k_max, -np.inf)
    fixed_drift = float(special.ndtri(1 - req.alpha / req.sides) + special.ndtri(req.power))
    planned_drift = design_drift(t, upper, lower, req.power)
    drift = planned_drift if req.design_drift is None else req.design_drift

    up0, low0 = crossing_probabilities(t, upper, lower, 0.0)
    up1, low1 = crossing_probabilities(t, upper, lower, drift)
    stop0, stop1 = up0 + low0, up1 + low1

    def expected_information(stop: np.ndarray) -> float:
        return float(np.dot(t[:-1], stop[:-1]) + t[-1] * (1.0 - stop[:-1].sum()))

    finite = np.isfinite(upper)
    nominal = np.where(finite, req.sides * special.ndtr(-np.where(finite, upper, 0.0)), 0.0)
    looks = [
        GroupSequentialLook(
            look=k + 1,
            information_fraction=float(t[k]),
            z_boundary=float(upper[k]) if finite[k] else None,
            nominal_p=float(nominal[k]),
            alpha_increment=float(req.sides * (spent_side[k] - (spent_side[k - 1] if k else 0.0))),
            alpha_spent=float(req.sides * spent_side[k]),
            crossing_probability_h0=float(min(1.0, stop0[: k + 1].sum())),
            power_cumulative=float(min(1.0, up1[: k + 1].sum())),
        )
        for k in range(k_max)
    ]
    design = GroupSequentialDesign(
        alpha=req.alpha,
        sides=req.sides,
        spending=req.spending,
        gamma=req.gamma if req.spending == "hwang_shih_decani" else None,
        n_looks=k_max,
        power=req.power,
        design_drift=drift,
        fixed_sample_drift=fixed_drift,
        max_information_inflation=(planned_drift / fixed_drift) ** 2,
        expected_information_h0=expected_information(stop0),
        expected_information_h1=expected_information(stop1),
        grid_points_per_unit=GRID_R,
    )
    return GroupSequentialResult(design=design, looks=looks, current=_current_look(req, ctx, t, upper, drift))


def _current_look(
    req: GroupSequentialRequest, ctx: RunContext, t: np.ndarray, upper: np.ndarray, drift: float
) -> GroupSequentialDecision | None:
    has_observation = any(
        v is not None for v in (req.z, req.control, req.treatment, req.control_stats, req.treatment_stats)
    )
    if req.look is None:
        if has_observation:
            raise InvalidInput("look", "is required with an observation (which look is it?)")
        return None
    if not has_observation:
        raise InvalidInput("z", "the current look needs z, raw control+treatment, or their sufficient statistics")
    if req.look > t.size:
        raise InvalidInput("look", f"must be at most the number of looks ({t.size}); got {req.look}")
    z, source, estimate, se = _observed_z(req, ctx)
    k = req.look - 1
    tk = float(t[k])
    bound = float(upper[k])
    final = float(upper[-1])
    final_look = k == t.size - 1
    nominal_p = float(special.ndtr(-z)) if req.sides == 1 else float(min(1.0, 2 * special.ndtr(-abs(z))))

    cp: dict[str, float | None] = {"current_trend": None, "design_effect": None, "h0": None}
    if not final_look and np.isfinite(final):
        cp = {
            "current_trend": _conditional_power(z, tk, final, z / np.sqrt(tk)),
            "design_effect": _conditional_power(z, tk, final, drift),
            "h0": _conditional_power(z, tk, final, 0.0),
        }
    reasons: list[str] = []
    bound_text = f"{bound:.4f}" if np.isfinite(bound) else "∞ (no alpha spent at this look)"
    if np.isfinite(bound) and z >= bound:
        decision = "stop_efficacy"
        reasons.append(f"z = {z:.4f} ≥ upper boundary {bound_text} at look {k + 1}: reject H0 (improvement)")
    elif req.sides == 2 and np.isfinite(bound) and z <= -bound:
        decision = "stop_harm"
        reasons.append(f"z = {z:.4f} ≤ lower boundary −{bound_text} at look {k + 1}: reject H0 (harm)")
    elif final_look:
        decision = "final_no_rejection"
        reasons.append(f"final look: |z| = {abs(z):.4f} did not reach the boundary {bound_text}; H0 not rejected")
    else:
        basis = cp[req.futility_basis]
        reasons.append(f"z = {z:.4f} is inside the continuation region (boundary {bound_text}) at look {k + 1}")
        if req.futility_threshold > 0 and basis is not None and basis < req.futility_threshold:
            decision = "stop_futility"
            reasons.append(
                f"conditional power under the {req.futility_basis.replace('_', ' ')} is {basis:.4f} "
                f"< {req.futility_threshold}: stop for futility (non-binding)"
            )
        else:
            decision = "continue"
            if basis is not None:
                reasons.append(
                    f"conditional power under the {req.futility_basis.replace('_', ' ')} is {basis:.4f}"
                    + (f" ≥ {req.futility_threshold}" if req.futility_threshold > 0 else " (futility check off)")
                )
    return GroupSequentialDecision(
        look=k + 1,
        information_fraction=tk,
        z=z,
        z_source=source,  # type: ignore[arg-type]
        estimate=estimate,
        standard_error=se,
        z_boundary=bound if np.isfinite(bound) else None,
        nominal_p=nominal_p,
        conditional_power_current_trend=cp["current_trend"],
        conditional_power_design=cp["design_effect"],
        conditional_power_h0=cp["h0"],
        decision=decision,  # type: ignore[arg-type]
        reasons=reasons,
    )


def _run_sprt(req: SPRTRequest, ctx: RunContext) -> SPRTResult:
    if req.p0 == req.p1:
        raise InvalidInput("p1", "must differ from p0")
    has_summary = req.successes is not None or req.trials is not None
    if req.outcomes is not None and has_summary:
        raise InvalidInput("outcomes", "give either outcomes or successes+trials, not both")
    log_a = float(np.log((1 - req.beta) / req.alpha))
    log_b = float(np.log(req.beta / (1 - req.alpha)))
    per_success = float(np.log(req.p1 / req.p0))
    per_failure = float(np.log((1 - req.p1) / (1 - req.p0)))

    stopped_at: int | None = None
    llr_at_stop: float | None = None
    path_n: list[int] | None = None
    path_llr: list[float] | None = None
    reasons: list[str] = []
    if req.outcomes is not None:
        x = load_numbers(req.outcomes, ctx.data_dir, field="outcomes")
        if not np.isin(x, (0.0, 1.0)).all():
            raise InvalidInput("outcomes", "binary outcomes must be 0 or 1")
        n, successes = int(x.size), int(x.sum())
        path = np.cumsum(np.where(x == 1.0, per_success, per_failure))
        outside = np.flatnonzero((path >= log_a) | (path <= log_b))
        llr = float(path[-1])
        if outside.size:
            stop = int(outside[0])
            stopped_at, llr_at_stop = stop + 1, float(path[stop])
        if n <= _MAX_PATH_POINTS:
            idx = np.arange(n)
        else:
            idx = np.unique(np.linspace(0, n - 1, _MAX_PATH_POINTS).astype(np.int64))
            if stopped_at is not None:
                idx = np.union1d(idx, [stopped_at - 1])
        path_n, path_llr = (idx + 1).tolist(), path[idx].tolist()
        decided = llr_at_stop if llr_at_stop is not None else llr
        if stopped_at is not None:
            reasons.append(f"the LLR left ({log_b:.4f}, {log_a:.4f}) first at observation {stopped_at}")
    else:
        if req.successes is None or req.trials is None:
            raise InvalidInput("trials" if req.trials is None else "successes", "give both successes and trials")
        if req.successes > req.trials:
            raise InvalidInput("successes", f"cannot exceed trials ({req.trials})")
        if req.trials == 0:
            raise InvalidInput("trials", "must be at least 1")
        n, successes = req.trials, req.successes
        llr = successes * per_success + (n - successes) * per_failure
        decided = llr
        reasons.append("only totals given: the decision uses the current LLR (an earlier crossing cannot be seen)")

    if decided >= log_a:
        decision = "accept_h1"
        reasons.append(f"LLR {decided:.4f} ≥ log A = {log_a:.4f}: accept H1 (p = {req.p1})")
    elif decided <= log_b:
        decision = "accept_h0"
        reasons.append(f"LLR {decided:.4f} ≤ log B = {log_b:.4f}: accept H0 (p = {req.p0})")
    else:
        decision = "continue"
        reasons.append(f"log B = {log_b:.4f} < LLR {decided:.4f} < log A = {log_a:.4f}: continue sampling")

    # Wald: E_p[N] ≈ (L(p) log B + (1 − L(p)) log A) / E_p[LLR increment], L = P(accept H0).
    def mean_increment(p: float) -> float:
        return p * per_success + (1 - p) * per_failure

    en0 = ((1 - req.alpha) * log_b + req.alpha * log_a) / mean_increment(req.p0)
    en1 = (req.beta * log_b + (1 - req.beta) * log_a) / mean_increment(req.p1)
    z_a, z_b = special.ndtri(1 - req.alpha), special.ndtri(1 - req.beta)
    fixed_n = ((z_a * np.sqrt(req.p0 * (1 - req.p0)) + z_b * np.sqrt(req.p1 * (1 - req.p1))) / (req.p1 - req.p0)) ** 2
    return SPRTResult(
        p0=req.p0,
        p1=req.p1,
        alpha=req.alpha,
        beta=req.beta,
        A=(1 - req.beta) / req.alpha,
        B=req.beta / (1 - req.alpha),
        log_A=log_a,
        log_B=log_b,
        llr_per_success=per_success,
        llr_per_failure=per_failure,
        n=n,
        successes=successes,
        llr=float(llr),
        stopped_at=stopped_at,
        llr_at_stop=llr_at_stop,
        decision=decision,  # type: ignore[arg-type]
        path_n=path_n,
        path_llr=path_llr,
        expected_n_h0=float(en0),
        expected_n_h1=float(en1),
        fixed_sample_n=float(fixed_n),
        reasons=reasons,
    )


@component(
    "AdvancedEarlyStoppingFramework",
    tier="tier2",
    capabilities=["sequential_testing", "alpha_spending", "early_stopping", "sprt"],
    example={
        "method": "group_sequential",
        "n_looks": 5,
        "alpha": 0.05,
        "sides": 2,
        "spending": "obrien_fleming",
        "look": 3,
        "z": 2.1,
    },
    examples=[
        {"method": "sprt", "p0": 0.1, "p1": 0.25, "outcomes": [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1]},
        {
            "method": "group_sequential",
            "n_looks": 4,
            "spending": "pocock",
            "look": 2,
            "control_stats": {"n": 500, "sum": 60, "sum_sq": 60},
            "treatment_stats": {"n": 500, "sum": 82, "sum_sq": 82},
            "metric": "binary",
        },
    ],
)
def advanced_early_stopping_framework(
    request: AdvancedEarlyStoppingFrameworkInput, ctx: RunContext
) -> AdvancedEarlyStoppingFrameworkOutput:
    """Group-sequential monitoring: Lan–DeMets boundaries, the decision at this look, futility, SPRT.

    ``method=group_sequential``: z boundaries for the planned looks from O'Brien–Fleming-type, Pocock-type or
    Hwang–Shih–DeCani alpha spending, computed by numerical integration over the looks (Jennison & Turnbull ch. 19);
    nominal p-values, alpha spent, power and expected information; and at the current look the decision for the
    observed z (given, or computed from two arms' raw data or sufficient statistics) with conditional power
    (Lan–Wittes B-value form) for futility. ``method=sprt``: Wald's SPRT of p0 against p1 on binary outcomes with
    the log-likelihood-ratio path, boundaries log A and log B, and Wald's expected sample sizes.
    """
    req = request.root
    if isinstance(req, GroupSequentialRequest):
        return AdvancedEarlyStoppingFrameworkOutput(
            method="group_sequential", group_sequential=_run_group_sequential(req, ctx)
        )
    return AdvancedEarlyStoppingFrameworkOutput(method="sprt", sprt=_run_sprt(req, ctx))
