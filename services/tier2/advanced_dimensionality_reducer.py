"""Dimensionality reduction: PCA, truncated SVD, FastICA, LDA, t-SNE (UMAP when installed), chosen automatically.

Two ways to choose:

* ``selection="explained_variance"`` (variance-ordered linear methods: PCA, truncated SVD): for each method the
  smallest number of components whose cumulative explained-variance ratio reaches ``target_variance``; the method
  needing the fewest components wins (ties: the larger cumulative ratio, then the order of ``methods``).
* ``selection="trustworthiness"``: every method embeds into ``n_components`` dimensions (default 2) and the one
  with the highest trustworthiness (scikit-learn's ``trustworthiness``: how well the embedding's nearest
  neighbours were neighbours in the input, 1 = perfect) wins (ties: the order of ``methods``).

Quality figures for every candidate: explained-variance ratios (PCA: of the centred data; truncated SVD: variance of
each projected column over the total variance, as scikit-learn's ``TruncatedSVD`` defines it; LDA: share of the
between-class discriminant variance), trustworthiness, and the reconstruction error where an inverse map exists
(PCA, SVD, ICA): the mean squared error per matrix element, ‖X − X̂‖²_F / (n·p), in the units of the input (after
standardising when asked). Truncated SVD is the exact SVD of the uncentred matrix (numpy's LAPACK), the
deterministic equivalent of ``TruncatedSVD(algorithm="arpack")``; component signs follow scikit-learn's rule (the
largest absolute loading of each component is positive).

The embedding comes back inline when small, else as ``embedding.npy`` in the run's outputs.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import Field
from sklearn.decomposition import PCA, FastICA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.manifold import TSNE, trustworthiness
from threadpoolctl import threadpool_limits

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, FileRef, RunContext, Seed, component
from services.tier2.clustering_optimizer import MAX_ROWS, Matrix, load_labels, load_matrix, standardize_matrix

__all__ = [
    "AdvancedDimensionalityReducerInput",
    "AdvancedDimensionalityReducerOutput",
    "advanced_dimensionality_reducer",
    "umap_available",
]

Method = Literal["pca", "truncated_svd", "ica", "lda", "tsne", "umap"]
VARIANCE_METHODS: tuple[Method, ...] = ("pca", "truncated_svd")
# trustworthiness() holds an n × n distance matrix: beyond this many rows it runs on a seeded sample of rows.
TRUSTWORTHINESS_MAX_ROWS = 3_000
TSNE_MAX_ROWS = 5_000
INLINE_AUTO_VALUES = 20_000  # "auto": inline up to this many numbers, else a .npy file
INLINE_MAX_VALUES = 200_000  # "inline": never more than this in a JSON body
SINGLE_THREAD_MAX_ROWS = 5_000  # small fits are faster without BLAS/OpenMP threads (see clustering_optimizer)
_TOLERANCE = 1e-9  # a cumulative ratio within this of the target reaches it (float sums of ratios)


def umap_available() -> bool:
    """Whether the optional ``umap-learn`` package can be imported."""
    return importlib.util.find_spec("umap") is not None


class AdvancedDimensionalityReducerInput(ComponentInput):
    """A feature matrix, the methods to consider and how to choose among them."""

    features: Matrix = Field(description="rows × features, inline or a .npy/.csv under data/")
    labels: Annotated[list[int], Field(max_length=MAX_ROWS)] | FileRef | None = Field(
        None, description="class of each row; needed by LDA (supervised)"
    )
    methods: list[Method] | None = Field(
        None,
        min_length=1,
        max_length=6,
        description="candidates; default: pca and truncated_svd for explained_variance; pca, ica, tsne (and lda "
        "with labels, umap when installed) for trustworthiness",
    )
    selection: Literal["explained_variance", "trustworthiness"] = Field(
        "explained_variance", description="how the method (and, for explained_variance, the dimension) is chosen"
    )
    target_variance: float = Field(0.9, gt=0, le=1, description="explained_variance: cumulative ratio to reach")
    n_components: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="trustworthiness: embedding dimension (default 2); explained_variance chooses it",
    )
    standardize: bool = Field(False, description="scale every column to zero mean and unit variance first")
    n_neighbors: int = Field(5, ge=1, le=100, description="neighbours in the trustworthiness")
    perplexity: float = Field(30.0, ge=2, le=100, description="t-SNE perplexity (must be below the row count)")
    tsne_max_iter: int = Field(1000, ge=250, le=5000, description="t-SNE optimisation iterations")
    ica_max_iter: int = Field(500, ge=50, le=5000, description="FastICA iterations")
    embedding_output: Literal["auto", "inline", "file"] = Field(
        "auto", description=f"auto: inline up to {INLINE_AUTO_VALUES:,} numbers, else outputs/…/embedding.npy"
    )
    seed: Seed = 0


class ReductionCandidate(ComponentOutput):
    method: Method
    n_components: int
    selected: bool
    error: str | None = Field(description="why the method gave no usable embedding, if it did not")
    explained_variance_ratio: list[float] | None = Field(description="per component; None where undefined")
    cumulative_explained_variance: float | None
    reached_target: bool | None = Field(description="explained_variance: whether target_variance was reached")
    trustworthiness: float | None
    reconstruction_error: float | None = Field(description="‖X − X̂‖²_F / (n·p); None without an inverse map")
    notes: list[str]


class AdvancedDimensionalityReducerOutput(ComponentOutput):
    n_rows: int
    n_features: int
    standardized: bool
    constant_columns: list[int]
    selection: Literal["explained_variance", "trustworthiness"]
    rule: str = Field(description="how the method was chosen")
    chosen_method: Method
    n_components: int
    embedding: list[list[float]] | None = Field(description="rows × n_components, when returned inline")
    embedding_file: str | None = Field(description="outputs/… path of embedding.npy, when written to a file")
    embedding_shape: list[int]
    explained_variance_ratio: list[float] | None
    trustworthiness: float | None
    reconstruction_error: float | None
    candidates: list[ReductionCandidate]
    trustworthiness_rows: int = Field(description="rows the trustworthiness is computed on")
    n_neighbors: int
    umap_available: bool
    notes: list[str]


@dataclass
class _Fit:
    method: Method
    n_components: int
    embedding: np.ndarray | None = None
    error: str | None = None
    ratios: np.ndarray | None = None
    reached: bool | None = None
    trust: float | None = None
    reconstruction_error: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cumulative(self) -> float | None:
        return None if self.ratios is None else float(self.ratios.sum())


def _mse(x: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean((x - approx) ** 2))


def _svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All right singular vectors of the uncentred ``x`` (sign-fixed) and their explained-variance ratios."""
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    # scikit-learn's svd_flip(u_based_decision=False): the largest absolute loading of each component is positive.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    projected = x @ vt.T
    return vt, projected.var(axis=0) / x.var(axis=0).sum()


def _smallest_reaching(ratios: np.ndarray, target: float) -> tuple[int, bool]:
    cumulative = np.cumsum(ratios)
    hits = np.flatnonzero(cumulative >= target - _TOLERANCE)
    return (int(hits[0]) + 1, True) if hits.size else (ratios.size, False)


def _fit_variance_method(method: Method, x: np.ndarray, k: int | None, target: float, seed: int) -> _Fit:
    """PCA or truncated SVD; ``k`` None: the smallest dimension reaching ``target``."""
    if method == "pca":
        pca = PCA(n_components=None, random_state=seed).fit(x)
        ratios, components, offset = pca.explained_variance_ratio_, pca.components_, pca.mean_
    else:
        components, ratios = _svd(x)
        offset = np.zeros(x.shape[1])
    reached = None
    if k is None:
        k, reached = _smallest_reaching(ratios, target)
    embedding = (x - offset) @ components[:k].T
    fit = _Fit(method, k, embedding=embedding, ratios=ratios[:k], reached=reached)
    fit.reconstruction_error = _mse(x, embedding @ components[:k] + offset)
    return fit


def _fit_other(
    method: Method, x: np.ndarray, k: int, labels: np.ndarray | None, request: AdvancedDimensionalityReducerInput
) -> _Fit:
    fit = _Fit(method, k)
    if method == "ica":
        ica = FastICA(n_components=k, max_iter=request.ica_max_iter, random_state=request.seed)
        fit.embedding = ica.fit_transform(x)
        if np.isfinite(fit.embedding).all():
            fit.reconstruction_error = _mse(x, ica.inverse_transform(fit.embedding))
    elif method == "lda":
        lda = LinearDiscriminantAnalysis(n_components=k).fit(x, labels)
        fit.embedding = lda.transform(x)
        fit.ratios = lda.explained_variance_ratio_[:k]
        fit.notes.append("explained variance: share of the between-class discriminant variance")
    elif method == "tsne":
        tsne = TSNE(
            n_components=k,
            perplexity=request.perplexity,
            max_iter=request.tsne_max_iter,
            init="pca",
            learning_rate="auto",
            random_state=request.seed,
        )
        fit.embedding = tsne.fit_transform(x)
        fit.notes.append(f"t-SNE KL divergence {float(tsne.kl_divergence_):.4g}")
    else:
        umap = importlib.import_module("umap")
        reducer = umap.UMAP(n_components=k, n_neighbors=min(15, x.shape[0] - 1), random_state=request.seed)
        fit.embedding = np.asarray(reducer.fit_transform(x), dtype=np.float64)
    return fit


def _resolve_methods(
    request: AdvancedDimensionalityReducerInput, n: int, n_classes: int, notes: list[str]
) -> list[Method]:
    has_labels = n_classes > 0
    if request.selection == "explained_variance":
        methods = list(dict.fromkeys(request.methods or VARIANCE_METHODS))
        other = [m for m in methods if m not in VARIANCE_METHODS]
        if other:
            raise InvalidInput(
                "methods",
                f"{other} have no variance ordering; explained_variance chooses among pca and truncated_svd "
                "(use selection='trustworthiness' for the others)",
            )
        if request.n_components is not None:
            raise InvalidInput(
                "n_components",
                "leave unset with selection='explained_variance' (the dimension is chosen from target_variance), "
                "or use selection='trustworthiness' for a fixed dimension",
            )
        return methods
    if request.methods is None:
        methods: list[Method] = ["pca", "ica"]
        if n > TSNE_MAX_ROWS:
            notes.append(f"tsne skipped: limited to {TSNE_MAX_ROWS:,} rows")
        elif request.perplexity >= n:
            notes.append(f"tsne skipped: perplexity {request.perplexity:g} is not below the {n} rows")
        else:
            methods.append("tsne")
        k = request.n_components or 2
        if has_labels and k <= n_classes - 1:
            methods.append("lda")
        elif has_labels:
            notes.append(f"lda skipped: {n_classes} classes give at most {n_classes - 1} discriminant component(s)")
        if umap_available():
            methods.append("umap")
        return methods
    methods = list(dict.fromkeys(request.methods))
    if "umap" in methods and not umap_available():
        raise InvalidInput("methods", "umap is not installed on this service (pip install umap-learn); choose another")
    if "lda" in methods and not has_labels:
        raise InvalidInput("labels", "LDA is supervised: give one class label per row")
    if "tsne" in methods and n > TSNE_MAX_ROWS:
        raise InvalidInput("methods", f"tsne is limited to {TSNE_MAX_ROWS:,} rows; features has {n:,}")
    return methods


def _check_dimension(
    method: Method, k: int, n: int, p: int, n_classes: int, request: AdvancedDimensionalityReducerInput
) -> None:
    limits = {
        "pca": (min(n, p), "min(rows, features)"),
        "truncated_svd": (min(n, p), "min(rows, features)"),
        "ica": (min(n, p), "min(rows, features)"),
        "lda": (min(n_classes - 1, p), "min(classes − 1, features)"),
        "tsne": (3, "3 (Barnes–Hut t-SNE)"),
        "umap": (n - 2, "rows − 2"),
    }
    limit, what = limits[method]
    if k > limit:
        raise InvalidInput("n_components", f"{method} allows at most {what} = {limit} components; got {k}")
    if method == "tsne" and request.perplexity >= n:
        raise InvalidInput("perplexity", f"must be below the number of rows ({n}); got {request.perplexity:g}")


@component(
    "AdvancedDimensionalityReducer",
    tier="tier2",
    capabilities=["dimensionality_reduction", "embedding", "feature_extraction"],
    example={
        "features": [
            [2.5, 2.4, 0.5, 1.0],
            [0.5, 0.7, 1.9, 0.2],
            [2.2, 2.9, 0.4, 1.1],
            [1.9, 2.2, 0.8, 0.9],
            [3.1, 3.0, 0.2, 1.3],
            [2.3, 2.7, 0.6, 1.0],
            [2.0, 1.6, 1.1, 0.7],
            [1.0, 1.1, 1.6, 0.4],
            [1.5, 1.6, 1.3, 0.6],
            [1.1, 0.9, 1.7, 0.3],
            [2.8, 2.6, 0.3, 1.2],
            [0.7, 0.9, 1.8, 0.2],
        ],
        "selection": "explained_variance",
        "methods": ["pca", "truncated_svd"],
        "target_variance": 0.95,
        "n_neighbors": 3,
        "seed": 3,
    },
)
def advanced_dimensionality_reducer(
    request: AdvancedDimensionalityReducerInput, ctx: RunContext
) -> AdvancedDimensionalityReducerOutput:
    """Reduces a feature matrix with PCA, truncated SVD, ICA, LDA, t-SNE or UMAP, chosen automatically.

    By explained variance (the smallest PCA/SVD dimension reaching the target cumulative ratio) or by
    trustworthiness (the method whose embedding best keeps the input's nearest neighbours). Returns the embedding
    (inline or as a .npy file), explained-variance ratios, trustworthiness and reconstruction error of every
    candidate, and whether UMAP is available.
    """
    raw = load_matrix(request.features, ctx, field="features")
    n, p = raw.shape
    if n < 3:
        raise InvalidInput("features", f"needs at least 3 rows; got {n}")
    if request.standardize:
        x, constant = standardize_matrix(raw)
    else:
        x, constant = raw, [int(i) for i in np.flatnonzero(np.ptp(raw, axis=0) == 0)]
    if len(constant) == p:
        raise InvalidInput("features", "every column is constant: there is no variance to reduce")
    notes: list[str] = []
    labels = load_labels(request.labels, ctx, field="labels", n_rows=n) if request.labels is not None else None
    n_classes = int(np.unique(labels).size) if labels is not None else 0
    if labels is not None and not 2 <= n_classes < n:
        raise InvalidInput("labels", f"LDA needs at least 2 classes and more rows than classes; got {n_classes}")
    methods = _resolve_methods(request, n, n_classes, notes)
    if labels is not None and "lda" not in methods:
        notes.append("labels unused: only LDA is supervised")
    k = request.n_components
    if request.selection == "trustworthiness":
        k = k or 2
        for method in methods:
            _check_dimension(method, k, n, p, n_classes, request)
    trust_rows = min(n, TRUSTWORTHINESS_MAX_ROWS)
    if request.n_neighbors >= trust_rows / 2:
        raise InvalidInput(
            "n_neighbors",
            f"must be below half the rows used for trustworthiness ({trust_rows}); got {request.n_neighbors}",
        )
    rng = np.random.default_rng(request.seed)
    rows = np.sort(rng.choice(n, trust_rows, replace=False)) if trust_rows < n else np.arange(n)
    if trust_rows < n:
        notes.append(f"trustworthiness on a seeded sample of {trust_rows:,} rows")

    fits: list[_Fit] = []
    with threadpool_limits(limits=1 if n <= SINGLE_THREAD_MAX_ROWS else None):
        for method in methods:
            # scikit-learn reports non-convergence, collinearity and the like as warnings: they become notes.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if method in VARIANCE_METHODS:
                    fit = _fit_variance_method(method, x, k, request.target_variance, request.seed)
                else:
                    assert k is not None  # trustworthiness selection always has a dimension
                    fit = _fit_other(method, x, k, labels, request)
                if fit.embedding is not None and not np.isfinite(fit.embedding).all():
                    fit.error = "the embedding is not finite (the data may have fewer independent directions than k)"
                    fit.embedding = None
                if fit.embedding is not None:
                    fit.trust = float(trustworthiness(x[rows], fit.embedding[rows], n_neighbors=request.n_neighbors))
            fit.notes += list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
            fits.append(fit)

    usable = [i for i, f in enumerate(fits) if f.embedding is not None]
    if not usable:
        raise InvalidInput("features", "no method gave a finite embedding: " + "; ".join(f.error or "" for f in fits))
    if request.selection == "explained_variance":
        best = min(usable, key=lambda i: (fits[i].n_components, -(fits[i].cumulative or 0.0), i))
        rule = (
            "smallest number of components whose cumulative explained-variance ratio reaches "
            f"{request.target_variance:g}; ties → larger cumulative ratio, then the order of methods"
        )
    else:
        best = max(usable, key=lambda i: (fits[i].trust if fits[i].trust is not None else -1.0, -i))
        rule = f"highest trustworthiness ({request.n_neighbors} neighbours) at {k} components; ties → order of methods"
    chosen = fits[best]
    embedding = chosen.embedding
    assert embedding is not None

    values = int(embedding.size)
    inline = request.embedding_output == "inline" or (
        request.embedding_output == "auto" and values <= INLINE_AUTO_VALUES
    )
    if request.embedding_output == "inline" and values > INLINE_MAX_VALUES:
        raise InvalidInput(
            "embedding_output", f"the embedding has {values:,} numbers, over the inline limit {INLINE_MAX_VALUES:,}"
        )
    embedding_file = None
    if not inline:
        buffer = io.BytesIO()
        np.save(buffer, embedding, allow_pickle=False)
        ctx.write_output("embedding.npy", buffer.getvalue())
        embedding_file = ctx.output_files[-1]
    if constant:
        notes.append(f"{len(constant)} constant column(s) carry no variance")

    def ratios(f: _Fit) -> list[float] | None:
        return None if f.ratios is None else f.ratios.tolist()

    return AdvancedDimensionalityReducerOutput(
        n_rows=n,
        n_features=p,
        standardized=request.standardize,
        constant_columns=constant,
        selection=request.selection,
        rule=rule,
        chosen_method=chosen.method,
        n_components=chosen.n_components,
        embedding=embedding.tolist() if inline else None,
        embedding_file=embedding_file,
        embedding_shape=list(embedding.shape),
        explained_variance_ratio=ratios(chosen),
        trustworthiness=chosen.trust,
        reconstruction_error=chosen.reconstruction_error,
        candidates=[
            ReductionCandidate(
                method=f.method,
                n_components=f.n_components,
                selected=i == best,
                error=f.error,
                explained_variance_ratio=ratios(f),
                cumulative_explained_variance=f.cumulative,
                reached_target=f.reached,
                trustworthiness=f.trust,
                reconstruction_error=f.reconstruction_error,
                notes=f.notes,
            )
            for i, f in enumerate(fits)
        ],
        trustworthiness_rows=trust_rows,
        n_neighbors=request.n_neighbors,
        umap_available=umap_available(),
        notes=notes,
    )
