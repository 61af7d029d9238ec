"""The pager, measured: detection delay and false pages of the old k-of-m rule and the detector.

    python benchmarks/bench_pager.py [--quick] [--workers 2] [--seed 0]

Real traffic: LLaVA-v1.5-13b prompts and answers of MMBench (dev), embedded by MiniLM through
the product's ``hf_mean_pool`` encoder (cached outside the repository: pager_data.py). A seeded
shuffle puts 3,000 records in the ID reference and holds the other 1,377 out as ID traffic. The
reference is calibrated as a store would be (``calibrate_arrays``: comparison fraction 0.3,
windows of 100 records, pool fraction up to 0.05, false-alarm rate 0.01) and its detector by the
product's ``detector_calibration`` for one false page per 90 days at 5-minute windows. Synthetic
ID data (tests/synthetic_id.py: prompt, image and answer, no references; 3,000 reference
records, the same settings) repeats the false-page count on fresh draws from the distribution
itself.

BEFORE is the old rule (bound p < 0.01 in 2 of the last 3 windows, ``assess_risk``), AFTER the
detector (``Detector.step`` on ``detector_score`` of the bound's and the answer term's tail
p-values, ``WindowAssessment.score_p_values``). Both read the same windows, whose statistics
come from ``WindowStatistics`` and whose p-values from the nulls ``assess_window`` reads
(checked against ``assess_window`` itself on every ID window and the first mixed window of
every delay trial: the p-values and the score must agree). The warning is ``assess_window``'s.

1. Detection delay: each trial runs ``--prefix`` ID windows (taken from the false-page run),
   then windows that mix MME or MM-Vet records (prompt and answer) into MMBench ones from
   held-out records at a fixed share; the delay is the count of mixed windows up to and
   including the first critical one (1: the first mixed window pages); a trial without a page
   in ``--max-delay`` windows counts as never (">N").
2. False pages: one long stream of ID windows per configuration (pseudo-windows of 100
   held-out records, or fresh synthetic draws); a page is the start of a critical run. The
   achieved interval is windows x 5 minutes / pages, with an exact Poisson interval; the
   per-window rates (warning, bound, score, alarmed) are over every window.

Prints tables; writes nothing but the embedding cache.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pager_data import DEFAULT_CACHE, TextRows, load_sources  # noqa: E402
from pager_sim import (  # noqa: E402
    Assessed,
    Counts,
    Judge,
    RuleState,
    Run,
    run_rules,
    scores,
    step_rules,
)

from monitor.detection import IDArrays, WindowStatistics, calibrate_arrays  # noqa: E402
from monitor.detection.calibrate import detector_calibration  # noqa: E402
from monitor.detection.detector import Detector, poisson_interval  # noqa: E402
from monitor.detection.risk import RiskPolicy  # noqa: E402
from monitor.detection.selfcheck import clopper_pearson  # noqa: E402
from tests.synthetic_id import IDModel  # noqa: E402

WINDOW = timedelta(minutes=5)
INTERVAL = timedelta(days=90)
RECORDS = 100
REFERENCE = 3_000
ALPHA = 0.01
POLICY = RiskPolicy(k=2, m=3)
MIXES = (0.02, 0.05, 0.10, 1.0)
SHIFTS = ("mme", "mm-vet")
CHUNK = 500
SCORE_AT_ALPHA = float(stats.norm.isf(ALPHA))

Rows = npt.NDArray[np.float32]
Values = dict[str, float | None]
Draw = Callable[[np.random.Generator], dict[str, Rows | None]]


@dataclass
class Config:
    """One ID reference: its calibration, statistics, detector and how its windows are drawn."""

    name: str
    calibration: dict[str, Any]
    stats: WindowStatistics
    judge: Judge
    detector: Detector
    detector_calibration: dict[str, Any]
    draw: Draw
    calibrate_s: float
    detector_s: float


@dataclass
class RealData:
    mmbench: TextRows
    held_out: npt.NDArray[np.intp]
    shifts: dict[str, TextRows]


CONFIGS: dict[str, Config] = {}
REAL: list[RealData] = []


def build_config(name: str, data: IDArrays, counts: Counts, draw: Draw, seed: int) -> Config:
    start = time.perf_counter()
    calibration = calibrate_arrays(
        data,
        window_sizes=[RECORDS],
        comparison_fraction=0.3,
        seed=seed,
        false_alarm_rate=ALPHA,
        max_pool_fraction=0.05,
    )
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    found = detector_calibration(
        calibration, window=WINDOW, false_page_interval=INTERVAL, seed=seed
    )
    detector_s = time.perf_counter() - start
    calibration["detector"] = found
    detector = Detector.from_calibration(calibration)
    assert detector is not None
    return Config(
        name,
        calibration,
        WindowStatistics.for_calibration(data, calibration),
        Judge(calibration, counts, detector, ALPHA),
        detector,
        found,
        draw,
        calibrate_s,
        detector_s,
    )


def real_config(sources: dict[str, TextRows], seed: int) -> Config:
    mmbench = sources["mmbench"]
    order = np.random.default_rng(seed).permutation(mmbench.n)
    reference, held_out = order[:REFERENCE], np.sort(order[REFERENCE:])
    REAL.append(RealData(mmbench, held_out, {s: sources[s] for s in SHIFTS}))
    data = IDArrays.from_compact(mmbench.prompts[reference], responses=mmbench.responses[reference])

    def draw(rng: np.random.Generator) -> dict[str, Rows | None]:
        rows = rng.choice(held_out, RECORDS, replace=False)
        return {
            "prompts": mmbench.prompts[rows],
            "images": None,
            "responses": mmbench.responses[rows],
        }

    return build_config("MMBench held-out (MiniLM)", data, Counts(RECORDS, 0, 0), draw, seed)


def synthetic_config(seed: int) -> Config:
    model = IDModel()
    records = model.draw(np.random.default_rng(seed + 1), REFERENCE)
    data = IDArrays.from_compact(
        records["prompt"], responses=records["response"], images=records["image"]
    )

    def draw(rng: np.random.Generator) -> dict[str, Rows | None]:
        window = model.draw(rng, RECORDS)
        return {
            "prompts": window["prompt"],
            "images": window["image"],
            "responses": window["response"],
        }

    counts = Counts(RECORDS, RECORDS, 0)
    return build_config("synthetic ID (d = 32)", data, counts, draw, seed)


def window_values(config: Config, window: dict[str, Rows | None]) -> Values:
    prompts = window["prompts"]
    assert prompts is not None
    return config.stats(
        prompts=prompts,
        images=window["images"],
        responses=window["responses"],
        reference_pairs=None,
    )


def id_chunk(task: tuple[str, int, int]) -> list[tuple[Values, Assessed]]:
    """Statistics of ``count`` ID windows of a configuration, drawn with ``seed``, and what
    ``assess_window`` says of each."""
    name, seed, count = task
    config = CONFIGS[name]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        values = window_values(config, config.draw(rng))
        out.append((values, config.judge.assess(values)))
    return out


def delay_trial(task: tuple[str, float, int, RuleState, int]) -> tuple[float, float, int]:
    """(old rule, detector) windows from the first mixed window to the first critical one, and
    the windows checked against ``assess_window`` (the first)."""
    shift, mix, seed, state, max_delay = task
    config, real = CONFIGS["real"], REAL[0]
    source = real.shifts[shift]
    rng = np.random.default_rng(seed)
    taken = round(mix * RECORDS)
    delays = [np.inf, np.inf]
    checked = 0
    for t in range(1, max_delay + 1):
        rows = rng.choice(real.held_out, RECORDS - taken, replace=False)
        mixed = rng.choice(source.n, taken, replace=False)
        window = {
            "prompts": np.vstack([real.mmbench.prompts[rows], source.prompts[mixed]]),
            "images": None,
            "responses": np.vstack([real.mmbench.responses[rows], source.responses[mixed]]),
        }
        values = window_values(config, window)
        if t == 1:
            checked += config.judge.agree([values], [config.judge.assess(values)])
        bound = np.array([values["bound_scale_adjusted"]], dtype=np.float64)
        hit = bool(config.judge.bound_p_values(bound)[0] < ALPHA)
        score = float(scores(*config.judge.score_p_values([values]))[0])
        critical = step_rules(state, POLICY, config.detector, hit, score)
        for rule, now in enumerate(critical):
            if now and np.isinf(delays[rule]):
                delays[rule] = float(t)
        if not np.isinf(delays).any():
            break
    return delays[0], delays[1], checked


def one_thread() -> None:
    threadpool_limits(1)


@dataclass
class IDRun:
    config: Config
    windows: int
    run: Run
    hits: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float64]
    warnings: npt.NDArray[np.bool_]
    step_s: float
    windows_s: float
    checked: int


def id_run(pool: Any, key: str, windows: int, seed: int) -> IDRun:
    config = CONFIGS[key]
    tasks = [
        (key, seed * 1_000_003 + i, min(CHUNK, windows - start))
        for i, start in enumerate(range(0, windows, CHUNK))
    ]
    start = time.perf_counter()
    found = [v for chunk in pool.imap(id_chunk, tasks) for v in chunk]
    windows_s = time.perf_counter() - start
    values, assessed = [v for v, _ in found], [a for _, a in found]
    bounds = np.array([v["bound_scale_adjusted"] for v in values], dtype=np.float64)
    hits = config.judge.bound_p_values(bounds) < ALPHA
    warnings = np.array([a.warning for a in assessed], dtype=bool)
    checked = config.judge.agree(values, assessed)
    run, scored, step_s = run_rules(
        hits, config.judge.score_p_values(values), POLICY, config.detector
    )
    return IDRun(config, windows, run, hits, scored, warnings, step_s, windows_s, checked)


def delays(
    pool: Any, real: IDRun, trials: int, prefix: int, max_delay: int, seed: int
) -> tuple[dict[tuple[str, float], list[tuple[float, float]]], int]:
    """The delays of each shift and mix, and the mixed windows checked against assess_window."""
    rng = np.random.default_rng(seed + 7)
    config = real.config
    tasks = []
    for shift in SHIFTS:
        for mix in MIXES:
            for _ in range(trials):
                end = int(rng.integers(prefix, real.windows))
                state = RuleState.fresh(POLICY)
                for hit, score in zip(
                    real.hits[end - prefix : end], real.scores[end - prefix : end], strict=True
                ):
                    step_rules(state, POLICY, config.detector, bool(hit), float(score))
                tasks.append((shift, mix, int(rng.integers(2**63)), state, max_delay))
    found = pool.map(delay_trial, tasks, chunksize=4)
    out: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for task, (old, new, _) in zip(tasks, found, strict=True):
        out.setdefault((task[0], task[1]), []).append((old, new))
    return out, sum(checked for _, _, checked in found)


def describe_delays(values: list[float], max_delay: int) -> tuple[str, str, str]:
    array = np.asarray(values)

    def show(q: float) -> str:
        x = float(np.quantile(array, q, method="inverted_cdf"))
        return f">{max_delay}" if np.isinf(x) else f"{x:g}"

    return show(0.5), show(0.9), f"{np.mean(array <= 4):.0%}"


def days(windows: float) -> str:
    if np.isinf(windows):
        return "inf"
    value = windows * WINDOW.total_seconds() / 86_400
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def print_tables(
    runs: list[IDRun],
    found: dict[tuple[str, float], list[tuple[float, float]]],
    trials: int,
    max_delay: int,
    checked_mixed: int,
) -> None:
    print(
        f"\n## Detection delay (windows of {RECORDS} records, "
        f"{WINDOW.total_seconds() / 60:g} min; {trials} trials each; AFTER scores bound and "
        f"answers; {checked_mixed} mixed windows checked against assess_window)\n"
    )
    print(
        "| shift | mix | BEFORE median | BEFORE p90 | BEFORE <= 4 "
        "| AFTER median | AFTER p90 | AFTER <= 4 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (shift, mix), results in found.items():
        old = describe_delays([r[0] for r in results], max_delay)
        new = describe_delays([r[1] for r in results], max_delay)
        print(f"| {shift} | {mix:.0%} | {' | '.join(old)} | {' | '.join(new)} |")
    target = INTERVAL / WINDOW
    print("\n## False pages on ID traffic (a page: the start of a critical run)\n")
    print(
        f"Target of AFTER: one page per {INTERVAL.days} days ({target:,.0f} windows), so "
        + ", ".join(
            f"{r.windows / target:.2f} expected pages in {r.windows:,} windows" for r in runs[:1]
        )
        + ".\n"
    )
    print("| ID data | windows | days | rule | pages | interval (days) | 95% interval (days) |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in runs:
        for rule, critical in (
            ("BEFORE 2/3 at p < 0.01", r.run.old_critical),
            ("AFTER detector 90d", r.run.alarmed),
        ):
            pages = Run.onsets(critical)
            low, high = poisson_interval(pages)
            print(
                f"| {r.config.name} | {r.windows:,} | {days(r.windows)} | {rule} | {pages} | "
                f"{days(r.windows / pages if pages else np.inf)} | "
                f"[{days(r.windows / high)}, {days(r.windows / low if low else np.inf)}] |"
            )
    print("\n## Per-window rates on ID traffic\n")
    print("| ID data | what | windows | count | rate | 95% interval |")
    print("|---|---|---:|---:|---:|---|")
    for r in runs:
        for what, flags in (
            ("warning (assess_window, alpha 0.01)", r.warnings),
            ("bound p < 0.01", r.hits),
            ("detector score p < 0.01", r.scores > SCORE_AT_ALPHA),
            ("detector alarmed", r.run.alarmed),
        ):
            count, total = int(flags.sum()), len(flags)
            low, high = clopper_pearson(count, total)
            print(
                f"| {r.config.name} | {what} | {total:,} | {count} | {count / total:.2e} "
                f"| [{low:.2e}, {high:.2e}] |"
            )
    print("\n## Detector and timings\n")
    for r in runs:
        c = r.config
        d = c.detector_calibration
        ci = [x / 86_400 for x in d["interval_ci_seconds"]]
        fitted = ", ".join(
            f"{term} {tail.fit.exceedances if tail.fit else 0} of {tail.trials}"
            for term, tail in (("bound", c.judge.tail), ("answers", c.judge.response_tail))
        )
        print(
            f"- {c.name}: threshold {c.detector.threshold:.3f} (clear "
            f"{c.detector.clear_level:.3f}, cap {c.detector.cap:.3f}, drift "
            f"{c.detector.drift:g}); the calibration's own estimate "
            f"{d['achieved_interval_seconds'] / 86_400:,.0f} days [{ci[0]:,.0f}, {ci[1]:,.0f}] "
            f"from {d['pages']} pages in {d['simulated_windows']:,} simulated windows of "
            f"{d['score']}; tail fits on {fitted} trials; score on ID windows: median "
            f"{np.nanmedian(r.scores):.2f}, 99th percentile {np.nanquantile(r.scores, 0.99):.2f}"
        )
        print(
            f"  calibration {c.calibrate_s:.1f} s ({c.calibration['trials']} trials), detector "
            f"calibration {c.detector_s:.1f} s (limit 60 s), detector step (detector_score + "
            f"step) {r.step_s * 1e6:.1f} us per window (limit 1 ms), window statistics and "
            f"assess_window {r.windows_s / r.windows * 1e3:.2f} ms per window wall-clock; "
            f"checked against assess_window on {r.checked} windows"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows and trials")
    parser.add_argument("--windows", type=int, help="ID windows per configuration")
    parser.add_argument("--trials", type=int, help="delay trials per shift and mix")
    parser.add_argument("--prefix", type=int, default=24, help="ID windows before a shift")
    parser.add_argument("--max-delay", type=int, default=72, help="mixed windows per trial")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    windows = args.windows or (10_000 if args.quick else 100_000)
    trials = args.trials or (10 if args.quick else 50)
    started = time.perf_counter()
    one_thread()
    sources = load_sources(args.cache_dir)
    CONFIGS["real"] = real_config(sources, args.seed)
    CONFIGS["synthetic"] = synthetic_config(args.seed)
    print(
        f"set-up (embeddings, calibrations) {time.perf_counter() - started:.0f} s", file=sys.stderr
    )
    context = multiprocessing.get_context("fork")
    with context.Pool(args.workers, initializer=one_thread) as pool:
        runs = []
        for key in ("real", "synthetic"):
            runs.append(id_run(pool, key, windows, args.seed))
            print(
                f"{key}: {windows:,} ID windows at {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
        found, checked_mixed = delays(pool, runs[0], trials, args.prefix, args.max_delay, args.seed)
    print(
        f"# bench_pager: {' '.join(sys.argv[1:]) or '(full size)'}; "
        f"{time.perf_counter() - started:.0f} s on {args.workers} workers"
    )
    print_tables(runs, found, trials, args.max_delay, checked_mixed)


if __name__ == "__main__":
    main()
