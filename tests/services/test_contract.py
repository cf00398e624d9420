"""The common contract every registered component meets (after scikit-learn's common estimator checks).

A new component gets all of these by being declared in a tier package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlmesh.settings import TIERS
from services.framework import Component, RunContext
from services.framework.app import create_app, load_tier
from tests.conftest import AUTH, make_settings

COMPONENTS: list[Component] = [c for tier in TIERS for c in load_tier(tier)]
IDS = [c.name for c in COMPONENTS]


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    root = tmp_path_factory.mktemp("contract")
    opened = {
        tier: TestClient(create_app(tier, settings=make_settings(root), announce=False), headers=AUTH) for tier in TIERS
    }
    for client in opened.values():
        client.__enter__()
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


def run(clients: dict[str, TestClient], comp: Component, body: object, **headers: str) -> object:
    return clients[comp.tier].post(
        f"/run/{comp.name}", content=json.dumps(body), headers={"content-type": "application/json", **headers}
    )


def test_every_catalogue_tier_is_importable() -> None:
    names = [c.name for c in COMPONENTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_example_runs_and_envelope_is_filled(clients: dict[str, TestClient], comp: Component) -> None:
    response = run(clients, comp, comp.example, **{"X-Request-ID": f"contract-{comp.name}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["orchestrator_compatible"] is True
    assert body["component"] == comp.name
    comp.output_model.model_validate(body["component_result"])
    meta = body["local_metadata"]
    assert meta["execution_time_ms"] > 0
    assert meta["peak_memory_mb"] >= 0
    assert meta["component_version"] == comp.version
    assert meta["tier"] == comp.tier
    assert meta["request_id"] == f"contract-{comp.name}"
    assert isinstance(meta["output_files"], list)


@pytest.mark.parametrize(
    "comp", [c for c in COMPONENTS if c.deterministic], ids=[c.name for c in COMPONENTS if c.deterministic]
)
def test_same_input_same_result(clients: dict[str, TestClient], comp: Component) -> None:
    first = run(clients, comp, comp.example).json()["component_result"]
    second = run(clients, comp, comp.example).json()["component_result"]
    assert first == second


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_empty_body_is_422(clients: dict[str, TestClient], comp: Component) -> None:
    response = run(clients, comp, {})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert set(problem) == {"type", "title", "status", "detail", "component", "request_id"}
    assert problem["component"] == comp.name and problem["detail"]


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_unknown_field_is_422_naming_it(clients: dict[str, TestClient], comp: Component) -> None:
    response = run(clients, comp, {**comp.example, "surely_not_a_field": 1})
    assert response.status_code == 422, response.text
    assert "surely_not_a_field" in response.json()["detail"]


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_malformed_bodies_are_4xx(clients: dict[str, TestClient], comp: Component) -> None:
    client = clients[comp.tier]
    for content, ctype in [
        (b'{"a":', "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"x=1", "text/plain"),
    ]:
        response = client.post(f"/run/{comp.name}", content=content, headers={"content-type": ctype})
        assert 400 <= response.status_code < 500, (content, response.text)


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_route_and_schemas_are_in_openapi(clients: dict[str, TestClient], comp: Component) -> None:
    doc = clients[comp.tier].get("/openapi.json").json()
    operation = doc["paths"][f"/run/{comp.name}"]["post"]
    assert operation["summary"] == comp.summary
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    manifest = {c["name"]: c for c in clients[comp.tier].get("/components").json()["components"]}
    assert manifest[comp.name]["input_schema"] == comp.input_model.model_json_schema()
    assert manifest[comp.name]["class_name"] == comp.class_name


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_callable_without_http(tmp_path: Path, comp: Component) -> None:
    request = comp.input_model.model_validate(comp.example)
    ctx = RunContext(component=comp.name, settings=make_settings(tmp_path), request_id=None)
    result = comp(request, ctx) if comp.takes_context else comp(request)
    if comp.is_async:
        import asyncio

        result = asyncio.run(result)
    assert isinstance(result, comp.output_model)


def _first_leaf(
    node: object, kind: type | tuple[type, ...], path: tuple[object, ...] = ()
) -> tuple[object, ...] | None:
    """Path to the first value of ``kind`` in a JSON document (booleans are not numbers)."""
    if isinstance(node, kind) and not isinstance(node, bool):
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found = _first_leaf(child, kind, (*path, key))
        if found is not None:
            return found
    return None


def _replace(node: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    copy = json.loads(json.dumps(node))
    target = copy
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return copy


@pytest.mark.parametrize("comp", COMPONENTS, ids=IDS)
def test_malformed_input_battery(clients: dict[str, TestClient], comp: Component) -> None:
    """Every malformed body is a 4xx naming the problem, never a 5xx, and the service stays healthy."""
    client = clients[comp.tier]
    url = f"/run/{comp.name}"
    json_headers = {"content-type": "application/json"}
    bodies: list[bytes] = [
        b"[" * 50_000 + b"]" * 50_000,  # deep nesting
        json.dumps({"nested": [[[[[[[[[[[[1]]]]]]]]]]]]}).encode(),
        b'{"a": "\x00"}',
    ]
    number = _first_leaf(comp.example, (int, float))
    if number is not None:
        for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
            bodies.append(json.dumps(_replace(comp.example, number, "@@")).replace('"@@"', literal).encode())
        bodies.append(json.dumps(_replace(comp.example, number, {"wrong": "type"})).encode())
    text = _first_leaf(comp.example, str)
    if text is not None and text[-1] != "operation":
        bodies.append(json.dumps(_replace(comp.example, text, ["wrong", "type"])).encode())
    for body in bodies:
        response = client.post(url, content=body, headers=json_headers)
        assert 400 <= response.status_code < 500, (body[:80], response.text)
        assert response.json()["detail"], body[:80]
    # NUL bytes inside strings are data, not an attack: answered without a 5xx.
    if text is not None and text[-1] != "operation":
        response = client.post(url, content=json.dumps(_replace(comp.example, text, "a\u0000b")), headers=json_headers)
        assert response.status_code < 500, response.text
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("tier", TIERS)
def test_bodies_over_the_limit_are_413(tmp_path: Path, tier: str) -> None:
    app = create_app(tier, settings=make_settings(tmp_path, max_body_bytes=4096), announce=False)
    with TestClient(app, headers=AUTH) as client:
        huge = json.dumps({"values": list(range(5000))})
        for comp in load_tier(tier):
            response = client.post(f"/run/{comp.name}", content=huge, headers={"content-type": "application/json"})
            assert response.status_code == 413, comp.name
            assert "4096 bytes" in response.json()["detail"]
        assert client.get("/health").status_code == 200
