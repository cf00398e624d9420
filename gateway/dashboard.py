"""The gateway dashboard: the page, its static files, and the live numbers behind its charts.

``GET /dashboard`` serves a static page (``gateway/static``) that polls the
gateway's public GET endpoints every two seconds. ``GET /dashboard/data`` adds
what no other endpoint has: request rate, p50/p95 latency and error rate per
process, computed from the Prometheus counters of the gateway itself and of
every service (``GET /metrics``), kept as a short in-memory time series, plus
the alerts (services down, breakers open, high error rates).

Sampling happens on demand, when the page asks and the last sample is older
than :data:`SAMPLE_MIN_INTERVAL_S`: a gateway nobody watches never scrapes
anyone, so the dashboard costs the hot path nothing. Rates and quantiles are
taken between consecutive samples, whatever the gap, so a pause in viewing only
leaves a wider interval.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import aiohttp
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from gateway.registry import Registry, ServiceEntry
from gateway.router import Router
from mlmesh.prometheus import histogram_quantile
from mlmesh.settings import Settings
from mlmesh.web import MeshMiddleware, RequestMetrics

__all__ = [
    "Alert",
    "DashboardData",
    "DashboardSampler",
    "Point",
    "Sample",
    "ServiceTraffic",
    "Totals",
    "install_dashboard",
    "interval_point",
    "traffic_totals",
]

STATIC_DIR = Path(__file__).parent / "static"
GATEWAY_ID = "gateway"
SAMPLE_MIN_INTERVAL_S = 1.0
HISTORY = 180  # samples kept per process: six minutes at the page's two-second refresh
ALERT_WINDOW_S = 60.0
ERROR_RATE_WARNING = 0.05
ERROR_RATE_CRITICAL = 0.25
ERROR_ALERT_MIN_REQUESTS = 10  # fewer requests than this say nothing about an error rate
SCRAPE_TIMEOUT_S = 2.0
REQUESTS_SAMPLE = "mlmesh_http_requests_total"
BUCKET_SAMPLE = "mlmesh_http_request_duration_seconds_bucket"
# Monitoring and UI traffic is left out of the rates: otherwise the health poller and this very
# page would be most of what the charts show.
MONITORING_ROUTES = frozenset(
    {"health", "ready", "metrics", "dashboard", "static", "static-offline-docs", "docs", "redoc", "openapi.json"}
)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Point(BaseModel):
    """One interval of a process's traffic (between two consecutive samples)."""

    t: float = Field(description="end of the interval, unix seconds")
    interval_s: float = Field(description="length of the interval in seconds")
    requests: int = Field(description="requests handled in the interval (monitoring routes excluded)")
    errors: int = Field(description="5xx answers among them")
    rate_rps: float = Field(description="requests per second")
    p50_ms: float | None = Field(description="median latency estimated from the histogram; null with no requests")
    p95_ms: float | None = Field(description="95th percentile latency; null with no requests")
    error_rate: float | None = Field(description="fraction of 5xx answers; null with no requests")


class ServiceTraffic(BaseModel):
    """A process's traffic series and its current state."""

    id: str = Field(description="'gateway' or the service id (tier@host:port)")
    tier: str = Field(description="'gateway' or the tier name")
    status: str = Field(description="up, down or unknown")
    breaker: str | None = Field(description="the gateway's circuit breaker for this service (null for the gateway)")
    metrics_error: str | None = Field(description="why the last scrape of /metrics failed, if it did")
    points: list[Point]
    current: Point | None = Field(description="the latest point, null until two samples exist")


class Alert(BaseModel):
    """Something that needs a look."""

    severity: Literal["critical", "warning"]
    kind: Literal["service_down", "service_unknown", "breaker_open", "breaker_half_open", "error_rate"]
    service: str
    message: str


class DashboardData(BaseModel):
    """Request rates, latency quantiles and error rates per process, and the alerts."""

    generated_at: float = Field(description="unix seconds")
    sample_min_interval_s: float
    alert_window_s: float
    services: list[ServiceTraffic]
    alerts: list[Alert]


@dataclass(frozen=True)
class Totals:
    """Cumulative request counters of one process at one moment (monitoring routes excluded)."""

    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound in seconds, cumulative count), +inf last


@dataclass(frozen=True)
class Sample:
    wall: float
    mono: float
    totals: Totals | None
    error: str | None = None


def _counted(route: str | None) -> bool:
    first = (route or "").strip("/").split("/", 1)[0]
    return first not in MONITORING_ROUTES and first != "favicon.ico"


def traffic_totals(samples: Iterable[Any]) -> Totals:
    """Sum the request counter and latency histogram over every counted route and method.

    ``samples`` are prometheus_client samples (``.name``, ``.labels``, ``.value``), from a
    registry's ``collect()`` or from parsed exposition text.
    """
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for sample in samples:
        if not _counted(sample.labels.get("route")):
            continue
        if sample.name == REQUESTS_SAMPLE:
            requests += sample.value
            if sample.labels.get("status", "").startswith("5"):
                errors += sample.value
        elif sample.name == BUCKET_SAMPLE:
            bound = float(sample.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    if math.inf not in buckets:
        buckets[math.inf] = requests
    return Totals(requests, errors, tuple(sorted(buckets.items())))


def interval_point(before: Sample, after: Sample) -> Point | None:
    """The traffic between two samples; None when either has no counters."""
    a, b = before.totals, after.totals
    if a is None or b is None:
        return None
    dt = after.mono - before.mono
    if dt <= 0:
        return None
    # A counter that went down means the process restarted: count from zero, as Prometheus does.
    reset = b.requests < a.requests or any(nb < na for (_, na), (_, nb) in zip(a.buckets, b.buckets, strict=False))
    if reset or len(a.buckets) != len(b.buckets):
        a = Totals(0.0, 0.0, tuple((bound, 0.0) for bound, _ in b.buckets))
    requests = b.requests - a.requests
    errors = b.errors - a.errors
    delta = [(bound, nb - na) for (bound, nb), (_, na) in zip(b.buckets, a.buckets, strict=True)]
    p50 = histogram_quantile(0.5, delta) if requests > 0 else None
    p95 = histogram_quantile(0.95, delta) if requests > 0 else None
    return Point(
        t=round(after.wall, 3),
        interval_s=round(dt, 6),
        requests=round(requests),
        errors=round(errors),
        rate_rps=round(requests / dt, 4),
        p50_ms=None if p50 is None else round(p50 * 1e3, 3),
        p95_ms=None if p95 is None else round(p95 * 1e3, 3),
        error_rate=round(errors / requests, 4) if requests > 0 else None,
    )


class DashboardSampler:
    """Keeps the short time series of every process's counters and turns it into points and alerts."""

    def __init__(
        self,
        registry: Registry,
        router: Router,
        metrics: RequestMetrics,
        settings: Settings,
        *,
        min_interval_s: float = SAMPLE_MIN_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.router = router
        self.metrics = metrics
        self.settings = settings
        self.min_interval_s = min_interval_s
        self.history: dict[str, deque[Sample]] = {}
        self._last_sample = -math.inf
        self._lock = asyncio.Lock()

    async def sample(self) -> None:
        """Take a sample of every process, unless the last one is recent."""
        async with self._lock:
            if time.monotonic() - self._last_sample < self.min_interval_s:
                return
            services = list(self.registry.services.values())
            scraped = await asyncio.gather(*(self._scrape(s) for s in services))
            wall, mono = time.time(), time.monotonic()
            self._record(GATEWAY_ID, Sample(wall, mono, self._own_totals()))
            for service, (totals, error) in zip(services, scraped, strict=True):
                self._record(service.id, Sample(wall, mono, totals, error))
            for gone in set(self.history) - {GATEWAY_ID, *(s.id for s in services)}:
                del self.history[gone]
            self._last_sample = mono

    def data(self) -> DashboardData:
        """The series, current state and alerts as the page shows them."""
        rows = [self._traffic(GATEWAY_ID, GATEWAY_ID, "up", None)]
        for entry in sorted(self.registry.services.values(), key=lambda s: (s.tier, s.base_url)):
            rows.append(self._traffic(entry.id, entry.tier, entry.status, self.router.breaker_state(entry)))
        alerts = [alert for row in rows for alert in self._alerts(row)]
        alerts.sort(key=lambda a: (a.severity != "critical", a.service))
        return DashboardData(
            generated_at=round(time.time(), 3),
            sample_min_interval_s=self.min_interval_s,
            alert_window_s=ALERT_WINDOW_S,
            services=rows,
            alerts=alerts,
        )

    def _own_totals(self) -> Totals:
        return traffic_totals(s for family in self.metrics.registry.collect() for s in family.samples)

    async def _scrape(self, service: ServiceEntry) -> tuple[Totals | None, str | None]:
        if service.status == "down":
            return None, "service is down"
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S, sock_connect=self.settings.gateway.connect_timeout_s)
        try:
            async with self.router.session(service).get("/metrics", timeout=timeout) as response:
                if response.status != 200:
                    return None, f"/metrics answered {response.status}"
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            return None, f"/metrics failed: {type(exc).__name__}"
        try:
            # The parser is a generator: it fails while iterating, so parse inside the try.
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        except ValueError as exc:
            return None, f"/metrics is not Prometheus text ({exc})"
        return traffic_totals(samples), None

    def _record(self, key: str, sample: Sample) -> None:
        self.history.setdefault(key, deque(maxlen=HISTORY)).append(sample)

    def _traffic(self, key: str, tier: str, status: str, breaker: str | None) -> ServiceTraffic:
        samples = list(self.history.get(key, ()))
        points = [p for a, b in pairwise(samples) if (p := interval_point(a, b)) is not None]
        last = samples[-1] if samples else None
        current = points[-1] if points and last is not None and points[-1].t == round(last.wall, 3) else None
        return ServiceTraffic(
            id=key,
            tier=tier,
            status=status,
            breaker=breaker,
            metrics_error=last.error if last is not None else None,
            points=points,
            current=current,
        )

    def _alerts(self, row: ServiceTraffic) -> list[Alert]:
        alerts: list[Alert] = []
        entry = self.registry.services.get(row.id)
        if row.status == "down":
            reason = f": {entry.error}" if entry is not None and entry.error else ""
            alerts.append(Alert(severity="critical", kind="service_down", service=row.id, message=f"down{reason}"))
        elif row.status == "unknown":
            alerts.append(Alert(severity="warning", kind="service_unknown", service=row.id, message="not reached yet"))
        if row.breaker == "open":
            alerts.append(
                Alert(
                    severity="critical",
                    kind="breaker_open",
                    service=row.id,
                    message="circuit breaker open: calls fail fast with 503 until it resets",
                )
            )
        elif row.breaker == "half-open":
            alerts.append(
                Alert(
                    severity="warning",
                    kind="breaker_half_open",
                    service=row.id,
                    message="circuit breaker half-open: the next call decides",
                )
            )
        window = [p for p in row.points if p.t >= time.time() - ALERT_WINDOW_S]
        requests = sum(p.requests for p in window)
        errors = sum(p.errors for p in window)
        if requests >= ERROR_ALERT_MIN_REQUESTS and errors / requests >= ERROR_RATE_WARNING:
            share = errors / requests
            alerts.append(
                Alert(
                    severity="critical" if share >= ERROR_RATE_CRITICAL else "warning",
                    kind="error_rate",
                    service=row.id,
                    message=f"{share:.0%} of {requests} requests failed (5xx) in the last {ALERT_WINDOW_S:.0f}s",
                )
            )
        return alerts


def _gateway_metrics(app: FastAPI) -> RequestMetrics:
    # The request metrics belong to the gateway's MeshMiddleware; the dashboard reads the same object.
    for middleware in app.user_middleware:
        metrics = middleware.kwargs.get("metrics") if middleware.cls is MeshMiddleware else None
        if isinstance(metrics, RequestMetrics):
            return metrics
    raise RuntimeError("install_dashboard needs the gateway's MeshMiddleware (add it first)")


def install_dashboard(app: FastAPI) -> None:
    """Add ``GET /dashboard``, ``GET /dashboard/data`` and the page's static files at ``/static``."""
    registry: Registry = app.state.registry
    router: Router = app.state.router
    sampler = DashboardSampler(registry, router, _gateway_metrics(app), app.state.discovery.settings)
    app.state.dashboard = sampler
    page = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    headers = {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }

    @app.get(
        "/dashboard",
        tags=["dashboard"],
        summary="The mesh dashboard (HTML): services, components, runs, traffic and alerts, live",
        response_class=HTMLResponse,
    )
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @app.get(
        "/dashboard/data",
        tags=["dashboard"],
        summary="Request rate, p50/p95 latency and error rate per process, and the alerts",
    )
    async def dashboard_data() -> DashboardData:
        await sampler.sample()
        return sampler.data()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
