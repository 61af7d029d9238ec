"""From what clients send to :class:`~monitor.records.TrafficRecord`: one set of rules for every
way in (records API, sidecar, JSONL replay and backfill). Plain functions, no app needed.

A record is a JSON object::

    {"id": "...", "timestamp": "2025-03-01T12:00:00Z" | 1740830400, "stream": "default",
     "model": "...", "prompt": "...", "image": "data:image/png;base64,..." | "<base64>" |
     {"url": "https://..."}, "response": "...", "reference": "..."}

or the OpenAI chat form: ``messages`` (as sent to ``/v1/chat/completions``) plus ``response``
(a string or the chat completion object). From ``messages`` the query is the **last user
message**: its text parts, joined by newlines, are the prompt; the image is the last
``image_url`` part of the user messages (a follow-up question is usually about the image sent
before it). System and assistant messages are not part of the query.

Rules: ``id`` is generated (uuid4 hex) when absent; ``timestamp`` defaults to ``now``, must
carry a time zone, lie after 1970 and not later than ``now + [ingest] max_future`` (read by
:func:`monitor.timestamps.parse_instant`, the parser every door shares); ``stream`` defaults to
"default" and must be a configured stream; a record needs a prompt, an image, or both. Ids,
streams and model names must be printable: no control, format or unassigned characters
(Unicode categories C*: C1 controls like U+009B, the bidi overrides and isolates U+202A-U+202E
and U+2066-U+2069, the marks U+200E/U+200F, zero-width characters), no line separators; ids
also no spaces. They end up in keys, logs and terminals, where such characters hide or reorder
text. Unknown fields are ignored; wrong types, oversize text
(``[ingest] max_text_chars``), NUL characters, lone surrogates, invalid images raise
:class:`~monitor.errors.InvalidInputError` whose ``field`` names the offending input, prefixed
with the record's place in a batch (``records[3].timestamp``).

Images are checked as cheaply as their format allows (:func:`~monitor.embedding.images.
check_image`: header, pixel limit, PNG chunks, JPEG at 1/8 scale), not decoded in full: the
embedding worker decodes them once, and moves aside the rare one that passed the check but
does not decode. With ``[encoders.image] kind = "none"`` no image is ever embedded, so an
image (inline or URL) is dropped here unread: not decoded, not fetched, not kept in the inbox.
It still counts as the record's content (an image-only record is accepted, with no prompt).

An http(s) image URL is checked against ``[ingest] image_url_hosts`` here and kept in
``TrafficRecord.image_url``; fetching it (see :mod:`monitor.ingest.image_urls`) is the caller's
job, before the record is submitted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.config import Settings
from monitor.embedding.images import ImageLimits, check_image, image_bytes
from monitor.errors import ImageDecodeError, InvalidInputError, PayloadTooLargeError
from monitor.ingest.image_urls import check_image_url
from monitor.records import TrafficRecord
from monitor.timestamps import parse_instant

MAX_ID_CHARS = 128
MAX_MODEL_CHARS = 256


@dataclass(frozen=True, slots=True)
class ReferenceItem:
    """A late reference answer for the record ``id`` (``stream`` optional, see the service)."""

    id: str
    text: str
    stream: str | None = None


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_bytes=settings.encoders.image.max_bytes, max_pixels=settings.encoders.image.max_pixels
    )


def validate_image(data: bytes, *, settings: Settings, field: str = "image") -> bytes:
    """Check the image (size, format, bomb and truncation checks, see ``check_image``);
    returns the bytes."""
    try:
        check_image(data, limits=image_limits(settings))
    except ImageDecodeError as exc:
        raise ImageDecodeError(str(exc), field=field) from exc
    return data


def parse_records_body(body: Any, *, settings: Settings, now: datetime) -> list[TrafficRecord]:
    """A request body: one record, or ``{"records": [...]}`` (all valid, or an error)."""
    if isinstance(body, dict) and "records" in body:
        items = _batch(body, "records", "a list of records", settings)
        records = [
            parse_record(item, settings=settings, now=now, where=f"records[{i}]")
            for i, item in enumerate(items)
        ]
        first: dict[str, int] = {}
        for i, record in enumerate(records):
            if record.id in first:
                raise InvalidInputError(
                    f"id {record.id!r} repeats records[{first[record.id]}].id",
                    field=f"records[{i}].id",
                )
            first[record.id] = i
        return records
    if isinstance(body, dict):
        return [parse_record(body, settings=settings, now=now)]
    raise InvalidInputError(
        'the body must be a JSON object: one record, or {"records": [...]}', field="body"
    )


def parse_record(obj: Any, *, settings: Settings, now: datetime, where: str = "") -> TrafficRecord:
    """One record (plain form or OpenAI ``messages`` form), validated; see the module doc."""
    if not isinstance(obj, dict):
        raise InvalidInputError("a record must be a JSON object", field=where or "body")
    limit = settings.ingest.max_text_chars
    record_id = _record_id(obj.get("id"), _at(where, "id"))
    timestamp = _timestamp(obj.get("timestamp"), _at(where, "timestamp"), now, settings)
    stream = _stream(obj.get("stream"), _at(where, "stream"), settings)
    model = _model(obj.get("model"), _at(where, "model"))
    if "messages" in obj and obj["messages"] is not None:
        if obj.get("prompt") is not None or obj.get("image") is not None:
            raise InvalidInputError(
                "give either prompt/image or messages, not both", field=_at(where, "messages")
            )
        prompt, image_value, image_field = _from_messages(obj["messages"], where, settings)
    else:
        prompt = _text(obj.get("prompt"), _at(where, "prompt"), limit)
        image_value, image_field = obj.get("image"), _at(where, "image")
    image, image_url = _image(image_value, image_field, settings)
    if not prompt and image_value is None:
        raise InvalidInputError(
            "a record needs a prompt, an image, or both", field=_at(where, "prompt")
        )
    return TrafficRecord(
        id=record_id,
        timestamp=timestamp,
        stream=stream,
        model=model,
        prompt=prompt or None,
        image=image,
        response=_response(obj.get("response"), _at(where, "response"), limit),
        reference=_text(obj.get("reference"), _at(where, "reference"), limit),
        image_url=image_url,
        image_dropped=image_value is not None and settings.encoders.image.kind == "none",
    )


def parse_references_body(body: Any, *, settings: Settings) -> list[ReferenceItem]:
    """``{"id", "reference"}`` (``stream`` optional) or ``{"references": [...]}``."""
    if isinstance(body, dict) and "references" in body:
        items = _batch(body, "references", "a list", settings)
        return [_reference_item(item, settings, f"references[{i}]") for i, item in enumerate(items)]
    if isinstance(body, dict):
        return [_reference_item(body, settings, "")]
    raise InvalidInputError(
        'the body must be a JSON object: {"id", "reference"} or {"references": [...]}',
        field="body",
    )


def _batch(body: dict[str, Any], key: str, what: str, settings: Settings) -> list[Any]:
    """``body[key]`` as a batch: a non-empty list within ``[ingest] max_batch_records``."""
    items = body[key]
    if not isinstance(items, list):
        raise InvalidInputError(f'"{key}" must be {what}', field=key)
    if not items:
        raise InvalidInputError(f'"{key}" is empty', field=key)
    limit = settings.ingest.max_batch_records
    if len(items) > limit:
        raise PayloadTooLargeError(
            f"{len(items):,} {key} in one batch, over the limit of {limit:,} "
            "([ingest] max_batch_records)",
            field=key,
        )
    return items


def _reference_item(obj: Any, settings: Settings, where: str) -> ReferenceItem:
    if not isinstance(obj, dict):
        raise InvalidInputError("a reference must be a JSON object", field=where or "body")
    if obj.get("id") is None:
        raise InvalidInputError("id is required", field=_at(where, "id"))
    record_id = _record_id(obj["id"], _at(where, "id"))
    text = _text(obj.get("reference"), _at(where, "reference"), settings.ingest.max_text_chars)
    if not text:
        raise InvalidInputError(
            "reference must be a non-empty string", field=_at(where, "reference")
        )
    stream = _stream(obj["stream"], _at(where, "stream"), settings) if "stream" in obj else None
    return ReferenceItem(id=record_id, text=text, stream=stream)


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _name(field: str) -> str:
    """The last part of a field path, for messages: records[2].prompt -> prompt."""
    return field.rsplit(".", 1)[-1]


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _record_id(value: Any, field: str) -> str:
    if value is None:
        return uuid.uuid4().hex
    if not isinstance(value, str):
        raise InvalidInputError(f"id must be a string, not {_type_name(value)}", field=field)
    if not 0 < len(value) <= MAX_ID_CHARS or not _printable(value, spaces=False):
        raise InvalidInputError(
            f"id must be 1 to {MAX_ID_CHARS} printable characters without spaces (no control, "
            "invisible or text-direction characters)",
            field=field,
        )
    return value  # printable: no NUL, no lone surrogate (what _check_encodable refuses)


def _printable(value: str, *, spaces: bool) -> bool:
    """Printable text: no character of Unicode category C* (controls, C1 included; format,
    which holds the bidi overrides, isolates and marks; surrogates; private use; unassigned)
    nor Z* other than the ASCII space (line and paragraph separators, no-break spaces), which
    is what ``str.isprintable`` checks; with ``spaces`` False, no ASCII space either."""
    return value.isprintable() and (spaces or " " not in value)


def _timestamp(value: Any, field: str, now: datetime, settings: Settings) -> datetime:
    if value is None:
        return now
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(
            f"timestamp must be an RFC 3339 string or epoch seconds, not {_type_name(value)}",
            field=field,
        )
    try:
        moment = parse_instant(value)
    except ValueError as exc:  # parse_instant lets nothing else out (overflow included)
        raise InvalidInputError(f"timestamp {exc}", field=field) from exc
    if moment > now + settings.ingest.max_future:
        raise InvalidInputError(
            f"timestamp {value!r} is in the future (later than now + [ingest] max_future); "
            "epoch times are in seconds, not milliseconds",
            field=field,
        )
    return moment


def _stream(value: Any, field: str, settings: Settings) -> str:
    if value is None:
        value = "default"
    if not isinstance(value, str):
        raise InvalidInputError(f"stream must be a string, not {_type_name(value)}", field=field)
    if not _printable(value, spaces=True):
        raise InvalidInputError(
            "stream must be printable text (no control, invisible or text-direction characters)",
            field=field,
        )
    names = [s.name for s in settings.streams]
    if value not in names:
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise InvalidInputError(
            f"unknown stream {shown!r}: configured streams are {', '.join(names)}", field=field
        )
    return value


def _check_encodable(value: str, field: str) -> None:
    if "\x00" in value:
        raise InvalidInputError("text contains a NUL character", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"text is not valid Unicode: {exc.reason}", field=field) from exc


def _text(value: Any, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{_name(field)} must be a string, not {_type_name(value)}", field=field
        )
    if len(value) > limit:
        raise InvalidInputError(
            f"{_name(field)} is {len(value):,} characters, over the limit of {limit:,} "
            "([ingest] max_text_chars)",
            field=field,
        )
    _check_encodable(value, field)
    return value


def _model(value: Any, field: str) -> str | None:
    """A model name: short printable text (spaces allowed), with a limit of its own."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"model must be a string, not {_type_name(value)}", field=field)
    if len(value) > MAX_MODEL_CHARS:
        raise InvalidInputError(
            f"model is {len(value):,} characters, over the limit of {MAX_MODEL_CHARS} for a "
            "model name",
            field=field,
        )
    if not value.strip() or not _printable(value, spaces=True):
        raise InvalidInputError(
            "model must be printable text (no control, invisible or text-direction characters)",
            field=field,
        )
    return value


def _response(value: Any, field: str, limit: int) -> str | None:
    """A string, or an OpenAI chat completion object (its first choice's message content)."""
    if isinstance(value, dict):
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise InvalidInputError(
                "response object must be a chat completion with choices", field=field
            )
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        return _text(content, f"{field}.choices[0].message.content", limit)
    return _text(value, field, limit)


def _image(value: Any, field: str, settings: Settings) -> tuple[bytes | None, str | None]:
    """(bytes, None) for inline images, (None, url) for an allowed http(s) URL."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        if "url" not in value:
            raise InvalidInputError('an image object needs a "url"', field=f"{field}.url")
        value, field = value["url"], f"{field}.url"
    if not isinstance(value, str):
        raise InvalidInputError(
            f'image must be a data URL, base64 text or {{"url": ...}}, not {_type_name(value)}',
            field=field,
        )
    if settings.encoders.image.kind == "none":
        return None, None  # no encoder would use it: not decoded, fetched or kept
    text = value.strip()
    if "://" in text[:16] and not text.startswith("data:"):
        check_image_url(text, settings.ingest.image_url_hosts, field=field)
        return None, text
    try:
        data = image_bytes(text, limits=image_limits(settings))
    except ImageDecodeError as exc:
        raise ImageDecodeError(str(exc), field=field) from exc
    return validate_image(data, settings=settings, field=field), None


def _from_messages(messages: Any, where: str, settings: Settings) -> tuple[str | None, Any, str]:
    """(prompt, image value, image field) of an OpenAI ``messages`` list."""
    field = _at(where, "messages")
    if not isinstance(messages, list):
        raise InvalidInputError(f"messages must be a list, not {_type_name(messages)}", field=field)
    limit = settings.ingest.max_messages
    if len(messages) > limit:
        raise InvalidInputError(
            f"{len(messages)} messages, over the limit of {limit} ([ingest] max_messages)",
            field=field,
        )
    last_user_texts: list[str] | None = None
    image: Any = None
    image_field = _at(where, "image")
    for i, message in enumerate(messages):
        here = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise InvalidInputError("a message must be an object", field=here)
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidInputError("message role must be a string", field=f"{here}.role")
        texts, images = _content(message.get("content"), f"{here}.content", settings)
        if role == "user":
            last_user_texts = texts
            if images:
                image, image_field = images[-1]
    if last_user_texts is None:
        raise InvalidInputError("messages has no user message", field=field)
    prompt = "\n".join(last_user_texts) if last_user_texts else None
    if prompt is not None and len(prompt) > settings.ingest.max_text_chars:
        raise InvalidInputError(
            f"the last user message is {len(prompt):,} characters, over the limit of "
            f"{settings.ingest.max_text_chars:,}",
            field=field,
        )
    return prompt, image, image_field


def _content(
    content: Any, field: str, settings: Settings
) -> tuple[list[str], list[tuple[Any, str]]]:
    """Text parts and (image value, field) parts of one message's content."""
    limit = settings.ingest.max_text_chars
    if content is None:
        return [], []
    if isinstance(content, str):
        return [_text(content, field, limit) or ""], []
    if not isinstance(content, list):
        raise InvalidInputError(
            f"message content must be a string or a list of parts, not {_type_name(content)}",
            field=field,
        )
    if len(content) > settings.ingest.max_messages:
        raise InvalidInputError(f"{len(content)} content parts, over the limit", field=field)
    texts: list[str] = []
    images: list[tuple[Any, str]] = []
    for j, part in enumerate(content):
        here = f"{field}[{j}]"
        if not isinstance(part, dict):
            raise InvalidInputError("a content part must be an object", field=here)
        kind = part.get("type")
        if kind == "text":
            text = _text(part.get("text"), f"{here}.text", limit)
            if text is None:
                raise InvalidInputError("a text part needs text", field=f"{here}.text")
            texts.append(text)
        elif kind == "image_url":
            value = part.get("image_url")
            if value is None:
                raise InvalidInputError(
                    "an image_url part needs image_url", field=f"{here}.image_url"
                )
            images.append((value, f"{here}.image_url"))
        # other part types (audio, files) are not part of what the monitor measures
    return texts, images
