"""Live metrics of every mesh service, sampled over a short window, with threshold alerts.

**Sampling.** The monitor fetches ``GET /metrics`` of each service (the gateway and every configured tier
instance, or the loopback ``base_urls`` given) ``samples`` times, ``interval_s`` apart (the window,
``(samples − 1) × interval_s``, is at most 60 s), all services at once with httpx, and parses the Prometheus
text with ``prometheus_client.parser``.

**Figures per service**, between its first and last answered sample:

* requests — the increase of ``mlmesh_http_requests_total`` summed over routes, methods and statuses;
  request rate = requests / seconds between the two samples;
* error rate — 5xx answers / requests (429s are reported apart as ``throttled``);
* latency p50/p95 — :func:`~mlmesh.prometheus.histogram_quantile` of the increase of
  the ``mlmesh_http_request_duration_seconds`` buckets (``sum by (le)``), as PromQL's
  ``histogram_quantile(q, sum by (le) (increase(...)))``;
* memory — ``process_resident_memory_bytes`` of the last answer (None when the service does not export it);
* status — up (every sample answered), intermittent (some did), down (none did).

Increases are summed over consecutive answered samples; a counter that goes down (the process restarted)
counts from zero, as Prometheus' ``increase`` does, and is reported in ``counter_resets``. The ``/metrics``
route itself is never counted (the monitor's own scrapes would otherwise be traffic); ``route_prefix``
narrows further, e.g. to ``/run/``.

**Alerts** (each: service, metric, value, threshold, severity): a service down is critical and one that
missed some samples a warning; error rate, p95 latency and memory are judged against their warning and
critical thresholds (the worse level only), error rate and latency only once the window saw
``min_requests`` requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from mlmesh.prometheus import histogram_quantile
from mlmesh.settings import Settings
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.tier4.performance_monitor import (
    Scrape,
    check_loopback_url,
    default_targets,
    parse_metrics,
    route_selected,
)

__all__ = [
    "MAX_WINDOW_S",
    "MonitorAlert",
    "RealTimeMonitorInput",
    "RealTimeMonitorOutput",
    "ServiceFigures",
    "monitor",
    "real_time_monitor",
]

MAX_WINDOW_S = 60.0
Severity = Literal["warning", "critical"]


class RealTimeMonitorInput(ComponentInput):
    base_urls: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=20, description="loopback base URLs; default: the gateway and every tier"
    )
    samples: int = Field(ge=2, le=61, description="scrapes of each service")
    interval_s: float = Field(ge=0.05, le=30, description="seconds between scrapes; (samples − 1) × interval_s ≤ 60")
    timeout_s: float = Field(2.0, gt=0, le=10, description="per scrape")
    route_prefix: str | None = Field(None, max_length=200, description="only routes starting so (e.g. /run/)")
    min_requests: int = Field(1, ge=1, le=1_000_000, description="requests needed to judge error rate and latency")
    error_rate_warning: float = Field(0.01, ge=0, le=1)
    error_rate_critical: float = Field(0.05, ge=0, le=1)
    latency_p95_warning_ms: float = Field(500.0, gt=0, le=600_000)
    latency_p95_critical_ms: float = Field(2000.0, gt=0, le=600_000)
    memory_warning_mb: float | None = Field(1024.0, gt=0, le=1_048_576, description="resident memory; None: off")
    memory_critical_mb: float | None = Field(2048.0, gt=0, le=1_048_576, description="resident memory; None: off")

    @field_validator("base_urls")
    @classmethod
    def _loopback(cls, urls: list[str] | None) -> list[str] | None:
        return None if urls is None else [check_loopback_url(u) for u in urls]

    @model_validator(mode="after")
    def _consistent(self) -> RealTimeMonitorInput:
        window = (self.samples - 1) * self.interval_s
        if window > MAX_WINDOW_S:
            raise ValueError(
                f"interval_s: the window (samples − 1) × interval_s is {window:g} s; at most {MAX_WINDOW_S:g} s"
            )
        pairs = [
            ("error_rate_critical", self.error_rate_warning, self.error_rate_critical),
            ("latency_p95_critical_ms", self.latency_p95_warning_ms, self.latency_p95_critical_ms),
        ]
        if self.memory_warning_mb is not None and self.memory_critical_mb is not None:
            pairs.append(("memory_critical_mb", self.memory_warning_mb, self.memory_critical_mb))
        for name, warning, critical in pairs:
            if critical < warning:
                raise ValueError(f"{name} must be at least its warning threshold ({warning:g}); got {critical:g}")
        return self


class ServiceFigures(ComponentOutput):
    service: str
    base_url: str
    status: Literal["up", "intermittent", "down"]
    samples_ok: int
    last_error: str | None
    window_s: float | None = Field(description="seconds between the first and last answered samples")
    requests: int | None
    request_rate_per_s: float | None
    errors_5xx: int | None
    throttled_429: int | None
    error_rate: float | None = Field(description="5xx / requests; None without requests")
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    memory_mb: float | None = Field(description="process_resident_memory_bytes / 2**20 of the last answer")
    counter_resets: int


class MonitorAlert(ComponentOutput):
    service: str
    metric: Literal["up", "error_rate", "latency_p95_ms", "memory_mb"]
    value: float
    threshold: float
    severity: Severity
    message: str


class RealTimeMonitorOutput(ComponentOutput):
    samples: int
    interval_s: float
    services: list[ServiceFigures]
    alerts: list[MonitorAlert]
    status: Literal["ok", "warning", "critical"]
    notes: list[str]
    message: str


@dataclass
class _Sample:
    at: float
    scrape: Scrape | None
    error: str | None


def _increase(samples: list[Scrape], series: Callable[[Scrape], dict[Hashable, float]]) -> tuple[dict, int]:
    """Per-series increase over consecutive scrapes; a drop is a restart, counted from zero."""
    total: dict[Hashable, float] = defaultdict(float)
    resets = 0
    for before, after in itertools.pairwise(samples):
        old, new = series(before), series(after)
        for key, value in new.items():
            previous = old.get(key, 0.0)
            if value < previous:
                resets += 1
                total[key] += value
            else:
                total[key] += value - previous
    return dict(total), resets


def _figures(name: str, url: str, history: list[_Sample], req: RealTimeMonitorInput) -> ServiceFigures:
    answered = [s for s in history if s.scrape is not None]
    errors = [s.error for s in history if s.error is not None]
    status: Literal["up", "intermittent", "down"] = (
        "up" if len(answered) == len(history) else "intermittent" if answered else "down"
    )
    blank = {
        "window_s": None,
        "requests": None,
        "request_rate_per_s": None,
        "errors_5xx": None,
        "throttled_429": None,
        "error_rate": None,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "counter_resets": 0,
    }
    last = answered[-1].scrape if answered else None
    memory = last.rss_bytes / 2**20 if last is not None and last.rss_bytes is not None else None
    common = {
        "service": name,
        "base_url": url,
        "status": status,
        "samples_ok": len(answered),
        "last_error": errors[-1] if errors else None,
        "memory_mb": memory,
    }
    if len(answered) < 2:
        return ServiceFigures(**common, **blank)
    scrapes = [s.scrape for s in answered if s.scrape is not None]
    counts, resets_c = _increase(scrapes, lambda s: s.requests)  # type: ignore[arg-type, return-value]
    buckets, resets_b = _increase(scrapes, lambda s: s.buckets)  # type: ignore[arg-type, return-value]
    n = fives = throttled = 0.0
    for (route, _, code), value in counts.items():
        if route_selected(route, req.route_prefix):
            n += value
            fives += value if code.startswith("5") else 0.0
            throttled += value if code == "429" else 0.0
    by_le: dict[float, float] = defaultdict(float)
    for (route, _, le), value in buckets.items():
        if route_selected(route, req.route_prefix):
            by_le[le] += value
    merged = sorted(by_le.items())
    window = answered[-1].at - answered[0].at
    p50, p95 = histogram_quantile(0.5, merged), histogram_quantile(0.95, merged)
    return ServiceFigures(
        **common,
        window_s=window,
        requests=round(n),
        request_rate_per_s=n / window if window > 0 else None,
        errors_5xx=round(fives),
        throttled_429=round(throttled),
        error_rate=fives / n if n else None,
        latency_p50_ms=None if p50 is None else p50 * 1000.0,
        latency_p95_ms=None if p95 is None else p95 * 1000.0,
        counter_resets=max(resets_c, resets_b),
    )


def _alerts(figures: ServiceFigures, req: RealTimeMonitorInput, samples: int) -> list[MonitorAlert]:
    alerts: list[MonitorAlert] = []
    name = figures.service
    if figures.status != "up":
        answered = figures.samples_ok / samples
        severity: Severity = "critical" if figures.status == "down" else "warning"
        alerts.append(
            MonitorAlert(
                service=name,
                metric="up",
                value=answered,
                threshold=1.0,
                severity=severity,
                message=f"{name} answered {figures.samples_ok} of {samples} scrapes"
                + (f" ({figures.last_error})" if figures.last_error else ""),
            )
        )

    def judge(metric: str, value: float | None, warning: float | None, critical: float | None, unit: str) -> None:
        if value is None:
            return
        for level, threshold in (("critical", critical), ("warning", warning)):
            if threshold is not None and value >= threshold:
                alerts.append(
                    MonitorAlert(
                        service=name,
                        metric=metric,  # type: ignore[arg-type]
                        value=value,
                        threshold=threshold,
                        severity=level,  # type: ignore[arg-type]
                        message=f"{name} {metric} {value:.4g}{unit} ≥ {threshold:g}{unit}",
                    )
                )
                return

    enough = figures.requests is not None and figures.requests >= req.min_requests
    if enough:
        judge("error_rate", figures.error_rate, req.error_rate_warning, req.error_rate_critical, "")
        judge("latency_p95_ms", figures.latency_p95_ms, req.latency_p95_warning_ms, req.latency_p95_critical_ms, " ms")
    judge("memory_mb", figures.memory_mb, req.memory_warning_mb, req.memory_critical_mb, " MB")
    return alerts


async def _scrape(client: httpx.AsyncClient, url: str) -> _Sample:
    try:
        response = await client.get(f"{url}/metrics")
        response.raise_for_status()
        text = response.text
        at = time.monotonic()
        return _Sample(at=at, scrape=parse_metrics(text), error=None)
    except (httpx.HTTPError, ValueError) as exc:
        return _Sample(at=time.monotonic(), scrape=None, error=f"{type(exc).__name__}: {exc}"[:300])


async def monitor(
    req: RealTimeMonitorInput,
    settings: Settings,
    *,
    between: Callable[[int], object] | None = None,
) -> RealTimeMonitorOutput:
    """Sample, compute and judge (the component's body, callable without HTTP).

    Args:
        req: The monitor's input.
        settings: For the default targets.
        between: Called with the sample's index after every sample but the last (tests make requests there).
    """
    targets = [(url, url) for url in req.base_urls] if req.base_urls is not None else default_targets(settings)
    history: list[list[_Sample]] = [[] for _ in targets]
    async with httpx.AsyncClient(timeout=req.timeout_s) as client:
        start = time.monotonic()
        for i in range(req.samples):
            if i:
                # A fixed schedule: slow scrapes do not stretch the window.
                await asyncio.sleep(max(0.0, start + i * req.interval_s - time.monotonic()))
            results = await asyncio.gather(*(_scrape(client, url) for _, url in targets))
            for past, result in zip(history, results, strict=True):
                past.append(result)
            if between is not None and i < req.samples - 1:
                between(i)
    services = [_figures(name, url, past, req) for (name, url), past in zip(targets, history, strict=True)]
    alerts = [a for figures in services for a in _alerts(figures, req, req.samples)]
    status: Literal["ok", "warning", "critical"] = (
        "critical" if any(a.severity == "critical" for a in alerts) else "warning" if alerts else "ok"
    )
    notes = []
    no_memory = [s.service for s in services if s.status != "down" and s.memory_mb is None]
    if no_memory:
        notes.append(f"no process_resident_memory_bytes exported by: {', '.join(no_memory)}")
    up = sum(s.status == "up" for s in services)
    message = f"{status}: {up} of {len(services)} services up; " + (
        f"{len(alerts)} alerts: " + "; ".join(a.message for a in alerts[:5]) if alerts else "no alerts"
    )
    return RealTimeMonitorOutput(
        samples=req.samples,
        interval_s=req.interval_s,
        services=services,
        alerts=alerts,
        status=status,
        notes=notes,
        message=message,
    )


@component(
    "RealTimeMonitor",
    tier="tier4",
    capabilities=["live_metrics", "latency_percentiles", "error_rate", "threshold_alerts"],
    example={"samples": 2, "interval_s": 0.1, "timeout_s": 1.0},
    deterministic=False,  # live traffic and timings
)
async def real_time_monitor(request: RealTimeMonitorInput, ctx: RunContext) -> RealTimeMonitorOutput:
    """Samples the live /metrics of every mesh service over a window: rates, errors, latency, memory, alerts.

    Each service's request rate, 5xx error rate, p50/p95 latency (histogram_quantile of the bucket increases)
    and resident memory between its first and last answered scrape; alerts on the thresholds given, and a
    critical alert for a service that never answered.
    """
    return await monitor(request, ctx.settings)
