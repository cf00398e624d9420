"""Pipeline runs survive real process kills: the gateway (kill -9 mid-run) and a tier (mid-step)."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import Mesh
from tests.support import wait_for

pytestmark = pytest.mark.integration
STEPS = 24


def _chain(name: str) -> dict[str, Any]:
    """A chain of real tier3 steps, each a few hundred milliseconds of bootstrap work."""
    rng = np.random.default_rng(3)
    control = rng.normal(0, 1, 300).round(4).tolist()
    treatment = rng.normal(0.2, 1, 300).round(4).tolist()
    steps = [
        {
            "id": f"s{i:02d}",
            "component": "advanced_statistical_validator",
            "input": {"control": control, "treatment": treatment, "n_bootstrap": 20000, "seed": i},
            "depends_on": [f"s{i - 1:02d}"] if i else [],
            "retries": 8,  # backoff 0.5, 1, 2, 4, 8, 8… s: room for a tier restart on a busy machine
        }
        for i in range(STEPS)
    ]
    return {"name": name, "steps": steps}


def _run(mesh: Mesh, run_id: str) -> dict[str, Any]:
    return httpx.get(f"{mesh.gateway}/runs/{run_id}", timeout=10).json()


def _start(mesh: Mesh, name: str) -> str:
    assert httpx.post(f"{mesh.gateway}/pipelines", json=_chain(name), timeout=10).status_code == 201
    response = httpx.post(f"{mesh.gateway}/pipelines/{name}/runs", timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _done_steps(run: dict[str, Any]) -> int:
    return sum(s["status"] == "succeeded" for s in run["steps"])


def _gateway_up(mesh: Mesh) -> bool:
    try:
        return httpx.get(f"{mesh.gateway}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_run_survives_a_killed_gateway(mesh: Mesh) -> None:
    run_id = _start(mesh, "crash-gateway")
    before = wait_for(lambda: (r := _run(mesh, run_id)) and _done_steps(r) >= 3 and r, timeout=60, what="3 steps done")
    (gateway,) = mesh.processes(["-m", "gateway"])
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(timeout=10)
    finished_before = {s["id"] for s in before["steps"] if s["status"] == "succeeded"}

    # The supervisor restarts the gateway; the run is still there and resumes.
    wait_for(lambda: _gateway_up(mesh), timeout=60, what="the gateway back")
    run = wait_for(
        lambda: (r := _run(mesh, run_id))["status"] in ("succeeded", "failed") and r, timeout=120, what="run to end"
    )
    assert run["status"] == "succeeded", run["error"]
    assert run["resumed"] >= 1
    steps = {s["id"]: s for s in run["steps"]}
    # Steps that had finished were not run again: one attempt each, and the same stored result.
    for step_id in finished_before:
        assert steps[step_id]["attempts"] == 1
        old = next(s for s in before["steps"] if s["id"] == step_id)
        assert steps[step_id]["finished_at"] == old["finished_at"]
    assert all(s["status"] == "succeeded" for s in run["steps"])


def test_a_step_whose_tier_is_killed_retries(mesh: Mesh) -> None:
    wait_for(lambda: _gateway_up(mesh) and mesh.health()["status"] == "ok", timeout=60, what="all services up")
    run_id = _start(mesh, "crash-tier")
    wait_for(
        lambda: (r := _run(mesh, run_id)) and _done_steps(r) >= 2 and any(s["status"] == "running" for s in r["steps"]),
        timeout=60,
        what="a step running",
    )
    (tier,) = mesh.tier_processes("tier3")
    tier.send_signal(signal.SIGKILL)
    tier.wait(timeout=10)
    run = wait_for(
        lambda: (r := _run(mesh, run_id))["status"] in ("succeeded", "failed") and r, timeout=120, what="run to end"
    )
    assert run["status"] == "succeeded", [(s["id"], s["status"], s["attempts"], s["error"]) for s in run["steps"]]
    assert max(s["attempts"] for s in run["steps"]) >= 2  # the interrupted step was tried again
    assert all(s["status"] == "succeeded" for s in run["steps"])
