"""OTLP traces to records: decode an ``ExportTraceServiceRequest`` and turn its LLM spans into
:class:`~monitor.records.TrafficRecord`. Pure: no IO, no metrics (the route counts).

    decode_protobuf(raw) / decode_json(body) -> ExportTraceServiceRequest
    spans_to_records(request, settings=, now=) -> SpanRecords
    export_response(rejected, message, as_json=) -> bytes

**Which spans are LLM spans.** OpenInference: ``openinference.span.kind`` is ``LLM``.
OpenTelemetry GenAI: ``gen_ai.operation.name`` is ``chat``, ``text_completion`` or
``generate_content``; without it, OpenLLMetry's ``llm.request.type`` is ``chat`` or
``completion``; without either, a span with ``gen_ai.system``, ``gen_ai.provider.name`` or
``gen_ai.request.model``. Every other span (HTTP, database, tool, embedding, agent, chain) is
``not_llm``.

**Where the exchange is read**, first source that holds messages wins:

1. ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON text or structured values:
   ``[{"role", "parts": [{"type": "text", "content"}, {"type": "uri", "modality": "image",
   "uri"}, {"type": "blob", "modality": "image", "mime_type", "content"}]}]``);
2. span events ``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.assistant.message``,
   ``gen_ai.tool.message`` (attribute ``content``) and ``gen_ai.choice`` (``message`` or
   ``content``); the older ``gen_ai.content.prompt`` / ``gen_ai.content.completion`` events
   (``gen_ai.prompt`` / ``gen_ai.completion``, JSON);
3. OpenLLMetry's flattened ``gen_ai.prompt.{i}.role/content``, ``gen_ai.completion.{i}.content``;
4. OpenInference's ``llm.input_messages.{i}.message.role/content`` (or ``.message.contents.{j}.
   message_content.type/text/image.image.url``), ``llm.output_messages.{i}.message.content``,
   then ``input.value`` / ``output.value`` (an OpenAI request body and chat completion when
   ``input.mime_type`` / ``output.mime_type`` is ``application/json``, else plain text).

A content that is JSON text of a parts list (what OpenLLMetry writes for multimodal messages) is
read as parts. Image parts become OpenAI ``image_url`` parts, so the record is then built by
:func:`~monitor.ingest.parsing.parse_record` from ``messages`` exactly as the records API
builds it: the last user message is the prompt, its image (data URL or allowed http(s) URL)
the image, the same limits. An LLM span whose messages hold no user text or image is
``no_prompt`` (instrumentations leave content out unless told to capture it); one that breaks a
records API rule is ``invalid``, with the error as the reason's message.

**The record.** id ``otlp-<trace id>-<span id>`` (hex), so an exporter's retry is a duplicate
(the inbox keeps the first); time the span's end (its start when the end is unset, the
receipt time when both are); model ``gen_ai.response.model``, else ``gen_ai.request.model``,
else ``llm.model_name``; stream from ``[otlp]``: the value of ``stream_attribute`` on the span,
else its resource, through ``stream_map``, else itself when it names a configured stream; a
span without the value goes to the default stream, one whose value names no stream too, or is
skipped as ``unknown_stream`` with ``unknown_stream = "skip"``.

**JSON.** OTLP's JSON mapping is protobuf's with two differences that matter here: trace and
span ids are hex (protobuf's JSON has base64 for bytes) and unknown fields are ignored; both
are handled before :func:`google.protobuf.json_format.ParseDict`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from monitor.config import Settings
from monitor.errors import InvalidInputError
from monitor.ingest.parsing import parse_record
from monitor.records import TrafficRecord

__all__ = [
    "SkippedSpan",
    "SpanRecords",
    "decode_json",
    "decode_protobuf",
    "export_response",
    "skipped_summary",
    "spans_to_records",
]

GENAI_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
OPENLLMETRY_LLM_REQUEST_TYPES = frozenset({"chat", "completion"})
GENAI_MARKERS = ("gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model")
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
# How much of one skipped span's error goes into the response's message.
MAX_EXAMPLE_CHARS = 300
_INDEXED = re.compile(r"^(\d{1,6})\.(.+)$")


@dataclass(frozen=True, slots=True)
class SkippedSpan:
    """A span that became no record: its reason (metrics.OTLP_SKIP_REASONS), the stream when
    known, and for ``invalid`` the error."""

    span_id: str
    reason: str
    stream: str | None = None
    message: str = ""


@dataclass(slots=True)
class SpanRecords:
    """What a request's spans became: records (still to have their image URLs resolved and be
    submitted), skipped spans, and the number of spans in all."""

    records: list[TrafficRecord] = field(default_factory=list)
    skipped: list[SkippedSpan] = field(default_factory=list)
    spans: int = 0


# -- decoding -------------------------------------------------------------------------------------


def decode_protobuf(raw: bytes) -> ExportTraceServiceRequest:
    """A protobuf ``ExportTraceServiceRequest``, or InvalidInputError (field ``body``)."""
    try:
        return ExportTraceServiceRequest.FromString(raw)
    except (DecodeError, RecursionError) as exc:
        raise InvalidInputError(
            f"the body is not a protobuf ExportTraceServiceRequest: {exc}", field="body"
        ) from exc


def decode_json(body: Any) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` from OTLP's JSON mapping (already parsed JSON)."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            'the body must be a JSON object like {"resourceSpans": [...]}', field="body"
        )
    _hex_ids_to_base64(body)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(body, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as exc:
        raise InvalidInputError(
            f"the body is not an OTLP ExportTraceServiceRequest: {exc}", field="body"
        ) from exc
    return request


def _hex_ids_to_base64(body: dict[str, Any]) -> None:
    """Rewrite OTLP JSON's hex ids in place into the base64 that protobuf's JSON parser reads."""
    for resource_spans in _dicts(body.get("resourceSpans", body.get("resource_spans"))):
        for scope_spans in _dicts(
            resource_spans.get("scopeSpans", resource_spans.get("scope_spans"))
        ):
            for span in _dicts(scope_spans.get("spans")):
                _rewrite_ids(span)
                for link in _dicts(span.get("links")):
                    _rewrite_ids(link)


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _rewrite_ids(obj: dict[str, Any]) -> None:
    for key in ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"):
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            continue
        try:
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
        except ValueError as exc:
            raise InvalidInputError(
                f"{key} {value[:64]!r} is not hex (OTLP JSON writes ids in hex)", field=key
            ) from exc


def export_response(rejected: int, message: str, *, as_json: bool) -> bytes:
    """An ``ExportTraceServiceResponse`` (partial success when ``rejected``), encoded."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if as_json:
        return json_format.MessageToJson(response, indent=None).encode("utf-8")
    return response.SerializeToString()


# -- spans to records -----------------------------------------------------------------------------


def spans_to_records(
    request: ExportTraceServiceRequest, *, settings: Settings, now: datetime
) -> SpanRecords:
    """Every span of ``request``: a record, or a skipped span with its reason."""
    out = SpanRecords()
    names = {s.name for s in settings.streams}
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.spans += 1
                _one_span(span, resource, settings, names, now, out)
    return out


def _one_span(
    span: Span,
    resource: Mapping[str, AnyValue],
    settings: Settings,
    names: set[str],
    now: datetime,
    out: SpanRecords,
) -> None:
    span_hex = span.span_id.hex()
    attrs = _attributes(span.attributes)
    if not _is_llm_span(attrs):
        out.skipped.append(SkippedSpan(span_hex, "not_llm"))
        return
    stream = _stream(attrs, resource, settings, names)
    if stream is None:
        out.skipped.append(SkippedSpan(span_hex, "unknown_stream"))
        return
    where = f"spans[{span_hex}]"
    try:
        messages, response = _exchange(span, attrs)
        if not _has_user_content(messages):
            out.skipped.append(SkippedSpan(span_hex, "no_prompt", stream))
            return
        if len(span.trace_id) != 16 or len(span.span_id) != 8:
            raise InvalidInputError(
                "a span needs a 16-byte trace_id and an 8-byte span_id", field=where
            )
        end = span.end_time_unix_nano or span.start_time_unix_nano
        obj = {
            "id": f"otlp-{span.trace_id.hex()}-{span_hex}",
            "timestamp": end / 1e9 if end else None,
            "stream": stream,
            "model": _model(attrs),
            "messages": messages,
            "response": response,
        }
        out.records.append(parse_record(obj, settings=settings, now=now, where=where))
    except InvalidInputError as exc:
        shown = f"{exc.field}: {exc}" if exc.field else str(exc)
        out.skipped.append(SkippedSpan(span_hex, "invalid", stream, shown[:MAX_EXAMPLE_CHARS]))


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, AnyValue]:
    return {pair.key: pair.value for pair in pairs}


def _value(value: AnyValue | None) -> Any:
    """An attribute value as plain Python (str, bool, int, float, bytes, list, dict, None)."""
    if value is None:
        return None
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {pair.key: _value(pair.value) for pair in value.kvlist_value.values}
    return getattr(value, kind)


def _text(attrs: Mapping[str, AnyValue], key: str) -> str | None:
    value = _value(attrs.get(key))
    return value if isinstance(value, str) else None


def _is_llm_span(attrs: Mapping[str, AnyValue]) -> bool:
    kind = _text(attrs, "openinference.span.kind")
    if kind is not None:
        return kind.upper() == "LLM"
    operation = _text(attrs, "gen_ai.operation.name")
    if operation is not None:
        return operation in GENAI_LLM_OPERATIONS
    request_type = _text(attrs, "llm.request.type")
    if request_type is not None:
        return request_type in OPENLLMETRY_LLM_REQUEST_TYPES
    return any(
        k in attrs for k in ("gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model")
    )


def _stream(
    attrs: Mapping[str, AnyValue],
    resource: Mapping[str, AnyValue],
    settings: Settings,
    names: set[str],
) -> str | None:
    key = settings.otlp.stream_attribute
    value = _value(attrs[key]) if key in attrs else _value(resource.get(key))
    if value is None or value == "":
        return settings.otlp_default_stream
    value = str(value)
    stream = settings.otlp.stream_by_value.get(value, value)
    if stream in names:
        return stream
    return settings.otlp_default_stream if settings.otlp.unknown_stream == "default" else None


def _model(attrs: Mapping[str, AnyValue]) -> str | None:
    for key in ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name"):
        value = _text(attrs, key)
        if value:
            return value
    return None


# -- messages -------------------------------------------------------------------------------------

Message = dict[str, Any]


def _exchange(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    """(OpenAI-style messages, response) from the first source holding messages."""
    for read in (_semconv_attributes, _semconv_events, _openllmetry, _openinference):
        messages, response = read(span, attrs)
        if messages:
            return messages, response
    return [], None


def _has_user_content(messages: list[Message]) -> bool:
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return True
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") in ("text", "image_url") for part in content
        ):
            return True
    return False


def _json_or_value(value: Any) -> Any:
    """JSON text decoded (what instrumentations write for structured values), else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON after all, or nested past the parser
            return value
    return value


def _content(value: Any) -> Any:
    """A message content as the records API reads it: text, or a list of OpenAI parts."""
    decoded = _json_or_value(value)
    if isinstance(decoded, list) and all(
        isinstance(part, dict) and "type" in part for part in decoded
    ):
        return [part for part in (_part(p) for p in decoded) if part is not None]
    if isinstance(decoded, dict) and "type" in decoded:  # one part on its own
        part = _part(decoded)
        return [part] if part is not None else []
    return value


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    """One content part (OpenAI's, or GenAI semconv's text / uri / blob) as an OpenAI part."""
    kind = part.get("type")
    if kind == "text":
        text = part.get("text", part.get("content"))
        return {"type": "text", "text": text}
    if kind == "image_url":
        return {"type": "image_url", "image_url": part.get("image_url")}
    if kind in ("uri", "image") and part.get("modality", "image") == "image":
        url = part.get("uri", part.get("url", part.get("image")))
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "blob" and part.get("modality") == "image":
        mime = part.get("mime_type") or "image/png"
        data = part.get("content")
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode("ascii")
        if isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    return None  # audio, files, tool calls: not what the monitor measures


def _text_of(content: Any) -> Any:
    """The answer's text: a string, or the text parts of a parts list joined by newlines."""
    decoded = _content(content)
    if isinstance(decoded, list):
        texts = [p["text"] for p in decoded if p.get("type") == "text" and p.get("text")]
        return "\n".join(str(t) for t in texts) if texts else None
    return decoded


def _semconv_attributes(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    inputs = _json_or_value(_value(attrs.get("gen_ai.input.messages")))
    if not isinstance(inputs, list):
        return [], None
    messages = [
        {"role": m.get("role"), "content": _content(m.get("parts", m.get("content")))}
        for m in inputs
        if isinstance(m, dict)
    ]
    outputs = _json_or_value(_value(attrs.get("gen_ai.output.messages")))
    response = None
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        response = _text_of(outputs[0].get("parts", outputs[0].get("content")))
    return messages, response


def _semconv_events(span: Span, _attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages: list[Message] = []
    response: Any = None
    for event in span.events:
        event_attrs = _attributes(event.attributes)
        if event.name in MESSAGE_EVENTS:
            role = _text(event_attrs, "role") or MESSAGE_EVENTS[event.name]
            messages.append({"role": role, "content": _content(_value(event_attrs.get("content")))})
        elif event.name == "gen_ai.choice" and response is None:
            message = _json_or_value(_value(event_attrs.get("message")))
            content = message.get("content") if isinstance(message, dict) else None
            response = _text_of(
                content if content is not None else _value(event_attrs.get("content"))
            )
        elif event.name == "gen_ai.content.prompt" and not messages:
            prompt = _json_or_value(_value(event_attrs.get("gen_ai.prompt")))
            if isinstance(prompt, list):
                messages = [
                    {"role": m.get("role"), "content": _content(m.get("content"))}
                    for m in prompt
                    if isinstance(m, dict)
                ]
        elif event.name == "gen_ai.content.completion" and response is None:
            completion = _json_or_value(_value(event_attrs.get("gen_ai.completion")))
            first = completion[0] if isinstance(completion, list) and completion else completion
            if isinstance(first, dict):
                inner = first.get("message", first)
                response = _text_of(inner.get("content") if isinstance(inner, dict) else None)
    return messages, response


def _indexed(attrs: Mapping[str, AnyValue], prefix: str) -> list[dict[str, Any]]:
    """Flattened attributes ``<prefix><i>.<rest>`` grouped by ``i`` (in order): [{rest: value}]."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        match = _INDEXED.match(key[len(prefix) :])
        if match:
            groups.setdefault(int(match[1]), {})[match[2]] = _value(value)
    return [groups[i] for i in sorted(groups)]


def _openllmetry(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages = [
        {"role": m.get("role", "user"), "content": _content(m.get("content"))}
        for m in _indexed(attrs, "gen_ai.prompt.")
    ]
    completions = _indexed(attrs, "gen_ai.completion.")
    response = _text_of(completions[0].get("content")) if completions else None
    return messages, response


def _openinference(span: Span, attrs: Mapping[str, AnyValue]) -> tuple[list[Message], Any]:
    messages = [_openinference_message(m) for m in _indexed(attrs, "llm.input_messages.")]
    outputs = _indexed(attrs, "llm.output_messages.")
    response = _text_of(outputs[0].get("message.content")) if outputs else None
    if response is None:
        response = _output_value(attrs)
    if messages:
        return messages, response
    return _input_value(attrs), response


def _openinference_message(flat: dict[str, Any]) -> Message:
    role = flat.get("message.role", "user")
    if "message.content" in flat:
        return {"role": role, "content": _content(flat["message.content"])}
    parts: list[dict[str, Any]] = []
    for item in _indexed_plain(flat, "message.contents."):
        kind = item.get("message_content.type")
        if kind == "text":
            parts.append({"type": "text", "text": item.get("message_content.text")})
        elif kind == "image":
            url = item.get("message_content.image.image.url")
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": role, "content": parts}


def _indexed_plain(flat: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    groups: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith(prefix):
            match = _INDEXED.match(key[len(prefix) :])
            if match:
                groups.setdefault(int(match[1]), {})[match[2]] = value
    return [groups[i] for i in sorted(groups)]


def _is_json(attrs: Mapping[str, AnyValue], key: str) -> bool:
    return (_text(attrs, key) or "").split(";")[0].strip().lower() == "application/json"


def _input_value(attrs: Mapping[str, AnyValue]) -> list[Message]:
    value = _text(attrs, "input.value")
    if value is None:
        return []
    if not _is_json(attrs, "input.mime_type"):
        return [{"role": "user", "content": value}]
    body = _json_or_value(value)
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return [m for m in body["messages"] if isinstance(m, dict)]
    if isinstance(body, dict) and isinstance(body.get("prompt"), str):
        return [{"role": "user", "content": body["prompt"]}]
    return []


def _output_value(attrs: Mapping[str, AnyValue]) -> Any:
    value = _text(attrs, "output.value")
    if value is None or not _is_json(attrs, "output.mime_type"):
        return value
    body = _json_or_value(value)
    if isinstance(body, dict) and isinstance(body.get("choices"), list) and body["choices"]:
        choice = body["choices"][0]
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict):
                return _text_of(message.get("content"))
            return choice.get("text")
    return value


def skipped_summary(skipped: Iterable[SkippedSpan]) -> tuple[int, str]:
    """(rejected spans, message) for the response's partial success: LLM spans that became no
    record. Spans that are no LLM calls are not rejected: the monitor has no use for them."""
    by_reason: dict[str, list[SkippedSpan]] = {}
    for span in skipped:
        if span.reason != "not_llm":
            by_reason.setdefault(span.reason, []).append(span)
    if not by_reason:
        return 0, ""
    notes = {
        "no_prompt": "LLM spans without prompt content (turn on the instrumentation's message "
        "content capture)",
        "unknown_stream": "LLM spans whose stream attribute names no configured stream",
        "invalid": "LLM spans whose content the records API refuses",
    }
    parts = []
    for reason, spans in by_reason.items():
        part = f"{len(spans)} {notes.get(reason, reason)}"
        if spans[0].message:
            part += f", e.g. {spans[0].message}"
        parts.append(part)
    return sum(len(s) for s in by_reason.values()), "; ".join(parts)
