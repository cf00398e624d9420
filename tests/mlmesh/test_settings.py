"""Settings come from configs/mesh.toml, overridden by MLMESH_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mlmesh.settings import Settings


def test_defaults_from_the_shipped_config() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.gateway.port == 8000
    assert [settings.tiers[t].port for t in ("tier1", "tier2", "tier3", "tier4")] == [8001, 8002, 8003, 8004]
    assert settings.gateway_url == "http://127.0.0.1:8000"


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_GATEWAY__PORT", "9100")
    monkeypatch.setenv("MLMESH_TIERS__TIER3__PORT", "9103")
    monkeypatch.setenv("MLMESH_DATABASE_URL", "postgresql://127.0.0.1/test")
    settings = Settings()
    assert settings.gateway.port == 9100
    assert settings.tier_url("tier3") == "http://127.0.0.1:9103"
    assert settings.tier_url("tier1") == "http://127.0.0.1:8001"
    assert settings.database_url == "postgresql://127.0.0.1/test"


def test_config_file_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "mesh.toml"
    config.write_text('host = "127.0.0.2"\n[gateway]\nport = 7000\n[tiers.tier2]\nport = 7002\n')
    monkeypatch.setenv("MLMESH_CONFIG", str(config))
    settings = Settings()
    assert settings.gateway_url == "http://127.0.0.2:7000"
    assert settings.tier_url("tier2") == "http://127.0.0.2:7002"
    assert settings.tier_url("tier4") == "http://127.0.0.2:8004"


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMESH_GATEWAY__PORT", "99999")
    with pytest.raises(ValidationError, match=r"gateway\.port"):
        Settings()
    monkeypatch.delenv("MLMESH_GATEWAY__PORT")
    with pytest.raises(ValidationError, match="unknown tier"):
        Settings(tiers={"tier7": {"port": 1}})
