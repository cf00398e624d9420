"""histogram_quantile against hand computations (PromQL's interpolation rules)."""

from __future__ import annotations

import math

import pytest

from mlmesh.prometheus import histogram_quantile


def test_histogram_quantile_matches_hand_computation() -> None:
    inf = float("inf")
    buckets = [(1.0, 40.0), (0.1, 10.0), (inf, 50.0), (0.5, 30.0)]  # order does not matter
    # rank 25 of 50 lies in (0.1, 0.5]: 15 of its 20 → 0.1 + 0.4 × 15/20.
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.4)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.05)  # 0 + 0.1 × 5/10
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.75)  # 0.5 + 0.5 × 5/10
    assert histogram_quantile(0.95, buckets) == 1.0  # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.0, buckets) == 0.0
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3.0), (1.0, 4.0)]) is None  # no +Inf bucket
    assert histogram_quantile(0.2, [(-1.0, 5.0), (inf, 10.0)]) == -1.0
    with pytest.raises(ValueError, match="q must be"):
        histogram_quantile(1.5, buckets)


def test_histogram_quantile_hand_computed() -> None:
    # Prometheus semantics: linear interpolation inside the bucket that holds the rank.
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: 0.1 + 0.1 * 10/20
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.36)  # rank 38: 0.2 + 0.2 * 8/10
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: top of the first bucket
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.04)  # rank 4 in the first bucket, from 0
    # A rank in the +Inf bucket gives the largest finite bound.
    assert histogram_quantile(0.99, [(0.1, 1.0), (0.2, 2.0), (math.inf, 10.0)]) == pytest.approx(0.2)
    # Empty buckets before the rank are skipped.
    assert histogram_quantile(0.5, [(0.1, 0.0), (0.2, 0.0), (0.4, 4.0), (math.inf, 4.0)]) == pytest.approx(0.3)
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None
    with pytest.raises(ValueError, match="q must be in"):
        histogram_quantile(1.5, buckets)
