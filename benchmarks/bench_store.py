"""Storage benchmark: bulk insert and one window read, SQLite and PostgreSQL side by side.

Run: MLLM_MONITOR_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASS@127.0.0.1:5432/DB \\
     python benchmarks/bench_store.py [--samples 100000] [--window 10000] [--dim 768]

Inserts SAMPLES samples with four DIM-d embeddings each (image, prompt, response, reference:
float16 blobs) through ``Repository.add_samples`` in batches, then reads back one window of
WINDOW samples with ``Repository.iter_embeddings`` (all four kinds, decoded to float32).
SQLite runs on a temporary file; PostgreSQL on a database created for the run (the role in the
URL needs CREATEDB) and dropped after. Without the variable only SQLite runs.
Not a test: nothing is asserted, numbers depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from monitor.records import EMBEDDING_KINDS
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from monitor.store.types import NewSample

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
T0 = datetime(2025, 3, 1, tzinfo=UTC)
STEP = timedelta(milliseconds=30)  # 10,000 samples = one 5-minute window


@dataclass
class Result:
    backend: str
    insert_s: float
    read_s: float
    read_rows: int
    size_mb: float | None


@contextmanager
def sqlite_url() -> Iterator[tuple[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        path = Path(tmp) / "bench.db"
        yield f"sqlite:///{path}", path


@contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"mllm_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def vector_pool(dim: int, size: int = 4096) -> np.ndarray:
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((size, dim)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    return pool.astype(np.float16)


def batches(n: int, batch: int, pool: np.ndarray) -> Iterator[list[NewSample]]:
    for start in range(0, n, batch):
        samples = []
        for i in range(start, min(n, start + batch)):
            samples.append(
                NewSample(
                    id=f"rec-{i:08d}",
                    stream="bench",
                    event_time=T0 + i * STEP,
                    encoder_fingerprint="bench",
                    embeddings={
                        kind: pool[(4 * i + k) % len(pool)]
                        for k, kind in enumerate(EMBEDDING_KINDS)
                    },
                    model="bench-model",
                    prompt_sha256="0" * 64,
                    response_sha256="1" * 64,
                    has_image=True,
                    has_reference=True,
                    ood_score=float(i % 97),
                )
            )
        yield samples


def run(backend: str, url: str, args: argparse.Namespace, pool: np.ndarray) -> Result:
    engine = create_db_engine(url)
    try:
        migrate.upgrade(engine)
        repo = Repository(engine)
        repo.ensure_stream("bench")
        start = time.perf_counter()
        for samples in batches(args.samples, args.batch, pool):
            repo.add_samples(samples)
        insert_s = time.perf_counter() - start

        first = (args.samples - args.window) // 2  # a window in the middle of the data
        begin, end = T0 + first * STEP, T0 + (first + args.window) * STEP
        start = time.perf_counter()
        rows = 0
        for chunk in repo.iter_embeddings("bench", begin, end, chunk_size=2048):
            rows += len(chunk)
            assert all(
                chunk.vectors[kind].shape == (len(chunk), args.dim) for kind in EMBEDDING_KINDS
            )
        read_s = time.perf_counter() - start
        size_mb = None
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                size = conn.exec_driver_sql("SELECT pg_database_size(current_database())")
                size_mb = size.scalar_one() / 1e6
        return Result(backend, insert_s, read_s, rows, size_mb)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=1000, help="samples per add_samples call")
    args = parser.parse_args()
    pool = vector_pool(args.dim)
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.samples:,} samples x {len(EMBEDDING_KINDS)} embeddings of {args.dim} dims "
        f"(float16, {2 * args.dim} bytes each), batches of {args.batch:,}; "
        f"read: one window of {args.window:,} samples, all four kinds"
    )
    results: list[Result] = []
    with sqlite_url() as (url, path):
        result = run("SQLite (file, WAL)", url, args, pool)
        wal = path.with_name(path.name + "-wal")
        result.size_mb = (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6
        results.append(result)
    admin = os.environ.get(POSTGRES_ENV)
    if admin:
        with postgres_url(admin) as url:
            results.append(run("PostgreSQL (psycopg 3)", url, args, pool))
    else:
        print(f"({POSTGRES_ENV} not set: PostgreSQL skipped)")

    header = f"{'':34}" + "".join(f"{r.backend:>26}" for r in results)
    print(header)
    lines = {
        "insert, total s": [f"{r.insert_s:.1f}" for r in results],
        "insert, samples/s": [f"{args.samples / r.insert_s:,.0f}" for r in results],
        "insert, embedding rows/s": [
            f"{args.samples * len(EMBEDDING_KINDS) / r.insert_s:,.0f}" for r in results
        ],
        f"read {args.window:,}-sample window, ms": [f"{1000 * r.read_s:,.0f}" for r in results],
        "read, samples/s": [f"{r.read_rows / r.read_s:,.0f}" for r in results],
        "read, samples returned": [f"{r.read_rows:,}" for r in results],
        "database size, MB": [f"{r.size_mb:,.0f}" if r.size_mb else "?" for r in results],
    }
    for label, values in lines.items():
        print(f"{label:34}" + "".join(f"{v:>26}" for v in values))
    if len(results) == 2:
        sq, pg = results
        print(
            f"PostgreSQL / SQLite: insert {sq.insert_s / pg.insert_s:.2f}x the speed, "
            f"window read {sq.read_s / pg.read_s:.2f}x the speed"
        )


if __name__ == "__main__":
    main()
