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
stable p99: no upward drift). Not a test; numbers depend on the machine. The load and the
readings are tests/support/soak.py's, shared with tests/integration/test_soak_short.py (about a
minute, run by CI; its long variant judges these figures).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support modules

from tests.integration.ingest.hostile_serve import MIB, hostile_serve, rss_bytes, warm_up
from tests.support.soak import Load, Period, capacity, failures, latencies, percentile


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
        load.start()
        minutes: list[Period] = []
        try:
            for index in range(int(args.minutes)):
                minute = load.next_period(60, rss_every=5)
                minutes.append(minute)
                rec, chat = minute.latencies["records"], minute.latencies["chat"]
                print(
                    f"| {index + 1} | {minute.rss[-1] / MIB:.0f} | "
                    f"{percentile(rec, 0.5) * 1e3:.1f} / {percentile(rec, 0.99) * 1e3:.1f} | "
                    f"{percentile(chat, 0.5) * 1e3:.1f} / {percentile(chat, 0.99) * 1e3:.1f} | "
                    f"{failures([minute])} | {minute.inbox:.0f} |",
                    flush=True,
                )
        finally:
            load.finish()
        judged = minutes[int(args.warm_up) :]
        after_warm_up = judged[0].rss[0]
        end = judged[-1].rss[-1]
        half = max(1, len(judged) // 2)

        def p99(part: list[Period]) -> float:
            return percentile(latencies(part), 0.99)

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
            f"{failures(minutes)}"
        )


if __name__ == "__main__":
    main()
