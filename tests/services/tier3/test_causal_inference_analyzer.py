"""Known-answer tests of the causal inference analyzer.

References: Stata's published ``teffects`` results on the Cattaneo (2010) birth-weight data (shipped with
statsmodels' test suite, data and Stata tables both), statsmodels (OLS with robust and cluster covariances,
``TreatmentEffect`` IPW/AIPW as GMM), scikit-learn's unpenalised logistic regression, a brute-force
implementation of the Abadie–Imbens (2006) matching formulas, and the E-value of VanderWeele & Ding (2017).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from statsmodels.treatment.treatment_effects import TreatmentEffect

from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier3.causal_inference_analyzer import (
    CausalInferenceAnalyzerInput,
    CausalInferenceAnalyzerOutput,
    causal_inference_analyzer,
    e_value,
)
from tests.conftest import make_settings

NAME = "causal_inference_analyzer"


def run(settings: Settings, **fields: object) -> CausalInferenceAnalyzerOutput:
    ctx = RunContext(component=NAME, settings=settings, request_id=None)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return causal_inference_analyzer(CausalInferenceAnalyzerInput(**fields), ctx)


def pick(out: CausalInferenceAnalyzerOutput, method: str, estimand: str = "ATE"):
    return next(e for e in out.estimates if e.method == method and e.estimand == estimand)


def confounded(n: int, seed: int) -> dict[str, np.ndarray]:
    """x1, x2 raise both treatment and outcome; the effect is heterogeneous: 2 + 0.5·x1."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    x3 = (rng.random(n) < 0.4).astype(float)
    t = (rng.random(n) < expit(-0.3 + 0.9 * x1 - 0.7 * x2 + 0.5 * x3)).astype(float)
    tau = 2.0 + 0.5 * x1
    y = 1.0 + tau * t + 1.5 * x1 + 1.0 * x2 - 0.8 * x3 + rng.normal(size=n)
    return {"y": y, "t": t, "x": np.column_stack([x1, x2, x3]), "tau": tau}


def covs(x: np.ndarray) -> dict[str, list[float]]:
    return {f"x{c + 1}": x[:, c].tolist() for c in range(x.shape[1])}


# --------------------------------------------------------------------------- simulated recovery


def test_adjusted_estimators_recover_the_effect_the_naive_difference_misses(settings: Settings) -> None:
    d = confounded(3000, seed=11)
    out = run(settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]), seed=1)
    ate, att = float(d["tau"].mean()), float(d["tau"][d["t"] == 1].mean())
    assert abs(out.naive.estimate - ate) > 8 * out.naive.std_error  # confounding biases the naive difference
    for method in ("ipw", "aipw", "matching"):
        est = pick(out, method)
        assert abs(est.estimate - ate) < 4 * est.std_error, method
        assert est.ci_low < est.estimate < est.ci_high
        assert 0.0 <= est.p_value <= 1.0
    for method in ("ipw", "matching"):
        est = pick(out, method, "ATT")
        assert abs(est.estimate - att) < 4 * est.std_error, method
    assert out.methods_run == ["naive", "ipw", "aipw", "matching"]
    on_score = run(
        settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]), methods=["matching"],
        matching_on="propensity", placebo_permutations=0,
    )  # fmt: skip
    assert on_score.matching.on == "propensity"
    for estimand, target in (("ATE", ate), ("ATT", att)):
        est = pick(on_score, "matching", estimand)
        assert abs(est.estimate - target) < 4 * est.std_error
    # Adjustment must shrink every covariate imbalance.
    for row in out.balance:
        assert abs(row.smd_weighted) < abs(row.smd_before)
        assert abs(row.smd_matched) < abs(row.smd_before)


def test_standard_errors_are_calibrated_over_replications(settings: Settings) -> None:
    """z-scores against the known ATE over independent samples: mean ≈ 0, SD ≈ 1 for each estimator."""
    z = {"ipw": [], "aipw": [], "matching": []}
    for rep in range(40):
        d = confounded(400, seed=1000 + rep)
        out = run(
            settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]),
            placebo_permutations=0,
        )  # fmt: skip
        for method in z:
            est = pick(out, method)
            z[method].append((est.estimate - 2.0) / est.std_error)
    for method, values in z.items():
        arr = np.asarray(values)
        assert abs(arr.mean()) < 0.6, method
        assert 0.65 < arr.std(ddof=1) < 1.4, method


# --------------------------------------------------------------------------- references: statsmodels / sklearn


def test_ipw_and_aipw_match_statsmodels_treatment_effect_gmm(settings: Settings) -> None:
    d = confounded(2000, seed=3)
    out = run(
        settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]),
        methods=["ipw", "aipw"], propensity_clip=0.0, placebo_permutations=0,
    )  # fmt: skip
    exog = sm.add_constant(d["x"])
    select = sm.Logit(d["t"], exog).fit(disp=0)
    teff = TreatmentEffect(sm.OLS(d["y"], exog), d["t"], results_select=select)
    for method, estimand, ref in (
        ("aipw", "ATE", teff.aipw(return_results=True)),
        ("ipw", "ATE", teff.ipw(return_results=True)),
        ("ipw", "ATT", teff.ipw(return_results=True, effect_group=1)),
    ):
        est = pick(out, method, estimand)
        assert est.estimate == pytest.approx(ref.effect[0], rel=1e-9)
        # statsmodels differentiates the moments numerically: agreement to ~1e-6.
        assert est.std_error == pytest.approx(ref.results_gmm.bse[0], rel=1e-4)
    coefs = out.propensity.coefficients
    np.testing.assert_allclose(list(coefs.values()), select.params, rtol=1e-7)


def test_aipw_point_estimate_and_influence_function_match_a_direct_computation(settings: Settings) -> None:
    d = confounded(1500, seed=5)
    y, t, x = d["y"], d["t"], d["x"]
    out = run(
        settings, outcome=y.tolist(), treatment=t.tolist(), covariates=covs(x), methods=["aipw"],
        propensity_clip=0.0, placebo_permutations=0,
    )  # fmt: skip
    e = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, t).predict_proba(x)[:, 1]
    exog = sm.add_constant(x)
    m1 = sm.OLS(y[t == 1], exog[t == 1]).fit().predict(exog)
    m0 = sm.OLS(y[t == 0], exog[t == 0]).fit().predict(exog)
    phi = m1 - m0 + t * (y - m1) / e - (1 - t) * (y - m0) / (1 - e)
    est = pick(out, "aipw")
    assert est.estimate == pytest.approx(phi.mean(), rel=1e-6)
    # The plain influence-function SE ignores nuisance estimation (first-order negligible for AIPW) ...
    assert est.std_error == pytest.approx(phi.std() / math.sqrt(y.size), rel=0.1)
    # ... the exact one is the sandwich of all stacked moments, here with a numerical Jacobian.
    gamma = sm.Logit(t, exog).fit(disp=0).params
    beta1 = sm.OLS(y[t == 1], exog[t == 1]).fit().params
    beta0 = sm.OLS(y[t == 0], exog[t == 0]).fit().params
    theta = np.concatenate([[m1.mean() + np.mean(t * (y - m1) / e), 0.0], gamma, beta1, beta0])
    theta[1] = np.mean(m0 + (1 - t) * (y - m0) / (1 - e))
    p = exog.shape[1]

    def moments(th: np.ndarray) -> np.ndarray:
        g, b1, b0 = th[2 : 2 + p], th[2 + p : 2 + 2 * p], th[2 + 2 * p :]
        ps, f1, f0 = expit(exog @ g), exog @ b1, exog @ b0
        return np.column_stack([
            f1 + t * (y - f1) / ps - th[0],
            f0 + (1 - t) * (y - f0) / (1 - ps) - th[1],
            exog * (t - ps)[:, None],
            exog * (t * (y - f1))[:, None],
            exog * ((1 - t) * (y - f0))[:, None],
        ])  # fmt: skip

    steps = 1e-6 * (1 + np.abs(theta))
    jac = np.column_stack([
        (moments(theta + h).mean(axis=0) - moments(theta - h).mean(axis=0)) / (2 * h[i])
        for i, h in enumerate(np.diag(steps))
    ])  # fmt: skip
    g_rows = moments(theta)
    inv = np.linalg.inv(jac)
    cov = inv @ (g_rows.T @ g_rows / y.size) @ inv.T / y.size
    assert est.std_error == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=1e-5)


def test_did_matches_statsmodels_ols_with_cluster_and_hc1_errors(settings: Settings) -> None:
    rng = np.random.default_rng(21)
    units, periods = 120, 4
    unit = np.repeat(np.arange(units), periods)
    period = np.tile(np.arange(periods), units)
    treated = (unit < 50).astype(float)
    post = (period >= 2).astype(float)
    y = 3 + rng.normal(size=units)[unit] + 0.4 * period + 0.7 * treated + 1.5 * treated * post
    y = y + rng.normal(scale=0.8, size=y.size)
    base = {"outcome": y.tolist(), "treatment": treated.tolist(), "post": post.tolist(), "time": period.tolist()}
    frame = pd.DataFrame({"y": y, "treated": treated, "post": post})
    for cluster in (True, False):
        out = run(settings, **base, **({"cluster": unit.tolist()} if cluster else {}))
        kw = {"cov_type": "cluster", "cov_kwds": {"groups": unit}} if cluster else {"cov_type": "HC1"}
        ref = smf.ols("y ~ treated * post", data=frame).fit(use_t=False, **kw)
        est = pick(out, "did", "ATT")
        assert est.estimate == pytest.approx(ref.params["treated:post"], rel=1e-10)
        assert est.std_error == pytest.approx(ref.bse["treated:post"], rel=1e-10)
        assert est.p_value == pytest.approx(ref.pvalues["treated:post"], rel=1e-8)
        low, high = ref.conf_int().loc["treated:post"]
        assert (est.ci_low, est.ci_high) == pytest.approx((low, high), rel=1e-10)
        table = {c.term: c for c in out.did.coefficients}
        for term, ref_term in (("intercept", "Intercept"), ("treated", "treated"), ("post", "post")):
            assert table[term].estimate == pytest.approx(ref.params[ref_term], rel=1e-9)
            assert table[term].std_error == pytest.approx(ref.bse[ref_term], rel=1e-9)
        assert abs(est.estimate - 1.5) < 4 * est.std_error  # the planted effect
        assert out.did.n_clusters == (units if cluster else None)
    # Parallel trends hold here: the pre-period placebo finds nothing.
    pre = next(p for p in out.placebo if p.kind == "pre_period_did")
    assert pre.passed and abs(pre.estimate) < 4 * pre.std_error


def test_did_pre_period_placebo_detects_diverging_trends(settings: Settings) -> None:
    rng = np.random.default_rng(8)
    units, periods = 100, 5
    unit = np.repeat(np.arange(units), periods)
    period = np.tile(np.arange(periods), units).astype(float)
    treated = (unit % 2).astype(float)
    post = (period >= 3).astype(float)
    y = 0.5 * period + 1.2 * treated * period + rng.normal(scale=0.5, size=unit.size)  # no parallel trends
    out = run(
        settings, outcome=y.tolist(), treatment=treated.tolist(), post=post.tolist(), time=period.tolist(),
        cluster=unit.tolist(),
    )  # fmt: skip
    pre = next(p for p in out.placebo if p.kind == "pre_period_did")
    assert pre.passed is False and pre.p_value < 1e-3


# --------------------------------------------------------------------------- references: published benchmark

CATTANEO = Path(__import__("statsmodels.treatment.tests", fromlist=["x"]).__file__).parent / "results" / "cataneo2.csv"
needs_cattaneo = pytest.mark.skipif(not CATTANEO.is_file(), reason="statsmodels does not ship cataneo2.csv here")


@needs_cattaneo
def test_cattaneo_birthweight_matches_stata_teffects_ipw_and_aipw(settings: Settings) -> None:
    """Stata: teffects ipw|aipw (bweight prenatal1 mmarried mage fbaby) (mbsmoke mmarried c.mage##c.mage fbaby
    medu, probit) — the tables shipped in statsmodels/treatment/tests/results/results_teffects.py."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(CATTANEO, settings.data_dir / "cattaneo2.csv")
    ref = {"path": "cattaneo2.csv"}
    out = run(
        settings,
        outcome={**ref, "column": "bweight"},
        treatment={**ref, "column": "mbsmoke_"},
        covariates={**ref, "columns": ["mmarried_", "mage", "mage2", "fbaby_", "medu", "prenatal1_"]},
        propensity_covariates=["mmarried_", "mage", "mage2", "fbaby_", "medu"],
        outcome_covariates=["prenatal1_", "mmarried_", "mage", "fbaby_"],
        methods=["ipw", "aipw"],
        propensity_link="probit",
        propensity_clip=0.0,
        placebo_permutations=0,
    )
    assert out.n == 4642 and out.n_treated == 864
    stata = {
        ("ipw", "ATE"): (-230.68863779526, 25.815243801554),
        ("ipw", "ATT"): (-225.17726054799, 23.664582726945),
        ("aipw", "ATE"): (-230.98920111258, 26.210564625435),
    }
    for (method, estimand), (b, se) in stata.items():
        est = pick(out, method, estimand)
        assert est.estimate == pytest.approx(b, rel=1e-8)
        assert est.std_error == pytest.approx(se, rel=1e-6)
    probit = [-1.5582552629264, -0.64848213804682, 0.17443269674281, -0.00325591262232, -0.2175961616731,
              -0.08636308703575]  # fmt: skip
    np.testing.assert_allclose(list(out.propensity.coefficients.values()), probit, rtol=1e-8)
    assert out.naive.estimate == pytest.approx(-275.25, abs=0.01)  # "smokers' babies weigh 275 g less"


@needs_cattaneo
def test_cattaneo_nnmatch_and_balance_match_published_stata_output(settings: Settings) -> None:
    """Stata: teffects nnmatch (bweight mage prenatal1 mmarried fbaby) (mbsmoke), nn(1) → ATE −240.3306,
    AI robust SE 28.43006, matches per row 1..139; tebalance raw standardised differences and variance ratios."""
    frame = pd.read_csv(CATTANEO)
    names = ["mage", "prenatal1_", "mmarried_", "fbaby_"]
    out = run(
        settings,
        outcome=frame["bweight"].astype(float).tolist(),
        treatment=frame["mbsmoke_"].astype(float).tolist(),
        covariates={c: frame[c].astype(float).tolist() for c in names},
        methods=["matching"],
        matching_bias_correction=False,
        placebo_permutations=0,
    )
    est = pick(out, "matching")
    assert est.estimate == pytest.approx(-240.3306, abs=5e-5)
    assert est.std_error == pytest.approx(28.43006, abs=5e-6)
    assert out.matching.max_times_used > 1
    smd = {"mage": -0.300179, "prenatal1_": -0.3242695, "mmarried_": -0.5953009, "fbaby_": -0.1663271}
    ratio = {"mage": 0.8818025, "prenatal1_": 1.496155, "mmarried_": 1.335944, "fbaby_": 0.9430944}
    for row in out.balance:
        assert row.smd_before == pytest.approx(smd[row.covariate], rel=1e-5)
        assert row.variance_ratio == pytest.approx(ratio[row.covariate], rel=1e-5)
        # Exact matches on the binary covariates remove their imbalance entirely.
        if row.covariate != "mage":
            assert row.smd_matched == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- references: textbook formulas


def ai_matching_reference(y: np.ndarray, t: np.ndarray, x: np.ndarray, m: int) -> tuple[float, float, float, float]:
    """Brute-force Abadie–Imbens (2006) estimator with J=1: ATE, SE, ATT, SE (Mahalanobis, no ties)."""
    n = y.size
    dist = cdist(x, x, metric="mahalanobis", VI=np.linalg.inv(np.cov(x, rowvar=False)))
    y1, y0, k = y.copy(), y.copy(), np.zeros(n)
    sigma2 = np.zeros(n)
    for i in range(n):
        other = np.flatnonzero(t != t[i])
        matches = other[np.argsort(dist[i, other])[:m]]
        k[matches] += 1
        if t[i] == 1:
            y0[i] = y[matches].mean()
        else:
            y1[i] = y[matches].mean()
        same = np.flatnonzero((t == t[i]) & (np.arange(n) != i))
        nearest = same[np.argmin(dist[i, same])]
        sigma2[i] = 0.5 * (y[i] - y[nearest]) ** 2  # J/(J+1)·(Y_i − Ȳ_J)² with J = 1
    tau = (y1 - y0).mean()
    v = (((y1 - y0 - tau) ** 2).sum() + (((k / m) ** 2 + (2 * m - 1) / m * k / m) * sigma2).sum()) / n**2
    tr = t == 1
    tau_t = (y - y0)[tr].mean()
    v_t = (((y - y0 - tau_t)[tr] ** 2).sum() + (k * (k - 1) / m**2 * sigma2)[~tr].sum()) / tr.sum() ** 2
    return tau, math.sqrt(v), tau_t, math.sqrt(v_t)


@pytest.mark.parametrize("m", [1, 2])
def test_matching_equals_the_abadie_imbens_formulas(settings: Settings, m: int) -> None:
    d = confounded(240, seed=17 + m)
    x = d["x"][:, :2]  # continuous covariates: no ties
    out = run(
        settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(x), methods=["matching"],
        matching_neighbors=m, variance_neighbors=1, matching_bias_correction=False, placebo_permutations=0,
    )  # fmt: skip
    tau, se, tau_t, se_t = ai_matching_reference(d["y"], d["t"], x, m)
    assert pick(out, "matching").estimate == pytest.approx(tau, rel=1e-12)
    assert pick(out, "matching").std_error == pytest.approx(se, rel=1e-10)
    assert pick(out, "matching", "ATT").estimate == pytest.approx(tau_t, rel=1e-12)
    assert pick(out, "matching", "ATT").std_error == pytest.approx(se_t, rel=1e-10)


def test_bias_corrected_matching_adds_the_regression_adjustment(settings: Settings) -> None:
    d = confounded(300, seed=4)
    y, t, x = d["y"], d["t"], d["x"][:, :2]
    fields = {"outcome": y.tolist(), "treatment": t.tolist(), "covariates": covs(x), "methods": ["matching"]}
    plain = run(settings, **fields, matching_bias_correction=False, placebo_permutations=0)
    corrected = run(settings, **fields, matching_bias_correction=True, placebo_permutations=0)
    dist = cdist(x, x, metric="mahalanobis", VI=np.linalg.inv(np.cov(x, rowvar=False)))
    exog = sm.add_constant(x)
    mu = {a: sm.OLS(y[t == a], exog[t == a]).fit().predict(exog) for a in (0, 1)}
    other = [np.flatnonzero(t != t[i]) for i in range(y.size)]
    match = np.array([o[np.argmin(dist[i, o])] for i, o in enumerate(other)])
    arm_of_match = (1 - t).astype(int)
    adj = np.array([mu[a][i] - mu[a][j] for i, (j, a) in enumerate(zip(match, arm_of_match, strict=True))])
    # ATE = mean over rows of ±(Y_i − Y_match − adjustment), sign by the row's arm.
    sign = np.where(t == 1, 1.0, -1.0)
    expected = np.mean(sign * (y - y[match] - adj))
    assert pick(corrected, "matching").estimate == pytest.approx(expected, rel=1e-10)
    assert pick(plain, "matching").estimate == pytest.approx(np.mean(sign * (y - y[match])), rel=1e-10)


def test_standardised_mean_differences_follow_the_hand_formula(settings: Settings) -> None:
    d = confounded(800, seed=9)
    y, t, x = d["y"], d["t"], d["x"]
    out = run(
        settings, outcome=y.tolist(), treatment=t.tolist(), covariates=covs(x), methods=["ipw"],
        propensity_clip=0.0, placebo_permutations=0,
    )  # fmt: skip
    e = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, t).predict_proba(x)[:, 1]
    w = np.where(t == 1, 1 / e, 1 / (1 - e))
    for c, row in enumerate(out.balance):
        a, b = x[t == 1, c], x[t == 0, c]
        sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
        assert row.smd_before == pytest.approx((a.mean() - b.mean()) / sd, rel=1e-12)
        wa = np.average(a, weights=w[t == 1])
        wb = np.average(b, weights=w[t == 0])
        assert row.smd_weighted == pytest.approx((wa - wb) / sd, rel=1e-5, abs=1e-8)
        assert row.variance_ratio == pytest.approx(a.var(ddof=1) / b.var(ddof=1), rel=1e-12)
        assert row.smd_matched is None


def test_e_value_matches_the_published_example_and_the_formula(settings: Settings) -> None:
    # VanderWeele & Ding (2017): RR 3.9 (CI 1.8–8.7) → E-values 7.26 and 3.0.
    assert e_value(3.9) == pytest.approx(7.26, abs=0.005)
    assert e_value(1.8) == pytest.approx(3.0, abs=1e-12)
    assert e_value(1 / 3.9) == pytest.approx(e_value(3.9))
    d = confounded(1000, seed=12)
    y, t = d["y"], d["t"]
    out = run(settings, outcome=y.tolist(), treatment=t.tolist(), covariates=covs(d["x"]), placebo_permutations=0)
    a, b = y[t == 1], y[t == 0]
    sd = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (y.size - 2))
    aipw = pick(out, "aipw")
    rr = math.exp(0.91 * aipw.estimate / sd)
    assert out.sensitivity.basis == "aipw ATE"
    assert out.sensitivity.risk_ratio == pytest.approx(rr, rel=1e-12)
    assert out.sensitivity.e_value == pytest.approx(rr + math.sqrt(rr * (rr - 1)), rel=1e-12)
    rr_low = math.exp(0.91 * aipw.ci_low / sd)
    assert out.sensitivity.e_value_ci == pytest.approx(rr_low + math.sqrt(rr_low * (rr_low - 1)), rel=1e-9)


def test_binary_outcome_e_value_uses_the_risk_ratio_of_potential_outcome_means(settings: Settings) -> None:
    d = confounded(2000, seed=13)
    t, x = d["t"], d["x"]
    rng = np.random.default_rng(0)
    y = (rng.random(t.size) < expit(-1 + 0.8 * t + 0.6 * x[:, 0])).astype(float)
    out = run(
        settings, outcome=y.tolist(), treatment=t.tolist(), covariates=covs(x), methods=["aipw"],
        propensity_clip=0.0, placebo_permutations=0,
    )  # fmt: skip
    exog = sm.add_constant(x)
    select = sm.Logit(t, exog).fit(disp=0)
    ref = TreatmentEffect(sm.OLS(y, exog), t, results_select=select).aipw(return_results=True)
    pom0, pom1 = ref.results_gmm.params[1], ref.results_gmm.params[1] + ref.effect[0]
    assert "risk ratio" in out.sensitivity.scale
    assert out.sensitivity.risk_ratio == pytest.approx(pom1 / pom0, rel=1e-8)
    rr = out.sensitivity.risk_ratio
    assert out.sensitivity.e_value == pytest.approx(rr + math.sqrt(rr * (rr - 1)), rel=1e-12)


# --------------------------------------------------------------------------- placebo tests


def test_placebos_find_no_effect(settings: Settings) -> None:
    d = confounded(1500, seed=23)
    rng = np.random.default_rng(5)
    # Confounded like the outcome but untouched by the treatment: adjustment must remove its "effect".
    placebo_y = 1.2 * d["x"][:, 0] - 0.5 * d["x"][:, 1] + rng.normal(size=d["t"].size)
    out = run(
        settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]),
        placebo_outcome=placebo_y.tolist(), placebo_permutations=30, seed=3,
    )  # fmt: skip
    perm = next(p for p in out.placebo if p.kind == "permuted_treatment")
    assert perm.method == "aipw" and perm.n_draws == 30 and perm.n_skipped == 0
    assert abs(perm.estimate) < 4 * perm.std_error and perm.passed
    assert perm.rejection_rate <= 0.25
    true_effect = float(d["tau"].mean())
    assert abs(perm.estimate) < 0.1 * true_effect
    outcome_placebo = next(p for p in out.placebo if p.kind == "placebo_outcome")
    assert abs(outcome_placebo.estimate) < 4 * outcome_placebo.std_error and outcome_placebo.passed
    naive_gap = placebo_y[d["t"] == 1].mean() - placebo_y[d["t"] == 0].mean()
    assert abs(naive_gap) > 10 * outcome_placebo.std_error  # the unadjusted comparison would "find" an effect


# --------------------------------------------------------------------------- input forms and invariants


def test_inline_rows_named_columns_and_csv_file_give_identical_results(settings: Settings) -> None:
    d = confounded(300, seed=31)
    y, t, x = d["y"], d["t"], d["x"]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([y, t, x])
    np.savetxt(settings.data_dir / "obs.csv", table, delimiter=",", header="y,t,x1,x2,x3", comments="", fmt="%.17g")
    common = {"seed": 4, "placebo_permutations": 5}
    named = run(settings, outcome=y.tolist(), treatment=t.tolist(), covariates=covs(x), **common)
    rows = run(
        settings, outcome=y.tolist(), treatment=t.tolist(), covariates=x.tolist(), covariate_names=["x1", "x2", "x3"],
        **common,
    )  # fmt: skip
    ref = {"path": "obs.csv"}
    from_file = run(
        settings,
        outcome={**ref, "column": "y"},
        treatment={**ref, "column": "t"},
        covariates={**ref, "columns": ["x1", "x2", "x3"]},
        **common,
    )
    assert named.model_dump() == rows.model_dump() == from_file.model_dump()


@hypothesis_settings(max_examples=12, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=10**6))
def test_estimates_do_not_depend_on_row_order(tmp_path_factory: pytest.TempPathFactory, order: int, data: int) -> None:
    cfg = make_settings(tmp_path_factory.mktemp("perm"))
    d = confounded(150, seed=data)
    x = d["x"][:, :2]
    perm = np.random.default_rng(order).permutation(d["y"].size)
    outs = [
        run(cfg, outcome=d["y"][p].tolist(), treatment=d["t"][p].tolist(), covariates=covs(x[p]),
            placebo_permutations=0)
        for p in (np.arange(d["y"].size), perm)
    ]  # fmt: skip
    for a, b in zip(outs[0].estimates, outs[1].estimates, strict=True):
        assert (a.method, a.estimand) == (b.method, b.estimand)
        assert a.estimate == pytest.approx(b.estimate, rel=1e-8, abs=1e-10)
        assert a.std_error == pytest.approx(b.std_error, rel=1e-8)
        assert 0.0 <= a.p_value <= 1.0


def test_same_seed_same_result_and_a_different_seed_only_moves_the_placebo(settings: Settings) -> None:
    d = confounded(200, seed=2)
    fields = {"outcome": d["y"].tolist(), "treatment": d["t"].tolist(), "covariates": covs(d["x"])}
    a, b, c = run(settings, **fields, seed=1), run(settings, **fields, seed=1), run(settings, **fields, seed=2)
    assert a.model_dump() == b.model_dump()
    assert a.estimates == c.estimates
    assert a.placebo[0].estimate != c.placebo[0].estimate


def test_probit_propensity_matches_statsmodels_probit(settings: Settings) -> None:
    d = confounded(1000, seed=41)
    out = run(
        settings, outcome=d["y"].tolist(), treatment=d["t"].tolist(), covariates=covs(d["x"]), methods=["ipw"],
        propensity_link="probit", placebo_permutations=0,
    )  # fmt: skip
    ref = sm.Probit(d["t"], sm.add_constant(d["x"])).fit(disp=0)
    np.testing.assert_allclose(list(out.propensity.coefficients.values()), ref.params, rtol=1e-7)


def test_clipping_is_bounded_and_reported(settings: Settings) -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=600)
    t = (rng.random(600) < expit(-0.5 + 3.0 * x)).astype(float)
    y = t + x + rng.normal(size=600)
    out = run(
        settings, outcome=y.tolist(), treatment=t.tolist(), covariates={"x": x.tolist()}, methods=["ipw"],
        propensity_clip=0.05, placebo_permutations=0,
    )  # fmt: skip
    p = out.propensity
    e = expit(p.coefficients["intercept"] + p.coefficients["x"] * x)
    assert p.n_clipped_low == int((e < 0.05).sum()) > 0
    assert p.n_clipped_high == int((e > 0.95).sum()) > 0
    assert min(p.min_treated, p.min_control) >= 0.05 and max(p.max_treated, p.max_control) <= 0.95
    assert any("clipped" in note for note in out.notes)


# --------------------------------------------------------------------------- HTTP and degenerate input


def test_http_example_runs_and_returns_the_envelope(client_for) -> None:
    client = client_for(causal_inference_analyzer)
    r = client.post(f"/run/{NAME}", json=causal_inference_analyzer.example)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["component"] == NAME and body["orchestrator_compatible"] is True
    result = body["component_result"]
    assert {e["method"] for e in result["estimates"]} == {"ipw", "aipw", "matching"}
    assert result["sensitivity"]["e_value"] >= 1.0


X_OK = [0.1, -1.2, 0.8, 1.5, -0.3, 0.4, -0.9, 1.1, -1.6, 0.2]
T_OK = [0, 0, 1, 1, 0, 1, 0, 1, 0, 1]
Y_OK = [1.0, 0.2, 2.5, 3.1, 0.4, 2.0, 0.1, 2.7, -0.5, 1.9]


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({"treatment": [0] * 10}, "treatment", "0 treated"),
        ({"treatment": [1] * 10}, "treatment", "0 control"),
        ({"treatment": [0, 0, 1, 1, 0, 1, 0, 1, 0, 2]}, "treatment", "only 0 and 1"),
        ({"outcome": [3.0] * 10}, "outcome", "constant"),
        ({"outcome": Y_OK[:9]}, "treatment", "outcome has 9"),
        ({"covariates": {"x": [-1.0, -2, 1, 2, -1, 1, -2, 3, -1, 2]}}, "covariates", "separate"),
        ({"covariates": {"x": X_OK, "x2": [2 * v for v in X_OK]}}, "covariates", "collinear"),
        ({"methods": ["did"]}, "post", "post"),
        ({"time": list(range(10))}, "time", "post"),
        ({"matching_neighbors": 6, "methods": ["matching"]}, "matching_neighbors", "smaller arm"),
        ({"propensity_covariates": ["nope"]}, "propensity_covariates", "unknown"),
        ({"placebo_outcome": [1.0] * 10}, "placebo_outcome", "constant"),
        ({"covariates": {"x": X_OK[:8]}}, "covariates.x", "8 values"),
        ({"post": [0, 0, 0, 0, 0, 1, 1, 0, 0, 0], "methods": ["did"]}, "post", "treated=1, post=1 has 1 row"),
        ({"post": [0, 1] * 5, "cluster": [7] * 10}, "cluster", "2 distinct"),
        ({"covariates": [[1.0, 2.0]] * 9 + [[1.0]]}, "covariates", "same number of columns"),
    ],
)
def test_degenerate_input_is_a_422_naming_the_field(client_for, body: dict, field: str, phrase: str) -> None:
    client = client_for(causal_inference_analyzer)
    payload = {"outcome": Y_OK, "treatment": T_OK, "covariates": {"x": X_OK}, "placebo_permutations": 0, **body}
    r = client.post(f"/run/{NAME}", json=payload)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{field}:") and phrase in detail, detail


def test_schema_level_errors_are_422(client_for) -> None:
    client = client_for(causal_inference_analyzer)
    base = {"outcome": Y_OK, "treatment": T_OK}
    for body in (
        {},
        {**base, "unknown": 1},
        {**base, "propensity_clip": 0.3},
        {**base, "placebo_permutations": 1},
        {**base, "methods": ["ipw", "ipw"]},
        {**base, "covariates": [[1.0]] * 10, "covariate_names": ["a", "b"]},
    ):
        r = client.post(f"/run/{NAME}", json=body)
        assert r.status_code == 422, body
        assert r.json()["status"] == 422


def test_no_covariates_gives_the_naive_difference_only(settings: Settings) -> None:
    out = run(settings, outcome=Y_OK, treatment=T_OK)
    a = np.asarray(Y_OK)[np.asarray(T_OK) == 1]
    b = np.asarray(Y_OK)[np.asarray(T_OK) == 0]
    assert out.estimates == [] and out.methods_run == ["naive"]
    assert out.naive.estimate == pytest.approx(a.mean() - b.mean())
    assert out.naive.std_error == pytest.approx(math.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 5))
