"""Which clustering fits the data? k-means, Gaussian mixture, HDBSCAN and agglomerative over a grid, scored and ranked.

Every candidate (algorithm × parameters) is fitted to the whole matrix and scored by three internal indices from
scikit-learn — silhouette (higher is better), Calinski–Harabasz (higher) and Davies–Bouldin (lower) — and by
bootstrap stability: on ``n_bootstrap`` seeded subsamples of ``subsample_fraction`` of the rows (drawn without
replacement, the same subsamples for every candidate), the candidate is refitted and the adjusted Rand index between
its subsample labels and its full-data labels on those rows is averaged (higher is better).

Ranking (a weighted Borda count): among the eligible candidates each criterion ranks them 1 = best (ties share the
average rank; values equal to 10 significant digits tie, so that one partition found by two algorithms
scores alike; a criterion that could not be computed ranks last); a candidate's ``mean_rank`` is the weighted mean
of its four ranks (``weights``, default equal; stability drops out when ``n_bootstrap`` is 0). The lowest mean rank
wins; ties go to the more stable, then the higher silhouette, then the earlier candidate in the grid. Ranks are
used rather than raw values because the indices live on incomparable scales (CH is unbounded).

Noise (HDBSCAN's label −1): silhouette, Calinski–Harabasz and Davies–Bouldin are computed on the clustered points
only; the silhouette that enters the ranking is ``silhouette × (1 − noise_fraction)`` — the mean silhouette over
all rows when noise points score 0 — so leaving hard points out is not rewarded; candidates with more noise than
``max_noise_fraction`` are not eligible. In the stability ARI and the agreement with ``true_labels``, noise is one
more label.

Also home of the feature-matrix input shared by tier-2 components: ``Matrix`` (inline rows, or ``MatrixRef`` to a
2-D .npy or a CSV under data/) and :func:`load_matrix`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from scipy import stats
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, FileRef, FiniteFloat, RunContext, Seed, component
from services.framework.arrays import MatrixRef, load_numbers, read_matrix

__all__ = [
    "ClusteringOptimizerInput",
    "ClusteringOptimizerOutput",
    "Matrix",
    "MatrixRef",
    "clustering_optimizer",
    "load_matrix",
    "standardize_matrix",
]

# --------------------------------------------------------------------------- feature matrices

MAX_ROWS = 20_000
MAX_FEATURES = 1_000
MAX_CELLS = 2_000_000  # 16 MB of float64: every algorithm here holds a few copies
MAX_ABS_VALUE = 1e100

Row = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_FEATURES)]


Matrix = Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)] | MatrixRef


def load_matrix(value: list[list[float]] | MatrixRef, ctx: RunContext, *, field: str) -> np.ndarray:
    """``field`` as a finite 2-D float64 array (rows × features) within the size bounds of this module."""
    if isinstance(value, list):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except ValueError as exc:  # numpy refuses ragged rows
            raise InvalidInput(field, "rows must all have the same number of features") from exc
    else:
        arr, _ = read_matrix(value, ctx.data_dir, field=field, max_cells=MAX_CELLS)
    if arr.ndim == 1:
        arr = arr[:, None]  # a 1-D file is one feature
    if arr.ndim != 2 or arr.size == 0:
        raise InvalidInput(field, f"must be a non-empty matrix (rows × features); got shape {list(arr.shape)}")
    n, p = arr.shape
    if n > MAX_ROWS or p > MAX_FEATURES or arr.size > MAX_CELLS:
        raise InvalidInput(
            field, f"at most {MAX_ROWS:,} rows, {MAX_FEATURES:,} features and {MAX_CELLS:,} cells; got {n:,} × {p:,}"
        )
    if not np.isfinite(arr).all():
        raise InvalidInput(field, "must contain only finite numbers (no NaN or infinity)")
    if np.abs(arr).max() > MAX_ABS_VALUE:
        raise InvalidInput(field, f"values must lie within ±{MAX_ABS_VALUE:g} (squared distances would overflow)")
    return arr


def standardize_matrix(x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Columns to zero mean and unit variance (constant columns become 0), and the constant columns' indices."""
    scaler = StandardScaler().fit(x)
    constant = np.flatnonzero(scaler.var_ == 0)
    return scaler.transform(x), [int(i) for i in constant]


def load_labels(value: list[int] | FileRef, ctx: RunContext, *, field: str, n_rows: int) -> np.ndarray:
    """Integer class labels, one per row of the feature matrix."""
    if isinstance(value, list):
        labels = np.asarray(value, dtype=np.int64)
    else:
        raw = load_numbers(value, ctx.data_dir, field=field)
        if not np.all(raw == np.round(raw)):
            raise InvalidInput(field, "labels must be whole numbers")
        labels = raw.astype(np.int64)
    if labels.size != n_rows:
        raise InvalidInput(field, f"needs one label per row of features ({n_rows}); got {labels.size}")
    return labels


# --------------------------------------------------------------------------- input and output

Algorithm = Literal["kmeans", "gaussian_mixture", "hdbscan", "agglomerative"]
ALGORITHMS: tuple[Algorithm, ...] = ("kmeans", "gaussian_mixture", "hdbscan", "agglomerative")
# Agglomerative clustering holds the n(n − 1)/2 pairwise distances: 5,000 rows is 100 MB.
AGGLOMERATIVE_MAX_ROWS = 5_000
# The silhouette is O(n²); beyond this many clustered points it is computed on a seeded sample of them.
SILHOUETTE_MAX_ROWS = 5_000
# Up to this many rows the fits run single-threaded: on small data BLAS/OpenMP thread start-up and spin-waiting
# cost more than they save (20× slower on a busy 2-core machine for the mixture EM on 150 rows).
SINGLE_THREAD_MAX_ROWS = 5_000
# Bounds total fitting work: rows × candidates × (1 + bootstrap refits).
MAX_WORK = 20_000_000
MAX_CANDIDATES = 200
# Criterion values equal to this many significant digits tie in the ranking.
RANK_DIGITS = 10


class RankWeights(ComponentInput):
    """Weights of the four criteria in the mean rank (need not sum to 1)."""

    silhouette: float = Field(1.0, ge=0, le=100)
    calinski_harabasz: float = Field(1.0, ge=0, le=100)
    davies_bouldin: float = Field(1.0, ge=0, le=100)
    stability: float = Field(1.0, ge=0, le=100)


class ClusteringOptimizerInput(ComponentInput):
    """A feature matrix and the grid of clusterings to try on it."""

    features: Matrix = Field(description="rows × features, inline or a .npy/.csv under data/")
    standardize: bool = Field(True, description="scale every column to zero mean and unit variance first")
    algorithms: list[Algorithm] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description=f"algorithms to try; default all four (agglomerative only up to {AGGLOMERATIVE_MAX_ROWS:,} rows)",
    )
    k_min: int = Field(2, ge=2, le=100, description="smallest number of clusters (k-means, mixture, agglomerative)")
    k_max: int = Field(8, ge=2, le=100, description="largest number of clusters")
    linkages: list[Literal["ward", "average", "complete", "single"]] = Field(
        ["ward", "average", "complete"], min_length=1, max_length=4, description="agglomerative linkages"
    )
    covariance_types: list[Literal["full", "tied", "diag", "spherical"]] = Field(
        ["full"], min_length=1, max_length=4, description="Gaussian-mixture covariance types"
    )
    min_cluster_sizes: list[Annotated[int, Field(ge=2, le=MAX_ROWS)]] = Field(
        [5, 10, 20], min_length=1, max_length=20, description="HDBSCAN min_cluster_size values"
    )
    hdbscan_min_samples: int | None = Field(
        None, ge=1, le=1000, description="HDBSCAN min_samples (default: min_cluster_size)"
    )
    n_init: int = Field(4, ge=1, le=20, description="restarts of k-means and of the mixture EM (best kept)")
    n_bootstrap: int = Field(10, ge=0, le=100, description="subsamples for the stability score (0: skip it)")
    subsample_fraction: float = Field(0.8, ge=0.5, le=0.95, description="share of rows in each stability subsample")
    max_noise_fraction: float = Field(0.5, ge=0, le=1, description="HDBSCAN candidates with more noise are ineligible")
    weights: RankWeights = Field(default_factory=RankWeights, description="weights of the criteria in the mean rank")
    max_candidates: int = Field(100, ge=1, le=MAX_CANDIDATES, description="refuse grids larger than this")
    true_labels: Annotated[list[int], Field(max_length=MAX_ROWS)] | FileRef | None = Field(
        None, description="known classes, one per row: reports ARI and NMI of the chosen labels"
    )
    seed: Seed = 0


class CandidateScore(ComponentOutput):
    algorithm: Algorithm
    params: dict[str, int | float | str | None]
    eligible: bool
    reason: str | None = Field(description="why the candidate is not eligible, if it is not")
    n_clusters: int | None = Field(description="clusters found (noise excluded)")
    noise_fraction: float | None
    silhouette: float | None = Field(description="on the clustered points (sampled beyond the silhouette limit)")
    silhouette_adjusted: float | None = Field(description="silhouette × (1 − noise_fraction): used in the ranking")
    calinski_harabasz: float | None
    davies_bouldin: float | None
    stability: float | None = Field(description="mean ARI, subsample refit vs full-data labels on the same rows")
    stability_sd: float | None
    stability_replicates: int = Field(description="subsamples that contributed to the stability")
    mean_rank: float | None = Field(description="weighted mean of the criterion ranks (1 = best); lower wins")
    rank: int | None = Field(description="1 = chosen; None when not eligible")
    notes: list[str]


class ChosenClustering(ComponentOutput):
    algorithm: Algorithm
    params: dict[str, int | float | str | None]
    n_clusters: int
    cluster_sizes: list[int] = Field(description="rows in cluster 0, 1, …")
    noise_points: int = Field(description="rows labelled −1 (HDBSCAN noise)")
    silhouette: float | None
    calinski_harabasz: float | None
    davies_bouldin: float | None
    stability: float | None


class LabelAgreement(ComponentOutput):
    adjusted_rand_index: float
    normalized_mutual_info: float
    n_classes: int


class ClusteringOptimizerOutput(ComponentOutput):
    n_rows: int
    n_features: int
    standardized: bool
    constant_columns: list[int] = Field(description="zero-variance columns (carry no information)")
    ranking: str = Field(description="how candidates were ranked")
    chosen: ChosenClustering
    labels: list[int] = Field(description="cluster of each row (−1: noise), numbered 0, 1, … by first appearance")
    candidates: list[CandidateScore] = Field(description="the score table, in grid order")
    silhouette_rows: int = Field(description="clustered points the silhouette is computed on (at most)")
    true_label_agreement: LabelAgreement | None = Field(description="when true_labels are given; noise is a label")
    notes: list[str]


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class _Candidate:
    algorithm: Algorithm
    params: dict[str, Any]
    n_init: int

    def fit(self, x: np.ndarray, random_state: int) -> np.ndarray:
        """Labels of ``x`` (−1 for noise), renumbered 0, 1, … by first appearance."""
        p = self.params
        if self.algorithm == "kmeans":
            labels = KMeans(n_clusters=p["k"], n_init=self.n_init, random_state=random_state).fit(x).labels_
        elif self.algorithm == "gaussian_mixture":
            gm = GaussianMixture(
                n_components=p["k"], covariance_type=p["covariance_type"], n_init=self.n_init, random_state=random_state
            )
            labels = gm.fit(x).predict(x)
        elif self.algorithm == "hdbscan":
            labels = HDBSCAN(min_cluster_size=p["min_cluster_size"], min_samples=p["min_samples"], copy=True).fit(x)
            labels = labels.labels_
        else:
            labels = AgglomerativeClustering(n_clusters=p["k"], linkage=p["linkage"]).fit(x).labels_
        return _renumber(np.asarray(labels))

    def too_big_for(self, n_rows: int, n_distinct: int) -> str | None:
        """Why this candidate cannot be fitted to ``n_rows`` rows with ``n_distinct`` distinct ones, or None."""
        if "k" in self.params and self.params["k"] > n_distinct:
            return f"k = {self.params['k']} exceeds the {n_distinct} distinct rows"
        if "min_cluster_size" in self.params and self.params["min_cluster_size"] > n_rows:
            return f"min_cluster_size = {self.params['min_cluster_size']} exceeds the {n_rows} rows"
        return None


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Clusters numbered 0, 1, … in order of first appearance; noise stays −1 (deterministic output)."""
    clustered = labels >= 0
    values, first = np.unique(labels[clustered], return_index=True)
    order = np.empty(values.size, dtype=np.int64)
    order[np.argsort(first)] = np.arange(values.size)
    out = np.full(labels.shape, -1, dtype=np.int64)
    out[clustered] = order[np.searchsorted(values, labels[clustered])]
    return out


def _grid(request: ClusteringOptimizerInput, algorithms: list[Algorithm]) -> list[_Candidate]:
    ks = range(request.k_min, request.k_max + 1)
    out: list[_Candidate] = []
    for algorithm in algorithms:
        if algorithm == "kmeans":
            out += [_Candidate(algorithm, {"k": k}, request.n_init) for k in ks]
        elif algorithm == "gaussian_mixture":
            out += [
                _Candidate(algorithm, {"k": k, "covariance_type": ct}, request.n_init)
                for ct in dict.fromkeys(request.covariance_types)
                for k in ks
            ]
        elif algorithm == "hdbscan":
            out += [
                _Candidate(
                    algorithm, {"min_cluster_size": m, "min_samples": request.hdbscan_min_samples}, request.n_init
                )
                for m in dict.fromkeys(request.min_cluster_sizes)
            ]
        else:
            out += [
                _Candidate(algorithm, {"k": k, "linkage": link}, request.n_init)
                for link in dict.fromkeys(request.linkages)
                for k in ks
            ]
    return out


@dataclass
class _Subsamples:
    """The stability subsamples, shared by every candidate: row indices, a random state, distinct rows."""

    indices: list[np.ndarray] = field(default_factory=list)
    random_states: list[int] = field(default_factory=list)
    distinct: list[int] = field(default_factory=list)


@dataclass
class _Scored:
    candidate: _Candidate
    labels: np.ndarray | None = None
    reason: str | None = None
    n_clusters: int | None = None
    noise_fraction: float | None = None
    silhouette: float | None = None
    calinski_harabasz: float | None = None
    davies_bouldin: float | None = None
    stability: float | None = None
    stability_sd: float | None = None
    replicates: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return self.labels is not None and self.reason is None

    @property
    def silhouette_adjusted(self) -> float | None:
        if self.silhouette is None or self.noise_fraction is None:
            return None
        return self.silhouette * (1.0 - self.noise_fraction)


def _score(
    cand: _Candidate,
    x: np.ndarray,
    *,
    seed: int,
    n_distinct: int,
    subsamples: _Subsamples,
    max_noise: float,
) -> _Scored:
    out = _Scored(cand)
    n = x.shape[0]
    reason = cand.too_big_for(n, n_distinct)
    if reason:
        out.reason = reason
        return out
    # scikit-learn reports non-convergence and the like as warnings: they go into the candidate's notes.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labels = cand.fit(x, seed)
        except ValueError as exc:  # e.g. a mixture component with an ill-defined covariance
            out.reason = f"fit failed: {exc}"
            return out
        out.labels = labels
        clustered = labels >= 0
        n_clustered = int(clustered.sum())
        out.n_clusters = int(labels.max()) + 1 if n_clustered else 0
        out.noise_fraction = 1.0 - n_clustered / n
        if out.n_clusters < 2 or out.n_clusters > n_clustered - 1:
            out.reason = f"found {out.n_clusters} cluster(s) on {n_clustered} clustered rows; indices need 2 … n − 1"
        elif out.noise_fraction > max_noise:
            out.reason = f"noise fraction {out.noise_fraction:.3f} exceeds max_noise_fraction {max_noise}"
        else:
            _internal_indices(out, x[clustered], labels[clustered], seed)
        if subsamples.indices and out.reason is None:
            _stability(out, x, labels, subsamples)
    out.notes += list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return out


def _internal_indices(out: _Scored, x: np.ndarray, labels: np.ndarray, seed: int) -> None:
    out.calinski_harabasz = float(calinski_harabasz_score(x, labels))
    out.davies_bouldin = float(davies_bouldin_score(x, labels))
    if x.shape[0] > SILHOUETTE_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], SILHOUETTE_MAX_ROWS, replace=False))
        x, labels = x[rows], labels[rows]
        if not 2 <= np.unique(labels).size <= labels.size - 1:
            out.notes.append("silhouette not computed: its sample holds fewer than two clusters")
            return
        out.notes.append(f"silhouette on a seeded sample of {SILHOUETTE_MAX_ROWS:,} clustered rows")
    out.silhouette = float(silhouette_score(x, labels))


def _stability(out: _Scored, x: np.ndarray, labels: np.ndarray, subsamples: _Subsamples) -> None:
    aris = []
    skipped = failed = 0
    for rows, state, distinct in zip(subsamples.indices, subsamples.random_states, subsamples.distinct, strict=True):
        if out.candidate.too_big_for(rows.size, distinct):
            skipped += 1
            continue
        try:
            sub = out.candidate.fit(x[rows], state)
        except ValueError:
            failed += 1
            continue
        aris.append(adjusted_rand_score(labels[rows], sub))
    if skipped:
        out.notes.append(f"{skipped} stability subsample(s) skipped: too few distinct rows for this candidate")
    if failed:
        out.notes.append(f"{failed} stability refit(s) failed")
    out.replicates = len(aris)
    if aris:
        out.stability = float(np.mean(aris))
        out.stability_sd = float(np.std(aris, ddof=1)) if len(aris) > 1 else None


def _significant(values: np.ndarray, digits: int = RANK_DIGITS) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (NaN and 0 kept)."""
    out = values.copy()
    nonzero = np.isfinite(values) & (values != 0)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(values[nonzero]))))
    out[nonzero] = np.round(values[nonzero] * scale) / scale
    return out


def _rank(scored: list[_Scored], weights: RankWeights, use_stability: bool) -> dict[int, tuple[float, int]]:
    """Position in ``scored`` → (mean rank, final rank) for the eligible candidates."""
    eligible = [i for i, s in enumerate(scored) if s.eligible]
    if not eligible:
        return {}
    chosen = [scored[i] for i in eligible]

    def values(name: str) -> np.ndarray:
        # Candidates giving the same partition score equal up to float noise: they must tie.
        raw = [getattr(s, name) for s in chosen]
        return _significant(np.array([np.nan if v is None else v for v in raw], dtype=np.float64))

    def ranks(arr: np.ndarray, higher_is_better: bool) -> np.ndarray:
        key = -arr if higher_is_better else arr
        key = np.where(np.isnan(key), np.inf, key)  # not computed: ranks last
        return np.asarray(stats.rankdata(key, method="average"), dtype=np.float64)

    silhouette, stability = values("silhouette_adjusted"), values("stability")
    criteria = [
        (weights.silhouette, ranks(silhouette, True)),
        (weights.calinski_harabasz, ranks(values("calinski_harabasz"), True)),
        (weights.davies_bouldin, ranks(values("davies_bouldin"), False)),
    ]
    if use_stability:
        criteria.append((weights.stability, ranks(stability, True)))
    total = sum(w for w, _ in criteria)
    mean_rank = sum(w * r for w, r in criteria) / total
    tie_stability = np.where(np.isnan(stability), -np.inf, stability)
    tie_silhouette = np.where(np.isnan(silhouette), -np.inf, silhouette)
    order = np.lexsort((np.arange(len(chosen)), -tie_silhouette, -tie_stability, np.round(mean_rank, 12)))
    return {eligible[j]: (float(mean_rank[j]), position + 1) for position, j in enumerate(order.tolist())}


def _ranking_text(weights: RankWeights, use_stability: bool) -> str:
    parts = [
        f"silhouette×(1−noise) {weights.silhouette:g}",
        f"Calinski–Harabasz {weights.calinski_harabasz:g}",
        f"Davies–Bouldin {weights.davies_bouldin:g}",
    ]
    if use_stability:
        parts.append(f"bootstrap stability {weights.stability:g}")
    return (
        "weighted mean of per-criterion ranks among eligible candidates (1 = best; weights: "
        + ", ".join(parts)
        + "); lowest wins; ties → higher stability, then higher silhouette, then grid order"
    )


# --------------------------------------------------------------------------- the component


def _check(request: ClusteringOptimizerInput, x: np.ndarray, algorithms: list[Algorithm], n_distinct: int) -> None:
    n = x.shape[0]
    if n < 3:
        raise InvalidInput("features", f"needs at least 3 rows to form and score two clusters; got {n}")
    if n_distinct == 1:
        raise InvalidInput("features", "every row is identical (all columns constant): there is nothing to cluster")
    if request.k_min > request.k_max:
        raise InvalidInput("k_min", f"must be ≤ k_max ({request.k_max}); got {request.k_min}")
    if any(a != "hdbscan" for a in algorithms):
        limit = min(n - 1, n_distinct)
        if request.k_max > limit:
            raise InvalidInput(
                "k_max",
                f"must be ≤ {limit}: features has {n} rows ({n_distinct} distinct) and k clusters need more than k "
                f"rows and at least k distinct ones; got {request.k_max}",
            )
    if "agglomerative" in algorithms and n > AGGLOMERATIVE_MAX_ROWS:
        raise InvalidInput(
            "algorithms", f"agglomerative clustering is limited to {AGGLOMERATIVE_MAX_ROWS:,} rows; features has {n:,}"
        )
    weights = request.weights
    total = weights.silhouette + weights.calinski_harabasz + weights.davies_bouldin
    if total + (weights.stability if request.n_bootstrap else 0.0) <= 0:
        raise InvalidInput("weights", "at least one criterion that is computed must have a positive weight")


@component(
    "ClusteringOptimizer",
    tier="tier2",
    capabilities=["clustering", "model_selection", "cluster_validation"],
    example={
        "features": [
            [0.0, 0.1],
            [0.2, -0.1],
            [-0.1, 0.0],
            [0.1, 0.2],
            [5.0, 5.1],
            [5.2, 4.9],
            [4.9, 5.0],
            [5.1, 5.2],
            [0.0, 5.0],
            [0.2, 5.1],
            [-0.1, 4.9],
            [0.1, 5.2],
        ],
        "algorithms": ["kmeans", "gaussian_mixture", "hdbscan", "agglomerative"],
        "k_min": 2,
        "k_max": 4,
        "linkages": ["ward"],
        "min_cluster_sizes": [3],
        "n_bootstrap": 5,
        "true_labels": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
        "seed": 7,
    },
)
def clustering_optimizer(request: ClusteringOptimizerInput, ctx: RunContext) -> ClusteringOptimizerOutput:
    """Chooses a clustering (k-means, Gaussian mixture, HDBSCAN, agglomerative) by internal indices and stability.

    Fits every candidate of the grid, scores it by silhouette, Calinski–Harabasz, Davies–Bouldin and bootstrap
    stability (mean ARI of seeded subsample refits against the full-data labels), ranks the eligible candidates by
    the weighted mean of their per-criterion ranks, and returns the chosen algorithm and parameters, its labels and
    cluster sizes, the whole score table, and — given true labels — the ARI and NMI of the chosen clustering.
    HDBSCAN noise is left out of the internal indices, scores 0 in the ranked silhouette, and is a label of its own
    in the ARIs.
    """
    raw = load_matrix(request.features, ctx, field="features")
    notes: list[str] = []
    if request.standardize:
        x, constant = standardize_matrix(raw)
    else:
        x, constant = raw, [int(i) for i in np.flatnonzero(np.ptp(raw, axis=0) == 0)]
    n, p = x.shape
    n_distinct = int(np.unique(raw, axis=0).shape[0])
    if request.algorithms is None:
        algorithms = list(ALGORITHMS)
        if n > AGGLOMERATIVE_MAX_ROWS:
            algorithms.remove("agglomerative")
            notes.append(f"agglomerative skipped: limited to {AGGLOMERATIVE_MAX_ROWS:,} rows")
    else:
        algorithms = list(dict.fromkeys(request.algorithms))
    _check(request, x, algorithms, n_distinct)
    true_labels = (
        load_labels(request.true_labels, ctx, field="true_labels", n_rows=n)
        if request.true_labels is not None
        else None
    )

    grid = _grid(request, algorithms)
    if len(grid) > request.max_candidates:
        raise InvalidInput(
            "max_candidates",
            f"the grid has {len(grid)} candidates, more than {request.max_candidates}: narrow k_min/k_max, linkages, "
            f"covariance_types or min_cluster_sizes, or raise max_candidates (≤ {MAX_CANDIDATES})",
        )
    work = n * len(grid) * (1 + request.n_bootstrap)
    if work > MAX_WORK:
        raise InvalidInput(
            "n_bootstrap",
            f"rows × candidates × (1 + n_bootstrap) = {work:,} exceeds {MAX_WORK:,}: use fewer subsamples or a "
            "smaller grid",
        )

    rng = np.random.default_rng(request.seed)
    subsamples = _Subsamples()
    size = max(3, round(request.subsample_fraction * n))
    for _ in range(request.n_bootstrap):
        rows = np.sort(rng.choice(n, size=size, replace=False))
        subsamples.indices.append(rows)
        subsamples.random_states.append(int(rng.integers(2**31 - 1)))
        subsamples.distinct.append(int(np.unique(raw[rows], axis=0).shape[0]))
    fit_state = int(rng.integers(2**31 - 1))

    with threadpool_limits(limits=1 if n <= SINGLE_THREAD_MAX_ROWS else None):
        scored = [
            _score(
                cand,
                x,
                seed=fit_state,
                n_distinct=n_distinct,
                subsamples=subsamples,
                max_noise=request.max_noise_fraction,
            )
            for cand in grid
        ]
    use_stability = request.n_bootstrap > 0 and request.weights.stability > 0
    ranks = _rank(scored, request.weights, use_stability)
    if not ranks:
        reasons = "; ".join(dict.fromkeys(s.reason or "" for s in scored))
        raise InvalidInput("features", f"no candidate gave a usable clustering ({reasons})")
    best = scored[min(ranks, key=lambda i: ranks[i][1])]
    assert best.labels is not None  # eligible candidates have labels

    labels = best.labels
    agreement = None
    if true_labels is not None:
        agreement = LabelAgreement(
            adjusted_rand_index=float(adjusted_rand_score(true_labels, labels)),
            normalized_mutual_info=float(normalized_mutual_info_score(true_labels, labels)),
            n_classes=int(np.unique(true_labels).size),
        )
    if constant:
        notes.append(f"{len(constant)} constant column(s) carry no information for clustering")
    return ClusteringOptimizerOutput(
        n_rows=n,
        n_features=p,
        standardized=request.standardize,
        constant_columns=constant,
        ranking=_ranking_text(request.weights, use_stability),
        chosen=ChosenClustering(
            algorithm=best.candidate.algorithm,
            params=best.candidate.params,
            n_clusters=int(best.n_clusters or 0),
            cluster_sizes=np.bincount(labels[labels >= 0]).tolist(),
            noise_points=int((labels < 0).sum()),
            silhouette=best.silhouette,
            calinski_harabasz=best.calinski_harabasz,
            davies_bouldin=best.davies_bouldin,
            stability=best.stability,
        ),
        labels=labels.tolist(),
        candidates=[
            CandidateScore(
                algorithm=s.candidate.algorithm,
                params=s.candidate.params,
                eligible=s.eligible,
                reason=s.reason,
                n_clusters=s.n_clusters,
                noise_fraction=s.noise_fraction,
                silhouette=s.silhouette,
                silhouette_adjusted=s.silhouette_adjusted,
                calinski_harabasz=s.calinski_harabasz,
                davies_bouldin=s.davies_bouldin,
                stability=s.stability,
                stability_sd=s.stability_sd,
                stability_replicates=s.replicates,
                mean_rank=ranks[i][0] if i in ranks else None,
                rank=ranks[i][1] if i in ranks else None,
                notes=s.notes,
            )
            for i, s in enumerate(scored)
        ],
        silhouette_rows=min(n, SILHOUETTE_MAX_ROWS),
        true_label_agreement=agreement,
        notes=notes,
    )
