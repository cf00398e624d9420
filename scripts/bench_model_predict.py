"""Model-service predict latency: through the gateway and directly on tier2, in one run.

    python scripts/bench_model_predict.py [--requests 1500] [--model-type random_forest] [--batch 1] [--json]

Starts a gateway and tier2 as real processes on free ports (state in a temporary directory), trains a model
through the gateway (``ml_model_service`` ``train``, promoted to the alias ``production``), warms both paths
up, then sends sequential ``predict`` calls by alias, interleaving the two paths in three rounds so that drift
hits both alike. Reports p50 / p99 / mean latency per path, the latency the gateway adds, and the time spent
inside the component (``local_metadata.execution_time_ms``: registry lookup, artefact read and SHA-256 check,
prediction). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402

COMPONENT = "ml_model_service"


def training_body(model_type: str, rows: int, features: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    weights = rng.normal(size=features)
    y = x @ weights + rng.normal(scale=0.5, size=rows)
    return {
        "operation": "train",
        "name": "bench",
        "model_type": model_type,
        "features": x.tolist(),
        "target": y.tolist(),
        "groups": (np.arange(rows) // 4).tolist(),  # sessions of four rows
        "params": {"n_estimators": 100},
        "cv_folds": 0,
        "promote_to": "production",
        "seed": seed,
    }


def latencies(client: httpx.Client, url: str, payload: bytes, n: int, headers: dict[str, str]) -> tuple[Any, Any]:
    """Wall-clock latency (ms) of ``n`` sequential calls, and the component's own time per call (ms)."""
    wall = np.empty(n)
    inside = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        response = client.post(url, content=payload, headers=headers)
        wall[i] = time.perf_counter() - start
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.text[:300]}")
        inside[i] = response.json()["local_metadata"]["execution_time_ms"]
    return wall * 1e3, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500, help="predict calls per path")
    parser.add_argument(
        "--model-type", default="random_forest", choices=["ridge", "random_forest", "gradient_boosting"]
    )
    parser.add_argument("--rows", type=int, default=2000, help="training rows")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="rows per predict call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.requests < 30:
        parser.error("--requests must be at least 30")

    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        root = Path(tmp)
        ports = {"gateway": free_port(), "tier2": free_port()}
        env = mesh_env(root, ports, MLMESH_GATEWAY__HEALTH_INTERVAL_S="2")
        procs = [
            MeshProcess("gateway", ["gateway"], env, supervised=False, log=root / "gateway.out"),
            MeshProcess("tier2", ["services", "tier2"], env, supervised=False, log=root / "tier2.out"),
        ]
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        direct = f"http://127.0.0.1:{ports['tier2']}"
        headers = {"content-type": "application/json"}
        try:
            wait_for(
                lambda: httpx.get(f"{gateway}/components/{COMPONENT}", timeout=2).status_code == 200,
                timeout=120,
                what="ml_model_service behind the gateway",
            )
            with httpx.Client(timeout=600) as client:
                start = time.perf_counter()
                body = training_body(args.model_type, args.rows, args.features, args.seed)
                trained = client.post(f"{gateway}/run/{COMPONENT}", json=body)
                if trained.status_code != 200:
                    raise SystemExit(f"training answered {trained.status_code}: {trained.text[:500]}")
                model = trained.json()["component_result"]["model"]
                train_s = time.perf_counter() - start

                rows = np.random.default_rng(args.seed + 1).normal(size=(args.batch, args.features))
                payload = json.dumps(
                    {"operation": "predict", "name": "bench", "alias": "production", "features": rows.tolist()}
                ).encode()
                paths = {
                    "direct": (f"{direct}/run/{COMPONENT}", headers | auth(env)),
                    "gateway": (f"{gateway}/run/{COMPONENT}", headers),
                }
                for url, hdrs in paths.values():  # warm-up: connections, model cache, imports
                    latencies(client, url, payload, 50, hdrs)
                walls: dict[str, list[np.ndarray]] = {name: [] for name in paths}
                insides: dict[str, list[np.ndarray]] = {name: [] for name in paths}
                per_round = args.requests // 3
                for _ in range(3):
                    for name, (url, hdrs) in paths.items():
                        wall, inside = latencies(client, url, payload, per_round, hdrs)
                        walls[name].append(wall)
                        insides[name].append(inside)
        finally:
            for proc in procs:
                proc.stop()

    figures: dict[str, Any] = {
        "model_type": args.model_type,
        "model_version": model["version"],
        "artefact_bytes": model["size_bytes"],
        "train_through_gateway_s": round(train_s, 3),
        "rows_per_call": args.batch,
        "calls_per_path": per_round * 3,
    }
    for name in paths:
        wall = np.concatenate(walls[name])
        inside = np.concatenate(insides[name])
        figures[f"{name}_p50_ms"] = float(np.percentile(wall, 50))
        figures[f"{name}_p99_ms"] = float(np.percentile(wall, 99))
        figures[f"{name}_mean_ms"] = float(wall.mean())
        figures[f"{name}_component_p50_ms"] = float(np.percentile(inside, 50))
    figures["added_p50_ms"] = figures["gateway_p50_ms"] - figures["direct_p50_ms"]
    figures["added_p99_ms"] = figures["gateway_p99_ms"] - figures["direct_p99_ms"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"{args.model_type} v{model['version']} ({model['size_bytes']:,} bytes), trained through the gateway in "
        f"{train_s:.2f} s; {figures['calls_per_path']} sequential predict calls per path, {args.batch} row(s) each"
    )
    print(f"{'path':<10}{'p50 (ms)':>10}{'p99 (ms)':>10}{'mean (ms)':>11}{'in component p50':>18}")
    for name in paths:
        print(
            f"{name:<10}{figures[f'{name}_p50_ms']:>10.2f}{figures[f'{name}_p99_ms']:>10.2f}"
            f"{figures[f'{name}_mean_ms']:>11.2f}{figures[f'{name}_component_p50_ms']:>18.2f}"
        )
    print(f"{'added':<10}{figures['added_p50_ms']:>10.2f}{figures['added_p99_ms']:>10.2f}")


if __name__ == "__main__":
    main()
