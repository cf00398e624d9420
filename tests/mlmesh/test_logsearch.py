"""``mlmesh logs --request ID``: one request's lines from every process's rotating JSON logs, merged by time;
and the periodic JSON metric snapshots every process writes to metrics/."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gateway.app import create_app as create_gateway
from mlmesh.cli import app
from mlmesh.logs import configure_logging, set_request_id
from mlmesh.logsearch import find_request, log_files, parse_time
from services.framework.app import create_app
from services.tier4.redis_health_monitor import redis_health_monitor
from tests.conftest import AUTH, make_settings

runner = CliRunner()
log = logging.getLogger("mlmesh.test.logsearch")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@contextmanager
def process(name: str, logs_dir: Path) -> Iterator[logging.Handler]:
    """Log as the process ``name`` would: the project's own handler, alone on the root logger meanwhile."""
    configure_logging(name, logs_dir)
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == f"mlmesh-{name}"]
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def say(request_id: str, message: str) -> None:
    set_request_id(request_id)
    log.info(message)
    time.sleep(0.002)  # the log's clock has millisecond resolution: keep the steps apart


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """gateway and tier3 handle request R1 in turns (tier3's log rotates in between) while R2 runs too."""
    logs_dir = tmp_path / "logs"
    with process("gateway", logs_dir):
        say("R1", "gateway: received")
        say("R2", "gateway: other request")
    with process("tier3", logs_dir) as handler:
        say("R1", "tier3: started")
        say("R2", "tier3: other request")
        handler.doRollover()  # type: ignore[attr-defined]  # what RotatingFileHandler does at maxBytes
        say("R1", "tier3: finished")
    with process("gateway", logs_dir):
        say("R1", "gateway: answered")
    with (logs_dir / "tier3.log").open("a") as fh:
        fh.write("not json: a crash's stray output R1\n")
    return logs_dir


def test_files_are_ordered_oldest_rotation_first(logs: Path) -> None:
    assert [p.name for p in log_files(logs)] == ["gateway.log", "tier3.log.1", "tier3.log"]


def test_find_request_merges_processes_and_rotations_by_time(logs: Path) -> None:
    entries = find_request(logs, "R1")
    assert [e.record["message"] for e in entries] == [
        "gateway: received",
        "tier3: started",
        "tier3: finished",
        "gateway: answered",
    ]
    assert [e.process for e in entries] == ["gateway", "tier3", "tier3", "gateway"]
    assert [e.file for e in entries] == ["gateway.log", "tier3.log.1", "tier3.log", "gateway.log"]
    times = [e.time for e in entries]
    assert times == sorted(times) and None not in times
    assert find_request(logs, "R3") == []


def test_parse_time_reads_the_log_format() -> None:
    expected = time.mktime(time.strptime("2026-01-31 12:00:00", "%Y-%m-%d %H:%M:%S")) + 0.123
    assert parse_time("2026-01-31 12:00:00,123") == pytest.approx(expected, abs=1e-6)
    assert parse_time("yesterday") is None and parse_time(None) is None


def test_cli_json_lines(logs: Path) -> None:
    result = runner.invoke(app, ["logs", "--request", "R1", "--logs-dir", str(logs), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x["message"] for x in lines] == [
        "gateway: received",
        "tier3: started",
        "tier3: finished",
        "gateway: answered",
    ]
    assert {x["request_id"] for x in lines} == {"R1"}
    assert {x["process"] for x in lines} == {"gateway", "tier3"}


def test_cli_table(logs: Path) -> None:
    result = runner.invoke(app, ["logs", "-r", "R1", "--logs-dir", str(logs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "request R1 · 4 lines from gateway, tier3" in result.stdout
    rows = [line for line in result.stdout.splitlines() if ": " in line and "INFO" in line]
    assert [row.split("INFO")[1].strip() for row in rows] == [
        "gateway: received",
        "tier3: started",
        "tier3: finished",
        "gateway: answered",
    ]
    assert "other request" not in result.stdout


def test_cli_exit_codes_when_nothing_is_found(logs: Path, tmp_path: Path) -> None:
    none = runner.invoke(app, ["logs", "--request", "R9", "--logs-dir", str(logs)])
    assert none.exit_code == 1
    assert "no log lines for request R9 in 3 log files" in none.stderr
    empty = runner.invoke(app, ["logs", "--request", "R1", "--logs-dir", str(tmp_path / "nowhere")])
    assert empty.exit_code == 1 and "no log files there" in empty.stderr
    bad = runner.invoke(app, ["logs", "--request", "a b", "--logs-dir", str(logs)])
    assert bad.exit_code == 2 and "--request" in bad.stderr


def test_cli_follows_a_real_request_through_a_tier(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    tier = create_app("tier4", settings=settings, components=[redis_health_monitor], announce=False)
    with TestClient(tier, headers=AUTH) as client:
        r = client.post("/run/redis_health_monitor", json={"operation": "check"}, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 503
    result = runner.invoke(app, ["logs", "--request", "req-42", "--logs-dir", str(settings.logs_dir), "--json"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert (line["logger"], line["path"], line["status"], line["process"]) == (
        "mlmesh.access",
        "/run/redis_health_monitor",
        503,
        "tier4",
    )


# ---------------------------------------------------------------- metric snapshots (mlmesh/web.py snapshot_loop)


@pytest.mark.parametrize("process_name", ["tier4", "gateway"])
def test_every_process_writes_parsable_metric_snapshots(tmp_path: Path, process_name: str) -> None:
    settings = make_settings(tmp_path, metrics_snapshot_s=0.05)
    built = (
        create_gateway(settings, poll=False)
        if process_name == "gateway"
        else create_app("tier4", settings=settings, components=[redis_health_monitor], announce=False)
    )
    path = settings.metrics_dir / f"{process_name}.jsonl"
    with TestClient(built, headers=AUTH) as client:
        assert client.get("/health").status_code == 200
        deadline = time.monotonic() + 10
        snapshots: list[dict] = []
        while time.monotonic() < deadline:
            if path.exists():
                snapshots = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if any(
                    s["name"] == "mlmesh_http_requests_total" and s["labels"].get("route") == "/health"
                    for snap in snapshots
                    for s in snap["samples"]
                ):
                    break
            time.sleep(0.05)
    assert snapshots, f"no snapshot written to {path}"
    last = snapshots[-1]
    assert last["process"] == process_name and last["time"] == pytest.approx(time.time(), abs=30)
    health = [
        s for s in last["samples"] if s["name"] == "mlmesh_http_requests_total" and s["labels"]["route"] == "/health"
    ]
    assert health and health[0]["value"] >= 1 and health[0]["labels"]["status"] == "200"
    assert any(s["name"] == "mlmesh_http_request_duration_seconds_bucket" for s in last["samples"])
