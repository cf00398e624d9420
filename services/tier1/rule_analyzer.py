"""Bayesian effectiveness of prompt rules, per rule and per rule × context.

The catalogue (COMPONENTS.md) lists this component as ``rule_analyzer`` with the class name
``RuleEffectivenessAnalyzer``, whose snake_case would be longer: the declaration names it explicitly.

Models, per rule (and per rule × context):

* success rate θ: Beta(α₀, β₀) prior, Binomial likelihood → Beta(α₀ + s, β₀ + n − s);
* empirical-Bayes shrinkage: a Beta prior fitted to the rules' observed rates by the method of moments
  (between-rule variance = variance of the rates − mean binomial sampling variance), giving shrunken
  posteriors Beta(α̂ + s, β̂ + n − s);
* mean improvement μ: Normal–Inverse-Gamma conjugate model (unknown mean and variance). With the default
  reference prior p(μ, σ²) ∝ 1/σ² the marginal posterior of μ is Student t with n − 1 degrees of freedom,
  location x̄ and scale s/√n; with a proper prior NIG(μ₀, κ₀, a₀, b₀) it is t with 2aₙ degrees of freedom,
  location μₙ and scale √(bₙ / (aₙ κₙ)).

P(rule beats a baseline rate or score) is closed form; P(rule beats a baseline rule) and P(rule is best)
come from a seeded Monte Carlo over the posteriors (standard error ≤ 0.5/√draws).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator
from scipy import stats

from mlmesh.errors import BadRequest, InvalidInput, describe_validation_errors
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component

__all__ = [
    "RuleAnalyzerInput",
    "RuleAnalyzerOutput",
    "RuleRecord",
    "fit_beta_prior",
    "rule_analyzer",
]

MAX_INLINE_RECORDS = 50_000
MAX_RULES = 2_000
MAX_CONTEXTS = 1_000
MAX_MC_WORK = 200_000_000  # posterior draws per request (draws × columns)
CHUNK_ELEMS = 2_000_000  # draws held in memory at once
TRUE_WORDS = np.array(["1", "1.0", "true", "yes", "t", "y"])
FALSE_WORDS = np.array(["0", "0.0", "false", "no", "f", "n"])


class RuleRecord(ComponentInput):
    """One application of a rule: did it succeed, and/or by how much did it improve the prompt."""

    rule: str = Field(min_length=1, max_length=200)
    context: str | None = Field(None, min_length=1, max_length=200, description="e.g. domain or prompt type")
    success: bool | None = None
    improvement: FiniteFloat | None = Field(None, ge=-1e9, le=1e9, description="improvement score")

    @model_validator(mode="after")
    def _has_outcome(self) -> RuleRecord:
        if self.success is None and self.improvement is None:
            raise ValueError("a record needs success and/or improvement")
        return self


class RecordsFile(ComponentInput):
    """Records in a file under data/."""

    path: str = Field(
        min_length=1,
        max_length=1024,
        description="CSV with a header (rule, and any of context, success, improvement) or JSON (a list of records)",
    )


class ImprovementPrior(ComponentInput):
    """Normal–Inverse-Gamma prior NIG(mean, kappa, alpha, beta) on (μ, σ²) of the improvement score."""

    mean: FiniteFloat = Field(0.0, ge=-1e9, le=1e9)
    kappa: float = Field(gt=0, le=1e9, description="prior pseudo-observations for the mean")
    alpha: float = Field(gt=0, le=1e9, description="Inverse-Gamma shape")
    beta: float = Field(gt=0, le=1e18, description="Inverse-Gamma scale")


class RuleAnalyzerInput(ComponentInput):
    records: list[RuleRecord] | RecordsFile = Field(
        description=f"rule application records inline (at most {MAX_INLINE_RECORDS}) or a file under data/"
    )
    baseline_rate: float | None = Field(None, gt=0, lt=1, description="success rate a rule should beat")
    baseline_score: FiniteFloat | None = Field(None, ge=-1e9, le=1e9, description="mean improvement to beat")
    baseline_rule: str | None = Field(
        None, min_length=1, max_length=200, description="a rule to compare every rule with (instead of fixed values)"
    )
    prior_alpha: float = Field(1.0, ge=0.01, le=1e6, description="fixed Beta prior α on success rates")
    prior_beta: float = Field(1.0, ge=0.01, le=1e6, description="fixed Beta prior β on success rates")
    shrinkage: bool = Field(
        True, description="use the empirical-Bayes prior (when it can be fitted) for P(best), baselines and ranking"
    )
    improvement_prior: ImprovementPrior | None = Field(
        None, description="proper NIG prior; default: the reference prior p(μ, σ²) ∝ 1/σ² (needs n ≥ 2)"
    )
    credible_level: float = Field(0.95, ge=0.5, lt=1)
    rank_by: Literal["success_rate", "improvement"] | None = Field(
        None, description="default: success_rate when any record has success, else improvement"
    )
    rank_statistic: Literal["posterior_mean", "lower_bound", "p_best"] = "posterior_mean"
    by_context: bool = Field(True, description="also analyse each rule within each context")
    mc_draws: int = Field(20_000, ge=1_000, le=200_000, description="Monte Carlo draws for P(best) and rule baselines")
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_baseline(self) -> RuleAnalyzerInput:
        if self.baseline_rule is not None and (self.baseline_rate is not None or self.baseline_score is not None):
            raise ValueError("give either baseline_rule or baseline_rate/baseline_score, not both")
        return self


# --------------------------------------------------------------------------------------------- outputs


class BetaPosterior(ComponentOutput):
    alpha: float
    beta: float
    mean: float
    ci_low: float
    ci_high: float


class MeanPosterior(ComponentOutput):
    """Marginal posterior of the mean improvement: Student t(df, location, scale)."""

    n: int
    sample_mean: float
    df: float
    location: float
    scale: float
    ci_low: float
    ci_high: float


class EmpiricalBayesPrior(ComponentOutput):
    alpha: float
    beta: float
    mean: float
    concentration: float = Field(description="α + β: the prior's weight in pseudo-trials")
    between_rule_variance: float = Field(description="variance of the true rates (0 when not detectable)")
    method: str
    note: str | None


class RuleEffect(ComponentOutput):
    rule: str
    n_trials: int
    successes: int
    observed_rate: float | None
    success: BetaPosterior | None = Field(description="posterior under the fixed Beta prior")
    shrunken: BetaPosterior | None = Field(description="posterior under the empirical-Bayes prior")
    shrinkage_weight: float | None = Field(description="κ/(κ + n): the pull of the shrunken mean toward the prior")
    n_scores: int
    improvement: MeanPosterior | None
    p_beats_baseline_success: float | None
    p_beats_baseline_improvement: float | None
    p_best_success: float | None
    p_best_improvement: float | None
    rank: int | None
    notes: list[str]


class CellEffect(ComponentOutput):
    rule: str
    n_trials: int
    successes: int
    success: BetaPosterior | None
    n_scores: int
    improvement: MeanPosterior | None
    p_best_success: float | None = Field(description="P(best among the rules in this context)")
    p_best_improvement: float | None
    rank: int | None


class ContextEffect(ComponentOutput):
    context: str
    n_records: int
    best_rule: str | None
    rules: list[CellEffect]


class RuleAnalyzerOutput(ComponentOutput):
    n_records: int
    n_rules: int
    n_contexts: int
    fixed_prior: tuple[float, float]
    empirical_bayes: EmpiricalBayesPrior | None
    empirical_bayes_note: str | None = Field(description="why no prior was fitted, if none was")
    posterior_used: Literal["empirical_bayes", "fixed_prior"] = Field(
        description="success posterior behind P(best), baselines, ranking and contexts"
    )
    improvement_model: str
    baseline: str | None
    rank_by: Literal["success_rate", "improvement"]
    rank_statistic: str
    ranking: list[str]
    rules: list[RuleEffect]
    contexts: list[ContextEffect]
    mc_draws: int
    mc_max_standard_error: float = Field(description="0.5/√draws: the largest standard error of any MC probability")


# --------------------------------------------------------------------------------------------- records


@dataclass
class _Records:
    rule: np.ndarray  # str
    context: np.ndarray  # str, "" for none
    success: np.ndarray  # float: 1, 0, or NaN when absent
    improvement: np.ndarray  # float, NaN when absent


def _from_models(records: list[RuleRecord]) -> _Records:
    # Pydantic has validated each record; this only transposes rows into columns.
    return _Records(
        rule=np.array([r.rule for r in records], dtype=object),
        context=np.array([r.context or "" for r in records], dtype=object),
        success=np.array([np.nan if r.success is None else float(r.success) for r in records]),
        improvement=np.array([np.nan if r.improvement is None else r.improvement for r in records]),
    )


def _load_records(value: list[RuleRecord] | RecordsFile, ctx: RunContext) -> _Records:
    if isinstance(value, list):
        if not value:
            raise InvalidInput("records", "must contain at least one record")
        if len(value) > MAX_INLINE_RECORDS:
            raise InvalidInput("records", f"at most {MAX_INLINE_RECORDS} inline; pass a file under data/")
        return _from_models(value)
    path = ctx.data_path(value.path, field="records.path")
    if not path.is_file():
        raise BadRequest("records.path: no such file in the data directory")
    limit = ctx.settings.max_array_length
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            records = TypeAdapter(list[RuleRecord]).validate_json(path.read_bytes())
        except ValidationError as exc:
            raise InvalidInput("records.path", describe_validation_errors(list(exc.errors()))) from exc
        if len(records) > limit:
            raise InvalidInput("records.path", f"{len(records)} records; the limit is {limit}")
        if not records:
            raise InvalidInput("records.path", "contains no records")
        return _from_models(records)
    if suffix == ".csv":
        return _read_csv(path, limit)
    raise BadRequest(f"records.path: unsupported file type {suffix!r}; use .csv or .json")


def _read_csv(path: Path, limit: int) -> _Records:
    field = "records.path"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise InvalidInput(field, "the CSV file is empty")
    header = [h.strip().lower() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    if "rule" not in header:
        raise InvalidInput(field, f"the CSV header needs a 'rule' column; got {header}")
    if not body:
        raise InvalidInput(field, "the CSV file has no data rows")
    if len(body) > limit:
        raise InvalidInput(field, f"{len(body)} rows; the limit is {limit}")
    if {len(r) for r in body} != {len(header)}:
        raise InvalidInput(field, f"every row needs {len(header)} cells, as the header has")
    table = np.char.strip(np.array(body, dtype=str))

    def column(name: str) -> np.ndarray | None:
        return table[:, header.index(name)] if name in header else None

    rule = column("rule")
    assert rule is not None
    if (np.char.str_len(rule) == 0).any() or (np.char.str_len(rule) > 200).any():
        raise InvalidInput(field, "every row needs a rule name of 1 to 200 characters")
    n = len(rule)
    context = column("context")
    success = np.full(n, np.nan)
    raw = column("success")
    if raw is not None:
        words = np.char.lower(raw)
        success[np.isin(words, TRUE_WORDS)] = 1.0
        success[np.isin(words, FALSE_WORDS)] = 0.0
        bad = np.flatnonzero((words != "") & np.isnan(success))
        if bad.size:
            raise InvalidInput(field, f"row {bad[0] + 2}: success must be true/false/1/0 or empty")
    improvement = np.full(n, np.nan)
    raw = column("improvement")
    if raw is not None:
        given = raw != ""
        try:
            improvement[given] = raw[given].astype(np.float64)
        except ValueError as exc:
            raise InvalidInput(field, f"improvement must be a number or empty: {exc}") from exc
        bad = np.flatnonzero(given & ~(np.isfinite(improvement) & (np.abs(improvement) <= 1e9)))
        if bad.size:
            raise InvalidInput(field, f"row {bad[0] + 2}: improvement must be finite and within ±1e9")
    empty = np.flatnonzero(np.isnan(success) & np.isnan(improvement))
    if empty.size:
        raise InvalidInput(field, f"row {empty[0] + 2}: a record needs success and/or improvement")
    return _Records(
        rule=rule.astype(object),
        context=(context if context is not None else np.full(n, "")).astype(object),
        success=success,
        improvement=improvement,
    )


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class _Groups:
    """Sufficient statistics per group (rule or rule × context)."""

    n: np.ndarray  # success trials
    s: np.ndarray  # successes
    m: np.ndarray  # improvement scores
    xbar: np.ndarray
    ss: np.ndarray  # Σ (x − x̄)², two-pass for accuracy


def _summaries(index: np.ndarray, size: int, rec: _Records) -> _Groups:
    has_s = ~np.isnan(rec.success)
    n = np.bincount(index[has_s], minlength=size)
    s = np.bincount(index[has_s], weights=rec.success[has_s], minlength=size)
    has_i = ~np.isnan(rec.improvement)
    idx, x = index[has_i], rec.improvement[has_i]
    m = np.bincount(idx, minlength=size)
    total = np.bincount(idx, weights=x, minlength=size)
    xbar = np.divide(total, m, out=np.zeros(size), where=m > 0)
    ss = np.bincount(idx, weights=(x - xbar[idx]) ** 2, minlength=size)
    return _Groups(n=n, s=np.rint(s).astype(np.int64), m=m, xbar=xbar, ss=ss)


def fit_beta_prior(n: np.ndarray, s: np.ndarray) -> tuple[EmpiricalBayesPrior | None, str | None]:
    """Method-of-moments Beta prior for rates s_i / n_i (rules with n_i > 0).

    μ̂ = Σs / Σn; τ̂² = var(s_i/n_i) − mean(μ̂(1 − μ̂)/n_i) (between-rule variance after removing binomial
    noise); α + β = μ̂(1 − μ̂)/τ̂² − 1. When τ̂² ≤ 0 the rates vary no more than chance allows: the
    concentration is capped at Σn (complete pooling, stated in the note). It is floored at 0.01.
    """
    keep = n > 0
    n, s = n[keep].astype(np.float64), s[keep].astype(np.float64)
    if n.size < 2:
        return None, "empirical Bayes needs at least 2 rules with success data"
    mu = s.sum() / n.sum()
    if mu in (0.0, 1.0):
        return None, "empirical Bayes needs both successes and failures across the rules"
    tau2 = float(np.var(s / n, ddof=1) - np.mean(mu * (1 - mu) / n))
    cap, note = float(n.sum()), None
    if tau2 <= 0:
        kappa, tau2 = cap, 0.0
        note = "rates vary no more than binomial noise: concentration capped at the total trials (full pooling)"
    else:
        kappa = float(np.clip(mu * (1 - mu) / tau2 - 1, 0.01, cap))
    prior = EmpiricalBayesPrior(
        alpha=mu * kappa,
        beta=(1 - mu) * kappa,
        mean=mu,
        concentration=kappa,
        between_rule_variance=tau2,
        method="method of moments on the observed rates (unweighted variance minus mean binomial variance)",
        note=note,
    )
    return prior, None


def _beta_posteriors(a0: float, b0: float, g: _Groups, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = a0 + g.s, b0 + g.n - g.s
    q = stats.beta.ppf(np.array([(1 - level) / 2, (1 + level) / 2])[:, None], a, b)
    return a, b, q


def _t_posteriors(g: _Groups, prior: ImprovementPrior | None, level: float) -> dict[str, np.ndarray]:
    """NIG posterior marginal of μ per group: Student t(df, loc, scale); NaN where undefined."""
    m = g.m.astype(np.float64)
    if prior is None:
        ok = (g.m >= 2) & (g.ss > 0)
        df = m - 1
        loc = g.xbar
        scale = np.sqrt(np.divide(g.ss, np.maximum(m - 1, 1) * np.maximum(m, 1)))
    else:
        ok = g.m >= 1
        kappa_n = prior.kappa + m
        loc = (prior.kappa * prior.mean + m * g.xbar) / kappa_n
        alpha_n = prior.alpha + m / 2
        beta_n = prior.beta + g.ss / 2 + prior.kappa * m * (g.xbar - prior.mean) ** 2 / (2 * kappa_n)
        df = 2 * alpha_n
        scale = np.sqrt(beta_n / (alpha_n * kappa_n))
    df, loc, scale = (np.where(ok, v, np.nan) for v in (df, loc, scale))
    safe_df, safe_scale = np.where(ok, df, 1.0), np.where(ok, scale, 1.0)
    half = stats.t.ppf((1 + level) / 2, safe_df) * safe_scale
    return {"ok": ok, "df": df, "loc": loc, "scale": scale, "low": loc - half, "high": loc + half}


def _monte_carlo(
    sample: Callable[[int], np.ndarray], starts: np.ndarray, width: int, draws: int, versus: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """P(column is the largest of its group) and, optionally, P(column > column ``versus``).

    Columns are grouped in contiguous blocks beginning at ``starts``; ties share the win equally.
    """
    sizes = np.diff(np.r_[starts, width])
    wins = np.zeros(width)
    beats = np.zeros(width) if versus is not None else None
    chunk = max(1, CHUNK_ELEMS // width)
    done = 0
    while done < draws:
        k = min(chunk, draws - done)
        x = sample(k)
        top = np.repeat(np.maximum.reduceat(x, starts, axis=1), sizes, axis=1)
        is_top = x == top
        ties = np.repeat(np.add.reduceat(is_top, starts, axis=1), sizes, axis=1)
        wins += (is_top / ties).sum(axis=0)
        if beats is not None and versus is not None:
            beats += (x > x[:, [versus]]).sum(axis=0)
        done += k
    return wins / draws, None if beats is None else beats / draws


def _beta_sampler(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> Callable[[int], np.ndarray]:
    return lambda k: rng.beta(a, b, size=(k, a.size))


def _t_sampler(rng: np.random.Generator, t: dict[str, np.ndarray], cols: np.ndarray) -> Callable[[int], np.ndarray]:
    df, loc, scale = t["df"][cols], t["loc"][cols], t["scale"][cols]
    return lambda k: loc + scale * rng.standard_t(df, size=(k, cols.size))


def _opt(x: float | np.floating, ok: bool) -> float | None:
    return float(x) if ok else None


# --------------------------------------------------------------------------------------------- component


@component(
    "RuleEffectivenessAnalyzer",
    name="rule_analyzer",
    tier="tier1",
    capabilities=["rule_effectiveness", "bayesian_inference", "empirical_bayes", "ranking"],
    example={
        "records": [
            {"rule": "add_examples", "context": "coding", "success": True, "improvement": 0.4},
            {"rule": "add_examples", "context": "coding", "success": True, "improvement": 0.3},
            {"rule": "add_examples", "context": "writing", "success": False, "improvement": -0.1},
            {"rule": "add_examples", "context": "writing", "success": True, "improvement": 0.2},
            {"rule": "be_specific", "context": "coding", "success": False, "improvement": 0.0},
            {"rule": "be_specific", "context": "coding", "success": True, "improvement": 0.1},
            {"rule": "be_specific", "context": "writing", "success": True, "improvement": 0.5},
            {"rule": "be_specific", "context": "writing", "success": True, "improvement": 0.35},
            {"rule": "use_xml_tags", "context": "coding", "success": False, "improvement": -0.2},
            {"rule": "use_xml_tags", "context": "writing", "success": False, "improvement": 0.05},
        ],
        "baseline_rate": 0.5,
        "seed": 7,
    },
)
def rule_analyzer(request: RuleAnalyzerInput, ctx: RunContext) -> RuleAnalyzerOutput:
    """Bayesian effectiveness of prompt rules: posteriors, P(beats baseline), P(best), shrinkage, ranking.

    From rule application records (rule, optional context, success and/or improvement
    score; inline or a CSV/JSON file under data/): Beta–Binomial posteriors on each rule's success rate with
    credible intervals; a Normal–Inverse-Gamma posterior on its mean improvement (Student-t marginal; the
    reference prior by default); an empirical-Bayes Beta prior fitted across rules by the method of moments,
    with shrunken estimates; P(rule beats a baseline rate, score or rule); P(rule is best) by seeded Monte
    Carlo; a ranking; and the same per rule within each context.
    """
    rec = _load_records(request.records, ctx)
    level = request.credible_level
    rule_names, rule_idx = np.unique(rec.rule.astype(str), return_inverse=True)
    n_rules = rule_names.size
    if n_rules > MAX_RULES:
        raise InvalidInput("records", f"{n_rules} distinct rules; the limit is {MAX_RULES}")
    g = _summaries(rule_idx, n_rules, rec)
    base_col = None
    if request.baseline_rule is not None:
        hits = np.flatnonzero(rule_names == request.baseline_rule)
        if hits.size == 0:
            raise InvalidInput("baseline_rule", f"no records for rule {request.baseline_rule!r}")
        base_col = int(hits[0])

    # Success-rate posteriors: fixed prior, and the empirical-Bayes prior when it can be fitted.
    has_s = g.n > 0
    a_fix, b_fix, q_fix = _beta_posteriors(request.prior_alpha, request.prior_beta, g, level)
    eb, eb_note = fit_beta_prior(g.n, g.s)
    shrunk = _beta_posteriors(eb.alpha, eb.beta, g, level) if eb is not None else None
    use_eb = request.shrinkage and eb is not None
    prior_a, prior_b = (eb.alpha, eb.beta) if use_eb and eb is not None else (request.prior_alpha, request.prior_beta)
    a_use, b_use = prior_a + g.s, prior_b + g.n - g.s
    t = _t_posteriors(g, request.improvement_prior, level)

    cells = _cells(rec, rule_idx, n_rules, prior_a, prior_b, request) if request.by_context else None

    s_cols = np.flatnonzero(has_s)
    i_cols = np.flatnonzero(t["ok"])
    width = s_cols.size + i_cols.size
    if cells is not None:
        width += int((cells.g.n > 0).sum() + cells.t["ok"].sum())
    if request.mc_draws * width > MAX_MC_WORK:
        raise InvalidInput("mc_draws", f"{request.mc_draws} draws × {width} posteriors is too much; lower mc_draws")

    rng = np.random.default_rng(request.seed)
    p_best_s = np.full(n_rules, np.nan)
    p_best_i = np.full(n_rules, np.nan)
    beats_s = np.full(n_rules, np.nan)
    beats_i = np.full(n_rules, np.nan)
    notes: list[list[str]] = [[] for _ in range(n_rules)]
    if s_cols.size:
        versus = int(np.searchsorted(s_cols, base_col)) if base_col is not None and has_s[base_col] else None
        wins, vs = _monte_carlo(
            _beta_sampler(rng, a_use[s_cols], b_use[s_cols]), np.array([0]), s_cols.size, request.mc_draws, versus
        )
        p_best_s[s_cols] = wins
        if vs is not None:
            beats_s[s_cols] = vs
    if i_cols.size:
        versus = int(np.searchsorted(i_cols, base_col)) if base_col is not None and t["ok"][base_col] else None
        wins, vs = _monte_carlo(_t_sampler(rng, t, i_cols), np.array([0]), i_cols.size, request.mc_draws, versus)
        p_best_i[i_cols] = wins
        if vs is not None:
            beats_i[i_cols] = vs
    if request.baseline_rate is not None:
        beats_s = np.where(has_s, stats.beta.sf(request.baseline_rate, a_use, b_use), np.nan)
    if request.baseline_score is not None:
        z = (request.baseline_score - np.nan_to_num(t["loc"])) / np.where(t["ok"], t["scale"], 1.0)
        beats_i = np.where(t["ok"], stats.t.sf(z, np.where(t["ok"], t["df"], 1.0)), np.nan)
    if base_col is not None:
        beats_s[base_col] = beats_i[base_col] = np.nan
        notes[base_col].append("this is the baseline rule")
        if not has_s[base_col]:
            notes[base_col].append("the baseline rule has no success records: no success comparison")
        if not t["ok"][base_col]:
            notes[base_col].append("the baseline rule has no improvement posterior: no improvement comparison")
    for r in np.flatnonzero((g.m > 0) & ~t["ok"]):
        notes[r].append("improvement posterior undefined: the reference prior needs ≥ 2 distinct scores")

    rank_by = request.rank_by or ("success_rate" if has_s.any() else "improvement")
    if rank_by == "success_rate":
        mean_use = np.divide(a_use, a_use + b_use)
        low_use = stats.beta.ppf((1 - level) / 2, a_use, b_use)
        key = {"posterior_mean": mean_use, "lower_bound": low_use, "p_best": p_best_s}[request.rank_statistic]
        rankable = has_s
    else:
        key = {"posterior_mean": t["loc"], "lower_bound": t["low"], "p_best": p_best_i}[request.rank_statistic]
        rankable = t["ok"]
    order, ranks = _rank(key, rankable, rule_names)

    rules = [
        RuleEffect(
            rule=str(rule_names[r]),
            n_trials=int(g.n[r]),
            successes=int(g.s[r]),
            observed_rate=_opt(g.s[r] / max(g.n[r], 1), bool(has_s[r])),
            success=_beta_out(a_fix[r], b_fix[r], q_fix[:, r]) if has_s[r] else None,
            shrunken=_beta_out(shrunk[0][r], shrunk[1][r], shrunk[2][:, r]) if shrunk and has_s[r] else None,
            shrinkage_weight=(
                float(eb.concentration / (eb.concentration + g.n[r])) if eb is not None and has_s[r] else None
            ),
            n_scores=int(g.m[r]),
            improvement=_t_out(t, g, r),
            p_beats_baseline_success=_opt(beats_s[r], bool(np.isfinite(beats_s[r]))),
            p_beats_baseline_improvement=_opt(beats_i[r], bool(np.isfinite(beats_i[r]))),
            p_best_success=_opt(p_best_s[r], bool(np.isfinite(p_best_s[r]))),
            p_best_improvement=_opt(p_best_i[r], bool(np.isfinite(p_best_i[r]))),
            rank=ranks[r],
            notes=notes[r],
        )
        for r in order
    ]

    contexts = _context_effects(cells, rule_names, rng, request, rank_by) if cells is not None else []

    prior_text = (
        "NIG reference prior p(μ, σ²) ∝ 1/σ²: μ | data ~ t(n − 1, x̄, s/√n)"
        if request.improvement_prior is None
        else "NIG(μ₀, κ₀, a₀, b₀) prior: μ | data ~ t(2aₙ, μₙ, √(bₙ/(aₙκₙ)))"
    )
    return RuleAnalyzerOutput(
        n_records=int(rec.rule.size),
        n_rules=int(n_rules),
        n_contexts=0 if cells is None else int(cells.names.size),
        fixed_prior=(request.prior_alpha, request.prior_beta),
        empirical_bayes=eb,
        empirical_bayes_note=eb_note,
        posterior_used="empirical_bayes" if use_eb else "fixed_prior",
        improvement_model=prior_text,
        baseline=_baseline_text(request),
        rank_by=rank_by,
        rank_statistic=request.rank_statistic,
        ranking=[str(rule_names[r]) for r in order if ranks[r] is not None],
        rules=rules,
        contexts=contexts,
        mc_draws=request.mc_draws,
        mc_max_standard_error=0.5 / float(np.sqrt(request.mc_draws)),
    )


@dataclass
class _Cells:
    """Rule × context cells, sorted by context so that each context is a contiguous block."""

    names: np.ndarray  # context names
    records: np.ndarray  # records per context
    context: np.ndarray  # context index per cell
    rule: np.ndarray  # rule index per cell
    g: _Groups
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray
    t: dict[str, np.ndarray]


def _cells(
    rec: _Records, rule_idx: np.ndarray, n_rules: int, prior_a: float, prior_b: float, request: RuleAnalyzerInput
) -> _Cells | None:
    has_ctx = rec.context != ""
    if not has_ctx.any():
        return None
    names, ctx_idx = np.unique(rec.context[has_ctx].astype(str), return_inverse=True)
    if names.size > MAX_CONTEXTS:
        raise InvalidInput("records", f"{names.size} distinct contexts; the limit is {MAX_CONTEXTS}")
    keys, cell_idx = np.unique(ctx_idx * n_rules + rule_idx[has_ctx], return_inverse=True)
    sub = _Records(rec.rule[has_ctx], rec.context[has_ctx], rec.success[has_ctx], rec.improvement[has_ctx])
    g = _summaries(cell_idx, keys.size, sub)
    a, b, q = _beta_posteriors(prior_a, prior_b, g, request.credible_level)
    return _Cells(
        names=names,
        records=np.bincount(ctx_idx, minlength=names.size),
        context=keys // n_rules,
        rule=keys % n_rules,
        g=g,
        a=a,
        b=b,
        q=q,
        t=_t_posteriors(g, request.improvement_prior, request.credible_level),
    )


def _context_effects(
    cells: _Cells, rule_names: np.ndarray, rng: np.random.Generator, request: RuleAnalyzerInput, rank_by: str
) -> list[ContextEffect]:
    """Per context: each rule's posteriors, P(best among the rules in that context) and its rank there."""
    g, t = cells.g, cells.t
    s_cols, i_cols = np.flatnonzero(g.n > 0), np.flatnonzero(t["ok"])
    pb_s = _grouped_p_best(
        s_cols, cells.context, request.mc_draws, _beta_sampler(rng, cells.a[s_cols], cells.b[s_cols])
    )
    pb_i = _grouped_p_best(i_cols, cells.context, request.mc_draws, _t_sampler(rng, t, i_cols))
    if rank_by == "success_rate":
        key = {"posterior_mean": cells.a / (cells.a + cells.b), "lower_bound": cells.q[0], "p_best": pb_s}
        rankable = g.n > 0
    else:
        key = {"posterior_mean": t["loc"], "lower_bound": t["low"], "p_best": pb_i}
        rankable = t["ok"]
    stat = key[request.rank_statistic]
    starts = np.flatnonzero(np.r_[True, cells.context[1:] != cells.context[:-1]])
    out = []
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), cells.context.size], strict=True):
        block = np.arange(start, stop)
        order, ranks = _rank(stat[block], rankable[block], rule_names[cells.rule[block]])
        effects = [
            CellEffect(
                rule=str(rule_names[cells.rule[c]]),
                n_trials=int(g.n[c]),
                successes=int(g.s[c]),
                success=_beta_out(cells.a[c], cells.b[c], cells.q[:, c]) if g.n[c] > 0 else None,
                n_scores=int(g.m[c]),
                improvement=_t_out(t, g, c),
                p_best_success=_opt(pb_s[c], bool(np.isfinite(pb_s[c]))),
                p_best_improvement=_opt(pb_i[c], bool(np.isfinite(pb_i[c]))),
                rank=ranks[j],
            )
            for j, c in ((j, int(block[j])) for j in order)
        ]
        k = int(cells.context[start])
        out.append(
            ContextEffect(
                context=str(cells.names[k]),
                n_records=int(cells.records[k]),
                best_rule=effects[0].rule if effects and effects[0].rank == 1 else None,
                rules=effects,
            )
        )
    return out


def _grouped_p_best(
    cols: np.ndarray, cell_ctx: np.ndarray, draws: int, sample: Callable[[int], np.ndarray]
) -> np.ndarray:
    """P(best within its context) for the cells ``cols`` (NaN for the others)."""
    out = np.full(cell_ctx.size, np.nan)
    if cols.size:
        groups = cell_ctx[cols]
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        wins, _ = _monte_carlo(sample, starts, cols.size, draws, None)
        out[cols] = wins
    return out


def _rank(key: np.ndarray, rankable: np.ndarray, names: np.ndarray) -> tuple[list[int], list[int | None]]:
    """Order (rankable by key descending, ties by name; the rest by name) and 1-based ranks (None if unranked)."""
    idx = np.arange(key.size)
    ranked = idx[rankable]
    ranked = ranked[np.lexsort((names[ranked], -key[ranked]))]
    rest = idx[~rankable]
    rest = rest[np.argsort(names[rest], kind="stable")]
    ranks: list[int | None] = [None] * key.size
    for position, i in enumerate(ranked.tolist(), start=1):
        ranks[i] = position
    return ranked.tolist() + rest.tolist(), ranks


def _beta_out(a: float, b: float, q: np.ndarray) -> BetaPosterior:
    return BetaPosterior(
        alpha=float(a), beta=float(b), mean=float(a / (a + b)), ci_low=float(q[0]), ci_high=float(q[1])
    )


def _t_out(t: dict[str, np.ndarray], g: _Groups, i: int) -> MeanPosterior | None:
    if not t["ok"][i]:
        return None
    return MeanPosterior(
        n=int(g.m[i]),
        sample_mean=float(g.xbar[i]),
        df=float(t["df"][i]),
        location=float(t["loc"][i]),
        scale=float(t["scale"][i]),
        ci_low=float(t["low"][i]),
        ci_high=float(t["high"][i]),
    )


def _baseline_text(request: RuleAnalyzerInput) -> str | None:
    parts = []
    if request.baseline_rule is not None:
        parts.append(f"rule {request.baseline_rule!r} (P by Monte Carlo)")
    if request.baseline_rate is not None:
        parts.append(f"success rate {request.baseline_rate:g} (closed form)")
    if request.baseline_score is not None:
        parts.append(f"improvement {request.baseline_score:g} (closed form)")
    return "; ".join(parts) or None
