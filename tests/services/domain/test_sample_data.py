"""scripts/sample_data.py: deterministic, realistic, with the planted effects visible, idempotent in the store."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from scipy import stats

from services.domain import DomainStore
from services.framework.arrays import MatrixRef
from services.models.registry import load_matrix
from tests.support import sample_data_script

DB_URL = "postgresql://127.0.0.1:5432/test"
sd = sample_data_script()


@pytest.fixture(scope="module")
def data() -> object:
    return sd.generate(7)


@pytest.fixture(scope="module")
def apps(data: object) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(sd.applications_csv(data)))


def digest(data: object) -> str:
    return hashlib.sha256((sd.applications_csv(data) + sd.prompts_json(data)).encode()).hexdigest()


def test_same_seed_same_content_other_seed_other_content(data: object) -> None:
    assert digest(sd.generate(7)) == digest(data)
    assert digest(sd.generate(8)) != digest(data)


def test_realistic_shape(data: object, apps: pd.DataFrame) -> None:
    assert len(data.prompts) == 300 and len(data.sessions) == 600 and len(data.rules) == 7
    assert {r["id"] for r in data.rules} == {
        "clarity", "specificity", "chain_of_thought", "few_shot", "role", "xml_structure", "linguistic_quality",
    }  # fmt: skip
    assert 1300 <= len(data.applications) <= 1700
    domains = {p["domain"] for p in data.prompts}
    assert len(domains) >= 6 and {"coding", "sql", "writing", "analysis", "customer_support"} <= domains
    texts = [p["text"] for p in data.prompts]
    assert sum("\n#" in "\n" + t for t in texts) >= 20  # markdown headers
    assert sum("\n- " in t for t in texts) >= 20  # bulleted lists
    assert sum("```" in t for t in texts) >= 10  # code blocks
    assert sum("<task>" in t for t in texts) >= 10  # XML tags
    assert sum(len(t.split()) <= 12 and "\n" not in t for t in texts) >= 40  # vague one-liners
    starts = np.array([s["started_at"] for s in data.sessions])
    assert np.ptp(starts) / 86_400 == pytest.approx(90, abs=8)
    assert all(s["finished_at"] >= s["started_at"] for s in data.sessions)
    ratings = [f["rating"] for f in data.feedback]
    assert set(ratings) <= {1, 2, 3, 4, 5} and 200 <= len(ratings) <= 340
    assert ((apps.after_quality - apps.before_quality - apps.improvement_score).abs() < 1e-9).all()
    assert apps.before_quality.between(0, 1).all() and apps.after_quality.between(0, 1).all()
    assert (apps.success == (apps.improvement_score > 0)).all()
    # One-hot columns agree with the categorical ones.
    for rule in sd.RULE_IDS:
        assert (apps[f"rule_{rule}"] == (apps.rule_id == rule)).all()


def test_planted_rule_by_domain_effects_are_visible(apps: pd.DataFrame) -> None:
    # The planted quantity is the share of headroom closed: improvement / (1 − before).
    apps = apps.assign(gain=apps.improvement_score / (1 - apps.before_quality))
    cot = apps[apps.rule_id == "chain_of_thought"]
    analysis, writing = cot[cot.domain == "analysis"].gain, cot[cot.domain == "writing"].gain
    assert analysis.mean() - writing.mean() == pytest.approx(0.20, abs=0.05)
    assert stats.ttest_ind(analysis, writing, equal_var=False).pvalue < 1e-6
    few = apps[apps.rule_id == "few_shot"]
    classification, others = few[few.domain == "classification"].gain, few[few.domain != "classification"].gain
    assert classification.mean() - others.mean() > 0.15
    assert stats.ttest_ind(classification, others, equal_var=False).pvalue < 1e-6
    # Clarity helps vague prompts most.
    clarity = apps[apps.rule_id == "clarity"]
    assert stats.spearmanr(clarity.vagueness, clarity.gain).statistic > 0.2


def test_planted_specificity_trend(apps: pd.DataFrame) -> None:
    spec = apps[apps.rule_id == "specificity"]
    fit = stats.linregress(spec.day, spec.improvement_score / (1 - spec.before_quality))
    planted = sd.SPECIFICITY_TREND / sd.SPAN_DAYS
    assert fit.slope > 0 and fit.pvalue < 0.01
    assert abs(fit.slope - planted) < 3.3 * fit.stderr  # the planted slope is inside a ~99.9% interval
    other = apps[apps.rule_id == "role"]
    flat = stats.linregress(other.day, other.improvement_score / (1 - other.before_quality))
    assert abs(flat.slope) < 3.3 * flat.stderr  # no trend planted for role


def test_ratings_rise_with_session_improvement(data: object) -> None:
    total: dict[str, float] = {}
    for a in data.applications:
        total[a["session_id"]] = total.get(a["session_id"], 0.0) + a["improvement_score"]
    x = [total[f["session_id"]] for f in data.feedback]
    y = [f["rating"] for f in data.feedback]
    assert stats.spearmanr(x, y).statistic > 0.4


def test_cli_fills_the_store_idempotently_and_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLMESH_DATABASE_URL", raising=False)
    data_dir = tmp_path / "data"
    started = time.perf_counter()
    assert sd.main(["--data-dir", str(data_dir)]) == 0
    assert time.perf_counter() - started < 10
    first = capsys.readouterr().out
    files = [data_dir / "sample" / "applications.csv", data_dir / "sample" / "prompts.json"]
    hashes = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert sd.main(["--data-dir", str(data_dir)]) == 0
    second = capsys.readouterr().out
    assert "300 new" in first and "  prompts                0 new     300 total" in second
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == hashes
    with DomainStore.sqlite(data_dir / "domain.sqlite") as store:
        counts = store.counts()
        assert counts["prompts"] == 300 and counts["sessions"] == 600
        assert counts["rule_applications"] == len(pd.read_csv(files[0]))
        stored = store.applications(rule_id="few_shot", limit=3)
        assert stored[0]["domain"] in sd.DOMAINS and stored[0]["context"]["domain"] == stored[0]["domain"]


def test_cli_writes_to_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = f"t_sample_{uuid.uuid4().hex[:12]}"
    try:
        args = ["--data-dir", str(tmp_path / "data"), "--database-url", DB_URL, "--schema", schema, "--seed", "3"]
        assert sd.main(args) == 0
        assert "domain store (postgresql), seed 3" in capsys.readouterr().out
        with DomainStore.postgres(DB_URL, schema=schema) as store:
            assert store.counts()["sessions"] == 600
            assert len(store.applications()) == len(sd.generate(3).applications)
    finally:
        with psycopg.connect(DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_csv_is_a_feature_matrix_for_ml_model_service(tmp_path: Path, data: object) -> None:
    sd.write_files(data, tmp_path)
    columns = ["before_quality", "vagueness", "prompt_length", *(f"domain_{d}" for d in sd.DOMAINS)]
    matrix, names = load_matrix(MatrixRef(path="sample/applications.csv", columns=columns), tmp_path, field="features")
    assert names == columns and matrix.shape == (len(data.applications), len(columns))
    assert (matrix[:, 3:].sum(axis=1) == 1).all()
