"""Known answers against scikit-learn (PCA, TruncatedSVD, FastICA, LDA, trustworthiness) on its bundled digits and
iris data; the automatic choice; the embedding file; degenerate input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits, load_iris
from sklearn.decomposition import PCA, FastICA, TruncatedSVD
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.manifold import trustworthiness
from sklearn.preprocessing import StandardScaler

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.advanced_dimensionality_reducer import (
    AdvancedDimensionalityReducerInput,
    AdvancedDimensionalityReducerOutput,
    advanced_dimensionality_reducer,
)
from tests.conftest import make_settings

NAME = "advanced_dimensionality_reducer"


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


@pytest.fixture(scope="module")
def module_ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("adr")), request_id=None)


def run(ctx: RunContext, features: Any, **options: Any) -> AdvancedDimensionalityReducerOutput:
    if isinstance(features, np.ndarray):
        features = features.tolist()
    if isinstance(options.get("labels"), np.ndarray):
        options["labels"] = options["labels"].tolist()
    body = {"features": features, **options}
    return advanced_dimensionality_reducer(AdvancedDimensionalityReducerInput.model_validate(body), ctx)


def assert_equal_up_to_sign(ours: np.ndarray, ref: np.ndarray, *, atol: float) -> None:
    """Columns equal up to a sign flip each (PCA/SVD/ICA/LDA directions are defined up to sign)."""
    assert ours.shape == ref.shape
    signs = np.sign(np.sum(ours * ref, axis=0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours * signs, ref, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.asarray(load_digits().data, dtype=np.float64)


@pytest.fixture(scope="module")
def digits_auto(module_ctx: RunContext, digits: np.ndarray) -> AdvancedDimensionalityReducerOutput:
    return run(module_ctx, digits, selection="explained_variance", target_variance=0.9, methods=["pca"])


# --------------------------------------------------------------------------- PCA and SVD on digits


def test_pca_on_digits_equals_sklearn(module_ctx: RunContext, digits: np.ndarray, digits_auto: Any) -> None:
    out = digits_auto
    ref = PCA(n_components=out.n_components).fit(digits)
    # 1797 × 21 numbers: over the inline limit, so the embedding is a .npy file in the run's outputs.
    assert out.embedding is None and out.embedding_file is not None and out.embedding_file.endswith("embedding.npy")
    assert out.embedding_file in module_ctx.output_files
    path = module_ctx.settings.outputs_dir.parent / out.embedding_file
    embedding = np.load(path, allow_pickle=False)
    assert list(embedding.shape) == out.embedding_shape == [1797, out.n_components]
    assert_equal_up_to_sign(embedding, ref.transform(digits), atol=1e-8)
    np.testing.assert_allclose(out.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10)
    approx = ref.inverse_transform(ref.transform(digits))
    assert out.reconstruction_error == pytest.approx(np.mean((digits - approx) ** 2), rel=1e-8)
    expected_trust = trustworthiness(digits, ref.transform(digits), n_neighbors=5)
    assert out.trustworthiness == pytest.approx(expected_trust, rel=1e-12)


def test_auto_choice_is_the_minimal_dimension_reaching_the_target(digits_auto: Any, digits: np.ndarray) -> None:
    # scikit-learn's PCA(n_components=0.9) keeps the smallest k whose cumulative ratio exceeds 0.9.
    reference = PCA(n_components=0.9, svd_solver="full").fit(digits)
    assert digits_auto.n_components == reference.n_components_
    cumulative = np.cumsum(PCA().fit(digits).explained_variance_ratio_)
    assert cumulative[digits_auto.n_components - 1] >= 0.9 > cumulative[digits_auto.n_components - 2]
    cand = digits_auto.candidates[0]
    assert cand.reached_target is True and cand.selected
    assert cand.cumulative_explained_variance == pytest.approx(cumulative[digits_auto.n_components - 1])


@pytest.mark.parametrize("target", [0.5, 0.75, 0.95])
def test_other_targets_on_iris(module_ctx: RunContext, target: float) -> None:
    x, _ = load_iris(return_X_y=True)
    out = run(module_ctx, x, target_variance=target, methods=["pca"])
    assert out.n_components == PCA(n_components=target, svd_solver="full").fit(x).n_components_


def test_truncated_svd_equals_sklearn(module_ctx: RunContext, digits: np.ndarray) -> None:
    out = run(module_ctx, digits[:400], methods=["truncated_svd"], target_variance=0.8, embedding_output="inline")
    k = out.n_components
    ref = TruncatedSVD(n_components=k, algorithm="arpack").fit(digits[:400])
    assert out.embedding is not None and out.embedding_file is None
    assert_equal_up_to_sign(np.asarray(out.embedding), ref.transform(digits[:400]), atol=1e-7)
    np.testing.assert_allclose(out.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-7)
    # Minimal: one component fewer does not reach the target (ratios in singular-value order).
    full = TruncatedSVD(n_components=k + 5, algorithm="arpack").fit(digits[:400])
    assert full.explained_variance_ratio_[: k - 1].sum() < 0.8 <= full.explained_variance_ratio_[:k].sum() + 1e-9


def test_explained_variance_picks_the_method_needing_fewer_components(module_ctx: RunContext) -> None:
    # The uncentred SVD spends its first component on the mean: on iris PCA reaches 90 % with one component
    # (0.925), truncated SVD needs two (0.529, then 0.977).
    x, _ = load_iris(return_X_y=True)
    out = run(module_ctx, x, target_variance=0.9)
    pca, svd = out.candidates
    assert (pca.method, svd.method) == ("pca", "truncated_svd")
    assert (pca.n_components, svd.n_components) == (1, 2)
    assert out.chosen_method == "pca" and pca.selected and not svd.selected


# --------------------------------------------------------------------------- trustworthiness, ICA, LDA, t-SNE


def test_trustworthiness_choice_and_values(module_ctx: RunContext) -> None:
    x, y = load_iris(return_X_y=True)
    out = run(module_ctx, x, labels=y, selection="trustworthiness", methods=["pca", "ica", "tsne", "lda"], seed=2)
    assert [c.method for c in out.candidates] == ["pca", "ica", "tsne", "lda"]
    best = max(out.candidates, key=lambda c: c.trustworthiness or -1)
    assert best.selected and out.chosen_method == best.method and out.n_components == 2
    assert out.embedding is not None
    assert out.trustworthiness == pytest.approx(trustworthiness(x, np.asarray(out.embedding), n_neighbors=5))
    pca_ref = PCA(n_components=2).fit_transform(x)
    assert out.candidates[0].trustworthiness == pytest.approx(trustworthiness(x, pca_ref, n_neighbors=5))
    assert out.umap_available is False


def test_ica_equals_sklearn_fastica(module_ctx: RunContext) -> None:
    x, _ = load_iris(return_X_y=True)
    out = run(module_ctx, x, selection="trustworthiness", methods=["ica"], n_components=2, seed=4)
    ica = FastICA(n_components=2, max_iter=500, random_state=4)
    ref = ica.fit_transform(x)
    np.testing.assert_allclose(np.asarray(out.embedding), ref, atol=1e-10)
    expected = np.mean((x - ica.inverse_transform(ref)) ** 2)
    assert out.reconstruction_error == pytest.approx(expected, rel=1e-8)
    assert out.explained_variance_ratio is None


def test_lda_separates_iris(module_ctx: RunContext) -> None:
    x, y = load_iris(return_X_y=True)
    out = run(module_ctx, x, labels=y, selection="trustworthiness", methods=["lda"], n_components=2)
    z = np.asarray(out.embedding)
    lda = LinearDiscriminantAnalysis(n_components=2).fit(x, y)
    assert_equal_up_to_sign(z, lda.transform(x), atol=1e-8)
    np.testing.assert_allclose(out.explained_variance_ratio, lda.explained_variance_ratio_, rtol=1e-10)
    # Nearest class centroid in the discriminant plane: LDA on iris classifies ~98 % of the flowers.
    centroids = np.stack([z[y == c].mean(axis=0) for c in range(3)])
    predicted = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(predicted == y) >= 0.95
    # And the classes are far apart relative to their spread along the first discriminant.
    means = [z[y == c, 0].mean() for c in range(3)]
    spread = max(z[y == c, 0].std() for c in range(3))
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1 :]) > 3 * spread


def test_standardize_equals_a_scaler_then_pca(module_ctx: RunContext) -> None:
    x, _ = load_iris(return_X_y=True)
    out = run(module_ctx, x, standardize=True, selection="trustworthiness", methods=["pca"], n_components=2)
    scaled = StandardScaler().fit_transform(x)
    assert_equal_up_to_sign(np.asarray(out.embedding), PCA(n_components=2).fit_transform(scaled), atol=1e-9)


def test_same_seed_same_result(module_ctx: RunContext) -> None:
    x, _ = load_iris(return_X_y=True)
    options = {"selection": "trustworthiness", "methods": ["ica", "tsne"], "tsne_max_iter": 250, "seed": 9}
    assert run(module_ctx, x[::2], **options).model_dump() == run(module_ctx, x[::2], **options).model_dump()


# --------------------------------------------------------------------------- HTTP and degenerate input


def test_http_envelope_lists_the_embedding_file(client_for: Any, digits: np.ndarray) -> None:
    client = client_for(advanced_dimensionality_reducer)
    r = client.post(f"/run/{NAME}", json={"features": digits[:300].tolist(), "embedding_output": "file"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["local_metadata"]["output_files"] == [body["component_result"]["embedding_file"]]
    assert body["component_result"]["embedding"] is None


def test_file_inputs(ctx: RunContext) -> None:
    x, y = load_iris(return_X_y=True)
    np.save(ctx.data_dir / "iris.npy", x)
    np.save(ctx.data_dir / "species.npy", y.astype(float))
    np.save(ctx.data_dir / "fractional.npy", y + 0.5)
    options = {"selection": "trustworthiness", "methods": ["lda"]}
    inline = run(ctx, x, labels=y, **options)
    from_files = run(ctx, {"path": "iris.npy"}, labels={"path": "species.npy"}, **options)
    assert inline.model_dump() == from_files.model_dump()
    with pytest.raises(InvalidInput, match="labels"):
        run(ctx, {"path": "iris.npy"}, labels={"path": "fractional.npy"}, **options)


def test_invalid_requests_name_the_field(client_for: Any) -> None:
    client = client_for(advanced_dimensionality_reducer)
    x, y = load_iris(return_X_y=True)
    x, y = x[::4], y[::4]  # 38 rows, three classes
    base = {"features": x.tolist()}
    trust = {**base, "selection": "trustworthiness"}
    for bad, field in [
        ({"features": [[1.0, 2.0]]}, "features"),  # one row
        ({"features": [[1.0, 2.0]] * 6}, "features"),  # constant columns
        ({**trust, "methods": ["umap"]}, "methods"),  # not installed
        ({**trust, "methods": ["lda"]}, "labels"),  # LDA without labels
        ({**trust, "methods": ["lda"], "labels": y.tolist(), "n_components": 3}, "n_components"),  # 3 classes
        ({**trust, "methods": ["pca"], "n_components": 5}, "n_components"),  # more than the 4 features
        ({**trust, "methods": ["tsne"], "perplexity": 50}, "perplexity"),  # not below the 38 rows
        ({**base, "methods": ["ica"]}, "methods"),  # no variance ordering
        ({**base, "n_components": 2}, "n_components"),
        ({**base, "n_neighbors": 20}, "n_neighbors"),
        ({**base, "labels": [0, 1]}, "labels"),
        ({**trust, "methods": ["lda"], "labels": [0] * 38}, "labels"),  # one class
    ]:
        r = client.post(f"/run/{NAME}", json=bad)
        assert r.status_code == 422, (field, r.text)
        assert field in r.json()["detail"], (field, r.json()["detail"])


@hypothesis_settings(max_examples=15, deadline=None)
@given(
    n=st.integers(12, 40),
    p=st.integers(2, 6),
    target=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_explained_variance_invariants(module_ctx: RunContext, n: int, p: int, target: float, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(n, p)) * np.arange(1, p + 1)
    out = run(module_ctx, x, target_variance=target, n_neighbors=3)
    for cand in out.candidates:
        assert cand.cumulative_explained_variance is not None
        assert cand.cumulative_explained_variance >= target - 1e-9
        assert cand.trustworthiness is not None and 0 <= cand.trustworthiness <= 1
        assert cand.reconstruction_error is not None and cand.reconstruction_error >= 0
    assert out.n_components == min(c.n_components for c in out.candidates)
