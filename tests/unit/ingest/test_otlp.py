"""monitor.ingest.otlp as plain functions: spans written by the real OpenTelemetry SDK the way the
GenAI, OpenLLMetry and OpenInference instrumentations write them, turned into records; the
spans that are no LLM calls or carry no prompt skipped with their reason; OTLP JSON decoded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from monitor.config import IngestSettings, OtlpSettings, Settings, StreamSettings
from monitor.errors import InvalidInputError
from monitor.ingest.otlp import (
    SpanRecords,
    decode_json,
    decode_protobuf,
    export_response,
    skipped_summary,
    spans_to_records,
)
from tests.support import otlp_spans
from tests.support.otlp_spans import MODEL, WRITERS, Recorder, encode, png_data_url

NOW = datetime.now(UTC)
STREAMS = [StreamSettings(name="default"), StreamSettings(name="vision")]


def settings(**otlp: Any) -> Settings:
    return Settings(
        streams=STREAMS,
        otlp=OtlpSettings(**otlp),
        ingest=IngestSettings(max_text_chars=1000, image_url_hosts=["cdn.example.com"]),
    )


def mapped(recorder: Recorder, **otlp: Any) -> SpanRecords:
    return spans_to_records(encode(recorder.spans()), settings=settings(**otlp), now=NOW)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_instrumentation_s_llm_span_becomes_a_record(writer: str) -> None:
    recorder = Recorder()
    WRITERS[writer](recorder.tracer, "what is in the picture?", "a red square")
    out = mapped(recorder)
    [span] = recorder.spans()
    [record] = out.records
    assert out.skipped == [] and out.spans == 1
    assert record.prompt == "what is in the picture?"  # the user message; the system one is not
    assert record.response == "a red square"
    assert record.model == MODEL and record.stream == "default" and record.image is None
    ids = span.context
    assert record.id == f"otlp-{ids.trace_id:032x}-{ids.span_id:016x}"
    assert span.end_time is not None
    assert abs(record.timestamp.timestamp() - span.end_time / 1e9) < 1e-5


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_instrumentation_s_image_becomes_the_record_s_image(writer: str) -> None:
    recorder = Recorder()
    url = png_data_url(3)
    WRITERS[writer](recorder.tracer, "describe it", "blue", image_url=url)
    [record] = mapped(recorder).records
    assert record.prompt == "describe it"
    assert record.image is not None and record.image.startswith(b"\x89PNG")


def test_an_http_image_url_is_kept_for_fetching_only_from_an_allowed_host() -> None:
    recorder = Recorder()
    WRITERS["genai_messages"](recorder.tracer, "q", "a", image_url="https://cdn.example.com/a.png")
    WRITERS["genai_messages"](recorder.tracer, "q", "a", image_url="https://evil.example.org/a")
    out = mapped(recorder)
    [record] = out.records
    assert record.image_url == "https://cdn.example.com/a.png" and record.image is None
    [skipped] = out.skipped
    assert skipped.reason == "invalid" and "image_url_hosts" in skipped.message


def test_spans_that_are_no_llm_calls_or_carry_no_prompt_are_skipped_with_their_reason() -> None:
    recorder = Recorder()
    otlp_spans.http_span(recorder.tracer)
    otlp_spans.db_span(recorder.tracer)
    otlp_spans.embedding_span(recorder.tracer)
    otlp_spans.genai_span_without_content(recorder.tracer)
    span = recorder.tracer.start_span("retrieve")
    span.set_attribute("openinference.span.kind", "RETRIEVER")
    span.set_attribute("input.value", "what is in the picture?")
    span.end()
    out = mapped(recorder)
    assert out.records == [] and out.spans == 5
    assert [s.reason for s in out.skipped] == ["not_llm"] * 3 + ["no_prompt", "not_llm"]
    rejected, message = skipped_summary(out.skipped)
    assert rejected == 1  # only the LLM span counts as rejected: the others are of no use
    assert "content capture" in message


def test_the_last_user_message_is_the_prompt_as_in_the_records_api() -> None:
    recorder = Recorder()
    span = recorder.tracer.start_span("openai.chat")
    span.set_attributes(
        {
            "llm.request.type": "chat",
            "gen_ai.system": "openai",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "first question",
            "gen_ai.prompt.1.role": "assistant",
            "gen_ai.prompt.1.content": "first answer",
            "gen_ai.prompt.2.role": "user",
            "gen_ai.prompt.2.content": "follow-up",
            "gen_ai.completion.0.content": "second answer",
        }
    )
    span.end()
    [record] = mapped(recorder).records
    assert record.prompt == "follow-up" and record.response == "second answer"
    assert record.model is None


def test_openinference_input_value_is_read_when_no_input_messages_are_flattened() -> None:
    recorder = Recorder()
    span = recorder.tracer.start_span("llm")
    body = {"model": "m", "messages": [{"role": "user", "content": "from the request body"}]}
    completion = {"choices": [{"message": {"role": "assistant", "content": "from the answer"}}]}
    span.set_attributes(
        {
            "openinference.span.kind": "LLM",
            "input.value": json.dumps(body),
            "input.mime_type": "application/json",
            "output.value": json.dumps(completion),
            "output.mime_type": "application/json",
        }
    )
    span.end()
    [record] = mapped(recorder).records
    assert record.prompt == "from the request body" and record.response == "from the answer"


def test_the_stream_comes_from_the_attribute_through_the_map_or_its_own_name() -> None:
    for service, expected in (("checkout-api", "vision"), ("vision", "vision"), ("x", "default")):
        recorder = Recorder(service_name=service)
        WRITERS["openllmetry"](recorder.tracer, "q", "a")
        [record] = mapped(recorder, stream_map=["checkout-api=vision"]).records
        assert record.stream == expected, service


def test_a_span_attribute_beats_the_resource_and_unknown_values_can_be_skipped() -> None:
    recorder = Recorder(service_name="unknown-service")
    otlp_spans.genai_events_span(recorder.tracer, "q", "a", attributes={"service.name": "vision"})
    WRITERS["genai_events"](recorder.tracer, "q", "a")
    out = mapped(recorder, unknown_stream="skip")
    assert [r.stream for r in out.records] == ["vision"]
    assert [s.reason for s in out.skipped] == ["unknown_stream"]


def test_a_span_without_the_attribute_goes_to_the_default_stream() -> None:
    recorder = Recorder()
    WRITERS["genai_events"](recorder.tracer, "q", "a")
    out = mapped(recorder, stream_attribute="deployment.environment", default_stream="vision")
    assert [r.stream for r in out.records] == ["vision"]


def test_settings_refuse_an_otlp_stream_that_is_not_configured() -> None:
    with pytest.raises(ValueError, match="not configured: nope"):
        Settings(streams=STREAMS, otlp=OtlpSettings(stream_map=["a=nope"]))
    with pytest.raises(ValueError, match="value=stream"):
        OtlpSettings(stream_map=["just-a-name"])


def test_an_invalid_span_is_skipped_with_the_records_api_message_and_the_rest_kept() -> None:
    recorder = Recorder()
    WRITERS["openinference"](recorder.tracer, "x" * 2000, "a")
    WRITERS["openinference"](recorder.tracer, "fine", "a")
    future = int((NOW + timedelta(days=2)).timestamp() * 1e9)
    WRITERS["genai_events"](recorder.tracer, "later", "a", end_ns=future)
    out = mapped(recorder)
    assert [r.prompt for r in out.records] == ["fine"]
    assert [s.reason for s in out.skipped] == ["invalid", "invalid"]
    assert "over the limit of 1,000" in out.skipped[0].message
    assert "in the future" in out.skipped[1].message
    assert out.skipped[0].stream == "default"


def test_a_retried_export_maps_to_the_same_ids() -> None:
    recorder = Recorder()
    WRITERS["genai_messages"](recorder.tracer, "q", "a")
    request = encode(recorder.spans())
    first = spans_to_records(request, settings=settings(), now=NOW)
    again = spans_to_records(
        decode_protobuf(request.SerializeToString()), settings=settings(), now=NOW
    )
    assert [r.id for r in first.records] == [r.id for r in again.records]


# -- decoding and the response --------------------------------------------------------------------

OTLP_JSON = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [{"key": "service.name", "value": {"stringValue": "vision"}}]
            },
            "scopeSpans": [
                {
                    "scope": {"name": "manual"},
                    "spans": [
                        {
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b174",
                            "parentSpanId": "eee19b7ec3c1b173",
                            "name": "chat llava",
                            "kind": 3,
                            "startTimeUnixNano": "1735689600000000000",
                            "endTimeUnixNano": "1735689601500000000",
                            "someFutureField": {"ignored": True},
                            "attributes": [
                                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                {"key": "gen_ai.request.model", "value": {"stringValue": "m-1"}},
                                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                                {
                                    "key": "gen_ai.input.messages",
                                    "value": {
                                        "stringValue": '[{"role": "user", "parts": '
                                        '[{"type": "text", "content": "json prompt"}]}]'
                                    },
                                },
                            ],
                        }
                    ],
                }
            ],
        }
    ]
}


def test_otlp_json_with_hex_ids_decodes_to_the_same_record_as_protobuf() -> None:
    request = decode_json(json.loads(json.dumps(OTLP_JSON)))
    [record] = spans_to_records(request, settings=settings(), now=NOW).records
    assert record.id == "otlp-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    assert record.prompt == "json prompt" and record.model == "m-1" and record.stream == "vision"
    assert record.timestamp == datetime(2025, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    again = decode_protobuf(request.SerializeToString())
    assert again == request


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}, "is not hex"),
        ({"resourceSpans": "nope"}, "not an OTLP ExportTraceServiceRequest"),
        ({"resourceSpans": [{"scopeSpans": [{"spans": [{"endTimeUnixNano": "x"}]}]}]}, "OTLP"),
    ],
)
def test_malformed_otlp_json_is_refused_with_a_message(body: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        decode_json(body)
    assert caught.value.field is not None


def test_malformed_protobuf_is_refused_with_a_message() -> None:
    with pytest.raises(InvalidInputError, match="not a protobuf ExportTraceServiceRequest"):
        decode_protobuf(b"\x0a\xff\xff\xff")
    assert decode_protobuf(b"") == ExportTraceServiceRequest()  # an empty export is valid


def test_the_response_carries_partial_success_in_either_encoding() -> None:
    parsed = ExportTraceServiceResponse.FromString(export_response(2, "why", as_json=False))
    assert parsed.partial_success.rejected_spans == 2
    assert parsed.partial_success.error_message == "why"
    as_json = json.loads(export_response(2, "why", as_json=True))
    assert as_json == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}}
    full = ExportTraceServiceResponse.FromString(export_response(0, "", as_json=False))
    assert not full.HasField("partial_success")
    assert json_format.MessageToDict(full) == {}


def test_an_attribute_of_json_nested_past_the_parser_is_read_as_text_not_a_crash() -> None:
    recorder = Recorder()
    span = recorder.tracer.start_span("openai.chat")
    span.set_attributes(
        {
            "gen_ai.system": "openai",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "[" * 100_000,
        }
    )
    span.end()
    out = mapped(recorder)
    assert out.records == [] and [s.reason for s in out.skipped] == ["invalid"]
    assert "over the limit" in out.skipped[0].message
