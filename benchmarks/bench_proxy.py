"""Sidecar benchmark: latency the sidecar adds over calling the upstream directly, on loopback.

Run: python benchmarks/bench_proxy.py [--requests 2000] [--chunks 16]

Three processes: a minimal OpenAI-compatible upstream (Starlette under uvicorn: a chat
completion as JSON, or as SSE in CHUNKS chunks), the sidecar (``create_app`` with
``build_proxy_router``, sampling every exchange into a SQLite inbox, as in production), and
this client (httpx, one keep-alive connection to each). Each of REQUESTS rounds sends the same
request directly and through the sidecar, in alternating order, so machine load hits both
alike; a request's latency is until the last byte of the answer. Reported per mode (JSON,
SSE): p50 / p99 of direct and proxied latency, p50 / p99 of the added latency (proxied -
direct, per round), the p99 of proxied minus the p99 of direct, and the sidecar process's CPU
time per request (relay and sampling; less noisy than latency, though CPU contention from
other work still inflates it). Both servers run under uvicorn with the options ``serve`` uses
(loop and http ``auto``: uvloop and httptools when installed, as the project's dependencies
say; ``server`` in the output names what ran). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ANSWER = "The two suitcases in the image are black and brown with yellow details."


def server_implementation() -> dict[str, str]:
    """The event loop and HTTP parser uvicorn picks here with ``auto`` (as ``serve`` does)."""
    import importlib.util

    def found(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return {
        "loop": "uvloop" if found("uvloop") else "asyncio",
        "http": "httptools" if found("httptools") else "h11",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_upstream(port: int, chunks: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    words = ANSWER.split(" ")
    per_chunk = max(1, len(words) // chunks)
    pieces = [" ".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        usage = {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26}
        if body.get("stream"):

            async def sse() -> Any:
                for n, piece in enumerate(pieces):
                    delta = {"content": piece if n == 0 else " " + piece}
                    data = {
                        "id": f"chatcmpl-{time.time_ns()}",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }
                    yield f"data: {json.dumps(data)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        answer = {
            "id": f"chatcmpl-{time.time_ns()}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return Response(json.dumps(answer), media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def run_sidecar(port: int, upstream: str, db: str, sampling: bool) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from monitor.config import Settings
    from monitor.ingest.app import create_app
    from monitor.ingest.proxy import build_proxy_router
    from monitor.ingest.service import IngestService
    from monitor.metrics import MonitorMetrics
    from monitor.store import migrate
    from monitor.store.engine import create_db_engine
    from monitor.store.repository import Repository

    settings = Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{db}"},
            "proxy": {"upstream": upstream},
            "ingest": {"max_inbox_depth": 1_000_000},
        }
    )
    engine = create_db_engine(settings.database.url)
    migrate.upgrade(engine)
    repo = Repository(engine)
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    ingest = IngestService(settings, repo, metrics)
    router = build_proxy_router(settings, ingest, metrics)
    if not sampling:  # diagnostic: the relay alone, nothing offered for sampling
        router.proxy.sampler.offer = lambda exchange: None  # type: ignore[attr-defined]
    app = create_app(settings, repo, metrics, ingest=ingest, routers=[router])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        for _ in response.iter_raw():
            pass
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code}")
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    client: httpx.Client,
    direct: str,
    proxied: str,
    requests: int,
    stream: bool,
    sidecar_pid: int,
) -> dict[str, float]:
    body = {
        "model": "llava-bench",
        "messages": [{"role": "user", "content": "What are the colors of the two suitcases?"}],
        "stream": stream,
    }
    for _ in range(50):  # warm both paths (connections, caches, the sampling task)
        timed(client, direct, body)
        timed(client, proxied, body)
    d = np.empty(requests)
    p = np.empty(requests)
    cpu_before = cpu_seconds(sidecar_pid)
    for i in range(requests):
        if i % 2:
            d[i] = timed(client, direct, body)
            p[i] = timed(client, proxied, body)
        else:
            p[i] = timed(client, proxied, body)
            d[i] = timed(client, direct, body)
    time.sleep(1.0)  # let the sampling queue drain, so its CPU counts too
    cpu = cpu_seconds(sidecar_pid) - cpu_before
    added = p - d
    ms = 1000.0
    return {
        "sidecar_cpu_ms_per_request": cpu / requests * ms,
        "direct_p50_ms": float(np.percentile(d, 50) * ms),
        "direct_p99_ms": float(np.percentile(d, 99) * ms),
        "proxied_p50_ms": float(np.percentile(p, 50) * ms),
        "proxied_p99_ms": float(np.percentile(p, 99) * ms),
        "added_p50_ms": float(np.percentile(added, 50) * ms),
        "added_p99_ms": float(np.percentile(added, 99) * ms),
        "p99_difference_ms": float((np.percentile(p, 99) - np.percentile(d, 99)) * ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument(
        "--no-sampling", action="store_true", help="diagnostic: relay only, sample nothing"
    )
    args = parser.parse_args()
    up_port, side_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    sidecar = f"http://127.0.0.1:{side_port}"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        processes = [
            ctx.Process(target=run_upstream, args=(up_port, args.chunks), daemon=True),
            ctx.Process(
                target=run_sidecar,
                args=(side_port, upstream, str(Path(tmp) / "m.db"), not args.no_sampling),
                daemon=True,
            ),
        ]
        for process in processes:
            process.start()
        try:
            wait_up(upstream)
            wait_up(sidecar)
            results: dict[str, Any] = {
                "requests": args.requests,
                "sampling": not args.no_sampling,
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "python": platform.python_version(),
                "server": server_implementation(),
            }
            with httpx.Client(timeout=30) as client:
                for stream in (False, True):
                    mode = "sse" if stream else "json"
                    results[mode] = measure(
                        client,
                        f"{upstream}/v1/chat/completions",
                        f"{sidecar}/v1/chat/completions",
                        args.requests,
                        stream,
                        processes[1].pid or 0,
                    )
            print(json.dumps(results, indent=2))
        finally:
            for process in processes:
                process.terminate()
                process.join(10)


if __name__ == "__main__":
    main()
