"""experiment_orchestrator: known answers against statsmodels / scipy / hashlib, state paths and restart."""

from __future__ import annotations

import hashlib
import itertools
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)

from mlmesh.errors import Conflict, InvalidInput, NotFound
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier1.experiment_orchestrator import (
    ExperimentOrchestratorInput,
    ExperimentOrchestratorOutput,
    assign_variants,
    experiment_orchestrator,
)
from tests.conftest import AUTH, make_settings

ROOT = Path(__file__).resolve().parents[3]


SWAP_IDS = itertools.count()
XPROC_UNITS = [f"unit-{i}" for i in range(50)]


@pytest.fixture(scope="module", autouse=True)
def other_process() -> Iterator[subprocess.Popen[str]]:
    """Assign units in a separate interpreter (another hash seed), started early so it runs alongside the tests."""
    code = (
        "from services.tier1.experiment_orchestrator import assign_variants\n"
        f"index, _ = assign_variants('xproc', {XPROC_UNITS!r}, [1.0, 1.0])\n"
        "print(','.join(['control', 'v1'][i] for i in index))\n"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    return RunContext(component="experiment_orchestrator", settings=settings, request_id=None)


@pytest.fixture(scope="module")
def swap_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """One database for all Hypothesis examples (each example uses fresh experiment ids)."""
    return RunContext(
        component="experiment_orchestrator", settings=make_settings(tmp_path_factory.mktemp("swap")), request_id=None
    )


def run(ctx: RunContext, **body: object) -> ExperimentOrchestratorOutput:
    return experiment_orchestrator(ExperimentOrchestratorInput.model_validate(body), ctx)


def create(ctx: RunContext, eid: str, metric: str = "binary", weights=(1.0, 1.0), **extra: object) -> None:
    variants = [{"name": n, "weight": w} for n, w in zip(["control", "v1", "v2", "v3"], weights, strict=False)]
    run(ctx, operation="create", experiment_id=eid, variants=variants, metric=metric, **extra)


def aggregates(ctx: RunContext, eid: str, rows: list[tuple[str, int, float, float | None]]) -> None:
    run(
        ctx,
        operation="record",
        experiment_id=eid,
        aggregates=[{"variant": v, "n": n, "sum": s, "sum_sq": q} for v, n, s, q in rows],
    )


# ------------------------------------------------------------------------------------------------ design


@pytest.mark.parametrize(
    ("p_c", "mde", "ratio", "alpha", "power", "alternative"),
    [
        (0.10, 0.02, 1.0, 0.05, 0.8, "two-sided"),
        (0.25, 0.05, 1.0, 0.05, 0.9, "two-sided"),
        (0.05, 0.01, 2.0, 0.01, 0.8, "two-sided"),
        (0.50, 0.03, 0.5, 0.05, 0.8, "one-sided"),
    ],
)
def test_pooled_two_proportion_sample_size_matches_statsmodels(ctx, p_c, mde, ratio, alpha, power, alternative):
    design = run(
        ctx,
        operation="design",
        metric="binary",
        baseline_rate=p_c,
        mde=mde,
        alpha=alpha,
        power=power,
        alternative=alternative,
        allocation_ratio=ratio,
    ).design
    p_t = p_c + mde
    # statsmodels: group 1 = control (prop1 = prop2 + diff), nobs2 = ratio · nobs1 = the variant.
    ref = samplesize_proportions_2indep_onetail(
        diff=p_c - p_t,
        prop2=p_t,
        power=power,
        ratio=ratio,
        alpha=alpha,
        alternative="two-sided" if alternative == "two-sided" else "larger",
    )
    assert abs(design.n_control - math.ceil(ref)) <= 1
    assert abs(design.n_per_variant - math.ceil(ratio * ref)) <= 1
    assert design.total == design.n_control + design.n_per_variant


@pytest.mark.parametrize(("p_c", "p_t", "ratio"), [(0.1, 0.12, 1.0), (0.4, 0.45, 3.0), (0.02, 0.03, 1.0)])
def test_arcsine_sample_size_matches_normal_ind_power(ctx, p_c, p_t, ratio):
    design = run(
        ctx,
        operation="design",
        metric="binary",
        baseline_rate=p_c,
        mde=p_t - p_c,
        allocation_ratio=ratio,
        proportion_method="arcsine",
    ).design
    h = proportion_effectsize(p_t, p_c)
    ref = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=ratio)
    assert abs(design.n_control - math.ceil(ref)) <= 1
    assert abs(design.standardized_effect - abs(h)) < 1e-12


@pytest.mark.parametrize(("sd", "mde", "ratio", "power"), [(1.0, 0.2, 1.0, 0.8), (12.0, 1.5, 2.0, 0.9)])
def test_means_sample_size_matches_zt_ind_solve_power(ctx, sd, mde, ratio, power):
    design = run(
        ctx,
        operation="design",
        metric="continuous",
        baseline_sd=sd,
        mde=mde,
        allocation_ratio=ratio,
        power=power,
    ).design
    ref = zt_ind_solve_power(effect_size=mde / sd, alpha=0.05, power=power, ratio=ratio)
    assert abs(design.n_control - math.ceil(ref)) <= 1
    assert abs(design.n_per_variant - math.ceil(ratio * ref)) <= 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metric": "binary", "baseline_rate": 0.1, "alpha": 5e-324}, "alpha"),  # z(1 − α/2) overflows
        ({"metric": "continuous", "baseline_sd": 5e-324}, "baseline_sd"),  # d = δ/σ is infinite
        ({"metric": "continuous", "baseline_sd": 1e12, "mde": 1e-9}, "mde"),  # ~1e43 units per arm
    ],
)
def test_designs_no_one_could_run_are_422_naming_the_field(ctx, body, field):
    with pytest.raises(InvalidInput) as caught:
        run(ctx, operation="design", **{"mde": 0.02, **body})
    assert caught.value.field == field


def test_relative_mde_and_bonferroni_over_variants(ctx):
    design = run(
        ctx,
        operation="design",
        metric="continuous",
        baseline_mean=50.0,
        baseline_sd=10.0,
        mde=0.04,
        mde_type="relative",
        variants=3,
    ).design
    assert design.absolute_effect == pytest.approx(2.0)
    assert design.alpha_per_comparison == pytest.approx(0.025)
    ref = zt_ind_solve_power(effect_size=0.2, alpha=0.025, power=0.8)
    assert abs(design.n_control - math.ceil(ref)) <= 1
    assert design.total == design.n_control + 2 * design.n_per_variant


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metric": "binary", "mde": 0.1}, "baseline_rate"),
        ({"metric": "binary", "baseline_rate": 0.95, "mde": 0.1}, "mde"),
        ({"metric": "continuous", "mde": 0.1}, "baseline_sd"),
        ({"metric": "continuous", "baseline_sd": 1.0, "mde": 0.1, "mde_type": "relative"}, "baseline_mean"),
    ],
)
def test_design_rejects_incomplete_inputs(ctx, body, field):
    with pytest.raises(InvalidInput) as err:
        run(ctx, operation="design", **body)
    assert err.value.field == field


# ------------------------------------------------------------------------------------------------ assignment


def reference_bucket(experiment_id: str, unit_id: str) -> float:
    digest = hashlib.sha256(f"{experiment_id}:{unit_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def test_assignment_is_the_documented_sha256_mapping(ctx):
    create(ctx, "hash-exp", weights=(0.2, 0.5, 0.3))
    units = ["user-1", "user-42", "alice", "ünïcode", "x" * 200]
    out = run(ctx, operation="assign", experiment_id="hash-exp", unit_ids=units)
    edges = np.cumsum([0.2, 0.5, 0.3])
    for a, unit in zip(out.assignments, units, strict=True):
        u = reference_bucket("hash-exp", unit)
        assert a.bucket == u
        assert a.variant == ["control", "v1", "v2"][int(np.searchsorted(edges, u, side="right"))]
    # A fixed value: sha256(b"hash-exp:user-42")[:8] → 53-bit fraction, computed independently here.
    assert out.assignments[1].bucket == reference_bucket("hash-exp", "user-42")


def test_allocation_matches_weights_over_100k_units(ctx):
    weights = np.array([0.5, 0.3, 0.2])
    units = [f"u{i}" for i in range(100_000)]
    index, _ = assign_variants("alloc", units, weights.tolist())
    observed = np.bincount(index, minlength=3)
    assert np.all(np.abs(observed / 1e5 - weights) < 4 * np.sqrt(weights * (1 - weights) / 1e5))
    assert stats.chisquare(observed, weights * 1e5).pvalue > 1e-3
    # The component assigns exactly as the function does, and counts what it recorded.
    create(ctx, "alloc", weights=tuple(weights))
    out = run(ctx, operation="assign", experiment_id="alloc", unit_ids=units[:5000])
    names = np.array(["control", "v1", "v2"])
    assert [a.variant for a in out.assignments] == names[index[:5000]].tolist()
    info = run(ctx, operation="get", experiment_id="alloc").experiment
    assert [v.assigned for v in info.variants] == np.bincount(index[:5000], minlength=3).tolist()


def test_assignment_is_recorded_idempotently(ctx):
    create(ctx, "idem")
    first = run(ctx, operation="assign", experiment_id="idem", unit_ids=["a", "b", "c"])
    again = run(ctx, operation="assign", experiment_id="idem", unit_ids=["c", "b", "a", "d"])
    assert first.newly_assigned == 3
    assert again.newly_assigned == 1
    assert {a.unit_id: a.variant for a in first.assignments}.items() <= {
        a.unit_id: a.variant for a in again.assignments
    }.items()


def test_concurrent_assignment_counts_each_unit_once(ctx):
    create(ctx, "race")
    units = [f"r{i}" for i in range(400)]
    results: list[int] = []

    def worker(offset: int) -> None:
        chunk = units[offset : offset + 200]
        results.append(run(ctx, operation="assign", experiment_id="race", unit_ids=chunk).newly_assigned)

    threads = [threading.Thread(target=worker, args=(o,)) for o in (0, 100, 200, 0, 100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 400
    assert sum(v.assigned for v in run(ctx, operation="get", experiment_id="race").experiment.variants) == 400


# ------------------------------------------------------------------------------------------------ analysis


def test_two_proportion_z_wilson_and_newcombe_match_statsmodels(ctx):
    create(ctx, "ztest")
    aggregates(ctx, "ztest", [("control", 1200, 130, None), ("v1", 1150, 165, None)])
    analysis = run(ctx, operation="analyze", experiment_id="ztest", alpha=0.05).analysis
    comp = analysis.comparisons[0]
    z, p = proportions_ztest([165, 130], [1150, 1200])
    assert comp.statistic == pytest.approx(z, rel=1e-10)
    assert comp.p_value == pytest.approx(p, rel=1e-10)
    lo, hi = confint_proportions_2indep(165, 1150, 130, 1200, method="newcomb", compare="diff", alpha=0.05)
    assert (comp.ci_low, comp.ci_high) == pytest.approx((lo, hi), abs=1e-10)
    for arm, (s, n) in zip(analysis.arms, [(130, 1200), (165, 1150)], strict=True):
        assert arm.wilson_ci == pytest.approx(proportion_confint(s, n, alpha=0.05, method="wilson"), abs=1e-12)
        assert (arm.posterior.alpha, arm.posterior.beta) == (1 + s, 1 + n - s)
        lo_b, hi_b = stats.beta.ppf([0.025, 0.975], 1 + s, 1 + n - s)
        assert (arm.posterior.ci_low, arm.posterior.ci_high) == pytest.approx((lo_b, hi_b), abs=1e-12)


def test_holm_adjustment_over_variants_matches_statsmodels(ctx):
    create(ctx, "holm", weights=(1, 1, 1, 1))
    aggregates(
        ctx, "holm", [("control", 900, 90, None), ("v1", 900, 118, None), ("v2", 900, 101, None), ("v3", 900, 70, None)]
    )
    comps = run(ctx, operation="analyze", experiment_id="holm").analysis.comparisons
    raw = [c.p_value for c in comps]
    assert raw == pytest.approx([proportions_ztest([s, 90], [900, 900])[1] for s in (118, 101, 70)], rel=1e-10)
    assert [c.p_value_holm for c in comps] == pytest.approx(multipletests(raw, method="holm")[1], rel=1e-12)


def test_welch_matches_scipy_and_units_equal_aggregates(ctx):
    rng = np.random.default_rng(7)
    control, variant = rng.normal(10, 2, 300), rng.normal(10.4, 3, 250)
    create(ctx, "welch", metric="continuous")
    units = [f"w{i}" for i in range(2000)]
    assigned = run(ctx, operation="assign", experiment_id="welch", unit_ids=units).assignments
    c_units = [a.unit_id for a in assigned if a.variant == "control"][:300]
    v_units = [a.unit_id for a in assigned if a.variant == "v1"][:250]
    outcomes = [
        {"unit_id": u, "value": float(x)} for u, x in zip(c_units + v_units, np.r_[control, variant], strict=True)
    ]
    run(ctx, operation="record", experiment_id="welch", outcomes=outcomes)
    by_units = run(ctx, operation="analyze", experiment_id="welch").analysis

    ref = stats.ttest_ind(variant, control, equal_var=False)
    comp = by_units.comparisons[0]
    assert comp.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert comp.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert comp.df == pytest.approx(ref.df, rel=1e-9)
    lo, hi = ref.confidence_interval(0.95)
    assert (comp.ci_low, comp.ci_high) == pytest.approx((lo, hi), rel=1e-8)

    create(ctx, "welch-agg", metric="continuous")
    aggregates(
        ctx,
        "welch-agg",
        [(n, len(x), float(x.sum()), float((x**2).sum())) for n, x in (("control", control), ("v1", variant))],
    )
    by_sums = run(ctx, operation="analyze", experiment_id="welch-agg").analysis
    assert by_sums.comparisons[0].p_value == pytest.approx(comp.p_value, rel=1e-9)
    assert by_sums.comparisons[0].prob_better == pytest.approx(comp.prob_better, rel=1e-9)


@pytest.mark.parametrize(
    ("control", "variant"),
    [((40, 500), (55, 500)), ((5000, 100_000), (4, 60)), ((3, 20), (900, 10_000))],
)
def test_beta_prob_better_and_losses_match_independent_monte_carlo(ctx, control, variant):
    create(ctx, "mc")
    aggregates(ctx, "mc", [("control", control[1], control[0], None), ("v1", variant[1], variant[0], None)])
    comp = run(ctx, operation="analyze", experiment_id="mc").analysis.comparisons[0]
    rng = np.random.default_rng(20240601)
    m = 1_000_000
    a = rng.beta(1 + control[0], 1 + control[1] - control[0], m)
    b = rng.beta(1 + variant[0], 1 + variant[1] - variant[0], m)
    p = (b > a).mean()
    assert abs(comp.prob_better - p) < 5 * math.sqrt(p * (1 - p) / m) + comp.bayes_error
    for ours, draws in (
        (comp.expected_loss_ship, np.maximum(a - b, 0)),
        (comp.expected_loss_keep, np.maximum(b - a, 0)),
    ):
        assert abs(ours - draws.mean()) < 5 * draws.std() / math.sqrt(m) + 1e-7
    assert comp.bayes_error < 1e-4


def test_normal_posterior_closed_form_matches_monte_carlo(ctx):
    create(ctx, "normal", metric="continuous")
    aggregates(
        ctx, "normal", [("control", 40, 400.0, 400.0 * 10 + 39 * 4.0), ("v1", 50, 515.0, 515.0**2 / 50 + 49 * 9.0)]
    )
    analysis = run(ctx, operation="analyze", experiment_id="normal").analysis
    c, v = analysis.arms[0].posterior, analysis.arms[1].posterior
    assert c.mean == pytest.approx(10.0) and c.sd == pytest.approx(2.0 / math.sqrt(40))
    assert v.mean == pytest.approx(10.3) and v.sd == pytest.approx(3.0 / math.sqrt(50))
    rng = np.random.default_rng(3)
    d = rng.normal(v.mean, v.sd, 1_000_000) - rng.normal(c.mean, c.sd, 1_000_000)
    comp = analysis.comparisons[0]
    assert comp.prob_better == pytest.approx((d > 0).mean(), abs=3e-3)
    assert comp.expected_loss_ship == pytest.approx(np.maximum(-d, 0).mean(), abs=2e-3)
    assert comp.expected_loss_keep == pytest.approx(np.maximum(d, 0).mean(), abs=2e-3)


@hsettings(max_examples=20, deadline=None)
@given(n1=st.integers(1, 3000), n2=st.integers(1, 3000), f1=st.floats(0, 1), f2=st.floats(0, 1))
def test_swapping_arms_mirrors_the_result(swap_ctx, n1, n2, f1, f2):
    s1, s2 = round(f1 * n1), round(f2 * n2)
    ab, ba = f"ab{next(SWAP_IDS)}", f"ba{next(SWAP_IDS)}"
    create(swap_ctx, ab)
    create(swap_ctx, ba)
    aggregates(swap_ctx, ab, [("control", n1, s1, None), ("v1", n2, s2, None)])
    aggregates(swap_ctx, ba, [("control", n2, s2, None), ("v1", n1, s1, None)])
    x = run(swap_ctx, operation="analyze", experiment_id=ab).analysis.comparisons[0]
    y = run(swap_ctx, operation="analyze", experiment_id=ba).analysis.comparisons[0]
    tol = x.bayes_error + y.bayes_error + 1e-9
    assert x.prob_better + y.prob_better == pytest.approx(1.0, abs=tol)
    assert x.expected_loss_ship == pytest.approx(y.expected_loss_keep, abs=tol)
    assert 0 <= x.prob_better <= 1
    if x.p_value is None:
        assert y.p_value is None and x.note
    else:
        assert 0 <= x.p_value <= 1
        assert x.p_value == pytest.approx(y.p_value, rel=1e-9, abs=1e-300)
        assert x.statistic == pytest.approx(-y.statistic, rel=1e-9, abs=1e-12)


def test_recommendations_state_their_reasons(ctx):
    create(ctx, "win", planned_sample_size=20_000)
    aggregates(ctx, "win", [("control", 10_000, 1000, None), ("v1", 10_000, 1200, None)])
    rec = run(ctx, operation="analyze", experiment_id="win").analysis.recommendation
    assert rec.decision == "ship_variant" and rec.variant == "v1"
    assert any("P(better than control)" in r for r in rec.reasons)

    create(ctx, "same")
    aggregates(ctx, "same", [("control", 200_000, 20_000, None), ("v1", 200_000, 20_000, None)])
    rec = run(ctx, operation="analyze", experiment_id="same", loss_tolerance=0.002).analysis.recommendation
    assert rec.decision == "keep_control"

    create(ctx, "early", planned_sample_size=100_000)
    aggregates(ctx, "early", [("control", 100, 10, None), ("v1", 100, 12, None)])
    rec = run(ctx, operation="analyze", experiment_id="early").analysis.recommendation
    assert rec.decision == "continue"
    assert any("planned" in r for r in rec.reasons)

    create(ctx, "srm")
    aggregates(ctx, "srm", [("control", 5000, 500, None), ("v1", 4000, 400, None)])
    analysis = run(ctx, operation="analyze", experiment_id="srm").analysis
    assert analysis.sample_ratio.flagged
    assert analysis.sample_ratio.p_value == pytest.approx(stats.chisquare([5000, 4000]).pvalue, rel=1e-9)
    assert analysis.recommendation.decision == "investigate"


def test_degenerate_data_gives_stated_reasons_not_errors(ctx):
    create(ctx, "allzero")
    aggregates(ctx, "allzero", [("control", 50, 0, None), ("v1", 50, 0, None)])
    comp = run(ctx, operation="analyze", experiment_id="allzero").analysis.comparisons[0]
    assert comp.p_value is None and "pooled rate" in comp.note
    assert comp.prob_better == pytest.approx(0.5, abs=1e-4)

    create(ctx, "flat", metric="continuous")
    aggregates(ctx, "flat", [("control", 10, 30.0, 90.0), ("v1", 10, 30.0, 90.0)])
    comp = run(ctx, operation="analyze", experiment_id="flat").analysis.comparisons[0]
    assert comp.p_value is None and comp.prob_better is None and "zero variance" in comp.note

    create(ctx, "empty", metric="continuous")
    analysis = run(ctx, operation="analyze", experiment_id="empty").analysis
    assert analysis.recommendation.decision == "continue"
    assert analysis.sample_ratio is None


# ------------------------------------------------------------------------------------------------ state errors


def test_record_validation(ctx):
    create(ctx, "val")
    run(ctx, operation="assign", experiment_id="val", unit_ids=["a"])
    with pytest.raises(InvalidInput, match="0 or 1"):
        run(ctx, operation="record", experiment_id="val", outcomes=[{"unit_id": "a", "value": 0.5}])
    with pytest.raises(InvalidInput, match="no assignment") as err:
        run(ctx, operation="record", experiment_id="val", outcomes=[{"unit_id": "zzz", "value": 1}])
    assert err.value.field == "outcomes"
    with pytest.raises(InvalidInput) as err:
        aggregates(ctx, "val", [("control", 10, 11, None)])
    assert err.value.field == "aggregates.0.sum"
    with pytest.raises(InvalidInput) as err:
        aggregates(ctx, "val", [("nope", 10, 1, None)])
    assert err.value.field == "aggregates.0.variant"
    create(ctx, "valc", metric="continuous")
    with pytest.raises(InvalidInput) as err:
        aggregates(ctx, "valc", [("control", 10, 10.0, 5.0)])
    assert err.value.field == "aggregates.0.sum_sq"


def test_batch_id_and_unit_replacement_are_idempotent(ctx):
    create(ctx, "batch")
    run(ctx, operation="assign", experiment_id="batch", unit_ids=["a", "b"])
    body = {
        "operation": "record",
        "experiment_id": "batch",
        "batch_id": "day-1",
        "aggregates": [{"variant": "control", "n": 10, "sum": 3}],
    }
    assert not run(ctx, **body).recorded.duplicate_batch
    assert run(ctx, **body).recorded.duplicate_batch
    first = run(ctx, operation="record", experiment_id="batch", outcomes=[{"unit_id": "a", "value": 1}])
    again = run(ctx, operation="record", experiment_id="batch", outcomes=[{"unit_id": "a", "value": 0}])
    assert (first.recorded.added, again.recorded.added, again.recorded.replaced) == (1, 0, 1)
    arms = {a.variant: a for a in run(ctx, operation="analyze", experiment_id="batch").analysis.arms}
    variant_of_a = run(ctx, operation="assign", experiment_id="batch", unit_ids=["a"]).assignments[0].variant
    expected_n = 10 + 1 if variant_of_a == "control" else 10
    assert arms["control"].n == expected_n
    assert sum(a.successes for a in arms.values()) == 3  # unit a's outcome was replaced by 0


def test_state_conflicts_and_unknown_ids(ctx):
    create(ctx, "life")
    with pytest.raises(Conflict):
        create(ctx, "life")
    run(ctx, operation="stop", experiment_id="life", reason="done")
    with pytest.raises(Conflict, match="already stopped"):
        run(ctx, operation="stop", experiment_id="life")
    with pytest.raises(Conflict):
        aggregates(ctx, "life", [("control", 1, 1, None)])
    with pytest.raises(Conflict):
        run(ctx, operation="assign", experiment_id="life", unit_ids=["a"])
    assert run(ctx, operation="analyze", experiment_id="life").analysis.status == "stopped"
    for op in ("get", "analyze", "stop"):
        with pytest.raises(NotFound):
            run(ctx, operation=op, experiment_id="ghost")
    with pytest.raises(NotFound):
        run(ctx, operation="assign", experiment_id="ghost", unit_ids=["a"])
    create(ctx, "other")
    listed = run(ctx, operation="list").experiments
    assert [e.experiment_id for e in listed] == ["life", "other"]
    assert [e.experiment_id for e in run(ctx, operation="list", status="stopped").experiments] == ["life"]


def test_http_problem_bodies(client_for):
    client = client_for(experiment_orchestrator)
    url = "/run/experiment_orchestrator"
    assert client.post(url, json={}).status_code == 422
    assert client.post(url, json={"operation": "fly"}).status_code == 422
    r = client.post(url, json={"operation": "get", "experiment_id": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    body = {"operation": "create", "experiment_id": "h", "metric": "binary", "variants": [{"name": "a"}, {"name": "b"}]}
    assert client.post(url, json=body).status_code == 200
    assert client.post(url, json=body).status_code == 409
    assert client.post(url, json={"operation": "stop", "experiment_id": "h"}).status_code == 200
    r = client.post(
        url, json={"operation": "record", "experiment_id": "h", "aggregates": [{"variant": "a", "n": 1, "sum": 1}]}
    )
    assert r.status_code == 409 and r.json()["title"] == "Conflict"
    r = client.post(url, json={"operation": "design", "metric": "binary", "mde": 0.1})
    assert r.status_code == 422 and "baseline_rate" in r.json()["detail"]
    r = client.post(url, json={**body, "experiment_id": "bad:id"})
    assert r.status_code == 422 and "experiment_id" in r.json()["detail"]


def test_state_survives_a_restart(settings):
    url = "/run/experiment_orchestrator"

    def app() -> TestClient:
        return TestClient(
            create_app("tier1", settings=settings, components=[experiment_orchestrator], announce=False), headers=AUTH
        )

    with app() as client:
        body = {
            "operation": "create",
            "experiment_id": "persist",
            "metric": "binary",
            "variants": [{"name": "a"}, {"name": "b"}],
            "planned_sample_size": 100,
        }
        assert client.post(url, json=body).status_code == 200
        first = client.post(url, json={"operation": "assign", "experiment_id": "persist", "unit_ids": ["u1", "u2"]})
        client.post(
            url,
            json={
                "operation": "record",
                "experiment_id": "persist",
                "outcomes": [{"unit_id": "u1", "value": 1}, {"unit_id": "u2", "value": 0}],
            },
        )
        before = client.post(url, json={"operation": "analyze", "experiment_id": "persist"}).json()["component_result"]
    with app() as client:
        got = client.post(url, json={"operation": "get", "experiment_id": "persist"}).json()["component_result"]
        assert sum(v["assigned"] for v in got["experiment"]["variants"]) == 2
        assert sum(v["n"] for v in got["experiment"]["variants"]) == 2
        again = client.post(url, json={"operation": "assign", "experiment_id": "persist", "unit_ids": ["u1", "u2"]})
        assert again.json()["component_result"]["newly_assigned"] == 0
        assert again.json()["component_result"]["assignments"] == first.json()["component_result"]["assignments"]
        after = client.post(url, json={"operation": "analyze", "experiment_id": "persist"}).json()["component_result"]
        assert after == before


def test_assignment_is_the_same_in_another_process(ctx, other_process):
    create(ctx, "xproc")
    here = [a.variant for a in run(ctx, operation="assign", experiment_id="xproc", unit_ids=XPROC_UNITS).assignments]
    out, err = other_process.communicate(timeout=120)
    assert other_process.returncode == 0, err
    assert out.strip().split(",") == here
