"""rule_analyzer: conjugate updates against scipy and hand derivations, Monte Carlo, shrinkage, ranking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from scipy import stats

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier1.rule_analyzer import RuleAnalyzerInput, RuleAnalyzerOutput, rule_analyzer
from tests.conftest import make_settings


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component="rule_analyzer", settings=settings, request_id=None)


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(
        component="rule_analyzer", settings=make_settings(tmp_path_factory.mktemp("rules")), request_id=None
    )


def analyze(ctx: RunContext, records: object, **options: object) -> RuleAnalyzerOutput:
    return rule_analyzer(RuleAnalyzerInput.model_validate({"records": records, **options}), ctx)


def binary_records(counts: dict[str, tuple[int, int]], context: str | None = None) -> list[dict]:
    """Records with ``s`` successes out of ``n`` per rule."""
    out = []
    for rule, (s, n) in counts.items():
        out += [{"rule": rule, "success": i < s, **({"context": context} if context else {})} for i in range(n)]
    return out


def assert_close(a: object, b: object) -> None:
    """Equal structure and values up to floating-point summation order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_close(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12)
    else:
        assert a == b


def by_rule(out: RuleAnalyzerOutput) -> dict:
    return {r.rule: r for r in out.rules}


# ------------------------------------------------------------------------------------------- conjugate updates


def test_beta_posterior_and_credible_interval_match_scipy(ctx):
    counts = {"a": (7, 20), "b": (0, 5), "c": (30, 30)}
    out = analyze(ctx, binary_records(counts), prior_alpha=2.0, prior_beta=3.0, credible_level=0.9)
    rules = by_rule(out)
    for name, (s, n) in counts.items():
        post = rules[name].success
        assert (post.alpha, post.beta) == (2 + s, 3 + n - s)
        assert post.mean == pytest.approx((2 + s) / (5 + n))
        lo, hi = stats.beta.ppf([0.05, 0.95], 2 + s, 3 + n - s)
        assert (post.ci_low, post.ci_high) == pytest.approx((lo, hi), rel=1e-12)
        assert rules[name].observed_rate == pytest.approx(s / n)


def test_beats_baseline_rate_is_the_beta_tail(ctx):
    out = analyze(ctx, binary_records({"a": (12, 40), "b": (25, 40)}), baseline_rate=0.4, shrinkage=False)
    for name, (s, n) in {"a": (12, 40), "b": (25, 40)}.items():
        assert by_rule(out)[name].p_beats_baseline_success == pytest.approx(stats.beta.sf(0.4, 1 + s, 1 + n - s))


def test_normal_inverse_gamma_update_matches_hand_derivation(ctx):
    x = np.array([0.3, 0.9, -0.2, 0.45, 0.6, 1.1, 0.05])
    mu0, k0, a0, b0 = 0.5, 2.0, 3.0, 1.5
    out = analyze(
        ctx,
        [{"rule": "r", "improvement": float(v)} for v in x],
        improvement_prior={"mean": mu0, "kappa": k0, "alpha": a0, "beta": b0},
        baseline_score=0.2,
    )
    post = out.rules[0].improvement
    # Conjugate update (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian distribution", §3):
    n, xbar = x.size, x.mean()
    kn = k0 + n
    mun = (k0 * mu0 + n * xbar) / kn
    an = a0 + n / 2
    bn = b0 + 0.5 * ((x - xbar) ** 2).sum() + k0 * n * (xbar - mu0) ** 2 / (2 * kn)
    assert post.location == pytest.approx(mun, rel=1e-12)
    assert post.df == pytest.approx(2 * an)
    assert post.scale == pytest.approx(math.sqrt(bn / (an * kn)), rel=1e-12)
    lo, hi = stats.t.interval(0.95, 2 * an, loc=mun, scale=math.sqrt(bn / (an * kn)))
    assert (post.ci_low, post.ci_high) == pytest.approx((lo, hi), rel=1e-10)
    expected = stats.t.sf(0.2, 2 * an, loc=mun, scale=math.sqrt(bn / (an * kn)))
    assert out.rules[0].p_beats_baseline_improvement == pytest.approx(expected, rel=1e-10)


def test_reference_prior_gives_the_classical_t_interval(ctx):
    rng = np.random.default_rng(4)
    x = rng.normal(0.3, 0.5, 25)
    post = analyze(ctx, [{"rule": "r", "improvement": float(v)} for v in x]).rules[0].improvement
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (post.ci_low, post.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert post.df == 24 and post.scale == pytest.approx(stats.sem(x), rel=1e-12)


def test_undefined_improvement_posteriors_are_explained(ctx):
    records = [
        {"rule": "one", "improvement": 1.0},
        {"rule": "flat", "improvement": 2.0},
        {"rule": "flat", "improvement": 2.0},
    ]
    out = analyze(ctx, records)
    for rule in out.rules:
        assert rule.improvement is None and rule.p_best_improvement is None
        assert any("undefined" in note for note in rule.notes)
    assert out.ranking == [] and out.rank_by == "improvement"


# ------------------------------------------------------------------------------------------- Monte Carlo


def test_p_best_and_rule_baseline_match_an_independent_monte_carlo(ctx):
    counts = {"a": (40, 100), "b": (46, 100), "c": (30, 70), "base": (35, 100)}
    out = analyze(ctx, binary_records(counts), shrinkage=False, baseline_rule="base", mc_draws=100_000, seed=11)
    rng = np.random.default_rng(2024)
    m = 1_000_000
    draws = {k: rng.beta(1 + s, 1 + n - s, m) for k, (s, n) in counts.items()}
    stacked = np.column_stack(list(draws.values()))
    winner = np.bincount(stacked.argmax(axis=1), minlength=4) / m
    rules = by_rule(out)
    tol = 5 * (0.5 / math.sqrt(100_000) + 0.5 / math.sqrt(m))
    for i, name in enumerate(counts):
        assert rules[name].p_best_success == pytest.approx(winner[i], abs=tol)
        if name != "base":
            assert rules[name].p_beats_baseline_success == pytest.approx((draws[name] > draws["base"]).mean(), abs=tol)
    assert rules["base"].p_beats_baseline_success is None
    assert sum(r.p_best_success for r in out.rules) == pytest.approx(1.0)
    assert out.mc_max_standard_error == pytest.approx(0.5 / math.sqrt(100_000))


def test_p_best_improvement_matches_independent_t_monte_carlo(ctx):
    rng = np.random.default_rng(8)
    data = {"a": rng.normal(0.2, 1, 30), "b": rng.normal(0.5, 1, 12), "c": rng.normal(0.35, 2, 50)}
    records = [{"rule": k, "improvement": float(v)} for k, xs in data.items() for v in xs]
    out = analyze(ctx, records, mc_draws=100_000, seed=5)
    ref = np.random.default_rng(77)
    m = 1_000_000
    cols = [xs.mean() + stats.sem(xs) * ref.standard_t(xs.size - 1, m) for xs in data.values()]
    winner = np.bincount(np.column_stack(cols).argmax(axis=1), minlength=3) / m
    tol = 5 * (0.5 / math.sqrt(100_000) + 0.5 / math.sqrt(m))
    for i, name in enumerate(data):
        assert by_rule(out)[name].p_best_improvement == pytest.approx(winner[i], abs=tol)


def test_same_seed_same_result_and_seed_matters(ctx):
    records = binary_records({"a": (5, 10), "b": (6, 10), "c": (4, 9)})
    first = analyze(ctx, records, seed=3)
    assert analyze(ctx, records, seed=3) == first
    assert analyze(ctx, records, seed=4).rules[0].p_best_success != first.rules[0].p_best_success


# ------------------------------------------------------------------------------------------- empirical Bayes


def test_method_of_moments_prior_matches_a_hand_computation(ctx):
    counts = {"a": (20, 100), "b": (45, 100), "c": (30, 60), "d": (70, 120), "e": (10, 80)}
    out = analyze(ctx, binary_records(counts))
    s = np.array([c[0] for c in counts.values()], dtype=float)
    n = np.array([c[1] for c in counts.values()], dtype=float)
    mu = s.sum() / n.sum()
    tau2 = np.var(s / n, ddof=1) - np.mean(mu * (1 - mu) / n)
    kappa = mu * (1 - mu) / tau2 - 1
    eb = out.empirical_bayes
    assert (eb.alpha, eb.beta) == pytest.approx((mu * kappa, (1 - mu) * kappa), rel=1e-12)
    assert out.posterior_used == "empirical_bayes"
    for name, (si, ni) in counts.items():
        shrunk = by_rule(out)[name].shrunken
        assert (shrunk.alpha, shrunk.beta) == pytest.approx((mu * kappa + si, (1 - mu) * kappa + ni - si))
        assert by_rule(out)[name].shrinkage_weight == pytest.approx(kappa / (kappa + ni))


def test_shrinkage_pulls_small_extreme_rules_more_than_large_ones(ctx):
    counts = {
        "tiny_perfect": (3, 3),
        "big_high": (850, 1000),
        "tiny_zero": (0, 4),
        "big_low": (150, 1000),
        "m1": (200, 500),
        "m2": (260, 500),
        "m3": (310, 500),
    }
    out = analyze(ctx, binary_records(counts))
    pooled = out.empirical_bayes.mean
    rules = by_rule(out)

    def pull(name: str) -> float:
        r = rules[name]
        return (r.observed_rate - r.shrunken.mean) / (r.observed_rate - pooled)

    assert 0 < pull("big_high") < pull("tiny_perfect") <= 1
    assert 0 < pull("big_low") < pull("tiny_zero") <= 1
    assert pull("tiny_perfect") > 0.3 and pull("big_high") < 0.05
    # The 3/3 rule must not be ranked first on the shrunken estimate; the 850/1000 rule is.
    assert out.ranking[0] == "big_high"


def test_no_detectable_heterogeneity_pools_completely(ctx):
    counts = {"a": (50, 100), "b": (51, 100), "c": (49, 100)}
    eb = analyze(ctx, binary_records(counts)).empirical_bayes
    assert eb.between_rule_variance == 0 and eb.concentration == 300 and "pooling" in eb.note


@pytest.mark.parametrize(
    ("counts", "why"),
    [({"only": (3, 10)}, "at least 2"), ({"a": (5, 5), "b": (9, 9)}, "both successes and failures")],
)
def test_empirical_bayes_not_fitted_says_why(ctx, counts, why):
    out = analyze(ctx, binary_records(counts))
    assert out.empirical_bayes is None and why in out.empirical_bayes_note
    assert out.posterior_used == "fixed_prior"
    assert all(r.shrunken is None for r in out.rules)


# ------------------------------------------------------------------------------------------- ranking


def test_ranking_recovers_planted_effects(ctx):
    rng = np.random.default_rng(123)
    rates = {"r0": 0.20, "r1": 0.32, "r2": 0.44, "r3": 0.56, "r4": 0.68}
    means = {"r0": 0.9, "r1": 0.6, "r2": 0.3, "r3": 0.0, "r4": -0.3}
    contexts = np.array(["code", "prose", "math"])
    records = []
    for rule, p in rates.items():
        ok = rng.random(600) < p
        score = rng.normal(means[rule], 1.0, 600)
        where = contexts[rng.integers(0, 3, 600)]
        records += [
            {"rule": rule, "context": str(c), "success": bool(o), "improvement": float(v)}
            for o, v, c in zip(ok, score, where, strict=True)
        ]
    rng.shuffle(records)
    by_success = analyze(ctx, records, seed=1)
    assert by_success.ranking == ["r4", "r3", "r2", "r1", "r0"]
    by_improvement = analyze(ctx, records, rank_by="improvement", rank_statistic="lower_bound", seed=1)
    assert by_improvement.ranking == ["r0", "r1", "r2", "r3", "r4"]
    by_p_best = analyze(ctx, records, rank_statistic="p_best", seed=1)
    assert by_p_best.ranking[0] == "r4" and by_p_best.rules[0].p_best_success > 0.95
    assert {c.context: c.best_rule for c in by_success.contexts} == {"code": "r4", "math": "r4", "prose": "r4"}


def test_per_context_analysis_finds_context_specific_winners(ctx):
    records = binary_records({"examples": (45, 50), "xml": (20, 50)}, context="coding") + binary_records(
        {"examples": (15, 50), "xml": (40, 50)}, context="writing"
    )
    out = analyze(ctx, records, shrinkage=False)
    contexts = {c.context: c for c in out.contexts}
    assert contexts["coding"].best_rule == "examples" and contexts["writing"].best_rule == "xml"
    cell = next(r for r in contexts["coding"].rules if r.rule == "examples")
    assert (cell.success.alpha, cell.success.beta) == (46, 6)
    assert cell.p_best_success > 0.99
    for c in out.contexts:
        assert sum(r.p_best_success for r in c.rules) == pytest.approx(1.0)
        assert c.n_records == 100
    assert analyze(ctx, records, by_context=False).contexts == []


@hsettings(max_examples=15, deadline=None)
@given(st.permutations(list(range(40))), st.integers(0, 2**16))
def test_result_is_invariant_to_record_order(module_ctx, order, seed):
    rng = np.random.default_rng(seed)
    base = [
        {
            "rule": f"r{rng.integers(0, 4)}",
            "context": ["a", "b"][i % 2],
            "success": bool(rng.random() < 0.5),
            "improvement": float(rng.normal()),
        }
        for i in range(40)
    ]
    first = analyze(module_ctx, base, seed=seed, mc_draws=2000)
    shuffled = analyze(module_ctx, [base[i] for i in order], seed=seed, mc_draws=2000)
    assert_close(shuffled.model_dump(), first.model_dump())
    for rule in first.rules:
        for p in (rule.p_best_success, rule.p_best_improvement):
            assert p is None or 0 <= p <= 1


# ------------------------------------------------------------------------------------------- inputs


def test_csv_and_json_files_equal_inline_records(ctx):
    rng = np.random.default_rng(0)
    records = [
        {
            "rule": f"r{i % 3}",
            "context": ["x", "y"][i % 2],
            "success": bool(rng.random() < 0.4 + 0.1 * (i % 3)),
            "improvement": round(float(rng.normal()), 6),
        }
        for i in range(90)
    ]
    records[5].pop("improvement")
    records[7].pop("success")
    inline = analyze(ctx, records, seed=2)
    (ctx.data_dir / "rules.json").write_text(json.dumps(records))

    def cell(r: dict, key: str) -> str:
        return str(r[key]).lower() if key in r else ""

    lines = ["rule,context,success,improvement"] + [
        f"{r['rule']},{r['context']},{cell(r, 'success')},{cell(r, 'improvement')}" for r in records
    ]
    (ctx.data_dir / "rules.csv").write_text("\n".join(lines) + "\n")
    assert analyze(ctx, {"path": "rules.json"}, seed=2) == inline
    assert analyze(ctx, {"path": "rules.csv"}, seed=2) == inline


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,success\nr,1\n", "'rule' column"),
        ("rule,success\nr,maybe\n", "row 2"),
        ("rule,improvement\nr,abc\n", "improvement"),
        ("rule,success,improvement\nr,,\n", "success and/or improvement"),
        ("rule,success\nr,1,extra\n", "cells"),
    ],
)
def test_bad_csv_names_the_field(ctx, content, message):
    (ctx.data_dir / "bad.csv").write_text(content)
    with pytest.raises(InvalidInput, match=message) as err:
        analyze(ctx, {"path": "bad.csv"})
    assert err.value.field == "records.path"


def test_bad_inputs(ctx):
    with pytest.raises(BadRequest, match=r"records\.path"):
        analyze(ctx, {"path": "../etc/passwd"})
    with pytest.raises(BadRequest, match="no such file"):
        analyze(ctx, {"path": "missing.csv"})
    (ctx.data_dir / "bad.json").write_text('[{"rule": "r"}]')
    with pytest.raises(InvalidInput) as err:
        analyze(ctx, {"path": "bad.json"})
    assert err.value.field == "records.path" and "success and/or improvement" in str(err.value)
    with pytest.raises(InvalidInput) as err:
        analyze(ctx, [{"rule": "r", "success": True}], baseline_rule="ghost")
    assert err.value.field == "baseline_rule"
    with pytest.raises(InvalidInput) as err:
        analyze(ctx, [], seed=0)
    assert err.value.field == "records"


def test_http_errors_name_the_field(client_for):
    client = client_for(rule_analyzer)
    url = "/run/rule_analyzer"
    assert client.post(url, json={}).status_code == 422
    r = client.post(url, json={"records": [{"rule": "r"}]})
    assert r.status_code == 422 and "records" in r.json()["detail"]
    r = client.post(url, json={"records": [{"rule": "r", "success": True}], "baseline_rule": "r", "baseline_rate": 0.5})
    assert r.status_code == 422 and "baseline" in r.json()["detail"]
    r = client.post(url, json=rule_analyzer.example)
    assert r.status_code == 200 and r.json()["component_result"]["n_rules"] == 3
