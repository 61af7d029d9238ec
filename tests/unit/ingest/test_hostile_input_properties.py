"""Property tests: no input, however odd, gets anything but the documented error out of the
parsers every door shares. Each parser either returns its result or raises its one error type
(which the API turns into a 4xx and a worker or the sidecar counts); any other exception would
be a 500, a crashed worker or a lost exchange. Hypothesis generates the inputs (JSON of every
shape, records with hostile field values, OpenAI messages, chat answers, times, image bytes)
and shrinks a failure to its smallest form."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from monitor.config import IngestSettings, Settings, StreamSettings
from monitor.embedding.images import ImageLimits, decode_image
from monitor.errors import ImageDecodeError, InvalidInputError
from monitor.ingest.parsing import parse_records_body, parse_references_body
from monitor.ingest.proxy_body import assemble_json, assemble_sse
from monitor.records import TrafficRecord
from monitor.timestamps import parse_instant, parse_time

SETTINGS = Settings(
    streams=[StreamSettings(name="default"), StreamSettings(name="vision")],
    ingest=IngestSettings(max_batch_records=8, max_text_chars=2_000, max_messages=8),
)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = TypeVar("T")
# Derandomized: CI runs the same examples every time (a failure reproduces, none appears by
# chance on one run); no example database is written into the checkout.
EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
# Values a record's own fields plausibly take, mixed with anything at all.
plausible = (
    st.sampled_from(
        ["", "default", "vision", "a prompt", "2026-03-01T12:00:00Z", "data:image/png;base64,AAAA"]
    )
    | json_values
)
part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_text", "other"]) | json_values},
    optional={
        "text": plausible,
        "image_url": plausible | st.fixed_dictionaries({"url": plausible}),
    },
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values,
        "content": plausible | st.lists(part | json_values, max_size=3),
    },
)
record = st.fixed_dictionaries(
    {},
    optional={
        key: plausible
        for key in (
            "id",
            "timestamp",
            "stream",
            "model",
            "prompt",
            "response",
            "reference",
            "image",
        )
    }
    | {"messages": st.lists(message | json_values, max_size=4) | json_values},
)


def outcome(call: Callable[[], T], allowed: type[Exception]) -> T | Exception:
    """What ``call`` returns, or the ``allowed`` error it raised; any other error escapes (the
    property fails) and Hypothesis shrinks the input that raised it."""
    try:
        return call()
    except allowed as exc:
        return exc


def parses_or_refuses(body: Any) -> None:
    result = outcome(
        lambda: parse_records_body(body, settings=SETTINGS, now=NOW), InvalidInputError
    )
    if isinstance(result, Exception):
        assert str(result)  # a refusal says why
    else:
        assert all(isinstance(r, TrafficRecord) for r in result)


@EXAMPLES
@given(json_values)
def test_any_json_body_is_parsed_or_refused_with_a_clear_error(body: Any) -> None:
    parses_or_refuses(body)
    parses_or_refuses({"records": [body]})


@EXAMPLES
@given(st.lists(record, min_size=1, max_size=3))
def test_records_with_hostile_fields_and_messages_are_parsed_or_refused(
    records: list[dict[str, Any]],
) -> None:
    parses_or_refuses({"records": records})
    parses_or_refuses(records[0])


@EXAMPLES
@given(json_values | st.fixed_dictionaries({"references": st.lists(json_values, max_size=3)}))
def test_late_reference_bodies_are_parsed_or_refused(body: Any) -> None:
    outcome(lambda: parse_references_body(body, settings=SETTINGS), InvalidInputError)


answer = st.fixed_dictionaries(
    {},
    optional={
        "id": plausible,
        "model": plausible,
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": json_values,
                    "message": st.fixed_dictionaries({}, optional={"content": plausible})
                    | json_values,
                    "delta": st.fixed_dictionaries({}, optional={"content": plausible})
                    | json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
    },
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@EXAMPLES
@given(answer | json_values, st.binary(max_size=64))
@example({"choices": [{"message": None}]}, b"")  # found by Hypothesis: was an AttributeError
def test_chat_answers_are_assembled_or_refused(data: Any, noise: bytes) -> None:
    for body in (dumps(data), noise, dumps(data)[: len(noise)]):
        result = outcome(partial(assemble_json, body), InvalidInputError)
        if not isinstance(result, Exception):
            assert isinstance(result[0], str) and isinstance(result[1], dict)


@EXAMPLES
@given(st.lists(answer | json_values, max_size=4), st.binary(max_size=64))
@example([{"choices": 1}], b"")  # found by Hypothesis: was a TypeError
def test_streamed_chat_answers_are_assembled_or_refused(chunks: list[Any], noise: bytes) -> None:
    lines = [b"data: " + dumps(chunk) for chunk in chunks] + [b"data: [DONE]", noise]
    for body in (b"\n\n".join(lines), b"data: " + noise):
        result = outcome(partial(assemble_sse, body), InvalidInputError)
        if not isinstance(result, Exception):
            assert isinstance(result[0], str) and isinstance(result[1], dict)


@EXAMPLES
@given(st.text(max_size=80) | st.from_regex(r"[+-]?\s*[0-9.eE]{1,30}\s*(ms|s|m|h|d|w)?"))
def test_any_time_text_is_a_time_or_a_value_error(text: str) -> None:
    for parse in (lambda: parse_time(text, now=NOW), lambda: parse_instant(text)):
        result = outcome(parse, ValueError)
        if isinstance(result, Exception):
            assert len(str(result)) < 200  # a hostile value is not echoed whole
        else:
            assert result.tzinfo is not None


@EXAMPLES
@given(scalars | json_values)
def test_any_json_value_is_an_instant_or_a_value_error(value: Any) -> None:
    outcome(lambda: parse_instant(value), ValueError)


def png(width: int = 4, height: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


PNG = png()
LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=4096)


@EXAMPLES
@given(
    st.binary(max_size=256)
    | st.text(max_size=80)
    | st.builds(
        lambda flips: bytes(b ^ flips.get(i, 0) for i, b in enumerate(PNG)),
        st.dictionaries(st.integers(0, len(PNG) - 1), st.integers(1, 255), max_size=6),
    )
    | st.builds(lambda cut: PNG[:cut], st.integers(0, len(PNG)))
)
def test_any_image_bytes_decode_or_raise_image_decode_error(data: bytes | str) -> None:
    result = outcome(lambda: decode_image(data, limits=LIMITS), ImageDecodeError)
    if isinstance(result, Exception):
        assert str(result)
    else:
        assert result.mode == "RGB" and result.width * result.height <= LIMITS.max_pixels
