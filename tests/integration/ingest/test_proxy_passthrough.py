"""The sidecar forwards the client's request as it came and keeps nothing between requests:
no headers of its own (user agent, accept-encoding), no cookie jar; a client that hangs up
mid-stream ends the upstream request too, and the partial answer is not sampled."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from monitor.ingest.service import IngestService, SubmitResult
from monitor.records import TrafficRecord
from tests.integration.ingest.proxy_support import (
    RunningSidecar,
    running_sidecar,
    serve,
    sqlite_repository,
    wait_for,
)

LONG = 150  # chunks of a long answer, 20 ms apart (3 s when nobody hangs up)


class Upstream:
    """Records each request's headers; answers JSON with a cookie, or a slow SSE stream that
    notes how far it got and whether it was stopped."""

    def __init__(self) -> None:
        self.headers: list[list[tuple[str, str]]] = []
        self.chunks_sent = 0
        self.stream_stopped = threading.Event()
        self.stream_finished = threading.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        self.headers.append([(k.decode(), v.decode()) for k, v in request.scope["headers"]])
        number = len(self.headers)  # before any await: concurrent requests get their own
        body = json.loads(await request.body())
        if body.get("stream"):
            chunks = int(body.get("chunks", LONG))
            stream = self._slow_stream(chunks, breaks=bool(body.get("break")))
            return StreamingResponse(stream, media_type="text/event-stream")
        message = {"role": "assistant", "content": f"answer {number}"}
        answer = {"id": f"chatcmpl-{number}", "choices": [{"index": 0, "message": message}]}
        return Response(
            json.dumps(answer),
            media_type="application/json",
            headers={"set-cookie": "upstream_session=for-the-first-caller-only; Path=/"},
        )

    async def _slow_stream(self, chunks: int, *, breaks: bool) -> AsyncIterator[bytes]:
        try:
            for n in range(chunks):
                data = {"id": "chatcmpl-slow", "choices": [{"index": 0, "delta": {"content": "x"}}]}
                yield f"data: {json.dumps(data)}\n\n".encode()
                self.chunks_sent = n + 1
                await asyncio.sleep(0.02)
            if breaks:  # the inference server dies mid-answer: the connection is cut
                raise RuntimeError("the fake upstream breaks its stream on purpose")
            yield b"data: [DONE]\n\n"
            self.stream_finished.set()
        finally:
            if not self.stream_finished.is_set():
                self.stream_stopped.set()


class CountingIngest(IngestService):
    """The real ingest service, counting how many times (and with how many records) the
    sidecar submits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def submit(self, records: Sequence[TrafficRecord]) -> SubmitResult:
        self.batches.append(len(records))
        return super().submit(records)


Proxied = RunningSidecar[Upstream]


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    upstream = Upstream()
    repo = sqlite_repository(tmp_path)
    with (
        serve(upstream.app) as upstream_url,
        running_sidecar(upstream, upstream_url, repo, ingest_class=CountingIngest) as sidecar,
    ):
        yield sidecar


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A POST with exactly these headers (plus host and content-length): no client defaults."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("POST", parts.path, skip_accept_encoding=True)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_upstream_gets_only_the_headers_the_client_sent(proxied: Proxied) -> None:
    upstream, url = proxied.upstream, proxied.url
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _ = raw_post(
        f"{url}/v1/chat/completions",
        body,
        {"content-type": "application/json", "authorization": "Bearer k", "x-trace": "t1"},
    )
    assert status == 200
    names = sorted(name for name, _ in upstream.headers[-1])
    # No user-agent, accept, accept-encoding or connection of the sidecar's own.
    assert names == ["authorization", "content-length", "content-type", "host", "x-trace"]
    assert dict(upstream.headers[-1])["x-trace"] == "t1"


def test_an_upstream_cookie_goes_to_its_caller_and_never_to_the_next(proxied: Proxied) -> None:
    upstream, url = proxied.upstream, proxied.url
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    first = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert "upstream_session=for-the-first-caller-only" in first.headers["set-cookie"]
    second = httpx.post(f"{url}/v1/chat/completions", json=body)  # a new client, no cookies
    assert second.status_code == 200
    assert "cookie" not in dict(upstream.headers[-1])


def test_a_client_that_hangs_up_mid_stream_stops_the_upstream(proxied: Proxied) -> None:
    upstream, url, repo = proxied.upstream, proxied.url, proxied.repository
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # the first chunk came
    # Leaving the block unread closes the connection: the client has hung up.
    hung_up = time.monotonic()
    assert upstream.stream_stopped.wait(3), "the upstream kept streaming to nobody"
    assert time.monotonic() - hung_up < 3
    assert upstream.chunks_sent < LONG and not upstream.stream_finished.is_set()
    time.sleep(0.3)  # several sampling batches' worth: a partial answer would be queued by now
    assert repo.inbox_depth() == 0


def test_a_stream_read_to_the_end_is_sampled_once(proxied: Proxied) -> None:
    upstream, url, repo = proxied.upstream, proxied.url, proxied.repository
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "chunks": 10}, timeout=10
    ) as response:
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(data) == 10 + 1 and data[-1] == "data: [DONE]"
    assert upstream.stream_finished.is_set()
    wait_for(lambda: repo.inbox_depth() == 1, what="the complete answer sampled")
    assert repo.locate_records(["chatcmpl-slow"]) == {"chatcmpl-slow": "inbox"}


def test_a_stream_the_upstream_breaks_reaches_the_client_broken_and_is_not_sampled(
    proxied: Proxied,
) -> None:
    url, repo = proxied.url, proxied.repository
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "chunks": 3, "break": True}
    ) as response:
        received = [line for line in response.iter_lines() if line.startswith("data:")]
    # What the upstream sent before it broke, then an error event (never [DONE]): an OpenAI
    # client raises it, so a broken stream never passes for a complete one.
    assert len(received) == 4
    error = json.loads(received[-1][len("data:") :])["error"]
    assert error["code"] == "upstream_failed" and "broke off" in error["message"]
    # The sidecar goes on serving, and only the complete answer is sampled.
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "chunks": 2}) as response:
        assert [line for line in response.iter_lines() if line.startswith("data:")][-1] == (
            "data: [DONE]"
        )
    wait_for(lambda: repo.inbox_depth() == 1, what="the complete answer sampled")
    time.sleep(0.2)
    assert repo.inbox_depth() == 1


def test_exchanges_are_sampled_whole_and_in_batches(proxied: Proxied) -> None:
    url, repo = proxied.url, proxied.repository
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    def ask(_: int) -> int:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code

    # One after the other: a sampler that took each exchange as it came would submit 40 times.
    assert {ask(n) for n in range(40)} == {200}
    # A burst: nothing is lost.
    with ThreadPoolExecutor(max_workers=20) as pool:
        assert set(pool.map(ask, range(60))) == {200}
    wait_for(lambda: repo.inbox_depth() == 100, what="every exchange sampled")
    assert isinstance(proxied.ingest, CountingIngest)
    batches = proxied.ingest.batches
    assert sum(batches) == 100
    # Gathered into batches (one hand-off to a thread each), not one submit per exchange.
    assert len(batches) < 40 and max(batches) > 1


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """A GET of exactly ``path`` (http.client sends it as written; httpx would resolve it)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/../../admin",
        "/v1/models/x/%2e%2e/%2E%2E/%2e%2e/metrics",
        "/v1/models/./m",
        "/v1/models/x/..%5C..%5Cmetrics",
    ],
)
def test_a_path_with_dot_segments_is_refused_not_resolved_upstream(
    proxied: Proxied, path: str
) -> None:
    status, body = raw_get(proxied.url, path)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_path"


def test_a_model_id_with_slashes_is_still_forwarded(proxied: Proxied) -> None:
    status, body = raw_get(proxied.url, "/v1/models/meta-llama/Llama-3-8B")
    assert status == 404 and b"invalid_path" not in body  # the fake upstream has no such route
