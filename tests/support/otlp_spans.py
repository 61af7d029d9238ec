"""Spans written with the real OpenTelemetry SDK the way LLM instrumentations write them:
GenAI semantic-convention events (``gen_ai.user.message`` ... ``gen_ai.choice``), the newer
``gen_ai.input.messages`` / ``gen_ai.output.messages`` attributes, OpenLLMetry's flattened
``gen_ai.prompt.{i}`` attributes, OpenInference's ``llm.input_messages.{i}``; plus the HTTP
and database spans around them. ``encode`` turns finished spans into the
``ExportTraceServiceRequest`` the OTLP exporter sends."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from PIL import Image

MODEL = "llava-v1.5-13b"


class Recorder:
    """A tracer of its own provider (``service.name`` as given) whose finished spans are kept."""

    def __init__(self, service_name: str = "vision-api", **resource: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, **resource})
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests.otlp")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def clear(self) -> None:
        self.exporter.clear()


def encode(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def png_data_url(seed: int = 0) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _times(end_ns: int | None) -> dict[str, Any]:
    return {} if end_ns is None else {"start_time": end_ns - 2_000_000_000}


def _end(span: Any, end_ns: int | None) -> None:
    span.end(end_time=end_ns)


def genai_events_span(
    tracer: Tracer,
    prompt: str,
    answer: str,
    *,
    image_url: str | None = None,
    end_ns: int | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    """GenAI semconv (1.28-1.36): ``gen_ai.*`` attributes, the messages as span events whose
    ``content`` is text or JSON parts, the answer in ``gen_ai.choice``'s ``message``."""
    span = tracer.start_span(f"chat {MODEL}", kind=SpanKind.CLIENT, **_times(end_ns))
    span.set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.usage.input_tokens": 12,
            **(attributes or {}),
        }
    )
    span.add_event("gen_ai.system.message", {"gen_ai.system": "openai", "content": "Be brief."})
    content: str = prompt
    if image_url is not None:
        content = json.dumps(
            [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]
        )
    span.add_event("gen_ai.user.message", {"gen_ai.system": "openai", "content": content})
    span.add_event(
        "gen_ai.choice",
        {
            "gen_ai.system": "openai",
            "index": 0,
            "finish_reason": "stop",
            "message": json.dumps({"role": "assistant", "content": answer}),
        },
    )
    _end(span, end_ns)


def genai_messages_span(
    tracer: Tracer,
    prompt: str,
    answer: str,
    *,
    image_url: str | None = None,
    end_ns: int | None = None,
) -> None:
    """GenAI semconv 1.37+: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON)."""
    span = tracer.start_span(f"chat {MODEL}", kind=SpanKind.CLIENT, **_times(end_ns))
    parts: list[dict[str, Any]] = [{"type": "text", "content": prompt}]
    if image_url is not None:
        parts.append({"type": "uri", "modality": "image", "uri": image_url})
    span.set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": parts}]),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": answer}],
                        "finish_reason": "stop",
                    }
                ]
            ),
        }
    )
    _end(span, end_ns)


def openllmetry_span(
    tracer: Tracer,
    prompt: str,
    answer: str,
    *,
    image_url: str | None = None,
    end_ns: int | None = None,
) -> None:
    """OpenLLMetry (traceloop): flattened ``gen_ai.prompt.{i}.*`` and ``gen_ai.completion.{i}.*``;
    a multimodal content is JSON text of OpenAI parts."""
    span = tracer.start_span("openai.chat", kind=SpanKind.CLIENT, **_times(end_ns))
    content = prompt
    if image_url is not None:
        content = json.dumps(
            [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]
        )
    span.set_attributes(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "Be brief.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": content,
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": answer,
            "gen_ai.completion.0.finish_reason": "stop",
        }
    )
    _end(span, end_ns)


def openinference_span(
    tracer: Tracer,
    prompt: str,
    answer: str,
    *,
    image_url: str | None = None,
    end_ns: int | None = None,
) -> None:
    """OpenInference (Arize/Phoenix): ``llm.input_messages.{i}.message.*`` (multimodal through
    ``message.contents.{j}.message_content.*``), ``input.value`` as the OpenAI request body."""
    span = tracer.start_span("ChatCompletion", kind=SpanKind.INTERNAL, **_times(end_ns))
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": MODEL,
        "llm.provider": "openai",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Be brief.",
        "llm.input_messages.1.message.role": "user",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": answer,
        "input.value": json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        ),
        "input.mime_type": "application/json",
        "output.mime_type": "application/json",
    }
    if image_url is None:
        attributes["llm.input_messages.1.message.content"] = prompt
    else:
        first = "llm.input_messages.1.message.contents.0.message_content"
        second = "llm.input_messages.1.message.contents.1.message_content"
        attributes |= {
            f"{first}.type": "text",
            f"{first}.text": prompt,
            f"{second}.type": "image",
            f"{second}.image.image.url": image_url,
        }
    span.set_attributes(attributes)
    _end(span, end_ns)


def http_span(tracer: Tracer, route: str = "/api/ask") -> None:
    """What an HTTP server instrumentation writes around the LLM call."""
    span = tracer.start_span(f"POST {route}", kind=SpanKind.SERVER)
    span.set_attributes(
        {"http.request.method": "POST", "http.route": route, "http.response.status_code": 200}
    )
    span.end()


def db_span(tracer: Tracer) -> None:
    span = tracer.start_span("SELECT answers", kind=SpanKind.CLIENT)
    span.set_attributes(
        {"db.system": "postgresql", "db.operation.name": "SELECT", "db.collection.name": "answers"}
    )
    span.end()


def embedding_span(tracer: Tracer) -> None:
    """A GenAI span that is no chat exchange: skipped as not_llm."""
    span = tracer.start_span("embeddings text-embedding-3-small", kind=SpanKind.CLIENT)
    span.set_attributes(
        {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "text-embedding-3-small",
        }
    )
    span.end()


def genai_span_without_content(tracer: Tracer) -> None:
    """What a GenAI instrumentation writes with content capture off (its default)."""
    span = tracer.start_span(f"chat {MODEL}", kind=SpanKind.CLIENT)
    span.set_attributes(
        {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": MODEL}
    )
    span.end()


WRITERS = {
    "genai_events": genai_events_span,
    "genai_messages": genai_messages_span,
    "openllmetry": openllmetry_span,
    "openinference": openinference_span,
}
