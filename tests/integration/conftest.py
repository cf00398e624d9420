"""The real mesh for integration tests: ``honcho start`` over the Procfile, real processes on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import ROOT, free_port, mesh_env, wait_for

TIERS = ("tier1", "tier2", "tier3", "tier4")


@dataclass
class Mesh:
    gateway: str
    ports: dict[str, int]
    env: dict[str, str]
    root: Path
    honcho: subprocess.Popen[bytes]

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.gateway}/health", timeout=5).json()

    def tier_processes(self, tier: str) -> list[psutil.Process]:
        """The uvicorn processes serving ``tier`` (not their supervisor)."""
        return self.processes(["services", tier])

    def processes(self, tail: list[str]) -> list[psutil.Process]:
        """The processes whose command line ends with ``tail`` (not their supervisor)."""
        found = []
        for proc in psutil.Process(self.honcho.pid).children(recursive=True):
            try:
                cmd = proc.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd[-len(tail) :] == tail and "mlmesh.supervise" not in cmd:
                found.append(proc)
        return found


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    ports = {"gateway": free_port(), **{tier: free_port() for tier in TIERS}}
    env = mesh_env(root, ports)
    log = (root / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    mesh = Mesh(f"http://127.0.0.1:{ports['gateway']}", ports, env, root, honcho)
    try:
        wait_for(
            lambda: (
                len(services := mesh.health()["services"]) == 4
                and all(s["status"] == "up" and s["latency_ms"] is not None for s in services)
            ),
            timeout=90,
            what="every tier up behind the gateway",
        )
        yield mesh
    finally:
        honcho.send_signal(signal.SIGTERM)
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        log.close()
