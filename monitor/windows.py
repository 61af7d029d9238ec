"""Window arithmetic: tumbling windows of event time, aligned to the Unix epoch. Pure.

A stream's windows are [k * size, (k + 1) * size) for every integer k, in UTC event time (the
record's own timestamp, not its arrival). A window is *due* once the wall clock has passed
its end plus the allowed lateness: records may still arrive until then. Times are handled in
whole microseconds, so alignment is exact for any size (``5m``, ``90s``, ``250ms``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from monitor.records import WindowKey

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Window ids are positive 64-bit integer keys (SQLite INTEGER, PostgreSQL BIGINT).
MAX_WINDOW_ID = 2**63 - 1
_WINDOW_ID = re.compile(r"[0-9]{1,19}")
_MICRO = timedelta(microseconds=1)


def _micros(span: timedelta) -> int:
    return span // _MICRO


def _check_size(size: timedelta) -> int:
    micros = _micros(size)
    if micros <= 0:
        raise ValueError(f"window size must be positive, got {size}")
    return micros


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment} has no time zone; use UTC")
    return moment.astimezone(UTC)


def window_start(moment: datetime, size: timedelta) -> datetime:
    """Start of the window of length ``size`` that contains ``moment``."""
    micros = _check_size(size)
    offset = _micros(_utc(moment) - EPOCH)
    return EPOCH + timedelta(microseconds=offset - offset % micros)


def window_containing(stream: str, moment: datetime, size: timedelta) -> WindowKey:
    """The window of ``stream`` that holds an event at ``moment``: start <= moment < end."""
    start = window_start(moment, size)
    return WindowKey(stream, start, start + size)


def is_due(key: WindowKey, now: datetime, lateness: timedelta) -> bool:
    """True once the wall clock has passed the window's end plus the allowed lateness."""
    return _utc(now) >= key.end + lateness


def last_due_end(now: datetime, size: timedelta, lateness: timedelta) -> datetime:
    """End of the newest window that is due at ``now`` (windows ending at or before it are)."""
    return window_start(_utc(now) - lateness, size)


def iter_windows(
    stream: str, start: datetime, end: datetime, size: timedelta
) -> Iterator[WindowKey]:
    """Consecutive windows from the one containing ``start`` up to those starting before
    ``end``."""
    current = window_start(start, size)
    end = _utc(end)
    while current < end:
        yield WindowKey(stream, current, current + size)
        current += size


def due_windows(
    stream: str,
    *,
    now: datetime,
    size: timedelta,
    lateness: timedelta,
    after: datetime | None = None,
    earliest: datetime | None = None,
    limit: int | None = None,
) -> list[WindowKey]:
    """Windows of ``stream`` that are due at ``now`` and not computed yet, oldest first.

    ``after`` is the end of the last computed window (resume from there); otherwise
    ``earliest`` is the first stored event time (catch up from its window); with neither, no
    window is due (there is no data). ``limit`` keeps the newest ``limit`` windows of a long
    gap, so a replica that was down for weeks does not spend hours on windows nobody reads.
    """
    if after is not None:
        first = window_start(after, size)
        if first < _utc(after):  # ``after`` is mid-window: that window was computed
            first += size
    elif earliest is not None:
        first = window_start(earliest, size)
    else:
        return []
    upto = last_due_end(now, size, lateness)
    if first >= upto:
        return []
    micros = _check_size(size)
    count = _micros(upto - first) // micros
    if limit is not None and count > limit:
        first = upto - limit * size
    return list(iter_windows(stream, first, upto, size))


def window_key(window_id: str) -> int | None:
    """The integer key of a window id (from a URL or the command line), or None when no
    window can have it.

    Only plain decimal digits within the database's 64-bit keys: ``int()`` alone takes
    ``+1``, ``1_0`` and non-ASCII digits, and a key past 2**63 - 1 fails in SQLite (a 500)."""
    if not _WINDOW_ID.fullmatch(window_id):
        return None
    key = int(window_id)
    return key if 0 < key <= MAX_WINDOW_ID else None
