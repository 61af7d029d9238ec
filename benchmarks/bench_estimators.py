"""Estimator benchmark: CLUB O(n d) vs the reference pairwise form, and representation JSD.

Run: python benchmarks/bench_estimators.py [--repeats N]

Prints wall-clock times measured side by side in one run and their ratios. The pairwise form is
the reference implementation's formula (an n x n x d tensor), written out here for comparison.
Not a test: nothing is asserted, numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from monitor.estimators.club import CLUB
from monitor.estimators.rjsd import representation_jsd
from monitor.reference.checkpoint import load_club

PAPER_CLUB = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "club_paper_global.pt"
D = 768


def best_of(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(best wall time in seconds, value) over `repeats` runs after one warm-up."""
    value = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if PAPER_CLUB.is_file():
        model, weights = load_club(PAPER_CLUB), "authors' CLUB weights"
    else:
        torch.manual_seed(0)
        model, weights = CLUB(D, D).eval(), "random CLUB weights"
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {weights}, d = {D}"
    )
    print()
    print("CLUB estimate          n   pairwise s    O(nd) s     speed-up   |difference|")
    for n in (90, 512):
        x, y = data(n, seed=n)
        t_naive, v_naive = best_of(partial(pairwise_estimate, model, x, y), 2 * args.repeats)
        t_fast, v_fast = best_of(partial(model.estimate, x, y), 20 * args.repeats)
        print(
            f"{'':18}{n:>7}   {t_naive:10.4f}   {t_fast:9.5f}   {t_naive / t_fast:8.1f}x"
            f"   {abs(v_naive - v_fast):.2e}"
        )

    n = 100_000
    x, y = data(n, seed=1)
    t_mlp, _ = best_of(lambda: mlps_only(model, x), args.repeats)
    t_fast, _ = best_of(lambda: model.estimate(x, y), args.repeats)
    print()
    print(
        f"CLUB at n = {n:,}: O(nd) estimate {t_fast:.3f} s; the two MLPs alone, unfused, "
        f"{t_mlp:.3f} s (estimate / MLPs = {t_fast / t_mlp:.2f})"
    )

    rng = np.random.default_rng(0)
    a = rng.standard_normal((10_000, D)).astype(np.float32)
    b = (rng.standard_normal((10_000, D)) + 0.2).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    t_jsd, value = best_of(lambda: representation_jsd(a, b), args.repeats)
    print(f"representation JSD, two sets of n = 10,000, d = {D}: {t_jsd:.3f} s (JSD {value:.4f})")


if __name__ == "__main__":
    main()
