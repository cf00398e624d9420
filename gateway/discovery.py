"""Finding services and keeping their status: configured tiers, announcements, health polls."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.registry import Registry, ServiceEntry, normalise_base_url
from gateway.router import ProbeFailed, Router
from mlmesh.settings import Settings

__all__ = ["Discovery"]

log = logging.getLogger("mlmesh.gateway.discovery")
# A dynamically registered service that stays silent this many heartbeat timeouts is forgotten.
FORGET_AFTER_TIMEOUTS = 10


class Discovery:
    """Seeds the registry from the settings, takes announcements, and polls every service."""

    def __init__(self, registry: Registry, router: Router, settings: Settings) -> None:
        self.registry = registry
        self.router = router
        self.settings = settings
        allowed = settings.gateway.allowed_hosts
        self._configured = {
            (tier, normalise_base_url(url, allowed_hosts=[*allowed, settings.host]))
            for tier in settings.tiers
            for url in settings.tier_urls(tier)
        }

    def seed(self) -> None:
        for tier, url in sorted(self._configured):
            self.registry.add(tier, url, configured=True)

    async def announce(self, tier: str, base_url: str, instance_id: str | None) -> ServiceEntry:
        """A service says it is alive (registration and heartbeat are the same call)."""
        url = normalise_base_url(base_url, allowed_hosts=self.settings.gateway.allowed_hosts)
        entry = self.registry.add(tier, url, configured=(tier, url) in self._configured)
        # Manifest first: a service is never shown up without the components it hosts.
        if instance_id is None or instance_id != entry.instance_id or not entry.manifest:
            await self._refresh_manifest(entry)
        self.registry.mark_up(entry)
        return entry

    async def poll_once(self) -> None:
        await asyncio.gather(*(self.check(entry) for entry in list(self.registry.services.values())))
        for service_id in self._expire():
            await self.router.forget(service_id)

    async def check(self, entry: ServiceEntry) -> None:
        try:
            health, latency_ms = await self.router.probe(entry)
        except ProbeFailed as exc:
            if exc.timed_out:
                # A busy service answers slowly but still answers calls: only silence beyond the
                # heartbeat timeout (see _expire) marks it down, never one slow probe.
                entry.error = "health check timed out"
                return
            if entry.status != "down":
                log.warning("%s is down: %s", entry.id, exc)
            self.registry.mark_down(entry, f"health check failed: {exc}")
            return
        if health.get("tier") != entry.tier:
            self.registry.mark_down(entry, f"answers as {health.get('tier')!r}, registered as {entry.tier!r}")
            return
        if health.get("instance_id") != entry.instance_id or not entry.manifest:
            await self._refresh_manifest(entry)
        if entry.status != "up":
            log.info("%s is up", entry.id)
        self.registry.mark_up(entry, latency_ms=latency_ms)

    async def run(self) -> None:
        """Poll forever, every ``health_interval_s``."""
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except Exception:
                log.exception("health poll failed")
            await asyncio.sleep(max(0.0, self.settings.gateway.health_interval_s - (time.monotonic() - started)))

    async def _refresh_manifest(self, entry: ServiceEntry) -> None:
        try:
            self.registry.set_manifest(entry, await self.router.manifest(entry))
        except (ProbeFailed, KeyError) as exc:
            log.warning("could not read the manifest of %s: %s", entry.id, exc)

    def _expire(self) -> list[str]:
        """Mark silent services down; forget silent dynamic ones (their ids are returned)."""
        forgotten = []
        timeout = self.settings.gateway.heartbeat_timeout_s
        now = time.monotonic()
        for entry in list(self.registry.services.values()):
            silent = now - entry.last_contact if entry.last_contact is not None else None
            if silent is None or silent <= timeout:
                continue
            if entry.status == "up":
                self.registry.mark_down(entry, f"no contact for {silent:.1f}s")
            if not entry.configured and silent > FORGET_AFTER_TIMEOUTS * timeout:
                log.info("forgetting %s after %.0fs of silence", entry.id, silent)
                self.registry.remove(entry.id)
                forgotten.append(entry.id)
        return forgotten
