"""Manifest lines: DESIGN Records (TrafficRecord), split on newlines only, errors by line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.errors import ReferenceStoreError
from monitor.records import TrafficRecord
from monitor.reference import read_id_records


def _lines(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def test_line_separators_inside_strings_are_accepted(tmp_path: Path) -> None:
    # U+2028, U+2029, U+0085 and a form feed are valid inside JSON strings (json.dumps with
    # ensure_ascii=False writes them raw); str.splitlines would break the line at each.
    prompt = "first\u2028second\u2029third\x85fourth\x0cfifth"
    path = tmp_path / "m.jsonl"
    line = json.dumps({"id": "a", "prompt": prompt, "response": "r"}, ensure_ascii=False)
    path.write_text(line + "\r\n" + line.replace('"a"', '"b"') + "\n", encoding="utf-8")
    records = read_id_records(path)
    assert [r.id for r in records] == ["a", "b"]
    assert records[0].prompt == prompt


def test_a_line_is_a_traffic_record(tmp_path: Path) -> None:
    path = _lines(
        tmp_path,
        {
            "id": 7,
            "prompt": "p",
            "response": "r",
            "reference": "ref",
            "timestamp": "2024-05-01T12:00:00Z",
            "stream": "chat",
            "model": "m1",
            "unknown": [1],
        },
        {"prompt": "q", "response": "s", "timestamp": 0},
    )
    first, second = read_id_records(path)
    assert isinstance(first, TrafficRecord)
    assert (first.id, first.stream, first.model, first.reference) == ("7", "chat", "m1", "ref")
    assert first.timestamp == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert second.id == "line-2" and second.timestamp == datetime(1970, 1, 1, tzinfo=UTC)
    assert second.stream == "default" and not second.has_image and not second.has_reference


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "p", "response": "r", "image": "https://x/y.png"}, "remote image URLs"),
        ({"prompt": "p", "response": "r", "image": "data:image/png;base64,@@"}, "not valid base64"),
        ({"prompt": "p", "response": "r", "timestamp": "yesterday"}, "not a valid time"),
        ({"prompt": "p", "response": "r", "timestamp": [1]}, "RFC 3339 text or epoch"),
        ({"prompt": "p", "response": "r", "stream": 3}, "field 'stream' must be a string"),
        ({"prompt": "p"}, "missing required field 'response'"),
        ([1, 2], "a record must be a JSON object"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, line: object, message: str) -> None:
    path = _lines(tmp_path, {"prompt": "ok", "response": "ok"}, line)
    with pytest.raises(ReferenceStoreError, match=f"m.jsonl:2: .*{message}"):
        read_id_records(path)
