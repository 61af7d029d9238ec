"""The sidecar on the wire: SSE relayed as it arrives (never buffered), compressed answers
relayed as they are and still sampled, hop-by-hop headers dropped, base URLs with ``/v1``."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from tests.integration.ingest.proxy_support import (
    RunningSidecar,
    running_sidecar,
    serve,
    sqlite_repository,
    wait_for,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "tell me"}], "stream": True}


class Upstream:
    def __init__(self) -> None:
        self.first_chunk_seen = threading.Event()
        self.headers: list[dict[str, str]] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.headers.append(dict(request.headers))
            body = await request.json()
            if body.get("stream"):
                return StreamingResponse(self._gated(), media_type="text/event-stream")
            answer = {
                "id": "chatcmpl-gzipped",
                "model": "m",
                "choices": [{"index": 0, "message": {"content": "compressed hello"}}],
            }
            data = gzip.compress(json.dumps(answer).encode())
            return Response(
                data,
                media_type="application/json",
                headers={"content-encoding": "gzip", "x-hop": "kept"},
            )

    async def _gated(self) -> AsyncIterator[bytes]:
        def chunk(n: int, text: str) -> bytes:
            data = {"id": "chatcmpl-gated", "choices": [{"index": 0, "delta": {"content": text}}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        yield chunk(0, "first")
        # The second chunk waits until the client has read the first: a proxy that buffered
        # the answer would never deliver it, and the test would time out.
        for _ in range(500):
            if self.first_chunk_seen.is_set():
                break
            await asyncio.sleep(0.01)
        else:
            yield b'data: {"error": "the first chunk never reached the client"}\n\n'
            return
        yield chunk(1, " second")
        yield b"data: [DONE]\n\n"


Wire = RunningSidecar[Upstream]


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    upstream = Upstream()
    repo = sqlite_repository(tmp_path)
    # The upstream is written as OpenAI clients write a base URL: with /v1.
    with (
        serve(upstream.app) as upstream_url,
        running_sidecar(upstream, f"{upstream_url}/v1/", repo) as sidecar,
    ):
        yield sidecar


def test_sse_is_relayed_chunk_by_chunk(wire: Wire) -> None:
    upstream, url, repo = wire.upstream, wire.url, wire.repository
    received: list[str] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                received.append(line)
                upstream.first_chunk_seen.set()
    assert len(received) == 3 and "second" in received[1] and received[2] == "data: [DONE]"
    wait_for(lambda: repo.get_sample("chatcmpl-gated") is not None or repo.inbox_depth() == 1)
    assert repo.locate_records(["chatcmpl-gated"]) == {"chatcmpl-gated": "inbox"}


def test_compressed_answers_pass_unchanged_and_are_still_sampled(wire: Wire) -> None:
    upstream, url, repo = wire.upstream, wire.url, wire.repository
    plain = {**BODY, "stream": False}
    with httpx.Client(headers={"accept-encoding": "gzip"}) as client:
        response = client.post(f"{url}/v1/chat/completions", json=plain)
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["choices"][0]["message"]["content"] == "compressed hello"
    assert upstream.headers[-1]["accept-encoding"] == "gzip"
    wait_for(lambda: repo.inbox_depth() == 1, what="the gzipped exchange sampled")
    assert repo.locate_records(["chatcmpl-gzipped"]) == {"chatcmpl-gzipped": "inbox"}


def test_hop_by_hop_headers_stay_on_their_connection(wire: Wire) -> None:
    upstream, url = wire.upstream, wire.url
    headers = {
        "connection": "keep-alive, x-private-hop",
        "x-private-hop": "for the sidecar only",
        "proxy-authorization": "Basic c2lkZWNhcg==",
        "authorization": "Bearer client-key",
        "x-end-to-end": "kept",
    }
    response = httpx.post(
        f"{url}/v1/chat/completions", json={**BODY, "stream": False}, headers=headers
    )
    assert response.status_code == 200
    seen = upstream.headers[-1]
    assert "x-private-hop" not in seen and "proxy-authorization" not in seen
    assert seen["authorization"] == "Bearer client-key" and seen["x-end-to-end"] == "kept"
    assert response.headers["x-hop"] == "kept"
