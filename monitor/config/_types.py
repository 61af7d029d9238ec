"""What every settings section shares: the base class, durations, and the bounds on values."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, field_validator

# Names of reference stores and streams: they become directory names, metric labels and log
# fields, so no separators, no control characters, no leading dot.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
# Longest duration accepted anywhere: far beyond any sensible window or TTL, and small enough
# that adding it to any timestamp of this century cannot overflow.
MAX_DURATION = timedelta(days=3650)
# Largest integer any setting may hold (2**53 - 1: exact as a float, fits every int64).
MAX_INTEGER = 2**53 - 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """'90s', '5m', '1h', '1d' (or seconds as a number) to a timedelta; others pass through."""
    if isinstance(value, bool):  # an int to Python, never a duration
        raise ValueError("invalid duration: a boolean; use a number and a unit, like '5m'")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond float range
            seconds = math.inf
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"invalid duration {value[:40]!r}: use a number and a unit, like '5m' or '30s'"
            )
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        return value
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(
            f"duration out of range: at most {format_duration(MAX_DURATION)} "
            f"({MAX_DURATION.days} days)"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 300 s -> '5m', 90 s -> '90s'."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _sane_scalars(cls, value: object) -> object:
        # TOML integers are unbounded in Python; a C or SQL integer downstream is not.
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            raise ValueError(f"too large: at most {MAX_INTEGER:,}")
        # A NUL byte is never meant, and paths, URLs and C libraries choke on it later.
        if isinstance(value, str | Path) and "\x00" in str(value):
            raise ValueError("contains a NUL character")
        return value
