"""Known-answer tests of pattern_significance_analyzer: Fisher's tea-tasting table, scipy and statsmodels."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import stats
from scipy.stats.contingency import association
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests

from mlmesh.errors import InvalidInput
from services.tier3.pattern_significance_analyzer import (
    PatternSignificanceAnalyzerInput,
    PatternSignificanceAnalyzerOutput,
    pattern_significance_analyzer,
)

TEA = [[3, 1], [1, 3]]


def analyse(**fields: object) -> PatternSignificanceAnalyzerOutput:
    return pattern_significance_analyzer(PatternSignificanceAnalyzerInput(**fields))


def tables(*named: tuple[str, list[list[int]]]) -> list[dict]:
    return [{"name": name, "table": table} for name, table in named]


# ------------------------------------------------------------------------------------------- published values


def test_lady_tasting_tea() -> None:
    # Fisher (1935): 8 cups, 4 milk-first; she names 3 of the 4 correctly. P = 17/70 one-sided, 34/70 two-sided.
    one = analyse(patterns=tables(("tea", TEA)), alternative="greater").results[0]
    two = analyse(patterns=tables(("tea", TEA))).results[0]
    assert one.test == two.test == "fisher_exact"
    assert one.p_value == pytest.approx(0.2429, abs=5e-5)
    assert one.p_value == pytest.approx(17 / 70, rel=1e-12)
    assert two.p_value == pytest.approx(0.4857, abs=5e-5)
    assert two.p_value == pytest.approx(34 / 70, rel=1e-12)
    assert "expected count 2 is below 5" in two.test_reason
    assert two.odds_ratio is not None and two.odds_ratio.estimate == pytest.approx(9.0)
    assert two.direction == "positive"


# ------------------------------------------------------------------------------------------- scipy / statsmodels


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize(
    "table", [[[1, 9], [11, 3]], [[0, 5], [4, 2]], [[7, 2], [3, 0]], [[2, 7], [8, 2]], [[10, 0], [0, 10]]]
)
def test_fisher_matches_scipy(alternative: str, table: list[list[int]]) -> None:
    result = analyse(patterns=tables(("p", table)), alternative=alternative, test="fisher").results[0]
    assert result.test == "fisher_exact"
    assert result.p_value == pytest.approx(stats.fisher_exact(table, alternative=alternative).pvalue, rel=1e-9)


@pytest.mark.parametrize("yates", [True, False])
@pytest.mark.parametrize("table", [[[42, 18], [30, 40]], [[120, 80], [95, 105]], [[12, 30], [25, 14]]])
def test_chi_square_2x2_matches_scipy(yates: bool, table: list[list[int]]) -> None:
    result = analyse(patterns=tables(("p", table)), yates_correction=yates).results[0]
    ref = stats.chi2_contingency(table, correction=yates)
    uncorrected = stats.chi2_contingency(table, correction=False)
    assert result.test == ("chi_square_yates" if yates else "chi_square")
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert result.chi_square == pytest.approx(uncorrected.statistic, rel=1e-12)
    assert result.dof == ref.dof
    assert result.min_expected == pytest.approx(ref.expected_freq.min())
    assert result.cramers_v == pytest.approx(association(table, method="cramer"), rel=1e-12)


def test_forced_chi_square_says_when_counts_are_small() -> None:
    result = analyse(patterns=tables(("tea", TEA)), test="chi_square", yates_correction=False).results[0]
    ref = stats.chi2_contingency(TEA, correction=False)
    assert result.test == "chi_square" and result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert "as requested" in result.test_reason and "below 5" in result.test_reason


@pytest.mark.parametrize("table", [[[30, 12, 8], [22, 25, 31]], [[15, 20], [25, 10], [30, 30], [12, 40]]])
def test_chi_square_rxc_matches_scipy(table: list[list[int]]) -> None:
    result = analyse(patterns=tables(("p", table))).results[0]
    ref = stats.chi2_contingency(table)
    assert result.test == "chi_square"
    assert result.chi_square == pytest.approx(ref.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert result.dof == ref.dof
    assert result.cramers_v == pytest.approx(association(table, method="cramer"), rel=1e-12)
    assert result.odds_ratio is None and result.direction is None


def test_small_rxc_uses_monte_carlo_fisher_freeman_halton() -> None:
    table = [[3, 0, 1], [1, 4, 0], [0, 1, 5]]
    result = analyse(patterns=tables(("p", table)), n_monte_carlo=20_000, seed=1).results[0]
    ref = stats.fisher_exact(table, method=stats.MonteCarloMethod(n_resamples=20_000, rng=np.random.default_rng(2)))
    assert result.test == "fisher_freeman_halton_monte_carlo"
    assert "Monte Carlo" in result.test_reason
    # two independent Monte Carlo estimates of p ≈ 0.02: standard error ~0.001 each.
    assert result.p_value == pytest.approx(ref.pvalue, abs=0.006)
    again = analyse(patterns=tables(("p", table)), n_monte_carlo=20_000, seed=1).results[0]
    assert again.p_value == result.p_value


@pytest.mark.parametrize("table", [[[42, 18], [30, 40]], [[5, 1], [2, 9]], [[3, 0], [1, 2]], [[0, 7], [6, 0]]])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_odds_ratio_matches_statsmodels(table: list[list[int]], confidence: float) -> None:
    result = analyse(patterns=tables(("p", table)), confidence_level=confidence).results[0]
    odds = result.odds_ratio
    assert odds is not None
    zero = 0 in np.ravel(table)
    # Haldane–Anscombe: 0.5 added to *every* cell when one is zero (statsmodels' shift_zeros only shifts the zeros).
    corrected = np.asarray(table, dtype=float) + (0.5 if zero else 0.0)
    ref = Table2x2(corrected)
    assert odds.haldane_anscombe_correction is zero
    assert ("Haldane–Anscombe" in odds.method) is zero
    assert odds.estimate == pytest.approx(ref.oddsratio, rel=1e-12)
    assert (odds.ci_low, odds.ci_high) == pytest.approx(ref.oddsratio_confint(alpha=1 - confidence), rel=1e-10)


def test_success_rates_match_statsmodels_risk_ratio() -> None:
    table = [[42, 18], [30, 40]]
    result = analyse(patterns=tables(("p", table))).results[0]
    assert result.success_rate_present == pytest.approx(42 / 60)
    assert result.success_rate_absent == pytest.approx(30 / 70)
    assert result.relative_success_rate == pytest.approx(Table2x2(np.asarray(table)).riskratio, rel=1e-12)
    assert result.rate_difference == pytest.approx(42 / 60 - 30 / 70)


def test_fdr_q_values_match_statsmodels_and_rank_the_significant() -> None:
    named = [
        ("strong", [[60, 10], [20, 50]]),
        ("medium", [[40, 25], [28, 37]]),
        ("weak", [[30, 30], [27, 33]]),
        ("negative", [[12, 40], [45, 15]]),
        ("null", [[20, 20], [20, 20]]),
        ("small", [[4, 1], [1, 4]]),
    ]
    out = analyse(patterns=tables(*named), fdr=0.05)
    p = np.array([r.p_value for r in out.results])
    reject, q, _, _ = multipletests(p, alpha=0.05, method="fdr_bh")
    assert [r.q_value for r in out.results] == pytest.approx(q.tolist(), rel=1e-12)
    assert [r.significant for r in out.results] == reject.tolist()
    expected = sorted((r for r in out.results if r.significant), key=lambda r: (r.q_value, r.p_value))
    assert out.significant_patterns == [r.pattern for r in expected]
    assert {"strong", "negative"} <= set(out.significant_patterns)
    assert "null" not in out.significant_patterns
    by_name = {r.pattern: r for r in out.results}
    assert by_name["negative"].direction == "negative"
    assert by_name["strong"].direction == "positive"
    assert out.n_tested == 6


# ------------------------------------------------------------------------------------------- records


def test_records_build_the_same_tables_as_counting_by_hand() -> None:
    rng = np.random.default_rng(3)
    names = ["role", "examples", "xml", "steps", "persona"]
    records = []
    for _ in range(400):
        present = [n for n in names if rng.random() < 0.4]
        chance = 0.3 + 0.3 * ("examples" in present) - 0.2 * ("persona" in present)
        records.append({"patterns": present + present[:1], "success": bool(rng.random() < chance)})  # a duplicate
    out = analyse(records=records, seed=4)
    by_hand = Counter()
    for rec in records:
        for name in set(rec["patterns"]):
            by_hand[name, rec["success"]] += 1
    total_success = sum(r["success"] for r in records)
    for result in out.results:
        a, b = by_hand[result.pattern, True], by_hand[result.pattern, False]
        c = total_success - a
        assert result.table == [[a, b], [c, len(records) - a - b - c]]
        assert result.source == "records"
    assert out.n_records == 400
    # The same tables given directly give the same answers.
    direct = analyse(patterns=[{"name": r.pattern, "table": r.table} for r in out.results], seed=4)
    for r, d in zip(out.results, direct.results, strict=True):
        assert r.p_value == d.p_value and r.q_value == d.q_value and r.odds_ratio == d.odds_ratio
    assert out.significant_patterns[0] == "examples"


def test_pattern_present_everywhere_is_untestable_and_left_out_of_fdr() -> None:
    records = [{"patterns": ["always", "sometimes"] if i % 2 else ["always"], "success": i % 3 == 0} for i in range(30)]
    out = analyse(records=records)
    by_name = {r.pattern: r for r in out.results}
    assert by_name["always"].test == "none"
    assert by_name["always"].p_value is None and by_name["always"].q_value is None
    assert "empty" in by_name["always"].test_reason
    assert by_name["sometimes"].p_value is not None
    assert out.n_tested == 1


def test_min_support_filters_rare_patterns() -> None:
    records = [{"patterns": ["common"] + (["rare"] if i == 0 else []), "success": i % 2 == 0} for i in range(20)]
    records += [{"patterns": [], "success": i % 3 == 0} for i in range(20)]
    assert {r.pattern for r in analyse(records=records).results} == {"common", "rare"}
    assert {r.pattern for r in analyse(records=records, min_support=5).results} == {"common"}


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"patterns": tables(("a", TEA), ("a", TEA))}, "patterns"),
        ({"patterns": tables(("a", [[1, 2, 3], [4, 5, 6]])), "alternative": "greater"}, "alternative"),
        ({"patterns": tables(("a", TEA)), "alternative": "less", "test": "chi_square"}, "test"),
        ({"records": [{"patterns": ["x"], "success": True}], "min_support": 2}, "records"),
        ({"records": [{"patterns": [], "success": True}]}, "records"),
        (
            {
                "patterns": [{"name": f"t{i}", "table": [[1, 0, 2], [0, 3, 1]]} for i in range(300)],
                "n_monte_carlo": 10_000,
            },
            "n_monte_carlo",
        ),
    ],
)
def test_invalid_requests_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        analyse(**fields)
    assert err.value.field == field


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"patterns": [{"name": "a", "table": [[1, 2], [3]]}]},
        {"patterns": [{"name": "a", "table": [[1, -2], [3, 4]]}]},
        {"patterns": [{"name": "a", "table": [[1, 2]]}]},
        {"patterns": [{"name": "", "table": TEA}]},
        {"patterns": tables(("a", TEA)), "fdr": 0.9},
        {"patterns": tables(("a", TEA)), "extra": 1},
    ],
)
def test_malformed_input_fails_validation(fields: dict) -> None:
    with pytest.raises(ValidationError):
        PatternSignificanceAnalyzerInput(**fields)


def test_http_envelope_and_problem(client_for) -> None:
    client = client_for(pattern_significance_analyzer)
    ok = client.post("/run/pattern_significance_analyzer", json={"patterns": tables(("tea", TEA))})
    assert ok.status_code == 200, ok.text
    assert ok.json()["component_result"]["results"][0]["p_value"] == pytest.approx(0.4857, abs=5e-5)
    assert ok.json()["local_metadata"]["tier"] == "tier3"
    bad = client.post("/run/pattern_significance_analyzer", json={"patterns": tables(("a", TEA), ("a", TEA))})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("patterns:")
    empty = client.post("/run/pattern_significance_analyzer", json={})
    assert empty.status_code == 422


# ------------------------------------------------------------------------------------------- invariants

cell = st.integers(0, 40)
table_2x2 = st.lists(st.lists(cell, min_size=2, max_size=2), min_size=2, max_size=2)


@hsettings(max_examples=50, deadline=None)
@given(table=table_2x2, test=st.sampled_from(["auto", "chi_square", "fisher"]))
def test_p_and_q_are_probabilities_and_swapping_rows_inverts_the_odds(table: list[list[int]], test: str) -> None:
    out = analyse(patterns=tables(("p", table), ("swapped", table[::-1]), ("other", [[5, 5], [2, 8]])), test=test)
    first, swapped = out.results[0], out.results[1]
    for r in out.results:
        for value in (r.p_value, r.q_value):
            assert value is None or 0.0 <= value <= 1.0
        if r.q_value is not None:
            assert r.q_value >= r.p_value - 1e-15
    if first.p_value is None:
        assert swapped.p_value is None
        return
    assert swapped.p_value == pytest.approx(first.p_value, rel=1e-9, abs=1e-15)
    assert first.odds_ratio is not None and swapped.odds_ratio is not None
    assert swapped.odds_ratio.estimate == pytest.approx(1 / first.odds_ratio.estimate, rel=1e-12)
    assert math.log(swapped.odds_ratio.ci_high) == pytest.approx(-math.log(first.odds_ratio.ci_low), abs=1e-9)
    assert {first.direction, swapped.direction} in ({"positive", "negative"}, {"none"})
