"""Bucketing, statistics, state machine and persistence tests for the canary service."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.proportion import proportions_ztest

from mlmesh.errors import Conflict, InvalidInput, NotFound
from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.canary_testing_service import (
    CanaryTestingServiceInput,
    CanaryTestingServiceOutput,
    bucket_of,
    canary_testing_service,
    mann_whitney_greater,
    two_proportion_test,
)
from tests.conftest import AUTH, make_settings

ROUTE = "/run/canary_testing_service"
LOOSE = {"min_requests": 1, "min_latency_samples": 2}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    return RunContext(
        component="canary_testing_service", settings=make_settings(tmp_path_factory.mktemp("canary")), request_id=None
    )


def run(ctx: RunContext, **body: Any) -> CanaryTestingServiceOutput:
    return canary_testing_service(CanaryTestingServiceInput.model_validate(body), ctx)


def create(ctx: RunContext, **extra: Any) -> str:
    cid = f"c-{uuid.uuid4().hex[:12]}"
    run(ctx, operation="create", canary_id=cid, **extra)
    return cid


def reference_bucket(canary_id: str, unit_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{canary_id}:{unit_id}".encode()).digest()[:8], "big") % 10_000


# ----------------------------------------------------------------------------- bucketing


def test_bucketing_is_stable_and_known(ctx: RunContext) -> None:
    # Golden values, computed once with hashlib (sha256 of "canary:unit", first 8 bytes big-endian, mod 10000):
    # if the hash ever changed, every live unit would switch variant mid-rollout.
    pinned = {("checkout-v2", "user-1"): 8696, ("checkout-v2", "user-2"): 2997, ("rule-x", "42"): 1656}
    for (canary_id, unit), bucket in pinned.items():
        assert bucket_of(canary_id, unit) == bucket == reference_bucket(canary_id, unit)
    cid = create(ctx)
    units = [f"user-{i}" for i in range(200)]
    out = run(ctx, operation="assign", canary_id=cid, unit_ids=units).assignments
    assert [a.bucket for a in out] == [reference_bucket(cid, u) for u in units]
    assert [a.variant for a in out] == ["canary" if reference_bucket(cid, u) < 100 else "baseline" for u in units]
    # Another interpreter (a fresh process, fresh hash seed) gives the same buckets.
    code = (
        "from services.tier4.canary_testing_service import bucket_of;"
        f"print(','.join(str(bucket_of({cid!r}, f'user-{{i}}')) for i in range(200)))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert other.stdout.strip() == ",".join(str(a.bucket) for a in out)


def test_canary_share_follows_the_stages(ctx: RunContext) -> None:
    cid = create(ctx, stages=[1, 5, 25, 50, 100])
    units = [f"u{i}" for i in range(100_000)]
    previous: set[str] = set()
    for stage, pct in enumerate([1, 5, 25, 50]):
        if pct in (5, 25):  # the full 100k at two stages; the subset check needs only those
            out = run(ctx, operation="assign", canary_id=cid, unit_ids=units)
            p, n = pct / 100, len(units)
            assert out.canary.stage_index == stage
            assert abs(out.canary_share - p) < 4 * math.sqrt(p * (1 - p) / n)
            inside = {a.unit_id for a in out.assignments if a.variant == "canary"}
            assert previous <= inside  # a unit in the canary stays in it as the rollout grows
            previous = inside
        run(ctx, operation="promote", canary_id=cid)  # no data: decision "hold", promotion allowed
    full = run(ctx, operation="assign", canary_id=cid, unit_ids=units[:1000])
    assert full.canary.status == "completed" and full.canary_share == 1.0
    run(ctx, operation="rollback", canary_id=cid, reason="test")
    assert run(ctx, operation="assign", canary_id=cid, unit_ids=units[:1000]).canary_share == 0.0


# ----------------------------------------------------------------------------- statistics


@settings(max_examples=50, deadline=None)
@given(
    n1=st.integers(20, 5000),
    n2=st.integers(20, 5000),
    f1=st.floats(0.01, 0.99),
    f2=st.floats(0.01, 0.99),
)
def test_error_rate_test_matches_statsmodels(n1: int, n2: int, f1: float, f2: float) -> None:
    x1, x2 = max(1, int(n1 * f1)), max(1, int(n2 * f2))
    z, p = two_proportion_test(x1, n1, x2, n2)
    ref_z, ref_p = proportions_ztest([x1, x2], [n1, n2], alternative="larger")
    assert z == pytest.approx(ref_z, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(ref_p, rel=1e-9, abs=1e-15)
    assert 0 <= p <= 1


def test_error_rate_without_variation_has_no_p_value() -> None:
    assert two_proportion_test(0, 100, 0, 200) == (None, None)
    assert two_proportion_test(50, 50, 10, 10) == (None, None)


@pytest.mark.parametrize("shift", [1.0, 1.08, 0.95])
def test_mann_whitney_matches_scipy_with_ties(shift: float) -> None:
    rng = np.random.default_rng(int(shift * 100))
    canary = np.round(rng.lognormal(4.0, 0.4, 400) * shift)  # whole milliseconds: many ties
    baseline = np.round(rng.lognormal(4.0, 0.4, 650))
    u, _, p = mann_whitney_greater(canary, baseline)
    ref = sps.mannwhitneyu(canary, baseline, alternative="greater", method="asymptotic", use_continuity=True)
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_evaluate_latency_samples_use_mann_whitney(ctx: RunContext) -> None:
    rng = np.random.default_rng(3)
    canary = rng.lognormal(4.0, 0.3, 300) * 1.3
    baseline = rng.lognormal(4.0, 0.3, 500)
    cid = create(ctx, thresholds=LOOSE)
    run(
        ctx,
        operation="ingest",
        canary_id=cid,
        canary={"errors": 1, "total": 300, "latency_ms": canary[:100].tolist()},
        baseline={"errors": 2, "total": 500, "latency_ms": baseline.tolist()},
    )
    run(ctx, operation="ingest", canary_id=cid, canary={"latency_ms": canary[100:].tolist()})
    ev = run(ctx, operation="evaluate", canary_id=cid).evaluation
    ref = sps.mannwhitneyu(canary, baseline, alternative="greater", method="asymptotic")
    assert ev.latency.method == "mann_whitney_u"
    assert ev.latency.statistic == pytest.approx(ref.statistic)
    assert ev.latency.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ev.latency.p95_ratio == pytest.approx(np.percentile(canary, 95) / np.percentile(baseline, 95))
    assert ev.latency.p95_method == "samples"
    assert ev.decision == "rollback"
    assert any("latency regression" in reason for reason in ev.reasons)
    with pytest.raises(Conflict, match="must not be promoted"):
        run(ctx, operation="promote", canary_id=cid)


def test_evaluate_log_summaries_use_welch(ctx: RunContext) -> None:
    rng = np.random.default_rng(4)
    canary, baseline = rng.lognormal(4.05, 0.3, 250), rng.lognormal(4.0, 0.35, 400)

    def log_stats(x: np.ndarray) -> dict[str, float]:
        logs = np.log(x)
        return {"n": int(x.size), "sum": float(logs.sum()), "sum_sq": float((logs**2).sum())}

    cid = create(ctx, thresholds=LOOSE)
    run(
        ctx,
        operation="ingest",
        canary_id=cid,
        canary={"errors": 0, "total": 250, "latency_log_stats": log_stats(canary)},
        baseline={"errors": 0, "total": 400, "latency_ms": baseline.tolist()},  # mixed forms → Welch
    )
    lat = run(ctx, operation="evaluate", canary_id=cid).evaluation.latency
    ref = sps.ttest_ind(np.log(canary), np.log(baseline), equal_var=False, alternative="greater")
    assert lat.method == "welch_log_latency"
    assert lat.statistic == pytest.approx(ref.statistic, rel=1e-8)
    assert lat.df == pytest.approx(ref.df, rel=1e-8)
    assert lat.p_value == pytest.approx(ref.pvalue, rel=1e-7)
    assert lat.p95_method == "lognormal_fit"
    sd = np.log(canary).std(ddof=1)
    assert lat.canary_p95_ms == pytest.approx(math.exp(np.log(canary).mean() + sps.norm.ppf(0.95) * sd), rel=1e-9)


def test_inline_and_file_samples_give_identical_results(ctx: RunContext) -> None:
    rng = np.random.default_rng(5)
    canary, baseline = rng.lognormal(4, 0.3, 120), rng.lognormal(4, 0.3, 150)
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    np.save(ctx.data_dir / "canary_lat.npy", canary)
    np.savetxt(ctx.data_dir / "baseline_lat.csv", baseline, delimiter=",", fmt="%.17g")
    inline, by_file = create(ctx, thresholds=LOOSE), create(ctx, thresholds=LOOSE)
    counts = {"canary": {"errors": 3, "total": 120}, "baseline": {"errors": 2, "total": 150}}
    run(ctx, operation="ingest", canary_id=inline, canary={**counts["canary"], "latency_ms": canary.tolist()},
        baseline={**counts["baseline"], "latency_ms": baseline.tolist()})  # fmt: skip
    run(ctx, operation="ingest", canary_id=by_file,
        canary={**counts["canary"], "latency_ms": {"path": "canary_lat.npy"}},
        baseline={**counts["baseline"], "latency_ms": {"path": "baseline_lat.csv"}})  # fmt: skip
    a = run(ctx, operation="evaluate", canary_id=inline).evaluation
    b = run(ctx, operation="evaluate", canary_id=by_file).evaluation
    assert a == b


def test_error_regression_rolls_back_and_small_samples_hold(ctx: RunContext) -> None:
    cid = create(ctx, thresholds={"max_error_rate_increase": 0.01, "require_latency": False})
    run(ctx, operation="ingest", canary_id=cid, canary={"errors": 5, "total": 50},
        baseline={"errors": 20, "total": 2000})  # fmt: skip
    ev = run(ctx, operation="evaluate", canary_id=cid).evaluation
    ref_p = proportions_ztest([5, 20], [50, 2000], alternative="larger")[1]
    assert ev.error_rate.p_value == pytest.approx(ref_p)
    assert ev.decision == "rollback"  # significant harm overrides the min-requests wait
    quiet = create(ctx, thresholds={"require_latency": False})
    run(ctx, operation="ingest", canary_id=quiet, canary={"errors": 0, "total": 30},
        baseline={"errors": 1, "total": 3000})  # fmt: skip
    ev = run(ctx, operation="evaluate", canary_id=quiet).evaluation
    assert ev.decision == "hold" and "need 100 per group" in ev.reasons[0]
    healthy = create(ctx, thresholds={"require_latency": False})
    run(ctx, operation="ingest", canary_id=healthy, canary={"errors": 4, "total": 1000},
        baseline={"errors": 40, "total": 10000})  # fmt: skip
    assert run(ctx, operation="evaluate", canary_id=healthy).evaluation.decision == "promote"


# ----------------------------------------------------------------------------- state machine


def test_state_machine_and_conflicts(ctx: RunContext) -> None:
    cid = create(ctx, stages=[10, 100], thresholds={"require_latency": False})
    with pytest.raises(Conflict):
        run(ctx, operation="create", canary_id=cid)
    promoted = run(ctx, operation="promote", canary_id=cid)
    assert promoted.canary.status == "completed" and promoted.canary.percentage == 100
    with pytest.raises(Conflict):
        run(ctx, operation="promote", canary_id=cid)
    with pytest.raises(Conflict):
        run(ctx, operation="ingest", canary_id=cid, canary={"errors": 0, "total": 1})
    run(ctx, operation="rollback", canary_id=cid, reason="customer complaints")
    with pytest.raises(Conflict):
        run(ctx, operation="rollback", canary_id=cid)
    with pytest.raises(Conflict):
        run(ctx, operation="promote", canary_id=cid)
    status = run(ctx, operation="status", canary_id=cid)
    assert [e.action for e in status.events] == ["create", "promote", "rollback"]
    assert status.events[-1].reasons == ["customer complaints"]
    assert status.canary.percentage == 0.0
    for op in ("assign", "evaluate", "promote", "rollback", "status"):
        body: dict[str, Any] = {"unit_ids": ["u"]} if op == "assign" else {}
        with pytest.raises(NotFound):
            run(ctx, operation=op, canary_id="no-such-canary", **body)
    with pytest.raises(NotFound):
        run(ctx, operation="ingest", canary_id="no-such-canary", canary={"total": 1})


def test_invalid_inputs_name_the_field(ctx: RunContext) -> None:
    for stages, field in (([5, 1, 100], "stages"), ([5, 50], "stages"), ([0.123, 100], "stages.0")):
        with pytest.raises(InvalidInput) as err:
            run(ctx, operation="create", stages=stages)
        assert err.value.field == field
    cid = create(ctx)
    with pytest.raises(InvalidInput) as err:
        run(ctx, operation="ingest", canary_id=cid, canary={"errors": 5, "total": 4})
    assert err.value.field == "canary.errors"
    with pytest.raises(InvalidInput) as err:
        run(ctx, operation="ingest", canary_id=cid, baseline={"latency_ms": [10.0, 0.0]})
    assert err.value.field == "baseline.latency_ms"
    with pytest.raises(InvalidInput):
        run(ctx, operation="ingest", canary_id=cid)


def test_http_errors_and_restart(settings: Settings) -> None:
    def service() -> TestClient:
        comp = canary_testing_service
        return TestClient(create_app(comp.tier, settings=settings, components=[comp], announce=False), headers=AUTH)

    rng = np.random.default_rng(8)
    with service() as client:
        assert client.post(ROUTE, json={}).status_code == 422
        missing = client.post(ROUTE, json={"operation": "status", "canary_id": "nope"})
        assert missing.status_code == 404 and missing.json()["status"] == 404
        bad = client.post(ROUTE, json={"operation": "create", "stages": [50, 10, 100]})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("stages:")
        created = client.post(ROUTE, json={"operation": "create", "canary_id": "rollout", "thresholds": LOOSE})
        assert created.status_code == 200
        assert client.post(ROUTE, json={"operation": "create", "canary_id": "rollout"}).status_code == 409
        ingest = {
            "operation": "ingest",
            "canary_id": "rollout",
            "canary": {"errors": 2, "total": 400, "latency_ms": rng.lognormal(4, 0.3, 60).tolist()},
            "baseline": {"errors": 3, "total": 600, "latency_ms": rng.lognormal(4, 0.3, 80).tolist()},
        }
        assert client.post(ROUTE, json=ingest).status_code == 200
        before = client.post(ROUTE, json={"operation": "evaluate", "canary_id": "rollout"}).json()
        promoted = client.post(ROUTE, json={"operation": "promote", "canary_id": "rollout"})
        assert promoted.status_code == 200, promoted.text
    with service() as client:  # a new app over the same data directory
        status = client.post(ROUTE, json={"operation": "status", "canary_id": "rollout"}).json()["component_result"]
        assert status["canary"]["stage_index"] == 1 and status["canary"]["percentage"] == 5.0
        assert status["stages"][0]["canary"]["total"] == 400
        assert status["stages"][0]["baseline"]["latency_raw_samples"] == 80
        assert [e["action"] for e in status["events"]] == ["create", "promote"]
        again = client.post(ROUTE, json={"operation": "evaluate", "canary_id": "rollout", "scope": "all_stages"})
        assert (
            again.json()["component_result"]["evaluation"]["latency"]
            == before["component_result"]["evaluation"]["latency"]
        )
        listed = client.post(ROUTE, json={"operation": "list", "status": "running"}).json()["component_result"]
        assert [c["canary_id"] for c in listed["canaries"]] == ["rollout"]
