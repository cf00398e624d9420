"""The dashboard in a real headless browser, in front of real mesh processes on free ports.

The gateway and the four tiers run as separate processes (unsupervised, so a killed tier stays
down); headless Debian chromium, driven by Playwright (never a downloaded browser), opens
``/dashboard``, waits for live rows, takes a screenshot, then watches a SIGKILLed tier turn red.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, MeshProcess, free_port, mesh_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
TIERS = ("tier1", "tier2", "tier3", "tier4")
HEALTH_INTERVAL_S = 1.0
REFRESH_S = 0.5  # the page's poll period (?refresh=), shorter than its default 2 s to keep the test quick

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium chromium-driver); .ci/run installs it",
    ),
]


@dataclass
class Mesh:
    gateway: str
    processes: dict[str, MeshProcess]

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.gateway}/health", timeout=5).json()


@pytest.fixture
def own_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A mesh of this test's own: the shared one is supervised (a killed tier comes back) and used by others."""
    ports = {"gateway": free_port(), **{tier: free_port() for tier in TIERS}}
    env = mesh_env(
        tmp_path,
        ports,
        MLMESH_GATEWAY__HEALTH_INTERVAL_S=str(HEALTH_INTERVAL_S),
        MLMESH_GATEWAY__HEARTBEAT_TIMEOUT_S=str(3 * HEALTH_INTERVAL_S),
    )
    processes: dict[str, MeshProcess] = {}
    try:
        processes["gateway"] = MeshProcess("gateway", ["gateway"], env, supervised=False, log=tmp_path / "gateway.out")
        for tier in TIERS:
            processes[tier] = MeshProcess(tier, ["services", tier], env, supervised=False, log=tmp_path / f"{tier}.out")
        mesh = Mesh(f"http://127.0.0.1:{ports['gateway']}", processes)
        wait_for(
            lambda: (
                len(services := mesh.health()["services"]) == len(TIERS)
                and all(s["status"] == "up" and s["components"] > 0 for s in services)
            ),
            timeout=60,
            interval=0.2,
            what="every tier up behind the gateway",
        )
        yield mesh
    finally:
        for process in processes.values():
            process.stop()


def _traffic(mesh: Mesh, *, pipeline: bool = True) -> str | None:
    """Some calls through the gateway (and a pipeline run), for the charts."""
    component = "structural_analyzer"
    example = httpx.get(f"{mesh.gateway}/components/{component}", timeout=5).json()["example"]
    for _ in range(5):
        assert httpx.post(f"{mesh.gateway}/run/{component}", json=example, timeout=30).status_code == 200
    assert httpx.post(f"{mesh.gateway}/run/{component}", json={}, timeout=30).status_code == 422
    if not pipeline:
        return None
    spec = {
        "name": "dashboard-check",
        "steps": [
            {"id": "first", "component": component, "input": example},
            {"id": "second", "component": component, "input": example, "depends_on": ["first"]},
        ],
    }
    defined = httpx.post(f"{mesh.gateway}/pipelines", json=spec, timeout=10)
    assert defined.status_code < 300, defined.text
    started = httpx.post(f"{mesh.gateway}/pipelines/dashboard-check/runs", json={}, timeout=10)
    assert started.status_code == 202, started.text
    return str(started.json()["id"])


def test_dashboard_shows_the_live_mesh_and_a_killed_tier(own_mesh: Mesh, tmp_path: Path) -> None:
    mesh = own_mesh
    from playwright.sync_api import sync_playwright

    names = {c["name"] for c in httpx.get(f"{mesh.gateway}/components", timeout=5).json()["components"]}
    problems: list[str] = []

    with sync_playwright() as playwright:
        # Debian's chromium: Playwright never downloads a browser here.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
            page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} from {r.url}"))
            page.goto(f"{mesh.gateway}/dashboard?refresh={REFRESH_S}")

            # Real rows: one per tier, each up, plus the gateway's own.
            for tier in TIERS:
                page.wait_for_selector(f'#services tr.service[data-tier="{tier}"][data-status="up"]', timeout=15_000)
            statuses = page.locator("#services tr.service td.status").all_inner_texts()
            assert statuses == ["up"] * (1 + len(TIERS))
            assert page.locator('#services tr.service[data-tier="gateway"]').count() == 1

            # The component list shows exactly what the registry knows, grouped by tier.
            page.wait_for_function(
                "n => document.querySelectorAll('#components li.component').length === n", arg=len(names)
            )
            shown = set(page.locator("#components li.component").evaluate_all("els => els.map(e => e.dataset.name)"))
            assert shown == names
            assert "structural_analyzer" in page.locator('#components .tier[data-tier="tier3"]').inner_text()

            # Traffic once the page has its first sample: the charts and the rate columns fill in.
            page.wait_for_function("n => document.querySelectorAll('#legend li').length === n", arg=1 + len(TIERS))
            run_id = _traffic(mesh)
            page.wait_for_function(
                """() => [...document.querySelectorAll('#services tr.service')]
                    .filter(r => ['gateway', 'tier3'].includes(r.dataset.tier))
                    .every(r => r.cells[9].textContent.endsWith('ms'))""",
                timeout=15_000,
            )
            page.wait_for_selector(f'#runs tr.run[data-run-id="{run_id}"]', timeout=15_000)
            # A second burst a few refreshes later, so the charts show lines rather than single samples.
            page.wait_for_timeout(3 * REFRESH_S * 1000)
            _traffic(mesh, pipeline=False)
            page.wait_for_timeout(3 * REFRESH_S * 1000)
            assert "dashboard-check" in page.locator(f'#runs tr.run[data-run-id="{run_id}"]').inner_text()
            assert page.locator("#mesh-status").get_attribute("data-status") == "ok"

            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
            outputs = ROOT / "outputs"
            outputs.mkdir(exist_ok=True)
            (outputs / "dashboard.png").write_bytes(screenshot.read_bytes())
            assert screenshot.stat().st_size > 10_000

            # SIGKILL tier3: its row turns red within two health intervals (plus one page refresh).
            victim = mesh.processes["tier3"].proc
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            victim.wait(timeout=10)
            budget_s = 2 * HEALTH_INTERVAL_S + REFRESH_S
            row = page.locator('#services tr.service[data-tier="tier3"]')
            page.wait_for_selector('#services tr.service.down[data-tier="tier3"]', timeout=(budget_s + 5) * 1000)
            elapsed = time.monotonic() - killed
            assert elapsed <= budget_s + 1.0, f"tier3 shown down only after {elapsed:.1f}s"
            assert row.locator("td.status").inner_text() == "down"
            red = row.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
            assert red == "rgb(253, 236, 234)", red
            # The other tiers stay up, and the alerts list names the dead one.
            for tier in ("tier1", "tier2", "tier4"):
                assert page.locator(f'#services tr.service[data-tier="{tier}"]').get_attribute("data-status") == "up"
            page.wait_for_selector('#alerts li.alert.critical[data-kind="service_down"]', timeout=5_000)
            assert "tier3" in page.locator('#alerts li.alert[data-kind="service_down"]').inner_text()
            page.screenshot(path=str(tmp_path / "dashboard-tier3-down.png"), full_page=True)
        finally:
            browser.close()

    # A fetch of a dead tier never reaches the browser: the page only talks to the gateway.
    assert problems == [], problems
