"""Window arithmetic: epoch alignment, lateness, due windows and catch-up."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from monitor.records import WindowKey
from monitor.windows import (
    due_windows,
    is_due,
    iter_windows,
    last_due_end,
    window_containing,
    window_start,
)

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
FIVE = timedelta(minutes=5)


def test_windows_are_aligned_to_the_epoch_and_half_open() -> None:
    assert window_start(T0 + timedelta(minutes=7, seconds=30), FIVE) == T0 + FIVE
    assert window_start(T0, FIVE) == T0  # a start belongs to its own window
    key = window_containing("s", T0 + FIVE - timedelta(microseconds=1), FIVE)
    assert key == WindowKey("s", T0, T0 + FIVE)
    # 90 s windows: aligned on the epoch, not the hour.
    odd = timedelta(seconds=90)
    start = window_start(T0, odd)
    assert (start - datetime(1970, 1, 1, tzinfo=UTC)) % odd == timedelta(0)
    assert start <= T0 < start + odd
    # Other zones are converted to UTC; naive times are refused.
    plus_two = T0.astimezone(__import__("datetime").timezone(timedelta(hours=2)))
    assert window_start(plus_two, FIVE) == T0
    with pytest.raises(ValueError, match="naive"):
        window_start(datetime(2026, 1, 1), FIVE)
    with pytest.raises(ValueError, match="positive"):
        window_start(T0, timedelta(0))


def test_sub_second_sizes_align_exactly() -> None:
    size = timedelta(milliseconds=250)
    moment = T0 + timedelta(seconds=1, milliseconds=260)
    assert window_start(moment, size) == T0 + timedelta(seconds=1, milliseconds=250)


def test_due_once_wall_clock_passes_end_plus_lateness() -> None:
    key = WindowKey("s", T0, T0 + FIVE)
    late = timedelta(minutes=1)
    assert not is_due(key, T0 + FIVE, late)
    assert not is_due(key, T0 + FIVE + late - timedelta(microseconds=1), late)
    assert is_due(key, T0 + FIVE + late, late)
    assert last_due_end(T0 + FIVE + late, FIVE, late) == T0 + FIVE
    assert last_due_end(T0 + FIVE + late - timedelta(seconds=1), FIVE, late) == T0


def test_due_windows_resume_after_the_last_computed_one() -> None:
    now = T0 + 4 * FIVE + timedelta(seconds=10)
    due = due_windows("s", now=now, size=FIVE, lateness=timedelta(0), after=T0 + FIVE)
    assert [w.start for w in due] == [T0 + FIVE, T0 + 2 * FIVE, T0 + 3 * FIVE]
    # Nothing new computed: nothing due until the next window closes.
    assert due_windows("s", now=now, size=FIVE, lateness=timedelta(0), after=T0 + 4 * FIVE) == []
    # The lateness holds the newest window back.
    held = due_windows("s", now=now, size=FIVE, lateness=timedelta(minutes=1), after=T0 + FIVE)
    assert [w.start for w in held] == [T0 + FIVE, T0 + 2 * FIVE]


def test_catch_up_from_the_earliest_sample_and_its_limit() -> None:
    now = T0 + 10 * FIVE
    earliest = T0 + timedelta(minutes=3)
    due = due_windows("s", now=now, size=FIVE, lateness=timedelta(0), earliest=earliest)
    assert len(due) == 10 and due[0].start == T0 and due[-1].end == now
    assert all(a.end == b.start for a, b in itertools.pairwise(due))
    newest = due_windows("s", now=now, size=FIVE, lateness=timedelta(0), earliest=earliest, limit=3)
    assert [w.start for w in newest] == [T0 + 7 * FIVE, T0 + 8 * FIVE, T0 + 9 * FIVE]
    assert due_windows("s", now=now, size=FIVE, lateness=timedelta(0)) == []  # no data


def test_iter_windows_covers_a_range() -> None:
    keys = list(iter_windows("s", T0 + timedelta(minutes=1), T0 + 2 * FIVE, FIVE))
    assert [k.start for k in keys] == [T0, T0 + FIVE]
