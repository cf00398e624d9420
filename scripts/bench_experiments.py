"""Experiment statistics at scale: our A/B analysis, Welch test and bootstrap through the tier service, against
statsmodels/scipy on the same files in the same run.

    python scripts/bench_experiments.py [--rows 10000000] [--resamples 100] [--repeat 1] [--seed 0] [--json]

What it does:

1. Generates ``--rows`` rows (half control, half treatment) as .npy files in a temporary data directory: a 0/1
   conversion column (rates 10 % / 10.2 %) and a continuous log-normal "revenue" column (+1 % in treatment).
2. Starts tier4 as a real process (``python -m services tier4 --port P`` with ``MLMESH_DATA_DIR`` pointing at
   the temporary directory) and times three HTTP calls end to end, arrays passed by file reference:
   binary A/B analysis (z-test, Wilson, Newcombe, Beta posteriors, mSPRT, SRM), Welch on the continuous column,
   and the same continuous analysis with a bootstrap of the mean difference.
3. Times the reference on the same files in this process: ``np.load`` plus statsmodels ``proportions_ztest``,
   ``proportion_confint(method="wilson")`` per arm and ``confint_proportions_2indep(method="newcomb")``; scipy
   ``ttest_ind(equal_var=False)``; scipy ``bootstrap(..., method="percentile", vectorized=True)`` of the
   difference of means with the same number of resamples.
4. Checks that both sides agree, then prints a table of seconds and ratios (ours / reference).

Bootstrap method (ours): a resample's mean needs only the sum of n values drawn with replacement. Its n uniform
indices are drawn as Multinomial counts per contiguous block of 16,384 values (128 KiB, cache-resident) plus
uniform offsets within each block, laid out block by block, so the gather ``x[idx].sum()`` walks memory in
order instead of at random; the distribution is exactly the ordinary bootstrap's. Resamples are computed in
groups of eight with one child random stream per group (results depend only on the seed) on up to four
threads, since numpy releases the GIL for the draws and the gather. scipy draws ``integers(0, n, (batch, n))``
and gathers at random.

Target (issue #3): our end-to-end time ≤ 1.5× the reference's. Not part of the test suite; ``--rows 20000`` makes
a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import MeshProcess, auth, free_port, mesh_env, wait_for  # noqa: E402

TARGET = 1.5


def generate(data: Path, rows: int, seed: int) -> dict[str, int]:
    """Write the columns as .npy files; returns the arm sizes."""
    rng = np.random.default_rng(seed)
    n_c = rows // 2
    n_t = rows - n_c
    for arm, n, rate, scale in (("control", n_c, 0.100, 1.00), ("treatment", n_t, 0.102, 1.01)):
        np.save(data / f"{arm}_converted.npy", (rng.random(n) < rate).astype(np.uint8))
        np.save(data / f"{arm}_revenue.npy", scale * rng.lognormal(3.0, 0.8, n))
    return {"control": n_c, "treatment": n_t}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best of ``repeat`` wall-clock times, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# --- ours: through the tier service ----------------------------------------------------------------------------------


def requests(resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    def arm(column: str, name: str) -> dict[str, Any]:
        return {"values": {"path": f"{name}_{column}.npy"}}

    binary = {"metric": "binary", "control": arm("converted", "control"), "treatment": arm("converted", "treatment")}
    welch = {"metric": "continuous", "control": arm("revenue", "control"), "treatment": arm("revenue", "treatment")}
    return {
        "binary A/B": binary,
        "Welch": welch,
        "bootstrap": welch | {"bootstrap_resamples": resamples, "seed": seed},
    }


def post(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/run/modern_ab_testing_service", json=body)
    if response.status_code != 200:
        raise SystemExit(f"tier4 answered {response.status_code}: {response.text[:500]}")
    return dict(response.json())


# --- reference: scipy / statsmodels on the same files ----------------------------------------------------------------


def ref_binary(data: Path) -> dict[str, float]:
    c = np.load(data / "control_converted.npy")
    t = np.load(data / "treatment_converted.npy")
    kc, kt, nc, nt = int(c.sum()), int(t.sum()), c.size, t.size
    z, p = proportions_ztest([kt, kc], [nt, nc])
    proportion_confint(kc, nc, method="wilson")
    proportion_confint(kt, nt, method="wilson")
    lo, hi = confint_proportions_2indep(kt, nt, kc, nc, method="newcomb", compare="diff")
    return {"z": float(z), "p": float(p), "ci_low": float(lo), "ci_high": float(hi)}


def ref_welch(data: Path) -> dict[str, float]:
    c = np.load(data / "control_revenue.npy")
    t = np.load(data / "treatment_revenue.npy")
    res = stats.ttest_ind(t, c, equal_var=False)
    ci = res.confidence_interval(0.95)
    return {"t": float(res.statistic), "p": float(res.pvalue), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def ref_bootstrap(data: Path, resamples: int, seed: int) -> dict[str, float]:
    c = np.load(data / "control_revenue.npy")
    t = np.load(data / "treatment_revenue.npy")
    stats.ttest_ind(t, c, equal_var=False)  # the same work as our call, which reports Welch too

    def diff(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.asarray(np.mean(a, axis=axis) - np.mean(b, axis=axis))

    batch = max(1, int(3e8 // (8 * max(c.size, t.size))))  # ~300 MB of indices per sample and batch
    res = stats.bootstrap(
        (t, c),
        diff,
        n_resamples=resamples,
        batch=batch,
        vectorized=True,
        paired=False,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return {"ci_low": float(ci.low), "ci_high": float(ci.high), "se": float(res.standard_error)}


# --- main ------------------------------------------------------------------------------------------------------------


def agree(ours: dict[str, Any], refs: dict[str, dict[str, float]]) -> list[str]:
    """Differences beyond tolerance between our results and the reference's (empty when they agree)."""
    problems = []
    b = ours["binary A/B"]["fixed_horizon"]
    for key, value in (("z", b["statistic"]), ("p", b["p_value"]), ("ci_low", b["ci_low"]), ("ci_high", b["ci_high"])):
        if not np.isclose(value, refs["binary A/B"][key], rtol=1e-7, atol=1e-12):
            problems.append(f"binary {key}: ours {value!r} vs reference {refs['binary A/B'][key]!r}")
    w = ours["Welch"]["fixed_horizon"]
    for key, value in (("t", w["statistic"]), ("p", w["p_value"]), ("ci_low", w["ci_low"]), ("ci_high", w["ci_high"])):
        if not np.isclose(value, refs["Welch"][key], rtol=1e-6, atol=1e-12):
            problems.append(f"Welch {key}: ours {value!r} vs reference {refs['Welch'][key]!r}")
    boot, ref = ours["bootstrap"]["bootstrap"], refs["bootstrap"]
    # Different random draws: the two percentile intervals agree to Monte Carlo error, a fraction of the SE.
    for key in ("ci_low", "ci_high"):
        if abs(boot[key] - ref[key]) > 0.5 * ref["se"]:
            problems.append(f"bootstrap {key}: ours {boot[key]!r} vs reference {ref[key]!r} (se {ref['se']:.3g})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in all, split evenly between the arms")
    parser.add_argument("--resamples", type=int, default=100, help="bootstrap resamples on both sides")
    parser.add_argument("--repeat", type=int, default=1, help="time each step this many times and keep the best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.rows < 20:
        parser.error("--rows must be at least 20")

    with tempfile.TemporaryDirectory(prefix="bench-experiments-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        start = time.perf_counter()
        sizes = generate(data, args.rows, args.seed)
        print(
            f"generated {args.rows:,} rows ({sizes['control']:,} control, {sizes['treatment']:,} treatment) "
            f"in {time.perf_counter() - start:.1f} s"
        )

        port = free_port()
        env = mesh_env(root, {"gateway": free_port(), "tier4": port})
        tier = MeshProcess(
            "tier4", ["services", "tier4", "--port", str(port)], env, supervised=False, log=root / "tier4.out"
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{base}/ready", timeout=1).status_code == 200, timeout=60, what="tier4")
            bodies = requests(args.resamples, args.seed)
            with httpx.Client(base_url=base, timeout=3600, headers=auth(env)) as client:
                # Warm both sides up on a tiny problem (first-call costs are not what we measure).
                post(
                    client,
                    {
                        "metric": "continuous",
                        "control": {"values": [1.0, 2.0, 3.0]},
                        "treatment": {"values": [2.0, 3.0, 5.0]},
                        "bootstrap_resamples": 10,
                    },
                )
                stats.bootstrap(
                    ([1.0, 2.0, 3.0], [2.0, 3.0, 5.0]),
                    lambda a, b, axis: np.mean(a, axis) - np.mean(b, axis),
                    n_resamples=10,
                    method="percentile",
                    rng=np.random.default_rng(0),
                )
                ours, ours_t, server_t = {}, {}, {}
                refs, ref_t = {}, {}
                reference = {
                    "binary A/B": lambda: ref_binary(data),
                    "Welch": lambda: ref_welch(data),
                    "bootstrap": lambda: ref_bootstrap(data, args.resamples, args.seed),
                }
                for step, body in bodies.items():
                    ref_t[step], refs[step] = timed(reference[step], args.repeat)
                    ours_t[step], envelope = timed(lambda body=body: post(client, body), args.repeat)
                    ours[step] = envelope["component_result"]
                    server_t[step] = envelope["local_metadata"]["execution_time_ms"] / 1e3
        finally:
            tier.stop()

    problems = agree(ours, refs)
    total_ours, total_ref = sum(ours_t.values()), sum(ref_t.values())
    header = f"{'step':<12} {'ours (s)':>10} {'in tier (s)':>12} {'reference (s)':>14} {'ratio':>7}"
    print()
    print(f"{args.rows:,} rows, {args.resamples} bootstrap resamples, best of {args.repeat}")
    print(header)
    print("-" * len(header))
    for step in bodies:
        ratio = ours_t[step] / ref_t[step]
        print(f"{step:<12} {ours_t[step]:>10.3f} {server_t[step]:>12.3f} {ref_t[step]:>14.3f} {ratio:>7.2f}")
    print("-" * len(header))
    ratio = total_ours / total_ref
    print(f"{'total':<12} {total_ours:>10.3f} {sum(server_t.values()):>12.3f} {total_ref:>14.3f} {ratio:>7.2f}")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"\nend to end through the tier service: {ratio:.2f}x the reference ({verdict} the {TARGET}x target)")
    print("results agree with the reference" if not problems else "RESULTS DIFFER:\n  " + "\n  ".join(problems))
    if args.json:
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "resamples": args.resamples,
                    "ours_s": ours_t,
                    "in_tier_s": server_t,
                    "reference_s": ref_t,
                    "ratio": ratio,
                    "target": TARGET,
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
