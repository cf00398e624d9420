"""failure_mode_analyzer: planted failure cluster found; statistics against scipy, statsmodels and sklearn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats
from scipy.stats.contingency import association
from sklearn.ensemble import IsolationForest
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from services.text.features import numeric_features
from services.tier2.failure_mode_analyzer import (
    FailureModeAnalyzerInput,
    FailureModeAnalyzerOutput,
    failure_mode_analyzer,
    occurrence_rating,
    wilson_interval,
)

ROUTE = "/run/failure_mode_analyzer"
SQL = "Create a SQL query that joins orders & customers; return totals"
ORDINARY = (
    ["Write", "Create", "Draft", "Explain", "Summarise", "Review"],
    ["a SQL query", "a Python function", "a polite email", "the meeting notes", "a unit test", "a product page"],
    ["for the sales team", "that handles dates", "for a new customer", "in three bullet points", "for the login page"],
)
KLINGON = [
    "the legal contract",
    "this privacy notice",
    "a wedding speech",
    "these song lyrics",
    "the user manual",
    "my cover letter",
    "the safety instructions",
    "a birthday card",
    "the press release",
    "the menu",
]


def planted(seed: int = 0) -> list[dict[str, Any]]:
    """Varied ordinary prompts pass (score 0.7–0.95) except a few random failures; every Klingon prompt fails.

    The SQL prompt from the brief appears ten times, always passing."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(100):
        text = SQL if i % 10 == 0 else " ".join(str(rng.choice(part)) for part in ORDINARY)
        fail = text != SQL and rng.random() < 0.05
        score = rng.uniform(0.2, 0.5) if fail else rng.uniform(0.7, 0.95)
        domain = "code" if ("SQL" in text or "Python" in text or "test" in text) else "writing"
        records.append({"prompt_text": text, "score": float(score), "categorical": {"domain": domain}})
        if i % 4 == 0:
            text = f"Translate {rng.choice(KLINGON)} into the Klingon language for a Klingon audience"
            records.append(
                {"prompt_text": text, "score": float(rng.uniform(0.0, 0.3)), "categorical": {"domain": "translation"}}
            )
    return records


TEXTS = [SQL, *(f"{v} {o}" for v, o in zip(ORDINARY[0], ORDINARY[1], strict=True))]


def analyse(records: list[dict[str, Any]], **extra: Any) -> FailureModeAnalyzerOutput:
    body = {"records": records, "threshold": 0.6, "seed": 1, **extra}
    return failure_mode_analyzer(FailureModeAnalyzerInput.model_validate(body))


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return planted()


@pytest.fixture(scope="module")
def result(records: list[dict[str, Any]]) -> FailureModeAnalyzerOutput:
    return analyse(records)


def test_planted_failure_cluster_is_found_and_ranked_first(
    records: list[dict[str, Any]], result: FailureModeAnalyzerOutput
) -> None:
    klingon = {i for i, r in enumerate(records) if "Klingon" in r["prompt_text"]}
    # Every cluster is pure (all Klingon or none), and the Klingon clusters cover every Klingon prompt.
    pure = [set(c.member_indices) <= klingon or not set(c.member_indices) & klingon for c in result.clusters]
    assert all(pure)
    found = {i for c in result.clusters if set(c.member_indices) <= klingon for i in c.member_indices}
    assert found == klingon
    top = result.clusters[0]
    assert set(top.member_indices) <= klingon and "klingon" in top.top_terms
    assert top.nearby_passed == 0 and top.failure_rate_nearby.rate == 1.0
    entry = result.fmea[0]
    assert entry.cluster == top.cluster
    assert entry.rpn == entry.severity * entry.occurrence * entry.detection
    shortfall = np.mean([0.6 - records[i]["score"] for i in top.member_indices])
    assert entry.severity == int(np.ceil(10 * shortfall / 0.6))
    assert entry.occurrence == occurrence_rating(top.size / len(records))
    assert "domain" in result.significant_features
    translation = next(lv for lv in result.associations[0].levels if lv.level == "translation")
    assert translation.failure_rate == 1.0


def test_passing_ordinary_prompts_are_never_failures(
    records: list[dict[str, Any]], result: FailureModeAnalyzerOutput
) -> None:
    sql = [i for i, r in enumerate(records) if r["prompt_text"] == SQL]
    members = {i for c in result.clusters for i in c.member_indices}
    assert not members & set(sql)
    passed = {i for i, r in enumerate(records) if r["score"] >= 0.6}
    assert not members & passed
    assert result.n_failed == len(records) - len(passed)


def test_failure_rate_interval_equals_statsmodels_wilson() -> None:
    for count, n, conf in [(0, 10, 0.95), (3, 10, 0.95), (17, 40, 0.9), (40, 40, 0.99), (123, 1000, 0.95)]:
        lo, hi = wilson_interval(count, n, conf)
        ref = proportion_confint(count, n, alpha=1 - conf, method="wilson")
        assert (lo, hi) == pytest.approx(ref, abs=1e-12)


def test_output_failure_rate_equals_statsmodels(
    records: list[dict[str, Any]], result: FailureModeAnalyzerOutput
) -> None:
    ref = proportion_confint(result.n_failed, len(records), method="wilson")
    assert (result.failure_rate.ci_low, result.failure_rate.ci_high) == pytest.approx(ref)


def _records_from_table(table: list[list[int]], levels: list[str]) -> list[dict[str, Any]]:
    out = []
    for level, (fail, ok) in zip(levels, table, strict=True):
        out += [{"prompt_text": f"prompt about {level}", "passed": False, "categorical": {"f": level}}] * fail
        out += [{"prompt_text": f"prompt about {level}", "passed": True, "categorical": {"f": level}}] * ok
    return out


def test_chi_square_cramers_v_and_odds_ratio_equal_scipy_and_statsmodels() -> None:
    table = [[30, 30], [15, 45]]  # equal level sizes: levels in name order
    out = analyse(_records_from_table(table, ["a", "b"]))
    assoc = out.associations[0]
    assert assoc.table == table and assoc.test == "chi_square_yates"
    yates = stats.chi2_contingency(np.array(table), correction=True)
    plain = stats.chi2_contingency(np.array(table), correction=False)
    assert assoc.p_value == pytest.approx(yates.pvalue, rel=1e-10)
    assert assoc.chi_square == pytest.approx(plain.statistic, rel=1e-10)
    assert assoc.cramers_v == pytest.approx(association(np.array(table), method="cramer"), rel=1e-10)
    ref = Table2x2(np.array(table))
    level_a = assoc.levels[0]
    assert level_a.odds_ratio == pytest.approx(ref.oddsratio)
    assert (level_a.odds_ratio_ci_low, level_a.odds_ratio_ci_high) == pytest.approx(ref.oddsratio_confint())


def test_small_counts_use_fisher_exact_equal_to_scipy() -> None:
    table = [[4, 1], [1, 6]]
    out = analyse(_records_from_table(table, ["a", "b"]))
    assoc = out.associations[0]
    assert assoc.test == "fisher_exact"
    assert assoc.p_value == pytest.approx(stats.fisher_exact(table).pvalue, rel=1e-10)
    assert assoc.cramers_v == pytest.approx(association(np.array(table), method="cramer"), rel=1e-10)


def test_r_by_2_table_and_bh_across_features_equal_references() -> None:
    rng = np.random.default_rng(3)
    recs = []
    for i in range(300):
        level = ["x", "y", "z"][i % 3]
        fail = rng.random() < {"x": 0.1, "y": 0.3, "z": 0.5}[level]
        recs.append(
            {
                "prompt_text": f"prompt number {i % 7} about {level}",
                "passed": not fail,
                "categorical": {"level": level, "noise": ["p", "q"][int(rng.integers(2))]},
            }
        )
    out = analyse(recs)
    by = {a.feature: a for a in out.associations}
    for assoc in by.values():
        ref = stats.chi2_contingency(np.array(assoc.table), correction=assoc.test == "chi_square_yates")
        assert assoc.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert by["level"].dof == 2
    q = multipletests([by["level"].p_value, by["noise"].p_value], method="fdr_bh")[1]
    assert [by["level"].q_value, by["noise"].q_value] == pytest.approx(list(q))
    assert out.significant_features[0] == "level"


def test_isolation_forest_equals_sklearn_with_the_same_seed(records: list[dict[str, Any]]) -> None:
    rng = np.random.default_rng(5)
    with_numbers = [dict(r, numeric={"latency": float(rng.gamma(2.0, 50.0)), "tokens": float(i)})
                    for i, r in enumerate(records)]  # fmt: skip
    out = analyse(with_numbers, n_estimators=50)
    x = np.hstack(
        [
            numeric_features([r["prompt_text"] for r in with_numbers]),
            np.array([[r["numeric"]["latency"], r["numeric"]["tokens"]] for r in with_numbers]),
        ]
    )
    forest = IsolationForest(n_estimators=50, contamination=0.05, random_state=1).fit(x)
    flagged = np.flatnonzero(forest.predict(x) == -1)
    assert sorted(a.index for a in out.anomalies.anomalies) == flagged.tolist()
    scores = forest.decision_function(x)
    assert [a.anomaly_score for a in out.anomalies.anomalies] == pytest.approx(sorted(scores[flagged].tolist()))
    assert out.anomalies.feature_names[-2:] == ["latency", "tokens"]


def test_occurrence_scale_boundaries() -> None:
    assert [occurrence_rating(r) for r in (1.0, 0.1, 0.099, 0.05, 0.02, 0.01, 0.002, 5e-4, 1e-4, 1e-5, 1e-6, 0)] == [
        10, 10, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1,
    ]  # fmt: skip


def test_same_seed_same_result(records: list[dict[str, Any]]) -> None:
    assert analyse(records) == analyse(records)


def test_no_failures_and_all_failures_are_answered() -> None:
    ok = [{"prompt_text": t, "passed": True} for t in TEXTS]
    out = analyse(ok)
    assert out.n_failed == 0 and out.clusters == [] and out.fmea == [] and out.k_selection == "none"
    bad = [{"prompt_text": t, "passed": False} for t in TEXTS]
    out = analyse(bad, n_clusters=2)
    assert out.n_failed == len(TEXTS) and out.k == 2 and sum(c.size for c in out.clusters) == len(TEXTS)
    assert out.fmea[0].severity_basis == "default"


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(failure_mode_analyzer)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"records": [{"prompt_text": "a", "score": 0.5}, {"prompt_text": "b", "passed": True}]}, "records[0]"),
        ({"records": [{"prompt_text": "a", "passed": True}] * 2, "threshold": 0.0}, "threshold"),
        (
            {
                "records": [
                    {"prompt_text": "a", "passed": True, "numeric": {"x": 1.0}},
                    {"prompt_text": "b", "passed": True},
                ]
            },
            "records[1]",
        ),
        ({"records": [{"prompt_text": "a", "passed": True}]}, "records"),
        ({"records": [{"prompt_text": "", "passed": True}] * 2}, "prompt_text"),
        ({"records": [{"prompt_text": "a", "passed": True}] * 2, "detection": 11}, "detection"),
        ({"records": [{"prompt_text": "a", "passed": True}] * 2, "contamination": 0.9}, "contamination"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    r = client.post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_over_http(client: TestClient, records: list[dict[str, Any]]) -> None:
    r = client.post(ROUTE, json={"records": records, "threshold": 0.6, "seed": 1})
    assert r.status_code == 200, r.text
    assert "klingon" in r.json()["component_result"]["clusters"][0]["top_terms"]
