"""Pipeline orchestration overhead, measured against calling the same component directly, in one run.

    python scripts/bench_pipelines.py [--steps 100] [--concurrent-runs 200] [--json]

Starts a gateway and tier3 as real processes on free ports (state in a temporary directory), then:

* calls a trivial component (``structural_analyzer`` on a one-line prompt) ``--steps`` times in sequence,
  directly on its tier and through the gateway's ``/run`` — the baselines;
* runs a ``--steps``-step chain of the same call as a pipeline and takes the run's own duration
  (from its accepted start to its last step's end, as the gateway records it);
* starts ``--concurrent-runs`` runs of a 3-step pipeline at once and waits for all of them, counting
  failures and "database is locked" lines in the gateway's log.

Targets (issue #6): ≤ 5 ms orchestration overhead per step; a 100-step chain ≤ 0.5 s above the direct
calls; 200 concurrent runs with no "database is locked".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402

COMPONENT = "structural_analyzer"
PAYLOAD = {"prompt": "Summarise this."}


def sequential_ms(client: httpx.Client, url: str, n: int, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        response = client.post(url, json=PAYLOAD, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
    return (time.perf_counter() - start) * 1e3


def chain(name: str, steps: int) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"id": f"s{i}", "component": COMPONENT, "input": PAYLOAD, "depends_on": [f"s{i - 1}"] if i else []}
            for i in range(steps)
        ],
    }


def run_to_end(client: httpx.Client, gateway: str, name: str) -> dict[str, Any]:
    run_id = client.post(f"{gateway}/pipelines/{name}/runs").json()["id"]
    return wait_for(
        lambda: (r := client.get(f"{gateway}/runs/{run_id}").json())["status"] in ("succeeded", "failed") and r,
        timeout=300,
        interval=0.05,
        what=f"run {run_id}",
    )


async def concurrent_runs(gateway: str, name: str, n: int) -> tuple[float, dict[str, int]]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        answers = await asyncio.gather(*(client.post(f"{gateway}/pipelines/{name}/runs") for _ in range(n)))
        ids = [a.json()["id"] for a in answers if a.status_code == 202]
        if len(ids) != n:
            raise SystemExit(f"only {len(ids)} of {n} runs were accepted")
        while True:
            listing = (await client.get(f"{gateway}/runs", params={"pipeline": name, "limit": 1})).json()
            open_runs = listing["counts"]["queued"] + listing["counts"]["running"]
            if open_runs == 0:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        statuses: dict[str, int] = {}
        for run_id in ids:
            status = (await client.get(f"{gateway}/runs/{run_id}")).json()["status"]
            statuses[status] = statuses.get(status, 0) + 1
    return elapsed, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent-runs", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ports = {"gateway": free_port(), "tier3": free_port()}
        env = mesh_env(root, ports, MLMESH_GATEWAY__HEALTH_INTERVAL_S="2")
        procs = [
            MeshProcess("gateway", ["gateway"], env, supervised=False, log=root / "gateway.out"),
            MeshProcess("tier3", ["services", "tier3"], env, supervised=False, log=root / "tier.out"),
        ]
        headers = auth(env)
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        direct = f"http://127.0.0.1:{ports['tier3']}"
        try:
            wait_for(
                lambda: httpx.get(f"{gateway}/components/{COMPONENT}", timeout=2).status_code == 200,
                timeout=90,
                what="the component behind the gateway",
            )
            with httpx.Client(timeout=60) as client:
                for spec in (chain("bench-chain", args.steps), chain("bench-small", 3)):
                    created = client.post(f"{gateway}/pipelines", json=spec)
                    if created.status_code != 201:
                        raise SystemExit(f"POST /pipelines answered {created.status_code}: {created.text[:300]}")
                # Warm-up: connections, imports, caches on both paths and in the executor.
                sequential_ms(client, f"{direct}/run/{COMPONENT}", 50, headers)
                sequential_ms(client, f"{gateway}/run/{COMPONENT}", 50, headers)
                run_to_end(client, gateway, "bench-small")
                rounds = []
                for _ in range(args.rounds):  # interleaved, so that drift hits every path alike
                    d = sequential_ms(client, f"{direct}/run/{COMPONENT}", args.steps, headers)
                    g = sequential_ms(client, f"{gateway}/run/{COMPONENT}", args.steps, headers)
                    run = run_to_end(client, gateway, "bench-chain")
                    if run["status"] != "succeeded":
                        raise SystemExit(f"the chain run failed: {run['error']}")
                    rounds.append((d, g, float(run["duration_ms"])))
            elapsed, statuses = asyncio.run(concurrent_runs(gateway, "bench-small", args.concurrent_runs))
        finally:
            for proc in procs:
                proc.stop()
        log_text = "".join(p.read_text(errors="replace") for p in (root / "logs").glob("gateway*.log*"))
        locked = log_text.count("database is locked")

    direct_ms = statistics.median(r[0] for r in rounds)
    proxied_ms = statistics.median(r[1] for r in rounds)
    pipeline_ms = statistics.median(r[2] for r in rounds)
    figures = {
        "steps": args.steps,
        "direct_total_ms": direct_ms,
        "gateway_run_total_ms": proxied_ms,
        "pipeline_total_ms": pipeline_ms,
        "overhead_vs_direct_ms": pipeline_ms - direct_ms,
        "overhead_per_step_vs_direct_ms": (pipeline_ms - direct_ms) / args.steps,
        "overhead_per_step_vs_gateway_run_ms": (pipeline_ms - proxied_ms) / args.steps,
        "concurrent_runs": args.concurrent_runs,
        "concurrent_wall_s": elapsed,
        "concurrent_statuses": statuses,
        "database_locked_lines": locked,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{args.steps}-step chain of {COMPONENT}, median of {args.rounds} rounds")
    print(f"  direct calls, in sequence        {direct_ms:9.1f} ms")
    print(f"  gateway /run calls, in sequence  {proxied_ms:9.1f} ms")
    print(f"  pipeline run                     {pipeline_ms:9.1f} ms")
    print(
        f"  overhead above direct            {figures['overhead_vs_direct_ms']:9.1f} ms "
        f"({figures['overhead_per_step_vs_direct_ms']:.2f} ms/step; targets ≤ 500 ms, ≤ 5 ms/step)"
    )
    print(f"  overhead above gateway /run      {figures['overhead_per_step_vs_gateway_run_ms']:9.2f} ms/step")
    print(
        f"{args.concurrent_runs} concurrent 3-step runs: {elapsed:.2f} s, statuses {statuses}, "
        f"'database is locked' lines: {locked}"
    )


if __name__ == "__main__":
    main()
