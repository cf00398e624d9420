"""Bandit throughput through the tier service: select + update calls per second.

    python scripts/bench_bandits.py [--seconds 10] [--concurrency 16]

Starts tier2 as a real process (state in a temporary directory), creates a
Thompson-sampling experiment over five arms, and measures:

* single calls (one select or one update per HTTP request), sequential and concurrent;
* batched calls (``select`` with ``count`` and ``update`` with ``observations``), in decisions per second.

Target (issue #3): >= 5,000 select+update calls per second through the tier service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402

ARMS = ["clarity", "specificity", "examples", "role", "structure"]
TRUE_RATES = dict(zip(ARMS, [0.30, 0.35, 0.50, 0.20, 0.40], strict=True))


async def drive(
    url: str, experiment: str, headers: dict[str, str], *, seconds: float, concurrency: int, batch: int
) -> tuple[int, int]:
    """Run select+update loops for ``seconds``; return (HTTP calls, decisions)."""
    rng = np.random.default_rng(1)
    calls = decisions = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def post(body: dict[str, object]) -> dict[str, object]:
            async with session.post(url, data=json.dumps(body), headers=headers) as r:
                if r.status != 200:
                    raise SystemExit(f"{r.status}: {await r.text()}")
                return dict((await r.json())["component_result"])

        async def worker() -> None:
            nonlocal calls, decisions
            while time.perf_counter() < deadline:
                chosen = await post({"operation": "select", "experiment_id": experiment, "count": batch})
                arms = chosen["arms"]
                observations = [{"arm": a, "reward": float(rng.random() < TRUE_RATES[a])} for a in arms]
                await post({"operation": "update", "experiment_id": experiment, "observations": observations})
                calls += 2
                decisions += len(arms)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls, decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        env = mesh_env(root, {"gateway": free_port(), "tier2": port})
        proc = MeshProcess("tier2", ["services", "tier2"], env, supervised=False, log=root / "tier2.out")
        url = f"http://127.0.0.1:{port}/run/multiarmed_bandit_framework"
        headers = {"content-type": "application/json", **auth(env)}
        try:
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, timeout=90, what="tier2")
            created = httpx.post(
                url, json={"operation": "create", "arms": ARMS, "algorithm": "thompson_beta"}, headers=headers
            ).json()
            experiment = created["component_result"]["experiment_id"]
            rows = []
            for label, concurrency, batch in [
                ("single calls, sequential", 1, 1),
                (f"single calls, {args.concurrency} concurrent", args.concurrency, 1),
                (f"batches of {args.batch}, {args.concurrency} concurrent", args.concurrency, args.batch),
            ]:
                start = time.perf_counter()
                calls, decisions = asyncio.run(
                    drive(url, experiment, headers, seconds=args.seconds, concurrency=concurrency, batch=batch)
                )
                elapsed = time.perf_counter() - start
                rows.append((label, calls / elapsed, decisions / elapsed))
            summary = httpx.post(
                url, json={"operation": "summary", "experiment_id": experiment}, headers=headers
            ).json()
        finally:
            proc.stop()
    best = summary["component_result"]["summary"]["best_arm"]
    print(f"{'mode':40}{'HTTP calls/s':>14}{'decisions/s':>14}")
    for label, calls_per_s, decisions_per_s in rows:
        print(f"{label:40}{calls_per_s:>14.0f}{decisions_per_s:>14.0f}")
    print(f"best arm after the run: {best} (true best: examples)")


if __name__ == "__main__":
    main()
