"""The shipped pipelines end to end on the sample data, through the real mesh (honcho, real processes)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Mesh
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample_data(mesh: Mesh) -> None:
    subprocess.run(
        [sys.executable, "scripts/sample_data.py"], cwd=ROOT, env=mesh.env, check=True, capture_output=True, timeout=120
    )


def run_pipeline(mesh: Mesh, name: str) -> dict[str, Any]:
    response = httpx.post(f"{mesh.gateway}/pipelines/{name}/runs", timeout=10)
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    run = wait_for(
        lambda: (
            (r := httpx.get(f"{mesh.gateway}/runs/{run_id}", timeout=10).json())["status"]
            in ("succeeded", "failed", "cancelled")
            and r
        ),
        timeout=240,
        what=f"{name} to finish",
    )
    assert run["status"] == "succeeded", [(s["id"], s["status"], s["error"]) for s in run["steps"]]
    return run


def results(run: dict[str, Any]) -> dict[str, Any]:
    return {s["id"]: s["result"] for s in run["steps"]}


def test_both_pipelines_are_shipped_and_valid(mesh: Mesh) -> None:
    listing = httpx.get(f"{mesh.gateway}/pipelines", timeout=10).json()
    shipped = {p["name"]: p for p in listing["pipelines"] if p["source"] == "file"}
    assert {"learning-loop", "experiment-review"} <= set(shipped)
    assert all(p["valid"] for p in shipped.values()), [p["problem"] for p in shipped.values()]
    assert listing["invalid_files"] == {}


def test_learning_loop_on_the_sample_data(mesh: Mesh, sample_data: None) -> None:
    run = run_pipeline(mesh, "learning-loop")
    r = results(run)
    assert r["load"]["counts"]["shared_sessions"] == 0 and r["load"]["counts"]["train"] > 500
    model = r["model"]["model"]
    assert model["metrics"]["r2"] > model["baseline_metrics"]["r2"]  # the forest learned something real
    assert r["optimise"]["suggest"]["incumbent_x"] == [3.0]  # the planted best few_shot setting
    assert r["validate"]["decision"] == "accept"
    kinds = {i["kind"] for i in r["insights"]["insights"]}
    assert {"validation", "model_quality", "trend"} <= kinds
    # The planted upward trend of specificity is reported with a positive slope.
    trend = next(t for t in r["insights"]["trends"] if t["rule_id"] == "specificity")
    assert trend["slope_per_day"] > 0 and trend["significant"]
    report = mesh.root / "outputs" / "runs" / run["id"]
    assert (report / "report.json").is_file() and "| insights | insight_generation_engine | succeeded" in (
        report / "report.md"
    ).read_text()
    files = [f["path"] for s in run["steps"] for f in s["files"]]
    assert any(f.endswith("insights.md") for f in files)
    assert all(f["sha256"] for s in run["steps"] for f in s["files"])


def test_experiment_review_on_the_sample_data(mesh: Mesh, sample_data: None) -> None:
    run = run_pipeline(mesh, "experiment-review")
    r = results(run)
    assert r["ab"]["decision"] == "ship_treatment" and r["ab"]["cuped"]["applied"]
    current = r["stopping"]["group_sequential"]["current"]
    assert current["z"] == pytest.approx(r["ab"]["cuped"]["statistic"])
    assert current["decision"] == "stop_efficacy"
    adjusted = [e["estimate"] for e in r["causal"]["estimates"]]
    assert all(0.03 < e < 0.05 for e in adjusted)  # the planted effect is 0.04
    assert r["causal"]["naive"]["estimate"] > 0.05  # confounded
    kinds = [i["kind"] for i in r["insights"]["insights"]]
    assert {"ab_test", "sequential_decision", "causal_check"} <= set(kinds)

    # Each step attempt has its own request id, logged by the gateway and by the tier that ran it.
    request_id = f"{run['id'][:12]}-ab-1"
    logs = mesh.root / "logs"
    wait_for(
        lambda: all(request_id in (logs / f"{p}.log").read_text() for p in ("gateway", "tier4")),
        timeout=10,
        what="the step's request id in the gateway's and tier4's logs",
    )
