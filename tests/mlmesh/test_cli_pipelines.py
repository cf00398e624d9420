"""`mlmesh pipeline run|list` and `mlmesh runs` against a real gateway in front of a toy tier."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.app import create_app as create_gateway
from mlmesh.cli import app
from services.framework.app import create_app as create_tier
from tests.conftest import make_settings
from tests.gateway.conftest import gateway_settings
from tests.gateway.toys import toy_add
from tests.support import ServerThread, free_port, wait_for

runner = CliRunner(env={"COLUMNS": "200"})
SPEC = {
    "name": "sum",
    "params": {"a": 1},
    "steps": [
        {"id": "first", "component": "toy_add", "input": {"a": "$params.a", "b": 1}},
        {"id": "second", "component": "toy_add", "input": {"a": "$steps.first.total", "b": 1}},
    ],
}


def _serve(tmp_path: Path) -> tuple[ServerThread, ServerThread]:
    ports = {tier: free_port() for tier in ("tier1", "tier2", "tier3", "tier4")}
    tier = ServerThread(
        create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False),
        ports["tier3"],
    ).start()
    gateway = ServerThread(create_gateway(gateway_settings(tmp_path / "g", ports))).start()
    wait_for(lambda: httpx.get(f"{gateway.url}/components/toy_add").status_code == 200, what="toy_add discovered")
    assert httpx.post(f"{gateway.url}/pipelines", json=SPEC).status_code == 201
    assert httpx.post(f"{gateway.url}/pipelines", json=BROKEN).status_code == 201
    return tier, gateway


# toy_add's request_id is text: fed into a number field, the second step fails when it runs.
BROKEN = {
    "name": "broken",
    "steps": [
        {"id": "first", "component": "toy_add", "input": {"a": 1}},
        {"id": "second", "component": "toy_add", "input": {"a": "$steps.first.request_id"}},
    ],
}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[str]:
    tier, gateway = _serve(tmp_path)
    yield gateway.url
    gateway.stop()
    tier.stop()


def test_pipeline_run_follows_the_steps_and_prints_the_summary(mesh: str) -> None:
    result = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "sum", "-p", "a=40"])
    assert result.exit_code == 0, result.output
    assert re.search(r"second\s+toy_add\s+succeeded\s+1", result.stdout)
    assert "succeeded" in result.stdout and "report: outputs/runs/" in result.stdout
    run_id = re.search(r"run ([0-9a-f]{32}): succeeded", result.stdout).group(1)  # type: ignore[union-attr]
    run = httpx.get(f"{mesh}/runs/{run_id}").json()
    assert run["steps"][1]["result"]["total"] == 42  # the parameter reached the first step as a number


def test_pipeline_run_exits_1_when_the_run_fails(mesh: str) -> None:
    result = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "broken"])
    assert result.exit_code == 1
    assert re.search(r"second\s+toy_add\s+failed", result.stdout)
    assert "run " in result.stdout and ": failed" in result.stdout


def test_a_parameter_the_input_refuses_is_rejected_before_the_run(mesh: str) -> None:
    result = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "sum", "-p", "a=not-a-number"])
    assert result.exit_code == 1
    assert "params: with these parameters, steps[0].input.a" in result.stderr


def test_unknown_pipeline_and_bad_param_syntax(mesh: str) -> None:
    result = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "ghost"])
    assert result.exit_code == 1 and "unknown pipeline 'ghost'" in result.stderr
    result = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "sum", "-p", "novalue"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr


def test_pipeline_list_and_runs_history(mesh: str) -> None:
    listing = runner.invoke(app, ["--gateway", mesh, "pipeline", "list"])
    assert listing.exit_code == 0 and re.search(r"sum\s+api\s+first → second\s+ok", listing.stdout)
    detached = runner.invoke(app, ["--gateway", mesh, "pipeline", "run", "sum", "--detach"])
    run_id = detached.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    wait_for(lambda: httpx.get(f"{mesh}/runs/{run_id}").json()["status"] == "succeeded", what="run done")
    history = runner.invoke(app, ["--gateway", mesh, "runs"])
    assert history.exit_code == 0 and run_id in history.stdout and "2/2" in history.stdout
    one = runner.invoke(app, ["--gateway", mesh, "runs", run_id])
    assert one.exit_code == 0 and re.search(r"first\s+toy_add\s+succeeded", one.stdout)
