"""Which patterns (prompt features, rules) are associated with success: contingency-table tests with FDR control.

A 2×2 table is ``[[present & success, present & failure], [absent & success, absent & failure]]``. An r×c table
has one row per level of the pattern and one column per outcome category. Tables come directly or are built
from raw records (``{"patterns": [...], "success": bool}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from scipy import special, stats

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, Seed, component
from services.tier3.advanced_statistical_validator import adjust_p_values

__all__ = [
    "PatternRecord",
    "PatternSignificanceAnalyzerInput",
    "PatternSignificanceAnalyzerOutput",
    "PatternTable",
    "pattern_significance_analyzer",
]

MAX_DIM = 10
MAX_TABLE_TOTAL = 10_000_000
MAX_PATTERNS = 2000
# Bound on r×c Monte Carlo work (tables drawn over all patterns): a few seconds at most.
MAX_MONTE_CARLO_DRAWS = 2_000_000
# Cochran's rule as the brief states it: any expected count below 5 makes the chi-square approximation doubtful.
MIN_EXPECTED = 5.0
PatternName = Annotated[str, Field(min_length=1, max_length=200)]
Count = Annotated[int, Field(ge=0, le=MAX_TABLE_TOTAL)]


class PatternTable(ComponentInput):
    """A pattern's contingency table given directly."""

    name: PatternName
    table: list[Annotated[list[Count], Field(min_length=2, max_length=MAX_DIM)]] = Field(
        min_length=2,
        max_length=MAX_DIM,
        description="counts; 2×2 is [[present&success, present&failure], [absent&success, absent&failure]]",
    )

    @field_validator("table")
    @classmethod
    def _rectangular(cls, table: list[list[int]]) -> list[list[int]]:
        if len({len(row) for row in table}) != 1:
            raise ValueError("every row of the table must have the same number of columns")
        if sum(map(sum, table)) > MAX_TABLE_TOTAL:
            raise ValueError(f"the table total must be at most {MAX_TABLE_TOTAL}")
        return table


class PatternRecord(ComponentInput):
    """One observation: the patterns it shows and whether it succeeded."""

    patterns: list[PatternName] = Field(max_length=200, description="patterns present in this record")
    success: bool


class PatternSignificanceAnalyzerInput(ComponentInput):
    """Patterns as tables, or records to build 2×2 tables from (or both)."""

    patterns: list[PatternTable] = Field(default_factory=list, max_length=1000, description="tables given directly")
    records: list[PatternRecord] = Field(
        default_factory=list, max_length=100_000, description="raw records; one 2×2 table per pattern seen"
    )
    test: Literal["auto", "chi_square", "fisher"] = Field(
        "auto",
        description="'auto': chi-square unless an expected count is < 5, then Fisher's exact "
        "(exact for 2×2, Monte Carlo Fisher–Freeman–Halton for r×c)",
    )
    yates_correction: bool = Field(True, description="Yates' continuity correction of the 2×2 chi-square")
    alternative: Literal["two-sided", "greater", "less"] = Field(
        "two-sided", description="'greater': the pattern raises the odds of success (2×2 only; uses Fisher)"
    )
    fdr: float = Field(0.05, ge=1e-6, le=0.5, description="false discovery rate (Benjamini–Hochberg q threshold)")
    confidence_level: float = Field(0.95, ge=0.5, le=0.9999, description="coverage of the odds-ratio interval")
    min_support: int = Field(1, ge=1, le=1_000_000, description="records: test a pattern seen at least this often")
    n_monte_carlo: int = Field(10_000, ge=1000, le=50_000, description="tables drawn for the r×c exact test")
    seed: Seed = 0

    @model_validator(mode="after")
    def _has_data(self) -> PatternSignificanceAnalyzerInput:
        if not self.patterns and not self.records:
            raise ValueError("give at least one of 'patterns' (tables) or 'records'")
        return self


class OddsRatio(ComponentOutput):
    estimate: float
    ci_low: float
    ci_high: float
    method: str
    haldane_anscombe_correction: bool = Field(description="0.5 added to every cell because one was zero")


class PatternResult(ComponentOutput):
    pattern: str
    source: Literal["table", "records"]
    table: list[list[int]]
    n: int
    test: Literal["chi_square", "chi_square_yates", "fisher_exact", "fisher_freeman_halton_monte_carlo", "none"]
    test_reason: str
    chi_square: float | None = Field(description="Pearson chi-square without continuity correction")
    dof: int | None
    min_expected: float | None
    p_value: float | None
    q_value: float | None = Field(description="Benjamini–Hochberg adjusted p over the tested patterns")
    significant: bool
    cramers_v: float | None
    odds_ratio: OddsRatio | None
    success_rate_present: float | None
    success_rate_absent: float | None
    relative_success_rate: float | None = Field(description="success rate present / absent (risk ratio)")
    rate_difference: float | None
    direction: Literal["positive", "negative", "none"] | None = Field(
        description="2×2: whether the pattern goes with more (positive) or less success"
    )
    note: str


class PatternSignificanceAnalyzerOutput(ComponentOutput):
    results: list[PatternResult] = Field(description="one per pattern: tables first, then patterns from records")
    significant_patterns: list[str] = Field(description="q ≤ fdr, ranked by q, then p, then effect size")
    n_tested: int
    n_records: int
    fdr: float
    alternative: str
    note: str


def _tables_from_records(records: list[PatternRecord], min_support: int) -> list[tuple[str, np.ndarray]]:
    """One 2×2 table per pattern, counted with bincount (a pattern repeated in a record counts once)."""
    success = np.fromiter((r.success for r in records), dtype=bool, count=len(records))
    sizes = np.fromiter((len(r.patterns) for r in records), dtype=np.int64, count=len(records))
    flat = [p for r in records for p in r.patterns]
    if not flat:
        return []
    names, code = np.unique(np.array(flat), return_inverse=True)
    row = np.repeat(np.arange(len(records)), sizes)
    pairs = np.unique(row * len(names) + code)
    row, code = pairs // len(names), pairs % len(names)
    present = np.bincount(code, minlength=len(names))
    present_success = np.bincount(code, weights=success[row], minlength=len(names)).astype(np.int64)
    total_success = int(success.sum())
    out = []
    for j in np.flatnonzero(present >= min_support):
        a, n_p = int(present_success[j]), int(present[j])
        c = total_success - a
        d = len(records) - n_p - c
        out.append((str(names[j]), np.array([[a, n_p - a], [c, d]], dtype=np.int64)))
    return out


def _chi_square(obs: np.ndarray, expected: np.ndarray, yates: bool) -> tuple[float, float]:
    """(statistic, p); Yates moves each 2×2 cell half a count toward its expectation (at most to it), as scipy."""
    diff = expected - obs
    dof = (obs.shape[0] - 1) * (obs.shape[1] - 1)
    if yates and dof == 1:
        obs = obs + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    stat = float(np.sum((obs - expected) ** 2 / expected))
    return stat, float(stats.chi2.sf(stat, dof))


def _fisher_2x2(table: np.ndarray, alternative: str) -> float:
    """Fisher's exact test from the hypergeometric law of the top-left cell given the margins."""
    a = int(table[0, 0])
    n_total = int(table.sum())
    row0, col0 = int(table[0].sum()), int(table[:, 0].sum())
    dist = stats.hypergeom(n_total, col0, row0)
    if alternative == "greater":
        return float(dist.sf(a - 1))
    if alternative == "less":
        return float(dist.cdf(a))
    support = np.arange(max(0, row0 + col0 - n_total), min(row0, col0) + 1)
    pmf = dist.pmf(support)
    # Tables at most as probable as the observed one (relative tolerance for rounding, as R and scipy do).
    observed = dist.pmf(a)
    return float(min(1.0, pmf[pmf <= observed * (1 + 1e-7)].sum()))


def _fisher_rxc_monte_carlo(table: np.ndarray, n_draws: int, rng: np.random.Generator) -> float:
    """Fisher–Freeman–Halton by Monte Carlo: share of tables with the margins that are no more probable."""
    dist = stats.random_table(table.sum(axis=1), table.sum(axis=0))
    draws = dist.rvs(size=n_draws, random_state=rng)
    log_obs = dist.logpmf(table)
    log_null = dist.logpmf(draws)
    extreme = np.count_nonzero(log_null <= log_obs + 1e-7)
    return float((extreme + 1) / (n_draws + 1))


def _odds_ratio(table: np.ndarray, confidence: float) -> OddsRatio:
    shifted = bool((table == 0).any())
    t = table + 0.5 if shifted else table.astype(np.float64)
    log_or = math.log(t[0, 0] * t[1, 1] / (t[0, 1] * t[1, 0]))
    se = math.sqrt(float(np.sum(1.0 / t)))
    z = float(special.ndtri(0.5 + confidence / 2.0))
    method = "Woolf (log odds ratio ± z·√Σ1/cell)"
    if shifted:
        method += "; Haldane–Anscombe: 0.5 added to every cell because a cell is zero"
    return OddsRatio(
        estimate=math.exp(log_or),
        ci_low=math.exp(log_or - z * se),
        ci_high=math.exp(log_or + z * se),
        method=method,
        haldane_anscombe_correction=shifted,
    )


@dataclass
class _Plan:
    """A pattern's table after cleaning, and the test chosen for it (decided before any costly computation)."""

    name: str
    source: Literal["table", "records"]
    raw: np.ndarray
    table: np.ndarray
    notes: list[str]
    test: str  # "none", "chi_square", "chi_square_yates", "fisher_exact", "fisher_freeman_halton_monte_carlo"
    why: str
    expected: np.ndarray | None = None


def _plan(
    name: str, source: Literal["table", "records"], raw: np.ndarray, request: PatternSignificanceAnalyzerInput
) -> _Plan:
    notes: list[str] = []
    table = raw
    is_2x2 = raw.shape == (2, 2)
    if not is_2x2:
        # Empty rows/columns carry no information and make expected counts zero: drop them.
        table = raw[raw.sum(axis=1) > 0][:, raw.sum(axis=0) > 0]
        if table.shape != raw.shape:
            notes.append(f"dropped empty rows/columns: tested a {table.shape[0]}×{table.shape[1]} table")
    if min(table.shape) < 2 or (table.sum(axis=1) == 0).any() or (table.sum(axis=0) == 0).any():
        why = "untestable: a row or column of the table is empty (the pattern or an outcome never varies)"
        return _Plan(name, source, raw, table, notes, "none", why)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    min_expected = float(expected.min())
    small = min_expected < MIN_EXPECTED
    if request.test == "fisher" or (request.test == "auto" and (small or request.alternative != "two-sided")):
        if request.test == "fisher":
            why = "Fisher's exact test, as requested"
        elif small:
            why = f"Fisher's exact test: the smallest expected count {min_expected:.3g} is below {MIN_EXPECTED:g}"
        else:
            why = "Fisher's exact test: chi-square is two-sided only and a one-sided alternative was asked"
        if is_2x2:
            return _Plan(name, source, raw, table, notes, "fisher_exact", why, expected)
        why += f" (Fisher–Freeman–Halton, {request.n_monte_carlo} Monte Carlo tables)"
        return _Plan(name, source, raw, table, notes, "fisher_freeman_halton_monte_carlo", why, expected)
    if request.test == "chi_square":
        why = "chi-square, as requested"
        if small:
            why += f", although the smallest expected count {min_expected:.3g} is below {MIN_EXPECTED:g}"
    else:
        why = f"chi-square: every expected count is at least {MIN_EXPECTED:g}"
    yates = is_2x2 and request.yates_correction
    if yates:
        why += "; Yates' continuity correction"
    return _Plan(name, source, raw, table, notes, "chi_square_yates" if yates else "chi_square", why, expected)


def _rates(raw: np.ndarray, notes: list[str]) -> dict[str, float | None]:
    rates: dict[str, float | None] = dict(
        success_rate_present=None, success_rate_absent=None, relative_success_rate=None, rate_difference=None
    )
    if raw.shape != (2, 2):
        return rates
    rows = raw.sum(axis=1)
    present = float(raw[0, 0] / rows[0]) if rows[0] else None
    absent = float(raw[1, 0] / rows[1]) if rows[1] else None
    rates["success_rate_present"], rates["success_rate_absent"] = present, absent
    if present is not None and absent is not None:
        rates["rate_difference"] = present - absent
        if absent > 0:
            rates["relative_success_rate"] = present / absent
        else:
            notes.append("relative success rate undefined: no success without the pattern")
    return rates


def _analyse(plan: _Plan, request: PatternSignificanceAnalyzerInput, rng: np.random.Generator) -> PatternResult:
    notes = list(plan.notes)
    base = dict(
        pattern=plan.name,
        source=plan.source,
        table=plan.raw.tolist(),
        n=int(plan.raw.sum()),
        test=plan.test,
        test_reason=plan.why,
        q_value=None,
        significant=False,
        **_rates(plan.raw, notes),
    )
    if plan.test == "none" or plan.expected is None:
        return PatternResult(
            **base, chi_square=None, dof=None, min_expected=None, p_value=None, cramers_v=None, odds_ratio=None,
            direction=None, note="; ".join(notes) or "ok",
        )  # fmt: skip
    table, expected = plan.table, plan.expected
    n = table.sum()
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    chi2, chi2_p = _chi_square(table, expected, yates=False)
    if plan.test == "fisher_exact":
        p = _fisher_2x2(table, request.alternative)
    elif plan.test == "fisher_freeman_halton_monte_carlo":
        p = _fisher_rxc_monte_carlo(table, request.n_monte_carlo, rng)
    elif plan.test == "chi_square_yates":
        p = _chi_square(table, expected, yates=True)[1]
    else:
        p = chi2_p
    is_2x2 = table.shape == (2, 2)
    odds = _odds_ratio(table, request.confidence_level) if is_2x2 else None
    direction = None
    if is_2x2:
        cross = int(table[0, 0]) * int(table[1, 1]) - int(table[0, 1]) * int(table[1, 0])
        direction = "positive" if cross > 0 else "negative" if cross < 0 else "none"
    return PatternResult(
        **base,
        chi_square=chi2,
        dof=dof,
        min_expected=float(expected.min()),
        p_value=min(1.0, max(0.0, p)),
        cramers_v=math.sqrt(chi2 / (n * (min(table.shape) - 1))),
        odds_ratio=odds,
        direction=direction,
        note="; ".join(notes) or "ok",
    )


@component(
    "PatternSignificanceAnalyzer",
    tier="tier3",
    capabilities=["pattern_significance", "contingency_tables", "false_discovery_rate"],
    example={
        "patterns": [
            {"name": "has_examples", "table": [[42, 18], [30, 40]]},
            {"name": "uses_xml_tags", "table": [[3, 1], [1, 3]]},
        ],
        "records": [
            {"patterns": ["step_by_step", "role"], "success": True},
            {"patterns": ["step_by_step"], "success": True},
            {"patterns": ["role"], "success": False},
            {"patterns": [], "success": False},
            {"patterns": ["step_by_step"], "success": True},
            {"patterns": [], "success": True},
        ],
        "fdr": 0.05,
    },
)
def pattern_significance_analyzer(request: PatternSignificanceAnalyzerInput) -> PatternSignificanceAnalyzerOutput:
    """Which patterns are associated with success: chi-square or Fisher's exact, Cramér's V, odds ratios, FDR.

    For each pattern's contingency table (given, or built from records): Pearson chi-square (Yates for 2×2 if
    asked) or Fisher's exact test when an expected count is below 5 (the output says which and why; r×c tables
    use a seeded Monte Carlo Fisher–Freeman–Halton test); Cramér's V; the odds ratio with a Woolf interval
    (Haldane–Anscombe 0.5 added when a cell is zero); success rates and their ratio. Benjamini–Hochberg
    q-values across the tested patterns pick the significant ones, ranked.
    """
    named: list[tuple[str, Literal["table", "records"], np.ndarray]] = [
        (p.name, "table", np.asarray(p.table, dtype=np.int64)) for p in request.patterns
    ]
    built = _tables_from_records(list(request.records), request.min_support) if request.records else []
    named += [(name, "records", table) for name, table in built]
    seen: set[str] = set()
    for name, _, table in named:
        if name in seen:
            raise InvalidInput("patterns", f"pattern {name!r} appears twice (names must be unique across inputs)")
        seen.add(name)
        if request.alternative != "two-sided" and table.shape != (2, 2):
            raise InvalidInput(
                "alternative",
                f"one-sided alternatives need 2×2 tables; pattern {name!r} is {table.shape[0]}×{table.shape[1]}",
            )
    if request.test == "chi_square" and request.alternative != "two-sided":
        raise InvalidInput("test", "chi-square is two-sided only; use 'fisher' or 'auto' with a one-sided alternative")
    if len(named) > MAX_PATTERNS:
        raise InvalidInput(
            "records", f"{len(named)} patterns to test; at most {MAX_PATTERNS} (raise min_support to test fewer)"
        )
    if not named:
        raise InvalidInput("records", f"no pattern is present in at least min_support = {request.min_support} records")

    plans = [_plan(name, source, table, request) for name, source, table in named]
    n_mc = sum(plan.test == "fisher_freeman_halton_monte_carlo" for plan in plans)
    if n_mc * request.n_monte_carlo > MAX_MONTE_CARLO_DRAWS:
        # MAX_PATTERNS × the minimum n_monte_carlo (1000) fits the budget, so the advice is always feasible.
        raise InvalidInput(
            "n_monte_carlo",
            f"{n_mc} r×c tables need the Monte Carlo exact test and n_monte_carlo × tables must be ≤ "
            f"{MAX_MONTE_CARLO_DRAWS}: use n_monte_carlo ≤ {MAX_MONTE_CARLO_DRAWS // n_mc}",
        )
    rng = np.random.default_rng(request.seed)
    results = [_analyse(plan, request, rng) for plan in plans]
    tested = [i for i, r in enumerate(results) if r.p_value is not None]
    q = adjust_p_values(np.array([results[i].p_value for i in tested]), "fdr_bh")
    for i, qi in zip(tested, q, strict=True):
        results[i] = results[i].model_copy(update={"q_value": float(qi), "significant": bool(qi <= request.fdr)})

    def effect(r: PatternResult) -> float:
        if r.odds_ratio is not None:
            return abs(math.log(r.odds_ratio.estimate))
        return r.cramers_v or 0.0

    ranked = sorted((r for r in results if r.significant), key=lambda r: (r.q_value, r.p_value, -effect(r)))
    untested = len(results) - len(tested)
    return PatternSignificanceAnalyzerOutput(
        results=results,
        significant_patterns=[r.pattern for r in ranked],
        n_tested=len(tested),
        n_records=len(request.records),
        fdr=request.fdr,
        alternative=request.alternative,
        note=f"Benjamini–Hochberg over {len(tested)} tested patterns"
        + (f"; {untested} untestable (see each result)" if untested else ""),
    )
