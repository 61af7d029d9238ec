"""The relay's spool: record lines waiting to be forwarded, bounded by records and bytes.

    Spool(max_records, max_bytes, directory=None)
        .append(lines) -> int      lines taken (the rest did not fit: the caller counts them)
        .peek(max_records, max_bytes) -> list[bytes]   the oldest lines, not removed
        .ack(count)                remove the oldest ``count`` lines (forwarded or refused)
        .records, .bytes           what it holds
        .close()

In memory a deque of lines. With a ``directory`` every line taken is also appended to a JSONL
segment file there (written and flushed to the OS per append, not fsynced: a restarted
process or container loses nothing, a crashed node may lose the last writes), and a segment is
deleted once all its lines are acknowledged. On open the segments left by an earlier process
are read back, oldest first, within the same bounds; a torn last line (the process died while
writing it) is skipped and counted in :attr:`Spool.unreadable`. Delivery is therefore at least
once: lines forwarded just before a restart may be sent again, and the central records API
stores a record id once.

Single-threaded: the relay calls it from its event loop only.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("monitor.relay")

_SUFFIX = ".jsonl"
# Lines per segment file before the next one is started (a segment is deleted whole).
SEGMENT_LINES = 1000


@dataclass(slots=True)
class _Segment:
    path: Path
    lines: int = 0  # written to it
    acked: int = 0  # acknowledged


class Spool:
    """A bounded FIFO of record lines, mirrored to JSONL segments when given a directory."""

    def __init__(self, max_records: int, max_bytes: int, directory: Path | None = None) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.directory = directory
        self.bytes = 0
        self.unreadable = 0  # torn or invalid lines found on open
        self.overflow = 0  # lines left on disk by an earlier process beyond the bounds
        self._lines: deque[tuple[bytes, _Segment | None]] = deque()
        self._segments: deque[_Segment] = deque()
        self._writer: BinaryIO | None = None
        self._next_segment = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._load(directory)

    @property
    def records(self) -> int:
        return len(self._lines)

    def append(self, lines: list[bytes]) -> int:
        """Take lines while they fit; returns how many were taken (in order, from the first)."""
        taken: list[bytes] = []
        size = self.bytes
        for line in lines:
            if len(self._lines) + len(taken) >= self.max_records:
                break
            if size + len(line) > self.max_bytes:
                break
            taken.append(line)
            size += len(line)
        if not taken:
            return 0
        if self.directory is None:
            self._lines.extend((line, None) for line in taken)
        else:
            self._write(taken)
        self.bytes = size
        return len(taken)

    def peek(self, max_records: int, max_bytes: int) -> list[bytes]:
        """The oldest lines, at most ``max_records`` and ``max_bytes`` (but at least one)."""
        batch: list[bytes] = []
        size = 0
        for line, _ in self._lines:
            if len(batch) >= max_records or (batch and size + len(line) > max_bytes):
                break
            batch.append(line)
            size += len(line)
        return batch

    def ack(self, count: int) -> None:
        """Remove the oldest ``count`` lines; delete the segments left with nothing to send."""
        for _ in range(min(count, len(self._lines))):
            line, segment = self._lines.popleft()
            self.bytes -= len(line)
            if segment is not None:
                segment.acked += 1
        while self._segments and self._segments[0].acked >= self._segments[0].lines:
            segment = self._segments.popleft()
            if not self._segments:
                self._close_writer()  # the one being written: the next append starts afresh
            segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._close_writer()

    # -- disk ---------------------------------------------------------------------------------

    def _write(self, lines: list[bytes]) -> None:
        while lines:
            segment = self._current_segment()
            room = SEGMENT_LINES - segment.lines
            part, lines = lines[:room], lines[room:]
            assert self._writer is not None
            self._writer.write(b"".join(line + b"\n" for line in part))
            self._writer.flush()
            segment.lines += len(part)
            self._lines.extend((line, segment) for line in part)

    def _current_segment(self) -> _Segment:
        if self._writer is not None and self._segments[-1].lines < SEGMENT_LINES:
            return self._segments[-1]
        self._close_writer()
        assert self.directory is not None
        path = self.directory / f"{self._next_segment:012d}{_SUFFIX}"
        self._next_segment += 1
        self._writer = path.open("ab")
        segment = _Segment(path)
        self._segments.append(segment)
        return segment

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _load(self, directory: Path) -> None:
        paths = sorted(p for p in directory.iterdir() if p.suffix == _SUFFIX and p.stem.isdigit())
        if paths:
            self._next_segment = int(paths[-1].stem) + 1
        for path in paths:
            segment = _Segment(path)
            self._segments.append(segment)
            for raw in path.read_bytes().split(b"\n"):
                if not raw:
                    continue
                segment.lines += 1
                if not _is_record(raw):
                    self.unreadable += 1
                    segment.acked += 1
                elif len(self._lines) >= self.max_records or self.bytes + len(raw) > self.max_bytes:
                    self.overflow += 1
                    segment.acked += 1
                else:
                    self._lines.append((raw, segment))
                    self.bytes += len(raw)
        if paths:
            log.info(
                "relay: spool read back",
                extra={"records": len(self._lines), "segments": len(paths), "path": str(directory)},
            )
        # Segments read back are never appended to (a torn last line stays where it is); the
        # fully skipped ones go now.
        self.ack(0)


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


__all__ = ["SEGMENT_LINES", "Spool"]
