"""Reading the mesh's Prometheus histograms: the one ``histogram_quantile`` of the dashboard and the monitors."""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import accumulate

__all__ = ["histogram_quantile"]


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q``-quantile of a Prometheus histogram, as PromQL's ``histogram_quantile`` computes it.

    Args:
        q: The quantile, in [0, 1].
        buckets: ``(upper bound le, cumulative count)`` pairs, including ``+Inf``.

    Returns:
        Linear interpolation inside the bucket where the rank ``q × total`` falls (the lower bound of the
        first bucket is 0 when its upper bound is positive); the highest finite bound when the rank falls in
        the ``+Inf`` bucket; None without observations or without a ``+Inf`` bucket.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1]; got {q}")
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds = [b for b, _ in ordered]
    # Cumulative counts can dip through scrape races: force them monotonic, as Prometheus does.
    counts = list(accumulate((c for _, c in ordered), max))
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return float(bounds[-2])
    if b == 0 and bounds[0] <= 0:
        return float(bounds[0])
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    return float(start + (end - start) * rank / count)
