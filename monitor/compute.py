"""CPU threads of torch, FAISS and BLAS, set from ``[compute]`` once at start-up.

A monitor runs next to an inference server and shares its CPU. The libraries' default is one
OpenMP or BLAS thread per core, and those threads spin while they wait for each other: when
another process keeps one core busy, every parallel region waits for the thread that lost its
core. Measured on a 2-core AMD EPYC with one core kept busy by another process (torch 2.13 CPU):
a CLUB estimate at n = 512 went from 6 ms (quiet, 2 threads) to 224 ms (median; 2 threads) but
stayed at 11-12 ms with 1 thread; at n = 100,000 1 thread took 2.3 s busy against 2.2 s quiet,
2 threads 3.6-9.9 s. So the default leaves half the cores (at most 4 threads) to whoever else
runs there: ``min(4, max(1, usable cores // 2))``. A dedicated machine sets ``compute.threads``.

Commands call :func:`apply_compute_settings` once, right after loading the settings, before any
encoder, estimator or index runs; loading an encoder does not touch the thread count. OpenMP
keeps its thread count per calling thread: the daemon calls it again at the start of every
worker thread that runs estimators, encoders or FAISS (cheap and idempotent).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from monitor.config import ComputeSettings

# Upper bound of the automatic thread count: beyond it CLUB and the JSD eigensolver at window
# sizes gain little, and the cores are the inference server's.
MAX_AUTO_THREADS = 4


@dataclass(frozen=True)
class AppliedCompute:
    """What :func:`apply_compute_settings` set: the thread count and where it came from."""

    threads: int
    automatic: bool


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None) -> int:
    """The automatic thread count: half the usable cores, at least 1 and at most 4."""
    cores = usable_cores() if cores is None else cores
    return min(MAX_AUTO_THREADS, max(1, cores // 2))


def resolve_threads(settings: ComputeSettings) -> AppliedCompute:
    if settings.threads:
        return AppliedCompute(threads=settings.threads, automatic=False)
    return AppliedCompute(threads=default_threads(), automatic=True)


def apply_compute_settings(settings: ComputeSettings) -> AppliedCompute:
    """Set the thread count of torch (intra-op, MKL), FAISS (OpenMP) and every BLAS and OpenMP
    runtime loaded in the process (numpy's OpenBLAS included) for the calling thread."""
    # Imported here so that the libraries (and their thread pools) are loaded before they are
    # limited, and commands that compute nothing do not pay for them.
    import faiss
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl sees it)
    import torch
    from threadpoolctl import threadpool_limits

    applied = resolve_threads(settings)
    torch.set_num_threads(applied.threads)
    faiss.omp_set_num_threads(applied.threads)
    # OpenBLAS (numpy's, FAISS's) and any other OpenMP copy; process-wide for BLAS.
    threadpool_limits(limits=applied.threads)
    return applied
