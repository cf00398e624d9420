"""The registry of services and the components they host.

A service is a base URL serving one tier. Configured tiers are known from the
settings; any tier may also announce itself (``POST /services``) and keep
sending heartbeats. The health poller and the heartbeats keep each entry's
status; the manifests the services publish give the component index.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.settings import TIERS

__all__ = ["ComponentEntry", "Registry", "ServiceEntry", "normalise_base_url"]

Status = Literal["up", "down", "unknown"]


@dataclass
class ServiceEntry:
    """One service instance (a base URL serving one tier)."""

    id: str
    tier: str
    base_url: str
    configured: bool
    status: Status = "unknown"
    latency_ms: float | None = None
    last_contact: float | None = None  # time.monotonic() of the last successful poll or heartbeat
    instance_id: str | None = None
    version: str | None = None
    error: str | None = None
    manifest: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self, now: float, breaker: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "tier": self.tier,
            "base_url": self.base_url,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "last_seen_s": None if self.last_contact is None else round(now - self.last_contact, 3),
            "components": len(self.manifest),
            "configured": self.configured,
            "breaker": breaker,
            "error": self.error,
        }


@dataclass(frozen=True)
class ComponentEntry:
    """A component as the mesh sees it: its manifest and every service that hosts it."""

    manifest: dict[str, Any]
    services: tuple[ServiceEntry, ...]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def tier(self) -> str:
        return str(self.manifest["tier"])

    @property
    def status(self) -> str:
        return "up" if any(s.status == "up" for s in self.services) else "down"

    def describe(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.manifest.items() if k not in ("input_schema", "output_schema", "example")},
            "status": self.status,
            "locations": [s.base_url for s in self.services],
            "input_schema": self.manifest["input_schema"],
            "output_schema": self.manifest["output_schema"],
            "example": self.manifest.get("example"),
        }


def normalise_base_url(url: str, *, allowed_hosts: list[str]) -> str:
    """``http://host:port`` for a registrable service URL, or 422 naming ``base_url``.

    Only http(s), no credentials, path, query or fragment, and a host that is a
    literal loopback address, ``localhost``, or on the allow-list. Hostnames are
    not resolved, so nothing can smuggle in a private or metadata address.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("base_url", f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("base_url", "scheme must be http or https")
    if "@" in parts.netloc or parts.username or parts.password:
        raise InvalidInput("base_url", "must not carry credentials ('@')")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidInput("base_url", "must be scheme://host:port with no path, query or fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidInput("base_url", "has no host")
    if host not in allowed_hosts and not _is_loopback(host):
        raise BadRequest(
            f"base_url: host {host!r} may not register; only loopback addresses or hosts on gateway.allowed_hosts"
        )
    if port is None:
        raise InvalidInput("base_url", "must name a port")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    if host.count(".") == 3 and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in host.split(".")):
        return ipaddress.IPv4Address(host).is_loopback if all(int(p) < 256 for p in host.split(".")) else False
    try:
        return ipaddress.IPv6Address(host).is_loopback
    except ValueError:
        return False


class Registry:
    """Services by id, and the component index built from their manifests."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceEntry] = {}
        self.version = 0  # bumped whenever the component index may have changed
        self._components: dict[str, ComponentEntry] | None = None
        self._rotation: dict[str, int] = {}

    @staticmethod
    def service_id(tier: str, base_url: str) -> str:
        return f"{tier}@{base_url.split('://', 1)[1]}"

    def add(self, tier: str, base_url: str, *, configured: bool) -> ServiceEntry:
        """The entry for (tier, base_url), created if new."""
        if tier not in TIERS:
            raise InvalidInput("tier", f"must be one of {list(TIERS)}; got {tier!r}")
        sid = self.service_id(tier, base_url)
        entry = self.services.get(sid)
        if entry is None:
            entry = self.services[sid] = ServiceEntry(id=sid, tier=tier, base_url=base_url, configured=configured)
            self._changed()
        return entry

    def remove(self, service_id: str) -> ServiceEntry | None:
        entry = self.services.pop(service_id, None)
        if entry is not None:
            self._changed()
        return entry

    def mark_up(self, entry: ServiceEntry, *, latency_ms: float | None = None) -> None:
        entry.status, entry.error, entry.last_contact = "up", None, time.monotonic()
        if latency_ms is not None:
            entry.latency_ms = round(latency_ms, 3)

    def mark_down(self, entry: ServiceEntry, reason: str) -> None:
        entry.status, entry.error = "down", reason

    def set_manifest(self, entry: ServiceEntry, manifest: dict[str, Any]) -> None:
        entry.manifest = {c["name"]: c for c in manifest.get("components", [])}
        entry.instance_id = manifest.get("instance_id", entry.instance_id)
        entry.version = manifest.get("version", entry.version)
        self._changed()

    def components(self) -> dict[str, ComponentEntry]:
        """Every known component by name, with the services hosting it (cached until the next change)."""
        if self._components is None:
            hosts: dict[str, list[ServiceEntry]] = {}
            manifests: dict[str, dict[str, Any]] = {}
            for entry in self.services.values():
                for name, manifest in entry.manifest.items():
                    hosts.setdefault(name, []).append(entry)
                    manifests.setdefault(name, manifest)
            self._components = {
                name: ComponentEntry(manifest=manifests[name], services=tuple(hosts[name])) for name in sorted(hosts)
            }
        return self._components

    def candidates(self, component: ComponentEntry) -> list[ServiceEntry]:
        """The component's services to try, healthy ones first, rotating among them for balance."""
        healthy = [s for s in component.services if s.status == "up"]
        others = [s for s in component.services if s.status != "up"]
        if len(healthy) > 1:
            turn = self._rotation.get(component.name, 0)
            self._rotation[component.name] = turn + 1
            k = turn % len(healthy)
            healthy = healthy[k:] + healthy[:k]
        return healthy + others

    def _changed(self) -> None:
        self.version += 1
        self._components = None
