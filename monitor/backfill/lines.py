"""JSONL traffic, line by line: what ``backfill --from-jsonl`` and ``replay`` read.

A file is split on ``\\n`` only (U+2028 inside a JSON string is valid) and streamed; a line
over the records API's body limit is not held. A line without an ``id`` gets a stable one from
its content (``h-`` + 32 hex digits of a SHA-256 of the canonical JSON), so a rerun adds nothing
twice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.errors import InvalidInputError, MonitorError
from monitor.records import TrafficRecord

if TYPE_CHECKING:
    from monitor.config import Settings


def content_id(obj: dict[str, Any]) -> str:
    """A stable record id from the record's content (for lines without an ``id``)."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "h-" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class LineError:
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"line {self.line}:{where} {self.message}"


class LineTooLong(bytes):
    """What :func:`read_lines` yields for a line over its byte limit: its size, not its bytes."""

    size: int


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; split on b'\\n' only, streamed. A line over
    ``max_bytes`` (the records API's body limit, for the same records) is not held: a
    :class:`LineTooLong` stands for it, which :func:`load_line` reports as invalid. A read
    error names the file and the line (the OSError of a read names neither)."""
    limit = max_bytes if max_bytes is not None else 1 << 62
    number = 0
    try:
        with path.open("rb") as fh:
            while raw := fh.readline(limit + 2):  # + 2: the line's own \r\n
                number += 1
                if not raw.endswith(b"\n") and len(raw) == limit + 2:
                    size = len(raw)
                    while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                        size += len(rest)
                    too_long = LineTooLong()
                    too_long.size = size + len(rest.rstrip(b"\r\n"))
                    yield number, too_long
                    continue
                line = raw.rstrip(b"\r\n")
                if len(line) > limit:
                    too_long = LineTooLong()
                    too_long.size = len(line)
                    yield number, too_long
                elif line.strip():
                    yield number, line
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise MonitorError(
            f"cannot read {path} after line {number}: {exc.strerror or exc}"
        ) from exc


def parse_line(
    number: int, line: bytes, *, settings: Settings, now: datetime, stream: str | None
) -> TrafficRecord:
    """One JSONL line to a record, by the rules of live traffic (InvalidInputError otherwise)."""
    from monitor.ingest.parsing import parse_record

    obj = load_line(line)
    try:
        if obj.get("id") is None:
            obj["id"] = content_id(obj)
        if stream is not None and obj.get("stream") is None:
            obj["stream"] = stream
        return parse_record(obj, settings=settings, now=now)
    except (ValueError, OverflowError, RecursionError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        # A value the validator did not foresee (an offset past year 9999, an epoch of 400
        # digits): it is this line that is bad, not the run.
        raise InvalidInputError(f"unusable value: {type(exc).__name__}: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_line(line: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object (strict: no NaN / Infinity), or InvalidInputError; a
    line nested too deeply for the parser is invalid like any other."""
    if isinstance(line, LineTooLong):
        raise InvalidInputError(
            f"a line of {line.size:,} bytes, over the limit of a request ([ingest] max_body_bytes)"
        )
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidInputError("not JSON: nested too deeply") from exc
    except ValueError as exc:  # NaN, Infinity; an integer of more than 4300 digits
        raise InvalidInputError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError("a record must be a JSON object")
    return obj
