"""Points in time from untrusted text or numbers: RFC 3339 or epoch seconds, always UTC.

    parse_instant(value) -> datetime   (aware, UTC, 1970-01-01 <= t < 9000-01-01)
    parse_time(text) -> datetime       (parse_instant, or ``now`` / ``-6h`` relative to now)

One parser for the records API, the windows API and the CLI, so that one hostile input cannot
get through one door and crash another. Every failure is a :class:`ValueError` whose message
says what was wrong (callers add the field or option name); nothing else escapes: an offset
that pushes a time past year 1 or 9999 (``OverflowError`` in ``astimezone``), an epoch of 400
digits (``OverflowError`` in ``float``/``math.isfinite``), an int too large for C, NaN.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

#: Earliest and latest instants accepted: anything outside is a typo or an attack, and keeping
#: a margin from datetime's own limits means arithmetic on windows (size, lateness) cannot
#: overflow either.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_LATEST_EPOCH = (LATEST - EARLIEST).total_seconds()
#: Longest string taken as a time: an RFC 3339 time with nanoseconds and an offset is ~35.
MAX_TIME_CHARS = 64

EXAMPLE = "2026-03-01T12:00:00Z"


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the default clock of the repository and the scheduler)."""
    return datetime.now(UTC)


def parse_instant(value: str | int | float, *, naive_is_utc: bool = False) -> datetime:
    """``value`` as an aware UTC datetime; raises ValueError (never anything else).

    Strings are RFC 3339 (``Z``/``z`` or an offset) or epoch seconds; numbers are epoch
    seconds. A string time without a zone is refused unless ``naive_is_utc``."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        # repr of a huge int is slow or refused (int max str digits): name it, do not print it
        shown = _shown(value) if not isinstance(value, int) or abs(value) < 10**30 else "a number"
        return _from_epoch(value, shown)
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a time")
    text = value.strip()
    if len(text) > MAX_TIME_CHARS:
        raise ValueError(f"too long for a time ({len(text)} characters)")
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return _from_epoch(seconds, _shown(value))
    try:
        moment = datetime.fromisoformat(text.upper())  # RFC 3339 allows t and z
    except ValueError as exc:
        raise ValueError(f"{_shown(value)} is not an RFC 3339 time (like {EXAMPLE})") from exc
    if moment.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"{_shown(value)} has no time zone: add Z or an offset like +02:00")
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"{_shown(value)} is out of range (1970 to 9000)") from exc
    return _in_range(moment, _shown(value))


_RELATIVE = re.compile(r"^\s*([+-])\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Farthest a relative time reaches (ten years), so arithmetic on it cannot overflow.
_MAX_RELATIVE_SECONDS = 3650 * 86400


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """A query time: ``now``, a time relative to now (``-6h``, ``-30m``, ``+1d``; units ms s m
    h d w), an RFC 3339 time (a naive one is UTC) or epoch seconds, 1970 to 9000
    (:func:`parse_instant`). Raises ValueError, nothing else. The windows API and the CLI take
    their ``since`` / ``until`` through it; records' own times take only absolute ones."""
    moment = now or datetime.now(UTC)
    text = value.strip()
    if len(text) > MAX_TIME_CHARS:  # before any pattern, and never echoed whole
        raise ValueError(f"too long for a time ({len(text):,} characters)")
    if text.lower() == "now":
        return moment
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match[2]) * _UNIT[match[3]]
        if not math.isfinite(seconds) or seconds > _MAX_RELATIVE_SECONDS:
            raise ValueError(f"relative time out of range: {_shown(value)}")
        return moment + (-1 if match[1] == "-" else 1) * timedelta(seconds=seconds)
    if re.fullmatch(r"[+-]\s*\d+(?:\.\d+)?", text):  # '-6': meant -6h? say so, not 1969
        raise ValueError(
            f"relative time {_shown(value)} needs a unit: ms, s, m, h, d or w (like -6h)"
        )
    return parse_instant(text, naive_is_utc=True)


def _shown(value: object) -> str:
    """``value`` as an error message quotes it: its repr, cut to 40 characters (escapes make a
    64-character string's repr up to six times as long)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_epoch(seconds: int | float, shown: str) -> datetime:
    try:
        finite = math.isfinite(seconds)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or not 0 <= seconds < _LATEST_EPOCH:
        raise ValueError(f"{shown} is not a plausible epoch time in seconds (1970 to 9000)")
    return datetime.fromtimestamp(seconds, UTC)


def _in_range(moment: datetime, shown: str) -> datetime:
    if moment < EARLIEST:
        raise ValueError(f"{shown} is before 1970")
    if moment >= LATEST:
        raise ValueError(f"{shown} is after the year 9000")
    return moment


__all__ = [
    "EARLIEST",
    "EXAMPLE",
    "LATEST",
    "MAX_TIME_CHARS",
    "parse_instant",
    "parse_time",
    "utcnow",
]
