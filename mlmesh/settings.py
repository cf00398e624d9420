"""Mesh settings: one class, read from ``configs/mesh.toml`` and ``MLMESH_*`` variables.

Settings are built once per process (by the app factory or the CLI) and passed
along; nothing reads them from a module global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["TIERS", "GatewaySettings", "LLMSettings", "ResourceSettings", "Settings", "TierSettings", "config_path"]

TIERS = ("tier1", "tier2", "tier3", "tier4")
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]


def config_path() -> Path:
    """The config file: ``$MLMESH_CONFIG``, else ``configs/mesh.toml`` under the working directory."""
    return Path(os.environ.get("MLMESH_CONFIG", "configs/mesh.toml"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierSettings(_Section):
    port: Port
    host: str | None = None
    # Extra base URLs (replicas) the gateway should know for this tier.
    replicas: list[str] = Field(default_factory=list)


class GatewaySettings(_Section):
    port: Port = 8000
    url: str | None = None  # how tiers reach the gateway; derived from host and port if unset
    request_timeout_s: PositiveSeconds = 60.0
    connect_timeout_s: PositiveSeconds = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    breaker_fail_max: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_reset_s: PositiveSeconds = 10.0
    health_interval_s: PositiveSeconds = 2.0
    heartbeat_timeout_s: PositiveSeconds = 6.0
    allowed_hosts: list[str] = Field(default_factory=list)
    pipelines_dir: Path = Path("configs/pipelines")  # pipeline specs (*.yaml) loaded at start
    max_active_runs: Annotated[int, Field(ge=1, le=10_000)] = 256  # runs executing at once; the rest queue


class ResourceSettings(_Section):
    """Limits of the resource manager and the resource health checks."""

    # Share of the machine's CPU cores and memory that admitted work may reserve.
    cpu_limit_percent: Annotated[float, Field(gt=0, le=100)] = 80.0
    memory_limit_percent: Annotated[float, Field(gt=0, le=100)] = 80.0
    # Work is refused while the data directory's file system has less free space than this.
    disk_min_free_gb: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0


class LLMSettings(_Section):
    """An OpenAI-compatible chat-completions endpoint for the LLM mode of llm_transformer_service."""

    base_url: str | None = None  # e.g. http://127.0.0.1:11434/v1; unset = LLM mode answers 503
    model: Annotated[str, Field(min_length=1, max_length=200)] = "gpt-4o-mini"
    api_key: SecretStr | None = None  # sent as a Bearer token when set
    timeout_s: PositiveSeconds = 30.0
    max_tokens: Annotated[int, Field(ge=1, le=200_000)] = 2048


def _default_tiers() -> dict[str, TierSettings]:
    return {name: TierSettings(port=8001 + i) for i, name in enumerate(TIERS)}


class Settings(BaseSettings):
    """Everything a mesh process needs to know about its place in the mesh."""

    model_config = SettingsConfigDict(env_prefix="MLMESH_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    data_dir: Path = Path("data")
    outputs_dir: Path = Path("outputs")
    logs_dir: Path = Path("logs")
    metrics_dir: Path = Path("metrics")
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    max_array_length: Annotated[int, Field(ge=1)] = 1_000_000
    metrics_snapshot_s: PositiveSeconds = 60.0
    # The URL a tier announces to the gateway; derived from its tier settings if unset.
    advertise_url: str | None = None
    # Shared secret between the gateway and the tiers; generated into data/mesh.token when unset.
    token: SecretStr | None = None
    database_url: str | None = None
    redis_url: str | None = None
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    tiers: dict[str, TierSettings] = Field(default_factory=_default_tiers)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit arguments, then the environment, then the file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_path()))

    @model_validator(mode="after")
    def _every_tier_configured(self) -> Settings:
        unknown = sorted(set(self.tiers) - set(TIERS))
        if unknown:
            raise ValueError(f"tiers: unknown tier(s) {unknown}; expected names from {list(TIERS)}")
        # A config that names some tiers keeps the default ports for the others.
        for name, default in _default_tiers().items():
            self.tiers.setdefault(name, default)
        return self

    def tier_url(self, tier: str) -> str:
        """Base URL of the configured instance of ``tier``."""
        conf = self.tiers[tier]
        return f"http://{conf.host or self.host}:{conf.port}"

    def tier_urls(self, tier: str) -> list[str]:
        """Every configured base URL of ``tier``: the main instance and its replicas."""
        return [self.tier_url(tier), *self.tiers[tier].replicas]

    @property
    def gateway_url(self) -> str:
        return self.gateway.url or f"http://{self.host}:{self.gateway.port}"
