"""Estimator benchmark: CLUB O(n d) vs the reference pairwise form, representation JSD, and the
same work with one core kept busy by another process.

Run: python benchmarks/bench_estimators.py [--repeats N] [--threads N] [--parts ...]

Prints wall-clock times measured side by side in one run and their ratios. The pairwise form is
the reference implementation's formula (an n x n x d tensor), written out here for comparison.
Threads are set as a command sets them ([compute] threads, monitor.compute); --threads
overrides the automatic default. The contention part alternates quiet and busy runs (a busy
loop in a second process, the way an inference server next to the monitor takes a core), and
compares the default thread count with the libraries' own default of one thread per core.
Not a test: nothing is asserted, numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from monitor.compute import apply_compute_settings, usable_cores
from monitor.config import ComputeSettings
from monitor.estimators.calibration import jsd_null
from monitor.estimators.club import _ESTIMATE_CHUNK_ROWS, CLUB
from monitor.estimators.rjsd import ReferenceJSD, representation_jsd
from monitor.reference.checkpoint import load_club

PAPER_CLUB = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "club_paper_global.pt"
D = 768
CHUNKS = (1024, 2048, 4096, 8192, 32768)
TARGET_SLOWDOWN = 2.0
SLOW_RUN_S = 5.0
PARTS = ("speed", "contention", "chunks")


def best_of(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(best wall time in seconds, value) over `repeats` runs after one warm-up."""
    value = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time over `repeats` runs (no warm-up: the caller warms up once)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def busy_core() -> Iterator[None]:
    """Another process spinning on one core for the duration."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start and take its core
        yield
    finally:
        spinner.kill()
        spinner.wait()


def quiet_and_busy(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median time without and with a busy core, measured back to back. A run slower than
    SLOW_RUN_S is timed once (no warm-up), so a pathological setting cannot stall the
    benchmark."""
    start = time.perf_counter()
    fn()  # warm-up
    if time.perf_counter() - start > SLOW_RUN_S:
        quiet = median_time(fn, 1)
        with busy_core():
            busy = median_time(fn, 1)
        return quiet, busy
    quiet = median_time(fn, repeats)
    with busy_core():
        fn()
        busy = median_time(fn, repeats)
    return quiet, busy


def python_loop() -> int:
    """Single-threaded work no thread setting can change: the machine's own floor."""
    total = 0
    for i in range(2_000_000):
        total += i
    return total


def pairwise_estimate(model: CLUB, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        mu, logvar = model.p_mu(x), model.p_logvar(x)
        positive = -((mu - y) ** 2) / 2.0 / logvar.exp()
        negative = -((y.unsqueeze(0) - mu.unsqueeze(1)) ** 2).mean(dim=1) / 2.0 / logvar.exp()
        return float((positive.sum(-1) - negative.sum(-1)).mean())


def mlps_only(model: CLUB, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float(model.p_mu(x)[0, 0] + model.p_logvar(x)[0, 0])


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zv = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    zt = torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)
    y = torch.nn.functional.normalize(zt + 0.5 * torch.randn(n, D, generator=g), dim=-1)
    return (zv + zt) / 2, y


def unit_rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, D)) + shift
    unit: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


def speed_section(model: CLUB, repeats: int) -> None:
    print("CLUB estimate          n   pairwise s    O(nd) s     speed-up   |difference|")
    for n in (90, 512):
        x, y = data(n, seed=n)
        t_naive, v_naive = best_of(partial(pairwise_estimate, model, x, y), 2 * repeats)
        t_fast, v_fast = best_of(partial(model.estimate, x, y), 20 * repeats)
        print(
            f"{'':18}{n:>7}   {t_naive:10.4f}   {t_fast:9.5f}   {t_naive / t_fast:8.1f}x"
            f"   {abs(v_naive - v_fast):.2e}"
        )

    n = 100_000
    x, y = data(n, seed=1)
    t_mlp, _ = best_of(lambda: mlps_only(model, x), repeats)
    t_fast, _ = best_of(lambda: model.estimate(x, y), repeats)
    print()
    print(
        f"CLUB at n = {n:,}: O(nd) estimate {t_fast:.3f} s; the two MLPs alone, unfused, "
        f"{t_mlp:.3f} s (estimate / MLPs = {t_fast / t_mlp:.2f})"
    )
    a, b = unit_rows(10_000, 0), unit_rows(10_000, 1, shift=0.2)
    t_jsd, value = best_of(lambda: representation_jsd(a, b), repeats)
    print(f"representation JSD, two sets of n = 10,000, d = {D}: {t_jsd:.3f} s (JSD {value:.4f})")


def contention_section(model: CLUB, thread_counts: list[int], default: int, repeats: int) -> None:
    x512, y512 = data(512, seed=512)
    x100k, y100k = data(100_000, seed=1)
    comparison, pool = unit_rows(2000, 2), unit_rows(2000, 3)
    reference = ReferenceJSD(comparison)
    window = unit_rows(200, 4, shift=0.1)
    workloads: list[tuple[str, Callable[[], object], int]] = [
        ("CLUB estimate, n = 512", lambda: model.estimate(x512, y512), 20 * repeats),
        ("CLUB estimate, n = 100,000", lambda: model.estimate(x100k, y100k), repeats),
        ("JSD, window 200 vs ID 2,000", lambda: reference(window), 5 * repeats),
        (
            "JSD null, 20 trials of 100 from 2,000",
            lambda: jsd_null(comparison, pool, 100, trials=20),
            repeats,
        ),
    ]
    print("median seconds, quiet vs one core busy in another process:")
    print(f"{'workload':40} threads      quiet       busy   slowdown")
    quiet, busy = quiet_and_busy(python_loop, 5)
    floor = busy / quiet
    print(
        f"{'pure-Python loop (the machine floor)':40} {1:>7}   {quiet:8.4f}   {busy:8.4f}"
        f"   {floor:7.2f}x"
    )
    worst_default = 0.0
    for name, fn, runs in workloads:
        for threads in thread_counts:
            apply_compute_settings(ComputeSettings(threads=threads))
            quiet, busy = quiet_and_busy(fn, runs)
            mark = " (default)" if threads == default else ""
            print(
                f"{name:40} {threads:>7}   {quiet:8.4f}   {busy:8.4f}   {busy / quiet:7.2f}x{mark}"
            )
            if threads == default:
                worst_default = max(worst_default, busy / quiet)
    verdict = "met" if worst_default <= TARGET_SLOWDOWN else "MISSED"
    print(
        f"worst slowdown with the default ({default} threads): {worst_default:.2f}x; "
        f"target <= {TARGET_SLOWDOWN:.0f}x: {verdict}; a single thread of pure Python "
        f"slows {floor:.2f}x here (above 1x when the cores are not independent: SMT siblings "
        "or a shared CPU quota)"
    )


def chunk_section(model: CLUB, thread_counts: list[int], repeats: int) -> None:
    n = 65_536
    x, y = data(n, seed=7)
    print(f"CLUB estimate at n = {n:,} by chunk rows (default {_ESTIMATE_CHUNK_ROWS}), median s:")
    print(f"{'threads':>7}   {'chunk':>6}      quiet       busy   slowdown")
    for threads in thread_counts:
        apply_compute_settings(ComputeSettings(threads=threads))
        for chunk in CHUNKS:
            quiet, busy = quiet_and_busy(partial(model.estimate, x, y, chunk_rows=chunk), repeats)
            print(f"{threads:>7}   {chunk:>6}   {quiet:8.3f}   {busy:8.3f}   {busy / quiet:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: the [compute] default")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to run (default: all, a few minutes on 2 quiet cores)",
    )
    args = parser.parse_args()

    applied = apply_compute_settings(ComputeSettings(threads=args.threads))
    if PAPER_CLUB.is_file():
        model, weights = load_club(PAPER_CLUB), "authors' CLUB weights"
    else:
        torch.manual_seed(0)
        model, weights = CLUB(D, D).eval(), "random CLUB weights"
    cores = usable_cores()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"({cores} usable), torch {torch.__version__}, {applied.threads} threads "
        f"({'automatic' if applied.automatic else '--threads'}), {weights}, d = {D}"
    )
    if "speed" in args.parts:
        print()
        speed_section(model, args.repeats)
    # The default next to one thread per core (what torch, FAISS and BLAS do unconfigured).
    thread_counts = sorted({applied.threads, cores})
    if "contention" in args.parts:
        print()
        contention_section(model, thread_counts, applied.threads, args.repeats)
    if "chunks" in args.parts:
        print()
        chunk_section(model, thread_counts, max(2, args.repeats - 1))


if __name__ == "__main__":
    main()
