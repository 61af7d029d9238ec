"""The relay's retry waits (pure) and its memory spool's bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from monitor.relay.forwarder import backoff_seconds, retry_after_seconds
from monitor.relay.spool import Spool


def _waits(attempts: int, retry_after: float | None = None) -> list[float]:
    rng = random.Random(0)
    return [
        backoff_seconds(a, retry_after, minimum=0.5, maximum=30.0, rng=rng) for a in range(attempts)
    ]


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    waits = _waits(12)
    for attempt, wait in enumerate(waits):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= wait <= ceiling
    assert max(waits) <= 30.0 and waits[-1] >= 15.0
    assert len(set(waits)) == len(waits), "jittered"


def test_retry_after_is_honoured_but_capped() -> None:
    assert all(w >= 7.0 for w in _waits(3, retry_after=7.0))
    assert all(w <= 30.0 for w in _waits(3, retry_after=3600.0))


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert _waits(2000)[-1] <= 30.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), (" 0 ", 0.0), (None, None), ("", None), ("soon", None), ("-3", None)],
)
def test_retry_after_header_in_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_header_as_a_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(later, now) == pytest.approx(90.0)
    earlier = (now - timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_seconds(earlier, now) == 0.0


def test_memory_spool_bounds_records_and_bytes_in_order() -> None:
    spool = Spool(max_records=3, max_bytes=1024)
    assert spool.append([b"a", b"b"]) == 2
    assert spool.append([b"c", b"d"]) == 1  # the fourth does not fit
    assert spool.peek(10, 1024) == [b"a", b"b", b"c"]
    spool.ack(2)
    assert (spool.records, spool.bytes) == (1, 1)
    small = Spool(max_records=100, max_bytes=10)
    assert small.append([b"x" * 6, b"y" * 6]) == 1
    assert small.peek(10, 4) == [b"x" * 6], "one line larger than a batch still goes alone"
