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
    """Exact below ``ivf_min_size`` rows; IVF with ~4 sqrt(n) cells above it."""
    if n < ivf_min_size:
        return IndexParams("flat")
    cells = nlist or int(2 ** round(math.log2(4 * math.sqrt(n))))
    return IndexParams("ivf", nlist=cells, nprobe=nprobe or max(1, cells // 32))


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
        sample = np.random.default_rng(seed).permutation(n)[: min(n, 64 * params.nlist)]
        index.cp.seed = seed
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
