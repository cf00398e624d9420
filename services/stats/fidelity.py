"""How faithful is a synthetic table to a real one? Pure functions on numpy arrays, no I/O.

Tables are 2-D float arrays with one row per record and the same columns in the same order; categorical columns
travel separately as 1-D label arrays. Functions raise :class:`~services.stats.abtest.DegenerateData` (a
``ValueError``) when the data do not define the measure (too few rows, a constant column), so a caller can name
the field at fault instead of returning NaN.

Contents:

* marginals — :func:`ks_distance`, :func:`ks_distances` (two-sample Kolmogorov–Smirnov statistic per column),
  :func:`moment_differences` (standardised mean difference and SD ratio per column);
* dependence — :func:`pearson_matrix`, :func:`spearman_matrix`, :func:`matrix_error`, :func:`correlation_error`;
* categories — :func:`category_shares`, :func:`total_variation`, :func:`total_variation_to`;
* privacy — :func:`distance_to_closest_record` (DCR against a real-to-real baseline);
* :func:`fidelity_summary` — all of the above for one (real, synthetic) pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from scipy.spatial import cKDTree

from services.stats.abtest import DegenerateData

__all__ = [
    "DistanceToClosestRecord",
    "FidelitySummary",
    "MatrixError",
    "MomentDifferences",
    "category_shares",
    "correlation_error",
    "distance_to_closest_record",
    "fidelity_summary",
    "ks_distance",
    "ks_distances",
    "matrix_error",
    "moment_differences",
    "pearson_matrix",
    "spearman_matrix",
    "total_variation",
    "total_variation_to",
]

# A synthetic row this close (in real-SD units) to a real row is counted as a copy of it.
EXACT_MATCH_TOLERANCE = 1e-9


def _table(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DegenerateData(f"{name} must be a 2-D table (rows × columns); got shape {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise DegenerateData(f"{name} has no rows")
    if not np.isfinite(arr).all():
        raise DegenerateData(f"{name} contains NaN or infinity")
    return arr


def _pair(real: ArrayLike, synthetic: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r, s = _table(real, "real"), _table(synthetic, "synthetic")
    if r.shape[1] != s.shape[1]:
        raise DegenerateData(f"real has {r.shape[1]} columns but synthetic has {s.shape[1]}")
    return r, s


# ------------------------------------------------------------------------------------------------------ marginals


def ks_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample Kolmogorov–Smirnov statistic ``D = sup_x |F_a(x) − F_b(x)|``.

    ``F_a`` and ``F_b`` are the empirical CDFs (right-continuous step functions). Both only jump at sample values,
    so the supremum is attained on the pooled sample, where each ECDF is a ``searchsorted(side="right")`` count.
    Equals ``scipy.stats.ks_2samp(a, b).statistic``. 0 means identical marginals, 1 disjoint supports.
    """
    x, y = np.sort(np.asarray(a, dtype=np.float64).ravel()), np.sort(np.asarray(b, dtype=np.float64).ravel())
    if x.size == 0 or y.size == 0:
        raise DegenerateData("the KS distance needs at least one value in each sample")
    grid = np.concatenate((x, y))
    f_x = np.searchsorted(x, grid, side="right") / x.size
    f_y = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(f_x - f_y)))


def ks_distances(real: ArrayLike, synthetic: ArrayLike) -> NDArray[np.float64]:
    """:func:`ks_distance` of every column: ``D_j = sup_x |F_real,j(x) − F_synth,j(x)|``."""
    r, s = _pair(real, synthetic)
    return np.array([ks_distance(r[:, j], s[:, j]) for j in range(r.shape[1])])


@dataclass(frozen=True)
class MomentDifferences:
    """Per-column first and second moments of synthetic against real.

    ``standardized_mean_difference_j = (mean_synth,j − mean_real,j) / sd_real,j`` and
    ``sd_ratio_j = sd_synth,j / sd_real,j`` (sample SDs, ddof = 1). Ideal: 0 and 1.
    """

    standardized_mean_difference: NDArray[np.float64]
    sd_ratio: NDArray[np.float64]


def moment_differences(real: ArrayLike, synthetic: ArrayLike) -> MomentDifferences:
    """Standardised mean differences and SD ratios per column (see :class:`MomentDifferences`)."""
    r, s = _pair(real, synthetic)
    if r.shape[0] < 2 or s.shape[0] < 2:
        raise DegenerateData("moments need at least two rows in each table")
    sd_r = r.std(axis=0, ddof=1)
    if np.any(sd_r == 0):
        raise DegenerateData(f"real column {int(np.flatnonzero(sd_r == 0)[0])} is constant")
    return MomentDifferences(
        standardized_mean_difference=(s.mean(axis=0) - r.mean(axis=0)) / sd_r,
        sd_ratio=s.std(axis=0, ddof=1) / sd_r,
    )


# ----------------------------------------------------------------------------------------------------- dependence


def pearson_matrix(x: ArrayLike) -> NDArray[np.float64]:
    """Pearson correlation matrix of the columns: ``r_jk = Σ_i c_ij c_ik / sqrt(Σ_i c_ij² · Σ_i c_ik²)``.

    ``c`` is the column-centred table. Equals ``numpy.corrcoef(x, rowvar=False)``; raises on a constant column.
    """
    t = _table(x, "table")
    if t.shape[0] < 2:
        raise DegenerateData("a correlation needs at least two rows")
    centred = t - t.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->j", centred, centred))
    # Relative threshold: rounding leaves ~1e-16·|mean| of "variance" in a constant column.
    scale = np.maximum(np.abs(t).max(axis=0), 1.0)
    constant = norms <= 1e-12 * scale * np.sqrt(t.shape[0])
    if np.any(constant):
        raise DegenerateData(f"column {int(np.flatnonzero(constant)[0])} is constant; its correlation is undefined")
    z = centred / norms
    r = np.clip(z.T @ z, -1.0, 1.0)
    np.fill_diagonal(r, 1.0)
    return r


def spearman_matrix(x: ArrayLike) -> NDArray[np.float64]:
    """Spearman rank correlation matrix: the Pearson matrix of the column ranks (ties get their average rank).

    Equals ``scipy.stats.spearmanr(x).statistic`` for two or more columns.
    """
    t = _table(x, "table")
    return pearson_matrix(stats.rankdata(t, axis=0))


@dataclass(frozen=True)
class MatrixError:
    """How far apart two correlation matrices ``A`` (reference) and ``B`` are.

    * ``frobenius = ||A − B||_F = sqrt(Σ_jk (a_jk − b_jk)²)`` over the full matrix (each pair counted twice);
    * ``mean_abs = mean_{j<k} |a_jk − b_jk|`` over the distinct off-diagonal pairs;
    * ``max_abs = max_{j<k} |a_jk − b_jk|``.
    """

    frobenius: float
    mean_abs: float
    max_abs: float


def matrix_error(reference: ArrayLike, other: ArrayLike) -> MatrixError:
    """:class:`MatrixError` between two square matrices of the same size (at least 2 × 2)."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise DegenerateData(f"need two square matrices of one size; got {list(a.shape)} and {list(b.shape)}")
    if a.shape[0] < 2:
        raise DegenerateData("a correlation error needs at least two columns")
    diff = a - b
    upper = np.abs(diff[np.triu_indices(a.shape[0], k=1)])
    return MatrixError(
        frobenius=float(np.linalg.norm(diff, "fro")), mean_abs=float(upper.mean()), max_abs=float(upper.max())
    )


def correlation_error(
    real: ArrayLike, synthetic: ArrayLike, *, method: Literal["pearson", "spearman"] = "pearson"
) -> MatrixError:
    """:func:`matrix_error` between the real and the synthetic correlation matrices (Pearson or Spearman)."""
    r, s = _pair(real, synthetic)
    corr = pearson_matrix if method == "pearson" else spearman_matrix
    return matrix_error(corr(r), corr(s))


# ----------------------------------------------------------------------------------------------------- categories


def category_shares(labels: ArrayLike, categories: Sequence[str]) -> NDArray[np.float64]:
    """Share of ``labels`` equal to each of ``categories`` (labels compared as strings)."""
    lab = np.asarray(labels).astype(str).ravel()
    if lab.size == 0:
        raise DegenerateData("shares need at least one label")
    cats = np.asarray(list(categories), dtype=str)
    if cats.size == 0:
        return np.zeros(0)
    if np.unique(cats).size != cats.size:
        raise DegenerateData("categories must be distinct")
    order = np.argsort(cats)
    ordered = cats[order]
    pos = np.clip(np.searchsorted(ordered, lab), 0, cats.size - 1)
    known = ordered[pos] == lab
    return np.bincount(order[pos[known]], minlength=cats.size) / lab.size


def total_variation(real_labels: ArrayLike, synthetic_labels: ArrayLike) -> float:
    """Total-variation distance of two categorical samples: ``TV = ½ Σ_k |p_k − q_k|``.

    ``p`` and ``q`` are the observed shares over the union of categories. 0: same shares; 1: disjoint categories.
    """
    r = np.asarray(real_labels).astype(str).ravel()
    s = np.asarray(synthetic_labels).astype(str).ravel()
    if r.size == 0 or s.size == 0:
        raise DegenerateData("the total-variation distance needs at least one label in each sample")
    _, codes = np.unique(np.concatenate((r, s)), return_inverse=True)
    k = int(codes.max()) + 1
    p = np.bincount(codes[: r.size], minlength=k) / r.size
    q = np.bincount(codes[r.size :], minlength=k) / s.size
    return float(0.5 * np.abs(p - q).sum())


def total_variation_to(labels: ArrayLike, expected: Mapping[str, float]) -> float:
    """Total-variation distance between observed label shares and expected probabilities (normalised to sum 1).

    Labels outside ``expected`` count fully against it: ``TV = ½ (Σ_k |p_k − q_k| + share of unknown labels)``.
    """
    weights = np.asarray(list(expected.values()), dtype=np.float64)
    if weights.size == 0 or np.any(weights < 0) or weights.sum() <= 0:
        raise DegenerateData("expected shares must be non-negative and not all zero")
    shares = category_shares(labels, list(expected))
    return float(0.5 * (np.abs(shares - weights / weights.sum()).sum() + (1.0 - shares.sum())))


# -------------------------------------------------------------------------------------------------------- privacy


@dataclass(frozen=True)
class DistanceToClosestRecord:
    """Distance to closest record (DCR) of synthetic rows, and the same for real rows as a baseline.

    Columns are standardised by the real data's mean and SD (constant columns are left unscaled) and distances are
    Euclidean. ``synthetic[i] = min_k ||s_i − r_k||``. The baseline is the distance of each holdout row to the real
    table when a holdout is given, else each real row's distance to its nearest *other* real row (leave-one-out).
    Synthetic rows much closer to real records than real records are to each other (``median_ratio ≪ 1``, or a
    positive ``exact_match_share``) suggest the generator copies its training data.
    """

    synthetic: NDArray[np.float64]
    baseline: NDArray[np.float64]
    baseline_kind: Literal["holdout", "leave_one_out"]

    @property
    def synthetic_median(self) -> float:
        return float(np.median(self.synthetic))

    @property
    def baseline_median(self) -> float:
        return float(np.median(self.baseline))

    @property
    def synthetic_p05(self) -> float:
        return float(np.quantile(self.synthetic, 0.05))

    @property
    def baseline_p05(self) -> float:
        return float(np.quantile(self.baseline, 0.05))

    @property
    def median_ratio(self) -> float | None:
        """``median(DCR_synth) / median(DCR_baseline)``; None when the baseline median is 0 (duplicated records)."""
        base = self.baseline_median
        return self.synthetic_median / base if base > 0 else None

    @property
    def exact_match_share(self) -> float:
        """Share of synthetic rows that coincide with a real row (distance ≤ 1e-9 SD)."""
        return float(np.mean(self.synthetic <= EXACT_MATCH_TOLERANCE))

    @property
    def baseline_exact_match_share(self) -> float:
        return float(np.mean(self.baseline <= EXACT_MATCH_TOLERANCE))


def distance_to_closest_record(
    real: ArrayLike, synthetic: ArrayLike, *, holdout: ArrayLike | None = None
) -> DistanceToClosestRecord:
    """Nearest-neighbour distances from synthetic rows to the real table, with a real baseline (k-d tree)."""
    r, s = _pair(real, synthetic)
    mean = r.mean(axis=0)
    sd = r.std(axis=0, ddof=1) if r.shape[0] > 1 else np.ones(r.shape[1])
    sd = np.where(sd > 0, sd, 1.0)
    tree = cKDTree((r - mean) / sd)
    synth_d, _ = tree.query((s - mean) / sd, k=1)
    if holdout is not None:
        h = _table(holdout, "holdout")
        if h.shape[1] != r.shape[1]:
            raise DegenerateData(f"holdout has {h.shape[1]} columns but real has {r.shape[1]}")
        base_d, _ = tree.query((h - mean) / sd, k=1)
        kind: Literal["holdout", "leave_one_out"] = "holdout"
    else:
        if r.shape[0] < 2:
            raise DegenerateData("the leave-one-out baseline needs at least two real rows")
        # k = 2: the first neighbour of a real row is itself (or an exact duplicate, which is then the answer).
        base_d = tree.query((r - mean) / sd, k=2)[0][:, 1]
        kind = "leave_one_out"
    return DistanceToClosestRecord(
        synthetic=np.asarray(synth_d, dtype=np.float64),
        baseline=np.asarray(base_d, dtype=np.float64),
        baseline_kind=kind,
    )


# -------------------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class FidelitySummary:
    """Every fidelity measure of one synthetic table against one real table, keyed by column name.

    ``pearson`` / ``spearman`` are None (with the reason in ``notes``) when there are fewer than two numeric
    columns or a column is constant in either table; ``moments`` likewise; ``dcr`` is None when not requested.
    """

    columns: list[str]
    ks: dict[str, float]
    ks_mean: float
    ks_max: float
    pearson: MatrixError | None
    spearman: MatrixError | None
    moments: MomentDifferences | None
    total_variation: dict[str, float]
    dcr: DistanceToClosestRecord | None
    notes: list[str] = field(default_factory=list)


def _constant_columns(t: NDArray[np.float64]) -> NDArray[np.bool_]:
    return np.ptp(t, axis=0) == 0


def fidelity_summary(
    real: ArrayLike,
    synthetic: ArrayLike,
    *,
    columns: Sequence[str] | None = None,
    real_categorical: Mapping[str, ArrayLike] | None = None,
    synthetic_categorical: Mapping[str, ArrayLike] | None = None,
    dcr_real: ArrayLike | None = None,
    dcr_synthetic: ArrayLike | None = None,
) -> FidelitySummary:
    """KS per column, Pearson and Spearman correlation errors, moments, TV per categorical column, and DCR.

    ``dcr_real`` / ``dcr_synthetic`` (optional, e.g. row subsamples of the two tables) switch the privacy measure
    on: :func:`distance_to_closest_record` with the leave-one-out baseline.
    """
    r, s = _pair(real, synthetic)
    names = list(columns) if columns is not None else [f"x{j}" for j in range(r.shape[1])]
    if len(names) != r.shape[1]:
        raise DegenerateData(f"{len(names)} column names for {r.shape[1]} columns")
    notes: list[str] = []
    ks = ks_distances(r, s)
    pearson = spearman = None
    moments = None
    constant = _constant_columns(r) | _constant_columns(s)
    if r.shape[0] < 3 or s.shape[0] < 3:
        notes.append("correlations and moments need at least three rows in each table")
    elif np.any(constant):
        which = ", ".join(names[j] for j in np.flatnonzero(constant))
        notes.append(f"correlations and moments skipped: constant column(s) {which}")
    else:
        moments = moment_differences(r, s)
        if r.shape[1] >= 2:
            pearson = correlation_error(r, s, method="pearson")
            spearman = correlation_error(r, s, method="spearman")
        else:
            notes.append("correlation errors need at least two numeric columns")
    tv: dict[str, float] = {}
    real_cat, synth_cat = dict(real_categorical or {}), dict(synthetic_categorical or {})
    if set(real_cat) != set(synth_cat):
        raise DegenerateData("real and synthetic categorical columns differ")
    for name, labels in real_cat.items():
        tv[name] = total_variation(labels, synth_cat[name])
    dcr = None
    if dcr_real is not None and dcr_synthetic is not None:
        dcr = distance_to_closest_record(dcr_real, dcr_synthetic)
    return FidelitySummary(
        columns=names,
        ks=dict(zip(names, ks.tolist(), strict=True)),
        ks_mean=float(ks.mean()),
        ks_max=float(ks.max()),
        pearson=pearson,
        spearman=spearman,
        moments=moments,
        total_variation=tv,
        dcr=dcr,
        notes=notes,
    )
