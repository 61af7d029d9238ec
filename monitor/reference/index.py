"""FAISS indexes over L2-normalised embeddings: exact inner product, or IVF beyond a size.

Inner product on unit rows is cosine similarity. ``flat`` is exact; ``ivf`` clusters the rows
into ``nlist`` cells and scans ``nprobe`` of them per query, trading a little recall for speed
on large stores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from monitor.errors import ReferenceStoreError

IndexKind = Literal["flat", "ivf"]


@dataclass(frozen=True)
class IndexParams:
    kind: IndexKind = "flat"
    nlist: int = 0
    nprobe: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_params(
    n: int, *, ivf_min_size: int = 200_000, nlist: int = 0, nprobe: int = 0
) -> IndexParams:
    """Exact below ``ivf_min_size`` rows; IVF with ~4 sqrt(n) cells above it.

    A query scans all ``nlist`` centroids, then its ``nprobe`` cells: the default probes cells
    holding ~1,000 rows on average (at least 4 cells), so at 1M rows (4096 cells, nprobe 4)
    it reads ~5,000 rows, ~1.4 ms on one core, for recall@10 0.965 on clustered synthetic
    embeddings (benchmarks/bench_knn.py). Probing more cells buys little recall (0.987 at
    nprobe 16) for linear latency (5 ms); the old nlist // 32 (128 cells) took > 30 ms.
    """
    if n < ivf_min_size:
        return IndexParams("flat")
    cells = nlist or int(2 ** round(math.log2(4 * math.sqrt(n))))
    return IndexParams("ivf", nlist=cells, nprobe=nprobe or max(4, round(1024 * cells / n)))


def build_index(vectors: npt.NDArray[np.float32], params: IndexParams, *, seed: int = 0) -> Any:
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = rows.shape
    index: Any
    if params.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        if n < params.nlist:
            raise ReferenceStoreError(
                f"IVF with nlist={params.nlist} needs at least that many rows, got {n}"
            )
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on 40 rows per cell (faiss warns below 39) for 10 iterations (faiss: 25):
        # training costs sample x nlist x iterations; at 1M rows x 4096 cells the old 64 rows
        # x 25 iterations is 4x this work (estimated > 10 min on 2 cores, not measured).
        # Coarser centroids may cost a little recall, which nprobe buys back.
        sample = np.random.default_rng(seed).permutation(n)[: min(n, 40 * params.nlist)]
        index.cp.seed = seed
        index.cp.niter = 10
        index.train(rows[sample])
        index.nprobe = params.nprobe
    index.add(rows)
    return index


def search(
    index: Any, queries: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Similarities (descending) and row ids of the k nearest rows for each query."""
    k = min(k, int(index.ntotal))
    sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims, ids


def write_index(index: Any, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: Path, params: IndexParams) -> Any:
    index: Any
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ReferenceStoreError(f"cannot read FAISS index {path}: {exc}", path=path) from exc
    if params.kind == "ivf":
        index.nprobe = params.nprobe
    return index
