"""The on-disk spool: what was taken survives a restart, acknowledged segments go, a torn last
line is skipped and counted, and the bounds hold when reading back."""

from __future__ import annotations

from pathlib import Path

from monitor.relay.spool import SEGMENT_LINES, Spool


def _line(i: int) -> bytes:
    return b'{"id":"r%d"}' % i


def test_lines_survive_a_restart_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(10_000, 10**7, tmp_path)
    count = SEGMENT_LINES + 5
    assert spool.append([_line(i) for i in range(count)]) == count
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    spool.ack(SEGMENT_LINES)  # the first segment is done
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    spool.close()
    again = Spool(10_000, 10**7, tmp_path)
    assert again.peek(100, 10**7) == [_line(i) for i in range(SEGMENT_LINES, count)]
    again.append([_line(count)])
    again.ack(6)
    assert again.records == 0 and not list(tmp_path.glob("*.jsonl"))


def test_a_torn_line_is_skipped_and_the_bounds_hold_on_read_back(tmp_path: Path) -> None:
    (tmp_path / "000000000000.jsonl").write_bytes(b"".join(_line(i) + b"\n" for i in range(5)))
    (tmp_path / "000000000001.jsonl").write_bytes(_line(5) + b"\n" + b'{"id":"r6')
    spool = Spool(max_records=4, max_bytes=10**6, directory=tmp_path)
    assert spool.peek(10, 10**6) == [_line(i) for i in range(4)]
    assert (spool.unreadable, spool.overflow) == (1, 2)
    spool.ack(4)
    assert not list(tmp_path.glob("*.jsonl"))
