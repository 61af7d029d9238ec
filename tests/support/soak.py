"""Steady load on a real ``mllm-monitor serve`` (records API and sidecar together) and what a
soak reads from it: per-period latencies, answers other than 2xx, serve's resident memory, the
inbox depth, and the records accounted for at the end.

The processes are :func:`tests.integration.ingest.hostile_serve.hostile_serve` (an upstream on
loopback, ``serve`` with the MiniLM text encoder, SQLite, one worker, one compute thread).
Used by tests/integration/test_soak_short.py and benchmarks/bench_soak.py.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from tests.integration.ingest.hostile_serve import AUTH, CHAT, Running, rss_bytes, wait_embedded

BATCH = 5  # records per records-API request
ROUTES = ("records", "chat")
# What can happen to a record other than being sampled and embedded (monitor.metrics).
LOST_OUTCOMES = ("skipped", "rejected", "dropped", "failed", "duplicate", "unavailable")


@dataclass
class Period:
    """What the load saw between two reads: latency (s) and non-2xx count per route, serve's
    RSS samples (bytes) and the inbox depth at the end."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rss: list[int] = field(default_factory=list)
    inbox: float = 0.0


def counter(running: Running, name: str, **labels: str) -> float:
    """A sample of serve's /metrics; 0 where the labelled child was never touched (a counter
    appears on its first increment)."""
    try:
        return running.metric(name, **labels)
    except AssertionError:
        return 0.0


def embedded(running: Running) -> float:
    return counter(running, "mllm_monitor_embedded_records_total", stream="default")


def record_outcomes(running: Running) -> dict[str, float]:
    """``mllm_monitor_records_total`` of the default stream, by outcome."""
    return {
        outcome: counter(running, "mllm_monitor_records_total", stream="default", outcome=outcome)
        for outcome in ("sampled", *LOST_OUTCOMES)
    }


class Load:
    """Two paced client threads (records API in batches of BATCH, chat completions through the
    sidecar), half the records each, writing into the current period."""

    def __init__(self, running: Running, records_per_s: float) -> None:
        self.running = running
        self.per_thread = records_per_s / 2
        self.period = Period()
        self.stop = threading.Event()
        self.accepted = 0  # records answered 2xx: each one must end up embedded
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _note(self, route: str, seconds: float, records: int, ok: bool) -> None:
        with self._lock:
            self.period.latencies[route].append(seconds)
            if ok:
                self.accepted += records
            else:
                self.period.failures[route] += 1

    def _paced(
        self, interval: float, route: str, send: Callable[[httpx.Client, int], bool]
    ) -> None:
        records = BATCH if route == "records" else 1
        with httpx.Client(timeout=60) as client:
            next_at = time.perf_counter()
            n = 0
            while not self.stop.is_set():
                started = time.perf_counter()
                ok = send(client, n)
                self._note(route, time.perf_counter() - started, records, ok)
                n += 1
                next_at += interval
                pause = next_at - time.perf_counter()
                if pause > 0:
                    self.stop.wait(pause)
                else:
                    next_at = time.perf_counter()  # behind: do not burst to catch up

    def _records(self, client: httpx.Client, n: int) -> bool:
        batch = [
            {"prompt": f"soak question {n}-{i}: what is shown here?", "response": f"it is {n}"}
            for i in range(BATCH)
        ]
        answer = client.post(
            f"{self.running.url}/v1/records", json={"records": batch}, headers=AUTH
        )
        return answer.status_code == 202

    def _chat(self, client: httpx.Client, n: int) -> bool:
        body = {**CHAT, "messages": [{"role": "user", "content": f"soak chat {n}: describe it"}]}
        answer = client.post(
            f"{self.running.url}/v1/chat/completions", json=body, headers={"x-hostile": "ok"}
        )
        return answer.status_code == 200

    def start(self) -> None:
        self._threads = [
            threading.Thread(
                target=self._paced, args=(BATCH / self.per_thread, "records", self._records)
            ),
            threading.Thread(target=self._paced, args=(1 / self.per_thread, "chat", self._chat)),
        ]
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def next_period(self, seconds: float, rss_every: float) -> Period:
        """Sample serve's RSS every ``rss_every`` s for ``seconds``; the period that ended."""
        ends = time.monotonic() + seconds
        rss: list[int] = []
        while time.monotonic() < ends:
            rss.append(rss_bytes(self.running.pid))
            time.sleep(min(rss_every, max(0.0, ends - time.monotonic())))
        with self._lock:
            done, self.period = self.period, Period()
        done.rss = rss
        done.inbox = self.running.metric("mllm_monitor_inbox_depth")
        return done


def capacity(running: Running, seconds: float = 60) -> float:
    """Records/s embedded while the soak's mix arrives faster than that: the request handling
    shares the cores with the embedding, so a backlog drained alone would overstate it."""
    load = Load(running, records_per_s=1_000)
    load.start()
    time.sleep(10)  # a backlog forms; the worker is busy from here on
    before, started = embedded(running), time.perf_counter()
    time.sleep(seconds)
    rate = (embedded(running) - before) / (time.perf_counter() - started)
    load.finish()
    wait_embedded(running, timeout=900)
    return rate


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latencies(periods: Sequence[Period], routes: Sequence[str] = ROUTES) -> list[float]:
    """Every request's latency (s) in ``periods`` on ``routes`` (both by default)."""
    return [s for period in periods for route in routes for s in period.latencies[route]]


def failures(periods: Sequence[Period]) -> int:
    return sum(sum(period.failures.values()) for period in periods)
