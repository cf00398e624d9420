"""MeshClient against a mocked gateway: parsing, the exception tree, request ids, pings."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import respx
from pydantic import BaseModel

from mlmesh.client import (
    ComponentInfo,
    ComponentNotFound,
    InvalidRequest,
    MeshClient,
    MeshClientError,
    MeshServerError,
    MeshTimeout,
    MeshUnavailable,
    UnexpectedResponse,
)

GW = "http://gw.test:8000"
T1 = "http://127.0.0.1:8001"
T3 = "http://127.0.0.1:8003"


def service(sid: str, tier: str, url: str, status: str = "up", **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "tier": tier,
        "base_url": url,
        "status": status,
        "latency_ms": 1.25 if status == "up" else None,
        "last_seen_s": 0.5,
        "components": 3,
        "configured": True,
        "breaker": "closed",
        "error": None if status == "up" else "connection refused",
        **extra,
    }


def health_body(*services: dict[str, Any], status: str = "ok") -> dict[str, Any]:
    return {"status": status, "version": "0.1.0", "services": list(services)}


def component_body(name: str, tier: str = "tier3", status: str = "up") -> dict[str, Any]:
    return {
        "name": name,
        "class_name": "".join(p.title() for p in name.split("_")),
        "tier": tier,
        "capabilities": ["statistics", "validation"],
        "description": f"{name} does things",
        "version": "1.0.0",
        "status": status,
        "locations": [T3],
        "input_schema": {"type": "object", "properties": {"x": {"type": "array"}}},
        "output_schema": {"type": "object"},
        "example": {"x": [1, 2, 3]},
    }


def envelope(name: str, result: dict[str, Any], request_id: str = "rid-1") -> dict[str, Any]:
    return {
        "orchestrator_compatible": True,
        "component": name,
        "component_result": result,
        "local_metadata": {
            "execution_time_ms": 12.4,
            "peak_memory_mb": 3.1,
            "output_files": [],
            "component_version": "1.0.0",
            "tier": "tier3",
            "request_id": request_id,
        },
    }


def problem(status: int, title: str, detail: str, component: str | None = None, rid: str = "rid-9") -> dict[str, Any]:
    return {
        "type": f"https://mlmesh.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "component": component,
        "request_id": rid,
    }


def problem_response(status: int, title: str, detail: str, component: str | None = None, **kw: Any) -> httpx.Response:
    return httpx.Response(
        status,
        json=problem(status, title, detail, component),
        headers={"content-type": "application/problem+json", **kw.get("headers", {})},
    )


@pytest.fixture
def gateway() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def test_health_parses_services(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(
        json=health_body(service("tier1", "tier1", T1), service("tier3", "tier3", T3, status="down"), status="degraded")
    )
    async with MeshClient(GW) as client:
        health = await client.health()
    assert health.status == "degraded"
    assert [s.id for s in health.services] == ["tier1", "tier3"]
    assert health.services[0].latency_ms == 1.25
    assert [s.id for s in health.down] == ["tier3"]
    assert health.services[1].error == "connection refused"


async def test_discover_components_keeps_unknown_fields(gateway: respx.MockRouter) -> None:
    body = component_body("advanced_statistical_validator")
    body["added_later"] = 7
    gateway.get(f"{GW}/components").respond(json={"components": [body, component_body("structural_analyzer", "tier1")]})
    async with MeshClient(GW) as client:
        found = await client.discover_components()
    assert [c.name for c in found] == ["advanced_statistical_validator", "structural_analyzer"]
    first = found[0]
    assert isinstance(first, ComponentInfo)
    assert (first.tier, first.status, first.version) == ("tier3", "up", "1.0.0")
    assert first.capabilities == ["statistics", "validation"]
    assert first.locations == [T3]
    assert first.example == {"x": [1, 2, 3]}
    assert first.class_name == "AdvancedStatisticalValidator"
    assert first.model_dump()["added_later"] == 7


async def test_discover_components_rejects_other_shapes(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/components").respond(json=[component_body("x")])
    async with MeshClient(GW) as client:
        with pytest.raises(UnexpectedResponse):
            await client.discover_components()


async def test_component_by_name(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/components/structural_analyzer").respond(json=component_body("structural_analyzer", "tier1"))
    async with MeshClient(GW) as client:
        info = await client.component("structural_analyzer")
    assert (info.name, info.tier) == ("structural_analyzer", "tier1")


async def test_component_not_found(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/components/nope").mock(
        return_value=problem_response(404, "Not found", "unknown component 'nope'", component="nope")
    )
    async with MeshClient(GW) as client:
        with pytest.raises(ComponentNotFound) as caught:
            await client.component("nope")
    err = caught.value
    assert isinstance(err, InvalidRequest) and isinstance(err, MeshClientError)
    assert err.status == 404
    assert err.detail == "unknown component 'nope'"
    assert err.title == "Not found"
    assert err.component == "nope"
    assert err.request_id == "rid-9"
    assert err.problem is not None and err.problem["type"].endswith("/not-found")


async def test_run_returns_result_and_sends_request_id(gateway: respx.MockRouter) -> None:
    route = gateway.post(f"{GW}/run/advanced_statistical_validator").respond(
        json=envelope("advanced_statistical_validator", {"p_value": 0.03}, "abc-123"),
        headers={"X-Request-ID": "abc-123"},
    )
    async with MeshClient(GW) as client:
        result = await client.run("advanced_statistical_validator", {"x": [1, 2]}, request_id="abc-123")
    assert result == {"p_value": 0.03}
    sent = route.calls.last.request
    assert sent.headers["X-Request-ID"] == "abc-123"
    assert json.loads(sent.content) == {"x": [1, 2]}


async def test_run_without_request_id_sends_none(gateway: respx.MockRouter) -> None:
    route = gateway.post(f"{GW}/run/c").respond(json=envelope("c", {}))
    async with MeshClient(GW) as client:
        await client.run("c", {})
    assert "X-Request-ID" not in route.calls.last.request.headers


async def test_run_envelope_and_pydantic_payload(gateway: respx.MockRouter) -> None:
    class Payload(BaseModel):
        x: list[float]

    route = gateway.post(f"{GW}/run/c").respond(json=envelope("c", {"n": 2}))
    async with MeshClient(GW) as client:
        answer = await client.run_envelope("c", Payload(x=[1.0, 2.5]))
    assert json.loads(route.calls.last.request.content) == {"x": [1.0, 2.5]}
    assert answer.component == "c"
    assert answer.component_result == {"n": 2}
    assert answer.local_metadata.execution_time_ms == 12.4
    assert answer.local_metadata.tier == "tier3"
    assert answer.local_metadata.request_id == "rid-1"


async def test_component_names_are_quoted(gateway: respx.MockRouter) -> None:
    route = gateway.post(f"{GW}/run/a%2Fb").mock(return_value=problem_response(404, "Not found", "unknown 'a/b'"))
    async with MeshClient(GW) as client:
        with pytest.raises(ComponentNotFound):
            await client.run("a/b", {})
    assert route.called


@pytest.mark.parametrize(
    ("status", "title", "expected"),
    [
        (400, "Bad request", InvalidRequest),
        (409, "Conflict", InvalidRequest),
        (413, "Payload too large", InvalidRequest),
        (422, "Invalid input", InvalidRequest),
        (429, "Too many requests", MeshUnavailable),
        (503, "Service unavailable", MeshUnavailable),
        (504, "Timeout", MeshTimeout),
        (500, "Internal error", MeshServerError),
        (502, "Bad gateway", MeshServerError),
    ],
)
async def test_run_maps_problems(gateway: respx.MockRouter, status: int, title: str, expected: type) -> None:
    gateway.post(f"{GW}/run/c").mock(return_value=problem_response(status, title, f"{title} detail", component="c"))
    async with MeshClient(GW) as client:
        with pytest.raises(expected) as caught:
            await client.run("c", {"x": 1})
    err = caught.value
    assert type(err) is expected
    assert (err.status, err.title, err.detail, err.component) == (status, title, f"{title} detail", "c")


async def test_422_names_the_field(gateway: respx.MockRouter) -> None:
    gateway.post(f"{GW}/run/c").mock(return_value=problem_response(422, "Invalid input", "x: Field required"))
    async with MeshClient(GW) as client:
        with pytest.raises(InvalidRequest, match="x: Field required"):
            await client.run("c", {})


async def test_503_carries_retry_after(gateway: respx.MockRouter) -> None:
    gateway.post(f"{GW}/run/c").mock(
        return_value=problem_response(
            503, "Service unavailable", "tier3 is down", component="c", headers={"Retry-After": "7"}
        )
    )
    async with MeshClient(GW) as client:
        with pytest.raises(MeshUnavailable) as caught:
            await client.run("c", {})
    assert caught.value.retry_after == 7.0
    assert "tier3" in caught.value.detail


async def test_error_without_problem_body(gateway: respx.MockRouter) -> None:
    gateway.post(f"{GW}/run/c").respond(502, text="upstream exploded", headers={"X-Request-ID": "r-7"})
    async with MeshClient(GW) as client:
        with pytest.raises(MeshServerError) as caught:
            await client.run("c", {})
    err = caught.value
    assert err.problem is None
    assert err.detail == "HTTP 502 Bad Gateway: upstream exploded"
    assert err.title == "Server error"
    assert err.request_id == "r-7"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), MeshUnavailable),
        (httpx.ConnectTimeout("connect timed out"), MeshUnavailable),
        (httpx.RemoteProtocolError("server disconnected"), MeshUnavailable),
        (httpx.ReadTimeout("read timed out"), MeshTimeout),
    ],
)
async def test_transport_failures(gateway: respx.MockRouter, exc: Exception, expected: type) -> None:
    gateway.post(f"{GW}/run/c").mock(side_effect=exc)
    async with MeshClient(GW) as client:
        with pytest.raises(expected) as caught:
            await client.run("c", {})
    assert type(caught.value) is expected
    assert caught.value.status is None
    assert caught.value.problem is None
    assert f"{GW}/run/c" in caught.value.detail
    assert caught.value.__cause__ is exc


async def test_connection_refused_is_unavailable() -> None:
    # A real refused connection: nothing listens on port 1 of the loopback.
    async with MeshClient("http://127.0.0.1:1", timeout=2.0) as client:
        with pytest.raises(MeshUnavailable, match=re.escape("cannot reach http://127.0.0.1:1/health")):
            await client.health()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>hi</html>"),
        httpx.Response(200, json={"component": "c"}),
        httpx.Response(200, json={**envelope("c", {}), "orchestrator_compatible": False}),
    ],
)
async def test_run_rejects_a_broken_success(gateway: respx.MockRouter, response: httpx.Response) -> None:
    gateway.post(f"{GW}/run/c").mock(return_value=response)
    async with MeshClient(GW) as client:
        with pytest.raises(UnexpectedResponse):
            await client.run("c", {})


async def test_default_base_url_comes_from_settings(monkeypatch: pytest.MonkeyPatch, gateway: respx.MockRouter) -> None:
    monkeypatch.setenv("MLMESH_GATEWAY__URL", "http://elsewhere.test:9100/")
    gateway.get("http://elsewhere.test:9100/health").respond(json=health_body())
    async with MeshClient() as client:
        assert client.base_url == "http://elsewhere.test:9100"
        assert (await client.health()).services == []


def test_default_base_url_from_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLMESH_GATEWAY__URL", raising=False)
    monkeypatch.setenv("MLMESH_GATEWAY__PORT", "9123")
    assert MeshClient().base_url == "http://127.0.0.1:9123"


@pytest.mark.parametrize("url", ["gw.test:8000", "ftp://gw.test", "http://"])
def test_bad_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="gateway URL"):
        MeshClient(url)


async def test_custom_transport() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/health"
        return httpx.Response(200, json=health_body())

    async with MeshClient(GW, transport=httpx.MockTransport(handler)) as client:
        assert (await client.health()).status == "ok"


async def test_ping_reports_instead_of_raising(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body())
    gateway.get(f"{T1}/health").respond(json={"status": "ok", "tier": "tier1", "components": 2})
    gateway.get(f"{T3}/health").mock(side_effect=httpx.ConnectError("refused"))
    gateway.get("http://127.0.0.1:8004/health").respond(500, text="boom")
    async with MeshClient(GW) as client:
        gw = await client.ping()
        t1, t3, t4 = await client.ping_many([T1, T3 + "/", "http://127.0.0.1:8004"])
    assert (gw.ok, gw.status, gw.url) == (True, "ok", GW)
    assert gw.latency_ms is not None and gw.latency_ms >= 0
    assert (t1.ok, t1.status, t1.error) == (True, "ok", None)
    assert t1.body is not None and t1.body["tier"] == "tier1"
    assert (t3.ok, t3.status, t3.url, t3.latency_ms) == (False, "unreachable", T3, None)
    assert t3.error == "ConnectError: refused"
    assert (t4.ok, t4.status) == (False, "http 500")
    assert t4.error == "HTTP 500 Internal Server Error: boom"


async def test_ping_down_status_is_not_ok(gateway: respx.MockRouter) -> None:
    gateway.get(f"{GW}/health").respond(json=health_body(status="down"))
    async with MeshClient(GW) as client:
        gw = await client.ping()
    assert (gw.ok, gw.status, gw.error) == (False, "down", "reports status 'down'")


@pytest.mark.parametrize("url", ["", "127.0.0.1:8001", "/health"])
async def test_ping_refuses_relative_urls(gateway: respx.MockRouter, url: str) -> None:
    route = gateway.get(f"{GW}/health")
    async with MeshClient(GW) as client:
        result = await client.ping(url)
    assert (result.ok, result.status) == (False, "unreachable")
    assert result.error is not None and result.error.startswith("URL must look like http://host:port")
    assert not route.called
