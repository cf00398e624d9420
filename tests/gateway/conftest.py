"""A gateway in front of real toy tier servers (uvicorn threads on free ports)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app as create_gateway
from mlmesh.settings import Settings
from services.framework.app import create_app as create_tier
from tests.conftest import make_settings
from tests.gateway.toys import toy_add, toy_wait
from tests.support import ServerThread, free_port


def gateway_settings(root: Path, tier_ports: dict[str, int], **gateway: Any) -> Settings:
    return make_settings(
        root,
        tiers={tier: {"port": port} for tier, port in tier_ports.items()},
        gateway={"port": free_port(), "health_interval_s": 0.2, "heartbeat_timeout_s": 1.0, **gateway},
    )


@pytest.fixture
def tier_ports() -> dict[str, int]:
    return {tier: free_port() for tier in ("tier1", "tier2", "tier3", "tier4")}


@pytest.fixture
def tier3(tmp_path: Path, tier_ports: dict[str, int]) -> Iterator[ServerThread]:
    app = create_tier(
        "tier3", settings=make_settings(tmp_path / "tier3"), components=[toy_add, toy_wait], announce=False
    )
    server = ServerThread(app, tier_ports["tier3"]).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread) -> Iterator[TestClient]:
    app = create_gateway(gateway_settings(tmp_path / "gateway", tier_ports, breaker_fail_max=2, breaker_reset_s=30))
    with TestClient(app) as client:
        yield client
