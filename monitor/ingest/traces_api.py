"""``POST /v1/traces``: OTLP/HTTP traces in, records out (``traces_router`` of the ingest app).

The route needs the monitor's bearer token. OTLP/HTTP traces, ``application/x-protobuf`` or
OTLP JSON (``application/json``); LLM spans become records (see :mod:`monitor.ingest.otlp`), which
then take the records API's path (image URLs, sampling, duplicates, rate cap, inbox, the same
429 / 503). Answered ``200`` with an ``ExportTraceServiceResponse`` in the request's encoding,
its ``partial_success`` counting the LLM spans that became no record (no prompt content,
unknown stream, invalid content: one such span does not refuse the others); spans that are
no LLM calls are dropped quietly. Malformed protobuf or JSON is a 400 ``invalid_otlp``, an
other media type a 415, more LLM spans than ``max_batch_records`` a 413. Every span is
counted in ``mllm_monitor_otlp_spans_total``, every one that became no record in
``mllm_monitor_otlp_spans_skipped_total{reason}``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.concurrency import run_in_threadpool

from monitor.config import Settings
from monitor.errors import InboxFullError, InvalidInputError, PayloadTooLargeError, StorageError
from monitor.ingest.auth import require_token
from monitor.ingest.otlp import (
    MAX_EXAMPLE_CHARS,
    SkippedSpan,
    decode_json,
    decode_protobuf,
    export_response,
    skipped_summary,
    spans_to_records,
)
from monitor.ingest.request_bodies import (
    RequestRejectedError,
    media_type,
    parse_json,
    read_raw_body,
)
from monitor.ingest.service import MAX_PARALLEL_FETCHES, IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord

OTLP_PROTOBUF = "application/x-protobuf"


def traces_router(settings: Settings, metrics: MonitorMetrics, ingest: IngestService) -> APIRouter:
    """``POST /v1/traces``: OTLP/HTTP traces whose LLM spans become records (monitor.ingest.otlp),
    then the records API's path: image URLs resolved, sampled, capped, durable in the inbox."""
    router = APIRouter(dependencies=[Depends(require_token)])
    limit = settings.ingest.max_body_bytes

    @router.post(
        "/v1/traces",
        summary="OTLP/HTTP traces (protobuf or JSON): LLM spans become records, as posted ones do",
    )
    async def post_traces(request: Request) -> Response:
        records: list[TrafficRecord] = []
        try:
            media, _ = media_type(request)
            if media not in (OTLP_PROTOBUF, "application/json"):
                raise RequestRejectedError(
                    415,
                    "unsupported_media_type",
                    f"OTLP traces are {OTLP_PROTOBUF} or application/json, not "
                    f"{media[:100] or 'unspecified'}",
                    field="content-type",
                )
            raw = await read_raw_body(request, limit)
            export = await run_in_threadpool(_decode_traces, raw, media)
            now = datetime.now(UTC)
            mapped = await run_in_threadpool(spans_to_records, export, settings=settings, now=now)
            if len(mapped.records) > settings.ingest.max_batch_records:
                raise PayloadTooLargeError(
                    f"{len(mapped.records):,} LLM spans in one request, over the limit of "
                    f"{settings.ingest.max_batch_records:,} ([ingest] max_batch_records)",
                    field="body",
                )
            records, failed = await _resolve_each(ingest, mapped.records)
            if records:
                await run_in_threadpool(ingest.submit, records)
        except InboxFullError:
            for stream, count in Counter(record.stream for record in records).items():
                metrics.count_records(stream, "rejected", count)
            raise
        except InvalidInputError:
            metrics.count_records(None, "rejected")  # refused before its spans were read
            raise
        except StorageError:
            for stream, count in Counter(record.stream for record in records).items():
                metrics.count_records(stream, "unavailable", count)
            raise
        skipped = [*mapped.skipped, *failed]
        metrics.otlp_spans.inc(mapped.spans)
        for span in skipped:
            metrics.otlp_spans_skipped.labels(reason=span.reason).inc()
            if span.reason == "invalid":
                metrics.count_records(span.stream, "rejected")
        rejected, message = skipped_summary(skipped)
        body = export_response(rejected, message, as_json=media == "application/json")
        return Response(body, status_code=200, media_type=media)

    return router


def _decode_traces(raw: bytes, media: str) -> ExportTraceServiceRequest:
    """The OTLP request in either encoding; a malformed one is a 400 with the parser's word."""
    try:
        if media == OTLP_PROTOBUF:
            return decode_protobuf(raw)
        return decode_json(parse_json(raw))
    except RequestRejectedError:
        raise
    except InvalidInputError as exc:
        raise RequestRejectedError(400, "invalid_otlp", str(exc), field=exc.field) from exc


async def _resolve_each(
    ingest: IngestService, records: list[TrafficRecord]
) -> tuple[list[TrafficRecord], list[SkippedSpan]]:
    """Records with their image URLs fetched, one span at a time: a span whose image cannot be
    fetched is skipped as invalid, the others go on (an OTLP batch is not all or nothing)."""
    gate = asyncio.Semaphore(MAX_PARALLEL_FETCHES)

    async def resolve(record: TrafficRecord) -> TrafficRecord | SkippedSpan:
        if record.image_url is None:
            return record
        span_id = record.id.rsplit("-", 1)[-1]
        async with gate:
            try:
                [resolved] = await ingest.resolve_images([record], fields=[f"spans[{span_id}]"])
            except InvalidInputError as exc:
                shown = f"{exc.field}: {exc}"[:MAX_EXAMPLE_CHARS]
                return SkippedSpan(span_id, "invalid", record.stream, shown)
        return resolved

    outcomes = await asyncio.gather(*(resolve(record) for record in records))
    kept = [item for item in outcomes if isinstance(item, TrafficRecord)]
    return kept, [item for item in outcomes if isinstance(item, SkippedSpan)]
