"""Gateway overhead: the same component called directly on its tier and through the gateway, in one run.

    python scripts/bench_gateway.py [--component NAME] [--requests 2000] [--concurrency 32]

Starts a gateway and the component's tier as real processes on free ports (state
in a temporary directory), warms both paths up, then measures:

* latency at concurrency 1 (p50, p99) direct vs proxied, and the added latency;
* throughput at concurrency N direct vs proxied, and the proxied share.

Targets (issue #2): added p50 <= 1 ms, added p99 <= 3 ms, proxied throughput >= 60 % of direct.
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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402


def latencies(url: str, payload: bytes, n: int, headers: dict[str, str]) -> np.ndarray:
    out = np.empty(n)
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            start = time.perf_counter()
            response = client.post(url, content=payload, headers=headers)
            out[i] = time.perf_counter() - start
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
    return out * 1e3


async def throughput(url: str, payload: bytes, concurrency: int, total: int, headers: dict[str, str]) -> float:
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post(url, content=payload, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--component", default="structural_analyzer")
    parser.add_argument("--payload", default='{"prompt": "Summarise this."}', help="JSON body ('' = the example)")
    parser.add_argument("--tier", default="tier3")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ports = {"gateway": free_port(), args.tier: free_port()}
        env = mesh_env(root, ports, MLMESH_GATEWAY__HEALTH_INTERVAL_S="2")
        procs = [
            MeshProcess("gateway", ["gateway"], env, supervised=False, log=root / "gateway.out"),
            MeshProcess(args.tier, ["services", args.tier], env, supervised=False, log=root / "tier.out"),
        ]
        # Both paths send the mesh token, so that they carry the same headers.
        headers = {"content-type": "application/json", **auth(env)}
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        direct = f"http://127.0.0.1:{ports[args.tier]}"
        try:
            wait_for(
                lambda: httpx.get(f"{gateway}/components/{args.component}", timeout=2).status_code == 200,
                timeout=90,
                what="the component behind the gateway",
            )
            example = httpx.get(f"{gateway}/components/{args.component}").json()["example"]
            payload = (args.payload or json.dumps(example)).encode()
            for url in (direct, gateway):  # warm-up: connections, imports, caches
                latencies(f"{url}/run/{args.component}", payload, 200, headers)

            rounds = []
            for _ in range(3):  # interleave so that drift hits both paths alike
                d = latencies(f"{direct}/run/{args.component}", payload, args.requests // 3, headers)
                g = latencies(f"{gateway}/run/{args.component}", payload, args.requests // 3, headers)
                rounds.append((d, g))
            d_all = np.concatenate([r[0] for r in rounds])
            g_all = np.concatenate([r[1] for r in rounds])
            n_tp = max(args.requests, args.concurrency * 20)
            tp_direct = statistics.median(
                asyncio.run(throughput(f"{direct}/run/{args.component}", payload, args.concurrency, n_tp, headers))
                for _ in range(3)
            )
            tp_gateway = statistics.median(
                asyncio.run(throughput(f"{gateway}/run/{args.component}", payload, args.concurrency, n_tp, headers))
                for _ in range(3)
            )
        finally:
            for proc in procs:
                proc.stop()

    figures = {
        "component": args.component,
        "requests_per_path": int(d_all.size),
        "direct_p50_ms": float(np.percentile(d_all, 50)),
        "gateway_p50_ms": float(np.percentile(g_all, 50)),
        "direct_p99_ms": float(np.percentile(d_all, 99)),
        "gateway_p99_ms": float(np.percentile(g_all, 99)),
        "direct_rps": tp_direct,
        "gateway_rps": tp_gateway,
        "concurrency": args.concurrency,
    }
    figures["added_p50_ms"] = figures["gateway_p50_ms"] - figures["direct_p50_ms"]
    figures["added_p99_ms"] = figures["gateway_p99_ms"] - figures["direct_p99_ms"]
    figures["throughput_share"] = tp_gateway / tp_direct
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"component {args.component}, {figures['requests_per_path']} sequential calls per path")
    print(f"{'':24}{'direct':>10}{'gateway':>10}{'added':>10}{'target':>12}")
    print(
        f"{'latency p50 (ms)':24}{figures['direct_p50_ms']:>10.3f}{figures['gateway_p50_ms']:>10.3f}"
        f"{figures['added_p50_ms']:>10.3f}{'<= 1.000':>12}"
    )
    print(
        f"{'latency p99 (ms)':24}{figures['direct_p99_ms']:>10.3f}{figures['gateway_p99_ms']:>10.3f}"
        f"{figures['added_p99_ms']:>10.3f}{'<= 3.000':>12}"
    )
    print(
        f"{f'throughput c={args.concurrency} (rps)':24}{tp_direct:>10.0f}{tp_gateway:>10.0f}"
        f"{figures['throughput_share']:>9.0%} {'>= 60%':>12}"
    )


if __name__ == "__main__":
    main()
