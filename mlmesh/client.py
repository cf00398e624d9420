"""Async Python client of the mlmesh gateway.

    async with MeshClient() as client:
        for info in await client.discover_components():
            print(info.name, info.tier, info.status)
        result = await client.run("advanced_statistical_validator", payload)

Every failure is raised as one exception tree, meant to be caught at the level
the caller can act on::

    MeshClientError                any failure talking to the mesh (.status, .problem, .detail, .request_id)
    ├── InvalidRequest             4xx: the request cannot succeed as sent (400, 409, 413, 422, ...)
    │   └── ComponentNotFound      404: no such component (.component)
    ├── MeshUnavailable            503 / 429, connection refused or dropped: try again later (.retry_after)
    ├── MeshTimeout                504, or this client's own read/write timeout
    ├── MeshServerError            500 and any other 5xx: a bug on the mesh side
    └── UnexpectedResponse         a 2xx whose body breaks the contract

``.problem`` is the gateway's problem+json body (``{"type", "title", "status",
"detail", "component", "request_id"}``) when there was one, else ``None``;
``.status`` is the HTTP status, or ``None`` when no response arrived.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import mlmesh
from mlmesh.settings import Settings

__all__ = [
    "DEFAULT_TIMEOUT",
    "ComponentInfo",
    "ComponentNotFound",
    "InvalidRequest",
    "MeshClient",
    "MeshClientError",
    "MeshHealth",
    "MeshServerError",
    "MeshTimeout",
    "MeshUnavailable",
    "PingResult",
    "RunEnvelope",
    "RunMetadata",
    "ServiceHealth",
    "UnexpectedResponse",
]

# A little longer than the gateway's own per-call timeout (60 s), so that the
# gateway's 504 problem, which names the tier, arrives before the client gives up.
DEFAULT_TIMEOUT = httpx.Timeout(65.0, connect=5.0)
REQUEST_ID_HEADER = "X-Request-ID"
M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- errors


class MeshClientError(Exception):
    """Base of every error :class:`MeshClient` raises.

    Attributes:
        status: HTTP status of the answer, or ``None`` when none arrived.
        problem: The problem+json body, when the answer carried one.
        detail: What went wrong, for a human.
        request_id: The request id of the failed call, when known.
        component: The component the call was about, when any.
    """

    default_title = "Mesh error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
        request_id: str | None = None,
        component: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem = problem
        self.request_id = request_id
        self.component = component

    @property
    def title(self) -> str:
        """The problem's title, or a default for the error class when there is no problem body."""
        if self.problem and isinstance(self.problem.get("title"), str):
            return str(self.problem["title"])
        return self.default_title


class InvalidRequest(MeshClientError):
    """The mesh refused the request as sent (4xx); retrying it unchanged will not help."""

    default_title = "Invalid request"


class ComponentNotFound(InvalidRequest):
    """No component of that name is registered (404)."""

    default_title = "Not found"


class MeshUnavailable(MeshClientError):
    """The gateway or the tier behind it is down or overloaded (503, 429, connection failure).

    Attributes:
        retry_after: Seconds the mesh asked the caller to wait, when it said.
    """

    default_title = "Unavailable"

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after


class MeshTimeout(MeshClientError):
    """The call ran out of time, in the mesh (504) or in this client."""

    default_title = "Timeout"


class MeshServerError(MeshClientError):
    """The mesh failed on its side (500 or another 5xx)."""

    default_title = "Server error"


class UnexpectedResponse(MeshClientError):
    """A successful answer whose body does not follow the gateway's contract."""

    default_title = "Unexpected response"


# --------------------------------------------------------------------------- wire models


class _Wire(BaseModel):
    # Unknown fields are kept, so that a newer gateway neither breaks this client
    # nor loses data when a model is dumped back (``mlmesh run --envelope``).
    model_config = ConfigDict(extra="allow", frozen=True)


class ServiceHealth(_Wire):
    """One service as the gateway sees it."""

    id: str
    tier: str
    base_url: str
    status: str = "unknown"
    latency_ms: float | None = None
    last_seen_s: float | None = None
    components: int = 0
    configured: bool = False
    breaker: str = "closed"
    error: str | None = None


class MeshHealth(_Wire):
    """The gateway's ``GET /health``: the mesh at a glance."""

    status: str
    version: str = ""
    services: list[ServiceHealth] = Field(default_factory=list)

    @property
    def down(self) -> list[ServiceHealth]:
        """The services the gateway reports as down."""
        return [s for s in self.services if s.status == "down"]


class ComponentInfo(_Wire):
    """A component as the gateway's discovery lists it."""

    name: str
    class_name: str = ""
    tier: str
    capabilities: list[str] = Field(default_factory=list)
    description: str = ""
    version: str = ""
    status: str = "unknown"
    locations: list[str] = Field(default_factory=list)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    example: dict[str, Any] = Field(default_factory=dict)


class RunMetadata(_Wire):
    """``local_metadata`` of a run envelope."""

    execution_time_ms: float | None = None
    peak_memory_mb: float | None = None
    output_files: list[str] = Field(default_factory=list)
    component_version: str | None = None
    tier: str | None = None
    request_id: str | None = None


class RunEnvelope(_Wire):
    """The success envelope of ``POST /run/{name}``."""

    orchestrator_compatible: bool
    component: str
    component_result: dict[str, Any]
    local_metadata: RunMetadata = Field(default_factory=RunMetadata)


@dataclass(frozen=True, slots=True)
class PingResult:
    """Outcome of one ``GET <url>/health``; never an exception.

    Attributes:
        url: The base URL that was pinged.
        ok: Whether it answered 200 with a status other than ``"down"``.
        status: The ``status`` it reported, or ``"unreachable"`` / ``"http <code>"``.
        latency_ms: Round-trip time of the request, when an answer arrived.
        error: Why it is not ok, when it is not.
        body: The JSON body, when there was one.
    """

    url: str
    ok: bool
    status: str
    latency_ms: float | None = None
    error: str | None = None
    body: dict[str, Any] | None = None


# --------------------------------------------------------------------------- client


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building a verifying context loads the CA bundle, which costs more than a whole local
    # call; one per process is enough (the CLI and the tests open many short-lived clients).
    return httpx.create_ssl_context()


def _check_url(url: str) -> str:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"gateway URL must look like http://host:port; got {url!r}")
    return url.rstrip("/")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date; the mesh never sends one
        return None


def _error_from_response(response: httpx.Response, *, component: str | None) -> MeshClientError:
    status = response.status_code
    problem: dict[str, Any] | None = None
    try:
        body = response.json()
        if isinstance(body, dict) and "status" in body and "detail" in body:
            problem = body
    except ValueError:
        pass
    if problem is not None:
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        component = problem.get("component") or component
    else:
        text = response.text.strip()[:300]
        detail = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    kwargs: dict[str, Any] = {
        "status": status,
        "problem": problem,
        "request_id": (problem or {}).get("request_id") or response.headers.get(REQUEST_ID_HEADER),
        "component": component,
    }
    if status == 404 and component is not None:
        return ComponentNotFound(detail, **kwargs)
    if status in (429, 503):
        return MeshUnavailable(detail, retry_after=_retry_after(response), **kwargs)
    if status == 504:
        return MeshTimeout(detail, **kwargs)
    if 400 <= status < 500:
        return InvalidRequest(detail, **kwargs)
    if status >= 500:
        return MeshServerError(detail, **kwargs)
    return UnexpectedResponse(detail, **kwargs)


def _error_from_transport(exc: httpx.TransportError, url: str, *, component: str | None) -> MeshClientError:
    # A connect timeout means nothing answered: that is "unavailable", not a slow call.
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return MeshTimeout(f"no answer from {url} in time ({type(exc).__name__})", component=component)
    reason = str(exc) or type(exc).__name__
    return MeshUnavailable(f"cannot reach {url}: {reason}", component=component)


class MeshClient:
    """Async client of the gateway's HTTP API; use it as an async context manager.

    Args:
        base_url: The gateway's URL; ``Settings().gateway_url`` when omitted.
        timeout: Seconds (or an ``httpx.Timeout``) per request.
        transport: An httpx transport to use instead of the network (e.g. ``httpx.ASGITransport``).

    Raises:
        ValueError: If ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _check_url(base_url if base_url is not None else Settings().gateway_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            verify=_ssl_context(),
            headers={"User-Agent": f"mlmesh-client/{mlmesh.__version__}", "Accept": "application/json"},
        )

    async def __aenter__(self) -> Self:
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the connection pool (not needed inside ``async with``)."""
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        component: str | None = None,
        json: Any = None,
        request_id: str | None = None,
    ) -> Any:
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        url = f"{self.base_url}{path}"
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise _error_from_transport(exc, url, component=component) from exc
        if not response.is_success:
            raise _error_from_response(response, component=component)
        try:
            return response.json()
        except ValueError as exc:
            raise UnexpectedResponse(
                f"{method} {url} answered {response.status_code} without a JSON body",
                status=response.status_code,
                request_id=response.headers.get(REQUEST_ID_HEADER),
                component=component,
            ) from exc

    @staticmethod
    def _parse(model: type[M], data: Any, what: str, *, component: str | None = None) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise UnexpectedResponse(f"{what} does not follow the contract: {exc}", component=component) from exc

    async def health(self) -> MeshHealth:
        """The gateway's view of the mesh (``GET /health``).

        Returns:
            Overall status, version, and every service with its status and latency.
        """
        return self._parse(MeshHealth, await self._request("GET", "/health"), "GET /health")

    async def discover_components(self) -> list[ComponentInfo]:
        """Every declared component, with tier, locations, status and schemas (``GET /components``)."""
        data = await self._request("GET", "/components")
        if not isinstance(data, dict) or not isinstance(data.get("components"), list):
            raise UnexpectedResponse("GET /components did not answer {'components': [...]}")
        return [self._parse(ComponentInfo, item, "GET /components") for item in data["components"]]

    async def component(self, name: str) -> ComponentInfo:
        """One component's discovery entry (``GET /components/{name}``).

        Raises:
            ComponentNotFound: If no component has that name.
        """
        data = await self._request("GET", f"/components/{quote(name, safe='')}", component=name)
        return self._parse(ComponentInfo, data, f"GET /components/{name}", component=name)

    async def run_envelope(
        self, name: str, payload: Mapping[str, Any] | BaseModel, *, request_id: str | None = None
    ) -> RunEnvelope:
        """Run a component through the gateway and return the whole success envelope.

        Args:
            name: The component's name.
            payload: Its input, as a mapping or a pydantic model.
            request_id: Sent as ``X-Request-ID`` so the call can be followed through the logs.

        Raises:
            ComponentNotFound: If no component has that name.
            InvalidRequest: If the mesh rejected the input (422 names the field).
            MeshUnavailable: If the gateway or the owning tier is down.
            MeshTimeout: If the run took too long.
        """
        body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload)
        data = await self._request(
            "POST", f"/run/{quote(name, safe='')}", component=name, json=body, request_id=request_id
        )
        envelope = self._parse(RunEnvelope, data, f"POST /run/{name}", component=name)
        if not envelope.orchestrator_compatible:
            raise UnexpectedResponse(f"POST /run/{name} answered an envelope not marked orchestrator_compatible")
        return envelope

    async def run(
        self, name: str, payload: Mapping[str, Any] | BaseModel, *, request_id: str | None = None
    ) -> dict[str, Any]:
        """Run a component through the gateway and return its ``component_result``.

        Same arguments and errors as :meth:`run_envelope`.
        """
        return (await self.run_envelope(name, payload, request_id=request_id)).component_result

    async def pipelines(self) -> list[dict[str, Any]]:
        """Every pipeline the gateway knows, with its steps and whether it validates now (``GET /pipelines``)."""
        data = await self._request("GET", "/pipelines")
        return list(data["pipelines"])

    async def start_run(self, pipeline: str, params: Mapping[str, Any] | None = None) -> str:
        """Start a run of ``pipeline`` (``POST /pipelines/{name}/runs``); its id, at once.

        Raises:
            ComponentNotFound: If no pipeline has that name (404).
            InvalidRequest: If the pipeline or a parameter does not validate (422 names the field).
        """
        path = f"/pipelines/{quote(pipeline, safe='')}/runs"
        data = await self._request("POST", path, json={"params": dict(params or {})})
        return str(data["id"])

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """One run with each step's state, timings, result and error (``GET /runs/{id}``)."""
        return dict(await self._request("GET", f"/runs/{quote(run_id, safe='')}"))

    async def runs(self, *, limit: int = 20, status: str | None = None, pipeline: str | None = None) -> dict[str, Any]:
        """Run history, newest first (``GET /runs``): ``{"runs": [...], "total": n, "counts": {...}}``."""
        query = {
            "limit": str(limit),
            **({"status": status} if status else {}),
            **({"pipeline": pipeline} if pipeline else {}),
        }
        return dict(await self._request("GET", f"/runs?{urlencode(query)}"))

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel a queued or running run (``POST /runs/{id}/cancel``)."""
        return dict(await self._request("POST", f"/runs/{quote(run_id, safe='')}/cancel"))

    async def ping(self, url: str | None = None) -> PingResult:
        """``GET <url>/health`` and time it; failures are reported, not raised.

        Args:
            url: A base URL (a tier service, say); the gateway when omitted.
        """
        target = (url if url is not None else self.base_url).rstrip("/")
        try:
            _check_url(target)
        except ValueError as exc:  # a relative URL would silently ping the gateway instead
            return PingResult(target, ok=False, status="unreachable", error=str(exc).replace("gateway ", "", 1))
        start = time.perf_counter()
        try:
            response = await self._http.get(f"{target}/health")
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return PingResult(target, ok=False, status="unreachable", error=reason)
        latency_ms = (time.perf_counter() - start) * 1e3
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else None
        if response.status_code != 200:
            error = _error_from_response(response, component=None).detail
            return PingResult(
                target, ok=False, status=f"http {response.status_code}", latency_ms=latency_ms, error=error, body=body
            )
        status = str(body.get("status", "unknown")) if body else "unknown"
        ok = body is not None and status != "down"
        error = None if ok else ("health answer is not JSON" if body is None else f"reports status {status!r}")
        return PingResult(target, ok=ok, status=status, latency_ms=latency_ms, error=error, body=body)

    async def ping_many(self, urls: list[str]) -> list[PingResult]:
        """Ping several base URLs concurrently, in the given order."""
        return list(await asyncio.gather(*(self.ping(u) for u in urls)))
