"""kNN benchmark of the reference store: exact (IndexFlatIP) vs IVF (IndexIVFFlat, inner product).

Run: python benchmarks/bench_knn.py [--quick] [--sizes 100000,1000000] [--queries 1024]
                                    [--nprobe 8,32] [--threads N]

For each size N the store's own index code (``monitor.reference.index``) builds an exact index
and an IVF index with the defaults of ``choose_params`` (IVF is forced at every size here, even
where the store itself would stay exact; the ``store`` column says what it would pick). Each
index answers one query at a time (median latency over a few hundred queries) and batches of
256 queries (median time per batch); IVF recall@10 is measured against the exact top 10 of the
same QUERIES queries. ``--nprobe`` adds rows for other nprobe values on the same IVF index.
Target (issue "Step 4"): one query under 2 ms on 1,000,000 rows with recall@10 >= 0.95.

Threads: single queries run with one OpenMP thread, batches with all of them (``--threads``,
default: all cores). faiss parallelises a search over its queries, so a lone query gains
nothing from more threads and only pays the OpenMP fork/join, which is also how a server
answering one request per worker runs; a batch splits its queries over the threads.

Data. IVF recall depends entirely on the data: on isotropic Gaussian noise every point is about
as far from every other and no partition keeps neighbours together (no IVF gets good recall
there), while real embedding sets are clustered and anisotropic. So the rows are a mixture of
CLUSTERS Gaussian clusters, built to look like CLIP or sentence-encoder embeddings:
  * a shared direction (weight SHARED) common to all rows: real embeddings sit in a narrow
    cone, a random pair has cosine ~0.2 rather than 0;
  * cluster centres with a power-law spectrum (variance of coordinate j ~ 1/j, so their
    effective dimension is ~30 of the 768): few directions carry most of the variance;
  * each cluster spread along its own random RANK-d subspace with decaying scales (a low
    intrinsic dimension, differently oriented per cluster), plus a little isotropic noise;
  * cluster sizes log-normal (some topics are far more common than others), which also gives
    the IVF cells the uneven sizes they have on real data;
  * clusters wide enough to overlap (a query's 10 neighbours often come from several), so
    the data is not much easier for IVF than real sets: at N=200,000 with nlist=512, recall@10
    is ~0.7 at nprobe=1 and ~0.97 at nprobe=8, of the order of public 1M-vector benchmarks
    (SIFT1M, Deep1M); 2,000 tighter clusters gave 0.92 at nprobe=1, too easy. Not checked
    against a real reference store: measure recall there too;
  * every row L2-normalised, as the store does.
Queries are drawn from the same mixture (same clusters, same proportions) but are not rows of
the index. The header prints the cosine of random pairs and of each query's 1st and 10th exact
neighbour; on real 768-d image/text embeddings these are roughly 0.1-0.5, 0.7-0.95, 0.6-0.9.
Rows are generated cluster by cluster straight into one float32 array (N x 768 x 4 bytes: 3 GB
at 1M); at most that array and one index (another copy) are alive at a time.

On 2 cores the full run takes ~9 minutes, most of it the 1M IVF build (k-means + add, ~5 min
with the wheel's OpenBLAS) and the 1M exact batches. Not a test: nothing is asserted, numbers
depend on the machine (and on its BLAS: the faiss-cpu wheel bundles its own OpenBLAS, whose
kernel choice drives build and batched exact times).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from monitor.reference.index import IndexParams, build_index, choose_params, search

D = 768
K = 10
BATCH = 256
CLUSTERS = 4000
RANK = 16
SHARED = 0.75  # weight of the shared direction; centres and spreads have norm ~1
SPREAD = 1.0  # scale of the within-cluster low-rank spread: clusters overlap
NOISE = 0.05  # isotropic noise (norm ~NOISE)
STORE_IVF_MIN = 200_000  # BuildOptions.ivf_min_size default: the store's own switch to IVF

Rows = npt.NDArray[np.float32]


def make_data(n: int, n_queries: int, seed: int = 0) -> tuple[Rows, Rows]:
    """(rows, queries): L2-normalised draws of one clustered, anisotropic mixture."""
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, D + 1, dtype=np.float32) ** -0.5
    spectrum /= np.linalg.norm(spectrum)
    local = np.arange(1, RANK + 1, dtype=np.float32)[:, None] ** -0.5 / np.sqrt(D)
    shared = rng.standard_normal(D, dtype=np.float32)
    shared *= SHARED / np.linalg.norm(shared)
    weights = rng.lognormal(0.0, 1.0, CLUSTERS)
    weights /= weights.sum()
    counts = rng.multinomial(n, weights)
    q_counts = rng.multinomial(n_queries, weights)
    rows = np.empty((n, D), dtype=np.float32)
    queries = np.empty((n_queries, D), dtype=np.float32)
    at = q_at = 0
    for c in range(CLUSTERS):
        r = np.random.default_rng([seed, c])
        centre = shared + r.standard_normal(D, dtype=np.float32) * spectrum
        basis = r.standard_normal((RANK, D), dtype=np.float32) * local
        m, q = int(counts[c]), int(q_counts[c])
        points = r.standard_normal((m + q, RANK), dtype=np.float32) @ (SPREAD * basis)
        points += r.standard_normal((m + q, D), dtype=np.float32) * np.float32(NOISE / np.sqrt(D))
        points += centre
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        rows[at : at + m] = points[:m]
        queries[q_at : q_at + q] = points[m:]
        at, q_at = at + m, q_at + q
    return rows, queries


def median_ms(fn: Callable[[int], object], count: int, budget_s: float) -> float:
    """Median wall time of fn(i) in ms over up to `count` calls (fewer past `budget_s`)."""
    fn(0)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
        if len(times) >= 5 and time.perf_counter() > deadline:
            break
    return 1e3 * float(np.median(times))


@dataclass
class Row:
    n: int
    store: str
    kind: str
    params: str
    build_s: float
    single_ms: float
    batch_ms: float
    recall: float | None


def time_index(
    index: Any, queries: Rows, single: int, threads: int
) -> tuple[float, float, Rows, npt.NDArray[np.int64]]:
    """(single-query ms, ms per batch of BATCH, top-K similarities and ids of all queries)."""
    faiss.omp_set_num_threads(1)
    single_ms = median_ms(lambda i: search(index, queries[i % len(queries)][None], K), single, 3)
    faiss.omp_set_num_threads(threads)
    sims = np.empty((len(queries), K), dtype=np.float32)
    ids = np.empty((len(queries), K), dtype=np.int64)
    times = []
    for start in range(0, len(queries) - BATCH + 1, BATCH):
        t0 = time.perf_counter()
        sims[start : start + BATCH], ids[start : start + BATCH] = search(
            index, queries[start : start + BATCH], K
        )
        times.append(time.perf_counter() - t0)
    rest = len(queries) - len(queries) % BATCH
    if rest < len(queries):
        sims[rest:], ids[rest:] = search(index, queries[rest:], K)
    return single_ms, 1e3 * float(np.median(times)), sims, ids


def recall_at_k(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def bench_size(
    n: int, n_queries: int, single: int, extra_nprobe: list[int], threads: int
) -> list[Row]:
    start = time.perf_counter()
    rows, queries = make_data(n, n_queries)
    print(f"\nN={n:,}: data in {time.perf_counter() - start:.1f} s", flush=True)
    store = choose_params(n, ivf_min_size=STORE_IVF_MIN).kind
    faiss.omp_set_num_threads(threads)

    start = time.perf_counter()
    exact = build_index(rows, IndexParams("flat"))
    build_s = time.perf_counter() - start
    single_ms, batch_ms, sims, truth = time_index(exact, queries, single, threads)
    pairs = np.random.default_rng(1).integers(0, n, (2, 2000))
    cos = float(np.mean(np.sum(rows[pairs[0]] * rows[pairs[1]], axis=1)))
    print(
        f"  cosine: random pair {cos:.2f}, query to 1st neighbour {sims[:, 0].mean():.2f}, "
        f"to 10th {sims[:, K - 1].mean():.2f}",
        flush=True,
    )
    out = [Row(n, store, "exact", "flat", build_s, single_ms, batch_ms, None)]
    del exact

    params = choose_params(n, ivf_min_size=0)
    start = time.perf_counter()
    ivf = build_index(rows, params)
    build_s = time.perf_counter() - start
    del rows
    print(f"  {params}: built in {build_s:.1f} s", flush=True)
    for nprobe in [params.nprobe, *(p for p in extra_nprobe if p != params.nprobe)]:
        ivf.nprobe = nprobe
        single_ms, batch_ms, _, ids = time_index(ivf, queries, single, threads)
        label = f"nlist={params.nlist} nprobe={nprobe}"
        if nprobe == params.nprobe:
            label += " (default)"
        row = Row(n, store, "ivf", label, build_s, single_ms, batch_ms, recall_at_k(ids, truth))
        out.append(row)
        build_s = float("nan")  # same index: built once
    return out


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'N':>9}  {'store':<5}  {'index':<5}  {'params':<34}  {'build s':>7}  "
        f"{'1 query ms':>10}  {'x exact':>7}  {'256 batch ms':>12}  {'ms/query':>8}  "
        f"{'x exact':>7}  {'recall@10':>9}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    exact: dict[int, Row] = {}
    for r in rows:
        if r.kind == "exact":
            exact[r.n] = r
        base = exact[r.n]
        build = "" if np.isnan(r.build_s) else f"{r.build_s:.1f}"
        recall = "" if r.recall is None else f"{r.recall:.3f}"
        print(
            f"{r.n:>9,}  {r.store:<5}  {r.kind:<5}  {r.params:<34}  {build:>7}  "
            f"{r.single_ms:>10.3f}  {base.single_ms / r.single_ms:>7.1f}  {r.batch_ms:>12.1f}  "
            f"{r.batch_ms / BATCH:>8.3f}  {base.batch_ms / r.batch_ms:>7.1f}  {recall:>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--quick", action="store_true", help="100,000 rows only")
    parser.add_argument("--queries", type=int, default=1024, help="queries for recall/batches")
    parser.add_argument("--single", type=int, default=300, help="single queries timed (max)")
    parser.add_argument("--nprobe", default="", help="extra IVF nprobe values, comma-separated")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    extra = [int(p) for p in args.nprobe.split(",") if p]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, faiss {faiss.__version__}, numpy {np.__version__}"
    )
    print(
        f"dim {D}, k {K}, {args.queries} queries; single queries on 1 thread, batches of {BATCH} "
        f"on {args.threads}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    print(
        f"data: {CLUSTERS} clusters (log-normal sizes), rank-{RANK} anisotropic spread, "
        f"shared direction {SHARED}, L2-normalised"
    )
    rows = [r for n in sizes for r in bench_size(n, args.queries, args.single, extra, args.threads)]
    print_table(rows)
    print(
        "\nstore: what choose_params picks at the store's default ivf_min_size "
        f"({STORE_IVF_MIN:,}); x exact: speed-up over exact; build: train + add."
    )


if __name__ == "__main__":
    main()
