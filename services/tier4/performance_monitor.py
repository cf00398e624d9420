"""Service-level objectives from real request data: latency percentiles, availability, error budget, burn rates.

**Sources** (``source`` picks one):

* ``records`` — request records inline: ``latency_ms``, ``status``, ``timestamp`` (unix seconds);
* ``file`` — the same records in a file under ``data/``: CSV with a header naming the three columns, a
  JSON list of objects, or JSON lines (``.jsonl``);
* ``logs`` — the access-log lines the mesh's own processes write (``logger: mlmesh.access`` in
  ``logs/<process>.log`` and its rotations; each carries ``status`` and ``duration_ms``), optionally only
  some processes and paths (``/run/`` by default). A call through the gateway is logged by the gateway and
  by its tier: choose ``processes`` to count it once;
* ``metrics`` — one scrape of the services' ``GET /metrics`` (the configured tiers and the gateway, or
  loopback ``base_urls``): counts from ``mlmesh_http_requests_total`` and percentiles from the
  ``mlmesh_http_request_duration_seconds`` histogram by :func:`histogram_quantile`, Prometheus'
  interpolation. A scrape holds counts since each process started, so there are no time windows: no burn
  rates and no alerts for this source.

**Definitions.**

* Latency percentiles of raw records are ``numpy.percentile(latency_ms, [50, 95, 99])`` with numpy's
  default ``method="linear"`` (type 7 of Hyndman & Fan), over every request in the SLO window.
* A *failure* is a 5xx answer **or a 429**: 503 (a tier down, a dependency unreachable), 504 and 429
  (overloaded, shed load) all mean the mesh did not serve the request. Other 4xx are the caller's mistakes
  and count as served. ``availability`` = 1 − failures / requests.
* The SLI is the share of *good* requests: not failures and, when ``latency_threshold_ms`` is given, no
  slower than it (one SLI for "served, and fast enough").
* Error budget over the SLO window (the ``slo_window_days`` up to ``now``): ``allowed_bad = (1 − slo) × requests``,
  ``consumed = bad / allowed_bad``, ``remaining = 1 − consumed`` (negative once overspent).
* Burn rate of a window *w* = (bad / requests in (now − w, now]) / (1 − slo): 1 spends the budget exactly
  over the SLO window. ``now`` defaults to the last request's time.
* Multi-window, multi-burn-rate alerts of the Google SRE workbook (ch. 5, "Alerting on SLOs", table 5-8): an
  alert fires when both its long and its short window burn at least at its rate —

  ====  =====  =====  =========  =======================
  long  short  rate   severity   budget spent (30 days)
  ====  =====  =====  =========  =======================
  1h    5m     14.4   page       2 %
  6h    30m    6      page       5 %
  1d    2h     3      ticket     10 %
  3d    6h     1      ticket     10 %
  ====  =====  =====  =========  =======================

  Comparisons allow a relative 1e-9 so that a rate of exactly 14.4 (1.44 % errors at 99.9 %) fires
  despite ``1 − 0.999`` not being exact in binary floating point.
* Grade: **F** budget overspent (consumed > 1: the SLO is missed over the window); **D** a page alert
  fires; **C** a ticket alert fires or over 75 % of the budget is spent; **B** over 25 % spent; **A**
  otherwise. None without requests.
"""

from __future__ import annotations

import csv
import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, RootModel, field_validator

from mlmesh.errors import BadRequest, InvalidInput
from mlmesh.logsearch import iter_entries
from mlmesh.prometheus import histogram_quantile
from mlmesh.settings import Settings
from services.framework import ComponentInput, ComponentOutput, RunContext, component

__all__ = [
    "ALERT_WINDOWS",
    "BURN_WINDOWS",
    "BurnAlert",
    "BurnWindow",
    "ErrorBudget",
    "FileSource",
    "LatencySummary",
    "LogsSource",
    "MetricsSource",
    "PerformanceMonitorInput",
    "PerformanceMonitorOutput",
    "RecordsSource",
    "RequestRecord",
    "Scrape",
    "ServiceSLO",
    "burn_rate",
    "check_loopback_url",
    "default_targets",
    "is_failure",
    "parse_metrics",
    "performance_monitor",
]

MAX_RECORDS = 200_000
MAX_TARGETS = 20
REQUESTS_METRIC = "mlmesh_http_requests"
LATENCY_METRIC = "mlmesh_http_request_duration_seconds"
RSS_METRIC = "process_resident_memory_bytes"
# Relative slack for threshold comparisons (see the module docstring).
_REL_TOL = 1e-9

BURN_WINDOWS: dict[str, int] = {
    "5m": 300,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "6h": 21600,
    "1d": 86400,
    "3d": 259200,
}
# (long window, short window, burn rate, severity): the SRE workbook's recommended table.
ALERT_WINDOWS: tuple[tuple[str, str, float, Literal["page", "ticket"]], ...] = (
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6.0, "page"),
    ("1d", "2h", 3.0, "ticket"),
    ("3d", "6h", 1.0, "ticket"),
)


# ---------------------------------------------------------------- input


class RequestRecord(ComponentInput):
    latency_ms: float = Field(ge=0, le=86_400_000, description="time to answer, in milliseconds")
    status: int = Field(ge=100, le=599, description="HTTP status of the answer")
    timestamp: float = Field(ge=0, le=1e11, description="when it was answered, unix seconds")


class _SLOFields(ComponentInput):
    slo_target: float = Field(0.999, gt=0, lt=1, description="objective for the share of good requests")
    slo_window_days: float = Field(30.0, gt=0, le=366, description="the SLO's rolling window")
    latency_threshold_ms: float | None = Field(
        None, gt=0, le=86_400_000, description="requests slower than this also count as bad (off by default)"
    )
    now: float | None = Field(
        None, ge=0, le=1e11, description="end of every window, unix seconds; default: the last request"
    )


class RecordsSource(_SLOFields):
    source: Literal["records"] = Field(description="request records inline")
    records: list[RequestRecord] = Field(min_length=1, max_length=MAX_RECORDS)


class FileSource(_SLOFields):
    source: Literal["file"] = Field(description="request records in a .csv, .json or .jsonl file under data/")
    path: str = Field(min_length=1, max_length=1024, description="path relative to data/")


class LogsSource(_SLOFields):
    source: Literal["logs"] = Field(description="the access-log lines of the mesh's JSON logs")
    processes: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]] | None = Field(
        None, min_length=1, max_length=20, description="only these processes' logs (e.g. ['gateway'])"
    )
    path_prefix: str | None = Field("/run/", max_length=200, description="only requests whose path starts so")


class MetricsSource(_SLOFields):
    source: Literal["metrics"] = Field(description="one scrape of the services' Prometheus /metrics")
    base_urls: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TARGETS,
        description="loopback base URLs to scrape; default: the configured tiers and the gateway",
    )
    route_prefix: str | None = Field("/run/", max_length=200, description="only routes starting so")
    timeout_s: float = Field(2.0, gt=0, le=30, description="per scrape")

    @field_validator("base_urls")
    @classmethod
    def _loopback(cls, urls: list[str] | None) -> list[str] | None:
        return None if urls is None else [check_loopback_url(u) for u in urls]


class PerformanceMonitorInput(
    RootModel[Annotated[RecordsSource | FileSource | LogsSource | MetricsSource, Field(discriminator="source")]]
):
    """``records``, ``file``, ``logs`` or ``metrics``, with the SLO parameters."""


# ---------------------------------------------------------------- output


class LatencySummary(ComponentOutput):
    method: str = Field(description="how the percentiles were computed")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None = Field(description="None from histograms")


class ErrorBudget(ComponentOutput):
    slo_target: float
    window_days: float
    requests: int
    bad: int
    allowed_bad: float = Field(description="(1 − slo) × requests")
    consumed: float | None = Field(description="bad / allowed_bad; None without requests")
    remaining: float | None = Field(description="1 − consumed; negative once overspent")
    exhausted: bool


class BurnWindow(ComponentOutput):
    window: str
    seconds: int
    requests: int
    bad: int
    error_rate: float | None = Field(description="bad / requests; None without requests")
    burn_rate: float | None = Field(description="error_rate / (1 − slo)")
    budget_consumed: float | None = Field(description="burn_rate × window / SLO window")
    coverage: float = Field(description="share of the window the data spans: (now − first request) / window, ≤ 1")


class BurnAlert(ComponentOutput):
    severity: Literal["page", "ticket"]
    long_window: str
    short_window: str
    threshold: float = Field(description="burn rate both windows must reach")
    long_burn_rate: float | None
    short_burn_rate: float | None
    firing: bool
    budget_consumed_at_threshold: float = Field(description="threshold × long window / SLO window")


class ServiceSLO(ComponentOutput):
    service: str
    base_url: str
    up: bool
    error: str | None
    requests: int
    failures: int
    availability: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class PerformanceMonitorOutput(ComponentOutput):
    source: Literal["records", "file", "logs", "metrics"]
    requests: int = Field(description="requests in the SLO window")
    excluded: int = Field(description="requests outside the SLO window (older, or after now)")
    window_start: float | None = Field(description="unix seconds; None for metrics")
    window_end: float | None
    status_classes: dict[str, int] = Field(description="requests per 2xx/3xx/4xx/429/5xx")
    failures: int = Field(description="5xx and 429 answers")
    availability: float | None = Field(description="1 − failures / requests")
    sli: float | None = Field(description="good / requests (failures and, with a threshold, slow requests are bad)")
    latency: LatencySummary
    error_budget: ErrorBudget
    burn_rates: list[BurnWindow]
    alerts: list[BurnAlert]
    grade: Literal["A", "B", "C", "D", "F"] | None
    grade_reasons: list[str]
    services: list[ServiceSLO] = Field(description="per scraped service (metrics source only)")
    notes: list[str]
    message: str


# ---------------------------------------------------------------- shared helpers (also used by RealTimeMonitor)


def is_failure(status: np.ndarray) -> np.ndarray:
    """5xx or 429: the mesh did not serve the request."""
    return (status >= 500) | (status == 429)


def burn_rate(error_rate: float, slo_target: float) -> float:
    """Error rate over the error rate the SLO allows, ``error_rate / (1 − slo)``."""
    return error_rate / (1.0 - slo_target)


def _at_least(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold * (1 - _REL_TOL)


def check_loopback_url(url: str, *, field: str = "base_urls") -> str:
    """``http(s)://host:port`` with a loopback host, without a trailing slash; 422 naming ``field`` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(field, f"{url!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(field, f"{url!r}: scheme must be http or https")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise InvalidInput(field, f"{url!r}: give scheme://host:port only (no credentials, path or query)")
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidInput(field, f"{url!r}: only loopback hosts (127.0.0.0/8, ::1, localhost) may be monitored")
    if port is None:
        raise InvalidInput(field, f"{url!r}: must name a port")
    return url.rstrip("/")


def default_targets(settings: Settings) -> list[tuple[str, str]]:
    """``(name, base URL)`` of the gateway and of every configured tier instance (replicas numbered)."""
    targets = [("gateway", settings.gateway_url)]
    for tier in sorted(settings.tiers):
        urls = settings.tier_urls(tier)
        targets += [(tier if i == 0 else f"{tier}#{i + 1}", url) for i, url in enumerate(urls)]
    return targets


@dataclass
class Scrape:
    """The mesh metrics of one ``/metrics`` answer, keyed by label values."""

    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (route, method, status)
    buckets: dict[tuple[str, str, float], float] = field(default_factory=dict)  # (route, method, le)
    latency_sum: dict[tuple[str, str], float] = field(default_factory=dict)  # (route, method) seconds
    rss_bytes: float | None = None


def parse_metrics(text: str) -> Scrape:
    """Read the request counter, the latency histogram and the resident memory from Prometheus text."""
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == f"{REQUESTS_METRIC}_total":
                scrape.requests[(labels.get("route", ""), labels.get("method", ""), labels.get("status", ""))] = s.value
            elif s.name == f"{LATENCY_METRIC}_bucket":
                key = (labels.get("route", ""), labels.get("method", ""), float(labels["le"]))
                scrape.buckets[key] = s.value
            elif s.name == f"{LATENCY_METRIC}_sum":
                scrape.latency_sum[(labels.get("route", ""), labels.get("method", ""))] = s.value
            elif s.name == RSS_METRIC:
                scrape.rss_bytes = s.value
    return scrape


def route_selected(route: str, prefix: str | None) -> bool:
    """Routes counted: never ``/metrics`` (the monitors' own scrapes), and only ``prefix`` ones when given."""
    return route != "/metrics" and (prefix is None or route.startswith(prefix))


def sum_buckets(buckets: dict[tuple[str, str, float], float], prefix: str | None) -> list[tuple[float, float]]:
    """``sum by (le)`` over the selected routes."""
    total: dict[float, float] = defaultdict(float)
    for (route, _, le), value in buckets.items():
        if route_selected(route, prefix):
            total[le] += value
    return sorted(total.items())


def request_counts(requests: dict[tuple[str, str, str], float], prefix: str | None) -> tuple[int, int, int]:
    """(requests, 5xx, 429) over the selected routes."""
    n = fives = throttled = 0.0
    for (route, _, status), value in requests.items():
        if not route_selected(route, prefix):
            continue
        n += value
        if status.startswith("5"):
            fives += value
        elif status == "429":
            throttled += value
    return round(n), round(fives), round(throttled)


# ---------------------------------------------------------------- reading the sources


_RECORD_FIELDS = ("latency_ms", "status", "timestamp")


def _records_from_rows(rows: Iterable[object], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    latency, status, stamp = [], [], []
    for i, row in enumerate(rows):
        if i >= MAX_RECORDS:
            raise InvalidInput("path", f"{where} has more than {MAX_RECORDS:,} records; split it")
        if isinstance(row, dict):  # other columns (path, method, …) may ride along
            row = {k: row[k] for k in _RECORD_FIELDS if k in row}
        try:
            record = RequestRecord.model_validate(row, strict=False)
        except ValueError as exc:
            raise InvalidInput("path", f"{where} record {i + 1}: {_first_error(exc)}") from exc
        latency.append(record.latency_ms)
        status.append(record.status)
        stamp.append(record.timestamp)
    if not latency:
        raise InvalidInput("path", f"{where} holds no records")
    return np.array(latency), np.array(status, dtype=np.int64), np.array(stamp)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'record'}: {first['msg']}"
    return str(exc)


def _read_file(source: FileSource, ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = ctx.data_path(source.path, field="path")
    if not path.is_file():
        raise BadRequest("path: no such file in the data directory")
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            if suffix == ".csv":
                return _records_from_rows(csv.DictReader(fh), path.name)
            if suffix == ".jsonl":
                return _records_from_rows((json.loads(line) for line in fh if line.strip()), path.name)
            if suffix == ".json":
                rows = json.load(fh)
                if not isinstance(rows, list):
                    raise InvalidInput("path", f"{path.name} must hold a JSON list of records")
                return _records_from_rows(rows, path.name)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"path: could not read {path.name}: {type(exc).__name__}: {exc}") from exc
    raise BadRequest(f"path: unsupported file type {suffix!r}; use .csv, .json or .jsonl")


def _read_logs(source: LogsSource, ctx: RunContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wanted = set(source.processes) if source.processes else None
    latency, status, stamp = [], [], []
    for entry in iter_entries(ctx.settings.logs_dir, contains='"mlmesh.access"'):
        r = entry.record
        if r.get("logger") != "mlmesh.access" or entry.time is None:
            continue
        if wanted is not None and entry.process not in wanted:
            continue
        path, code, duration = r.get("path"), r.get("status"), r.get("duration_ms")
        if source.path_prefix is not None and not (isinstance(path, str) and path.startswith(source.path_prefix)):
            continue
        if not isinstance(code, int) or not isinstance(duration, int | float):
            continue
        latency.append(float(duration))
        status.append(code)
        stamp.append(entry.time)
        if len(latency) > MAX_RECORDS * 10:
            raise InvalidInput("source", "over 2,000,000 access-log lines; narrow processes or path_prefix")
    return np.array(latency), np.array(status, dtype=np.int64), np.array(stamp)


# ---------------------------------------------------------------- computing


def _status_classes(status: np.ndarray) -> dict[str, int]:
    return {
        "2xx": int(((status >= 200) & (status < 300)).sum()),
        "3xx": int(((status >= 300) & (status < 400)).sum()),
        "4xx": int(((status >= 400) & (status < 500) & (status != 429)).sum()),
        "429": int((status == 429).sum()),
        "5xx": int((status >= 500).sum()),
        "1xx": int((status < 200).sum()),
    }


def _budget(slo: float, window_days: float, requests: int, bad: int) -> ErrorBudget:
    allowed = (1.0 - slo) * requests
    consumed = bad / allowed if requests else None
    return ErrorBudget(
        slo_target=slo,
        window_days=window_days,
        requests=requests,
        bad=bad,
        allowed_bad=allowed,
        consumed=consumed,
        remaining=None if consumed is None else 1.0 - consumed,
        exhausted=consumed is not None and consumed > 1.0 * (1 + _REL_TOL),
    )


def _burn_windows(stamp: np.ndarray, bad: np.ndarray, now: float, req: _SLOFields) -> list[BurnWindow]:
    period = req.slo_window_days * 86400.0
    first = float(stamp.min()) if stamp.size else now
    out = []
    for name, seconds in BURN_WINDOWS.items():
        inside = stamp > now - seconds  # the SLO window already cut off everything after now
        n, b = int(inside.sum()), int(bad[inside].sum())
        rate = b / n if n else None
        burn = None if rate is None else burn_rate(rate, req.slo_target)
        out.append(
            BurnWindow(
                window=name,
                seconds=seconds,
                requests=n,
                bad=b,
                error_rate=rate,
                burn_rate=burn,
                budget_consumed=None if burn is None else burn * seconds / period,
                coverage=min(1.0, (now - first) / seconds),
            )
        )
    return out


def _alerts(windows: list[BurnWindow], req: _SLOFields) -> list[BurnAlert]:
    by_name = {w.window: w for w in windows}
    period = req.slo_window_days * 86400.0
    alerts = []
    for long_w, short_w, rate, severity in ALERT_WINDOWS:
        long_burn, short_burn = by_name[long_w].burn_rate, by_name[short_w].burn_rate
        alerts.append(
            BurnAlert(
                severity=severity,
                long_window=long_w,
                short_window=short_w,
                threshold=rate,
                long_burn_rate=long_burn,
                short_burn_rate=short_burn,
                firing=_at_least(long_burn, rate) and _at_least(short_burn, rate),
                budget_consumed_at_threshold=rate * BURN_WINDOWS[long_w] / period,
            )
        )
    return alerts


def _grade(budget: ErrorBudget, alerts: list[BurnAlert]) -> tuple[Literal["A", "B", "C", "D", "F"] | None, list[str]]:
    if budget.consumed is None:
        return None, ["no requests in the SLO window"]
    spent = f"{budget.consumed:.1%} of the error budget spent"
    pages = [
        f"page: {a.long_window}/{a.short_window} burning ≥ {a.threshold:g}×"
        for a in alerts
        if a.firing and a.severity == "page"
    ]
    tickets = [
        f"ticket: {a.long_window}/{a.short_window} burning ≥ {a.threshold:g}×"
        for a in alerts
        if a.firing and a.severity == "ticket"
    ]
    if budget.exhausted:
        return "F", [f"{spent}: the SLO of {budget.slo_target * 100:g} % is missed", *pages, *tickets]
    if pages:
        return "D", [*pages, *tickets, spent]
    if tickets or budget.consumed > 0.75:
        return "C", [*tickets, spent]
    if budget.consumed > 0.25:
        return "B", [spent]
    return "A", [spent]


def _from_records(
    source_name: Literal["records", "file", "logs"],
    latency: np.ndarray,
    status: np.ndarray,
    stamp: np.ndarray,
    req: _SLOFields,
) -> PerformanceMonitorOutput:
    notes: list[str] = []
    if stamp.size == 0:
        notes.append("no request records found" + (" in the access logs" if source_name == "logs" else ""))
        now = req.now if req.now is not None else 0.0
    else:
        now = req.now if req.now is not None else float(stamp.max())
    start = now - req.slo_window_days * 86400.0
    keep = (stamp > start) & (stamp <= now)
    excluded = int(stamp.size - keep.sum())
    latency, status, stamp = latency[keep], status[keep], stamp[keep]
    failed = is_failure(status)
    bad = failed | (latency > req.latency_threshold_ms) if req.latency_threshold_ms is not None else failed
    n = int(status.size)
    if n:
        p50, p95, p99 = (float(v) for v in np.percentile(latency, [50, 95, 99]))
        summary = LatencySummary(
            method="numpy.percentile, linear",
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            mean_ms=float(latency.mean()),
            max_ms=float(latency.max()),
        )
    else:
        summary = LatencySummary(
            method="numpy.percentile, linear", p50_ms=None, p95_ms=None, p99_ms=None, mean_ms=None, max_ms=None
        )
    budget = _budget(req.slo_target, req.slo_window_days, n, int(bad.sum()))
    windows = _burn_windows(stamp, bad, now, req) if n else []
    alerts = _alerts(windows, req) if n else []
    grade, reasons = _grade(budget, alerts)
    availability = 1.0 - float(failed.sum()) / n if n else None
    sli = 1.0 - budget.bad / n if n else None
    if excluded:
        notes.append(f"{excluded} requests outside the SLO window ({req.slo_window_days:g} days up to now) left out")
    firing = [f"{a.severity} {a.long_window}/{a.short_window}" for a in alerts if a.firing]
    message = (
        f"grade {grade}: availability {availability:.4%} over {n} requests, "
        f"{budget.consumed:.1%} of the error budget spent"
        + (f"; firing: {', '.join(firing)}" if firing else "; no burn-rate alert")
        if n
        else "no requests to judge"
    )
    return PerformanceMonitorOutput(
        source=source_name,
        requests=n,
        excluded=excluded,
        window_start=float(stamp.min()) if n else None,
        window_end=now if n else None,
        status_classes=_status_classes(status),
        failures=int(failed.sum()),
        availability=availability,
        sli=sli,
        latency=summary,
        error_budget=budget,
        burn_rates=windows,
        alerts=alerts,
        grade=grade,
        grade_reasons=reasons,
        services=[],
        notes=notes,
        message=message,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _from_metrics(source: MetricsSource, ctx: RunContext) -> PerformanceMonitorOutput:
    targets = (
        [(url, url) for url in source.base_urls] if source.base_urls is not None else default_targets(ctx.settings)
    )
    services: list[ServiceSLO] = []
    all_buckets: dict[float, float] = defaultdict(float)
    total_sum = 0.0
    n = fives = throttled = 0
    with httpx.Client(timeout=source.timeout_s) as client:
        for name, url in targets:
            try:
                response = client.get(f"{url}/metrics")
                response.raise_for_status()
                scrape = parse_metrics(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                services.append(
                    ServiceSLO(
                        service=name,
                        base_url=url,
                        up=False,
                        error=error,
                        requests=0,
                        failures=0,
                        availability=None,
                        p50_ms=None,
                        p95_ms=None,
                        p99_ms=None,
                    )
                )
                continue
            buckets = sum_buckets(scrape.buckets, source.route_prefix)
            count, five, throttle = request_counts(scrape.requests, source.route_prefix)
            for le, value in buckets:
                all_buckets[le] += value
            total_sum += sum(
                v for (route, _), v in scrape.latency_sum.items() if route_selected(route, source.route_prefix)
            )
            n, fives, throttled = n + count, fives + five, throttled + throttle
            services.append(
                ServiceSLO(
                    service=name,
                    base_url=url,
                    up=True,
                    error=None,
                    requests=count,
                    failures=five + throttle,
                    availability=1.0 - (five + throttle) / count if count else None,
                    p50_ms=_ms(histogram_quantile(0.5, buckets)),
                    p95_ms=_ms(histogram_quantile(0.95, buckets)),
                    p99_ms=_ms(histogram_quantile(0.99, buckets)),
                )
            )
    merged = sorted(all_buckets.items())
    summary = LatencySummary(
        method="histogram_quantile over mlmesh_http_request_duration_seconds, summed by le",
        p50_ms=_ms(histogram_quantile(0.5, merged)),
        p95_ms=_ms(histogram_quantile(0.95, merged)),
        p99_ms=_ms(histogram_quantile(0.99, merged)),
        mean_ms=total_sum / n * 1000.0 if n else None,
        max_ms=None,
    )
    failures = fives + throttled
    notes = ["a scrape counts requests since each process started: no time windows, so no burn rates or alerts"]
    if source.latency_threshold_ms is not None:
        notes.append("latency_threshold_ms is not applied to histograms: the SLI counts failures only")
    if source.base_urls is None:
        notes.append("every configured service is summed: a call through the gateway counts there and at its tier")
    down = [s.service for s in services if not s.up]
    if down:
        notes.append(f"not reachable: {', '.join(down)}")
    budget = _budget(source.slo_target, source.slo_window_days, n, failures)
    grade, reasons = _grade(budget, [])
    availability = 1.0 - failures / n if n else None
    return PerformanceMonitorOutput(
        source="metrics",
        requests=n,
        excluded=0,
        window_start=None,
        window_end=None,
        status_classes={"5xx": fives, "429": throttled, "other": n - failures},
        failures=failures,
        availability=availability,
        sli=availability,
        latency=summary,
        error_budget=budget,
        burn_rates=[],
        alerts=[],
        grade=grade,
        grade_reasons=reasons,
        services=services,
        notes=notes,
        message=(
            f"grade {grade}: availability {availability:.4%} over {n} requests on {len(services) - len(down)} services"
            if n
            else f"no requests counted on the {len(services) - len(down)} reachable services"
        ),
    )


@component(
    "PerformanceMonitor",
    tier="tier4",
    capabilities=["slo", "latency_percentiles", "error_budget", "burn_rate_alerts"],
    example={
        "source": "records",
        "slo_target": 0.99,
        "records": [
            {"latency_ms": 12.0, "status": 200, "timestamp": 1_700_000_000},
            {"latency_ms": 15.5, "status": 200, "timestamp": 1_700_000_060},
            {"latency_ms": 230.0, "status": 503, "timestamp": 1_700_000_120},
            {"latency_ms": 18.0, "status": 404, "timestamp": 1_700_000_180},
            {"latency_ms": 11.2, "status": 200, "timestamp": 1_700_000_240},
        ],
    },
    examples=[{"source": "logs", "slo_target": 0.999}],
    errors={400: "a file path outside data/ or unreadable"},
)
def performance_monitor(request: PerformanceMonitorInput, ctx: RunContext) -> PerformanceMonitorOutput:
    """SLOs from request data: p50/p95/p99, availability, error budget, multi-window burn-rate alerts, grade.

    Records come inline, from a file under data/, from the mesh's access logs, or from one scrape of the
    services' Prometheus metrics. 5xx and 429 answers are failures; burn-rate alerts follow the SRE
    workbook's 1h/5m 14.4×, 6h/30m 6× (page) and 1d/2h 3×, 3d/6h 1× (ticket) table.
    """
    source = request.root
    if isinstance(source, MetricsSource):
        return _from_metrics(source, ctx)
    if isinstance(source, RecordsSource):
        latency = np.array([r.latency_ms for r in source.records])
        status = np.array([r.status for r in source.records], dtype=np.int64)
        stamp = np.array([r.timestamp for r in source.records])
        return _from_records("records", latency, status, stamp, source)
    if isinstance(source, FileSource):
        return _from_records("file", *_read_file(source, ctx), source)
    return _from_records("logs", *_read_logs(source, ctx), source)
