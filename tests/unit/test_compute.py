"""[compute] threads: the automatic default and what apply_compute_settings sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import faiss
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from monitor.compute import apply_compute_settings, default_threads, resolve_threads
from monitor.config import ComputeSettings


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    with threadpool_limits(limits=None):  # restores every BLAS / OpenMP pool on exit
        yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (96, 4)])
def test_default_leaves_half_the_cores_and_at_most_four(cores: int, threads: int) -> None:
    assert default_threads(cores) == threads


def test_explicit_threads_win_over_the_default() -> None:
    assert resolve_threads(ComputeSettings(threads=3)).threads == 3
    automatic = resolve_threads(ComputeSettings())
    assert automatic.automatic and automatic.threads == default_threads()


def test_apply_sets_torch_faiss_and_every_blas_pool() -> None:
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    applied = apply_compute_settings(ComputeSettings(threads=1))
    assert applied.threads == 1 and not applied.automatic
    assert torch.get_num_threads() == 1
    assert faiss.omp_get_max_threads() == 1
    pools = threadpool_info()
    assert any(p["user_api"] == "blas" for p in pools)  # numpy's OpenBLAS at least
    assert all(p["num_threads"] == 1 for p in pools), pools


def test_a_worker_thread_applies_it_for_itself() -> None:
    """OpenMP keeps the count per thread: why the daemon calls it in each worker."""
    seen: dict[str, int] = {}

    def worker() -> None:
        apply_compute_settings(ComputeSettings(threads=1))
        seen["faiss"] = faiss.omp_get_max_threads()
        seen["torch"] = torch.get_num_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"faiss": 1, "torch": 1}
