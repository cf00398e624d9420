"""enhanced_quality_scorer: each measure against scipy / scikit-learn on the same data, and planted defects."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from services.framework import RunContext
from services.tier2.enhanced_quality_scorer import (
    EnhancedQualityScorerInput,
    EnhancedQualityScorerOutput,
    enhanced_quality_scorer,
    quality_tier,
)
from tests.conftest import make_settings

ROUTE = "/run/enhanced_quality_scorer"
NAMES = ["clarity", "specificity", "length", "effectiveness"]


def population(n: int, seed: int, *, shift: float = 0.0) -> np.ndarray:
    """Correlated prompt features and a target that depends on them (``shift`` moves clarity by that many SDs)."""
    rng = np.random.default_rng(seed)
    clarity = rng.normal(size=n) + shift
    specificity = 0.6 * clarity + 0.8 * rng.normal(size=n)
    length = rng.uniform(0, 3, size=n)
    effectiveness = 1.0 * clarity - 0.5 * specificity + 0.3 * length + 0.5 * rng.normal(size=n)
    return np.column_stack((clarity, specificity, length, effectiveness))


def score(tmp_path: Path, **body: Any) -> EnhancedQualityScorerOutput:
    for name in ("reference", "candidate"):
        if isinstance(body.get(name), np.ndarray):
            body[name] = body[name].tolist()
    ctx = RunContext(component="enhanced_quality_scorer", settings=make_settings(tmp_path), request_id=None)
    return enhanced_quality_scorer(EnhancedQualityScorerInput.model_validate(body), ctx)


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return population(300, seed=1)


@pytest.fixture(scope="module")
def iid() -> np.ndarray:
    return population(250, seed=2)


def test_fidelity_against_scipy_and_sklearn(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    out = score(tmp_path, reference=ref, candidate=iid, columns=NAMES, seed=5)
    fid = out.fidelity
    for j, col in enumerate(fid.columns):
        assert col.column == NAMES[j]
        assert col.ks_statistic == pytest.approx(stats.ks_2samp(ref[:, j], iid[:, j]).statistic, abs=1e-12)
        w = stats.wasserstein_distance(ref[:, j], iid[:, j])
        assert col.wasserstein == pytest.approx(w, rel=1e-12)
        assert col.wasserstein_standardized == pytest.approx(w / ref[:, j].std(ddof=1), rel=1e-12)
    diff = np.abs(np.corrcoef(ref, rowvar=False) - np.corrcoef(iid, rowvar=False))[np.triu_indices(4, 1)]
    assert fid.correlation_error.mean_abs == pytest.approx(diff.mean(), abs=1e-12)
    assert fid.correlation_error.max_abs == pytest.approx(diff.max(), abs=1e-12)
    # The discriminator, rebuilt from the documented recipe (all rows: fewer than sample_rows).
    x = np.vstack((ref, iid))
    y = np.r_[np.zeros(len(ref)), np.ones(len(iid))]
    model = make_pipeline(
        StandardScaler(), PolynomialFeatures(2, include_bias=False), StandardScaler(), LogisticRegression(max_iter=2000)
    )
    p = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=5), method="predict_proba")
    assert fid.propensity_auc == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-9)
    assert fid.propensity_pmse == pytest.approx(np.mean((p[:, 1] - len(iid) / len(x)) ** 2), abs=1e-9)
    assert fid.propensity_terms == 4 + 10
    assert fid.propensity_auc < 0.6  # same distribution: the discriminator is near chance
    ks_mean = np.mean([c.ks_statistic for c in fid.columns])
    w_mean = np.mean([c.wasserstein_standardized for c in fid.columns])
    parts = [1 - ks_mean, 1 - 2 * max(0, fid.propensity_auc - 0.5), 1 - w_mean, 1 - diff.mean()]
    assert fid.score == pytest.approx(np.mean(parts), abs=1e-12)


def test_privacy_dcr_against_sklearn_nearest_neighbors(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    out = score(tmp_path, reference=ref, candidate=iid)
    mean, sd = ref.mean(axis=0), ref.std(axis=0, ddof=1)
    zr, zc = (ref - mean) / sd, (iid - mean) / sd
    dcr = NearestNeighbors(n_neighbors=1).fit(zr).kneighbors(zc)[0][:, 0]
    loo = NearestNeighbors(n_neighbors=2).fit(zr).kneighbors(zr)[0][:, 1]
    priv = out.privacy
    assert priv.dcr_p05 == pytest.approx(np.quantile(dcr, 0.05), rel=1e-9)
    assert priv.reference_dcr_p05 == pytest.approx(np.quantile(loo, 0.05), rel=1e-9)
    assert priv.dcr_median == pytest.approx(np.median(dcr), rel=1e-9)
    assert priv.p05_ratio == pytest.approx(np.quantile(dcr, 0.05) / np.quantile(loo, 0.05), rel=1e-9)
    assert priv.exact_copy_share == 0.0
    assert priv.score == pytest.approx(min(1.0, priv.p05_ratio))
    assert priv.score > 0.7  # an independent sample sits as far from the records as they sit from each other


def test_a_copy_of_the_reference_scores_privacy_poorly(tmp_path: Path, ref: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    leaked = np.vstack((ref[rng.choice(len(ref), 150, replace=False)], population(150, seed=9)))
    copy = score(tmp_path, reference=ref, candidate=ref, columns=NAMES, target="effectiveness")
    partial = score(tmp_path, reference=ref, candidate=leaked)
    assert copy.privacy.exact_copy_share == 1.0 and copy.privacy.score == 0.0 and copy.privacy.dcr_p05 == 0.0
    assert partial.privacy.exact_copy_share == pytest.approx(0.5)
    assert partial.privacy.score == 0.0  # half the rows are copies: the 5th percentile DCR is 0 too
    # ... although it is perfectly faithful (and useful: it contains the utility test rows), so the overall score
    # reaches the excellent threshold; the copy cap holds the tier at fair.
    assert copy.fidelity.ks_mean == 0.0 and copy.scores["fidelity"] == 1.0 and copy.scores["utility"] == 1.0
    assert copy.overall_score >= 0.85 - 1e-9
    assert copy.tier == "fair" and any("exact copies" in note for note in copy.notes)


def test_a_shifted_set_scores_fidelity_worse_than_an_iid_sample(
    tmp_path: Path, ref: np.ndarray, iid: np.ndarray
) -> None:
    shifted = population(250, seed=2, shift=1.0)
    good = score(tmp_path, reference=ref, candidate=iid, columns=NAMES, target="effectiveness")
    bad = score(tmp_path, reference=ref, candidate=shifted, columns=NAMES, target="effectiveness")
    assert bad.fidelity.score < good.fidelity.score - 0.15
    assert bad.fidelity.propensity_auc > 0.75 > good.fidelity.propensity_auc
    assert bad.fidelity.columns[0].ks_statistic > 0.3 > good.fidelity.columns[0].ks_statistic
    assert bad.overall_score < good.overall_score
    assert good.tier in ("excellent", "good")


def test_utility_regression_against_sklearn(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    out = score(tmp_path, reference=ref, candidate=iid, columns=NAMES, target="effectiveness", seed=11)
    util = out.utility
    assert (util.task, util.model, util.metric, util.chance) == ("regression", "ridge", "r2", 0.0)
    train, test = train_test_split(np.arange(len(ref)), test_size=0.3, random_state=11)
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    tstr_pred = model.fit(iid[:, :3], iid[:, 3]).predict(ref[test, :3])
    trtr_pred = model.fit(ref[train, :3], ref[train, 3]).predict(ref[test, :3])
    assert util.tstr == pytest.approx(r2_score(ref[test, 3], tstr_pred), abs=1e-10)
    assert util.trtr == pytest.approx(r2_score(ref[test, 3], trtr_pred), abs=1e-10)
    assert util.tstr_secondary == pytest.approx(mean_absolute_error(ref[test, 3], tstr_pred), abs=1e-10)
    assert util.ratio == pytest.approx(util.tstr / util.trtr)
    assert (util.reference_train_rows, util.reference_test_rows) == (len(train), len(test))
    assert util.ratio > 0.9  # an independent sample of the same process is as useful as real data
    # A candidate whose target is shuffled carries no signal: TSTR falls to about chance.
    broken = iid.copy()
    broken[:, 3] = np.random.default_rng(0).permutation(broken[:, 3])
    useless = score(tmp_path, reference=ref, candidate=broken, columns=NAMES, target="effectiveness", seed=11)
    assert useless.utility.ratio < 0.2 and useless.utility.score < 0.2


def test_utility_classification_against_sklearn(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    def with_class(x: np.ndarray) -> np.ndarray:
        return np.column_stack((x[:, :3], (x[:, 3] > 0.4).astype(float)))

    r, c = with_class(ref), with_class(iid)
    out = score(tmp_path, reference=r, candidate=c, target="x3", holdout_fraction=0.25, seed=4)
    util = out.utility
    assert (util.task, util.model, util.metric, util.chance, util.stratified) == (
        "classification", "logistic", "balanced_accuracy", 0.5, True
    )  # fmt: skip
    train, test = train_test_split(np.arange(len(r)), test_size=0.25, random_state=4, stratify=r[:, 3])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    tstr_pred = model.fit(c[:, :3], c[:, 3]).predict(r[test, :3])
    trtr_pred = model.fit(r[train, :3], r[train, 3]).predict(r[test, :3])
    assert util.tstr == pytest.approx(balanced_accuracy_score(r[test, 3], tstr_pred), abs=1e-12)
    assert util.trtr == pytest.approx(balanced_accuracy_score(r[test, 3], trtr_pred), abs=1e-12)
    assert util.tstr_secondary == pytest.approx(np.mean(tstr_pred == r[test, 3]), abs=1e-12)
    assert util.ratio == pytest.approx((util.tstr - 0.5) / (util.trtr - 0.5))
    # A candidate with one class only: TSTR predicts it everywhere, which is chance level.
    one = c.copy()
    one[:, 3] = 1.0
    flat = score(tmp_path, reference=r, candidate=one, target="x3", holdout_fraction=0.25, seed=4)
    assert flat.utility.tstr == 0.5 and flat.utility.score == 0.0
    assert any("single class" in note for note in flat.notes)


def test_diversity_detects_collapse_and_duplicates(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    collapsed = np.repeat(iid[:25], 10, axis=0)  # 25 distinct rows, each ten times
    good = score(tmp_path, reference=ref, candidate=iid)
    bad = score(tmp_path, reference=ref, candidate=collapsed)
    assert bad.diversity.duplicate_share == pytest.approx(1 - 25 / 250)
    assert good.diversity.duplicate_share == 0.0 == good.diversity.reference_duplicate_share
    assert bad.diversity.nn_distance_mean == 0.0 and bad.diversity.nn_ratio == 0.0
    assert 0.9 < good.diversity.nn_ratio < 1.3 and 0.9 < good.diversity.pairwise_ratio < 1.1
    assert bad.diversity.score < 0.45 < 0.95 < good.diversity.score
    # Equal-size comparison: 250 rows of each table, the within-set NN distance by hand (k-d tree not needed).
    mean, sd = ref.mean(axis=0), ref.std(axis=0, ddof=1)
    z = (iid - mean) / sd
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert good.diversity.rows_compared == 250
    assert good.diversity.nn_distance_mean == pytest.approx(d.min(axis=1).mean(), rel=1e-9)
    assert good.diversity.pairwise_distance_mean == pytest.approx(d[np.triu_indices(250, 1)].mean(), rel=1e-9)


def test_consistency_counts_missing_and_out_of_bounds_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, size=(30, 2)).tolist()
    candidate: list[list[float | None]] = rng.uniform(0.1, 0.9, size=(20, 2)).tolist()
    candidate[0][0] = None  # missing
    candidate[1][1] = None  # missing
    candidate[2][0] = 1.5  # above the bound of a
    candidate[3][0] = -0.2  # below it
    candidate[4][1] = 7.0  # outside the reference's range of b
    out = score(
        tmp_path, reference=reference, candidate=candidate, columns=["a", "b"], bounds={"a": {"min": 0, "max": 1}}
    )
    con = out.consistency
    assert con.complete_row_share == pytest.approx(18 / 20)
    assert con.missing_cell_share == pytest.approx(2 / 40)
    assert con.violations == {"a": 2, "b": 1}
    assert con.constraint_source == {"a": "bounds", "b": "reference_range"}
    assert con.within_constraints_share == pytest.approx(15 / 18)
    assert con.valid_row_share == con.score == pytest.approx(15 / 20)
    assert [c.missing_share for c in out.fidelity.columns] == [pytest.approx(0.05), pytest.approx(0.05)]
    assert out.candidate_complete_rows == 18
    loose = score(tmp_path, reference=reference, candidate=candidate, columns=["a", "b"], check_reference_range=False)
    assert loose.consistency.within_constraints_share is None and loose.consistency.score == pytest.approx(18 / 20)


def test_overall_is_the_documented_weighted_mean_and_tier(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    out = score(tmp_path, reference=ref, candidate=iid, weights={"fidelity": 0.5, "utility": 0.5, "privacy": 0})
    # No target: utility is not scored and the remaining weights are renormalised; privacy weighs nothing.
    assert out.utility is None and out.scores["utility"] is None
    assert out.weights_used == pytest.approx(
        {"fidelity": 0.5 / 0.8, "diversity": 0.15 / 0.8, "consistency": 0.15 / 0.8}
    )
    expected = sum(w * out.scores[d] for d, w in out.weights_used.items())
    assert out.overall_score == pytest.approx(expected)
    assert out.tier == quality_tier(out.overall_score)
    assert [quality_tier(s) for s in (0.85, 0.8499, 0.70, 0.6999, 0.5, 0.4999)] == [
        "excellent", "good", "good", "fair", "fair", "poor"
    ]  # fmt: skip


def test_same_seed_same_result_and_subsampling_follows_the_seed(tmp_path: Path, ref: np.ndarray) -> None:
    big = population(600, seed=4)
    body = {"reference": ref, "candidate": big, "sample_rows": 200, "target": "x3"}
    a, b = score(tmp_path, **body, seed=1), score(tmp_path, **body, seed=1)
    c = score(tmp_path, **body, seed=2)
    assert a.model_dump() == b.model_dump()
    assert a.privacy.candidate_rows == 200 and a.privacy.reference_rows == 200
    assert a.fidelity.propensity_auc != c.fidelity.propensity_auc
    assert any("subsamples" in note for note in a.notes)


def test_csv_files_with_headers(tmp_path: Path, ref: np.ndarray, iid: np.ndarray) -> None:
    data = tmp_path / "data" / "sets"
    data.mkdir(parents=True)
    header = ",".join(NAMES)
    np.savetxt(data / "real.csv", ref, delimiter=",", header=header, comments="")
    np.savetxt(
        data / "synth.csv",
        iid[:, [1, 0, 2, 3]],
        delimiter=",",
        header="specificity,clarity,length,effectiveness",
        comments="",
    )
    out = score(
        tmp_path,
        reference={"path": "sets/real.csv"},
        candidate={"path": "sets/synth.csv", "columns": NAMES},  # picked by name, in the reference's order
        target="effectiveness",
    )
    inline = score(tmp_path, reference=ref, candidate=iid, columns=NAMES, target="effectiveness")
    assert out.columns == NAMES
    assert out.fidelity.ks_mean == pytest.approx(inline.fidelity.ks_mean)
    assert out.utility.tstr == pytest.approx(inline.utility.tstr)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"target": "nope"}, 422, "target"),
        ({"columns": ["a", "b"]}, 422, "columns"),
        ({"columns": ["a", "a", "c"]}, 422, "columns"),
        ({"bounds": {"zz": {"min": 0}}}, 422, "bounds.zz"),
        ({"bounds": {"a": {"min": 2, "max": 1}}}, 422, "bounds.a"),
        ({"candidate": [[1.0, 2.0, 3.0], [1.0, 2.0]]}, 422, "candidate"),
        ({"candidate": [[1.0, 2.0]] * 12}, 422, "candidate"),
        ({"candidate": [[1.0, 2.0, 3.0]] * 5}, 422, "at least 10 complete rows"),
        ({"weights": {"fidelity": 0, "utility": 0, "diversity": 0, "consistency": 0, "privacy": 0}}, 422, "weights"),
        ({"target": None, "weights": {"fidelity": 0, "diversity": 0, "consistency": 0, "privacy": 0}}, 422, "weights"),
        ({"sample_rows": 10}, 422, "sample_rows"),
        ({"reference": {"path": "../etc/passwd"}}, 400, "reference.path"),
        ({"reference": {"path": "missing.csv"}}, 400, "reference.path"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(
    client_for: Callable[..., TestClient], change: dict[str, Any], status: int, field: str
) -> None:
    body = {**json.loads(json.dumps(enhanced_quality_scorer.example)), "columns": ["a", "b", "c"], "target": "c"}
    body.pop("bounds")
    body.update(change)
    r = client_for(enhanced_quality_scorer).post(ROUTE, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]


def test_infinity_in_a_file_is_422(client_for: Callable[..., TestClient], settings: Any) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).normal(size=(20, 2))
    arr[3, 1] = np.inf
    np.save(settings.data_dir / "inf.npy", arr)
    body = {"reference": {"path": "inf.npy"}, "candidate": np.zeros((12, 2)).tolist()}
    r = client_for(enhanced_quality_scorer).post(ROUTE, json=body)
    assert r.status_code == 422 and "reference" in r.json()["detail"]
