"""Bodies through the sidecar: the client's request on its way up, the upstream's answer on
its way to sampling, and the upstream connection that carries them.

* :class:`RequestBody`: the client's body as it arrives, counted against ``[proxy]
  max_body_bytes`` (``PayloadTooLargeError``), handed to the upstream chunk by chunk, with a
  copy for sampling kept only while it is within ``[proxy] max_sample_bytes``; a client that
  goes away mid-body is ``ClientGoneError`` (both of :mod:`monitor.errors`).
* :func:`cancelled_on_hang_up`: a block cancelled when the client hangs up (the upstream
  request in it is closed).
* :class:`WholeResponse`, :class:`RelayedResponse`, :func:`raw_body`: an upstream answer sent
  on as it came, whole or as it arrives.
* :func:`decoded`: a gzip / deflate answer inflated with an output cap
  (:class:`PayloadTooLargeError` past it), never whole: a small compressed answer can inflate to
  gigabytes.
* :class:`Exchange`: a complete exchange as it passed through, what sampling starts from.
* :func:`assemble_json`, :func:`assemble_sse`: the answer text of a chat completion.
* :func:`upstream_transport`: the httpx transport to the upstream, whose connections stop
  sending a request body once the upstream has answered (an early 413): the answer is read
  and relayed instead of being lost to the connection reset that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import typing
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpcore
import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from monitor.errors import ClientGoneError, InvalidInputError, PayloadTooLargeError
from monitor.ingest.inflate import DEFLATE_WBITS, GZIP_WBITS, inflate

# The upstream's early answer is looked for between slices of a large write (a whole body is
# otherwise one write that nothing interrupts).
_WRITE_SLICE = 256 * 1024
# Keep-alive of idle upstream connections, as httpx's transport has it by default.
_KEEPALIVE_EXPIRY = 5.0


class RequestBody:
    """The client's body, read as the upstream takes it (an async iterable of chunks).

    ``keep`` is the most bytes kept for sampling (0: keep nothing); past it the copy is
    dropped (:meth:`kept` is then None). ``done`` is set once the last chunk has been
    handed on (the client's next message can then only be its hang-up)."""

    def __init__(self, request: Request, *, limit: int, keep: int) -> None:
        self._chunks = request.stream()
        self._limit = limit
        self._keep = keep
        self._parts: list[bytes] | None = [] if keep > 0 else None
        self.size = 0
        self.done = asyncio.Event()

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self.done.set()
                raise
            except ClientDisconnect as exc:
                raise ClientGoneError("the client went away while sending its request") from exc
            if chunk:
                break
        self.size += len(chunk)
        if self.size > self._limit:
            raise PayloadTooLargeError(f"over {self._limit:,} bytes")
        if self._parts is not None:
            if self.size > self._keep:
                self._parts = None
            else:
                self._parts.append(chunk)
        return chunk

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small)."""
        return b"".join([chunk async for chunk in self])

    def kept(self) -> bytes | None:
        """The body for sampling: None when nothing was kept (over the limit, or keep 0)."""
        return None if self._parts is None else b"".join(self._parts)


# -- the client's side ---------------------------------------------------------------------


def declared_body(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a request (the server has checked their syntax)."""
    length: int | None = None
    chunked = False
    for key, value in headers:
        name = key.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked


def broken_event(exc: Exception) -> bytes:
    """The SSE event that ends a stream the upstream broke off (OpenAI's in-stream error)."""
    error = {
        "error": {
            "code": "upstream_failed",
            "message": f"the upstream broke off its answer: {exc!r}",
            "field": None,
            "type": "upstream_error",
        }
    }
    return f"data: {json.dumps(error)}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Exchange:
    """A completed chat completion as it passed through: what sampling starts from."""

    request_body: bytes
    response_body: bytes
    content_type: str
    content_encoding: str
    received_at: datetime


@dataclass(slots=True)
class HangUp:
    hung_up: bool = False
    done: bool = False  # the response is complete: a disconnect now is the normal end


@contextlib.asynccontextmanager
async def cancelled_on_hang_up(receive: Receive, body: RequestBody | None) -> AsyncIterator[HangUp]:
    """Cancel the block when the client hangs up (after its body, when one is given, has been
    read: until then the body's reader sees the hang-up). The cancellation ends the block
    quietly with ``hung_up`` set; one from elsewhere (shutdown) goes on."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("the sidecar runs outside a task")
    state = HangUp()

    async def watch() -> None:
        if body is not None:
            await body.done.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state.done:
            state.hung_up = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield state
    except asyncio.CancelledError:
        if not state.hung_up or task.uncancel() > 0:
            raise
    finally:
        state.done = True
        watcher.cancel()


# -- responses ------------------------------------------------------------------------------


class WholeResponse(Response):
    """A whole upstream answer, sent as it came: status, headers and body as given (Starlette's
    ``Response`` would work out headers of its own first)."""

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: bytes):
        self.status_code = status_code
        self.raw_headers = raw_headers
        self.body = body
        self.background = None


class RelayedResponse(Response):
    """A response that ``relay(receive, send)`` sends itself (the SSE relay): less work per
    chunk than ``StreamingResponse``, which runs the body through an iterator in a task
    group of its own."""

    def __init__(self, relay: Callable[[Receive, Send], Awaitable[None]]):
        self._relay = relay
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._relay(receive, send)


def raw_body(upstream: httpx.Response) -> httpx.AsyncByteStream:
    """The upstream's body bytes as the transport hands them over, as they arrive (what
    ``Response.aiter_raw`` yields, less its per-chunk re-chunking and bookkeeping)."""
    stream = upstream.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError(f"the upstream transport returned a synchronous body: {stream!r}")
    return stream


# -- answers ------------------------------------------------------------------------------


def decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` under its Content-Encoding, inflated to at most ``limit`` bytes: past that it
    raises :class:`PayloadTooLargeError` having inflated no more than ``limit + 1`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = GZIP_WBITS
    elif encoding == "deflate":
        wbits = DEFLATE_WBITS
    else:
        raise InvalidInputError(f"cannot read an answer with content-encoding {encoding!r}")
    try:
        return inflate(body, wbits, limit)
    except PayloadTooLargeError as exc:
        raise PayloadTooLargeError(
            f"the answer inflates to over {limit:,} bytes ([proxy] max_sample_bytes)"
        ) from exc
    except InvalidInputError as exc:  # truncated
        raise InvalidInputError(f"the answer's {encoding} body is truncated") from exc
    except zlib.error as exc:
        raise InvalidInputError(f"the answer's {encoding} body is corrupt: {exc}") from exc


def assemble_json(body: bytes) -> tuple[str, dict[str, Any]]:
    """The first choice's message content of a non-streamed chat completion."""
    data = json_object(body, "response")
    message = _first_choice(data).get("message")
    content = message.get("content") if isinstance(message, dict) else None  # null, a string...
    return _text(content), data


def assemble_sse(body: bytes) -> tuple[str, dict[str, Any]]:
    """The first choice's concatenated ``delta.content`` of a streamed chat completion."""
    parts: list[str] = []
    meta: dict[str, Any] = {}
    for raw_line in body.decode("utf-8", errors="replace").splitlines():
        line = raw_line.strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]" or not payload:
            continue
        chunk = json_object(payload.encode(), "response")
        for key in ("id", "model"):
            if key not in meta and isinstance(chunk.get(key), str):
                meta[key] = chunk[key]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:  # a chunk of no choices
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta") or {}
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
    return "".join(parts), meta


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InvalidInputError("the answer has no choices", field="choices")
    first: dict[str, Any] = choices[0]
    return first


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise InvalidInputError("the answer has no text content", field="choices.0.message.content")


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"the {what} is not JSON: {exc}", field=what) from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"the {what} is not a JSON object", field=what)
    return data


# -- the upstream connection --------------------------------------------------------------


def upstream_transport(max_connections: int) -> httpx.AsyncHTTPTransport:
    """httpx's transport (no env proxy, pooled), over connections that watch for an early
    answer while they send a request."""
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        trust_env=False,
    )
    # httpx takes no network backend; its pool is replaced by the same pool over ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl.create_default_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
        network_backend=_EarlyAnswerBackend(),
    )
    return transport


class _EarlyAnswerBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _EarlyAnswerStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return _EarlyAnswerStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _EarlyAnswerStream(httpcore.AsyncNetworkStream):
    """A connection that stops writing once the upstream has sent something back.

    An upstream that refuses a request early (413 on the headers of a large body) answers and
    closes with the body unread, which resets the connection: a write that fails on the reset
    closes the socket with the answer still unread in it, and the client would get a 502. Data
    to read before the request is written out can only be that answer (or the close), so
    writing stops there with a WriteError, on which httpcore reads the answer."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_SLICE):
            if self._stream.get_extra_info("is_readable"):
                raise httpcore.WriteError("the upstream answered before the request was sent")
            piece = (
                buffer if len(buffer) <= _WRITE_SLICE else bytes(view[start : start + _WRITE_SLICE])
            )
            await self._stream.write(piece, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _EarlyAnswerStream(stream)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)
