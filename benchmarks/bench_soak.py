"""Soak: a real ``mllm-monitor serve`` under steady load near its capacity, for minutes.

Run (from the repository root):
    python benchmarks/bench_soak.py [--minutes 10] [--warm-up 2] [--load 0.8]

Two processes besides this one, as in bench_hostile_memory.py: an upstream answering chat
completions on loopback, and ``serve`` in front of it (SQLite, the MiniLM text encoder, images
off, one embedding worker, one compute thread, the sidecar relaying ``/v1/chat/completions``).

1. Capacity: the mix below sent faster than it can be embedded, for a minute; the records/s
   embedded meanwhile (``mllm_monitor_embedded_records_total``) is the capacity, with the
   request handling competing for the same cores (at that overload the handling takes more
   than at the soak's rate, so this is a lower bound). Then the inbox drains.
2. Soak: LOAD x capacity records/s for MINUTES minutes, half through the records API (batches
   of 5) and half as chat completions through the sidecar (each one sampled into a record), at
   a steady pace from two client threads.

Reported per minute: serve's resident memory, p50 / p99 latency of each route, answers other
than 2xx, and the inbox depth. Then RSS at start, after the warm-up and at the end, the growth
after the warm-up (target under 5%), and the p99 of the first and second halves after it (a
stable p99: no upward drift). Not a test; numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support modules

from tests.integration.ingest.hostile_serve import (
    AUTH,
    CHAT,
    MIB,
    Running,
    hostile_serve,
    rss_bytes,
    wait_embedded,
    warm_up,
)

BATCH = 5  # records per records-API request


@dataclass
class Minute:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rss: list[int] = field(default_factory=list)
    inbox: float = 0.0


def embedded(running: Running) -> float:
    return running.metric("mllm_monitor_embedded_records_total", stream="default")


def capacity(running: Running, seconds: float = 60) -> float:
    """Records/s embedded while the soak's mix arrives faster than that: the request handling
    shares the cores with the embedding, so a backlog drained alone would overstate it."""
    load = Load(running, records_per_s=1_000)
    threads = load.start()
    time.sleep(10)  # a backlog forms; the worker is busy from here on
    before, started = embedded(running), time.perf_counter()
    time.sleep(seconds)
    rate = (embedded(running) - before) / (time.perf_counter() - started)
    load.stop.set()
    for thread in threads:
        thread.join()
    wait_embedded(running, timeout=900)
    return rate


class Load:
    """Two paced client threads (records API, sidecar) writing into the current minute."""

    def __init__(self, running: Running, records_per_s: float) -> None:
        self.running = running
        self.per_thread = records_per_s / 2
        self.minute = Minute()
        self.stop = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()

    def _note(self, route: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self.minute.latencies[route].append(seconds)
            if not ok:
                self.minute.failures[route] += 1

    def _paced(self, interval: float, send: Callable[[httpx.Client, int], bool]) -> None:
        with httpx.Client(timeout=60) as client:
            next_at = time.perf_counter()
            n = 0
            while not self.stop.is_set():
                started = time.perf_counter()
                ok = send(client, n)
                self._note(send.__name__, time.perf_counter() - started, ok)
                n += 1
                next_at += interval
                pause = next_at - time.perf_counter()
                if pause > 0:
                    self.stop.wait(pause)
                else:
                    next_at = time.perf_counter()  # behind: do not burst to catch up

    def records(self, client: httpx.Client, n: int) -> bool:
        batch = [
            {"prompt": f"soak question {n}-{i}: what is shown here?", "response": f"it is {n}"}
            for i in range(BATCH)
        ]
        answer = client.post(
            f"{self.running.url}/v1/records", json={"records": batch}, headers=AUTH
        )
        return answer.status_code == 202

    def chat(self, client: httpx.Client, n: int) -> bool:
        body = {**CHAT, "messages": [{"role": "user", "content": f"soak chat {n}: describe it"}]}
        answer = client.post(
            f"{self.running.url}/v1/chat/completions", json=body, headers={"x-hostile": "ok"}
        )
        return answer.status_code == 200

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._paced, args=(BATCH / self.per_thread, self.records)),
            threading.Thread(target=self._paced, args=(1 / self.per_thread, self.chat)),
        ]
        for thread in threads:
            thread.start()
        return threads

    def next_minute(self) -> Minute:
        with self._lock:
            done, self.minute = self.minute, Minute()
        return done


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warm-up", type=float, default=2, help="minutes not judged")
    parser.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp, hostile_serve(Path(tmp)) as running:
        warm_up(running)
        rss_start = rss_bytes(running.pid)
        rate = capacity(running)
        load = Load(running, args.load * rate)
        print(
            f"capacity {rate:.1f} records/s; soak at {args.load:.0%}: {args.load * rate:.1f} "
            f"records/s for {args.minutes:g} min (warm-up {args.warm_up:g} min)"
        )
        print("| min | RSS MiB | records p50 / p99 ms | chat p50 / p99 ms | not 2xx | inbox |")
        print("|---:|---:|---:|---:|---:|---:|")
        threads = load.start()
        minutes: list[Minute] = []
        try:
            for index in range(int(args.minutes)):
                ends = time.monotonic() + 60
                rss: list[int] = []
                while time.monotonic() < ends:
                    rss.append(rss_bytes(running.pid))
                    time.sleep(5)
                minute = load.next_minute()
                minute.rss = rss
                minute.inbox = running.metric("mllm_monitor_inbox_depth")
                minutes.append(minute)
                rec, chat = minute.latencies["records"], minute.latencies["chat"]
                print(
                    f"| {index + 1} | {rss[-1] / MIB:.0f} | {percentile(rec, 0.5) * 1e3:.1f} / "
                    f"{percentile(rec, 0.99) * 1e3:.1f} | {percentile(chat, 0.5) * 1e3:.1f} / "
                    f"{percentile(chat, 0.99) * 1e3:.1f} | {sum(minute.failures.values())} | "
                    f"{minute.inbox:.0f} |",
                    flush=True,
                )
        finally:
            load.stop.set()
            for thread in threads:
                thread.join()
        judged = minutes[int(args.warm_up) :]
        after_warm_up = judged[0].rss[0]
        end = judged[-1].rss[-1]
        half = max(1, len(judged) // 2)

        def p99(part: list[Minute]) -> float:
            return percentile(
                [s for m in part for r in ("records", "chat") for s in m.latencies[r]], 0.99
            )

        print(
            f"\nRSS: start {rss_start / MIB:.0f} MiB, "
            f"after warm-up {after_warm_up / MIB:.0f} MiB, "
            f"end {end / MIB:.0f} MiB; "
            f"growth after warm-up {100 * (end / after_warm_up - 1):+.1f}% (target < 5%)"
        )
        print(
            f"p99 of both routes: first half {p99(judged[:half]) * 1e3:.1f} ms, second half "
            f"{p99(judged[half:] or judged) * 1e3:.1f} ms; median inbox depth "
            f"{statistics.median(m.inbox for m in judged):.0f}; answers not 2xx "
            f"{sum(sum(m.failures.values()) for m in minutes)}"
        )


if __name__ == "__main__":
    main()
