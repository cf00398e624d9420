"""Pipelines and runs through a real gateway in front of a real toy tier (uvicorn on a free port)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app as create_gateway
from gateway.jobs import RunStore
from gateway.pipelines import PipelineSpec
from services.framework.app import create_app as create_tier
from tests.conftest import make_settings
from tests.gateway.conftest import gateway_settings
from tests.gateway.toys import toy_add
from tests.support import ServerThread, wait_for

CHAIN = {
    "name": "chain",
    "params": {"start": 1},
    "steps": [
        {"id": "first", "component": "toy_add", "input": {"a": "$params.start", "b": 2}},
        {"id": "second", "component": "toy_add", "input": {"a": "$steps.first.total", "b": 10}},
        {"id": "third", "component": "toy_add", "input": {"a": "$steps.second.total", "b": 100}},
    ],
}


def define(gw: TestClient, spec: dict[str, Any]) -> None:
    response = gw.post("/pipelines", json=spec)
    assert response.status_code == 201, response.text


def start(gw: TestClient, name: str, **params: Any) -> str:
    response = gw.post(f"/pipelines/{name}/runs", json={"params": params})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/runs/{response.json()['id']}"
    return str(response.json()["id"])


def finished(gw: TestClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = gw.get(f"/runs/{run_id}").json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=timeout, interval=0.02, what=f"run {run_id} to finish")


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in run["steps"]}


def problem(response: Any, status: int = 422) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return str(response.json()["detail"])


def test_a_chain_runs_with_bound_outputs_and_writes_a_report(gateway: TestClient, tmp_path: Path) -> None:
    define(gateway, CHAIN)
    run = finished(gateway, start(gateway, "chain", start=5))
    assert run["status"] == "succeeded", run
    steps = steps_of(run)
    assert [steps[s]["result"]["total"] for s in ("first", "second", "third")] == [7, 17, 117]
    assert all(s["attempts"] == 1 and s["metadata"]["tier"] == "tier3" for s in steps.values())
    assert run["params"] == {"start": 5}
    report = tmp_path / "gateway" / "outputs" / "runs" / run["id"]
    assert json.loads((report / "report.json").read_text())["status"] == "succeeded"
    assert "| third | toy_add | succeeded | 1 |" in (report / "report.md").read_text()


def test_independent_steps_run_in_parallel(gateway: TestClient) -> None:
    define(
        gateway,
        {
            "name": "fan",
            "steps": [
                {"id": "left", "component": "toy_wait", "input": {"seconds": 0.6}},
                {"id": "right", "component": "toy_wait", "input": {"seconds": 0.6}},
                {
                    "id": "join",
                    "component": "toy_add",
                    "input": {"a": "$steps.left.waited", "b": "$steps.right.waited"},
                },
            ],
        },
    )
    run = finished(gateway, start(gateway, "fan"))
    steps = steps_of(run)
    assert run["status"] == "succeeded" and steps["join"]["result"]["total"] == pytest.approx(1.2)
    left, right, join = (steps[k] for k in ("left", "right", "join"))
    when = datetime.fromisoformat
    # Both branches were running at once, and the join started after both ended.
    assert when(left["started_at"]) < when(right["finished_at"]) and when(right["started_at"]) < when(
        left["finished_at"]
    )
    assert when(join["started_at"]) >= max(when(left["finished_at"]), when(right["finished_at"]))


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda s: s["steps"][1].update(component="nope"), "steps[1].component", "unknown component 'nope'"),
        (lambda s: s["steps"][0]["input"].update(c=1), "steps[0].input.c", "no input field 'c'"),
        (lambda s: s["steps"][0]["input"].pop("a"), "steps[0].input.a", "required"),
        (lambda s: s["steps"][0]["input"].update(b="x"), "steps[0].input.b", "not of type 'number'"),
        (
            lambda s: s["steps"][1]["input"].update(a="$steps.ghost.total"),
            "steps[1].input.a",
            "no earlier step 'ghost'",
        ),
        (lambda s: s["steps"][1]["input"].update(a="$steps.first.sum"), "steps[1].input.a", "no output field 'sum'"),
        (lambda s: s["steps"][0]["input"].update(a="$params.missing"), "steps[0].input.a", "no parameter 'missing'"),
        (lambda s: s["steps"][0].update(depends_on=["third"]), "body", "cycle"),
        (lambda s: s["steps"][2].update(id="first"), "steps", "used twice"),
        (lambda s: s["steps"][0].update(retries=99), "steps.0.retries", "less than or equal to 10"),
    ],
)
def test_a_bad_spec_is_422_naming_the_field(gateway: TestClient, mutate: Any, field: str, words: str) -> None:
    spec = json.loads(json.dumps(CHAIN))
    mutate(spec)
    detail = problem(gateway.post("/pipelines", json=spec))
    assert field in detail and words in detail, detail


def test_unknown_pipeline_run_and_param(gateway: TestClient) -> None:
    problem(gateway.post("/pipelines/ghost/runs"), 404)
    problem(gateway.get("/runs/" + "0" * 32), 404)
    problem(gateway.get("/runs/not-an-id"), 422)
    define(gateway, CHAIN)
    assert "params.nope" in problem(gateway.post("/pipelines/chain/runs", json={"params": {"nope": 1}}))
    assert gateway.post("/pipelines/chain/runs").status_code == 202  # no body: the defaults


# toy_add's request_id is text: fed into a number field it makes the tier answer 422 when the step runs.
BREAKS = [
    {"id": "first", "component": "toy_add", "input": {"a": 1}},
    {"id": "bad", "component": "toy_add", "input": {"a": "$steps.first.request_id"}},
    {"id": "after", "component": "toy_add", "input": {"a": "$steps.bad.total"}},
]


def test_a_failing_step_fails_the_run_and_skips_its_dependents(gateway: TestClient) -> None:
    define(gateway, {"name": "breaks", "steps": BREAKS})
    run = finished(gateway, start(gateway, "breaks"))
    steps = steps_of(run)
    assert run["status"] == "failed" and run["error"] == "step 'bad' failed"
    assert steps["bad"]["status"] == "failed" and steps["bad"]["error"]["status"] == 422
    assert "a:" in steps["bad"]["error"]["detail"]  # the tier's problem, naming the field
    assert steps["bad"]["attempts"] == 1  # a 4xx is never retried
    assert steps["after"]["status"] in ("skipped", "cancelled")


def test_on_failure_continue_lets_independent_steps_finish(gateway: TestClient) -> None:
    steps = [dict(s) for s in BREAKS]
    steps[1]["on_failure"] = "continue"
    define(gateway, {"name": "tolerant", "steps": [*steps, {"id": "other", "component": "toy_add", "input": {"a": 1}}]})
    run = finished(gateway, start(gateway, "tolerant"))
    by_id = steps_of(run)
    assert run["status"] == "succeeded"
    assert [by_id[s]["status"] for s in ("first", "bad", "after", "other")] == [
        "succeeded",
        "failed",
        "skipped",
        "succeeded",
    ]
    assert "dependency 'bad'" in by_id["after"]["error"]["detail"]


def test_run_parameters_are_checked_against_the_inputs_they_feed(gateway: TestClient) -> None:
    define(gateway, CHAIN)
    detail = problem(gateway.post("/pipelines/chain/runs", json={"params": {"start": "five"}}))
    assert detail.startswith("params:") and "steps[0].input.a" in detail and "not of type 'number'" in detail
    assert gateway.get("/runs").json()["total"] == 0  # nothing was accepted


def test_cancel_stops_a_running_run(gateway: TestClient) -> None:
    define(gateway, {"name": "slow", "steps": [{"id": "wait", "component": "toy_wait", "input": {"seconds": 10}}]})
    run_id = start(gateway, "slow")
    wait_for(lambda: gateway.get(f"/runs/{run_id}").json()["steps"][0]["status"] == "running", what="step running")
    response = gateway.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 200
    run = gateway.get(f"/runs/{run_id}").json()
    assert run["status"] == "cancelled" and run["steps"][0]["status"] == "cancelled"
    problem(gateway.post(f"/runs/{run_id}/cancel"), 409)


def test_runs_list_filters_and_counts(gateway: TestClient) -> None:
    define(gateway, CHAIN)
    ids = [start(gateway, "chain") for _ in range(3)]
    for run_id in ids:
        finished(gateway, run_id)
    listing = gateway.get("/runs", params={"limit": 2}).json()
    assert listing["total"] == 3 and len(listing["runs"]) == 2 and listing["counts"]["succeeded"] == 3
    assert listing["runs"][0]["id"] == ids[-1]  # newest first
    assert "result" not in listing["runs"][0]["steps"][0]  # the list stays small
    assert gateway.get("/runs", params={"status": "failed"}).json()["runs"] == []
    assert gateway.get("/runs", params={"status": "bogus"}).status_code == 422


def test_a_step_retries_while_its_tier_is_down_then_succeeds(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    settings = gateway_settings(tmp_path / "g", tier_ports)
    with TestClient(create_gateway(settings)) as gw:
        # The gateway must know the component before its tier goes away.
        tier = ServerThread(
            create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False),
            tier_ports["tier3"],
        ).start()
        wait_for(lambda: gw.get("/components/toy_add").status_code == 200, what="toy_add discovered")
        define(
            gw,
            {"name": "one", "steps": [{"id": "add", "component": "toy_add", "input": {"a": 1}, "retries": 6}]},
        )
        tier.stop()
        run_id = start(gw, "one")
        wait_for(lambda: gw.get(f"/runs/{run_id}").json()["steps"][0]["status"] == "retrying", what="a retry")
        tier = ServerThread(
            create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False),
            tier_ports["tier3"],
        ).start()
        try:
            run = finished(gw, run_id)
        finally:
            tier.stop()
    assert run["status"] == "succeeded", run
    assert run["steps"][0]["attempts"] >= 2 and run["steps"][0]["result"]["total"] == 1


def test_a_restarted_gateway_resumes_runs_without_rerunning_finished_steps(
    tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread
) -> None:
    settings = gateway_settings(tmp_path / "g", tier_ports)
    # What a gateway killed mid-run leaves behind: step one done, step two running, step three pending.
    store = RunStore(settings.data_dir / "gateway_runs.sqlite")
    spec = PipelineSpec.model_validate(CHAIN)
    store.create("a" * 32, spec, {"start": 1})
    store.update_run("a" * 32, status="running", started_at=time.time())
    store.update_step("a" * 32, "first", status="succeeded", attempts=1, result={"total": 1000.0, "request_id": None})
    store.update_step("a" * 32, "second", status="running", attempts=1)
    store.create("b" * 32, spec, {"start": 1})  # accepted, never started
    store.close()
    with TestClient(create_gateway(settings)) as gw:
        run = finished(gw, "a" * 32)
        queued = finished(gw, "b" * 32)
    steps = steps_of(run)
    assert run["status"] == "succeeded" and run["resumed"] == 1
    # The stored result of step one was used, not recomputed (a real run would give 3).
    assert steps["first"]["attempts"] == 1 and steps["third"]["result"]["total"] == 1110
    assert steps["second"]["attempts"] == 2
    assert queued["status"] == "succeeded" and steps_of(queued)["third"]["result"]["total"] == 113


def test_a_resumed_run_waits_for_a_tier_that_is_not_back_yet(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    # The gateway restarts while tier3 is down: the registry does not know toy_add until tier3 is back.
    settings = gateway_settings(tmp_path / "g", tier_ports)
    spec = PipelineSpec.model_validate(
        {"name": "one", "steps": [{"id": "add", "component": "toy_add", "input": {"a": 2}, "retries": 8}]}
    )
    store = RunStore(settings.data_dir / "gateway_runs.sqlite")
    store.create("d" * 32, spec, {})
    store.update_run("d" * 32, status="running", started_at=time.time())
    store.close()
    with TestClient(create_gateway(settings)) as gw:
        wait_for(lambda: gw.get("/runs/" + "d" * 32).json()["steps"][0]["status"] == "retrying", what="a retry")
        assert "no service hosting toy_add" in gw.get("/runs/" + "d" * 32).json()["steps"][0]["error"]["detail"]
        tier = ServerThread(
            create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False),
            tier_ports["tier3"],
        ).start()
        try:
            run = finished(gw, "d" * 32, timeout=30)
        finally:
            tier.stop()
    assert run["status"] == "succeeded" and run["steps"][0]["result"]["total"] == 2


def test_a_step_interrupted_with_its_retries_spent_fails_with_the_reason(
    tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread
) -> None:
    settings = gateway_settings(tmp_path / "g", tier_ports)
    store = RunStore(settings.data_dir / "gateway_runs.sqlite")
    store.create("c" * 32, PipelineSpec.model_validate(CHAIN), {"start": 1})
    store.update_run("c" * 32, status="running", started_at=time.time())
    store.update_step("c" * 32, "first", status="running", attempts=3)
    store.close()
    with TestClient(create_gateway(settings)) as gw:
        run = finished(gw, "c" * 32)
    assert run["status"] == "failed"
    assert "gateway restart" in steps_of(run)["first"]["error"]["detail"]
    assert {s["status"] for s in run["steps"][1:]} <= {"skipped", "cancelled"}


def test_file_pipelines_are_loaded_and_bad_files_reported(
    tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread
) -> None:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    (directory / "chain.yaml").write_text(json.dumps(CHAIN))  # JSON is YAML
    (directory / "broken.yaml").write_text("name: broken\nsteps: [")
    (directory / "misnamed.yaml").write_text(json.dumps({**CHAIN, "name": "other"}))
    settings = gateway_settings(tmp_path / "g", tier_ports, pipelines_dir=directory)
    with TestClient(create_gateway(settings)) as gw:
        listing = gw.get("/pipelines").json()
        assert [p["name"] for p in listing["pipelines"]] == ["chain"]
        assert listing["pipelines"][0]["valid"] and listing["pipelines"][0]["source"] == "file"
        assert set(listing["invalid_files"]) == {"broken.yaml", "misnamed.yaml"}
        assert "must equal the file name" in listing["invalid_files"]["misnamed.yaml"]
        problem(gw.post("/pipelines", json=CHAIN), 409)
        assert gw.get("/pipelines/chain").json()["spec"]["steps"][2]["id"] == "third"
        assert finished(gw, start(gw, "chain"))["status"] == "succeeded"


def test_api_pipelines_survive_a_restart(tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread) -> None:
    settings = gateway_settings(tmp_path / "g", tier_ports)
    with TestClient(create_gateway(settings)) as gw:
        define(gw, CHAIN)
        run_id = start(gw, "chain")
        finished(gw, run_id)
    with TestClient(create_gateway(settings)) as gw:
        assert gw.get("/pipelines/chain").json()["source"] == "api"
        assert gw.get(f"/runs/{run_id}").json()["status"] == "succeeded"


def test_many_concurrent_runs_all_finish(gateway: TestClient) -> None:
    define(gateway, CHAIN)
    ids = [start(gateway, "chain") for _ in range(60)]
    runs = [finished(gateway, run_id, timeout=60) for run_id in ids]
    assert {r["status"] for r in runs} == {"succeeded"}
