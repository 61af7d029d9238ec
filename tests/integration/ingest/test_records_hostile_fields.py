"""Hostile values of single fields through the real HTTP app: times at the edge of what a
datetime holds, numbers too large for a float, invisible and direction-changing characters in
ids and names, over-long model names. Each is a 4xx naming the field, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from monitor.ingest.parsing import MAX_MODEL_CHARS
from tests.integration.ingest.conftest import RunningApp
from tests.integration.ingest.test_records_api import good

JSON = {"content-type": "application/json"}


def post(app: RunningApp, path: str, content: bytes) -> httpx.Response:
    return httpx.post(app.url + path, content=content, headers=JSON, timeout=10)


def assert_refused(response: httpx.Response, field: str, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["field"] == field, error
    assert error["code"] == "invalid_field", error
    return error


TIMES: list[tuple[str, bytes]] = [
    # an offset that moves the time before year 1 (OverflowError in astimezone)
    ("year 1 east of UTC", json.dumps(good(1, timestamp="0001-01-01T00:00:00+01:00")).encode()),
    # and one that moves it past year 9999
    ("year 9999 west of UTC", json.dumps(good(1, timestamp="9999-12-31T23:59:59-01:00")).encode()),
    # an integer too large for a float (OverflowError in math.isfinite)
    ("1e400 as an integer", b'{"prompt": "x", "timestamp": 1' + b"0" * 400 + b"}"),
    ("negative huge integer", b'{"prompt": "x", "timestamp": -1' + b"0" * 400 + b"}"),
    ("year 1 UTC", json.dumps(good(1, timestamp="0001-01-01T00:00:00Z")).encode()),
]


@pytest.mark.parametrize(("name", "content"), TIMES, ids=[t[0] for t in TIMES])
def test_out_of_range_timestamps_are_422_naming_the_field(
    running_app: RunningApp, name: str, content: bytes
) -> None:
    error = assert_refused(post(running_app, "/v1/records", content), "timestamp")
    assert "timestamp" in error["message"]
    batch = b'{"records": [' + json.dumps(good(2)).encode() + b", " + content + b"]}"
    assert_refused(post(running_app, "/v1/records", batch), "records[1].timestamp")
    assert running_app.repository.inbox_depth() == 0
    # the server is still up and takes a good record
    assert post(running_app, "/v1/records", json.dumps(good(3)).encode()).status_code == 202


HIDDEN = {
    "C1 control CSI": "\u009b",
    "right-to-left override": "\u202e",
    "left-to-right embedding": "\u202a",
    "pop directional formatting": "\u202c",
    "first strong isolate": "\u2068",
    "pop directional isolate": "\u2069",
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "zero width joiner": "\u200d",
    "byte order mark": "\ufeff",
    "line separator": "\u2028",
    "private use": "\ue000",
    "DEL": "\x7f",
    "escape": "\x1b",
}


@pytest.mark.parametrize("char", HIDDEN.values(), ids=HIDDEN.keys())
def test_ids_and_names_with_invisible_characters_are_refused(
    running_app: RunningApp, char: str
) -> None:
    value = f"abc{char}def"
    shown = f"abc{char}def"
    cases = [
        ("/v1/records", good(1, id=value), "id"),
        ("/v1/records", {"records": [good(1), good(2, id=value)]}, "records[1].id"),
        ("/v1/records", good(1, model=value), "model"),
        ("/v1/records", good(1, model=f"llava 1.5 {char}"), "model"),
        ("/v1/records", good(1, stream=value), "stream"),
        ("/v1/references", {"id": value, "reference": "r"}, "id"),
        ("/v1/references", {"references": [{"id": value, "reference": "r"}]}, "references[0].id"),
    ]
    for path, obj, field in cases:
        error = assert_refused(post(running_app, path, json.dumps(obj).encode()), field)
        assert shown not in error["message"]  # never echoed raw into logs or terminals
    assert running_app.repository.inbox_depth() == 0


def test_printable_ids_and_names_still_pass(running_app: RunningApp) -> None:
    record = good(1, id="名前-é-😀", model="llava 1.5 (7B) — ünïcode")
    answer = post(running_app, "/v1/records", json.dumps(record).encode())
    assert answer.status_code == 202, answer.text
    (entry,) = running_app.repository.claim("w")
    assert entry.record.id == "名前-é-😀" and entry.record.model == "llava 1.5 (7B) — ünïcode"


def test_an_over_long_model_name_cites_its_own_limit(running_app: RunningApp) -> None:
    answer = post(running_app, "/v1/records", json.dumps(good(1, model="m" * 300)).encode())
    error = assert_refused(answer, "model")
    assert "max_text_chars" not in error["message"]
    assert f"{MAX_MODEL_CHARS}" in error["message"] and "model" in error["message"]
