"""The sidecar: an OpenAI-compatible pass-through in front of the inference server.

    build_proxy_router(settings, ingest, metrics, *, transport=None) -> APIRouter

Routes (none of them needs the monitor's token: the client's own ``Authorization`` header goes
to the upstream, which decides):

* ``POST /v1/chat/completions``: forwarded to ``[proxy] upstream``, streamed (SSE) or not, and
  the exchange sampled once it is complete;
* ``POST /v1/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``: forwarded, not sampled.

What the client gets is what the upstream sent: status, headers (less the hop-by-hop ones,
which belong to each connection) and body bytes, upstream errors included. The upstream gets
the client's request as it came: method, path, query, headers (less the hop-by-hop ones) and
body; nothing is added (no default user agent or accept-encoding) and nothing is kept between
requests (no cookie jar). A request body within ``[proxy] max_sample_bytes`` is read whole; a
larger one (or one of unknown length) is streamed to the upstream as it arrives, never held. An
SSE stream is relayed chunk by chunk as it arrives, never buffered; a whole answer (JSON) is read
and sent in one piece, unless it is larger than ``max_sample_bytes``: that is relayed as it
arrives too. A client that hangs up (waiting for an answer, or mid-stream) ends the
upstream request. An upstream that answers before the body is sent (an early 413) has its
answer relayed. The sidecar answers by itself only when a request is over ``[proxy]
max_body_bytes`` (413, on its Content-Length before reading, or as it arrives) or when it
cannot reach the upstream at all: 502 (or 504 on a timeout), all with an OpenAI-style error. An
upstream that breaks off an SSE answer gets the stream ended with an OpenAI-style error event
(``data: {"error": ...}``, which OpenAI clients raise), never a clean ``[DONE]``. A client or an
upstream that breaks off is an ordinary event: one warning line, and a lost sample counted
``aborted``.

Sampling is off the request path and fails open. The complete exchange (request body, answer
bytes) goes on a bounded in-memory queue that a background task drains into
``IngestService.submit`` in a thread, in batches (up to 64 exchanges, gathered for up to 50 ms:
one hand-off to the thread per batch, not per exchange); the response has been relayed already.
A full queue, a full inbox, a database outage or a monitor bug never changes, fails or delays
what the client receives: the loss is counted in ``proxy_fail_open{reason}`` and as a
``dropped`` record (``invalid`` exchanges, which cannot become a record, count as
``rejected``). An exchange whose request or (inflated) answer is over ``[proxy]
max_sample_bytes`` passes unsampled, counted ``too_large``: a compressed answer is inflated
with that cap, never whole.

Sample ids: the upstream's completion id while it is new, so that a late reference can be
posted under the id the client saw; a completion id the sidecar has seen recently (it keeps the
last 16,384) gets an id of the sidecar's own, ``<completion id>~<8 hex digits>``; so does one
that the inbox reports as a duplicate (stored before this process began remembering ids: it is
counted ``duplicate`` once, then sampled under the new id). An upstream that reuses ids never
merges exchanges.

``[proxy] upstream`` is the inference server's root URL (``http://127.0.0.1:8000``); the request
path is appended. A base ending in ``/v1`` (as OpenAI clients write it) is accepted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Send

from monitor.config import Settings
from monitor.errors import (
    ClientGoneError,
    ConfigError,
    InboxFullError,
    InvalidInputError,
    PayloadTooLargeError,
    StorageError,
)
from monitor.ingest.parsing import parse_record
from monitor.ingest.proxy_body import (
    RelayedResponse,
    RequestBody,
    WholeResponse,
    assemble_json,
    assemble_sse,
    broken_event,
    cancelled_on_hang_up,
    declared_body,
    decoded,
    json_object,
    raw_body,
    upstream_transport,
)
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord

log = logging.getLogger("monitor.ingest.proxy")

# RFC 9110 section 7.6.1: these describe one connection, never forwarded by a proxy. ``host``
# and ``content-length`` are recomputed for the upstream request.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"host", "content-length"}
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
_NOT_FORWARDED_UPSTREAM_BYTES = frozenset(name.encode() for name in _NOT_FORWARDED_UPSTREAM)
_ROUTES = ("chat_completions", "completions", "models")
# Upstream URLs kept parsed, by (path, query): parsing one costs more than relaying a chunk.
_URL_CACHE_SIZE = 256

# Most exchanges submitted to the inbox in one transaction.
_SUBMIT_BATCH = 64
# How long the sampler waits for more exchanges before it submits a batch short of _SUBMIT_BATCH.
_SUBMIT_LINGER_SECONDS = 0.05


# Completion ids remembered to tell a reused one (an upstream answering chatcmpl-CONSTANT).
_RECENT_IDS = 16_384


@dataclass(frozen=True, slots=True)
class Exchange:
    """A completed chat completion as it passed through: what sampling starts from."""

    request_body: bytes
    response_body: bytes
    content_type: str
    content_encoding: str
    received_at: datetime


@dataclass(slots=True)
class _Exchange:
    """One request on its way through: its body, and whether its answer is to be sampled."""

    body: RequestBody
    sample: bool  # the route samples (chat completions)
    sampled: bool = False  # ... and the upstream said 200
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class _RecentIds:
    """A bounded memory of completion ids: a new one is used as it is, a repeated one gets a
    random suffix (thread-safe: sampling threads call it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def unique(self, completion_id: str) -> str:
        with self._lock:
            if completion_id not in self._seen:
                self._remember(completion_id)
                return completion_id
        return self.own(completion_id)

    def own(self, completion_id: str) -> str:
        """An id of the sidecar's own for an exchange whose completion id is taken."""
        own = f"{completion_id}~{secrets.token_hex(4)}"
        with self._lock:
            self._remember(own)
        return own

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)


class SidecarProxy:
    """State of the sidecar: the upstream client, the sampling queue and its consumer task."""

    def __init__(
        self,
        settings: Settings,
        ingest: IngestService,
        metrics: MonitorMetrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        proxy = settings.proxy
        if not proxy.upstream:
            raise ConfigError("[proxy] upstream is empty: there is nothing to forward to")
        upstream = httpx.URL(proxy.upstream)
        if upstream.scheme not in ("http", "https") or not upstream.host:
            raise ConfigError(f"[proxy] upstream must be an http(s) URL, got {proxy.upstream!r}")
        streams = [s.name for s in settings.streams]
        if proxy.stream not in streams:
            raise ConfigError(
                f"[proxy] stream {proxy.stream!r} is not a configured stream ({', '.join(streams)})"
            )
        self.settings = settings
        self.ingest = ingest
        self.metrics = metrics
        self.stream = proxy.stream
        self._base = _upstream_base(proxy.upstream)
        self._max_sample_bytes = proxy.max_sample_bytes
        self._queue_size = proxy.sample_queue_size
        # The transport, not an httpx client: a client would add its default headers (user
        # agent, accept-encoding) to what the caller sent, keep the upstream's cookies and send
        # them with other callers' requests, and cost more CPU per request. Redirects are the
        # upstream's answer and reach the client as they are; no env proxy is ever used.
        self._own_transport = transport is None
        self.transport = transport or upstream_transport(proxy.max_connections)
        self._max_body_bytes = proxy.max_body_bytes
        self._recent_ids = _RecentIds(_RECENT_IDS)
        # Read-only, shared by every request (the transport reads the "timeout" extension).
        self._timeout = httpx.Timeout(
            proxy.timeout.total_seconds(), connect=proxy.connect_timeout.total_seconds()
        ).as_dict()
        self._urls: dict[tuple[bytes, bytes], httpx.URL] = {}
        self._forwarded = {route: metrics.proxy_requests.labels(route=route) for route in _ROUTES}
        self._queue: asyncio.Queue[Exchange] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.router = self._build_router()

    # -- routes ----------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        # Plain Starlette routes: the request goes to the handler as it is (no FastAPI
        # parameter parsing or validation on the hot path).
        router = APIRouter(lifespan=self._lifespan)

        async def chat_completions(request: Request) -> Response:
            return await self.forward(request, route="chat_completions", sample=True)

        async def completions(request: Request) -> Response:
            return await self.forward(request, route="completions", sample=False)

        async def models(request: Request) -> Response:
            return await self.forward(request, route="models", sample=False)

        router.routes.extend(
            [
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", models, methods=["GET"]),
            ]
        )
        return router

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()

    async def forward(self, request: Request, *, route: str, sample: bool) -> Response:
        """Relay one request to the upstream and its response back, unchanged."""
        started = time.perf_counter()
        self._forwarded[route].inc()
        scope = request.scope
        url = self._url(scope.get("raw_path") or scope["path"].encode(), scope["query_string"])
        if url is None:
            return _sidecar_error(
                400,
                "invalid_path",
                "a path with '.' or '..' segments is not forwarded (it could leave the proxied "
                "routes on the upstream)",
                error_type="invalid_request_error",
            )
        headers = _forwardable(scope["headers"], _NOT_FORWARDED_UPSTREAM_BYTES)
        try:
            declared, chunked = declared_body(scope["headers"])
        except ValueError:
            return _sidecar_error(
                400,
                "invalid_content_length",
                "Content-Length is not a number",
                error_type="invalid_request_error",
            )
        if declared is not None and declared > self._max_body_bytes:
            return self._too_large(declared)
        body = RequestBody(
            request, limit=self._max_body_bytes, keep=self._max_sample_bytes if sample else 0
        )
        content: bytes | RequestBody
        try:
            if declared is None and not chunked:
                content = await body.read()  # no body (b""): its one empty message
            elif declared is not None and declared <= self._max_sample_bytes:
                content = await body.read()  # small: one piece, with its length
            else:
                # Large, or of unknown length: streamed to the upstream as it arrives, never
                # held (only a sampling copy, while it is within max_sample_bytes).
                content = body
                if declared is not None:
                    headers.append((b"content-length", str(declared).encode()))
        except PayloadTooLargeError:
            return self._too_large(None)
        except ClientGoneError as exc:
            return self._aborted(sample, str(exc))
        upstream_request = httpx.Request(
            scope["method"],
            url,
            headers=headers,
            content=content,
            extensions={"timeout": self._timeout},
        )
        sent = time.perf_counter()
        exchange = _Exchange(body, sample)
        async with cancelled_on_hang_up(request.receive, body) as hang_up:
            result = await self._exchange(upstream_request, exchange)
        if hang_up.hung_up:
            return self._aborted(sample, "the client went away before the answer came")
        response, answered = result
        self.metrics.proxy_added_latency_seconds.observe(
            (sent - started) + (time.perf_counter() - answered)
        )
        return response

    async def _exchange(
        self, upstream_request: httpx.Request, exchange: _Exchange
    ) -> tuple[Response, float]:
        """Send the request; the response to relay and when the sidecar had it."""
        try:
            upstream = await self.transport.handle_async_request(upstream_request)
        except PayloadTooLargeError:
            return self._too_large(None), time.perf_counter()
        except ClientGoneError as exc:
            return self._aborted(exchange.sample, str(exc)), time.perf_counter()
        except httpx.TimeoutException as exc:
            error = _sidecar_error(504, "upstream_timeout", f"the upstream timed out: {exc!r}")
            return error, time.perf_counter()
        except httpx.HTTPError as exc:
            error = _sidecar_error(502, "upstream_unreachable", f"the upstream failed: {exc!r}")
            return error, time.perf_counter()
        answered = time.perf_counter()
        exchange.sampled = exchange.sample and upstream.status_code == 200
        exchange.received_at = datetime.now(UTC)
        headers = _forwardable(upstream.headers.raw, _HOP_BY_HOP_BYTES)
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            # A stream is relayed chunk by chunk as it arrives.
            relayed = RelayedResponse(
                lambda receive, send: self._relay(upstream, headers, exchange, receive, send)
            )
            return relayed, answered
        # A whole answer (JSON, an error) is read and sent in one piece: the client cannot use
        # half of it, and one piece costs the sidecar less than a relay. One larger than
        # max_sample_bytes (it will not be sampled) is relayed as it arrives, never held.
        chunks = aiter(raw_body(upstream))
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > self._max_sample_bytes:
                    if exchange.sampled:
                        exchange.sampled = False
                        self._lose("too_large", "answer over [proxy] max_sample_bytes")
                    relayed = RelayedResponse(
                        lambda receive, send: self._relay(
                            upstream, headers, exchange, receive, send, parts, chunks
                        )
                    )
                    return relayed, answered
        except httpx.HTTPError as exc:
            await upstream.aclose()
            self._warn_aborted(exchange.sampled, f"the upstream broke off its answer: {exc!r}")
            error = _sidecar_error(502, "upstream_failed", f"the upstream failed: {exc!r}")
            return error, time.perf_counter()
        except BaseException:
            await upstream.aclose()
            raise
        await upstream.aclose()
        content = b"".join(parts)
        answered = time.perf_counter()
        if not any(key.lower() == b"content-length" for key, _ in headers):
            headers.append((b"content-length", str(len(content)).encode()))
        if exchange.sampled:
            self._offer_answer(upstream, exchange, content)
        return WholeResponse(upstream.status_code, headers, content), answered

    async def _relay(
        self,
        upstream: httpx.Response,
        headers: list[tuple[bytes, bytes]],
        exchange: _Exchange,
        receive: Receive,
        send: Send,
        read: Sequence[bytes] = (),
        chunks: AsyncIterator[bytes] | None = None,
    ) -> None:
        """Send the upstream's body bytes on as they arrive (``read`` first: what was read
        before, from ``chunks``); offer the exchange for sampling once the answer is complete.
        A client that hangs up mid-answer cancels the relay: the upstream request is closed
        (the inference server can stop generating) and there is nothing to sample. An upstream
        that breaks off an SSE answer gets the stream ended with an OpenAI-style error event
        (an OpenAI client raises it), not a clean end; any other answer is left incomplete
        (the server closes the connection)."""
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        parts: list[bytes] | None = [] if exchange.sampled else None
        size = 0
        broken: str | None = None
        async with cancelled_on_hang_up(receive, None) as hang_up:
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": upstream.status_code,
                        "headers": headers,
                    }
                )
                for chunk in read:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                try:
                    async for chunk in chunks or raw_body(upstream):
                        if parts is not None:
                            size += len(chunk)
                            if size > self._max_sample_bytes:
                                parts = None
                                self._lose("too_large", "answer over [proxy] max_sample_bytes")
                            else:
                                parts.append(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError as exc:
                    broken = f"the upstream broke off its answer: {exc!r}"
                    hang_up.done = True
                    if sse:
                        await send({"type": "http.response.body", "body": broken_event(exc)})
                else:
                    hang_up.done = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await upstream.aclose()
        if hang_up.hung_up:
            self._warn_aborted(exchange.sampled and parts is not None, "the client hung up")
        elif broken is not None:
            self._warn_aborted(exchange.sampled and parts is not None, broken)
        elif parts is not None:
            self._offer_answer(upstream, exchange, b"".join(parts))

    def _offer_answer(self, upstream: httpx.Response, exchange: _Exchange, answer: bytes) -> None:
        if len(answer) > self._max_sample_bytes:
            self._lose("too_large", "answer over [proxy] max_sample_bytes")
            return
        request_body = exchange.body.kept()
        if request_body is None:
            self._lose("too_large", "request over [proxy] max_sample_bytes")
            return
        self._offer(
            Exchange(
                request_body=request_body,
                response_body=answer,
                content_type=upstream.headers.get("content-type", ""),
                content_encoding=upstream.headers.get("content-encoding", "identity"),
                received_at=exchange.received_at,
            )
        )

    def _too_large(self, size: int | None) -> Response:
        shown = f"{size:,} bytes" if size is not None else "over the limit"
        return _sidecar_error(
            413,
            "payload_too_large",
            f"the request body is {shown}; the limit is {self._max_body_bytes:,} bytes "
            "([proxy] max_body_bytes)",
            error_type="invalid_request_error",
        )

    def _aborted(self, sample: bool, detail: str) -> Response:
        """What a client that has gone gets (nobody reads it); one warning, counted."""
        self._warn_aborted(sample, detail)
        return _sidecar_error(499, "client_closed_request", detail, error_type="client_error")

    def _warn_aborted(self, lost_sample: bool, detail: str) -> None:
        log.warning("sidecar: exchange broken off: %s", detail)
        if lost_sample:
            self._lose("aborted", detail)

    def _url(self, raw_path: bytes, query: bytes) -> httpx.URL | None:
        """The upstream URL of a request: the path as the client sent it (still escaped). None
        for a path with a dot segment, escaped or not: ``GET /v1/models/{id}`` takes any path
        below it, and the URL would resolve ``..`` to another upstream route, which the
        sidecar (no token on proxied routes) must not expose."""
        url = self._urls.get((raw_path, query))
        if url is None:
            path = raw_path.decode("latin-1")
            if _has_dot_segment(path):
                return None
            text = f"{self._base}{path}?{query.decode('latin-1')}" if query else self._base + path
            url = httpx.URL(text)
            if len(self._urls) < _URL_CACHE_SIZE:
                self._urls[(raw_path, query)] = url
        return url

    # -- sampling, off the request path ------------------------------------------------------

    def _offer(self, exchange: Exchange) -> None:
        """Queue a complete exchange for sampling; never raises, never waits."""
        try:
            queue = self._ensure_consumer()
            queue.put_nowait(exchange)
        except asyncio.QueueFull:
            self._lose("queue_full", "the sampling queue is full")
        except Exception:  # a monitor bug must not reach the client
            log.exception("sidecar: offering an exchange for sampling failed")
            self._lose("internal_error", "offering failed")

    def _ensure_consumer(self) -> asyncio.Queue[Exchange]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue = asyncio.Queue(maxsize=self._queue_size)
            self._loop = loop
            self._consumer = None
        if self._consumer is None or self._consumer.done():
            self._consumer = loop.create_task(self._consume(self._queue))
        return self._queue

    async def _consume(self, queue: asyncio.Queue[Exchange]) -> None:
        while True:
            batch = [await queue.get()]
            if queue.qsize() < _SUBMIT_BATCH - 1 and self._queue_size >= 2 * _SUBMIT_BATCH:
                # Let a batch gather: each hand-off to a thread costs the event loop (and the
                # requests it relays) far more CPU than parsing and inserting one more exchange.
                await asyncio.sleep(_SUBMIT_LINGER_SECONDS)
            while len(batch) < _SUBMIT_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._sample(batch)
            except Exception:  # _sample counts its own losses; this is a last resort
                log.exception("sidecar: sampling a batch failed")
            finally:
                for _ in batch:
                    queue.task_done()

    async def _sample(self, exchanges: Sequence[Exchange]) -> None:
        """Turn exchanges into records and submit them (one thread hand-off), then fetch the
        allowed image URLs of the others and submit those; every loss is counted, nothing is
        raised."""
        with_urls = await asyncio.to_thread(self._parse_and_submit, exchanges)
        records: list[TrafficRecord] = []
        for record in with_urls:
            try:
                records.append((await self.ingest.resolve_images([record]))[0])
            except InvalidInputError as exc:  # refused or failed fetch
                self._lose("invalid", str(exc))
            except Exception:
                log.exception("sidecar: fetching an image URL failed")
                self._lose("internal_error", "image fetch failed")
        if records:
            await asyncio.to_thread(self._submit, records)

    def _parse_and_submit(self, exchanges: Sequence[Exchange]) -> list[TrafficRecord]:
        """Submit the records that need nothing fetched; return those with image URLs."""
        parsed = self._parse_all(exchanges)
        ready = [record for record in parsed if record.image_url is None]
        if ready:
            self._submit(ready)
        return [record for record in parsed if record.image_url is not None]

    def _parse_all(self, exchanges: Sequence[Exchange]) -> list[TrafficRecord]:
        records: list[TrafficRecord] = []
        for exchange in exchanges:
            # Parsing holds the GIL, and the event loop waiting for it would otherwise wait
            # until the whole batch is parsed (or the 5 ms switch interval passes): let it in
            # between exchanges, so sampling delays no relayed request by more than one parse.
            time.sleep(0)
            try:
                records.append(self.exchange_to_record(exchange))
            except PayloadTooLargeError as exc:
                self._lose("too_large", str(exc))
            except InvalidInputError as exc:
                self._lose("invalid", str(exc))
            except Exception:
                log.exception("sidecar: reading an exchange failed")
                self._lose("internal_error", "reading the exchange failed")
        return records

    def _submit(self, records: list[TrafficRecord], *, again: bool = True) -> None:
        try:
            result = self.ingest.submit(records)
        except InboxFullError:
            self._lose("inbox_full", "the inbox is full", len(records))
        except StorageError as exc:
            log.warning("sidecar: sampling lost to a storage error: %s", exc)
            self._lose("storage_error", str(exc), len(records))
        except InvalidInputError as exc:
            self._lose("invalid", str(exc), len(records))
        except Exception:
            log.exception("sidecar: submitting sampled exchanges failed")
            self._lose("internal_error", "submit failed", len(records))
        else:
            if result.duplicate_ids and again:
                self._submit(self._own_ids(records, set(result.duplicate_ids)), again=False)

    def _own_ids(self, records: list[TrafficRecord], taken: set[str]) -> list[TrafficRecord]:
        """The records whose completion id was stored already (an upstream that reused it
        before this process began remembering ids), under ids of the sidecar's own."""
        return [
            replace(record, id=self._recent_ids.own(record.id))
            for record in records
            if record.id in taken
        ]

    def exchange_to_record(self, exchange: Exchange) -> TrafficRecord:
        """The record of an exchange: the request's messages, the assembled answer.

        Its id is the upstream's completion id while that is new (a late reference can be
        posted under the id the client saw); an id seen among the last few thousand exchanges
        gets a suffix of the sidecar's own, ``<completion id>~<8 hex>``, so an upstream that
        reuses ids never merges two exchanges into one sample."""
        request = json_object(exchange.request_body, "request")
        body = decoded(exchange.response_body, exchange.content_encoding, self._max_sample_bytes)
        if exchange.content_type.startswith("text/event-stream"):
            answer, meta = assemble_sse(body)
        else:
            answer, meta = assemble_json(body)
        record: dict[str, Any] = {
            "stream": self.stream,
            "model": meta.get("model") or request.get("model"),
            "messages": request.get("messages"),
            "response": answer,
        }
        if isinstance(meta.get("id"), str) and meta["id"]:
            record["id"] = self._recent_ids.unique(meta["id"])
        return parse_record(record, settings=self.settings, now=exchange.received_at)

    def _lose(self, reason: str, detail: str, count: int = 1) -> None:
        self.metrics.proxy_fail_open.labels(reason=reason).inc(count)
        outcome = "rejected" if reason == "invalid" else "dropped"
        self.metrics.count_records(self.stream, outcome, count)
        log.debug("sidecar: exchange not sampled (%s): %s", reason, detail)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued exchange has been submitted (tests, shutdown)."""
        if self._queue is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)

    async def aclose(self) -> None:
        """Submit what is queued (a few seconds at most), stop the consumer, close the
        transport (when it is the proxy's own)."""
        await self.drain(5.0)
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._consumer
            self._consumer = None
        if self._own_transport:
            await self.transport.aclose()


def build_proxy_router(
    settings: Settings,
    ingest: IngestService,
    metrics: MonitorMetrics,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> APIRouter:
    """The sidecar's routes; the router's lifespan drains sampling and closes the transport.

    ``router.proxy`` is the :class:`SidecarProxy` behind them (tests drain it)."""
    proxy = SidecarProxy(settings, ingest, metrics, transport=transport)
    router = proxy.router
    router.proxy = proxy  # type: ignore[attr-defined]
    return router


# -- responses, headers and URLs ----------------------------------------------------------


def _forwardable(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """Headers less ``drop`` (lower-case names) and less any header the Connection header
    names."""
    lowered = [(key.lower(), key, value) for key, value in headers]
    named = {
        token.strip()
        for name, _, value in lowered
        if name == b"connection"
        for token in value.lower().split(b",")
    }
    return [(key, value) for name, key, value in lowered if name not in drop and name not in named]


def _upstream_base(upstream: str) -> str:
    base = upstream.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _sidecar_error(
    status: int, code: str, message: str, *, error_type: str = "upstream_error"
) -> JSONResponse:
    """The sidecar's own answer: when the upstream cannot be reached, or a request is refused
    before it (OpenAI error shape, plus the monitor's ``field``)."""
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": None, "type": error_type}},
        status_code=status,
    )


def _has_dot_segment(path: str) -> bool:
    segments = unquote(path).replace("\\", "/").split("/")
    return any(segment in (".", "..") for segment in segments)


__all__ = [
    "HOP_BY_HOP",
    "Exchange",
    "SidecarProxy",
    "assemble_json",
    "assemble_sse",
    "build_proxy_router",
]
