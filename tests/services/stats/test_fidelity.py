"""Fidelity measures against scipy, numpy and scikit-learn computed independently; invariants; degenerate input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from services.stats import fidelity
from services.stats.abtest import DegenerateData


@pytest.fixture(scope="module")
def tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    cov = [[1.0, 0.7, -0.4], [0.7, 1.0, -0.2], [-0.4, -0.2, 1.0]]
    real = rng.multivariate_normal([0, 1, 2], cov, size=300)
    real[:, 1] = np.exp(real[:, 1])  # a skewed column
    synth = rng.multivariate_normal([0.1, 1, 2], np.eye(3), size=250)
    synth[:, 1] = np.exp(synth[:, 1])
    return real, synth


# ------------------------------------------------------------------------------------------------------- marginals


def test_ks_matches_scipy(tables):
    real, synth = tables
    got = fidelity.ks_distances(real, synth)
    want = [stats.ks_2samp(real[:, j], synth[:, j]).statistic for j in range(3)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_ks_with_ties_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 80).astype(float), rng.integers(1, 6, 61).astype(float)
    assert fidelity.ks_distance(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert fidelity.ks_distance(a, a) == 0.0
    assert fidelity.ks_distance([0.0, 1.0], [5.0, 6.0]) == 1.0


@hypothesis_settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
)
def test_ks_is_a_symmetric_distance_in_unit_interval(a, b):
    d = fidelity.ks_distance(a, b)
    assert 0.0 <= d <= 1.0
    assert d == fidelity.ks_distance(b, a)
    # The definition by brute force: both ECDFs on every pooled value.
    grid = np.array(a + b)[:, None]
    brute = np.max(np.abs((np.array(a) <= grid).mean(axis=1) - (np.array(b) <= grid).mean(axis=1)))
    assert d == pytest.approx(brute, abs=1e-12)


def test_moment_differences_by_hand(tables):
    real, synth = tables
    got = fidelity.moment_differences(real, synth)
    for j in range(3):
        sd = np.std(real[:, j], ddof=1)
        assert got.standardized_mean_difference[j] == pytest.approx((synth[:, j].mean() - real[:, j].mean()) / sd)
        assert got.sd_ratio[j] == pytest.approx(np.std(synth[:, j], ddof=1) / sd)


# ------------------------------------------------------------------------------------------------------ dependence


def test_pearson_matches_numpy_and_spearman_matches_scipy(tables):
    real, _ = tables
    np.testing.assert_allclose(fidelity.pearson_matrix(real), np.corrcoef(real, rowvar=False), atol=1e-12)
    np.testing.assert_allclose(fidelity.spearman_matrix(real), stats.spearmanr(real).statistic, atol=1e-12)
    tied = np.round(real, 0)  # many ties: average ranks, as scipy
    np.testing.assert_allclose(fidelity.spearman_matrix(tied), stats.spearmanr(tied).statistic, atol=1e-12)


def test_correlation_error_definitions(tables):
    real, synth = tables
    for method, corr in [("pearson", lambda x: np.corrcoef(x, rowvar=False)), ("spearman", stats.spearmanr)]:
        a = corr(real) if method == "pearson" else corr(real).statistic
        b = corr(synth) if method == "pearson" else corr(synth).statistic
        diff = a - b
        err = fidelity.correlation_error(real, synth, method=method)
        assert err.frobenius == pytest.approx(np.sqrt((diff**2).sum()), rel=1e-10)
        pairs = [abs(diff[0, 1]), abs(diff[0, 2]), abs(diff[1, 2])]
        assert err.mean_abs == pytest.approx(np.mean(pairs), rel=1e-10)
        assert err.max_abs == pytest.approx(max(pairs), rel=1e-10)
    assert fidelity.correlation_error(real, real).frobenius == pytest.approx(0.0, abs=1e-12)


def test_correlation_degenerate_inputs_raise():
    x = np.column_stack([np.arange(10.0), np.full(10, 3.0)])
    with pytest.raises(DegenerateData, match="column 1 is constant"):
        fidelity.pearson_matrix(x)
    with pytest.raises(DegenerateData, match="two columns"):
        fidelity.correlation_error(np.arange(5.0), np.arange(5.0))
    with pytest.raises(DegenerateData, match="columns"):
        fidelity.ks_distances(np.zeros((4, 2)), np.zeros((4, 3)))


# ------------------------------------------------------------------------------------------------------ categories


def test_total_variation_by_hand():
    real = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    synth = ["a"] * 40 + ["b"] * 40 + ["d"] * 20
    p, q = Counter(real), Counter(synth)
    want = 0.5 * sum(abs(p[k] / 100 - q[k] / 100) for k in set(p) | set(q))
    assert fidelity.total_variation(real, synth) == pytest.approx(want)  # = 0.3
    assert fidelity.total_variation(real, real) == 0.0
    assert fidelity.total_variation(["x"], ["y"]) == 1.0


def test_total_variation_to_expected_and_shares():
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["z"] * 10)
    np.testing.assert_allclose(fidelity.category_shares(labels, ["b", "a", "c"]), [0.3, 0.6, 0.0])
    # expected a 0.5, b 0.5: |0.6 − 0.5| + |0.3 − 0.5| + 0.1 unknown = 0.4 → TV 0.2
    assert fidelity.total_variation_to(labels, {"a": 1.0, "b": 1.0}) == pytest.approx(0.2)


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from("abcde"), min_size=1, max_size=40),
    st.lists(st.sampled_from("abcdef"), min_size=1, max_size=40),
)
def test_total_variation_is_symmetric_and_bounded(a, b):
    tv = fidelity.total_variation(a, b)
    assert 0.0 <= tv <= 1.0 + 1e-12
    assert tv == pytest.approx(fidelity.total_variation(b, a))


# --------------------------------------------------------------------------------------------------------- privacy


def test_dcr_matches_sklearn_nearest_neighbours(tables):
    real, synth = tables
    mean, sd = real.mean(axis=0), real.std(axis=0, ddof=1)
    nn = NearestNeighbors(n_neighbors=2, algorithm="brute").fit((real - mean) / sd)
    want_synth = nn.kneighbors((synth - mean) / sd, n_neighbors=1)[0][:, 0]
    want_loo = nn.kneighbors(None, n_neighbors=1)[0][:, 0]  # sklearn excludes each query point itself
    got = fidelity.distance_to_closest_record(real, synth)
    np.testing.assert_allclose(got.synthetic, want_synth, rtol=1e-10)
    np.testing.assert_allclose(got.baseline, want_loo, rtol=1e-10)
    assert got.baseline_kind == "leave_one_out"
    assert got.synthetic_median == pytest.approx(np.median(want_synth))
    assert got.median_ratio == pytest.approx(np.median(want_synth) / np.median(want_loo))


def test_dcr_with_holdout_and_copies(tables):
    real, synth = tables
    holdout = synth[:40]
    got = fidelity.distance_to_closest_record(real[:200], real[150:250], holdout=holdout)
    assert got.baseline_kind == "holdout" and got.baseline.size == 40
    assert got.exact_match_share == pytest.approx(0.5)  # rows 150..199 are copies of real records
    mean, sd = real[:200].mean(axis=0), real[:200].std(axis=0, ddof=1)
    nn = NearestNeighbors(n_neighbors=1).fit((real[:200] - mean) / sd)
    np.testing.assert_allclose(got.baseline, nn.kneighbors((holdout - mean) / sd)[0][:, 0], rtol=1e-10)


# --------------------------------------------------------------------------------------------------------- summary


def test_summary_collects_the_measures(tables):
    real, synth = tables
    cats_r, cats_s = np.array(["a", "b"] * 150), np.array(["a"] * 150 + ["b"] * 100)
    got = fidelity.fidelity_summary(
        real,
        synth,
        columns=["x", "y", "z"],
        real_categorical={"c": cats_r},
        synthetic_categorical={"c": cats_s},
        dcr_real=real,
        dcr_synthetic=synth,
    )
    assert set(got.ks) == {"x", "y", "z"}
    assert got.ks["y"] == pytest.approx(stats.ks_2samp(real[:, 1], synth[:, 1]).statistic)
    assert got.ks_max == pytest.approx(max(got.ks.values()))
    assert got.pearson is not None and got.spearman is not None and got.moments is not None
    assert got.total_variation["c"] == pytest.approx(0.5 * (abs(0.5 - 0.6) + abs(0.5 - 0.4)))
    assert got.dcr is not None and got.notes == []


def test_summary_states_why_correlation_is_missing():
    real = np.column_stack([np.arange(10.0), np.ones(10)])
    got = fidelity.fidelity_summary(real, real[::-1] + 0.5)
    assert got.pearson is None and got.moments is None
    assert "constant" in got.notes[0]
    single = fidelity.fidelity_summary(np.arange(10.0), np.arange(10.0) + 1)
    assert single.pearson is None and single.moments is not None
    assert "two numeric columns" in single.notes[0]
