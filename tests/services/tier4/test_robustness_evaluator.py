"""robustness_evaluator: clean metrics against scikit-learn, perturbation curves against closed forms, brittleness."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.models.registry import clear_cache
from services.tier2.ml_model_service import MLModelServiceInput, ml_model_service
from services.tier4.robustness_evaluator import (
    RobustnessEvaluatorInput,
    RobustnessEvaluatorOutput,
    _char_delete,
    _char_swap,
    _word_dropout,
    robustness_evaluator,
)

ROUTE = "/run/robustness_evaluator"
SEED = 3


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    clear_cache()
    return RunContext(component="robustness_evaluator", settings=settings, request_id=None)


def evaluate(ctx: RunContext, **body: Any) -> RobustnessEvaluatorOutput:
    return robustness_evaluator(RobustnessEvaluatorInput.model_validate(body), ctx)


def linear_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three features on different scales, a logistic class boundary."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * np.array([1.0, 5.0, 0.2]) + np.array([0.0, 10.0, -1.0])
    logit = 1.2 * x[:, 0] - 0.3 * (x[:, 1] - 10) + 4.0 * (x[:, 2] + 1)
    return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)


def reference_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[Pipeline, np.ndarray, np.ndarray]:
    """The same model and split the component uses (StratifiedShuffleSplit, test 0.3), fitted by sklearn."""
    train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=0.3, random_state=SEED).split(x, y))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=SEED))
    return model.fit(x[train], y[train]), train, test


def curve(out: RobustnessEvaluatorOutput, kind: str) -> dict[float, Any]:
    return {p.level: p for c in out.curves if c.perturbation == kind for p in c.points}


# --------------------------------------------------------------------------- known answers


def test_level_zero_is_the_clean_accuracy_and_noise_matches_the_gaussian_closed_form(ctx: RunContext) -> None:
    x, y = linear_data(n=6000)  # 1800 evaluation rows × 20 draws: Monte Carlo error ≈ 0.0025
    out = evaluate(
        ctx,
        model={"source": "train", "model_type": "logistic", "features": x.tolist(), "target": y.tolist()},
        perturbations=["gaussian_noise", "feature_dropout"],
        noise_levels=[0.5, 1.5],
        dropout_levels=[0.3, 0.7],
        repeats=20,
        seed=SEED,
    )
    model, train, test = reference_logistic(x, y)
    clean = accuracy_score(y[test], model.predict(x[test]))
    assert out.clean_metric == clean and out.metric == "accuracy" and out.n_eval == test.size
    assert out.n_train == train.size
    for c in out.curves:
        assert c.points[0].level == 0.0 and c.points[0].metric == clean and c.points[0].agreement == 1.0

    # Linear score f(x) = w·z + b on standardised z; noise ε_j ~ N(0, (ℓσ_j)²) with σ_j the scaler's scale
    # moves f by N(0, ℓ²‖w‖²), so P(correct) = Φ(±f(x) / (ℓ‖w‖)).
    f = model.decision_function(x[test])
    w = model[-1].coef_[0]
    sign = np.where(y[test] == model.classes_[1], 1.0, -1.0)
    noise = curve(out, "gaussian_noise")
    for level in (0.5, 1.5):
        p = norm.cdf(sign * f / (level * np.linalg.norm(w)))
        se = np.sqrt((p * (1 - p)).sum()) / test.size / np.sqrt(20)
        assert noise[level].metric == pytest.approx(p.mean(), abs=4 * se + 1e-9)

    # Dropout replaces each value by its training mean (z_j = 0) with probability q: enumerate the 2³ masks.
    z = model[0].transform(x[test])
    dropout = curve(out, "feature_dropout")
    for q in (0.3, 0.7):
        expected = np.zeros(test.size)
        for mask in itertools.product([0, 1], repeat=3):
            m = np.array(mask, dtype=bool)
            weight = q ** m.sum() * (1 - q) ** (~m).sum()
            score = np.where(m, 0.0, z) @ w + model[-1].intercept_[0]
            expected += weight * ((score > 0) == (sign > 0))
        se = np.sqrt((expected * (1 - expected)).sum()) / test.size / np.sqrt(20)
        assert dropout[q].metric == pytest.approx(expected.mean(), abs=4 * se + 1e-9)
        assert dropout[q].metric_sd is not None


def test_adversarial_accuracy_matches_the_exact_linf_attack_on_a_linear_model(ctx: RunContext) -> None:
    x, y = linear_data(seed=1)
    budgets = [0.05, 0.2, 0.5]
    out = evaluate(
        ctx,
        model={"source": "train", "model_type": "logistic", "features": x.tolist(), "target": y.tolist()},
        perturbations=["adversarial"],
        adversarial_budgets=budgets,
        seed=SEED,
    )
    model, _, test = reference_logistic(x, y)
    # In standardised units a budget ε moves f by at most ε‖w‖₁ (at the vertex −sign(f)·sign(w)·ε): a correctly
    # classified row can be flipped exactly when |f(x)| < ε‖w‖₁.
    f = model.decision_function(x[test])
    w1 = np.abs(model[-1].coef_[0]).sum()
    correct = model.predict(x[test]) == y[test]
    adversarial = curve(out, "adversarial")
    previous = out.clean_metric
    for eps in budgets:
        exact = float(np.mean(correct & (np.abs(f) >= eps * w1)))
        point = adversarial[eps]
        assert point.metric >= exact - 1e-12  # no attack beats the optimum: the budget was respected
        assert point.metric <= exact + 1.0 / test.size  # and the search finds (nearly) every flippable row
        assert point.metric <= previous  # a larger box contains the smaller one's optimum
        assert point.attack_success_rate == pytest.approx(1 - point.metric / out.clean_metric, abs=1e-12)
        previous = point.metric


def test_registry_model_is_evaluated_on_the_given_rows(ctx: RunContext) -> None:
    x, y = linear_data(n=200, seed=2)
    groups = np.repeat(np.arange(50), 4)
    trained = ml_model_service(
        MLModelServiceInput.model_validate(
            {
                "operation": "train",
                "name": "clf",
                "model_type": "logistic",
                "features": x[:150].tolist(),
                "target": y[:150].tolist(),
                "groups": groups[:150].tolist(),
                "feature_names": ["a", "b", "c"],
                "promote_to": "production",
                "cv_folds": 0,
                "seed": SEED,
            }
        ),
        ctx,
    )
    assert trained.model is not None
    out = evaluate(
        ctx,
        model={
            "source": "registry",
            "name": "clf",
            "alias": "production",
            "features": x[150:][:, [2, 0, 1]].tolist(),
            "feature_names": ["c", "a", "b"],
            "target": y[150:].tolist(),
        },
        noise_levels=[0.5],
        dropout_levels=[0.5],
        adversarial_budgets=[0.1],
        adversarial_queries=16,
        repeats=2,
        seed=SEED,
    )
    train, _ = next(
        GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=SEED).split(x[:150], y[:150], groups[:150])
    )
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED))
    ref.fit(x[:150][train], y[:150][train])
    assert out.source == "registry" and out.model.startswith("clf:1")
    assert out.clean_metric == accuracy_score(y[150:], ref.predict(x[150:]))
    assert out.n_train is None and out.n_eval == 50
    assert [c.perturbation for c in out.curves] == ["gaussian_noise", "feature_dropout", "adversarial"]


def test_registry_regression_model_uses_r2(ctx: RunContext) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 2))
    y = x @ np.array([1.0, -0.5]) + rng.normal(scale=0.3, size=80)
    ml_model_service(
        MLModelServiceInput.model_validate(
            {
                "operation": "train",
                "name": "reg",
                "features": x[:60].tolist(),
                "target": y[:60].tolist(),
                "cv_folds": 0,
                "seed": SEED,
            }
        ),
        ctx,
    )
    out = evaluate(
        ctx,
        model={"source": "registry", "name": "reg", "features": x[60:].tolist(), "target": y[60:].tolist()},
        noise_levels=[1.0],
        perturbations=["gaussian_noise"],
        repeats=2,
    )
    train, _ = next(ShuffleSplit(n_splits=1, test_size=0.2, random_state=SEED).split(x[:60]))
    train = np.sort(train)  # the service keeps the rows in their original order
    ref = make_pipeline(StandardScaler(), Ridge()).fit(x[:60][train], y[:60][train])
    assert out.metric == "r2" and out.task == "regression"
    assert out.clean_metric == pytest.approx(r2_score(y[60:], ref.predict(x[60:])), rel=1e-12)
    assert curve(out, "gaussian_noise")[1.0].metric < out.clean_metric


def test_text_model_clean_accuracy_and_total_deletion(ctx: RunContext) -> None:
    rng = np.random.default_rng(0)
    topics = {
        "summary": ["summarise", "summary", "brief", "overview", "condense", "recap"],
        "translation": ["translate", "french", "german", "language", "spanish", "translation"],
        "code": ["python", "function", "bug", "compile", "refactor", "script"],
    }
    filler = ["please", "the", "this", "text", "for", "me", "now", "a", "of"]
    texts, labels = [], []
    for i in range(90):
        label = list(topics)[i % 3]
        words = list(rng.choice(topics[label], 3)) + list(rng.choice(filler, 4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    out = evaluate(
        ctx,
        model={"source": "text", "texts": texts, "labels": labels},
        text_levels=[0.1, 1.0],
        repeats=2,
        seed=SEED,
    )
    y = np.array(labels)
    train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=0.3, random_state=SEED).split(texts, y))
    ref = make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=1000, random_state=SEED))
    ref.fit([texts[i] for i in train], y[train])
    test_texts = [texts[i] for i in test]
    assert out.clean_metric == accuracy_score(y[test], ref.predict(test_texts))
    assert out.clean_metric > 0.9
    # Level 1 deletes every character (or word): the model sees only empty strings.
    emptied = accuracy_score(y[test], ref.predict([""] * test.size))
    assert curve(out, "char_delete")[1.0].metric == pytest.approx(emptied)
    assert curve(out, "word_dropout")[1.0].metric == pytest.approx(emptied)
    assert [c.perturbation for c in out.curves] == ["char_swap", "char_delete", "word_dropout"]


# --------------------------------------------------------------------------- brittle vs robust


def test_one_nearest_neighbour_is_less_robust_than_regularised_logistic(ctx: RunContext) -> None:
    # Two informative features, eight noise features, 20 % label noise: 1-NN memorises the noise.
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.integers(0, 2, n)
    x = np.hstack([rng.normal(size=(n, 2)) + (2 * truth[:, None] - 1) * 1.5, rng.normal(size=(n, 8))])
    y = np.where(rng.random(n) < 0.2, 1 - truth, truth)
    scores = {}
    for model_type, params in (("knn", {"n_neighbors": 1}), ("logistic", {"C": 0.1})):
        out = evaluate(
            ctx,
            model={
                "source": "train",
                "model_type": model_type,
                "params": params,
                "features": x.tolist(),
                "target": y.tolist(),
            },
            repeats=2,
            seed=0,
        )
        assert out.robustness_score is not None
        scores[model_type] = out
    brittle, robust = scores["knn"], scores["logistic"]
    assert brittle.robustness_score < robust.robustness_score - 0.05
    adv_brittle, adv_robust = brittle.curves[2], robust.curves[2]
    assert adv_brittle.retention is not None and adv_robust.retention is not None
    assert adv_brittle.retention < adv_robust.retention


# --------------------------------------------------------------------------- reproducibility and errors


def test_same_seed_same_result_and_seed_matters(ctx: RunContext) -> None:
    x, y = linear_data(n=120, seed=5)
    body = {
        "model": {
            "source": "train",
            "model_type": "decision_tree",
            "params": {"max_depth": 4},
            "features": x.tolist(),
            "target": y.tolist(),
        },
        "adversarial_queries": 10,
        "repeats": 2,
    }
    first = evaluate(ctx, **body, seed=1).model_dump()
    assert evaluate(ctx, **body, seed=1).model_dump() == first
    assert evaluate(ctx, **body, seed=2).model_dump() != first


def test_http_errors(client_for: Callable[..., TestClient]) -> None:
    clear_cache()
    client = client_for(robustness_evaluator)
    unknown = {"model": {"source": "registry", "name": "nope", "features": [[1.0]], "target": [1.0]}}
    r = client.post(ROUTE, json=unknown)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    x, y = linear_data(n=40)
    tabular = {"source": "train", "model_type": "logistic", "features": x.tolist(), "target": y.tolist()}
    r = client.post(ROUTE, json={"model": tabular, "perturbations": ["char_swap"]})
    assert r.status_code == 422 and "perturbations" in r.json()["detail"]
    r = client.post(ROUTE, json={"model": tabular | {"target": y[:-1].tolist()}})
    assert r.status_code == 422 and "model.target" in r.json()["detail"]
    r = client.post(ROUTE, json={"model": tabular, "noise_levels": [11]})
    assert r.status_code == 422 and "noise_levels" in r.json()["detail"]
    r = client.post(ROUTE, json={"model": {"source": "text", "texts": ["a b"] * 10, "labels": ["x"] * 10}})
    assert r.status_code == 422 and "model.labels" in r.json()["detail"]
    r = client.post(ROUTE, json={"model": tabular | {"features": {"path": "../x.npy"}}})
    assert r.status_code == 400 and "model.features.path" in r.json()["detail"]


def test_too_many_attack_queries_is_422(ctx: RunContext) -> None:
    x, y = linear_data(n=3000)
    with pytest.raises(InvalidInput, match="adversarial_queries"):
        evaluate(
            ctx,
            model={"source": "train", "model_type": "logistic", "features": x.tolist(), "target": y.tolist()},
            adversarial_queries=1000,
            adversarial_budgets=[0.1] * 10,
        )


# --------------------------------------------------------------------------- text perturbation invariants


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=80), level=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_text_perturbations_keep_their_promises(text: str, level: float, seed: int) -> None:
    swapped = _char_swap(text, level, np.random.default_rng(seed))
    assert sorted(swapped) == sorted(text)  # a permutation of the characters
    deleted = _char_delete(text, level, np.random.default_rng(seed))
    it = iter(text)
    assert all(c in it for c in deleted)  # a subsequence
    dropped = _word_dropout(text, level, np.random.default_rng(seed)).split()
    words = iter(text.split())
    assert all(w in words for w in dropped)
    if level == 0:
        assert swapped == text and deleted == text and dropped == text.split()
