"""Prompt text features: TF-IDF, hashed n-grams, a latent-semantic embedding and interpretable numbers.

Pure, deterministic functions over lists of prompt texts, built on scikit-learn:

* :func:`tfidf_vectorizer` / :func:`fit_tfidf` — word 1–2-gram TF-IDF with sublinear tf (``1 + log tf``),
  accents stripped, English stop words removed, rows L2-normalised. :func:`tfidf_state` and
  :func:`tfidf_from_state` turn a fitted vectorizer into JSON-native data and back (vocabulary and idf), so a
  component can keep it in its SQLite state instead of a pickle.
* :func:`hashing_vectorizer` / :func:`hashed_features` — the same n-grams hashed into a fixed number of
  columns (``HashingVectorizer``): no vocabulary to fit or store, for unbounded vocabularies and streams.
* :func:`lsa_embedding` — TF-IDF → truncated SVD → L2 normalisation (latent semantic analysis), the usual
  space for k-means on short texts; :func:`project_lsa` applies a stored one to new texts.
* :func:`numeric_features` — a few interpretable numbers per prompt (:data:`NUMERIC_FEATURE_NAMES`).
* :func:`top_terms` — the terms with the highest mean TF-IDF weight over a group of rows.
* :func:`text_features` — the structure features stored with every rule application (:data:`TEXT_FEATURES`:
  length, words, markdown headers, lists, code fences, XML tags and a 0..1 vagueness); the sample data plants
  its effects on them and the training-data loader offers them as learning features, so their definition is
  fixed with the stored data.

Sentence embeddings are deliberately not offered: they would need downloaded model weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.preprocessing import normalize

__all__ = [
    "IMPERATIVE_VERBS",
    "NUMERIC_FEATURE_NAMES",
    "TEXT_FEATURES",
    "LsaModel",
    "distinct_rows",
    "fit_tfidf",
    "hashed_features",
    "hashing_vectorizer",
    "lsa_embedding",
    "numeric_features",
    "project_lsa",
    "text_features",
    "text_stats",
    "tfidf_from_state",
    "tfidf_state",
    "tfidf_vectorizer",
    "top_terms",
]

NGRAM_RANGE = (1, 2)
# One definition of a token for every vectorizer here: words of two or more letters/digits.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # noqa: S105 (a regular expression, not a secret)

NUMERIC_FEATURE_NAMES = (
    "n_words",
    "n_sentences",
    "n_question_marks",
    "has_code_block",
    "has_list",
    "digit_share",
    "imperative_start",
)

# Verbs that open an instruction ("Write …", "Summarise …"); the first word of a prompt in its base form.
IMPERATIVE_VERBS = frozenset(
    """
    add analyse analyze answer apply build calculate check choose classify compare compose compute convert
    create debug decide define describe design detect determine draft edit evaluate explain extract find fix
    format generate give help identify implement improve list make map name optimise optimize outline plan
    predict prepare prove provide refactor rephrase rewrite review revise run show simplify solve sort
    suggest summarise summarize tell test translate update use validate verify write
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

_WORD = re.compile(r"\b\w+\b", re.UNICODE)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
# A sentence: a run of text ended by . ! ? (one or more) or by the end of the text.
_SENTENCE = re.compile(r"[^.!?\s][^.!?]*(?:[.!?]+|$)")
_CODE_FENCE = re.compile(r"(^|\n)\s*(```|~~~)")
_INDENTED_CODE = re.compile(r"(^|\n)(?: {4}|\t)\S")
_LIST_ITEM = re.compile(r"(^|\n)\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")


# --------------------------------------------------------------------------- TF-IDF and hashing


def tfidf_vectorizer(
    *, max_features: int | None = 5000, min_df: int | float = 1, max_df: int | float = 1.0, stop_words: bool = True
) -> TfidfVectorizer:
    """An unfitted TF-IDF vectorizer: word 1–2-grams, sublinear tf, English stop words, L2-normalised rows."""
    return TfidfVectorizer(
        ngram_range=NGRAM_RANGE,
        sublinear_tf=True,
        strip_accents="unicode",
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        stop_words="english" if stop_words else None,
        max_features=max_features,
        min_df=min_df,
        max_df=max_df,
        dtype=np.float64,
    )


def fit_tfidf(texts: Sequence[str], **options: Any) -> tuple[TfidfVectorizer, sparse.csr_matrix]:
    """Fit :func:`tfidf_vectorizer` (``options`` are its keywords) on ``texts``; returns it and the matrix.

    Raises:
        ValueError: when no text contains a token (scikit-learn's "empty vocabulary").
    """
    vectorizer = tfidf_vectorizer(**options)
    matrix = vectorizer.fit_transform(list(texts))
    return vectorizer, sparse.csr_matrix(matrix)


def tfidf_state(vectorizer: TfidfVectorizer) -> dict[str, Any]:
    """A fitted vectorizer as JSON-native data: its terms in column order, idf weights and options."""
    terms = vectorizer.get_feature_names_out().tolist()
    return {
        "terms": terms,
        "idf": [float(v) for v in vectorizer.idf_],
        "stop_words": vectorizer.stop_words is not None,
    }


def tfidf_from_state(state: dict[str, Any]) -> TfidfVectorizer:
    """The vectorizer :func:`tfidf_state` described, ready to ``transform`` (same columns, same weights)."""
    vectorizer = tfidf_vectorizer(max_features=None, stop_words=bool(state["stop_words"]))
    vectorizer.set_params(vocabulary={term: i for i, term in enumerate(state["terms"])})
    # The documented idf_ setter (scikit-learn ≥ 1.0) fixes the vocabulary and the weights without refitting.
    vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float64)
    return vectorizer


def hashing_vectorizer(*, n_features: int = 2**18) -> HashingVectorizer:
    """Word 1–2-grams hashed into ``n_features`` columns (no sign flipping, L2-normalised rows)."""
    return HashingVectorizer(
        ngram_range=NGRAM_RANGE,
        strip_accents="unicode",
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        stop_words="english",
        n_features=n_features,
        alternate_sign=False,
        norm="l2",
        dtype=np.float64,
    )


def hashed_features(texts: Sequence[str], *, n_features: int = 2**18) -> sparse.csr_matrix:
    """``texts`` through :func:`hashing_vectorizer`: stateless, so any two calls agree column for column."""
    return sparse.csr_matrix(hashing_vectorizer(n_features=n_features).transform(list(texts)))


# --------------------------------------------------------------------------- latent semantic analysis


@dataclass(frozen=True)
class LsaModel:
    """A fitted TF-IDF → SVD → L2 pipeline; ``components`` is None when the vocabulary was too small for SVD."""

    vectorizer: TfidfVectorizer
    components: np.ndarray | None  # (n_components, n_terms)
    explained_variance_ratio: float | None


def lsa_embedding(
    texts: Sequence[str], *, n_components: int, seed: int, max_features: int | None = 5000
) -> tuple[LsaModel, sparse.csr_matrix, np.ndarray]:
    """Fit latent semantic analysis on ``texts``: returns the model, the TF-IDF matrix and the embedding.

    The embedding is ``normalize(TruncatedSVD(n_components, random_state=seed).fit_transform(tfidf))``. When
    the vocabulary has no more terms than ``n_components`` (or there are too few texts) SVD would not reduce
    anything, so the L2-normalised TF-IDF rows themselves are the embedding (``components`` is None).
    """
    vectorizer, tfidf = fit_tfidf(texts, max_features=max_features)
    n_terms = tfidf.shape[1]
    k = min(n_components, n_terms - 1, tfidf.shape[0] - 1)
    # Identical rows leave no variance for SVD to explain (its explained-variance ratio would be 0/0).
    spread = float((tfidf.multiply(tfidf).mean(axis=0) - np.square(tfidf.mean(axis=0))).sum())
    if k < 2 or spread <= 1e-12:
        return LsaModel(vectorizer, None, None), tfidf, normalize(tfidf.toarray())
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    reduced = svd.fit_transform(tfidf)
    model = LsaModel(vectorizer, svd.components_.copy(), float(svd.explained_variance_ratio_.sum()))
    return model, tfidf, normalize(reduced)


def distinct_rows(z: np.ndarray, decimals: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first index of each distinct row, each row's distinct-row number, counts), rows rounded to ``decimals``.

    Repeated prompts are one point: clustering them as copies lets silhouette reward splitting off every
    group of identical texts (their within-cluster distance is zero). Cluster the distinct rows weighted by
    their counts instead.
    """
    _, first, inverse, counts = np.unique(
        np.round(z, decimals), axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    return first, inverse.ravel(), counts


def project_lsa(model: LsaModel, texts: Sequence[str]) -> tuple[sparse.csr_matrix, np.ndarray]:
    """New texts in a fitted LSA space: (TF-IDF rows, L2-normalised embedding)."""
    tfidf = sparse.csr_matrix(model.vectorizer.transform(list(texts)))
    if model.components is None:
        return tfidf, normalize(tfidf.toarray())
    return tfidf, normalize(np.asarray(tfidf @ model.components.T))


def top_terms(tfidf: sparse.spmatrix, rows: np.ndarray, terms: Sequence[str], k: int = 8) -> list[str]:
    """The ``k`` terms with the highest mean TF-IDF weight over ``rows`` (indices or a boolean mask).

    Terms with zero weight are never listed; ties are broken by term order, so the result is deterministic.
    """
    selected = sparse.csr_matrix(tfidf)[rows]
    if selected.shape[0] == 0:
        return []
    mean = np.asarray(selected.mean(axis=0)).ravel()
    order = np.lexsort((np.arange(mean.size), -mean))[:k]
    return [str(terms[i]) for i in order if mean[i] > 0]


# --------------------------------------------------------------------------- interpretable numbers


def text_stats(text: str) -> dict[str, float]:
    """The :data:`NUMERIC_FEATURE_NAMES` of one prompt.

    * ``n_words`` — word tokens (``\\w+``); ``n_sentences`` — runs ended by ``.``, ``!``, ``?`` or the end;
      ``n_question_marks`` — ``?`` characters.
    * ``has_code_block`` — 1 if a fenced (```` ``` ```` or ``~~~``) or 4-space/tab-indented code line is present.
    * ``has_list`` — 1 if a line starts with a bullet (``-``, ``*``, ``+``, ``•``) or ``1.`` / ``1)``.
    * ``digit_share`` — digits over non-space characters (0 for an empty text).
    * ``imperative_start`` — 1 if the first word is one of :data:`IMPERATIVE_VERBS` (case-insensitive).
    """
    non_space = sum(1 for ch in text if not ch.isspace())
    digits = sum(1 for ch in text if ch.isdigit())
    first = _FIRST_WORD.search(text)
    return {
        "n_words": float(len(_WORD.findall(text))),
        "n_sentences": float(len(_SENTENCE.findall(text))),
        "n_question_marks": float(text.count("?")),
        "has_code_block": float(bool(_CODE_FENCE.search(text) or _INDENTED_CODE.search(text))),
        "has_list": float(bool(_LIST_ITEM.search(text))),
        "digit_share": digits / non_space if non_space else 0.0,
        "imperative_start": float(first is not None and first.group(0).lower() in IMPERATIVE_VERBS),
    }


def numeric_features(texts: Sequence[str]) -> np.ndarray:
    """:func:`text_stats` of every text as a float64 matrix, columns in :data:`NUMERIC_FEATURE_NAMES` order."""
    out = np.empty((len(texts), len(NUMERIC_FEATURE_NAMES)), dtype=np.float64)
    for i, text in enumerate(texts):
        stats = text_stats(text)
        out[i] = [stats[name] for name in NUMERIC_FEATURE_NAMES]
    return out


# --- the structure features stored with rule applications ---------------------------------------------

TEXT_FEATURES = ("prompt_length", "word_count", "has_headers", "has_list", "has_code", "has_xml", "vagueness")

_STORED_HEADER = re.compile(r"^\s{0,3}#{1,6}\s", re.MULTILINE)
_STORED_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_STORED_XML = re.compile(r"<([A-Za-z][\w-]*)>.*?</\1>", re.DOTALL)


def text_features(text: str) -> dict[str, float]:
    """Length, words, structure flags (markdown headers, lists, code fences, XML tags) and a 0..1 vagueness.

    Vagueness is 1 for a one-word prompt and falls with the log of the word count to 0.25 at about 60 words;
    each kind of structure present lowers it by 0.1 (clipped to [0, 1]).
    """
    words = len(text.split())
    has_headers = float(bool(_STORED_HEADER.search(text)))
    has_list = float(bool(_STORED_LIST.search(text)))
    has_code = float("```" in text)
    has_xml = float(bool(_STORED_XML.search(text)))
    brevity = min(1.0, max(0.0, 1.0 - math.log(words) / math.log(60))) if words else 1.0
    structure = (has_headers + has_list + has_code + has_xml) / 4
    vagueness = round(max(0.0, min(1.0, 0.25 + 0.75 * brevity - 0.4 * structure)), 6)
    return {
        "prompt_length": float(len(text)),
        "word_count": float(words),
        "has_headers": has_headers,
        "has_list": has_list,
        "has_code": has_code,
        "has_xml": has_xml,
        "vagueness": vagueness,
    }
