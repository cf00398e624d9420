"""Context learner: which rules work in which context (prompt clusters), with shrunk estimates and evidence.

Operations (``operation``):

* ``learn`` — rule-application records (inline, a CSV/JSON file under ``data/`` plus a prompts file, or the
  domain store) are split by session, ``GroupShuffleSplit(n_splits=1, test_size=test_fraction,
  random_state=seed)``, so no session is on both sides. On the training sessions:

  1. *Features* of the prompt text only (the improvement score is never a feature): ``text`` is latent
     semantic analysis — TF-IDF (word 1–2-grams, sublinear tf) → ``TruncatedSVD(random_state=seed)`` →
     L2 normalisation (:func:`services.text.features.lsa_embedding`); ``numeric`` is the interpretable
     numbers of :func:`services.text.features.numeric_features`, standardised.
  2. *Clusters*: ``KMeans(n_clusters=k, n_init=10, random_state=seed)`` for every k in ``[k_min, k_max]``;
     the k with the highest ``sklearn.metrics.silhouette_score`` wins (every k's score is returned).
  3. *Effectiveness* per cluster × rule: the cell mean of the improvement, shrunk toward the rule's global
     mean by a normal–normal empirical-Bayes model. With the pooled within-cell variance σ² and the
     between-cluster variance τ² (one-way ANOVA method of moments, pooled over rules), the prior strength
     is m = σ²/τ² pseudo-observations (or ``prior_strength``), the estimate
     ``μ_r + n/(n+m)·(ȳ_cr − μ_r)`` and its variance ``σ²/(n+m) + (m/(n+m))²·σ²/N_r`` (Morris' approximation:
     the second term is the uncertainty of the rule's global mean μ_r). τ² = 0 means no detectable context
     effect: every cluster gets the rule's global mean. Intervals are normal at ``confidence_level``.

  *Held-out evaluation* (the test sessions, projected with the training model): the replay estimator of a
  policy's value (Li et al., 2011) is the mean observed improvement over the held-out applications whose
  logged rule is the one the policy picks. The contextual policy picks its cluster's top rule, the baseline
  the best rule overall on the training sessions; both values, their matched counts and the gain with a
  normal interval are reported as they come out, whichever is larger. Replay is unbiased when the logged
  rules were chosen independently of the prompt; otherwise read the numbers as descriptive.

  The learned model (cluster centroids, the TF-IDF vocabulary and idf, the SVD components or the scaler,
  and the effectiveness tables) is stored as the next version of ``name`` in ``data/context_learner.sqlite``
  (JSON and an ``.npz`` blob read with ``allow_pickle=False``: nothing is unpickled).
* ``recommend`` — new prompts → their cluster (nearest centroid in the stored feature space) and the rules
  ranked by expected improvement, each with its interval and n as evidence.
* ``describe`` — a stored model's clusters with their top terms, domains and best rules.
* ``list`` — every stored model version.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, RootModel, model_validator
from scipy import special
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupShuffleSplit
from threadpoolctl import threadpool_limits

from mlmesh.errors import BadRequest, InvalidInput, NotFound
from services.domain import store_for
from services.framework import ComponentInput, ComponentOutput, RunContext, Seed, StateDB, component
from services.text.features import (
    NUMERIC_FEATURE_NAMES,
    LsaModel,
    lsa_embedding,
    numeric_features,
    project_lsa,
    tfidf_from_state,
    tfidf_state,
    top_terms,
)

__all__ = [
    "ApplicationRecord",
    "ClusterSummary",
    "ContextLearnerInput",
    "ContextLearnerOutput",
    "DescribeOp",
    "Evaluation",
    "KScore",
    "LearnOp",
    "ListOp",
    "ModelInfo",
    "PolicyValue",
    "RecommendOp",
    "Recommendation",
    "RuleEffect",
    "context_learner",
]

STATE_NAME = "context_learner"
MAX_RECORDS = 50_000
MAX_FILE_RECORDS = 200_000
MAX_RULES = 100
MAX_K = 20
MAX_TEXT = 20_000
# Silhouette is O(n²): above this many training rows it is computed on a seeded sample of this size.
SILHOUETTE_SAMPLE = 2000
TOP_TERMS = 8
_MIGRATIONS = [
    """
    CREATE TABLE context_model (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        meta TEXT NOT NULL,
        arrays BLOB NOT NULL,
        PRIMARY KEY (name, version)
    );
    """
]

ModelName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="model name (letters, digits, _ -)")
]
RuleId = Annotated[str, Field(min_length=1, max_length=100)]
Label = Annotated[str, Field(min_length=1, max_length=200)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
Score = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


# --------------------------------------------------------------------------- inputs


class ApplicationRecord(ComponentInput):
    """One logged rule application: the prompt, the rule and the improvement it brought."""

    prompt_text: PromptText
    rule_id: RuleId
    improvement_score: Score = Field(description="the outcome; never used as a feature")
    session_id: Label | None = Field(None, description="applications of one session stay on one side of the split")
    domain: Label | None = Field(None, description="reported per cluster; not a feature")


class LearnOp(ComponentInput):
    """Learn clusters and per-cluster rule effectiveness; store them as the next version of ``name``."""

    operation: Literal["learn"]
    name: ModelName
    records: list[ApplicationRecord] | None = Field(None, min_length=1, max_length=MAX_RECORDS)
    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="CSV or JSON records under data/: prompt_text (or prompt_id with prompts_path), rule_id, "
        "improvement_score, optional session_id and domain",
    )
    prompts_path: str | None = Field(
        None, min_length=1, max_length=1024, description="JSON under data/: [{id, text, domain?}] or {id: text}"
    )
    source: Literal["store"] | None = Field(None, description="'store': read the domain store's applications")
    since: float | None = Field(None, ge=0, le=1e11, description="store: applied_at ≥ since (unix seconds)")
    until: float | None = Field(None, ge=0, le=1e11, description="store: applied_at < until (unix seconds)")
    limit: int | None = Field(None, ge=1, le=MAX_FILE_RECORDS, description="store: at most this many applications")
    features: Literal["text", "numeric"] = Field(
        "text", description="text: TF-IDF → SVD → L2 (LSA); numeric: standardised interpretable prompt numbers"
    )
    n_components: int = Field(20, ge=2, le=200, description="text: SVD dimensions (fewer when the data is small)")
    max_features: int = Field(5000, ge=10, le=50_000, description="text: TF-IDF vocabulary size")
    k_min: int = Field(2, ge=2, le=MAX_K)
    k_max: int = Field(8, ge=2, le=MAX_K, description="clusters tried: every k in [k_min, k_max]")
    prior_strength: float | None = Field(
        None, ge=0, le=1e6, description="shrinkage pseudo-count m; default: estimated (σ²/τ², empirical Bayes)"
    )
    confidence_level: float = Field(0.95, ge=0.5, le=0.999)
    test_fraction: float = Field(0.25, ge=0.1, le=0.5, description="share of sessions held out for evaluation")
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_source(self) -> LearnOp:
        given = [self.records is not None, self.path is not None, self.source is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one data source: records (inline), path (a file) or source='store'")
        if self.prompts_path is not None and self.path is None:
            raise ValueError("prompts_path goes with path")
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be ≤ k_max ({self.k_max})")
        return self


class RecommendOp(ComponentInput):
    """Rank the rules for new prompts by the expected improvement in their cluster."""

    operation: Literal["recommend"]
    name: ModelName
    version: Version | None = Field(None, description="default: the latest")
    prompts: list[PromptText] = Field(min_length=1, max_length=1000)
    top_k: int = Field(5, ge=1, le=MAX_RULES, description="rules listed per prompt")


class DescribeOp(ComponentInput):
    """A stored model's clusters: top terms, domains and best rules."""

    operation: Literal["describe"]
    name: ModelName
    version: Version | None = Field(None, description="default: the latest")


class ListOp(ComponentInput):
    """Every stored model version."""

    operation: Literal["list"]


class ContextLearnerInput(
    RootModel[Annotated[LearnOp | RecommendOp | DescribeOp | ListOp, Field(discriminator="operation")]]
):
    """``learn``, ``recommend``, ``describe`` or ``list``."""


# --------------------------------------------------------------------------- outputs


class RuleEffect(ComponentOutput):
    rule_id: str
    n: int = Field(description="training applications of this rule in this cluster")
    raw_mean: float | None = Field(description="the cell's mean improvement (None when n = 0)")
    expected_improvement: float = Field(description="shrunk toward the rule's global mean")
    ci_low: float
    ci_high: float
    rule_global_mean: float
    shrinkage_weight: float = Field(description="n/(n+m): the weight of the cell's own mean")


class ClusterSummary(ComponentOutput):
    cluster: int
    size: int
    share: float
    top_terms: list[str] = Field(description="highest mean TF-IDF terms (text features only)")
    feature_means: dict[str, float] | None = Field(description="numeric features: the centroid in original units")
    domains: dict[str, int] = Field(description="applications per domain (the five commonest)")
    best_rule: str
    rules: list[RuleEffect] = Field(description="ranked by expected improvement")


class KScore(ComponentOutput):
    k: int
    silhouette: float
    inertia: float


class PolicyValue(ComponentOutput):
    policy: Literal["contextual_top_rule", "global_best_rule"]
    value: float | None = Field(description="mean held-out improvement where the logged rule is the policy's pick")
    n_matched: int
    standard_error: float | None


class Evaluation(ComponentOutput):
    held_out_sessions: int
    held_out_records: int
    global_best_rule: str
    contextual: PolicyValue
    global_best: PolicyValue
    gain: float | None = Field(description="contextual − global value (replay estimates)")
    gain_ci_low: float | None
    gain_ci_high: float | None
    beats_global: bool | None = Field(description="gain > 0; None when either value is undefined")
    note: str


class Recommendation(ComponentOutput):
    prompt_index: int
    cluster: int
    distance: float = Field(description="Euclidean distance to the cluster centroid in the feature space")
    top_terms: list[str]
    rules: list[RuleEffect]


class ModelInfo(ComponentOutput):
    name: str
    version: int
    created_at: float
    features: str
    k: int
    n_train: int
    n_rules: int
    silhouette: float
    gain: float | None


class ContextLearnerOutput(ComponentOutput):
    operation: Literal["learn", "recommend", "describe", "list"]
    name: str | None = None
    version: int | None = None
    features: str | None = None
    k: int | None = None
    silhouette: float | None = None
    k_scores: list[KScore] = Field(default_factory=list)
    clusters: list[ClusterSummary] = Field(default_factory=list)
    rule_global_means: dict[str, float] = Field(default_factory=dict)
    prior_strength: float | None = Field(None, description="m in pseudo-observations (None: infinite, τ² = 0)")
    within_variance: float | None = Field(None, description="σ²: pooled within-cell variance")
    between_variance: float | None = Field(None, description="τ²: between-cluster variance of a rule's effect")
    evaluation: Evaluation | None = None
    recommendations: list[Recommendation] = Field(default_factory=list)
    models: list[ModelInfo] = Field(default_factory=list)
    n_records: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    explained_variance: float | None = Field(None, description="text: share of TF-IDF variance the SVD keeps")
    note: str = ""


# --------------------------------------------------------------------------- loading records


@dataclass
class _Data:
    texts: list[str]
    rules: np.ndarray  # str
    y: np.ndarray
    groups: np.ndarray  # str
    domains: list[str | None]
    skipped: int = 0


def _from_rows(rows: list[dict[str, Any]], where: str, skipped: int = 0) -> _Data:
    texts, rules, ys, groups, domains = [], [], [], [], []
    for i, row in enumerate(rows):
        text, rule, score = row.get("prompt_text"), row.get("rule_id"), row.get("improvement_score")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(where, f"row {i}: prompt_text is missing or empty")
        if len(text) > MAX_TEXT:
            raise InvalidInput(where, f"row {i}: prompt_text is longer than {MAX_TEXT} characters")
        if rule is None or str(rule) == "":
            raise InvalidInput(where, f"row {i}: rule_id is missing")
        try:
            value = float(score)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidInput(where, f"row {i}: improvement_score {score!r} is not a number") from None
        if not math.isfinite(value) or abs(value) > 1e6:
            raise InvalidInput(where, f"row {i}: improvement_score must be finite and within ±1e6")
        session = row.get("session_id")
        texts.append(text)
        rules.append(str(rule)[:100])
        ys.append(value)
        # A record without a session is its own group.
        groups.append(f"s:{session}" if session not in (None, "") else f"row:{i}")
        domain = row.get("domain")
        domains.append(str(domain) if domain not in (None, "") else None)
    return _Data(texts, np.array(rules, dtype=object), np.array(ys), np.array(groups, dtype=object), domains, skipped)


def _read_table(path: Path, field: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise BadRequest(f"{field}: no such file in the data directory")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                rows: list[dict[str, Any]] = []
                for row in csv.DictReader(fh):
                    rows.append(row)
                    if len(rows) > MAX_FILE_RECORDS:
                        raise InvalidInput(field, f"at most {MAX_FILE_RECORDS} rows")
                return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise BadRequest(f"{field}: unsupported file type {suffix!r}; use .csv or .json")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise BadRequest(f"{field}: could not read {path.name}: {type(exc).__name__}") from exc
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InvalidInput(field, "a JSON file must hold a list of objects (or {'records': [...]})")
    if len(data) > MAX_FILE_RECORDS:
        raise InvalidInput(field, f"at most {MAX_FILE_RECORDS} rows")
    return data


def _read_prompts(path: Path) -> dict[str, dict[str, Any]]:
    if path.suffix.lower() != ".json":
        raise BadRequest("prompts_path: use a .json file")
    if not path.is_file():
        raise BadRequest("prompts_path: no such file in the data directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"prompts_path: could not read {path.name}: {type(exc).__name__}") from exc
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if isinstance(data, dict):
        return {str(k): {"text": v} for k, v in data.items()}
    if isinstance(data, list) and all(isinstance(p, dict) and "id" in p for p in data):
        return {str(p["id"]): p for p in data}
    raise InvalidInput("prompts_path", "expected [{id, text, domain?}] or {id: text}")


def _load(op: LearnOp, ctx: RunContext) -> _Data:
    if op.records is not None:
        return _from_rows([r.model_dump() for r in op.records], "records")
    if op.path is not None:
        rows = _read_table(ctx.data_path(op.path, field="path"), "path")
        if op.prompts_path is not None:
            prompts = _read_prompts(ctx.data_path(op.prompts_path, field="prompts_path"))
            for i, row in enumerate(rows):
                if not row.get("prompt_text"):
                    prompt = prompts.get(str(row.get("prompt_id")))
                    if prompt is None:
                        raise InvalidInput("prompts_path", f"row {i}: prompt_id {row.get('prompt_id')!r} not found")
                    row["prompt_text"] = prompt.get("text")
                    row.setdefault("domain", prompt.get("domain"))
                    if not row.get("domain"):
                        row["domain"] = prompt.get("domain")
        return _from_rows(rows, "path")
    rows = store_for(ctx).applications(since=op.since, until=op.until, limit=op.limit)
    usable = [r for r in rows if r.get("improvement_score") is not None and r.get("prompt_text")]
    if not usable:
        raise InvalidInput("source", "the domain store has no applications with a prompt text and a score")
    return _from_rows(usable, "source", skipped=len(rows) - len(usable))


# --------------------------------------------------------------------------- the model


@dataclass
class _FeatureSpace:
    """What maps prompt texts to the clustering space, fitted on the training sessions."""

    kind: str
    lsa: LsaModel | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def transform(self, texts: list[str]) -> np.ndarray:
        if self.lsa is not None:
            return project_lsa(self.lsa, texts)[1]
        assert self.mean is not None and self.scale is not None
        return (numeric_features(texts) - self.mean) / self.scale


def _fit_features(op: LearnOp, texts: list[str]) -> tuple[_FeatureSpace, np.ndarray, Any]:
    if op.features == "numeric":
        raw = numeric_features(texts)
        mean, scale = raw.mean(axis=0), raw.std(axis=0)
        scale[scale == 0] = 1.0  # a constant feature carries no distance
        return _FeatureSpace("numeric", mean=mean, scale=scale), (raw - mean) / scale, None
    try:
        lsa, tfidf, z = lsa_embedding(texts, n_components=op.n_components, seed=op.seed, max_features=op.max_features)
    except ValueError as exc:  # scikit-learn's "empty vocabulary"
        raise InvalidInput(
            "records", "no prompt has a word of two or more letters outside the stop words; use features='numeric'"
        ) from exc
    return _FeatureSpace("text", lsa=lsa), z, tfidf


def _choose_k(z: np.ndarray, op: LearnOp) -> tuple[KMeans, list[KScore]]:
    """k-means for each k, best silhouette; one thread per run (the OpenMP pool spins when the cores are busy)."""
    with threadpool_limits(limits=1):
        return _choose_k_inner(z, op)


def _choose_k_inner(z: np.ndarray, op: LearnOp) -> tuple[KMeans, list[KScore]]:
    distinct = np.unique(np.round(z, 12), axis=0).shape[0]
    k_max = min(op.k_max, distinct - 1)
    if k_max < op.k_min:
        raise InvalidInput(
            "records",
            f"the training prompts give {distinct} distinct feature vectors; k_min = {op.k_min} clusters need at "
            f"least {op.k_min + 1} (add prompts or lower k_min)",
        )
    sample = SILHOUETTE_SAMPLE if z.shape[0] > SILHOUETTE_SAMPLE else None
    best: tuple[float, KMeans] | None = None
    scores = []
    for k in range(op.k_min, k_max + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=op.seed).fit(z)
        if np.unique(km.labels_).size < 2:
            continue
        s = float(silhouette_score(z, km.labels_, sample_size=sample, random_state=op.seed))
        scores.append(KScore(k=k, silhouette=s, inertia=float(km.inertia_)))
        if best is None or s > best[0]:
            best = (s, km)
    if best is None:
        raise InvalidInput("records", "k-means found fewer than two distinct clusters; add more varied prompts")
    return best[1], scores


@dataclass
class _Effects:
    rules: list[str]
    n: np.ndarray  # (k, R)
    mean: np.ndarray  # (k, R), NaN where n = 0
    rule_n: np.ndarray  # (R,)
    rule_mean: np.ndarray  # (R,)
    sigma2: float
    tau2: float
    m: float  # math.inf when τ² = 0

    def table(self, c: int, z: float) -> list[RuleEffect]:
        out = []
        for r, rule in enumerate(self.rules):
            n = float(self.n[c, r])
            mu, n_r = float(self.rule_mean[r]), float(self.rule_n[r])
            if math.isinf(self.m):
                weight, var = 0.0, self.sigma2 / n_r
            else:
                weight = n / (n + self.m) if n + self.m > 0 else 0.0
                var = (self.sigma2 / (n + self.m) if n + self.m > 0 else 0.0) + (1 - weight) ** 2 * self.sigma2 / n_r
            raw = float(self.mean[c, r]) if n > 0 else None
            est = mu + weight * ((raw if raw is not None else mu) - mu)
            half = z * math.sqrt(max(var, 0.0))
            out.append(
                RuleEffect(
                    rule_id=rule,
                    n=int(n),
                    raw_mean=raw,
                    expected_improvement=est,
                    ci_low=est - half,
                    ci_high=est + half,
                    rule_global_mean=mu,
                    shrinkage_weight=weight,
                )
            )
        return sorted(out, key=lambda e: (-e.expected_improvement, -e.n, e.rule_id))


def _effects(labels: np.ndarray, k: int, rules: np.ndarray, y: np.ndarray, prior: float | None) -> _Effects:
    names, code = np.unique(rules.astype(str), return_inverse=True)
    n_rules = names.size
    cell = labels * n_rules + code
    n = np.bincount(cell, minlength=k * n_rules).reshape(k, n_rules).astype(np.float64)
    total = np.bincount(cell, weights=y, minlength=k * n_rules).reshape(k, n_rules)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.where(n > 0, n, 1), np.nan)
    rule_n = n.sum(axis=0)
    rule_mean = total.sum(axis=0) / rule_n
    resid = y - mean.ravel()[cell]
    n_cells = int((n > 0).sum())
    dof = y.size - n_cells
    # Pooled within-cell variance; with every cell a single observation, the rules' own variances stand in.
    sigma2 = float(resid @ resid / dof) if dof > 0 else float(np.var(y, ddof=1)) if y.size > 1 else 0.0
    # One-way ANOVA moments per rule, pooled: E[Q_r] = (C_r − 1)σ² + τ²(N_r − Σ_c n_cr²/N_r).
    q = np.nansum(n * (mean - rule_mean) ** 2)
    df = float(((n > 0).sum(axis=0) - 1).clip(min=0).sum())
    denom = float((rule_n - (n**2).sum(axis=0) / rule_n).sum())
    tau2 = max(0.0, (q - df * sigma2) / denom) if denom > 0 else 0.0
    if prior is not None:
        m = prior
    elif tau2 > 0:
        m = sigma2 / tau2
    else:
        m = math.inf
    return _Effects([str(s) for s in names], n, mean, rule_n, rule_mean, sigma2, tau2, m)


def _z(confidence: float) -> float:
    return float(special.ndtri(0.5 + confidence / 2.0))


def _policy(policy: Any, values: np.ndarray) -> PolicyValue:
    n = int(values.size)
    value = float(values.mean()) if n else None
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return PolicyValue(policy=policy, value=value, n_matched=n, standard_error=se)


def _evaluate(
    effects: _Effects,
    space: _FeatureSpace,
    km: KMeans,
    test: _Data,
    n_sessions: int,
    z: float,
) -> Evaluation:
    top = [effects.table(c, z)[0].rule_id for c in range(km.n_clusters)]
    global_best = effects.rules[int(np.argmax(effects.rule_mean))]
    labels = km.predict(space.transform(test.texts))
    picks = np.array([top[c] for c in labels], dtype=object)
    contextual = _policy("contextual_top_rule", test.y[test.rules == picks])
    baseline = _policy("global_best_rule", test.y[test.rules == global_best])
    gain = lo = hi = None
    beats = None
    if contextual.value is not None and baseline.value is not None:
        gain = contextual.value - baseline.value
        beats = gain > 0
        if contextual.standard_error is not None and baseline.standard_error is not None:
            half = z * math.hypot(contextual.standard_error, baseline.standard_error)
            lo, hi = gain - half, gain + half
    note = (
        "replay estimates over the held-out sessions: each policy is credited with the observed improvement of "
        "the held-out applications whose logged rule is its pick (unbiased if rules were assigned independently "
        "of the prompt); the interval treats the two matched sets as independent, which is conservative when "
        "they overlap"
    )
    if gain is None:
        note = "a policy's pick never occurs among the held-out applications, so its value is undefined; " + note
    return Evaluation(
        held_out_sessions=n_sessions,
        held_out_records=int(test.y.size),
        global_best_rule=global_best,
        contextual=contextual,
        global_best=baseline,
        gain=gain,
        gain_ci_low=lo,
        gain_ci_high=hi,
        beats_global=beats,
        note=note,
    )


def _subset(data: _Data, idx: np.ndarray) -> _Data:
    return _Data(
        [data.texts[i] for i in idx], data.rules[idx], data.y[idx], data.groups[idx], [data.domains[i] for i in idx]
    )


def _domains(domains: list[str | None], mask: np.ndarray) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d, keep in zip(domains, mask, strict=True):
        if keep and d is not None:
            counts[d] = counts.get(d, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5])


def _learn(op: LearnOp, ctx: RunContext) -> ContextLearnerOutput:
    data = _load(op, ctx)
    n_rules = np.unique(data.rules).size
    if n_rules > MAX_RULES:
        raise InvalidInput("records", f"{n_rules} distinct rules; at most {MAX_RULES}")
    n_groups = np.unique(data.groups).size
    if n_groups < 4:
        raise InvalidInput("records", f"{n_groups} sessions; at least 4 are needed to hold some out for evaluation")
    split = GroupShuffleSplit(n_splits=1, test_size=op.test_fraction, random_state=op.seed)
    train_idx, test_idx = next(split.split(np.zeros(data.y.size), groups=data.groups))
    train, test = _subset(data, train_idx), _subset(data, test_idx)

    space, z, tfidf = _fit_features(op, train.texts)
    km, k_scores = _choose_k(z, op)
    labels = km.labels_
    effects = _effects(labels, km.n_clusters, train.rules, train.y, op.prior_strength)
    zq = _z(op.confidence_level)
    terms = space.lsa.vectorizer.get_feature_names_out() if space.lsa is not None else None
    clusters = []
    for c in range(km.n_clusters):
        mask = labels == c
        table = effects.table(c, zq)
        means = None
        if space.kind == "numeric":
            assert space.mean is not None and space.scale is not None
            centroid = km.cluster_centers_[c] * space.scale + space.mean
            means = {name: float(v) for name, v in zip(NUMERIC_FEATURE_NAMES, centroid, strict=True)}
        clusters.append(
            ClusterSummary(
                cluster=c,
                size=int(mask.sum()),
                share=float(mask.mean()),
                top_terms=top_terms(tfidf, mask, terms, TOP_TERMS) if terms is not None else [],
                feature_means=means,
                domains=_domains(train.domains, mask),
                best_rule=table[0].rule_id,
                rules=table,
            )
        )
    evaluation = _evaluate(effects, space, km, test, int(np.unique(test.groups).size), zq)
    silhouette = next(s.silhouette for s in k_scores if s.k == km.n_clusters)
    out = ContextLearnerOutput(
        operation="learn",
        name=op.name,
        features=space.kind,
        k=int(km.n_clusters),
        silhouette=silhouette,
        k_scores=k_scores,
        clusters=clusters,
        rule_global_means={r: float(v) for r, v in zip(effects.rules, effects.rule_mean, strict=True)},
        prior_strength=None if math.isinf(effects.m) else effects.m,
        within_variance=effects.sigma2,
        between_variance=effects.tau2,
        evaluation=evaluation,
        n_records=int(data.y.size),
        n_train=int(train.y.size),
        n_test=int(test.y.size),
        explained_variance=space.lsa.explained_variance_ratio if space.lsa is not None else None,
        note=_learn_note(effects, data.skipped),
    )
    version = _save(ctx, op, out, space, km, effects)
    return out.model_copy(update={"version": version})


def _learn_note(effects: _Effects, skipped: int) -> str:
    parts = [
        "the stored model is the one fitted on the training sessions, which the evaluation describes",
    ]
    if math.isinf(effects.m):
        parts.insert(0, "τ² = 0: no between-cluster difference beyond noise, so every cluster gets each rule's "
                     "global mean (full shrinkage)")  # fmt: skip
    if skipped:
        parts.append(f"{skipped} store applications without a prompt text or score were skipped")
    return "; ".join(parts)


# --------------------------------------------------------------------------- persistence


def _db(ctx: RunContext) -> StateDB:
    return ctx.state(STATE_NAME, _MIGRATIONS)


def _save(
    ctx: RunContext, op: LearnOp, out: ContextLearnerOutput, space: _FeatureSpace, km: KMeans, effects: _Effects
) -> int:
    arrays: dict[str, np.ndarray] = {
        "centroids": km.cluster_centers_,
        "n": effects.n,
        "mean": np.nan_to_num(effects.mean, nan=0.0),
        "rule_n": effects.rule_n,
        "rule_mean": effects.rule_mean,
    }
    meta: dict[str, Any] = {
        "features": space.kind,
        "rules": effects.rules,
        "sigma2": effects.sigma2,
        "tau2": effects.tau2,
        "m": None if math.isinf(effects.m) else effects.m,
        "confidence_level": op.confidence_level,
        "output": out.model_dump(mode="json", exclude={"operation", "name", "version"}),
    }
    if space.lsa is not None:
        meta["tfidf"] = tfidf_state(space.lsa.vectorizer)
        meta["explained_variance"] = space.lsa.explained_variance_ratio
        if space.lsa.components is not None:
            arrays["components"] = space.lsa.components
    else:
        assert space.mean is not None and space.scale is not None
        arrays["mean_x"], arrays["scale_x"] = space.mean, space.scale
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with _db(ctx).transaction() as conn:
        row = conn.execute("SELECT MAX(version) FROM context_model WHERE name = ?", (op.name,)).fetchone()
        version = int(row[0] or 0) + 1
        conn.execute(
            "INSERT INTO context_model (name, version, created_at, meta, arrays) VALUES (?, ?, ?, ?, ?)",
            (op.name, version, time.time(), json.dumps(meta), buffer.getvalue()),
        )
    return version


@dataclass
class _Stored:
    name: str
    version: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def space(self) -> _FeatureSpace:
        if self.meta["features"] == "text":
            vectorizer = tfidf_from_state(self.meta["tfidf"])
            lsa = LsaModel(vectorizer, self.arrays.get("components"), self.meta.get("explained_variance"))
            return _FeatureSpace("text", lsa=lsa)
        return _FeatureSpace("numeric", mean=self.arrays["mean_x"], scale=self.arrays["scale_x"])

    def effects(self) -> _Effects:
        n = self.arrays["n"]
        m = self.meta["m"]
        return _Effects(
            rules=list(self.meta["rules"]),
            n=n,
            mean=np.where(n > 0, self.arrays["mean"], np.nan),
            rule_n=self.arrays["rule_n"],
            rule_mean=self.arrays["rule_mean"],
            sigma2=float(self.meta["sigma2"]),
            tau2=float(self.meta["tau2"]),
            m=math.inf if m is None else float(m),
        )


def _fetch(ctx: RunContext, name: str, version: int | None) -> _Stored:
    conn = _db(ctx).connect()
    if version is None:
        row = conn.execute(
            "SELECT * FROM context_model WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
    else:
        row = conn.execute("SELECT * FROM context_model WHERE name = ? AND version = ?", (name, version)).fetchone()
    if row is None:
        exists = conn.execute("SELECT 1 FROM context_model WHERE name = ? LIMIT 1", (name,)).fetchone()
        if exists is None:
            raise NotFound(f"no context model named {name!r}; learn one first")
        raise NotFound(f"context model {name!r} has no version {version}")
    with np.load(io.BytesIO(row["arrays"]), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return _Stored(row["name"], int(row["version"]), json.loads(row["meta"]), arrays)


def _recommend(op: RecommendOp, ctx: RunContext) -> ContextLearnerOutput:
    stored = _fetch(ctx, op.name, op.version)
    space, effects = stored.space(), stored.effects()
    centroids = stored.arrays["centroids"]
    z = space.transform(list(op.prompts))
    distances = np.linalg.norm(z[:, None, :] - centroids[None, :, :], axis=2)
    labels = np.argmin(distances, axis=1)
    zq = _z(float(stored.meta["confidence_level"]))
    clusters = stored.meta["output"]["clusters"]
    recs = [
        Recommendation(
            prompt_index=i,
            cluster=int(c),
            distance=float(distances[i, c]),
            top_terms=clusters[int(c)]["top_terms"],
            rules=effects.table(int(c), zq)[: op.top_k],
        )
        for i, c in enumerate(labels)
    ]
    return ContextLearnerOutput(
        operation="recommend",
        name=stored.name,
        version=stored.version,
        features=stored.meta["features"],
        k=int(centroids.shape[0]),
        recommendations=recs,
        note="rules ranked by expected improvement in the prompt's cluster (shrunk toward each rule's global mean)",
    )


def _describe(op: DescribeOp, ctx: RunContext) -> ContextLearnerOutput:
    stored = _fetch(ctx, op.name, op.version)
    return ContextLearnerOutput.model_validate(
        {**stored.meta["output"], "operation": "describe", "name": stored.name, "version": stored.version}
    )


def _list(op: ListOp, ctx: RunContext) -> ContextLearnerOutput:
    rows = (
        _db(ctx)
        .connect()
        .execute("SELECT name, version, created_at, meta FROM context_model ORDER BY name, version")
        .fetchall()
    )
    models = []
    for row in rows:
        out = json.loads(row["meta"])["output"]
        evaluation = out.get("evaluation") or {}
        models.append(
            ModelInfo(
                name=row["name"],
                version=int(row["version"]),
                created_at=float(row["created_at"]),
                features=out["features"],
                k=int(out["k"]),
                n_train=int(out["n_train"]),
                n_rules=len(out["rule_global_means"]),
                silhouette=float(out["silhouette"]),
                gain=evaluation.get("gain"),
            )
        )
    return ContextLearnerOutput(operation="list", models=models, note=f"{len(models)} stored model version(s)")


_OPERATIONS: dict[type, Any] = {LearnOp: _learn, RecommendOp: _recommend, DescribeOp: _describe, ListOp: _list}


def _example_records() -> list[dict[str, Any]]:
    code = ["Fix the bug in this Python function", "Write a SQL query joining orders and customers",
            "Refactor this Java class for clarity", "Debug the failing unit test in the parser"]  # fmt: skip
    prose = ["Write a short story about a lighthouse keeper", "Draft a blog post on remote work",
             "Compose a poem about autumn rain", "Write an essay on the history of tea"]  # fmt: skip
    records = []
    for i, text in enumerate(code + prose):
        is_code = i < len(code)
        for rule, gain in (("chain_of_thought", 0.3 if is_code else 0.05), ("role", 0.05 if is_code else 0.3)):
            records.append(
                {
                    "prompt_text": text,
                    "rule_id": rule,
                    "improvement_score": round(gain + 0.01 * i, 3),
                    "session_id": f"s{i}",
                    "domain": "code" if is_code else "writing",
                }
            )
    return records


@component(
    "ContextLearner",
    tier="tier2",
    capabilities=["context_learning", "rule_recommendation", "prompt_clustering"],
    example={"operation": "learn", "name": "demo", "records": _example_records(), "k_max": 3, "seed": 0},
    examples=[
        {"operation": "recommend", "name": "demo", "prompts": ["Fix the null pointer bug in this function"]},
        {"operation": "describe", "name": "demo"},
        {"operation": "list"},
    ],
    deterministic=False,
)
def context_learner(request: ContextLearnerInput, ctx: RunContext) -> ContextLearnerOutput:
    """Learn which rules work in which prompt context; recommend rules for new prompts with the evidence.

    ``learn`` clusters prompts (TF-IDF → SVD or interpretable numbers; k-means, k by silhouette), estimates
    each rule's improvement per cluster with empirical-Bayes shrinkage toward the rule's global mean, checks
    on held-out sessions whether the per-cluster top rule beats the overall best rule, and stores the model
    as a new version. ``recommend``, ``describe`` and ``list`` read stored models. See the module docstring.
    """
    op = request.root
    return _OPERATIONS[type(op)](op, ctx)
