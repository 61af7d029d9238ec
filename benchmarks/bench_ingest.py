"""Records API benchmark: accepted records/s over real HTTP on loopback, SQLite and PostgreSQL.

Run: MLLM_MONITOR_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASS@127.0.0.1:5432/DB \\
     python benchmarks/bench_ingest.py [--records 20000] [--batch 100] [--concurrency 4]
     [--image-bytes 0]

The app (``monitor.ingest.app.create_app``) is served by uvicorn on 127.0.0.1 in this
process; the load comes from a separate process (so client and server do not share a GIL),
CONCURRENCY connections each POSTing ``{"records": [...]}`` batches of BATCH text records
(about 300 characters of prompt and answer; ``--image-bytes N`` adds an inline PNG of about N
bytes to every record). Sample rate 1.0: every record is written to the durable inbox before
its 202. Embedding is not part of it (no workers run). A record counts once its batch got its
202; the inbox depth is checked against that count at the end. SQLite runs on a temporary
file, PostgreSQL on a database created for the run (the role needs CREATEDB) and dropped
after; without the variable only SQLite runs. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from monitor.config import IngestSettings, Settings, StreamSettings
from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"


@dataclass
class Result:
    backend: str
    records: int
    seconds: float
    p50_ms: float
    p99_ms: float
    inbox: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    name = f"bench_ingest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def serve(app: Any) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def image_data_url(size: int) -> str | None:
    if size <= 0:
        return None
    side = max(8, int((size / 3) ** 0.5))
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bodies(prefix: str, n_batches: int, batch: int, image: str | None) -> list[bytes]:
    out = []
    for b in range(n_batches):
        records = []
        for i in range(batch):
            record: dict[str, Any] = {
                "id": f"{prefix}-{b}-{i}",
                "timestamp": "2025-03-01T12:00:00Z",
                "model": "llava-1.5-7b",
                "prompt": f"Question {b}/{i}: what is happening in this picture, in detail? " * 2,
                "response": "A person rides a bicycle along a river at sunset, past boats. " * 2,
            }
            if image is not None:
                record["image"] = image
            records.append(record)
        out.append(json.dumps({"records": records}).encode())
    return out


def load(url: str, payloads: list[bytes], concurrency: int, out: Any) -> None:
    """Client process: POST every payload over ``concurrency`` connections."""
    latencies: list[float] = []
    failures: list[str] = []
    accepted = [0]
    lock = threading.Lock()
    queue = list(reversed(payloads))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    payload = queue.pop()
                started = time.perf_counter()
                answer = http.post(
                    "/v1/records", content=payload, headers={"content-type": "application/json"}
                )
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if answer.status_code == 202:
                        accepted[0] += answer.json()["sampled"]
                    else:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((accepted[0], time.perf_counter() - started, latencies, failures[:3]))


def run(backend: str, url: str, args: argparse.Namespace) -> Result:
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    repository = Repository(engine)
    settings = Settings(
        streams=[StreamSettings(name="default")],
        ingest=IngestSettings(max_inbox_depth=10 * args.records + 1000),
    )
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    app = create_app(settings, repository, metrics)
    n_batches = max(1, args.records // args.batch)
    payloads = bodies(backend, n_batches, args.batch, image_data_url(args.image_bytes))
    warmup = bodies(f"{backend}-warm", 4, args.batch, None)
    ctx = multiprocessing.get_context("spawn")
    try:
        with serve(app) as base:
            with httpx.Client(base_url=base) as http:
                for payload in warmup:
                    http.post(
                        "/v1/records", content=payload, headers={"content-type": "application/json"}
                    )
            out = ctx.Queue()
            client = ctx.Process(target=load, args=(base, payloads, args.concurrency, out))
            client.start()
            accepted, seconds, latencies, failures = out.get(timeout=1800)
            client.join()
        if failures:
            print(f"  {backend}: {len(failures)}+ failed batches, e.g. {failures[0]}")
        inbox = repository.inbox_depth() - 4 * args.batch
        ordered = sorted(latencies)
        return Result(
            backend=backend,
            records=accepted,
            seconds=seconds,
            p50_ms=statistics.median(ordered) * 1000,
            p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
            inbox=inbox,
        )
    finally:
        repository.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--image-bytes", type=int, default=0, help="inline PNG size per record")
    args = parser.parse_args()
    print(
        f"bench_ingest: {args.records:,} records in batches of {args.batch}, "
        f"{args.concurrency} connections, image {args.image_bytes or 'none'}; "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    results = []
    with sqlite_url() as url:
        results.append(run("sqlite", url, args))
    admin = os.environ.get(POSTGRES_ENV)
    if admin:
        with postgres_url(admin) as url:
            results.append(run("postgresql", url, args))
    else:
        print(f"({POSTGRES_ENV} not set: PostgreSQL skipped)")
    print(
        f"{'backend':12}{'records':>10}{'seconds':>10}{'records/s':>12}{'batch p50 ms':>14}"
        f"{'batch p99 ms':>14}{'in inbox':>10}"
    )
    for r in results:
        print(
            f"{r.backend:12}{r.records:>10,}{r.seconds:>10.2f}{r.rate:>12,.0f}{r.p50_ms:>14.1f}"
            f"{r.p99_ms:>14.1f}{r.inbox:>10,}"
        )


if __name__ == "__main__":
    main()
