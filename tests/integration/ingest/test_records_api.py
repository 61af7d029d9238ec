"""The records API against malformed input: every bad request is a 4xx with the error shape,
the server stays up, nothing invalid reaches the inbox, nothing acknowledged is lost."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from monitor.metrics import MonitorMetrics
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import RunningApp
from tests.unit.embedding.hostile_images import corpus

JSON = {"content-type": "application/json"}


def png_data_url(seed: int = 0) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def good(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"good-{i}", "prompt": f"what is in picture {i}?", "response": "a cat", **extra}


def batch(*records: Any) -> bytes:
    return json.dumps({"records": list(records)}).encode()


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# (name, body bytes, headers, expected status, expected code, expected field or None)
Case = tuple[str, bytes, dict[str, str], int, str, str | None]


def malformed_cases() -> list[Case]:
    cases: list[Case] = [
        ("bad json", b'{"prompt": ', JSON, 400, "invalid_json", "body"),
        ("empty body", b"", JSON, 400, "invalid_json", "body"),
        ("whitespace body", b"   \n", JSON, 400, "invalid_json", "body"),
        ("non-utf8 body", b'{"prompt": "caf\xe9"}', JSON, 400, "invalid_encoding", "body"),
        ("utf-16 body", '{"prompt": "x"}'.encode("utf-16"), JSON, 400, "invalid_encoding", "body"),
        (
            "text/plain",
            body(good(1)),
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
            "content-type",
        ),
        (
            "form encoded",
            b"prompt=x",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
            "content-type",
        ),
        (
            "latin-1 charset",
            body(good(1)),
            {"content-type": "application/json; charset=latin-1"},
            415,
            "unsupported_media_type",
            "content-type",
        ),
        ("NaN literal", b'{"prompt": "x", "timestamp": NaN}', JSON, 400, "invalid_json", "body"),
        (
            "Infinity literal",
            b'{"prompt": "x", "timestamp": -Infinity}',
            JSON,
            400,
            "invalid_json",
            "body",
        ),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "invalid_json", "body"),
        (
            "nested in a field",
            b'{"prompt": "x", "extra": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            JSON,
            400,
            "invalid_json",
            "body",
        ),
        (
            "huge number",
            b'{"prompt": "x", "timestamp": 1' + b"0" * 5000 + b"}",
            JSON,
            400,
            "invalid_json",
            "body",
        ),
        ("top-level list", body([good(1)]), JSON, 422, "invalid_field", "body"),
        ("top-level string", body("hello"), JSON, 422, "invalid_field", "body"),
        (
            "records not a list",
            body({"records": {"0": good(1)}}),
            JSON,
            422,
            "invalid_field",
            "records",
        ),
        ("records empty", body({"records": []}), JSON, 422, "invalid_field", "records"),
        ("record not an object", batch(good(1), "oops"), JSON, 422, "invalid_field", "records[1]"),
        (
            "batch with one bad record",
            batch(good(1), good(2), good(3), good(4, timestamp="yesterday")),
            JSON,
            422,
            "invalid_field",
            "records[3].timestamp",
        ),
        (
            "repeated id in a batch",
            batch(good(1), good(1)),
            JSON,
            422,
            "invalid_field",
            "records[1].id",
        ),
        (
            "huge batch",
            batch(*[good(i) for i in range(201)]),
            JSON,
            413,
            "payload_too_large",
            "records",
        ),
        (
            "missing prompt and image",
            body({"response": "an answer"}),
            JSON,
            422,
            "invalid_field",
            "prompt",
        ),
        ("empty prompt, no image", body({"prompt": ""}), JSON, 422, "invalid_field", "prompt"),
        ("prompt a number", body({"prompt": 42}), JSON, 422, "invalid_field", "prompt"),
        ("prompt a list", body({"prompt": ["a", "b"]}), JSON, 422, "invalid_field", "prompt"),
        ("oversize prompt", body({"prompt": "x" * 10_001}), JSON, 422, "invalid_field", "prompt"),
        (
            "oversize reference",
            body(good(1, reference="y" * 10_001)),
            JSON,
            422,
            "invalid_field",
            "reference",
        ),
        ("NUL in prompt", body({"prompt": "a\u0000b"}), JSON, 422, "invalid_field", "prompt"),
        ("lone surrogate", b'{"prompt": "bad \\ud800 text"}', JSON, 422, "invalid_field", "prompt"),
        ("response a number", body(good(1, response=5)), JSON, 422, "invalid_field", "response"),
        (
            "response object without choices",
            body(good(1, response={"text": "x"})),
            JSON,
            422,
            "invalid_field",
            "response",
        ),
        ("model a number", body(good(1, model=7)), JSON, 422, "invalid_field", "model"),
        ("id a number", body(good(1) | {"id": 123}), JSON, 422, "invalid_field", "id"),
        ("id with spaces", body(good(1) | {"id": "a b"}), JSON, 422, "invalid_field", "id"),
        ("id too long", body(good(1) | {"id": "x" * 129}), JSON, 422, "invalid_field", "id"),
        ("unknown stream", body(good(1, stream="marketing")), JSON, 422, "invalid_field", "stream"),
        ("stream a number", body(good(1, stream=3)), JSON, 422, "invalid_field", "stream"),
        (
            "NaN-ish timestamp 1e400",
            b'{"prompt": "x", "timestamp": 1e400}',
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        ("negative epoch", body(good(1, timestamp=-5)), JSON, 422, "invalid_field", "timestamp"),
        (
            "epoch milliseconds",
            body(good(1, timestamp=1_740_830_400_000)),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "year 1900",
            body(good(1, timestamp="1900-01-01T00:00:00Z")),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "year 9999",
            body(good(1, timestamp="9999-01-01T00:00:00Z")),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "no time zone",
            body(good(1, timestamp="2025-03-01T12:00:00")),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "timestamp a bool",
            body(good(1, timestamp=True)),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "timestamp an object",
            body(good(1, timestamp={"s": 1})),
            JSON,
            422,
            "invalid_field",
            "timestamp",
        ),
        (
            "bad base64",
            body(good(1, image="data:image/png;base64,@@@@")),
            JSON,
            422,
            "invalid_image",
            "image",
        ),
        ("image a number", body(good(1, image=12)), JSON, 422, "invalid_field", "image"),
        (
            "image object without url",
            body(good(1, image={"href": "x"})),
            JSON,
            422,
            "invalid_field",
            "image.url",
        ),
        (
            "file url",
            body(good(1, image={"url": "file:///etc/passwd"})),
            JSON,
            422,
            "image_url_refused",
            "image.url",
        ),
        (
            "url host not allowed",
            body(good(1, image={"url": "https://example.com/a.png"})),
            JSON,
            422,
            "image_url_refused",
            "image.url",
        ),
        (
            "gopher url",
            body(good(1, image="gopher://127.0.0.1:6379/_x")),
            JSON,
            422,
            "image_url_refused",
            "image",
        ),
        (
            "messages not a list",
            body({"messages": "hi", "response": "x"}),
            JSON,
            422,
            "invalid_field",
            "messages",
        ),
        (
            "messages without user",
            body({"messages": [{"role": "system", "content": "s"}]}),
            JSON,
            422,
            "invalid_field",
            "messages",
        ),
        (
            "message part not an object",
            body({"messages": [{"role": "user", "content": ["hi"]}]}),
            JSON,
            422,
            "invalid_field",
            "messages[0].content[0]",
        ),
        (
            "message role missing",
            body({"messages": [{"content": "hi"}]}),
            JSON,
            422,
            "invalid_field",
            "messages[0].role",
        ),
        (
            "too many messages",
            body({"messages": [{"role": "user", "content": "hi"}] * 17}),
            JSON,
            422,
            "invalid_field",
            "messages",
        ),
        (
            "messages and prompt",
            body({"prompt": "p", "messages": []}),
            JSON,
            422,
            "invalid_field",
            "messages",
        ),
        (
            "bad image in messages",
            body(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,AAAA"},
                                }
                            ],
                        }
                    ]
                }
            ),
            JSON,
            422,
            "invalid_image",
            "messages[0].content[0].image_url.url",
        ),
    ]
    for name, payload, _expect in (c for c in corpus() if c[2] is not None):
        value = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        code = "image_url_refused" if name == "remote url" else "invalid_image"
        cases.append(
            (f"hostile image: {name}", body(good(1, image=value)), JSON, 422, code, "image")
        )
    return cases


CASES = malformed_cases()


def assert_error(response: Any, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert isinstance(error["message"], str) and error["message"]


def test_at_least_thirty_malformed_cases() -> None:
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES)


def test_malformed_requests_are_4xx_and_good_ones_between_them_are_kept(
    client: TestClient, repository: Repository, metrics: MonitorMetrics
) -> None:
    """Each malformed request alone, then a good one: the server stays up, refused requests
    write nothing, every acknowledged record is in the inbox."""
    good_ids: list[str] = []
    for n, (name, payload, headers, status, code, field) in enumerate(CASES):
        response = client.post("/v1/records", content=payload, headers=headers)
        try:
            assert_error(response, status, code, field)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc
        assert repository.inbox_depth() == len(good_ids), f"case {name!r} wrote to the inbox"
        ok = client.post("/v1/records", json=good(10_000 + n))
        assert ok.status_code == 202, ok.text
        good_ids += ok.json()["ids"]
    assert repository.inbox_depth() == len(good_ids) == len(CASES)
    held = {entry.record.id for entry in repository.claim("check", limit=10_000)}
    assert held == set(good_ids)
    rejected = sum(
        s.value
        for s in next(iter(metrics.records.collect())).samples
        if s.name.endswith("_total") and s.labels["outcome"] == "rejected"
    )
    assert rejected >= len(CASES) - 8  # body-level refusals (415, encoding) hold no records


def test_over_real_http_bad_requests_then_good_ones(running_app: RunningApp) -> None:
    """The same refusals through uvicorn on loopback, a 10 MB body among them."""
    picks = [
        c
        for c in CASES
        if c[0]
        in {
            "bad json",
            "non-utf8 body",
            "text/plain",
            "NaN literal",
            "deeply nested",
            "batch with one bad record",
            "unknown stream",
            "hostile image: truncated png",
        }
    ]
    assert len(picks) == 8
    with httpx.Client(base_url=running_app.url, timeout=30) as http:
        for _name, payload, headers, status, code, field in picks:
            assert_error(
                http.post("/v1/records", content=payload, headers=headers), status, code, field
            )
        big = b'{"prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}'
        assert_error(
            http.post("/v1/records", content=big, headers=JSON), 413, "payload_too_large", "body"
        )
        accepted = http.post(
            "/v1/records", json={"records": [good(1), good(2, image=png_data_url())]}
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {
            "accepted": 2,
            "sampled": 2,
            "duplicates": 0,
            "skipped": 0,
            "ids": ["good-1", "good-2"],
        }
        assert http.get("/healthz").json() == {"status": "ok"}
    assert running_app.repository.inbox_depth() == 2


def test_streamed_body_over_the_limit_without_content_length(running_app: RunningApp) -> None:
    """A chunked body (no Content-Length) is cut off once it passes the limit."""
    sent = 0

    def chunks() -> Any:
        nonlocal sent
        yield b'{"prompt": "'
        for _ in range(64):
            sent += 256 * 1024
            yield b"x" * (256 * 1024)
        yield b'"}'

    with httpx.Client(base_url=running_app.url, timeout=30) as http:
        try:
            response = http.post("/v1/records", content=chunks(), headers=JSON)
        except httpx.TransportError:
            pass  # the server may close the connection while the client is still sending
        else:
            assert_error(response, 413, "payload_too_large", "body")
        assert http.post("/v1/records", json=good(1)).status_code == 202
    assert running_app.repository.inbox_depth() == 1
