"""The sidecar against a hostile upstream and hostile clients, on loopback: a gzip bomb, bodies
over the limits, clients that give up or break off, an upstream that answers early or breaks
off, an upstream that reuses its completion ids. The client gets what it should, memory stays
bounded, every lost sample is counted, and an ordinary abort is one warning, not a traceback."""

from __future__ import annotations

import json
import logging
import socket
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.integration.ingest.hostile_upstream import HostileUpstream, running
from tests.integration.ingest.proxy_support import (
    RunningSidecar,
    record,
    running_sidecar,
    sqlite_repository,
    wait_for,
)

MIB = 1024 * 1024
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

Sidecar = RunningSidecar[HostileUpstream]


def post(sidecar: Sidecar, mode: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    """A chat completion through the sidecar, the hostile upstream told to behave as ``mode``."""
    headers = {"x-hostile": mode, **kwargs.pop("headers", {})}
    return httpx.post(
        f"{sidecar.url}/v1/chat/completions",
        json=CHAT if body is None else body,
        headers=headers,
        timeout=kwargs.pop("timeout", 30),
        **kwargs,
    )


@contextmanager
def sidecar_for(tmp_path: Path, **proxy: Any) -> Iterator[Sidecar]:
    repo = sqlite_repository(tmp_path)
    try:
        with (
            running() as (upstream_url, upstream),
            running_sidecar(upstream, upstream_url, repo, proxy=proxy) as sidecar,
        ):
            yield sidecar
    finally:
        repo.close()


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    with sidecar_for(tmp_path, max_sample_bytes=2 * MIB, max_body_bytes=16 * MIB) as running:
        yield running


def settle(sidecar: Sidecar) -> None:
    """Let the sampler take what was offered (several batches' worth)."""
    time.sleep(0.3)


# -- 1. an answer that inflates without end ---------------------------------------------------


def test_a_gzip_bomb_is_relayed_as_it_came_and_not_sampled(sidecar: Sidecar) -> None:
    # 64 MiB inflated (65 KB on the wire) is 32 times max_sample_bytes: inflation stops there.
    headers = {"x-hostile-inflated-mib": "64", "accept-encoding": "gzip"}
    with httpx.Client(timeout=30) as client:
        direct = client.post(
            f"{sidecar.upstream_url}/v1/chat/completions",
            json=CHAT,
            headers={"x-hostile": "gzip-bomb", **headers},
        )
        proxied = client.post(
            f"{sidecar.url}/v1/chat/completions",
            json=CHAT,
            headers={"x-hostile": "gzip-bomb", **headers},
        )
    assert proxied.status_code == 200
    assert proxied.headers["content-encoding"] == "gzip"
    assert proxied.content == direct.content  # what the client reads is the upstream's
    wait_for(lambda: sidecar.lost("too_large") == 1, what="the bomb counted too large")
    assert sidecar.records("dropped") == 1
    assert sidecar.lost("invalid") == 0
    assert sidecar.repository.inbox_depth() == 0


def test_a_huge_answer_is_relayed_as_it_arrives_not_held(sidecar: Sidecar) -> None:
    tracemalloc.start()  # this process: the sidecar's threads and the client's
    try:
        size = 0
        with httpx.stream(
            "POST",
            f"{sidecar.url}/v1/chat/completions",
            json=CHAT,
            headers={"x-hostile": "huge-json", "x-hostile-mib": "48"},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(48 * MIB)
            for chunk in response.iter_raw():
                size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 48 * MIB
    assert peak < 16 * MIB  # max_sample_bytes (2 MiB) read ahead, then relayed
    wait_for(lambda: sidecar.lost("too_large") == 1, what="the answer counted too large")


# -- 2. request bodies ------------------------------------------------------------------------


def test_a_body_declared_over_the_limit_is_a_413_before_it_is_read(sidecar: Sidecar) -> None:
    parts = urlsplit(sidecar.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % (17 * MIB)
        )
        answer = sock.recv(65536).decode()  # no body sent: the answer comes on the headers
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and error["type"] == "invalid_request_error"
    assert "[proxy] max_body_bytes" in error["message"]
    assert sidecar.upstream.requests == 0


def test_a_streamed_body_over_the_limit_is_a_413_as_it_arrives(sidecar: Sidecar) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it comes
        for _ in range(17):
            yield b" " * MIB

    response = httpx.post(
        f"{sidecar.url}/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert sidecar.upstream.bytes_read <= 16 * MIB


def test_a_request_over_the_sampling_limit_passes_unsampled(sidecar: Sidecar) -> None:
    padding = "x" * (3 * MIB)  # over max_sample_bytes (2 MiB), under max_body_bytes (16 MiB)
    body = {**CHAT, "messages": [{"role": "user", "content": "hi"}], "user": padding}
    response = post(sidecar, "ok", body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "fine"
    assert sidecar.upstream.bytes_read > 3 * MIB  # the whole body went up
    wait_for(lambda: sidecar.lost("too_large") == 1, what="the request counted too large")
    assert sidecar.records("dropped") == 1
    settle(sidecar)
    assert sidecar.repository.inbox_depth() == 0
    # One under the limit, chunked (no Content-Length), is sampled as before.
    small = httpx.post(
        f"{sidecar.url}/v1/chat/completions",
        content=iter([json.dumps(CHAT).encode()]),
        headers={"content-type": "application/json", "x-hostile": "ok"},
    )
    assert small.status_code == 200
    wait_for(lambda: sidecar.repository.inbox_depth() == 1, what="the small exchange sampled")


# -- 3. clients that give up ------------------------------------------------------------------


def test_clients_that_give_up_free_their_upstream_connections(tmp_path: Path) -> None:
    with sidecar_for(tmp_path, max_connections=2) as sidecar:
        with ThreadPoolExecutor(max_workers=2) as pool:
            gave_up = list(
                pool.map(
                    lambda _: _gives_up(sidecar),
                    range(2),
                )
            )
        assert gave_up == [True, True]
        started = time.monotonic()
        later = post(sidecar, "ok", timeout=10)  # both pooled connections were taken
        assert later.status_code == 200
        assert time.monotonic() - started < 2
        wait_for(lambda: sidecar.upstream.gave_up_waiting == 2, what="upstream requests ended")
        wait_for(lambda: sidecar.lost("aborted") == 2, what="the abandoned exchanges counted")


def _gives_up(sidecar: Sidecar) -> bool:
    try:
        post(sidecar, "slow", timeout=0.5)
    except httpx.ReadTimeout:
        return True
    return False


# -- 4. an upstream that answers before the body is sent --------------------------------------


@pytest.mark.parametrize("size", [3 * MIB, 12 * MIB])  # read whole, and streamed
def test_an_early_answer_of_the_upstream_reaches_the_client(sidecar: Sidecar, size: int) -> None:
    body = {**CHAT, "user": "x" * size}
    for _ in range(3):  # on a fresh and on reused connections
        response = post(sidecar, "early-413", body)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["message"] == "body too large"  # the upstream's own
        assert post(sidecar, "ok").status_code == 200


# -- 5. aborts are ordinary events ------------------------------------------------------------


def quiet_abort_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings of an abort: none of ERROR or above, no traceback anywhere."""
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info or r.exc_text] == []
    return [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_client_that_breaks_off_its_body_is_one_warning(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    parts = urlsplit(sidecar.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"'
        )
    wait_for(lambda: sidecar.lost("aborted") == 1, what="the broken exchange counted")
    settle(sidecar)
    warnings = quiet_abort_logs(caplog)
    assert len(warnings) == 1 and "went away" in warnings[0].getMessage()
    assert sidecar.records("dropped") == 1
    assert sidecar.upstream.requests == 0  # a small body is read whole before going up


def test_an_upstream_that_breaks_off_a_stream_is_one_warning(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = openai.OpenAI(
        base_url=f"{sidecar.url}/v1",
        api_key="k",
        max_retries=0,
        default_headers={"x-hostile": "abort-sse"},
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[Any] = []
    # The client learns the stream broke (an error event, as OpenAI sends one mid-stream).
    with pytest.raises(openai.APIError, match="broke off"):
        received.extend(stream)
    assert len(received) == 2
    wait_for(lambda: sidecar.lost("aborted") == 1, what="the broken exchange counted")
    settle(sidecar)
    warnings = quiet_abort_logs(caplog)
    assert len(warnings) == 1 and "broke off" in warnings[0].getMessage()
    assert sidecar.repository.inbox_depth() == 0


# -- 6. an upstream that reuses completion ids ------------------------------------------------


def test_an_upstream_reusing_its_completion_id_loses_no_exchange(sidecar: Sidecar) -> None:
    for _ in range(10):
        response = post(sidecar, "constant-id")
        assert response.json()["id"] == "chatcmpl-CONSTANT"
    wait_for(lambda: sidecar.repository.inbox_depth() == 10, what="ten samples", timeout=5)
    assert sidecar.records("sampled") == 10
    located = sidecar.repository.locate_records(["chatcmpl-CONSTANT"])
    assert located == {"chatcmpl-CONSTANT": "inbox"}  # the first keeps the id the client saw


def test_a_completion_id_stored_before_the_sidecar_started_is_not_a_duplicate(
    sidecar: Sidecar,
) -> None:
    # A previous process sampled it: this one has no memory of it, the inbox has.
    sidecar.repository.enqueue([replace(record(0), id="chatcmpl-CONSTANT")])
    for _ in range(3):
        assert post(sidecar, "constant-id").status_code == 200
    wait_for(lambda: sidecar.repository.inbox_depth() == 4, what="three more samples", timeout=5)
    # The first is refused as a duplicate, then goes in under an id of the sidecar's own.
    assert sidecar.records("sampled") == 3 and sidecar.records("duplicate") == 1
