"""context_learner: planted rule × context effects recovered; clustering and variances against sklearn/statsmodels."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from fastapi.testclient import TestClient
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import normalize

from mlmesh.settings import Settings
from services.domain import open_store
from services.framework import RunContext
from services.tier2.context_learner import ContextLearnerInput, ContextLearnerOutput, context_learner

ROUTE = "/run/context_learner"
RULES = ("chain_of_thought", "role", "few_shot")
CODE = (
    ["Fix", "Debug", "Refactor", "Optimize", "Review"],
    ["the bug in", "the crash in", "the memory leak in", "the slow loop in", "the failing test of"],
    ["this Python function", "this SQL query", "this Java class", "the Rust parser", "the JavaScript module"],
)
WRITING = (
    ["Write", "Compose", "Draft", "Craft", "Pen"],
    ["a poem", "a short story", "an essay", "a blog post", "a sonnet"],
    ["about autumn rain", "about a lighthouse keeper", "on the history of tea", "about lost love", "on city life"],
)


def planted(n_sessions: int = 80, seed: int = 0, noise: float = 0.05) -> list[dict[str, Any]]:
    """Sessions of code or writing prompts; every rule applied once per session, assigned independently of the
    prompt. chain_of_thought adds 0.3 on code prompts, role adds 0.3 on writing prompts."""
    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_sessions):
        is_code = s % 2 == 0
        parts = CODE if is_code else WRITING
        text = " ".join(str(rng.choice(p)) for p in parts)
        for rule in RULES:
            effect = 0.3 if (is_code and rule == "chain_of_thought") or (not is_code and rule == "role") else 0.0
            records.append(
                {
                    "prompt_text": text,
                    "rule_id": rule,
                    "improvement_score": float(0.1 + effect + rng.normal(scale=noise)),
                    "session_id": f"s{s}",
                    "domain": "code" if is_code else "writing",
                }
            )
    return records


def run(ctx: RunContext, **body: Any) -> ContextLearnerOutput:
    return context_learner(ContextLearnerInput.model_validate(body), ctx)


def learn(ctx: RunContext, records: list[dict[str, Any]], **extra: Any) -> ContextLearnerOutput:
    return run(ctx, operation="learn", name="ctx", records=records, k_max=4, seed=3, **extra)


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    return RunContext(component="context_learner", settings=settings, request_id=None)


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(context_learner)


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return planted()


def test_planted_rule_by_context_effect_is_learned_recommended_and_beats_global(
    ctx: RunContext, records: list[dict[str, Any]]
) -> None:
    out = learn(ctx, records)
    assert out.version == 1 and out.features == "text"
    for cluster in out.clusters:
        majority = max(cluster.domains, key=cluster.domains.__getitem__)
        assert cluster.domains[majority] == cluster.size  # the clusters do not mix code and writing prompts
        assert cluster.best_rule == ("chain_of_thought" if majority == "code" else "role")
        best = cluster.rules[0]
        assert best.ci_low > cluster.rules[-1].ci_high  # the planted +0.3 is far outside the noise
    assert out.between_variance is not None and out.between_variance > 0
    evaluation = out.evaluation
    assert evaluation is not None
    assert evaluation.beats_global is True and evaluation.gain is not None
    assert evaluation.gain == pytest.approx(0.15, abs=0.06)  # half the held-out prompts gain 0.3
    assert evaluation.gain_ci_low is not None and evaluation.gain_ci_low > 0
    rec = run(
        ctx,
        operation="recommend",
        name="ctx",
        prompts=["Debug the memory leak in this Python function", "Compose a sonnet about autumn rain"],
        top_k=2,
    )
    assert [r.rules[0].rule_id for r in rec.recommendations] == ["chain_of_thought", "role"]
    assert all(len(r.rules) == 2 and r.rules[0].n > 0 for r in rec.recommendations)


def test_clustering_and_silhouette_equal_sklearn_on_the_same_features(
    ctx: RunContext, records: list[dict[str, Any]]
) -> None:
    out = learn(ctx, records, n_components=5)
    texts = np.array([r["prompt_text"] for r in records])
    groups = np.array([r["session_id"] for r in records])
    train, _ = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=3).split(texts, groups=groups))
    tfidf = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", stop_words="english", max_features=5000
    ).fit_transform(texts[train])
    z = normalize(TruncatedSVD(n_components=5, n_iter=7, random_state=3).fit_transform(tfidf))
    expected = {}
    for k in range(2, 5):
        km = KMeans(n_clusters=k, n_init=10, random_state=3).fit(z)
        expected[k] = (silhouette_score(z, km.labels_), km)
    assert {s.k: s.silhouette for s in out.k_scores} == pytest.approx({k: v[0] for k, v in expected.items()})
    assert out.silhouette == pytest.approx(max(v[0] for v in expected.values()))
    km = expected[out.k][1]
    assert sorted(c.size for c in out.clusters) == sorted(np.bincount(km.labels_).tolist())
    # recommend assigns a new prompt to the cluster sklearn's KMeans.predict gives on the same features.
    rec = run(ctx, operation="recommend", name="ctx", prompts=list(texts[:6]))
    expected_clusters = km.predict(normalize(_project(texts[:6], texts[train], 3)))
    assert [r.cluster for r in rec.recommendations] == expected_clusters.tolist()


def _project(new: np.ndarray, train: np.ndarray, seed: int) -> np.ndarray:
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", stop_words="english", max_features=5000
    )
    svd = TruncatedSVD(n_components=5, n_iter=7, random_state=seed).fit(vectorizer.fit_transform(train))
    return svd.transform(vectorizer.transform(new))


def test_shrinkage_and_variances_against_statsmodels(ctx: RunContext) -> None:
    records = planted(n_sessions=40, seed=5, noise=0.2)
    out = learn(ctx, records, features="numeric", prior_strength=4.0)
    # σ² is the residual mean square of the cell-means model (cluster × rule), which statsmodels' OLS gives.
    texts = np.array([r["prompt_text"] for r in records])
    groups = np.array([r["session_id"] for r in records])
    train, _ = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=3).split(texts, groups=groups))
    # Rebuild the cluster of each training row from the output: clusters are defined by the numeric centroid.
    assert out.prior_strength == 4.0
    for cluster in out.clusters:
        for effect in cluster.rules:
            w = effect.n / (effect.n + 4.0)
            assert effect.shrinkage_weight == pytest.approx(w)
            raw = effect.raw_mean if effect.raw_mean is not None else effect.rule_global_mean
            assert effect.expected_improvement == pytest.approx(
                effect.rule_global_mean + w * (raw - effect.rule_global_mean)
            )
            rule_n = sum(c.rules[[e.rule_id for e in c.rules].index(effect.rule_id)].n for c in out.clusters)
            var = out.within_variance / (effect.n + 4.0) + (1 - w) ** 2 * out.within_variance / rule_n
            half = 1.959963984540054 * math.sqrt(var)
            assert effect.ci_high - effect.ci_low == pytest.approx(2 * half)
    labels = _numeric_labels(out, [records[i]["prompt_text"] for i in train])
    frame = pd.DataFrame(
        {
            "y": [records[i]["improvement_score"] for i in train],
            "cell": [f"{c}:{records[i]['rule_id']}" for c, i in zip(labels, train, strict=True)],
        }
    )
    fit = smf.ols("y ~ C(cell)", data=frame).fit()
    assert out.within_variance == pytest.approx(fit.mse_resid, rel=1e-9)


def _numeric_labels(out: ContextLearnerOutput, texts: list[str]) -> list[int]:
    from services.text.features import NUMERIC_FEATURE_NAMES, numeric_features

    x = numeric_features(texts)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    centroids = np.array([[(c.feature_means or {})[n] for n in NUMERIC_FEATURE_NAMES] for c in out.clusters])
    centroids = (centroids - mean) / scale
    return np.linalg.norm(z[:, None] - centroids[None], axis=2).argmin(axis=1).tolist()


def test_improvement_scores_are_never_features(ctx: RunContext, records: list[dict[str, Any]]) -> None:
    rng = np.random.default_rng(9)
    shuffled = [dict(r, improvement_score=float(s)) for r, s in zip(records, rng.permutation(
        [r["improvement_score"] for r in records]), strict=True)]  # fmt: skip
    a, b = learn(ctx, records), learn(ctx, shuffled)
    assert a.k_scores == b.k_scores
    assert [(c.size, c.top_terms, c.domains) for c in a.clusters] == [
        (c.size, c.top_terms, c.domains) for c in b.clusters
    ]
    assert a.rule_global_means != b.rule_global_means


def test_same_seed_same_model_and_versions_persist(settings: Settings, records: list[dict[str, Any]]) -> None:
    first = RunContext(component="context_learner", settings=settings, request_id=None)
    a = learn(first, records)
    b = learn(first, records)
    assert (a.version, b.version) == (1, 2)
    assert a.model_dump(exclude={"version"}) == b.model_dump(exclude={"version"})
    for db in first.databases.values():
        db.close()
    # A new context (a restarted service) reads the stored versions.
    later = RunContext(component="context_learner", settings=settings, request_id=None)
    described = run(later, operation="describe", name="ctx", version=1)
    assert described.model_dump(exclude={"operation"}) == a.model_dump(exclude={"operation"})
    listed = run(later, operation="list")
    assert [(m.name, m.version) for m in listed.models] == [("ctx", 1), ("ctx", 2)]
    assert listed.models[0].gain == a.evaluation.gain  # type: ignore[union-attr]


def test_learn_from_files_under_data_equals_inline(ctx: RunContext, settings: Settings) -> None:
    records = planted(n_sessions=24, seed=2)
    folder = settings.data_dir / "sample"
    folder.mkdir(parents=True)
    prompts = {}
    with (folder / "applications.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "session_id", "rule_id", "improvement_score", "prompt_id"])
        writer.writeheader()
        for i, r in enumerate(records):
            pid = prompts.setdefault(r["prompt_text"], (f"p{len(prompts)}", r["domain"]))[0]
            writer.writerow({"id": f"a{i}", "session_id": r["session_id"], "rule_id": r["rule_id"],
                             "improvement_score": repr(r["improvement_score"]), "prompt_id": pid})  # fmt: skip
    (folder / "prompts.json").write_text(
        json.dumps([{"id": pid, "text": text, "domain": dom} for text, (pid, dom) in prompts.items()])
    )
    from_file = run(
        ctx, operation="learn", name="f", path="sample/applications.csv", prompts_path="sample/prompts.json",
        k_max=3, seed=3,
    )  # fmt: skip
    inline = run(ctx, operation="learn", name="i", records=records, k_max=3, seed=3)
    assert from_file.model_dump(exclude={"name"}) == inline.model_dump(exclude={"name"})


def test_learn_from_the_domain_store(ctx: RunContext, settings: Settings) -> None:
    records = planted(n_sessions=24, seed=4)
    store = open_store(settings)
    try:
        texts = {r["session_id"]: r for r in records}
        store.add_prompts([{"id": f"p-{s}", "text": r["prompt_text"], "domain": r["domain"], "created_at": 1.0}
                           for s, r in texts.items()])  # fmt: skip
        store.add_rules([{"id": rule, "name": rule, "category": "rewrite"} for rule in RULES])
        store.add_sessions([{"id": s, "prompt_id": f"p-{s}", "original_prompt": r["prompt_text"], "started_at": 1.0}
                            for s, r in texts.items()])  # fmt: skip
        store.add_applications(
            [
                {"id": f"a{i}", "session_id": r["session_id"], "rule_id": r["rule_id"], "before_quality": 0.5,
                 "after_quality": 0.5, "improvement_score": r["improvement_score"], "latency_ms": 1.0,
                 "applied_at": 10.0 + i, "success": True}
                for i, r in enumerate(records)
            ]
        )  # fmt: skip
    finally:
        store.close()
    from_store = run(ctx, operation="learn", name="st", source="store", k_max=3, seed=3)
    inline = run(ctx, operation="learn", name="in", records=records, k_max=3, seed=3)
    assert from_store.model_dump(exclude={"name", "note"}) == inline.model_dump(exclude={"name", "note"})
    for resource in ctx.resources.values():
        resource.close()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"operation": "learn", "name": "x"}, 422, "exactly one data source"),
        ({"operation": "learn", "name": "x", "records": [], "source": "store"}, 422, "records"),
        ({"operation": "learn", "name": "x", "source": "store", "k_min": 5, "k_max": 3}, 422, "k_min"),
        ({"operation": "learn", "name": "../x", "source": "store"}, 422, "name"),
        ({"operation": "learn", "name": "x", "path": "../etc/passwd"}, 400, "path"),
        ({"operation": "learn", "name": "x", "path": "missing.csv"}, 400, "path"),
        ({"operation": "recommend", "name": "nope", "prompts": ["hi"]}, 404, "nope"),
        ({"operation": "recommend", "name": "x", "prompts": []}, 422, "prompts"),
        ({"operation": "describe", "name": "x", "version": 0}, 422, "version"),
    ],
)
def test_bad_input_is_4xx_naming_the_problem(client: TestClient, body: dict[str, Any], status: int, field: str) -> None:
    r = client.post(ROUTE, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]


def test_too_few_sessions_or_prompts_is_422(client: TestClient) -> None:
    few = planted(n_sessions=3)
    r = client.post(ROUTE, json={"operation": "learn", "name": "x", "records": few})
    assert r.status_code == 422 and "sessions" in r.json()["detail"]
    same = [dict(r, prompt_text="Fix the bug") for r in planted(n_sessions=8)]
    r = client.post(ROUTE, json={"operation": "learn", "name": "x", "records": same})
    assert r.status_code == 422 and "distinct" in r.json()["detail"]
    stop = [dict(r, prompt_text="the and of") for r in planted(n_sessions=8)]
    r = client.post(ROUTE, json={"operation": "learn", "name": "x", "records": stop})
    assert r.status_code == 422 and "numeric" in r.json()["detail"]


def test_learn_recommend_over_http(client: TestClient) -> None:
    r = client.post(ROUTE, json={"operation": "learn", "name": "web", "records": planted(n_sessions=30), "k_max": 3})
    assert r.status_code == 200, r.text
    r = client.post(ROUTE, json={"operation": "recommend", "name": "web", "prompts": ["Fix the bug in this SQL query"]})
    assert r.status_code == 200, r.text
    assert r.json()["component_result"]["recommendations"][0]["rules"][0]["rule_id"] == "chain_of_thought"
