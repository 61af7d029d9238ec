"""Window throughput with 1, 2 and 3 replicas on one PostgreSQL database (per-stream leadership),
and a replica killed mid-window.

    python benchmarks/bench_replicas.py [--streams 60] [--windows 2] [--samples 500] [--dim 128]
        [--replicas 1,2,3] [--no-kill] [--database-url postgresql+psycopg://...]

The database URL (default: $MLLM_MONITOR_TEST_POSTGRES_URL) must let its role create databases:
the benchmark creates one of its own and drops it at the end. Set-up: a reference store with
every term on (the deterministic stand-in encoder of ``bench_windows.py``, CLUB, calibrated),
``--streams`` busy streams each with ``--windows`` due windows of ``--samples`` stored samples.

Each run deletes the computed windows, starts R replica processes (each a real
``WindowScheduler`` on a repository of its own, ``[compute] threads = 1``, ticking in a loop),
waits until every one is ready (imports, stores loaded), starts them together and times until
every due window is stored. Printed per run: seconds, windows/s, the speed-up over one replica,
windows computed in all (more than the due windows would mean one was computed twice), how the
streams were shared, and where the CPU went (replicas vs PostgreSQL's processes), which is what
sets the ceiling on a machine with few cores.

Before the clock starts the replicas share the streams (three leadership rounds, no windows),
as running replicas have when windows fall due.

The kill run starts two replicas, SIGKILLs one when a third of the windows are stored (it is
mid-window: each replica computes without pause), and checks that
every window is stored once, that each stream's detector states form one chain, and how soon
the dead replica's streams were computed by the other.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_windows import build_reference  # noqa: E402

from monitor.config import Settings  # noqa: E402
from monitor.detection.detector import Detector  # noqa: E402
from monitor.store import migrate  # noqa: E402
from monitor.store.engine import engine_from_settings  # noqa: E402
from monitor.store.repository import open_repository  # noqa: E402
from monitor.store.types import NewSample  # noqa: E402
from monitor.windows import window_start  # noqa: E402
from tests.integration.databases import drop_database  # noqa: E402

SIZE = timedelta(hours=1)  # long windows: no new window falls due while the benchmark runs
POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"


def make_settings(url: str, refs: Path, streams: int) -> Settings:
    return Settings(
        database={"url": url},
        reference={"root": str(refs)},
        streams=[{"name": f"s{i:03d}", "reference": "bench"} for i in range(streams)],
        windows={"size": "1h", "lateness": "0s", "min_samples": 50},
        alerts={"false_alarm_rate": 0.05},
        compute={"threads": 1},
        scheduler={"check_interval": "1s", "lock_timeout": "5s"},
    )


# -- a replica process ---------------------------------------------------------------------


def replica_main(url: str, refs: Path, streams: int) -> None:
    """Load everything, say ready, wait for "go" on stdin, then tick until told to stop; one
    JSON line per computed window, and a summary at the end."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics import MonitorMetrics
    from monitor.reference import load_store
    from monitor.scheduler import WindowScheduler

    logging.disable(logging.WARNING)  # the parent reports; a replica's errors still show
    settings = make_settings(url, refs, streams)
    names = [s.name for s in settings.streams]
    repo = open_repository(settings)
    store = load_store(refs, "bench")
    scheduler = WindowScheduler(
        settings, repo, dict.fromkeys(names, store), MonitorMetrics(CollectorRegistry(), names)
    )
    for name in names:
        scheduler.pipeline.model(name)  # built before the clock starts, as a warm replica has
    compute = scheduler.pipeline.compute

    def counted(key: Any, **kwargs: Any) -> Any:
        result = compute(key, **kwargs)
        print(json.dumps({"stream": key.stream, "at": time.time()}), flush=True)
        return result

    scheduler.pipeline.compute = counted  # type: ignore[method-assign]
    take_over = scheduler._take_over

    def taken(stream: str) -> None:
        print(json.dumps({"took": stream, "at": time.time()}), flush=True)
        take_over(stream)

    scheduler._take_over = taken  # type: ignore[method-assign]
    stop = threading.Event()
    print("ready", flush=True)
    while sys.stdin.readline().strip() == "lead":
        # Steady state: replicas that run share the streams before windows fall due. (The
        # scheduler's own leadership step, without a window pass.)
        scheduler._lead()
        print(json.dumps({"led": list(scheduler.led)}), flush=True)

    def stop_on_line() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=stop_on_line, daemon=True).start()
    cpu0 = time.process_time()
    while not stop.is_set():
        if scheduler.tick() == 0:
            time.sleep(0.05)
    print(
        json.dumps({"done": True, "cpu": time.process_time() - cpu0}),
        flush=True,
    )
    scheduler.stop(5)
    repo.close()


# -- the parent ----------------------------------------------------------------------------


@dataclass
class Replica:
    process: subprocess.Popen[str]
    computed: list[tuple[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    led: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    share: list[str] = field(default_factory=list)  # streams led when the clock started
    took: list[tuple[str, float]] = field(default_factory=list)  # streams taken over, when

    def read(self, stdout: IO[str]) -> None:
        for line in stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.startswith("{"):
                entry = json.loads(line)
                if "done" in entry:
                    self.summary = entry
                elif "took" in entry:
                    self.took.append((entry["took"], entry["at"]))
                elif "led" in entry:
                    self.share = entry["led"]
                    self.led.release()
                else:
                    self.computed.append((entry["stream"], entry["at"]))


def start_replicas(count: int, url: str, refs: Path, streams: int) -> list[Replica]:
    replicas = []
    for _ in range(count):
        process = subprocess.Popen(
            [sys.executable, __file__, "--replica", url, str(refs), str(streams)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        replica = Replica(process)
        assert process.stdout is not None
        threading.Thread(target=replica.read, args=(process.stdout,), daemon=True).start()
        replicas.append(replica)
    for replica in replicas:
        if not replica.ready.wait(300):
            raise SystemExit("a replica did not get ready in 300 s")
    for _ in range(3):  # join, then give back and take shares: settled after three rounds
        for replica in replicas:
            send(replica, "lead")
            if not replica.led.acquire(timeout=60):
                raise SystemExit("a replica did not take its share in 60 s")
    return replicas


def send(replica: Replica, line: str) -> None:
    if replica.process.poll() is None and replica.process.stdin is not None:
        replica.process.stdin.write(line + "\n")
        replica.process.stdin.flush()


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stored_windows(engine: Any, before: datetime) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM windows WHERE window_start < :before"),
                {"before": before},
            ).scalar_one()
        )


def reset_windows(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM risk_transitions"))
        conn.execute(text("DELETE FROM windows"))


@dataclass
class Run:
    replicas: int
    seconds: float
    computed: int
    shares: list[int]
    replica_cpu: float
    postgres_cpu: float


def timed_run(
    count: int, url: str, refs: Path, streams: int, engine: Any, due: int, end: datetime
) -> Run:
    reset_windows(engine)
    replicas = start_replicas(count, url, refs, streams)
    pg0 = postgres_cpu_seconds()
    t0 = time.perf_counter()
    for replica in replicas:
        send(replica, "go")
    while stored_windows(engine, end) < due:
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    pg = postgres_cpu_seconds() - pg0
    for replica in replicas:
        send(replica, "stop")
    for replica in replicas:
        replica.process.wait(60)
    time.sleep(0.2)  # the readers take the last lines
    return Run(
        count,
        seconds,
        sum(len(r.computed) for r in replicas),
        [len(r.share) for r in replicas],
        sum(float(r.summary.get("cpu", 0.0)) for r in replicas),
        pg,
    )


def check_chains(settings: Settings, end: datetime, windows: int) -> None:
    """Every stream: its due windows stored once each, back to back, and one detector chain."""
    repo = open_repository(settings)
    try:
        for stream in (s.name for s in settings.streams):
            stored = [w for w in repo.get_windows(stream) if w.key.start < end]
            starts = [w.key.start for w in stored]
            assert len(stored) == windows and len(set(starts)) == windows, (stream, starts)
            assert all(a.key.end == b.key.start for a, b in itertools.pairwise(stored)), stream
            state = None
            for window in stored:
                reading = window.detector
                assert reading is not None, window.key
                state = Detector.for_threshold(reading.threshold).step(state, reading.score)
                assert abs(state.statistic - reading.statistic) < 1e-9, window.key
                assert state.alarmed == reading.alarmed, window.key
    finally:
        repo.close()


def kill_run(
    url: str, refs: Path, settings: Settings, engine: Any, due: int, end: datetime, windows: int
) -> None:
    reset_windows(engine)
    a, b = start_replicas(2, url, refs, len(settings.streams))
    for replica in (a, b):
        send(replica, "go")
    while stored_windows(engine, end) < due // 3:
        time.sleep(0.02)
    victim, survivor = a, b
    victim_streams = set(victim.share)
    killed_at = time.time()
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(30)
    while stored_windows(engine, end) < due:
        time.sleep(0.05)
    send(survivor, "stop")
    survivor.process.wait(60)
    time.sleep(0.2)  # the readers take the last lines
    took = [t for s, t in survivor.took if s in victim_streams and t > killed_at]
    computed_at = [t for s, t in survivor.computed if s in victim_streams and t > killed_at]
    check_chains(settings, end, windows)
    computed = len(victim.computed) + len(survivor.computed)
    print(
        f"kill: SIGKILLed the replica leading {len(victim_streams)} streams mid-window, after "
        f"{len(victim.computed)} windows; the other took all {len(took)} of those streams over "
        f"{max(took) - killed_at:.2f} s later (mid-pass) and computed their first window "
        f"{min(computed_at) - killed_at:.2f} s later (after the streams its pass was on); all "
        f"{due} windows stored once, each stream's detector states one chain; windows computed "
        f"in all: {computed}"
    )


def fill(settings: Settings, base: datetime, windows: int, samples: int, dim: int) -> None:
    repo = open_repository(settings)
    rng = np.random.default_rng(0)
    try:
        for stream in (s.name for s in settings.streams):
            for w in range(windows):
                start = base + w * SIZE
                vectors = {
                    kind: rng.standard_normal((samples, dim)).astype(np.float32)
                    for kind in ("image", "prompt", "response", "reference")
                }
                for rows in vectors.values():
                    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
                repo.add_samples(
                    [
                        NewSample(
                            id=f"{stream}-{w}-{i}",
                            stream=stream,
                            event_time=start + SIZE * (i + 0.5) / samples,
                            encoder_fingerprint="stand-in",
                            embeddings={kind: vectors[kind][i] for kind in vectors},
                            has_image=True,
                            has_reference=True,
                            ood_score=float(rng.random()),
                        )
                        for i in range(samples)
                    ]
                )
    finally:
        repo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--windows", type=int, default=4, help="due windows per stream")
    parser.add_argument("--samples", type=int, default=500, help="samples per window")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get(POSTGRES_ENV, ""))
    args = parser.parse_args()
    if not args.database_url:
        raise SystemExit(
            f"give --database-url or set {POSTGRES_ENV} (a role that may CREATE DATABASE)"
        )
    admin_url = make_url(args.database_url)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"mllm_bench_replicas_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            refs = Path(tmp) / "refs"
            t0 = time.perf_counter()
            build_reference(refs, args.dim, 2_000, detector_window=SIZE)
            settings = make_settings(url, refs, args.streams)
            engine = engine_from_settings(settings.database)
            migrate.upgrade(engine)
            base = window_start(datetime.now(UTC), SIZE) - args.windows * SIZE
            fill(settings, base, args.windows, args.samples, args.dim)
            due, end = args.streams * args.windows, base + args.windows * SIZE
            print(
                f"{args.streams} streams x {args.windows} due windows of {args.samples} samples "
                f"(d = {args.dim}, every term, CLUB, 200 resamples); set-up "
                f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs; PostgreSQL "
                f"{engine.dialect.server_version_info}"
            )
            header = (
                "replicas",
                "seconds",
                "windows/s",
                "speed-up",
                "computed",
                "streams led",
                "replica CPU s",
                "PostgreSQL CPU s",
            )
            print("  ".join(f"{h:>13}" for h in header))
            one: float | None = None
            for count in (int(c) for c in args.replicas.split(",")):
                run = timed_run(count, url, refs, args.streams, engine, due, end)
                if count == 1:
                    one = run.seconds
                speedup = (one / run.seconds) if one else float("nan")
                print(
                    f"{run.replicas:>13}  {run.seconds:>13.1f}  {due / run.seconds:>13.2f}  "
                    f"{speedup:>12.2f}x  {run.computed:>13}  {'/'.join(map(str, run.shares)):>13}  "
                    f"{run.replica_cpu:>13.1f}  {run.postgres_cpu:>16.1f}"
                )
                check_chains(settings, end, args.windows)
            if not args.no_kill:
                kill_run(url, refs, settings, engine, due, end, args.windows)
            engine.dispose()
    finally:
        drop_database(admin, name)
        admin.dispose()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--replica":
        replica_main(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
