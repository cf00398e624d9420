"""The gateway against real tier servers: discovery, routing, errors, breakers, replicas, docs."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from gateway.app import create_app as create_gateway
from services.framework.app import create_app as create_tier
from tests.conftest import AUTH, make_settings
from tests.gateway.conftest import gateway_settings
from tests.gateway.toys import toy_add, toy_wait
from tests.support import ServerThread, free_port, serving, wait_for


def test_health_lists_every_configured_service(gateway: TestClient) -> None:
    body = gateway.get("/health").json()
    by_tier = {s["tier"]: s for s in body["services"]}
    assert set(by_tier) == {"tier1", "tier2", "tier3", "tier4"}
    assert by_tier["tier3"]["status"] == "up"
    assert by_tier["tier3"]["latency_ms"] > 0
    assert by_tier["tier1"]["status"] == "down"
    assert body["status"] == "degraded"


def test_components_are_discovered_with_schemas(gateway: TestClient) -> None:
    components = {c["name"]: c for c in gateway.get("/components").json()["components"]}
    assert set(components) == {"toy_add", "toy_wait"}
    add = components["toy_add"]
    assert add["tier"] == "tier3" and add["status"] == "up" and add["class_name"] == "ToyAdd"
    assert add["input_schema"]["required"] == ["a"]
    assert add["locations"] == [gateway.app.state.registry.components()["toy_add"].services[0].base_url]
    assert gateway.get("/components/toy_add").json()["name"] == "toy_add"
    missing = gateway.get("/components/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_run_is_routed_and_request_id_propagated(gateway: TestClient) -> None:
    response = gateway.post("/run/toy_add", json={"a": 2, "b": 3}, headers={"X-Request-ID": "req-123"})
    assert response.status_code == 200
    body = response.json()
    assert body["component_result"] == {"total": 5.0, "request_id": "req-123"}
    assert body["local_metadata"]["request_id"] == "req-123"
    assert response.headers["x-request-id"] == "req-123"
    assert response.headers["x-served-by"].startswith("tier3@")


def test_tier_errors_pass_through_as_problems(gateway: TestClient) -> None:
    response = gateway.post("/run/toy_add", json={"b": 1})
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"] == "a: Field required"
    assert problem["component"] == "toy_add"


def test_unknown_component_is_404(gateway: TestClient) -> None:
    response = gateway.post("/run/not_a_component", json={})
    assert response.status_code == 404
    assert "not_a_component" in response.json()["detail"]


def test_timeout_is_504(gateway: TestClient) -> None:
    response = gateway.post("/run/toy_wait", json={"seconds": 2}, headers={"X-MLMesh-Timeout": "0.3"})
    assert response.status_code == 504
    assert "did not answer within 0.3s" in response.json()["detail"]


def test_gateway_docs_show_each_component_model(gateway: TestClient) -> None:
    doc = gateway.get("/openapi.json").json()
    operation = doc["paths"]["/run/toy_add"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"a", "b"}
    assert operation["summary"] == "Add two numbers (a gateway test fixture)."


def test_docs_page_needs_no_network(gateway: TestClient) -> None:
    page = gateway.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        assert gateway.get(f"/static-offline-docs/{asset}").status_code == 200


def test_dead_tier_gives_503_naming_it_then_recovers(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    tier_app = create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False)
    server = ServerThread(tier_app, tier_ports["tier3"]).start()
    with TestClient(create_gateway(gateway_settings(tmp_path / "g", tier_ports))) as gw:
        assert gw.post("/run/toy_add", json={"a": 1}).status_code == 200
        server.stop()
        response = gw.post("/run/toy_add", json={"a": 1})
        assert response.status_code == 503
        assert "tier3 is down" in response.json()["detail"]
        assert "Retry-After" in response.headers
        # The same port comes back: the poller notices and calls are served again.
        server = ServerThread(
            create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False),
            tier_ports["tier3"],
        ).start()
        wait_for(lambda: gw.post("/run/toy_add", json={"a": 1}).status_code == 200, what="tier3 back")
        server.stop()


def test_breaker_opens_after_repeated_failures(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    settings = gateway_settings(tmp_path, tier_ports, breaker_fail_max=2, breaker_reset_s=60, retries=0)
    tier_app = create_tier("tier3", settings=make_settings(tmp_path / "t"), components=[toy_add], announce=False)
    with serving(tier_app, tier_ports["tier3"]) as server, TestClient(create_gateway(settings, poll=False)) as gw:
        discovery, registry = gw.app.state.discovery, gw.app.state.registry
        gw.portal.call(discovery.poll_once)
        assert gw.post("/run/toy_add", json={"a": 1}).status_code == 200
        server.stop()
        entry = next(s for s in registry.services.values() if s.tier == "tier3")
        for _ in range(2):
            registry.mark_up(entry)  # pretend the poller has not noticed yet, so each call really tries
            assert gw.post("/run/toy_add", json={"a": 1}).status_code == 503
        registry.mark_up(entry)
        response = gw.post("/run/toy_add", json={"a": 1})
        assert response.status_code == 503
        assert "circuit breaker open" in response.json()["detail"]
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert gw.get("/health").json()["services"][2]["breaker"] == "open"


def test_replicas_are_balanced_and_a_dead_one_is_skipped(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    apps = [
        create_tier("tier3", settings=make_settings(tmp_path / f"r{i}"), components=[toy_add], announce=False)
        for i in range(2)
    ]
    with serving(apps[0], tier_ports["tier3"]) as first, serving(apps[1]) as second:
        settings = gateway_settings(tmp_path / "g", tier_ports)
        settings.tiers["tier3"].replicas.append(second.url)
        with TestClient(create_gateway(settings)) as gw:
            served = {gw.post("/run/toy_add", json={"a": 1}).headers["x-served-by"] for _ in range(6)}
            assert len(served) == 2
            first.stop()
            # Until the poller notices, a connect failure is retried on the other replica.
            for _ in range(4):
                response = gw.post("/run/toy_add", json={"a": 1})
                assert response.status_code == 200
                assert response.headers["x-served-by"].endswith(second.url.split("://")[1])


def test_a_tier_started_alone_announces_itself(tmp_path: Path, tier_ports: dict[str, int]) -> None:
    settings = gateway_settings(tmp_path / "g", tier_ports)
    with serving(create_gateway(settings)) as gateway_server, httpx.Client(base_url=gateway_server.url) as gw:
        # A tier on a port the gateway was not configured with, told where the gateway is.
        port = free_port()
        tier_settings = make_settings(
            tmp_path / "t",
            gateway={"url": gateway_server.url, "heartbeat_timeout_s": 0.6},
            advertise_url=f"http://127.0.0.1:{port}",
        )
        with serving(create_tier("tier3", settings=tier_settings, components=[toy_wait]), port):
            wait_for(
                lambda: "toy_wait" in {c["name"] for c in gw.get("/components").json()["components"]},
                what="announcement",
            )
            assert gw.post("/run/toy_wait", json={"seconds": 0}).status_code == 200
            services = gw.get("/health").json()["services"]
            dynamic = [s for s in services if not s["configured"]]
            assert len(dynamic) == 1 and dynamic[0]["status"] == "up"
        # Gone silent: marked down after missed heartbeats / failed polls.
        wait_for(
            lambda: all(s["status"] == "down" for s in gw.get("/health").json()["services"] if not s["configured"]),
            what="silent service marked down",
        )


def test_registration_accepts_only_loopback_or_allow_listed(gateway: TestClient) -> None:
    rejected = [
        "http://10.0.0.5:8003",
        "http://169.254.169.254:80",
        "http://127.0.0.1@evil.example:8003",
        "http://2130706433:8003",
        "http://0x7f000001:8003",
        "http://127.1:8003",
        "file:///etc/passwd",
        "ftp://127.0.0.1:21",
        "http://example.com:8003",
        "http://127.0.0.1:8003/path",
        "http://127.0.0.1",
    ]
    for url in rejected:
        response = gateway.post("/services", json={"tier": "tier3", "base_url": url}, headers=AUTH)
        assert 400 <= response.status_code < 500, url
        assert "base_url" in response.json()["detail"], url
    bad_tier = gateway.post("/services", json={"tier": "tier9", "base_url": "http://127.0.0.1:9"}, headers=AUTH)
    assert bad_tier.status_code == 422 and "tier" in bad_tier.json()["detail"]


def test_deregistration(gateway: TestClient) -> None:
    sid = next(s["id"] for s in gateway.get("/health").json()["services"] if s["tier"] == "tier1")
    assert gateway.delete(f"/services/{sid}").status_code == 401
    assert gateway.delete(f"/services/{sid}", headers=AUTH).status_code == 200
    assert sid not in {s["id"] for s in gateway.get("/health").json()["services"]}
    assert gateway.delete(f"/services/{sid}", headers=AUTH).status_code == 404


def test_registration_needs_the_mesh_token(gateway: TestClient) -> None:
    body = {"tier": "tier2", "base_url": "http://127.0.0.1:9"}
    for headers in ({}, {"X-MLMesh-Token": "wrong"}):
        response = gateway.post("/services", json=body, headers=headers)
        assert response.status_code == 401
        assert "X-MLMesh-Token" in response.json()["detail"]
    assert all(s["base_url"] != "http://127.0.0.1:9" for s in gateway.get("/health").json()["services"])


def test_metrics_count_routed_calls(gateway: TestClient) -> None:
    gateway.post("/run/toy_add", json={"a": 1})
    text = gateway.get("/metrics").text
    assert 'mlmesh_gateway_upstream_total{component="toy_add"' in text
    assert "mlmesh_http_request_duration_seconds_bucket" in text


def test_body_limit_is_413(tmp_path: Path, tier_ports: dict[str, int], tier3: ServerThread) -> None:
    settings = gateway_settings(tmp_path, tier_ports)
    settings.max_body_bytes = 2048
    with TestClient(create_gateway(settings)) as gw:
        response = gw.post(
            "/run/toy_add", content=b"{" + b" " * 4096 + b"}", headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["status"] == 413


def test_direct_tier_call_matches_gateway_call(gateway: TestClient, tier3: ServerThread) -> None:
    assert httpx.post(f"{tier3.url}/run/toy_add", json={"a": 4}).status_code == 401
    direct = httpx.post(f"{tier3.url}/run/toy_add", json={"a": 4}, headers=AUTH).json()
    proxied = gateway.post("/run/toy_add", json={"a": 4}).json()
    assert direct["component_result"]["total"] == proxied["component_result"]["total"] == 4.0
