"""Clustering and dimensionality reduction through the tier-2 service, against scikit-learn called directly.

    python scripts/bench_models.py [--rows 5000] [--features 10] [--repeat 1] [--seed 0] [--json]

What it does:

1. Generates ``--rows`` × ``--features`` points in five Gaussian blobs (``make_blobs``) and writes them as
   ``features.npy`` to a temporary data directory.
2. Starts tier2 as a real process (``python -m services tier2 --port P`` with ``MLMESH_DATA_DIR`` pointing at the
   temporary directory) and times three HTTP calls end to end, the matrix passed by file reference:

   * ``clustering_optimizer``: k-means and Gaussian mixture for k = 2…6, agglomerative (ward, k = 2…6, only up to
     5,000 rows), HDBSCAN (min_cluster_size 25), each scored by silhouette, Calinski–Harabasz, Davies–Bouldin
     and 5 stability subsamples;
   * ``advanced_dimensionality_reducer`` by explained variance (PCA, smallest k reaching 90 %);
   * ``advanced_dimensionality_reducer`` by trustworthiness (PCA and FastICA, 2 components).

3. Does the same work in this process by calling scikit-learn directly with the same settings: ``np.load``, the
   same candidates with the same random states and subsamples (drawn as the component documents), the same
   ``sklearn.metrics`` indices and the same rank aggregation; ``PCA``, ``FastICA``, ``trustworthiness`` on the same
   rows. Both sides run single-threaded up to 5,000 rows, as the component does (threadpoolctl).
4. Also times the components' plain functions in this process (no HTTP, no envelope, no per-run memory tracing),
   to separate the service's overhead from the component's own.
5. Checks that both sides agree (chosen clustering, indices, chosen dimension and trustworthiness), then prints
   seconds per step and the component overhead ratio (ours end to end / reference).

Model-service predict latency (also asked for by issue #5) is measured by its own script, not here. Not part of
the test suite; ``--rows 500`` makes a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy import stats
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA, FastICA
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlmesh.settings import Settings  # noqa: E402
from services.framework import RunContext  # noqa: E402
from services.tier2.advanced_dimensionality_reducer import (  # noqa: E402
    AdvancedDimensionalityReducerInput,
    advanced_dimensionality_reducer,
)
from services.tier2.clustering_optimizer import ClusteringOptimizerInput, clustering_optimizer  # noqa: E402
from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402

K_RANGE = range(2, 7)
MIN_CLUSTER_SIZE = 25
N_BOOTSTRAP = 5
SUBSAMPLE = 0.8
N_INIT = 4
TARGET_VARIANCE = 0.9
N_NEIGHBORS = 5
# The component's documented limits (services/tier2/clustering_optimizer.py, advanced_dimensionality_reducer.py).
AGGLOMERATIVE_MAX_ROWS = 5_000
SILHOUETTE_MAX_ROWS = 5_000
TRUSTWORTHINESS_MAX_ROWS = 3_000
SINGLE_THREAD_MAX_ROWS = 5_000


def generate(data: Path, rows: int, features: int, seed: int) -> None:
    x, _ = make_blobs(n_samples=rows, n_features=features, centers=5, cluster_std=2.0, random_state=seed)
    np.save(data / "features.npy", x)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best of ``repeat`` wall-clock times, and the result of that run."""
    best, best_result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, best_result = elapsed, result
    return best, best_result


def threads(n: int) -> Any:
    return threadpool_limits(limits=1) if n <= SINGLE_THREAD_MAX_ROWS else nullcontext()


# --- ours: through the tier service ----------------------------------------------------------------------------------


def requests(rows: int, seed: int) -> dict[str, tuple[str, dict[str, Any]]]:
    algorithms = ["kmeans", "gaussian_mixture", "hdbscan"]
    if rows <= AGGLOMERATIVE_MAX_ROWS:
        algorithms.append("agglomerative")
    features = {"path": "features.npy"}
    return {
        "clustering": (
            "clustering_optimizer",
            {
                "features": features,
                "algorithms": algorithms,
                "k_min": K_RANGE.start,
                "k_max": K_RANGE.stop - 1,
                "linkages": ["ward"],
                "min_cluster_sizes": [MIN_CLUSTER_SIZE],
                "n_init": N_INIT,
                "n_bootstrap": N_BOOTSTRAP,
                "subsample_fraction": SUBSAMPLE,
                "seed": seed,
            },
        ),
        "PCA by variance": (
            "advanced_dimensionality_reducer",
            {"features": features, "methods": ["pca"], "target_variance": TARGET_VARIANCE, "seed": seed},
        ),
        "PCA/ICA by trust": (
            "advanced_dimensionality_reducer",
            {
                "features": features,
                "selection": "trustworthiness",
                "methods": ["pca", "ica"],
                "n_components": 2,
                "seed": seed,
            },
        ),
    }


def in_process(root: Path, component: str, body: dict[str, Any]) -> dict[str, Any]:
    """The component's plain function in this process: no HTTP, no envelope, no per-run memory tracing."""
    settings = Settings(data_dir=root / "data", outputs_dir=root / "outputs", logs_dir=root / "logs")
    ctx = RunContext(component=component, settings=settings, request_id=None)
    if component == "clustering_optimizer":
        return clustering_optimizer(ClusteringOptimizerInput.model_validate(body), ctx).model_dump()
    return advanced_dimensionality_reducer(AdvancedDimensionalityReducerInput.model_validate(body), ctx).model_dump()


def post(client: httpx.Client, component: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/run/{component}", json=body)
    if response.status_code != 200:
        raise SystemExit(f"tier2 answered {response.status_code}: {response.text[:500]}")
    return dict(response.json())


# --- reference: scikit-learn directly, same settings ------------------------------------------------------------------


def _candidates(n: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("kmeans", {"k": k}) for k in K_RANGE]
    out += [("gaussian_mixture", {"k": k, "covariance_type": "full"}) for k in K_RANGE]
    out += [("hdbscan", {"min_cluster_size": MIN_CLUSTER_SIZE, "min_samples": None})]
    if n <= AGGLOMERATIVE_MAX_ROWS:
        out += [("agglomerative", {"k": k, "linkage": "ward"}) for k in K_RANGE]
    return out


def _fit(algorithm: str, params: dict[str, Any], x: np.ndarray, state: int) -> np.ndarray:
    if algorithm == "kmeans":
        return np.asarray(KMeans(n_clusters=params["k"], n_init=N_INIT, random_state=state).fit(x).labels_)
    if algorithm == "gaussian_mixture":
        gm = GaussianMixture(n_components=params["k"], n_init=N_INIT, random_state=state).fit(x)
        return np.asarray(gm.predict(x))
    if algorithm == "hdbscan":
        return np.asarray(HDBSCAN(min_cluster_size=params["min_cluster_size"], copy=True).fit(x).labels_)
    return np.asarray(AgglomerativeClustering(n_clusters=params["k"], linkage="ward").fit(x).labels_)


def ref_clustering(data: Path, seed: int) -> dict[str, Any]:
    x = StandardScaler().fit_transform(np.load(data / "features.npy", allow_pickle=False))
    n = x.shape[0]
    # The component's documented draws: subsamples and their random states first, then the full-fit state.
    rng = np.random.default_rng(seed)
    size = max(3, round(SUBSAMPLE * n))
    subsamples = []
    for _ in range(N_BOOTSTRAP):
        rows = np.sort(rng.choice(n, size=size, replace=False))
        subsamples.append((rows, int(rng.integers(2**31 - 1))))
    state = int(rng.integers(2**31 - 1))
    table = []
    with threads(n):
        for algorithm, params in _candidates(n):
            labels = _fit(algorithm, params, x, state)
            keep = labels >= 0
            xs, ls = x[keep], labels[keep]
            k = np.unique(ls).size
            noise = 1 - keep.mean()
            if not 2 <= k <= ls.size - 1 or noise > 0.5:
                continue
            if xs.shape[0] > SILHOUETTE_MAX_ROWS:
                pick = np.sort(np.random.default_rng(state).choice(xs.shape[0], SILHOUETTE_MAX_ROWS, replace=False))
                sil = silhouette_score(xs[pick], ls[pick])
            else:
                sil = silhouette_score(xs, ls)
            aris = [adjusted_rand_score(labels[rows], _fit(algorithm, params, x[rows], s)) for rows, s in subsamples]
            table.append(
                {
                    "algorithm": algorithm,
                    "params": params,
                    "silhouette": float(sil),
                    "silhouette_adjusted": float(sil * (1 - noise)),
                    "calinski_harabasz": float(calinski_harabasz_score(xs, ls)),
                    "davies_bouldin": float(davies_bouldin_score(xs, ls)),
                    "stability": float(np.mean(aris)),
                }
            )
    # Values equal to 10 significant digits tie, as the component documents.
    columns = np.array(
        [
            [float(f"{v:.10g}") for v in (r["silhouette_adjusted"], r["calinski_harabasz"], -r["davies_bouldin"])]
            + [float(f"{r['stability']:.10g}")]
            for r in table
        ]
    )
    mean_rank = np.mean([stats.rankdata(-columns[:, j]) for j in range(4)], axis=0)
    best = min(
        range(len(table)),
        key=lambda i: (round(mean_rank[i], 12), -columns[i, 3], -columns[i, 0], i),
    )
    return {"table": table, "chosen": table[best]}


def _trust_rows(n: int, seed: int) -> np.ndarray:
    if n <= TRUSTWORTHINESS_MAX_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, TRUSTWORTHINESS_MAX_ROWS, replace=False))


def ref_pca_variance(data: Path, seed: int) -> dict[str, Any]:
    x = np.load(data / "features.npy", allow_pickle=False)
    with threads(x.shape[0]):
        pca = PCA(n_components=None, random_state=seed).fit(x)
        k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), TARGET_VARIANCE - 1e-9) + 1)
        z = pca.transform(x)[:, :k]
        approx = z @ pca.components_[:k] + pca.mean_
        rows = _trust_rows(x.shape[0], seed)
        trust = trustworthiness(x[rows], z[rows], n_neighbors=N_NEIGHBORS)
    return {
        "n_components": k,
        "trustworthiness": float(trust),
        "reconstruction_error": float(np.mean((x - approx) ** 2)),
    }


def ref_trust(data: Path, seed: int) -> dict[str, Any]:
    x = np.load(data / "features.npy", allow_pickle=False)
    rows = _trust_rows(x.shape[0], seed)
    out = {}
    with threads(x.shape[0]):
        z_pca = PCA(n_components=None, random_state=seed).fit(x).transform(x)[:, :2]
        out["pca"] = float(trustworthiness(x[rows], z_pca[rows], n_neighbors=N_NEIGHBORS))
        ica = FastICA(n_components=2, max_iter=500, random_state=seed)
        z_ica = ica.fit_transform(x)
        np.mean((x - ica.inverse_transform(z_ica)) ** 2)
        out["ica"] = float(trustworthiness(x[rows], z_ica[rows], n_neighbors=N_NEIGHBORS))
    return {"trustworthiness": out, "chosen": max(out, key=lambda m: out[m])}


# --- main -------------------------------------------------------------------------------------------------------------


def agree(ours: dict[str, Any], refs: dict[str, Any]) -> list[str]:
    """Differences beyond tolerance between our results and the reference's (empty when they agree)."""
    problems = []
    c, rc = ours["clustering"], refs["clustering"]
    if (c["chosen"]["algorithm"], c["chosen"]["params"]) != (rc["chosen"]["algorithm"], rc["chosen"]["params"]):
        problems.append(
            f"clustering chose {c['chosen']['algorithm']} {c['chosen']['params']}, reference {rc['chosen']}"
        )
    by_key = {(r["algorithm"], json.dumps(r["params"], sort_keys=True)): r for r in rc["table"]}
    for cand in c["candidates"]:
        ref = by_key.get((cand["algorithm"], json.dumps(cand["params"], sort_keys=True)))
        if not cand["eligible"] or ref is None:
            if cand["eligible"] != (ref is not None):
                problems.append(f"{cand['algorithm']} {cand['params']}: eligibility differs")
            continue
        for key in ("silhouette", "calinski_harabasz", "davies_bouldin", "stability"):
            if not np.isclose(cand[key], ref[key], rtol=1e-9, atol=1e-12):
                problems.append(f"{cand['algorithm']} {cand['params']} {key}: ours {cand[key]!r} vs {ref[key]!r}")
    v, rv = ours["PCA by variance"], refs["PCA by variance"]
    if v["n_components"] != rv["n_components"]:
        problems.append(f"PCA chose {v['n_components']} components, reference {rv['n_components']}")
    for key in ("trustworthiness", "reconstruction_error"):
        if not np.isclose(v[key], rv[key], rtol=1e-9):
            problems.append(f"PCA {key}: ours {v[key]!r} vs reference {rv[key]!r}")
    t, rt = ours["PCA/ICA by trust"], refs["PCA/ICA by trust"]
    if t["chosen_method"] != rt["chosen"]:
        problems.append(f"trustworthiness chose {t['chosen_method']}, reference {rt['chosen']}")
    for cand in t["candidates"]:
        if not np.isclose(cand["trustworthiness"], rt["trustworthiness"][cand["method"]], rtol=1e-9):
            problems.append(f"{cand['method']} trustworthiness: ours {cand['trustworthiness']!r} vs reference")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000, help="rows of the feature matrix (at most 20,000)")
    parser.add_argument("--features", type=int, default=10, help="columns of the feature matrix")
    parser.add_argument("--repeat", type=int, default=1, help="time each step this many times and keep the best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if not 100 <= args.rows <= 20_000:
        parser.error("--rows must be between 100 and 20,000")
    if not 2 <= args.features <= 1000:
        parser.error("--features must be between 2 and 1000")

    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        generate(data, args.rows, args.features, args.seed)
        print(f"generated {args.rows:,} × {args.features} blobs")

        port = free_port()
        env = mesh_env(root, {"gateway": free_port(), "tier2": port})
        tier = MeshProcess(
            "tier2", ["services", "tier2", "--port", str(port)], env, supervised=False, log=root / "tier2.out"
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{base}/ready", timeout=1).status_code == 200, timeout=60, what="tier2")
            bodies = requests(args.rows, args.seed)
            reference = {
                "clustering": lambda: ref_clustering(data, args.seed),
                "PCA by variance": lambda: ref_pca_variance(data, args.seed),
                "PCA/ICA by trust": lambda: ref_trust(data, args.seed),
            }
            with httpx.Client(base_url=base, timeout=3600, headers=auth(env)) as client:
                # Warm both sides up on a tiny problem (imports and first-call costs are not what we measure).
                tiny = make_blobs(n_samples=40, centers=2, random_state=0)[0].tolist()
                post(client, "clustering_optimizer", {"features": tiny, "k_max": 3, "n_bootstrap": 1})
                post(client, "advanced_dimensionality_reducer", {"features": tiny})
                with threadpool_limits(limits=1):
                    KMeans(2, n_init=1, random_state=0).fit(np.asarray(tiny))
                    GaussianMixture(2, random_state=0).fit(np.asarray(tiny))
                ours, ours_t, server_t, refs, ref_t, local_t = {}, {}, {}, {}, {}, {}
                for step, (component, body) in bodies.items():
                    ref_t[step], refs[step] = timed(reference[step], args.repeat)
                    local_t[step], _ = timed(lambda c=component, b=body: in_process(root, c, b), args.repeat)
                    ours_t[step], envelope = timed(lambda c=component, b=body: post(client, c, b), args.repeat)
                    ours[step] = envelope["component_result"]
                    server_t[step] = envelope["local_metadata"]["execution_time_ms"] / 1e3
        finally:
            tier.stop()

    problems = agree(ours, refs)
    header = (
        f"{'step':<18} {'ours (s)':>10} {'in tier (s)':>12} {'in process (s)':>15} {'reference (s)':>14} {'ratio':>7}"
    )
    print()
    print(f"{args.rows:,} rows × {args.features} features, best of {args.repeat}")
    print(header)
    print("-" * len(header))
    for step in bodies:
        ratio = ours_t[step] / ref_t[step]
        print(
            f"{step:<18} {ours_t[step]:>10.3f} {server_t[step]:>12.3f} {local_t[step]:>15.3f} {ref_t[step]:>14.3f} "
            f"{ratio:>7.2f}"
        )
    print("-" * len(header))
    total_ours, total_ref = sum(ours_t.values()), sum(ref_t.values())
    ratio = total_ours / total_ref
    print(
        f"{'total':<18} {total_ours:>10.3f} {sum(server_t.values()):>12.3f} {sum(local_t.values()):>15.3f} "
        f"{total_ref:>14.3f} {ratio:>7.2f}"
    )
    chosen = ours["clustering"]["chosen"]
    print(f"\nchosen clustering: {chosen['algorithm']} {chosen['params']} ({chosen['n_clusters']} clusters)")
    print(f"component overhead ratio (end to end through tier2 / scikit-learn directly): {ratio:.2f}x")
    print("results agree with the reference" if not problems else "RESULTS DIFFER:\n  " + "\n  ".join(problems))
    if args.json:
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "features": args.features,
                    "ours_s": ours_t,
                    "in_tier_s": server_t,
                    "in_process_s": local_t,
                    "reference_s": ref_t,
                    "ratio": ratio,
                    "agree": not problems,
                    "problems": problems,
                },
                indent=2,
            )
        )
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
