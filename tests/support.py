"""Running real servers in tests: uvicorn in a thread, or whole mesh processes on free ports."""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the server may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


class ServerThread:
    """A uvicorn server for an ASGI app, in a background thread on a free port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, what=f"server on {self.port}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[ServerThread]:
    server = ServerThread(app, port).start()
    try:
        yield server
    finally:
        server.stop()


def mesh_env(root: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """Environment for mesh processes whose state lives under ``root`` and that listen on ``ports``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMESH_")}
    # The Procfile says `python`: make it this interpreter, whatever PATH the tests were started with.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        MLMESH_DATA_DIR=str(root / "data"),
        MLMESH_OUTPUTS_DIR=str(root / "outputs"),
        MLMESH_LOGS_DIR=str(root / "logs"),
        MLMESH_METRICS_DIR=str(root / "metrics"),
        MLMESH_GATEWAY__PORT=str(ports["gateway"]),
        MLMESH_GATEWAY__HEALTH_INTERVAL_S="0.5",
        MLMESH_GATEWAY__HEARTBEAT_TIMEOUT_S="1.5",
        MLMESH_CONFIG=str(ROOT / "configs" / "mesh.toml"),
        # Known to the caller, so that tests and benchmarks can also call a tier directly.
        MLMESH_TOKEN=secrets.token_urlsafe(32),
        PYTHONUNBUFFERED="1",
    )
    for tier, port in ports.items():
        if tier != "gateway":
            env[f"MLMESH_TIERS__{tier.upper()}__PORT"] = str(port)
    env.update(extra)
    return env


class MeshProcess:
    """One real mesh process (optionally under the supervisor), started with ``python -m``."""

    def __init__(self, name: str, module_args: list[str], env: dict[str, str], *, supervised: bool, log: Path) -> None:
        command = [sys.executable, "-m", *module_args]
        if supervised:
            command = [sys.executable, "-m", "mlmesh.supervise", name, "--", *command]
        self.name = name
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def get_json(url: str, timeout: float = 2.0) -> Any:
    return httpx.get(url, timeout=timeout).json()


def auth(env: dict[str, str]) -> dict[str, str]:
    """Headers for calling a tier of the mesh started with ``env`` directly (as the gateway does)."""
    return {"X-MLMesh-Token": env["MLMESH_TOKEN"]}


def sample_data_script() -> ModuleType:
    """``scripts/sample_data.py`` as a module (scripts are not a package), loaded once."""
    name = "scripts_sample_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "sample_data.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the script is executing
        spec.loader.exec_module(module)
    return sys.modules[name]
