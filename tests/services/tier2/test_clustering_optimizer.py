"""Known answers on scikit-learn's bundled iris and wine data and on planted blobs; metrics against sklearn.metrics;
the ranking against the score table; noise handling; determinism; degenerate input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.preprocessing import StandardScaler

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.clustering_optimizer import (
    ClusteringOptimizerInput,
    ClusteringOptimizerOutput,
    clustering_optimizer,
)
from tests.conftest import make_settings

NAME = "clustering_optimizer"
# A small grid touching every algorithm: keeps the file fast.
GRID: dict[str, Any] = {
    "algorithms": ["kmeans", "gaussian_mixture", "hdbscan", "agglomerative"],
    "k_min": 2,
    "k_max": 4,
    "linkages": ["ward", "average"],
    "min_cluster_sizes": [10],
    "n_init": 2,
    "n_bootstrap": 4,
}


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("co")), request_id=None)


def run(ctx: RunContext, features: Any, **options: Any) -> ClusteringOptimizerOutput:
    if isinstance(features, np.ndarray):
        features = features.tolist()
    for key, value in options.items():
        if isinstance(value, np.ndarray):
            options[key] = value.tolist()
    return clustering_optimizer(ClusteringOptimizerInput.model_validate({"features": features, **options}), ctx)


@pytest.fixture(scope="module")
def iris(module_ctx: RunContext) -> tuple[np.ndarray, np.ndarray, ClusteringOptimizerOutput]:
    x, y = load_iris(return_X_y=True)
    return x, y, run(module_ctx, x, standardize=False, true_labels=y, seed=0, **GRID)


@pytest.fixture(scope="module")
def wine(module_ctx: RunContext) -> tuple[np.ndarray, np.ndarray, ClusteringOptimizerOutput]:
    x, y = load_wine(return_X_y=True)
    return x, y, run(module_ctx, x, standardize=True, true_labels=y, seed=0, **GRID)


# --------------------------------------------------------------------------- known answers


def test_iris_chosen_clustering_agrees_with_the_species(iris: Any) -> None:
    _, y, out = iris
    # Internal indices on iris favour two clusters (setosa vs the rest); the best 2-cluster split has ARI ≈ 0.57
    # against the three species and k-means with k = 3 about 0.73, so the floor sits a little below 0.57.
    assert out.true_label_agreement is not None
    assert out.true_label_agreement.adjusted_rand_index >= 0.50
    assert out.true_label_agreement.adjusted_rand_index == pytest.approx(adjusted_rand_score(y, out.labels))
    assert out.true_label_agreement.normalized_mutual_info == pytest.approx(normalized_mutual_info_score(y, out.labels))
    assert out.true_label_agreement.n_classes == 3


def test_wine_standardised_recovers_the_cultivars(wine: Any) -> None:
    _, y, out = wine
    # Standardised wine: k-means and the mixture with k = 3 reach ARI ≈ 0.9.
    assert out.chosen.n_clusters == 3
    assert out.true_label_agreement is not None
    assert out.true_label_agreement.adjusted_rand_index >= 0.80
    assert out.true_label_agreement.adjusted_rand_index == pytest.approx(adjusted_rand_score(y, out.labels))


@pytest.mark.parametrize("dataset", ["iris", "wine"])
def test_chosen_metrics_equal_sklearn_on_the_chosen_labels(dataset: str, request: pytest.FixtureRequest) -> None:
    x, _, out = request.getfixturevalue(dataset)
    if out.standardized:
        x = StandardScaler().fit_transform(x)
    labels = np.asarray(out.labels)
    keep = labels >= 0
    assert out.chosen.silhouette == pytest.approx(silhouette_score(x[keep], labels[keep]), rel=1e-10)
    assert out.chosen.calinski_harabasz == pytest.approx(calinski_harabasz_score(x[keep], labels[keep]), rel=1e-10)
    assert out.chosen.davies_bouldin == pytest.approx(davies_bouldin_score(x[keep], labels[keep]), rel=1e-10)
    assert out.chosen.cluster_sizes == np.bincount(labels[keep]).tolist()
    assert sum(out.chosen.cluster_sizes) + out.chosen.noise_points == x.shape[0]


def test_planted_blobs_are_recovered_exactly(module_ctx: RunContext) -> None:
    x, y = make_blobs(n_samples=240, centers=4, cluster_std=0.6, random_state=3)
    out = run(module_ctx, x, true_labels=y, **GRID)
    assert out.chosen.n_clusters == 4
    assert adjusted_rand_score(y, out.labels) == pytest.approx(1.0)
    assert out.true_label_agreement is not None and out.true_label_agreement.adjusted_rand_index == pytest.approx(1.0)
    # Well-separated clusters are found again on every subsample.
    assert out.chosen.stability == pytest.approx(1.0)


def test_ranking_is_the_weighted_mean_of_criterion_ranks(wine: Any) -> None:
    _, _, out = wine
    eligible = [c for c in out.candidates if c.eligible]
    assert len(eligible) >= 5
    # Values equal to 10 significant digits tie (one partition found by two algorithms scores alike).
    table = np.array(
        [
            [float(f"{v:.10g}") for v in (c.silhouette_adjusted, c.calinski_harabasz, c.davies_bouldin, c.stability)]
            for c in eligible
        ]
    )
    ranks = np.column_stack(
        [
            stats.rankdata(-table[:, 0]),
            stats.rankdata(-table[:, 1]),
            stats.rankdata(table[:, 2]),
            stats.rankdata(-table[:, 3]),
        ]
    )
    np.testing.assert_allclose([c.mean_rank for c in eligible], ranks.mean(axis=1), rtol=1e-12)
    winner = next(c for c in eligible if c.rank == 1)
    assert winner.mean_rank == pytest.approx(ranks.mean(axis=1).min())
    assert (winner.algorithm, winner.params) == (out.chosen.algorithm, out.chosen.params)
    assert sorted(c.rank for c in eligible) == list(range(1, len(eligible) + 1))
    assert all(c.rank is None and c.mean_rank is None for c in out.candidates if not c.eligible)


def test_weights_change_the_choice(module_ctx: RunContext) -> None:
    x, _ = load_iris(return_X_y=True)
    grid = {"algorithms": ["kmeans"], "k_min": 2, "k_max": 5, "n_bootstrap": 0, "standardize": False}
    # Calinski–Harabasz alone prefers k = 3 on iris (561.6 vs 513.9 at k = 2); the silhouette alone k = 2.
    only_ch = run(module_ctx, x, weights={"silhouette": 0, "davies_bouldin": 0, "calinski_harabasz": 1}, **grid)
    only_sil = run(module_ctx, x, weights={"silhouette": 1, "davies_bouldin": 0, "calinski_harabasz": 0}, **grid)
    assert only_ch.chosen.params == {"k": 3}
    assert only_sil.chosen.params == {"k": 2}
    assert "Calinski–Harabasz 1" in only_ch.ranking and "bootstrap stability" not in only_ch.ranking


def blobs_with_outliers() -> np.ndarray:
    centres, _ = make_blobs(n_samples=150, centers=[[0, 0], [8, 8], [0, 8]], cluster_std=0.5, random_state=1)
    outliers = np.random.default_rng(5).uniform(-6, 14, size=(12, 2))
    return np.vstack([centres, outliers])


def test_hdbscan_noise_is_left_out_of_the_indices(module_ctx: RunContext) -> None:
    x = blobs_with_outliers()
    out = run(module_ctx, x, algorithms=["hdbscan"], min_cluster_sizes=[10], n_bootstrap=3, standardize=False)
    labels = np.asarray(out.labels)
    keep = labels >= 0
    assert out.chosen.noise_points == int((~keep).sum()) > 0
    assert out.chosen.n_clusters == 3
    cand = out.candidates[0]
    assert cand.noise_fraction == pytest.approx((~keep).mean())
    assert cand.silhouette == pytest.approx(silhouette_score(x[keep], labels[keep]))
    assert cand.silhouette_adjusted == pytest.approx(cand.silhouette * (1 - cand.noise_fraction))
    assert cand.calinski_harabasz == pytest.approx(calinski_harabasz_score(x[keep], labels[keep]))
    assert cand.stability is not None and cand.stability_replicates == 3


def test_too_much_noise_makes_a_candidate_ineligible(module_ctx: RunContext) -> None:
    options = {"algorithms": ["hdbscan", "kmeans"], "min_cluster_sizes": [10], "k_min": 3, "k_max": 3}
    out = run(module_ctx, blobs_with_outliers(), max_noise_fraction=0.01, n_bootstrap=2, standardize=False, **options)
    hdb = next(c for c in out.candidates if c.algorithm == "hdbscan")
    assert hdb.noise_fraction is not None and hdb.noise_fraction > 0.01
    assert not hdb.eligible and hdb.rank is None and "noise" in (hdb.reason or "")
    assert out.chosen.algorithm == "kmeans"


def test_same_seed_same_result(module_ctx: RunContext) -> None:
    x, _ = make_blobs(n_samples=90, centers=3, cluster_std=2.5, random_state=0)
    options = {"algorithms": ["kmeans", "gaussian_mixture"], "k_min": 2, "k_max": 3, "n_init": 2, "n_bootstrap": 3}
    options["seed"] = 11
    first = run(module_ctx, x, **options).model_dump()
    again = run(module_ctx, x, **options).model_dump()
    assert first == again


# --------------------------------------------------------------------------- files and HTTP


def test_file_inputs_give_the_same_answer_as_inline(ctx: RunContext) -> None:
    x, y = load_iris(return_X_y=True)
    np.save(ctx.data_dir / "iris.npy", x)
    header = "sepal_length,sepal_width,petal_length,petal_width"
    np.savetxt(ctx.data_dir / "iris.csv", x, delimiter=",", header=header, comments="")
    np.save(ctx.data_dir / "species.npy", y.astype(float))
    options = {"algorithms": ["kmeans"], "k_min": 2, "k_max": 3, "n_bootstrap": 2, "standardize": False}
    inline = run(ctx, x[:, 2:], true_labels=y, **options)
    from_npy = run(ctx, {"path": "iris.npy", "columns": [2, 3]}, true_labels={"path": "species.npy"}, **options)
    from_csv = run(ctx, {"path": "iris.csv", "columns": ["petal_length", "petal_width"]}, true_labels=y, **options)
    assert inline.model_dump() == from_npy.model_dump() == from_csv.model_dump()
    with pytest.raises(BadRequest, match=r"features\.path"):
        run(ctx, {"path": "../outside.npy"}, **options)
    with pytest.raises(InvalidInput, match=r"features\.columns"):
        run(ctx, {"path": "iris.csv", "columns": ["nope"]}, **options)


def test_http_envelope_and_field_named_problems(client_for: Any) -> None:
    client = client_for(clustering_optimizer)
    x, _ = make_blobs(n_samples=30, centers=[[0, 0], [6, 6]], cluster_std=0.5, random_state=4)
    body = {"features": x.tolist(), "algorithms": ["kmeans"], "k_min": 2, "k_max": 3, "n_bootstrap": 2}
    r = client.post(f"/run/{NAME}", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["component_result"]
    assert result["chosen"]["n_clusters"] == 2 and len(result["labels"]) == 30

    for bad, field in [
        ({**body, "features": [[1.0, 2.0]]}, "features"),  # one row
        ({**body, "features": [[1.0, 2.0]] * 10}, "features"),  # constant features
        ({**body, "features": x[:3].tolist()}, "k_max"),  # fewer rows than k
        ({**body, "k_min": 3, "k_max": 2}, "k_min"),
        ({**body, "features": [[1.0, 2.0], [1.0], [3.0, 4.0]]}, "features"),  # ragged
        ({**body, "true_labels": [0, 1]}, "true_labels"),
        ({**body, "algorithms": None, "k_max": 20, "max_candidates": 10}, "max_candidates"),
        ({**body, "n_bootstrap": 1000}, "n_bootstrap"),
        (
            {**body, "weights": {"silhouette": 0, "calinski_harabasz": 0, "davies_bouldin": 0}, "n_bootstrap": 0},
            "weights",
        ),
    ]:
        r = client.post(f"/run/{NAME}", json=bad)
        assert r.status_code == 422, (field, r.text)
        assert field in r.json()["detail"], (field, r.json()["detail"])


# --------------------------------------------------------------------------- invariants


@hypothesis_settings(max_examples=12, deadline=None)
@given(
    data=arrays(
        np.float64,
        st.tuples(st.integers(6, 25), st.integers(1, 3)),
        elements=st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32),
    ),
    seed=st.integers(0, 2**16),
)
def test_outputs_are_consistent_or_a_named_422(module_ctx: RunContext, data: np.ndarray, seed: int) -> None:
    options = {"algorithms": ["kmeans", "agglomerative"], "linkages": ["ward"], "k_min": 2, "k_max": 3}
    try:
        out = run(module_ctx, data, n_bootstrap=2, seed=seed, **options)
    except InvalidInput as exc:
        assert exc.field in {"features", "k_max"}
        return
    labels = np.asarray(out.labels)
    assert labels.size == data.shape[0]
    assert sum(out.chosen.cluster_sizes) == data.shape[0] and out.chosen.noise_points == 0
    assert set(labels.tolist()) == set(range(out.chosen.n_clusters))
    for cand in out.candidates:
        if cand.silhouette is not None:
            assert -1 <= cand.silhouette <= 1 and cand.davies_bouldin is not None and cand.davies_bouldin >= 0
        if cand.stability is not None:
            assert -1 <= cand.stability <= 1
