"""Failure mode analysis of prompt test results: rate, clusters of failures, anomalies, associations, FMEA.

From test records (a prompt text, ``passed`` or a ``score`` with a ``threshold``, optional categorical and
numeric features):

* **Failure rate** with the Wilson score interval.
* **Failure clusters.** Every prompt (passing and failing) is embedded by latent semantic analysis
  (:func:`services.text.features.lsa_embedding`: TF-IDF word 1–2-grams, sublinear tf → truncated SVD → L2);
  the distinct *failing* prompts are clustered with ``KMeans(n_init=10, random_state=seed)`` weighted by how
  often each occurs, k by the highest silhouette (over the distinct prompts) in ``[2, k_max]`` unless
  ``n_clusters`` fixes it. Each cluster reports its size, share of the
  failures, top TF-IDF terms and examples, and — to tell a real failure mode from a scatter of failures — how
  many *passing* prompts lie within its radius (the farthest member's distance to the centroid): the failure
  rate "nearby" with its Wilson interval. A passing prompt is never a member of a failure cluster.
* **Anomalies.** ``IsolationForest(random_state=seed)`` on the interpretable text numbers
  (:data:`services.text.features.NUMERIC_FEATURE_NAMES`) plus the records' numeric features; the flagged
  records and the failure rate among them against the rest.
* **Associations.** For each categorical feature, the levels × (failed, passed) table is tested by the
  pattern significance analyzer's functions (Pearson chi-square, Yates for 2×2; Fisher's exact test when an
  expected count is below 5 — exact for 2×2, seeded Monte Carlo Fisher–Freeman–Halton for r×2), with
  Cramér's V; each level's odds ratio of failure against the other levels has a Woolf interval; Benjamini–
  Hochberg q-values across the features. Levels beyond ``max_levels − 1`` are pooled as ``(other)``.
* **FMEA.** Each failure cluster is a failure mode: severity 1–10 from the mean score shortfall below the
  threshold relative to ``threshold − score_floor`` (``default_severity`` without scores), occurrence 1–10
  from the mode's rate among all tests (AIAG FMEA process occurrence scale: ≥ 1 in 10 → 10 … < 1 in
  1,500,000 → 1), detection as given (``detection``); RPN = S × O × D, ranked.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import special
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from services.framework import ComponentInput, ComponentOutput, Seed, component
from services.text.features import (
    NUMERIC_FEATURE_NAMES,
    distinct_rows,
    lsa_embedding,
    numeric_features,
    top_terms,
)
from services.tier3.advanced_statistical_validator import adjust_p_values
from services.tier3.pattern_significance_analyzer import (
    PatternSignificanceAnalyzerInput,
    PatternTable,
    pattern_significance_analyzer,
)

__all__ = [
    "Anomalies",
    "Anomaly",
    "FailureCluster",
    "FailureModeAnalyzerInput",
    "FailureModeAnalyzerOutput",
    "FeatureAssociation",
    "FmeaEntry",
    "LevelStat",
    "Proportion",
    "TestRecord",
    "failure_mode_analyzer",
    "occurrence_rating",
    "wilson_interval",
]

MAX_RECORDS = 50_000
MAX_TEXT = 20_000
SILHOUETTE_SAMPLE = 2000
MAX_LISTED = 1000
OTHER = "(other)"
MISSING = "(missing)"
# AIAG FMEA (4th ed.) process occurrence scale: the lowest failure rate that earns each rating 10, 9, …, 2.
_OCCURRENCE = ((0.1, 10), (0.05, 9), (0.02, 8), (0.01, 7), (0.002, 6), (0.0005, 5), (0.0001, 4), (1e-5, 3), (1e-6, 2))

FeatureName = Annotated[str, Field(min_length=1, max_length=100)]
Level = Annotated[str, Field(min_length=1, max_length=200)]
Value = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]
Score = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]


# --------------------------------------------------------------------------- inputs


class TestRecord(ComponentInput):
    """One test: the prompt, its outcome (``passed``, or ``score`` against the threshold) and its features."""

    __test__ = False  # not a pytest class, whatever its name

    prompt_text: str = Field(min_length=1, max_length=MAX_TEXT)
    passed: bool | None = Field(None, description="the outcome; default: score ≥ threshold")
    score: Score | None = Field(None, description="quality score (used for severity, and for the outcome)")
    categorical: dict[FeatureName, Level] = Field(default_factory=dict, max_length=20, description="e.g. domain, rule")
    numeric: dict[FeatureName, Value] = Field(
        default_factory=dict, max_length=50, description="e.g. latency; every record must give the same names"
    )


class FailureModeAnalyzerInput(ComponentInput):
    """Test results to analyse, and the knobs of each analysis."""

    records: list[TestRecord] = Field(min_length=2, max_length=MAX_RECORDS)
    threshold: Score | None = Field(None, description="a record passes when score ≥ threshold (unless 'passed')")
    score_floor: Score = Field(0.0, description="the worst possible score: a shortfall to it is severity 10")
    n_clusters: int | None = Field(None, ge=1, le=20, description="failure clusters; default: k by silhouette")
    k_max: int = Field(8, ge=2, le=20, description="largest k tried when choosing by silhouette")
    n_components: int = Field(20, ge=2, le=200, description="SVD dimensions of the text embedding")
    contamination: Literal["auto"] | Annotated[float, Field(gt=0, le=0.5)] = Field(
        0.05,
        description="IsolationForest: share of records flagged, or 'auto' (the paper's score threshold, which "
        "flags many records when the features take few distinct values)",
    )
    n_estimators: int = Field(100, ge=10, le=1000, description="IsolationForest trees")
    detection: int = Field(5, ge=1, le=10, description="FMEA detection rating (1: always caught, 10: never)")
    default_severity: int = Field(5, ge=1, le=10, description="FMEA severity when there are no scores")
    max_levels: int = Field(10, ge=2, le=10, description="levels per categorical feature; rarer ones pooled")
    fdr: float = Field(0.05, ge=1e-6, le=0.5, description="Benjamini–Hochberg q threshold across features")
    confidence_level: float = Field(0.95, ge=0.5, le=0.999)
    n_monte_carlo: int = Field(10_000, ge=1000, le=50_000, description="tables drawn for an r×2 exact test")
    seed: Seed = 0

    @model_validator(mode="after")
    def _outcomes_and_features(self) -> FailureModeAnalyzerInput:
        names = set(self.records[0].numeric)
        for i, r in enumerate(self.records):
            if r.passed is None and (r.score is None or self.threshold is None):
                raise ValueError(f"records[{i}]: give 'passed', or a 'score' and the request's 'threshold'")
            if set(r.numeric) != names:
                raise ValueError(
                    f"records[{i}]: numeric features {sorted(r.numeric)} differ from records[0]'s {sorted(names)}"
                )
        if self.threshold is not None and self.threshold <= self.score_floor:
            raise ValueError("threshold must be above score_floor")
        return self


# --------------------------------------------------------------------------- outputs


class Proportion(ComponentOutput):
    successes: int = Field(description="failures counted")
    n: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    method: str = "wilson"


class FailureCluster(ComponentOutput):
    cluster: int = Field(description="numbered by size, largest first")
    size: int
    share_of_failures: float
    top_terms: list[str]
    examples: list[str] = Field(description="up to three member prompts (first 200 characters)")
    member_indices: list[int] = Field(description="record indices (at most 1000)")
    radius: float
    nearby_passed: int = Field(description="passing prompts within the radius whose nearest cluster is this one")
    failure_rate_nearby: Proportion
    mean_shortfall: float | None = Field(description="mean (threshold − score) of members with scores")


class Anomaly(ComponentOutput):
    index: int
    anomaly_score: float = Field(description="IsolationForest decision_function: negative is anomalous")
    passed: bool


class Anomalies(ComponentOutput):
    feature_names: list[str]
    n_anomalies: int
    anomalies: list[Anomaly] = Field(description="most anomalous first (at most 1000)")
    failure_rate_anomalous: Proportion
    failure_rate_normal: Proportion
    threshold: float = Field(description="IsolationForest offset_: scores below it are anomalies")


class LevelStat(ComponentOutput):
    level: str
    n: int
    failures: int
    failure_rate: float
    odds_ratio: float | None = Field(description="odds of failure at this level against all other levels")
    odds_ratio_ci_low: float | None
    odds_ratio_ci_high: float | None


class FeatureAssociation(ComponentOutput):
    feature: str
    levels: list[LevelStat]
    table: list[list[int]] = Field(description="rows: levels; columns: failed, passed")
    test: str
    test_reason: str
    chi_square: float | None
    dof: int | None
    min_expected: float | None
    p_value: float | None
    q_value: float | None
    significant: bool
    cramers_v: float | None


class FmeaEntry(ComponentOutput):
    mode: str
    cluster: int
    failures: int
    occurrence_rate: float
    severity: int
    severity_basis: Literal["score_shortfall", "default"]
    occurrence: int
    detection: int
    rpn: int


class FailureModeAnalyzerOutput(ComponentOutput):
    n_records: int
    n_failed: int
    failure_rate: Proportion
    k: int | None = Field(description="failure clusters found (None: too few failures)")
    k_selection: Literal["silhouette", "given", "single", "none"]
    silhouette: float | None
    k_scores: dict[str, float] = Field(description="silhouette of each k tried")
    clusters: list[FailureCluster]
    anomalies: Anomalies
    associations: list[FeatureAssociation]
    significant_features: list[str] = Field(description="q ≤ fdr, by q")
    fmea: list[FmeaEntry] = Field(description="ranked by RPN")
    notes: list[str]


# --------------------------------------------------------------------------- plain functions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (``n`` > 0)."""
    z = float(special.ndtri(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def occurrence_rating(rate: float) -> int:
    """FMEA occurrence 1–10 of a failure rate (AIAG process scale)."""
    for bound, rating in _OCCURRENCE:
        if rate >= bound:
            return rating
    return 1


def _proportion(successes: int, n: int, confidence: float) -> Proportion:
    if n == 0:
        return Proportion(successes=0, n=0, rate=None, ci_low=None, ci_high=None)
    lo, hi = wilson_interval(successes, n, confidence)
    return Proportion(successes=successes, n=n, rate=successes / n, ci_low=lo, ci_high=hi)


def _outcomes(request: FailureModeAnalyzerInput) -> tuple[np.ndarray, np.ndarray]:
    """(failed, shortfall) per record; shortfall is NaN without a score and threshold."""
    failed = np.empty(len(request.records), dtype=bool)
    shortfall = np.full(len(request.records), np.nan)
    for i, r in enumerate(request.records):
        if r.score is not None and request.threshold is not None:
            shortfall[i] = max(0.0, request.threshold - r.score)
        failed[i] = not r.passed if r.passed is not None else r.score < request.threshold  # type: ignore[operator]
    return failed, shortfall


def _choose_k(
    z: np.ndarray, weights: np.ndarray, request: FailureModeAnalyzerInput
) -> tuple[KMeans, str, dict[str, float]]:
    """k-means for each k, best silhouette; one thread per run (the OpenMP pool spins when the cores are busy)."""
    with threadpool_limits(limits=1):
        return _choose_k_inner(z, weights, request)


def _choose_k_inner(
    z: np.ndarray, weights: np.ndarray, request: FailureModeAnalyzerInput
) -> tuple[KMeans, str, dict[str, float]]:
    distinct = z.shape[0]
    if request.n_clusters is not None:
        k = min(request.n_clusters, distinct)
        return KMeans(n_clusters=k, n_init=10, random_state=request.seed).fit(z, sample_weight=weights), "given", {}
    k_max = min(request.k_max, distinct - 1)
    if k_max < 2:
        return KMeans(n_clusters=1, n_init=1, random_state=request.seed).fit(z, sample_weight=weights), "single", {}
    sample = SILHOUETTE_SAMPLE if z.shape[0] > SILHOUETTE_SAMPLE else None
    best: tuple[float, KMeans] | None = None
    scores: dict[str, float] = {}
    for k in range(2, k_max + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=request.seed).fit(z, sample_weight=weights)
        if np.unique(km.labels_).size < 2:
            continue
        s = float(silhouette_score(z, km.labels_, sample_size=sample, random_state=request.seed))
        scores[str(k)] = s
        if best is None or s > best[0]:
            best = (s, km)
    if best is None:
        return KMeans(n_clusters=1, n_init=1, random_state=request.seed).fit(z, sample_weight=weights), "single", {}
    return best[1], "silhouette", scores


def _clusters(
    request: FailureModeAnalyzerInput, failed: np.ndarray, shortfall: np.ndarray, notes: list[str]
) -> tuple[list[FailureCluster], int | None, str, float | None, dict[str, float]]:
    texts = [r.prompt_text for r in request.records]
    fail_idx = np.flatnonzero(failed)
    if fail_idx.size == 0:
        notes.append("no failures: nothing to cluster")
        return [], None, "none", None, {}
    try:
        lsa, tfidf, z = lsa_embedding(texts, n_components=request.n_components, seed=request.seed)
    except ValueError:  # scikit-learn's "empty vocabulary"
        notes.append("no prompt has a word outside the stop words: failures were not clustered by text")
        return [], None, "none", None, {}
    terms = lsa.vectorizer.get_feature_names_out()
    first, inverse, counts = distinct_rows(z[fail_idx])
    km, how, scores = _choose_k(z[fail_idx][first], counts.astype(np.float64), request)
    labels = km.labels_[inverse]
    silhouette = scores.get(str(km.n_clusters))
    # Number clusters by size (largest first), ties by their first member, so the output reads top-down.
    order = sorted(range(km.n_clusters), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    centroids = km.cluster_centers_
    member_dist = np.linalg.norm(z[fail_idx] - centroids[labels], axis=1)
    pass_idx = np.flatnonzero(~failed)
    pass_dist = np.linalg.norm(z[pass_idx][:, None, :] - centroids[None, :, :], axis=2)
    nearest = pass_dist.argmin(axis=1) if pass_idx.size else np.array([], dtype=int)
    out = []
    for new_id, c in enumerate(order):
        members = fail_idx[labels == c]
        radius = float(member_dist[labels == c].max())
        near = int(((nearest == c) & (pass_dist[np.arange(pass_idx.size), nearest] <= radius + 1e-9)).sum())
        shortfalls = shortfall[members]
        shortfalls = shortfalls[~np.isnan(shortfalls)]
        out.append(
            FailureCluster(
                cluster=new_id,
                size=int(members.size),
                share_of_failures=members.size / fail_idx.size,
                top_terms=top_terms(tfidf, members, terms, 8),
                examples=[texts[i][:200] for i in members[:3]],
                member_indices=members[:MAX_LISTED].tolist(),
                radius=radius,
                nearby_passed=near,
                failure_rate_nearby=_proportion(int(members.size), int(members.size) + near, request.confidence_level),
                mean_shortfall=float(shortfalls.mean()) if shortfalls.size else None,
            )
        )
    return out, int(km.n_clusters), how, silhouette, scores


def _anomalies(request: FailureModeAnalyzerInput, failed: np.ndarray) -> Anomalies:
    texts = [r.prompt_text for r in request.records]
    extra = sorted(request.records[0].numeric)
    x = numeric_features(texts)
    if extra:
        x = np.hstack([x, np.array([[r.numeric[name] for name in extra] for r in request.records])])
    forest = IsolationForest(
        n_estimators=request.n_estimators, contamination=request.contamination, random_state=request.seed
    ).fit(x)
    score = forest.decision_function(x)
    flagged = np.flatnonzero(forest.predict(x) == -1)
    ranked = flagged[np.argsort(score[flagged], kind="stable")]
    normal = np.setdiff1d(np.arange(len(texts)), flagged)
    return Anomalies(
        feature_names=[*NUMERIC_FEATURE_NAMES, *extra],
        n_anomalies=int(flagged.size),
        anomalies=[Anomaly(index=int(i), anomaly_score=float(score[i]), passed=not failed[i]) for i in ranked][
            :MAX_LISTED
        ],
        failure_rate_anomalous=_proportion(int(failed[flagged].sum()), int(flagged.size), request.confidence_level),
        failure_rate_normal=_proportion(int(failed[normal].sum()), int(normal.size), request.confidence_level),
        threshold=float(forest.offset_),
    )


def _levels(values: list[str], max_levels: int) -> tuple[list[str], np.ndarray]:
    """Levels by frequency (ties by name), the rarest pooled as (other) beyond ``max_levels − 1``."""
    names, code, counts = np.unique(np.array(values, dtype=object), return_inverse=True, return_counts=True)
    order = sorted(range(names.size), key=lambda j: (-counts[j], str(names[j])))
    if names.size > max_levels:
        keep, pooled = order[: max_levels - 1], order[max_levels - 1 :]
        remap = np.empty(names.size, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        remap[pooled] = len(keep)
        return [str(names[j]) for j in keep] + [OTHER], remap[code]
    remap = np.empty(names.size, dtype=np.int64)
    remap[order] = np.arange(names.size)
    return [str(names[j]) for j in order], remap[code]


def _association(
    feature: str, values: list[str], failed: np.ndarray, request: FailureModeAnalyzerInput
) -> FeatureAssociation:
    levels, code = _levels(values, request.max_levels)
    fails = np.bincount(code, weights=failed, minlength=len(levels)).astype(np.int64)
    sizes = np.bincount(code, minlength=len(levels))
    table = np.column_stack([fails, sizes - fails])
    tables = [{"name": "overall", "table": table.tolist()}] if len(levels) > 1 else []
    if len(levels) > 1:
        rest = table.sum(axis=0)
        tables += [{"name": f"level{j}", "table": [row.tolist(), (rest - row).tolist()]} for j, row in enumerate(table)]
    results = {}
    if tables:
        analysed = pattern_significance_analyzer(
            PatternSignificanceAnalyzerInput(
                patterns=[PatternTable.model_validate(t) for t in tables],
                confidence_level=request.confidence_level,
                n_monte_carlo=request.n_monte_carlo,
                seed=request.seed,
            )
        )
        results = {r.pattern: r for r in analysed.results}
    level_stats = []
    for j, level in enumerate(levels):
        odds = results[f"level{j}"].odds_ratio if f"level{j}" in results else None
        level_stats.append(
            LevelStat(
                level=level,
                n=int(sizes[j]),
                failures=int(fails[j]),
                failure_rate=float(fails[j] / sizes[j]),
                odds_ratio=odds.estimate if odds else None,
                odds_ratio_ci_low=odds.ci_low if odds else None,
                odds_ratio_ci_high=odds.ci_high if odds else None,
            )
        )
    overall = results.get("overall")
    return FeatureAssociation(
        feature=feature,
        levels=level_stats,
        table=table.tolist(),
        test=overall.test if overall else "none",
        test_reason=overall.test_reason if overall else "untestable: the feature has a single level",
        chi_square=overall.chi_square if overall else None,
        dof=overall.dof if overall else None,
        min_expected=overall.min_expected if overall else None,
        p_value=overall.p_value if overall else None,
        q_value=None,
        significant=False,
        cramers_v=overall.cramers_v if overall else None,
    )


def _associations(request: FailureModeAnalyzerInput, failed: np.ndarray) -> list[FeatureAssociation]:
    names = sorted({name for r in request.records for name in r.categorical})
    out = [
        _association(name, [r.categorical.get(name, MISSING) for r in request.records], failed, request)
        for name in names
    ]
    tested = [i for i, a in enumerate(out) if a.p_value is not None]
    q = adjust_p_values(np.array([out[i].p_value for i in tested]), "fdr_bh")
    for i, qi in zip(tested, q, strict=True):
        out[i] = out[i].model_copy(update={"q_value": float(qi), "significant": bool(qi <= request.fdr)})
    return out


def _fmea(request: FailureModeAnalyzerInput, clusters: list[FailureCluster], n_records: int) -> list[FmeaEntry]:
    entries = []
    span = request.threshold - request.score_floor if request.threshold is not None else None
    for c in clusters:
        if c.mean_shortfall is not None and span:
            severity = max(1, min(10, math.ceil(10 * c.mean_shortfall / span)))
            basis: Literal["score_shortfall", "default"] = "score_shortfall"
        else:
            severity, basis = request.default_severity, "default"
        rate = c.size / n_records
        occurrence = occurrence_rating(rate)
        entries.append(
            FmeaEntry(
                mode=f"cluster {c.cluster}: " + (", ".join(c.top_terms[:4]) or "(no distinctive terms)"),
                cluster=c.cluster,
                failures=c.size,
                occurrence_rate=rate,
                severity=severity,
                severity_basis=basis,
                occurrence=occurrence,
                detection=request.detection,
                rpn=severity * occurrence * request.detection,
            )
        )
    return sorted(entries, key=lambda e: (-e.rpn, -e.failures, e.cluster))


@component(
    "FailureModeAnalyzer",
    tier="tier2",
    capabilities=["failure_analysis", "anomaly_detection", "fmea"],
    example={
        "records": [
            {
                "prompt_text": "Translate this legal contract into Klingon",
                "score": 0.2,
                "categorical": {"domain": "legal"},
            },
            {
                "prompt_text": "Translate the legal notice into Klingon",
                "score": 0.3,
                "categorical": {"domain": "legal"},
            },
            {"prompt_text": "Translate a legal clause into Klingon", "score": 0.25, "categorical": {"domain": "legal"}},
            {
                "prompt_text": "Create a SQL query that joins orders & customers; return totals",
                "score": 0.9,
                "categorical": {"domain": "code"},
            },
            {
                "prompt_text": "Write a Python function that parses dates",
                "score": 0.85,
                "categorical": {"domain": "code"},
            },
            {
                "prompt_text": "Summarise this article in three bullet points",
                "score": 0.8,
                "categorical": {"domain": "writing"},
            },
            {"prompt_text": "Explain recursion to a beginner", "score": 0.4, "categorical": {"domain": "writing"}},
            {"prompt_text": "Draft a polite reminder email", "score": 0.75, "categorical": {"domain": "writing"}},
        ],
        "threshold": 0.6,
        "seed": 0,
    },
)
def failure_mode_analyzer(request: FailureModeAnalyzerInput) -> FailureModeAnalyzerOutput:
    """Failure modes of prompt tests: Wilson failure rate, failure clusters, anomalies, associations and FMEA.

    Failing prompts are clustered on TF-IDF → SVD features (k by silhouette) with their top terms and the
    failure rate around them; IsolationForest flags anomalous records; each categorical feature is tested
    for association with failure (chi-square or Fisher's exact, Cramér's V, odds ratios, BH FDR); each
    failure cluster gets an FMEA risk priority number. See the module docstring for the definitions.
    """
    failed, shortfall = _outcomes(request)
    n = len(request.records)
    notes: list[str] = []
    clusters, k, how, silhouette, scores = _clusters(request, failed, shortfall, notes)
    associations = _associations(request, failed)
    significant = sorted(
        (a for a in associations if a.significant), key=lambda a: (a.q_value, a.p_value, -(a.cramers_v or 0.0))
    )
    if failed.all():
        notes.append("every record failed: associations and nearby failure rates cannot separate anything")
    return FailureModeAnalyzerOutput(
        n_records=n,
        n_failed=int(failed.sum()),
        failure_rate=_proportion(int(failed.sum()), n, request.confidence_level),
        k=k,
        k_selection=how,  # type: ignore[arg-type]
        silhouette=silhouette,
        k_scores=scores,
        clusters=clusters,
        anomalies=_anomalies(request, failed),
        associations=associations,
        significant_features=[a.feature for a in significant],
        fmea=_fmea(request, clusters, n),
        notes=notes,
    )
