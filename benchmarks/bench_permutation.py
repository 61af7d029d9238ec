"""Per-window cost of the permutation test (stores too small for pseudo-window calibration).

Run: python benchmarks/bench_permutation.py [--trials 500] [--threads 1]

For each case (window records n, comparison records m, dimension d, which terms), one quiet
window (drawn like the ID records) and one shifted window (every kind shifted) are tested side
by side with the same PermutationTest on whole windows (no window-fraction cap): wall time,
splits run per term, and the ratio shifted / quiet (a quiet term stops after EXCEEDANCES
splits reach its value; a term near or past significance runs them all).
Synthetic unit rows with a shared low-rank structure; not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np

from monitor.compute import apply_compute_settings
from monitor.config import ComputeSettings
from monitor.detection.permutation import PermutationTest
from monitor.detection.window_stats import IDArrays, WindowStatistics

CASES = [  # (n, m, d, every term: images and references too)
    (109, 109, 384, False),
    (200, 1000, 384, False),
    (500, 1000, 384, True),
    (200, 500, 768, True),
]


def rows(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    basis = np.random.default_rng(d).standard_normal((8, d))
    x = rng.standard_normal((n, 8)) @ basis + 0.7 * rng.standard_normal((n, d))
    x[:, :4] += shift * np.sqrt(d) / 4
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def window(rng: np.random.Generator, n: int, d: int, every: bool, shift: float) -> Any:
    kinds = ("prompt", "image", "response", "reference") if every else ("prompt", "response")
    data = {k: rows(rng, n, d, shift) if k in kinds else None for k in ("prompt", "image")}
    data.update({k: rows(rng, n, d, shift) if k in kinds else None for k in kinds[-2:]})
    present = {k: np.full(n, data.get(k) is not None) for k in ("prompt", "image", "response")}
    present["reference"] = np.full(n, data.get("reference") is not None)
    return data, present


def run_case(n: int, m: int, d: int, every: bool, trials: int) -> None:
    rng = np.random.default_rng(0)
    id_rows = {k: rows(rng, m, d, 0.0) for k in ("prompt", "image", "response", "reference")}
    data = IDArrays.from_compact(
        id_rows["prompt"],
        responses=id_rows["response"],
        images=id_rows["image"] if every else None,
        references=id_rows["reference"] if every else None,
    )
    stats = WindowStatistics.from_arrays(data, np.arange(m))
    test = PermutationTest(data, np.arange(m), "balanced")
    times = {}
    for label, shift in (("quiet", 0.0), ("shifted", 1.0)):
        w, present = window(rng, n, d, every, shift)
        pairs = (w["response"], w["reference"]) if every else None
        values = stats(
            prompts=w["prompt"], images=w["image"], responses=w["response"], reference_pairs=pairs
        )
        started = time.perf_counter()
        nulls = test.nulls(w, present, values, trials=trials, seed=1)
        times[label] = time.perf_counter() - started
        splits = ", ".join(f"{t} {null.trials}" for t, null in sorted(nulls.items()))
        print(f"  {label:8s} {times[label]:7.2f} s   splits: {splits}")
    print(f"  shifted / quiet: {times['shifted'] / times['quiet']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="[compute] threads")
    args = parser.parse_args()
    apply_compute_settings(ComputeSettings(threads=args.threads))  # torch, BLAS, FAISS
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s)")
    for n, m, d, every in CASES:
        terms = "every term" if every else "text + response"
        print(f"window {n} vs comparison {m}, d = {d}, {terms}, {args.trials} permutations")
        run_case(n, m, d, every, args.trials)


if __name__ == "__main__":
    main()
