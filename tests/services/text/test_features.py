"""services.text.features: TF-IDF by hand, hashing, LSA against scikit-learn, interpretable numbers by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

from services.text.features import (
    NUMERIC_FEATURE_NAMES,
    fit_tfidf,
    hashed_features,
    lsa_embedding,
    numeric_features,
    project_lsa,
    text_stats,
    tfidf_from_state,
    tfidf_state,
    top_terms,
)

CORPUS = [
    "Write a Python function that sorts a list of numbers",
    "Fix the bug in this Python function",
    "Compose a poem about autumn rain and falling leaves",
    "Write a short story about a lighthouse keeper",
    "Explain the SQL query that joins orders and customers",
    "Summarise the article about rain forests",
]


def test_tfidf_equals_a_hand_computation() -> None:
    # Two documents; stop words removed ("the"), unigrams and bigrams, sublinear tf, smoothed idf, L2 rows.
    docs = ["rain rain cloud", "cloud sun"]
    vectorizer, matrix = fit_tfidf(docs)
    terms = vectorizer.get_feature_names_out().tolist()
    assert terms == ["cloud", "cloud sun", "rain", "rain cloud", "rain rain", "sun"]
    idf = {t: math.log((1 + 2) / (1 + df)) + 1 for t, df in zip(terms, [2, 1, 1, 1, 1, 1], strict=True)}
    tf0 = {"cloud": 1, "rain": 2, "rain cloud": 1, "rain rain": 1}
    row0 = np.array([(1 + math.log(tf0[t])) * idf[t] if t in tf0 else 0.0 for t in terms])
    row0 /= np.linalg.norm(row0)
    row1 = np.array([idf[t] if t in ("cloud", "cloud sun", "sun") else 0.0 for t in terms])
    row1 /= np.linalg.norm(row1)
    np.testing.assert_allclose(matrix.toarray(), np.vstack([row0, row1]), rtol=1e-12)


def test_tfidf_state_round_trip_transforms_identically() -> None:
    vectorizer, matrix = fit_tfidf(CORPUS)
    state = tfidf_state(vectorizer)
    rebuilt = tfidf_from_state(state)
    new = ["Fix the Python sorting bug", "A poem about rain"]
    np.testing.assert_allclose(rebuilt.transform(CORPUS).toarray(), matrix.toarray(), rtol=1e-12)  # fit_transform
    np.testing.assert_array_equal(rebuilt.transform(new).toarray(), vectorizer.transform(new).toarray())
    assert all(isinstance(v, float) for v in state["idf"])


def test_hashing_is_stateless_and_equals_sklearn() -> None:
    reference = HashingVectorizer(
        ngram_range=(1, 2),
        strip_accents="unicode",
        stop_words="english",
        n_features=1024,
        alternate_sign=False,
        norm="l2",
    )
    got = hashed_features(CORPUS, n_features=1024)
    assert got.shape == (len(CORPUS), 1024)
    np.testing.assert_allclose(got.toarray(), reference.transform(CORPUS).toarray())
    # Any subset hashes to the same rows: there is no vocabulary.
    np.testing.assert_array_equal(hashed_features(CORPUS[2:4], n_features=1024).toarray(), got.toarray()[2:4])


def test_lsa_embedding_equals_sklearn_pipeline_and_projects_consistently() -> None:
    model, tfidf, z = lsa_embedding(CORPUS * 2, n_components=3, seed=4)
    svd = TruncatedSVD(n_components=3, algorithm="randomized", n_iter=7, random_state=4)
    expected = normalize(svd.fit_transform(tfidf))
    np.testing.assert_allclose(z, expected, atol=1e-10)
    assert model.components is not None and model.components.shape == (3, tfidf.shape[1])
    assert model.explained_variance_ratio == pytest.approx(svd.explained_variance_ratio_.sum())
    _, projected = project_lsa(model, CORPUS * 2)
    np.testing.assert_allclose(projected, z, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0)


def test_lsa_falls_back_to_tfidf_when_the_vocabulary_is_tiny() -> None:
    model, tfidf, z = lsa_embedding(["rain", "sun", "rain"], n_components=5, seed=0)
    assert model.components is None
    np.testing.assert_allclose(z, normalize(tfidf.toarray()))


def test_empty_vocabulary_raises_value_error() -> None:
    with pytest.raises(ValueError):
        fit_tfidf(["the a of", "and"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Write code:\n```\nx = 1\n```\n- first\n- second\nWhat now? 12 apples.",
            dict(
                n_words=10, n_sentences=2, n_question_marks=1, has_code_block=1, has_list=1,
                digit_share=3 / 49, imperative_start=1,
            ),
        ),
        (
            "Why is the sky blue? And why is it dark at night?",
            dict(
                n_words=12, n_sentences=2, n_question_marks=2, has_code_block=0, has_list=0,
                digit_share=0.0, imperative_start=0,
            ),
        ),
        (
            "1. Summarise the text\n2) List three points",
            dict(
                n_words=8, n_sentences=2, n_question_marks=0, has_code_block=0, has_list=1,
                digit_share=2 / 35, imperative_start=1,
            ),
        ),
        (
            "Create a SQL query that joins orders & customers; return totals",
            dict(
                n_words=10, n_sentences=1, n_question_marks=0, has_code_block=0, has_list=0,
                digit_share=0.0, imperative_start=1,
            ),
        ),
        ("", dict(n_words=0, n_sentences=0, n_question_marks=0, has_code_block=0, has_list=0, digit_share=0.0,
                  imperative_start=0)),
    ],
)  # fmt: skip
def test_text_stats_by_hand(text: str, expected: dict[str, float]) -> None:
    assert text_stats(text) == pytest.approx(expected)


def test_numeric_features_columns_follow_the_names() -> None:
    x = numeric_features(CORPUS)
    assert x.shape == (len(CORPUS), len(NUMERIC_FEATURE_NAMES))
    for i, text in enumerate(CORPUS):
        assert x[i].tolist() == [text_stats(text)[name] for name in NUMERIC_FEATURE_NAMES]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5))
def test_numeric_features_are_finite_and_deterministic(texts: list[str]) -> None:
    x = numeric_features(texts)
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, numeric_features(texts))
    assert ((x[:, 5] >= 0) & (x[:, 5] <= 1)).all()


def test_top_terms_rank_by_mean_weight() -> None:
    vectorizer, matrix = fit_tfidf(CORPUS)
    terms = vectorizer.get_feature_names_out()
    rows = np.array([0, 1])
    got = top_terms(matrix, rows, terms, k=3)
    mean = np.asarray(matrix[rows].mean(axis=0)).ravel()
    assert got == [terms[i] for i in np.argsort(-mean, kind="stable")[:3]]
    assert "python" in got
    assert top_terms(matrix, np.array([], dtype=int), terms) == []
