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
* ``POST /v1/traces`` (token): OTLP/HTTP traces, see :mod:`monitor.ingest.traces_api`.
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

import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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
from monitor.ingest.parsing import parse_records_body, parse_references_body
from monitor.ingest.readiness import Readiness
from monitor.ingest.request_bodies import RequestRejectedError, parse_json, read_body
from monitor.ingest.service import IngestService
from monitor.ingest.traces_api import traces_router
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository

__all__ = ["create_app", "error_body", "require_token"]

log = logging.getLogger(__name__)

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
    app.include_router(traces_router(settings, metrics, ingest))
    app.include_router(_health_router(metrics, readiness, ingest))
    for router in routers:
        app.include_router(router)
    return app


def _records_router(
    settings: Settings, metrics: MonitorMetrics, ingest: IngestService
) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_token)])
    limit = settings.ingest.max_body_bytes

    @router.post(
        "/v1/records",
        status_code=202,
        summary="Records in, one or a batch (all or nothing); 202 once the sampled ones are "
        "durable in the inbox",
    )
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

    @router.post(
        "/v1/references",
        status_code=202,
        summary="Reference answers for records sent earlier, joined by record id (all or nothing)",
    )
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


def _health_router(
    metrics: MonitorMetrics, readiness: Readiness, ingest: IngestService
) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="Liveness: 200 while the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz", summary="Readiness: 200 when every check is ok, else 503; each check named"
    )
    async def readyz() -> JSONResponse:
        ready, checks = await run_in_threadpool(readiness.snapshot)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @router.get(
        "/metrics", summary="Prometheus metrics (the inbox depth is recounted at each scrape)"
    )
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
