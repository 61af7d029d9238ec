"""The monitor's one ASGI app: records and references in, health, readiness and metrics out.

``create_app(settings, repository, metrics, *, readiness=None, ingest=None, routers=())``
builds a FastAPI app from what it is given (nothing global; several apps can live in one
process). The daemon passes its :class:`Readiness` and :class:`IngestService` and extra
routers (the sidecar, the windows API); they are included as they are. ``require_token``
(:mod:`monitor.ingest.auth`) guards the monitor's own routes.

Routes:

* ``POST /v1/records`` (token): one record or ``{"records": [...]}`` (see
  :mod:`monitor.ingest.parsing`), answered
  ``202 {"accepted", "sampled", "duplicates", "skipped", "ids"}`` once the sampled records are
  durable in the inbox. ``duplicates`` counts kept records whose id was already waiting or
  embedded (not stored again, see :class:`~monitor.ingest.service.IngestService`); ``ids`` are
  the ids of all accepted records in order (generated ones included). **A batch is all or
  nothing**: one invalid record rejects the whole batch with the record's place in ``field``
  (``records[3].timestamp``) and nothing is written; so does a full inbox (``429`` with
  ``Retry-After``) and a storage outage (``503`` with ``Retry-After``).
* ``POST /v1/references`` (token): ``{"id", "reference"}`` or ``{"references": [...]}``,
  answered ``202 {"joined", "pending", "skipped"}``; an unknown id is ``404`` (all or nothing,
  see :class:`~monitor.ingest.service.IngestService.add_references`).
* ``POST /v1/traces`` (token): OTLP/HTTP traces, ``application/x-protobuf`` or OTLP JSON
  (``application/json``); LLM spans become records (see :mod:`monitor.ingest.otlp`), which
  then take the records API's path (image URLs, sampling, duplicates, rate cap, inbox, the same
  429 / 503). Answered ``200`` with an ``ExportTraceServiceResponse`` in the request's encoding,
  its ``partial_success`` counting the LLM spans that became no record (no prompt content,
  unknown stream, invalid content: one such span does not refuse the others); spans that are
  no LLM calls are dropped quietly. Malformed protobuf or JSON is a 400 ``invalid_otlp``, an
  other media type a 415, more LLM spans than ``max_batch_records`` a 413. Every span is
  counted in ``mllm_monitor_otlp_spans_total``, every one that became no record in
  ``mllm_monitor_otlp_spans_skipped_total{reason}``.
* ``GET /healthz``: the process answers. ``GET /readyz``: 200 when every readiness check is
  ok, else 503, each check named in the body. ``GET /metrics``: Prometheus exposition of the
  given registry (the inbox depth gauge is recounted at each scrape).

Limits (``[ingest]``): the body must be ``application/json`` in UTF-8 and at most
``max_body_bytes`` (refused on its Content-Length before reading, and counted while streaming);
it may come with ``Content-Encoding: gzip``, inflated to at most ``max_body_bytes`` as well (a
gzip bomb stops at the cap); any other coding is a 415. JSON constants NaN/Infinity are
refused, as is nesting too deep for the parser.

Counting (``mllm_monitor_records_total``): a refused request counts its records as
``rejected`` when they were read (a batch with one invalid record: each of its records), and
once under ``_other`` when it was refused before (size, media type, JSON, a batch over
``max_batch_records``); records refused by a storage outage count as ``unavailable``. The
``inbox_depth`` gauge is NaN while the database cannot be read.

Every error is ``{"error": {"code", "message", "field"}}`` (``field`` null when no single
input is at fault) with a 4xx or 5xx: invalid_json 400, unauthorized 401, not_found /
unknown_record 404, method_not_allowed 405, payload_too_large 413, unsupported_media_type 415,
invalid_field / invalid_image / image_url_refused 422, inbox_full 429, internal_error 500,
storage_unavailable 503 (every 429 and 503 carries ``Retry-After``, ``[ingest] retry_after``).
FastAPI's own validation errors and 404/405 use the same shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.config import Settings
from monitor.errors import (
    ImageDecodeError,
    ImageFetchError,
    InboxFullError,
    InvalidInputError,
    MonitorError,
    PayloadTooLargeError,
    StorageError,
    UnknownRecordError,
)
from monitor.ingest.auth import UnauthorizedError, require_token
from monitor.ingest.inflate import GZIP_WBITS, inflate
from monitor.ingest.otlp import (
    MAX_EXAMPLE_CHARS,
    SkippedSpan,
    decode_json,
    decode_protobuf,
    export_response,
    skipped_summary,
    spans_to_records,
)
from monitor.ingest.parsing import parse_records_body, parse_references_body
from monitor.ingest.readiness import Readiness
from monitor.ingest.service import MAX_PARALLEL_FETCHES, IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository

__all__ = ["RequestRejectedError", "create_app", "error_body", "require_token"]

log = logging.getLogger(__name__)

OTLP_PROTOBUF = "application/x-protobuf"

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class RequestRejectedError(InvalidInputError):
    """A request refused before its content is looked at (encoding, media type, size)."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message, field=field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def create_app(
    settings: Settings,
    repository: Repository,
    metrics: MonitorMetrics,
    *,
    readiness: Readiness | None = None,
    ingest: IngestService | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The monitor's ASGI app, built from what it is given."""
    ingest = ingest or IngestService(settings, repository, metrics)
    readiness = readiness or Readiness()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await ingest.fetcher.aclose()

    app = FastAPI(
        title="mllm-monitor",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.state.ingest = ingest
    _install_error_handlers(app, retry_after=settings.ingest.retry_after.total_seconds())
    app.include_router(_records_router(settings, metrics, ingest))
    app.include_router(_traces_router(settings, metrics, ingest))
    app.include_router(_health_router(metrics, readiness, ingest))
    for router in routers:
        app.include_router(router)
    return app


def _records_router(
    settings: Settings, metrics: MonitorMetrics, ingest: IngestService
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)])
    limit = settings.ingest.max_body_bytes

    @router.post("/v1/records", status_code=202)
    async def post_records(request: Request) -> JSONResponse:
        body: Any = None
        records: list[TrafficRecord] = []
        try:
            raw = await read_body(request, limit)
            body = await run_in_threadpool(parse_json, raw)
            now = datetime.now(UTC)
            records = await run_in_threadpool(parse_records_body, body, settings=settings, now=now)
            batch = isinstance(body, dict) and "records" in body
            fields = [f"records[{i}].image" if batch else "image" for i in range(len(records))]
            records = await ingest.resolve_images(records, fields=fields)
            result = await run_in_threadpool(ingest.submit, records)
        except (InvalidInputError, InboxFullError):
            _count_rejected(metrics, body, settings.ingest.max_batch_records)
            raise
        except StorageError:
            # Refused, not lost: the sender is told to retry (503 with Retry-After); counted so
            # that an outage shows on the records counter and its alert.
            for stream, count in Counter(record.stream for record in records).items():
                metrics.count_records(stream, "unavailable", count)
            raise
        return JSONResponse(
            {
                "accepted": result.accepted,
                "sampled": result.sampled,
                "duplicates": result.duplicates,
                "skipped": result.skipped,
                "ids": result.ids,
            },
            status_code=202,
        )

    @router.post("/v1/references", status_code=202)
    async def post_references(request: Request) -> JSONResponse:
        raw = await read_body(request, limit)
        body = await run_in_threadpool(parse_json, raw)
        items = parse_references_body(body, settings=settings)
        batch = isinstance(body, dict) and "references" in body
        result = await run_in_threadpool(ingest.add_references, items, batch=batch)
        return JSONResponse(
            {"joined": result.joined, "pending": result.pending, "skipped": result.skipped},
            status_code=202,
        )

    return router


def _traces_router(settings: Settings, metrics: MonitorMetrics, ingest: IngestService) -> APIRouter:
    """``POST /v1/traces``: OTLP/HTTP traces whose LLM spans become records (monitor.ingest.otlp),
    then the records API's path: image URLs resolved, sampled, capped, durable in the inbox."""
    router = APIRouter(dependencies=[Depends(require_token)])
    limit = settings.ingest.max_body_bytes

    @router.post("/v1/traces")
    async def post_traces(request: Request) -> Response:
        records: list[TrafficRecord] = []
        try:
            media, _ = _media_type(request)
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


def _health_router(
    metrics: MonitorMetrics, readiness: Readiness, ingest: IngestService
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, checks = await run_in_threadpool(readiness.snapshot)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics_endpoint() -> Response:
        try:
            await run_in_threadpool(ingest.refresh_inbox_depth)
        except StorageError as exc:
            # The scrape still answers while the database is away, but the depth is unknown:
            # NaN, not the last count (a frozen number reads as a healthy inbox).
            metrics.inbox_depth.set(math.nan)
            log.warning("inbox depth not counted for /metrics: %s", exc)
        data = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return router


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused early: wrong media type, declared or actual size over ``limit``."""
    media, params = _media_type(request)
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise RequestRejectedError(
            415,
            "unsupported_media_type",
            f"the body must be application/json, not {media[:100] or 'unspecified'}",
            field="content-type",
        )
    charset = _charset(params)
    if charset not in ("utf-8", "utf8"):
        raise RequestRejectedError(
            415,
            "unsupported_media_type",
            f"the body must be UTF-8, not {charset[:100]}",
            field="content-type",
        )
    data = await read_raw_body(request, limit)
    if not data.strip():
        raise RequestRejectedError(400, "invalid_json", "the body is empty", field="body")
    return data


def _media_type(request: Request) -> tuple[str, str]:
    """(media type in lower case, the Content-Type's parameters)."""
    media, _, params = request.headers.get("content-type", "").partition(";")
    return media.strip().lower(), params


async def read_raw_body(request: Request, limit: int) -> bytes:
    """The body whatever its media type: size over ``limit`` refused (declared or as it
    arrives, and once inflated when it comes gzipped)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestRejectedError(
                400, "bad_request", "Content-Length is not a number", field="content-length"
            )
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    gzipped = _gzipped(request.headers.get("content-encoding", ""))
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _too_large(None, limit)
    data = bytes(received)
    if gzipped:
        data = await run_in_threadpool(gunzip, data, limit)
    return data


def _gzipped(header: str) -> bool:
    """Whether a Content-Encoding is gzip; identity (or none) is plain; anything else is 415."""
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return False
    if coding in ("gzip", "x-gzip"):
        return True
    raise RequestRejectedError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {header.strip()[:100]!r} is not supported: send the body as it "
        "is, or gzip",
        field="content-encoding",
    )


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body (one or more members), refusing it as soon as it passes ``limit``.

    The cap applies to the output: a small gzip bomb stops after ``limit`` bytes of work."""
    try:
        return inflate(data, GZIP_WBITS, limit)
    except PayloadTooLargeError as exc:
        raise _too_large(None, limit, inflated=True) from exc
    except InvalidInputError as exc:  # truncated
        raise RequestRejectedError(
            400, "invalid_encoding", "the gzip body is truncated", field="body"
        ) from exc
    except zlib.error as exc:
        raise RequestRejectedError(
            400, "invalid_encoding", f"the body is not valid gzip: {exc}", field="body"
        ) from exc


def _charset(params: str) -> str:
    """The charset parameter of a Content-Type (UTF-8 when absent), lower-cased."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return "utf-8"


def _too_large(size: int | None, limit: int, *, inflated: bool = False) -> PayloadTooLargeError:
    shown = f"{size:,} bytes" if size is not None else "over the limit"
    what = "the inflated body" if inflated else "the body"
    return PayloadTooLargeError(
        f"{what} is {shown}; the limit is {limit:,} bytes ([ingest] max_body_bytes)",
        field="body",
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes (no NaN/Infinity), or RequestRejectedError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejectedError(
            400,
            "invalid_encoding",
            f"the body is not UTF-8: {exc.reason} at byte {exc.start}",
            field="body",
        ) from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise RequestRejectedError(
            400, "invalid_json", "the JSON is nested too deeply", field="body"
        ) from exc
    except ValueError as exc:
        raise RequestRejectedError(
            400, "invalid_json", f"the body is not valid JSON: {exc}", field="body"
        ) from exc


def _count_rejected(metrics: MonitorMetrics, body: Any, max_batch: int) -> None:
    """Count a refused request's records as rejected, under their stream if configured.

    Only what was looked at counts: a request refused before its records were read (media
    type, size, JSON, a batch over ``max_batch``) is one rejection under ``_other``, so that
    one request cannot claim 100,000 rejections and trip the rejection alert alone."""
    items = body.get("records") if isinstance(body, dict) and "records" in body else [body]
    if not isinstance(items, list) or len(items) > max_batch:
        items = [None]
    for item in items:
        stream = item.get("stream", "default") if isinstance(item, dict) else None
        metrics.count_records(stream if isinstance(stream, str) else None, "rejected")


def _status_and_code(exc: MonitorError) -> tuple[int, str]:
    if isinstance(exc, RequestRejectedError):
        return exc.status, exc.code
    table: tuple[tuple[type[MonitorError], int, str], ...] = (
        (UnauthorizedError, 401, "unauthorized"),
        (PayloadTooLargeError, 413, "payload_too_large"),
        (UnknownRecordError, 404, "unknown_record"),
        (ImageFetchError, 422, "image_url_refused"),
        (ImageDecodeError, 422, "invalid_image"),
        (InvalidInputError, 422, "invalid_field"),
        (InboxFullError, 429, "inbox_full"),
        (StorageError, 503, "storage_unavailable"),
    )
    for cls, status, code in table:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def _install_error_handlers(app: FastAPI, *, retry_after: float) -> None:
    async def monitor_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MonitorError)
        status, code = _status_and_code(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, InboxFullError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if isinstance(exc, StorageError):  # an outage is temporary: say when to come back
            headers["Retry-After"] = str(max(1, round(retry_after)))
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500:
            log.error("request failed: %s", exc)
        field = getattr(exc, "field", None)
        return JSONResponse(error_body(code, str(exc), field), status_code=status, headers=headers)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return JSONResponse(
            error_body("invalid_request", str(first.get("msg", "invalid request")), field),
            status_code=422,
        )

    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "the monitor failed on this request; see its log"),
            status_code=500,
        )

    app.add_exception_handler(MonitorError, monitor_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
