"""Shared fixtures: settings confined to a temporary directory, and in-process tier clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlmesh.security import TOKEN_HEADER
from mlmesh.settings import Settings
from services.framework import Component
from services.framework.app import create_app

TEST_TOKEN = "test-mesh-token-0123456789abcdef0123456789"
# Headers for calling a tier's /run directly, as the gateway does.
AUTH = {TOKEN_HEADER: TEST_TOKEN}


def make_settings(root: Path, **overrides: object) -> Settings:
    """Settings whose data, outputs, logs and metrics live under ``root``, sharing the test token."""
    return Settings(
        data_dir=root / "data",
        outputs_dir=root / "outputs",
        logs_dir=root / "logs",
        metrics_dir=root / "metrics",
        **{"token": TEST_TOKEN, **overrides},
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client_for(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """``client_for(component, ...)`` → a TestClient of a tier app hosting just those components."""
    opened: list[TestClient] = []

    def make(*components: Component) -> TestClient:
        tier = components[0].tier
        client = TestClient(
            create_app(tier, settings=settings, components=list(components), announce=False), headers=AUTH
        )
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
