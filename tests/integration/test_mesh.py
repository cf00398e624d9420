"""The whole mesh as users run it: ``honcho start`` over the Procfile, real processes on free ports."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import TIERS, Mesh
from tests.support import MeshProcess, free_port, wait_for

pytestmark = pytest.mark.integration


def _a_component_of(mesh: Mesh, tier: str) -> dict[str, Any]:
    components = httpx.get(f"{mesh.gateway}/components", timeout=5).json()["components"]
    return next(c for c in components if c["tier"] == tier)


def test_health_shows_every_service_up(mesh: Mesh) -> None:
    body = mesh.health()
    assert body["status"] == "ok"
    assert sorted(s["tier"] for s in body["services"]) == list(TIERS)
    for service in body["services"]:
        assert service["latency_ms"] is not None and service["latency_ms"] < 1000


def test_components_are_listed_and_run_through_the_gateway(mesh: Mesh) -> None:
    components = httpx.get(f"{mesh.gateway}/components", timeout=5).json()["components"]
    assert components, "no components discovered"
    assert all(c["status"] == "up" and c["locations"] for c in components)
    comp = _a_component_of(mesh, "tier3")
    response = httpx.post(f"{mesh.gateway}/run/{comp['name']}", json=comp["example"], timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["local_metadata"]["tier"] == "tier3"


def test_gateway_docs_list_every_component(mesh: Mesh) -> None:
    doc = httpx.get(f"{mesh.gateway}/openapi.json", timeout=5).json()
    components = httpx.get(f"{mesh.gateway}/components", timeout=5).json()["components"]
    for comp in components:
        assert f"/run/{comp['name']}" in doc["paths"]


def test_killed_tier_gives_503_then_comes_back(mesh: Mesh) -> None:
    comp = _a_component_of(mesh, "tier3")
    url = f"{mesh.gateway}/run/{comp['name']}"
    (victim,) = mesh.tier_processes("tier3")
    old_instance = next(s for s in mesh.health()["services"] if s["tier"] == "tier3")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    down = wait_for(
        lambda: (r := httpx.post(url, json=comp["example"], timeout=30)).status_code == 503 and r,
        timeout=10,
        what="503 while tier3 is down",
    )
    assert "tier3" in down.json()["detail"]
    assert down.json()["component"] is None or down.json()["component"] == comp["name"]

    # The supervisor restarts it; it re-registers and the gateway serves it again.
    wait_for(
        lambda: httpx.post(url, json=comp["example"], timeout=30).status_code == 200, timeout=60, what="tier3 back"
    )
    (replacement,) = mesh.tier_processes("tier3")
    assert replacement.pid != victim.pid
    assert next(s for s in mesh.health()["services"] if s["tier"] == "tier3")["status"] == "up"
    assert old_instance["status"] == "up"
    # The other tiers never went down.
    assert all(s["status"] == "up" for s in mesh.health()["services"])


def test_every_process_writes_json_logs_with_request_ids(mesh: Mesh) -> None:
    comp = _a_component_of(mesh, "tier3")
    httpx.post(
        f"{mesh.gateway}/run/{comp['name']}", json=comp["example"], headers={"X-Request-ID": "trace-me-1"}, timeout=30
    )
    logs = mesh.root / "logs"

    def traced() -> bool:
        return all("trace-me-1" in (logs / f"{name}.log").read_text() for name in ("gateway", "tier3"))

    wait_for(traced, timeout=10, what="request id in gateway and tier3 logs")
    for name in ("gateway", *TIERS):
        assert (logs / f"{name}.log").exists()


def test_every_process_serves_metrics(mesh: Mesh) -> None:
    for name, port in mesh.ports.items():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "mlmesh_http_requests_total" in text, name


def test_a_tier_started_alone_announces_itself(mesh: Mesh, tmp_path: Path) -> None:
    port = free_port()
    extra = MeshProcess(
        "tier2-extra",
        ["services", "tier2", "--port", str(port)],
        mesh.env,
        supervised=False,
        log=tmp_path / "extra.log",
    )
    try:
        wait_for(
            lambda: any(s["base_url"].endswith(f":{port}") and s["status"] == "up" for s in mesh.health()["services"]),
            timeout=30,
            what="the extra tier2 to register",
        )
        tier2 = next(
            c for c in httpx.get(f"{mesh.gateway}/components", timeout=5).json()["components"] if c["tier"] == "tier2"
        )
        assert len(tier2["locations"]) == 2
    finally:
        extra.stop()


def test_stateful_component_survives_a_killed_tier(mesh: Mesh) -> None:
    run = f"{mesh.gateway}/run/multiarmed_bandit_framework"
    created = httpx.post(
        run, json={"operation": "create", "arms": ["clarity", "examples"], "algorithm": "ucb1", "seed": 7}, timeout=30
    )
    assert created.status_code == 200, created.text
    experiment = created.json()["component_result"]["experiment_id"]
    rewards = {"clarity": [1, 0, 1, 1], "examples": [0, 0, 1]}
    for arm, values in rewards.items():
        update = {"operation": "update", "experiment_id": experiment, "arm": arm, "rewards": values}
        assert httpx.post(run, json=update, timeout=30).status_code == 200

    models = f"{mesh.gateway}/run/ml_model_service"
    features = [[float(i), float(i % 7), float((i * 3) % 5)] for i in range(60)]
    target = [2.0 * a - 0.5 * b + 0.25 * c for a, b, c in features]
    trained = httpx.post(
        models, json={"operation": "train", "name": "effect", "features": features, "target": target}, timeout=60
    )
    assert trained.status_code == 200, trained.text
    predict = {"operation": "predict", "name": "effect", "features": features[:5]}
    before = httpx.post(models, json=predict, timeout=30).json()["component_result"]["prediction"]["predictions"]

    (victim,) = mesh.tier_processes("tier2")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    summary = {"operation": "summary", "experiment_id": experiment}
    response = wait_for(
        lambda: (r := httpx.post(run, json=summary, timeout=30)).status_code == 200 and r,
        timeout=60,
        what="tier2 back with the experiment",
    )
    assert mesh.tier_processes("tier2")[0].pid != victim.pid
    arms = response.json()["component_result"]["summary"]["arms"]
    assert {a["arm"]: a["pulls"] for a in arms} == {arm: len(values) for arm, values in rewards.items()}
    assert {a["arm"]: a["reward_sum"] for a in arms} == {arm: sum(values) for arm, values in rewards.items()}
    # The model registry too: the same artefact answers the same predictions.
    assert (
        httpx.post(models, json=predict, timeout=30).json()["component_result"]["prediction"]["predictions"] == before
    )
