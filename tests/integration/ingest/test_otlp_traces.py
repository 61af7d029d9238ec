"""POST /v1/traces on loopback with the real OpenTelemetry OTLP/HTTP exporter (protobuf, gzip
too) and OTLP JSON posted with httpx: LLM spans land in the inbox as records, a retried export
is no second record, other spans are counted and skipped; bad bodies are 400 / 415 / 413 with a
message, a wrong token 401, a full inbox 429 with Retry-After, which the exporter waits out."""

from __future__ import annotations

import gzip
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from monitor.config import OtlpSettings, ServerSettings, Settings, StreamSettings
from monitor.records import TrafficRecord
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import TEST_INGEST, RunningApp, make_settings
from tests.support import otlp_spans
from tests.support.otlp_spans import WRITERS, Recorder, png_data_url
from tests.unit.ingest.test_otlp import OTLP_JSON

TOKEN = "otlp-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INBOX_LIMIT = 40
PROTOBUF = {"content-type": "application/x-protobuf", **AUTH}


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        server=ServerSettings(token=TOKEN),
        streams=[StreamSettings(name="default"), StreamSettings(name="vision")],
        otlp=OtlpSettings(stream_map=["vision-api=vision"]),
        ingest=TEST_INGEST.model_copy(
            update={"retry_after": timedelta(seconds=1), "max_inbox_depth": INBOX_LIMIT}
        ),
    )


def exporter(url: str, *, token: str = TOKEN, **options: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=f"{url}/v1/traces",
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
        **options,
    )


def inbox(repository: Repository) -> dict[str, TrafficRecord]:
    return {e.record.id: e.record for e in repository.claim("peek", limit=1000, lease=timedelta(1))}


def scrape(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                return float(value)
    raise AssertionError(f"{name} not in the scrape")


def a_mixed_trace(recorder: Recorder) -> None:
    """Each instrumentation's LLM span (one with an image) among HTTP, database, embedding spans
    and an LLM span whose content was not captured."""
    for i, writer in enumerate(sorted(WRITERS)):
        otlp_spans.http_span(recorder.tracer)
        image = png_data_url(i) if i % 2 == 0 else None
        WRITERS[writer](recorder.tracer, f"question {writer}", f"answer {writer}", image_url=image)
        otlp_spans.db_span(recorder.tracer)
    otlp_spans.embedding_span(recorder.tracer)
    otlp_spans.genai_span_without_content(recorder.tracer)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_real_exporter_s_llm_spans_land_in_the_inbox_once(
    running_app: RunningApp, compression: Compression
) -> None:
    recorder = Recorder(service_name="vision-api")
    a_mixed_trace(recorder)
    spans = recorder.spans()
    otlp = exporter(running_app.url, compression=compression)
    assert otlp.export(spans) == SpanExportResult.SUCCESS
    held = inbox(running_app.repository)
    assert sorted(r.prompt or "" for r in held.values()) == [
        f"question {w}" for w in sorted(WRITERS)
    ]
    assert all(r.stream == "vision" and r.model == otlp_spans.MODEL for r in held.values())
    assert sum(r.image is not None for r in held.values()) == 2
    assert {r.response for r in held.values()} == {f"answer {w}" for w in sorted(WRITERS)}
    # The exporter's retry (or a Collector's) is the same ids: duplicates, nothing new stored.
    assert otlp.export(spans) == SpanExportResult.SUCCESS
    assert running_app.repository.inbox_depth() == len(WRITERS)
    url = running_app.url
    assert scrape(url, "mllm_monitor_otlp_spans_total") == 2 * len(spans)
    skipped = 'mllm_monitor_otlp_spans_skipped_total{reason="not_llm"}'
    assert scrape(url, skipped) == 2 * (2 * len(WRITERS) + 1)
    no_prompt = 'mllm_monitor_otlp_spans_skipped_total{reason="no_prompt"}'
    assert scrape(url, no_prompt) == 2
    duplicate = 'mllm_monitor_records_total{outcome="duplicate",stream="vision"}'
    assert scrape(url, duplicate) == len(WRITERS)
    otlp.shutdown()  # type: ignore[no-untyped-call]


def test_the_response_is_an_export_response_with_the_rejected_llm_spans(
    running_app: RunningApp,
) -> None:
    recorder = Recorder()
    WRITERS["openllmetry"](recorder.tracer, "kept", "a")
    WRITERS["openllmetry"](recorder.tracer, "x" * 20_000, "a")  # over max_text_chars
    otlp_spans.genai_span_without_content(recorder.tracer)
    otlp_spans.http_span(recorder.tracer)
    body = otlp_spans.encode(recorder.spans()).SerializeToString()
    answer = httpx.post(f"{running_app.url}/v1/traces", content=body, headers=PROTOBUF)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(answer.content)
    assert parsed.partial_success.rejected_spans == 2
    message = parsed.partial_success.error_message
    assert "1 LLM spans without prompt content" in message
    assert "over the limit of 10,000" in message
    assert [r.prompt for r in inbox(running_app.repository).values()] == ["kept"]


def test_otlp_json_posted_with_httpx_lands_in_the_inbox(running_app: RunningApp) -> None:
    document = json.loads(json.dumps(OTLP_JSON))
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    # A recent time (the inbox takes any past time; windows want it near now).
    spans[0]["endTimeUnixNano"] = str(time.time_ns())
    headers = {**AUTH, "content-encoding": "gzip"}
    answer = httpx.post(
        f"{running_app.url}/v1/traces",
        content=gzip.compress(json.dumps(document).encode()),
        headers={**headers, "content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {}  # full success: no partial_success
    [record] = inbox(running_app.repository).values()
    assert record.id == "otlp-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    assert record.prompt == "json prompt" and record.stream == "vision"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "words"),
    [
        (b"\x0a\xff\xff\xff", "application/x-protobuf", 400, "invalid_otlp", "protobuf"),
        (b'{"resourceSpans": [', "application/json", 400, "invalid_json", "not valid JSON"),
        (b'{"resourceSpans": "x"}', "application/json", 400, "invalid_otlp", "OTLP"),
        (b"", "application/json", 400, "invalid_json", "not valid JSON"),
        (b"{}", "text/plain", 415, "unsupported_media_type", "application/x-protobuf"),
        (b"\x00" * (5 * 1024 * 1024), "application/x-protobuf", 413, "payload_too_large", "limit"),
    ],
)
def test_bad_bodies_are_refused_with_a_message(
    running_app: RunningApp, body: bytes, content_type: str, status: int, code: str, words: str
) -> None:
    answer = httpx.post(
        f"{running_app.url}/v1/traces", content=body, headers={**AUTH, "content-type": content_type}
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and words in error["message"]
    assert running_app.repository.inbox_depth() == 0


def test_without_the_token_the_exporter_is_refused(running_app: RunningApp) -> None:
    recorder = Recorder()
    WRITERS["genai_events"](recorder.tracer, "q", "a")
    assert exporter(running_app.url, token="wrong").export(recorder.spans()) == (
        SpanExportResult.FAILURE
    )
    body = otlp_spans.encode(recorder.spans()).SerializeToString()
    answer = httpx.post(
        f"{running_app.url}/v1/traces",
        content=body,
        headers={"content-type": "application/x-protobuf"},
    )
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert running_app.repository.inbox_depth() == 0


def test_a_full_inbox_is_429_with_retry_after_and_the_exporter_retries(
    running_app: RunningApp, repository: Repository
) -> None:
    filler = [{"id": f"fill-{i}", "prompt": "p"} for i in range(INBOX_LIMIT)]
    answer = httpx.post(
        f"{running_app.url}/v1/records", json={"records": filler}, headers=AUTH, timeout=60
    )
    assert answer.status_code == 202, answer.text
    recorder = Recorder()
    WRITERS["openinference"](recorder.tracer, "waited", "a")
    body = otlp_spans.encode(recorder.spans()).SerializeToString()
    answer = httpx.post(f"{running_app.url}/v1/traces", content=body, headers=PROTOBUF)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert "max_inbox_depth" in answer.json()["error"]["message"]

    # The exporter gets the same 429, waits Retry-After and sends again; meanwhile the inbox
    # drains (a worker would), so a later attempt is taken.
    result: list[SpanExportResult] = []
    sending = threading.Thread(
        target=lambda: result.append(exporter(running_app.url).export(recorder.spans()))
    )
    sending.start()
    rejected = 'mllm_monitor_records_total{outcome="rejected",stream="vision"}'
    deadline = time.monotonic() + 10
    while scrape(running_app.url, rejected) < 2:  # the test's 429, then the exporter's
        assert time.monotonic() < deadline, "the exporter was not refused"
        time.sleep(0.05)
    entries = repository.claim("drain", limit=INBOX_LIMIT)
    repository.ack([e.id for e in entries], "drain")
    sending.join(30)
    assert result == [SpanExportResult.SUCCESS]
    assert [r.prompt for r in inbox(repository).values()] == ["waited"]
