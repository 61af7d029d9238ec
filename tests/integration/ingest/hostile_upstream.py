"""A hostile OpenAI-compatible upstream on loopback, in raw asyncio (standard library only),
for the sidecar's hardening tests and benchmarks/bench_hostile_memory.py.

    python -m tests.integration.ingest.hostile_upstream --port PORT   (prints "ready PORT")

What it does with ``POST /v1/chat/completions`` is chosen by the request header
``x-hostile`` (the sidecar forwards it as it is):

* ``ok`` (or none): reads the whole body (chunked or not), answers a small chat completion;
* ``constant-id``: as ``ok``, always with the completion id ``chatcmpl-CONSTANT``;
* ``gzip-bomb``: answers a ~1 MB gzip body that inflates to 1 GiB of JSON
  (``x-hostile-inflated-mib`` changes the size);
* ``slow``: reads the request, then waits (up to ``x-hostile-seconds``, default 30) before
  answering; it stops waiting when the caller goes away, and counts callers that did;
* ``early-413``: reads only the request head, answers 413 and closes at once, the body unread
  (the connection is reset, as fake_upstream.py and many servers do);
* ``abort-sse``: starts an SSE answer, sends two chunks, then closes mid-stream;
* ``huge-json``: a 200 JSON answer of ``x-hostile-mib`` MiB (default 64), sent as it is made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MODEL = "hostile-model"


def gzip_bomb(inflated_mib: int = 1024) -> bytes:
    """A one-member gzip body of a chat completion whose content is ``inflated_mib`` MiB of
    'a': each MiB is deflated after a full flush (no shared history), so one compressed MiB is
    repeated instead of compressing a GiB (seconds)."""
    head = json.dumps(
        {"id": "chatcmpl-bomb", "object": "chat.completion", "model": MODEL, "choices": []}
    )[: -len("[]}")]
    prefix = (head + '[{"index": 0, "message": {"role": "assistant", "content": "').encode()
    suffix = b'"}, "finish_reason": "stop"}]}'
    block = b"a" * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.compress(suffix) + deflate.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(inflated_mib):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + inflated_mib * len(block) + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + first + repeated * inflated_mib + last + trailer


def completion(completion_id: str, text: str) -> bytes:
    return json.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


@dataclass
class HostileUpstream:
    """The server's state: what tests look at."""

    requests: int = 0
    bytes_read: int = 0
    gave_up_waiting: int = 0  # slow requests whose caller went away
    _bombs: dict[int, bytes] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        mode = headers.get("x-hostile", "ok")
        if mode == "early-413":
            body = json.dumps(
                {"error": {"message": "body too large", "type": "invalid_request", "code": 413}}
            ).encode()
            writer.write(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            return False  # closed with the body unread: the kernel resets the connection
        await self._read_body(reader, headers)
        if mode == "slow":
            seconds = float(headers.get("x-hostile-seconds", "30"))
            try:
                # Nothing more comes from a caller waiting for its answer: data means a next
                # request (none here), EOF that it went away.
                await asyncio.wait_for(reader.read(1), seconds)
                self.gave_up_waiting += 1
                return False
            except TimeoutError:
                pass
            self._send(writer, 200, completion("chatcmpl-slow", "late"))
        elif mode == "gzip-bomb":
            size = int(headers.get("x-hostile-inflated-mib", "1024"))
            if size not in self._bombs:
                self._bombs[size] = await asyncio.to_thread(gzip_bomb, size)
            self._send(writer, 200, self._bombs[size], encoding="gzip")
        elif mode == "abort-sse":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for n in range(2):
                data = json.dumps(
                    {"id": "chatcmpl-abort", "choices": [{"index": 0, "delta": {"content": n}}]}
                )
                event = f"data: {data}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.05)
            return False  # closed mid-stream, no last chunk
        elif mode == "huge-json":
            size = int(headers.get("x-hostile-mib", "64")) * (1 << 20)
            head = b'{"id": "chatcmpl-huge", "choices": [], "padding": "'
            tail = b'"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"\r\n%s" % (size, head)
            )
            left = size - len(head) - len(tail)
            while left > 0:
                writer.write(b"x" * min(left, 1 << 20))
                left -= 1 << 20
                await writer.drain()
            writer.write(tail)
        elif mode == "constant-id":
            self._send(writer, 200, completion("chatcmpl-CONSTANT", f"answer {self.requests}"))
        else:
            self._send(writer, 200, completion(f"chatcmpl-{self.requests}", "fine"))
        await writer.drain()
        return True

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self._skip(reader, size + 2)
                if size == 0:
                    return
        await self._skip(reader, int(headers.get("content-length", "0")))

    async def _skip(self, reader: asyncio.StreamReader, size: int) -> None:
        while size > 0:
            chunk = await reader.read(min(size, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(chunk)
            self.bytes_read += len(chunk)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, body: bytes, encoding: str = "") -> None:
        extra = f"content-encoding: {encoding}\r\n".encode() if encoding else b""
        writer.write(
            b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n"
            % (status, extra, len(body))
        )
        writer.write(body)


@contextmanager
def running() -> Iterator[tuple[str, HostileUpstream]]:
    """The hostile upstream on a free loopback port in a thread: (base URL, its state)."""
    upstream = HostileUpstream()
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    started = threading.Event()
    server: asyncio.Server | None = None

    async def start() -> None:
        nonlocal server
        server = await asyncio.start_server(upstream.handle, sock=sock)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", upstream
    finally:

        async def stop() -> None:
            assert server is not None
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def run() -> None:
        upstream = HostileUpstream()
        upstream._bombs[1024] = gzip_bomb(1024)  # made up front: a second of CPU, not mid-case
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", args.port)
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
