"""JSONL line reading of backfill and replay: content ids, splitting, limits, read errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.backfill.lines import content_id, read_lines


def test_content_id_is_stable_and_ignores_key_order() -> None:
    a = content_id({"prompt": "p", "response": "r", "timestamp": 1})
    assert a == content_id({"timestamp": 1, "response": "r", "prompt": "p"})
    assert a != content_id({"prompt": "p", "response": "r2", "timestamp": 1})
    assert a.startswith("h-") and len(a) == 34


def test_lines_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    # U+2028 / U+2029 and a lone \r inside a string are valid JSON text, not line ends.
    path.write_bytes(
        '{"prompt": "a\u2028b"}\n\n{"prompt": "c\u2029d\rx"}\r\n   \n{"prompt": "e"}'.encode()
    )
    lines = list(read_lines(path))
    assert [n for n, _ in lines] == [1, 3, 5]
    assert lines[0][1].decode() == '{"prompt": "a\u2028b"}'
    assert lines[1][1].decode() == '{"prompt": "c\u2029d\rx"}'


def test_a_read_error_names_the_file() -> None:
    from monitor.errors import MonitorError

    # A regular file whose read fails (EIO at offset 0); a read's OSError names no file.
    with pytest.raises(MonitorError, match=r"cannot read /proc/self/mem after line 0"):
        list(read_lines(Path("/proc/self/mem")))


def test_lines_over_the_limit_are_not_held(tmp_path: Path) -> None:
    from monitor.backfill.lines import LineTooLong, load_line
    from monitor.errors import InvalidInputError

    path = tmp_path / "t.jsonl"
    lines = [b"a" * 10, b"b" * 11, b"c" * 12, b"d" * 5000, b"e" * 10 + b"\r", b"f" * 13]
    path.write_bytes(b"\n".join(lines))  # the last line has no newline
    read = list(read_lines(path, max_bytes=10))
    assert [n for n, _ in read] == [1, 2, 3, 4, 5, 6]
    assert read[0][1] == b"a" * 10 and read[4][1] == b"e" * 10
    for index, size in ((1, 11), (2, 12), (3, 5000), (5, 13)):
        line = read[index][1]
        assert isinstance(line, LineTooLong) and line.size == size and line == b""
        with pytest.raises(InvalidInputError, match=f"a line of {size:,} bytes"):
            load_line(line)
