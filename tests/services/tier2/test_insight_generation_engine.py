"""insight_generation_engine: planted structure recovered, tests equal scipy/statsmodels, no insight from noise."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats
from statsmodels.stats.meta_analysis import effectsize_smd
from statsmodels.stats.multitest import multipletests

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.domain import open_store
from services.framework import RunContext
from services.tier2.insight_generation_engine import (
    InsightGenerationEngineInput,
    InsightGenerationEngineOutput,
    insight_generation_engine,
)

T0 = 1_700_000_000.0
DAY = 86_400.0
ROUTE = "/run/insight_generation_engine"


def run(settings: Settings, **body: Any) -> InsightGenerationEngineOutput:
    ctx = RunContext(component="insight_generation_engine", settings=settings, request_id=None)
    return insight_generation_engine(InsightGenerationEngineInput.model_validate(body), ctx)


def records(
    rng: np.random.Generator,
    rules: dict[str, float],
    *,
    domains: tuple[str, ...] = ("code", "writing", "analysis"),
    per_cell: int = 20,
    sd: float | dict[str, float] = 0.05,
    days: float = 30.0,
    slope: dict[str, float] | None = None,
    dip: dict[tuple[str, str], float] | None = None,
) -> list[dict[str, Any]]:
    """Seeded applications: rule means, per-rule sd, planted slopes (per day) and planted cell dips."""
    out = []
    for rule, mean in rules.items():
        s = sd[rule] if isinstance(sd, dict) else sd
        for domain in domains:
            t = np.sort(rng.uniform(0, days, per_cell))
            y = mean + rng.normal(0, s, per_cell) + (slope or {}).get(rule, 0.0) * t
            y -= (dip or {}).get((rule, domain), 0.0)
            out += [
                {"rule_id": rule, "improvement_score": float(v), "applied_at": T0 + DAY * float(d), "domain": domain}
                for v, d in zip(y, t, strict=True)
            ]
    return out


def column(rows: list[dict[str, Any]], rule: str, domain: str | None = None, key: str = "improvement_score"):
    return np.array([r[key] for r in rows if r["rule_id"] == rule and (domain is None or r["domain"] == domain)])


def test_planted_trend_has_the_right_sign_and_linregress_p_value(settings: Settings) -> None:
    rng = np.random.default_rng(11)
    rows = records(rng, {"clarity": 0.3, "few_shot": 0.3}, slope={"clarity": -0.004})
    out = run(settings, records=rows)
    found = {i.id: i for i in out.insights}
    insight = found["trend:clarity"]
    assert insight.kind == "trend" and insight.effect_size is not None and insight.effect_size < 0
    assert "declining" in insight.title and insight.severity in ("medium", "high")
    t = (column(rows, "clarity", key="applied_at") - min(r["applied_at"] for r in rows)) / DAY
    ref = stats.linregress(t, column(rows, "clarity"))
    trend = next(tr for tr in out.trends if tr.rule_id == "clarity")
    assert trend.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert trend.slope_per_day == pytest.approx(ref.slope, rel=1e-10)
    assert trend.stderr == pytest.approx(ref.stderr, rel=1e-10)
    assert insight.p_value == trend.p_value
    assert "trend:few_shot" not in found  # the flat rule shows no trend


def test_planted_weak_context_is_found_with_welch_one_sided(settings: Settings) -> None:
    rng = np.random.default_rng(5)
    rows = records(rng, {"clarity": 0.3, "role": 0.3}, dip={("clarity", "code"): 0.08})
    out = run(settings, records=rows)
    weak = [i for i in out.insights if i.kind == "weak_context"]
    assert [(i.rule_ids, i.domain) for i in weak] == [(["clarity"], "code")]
    cell = column(rows, "clarity", "code")
    rest = np.concatenate([column(rows, "clarity", d) for d in ("writing", "analysis")])
    ref = stats.ttest_ind(cell, rest, equal_var=False, alternative="less")
    test = next(c for c in out.contexts if (c.rule_id, c.domain) == ("clarity", "code"))
    assert test.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert test.t == pytest.approx(ref.statistic, rel=1e-10)
    ci = stats.ttest_ind(rest, cell, equal_var=False).confidence_interval(0.95)
    assert (test.ci_low, test.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert "code" in weak[0].recommendation and "clarity" in weak[0].recommendation


def test_gap_equals_welch_and_statsmodels_effect_size(settings: Settings) -> None:
    rng = np.random.default_rng(3)
    rows = records(rng, {"clarity": 0.35, "role": 0.30, "xml": 0.2}, per_cell=8, sd=0.06)
    out = run(settings, records=rows)
    gap = out.gap
    assert gap is not None and (gap.best, gap.worst) == ("clarity", "xml")
    a, b = column(rows, "clarity"), column(rows, "xml")
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert gap.p_value == pytest.approx(ref.pvalue, rel=1e-10) and gap.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (gap.ci_low, gap.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert gap.pairs == 3 and gap.p_adjusted == pytest.approx(min(1.0, 3 * ref.pvalue), rel=1e-12)
    g, var = effectsize_smd(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size)
    assert gap.hedges_g == pytest.approx(g, rel=1e-10)
    half = stats.norm.ppf(0.975) * np.sqrt(var)
    assert (gap.g_ci_low, gap.g_ci_high) == pytest.approx((g - half, g + half), rel=1e-10)
    top = out.insights[0]
    assert top.kind == "best_worst_gap" and top.rule_ids == ["clarity", "xml"] and top.severity == "high"


def test_unstable_rule_is_brown_forsythe(settings: Settings) -> None:
    rng = np.random.default_rng(8)
    rows = records(rng, {"clarity": 0.3, "role": 0.3}, sd={"clarity": 0.15, "role": 0.04}, per_cell=12)
    out = run(settings, records=rows)
    assert [i.id for i in out.insights if i.kind == "unstable_rule"] == ["unstable_rule:clarity"]
    a, b = column(rows, "clarity"), column(rows, "role")
    # Two groups: the one-sided test is half of scipy's Brown–Forsythe p-value, its t² is levene's W.
    ref = stats.levene(a, b, center="median")
    test = next(v for v in out.variances if v.rule_id == "clarity")
    assert test.statistic > 0
    assert test.statistic**2 == pytest.approx(ref.statistic, rel=1e-10)
    assert test.p_value == pytest.approx(ref.pvalue / 2, rel=1e-10)
    assert out.variance_omnibus is not None
    assert out.variance_omnibus.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert test.sd_ratio == pytest.approx(a.std(ddof=1) / b.std(ddof=1), rel=1e-12)


def test_omnibus_brown_forsythe_over_many_rules_equals_scipy(settings: Settings) -> None:
    rng = np.random.default_rng(2)
    rows = records(rng, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.2}, per_cell=6)
    out = run(settings, records=rows)
    ref = stats.levene(*(column(rows, r) for r in "abcd"), center="median")
    assert out.variance_omnibus is not None
    assert out.variance_omnibus.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert out.variance_omnibus.p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_one_benjamini_hochberg_family_matches_statsmodels(settings: Settings) -> None:
    rng = np.random.default_rng(21)
    rows = records(rng, {"a": 0.3, "b": 0.28, "c": 0.25}, slope={"b": 0.002}, dip={("a", "code"): 0.03})
    out = run(settings, records=rows)
    assert out.gap is not None
    family = [(out.gap.p_adjusted, out.gap.q_value)]
    family += [(x.p_value, x.q_value) for x in [*out.contexts, *out.variances, *out.trends]]
    assert out.n_tests == len(family) == 1 + 3 * 3 + 3 + 4
    reject, q, _, _ = multipletests([p for p, _ in family], alpha=0.05, method="fdr_bh")
    assert [qv for _, qv in family] == pytest.approx(q.tolist(), rel=1e-10)
    assert out.n_significant == int(reject.sum())
    assert all(i.q_value is not None and i.q_value <= 0.05 for i in out.insights)
    assert all(i.confidence == pytest.approx(1 - i.q_value) for i in out.insights if i.q_value is not None)


def test_no_insight_from_noise_over_50_seeds(settings: Settings) -> None:
    claimed = 0
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        rows = records(rng, {r: 0.2 for r in ("a", "b", "c", "d")}, per_cell=10, sd=0.1)
        out = run(settings, records=rows)
        assert out.n_tests == 1 + 4 * 3 + 4 + 5
        claimed += out.n_significant > 0
    assert claimed <= 5, f"{claimed} of 50 null data sets produced a 'significant' insight"


def test_insights_are_ranked_by_severity_then_confidence(settings: Settings) -> None:
    rng = np.random.default_rng(4)
    rows = records(
        rng,
        {"a": 0.4, "b": 0.3, "c": 0.2},
        slope={"b": 0.003},
        dip={("c", "code"): 0.1},
        sd={"a": 0.05, "b": 0.05, "c": 0.05},
    )
    out = run(settings, records=rows)
    ranks = {"high": 0, "medium": 1, "low": 2, "info": 3}
    keys = [(ranks[i.severity], -(i.confidence or 0)) for i in out.insights]
    assert keys == sorted(keys) and [i.rank for i in out.insights] == list(range(1, len(keys) + 1))
    assert any(i.severity == "info" and i.kind == "trend" for i in out.insights)  # rising trend is good news


def test_pipeline_results_become_insights(settings: Settings) -> None:
    out = run(
        settings,
        validation={"decision": "reject", "reasons": ["p = 0.3 ≥ 0.05"], "p_value": 0.3, "improvement": -0.01},
        model={
            "name": "effectiveness",
            "version": 2,
            "metrics": {"r2": -0.05, "rmse": 0.21},
            "baseline_metrics": {"r2": 0.0, "rmse": 0.2},
        },
    )
    assert out.source == "none" and out.n_tests == 0
    by_kind = {i.kind: i for i in out.insights}
    v = by_kind["validation"]
    assert v.evidence["decision"] == "reject" and v.evidence["reasons"] == ["p = 0.3 ≥ 0.05"]
    assert v.confidence == pytest.approx(0.7) and "Keep the baseline" in v.recommendation
    m = by_kind["model_quality"]
    assert m.severity == "high" and "no better than its baseline" in m.title
    assert m.effect_size == pytest.approx(-0.05) and m.evidence["baseline_r2"] == 0.0
    good = run(settings, model={"metrics": {"accuracy": 0.9}, "baseline_metrics": {"accuracy": 0.6}})
    assert good.insights[0].severity == "info" and good.insights[0].effect_size == pytest.approx(0.5)
    accepted = run(settings, validation={"accepted": True, "reasons": ["significant"], "p_value": 0.001})
    assert accepted.insights[0].severity == "info" and accepted.insights[0].confidence_level == "high"


def test_file_inputs_give_the_same_insights(settings: Settings) -> None:
    rng = np.random.default_rng(11)
    rows = records(rng, {"clarity": 0.3, "few_shot": 0.3}, slope={"clarity": -0.004})
    inline = run(settings, records=rows)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "apps.json").write_text(json.dumps(rows))
    with (settings.data_dir / "apps.csv").open("w") as fh:
        fh.write("rule,improvement,applied_at,domain,success\n")
        for r in rows:
            fh.write(f"{r['rule_id']},{r['improvement_score']!r},{r['applied_at']!r},{r['domain']},\n")
    for name in ("apps.json", "apps.csv"):
        out = run(settings, records={"path": name})
        assert out.source == "file"
        assert out.model_dump(exclude={"source"}) == inline.model_dump(exclude={"source"})


def test_store_source_reads_the_domain_store(settings: Settings) -> None:
    rng = np.random.default_rng(5)
    rows = records(rng, {"clarity": 0.3, "role": 0.3}, dip={("clarity", "code"): 0.08}, per_cell=8)
    with open_store(settings) as store:
        store.add_prompts(
            [{"id": d, "text": f"a {d} prompt", "domain": d, "created_at": T0} for d in ("code", "writing", "analysis")]
        )
        store.add_rules([{"id": r, "name": r, "category": "test"} for r in ("clarity", "role")])
        store.add_sessions(
            [
                {"id": f"s{i}", "prompt_id": r["domain"], "original_prompt": "p", "started_at": T0}
                for i, r in enumerate(rows)
            ]
        )
        store.add_applications(
            [
                {
                    "id": f"a{i}",
                    "session_id": f"s{i}",
                    "rule_id": r["rule_id"],
                    "before_quality": 0.5,
                    "after_quality": 0.5,
                    "improvement_score": r["improvement_score"],
                    "latency_ms": 1.0,
                    "applied_at": r["applied_at"],
                    "success": True,
                }
                for i, r in enumerate(rows)
            ]
        )
    from_store = run(settings, source="store")
    # The store returns applications by time: the same order gives the same floating-point sums.
    ordered = sorted(rows, key=lambda r: r["applied_at"])
    inline = run(settings, records=[{**r, "success": True} for r in ordered])
    assert from_store.source == "store"
    assert from_store.model_dump(exclude={"source"}) == inline.model_dump(exclude={"source"})
    window = run(settings, source="store", since=T0 + 10 * DAY)
    assert window.n_records == sum(r["applied_at"] >= T0 + 10 * DAY for r in rows)


def test_report_writes_json_and_markdown(client_for: Callable[..., TestClient], settings: Settings) -> None:
    client = client_for(insight_generation_engine)
    body = {**insight_generation_engine.example, "report": True}
    r = client.post(ROUTE, json=body)
    assert r.status_code == 200, r.text
    files = r.json()["local_metadata"]["output_files"]
    assert sorted(Path(f).name for f in files) == ["insights.json", "insights.md"]
    root = settings.outputs_dir.parent
    report = json.loads((root / files[0]).read_text())
    assert report == r.json()["component_result"]
    markdown = (root / files[1]).read_text()
    assert markdown.startswith("# Insights") and "clarity" in markdown


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"records": []}, "records"),
        ({"records": [{"rule_id": "a", "improvement_score": "high"}]}, "improvement_score"),
        ({"records": [{"rule_id": "a", "improvement_score": 0.1}], "min_records": 1}, "min_records"),
        ({"records": [{"rule_id": "a", "improvement_score": 0.1}], "alpha": 0.9}, "alpha"),
        ({"source": "store", "records": [{"rule_id": "a", "improvement_score": 0.1}]}, "records"),
        ({}, "records"),
        ({"records": {"path": "missing.csv"}}, "records.path"),
        ({"validation": {"reasons": []}}, "validation"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(insight_generation_engine).post(ROUTE, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["detail"]


def test_paths_outside_data_are_refused(client_for: Callable[..., TestClient]) -> None:
    r = client_for(insight_generation_engine).post(ROUTE, json={"records": {"path": "../etc/passwd"}})
    assert r.status_code == 400 and "records.path" in r.json()["detail"]


def test_bad_file_rows_name_the_row(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "bad.csv").write_text("rule_id,improvement_score\nclarity,0.1\nclarity,oops\n")
    with pytest.raises(InvalidInput, match="row 2: improvement_score must be a number"):
        run(settings, records={"path": "bad.csv"})


# ------------------------------------------------------------------------------- experiment-review upstream results


def _call(component: Any, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """Run another component as a plain function and return its result as the gateway would pass it on."""
    ctx = RunContext(component=component.name, settings=settings, request_id=None)
    args = (component.input_model.model_validate(body), ctx)[: 2 if component.takes_context else 1]
    return component(*args).model_dump(mode="json")  # type: ignore[no-any-return]


def test_experiment_review_results_become_insights(settings: Settings) -> None:
    from services.tier2.advanced_early_stopping_framework import advanced_early_stopping_framework
    from services.tier3.causal_inference_analyzer import causal_inference_analyzer
    from services.tier4.modern_ab_testing_service import modern_ab_testing_service

    rng = np.random.default_rng(11)
    before_c, before_t = rng.normal(0.1, 0.06, 800), rng.normal(0.1, 0.06, 800)
    control = 0.1 + 0.7 * (before_c - 0.1) + rng.normal(0, 0.04, 800)
    treatment = 0.11 + 0.7 * (before_t - 0.1) + rng.normal(0, 0.04, 800)
    ab = _call(
        modern_ab_testing_service,
        settings,
        {
            "metric": "continuous",
            "control": {"values": control.tolist(), "covariate": before_c.tolist()},
            "treatment": {"values": treatment.tolist(), "covariate": before_t.tolist()},
        },
    )
    stopping = _call(
        advanced_early_stopping_framework,
        settings,
        {
            "method": "group_sequential",
            "n_looks": 5,
            "look": 3,
            "alpha": 0.05,
            "sides": 2,
            "z": ab["cuped"]["statistic"],
        },
    )
    x = rng.uniform(0, 1, 600)
    treated = (rng.random(600) < 0.2 + 0.6 * x).astype(int)
    outcome = 0.5 * x + 0.1 * treated + rng.normal(0, 0.05, 600)
    causal = _call(
        causal_inference_analyzer,
        settings,
        {
            "outcome": outcome.tolist(),
            "treatment": treated.tolist(),
            "covariates": {"x": x.tolist()},
            "methods": ["ipw", "aipw", "matching"],
            "placebo_outcome": (0.5 * x + rng.normal(0, 0.05, 600)).tolist(),
            "seed": 1,
        },
    )
    cuped = ab["cuped"]
    out = run(
        settings,
        ab_test={
            "decision": ab["decision"],
            "difference": cuped["difference"],
            "ci_low": cuped["ci_low"],
            "ci_high": cuped["ci_high"],
            "p_value": cuped["p_value"],
            "reasons": ab["reasons"],
        },
        stopping=stopping["group_sequential"]["current"],
        causal={"naive": causal["naive"], "estimates": causal["estimates"], "placebo": causal["placebo"]},
    )
    by_kind = {i.kind: i for i in out.insights}
    assert set(by_kind) == {"ab_test", "sequential_decision", "causal_check"}
    assert ab["decision"] == "ship_treatment" and by_kind["ab_test"].severity == "info"
    assert by_kind["ab_test"].effect_size == pytest.approx(cuped["difference"])
    current = stopping["group_sequential"]["current"]
    assert by_kind["sequential_decision"].evidence["z"] == pytest.approx(cuped["statistic"])
    assert by_kind["sequential_decision"].title.startswith(
        f"Look 3: {'stop' if current['decision'] != 'continue' else 'continue'}"
    )
    adjusted = [e["estimate"] for e in causal["estimates"]]
    check = by_kind["causal_check"]
    assert check.effect_size == pytest.approx(float(np.median(adjusted)))
    assert check.effect_size == pytest.approx(0.1, abs=0.03)  # the planted effect
    assert "confound" in check.recommendation  # the naive difference is biased by x
    assert out.n_records == 0 and out.n_tests == 0


def test_disagreeing_methods_and_a_failed_placebo_are_flagged(settings: Settings) -> None:
    estimate = {"estimand": "ATE", "std_error": 0.02, "z": None, "p_value": 0.3, "n": 100, "se_method": "x"}
    out = run(
        settings,
        causal={
            "estimates": [
                {**estimate, "method": "ipw", "estimate": 0.05, "ci_low": -0.01, "ci_high": 0.11},
                {**estimate, "method": "aipw", "estimate": -0.02, "ci_low": -0.06, "ci_high": 0.02},
            ],
            "placebo": [
                {
                    "kind": "placebo_outcome",
                    "method": "aipw",
                    "estimate": 0.08,
                    "std_error": 0.02,
                    "p_value": 0.001,
                    "n_draws": 1,
                    "n_skipped": 0,
                    "rejection_rate": None,
                    "passed": False,
                    "detail": "effect on a placebo",
                }
            ],
        },
    )
    by_kind = {i.kind: i for i in out.insights}
    assert by_kind["causal_check"].severity == "medium" and "disagree" in by_kind["causal_check"].title
    assert by_kind["placebo"].severity == "high" and out.insights[0].kind == "placebo"
