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

Sampling is off the request path and fails open: the complete exchange (request body, answer
bytes) is offered to the sidecar's :class:`~monitor.ingest.proxy_sampler.ProxySampler` once the
response has been relayed, and nothing the sampler meets (a full queue or inbox, a database
outage, a monitor bug) changes, fails or delays what the client receives. An exchange whose
request or answer is over ``[proxy] max_sample_bytes`` passes unsampled, counted ``too_large``.

``[proxy] upstream`` is the inference server's root URL (``http://127.0.0.1:8000``); the request
path is appended. A base ending in ``/v1`` (as OpenAI clients write it) is accepted too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.routing import Route
from starlette.types import Receive, Send

from monitor.config import Settings
from monitor.errors import ClientGoneError, ConfigError, PayloadTooLargeError
from monitor.ingest.proxy_body import (
    Exchange,
    RelayedResponse,
    RequestBody,
    WholeResponse,
    broken_event,
    cancelled_on_hang_up,
    declared_body,
    raw_body,
    upstream_transport,
)
from monitor.metrics import MonitorMetrics

if TYPE_CHECKING:  # the full sidecar's; the relay imports neither (no store, no encoders)
    from monitor.ingest.service import IngestService

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
_ANSWER_TOO_LARGE = "answer over [proxy] max_sample_bytes"
# Upstream URLs kept parsed, by (path, query): parsing one costs more than relaying a chunk.
_URL_CACHE_SIZE = 256


class ExchangeSampler(Protocol):
    """Where complete exchanges go: :class:`~monitor.ingest.proxy_sampler.ProxySampler` (the
    local inbox) or the relay's sampler (a spool forwarded to central replicas)."""

    def offer(self, exchange: Exchange) -> None: ...

    def lose(self, reason: str, detail: str, count: int = 1) -> None: ...

    async def drain(self, timeout: float = 10.0) -> None: ...

    async def aclose(self) -> None: ...


class ProxyMetrics(Protocol):
    """The metrics the proxy itself counts (MonitorMetrics and RelayMetrics have them)."""

    proxy_requests: Counter
    proxy_added_latency_seconds: Histogram


@dataclass(slots=True)
class _Exchange:
    """One request on its way through: its body, and whether its answer is to be sampled."""

    body: RequestBody
    sample: bool  # the route samples (chat completions)
    sampled: bool = False  # ... and the upstream said 200
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class SidecarProxy:
    """The sidecar's relay: the upstream transport and the routes; sampling is its
    :class:`ProxySampler`'s (``self.sampler``)."""

    def __init__(
        self,
        settings: Settings,
        ingest: IngestService | None,
        metrics: ProxyMetrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sampler: ExchangeSampler | None = None,
    ) -> None:
        """``sampler``: where exchanges go; by default a ProxySampler into ``ingest``."""
        proxy = settings.proxy
        if not proxy.upstream:
            raise ConfigError("[proxy] upstream is empty: there is nothing to forward to")
        upstream = httpx.URL(proxy.upstream)
        if upstream.scheme not in ("http", "https") or not upstream.host:
            raise ConfigError(f"[proxy] upstream must be an http(s) URL, got {proxy.upstream!r}")
        self.sampler = sampler or _inbox_sampler(settings, ingest, metrics)
        self.metrics = metrics
        self._base = _upstream_base(proxy.upstream)
        self._max_sample_bytes = proxy.max_sample_bytes
        # The transport, not an httpx client: a client would add its default headers (user
        # agent, accept-encoding) to what the caller sent, keep the upstream's cookies and send
        # them with other callers' requests, and cost more CPU per request. Redirects are the
        # upstream's answer and reach the client as they are; no env proxy is ever used.
        self._own_transport = transport is None
        self.transport = transport or upstream_transport(proxy.max_connections)
        self._max_body_bytes = proxy.max_body_bytes
        # Read-only, shared by every request (the transport reads the "timeout" extension).
        self._timeout = httpx.Timeout(
            proxy.timeout.total_seconds(), connect=proxy.connect_timeout.total_seconds()
        ).as_dict()
        self._urls: dict[tuple[bytes, bytes], httpx.URL] = {}
        self._forwarded = {route: metrics.proxy_requests.labels(route=route) for route in _ROUTES}
        self.router = self._build_router()

    # -- routes ----------------------------------------------------------------------------

    def _build_router(self) -> APIRouter:
        # Plain Starlette routes: the request goes to the handler as it is (no FastAPI
        # parameter parsing or validation on the hot path).
        router = APIRouter(lifespan=self._lifespan)

        async def chat_completions(request: Request) -> Response:
            """Forwarded to the upstream (streamed or not); the complete exchange is sampled."""
            return await self.forward(request, route="chat_completions", sample=True)

        async def completions(request: Request) -> Response:
            """Forwarded to the upstream, not sampled."""
            return await self.forward(request, route="completions", sample=False)

        async def models(request: Request) -> Response:
            """The upstream's models (the list, or one by id), forwarded, not sampled."""
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
                        self.sampler.lose("too_large", _ANSWER_TOO_LARGE)
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
                                self.sampler.lose(
                                    "too_large", "answer over [proxy] max_sample_bytes"
                                )
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
            self.sampler.lose("too_large", _ANSWER_TOO_LARGE)
            return
        request_body = exchange.body.kept()
        if request_body is None:
            self.sampler.lose("too_large", "request over [proxy] max_sample_bytes")
            return
        self.sampler.offer(
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
            self.sampler.lose("aborted", detail)

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

    async def aclose(self) -> None:
        """Submit what is queued for sampling (a few seconds at most) and stop the sampler,
        then close the transport (when it is the proxy's own)."""
        await self.sampler.aclose()
        if self._own_transport:
            await self.transport.aclose()


def _inbox_sampler(
    settings: Settings, ingest: IngestService | None, metrics: ProxyMetrics
) -> ExchangeSampler:
    """The full sidecar's sampler (imported here: it needs the store and the parsers)."""
    from monitor.ingest.proxy_sampler import ProxySampler

    if ingest is None or not isinstance(metrics, MonitorMetrics):
        raise TypeError("the inbox sampler needs an IngestService and MonitorMetrics")
    return ProxySampler(settings, ingest, metrics)


def build_proxy_router(
    settings: Settings,
    ingest: IngestService,
    metrics: MonitorMetrics,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> APIRouter:
    """The sidecar's routes; the router's lifespan drains sampling and closes the transport.

    ``router.proxy`` is the :class:`SidecarProxy` behind them (``router.proxy.sampler`` its
    sampler, which tests and benchmarks reach)."""
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


__all__ = ["HOP_BY_HOP", "SidecarProxy", "build_proxy_router"]
