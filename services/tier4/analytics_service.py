"""Rule effectiveness and user satisfaction over time, from the domain store or inline records.

**Effectiveness** (rule applications ``{rule_id, improvement_score, applied_at, success?}``), for every rule,
for all rules together (``rule_id: "*"``) and for each period bucket of both:

* applications counted; mean improvement with its Student-t interval (``x̄ ± t·s/√n``, from two records);
* success rate with its Wilson score interval, over the applications that record success.

**Satisfaction** (feedback ``{rating 1..5, created_at, rule_ids?}``): ratings ≥ 4 are positive, ≤ 2
negative, 3 neutral. The shares of positive and negative ratings come with Wilson intervals; the net score is
``100·(positive − negative)/n`` (NPS-like, in [−100, 100]) with the normal interval from the multinomial
variance ``(p₊ + p₋ − (p₊ − p₋)²)/n``; the mean rating has a Student-t interval. Reported overall, per period
and per rule (feedback counts for every rule applied in its session).

**Trends**: OLS of each application's improvement (per rule and overall) and of each rating on time in days
since the first event of the window — ``scipy.stats.linregress``: slope per day, its standard error and
two-sided p-value. A trend needs three points, time that varies and values that vary; otherwise it is
``None`` with the reason in ``notes``.

**Periods** are UTC calendar buckets: ``day``, ``week`` (ISO weeks, starting Monday) or ``month``; each is
labelled by its first day (``YYYY-MM-DD``) with its start and end in unix seconds.

**Filters**: ``since`` (inclusive) and ``until`` (exclusive) on the event times, and ``rule_ids``: only
those rules' applications and the feedback on sessions that applied one of them.

``source: "store"`` reads the domain store (PostgreSQL when ``MLMESH_DATABASE_URL`` is set, else the embedded
SQLite store); ``source: "records"`` takes the ``applications`` and ``feedback`` fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import stats

from mlmesh.errors import InvalidInput
from services.domain import store_for
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, component

__all__ = [
    "AnalyticsServiceInput",
    "AnalyticsServiceOutput",
    "ApplicationRecord",
    "EffectStats",
    "FeedbackRecord",
    "SatisfactionStats",
    "Trend",
    "analytics_service",
    "net_score_interval",
    "period_starts",
    "wilson_interval",
]

MAX_INLINE = 100_000
MAX_BUCKETS = 100_000  # period rows in one answer (per rule, overall and satisfaction)
MAX_TIME = 1e11
MAX_SCORE = 1e6
DAY_S = 86_400.0
Period = Literal["day", "week", "month"]
Name = Annotated[str, Field(min_length=1, max_length=200)]


# --------------------------------------------------------------------------------------------- inputs


class ApplicationRecord(ComponentInput):
    """One application of a rule."""

    rule_id: Name
    improvement_score: FiniteFloat = Field(ge=-MAX_SCORE, le=MAX_SCORE)
    applied_at: FiniteFloat = Field(ge=0, le=MAX_TIME, description="unix seconds")
    success: bool | None = None


class FeedbackRecord(ComponentInput):
    """One user rating of a session's result."""

    rating: int = Field(ge=1, le=5)
    created_at: FiniteFloat = Field(ge=0, le=MAX_TIME, description="unix seconds")
    rule_ids: list[Name] = Field(default_factory=list, max_length=100, description="rules applied in the session")


class AnalyticsServiceInput(ComponentInput):
    source: Literal["records", "store"] = Field(
        "records", description="records: the applications/feedback fields; store: the domain store"
    )
    applications: list[ApplicationRecord] | None = Field(None, max_length=MAX_INLINE)
    feedback: list[FeedbackRecord] | None = Field(None, max_length=MAX_INLINE)
    since: FiniteFloat | None = Field(None, ge=0, le=MAX_TIME, description="events at or after (unix seconds)")
    until: FiniteFloat | None = Field(None, ge=0, le=MAX_TIME, description="events before (unix seconds)")
    rule_ids: list[Name] | None = Field(None, min_length=1, max_length=1000, description="only these rules")
    period: Period = Field("week", description="bucket: UTC day, ISO week (Monday) or calendar month")
    confidence_level: float = Field(0.95, ge=0.5, lt=1)
    limit: int | None = Field(None, ge=1, le=1_000_000, description="store: at most this many applications")

    @model_validator(mode="after")
    def _consistent(self) -> AnalyticsServiceInput:
        given = self.applications is not None or self.feedback is not None
        if self.source == "store" and given:
            raise ValueError("applications/feedback: leave them out with source 'store'")
        if self.source == "records" and not given:
            raise ValueError("applications: give applications and/or feedback (or use source 'store')")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self


# --------------------------------------------------------------------------------------------- outputs


class Trend(ComponentOutput):
    n: int
    slope_per_day: float
    intercept: float = Field(description="value at the window's first event")
    r: float
    stderr: float
    p_value: float


class EffectStats(ComponentOutput):
    n: int = Field(description="applications")
    mean: float
    sd: float | None
    ci_low: float | None = Field(description="Student-t interval of the mean (None for one application)")
    ci_high: float | None
    success_n: int = Field(description="applications that record success")
    success_rate: float | None
    success_ci_low: float | None = Field(description="Wilson interval")
    success_ci_high: float | None


class PeriodEffect(EffectStats):
    period: str = Field(description="first day of the bucket (UTC)")
    start: float
    end: float


class RuleEffectiveness(EffectStats):
    rule_id: str = Field(description="'*' for every rule together")
    periods: list[PeriodEffect]
    trend: Trend | None


class Share(ComponentOutput):
    count: int
    share: float
    ci_low: float
    ci_high: float


class SatisfactionStats(ComponentOutput):
    n: int
    mean_rating: float
    ci_low: float | None
    ci_high: float | None
    positive: Share = Field(description="ratings 4 and 5")
    neutral: Share = Field(description="rating 3")
    negative: Share = Field(description="ratings 1 and 2")
    net_score: float = Field(description="100·(positive − negative)/n")
    net_ci_low: float
    net_ci_high: float
    distribution: dict[str, int] = Field(description="count of each rating 1..5")


class PeriodSatisfaction(SatisfactionStats):
    period: str
    start: float
    end: float


class RuleSatisfaction(SatisfactionStats):
    rule_id: str


class Satisfaction(ComponentOutput):
    overall: SatisfactionStats
    periods: list[PeriodSatisfaction]
    by_rule: list[RuleSatisfaction]
    trend: Trend | None


class AnalyticsServiceOutput(ComponentOutput):
    source: Literal["records", "store"]
    period: Period
    confidence_level: float
    since: float | None
    until: float | None
    n_applications: int
    n_feedback: int
    n_skipped: int = Field(description="store applications without an improvement score")
    first_event: float | None
    last_event: float | None
    overall: RuleEffectiveness | None
    rules: list[RuleEffectiveness]
    satisfaction: Satisfaction | None
    notes: list[str]


# --------------------------------------------------------------------------------------------- statistics


def wilson_interval(successes: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``successes / n`` (n > 0), vectorised."""
    s, n = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = float(stats.norm.ppf((1 + level) / 2))
    p = s / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def net_score_interval(pos: int, neg: int, n: int, level: float) -> tuple[float, float, float]:
    """Net score 100·(p₊ − p₋) with its normal interval from the multinomial variance."""
    p_pos, p_neg = pos / n, neg / n
    net = p_pos - p_neg
    se = math.sqrt(max(p_pos + p_neg - net * net, 0.0) / n)
    z = float(stats.norm.ppf((1 + level) / 2))
    return 100 * net, max(-100.0, 100 * (net - z * se)), min(100.0, 100 * (net + z * se))


def period_starts(t: np.ndarray, period: Period) -> np.ndarray:
    """Start (unix seconds, UTC) of the day, ISO week or month holding each time."""
    days = np.floor(np.asarray(t, dtype=np.float64) / DAY_S).astype(np.int64)
    if period == "day":
        return days * DAY_S
    if period == "week":
        # 1970-01-01 was a Thursday: (days + 3) % 7 is the weekday counted from Monday.
        return (days - (days + 3) % 7) * DAY_S
    months = days.astype("datetime64[D]").astype("datetime64[M]")
    return months.astype("datetime64[D]").astype(np.int64) * DAY_S


def _period_end(start: float, period: Period) -> float:
    if period == "day":
        return start + DAY_S
    if period == "week":
        return start + 7 * DAY_S
    month = np.datetime64(int(start // DAY_S), "D").astype("datetime64[M]") + 1
    return float(month.astype("datetime64[D]").astype(np.int64) * DAY_S)


def _label(start: float) -> str:
    return datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m-%d")


def _mean_interval(mean: float, sd: float | None, n: int, level: float) -> tuple[float | None, float | None]:
    if sd is None:
        return None, None
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def _effect(y: np.ndarray, success: np.ndarray, level: float) -> dict[str, Any]:
    n = y.size
    mean = float(y.mean())
    sd = float(y.std(ddof=1)) if n >= 2 else None
    low, high = _mean_interval(mean, sd, n, level)
    known = success[~np.isnan(success)]
    rate = s_low = s_high = None
    if known.size:
        hits = float(known.sum())
        rate = hits / known.size
        lo, hi = wilson_interval(np.array([hits]), np.array([known.size]), level)
        s_low, s_high = float(lo[0]), float(hi[0])
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci_low": low,
        "ci_high": high,
        "success_n": int(known.size),
        "success_rate": rate,
        "success_ci_low": s_low,
        "success_ci_high": s_high,
    }


def _satisfaction(ratings: np.ndarray, level: float) -> dict[str, Any]:
    n = ratings.size
    counts = np.bincount(ratings, minlength=6)[1:6]
    pos, neu, neg = int(counts[3:].sum()), int(counts[2]), int(counts[:2].sum())
    lo, hi = wilson_interval(np.array([pos, neu, neg]), np.full(3, n), level)
    mean = float(ratings.mean())
    sd = float(ratings.std(ddof=1)) if n >= 2 else None
    low, high = _mean_interval(mean, sd, n, level)
    net, net_low, net_high = net_score_interval(pos, neg, n, level)

    def share(k: int, i: int) -> Share:
        return Share(count=k, share=k / n, ci_low=float(lo[i]), ci_high=float(hi[i]))

    return {
        "n": n,
        "mean_rating": mean,
        "ci_low": low,
        "ci_high": high,
        "positive": share(pos, 0),
        "neutral": share(neu, 1),
        "negative": share(neg, 2),
        "net_score": net,
        "net_ci_low": net_low,
        "net_ci_high": net_high,
        "distribution": {str(r): int(c) for r, c in zip(range(1, 6), counts, strict=True)},
    }


def _trend(t: np.ndarray, y: np.ndarray, t0: float, what: str, notes: list[str]) -> Trend | None:
    if t.size < 3:
        notes.append(f"{what}: no trend from {t.size} point(s); needs 3")
        return None
    if np.ptp(t) == 0 or np.ptp(y) == 0:
        notes.append(f"{what}: no trend: {'all at one time' if np.ptp(t) == 0 else 'every value is the same'}")
        return None
    fit = stats.linregress((t - t0) / DAY_S, y)
    return Trend(
        n=int(t.size),
        slope_per_day=float(fit.slope),
        intercept=float(fit.intercept),
        r=float(fit.rvalue),
        stderr=float(fit.stderr),
        p_value=float(fit.pvalue),
    )


# --------------------------------------------------------------------------------------------- data


@dataclass
class _Apps:
    rule: np.ndarray  # str
    y: np.ndarray
    t: np.ndarray
    success: np.ndarray  # 1/0/NaN
    skipped: int = 0


@dataclass
class _Feedback:
    rating: np.ndarray  # int
    t: np.ndarray
    rules: list[list[str]]


def _number(value: Any, what: str, row: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput("source", f"store row {row}: {what} is not a number") from None
    if not math.isfinite(number):
        raise InvalidInput("source", f"store row {row}: {what} is not finite")
    return number


def _apps_from_rows(rows: Iterable[Mapping[str, Any]]) -> _Apps:
    rule, y, t, success = [], [], [], []
    skipped = 0
    for i, row in enumerate(rows, start=1):
        score = row.get("improvement_score")
        if score is None and row.get("after_quality") is not None and row.get("before_quality") is not None:
            score = _number(row["after_quality"], "after_quality", i) - _number(row["before_quality"], "before", i)
        if score is None or row.get("applied_at") is None:
            skipped += 1
            continue
        rule.append(str(row["rule_id"]))
        y.append(_number(score, "improvement_score", i))
        t.append(_number(row["applied_at"], "applied_at", i))
        flag = row.get("success")
        success.append(math.nan if flag is None else float(bool(flag)))
    return _Apps(
        np.array(rule, dtype=object), np.array(y, float), np.array(t, float), np.array(success, float), skipped
    )


def _feedback_from_rows(rows: Iterable[Mapping[str, Any]]) -> _Feedback:
    ratings, t, rules = [], [], []
    for i, row in enumerate(rows, start=1):
        rating = int(_number(row.get("rating"), "rating", i))
        if not 1 <= rating <= 5:
            raise InvalidInput("source", f"store feedback row {i}: rating {rating} is outside 1..5")
        ratings.append(rating)
        t.append(_number(row.get("created_at"), "created_at", i))
        ids = row.get("rule_ids") or []
        rules.append(sorted({str(r) for r in ids}))
    return _Feedback(np.array(ratings, dtype=np.int64), np.array(t, float), rules)


def _load(request: AnalyticsServiceInput, ctx: RunContext) -> tuple[_Apps, _Feedback]:
    if request.source == "store":
        store = store_for(ctx)
        single = request.rule_ids[0] if request.rule_ids and len(request.rule_ids) == 1 else None
        apps = _apps_from_rows(
            store.applications(since=request.since, until=request.until, rule_id=single, limit=request.limit)
        )
        return apps, _feedback_from_rows(store.feedback(since=request.since, until=request.until))
    a = request.applications or []
    f = request.feedback or []
    apps = _Apps(
        np.array([r.rule_id for r in a], dtype=object),
        np.array([r.improvement_score for r in a], dtype=np.float64),
        np.array([r.applied_at for r in a], dtype=np.float64),
        np.array([math.nan if r.success is None else float(r.success) for r in a], dtype=np.float64),
    )
    feedback = _Feedback(
        np.array([r.rating for r in f], dtype=np.int64),
        np.array([r.created_at for r in f], dtype=np.float64),
        [sorted(set(r.rule_ids)) for r in f],
    )
    return apps, feedback


def _filter(apps: _Apps, feedback: _Feedback, request: AnalyticsServiceInput) -> tuple[_Apps, _Feedback]:
    keep = np.ones(apps.y.size, dtype=bool)
    keep_f = np.ones(feedback.rating.size, dtype=bool)
    if request.since is not None:
        keep &= apps.t >= request.since
        keep_f &= feedback.t >= request.since
    if request.until is not None:
        keep &= apps.t < request.until
        keep_f &= feedback.t < request.until
    if request.rule_ids is not None:
        wanted = set(request.rule_ids)
        keep &= np.array([r in wanted for r in apps.rule], dtype=bool)
        keep_f &= np.array([bool(wanted.intersection(rs)) for rs in feedback.rules], dtype=bool)
    order = np.argsort(apps.t[keep], kind="stable")
    apps = _Apps(
        apps.rule[keep][order], apps.y[keep][order], apps.t[keep][order], apps.success[keep][order], apps.skipped
    )
    order_f = np.argsort(feedback.t[keep_f], kind="stable")
    kept = np.flatnonzero(keep_f)[order_f]
    return apps, _Feedback(feedback.rating[kept], feedback.t[kept], [feedback.rules[i] for i in kept])


def _effectiveness(
    name: str, apps: _Apps, idx: np.ndarray, period: Period, level: float, t0: float, notes: list[str]
) -> RuleEffectiveness:
    y, t, s = apps.y[idx], apps.t[idx], apps.success[idx]
    starts = period_starts(t, period)
    periods = []
    for start in np.unique(starts):
        sel = starts == start
        periods.append(
            PeriodEffect(
                period=_label(float(start)),
                start=float(start),
                end=_period_end(float(start), period),
                **_effect(y[sel], s[sel], level),
            )
        )
    what = "all rules" if name == "*" else f"rule {name!r}"
    return RuleEffectiveness(rule_id=name, periods=periods, trend=_trend(t, y, t0, what, notes), **_effect(y, s, level))


def _satisfaction_all(feedback: _Feedback, period: Period, level: float, t0: float, notes: list[str]) -> Satisfaction:
    starts = period_starts(feedback.t, period)
    periods = [
        PeriodSatisfaction(
            period=_label(float(start)),
            start=float(start),
            end=_period_end(float(start), period),
            **_satisfaction(feedback.rating[starts == start], level),
        )
        for start in np.unique(starts)
    ]
    by_rule: dict[str, list[int]] = {}
    for i, rules in enumerate(feedback.rules):
        for rule in rules:
            by_rule.setdefault(rule, []).append(i)
    rules = [
        RuleSatisfaction(rule_id=rule, **_satisfaction(feedback.rating[np.array(rows)], level))
        for rule, rows in sorted(by_rule.items())
    ]
    return Satisfaction(
        overall=SatisfactionStats(**_satisfaction(feedback.rating, level)),
        periods=periods,
        by_rule=rules,
        trend=_trend(feedback.t, feedback.rating.astype(np.float64), t0, "satisfaction", notes),
    )


@component(
    "AnalyticsService",
    tier="tier4",
    capabilities=["rule_effectiveness", "user_satisfaction", "trend_analysis", "time_series_buckets"],
    example={
        "applications": [
            {
                "rule_id": rule,
                "improvement_score": round(base + 0.01 * day - 0.02 * (k % 2), 4),
                "applied_at": 1_704_067_200 + 86_400 * day + 3_600 * k,
                "success": (day + k) % 3 != 0,
            }
            for rule, base in (("clarity", 0.2), ("few_shot", 0.1))
            for day in range(0, 21, 3)
            for k in range(2)
        ],
        "feedback": [
            {"rating": 1 + (day * 3 + k) % 5, "created_at": 1_704_067_200 + 86_400 * day + 600 * k, "rule_ids": ids}
            for day in range(0, 21, 2)
            for k, ids in enumerate((["clarity"], ["few_shot"], ["clarity", "few_shot"]))
        ],
        "period": "week",
    },
    examples=[{"source": "store", "period": "month"}],
    errors={503: "source 'store' with PostgreSQL configured but unreachable"},
)
def analytics_service(request: AnalyticsServiceInput, ctx: RunContext) -> AnalyticsServiceOutput:
    """Rule effectiveness and user satisfaction over time: per-period means, rates, shares and trends.

    Per rule and for all rules: applications, mean improvement with its t interval and success rate with its
    Wilson interval, overall and per day/week/month; satisfaction from ratings (positive ≥ 4, negative ≤ 2)
    with Wilson intervals, an NPS-like net score and the mean rating; linregress trends per rule and for
    satisfaction. Reads the domain store (``source: "store"``) or inline records; filters by time and rule.
    """
    apps, feedback = _load(request, ctx)
    apps, feedback = _filter(apps, feedback, request)
    notes: list[str] = []
    if apps.skipped:
        notes.append(f"{apps.skipped} store application(s) without an improvement score or time were left out")
    times = np.concatenate([apps.t, feedback.t])
    t0 = float(times.min()) if times.size else 0.0
    names, index = np.unique(apps.rule.astype(str), return_inverse=True) if apps.y.size else (np.array([]), None)
    # Only buckets that hold events are listed: count them before building the answer.
    app_starts = period_starts(apps.t, request.period)
    buckets = np.unique(app_starts).size + np.unique(period_starts(feedback.t, request.period)).size
    if apps.y.size:
        buckets += np.unique(np.stack([index, app_starts // DAY_S]), axis=1).shape[1]
    if buckets > MAX_BUCKETS:
        raise InvalidInput(
            "period",
            f"the answer would hold {buckets} period buckets (at most {MAX_BUCKETS}); "
            "use a longer period, a narrower time window or fewer rule_ids",
        )
    overall, rules = None, []
    if apps.y.size:
        level = request.confidence_level
        overall = _effectiveness("*", apps, np.arange(apps.y.size), request.period, level, t0, notes)
        rules = [
            _effectiveness(str(name), apps, np.flatnonzero(index == k), request.period, level, t0, notes)
            for k, name in enumerate(names)
        ]
    else:
        notes.append("no rule applications in the window")
    satisfaction = None
    if feedback.rating.size:
        satisfaction = _satisfaction_all(feedback, request.period, request.confidence_level, t0, notes)
    else:
        notes.append("no feedback in the window")
    return AnalyticsServiceOutput(
        source=request.source,
        period=request.period,
        confidence_level=request.confidence_level,
        since=request.since,
        until=request.until,
        n_applications=int(apps.y.size),
        n_feedback=int(feedback.rating.size),
        n_skipped=apps.skipped,
        first_event=float(times.min()) if times.size else None,
        last_event=float(times.max()) if times.size else None,
        overall=overall,
        rules=rules,
        satisfaction=satisfaction,
        notes=notes,
    )
