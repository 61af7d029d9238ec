"""Historical traffic: a JSONL file fed through the live ingest path (:mod:`.jsonl`), the
windows of a range recomputed (:mod:`.range`), JSONL sent to a running monitor (:mod:`.replay`).

These services print nothing: what a command shows (progress, a skipped line, a retry) it gets
through the callbacks typed here."""

from __future__ import annotations

from collections.abc import Callable

# progress(what, done, total): ``total`` is None while unknown (a file being streamed).
ProgressCallback = Callable[[str, int, int | None], None]
# notify(message): one line about one event (an invalid line, a retry), said as it happens.
Notify = Callable[[str], None]


def no_progress(what: str, done: int, total: int | None) -> None:
    """The progress callback of a caller that shows none."""


def no_notice(message: str) -> None:
    """The notify callback of a caller that shows nothing."""
