"""Insights from rule performance data, each with its statistical evidence, a confidence and a recommendation.

**Data.** Rule applications ``{rule_id, improvement_score, applied_at?, domain? / context.domain?, success?}``
inline, in a file under ``data/`` (CSV with a header, or a JSON list), or from the domain store
(``source: "store"``, filtered by ``since`` / ``until`` / ``limit``). Rules with fewer than ``min_records``
applications are summarised but not tested.

**Hypotheses** (each gives a p-value; all of them form one family):

* best–worst gap — the rules with the highest and lowest mean improvement, Welch's t-test
  (``scipy.stats.ttest_ind(equal_var=False)``), the difference with its Welch interval and Hedges' g with
  its normal interval (the variance statsmodels' ``effectsize_smd`` uses). Choosing the two extremes after
  looking is a selection among all k(k − 1)/2 pairs, so the p-value that enters the family is
  Bonferroni-adjusted over those pairs (valid whichever pair is selected);
* weak contexts — each rule × domain cell against the same rule in its other domains, one-sided Welch
  (the cell is lower);
* unstable rules — Brown–Forsythe for each rule against the others: absolute deviations from each rule's own
  median, one-sided pooled t-test (the rule's deviations are larger). With two groups this is exactly
  ``scipy.stats.levene(center="median")`` squared into F; the omnibus k-group Brown–Forsythe is reported too;
* trends — per rule (and over all records) OLS of improvement on time in days, ``scipy.stats.linregress``:
  slope per day, its standard error and two-sided p-value.

The Benjamini–Hochberg procedure (``scipy.stats.false_discovery_control``) runs once over the whole family,
so under the global null (where the false discovery rate is the chance of claiming anything) that chance
is at most ``alpha`` for independent or positively dependent tests; only hypotheses with q ≤ ``alpha``
become insights. Every test, significant or not, is listed in the analysis tables.

**Confidence** is ``1 − q``; its level is *high* when q ≤ alpha/10 with at least 30 observations in the
smallest group, *medium* when q ≤ alpha with at least 10, else *low*. **Severity** follows the standardised
effect (|g|, the cell's shortfall / pooled sd, or a trend's change over its span / sd): ≥ 0.8 high, ≥ 0.5
medium, otherwise low; for unstable rules the sd ratio to the others: ≥ 2 high, ≥ 1.5 medium; findings
that are good news (an improving trend, an accepted variant, a model that beats its baseline) are *info*.
Insights are ranked by severity, then confidence, then effect size.

**Pipeline results.** ``validation`` (an optimisation validator's decision and reasons), ``model`` (a
model's held-out metrics next to its baseline's), ``ab_test`` (an A/B analysis's decision and primary
estimate), ``stopping`` (a group-sequential decision at the current look) and ``causal`` (observational
effect estimates by several methods, the naive difference and placebo checks) become insights carrying
that evidence. The causal insight says whether the adjusting methods agree (same sign, every interval
excluding 0), how far the naive difference lies from them (confounding), and flags failed placebos. With
``report: true`` the run writes ``insights.json`` and ``insights.md``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from mlmesh.errors import BadRequest, InvalidInput
from services.domain import store_for
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, component

__all__ = [
    "ContextTest",
    "GapTest",
    "Insight",
    "InsightGenerationEngineInput",
    "InsightGenerationEngineOutput",
    "ModelResult",
    "PerformanceRecord",
    "RecordsFile",
    "RuleSummary",
    "TrendTest",
    "ValidationResult",
    "VarianceTest",
    "insight_generation_engine",
]

MAX_INLINE_RECORDS = 50_000
MAX_RULES = 1_000
MAX_DOMAINS = 1_000
MAX_SCORE = 1e6
MAX_TIME = 1e11  # unix seconds (year 5138): bounds the input without rejecting any real timestamp
DAY_S = 86_400.0
TRUE_WORDS = {"1", "1.0", "true", "yes", "t", "y"}
FALSE_WORDS = {"0", "0.0", "false", "no", "f", "n"}
Severity = Literal["high", "medium", "low", "info"]
_SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2, "info": 3}
Name = Annotated[str, Field(min_length=1, max_length=200)]
ContextValue = str | FiniteFloat | bool | None


# --------------------------------------------------------------------------------------------- inputs


class PerformanceRecord(ComponentInput):
    """One application of a rule and how much it improved the prompt."""

    rule_id: Name
    improvement_score: FiniteFloat = Field(ge=-MAX_SCORE, le=MAX_SCORE, description="after − before quality")
    applied_at: FiniteFloat | None = Field(None, ge=0, le=MAX_TIME, description="unix seconds (needed for trends)")
    domain: Name | None = Field(None, description="context of the prompt; default: context.domain")
    context: dict[Annotated[str, Field(max_length=100)], ContextValue] | None = Field(None, max_length=64)
    success: bool | None = None


class RecordsFile(ComponentInput):
    """Records in a file under data/."""

    path: str = Field(
        min_length=1,
        max_length=1024,
        description="CSV with a header (rule_id, improvement_score, and any of applied_at, domain, success) "
        "or JSON (a list of records)",
    )


class ValidationResult(ComponentInput):
    """An upstream validator's decision (e.g. enhanced_optimization_validator)."""

    decision: Literal["accept", "reject"] | None = None
    accepted: bool | None = None
    reasons: list[Annotated[str, Field(max_length=2000)]] = Field(default_factory=list, max_length=50)
    improvement: FiniteFloat | None = Field(None, ge=-1e12, le=1e12, description="oriented difference of means")
    relative_improvement: FiniteFloat | None = Field(None, ge=-1e12, le=1e12)
    p_value: float | None = Field(None, ge=0, le=1, description="the validator's main test p-value")
    effect_size: FiniteFloat | None = Field(None, ge=-1e6, le=1e6, description="standardised effect (e.g. Hedges g)")
    subject: Name | None = Field(None, description="what was validated (e.g. a rule id)")

    @model_validator(mode="after")
    def _has_decision(self) -> ValidationResult:
        if self.decision is None and self.accepted is None:
            raise ValueError("give decision ('accept'/'reject') or accepted (true/false)")
        if self.decision is not None and self.accepted is not None and (self.decision == "accept") != self.accepted:
            raise ValueError("decision and accepted disagree")
        return self

    @property
    def is_accepted(self) -> bool:
        return self.accepted if self.accepted is not None else self.decision == "accept"


class HeldOut(ComponentInput):
    """Held-out metrics (the shape ml_model_service reports)."""

    r2: FiniteFloat | None = Field(None, ge=-1e12, le=1)
    mae: FiniteFloat | None = Field(None, ge=0, le=1e12)
    rmse: FiniteFloat | None = Field(None, ge=0, le=1e12)
    accuracy: float | None = Field(None, ge=0, le=1)
    balanced_accuracy: float | None = Field(None, ge=0, le=1)
    roc_auc: float | None = Field(None, ge=0, le=1)
    log_loss: FiniteFloat | None = Field(None, ge=0, le=1e6)
    notes: list[Annotated[str, Field(max_length=2000)]] = Field(default_factory=list, max_length=50)


class ModelResult(ComponentInput):
    """An upstream model's held-out metrics and its dummy baseline's."""

    name: Name | None = None
    version: int | None = Field(None, ge=0, le=2**31)
    task: Literal["regression", "classification"] | None = None
    metrics: HeldOut
    baseline_metrics: HeldOut | None = None
    n_test: int | None = Field(None, ge=1, le=10**9, description="held-out rows behind the metrics")


Reasons = list[Annotated[str, Field(max_length=2000)]]
Bounded = Annotated[FiniteFloat, Field(ge=-1e12, le=1e12)]


class ABTestResult(ComponentInput):
    """An upstream A/B analysis (e.g. modern_ab_testing_service): decision and primary estimate."""

    subject: Name | None = Field(None, description="what was tested")
    decision: Literal["ship_treatment", "keep_control", "inconclusive", "invalid_sample_ratio"]
    difference: Bounded = Field(description="treatment − control of the primary estimate")
    ci_low: Bounded | None = None
    ci_high: Bounded | None = None
    p_value: float | None = Field(None, ge=0, le=1)
    reasons: Reasons = Field(default_factory=list, max_length=50)


class StoppingResult(ComponentInput):
    """A group-sequential decision at the current look (advanced_early_stopping_framework's ``current``)."""

    look: int = Field(ge=1, le=1000)
    information_fraction: float = Field(ge=0, le=10)
    z: Bounded | None
    z_source: str | None = Field(None, max_length=200)
    estimate: Bounded | None = None
    standard_error: Bounded | None = None
    z_boundary: Bounded | None
    nominal_p: float | None = Field(None, ge=0, le=1)
    conditional_power_current_trend: float | None = Field(None, ge=0, le=1)
    conditional_power_design: float | None = Field(None, ge=0, le=1)
    conditional_power_h0: float | None = Field(None, ge=0, le=1)
    decision: Literal["stop_efficacy", "stop_harm", "stop_futility", "continue", "final_no_rejection"]
    reasons: Reasons = Field(default_factory=list, max_length=50)


class CausalEstimate(ComponentInput):
    """One effect estimate as causal_inference_analyzer reports it."""

    method: Literal["naive", "did", "ipw", "aipw", "matching"]
    estimand: Literal["ATE", "ATT"]
    estimate: Bounded
    std_error: Bounded
    ci_low: Bounded
    ci_high: Bounded
    z: Bounded | None
    p_value: float | None = Field(ge=0, le=1)
    n: int = Field(ge=1)
    se_method: str = Field(max_length=500)


class PlaceboCheck(ComponentInput):
    """One placebo check as causal_inference_analyzer reports it."""

    kind: Literal["permuted_treatment", "placebo_outcome", "pre_period_did"]
    method: str | None = Field(max_length=100)
    estimate: Bounded | None
    std_error: Bounded | None
    p_value: float | None = Field(ge=0, le=1)
    n_draws: int = Field(ge=0)
    n_skipped: int = Field(ge=0)
    rejection_rate: float | None = Field(ge=0, le=1)
    passed: bool | None
    detail: str = Field(max_length=2000)


class CausalResult(ComponentInput):
    """An upstream observational check: adjusted estimates, the naive difference and placebos."""

    subject: Name | None = Field(None, description="the treatment whose effect was estimated")
    naive: CausalEstimate | None = None
    estimates: list[CausalEstimate] = Field(min_length=1, max_length=20)
    placebo: list[PlaceboCheck] = Field(default_factory=list, max_length=20)


class InsightGenerationEngineInput(ComponentInput):
    source: Literal["records", "store"] = Field(
        "records", description="records: the `records` field; store: the domain store's rule applications"
    )
    records: list[PerformanceRecord] | RecordsFile | None = Field(
        None, description=f"inline (at most {MAX_INLINE_RECORDS}) or a file under data/"
    )
    since: FiniteFloat | None = Field(None, ge=0, le=MAX_TIME, description="only records applied at or after")
    until: FiniteFloat | None = Field(None, ge=0, le=MAX_TIME, description="only records applied before")
    limit: int | None = Field(None, ge=1, le=1_000_000, description="store: at most this many applications")
    validation: ValidationResult | None = Field(None, description="an upstream validator's decision")
    model: ModelResult | None = Field(None, description="an upstream model's held-out metrics")
    ab_test: ABTestResult | None = Field(None, description="an upstream A/B analysis")
    stopping: StoppingResult | None = Field(None, description="an upstream group-sequential decision")
    causal: CausalResult | None = Field(None, description="an upstream observational effect check")
    alpha: float = Field(0.05, gt=0, le=0.5, description="false discovery rate across every test")
    min_records: int = Field(5, ge=2, le=100_000, description="smallest group (rule or rule × domain) to test")
    confidence_level: float = Field(0.95, ge=0.5, lt=1, description="for the intervals")
    max_insights: int = Field(50, ge=1, le=1000)
    report: bool = Field(False, description="write insights.json and insights.md")

    @model_validator(mode="after")
    def _consistent(self) -> InsightGenerationEngineInput:
        if self.source == "store" and self.records is not None:
            raise ValueError("records: leave it out with source 'store' (the store supplies the records)")
        upstream = (self.validation, self.model, self.ab_test, self.stopping, self.causal)
        if self.source == "records" and self.records is None and all(u is None for u in upstream):
            raise ValueError("records: required (or give upstream results, or use source 'store')")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self


# --------------------------------------------------------------------------------------------- outputs

EvidenceValue = float | int | str | bool | None | list[str]


class RuleSummary(ComponentOutput):
    rule_id: str
    n: int
    mean: float
    sd: float | None = Field(description="sample standard deviation (None for one record)")
    cv: float | None = Field(description="sd/|mean| (None when the mean is 0 or sd undefined)")
    success_rate: float | None
    n_domains: int
    tested: bool = Field(description="n ≥ min_records")


class GapTest(ComponentOutput):
    best: str
    worst: str
    n_best: int
    n_worst: int
    mean_best: float
    mean_worst: float
    difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p_value: float = Field(description="Welch two-sided p-value of this pair")
    pairs: int = Field(description="k(k−1)/2 pairs the extremes were chosen from")
    p_adjusted: float = Field(description="Bonferroni over the pairs: the p-value in the family")
    hedges_g: float
    g_ci_low: float
    g_ci_high: float
    q_value: float
    significant: bool


class ContextTest(ComponentOutput):
    rule_id: str
    domain: str
    n_cell: int
    n_rest: int
    mean_cell: float
    mean_rest: float
    shortfall: float = Field(description="mean_rest − mean_cell")
    ci_low: float = Field(description="interval of the shortfall")
    ci_high: float
    standardised: float = Field(description="shortfall / pooled sd")
    t: float
    df: float
    p_value: float = Field(description="one-sided Welch: the cell is lower")
    q_value: float
    significant: bool


class VarianceTest(ComponentOutput):
    rule_id: str
    n: int
    n_others: int
    sd: float
    sd_others: float = Field(description="root of the other rules' mean within-rule variance")
    sd_ratio: float | None
    cv: float | None
    statistic: float = Field(description="pooled t of absolute deviations from rule medians")
    p_value: float = Field(description="one-sided Brown–Forsythe: this rule is more variable")
    q_value: float
    significant: bool


class TrendTest(ComponentOutput):
    rule_id: str = Field(description="'*' for every rule together")
    n: int
    span_days: float
    slope_per_day: float
    intercept: float = Field(description="at the first record of the whole data set")
    stderr: float
    r: float
    p_value: float
    change_over_span: float
    standardised: float = Field(description="|change over span| / sd of the scores")
    q_value: float
    significant: bool


class Omnibus(ComponentOutput):
    test: str
    statistic: float
    p_value: float
    groups: int


class Insight(ComponentOutput):
    rank: int
    id: str
    kind: Literal[
        "best_worst_gap",
        "weak_context",
        "unstable_rule",
        "trend",
        "validation",
        "model_quality",
        "ab_test",
        "sequential_decision",
        "causal_check",
        "placebo",
    ]
    title: str
    rule_ids: list[str]
    domain: str | None = None
    severity: Severity
    confidence: float | None = Field(description="1 − q (or 1 − p for upstream results); None without a p-value")
    confidence_level: Literal["high", "medium", "low"] | None
    p_value: float | None
    q_value: float | None
    effect_size: float | None
    effect_measure: str | None
    evidence: dict[str, EvidenceValue]
    recommendation: str


class InsightGenerationEngineOutput(ComponentOutput):
    source: Literal["records", "file", "store", "none"]
    n_records: int
    n_skipped: int = Field(description="store rows without an improvement score")
    n_rules: int
    n_domains: int
    alpha: float
    n_tests: int = Field(description="hypotheses in the Benjamini–Hochberg family")
    n_significant: int
    insights: list[Insight]
    rules: list[RuleSummary]
    gap: GapTest | None
    contexts: list[ContextTest]
    variances: list[VarianceTest]
    variance_omnibus: Omnibus | None
    trends: list[TrendTest]
    notes: list[str]


# --------------------------------------------------------------------------------------------- records


@dataclass
class _Data:
    rule: np.ndarray  # object (str)
    y: np.ndarray  # float
    t: np.ndarray  # float, NaN without a timestamp
    domain: np.ndarray  # object (str), "" without a domain
    success: np.ndarray  # float 1/0, NaN unknown
    skipped: int = 0


def _from_models(records: list[PerformanceRecord]) -> _Data:
    def domain_of(r: PerformanceRecord) -> str:
        if r.domain is not None:
            return r.domain
        value = (r.context or {}).get("domain")
        return value if isinstance(value, str) and value else ""

    return _Data(
        rule=np.array([r.rule_id for r in records], dtype=object),
        y=np.array([r.improvement_score for r in records], dtype=np.float64),
        t=np.array([np.nan if r.applied_at is None else r.applied_at for r in records], dtype=np.float64),
        domain=np.array([domain_of(r) for r in records], dtype=object),
        success=np.array([np.nan if r.success is None else float(r.success) for r in records], dtype=np.float64),
    )


def _number(value: Any, what: str, field: str, row: int, *, required: bool) -> float:
    if value is None or value == "":
        if required:
            raise InvalidInput(field, f"row {row}: {what} is required")
        return math.nan
    if isinstance(value, bool):
        raise InvalidInput(field, f"row {row}: {what} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(field, f"row {row}: {what} must be a number; got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise InvalidInput(field, f"row {row}: {what} must be finite")
    return number


def _flag(value: Any, field: str, row: int) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool | int) and value in (0, 1):
        return float(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return 1.0
    if word in FALSE_WORDS:
        return 0.0
    raise InvalidInput(field, f"row {row}: success must be true/false/1/0 or empty")


def _from_rows(rows: Iterable[Mapping[str, Any]], field: str, *, skip_missing: bool = False) -> _Data:
    """Records from loose rows (CSV, JSON, store): ``rule_id``/``rule``, ``improvement_score``/``improvement``.

    Store rows without an improvement score fall back to ``after_quality − before_quality``; rows with
    neither are skipped (counted) when ``skip_missing``.
    """
    rule, y, t, domain, success = [], [], [], [], []
    skipped = 0
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InvalidInput(field, f"row {i}: must be an object with rule_id and improvement_score")
        name = row.get("rule_id", row.get("rule"))
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
            raise InvalidInput(field, f"row {i}: rule_id must be a string of 1 to 200 characters")
        raw = row.get("improvement_score", row.get("improvement"))
        if raw is None or raw == "":
            before, after = row.get("before_quality"), row.get("after_quality")
            if before is not None and after is not None:
                raw = _number(after, "after_quality", field, i, required=True) - _number(
                    before, "before_quality", field, i, required=True
                )
            elif skip_missing:
                skipped += 1
                continue
        score = _number(raw, "improvement_score", field, i, required=True)
        if abs(score) > MAX_SCORE:
            raise InvalidInput(field, f"row {i}: improvement_score must be within ±{MAX_SCORE:g}")
        when = _number(row.get("applied_at"), "applied_at", field, i, required=False)
        if not math.isnan(when) and not 0 <= when <= MAX_TIME:
            raise InvalidInput(field, f"row {i}: applied_at must be unix seconds in [0, {MAX_TIME:g}]")
        where = row.get("domain")
        context = row.get("context")
        if not where and isinstance(context, str) and context.startswith("{"):
            try:
                context = json.loads(context)
            except ValueError:
                context = None
        if not where and isinstance(context, Mapping):
            where = context.get("domain")
        rule.append(name.strip())
        y.append(score)
        t.append(when)
        domain.append(str(where).strip()[:200] if where else "")
        success.append(_flag(row.get("success"), field, i))
    return _Data(
        rule=np.array(rule, dtype=object),
        y=np.array(y, dtype=np.float64),
        t=np.array(t, dtype=np.float64),
        domain=np.array(domain, dtype=object),
        success=np.array(success, dtype=np.float64),
        skipped=skipped,
    )


def _read_file(ref: RecordsFile, ctx: RunContext) -> _Data:
    field = "records.path"
    path: Path = ctx.data_path(ref.path, field=field)
    if not path.is_file():
        raise BadRequest(f"{field}: no such file in the data directory")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise InvalidInput(field, "the JSON file must hold a list of records")
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        else:
            raise BadRequest(f"{field}: unsupported file type {suffix!r}; use .csv or .json")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise BadRequest(f"{field}: could not read {path.name}: {type(exc).__name__}") from exc
    if len(rows) > ctx.settings.max_array_length:
        raise InvalidInput(field, f"{len(rows)} records; the limit is {ctx.settings.max_array_length}")
    return _from_rows(rows, field)


def _load(request: InsightGenerationEngineInput, ctx: RunContext) -> tuple[_Data, str]:
    if request.source == "store":
        rows = store_for(ctx).applications(since=request.since, until=request.until, limit=request.limit)
        return _from_rows(rows, "source", skip_missing=True), "store"
    if request.records is None:
        return _from_rows([], "records"), "none"
    if isinstance(request.records, RecordsFile):
        return _read_file(request.records, ctx), "file"
    if len(request.records) > MAX_INLINE_RECORDS:
        raise InvalidInput("records", f"at most {MAX_INLINE_RECORDS} inline; pass a file under data/")
    return _from_models(request.records), "records"


def _window(data: _Data, since: float | None, until: float | None) -> _Data:
    if since is None and until is None:
        return data
    keep = ~np.isnan(data.t)
    if since is not None:
        keep &= data.t >= since
    if until is not None:
        keep &= data.t < until
    return _Data(data.rule[keep], data.y[keep], data.t[keep], data.domain[keep], data.success[keep], data.skipped)


# --------------------------------------------------------------------------------------------- statistics


def _sd(x: np.ndarray) -> float | None:
    return float(np.std(x, ddof=1)) if x.size >= 2 else None


def _hedges_g(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float, float]:
    """Hedges' g (pooled sd, small-sample corrected) with its normal interval.

    Variance (n₁ + n₂)/(n₁n₂) + g²/(2(n₁ + n₂ − 3.94)), as statsmodels' ``effectsize_smd`` computes it.
    """
    n1, n2 = a.size, b.size
    pooled = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    d = (a.mean() - b.mean()) / pooled
    g = d * (1 - 3 / (4 * (n1 + n2) - 9))
    se = math.sqrt((n1 + n2) / (n1 * n2) + g * g / (2 * (n1 + n2 - 3.94)))
    z = float(stats.norm.ppf((1 + level) / 2))
    return float(g), float(g - z * se), float(g + z * se)


def _welch_interval(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Welch t, Satterthwaite df and the interval of mean(a) − mean(b)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    diff = float(a.mean() - b.mean())
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return diff / se, float(df), diff - half, diff + half


def _confidence(q: float, n_min: int, alpha: float) -> Literal["high", "medium", "low"]:
    if q <= alpha / 10 and n_min >= 30:
        return "high"
    if q <= alpha and n_min >= 10:
        return "medium"
    return "low"


def _severity(effect: float) -> Severity:
    size = abs(effect)
    return "high" if size >= 0.8 else "medium" if size >= 0.5 else "low"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass
class _Groups:
    names: list[str]
    index: np.ndarray  # rule index per record
    members: list[np.ndarray]  # record indices per rule


def _groups(labels: np.ndarray) -> _Groups:
    names, index = np.unique(labels.astype(str), return_inverse=True)
    order = np.argsort(index, kind="stable")
    bounds = np.cumsum(np.bincount(index, minlength=len(names)))[:-1]
    return _Groups(list(names), index, np.split(order, bounds))


def _gap(data: _Data, g: _Groups, tested: list[int], level: float) -> tuple[GapTest | None, str | None]:
    if len(tested) < 2:
        return None, "best–worst gap: needs at least two rules with min_records applications"
    means = [data.y[g.members[k]].mean() for k in tested]
    best, worst = tested[int(np.argmax(means))], tested[int(np.argmin(means))]
    a, b = data.y[g.members[best]], data.y[g.members[worst]]
    if best == worst or (a.var() == 0 and b.var() == 0):
        return None, "best–worst gap: the rules' scores do not vary, so no test applies"
    result = stats.ttest_ind(a, b, equal_var=False)
    _, df, low, high = _welch_interval(a, b, level)
    gh, g_low, g_high = _hedges_g(a, b, level)
    pairs = len(tested) * (len(tested) - 1) // 2
    return GapTest(
        best=g.names[best],
        worst=g.names[worst],
        n_best=a.size,
        n_worst=b.size,
        mean_best=float(a.mean()),
        mean_worst=float(b.mean()),
        difference=float(a.mean() - b.mean()),
        ci_low=low,
        ci_high=high,
        t=float(result.statistic),
        df=df,
        p_value=float(result.pvalue),
        pairs=pairs,
        p_adjusted=min(1.0, float(result.pvalue) * pairs),
        hedges_g=gh,
        g_ci_low=g_low,
        g_ci_high=g_high,
        q_value=1.0,
        significant=False,
    ), None


def _contexts(data: _Data, g: _Groups, tested: list[int], min_n: int, level: float) -> list[ContextTest]:
    out = []
    for k in tested:
        idx = g.members[k]
        domains = data.domain[idx]
        for name in sorted(set(domains.tolist()) - {""}):
            in_cell = domains == name
            cell, rest = data.y[idx[in_cell]], data.y[idx[~in_cell]]
            if cell.size < min_n or rest.size < min_n or (cell.var() == 0 and rest.var() == 0):
                continue
            result = stats.ttest_ind(cell, rest, equal_var=False, alternative="less")
            _, df, low, high = _welch_interval(rest, cell, level)
            pooled = math.sqrt(
                ((cell.size - 1) * cell.var(ddof=1) + (rest.size - 1) * rest.var(ddof=1)) / (cell.size + rest.size - 2)
            )
            shortfall = float(rest.mean() - cell.mean())
            out.append(
                ContextTest(
                    rule_id=g.names[k],
                    domain=name,
                    n_cell=cell.size,
                    n_rest=rest.size,
                    mean_cell=float(cell.mean()),
                    mean_rest=float(rest.mean()),
                    shortfall=shortfall,
                    ci_low=low,
                    ci_high=high,
                    standardised=shortfall / pooled,
                    t=float(result.statistic),
                    df=df,
                    p_value=float(result.pvalue),
                    q_value=1.0,
                    significant=False,
                )
            )
    return out


def _variances(data: _Data, g: _Groups, tested: list[int]) -> tuple[list[VarianceTest], Omnibus | None, str | None]:
    if len(tested) < 2:
        return [], None, "unstable rules: needs at least two rules with min_records applications"
    samples = [data.y[g.members[k]] for k in tested]
    # Absolute deviations from each rule's own median: spread within a rule, not differences between rules.
    z = [np.abs(x - np.median(x)) for x in samples]
    omnibus = None
    if any(v.var() > 0 for v in z):
        bf = stats.levene(*samples, center="median")
        omnibus = Omnibus(
            test="Brown–Forsythe (levene, center=median)",
            statistic=float(bf.statistic),
            p_value=float(bf.pvalue),
            groups=len(samples),
        )
    variances = np.array([x.var(ddof=1) for x in samples])
    sizes = np.array([x.size for x in samples])
    out = []
    for j, k in enumerate(tested):
        others = np.concatenate([z[i] for i in range(len(z)) if i != j])
        if z[j].var() == 0 and others.var() == 0:
            continue
        result = stats.ttest_ind(z[j], others, equal_var=True, alternative="greater")
        mask = np.arange(len(samples)) != j
        # Within-rule variance of the others, weighted by degrees of freedom.
        sd_others = math.sqrt(float(((sizes[mask] - 1) * variances[mask]).sum() / (sizes[mask] - 1).sum()))
        sd = math.sqrt(float(variances[j]))
        mean = float(samples[j].mean())
        out.append(
            VarianceTest(
                rule_id=g.names[k],
                n=int(sizes[j]),
                n_others=int(others.size),
                sd=sd,
                sd_others=sd_others,
                sd_ratio=sd / sd_others if sd_others > 0 else None,
                cv=sd / abs(mean) if mean != 0 else None,
                statistic=float(result.statistic),
                p_value=float(result.pvalue),
                q_value=1.0,
                significant=False,
            )
        )
    return out, omnibus, None


def _trend(name: str, t: np.ndarray, y: np.ndarray, t0: float) -> TrendTest | None:
    if np.ptp(t) == 0 or np.ptp(y) == 0:
        return None
    days = (t - t0) / DAY_S
    fit = stats.linregress(days, y)
    span = float(np.ptp(days))
    change = float(fit.slope) * span
    return TrendTest(
        rule_id=name,
        n=y.size,
        span_days=span,
        slope_per_day=float(fit.slope),
        intercept=float(fit.intercept),
        stderr=float(fit.stderr),
        r=float(fit.rvalue),
        p_value=float(fit.pvalue),
        change_over_span=change,
        standardised=abs(change) / float(np.std(y, ddof=1)),
        q_value=1.0,
        significant=False,
    )


def _trends(data: _Data, g: _Groups, tested: list[int], min_n: int) -> tuple[list[TrendTest], str | None]:
    timed = ~np.isnan(data.t)
    if timed.sum() < min_n:
        return [], "trends: needs applied_at on at least min_records applications"
    t0 = float(data.t[timed].min())
    out = []
    overall = _trend("*", data.t[timed], data.y[timed], t0) if len(tested) > 1 else None
    if overall is not None:
        out.append(overall)
    for k in tested:
        idx = g.members[k][timed[g.members[k]]]
        if idx.size >= min_n and (fit := _trend(g.names[k], data.t[idx], data.y[idx], t0)) is not None:
            out.append(fit)
    return out, None


# --------------------------------------------------------------------------------------------- insights


def _statistical_insights(
    gap: GapTest | None,
    contexts: list[ContextTest],
    variances: list[VarianceTest],
    trends: list[TrendTest],
    alpha: float,
) -> list[Insight]:
    out: list[Insight] = []
    if gap is not None and gap.significant:
        out.append(
            Insight(
                rank=0,
                id=f"best_worst_gap:{gap.best}:{gap.worst}",
                kind="best_worst_gap",
                title=f"{gap.best} outperforms {gap.worst} by {_fmt(gap.difference)} mean improvement",
                rule_ids=[gap.best, gap.worst],
                severity=_severity(gap.hedges_g),
                confidence=1 - gap.q_value,
                confidence_level=_confidence(gap.q_value, min(gap.n_best, gap.n_worst), alpha),
                p_value=gap.p_adjusted,
                q_value=gap.q_value,
                effect_size=gap.hedges_g,
                effect_measure="Hedges g",
                evidence={
                    "test": "Welch t-test, Bonferroni over rule pairs",
                    "mean_best": gap.mean_best,
                    "mean_worst": gap.mean_worst,
                    "difference": gap.difference,
                    "ci_low": gap.ci_low,
                    "ci_high": gap.ci_high,
                    "t": gap.t,
                    "df": gap.df,
                    "p_unadjusted": gap.p_value,
                    "pairs": gap.pairs,
                    "n_best": gap.n_best,
                    "n_worst": gap.n_worst,
                },
                recommendation=(
                    f"Prefer {gap.best} where both rules apply and lower {gap.worst}'s priority (or disable it): "
                    f"{gap.best} improves prompts by {_fmt(gap.difference)} more on average "
                    f"(interval {_fmt(gap.ci_low)} to {_fmt(gap.ci_high)})."
                ),
            )
        )
    for c in contexts:
        if not c.significant:
            continue
        out.append(
            Insight(
                rank=0,
                id=f"weak_context:{c.rule_id}:{c.domain}",
                kind="weak_context",
                title=f"{c.rule_id} is weak in domain {c.domain!r} ({_fmt(c.shortfall)} below its other domains)",
                rule_ids=[c.rule_id],
                domain=c.domain,
                severity=_severity(c.standardised),
                confidence=1 - c.q_value,
                confidence_level=_confidence(c.q_value, min(c.n_cell, c.n_rest), alpha),
                p_value=c.p_value,
                q_value=c.q_value,
                effect_size=c.standardised,
                effect_measure="shortfall / pooled sd",
                evidence={
                    "test": "one-sided Welch t-test, cell vs the rule's other domains",
                    "mean_cell": c.mean_cell,
                    "mean_rest": c.mean_rest,
                    "shortfall": c.shortfall,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "n_cell": c.n_cell,
                    "n_rest": c.n_rest,
                },
                recommendation=(
                    f"Stop applying {c.rule_id} to {c.domain!r} prompts, or retune its parameters for that domain: "
                    f"there it averages {_fmt(c.mean_cell)} against {_fmt(c.mean_rest)} elsewhere."
                ),
            )
        )
    for v in variances:
        if not v.significant:
            continue
        ratio = v.sd_ratio if v.sd_ratio is not None else math.inf
        out.append(
            Insight(
                rank=0,
                id=f"unstable_rule:{v.rule_id}",
                kind="unstable_rule",
                title=f"{v.rule_id} is unstable (sd {_fmt(v.sd)} against {_fmt(v.sd_others)} for the other rules)",
                rule_ids=[v.rule_id],
                severity="high" if ratio >= 2 else "medium" if ratio >= 1.5 else "low",
                confidence=1 - v.q_value,
                confidence_level=_confidence(v.q_value, min(v.n, v.n_others), alpha),
                p_value=v.p_value,
                q_value=v.q_value,
                effect_size=v.sd_ratio,
                effect_measure="sd ratio to the other rules",
                evidence={
                    "test": "one-sided Brown–Forsythe (absolute deviations from rule medians)",
                    "sd": v.sd,
                    "sd_others": v.sd_others,
                    "cv": v.cv,
                    "n": v.n,
                    "statistic": v.statistic,
                },
                recommendation=(
                    f"Investigate {v.rule_id}'s inconsistent results: look for the contexts or parameter settings "
                    "behind its worst applications and restrict or retune it before relying on its mean."
                ),
            )
        )
    for tr in trends:
        if not tr.significant:
            continue
        label = "all rules" if tr.rule_id == "*" else tr.rule_id
        rising = tr.slope_per_day > 0
        out.append(
            Insight(
                rank=0,
                id=f"trend:{tr.rule_id}",
                kind="trend",
                title=f"{label} {'improving' if rising else 'declining'} by {_fmt(tr.slope_per_day)} per day",
                rule_ids=[] if tr.rule_id == "*" else [tr.rule_id],
                severity="info" if rising else _severity(tr.standardised),
                confidence=1 - tr.q_value,
                confidence_level=_confidence(tr.q_value, tr.n, alpha),
                p_value=tr.p_value,
                q_value=tr.q_value,
                effect_size=tr.slope_per_day,
                effect_measure="slope per day (OLS)",
                evidence={
                    "test": "OLS slope of improvement on time (scipy.stats.linregress)",
                    "slope_per_day": tr.slope_per_day,
                    "stderr": tr.stderr,
                    "r": tr.r,
                    "n": tr.n,
                    "span_days": tr.span_days,
                    "change_over_span": tr.change_over_span,
                },
                recommendation=(
                    f"Keep {label}'s recent changes: improvement rose by {_fmt(tr.change_over_span)} over "
                    f"{_fmt(tr.span_days)} days."
                    if rising
                    else f"Find what changed for {label}: improvement fell by {_fmt(-tr.change_over_span)} over "
                    f"{_fmt(tr.span_days)} days; review recent parameter or prompt-mix changes and roll back if needed."
                ),
            )
        )
    return out


def _validation_insight(v: ValidationResult, alpha: float) -> Insight:
    subject = v.subject or "the optimised variant"
    evidence: dict[str, EvidenceValue] = {
        "decision": "accept" if v.is_accepted else "reject",
        "reasons": list(v.reasons),
        "improvement": v.improvement,
        "relative_improvement": v.relative_improvement,
    }
    level = None
    if v.p_value is not None:
        level = "high" if v.p_value <= alpha / 10 else "medium" if v.p_value <= alpha else "low"
    if v.is_accepted:
        title = f"Validation accepts {subject}"
        severity: Severity = "info"
        recommendation = f"Roll out {subject}: the validator found the improvement real."
    else:
        title = f"Validation rejects {subject}"
        severity = "medium" if v.improvement is not None and v.improvement < 0 else "low"
        why = f" ({v.reasons[0]})" if v.reasons else ""
        recommendation = f"Keep the baseline; do not roll out {subject}{why}. Collect more data or revise the change."
    return Insight(
        rank=0,
        id="validation",
        kind="validation",
        title=title,
        rule_ids=[v.subject] if v.subject else [],
        severity=severity,
        confidence=1 - v.p_value if v.p_value is not None else None,
        confidence_level=level,
        p_value=v.p_value,
        q_value=None,
        effect_size=v.effect_size,
        effect_measure="as reported by the validator" if v.effect_size is not None else None,
        evidence=evidence,
        recommendation=recommendation,
    )


def _model_insight(m: ModelResult) -> Insight:
    label = m.name or "the model"
    if m.version is not None:
        label += f" v{m.version}"
    got, base = m.metrics, m.baseline_metrics
    evidence: dict[str, EvidenceValue] = {
        f"{k}": v for k, v in got.model_dump(exclude={"notes"}).items() if v is not None
    }
    if base is not None:
        evidence.update({f"baseline_{k}": v for k, v in base.model_dump(exclude={"notes"}).items() if v is not None})
    if m.n_test is not None:
        evidence["n_test"] = m.n_test
    evidence["notes"] = list(got.notes)
    # (metric, higher is better) in order of preference.
    candidates = [("r2", True), ("rmse", False), ("mae", False), ("roc_auc", True), ("balanced_accuracy", True)]
    candidates += [("accuracy", True), ("log_loss", False)]
    for metric, higher in candidates:
        value = getattr(got, metric)
        reference = getattr(base, metric) if base is not None else None
        if value is None:
            continue
        if reference is None and metric == "r2":
            reference = 0.0  # R² of predicting the mean
        elif reference is None and metric == "roc_auc":
            reference = 0.5  # chance
        if reference is None:
            continue
        gain = value - reference if higher else reference - value
        relative = metric not in ("r2", "roc_auc")
        scale = abs(reference) if reference != 0 and relative else 1.0
        compared = f"on {metric} ({_fmt(value)} vs {_fmt(reference)})"
        if gain > 0:
            title, severity = f"{label} beats its baseline {compared}", "info"
            recommendation = f"Use {label} for rule selection; keep monitoring its held-out {metric}."
        else:
            title, severity = f"{label} is no better than its baseline {compared}", "high"
            recommendation = (
                f"Do not use {label} for decisions: it does not beat a dummy baseline. "
                "Add informative features or more training data and retrain."
            )
        return _upstream_insight(
            "model_quality",
            "model_quality",
            title,
            severity,  # type: ignore[arg-type]
            effect_size=gain / scale,
            effect_measure=f"{metric} gain over the baseline" + (" (relative)" if relative else ""),
            evidence=evidence,
            recommendation=recommendation,
        )
    return _upstream_insight(
        "model_quality",
        "model_quality",
        f"{label}: no metric can be compared with a baseline",
        "low",
        evidence=evidence,
        recommendation="Report the baseline's held-out metrics with the model's so its value can be judged.",
    )


def _upstream_insight(id_: str, kind: Any, title: str, severity: Severity, **fields: Any) -> Insight:
    p = fields.pop("p_value", None)
    return Insight(
        rank=0,
        id=id_,
        kind=kind,
        title=title,
        rule_ids=fields.pop("rule_ids", []),
        severity=severity,
        confidence=None if p is None else 1 - p,
        confidence_level=None if p is None else ("high" if p <= 0.005 else "medium" if p <= 0.05 else "low"),
        p_value=p,
        q_value=None,
        effect_size=fields.pop("effect_size", None),
        effect_measure=fields.pop("effect_measure", None),
        **fields,
    )


def _ab_insight(ab: ABTestResult) -> Insight:
    subject = ab.subject or "the treatment"
    interval = f" [{_fmt(ab.ci_low)}, {_fmt(ab.ci_high)}]" if ab.ci_low is not None and ab.ci_high is not None else ""
    verdict = {
        "ship_treatment": (f"A/B: ship {subject}", "info", f"Ship {subject}: the A/B test found it better."),
        "keep_control": (f"A/B: keep the control, not {subject}", "medium", f"Do not ship {subject}."),
        "inconclusive": (f"A/B: no conclusion on {subject} yet", "low", "Keep the test running to its planned size."),
        "invalid_sample_ratio": (
            f"A/B: sample ratio mismatch, results on {subject} unreliable",
            "high",
            "Fix the assignment (the arms' sizes do not match the plan) before reading any result.",
        ),
    }
    title, severity, recommendation = verdict[ab.decision]
    evidence: dict[str, EvidenceValue] = {
        "decision": ab.decision,
        "difference": ab.difference,
        "ci_low": ab.ci_low,
        "ci_high": ab.ci_high,
        "reasons": list(ab.reasons),
    }
    return _upstream_insight(
        "ab_test",
        "ab_test",
        f"{title} (difference {_fmt(ab.difference)}{interval})",
        severity,  # type: ignore[arg-type]
        p_value=ab.p_value,
        effect_size=ab.difference,
        effect_measure="treatment − control",
        evidence=evidence,
        recommendation=recommendation,
    )


def _stopping_insight(st: StoppingResult) -> Insight:
    z = f"z = {_fmt(st.z)}" if st.z is not None else "z unknown"
    bound = f" against the boundary {_fmt(st.z_boundary)}" if st.z_boundary is not None else ""
    outcomes: dict[str, tuple[str, Severity, str]] = {
        "stop_efficacy": ("stop the experiment for efficacy", "info", "Stop now and ship: the boundary is crossed."),
        "stop_harm": ("stop the experiment: the treatment harms", "high", "Stop now and roll back the treatment."),
        "stop_futility": (
            "stop the experiment for futility",
            "medium",
            "Stop: even at full size it is unlikely to succeed.",
        ),
        "continue": ("continue the experiment", "low", "Keep collecting data until the next planned look."),
        "final_no_rejection": (
            "final look without a significant effect",
            "medium",
            "Conclude no detectable effect; keep the control.",
        ),
    }
    what, severity, recommendation = outcomes[st.decision]
    evidence: dict[str, EvidenceValue] = {
        "look": st.look,
        "information_fraction": st.information_fraction,
        "z": st.z,
        "z_boundary": st.z_boundary,
        "conditional_power_current_trend": st.conditional_power_current_trend,
        "reasons": list(st.reasons),
    }
    return _upstream_insight(
        "sequential_decision",
        "sequential_decision",
        f"Look {st.look}: {what} ({z}{bound})",
        severity,
        p_value=st.nominal_p,
        effect_size=st.z,
        effect_measure="z statistic at this look",
        evidence=evidence,
        recommendation=recommendation,
    )


def _causal_insights(c: CausalResult) -> list[Insight]:
    subject = c.subject or "the treatment"
    adjusted = [e for e in c.estimates if e.method != "naive"] or c.estimates
    values = [e.estimate for e in adjusted]
    same_sign = all(v > 0 for v in values) or all(v < 0 for v in values)
    all_exclude_zero = all(e.ci_low > 0 or e.ci_high < 0 for e in adjusted)
    low, high, mid = min(values), max(values), float(np.median(values))
    evidence: dict[str, EvidenceValue] = {f"{e.method}_{e.estimand}": e.estimate for e in adjusted}
    evidence["methods"] = [
        f"{e.method} {e.estimand}: {_fmt(e.estimate)} [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]" for e in adjusted
    ]
    worst_p = max((e.p_value for e in adjusted if e.p_value is not None), default=None)
    if same_sign and all_exclude_zero:
        title = (
            f"Causal check: {subject} has an effect of about {_fmt(mid)} (methods range {_fmt(low)} to {_fmt(high)})"
        )
        severity: Severity = "info" if mid > 0 else "high"
        recommendation = (
            f"The observational estimates agree with each other; treat {_fmt(mid)} as {subject}'s effect, "
            "subject to no unmeasured confounding."
        )
    else:
        title = f"Causal check: the methods disagree or include no effect for {subject}"
        severity = "medium"
        recommendation = "Do not rely on the observational data for this decision; run a randomised test."
    if c.naive is not None:
        evidence["naive"] = c.naive.estimate
        bias = c.naive.estimate - mid
        evidence["naive_minus_adjusted"] = bias
        if abs(bias) > 2 * max(e.std_error for e in adjusted):
            recommendation += (
                f" The naive difference ({_fmt(c.naive.estimate)}) is off by {_fmt(bias)}: "
                "the covariates confound a simple comparison."
            )
    insights = [
        _upstream_insight(
            "causal_check",
            "causal_check",
            title,
            severity,
            p_value=worst_p,
            effect_size=mid,
            effect_measure="median of the adjusted estimates",
            evidence=evidence,
            recommendation=recommendation,
        )
    ]
    for check in c.placebo:
        if check.passed is False:
            insights.append(
                _upstream_insight(
                    f"placebo_{check.kind}",
                    "placebo",
                    f"Placebo check failed: {check.kind.replace('_', ' ')}",
                    "high",
                    p_value=check.p_value,
                    effect_size=check.estimate,
                    effect_measure="placebo effect",
                    evidence={"detail": check.detail, "estimate": check.estimate},
                    recommendation="Distrust the causal estimates: an effect appears where none can exist.",
                )
            )
    return insights


def _ranked(insights: list[Insight], limit: int) -> list[Insight]:
    def key(i: Insight) -> tuple[int, float, float]:
        return (_SEVERITY_RANK[i.severity], -(i.confidence or 0.0), -abs(i.effect_size or 0.0))

    ordered = sorted(insights, key=key)[:limit]
    return [i.model_copy(update={"rank": r}) for r, i in enumerate(ordered, start=1)]


def _markdown(out: InsightGenerationEngineOutput) -> str:
    summary = (
        f"{out.n_records} applications of {out.n_rules} rules in {out.n_domains} domains; "
        f"{out.n_tests} hypotheses tested with Benjamini–Hochberg at FDR {out.alpha:g}; "
        f"{out.n_significant} significant."
        if out.n_records
        else "No rule applications analysed: these insights come from the upstream results."
    )
    lines = ["# Insights", "", summary, ""]
    if not out.insights:
        lines.append("No insight: nothing in the data is significant after the FDR correction.")
    for i in out.insights:
        conf = f"{i.confidence:.3f} ({i.confidence_level})" if i.confidence is not None else "n/a"
        lines += [
            f"## {i.rank}. {i.title}",
            "",
            f"- kind: {i.kind}; severity: **{i.severity}**; confidence: {conf}",
        ]
        if i.p_value is not None:
            q = f", q = {i.q_value:.3g}" if i.q_value is not None else ""
            lines.append(f"- p = {i.p_value:.3g}{q}")
        if i.effect_size is not None:
            lines.append(f"- effect: {_fmt(i.effect_size)} ({i.effect_measure})")
        lines += [f"- recommendation: {i.recommendation}", ""]
    if out.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in out.notes], ""]
    return "\n".join(lines) + "\n"


def _example_records() -> list[dict[str, Any]]:
    """Two rules in three domains over twelve days; clarity is weak on code prompts."""
    rows = []
    for rule, base in (("clarity", 0.30), ("specificity", 0.12)):
        for day in range(12):
            domain = ("code", "writing", "analysis")[day % 3]
            wobble = 0.01 * ((7 * day + len(rule)) % 5)
            dip = 0.15 if (rule, domain) == ("clarity", "code") else 0.0
            rows.append(
                {
                    "rule_id": rule,
                    "improvement_score": round(base + wobble - dip, 4),
                    "applied_at": 1_700_000_000 + 86_400 * day,
                    "domain": domain,
                }
            )
    return rows


@component(
    "InsightGenerationEngine",
    tier="tier2",
    capabilities=["insights", "rule_performance", "trend_analysis", "false_discovery_control"],
    example={"records": _example_records(), "min_records": 4},
    examples=[
        {"validation": {"decision": "reject", "reasons": ["the improvement is not significant"], "p_value": 0.21}},
    ],
    errors={503: "source 'store' with PostgreSQL configured but unreachable"},
)
def insight_generation_engine(request: InsightGenerationEngineInput, ctx: RunContext) -> InsightGenerationEngineOutput:
    """Insights from rule performance: best–worst gap, weak contexts, unstable rules and trends, FDR-controlled.

    Welch tests for the gap (Bonferroni over the rule pairs) and for rule × domain cells against the rule's
    other domains, Brown–Forsythe for rules more variable than the rest, ``scipy.stats.linregress`` for trends;
    one Benjamini–Hochberg family over all of them, so only findings with q ≤ alpha become insights, each with
    its evidence, confidence, severity and recommendation, ranked. Upstream validator decisions and model
    metrics become insights too; ``report`` writes insights.json and insights.md.
    """
    data, source = _load(request, ctx)
    data = _window(data, request.since, request.until)
    notes: list[str] = []
    if data.skipped:
        notes.append(f"{data.skipped} store row(s) without an improvement score were left out")
    if source in ("records", "file") and data.y.size == 0:
        raise InvalidInput("records", "no rule applications (in the time window, if one is given)")
    if source == "store" and data.y.size == 0:
        notes.append("the store holds no rule applications in the time window")
    g = _groups(data.rule)
    if len(g.names) > MAX_RULES:
        raise InvalidInput("records", f"{len(g.names)} rules; at most {MAX_RULES}")
    n_domains = len(set(data.domain.tolist()) - {""})
    if n_domains > MAX_DOMAINS:
        raise InvalidInput("records", f"{n_domains} domains; at most {MAX_DOMAINS}")
    sizes = [m.size for m in g.members]
    tested = [k for k, n in enumerate(sizes) if n >= request.min_records]
    level = request.confidence_level

    summaries = []
    for k, name in enumerate(g.names):
        y = data.y[g.members[k]]
        sd, mean = _sd(y), float(y.mean())
        s = data.success[g.members[k]]
        s = s[~np.isnan(s)]
        summaries.append(
            RuleSummary(
                rule_id=name,
                n=y.size,
                mean=mean,
                sd=sd,
                cv=sd / abs(mean) if sd is not None and mean != 0 else None,
                success_rate=float(s.mean()) if s.size else None,
                n_domains=len(set(data.domain[g.members[k]].tolist()) - {""}),
                tested=k in tested,
            )
        )
    if data.y.size and len(tested) < len(g.names):
        notes.append(f"{len(g.names) - len(tested)} rule(s) with fewer than {request.min_records} records not tested")

    gap, contexts, variances, omnibus, trends = None, [], [], None, []
    if data.y.size:
        gap, why = _gap(data, g, tested, level)
        notes += [why] if why else []
        contexts = _contexts(data, g, tested, request.min_records, level)
        variances, omnibus, why = _variances(data, g, tested)
        notes += [why] if why else []
        trends, why = _trends(data, g, tested, request.min_records)
        notes += [why] if why else []

    # One Benjamini–Hochberg family over every hypothesis.
    family: list[tuple[Any, str]] = [(gap, "p_adjusted")] if gap is not None else []
    family += [(c, "p_value") for c in contexts] + [(v, "p_value") for v in variances]
    family += [(tr, "p_value") for tr in trends]
    if family:
        q = stats.false_discovery_control([getattr(obj, attr) for obj, attr in family], method="bh")
        for (obj, _), qv in zip(family, q, strict=True):
            obj.q_value = float(qv)
            obj.significant = bool(qv <= request.alpha)

    insights = _statistical_insights(gap, contexts, variances, trends, request.alpha)
    n_significant = len(insights)
    if request.validation is not None:
        insights.append(_validation_insight(request.validation, request.alpha))
    if request.model is not None:
        insights.append(_model_insight(request.model))
    if request.ab_test is not None:
        insights.append(_ab_insight(request.ab_test))
    if request.stopping is not None:
        insights.append(_stopping_insight(request.stopping))
    if request.causal is not None:
        insights += _causal_insights(request.causal)
    if len(insights) > request.max_insights:
        notes.append(f"{len(insights)} insights; the {request.max_insights} highest ranked are listed")

    out = InsightGenerationEngineOutput(
        source=source,  # type: ignore[arg-type]
        n_records=int(data.y.size),
        n_skipped=data.skipped,
        n_rules=len(g.names),
        n_domains=n_domains,
        alpha=request.alpha,
        n_tests=len(family),
        n_significant=n_significant,
        insights=_ranked(insights, request.max_insights),
        rules=summaries,
        gap=gap,
        contexts=contexts,
        variances=variances,
        variance_omnibus=omnibus,
        trends=trends,
        notes=notes,
    )
    if request.report:
        ctx.write_output("insights.json", out.model_dump_json(indent=2))
        ctx.write_output("insights.md", _markdown(out))
    return out
