"""Copula and mixture fits against numpy/scipy/scikit-learn statistics of the real data; the prompt-feature model
against scipy's distributions and the closed-form copula relations; reproducibility; files; errors over HTTP."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy import integrate, stats
from sklearn.datasets import load_diabetes

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.tier2.production_synthetic_data_generator import (
    DEFAULT_CORRELATION,
    DEFAULT_DOMAINS,
    FEATURES,
    ProductionSyntheticDataGeneratorInput,
    ProductionSyntheticDataGeneratorOutput,
    production_synthetic_data_generator,
)

NAME = "production_synthetic_data_generator"
# The documented default latent model: β per feature (FEATURES order) and the noise SD.
DEFAULT_BETA = np.array([0.35, 0.05, 0.30, -0.15, 0.20, 0.30])
DEFAULT_NOISE = 0.5
DEFAULT_BETAS = {
    "clarity": (5, 2),
    "specificity": (4, 3),
    "complexity": (2, 3),
    "context_richness": (2, 4),
    "actionability": (4, 2),
}


@pytest.fixture
def ctx(settings: Settings) -> RunContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(component=NAME, settings=settings, request_id=None)


def run(ctx: RunContext, **body: Any) -> ProductionSyntheticDataGeneratorOutput:
    return production_synthetic_data_generator(ProductionSyntheticDataGeneratorInput.model_validate(body), ctx)


def to_rows(x: np.ndarray, names: list[str]) -> list[dict[str, float]]:
    return [dict(zip(names, row, strict=True)) for row in x.tolist()]


def column_array(out: ProductionSyntheticDataGeneratorOutput, names: list[str]) -> np.ndarray:
    assert out.rows is not None
    return np.array([[row[c] for c in names] for row in out.rows], dtype=float)


@pytest.fixture(scope="module")
def correlated() -> tuple[np.ndarray, list[str]]:
    """Strongly correlated, non-normal columns: normal, log-normal, cubed, and an integer count."""
    rng = np.random.default_rng(2024)
    cov = [[1.0, 0.8, 0.6, -0.5], [0.8, 1.0, 0.5, -0.4], [0.6, 0.5, 1.0, -0.3], [-0.5, -0.4, -0.3, 1.0]]
    z = rng.multivariate_normal(np.zeros(4), cov, size=800)
    x = np.column_stack([z[:, 0], np.exp(z[:, 1]), z[:, 2] ** 3, np.floor(30 + 8 * z[:, 3])])
    return x, ["a", "b", "c", "count"]


# ------------------------------------------------------------------------------------------------ fit: copula


def test_copula_reproduces_correlations_and_marginals(ctx, correlated):
    real, names = correlated
    out = run(ctx, mode="fit", rows=to_rows(real, names), n=4000, seed=1)
    synth = column_array(out, names)
    assert out.n_rows == 4000 and out.file is None and synth.shape == (4000, 4)
    # Correlations of the synthetic table against numpy / scipy on the real table.
    pearson_gap = np.abs(np.corrcoef(synth, rowvar=False) - np.corrcoef(real, rowvar=False))
    spearman_gap = np.abs(stats.spearmanr(synth).statistic - stats.spearmanr(real).statistic)
    assert pearson_gap.max() < 0.06, pearson_gap
    assert spearman_gap.max() < 0.05, spearman_gap
    # Marginals: small two-sample KS distances (scipy), values inside the observed range, integers stay integers.
    for j in range(4):
        assert stats.ks_2samp(real[:, j], synth[:, j]).statistic < 0.05
    assert np.all(synth.min(axis=0) >= real.min(axis=0)) and np.all(synth.max(axis=0) <= real.max(axis=0))
    assert np.all(synth[:, 3] == np.round(synth[:, 3]))
    assert [c.kind for c in out.columns] == ["continuous", "continuous", "continuous", "integer"]
    # The reported figures are those of the returned rows.
    q = out.quality
    assert q is not None
    assert q.synthetic.ks["b"] == pytest.approx(stats.ks_2samp(real[:, 1], synth[:, 1]).statistic, abs=1e-12)
    diff = np.corrcoef(synth, rowvar=False) - np.corrcoef(real, rowvar=False)
    assert q.synthetic.pearson_error.frobenius == pytest.approx(np.linalg.norm(diff), rel=1e-9)


def test_copula_beats_independent_baseline(ctx, correlated):
    real, names = correlated
    q = run(ctx, mode="fit", rows=to_rows(real, names), n=3000, seed=2).quality
    assert q is not None and q.beats_baseline_pearson and q.beats_baseline_spearman
    assert q.synthetic.pearson_error.frobenius < 0.2 * q.independent_baseline.pearson_error.frobenius
    assert q.synthetic.spearman_error.max_abs < 0.05 < 0.5 < q.independent_baseline.spearman_error.max_abs
    # Independent resampling keeps the marginals (tiny KS) but loses the dependence.
    assert q.independent_baseline.ks_max < 0.05
    # Privacy: no synthetic row copies a real record, and rows are not closer than real records are to each other.
    assert q.synthetic.dcr.exact_match_share == 0.0
    assert q.synthetic.dcr.median_ratio > 0.5


def test_copula_on_diabetes(ctx):
    data = load_diabetes()
    names = list(data.feature_names)
    real = data.data
    out = run(ctx, mode="fit", rows=to_rows(real, names), n=3000, seed=4)
    synth = column_array(out, names)
    gap = np.abs(np.corrcoef(synth, rowvar=False) - np.corrcoef(real, rowvar=False))
    assert gap[np.triu_indices(10, 1)].mean() < 0.03 and gap.max() < 0.1, gap
    assert out.quality.beats_baseline_pearson and out.quality.beats_baseline_spearman
    # The binary "sex" column keeps its correlations (the polyserial correction; without it they shrink ≈ 0.64×).
    assert gap[names.index("sex")].max() < 0.06, gap[names.index("sex")]
    # "sex" has two levels: only those appear, with about their shares.
    sex = names.index("sex")
    levels, counts = np.unique(real[:, sex], return_counts=True)
    assert set(np.unique(synth[:, sex])) <= set(levels)
    share = np.mean(synth[:, sex] == levels[0])
    assert share == pytest.approx(counts[0] / counts.sum(), abs=4 * np.sqrt(0.25 / 3000))


# ----------------------------------------------------------------------------------------------- fit: mixture


def test_mixture_picks_the_true_number_of_components(ctx):
    rng = np.random.default_rng(9)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    covs = [[[1, 0.7], [0.7, 1]], [[1, -0.6], [-0.6, 1]], [[0.5, 0], [0, 0.5]]]
    sizes = [300, 200, 100]
    real = np.concatenate([rng.multivariate_normal(c, v, s) for c, v, s in zip(centres, covs, sizes, strict=True)])
    out = run(ctx, mode="fit", rows=to_rows(real, ["x", "y"]), model="gaussian_mixture", max_components=5, n=3000)
    stratum = out.fit.strata[0]
    bics = {e.n_components: e.bic for e in stratum.bic}
    assert sorted(bics) == [1, 2, 3, 4, 5]
    assert stratum.n_components == min(bics, key=bics.get) == 3
    synth = column_array(out, ["x", "y"])
    # Component shares: the nearest true centre of each synthetic point.
    nearest = np.argmin(((synth[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / 3000, np.array(sizes) / 600, atol=0.03)
    for j in range(2):
        assert stats.ks_2samp(real[:, j], synth[:, j]).statistic < 0.06
    assert out.quality.beats_baseline_pearson


def test_mixture_snaps_discrete_columns_and_clips_to_range(ctx, correlated):
    real, _ = correlated
    flag = (real[:, 0] > 0).astype(float)  # binary, correlated with the rest
    data = np.column_stack([real[:, :2], flag])
    out = run(ctx, mode="fit", rows=to_rows(data, ["a", "b", "flag"]), model="gaussian_mixture", n=2000, seed=3)
    synth = column_array(out, ["a", "b", "flag"])
    assert set(np.unique(synth[:, 2])) <= {0.0, 1.0}
    assert np.all(synth[:, :2] >= data[:, :2].min(axis=0)) and np.all(synth[:, :2] <= data[:, :2].max(axis=0))
    assert out.quality.beats_baseline_pearson


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(
        st.tuples(st.integers(-3, 3), st.floats(-100, 100, allow_nan=False, allow_subnormal=False)),
        min_size=10,
        max_size=40,
    ),
    model=st.sampled_from(["gaussian_copula", "gaussian_mixture"]),
    n=st.integers(1, 60),
)
def test_fit_stays_in_range_or_names_the_field(ctx, data, model, n):
    """Arbitrary small tables (ties, discrete columns, tiny n): rows inside the observed range, or a 422."""
    real = np.array(data, dtype=float)
    try:
        out = run(ctx, mode="fit", rows=to_rows(real, ["k", "v"]), model=model, max_components=2, n=n)
    except InvalidInput as exc:
        assert exc.field == "columns" and "constant" in exc.detail
        assert np.ptp(real, axis=0).min() == 0
        return
    synth = column_array(out, ["k", "v"])
    assert synth.shape == (n, 2)
    assert np.all(synth >= real.min(axis=0)) and np.all(synth <= real.max(axis=0))
    assert np.all(synth[:, 0] == np.round(synth[:, 0]))  # integer or discrete: never between levels
    assert (out.quality is None) == (n < 20)


# -------------------------------------------------------------------------------------------- fit: categories


def test_categorical_strata_keep_category_dependence(ctx):
    rng = np.random.default_rng(5)
    domain = np.array(["coding"] * 300 + ["writing"] * 150 + ["rare"] * 10)
    shift = np.select([domain == "coding", domain == "writing"], [0.0, 3.0], 6.0)
    x = shift + rng.normal(size=460)
    y = -x + rng.normal(scale=0.5, size=460)
    rows = [{"domain": d, "x": a, "y": b} for d, a, b in zip(domain, x, y, strict=True)]
    out = run(ctx, mode="fit", rows=rows, categorical=["domain"], n=4600, seed=6)
    synth_domain = np.array([r["domain"] for r in out.rows])
    synth_x = np.array([r["x"] for r in out.rows])
    for name, size in [("coding", 300), ("writing", 150)]:
        assert np.mean(synth_domain == name) == pytest.approx(size / 460, abs=0.03)
        assert synth_x[synth_domain == name].mean() == pytest.approx(x[domain == name].mean(), abs=0.15)
    strata = {s.categories["domain"]: s for s in out.fit.strata}
    assert strata["coding"].model == "own" and strata["rare"].model == "pooled"
    assert out.fit.pooled_model_rows == 460
    assert out.quality.synthetic.total_variation["domain"] < 0.03
    assert out.columns[0].name == "domain" and out.columns[0].kind == "categorical"


def test_fit_from_csv_in_data_dir(ctx, correlated):
    real, names = correlated
    path = ctx.data_dir / "features.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, "domain"])
        writer.writerows([[*row, "g" if row[0] > 0 else "h"] for row in real.tolist()])
    out = run(ctx, mode="fit", data_path="features.csv", categorical=["domain"], columns=["a", "b"], n=500)
    assert out.fit.real_rows == 800 and out.fit.dropped_columns == ["c", "count"]
    assert set(out.rows[0]) == {"domain", "a", "b"}


# ------------------------------------------------------------------------------------------- prompt features


@pytest.fixture(scope="module")
def prompt_sample(tmp_path_factory: pytest.TempPathFactory) -> ProductionSyntheticDataGeneratorOutput:
    from tests.conftest import make_settings

    module_ctx = RunContext(component=NAME, settings=make_settings(tmp_path_factory.mktemp("pf")), request_id=None)
    return run(module_ctx, mode="prompt_features", n=5000, seed=11)


def test_prompt_features_bounds_and_marginals(prompt_sample):
    out = prompt_sample
    x = column_array(out, list(FEATURES))
    assert x.shape == (5000, 6)
    for name, (a, b) in DEFAULT_BETAS.items():
        col = x[:, FEATURES.index(name)]
        assert col.min() >= 0 and col.max() <= 1
        assert stats.kstest(col, stats.beta(a, b).cdf).pvalue > 1e-3
        check = next(m for m in out.model_check.moments if m.column == name)
        assert check.expected_mean == pytest.approx(stats.beta(a, b).mean(), rel=1e-12)
        assert check.expected_sd == pytest.approx(stats.beta(a, b).std(), rel=1e-12)
    length = x[:, FEATURES.index("length")]
    assert length.min() >= 5 and length.max() <= 4000 and np.all(length == np.round(length))
    assert all(isinstance(r["length"], int) for r in out.rows[:10])
    # Truncated log-normal moments by numerical integration with scipy's density.
    law = stats.lognorm(s=0.6, scale=120)
    mass = law.cdf(4000) - law.cdf(5)
    m1 = integrate.quad(lambda t: t * law.pdf(t), 5, 4000, limit=200)[0] / mass
    m2 = integrate.quad(lambda t: t * t * law.pdf(t), 5, 4000, limit=200)[0] / mass
    check = next(m for m in out.model_check.moments if m.column == "length")
    assert check.expected_mean == pytest.approx(m1, rel=1e-6)
    assert check.expected_sd == pytest.approx(np.sqrt(m2 - m1**2), rel=1e-6)
    assert length.mean() == pytest.approx(m1, abs=4 * np.sqrt(m2 - m1**2) / np.sqrt(5000))


def test_prompt_features_domain_and_tier_shares(prompt_sample):
    out = prompt_sample
    n = 5000
    domains = np.array([r["domain"] for r in out.rows])
    total = sum(DEFAULT_DOMAINS.values())
    for name, weight in DEFAULT_DOMAINS.items():
        p = weight / total
        assert np.mean(domains == name) == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
    score = np.array([r["effectiveness_score"] for r in out.rows])
    tier = np.array([r["effectiveness_tier"] for r in out.rows])
    assert np.all((score > 0) & (score < 1))
    expected_tier = np.where(score < 0.3, "low", np.where(score < 0.7, "medium", "high"))
    assert np.array_equal(tier, expected_tier)
    for name, p in [("low", 0.3), ("medium", 0.4), ("high", 0.3)]:
        assert np.mean(tier == name) == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
    assert stats.kstest(score, "uniform").pvalue > 1e-3
    shares = {s.column: s for s in out.model_check.shares}
    assert shares["domain"].chi_square_p > 1e-3 and shares["effectiveness_tier"].total_variation < 0.03
    # Clearer, more actionable prompts land in higher tiers.
    clarity = np.array([r["clarity"] for r in out.rows])
    assert clarity[tier == "low"].mean() < clarity[tier == "medium"].mean() < clarity[tier == "high"].mean()


def test_prompt_features_latent_linear_model(prompt_sample):
    """Back on the latent scale (scipy's Beta CDF and normal quantile), corr(z_j, e) = (Rβ)_j / sd(e)."""
    out = prompt_sample
    r = np.array(DEFAULT_CORRELATION)
    sd_e = np.sqrt(DEFAULT_BETA @ r @ DEFAULT_BETA + DEFAULT_NOISE**2)
    want = r @ DEFAULT_BETA / sd_e
    e = stats.norm.ppf([row["effectiveness_score"] for row in out.rows])
    for name, (a, b) in DEFAULT_BETAS.items():
        z = stats.norm.ppf(stats.beta(a, b).cdf([row[name] for row in out.rows]))
        assert np.corrcoef(z, e)[0, 1] == pytest.approx(want[FEATURES.index(name)], abs=0.04)
        assert out.model_check.latent_effectiveness_correlation[name] == pytest.approx(want[FEATURES.index(name)])
    # Spearman of the generated columns against the Gaussian-copula identity ρ_S = (6/π) arcsin(ρ/2).
    full = np.block([[r, want[:, None]], [want[None, :], np.ones((1, 1))]])
    x = column_array(out, [*FEATURES, "effectiveness_score"])
    gap = np.abs(stats.spearmanr(x).statistic - 6 / np.pi * np.arcsin(full / 2))
    assert gap.max() < 0.05, gap
    assert out.model_check.spearman_error.max_abs < 0.05


def test_prompt_features_custom_parameters(ctx):
    out = run(
        ctx,
        mode="prompt_features",
        n=3000,
        seed=1,
        correlation=np.eye(6).tolist(),
        domains={"x": 1, "y": 3},
        clarity={"alpha": 1, "beta": 1},
        length={"median": 50, "sigma": 1.0, "minimum": 10, "maximum": 100},
        effectiveness={"tier_cuts": [0.5], "tier_labels": ["bad", "good"], "clarity": 1.0},
    )
    x = column_array(out, list(FEATURES))
    assert abs(stats.spearmanr(x[:, 0], x[:, 2]).statistic) < 0.06  # independent features
    assert stats.kstest(x[:, 0], "uniform").pvalue > 1e-3  # Beta(1, 1)
    assert x[:, 1].min() >= 10 and x[:, 1].max() <= 100
    assert np.mean([r["domain"] == "y" for r in out.rows]) == pytest.approx(0.75, abs=0.035)
    assert {r["effectiveness_tier"] for r in out.rows} == {"bad", "good"}


@pytest.mark.parametrize(("a", "b"), [(1000.0, 1e-6), (1e-6, 1000.0), (1e-6, 1e-6)])
def test_extreme_accepted_beta_shapes_give_a_finite_model_check(ctx, a, b):
    out = run(ctx, mode="prompt_features", n=200, seed=0, actionability={"alpha": a, "beta": b})
    check = next(m for m in out.model_check.moments if m.column == "actionability")
    assert check.expected_mean == pytest.approx(stats.beta(a, b).mean(), rel=1e-12)
    assert check.expected_sd == pytest.approx(stats.beta(a, b).std(), rel=1e-9)
    assert check.mean_z is not None and np.isfinite(check.mean_z)
    x = column_array(out, list(FEATURES))[:, list(FEATURES).index("actionability")]
    assert np.all((x >= 0) & (x <= 1))


def test_smallest_noise_without_signal_gives_uniform_scores(ctx):
    # With every β = 0 the score is Φ(σε / σ): Uniform(0, 1) however small σ is (a subnormal σ underflowed to 0).
    zero = dict.fromkeys(FEATURES, 0.0)
    out = run(ctx, mode="prompt_features", n=2000, seed=3, effectiveness={"noise_sd": 1e-6, **zero})
    score = np.array([r["effectiveness_score"] for r in out.rows])
    assert stats.kstest(score, "uniform").pvalue > 1e-3


# ---------------------------------------------------------------------------------- reproducibility and output


@pytest.mark.parametrize("model", ["gaussian_copula", "gaussian_mixture"])
def test_fit_is_reproducible(ctx, correlated, model):
    real, names = correlated
    body = {"mode": "fit", "rows": to_rows(real[:200], names), "model": model, "max_components": 3, "n": 300}
    first, second = run(ctx, **body, seed=5), run(ctx, **body, seed=5)
    assert first.rows == second.rows and first.quality == second.quality
    assert run(ctx, **body, seed=6).rows != first.rows


def test_prompt_features_are_reproducible(ctx):
    first = run(ctx, mode="prompt_features", n=400, seed=3)
    assert run(ctx, mode="prompt_features", n=400, seed=3).rows == first.rows
    assert run(ctx, mode="prompt_features", n=400, seed=4).rows != first.rows


def test_large_output_goes_to_a_listed_csv(client_for, settings):
    client = client_for(production_synthetic_data_generator)
    response = client.post(f"/run/{NAME}", json={"mode": "prompt_features", "n": 6000, "seed": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    result = body["component_result"]
    assert result["rows"] is None and result["file"] in body["local_metadata"]["output_files"]
    path = settings.outputs_dir.parent / result["file"]
    with Path(path).open(encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 6000
    assert set(records[0]) == {"domain", *FEATURES, "effectiveness_score", "effectiveness_tier"}
    assert all(0 <= float(r["clarity"]) <= 1 for r in records)


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "fit", "rows": []}, "rows"),
        ({"mode": "fit", "rows": [{"a": float(i), "b": 2.0 * i} for i in range(5)]}, "rows"),
        ({"mode": "fit", "rows": [{"a": float(i), "kind": "x"} for i in range(20)]}, "rows[0].kind"),
        ({"mode": "fit", "rows": [{"a": float(i), "b": 1.0} for i in range(20)]}, "columns"),
        ({"mode": "fit", "rows": [{"a": float(i), "b": -i} for i in range(20)], "columns": ["z"]}, "columns"),
        ({"mode": "fit", "rows": [{"a": float(i)} for i in range(20)], "n": 200_001}, "fit.n"),
        (
            {"mode": "fit", "rows": [{"a": float(i)} for i in range(20)], "min_components": 4, "max_components": 2},
            "min_components",
        ),
        ({"mode": "fit"}, "rows"),
        ({"mode": "prompt_features", "n": 200_001}, "prompt_features.n"),
        ({"mode": "prompt_features", "n": 0}, "prompt_features.n"),
        ({"mode": "prompt_features", "n": 6000, "output": "inline"}, "output"),
        # Equicorrelation −0.5 among six variables is not positive definite (needs ρ > −1/5).
        (
            {"mode": "prompt_features", "correlation": [[1.0 if i == j else -0.5 for j in range(6)] for i in range(6)]},
            "correlation",
        ),
        ({"mode": "prompt_features", "effectiveness": {"tier_cuts": [0.7, 0.3]}}, "effectiveness.tier_cuts"),
        ({"mode": "prompt_features", "effectiveness": {"tier_cuts": [0.5]}}, "effectiveness.tier_labels"),
        ({"mode": "prompt_features", "domains": {"a": 0.0}}, "domains"),
        ({"mode": "prompt_features", "length": {"minimum": 100, "maximum": 50}}, "length.maximum"),
        ({"mode": "nonsense"}, "mode"),
        # Regression (slow schemathesis): a subnormal shape underflowed the model SD to 0 and mean_z divided by it.
        ({"mode": "prompt_features", "actionability": {"alpha": 2.0, "beta": 5e-324}}, "actionability.beta"),
        ({"mode": "prompt_features", "clarity": {"alpha": 1e-7, "beta": 1.0}}, "clarity.alpha"),
        ({"mode": "prompt_features", "length": {"sigma": 5e-324}}, "length.sigma"),
        ({"mode": "prompt_features", "effectiveness": {"noise_sd": 5e-324}}, "effectiveness.noise_sd"),
    ],
)
def test_bad_input_is_422_naming_the_field(client_for, body, field):
    client = client_for(production_synthetic_data_generator)
    response = client.post(f"/run/{NAME}", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


def test_csv_errors(client_for, settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "bad.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(20)), encoding="utf-8")
    client = client_for(production_synthetic_data_generator)
    response = client.post(f"/run/{NAME}", json={"mode": "fit", "data_path": "bad.csv"})
    assert response.status_code == 422 and "data_path" in response.json()["detail"]
    assert "'b'" in response.json()["detail"]
    outside = client.post(f"/run/{NAME}", json={"mode": "fit", "data_path": "../secret.csv"})
    assert outside.status_code == 400 and "data_path" in outside.json()["detail"]
