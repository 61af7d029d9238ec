"""parse_record and the body parsers as plain functions (no app): forms, defaults, limits."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from monitor.config import IngestSettings, Settings, StreamSettings
from monitor.errors import ImageDecodeError, InvalidInputError, PayloadTooLargeError
from monitor.ingest.parsing import parse_record, parse_records_body, parse_references_body

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(
    streams=[StreamSettings(name="default"), StreamSettings(name="vision")],
    ingest=IngestSettings(
        max_text_chars=100, max_batch_records=3, max_messages=4, image_url_hosts=["cdn.example.com"]
    ),
)


def parse(obj: Any) -> Any:
    return parse_record(obj, settings=SETTINGS, now=NOW)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "PNG")
    return buf.getvalue()


def test_defaults_and_generated_id() -> None:
    record = parse({"prompt": "hi"})
    assert len(record.id) == 32 and int(record.id, 16) >= 0
    assert record.timestamp == NOW and record.stream == "default"
    assert record.image is None and record.sampling_weight == 1.0
    assert parse({"prompt": "hi"}).id != record.id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-01T11:00:00Z", datetime(2025, 3, 1, 11, tzinfo=UTC)),
        ("2025-03-01T13:00:00+02:00", datetime(2025, 3, 1, 11, tzinfo=UTC)),
        ("2025-03-01t11:00:00z", datetime(2025, 3, 1, 11, tzinfo=UTC)),
        ("2025-03-01T11:00:00.123456789Z", datetime(2025, 3, 1, 11, 0, 0, 123456, tzinfo=UTC)),
        (1_740_826_800, datetime(2025, 3, 1, 11, tzinfo=UTC)),
        (1_740_826_800.5, datetime(2025, 3, 1, 11, 0, 0, 500000, tzinfo=UTC)),
        ("2025-03-01T12:59:00Z", datetime(2025, 3, 1, 12, 59, tzinfo=UTC)),  # within max_future
    ],
)
def test_timestamp_forms(value: Any, expected: datetime) -> None:
    assert parse({"prompt": "p", "timestamp": value}).timestamp == expected


def test_future_beyond_max_future_refused() -> None:
    late = (NOW + timedelta(hours=2)).isoformat()
    with pytest.raises(InvalidInputError, match="future") as caught:
        parse({"prompt": "p", "timestamp": late})
    assert caught.value.field == "timestamp"


def test_image_forms_all_give_bytes() -> None:
    data = png()
    b64 = base64.b64encode(data).decode()
    for value in (b64, f"data:image/png;base64,{b64}", {"url": f"data:image/png;base64,{b64}"}):
        assert parse({"image": value}).image == data
    url = parse({"image": {"url": "https://cdn.example.com/a.png"}})
    assert url.image is None and url.image_url == "https://cdn.example.com/a.png"


def test_hostile_image_field_is_prefixed_in_a_batch() -> None:
    bad = base64.b64encode(png()[:20]).decode()
    body = {"records": [{"prompt": "a"}, {"prompt": "b", "image": bad}]}
    with pytest.raises(ImageDecodeError) as caught:
        parse_records_body(body, settings=SETTINGS, now=NOW)
    assert caught.value.field == "records[1].image"


def test_messages_take_the_last_user_turn_and_latest_image() -> None:
    data = png()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    record = parse(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": url},
                        {"type": "text", "text": "first"},
                    ],
                },
                {"role": "assistant", "content": "answer"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "line 1"},
                        {"type": "input_audio", "input_audio": {}},
                        {"type": "text", "text": "line 2"},
                    ],
                },
            ],
            "response": "ok",
            "stream": "vision",
        }
    )
    assert record.prompt == "line 1\nline 2"
    assert record.image == data and record.stream == "vision" and record.response == "ok"


def test_messages_image_only_is_enough() -> None:
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    record = parse(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}],
                }
            ]
        }
    )
    assert record.prompt is None and record.image is not None


def test_limits_from_settings() -> None:
    with pytest.raises(InvalidInputError, match="over the limit of 100"):
        parse({"prompt": "x" * 101})
    with pytest.raises(PayloadTooLargeError):
        parse_records_body({"records": [{"prompt": "p"}] * 4}, settings=SETTINGS, now=NOW)
    with pytest.raises(InvalidInputError) as caught:
        parse({"messages": [{"role": "user", "content": "x"}] * 5})
    assert caught.value.field == "messages"


def test_unknown_fields_ignored_and_chat_completion_response() -> None:
    record = parse(
        {
            "prompt": "p",
            "whatever": {"deep": [1, 2]},
            "response": {"choices": [{"message": {"content": "done"}}]},
        }
    )
    assert record.response == "done"


def test_references_body_forms() -> None:
    one = parse_references_body({"id": "a", "reference": "r"}, settings=SETTINGS)
    assert [(i.id, i.text, i.stream) for i in one] == [("a", "r", None)]
    many = parse_references_body(
        {"references": [{"id": "a", "reference": "r", "stream": "vision"}]}, settings=SETTINGS
    )
    assert many[0].stream == "vision"
    with pytest.raises(InvalidInputError) as caught:
        parse_references_body({"references": [{"reference": "r"}]}, settings=SETTINGS)
    assert caught.value.field == "references[0].id"
    with pytest.raises(InvalidInputError) as caught:
        parse_references_body({"id": "a", "reference": "r", "stream": "x"}, settings=SETTINGS)
    assert caught.value.field == "stream"
