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

**Where the exchange is read**: see :mod:`monitor.ingest.otlp_messages`.

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
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from monitor.config import Settings
from monitor.errors import InvalidInputError
from monitor.ingest.otlp_messages import (
    attribute_value,
    attributes,
    exchange,
    has_user_content,
    text_attribute,
)
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
# How much of one skipped span's error goes into the response's message.
MAX_EXAMPLE_CHARS = 300


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
        resource = attributes(resource_spans.resource.attributes)
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
    attrs = attributes(span.attributes)
    if not _is_llm_span(attrs):
        out.skipped.append(SkippedSpan(span_hex, "not_llm"))
        return
    stream = _stream(attrs, resource, settings, names)
    if stream is None:
        out.skipped.append(SkippedSpan(span_hex, "unknown_stream"))
        return
    where = f"spans[{span_hex}]"
    try:
        messages, response = exchange(span, attrs)
        if not has_user_content(messages):
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


def _is_llm_span(attrs: Mapping[str, AnyValue]) -> bool:
    kind = text_attribute(attrs, "openinference.span.kind")
    if kind is not None:
        return kind.upper() == "LLM"
    operation = text_attribute(attrs, "gen_ai.operation.name")
    if operation is not None:
        return operation in GENAI_LLM_OPERATIONS
    request_type = text_attribute(attrs, "llm.request.type")
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
    value = attribute_value(attrs[key]) if key in attrs else attribute_value(resource.get(key))
    if value is None or value == "":
        return settings.otlp_default_stream
    value = str(value)
    stream = settings.otlp.stream_by_value.get(value, value)
    if stream in names:
        return stream
    return settings.otlp_default_stream if settings.otlp.unknown_stream == "default" else None


def _model(attrs: Mapping[str, AnyValue]) -> str | None:
    for key in ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name"):
        value = text_attribute(attrs, key)
        if value:
            return value
    return None


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
