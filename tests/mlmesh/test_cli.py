"""The mlmesh CLI and the scripts built on it, against a mocked gateway."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, get_args

import httpx
import pytest
import respx
from typer.testing import CliRunner, Result

import mlmesh.client
from mlmesh.cli import Tier, app
from mlmesh.settings import TIERS

from .test_client import T1, T3, component_body, envelope, health_body, problem_response, service

GW = "http://gw.test:8000"
T2 = "http://127.0.0.1:8002"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
runner = CliRunner()


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    # A wide terminal, so that golden checks do not depend on where rich wraps.
    return runner.invoke(app, ["--gateway", GW, *args], input=input, env={"COLUMNS": "200", **(env or {})})


@functools.cache
def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gateway() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_tier_choices_match_settings() -> None:
    assert get_args(Tier) == TIERS


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in ("status", "components", "run", "ping", "--gateway"):
        assert command in result.stdout


# --------------------------------------------------------------------------- status


def lines(text: str) -> list[str]:
    """Output lines without the padding rich adds on the right."""
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_status_table(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body(service("tier1", "tier1", T1), service("tier3", "tier3", T3)))
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        f"mesh ok · gateway {GW} · v0.1.0",
        "",
        "  id      tier    url                     status   latency   components",
        " ───────────────────────────────────────────────────────────────────────",
        "  tier1   tier1   http://127.0.0.1:8001   up        1.2 ms            3",
        "  tier3   tier3   http://127.0.0.1:8003   up        1.2 ms            3",
        "",
    ]
    assert result.stderr == ""


def test_status_exits_1_when_a_service_is_down(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(
        json=health_body(
            service("tier1", "tier1", T1),
            service("tier2", "tier2", T2, status="down", breaker="open"),
            status="degraded",
        )
    )
    result = invoke("status")
    assert result.exit_code == 1
    assert lines(result.stdout)[0] == f"mesh degraded · gateway {GW} · v0.1.0"
    assert lines(result.stdout)[-3:] == [
        "  tier2   tier2   http://127.0.0.1:8002   down           —            3",
        "",
        "  tier2: breaker open; connection refused",
    ]
    assert result.stderr.strip() == "down: tier2"


def test_status_without_services(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body(status="down"))
    result = invoke("status")
    assert result.exit_code == 1
    assert "no services registered" in result.stdout


def test_status_gateway_unreachable(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (f"error: Unavailable: cannot reach {GW}/health: [Errno 111] Connection refused")


def test_gateway_from_environment(gateway: respx.MockRouter) -> None:
    gateway.get("http://env.test:9000/health").respond(json=health_body(service("tier1", "tier1", T1)))
    result = runner.invoke(app, ["status"], env={"MLMESH_GATEWAY__URL": "http://env.test:9000", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gateway http://env.test:9000" in result.stdout


def test_bad_gateway_url_is_usage_error() -> None:
    result = runner.invoke(app, ["--gateway", "gw.test", "status"])
    assert result.exit_code == 2
    assert "gateway URL must look like http://host:port" in result.stderr


# --------------------------------------------------------------------------- components


@pytest.fixture
def catalogue(gateway: respx.MockRouter) -> respx.MockRouter:
    gateway.get(f"{GW}/components").respond(
        json={
            "components": [
                component_body("pattern_significance_analyzer"),
                component_body("structural_analyzer", "tier1", status="down"),
                component_body("advanced_statistical_validator"),
            ]
        }
    )
    return gateway


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the body rows of the first table in ``stdout``."""
    rows: list[list[str]] = []
    in_body = False
    for line in stdout.splitlines():
        if line.strip().startswith("─"):
            in_body = True
        elif in_body and not line.strip():
            break
        elif in_body:
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_components_table(catalogue: respx.MockRouter) -> None:
    result = invoke("components")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].strip() == "3 components"
    assert table_rows(result.stdout) == [
        ["structural_analyzer", "tier1", "down", "1.0.0", "statistics, validation"],
        ["advanced_statistical_validator", "tier3", "up", "1.0.0", "statistics, validation"],
        ["pattern_significance_analyzer", "tier3", "up", "1.0.0", "statistics, validation"],
    ]


def test_components_filtered_by_tier(catalogue: respx.MockRouter) -> None:
    result = invoke("components", "--tier", "tier1")
    assert result.exit_code == 0
    assert [row[0] for row in table_rows(result.stdout)] == ["structural_analyzer"]


def test_components_none_in_tier(catalogue: respx.MockRouter) -> None:
    result = invoke("components", "--tier", "tier4")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no components in tier4"


def test_components_unknown_tier_is_usage_error(catalogue: respx.MockRouter) -> None:
    result = invoke("components", "--tier", "tier9")
    assert result.exit_code == 2
    assert not catalogue.calls


# --------------------------------------------------------------------------- run


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"x": [1, 2, 3]}), encoding="utf-8")
    return path


def test_run_from_file(gateway: respx.MockRouter, payload_file: Path) -> None:
    route = gateway.post(f"{GW}/run/advanced_statistical_validator").respond(
        json=envelope("advanced_statistical_validator", {"p_value": 0.03, "label": "[bold]x"})
    )
    result = invoke("run", "advanced_statistical_validator", "--input", str(payload_file))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"p_value": 0.03, "label": "[bold]x"}
    assert result.stdout.startswith("{\n  ")
    assert json.loads(route.calls.last.request.content) == {"x": [1, 2, 3]}


def test_run_from_stdin_with_envelope_and_request_id(gateway: respx.MockRouter) -> None:
    route = gateway.post(f"{GW}/run/c").respond(json=envelope("c", {"n": 2}, "my-id"))
    result = invoke("run", "c", "--input", "-", "--envelope", "--request-id", "my-id", input='{"a": 1}')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == envelope("c", {"n": 2}, "my-id")
    sent = route.calls.last.request
    assert json.loads(sent.content) == {"a": 1}
    assert sent.headers["X-Request-ID"] == "my-id"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            problem_response(404, "Not found", "unknown component 'c'; see GET /components", component="c"),
            "error: 404 Not found: unknown component 'c'; see GET /components",
        ),
        (
            problem_response(422, "Invalid input", "x: Field required", component="c"),
            "error: 422 Invalid input: x: Field required",
        ),
        (
            problem_response(503, "Service unavailable", "tier3 is down; retry later", component="c"),
            "error: 503 Service unavailable: tier3 is down; retry later",
        ),
    ],
)
def test_run_problem_goes_to_stderr(gateway: respx.MockRouter, response: httpx.Response, message: str) -> None:
    gateway.post(f"{GW}/run/c").mock(return_value=response)
    result = invoke("run", "c", "--input", "-", input="{}")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [message, "request id: rid-9"]


def test_run_connection_refused(gateway: respx.MockRouter) -> None:
    gateway.post(f"{GW}/run/c").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    result = invoke("run", "c", "--input", "-", input="{}")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: Unavailable: cannot reach {GW}/run/c: [Errno 111] Connection refused"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("{not json", "error: input stdin is not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "error: input stdin must be a JSON object (the component's input); got list"),
        ("", "error: input stdin is not valid JSON: Expecting value at line 1 column 1"),
    ],
)
def test_run_bad_stdin_is_usage_error(gateway: respx.MockRouter, stdin: str, message: str) -> None:
    route = gateway.post(f"{GW}/run/c")
    result = invoke("run", "c", "--input", "-", input=stdin)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert not route.called


def test_run_missing_file_is_usage_error(gateway: respx.MockRouter, tmp_path: Path) -> None:
    route = gateway.post(f"{GW}/run/c")
    missing = tmp_path / "nope.json"
    result = invoke("run", "c", "--input", str(missing))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: cannot read input {missing}: No such file or directory"
    assert not route.called


def test_run_requires_input() -> None:
    result = invoke("run", "c")
    assert result.exit_code == 2
    assert "--input" in result.output


# --------------------------------------------------------------------------- ping


def mesh_up(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body(service("tier1", "tier1", T1), service("tier3", "tier3", T3)))
    gateway.get(f"{T1}/health").respond(json={"status": "ok", "tier": "tier1"})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the client's clock is 1.5 ms after the last, so measured latencies are fixed."""
    monkeypatch.setattr(mlmesh.client, "time", SimpleNamespace(perf_counter=itertools.count(0.0, 0.0015).__next__))


def test_ping_all_up(gateway: respx.MockRouter, clock: None) -> None:
    mesh_up(gateway)
    gateway.get(f"{T3}/health").respond(json={"status": "ok", "tier": "tier3"})
    result = invoke("ping")
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [
        f"ping · gateway {GW} ok in 1.5 ms",
        "",
        "  service   tier    url                     gateway     direct",
        " ─────────────────────────────────────────────────────────────────",
        "  tier1     tier1   http://127.0.0.1:8001   up 1.2 ms   up 1.5 ms",
        "  tier3     tier3   http://127.0.0.1:8003   up 1.2 ms   up 1.5 ms",
        "",
    ]
    assert result.stderr == ""


def test_ping_direct_failure_exits_1(gateway: respx.MockRouter) -> None:
    mesh_up(gateway)
    gateway.get(f"{T3}/health").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    result = invoke("ping")
    assert result.exit_code == 1
    assert table_rows(result.stdout)[1] == ["tier3", "tier3", T3, "up 1.2 ms", "down —"]
    assert lines(result.stdout)[-1] == "  tier3 (direct): ConnectError: [Errno 111] Connection refused"
    assert result.stderr.strip() == "down: tier3"


def test_ping_mesh_down_without_services(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body(status="down"))
    result = invoke("ping")
    assert result.exit_code == 1
    assert lines(result.stdout)[-1] == "the gateway lists no services"
    assert result.stderr.strip() == "down: the mesh"


def test_ping_gateway_unreachable(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    result = invoke("ping")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: gateway {GW}: ConnectError: [Errno 111] Connection refused"


# --------------------------------------------------------------------------- scripts


def test_health_ping_script_gateway_view(
    gateway: respx.MockRouter, wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.get(f"{GW}/health").respond(
        json=health_body(service("tier1", "tier1", T1), service("tier2", "tier2", T2, status="down"))
    )
    direct = gateway.get(f"{T1}/health")
    code = load_script("health_ping").main(["--gateway", GW])
    out, err = capsys.readouterr()
    assert code == 1
    assert not direct.called
    assert table_rows(out) == [["tier1", "tier1", T1, "up 1.2 ms"], ["tier2", "tier2", T2, "down —"]]
    assert lines(out)[-1] == "  tier2: connection refused"
    assert "direct" not in out
    assert err.strip() == "down: tier2"


def test_health_ping_script_direct(gateway: respx.MockRouter, wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    mesh_up(gateway)
    gateway.get(f"{T3}/health").respond(json={"status": "ok"})
    code = load_script("health_ping").main(["--gateway", GW, "--direct"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert [row[4].split()[0] for row in table_rows(out)] == ["up", "up"]


def test_smoke_script(gateway: respx.MockRouter, wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.get(f"{GW}/components").respond(
        json={
            "components": [
                component_body("zeta_component"),
                component_body("structural_analyzer", "tier1"),
                component_body("advanced_statistical_validator", status="down"),
                component_body("broken_component", "tier2"),
            ]
        }
    )
    ok_t1 = gateway.post(f"{GW}/run/structural_analyzer").respond(json=envelope("structural_analyzer", {}))
    ok_t3 = gateway.post(f"{GW}/run/zeta_component").respond(json=envelope("zeta_component", {}))
    gateway.post(f"{GW}/run/broken_component").mock(
        return_value=problem_response(500, "Internal error", "internal error (KeyError)")
    )
    code = load_script("smoke").main(["--gateway", GW])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(ok_t1.calls.last.request.content) == {"x": [1, 2, 3]}
    assert ok_t3.called  # the "up" component is preferred over the first by name
    rows = table_rows(out)
    assert [row[:3] for row in rows] == [
        ["tier1", "structural_analyzer", "ok"],
        ["tier2", "broken_component", "500 Internal error: internal error (KeyError)"],
        ["tier3", "zeta_component", "ok"],
        ["tier4", "—", "no components"],
    ]
    assert rows[0][3] != "—" and rows[3][3] == "—"
    assert err.strip() == "failed: tier2/broken_component"


def test_smoke_script_passes_without_some_tiers(
    gateway: respx.MockRouter, wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.get(f"{GW}/components").respond(json={"components": [component_body("structural_analyzer", "tier1")]})
    gateway.post(f"{GW}/run/structural_analyzer").respond(json=envelope("structural_analyzer", {}))
    assert load_script("smoke").main(["--gateway", GW]) == 0
    assert [row[2] for row in table_rows(capsys.readouterr().out)] == ["ok", *["no components"] * 3]


def test_smoke_script_fails_when_nothing_is_declared(
    gateway: respx.MockRouter, wide: None, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.get(f"{GW}/components").respond(json={"components": []})
    assert load_script("smoke").main(["--gateway", GW]) == 1
    assert "no components declared" in capsys.readouterr().err


def test_smoke_script_gateway_unreachable(gateway: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.get(f"{GW}/components").mock(side_effect=httpx.ConnectError("refused"))
    assert load_script("smoke").main(["--gateway", GW]) == 1
    assert "discovery failed" in capsys.readouterr().err
