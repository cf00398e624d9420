"""training_data_loader: sources, validation, synthetic share, session-grouped splits, files ml_model_service reads."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.domain import DomainStore
from services.framework import RunContext
from services.text.features import text_features
from services.tier1.training_data_loader import (
    LEAKY_COLUMNS,
    TrainingDataLoaderInput,
    TrainingDataLoaderOutput,
    split_sessions,
    training_data_loader,
)
from services.tier2.ml_model_service import MLModelServiceInput, ml_model_service
from tests.conftest import make_settings

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "sample_data.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("scripts_sample_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sd = _load_script()
DATA = sd.generate(11)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[RunContext]:
    """A run context over a tmp data dir holding the sample store (SQLite) and its CSV."""
    with DomainStore.sqlite(settings.data_dir / "domain.sqlite") as store:
        sd.write_store(DATA, store)
    sd.write_files(DATA, settings.data_dir)
    context = RunContext(component="training_data_loader", settings=settings, request_id=None)
    yield context
    for resource in context.resources.values():
        resource.close()


def load(ctx: RunContext, **body: Any) -> TrainingDataLoaderOutput:
    return training_data_loader(TrainingDataLoaderInput.model_validate(body), ctx)


def read_split(ctx: RunContext, out: TrainingDataLoaderOutput, name: str) -> pd.DataFrame:
    return pd.read_csv(ctx.data_dir / out.files[name], dtype={"session_id": str, "id": str})


def test_store_and_file_sources_give_the_same_dataset(ctx: RunContext) -> None:
    from_store = load(ctx, source="store", seed=3)
    from_file = load(ctx, source={"path": "sample/applications.csv"}, seed=3)
    assert from_store.content_hash == from_file.content_hash
    assert from_store.counts == from_file.counts
    n = len(DATA.applications)
    c = from_store.counts
    assert (c.loaded, c.valid, c.invalid) == (n, n, 0)
    assert c.train + c.validation + c.test == n
    assert c.train_sessions + c.validation_sessions + c.test_sessions == 600 and c.shared_sessions == 0
    # GroupShuffleSplit-like: round(0.15 · 600) = 90 sessions each for validation and test.
    assert (c.validation_sessions, c.test_sessions) == (90, 90)
    assert all((ctx.data_dir / p).is_file() for p in from_store.files.values())
    assert from_store.files["train"] == f"datasets/{from_store.content_hash[:16]}/train.csv"


def test_splits_hold_disjoint_sessions_and_known_label_means(ctx: RunContext) -> None:
    out = load(ctx, source="store", seed=5)
    frames = {name: read_split(ctx, out, name) for name in ("train", "validation", "test")}
    sessions = {name: set(df.session_id) for name, df in frames.items()}
    assert not (sessions["train"] & sessions["validation"]) and not (sessions["train"] & sessions["test"])
    assert not (sessions["validation"] & sessions["test"])
    # Every application lands in the split of its session (reference: the generator's own rows).
    expected = pd.DataFrame(DATA.applications)
    for mean in out.label_means:
        rows = expected[expected.session_id.isin(sessions[mean.split])]
        assert mean.n == len(rows) == len(frames[mean.split])
        assert mean.mean == pytest.approx(rows.improvement_score.mean(), abs=1e-9)
    assert {c.name: c.dtype for c in out.columns}["session_id"] == "string"
    assert [c.name for c in out.columns] == list(frames["train"].columns)


def test_features_never_include_the_label_or_outcomes(ctx: RunContext) -> None:
    for label in ("improvement_score", "after_quality", "success"):
        out = load(ctx, source="store", label=label)
        assert out.label_column == label
        assert label not in out.feature_columns
        assert not set(LEAKY_COLUMNS) & set(out.feature_columns)
        roles = {c.name: c.role for c in out.columns}
        assert roles[label] == "label" and all(roles[f] == "feature" for f in out.feature_columns)
    assert out.feature_columns[:9] == [
        "before_quality", "prompt_length", "word_count", "has_headers", "has_list", "has_code", "has_xml",
        "vagueness", "step",
    ]  # fmt: skip


def test_train_split_trains_ml_model_service_by_path(ctx: RunContext) -> None:
    out = load(ctx, source="store", seed=1)
    train = out.files["train"]
    body = {
        "operation": "train",
        "name": "rule-effectiveness",
        "model_type": "random_forest",
        "features": {"path": train, "columns": out.feature_columns},
        "target": {"path": train, "column": out.label_column},
        "groups": {"path": train, "column": "group"},
        "cv_folds": 0,
        "seed": 0,
    }
    trained = ml_model_service(MLModelServiceInput.model_validate(body), ctx).model
    assert trained is not None
    assert trained.feature_names == out.feature_columns
    assert trained.split.shared_groups == 0
    # The planted rule × domain effects are learnable: better than the training-mean baseline.
    assert trained.metrics.r2 is not None and trained.metrics.r2 > 0.05
    assert trained.metrics.rmse < trained.baseline_metrics.rmse


def test_deterministic_by_seed(ctx: RunContext) -> None:
    first, again = load(ctx, source="store", seed=9), load(ctx, source="store", seed=9)
    assert first == again
    other = load(ctx, source="store", seed=10)
    assert other.content_hash != first.content_hash
    assert set(read_split(ctx, other, "test").session_id) != set(read_split(ctx, first, "test").session_id)


def test_filters(ctx: RunContext) -> None:
    apps = pd.DataFrame(DATA.applications)
    since, until = sd.T0 + 20 * 86_400, sd.T0 + 50 * 86_400
    out = load(ctx, source="store", since=since, until=until, rule_ids=["clarity", "few_shot"])
    window = apps[(apps.applied_at >= since) & (apps.applied_at < until) & apps.rule_id.isin(["clarity", "few_shot"])]
    assert out.counts.loaded == len(window)
    assert [f for f in out.feature_columns if f.startswith("rule_")] == ["rule_clarity", "rule_few_shot"]
    by_file = load(ctx, source={"path": "sample/applications.csv"}, since=since, until=until,
                   rule_ids=["clarity", "few_shot"])  # fmt: skip
    assert by_file.content_hash == out.content_hash
    coding = load(ctx, source="store", domains=["coding"])
    assert [f for f in coding.feature_columns if f.startswith("domain_")] == ["domain_coding"]


# --------------------------------------------------------------------------- synthetic rows


def write_synthetic(ctx: RunContext, n: int, name: str = "synthetic.csv") -> str:
    """Rows shaped like production_synthetic_data_generator's fit output on applications.csv (no sessions)."""
    apps = pd.read_csv(ctx.data_dir / "sample" / "applications.csv")
    cols = ["rule_id", "domain", *sd.FEATURES, "before_quality", "after_quality", "improvement_score", "latency_ms"]
    synthetic = apps[cols].sample(n=n, replace=True, random_state=0).reset_index(drop=True)
    synthetic.loc[0, "before_quality"] = 1.7  # one invalid synthetic row
    (ctx.data_dir / "gen").mkdir(exist_ok=True)
    synthetic.to_csv(ctx.data_dir / "gen" / name, index=False)
    return f"gen/{name}"


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.5])
def test_synthetic_share_is_capped_and_only_in_train(ctx: RunContext, share: float) -> None:
    path = write_synthetic(ctx, 2000)
    out = load(ctx, source="store", synthetic={"path": path, "share": share}, seed=2)
    real = load(ctx, source="store", seed=2)
    n_real_train = real.counts.train
    assert out.counts.synthetic_available == 1999 and out.counts.synthetic_invalid == 1
    assert out.counts.synthetic_used == min(1999, math.floor(share * n_real_train / (1 - share) + 1e-9))
    assert out.synthetic_share <= share + 1e-12
    train = read_split(ctx, out, "train")
    assert train.synthetic.sum() == out.counts.synthetic_used
    assert (train[train.synthetic == 1].group < 0).all()
    for name in ("validation", "test"):
        assert read_split(ctx, out, name).synthetic.sum() == 0
        assert out.counts.model_dump()[name] == real.counts.model_dump()[name]  # the real split does not shift


def test_small_synthetic_file_is_used_whole(ctx: RunContext) -> None:
    out = load(ctx, source="store", synthetic={"path": write_synthetic(ctx, 21), "share": 0.5})
    assert out.counts.synthetic_used == 20


def test_synthetic_share_over_the_cap_is_422() -> None:
    with pytest.raises(ValueError, match=r"synthetic\.share"):
        TrainingDataLoaderInput.model_validate({"source": "store", "synthetic": {"path": "x.csv", "share": 0.6}})


# --------------------------------------------------------------------------- validation


def record(i: int, session: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "session_id": session,
        "rule_id": "clarity" if i % 2 else "few_shot",
        "domain": "sql",
        "before_quality": 0.4,
        "after_quality": 0.5 + 0.01 * i,
        "improvement_score": 0.1 + 0.01 * i,
        "applied_at": 1000.0 + i,
        "prompt_text": "# Task\nWrite a query\n- fast",
        **extra,
    }


def test_invalid_records_are_counted_with_reasons_or_refused_when_strict(ctx: RunContext) -> None:
    records = [record(i, f"s{i % 4}") for i in range(12)]
    records[3]["before_quality"] = 1.5
    records[5].pop("session_id")
    records[7]["id"] = "r0"
    records[9].pop("after_quality")
    out = load(ctx, source={"records": records})
    assert out.invalid.count == 4 and out.counts.valid == 8
    assert out.invalid.reasons == {
        "before_quality outside [0, 1]": 1,
        "duplicate id": 1,
        "missing after_quality": 1,
        "missing session_id": 1,
    }
    assert out.invalid.examples[0] == "row 3: before_quality outside [0, 1]"
    with pytest.raises(InvalidInput) as info:
        load(ctx, source={"records": records}, strict=True)
    assert info.value.field == "source" and "4 invalid record(s)" in info.value.detail


def test_features_fall_back_to_context_and_prompt_text(ctx: RunContext) -> None:
    records = [record(i, f"s{i // 3}") for i in range(9)]
    records[0]["context"] = {"vagueness": 0.9, "prompt_length": 5}
    out = load(ctx, source={"records": records}, validation_fraction=0.0, test_fraction=0.34, seed=0)
    rows = pd.concat([read_split(ctx, out, "train"), read_split(ctx, out, "test")]).set_index("id")
    measured = text_features("# Task\nWrite a query\n- fast")
    assert rows.loc["r1", "word_count"] == measured["word_count"]
    assert rows.loc["r1", "has_headers"] == 1 and rows.loc["r1", "has_list"] == 1
    assert (rows.loc["r0", "vagueness"], rows.loc["r0", "prompt_length"]) == (0.9, 5)
    # step = position within the session by applied_at.
    assert [rows.loc[f"r{i}", "step"] for i in range(3)] == [1, 2, 3]


def test_too_few_sessions_and_empty_results_are_422(ctx: RunContext) -> None:
    with pytest.raises(InvalidInput) as info:
        load(ctx, source={"records": [record(0, "a"), record(1, "b")]})
    assert info.value.field == "source" and "2 session(s)" in info.value.detail
    with pytest.raises(InvalidInput) as info:
        load(ctx, source="store", rule_ids=["no_such_rule"])
    assert info.value.field == "source"


# --------------------------------------------------------------------------- properties


@given(
    sessions=st.lists(st.integers(0, 40), min_size=3, max_size=120),
    validation=st.sampled_from([0.0, 0.1, 0.2, 0.3]),
    test=st.sampled_from([0.0, 0.1, 0.25]),
    seed=st.integers(0, 2**32 - 1),
)
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_session_in_two_splits(sessions: list[int], validation: float, test: float, seed: int) -> None:
    records = [record(i, f"s{s}") for i, s in enumerate(sessions)]
    with tempfile.TemporaryDirectory() as root:
        context = RunContext(component="t", settings=make_settings(Path(root)), request_id=None)
        try:
            out = load(context, source={"records": records}, validation_fraction=validation, test_fraction=test,
                       seed=seed)  # fmt: skip
        except InvalidInput as exc:  # too few sessions for the three splits
            assert len(set(sessions)) < 1 + (validation > 0) + (test > 0) and exc.field == "source"
            return
        seen: dict[str, str] = {}
        total = 0
        for name, path in out.files.items():
            with (context.data_dir / path).open(encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    assert seen.setdefault(row["session_id"], name) == name
                    total += 1
        assert total == len(records) and out.counts.shared_sessions == 0


@given(n=st.integers(3, 300), seed=st.integers(0, 1000))
def test_split_sessions_partition(n: int, seed: int) -> None:
    ids = [f"s{i}" for i in range(n)]
    try:
        parts = split_sessions(ids, 0.15, 0.15, seed)
    except InvalidInput:
        assert n < 3
        return
    assert set().union(*parts.values()) == set(ids)
    assert sum(len(p) for p in parts.values()) == n
    assert len(parts["test"]) == max(1, round(0.15 * n))


# --------------------------------------------------------------------------- HTTP


def test_bad_paths_and_fields_over_http(client_for: Callable[..., TestClient], settings: Settings) -> None:
    client = client_for(training_data_loader)
    (settings.data_dir / "notes.txt").write_text("hello", encoding="utf-8")
    cases = [
        ({"source": {"path": "../../etc/passwd"}}, 400, "source.path"),
        ({"source": {"path": "/etc/passwd"}}, 400, "source.path"),
        ({"source": {"path": "missing.csv"}}, 400, "source.path"),
        ({"source": {"path": "notes.txt"}}, 422, "source.path"),
        ({"source": "store", "synthetic": {"path": "../x.csv"}}, 400, "synthetic.path"),
        ({"source": "store", "synthetic": {"path": "x.csv", "share": 0.9}}, 422, "synthetic.share"),
        ({"source": "store", "since": 10.0, "until": 5.0}, 422, "until must be after since"),
        ({"source": "database"}, 422, "source"),
    ]
    for body, status, field in cases:
        response = client.post("/run/training_data_loader", json=body)
        assert response.status_code == status, (body, response.text)
        assert field in response.json()["detail"], (body, response.json())
