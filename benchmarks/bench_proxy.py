"""Sidecar benchmark: latency the sidecar adds over calling the upstream directly, on loopback.

Run: python benchmarks/bench_proxy.py [--requests 2000] [--chunks 16] [--relay]

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

``--relay`` adds ``mllm-monitor relay`` (``create_relay_app``, forwarding every exchange in
batches to a records sink the upstream process also serves) as a third server: each round then
also sends the request through the relay, and both the sidecar's and the relay's CPU per
request and resident memory (idle, after warm-up, and the peak under load, from /proc) are
reported side by side, from the same run.
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

    async def records(request: Request) -> Response:
        # The relay's central records API: taken and acknowledged, nothing stored.
        await request.body()
        return Response(b'{"accepted":0}', status_code=202, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/records", records, methods=["POST"]),
        ]
    )
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


def run_relay(port: int, upstream: str) -> None:
    import uvicorn

    from monitor.config import Settings
    from monitor.relay.app import create_relay_app

    settings = Settings.model_validate(
        {"proxy": {"upstream": upstream}, "relay": {"central_url": upstream}}
    )
    app = create_relay_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now and its peak (VmRSS, VmHWM), from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        name: int(fields[key].split()[0]) / 1024.0
        for name, key in (("rss_mib", "VmRSS"), ("peak_rss_mib", "VmHWM"))
    }


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
    relayed: str | None = None,
    relay_pid: int = 0,
) -> dict[str, float]:
    body = {
        "model": "llava-bench",
        "messages": [{"role": "user", "content": "What are the colors of the two suitcases?"}],
        "stream": stream,
    }
    for _ in range(50):  # warm both paths (connections, caches, the sampling task)
        timed(client, direct, body)
        timed(client, proxied, body)
        if relayed:
            timed(client, relayed, body)
    d = np.empty(requests)
    p = np.empty(requests)
    r = np.empty(requests)
    cpu_before = cpu_seconds(sidecar_pid)
    relay_cpu_before = cpu_seconds(relay_pid) if relayed else 0.0
    for i in range(requests):
        # The order rotates, so that load from elsewhere hits every path alike.
        calls = [("d", direct), ("p", proxied)] + ([("r", relayed)] if relayed else [])
        shift = i % len(calls)
        for name, url in calls[shift:] + calls[:shift]:
            {"d": d, "p": p, "r": r}[name][i] = timed(client, url, body)
    time.sleep(1.5)  # let the sampling queue (and the relay's flush) drain, so its CPU counts
    cpu = cpu_seconds(sidecar_pid) - cpu_before
    added = p - d
    ms = 1000.0
    relay: dict[str, float] = {}
    if relayed:
        relay_added = r - d
        relay = {
            "relay_cpu_ms_per_request": (cpu_seconds(relay_pid) - relay_cpu_before) / requests * ms,
            "relayed_p50_ms": float(np.percentile(r, 50) * ms),
            "relayed_p99_ms": float(np.percentile(r, 99) * ms),
            "relay_added_p50_ms": float(np.percentile(relay_added, 50) * ms),
            "relay_added_p99_ms": float(np.percentile(relay_added, 99) * ms),
        }
    return {
        **relay,
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
    parser.add_argument(
        "--relay", action="store_true", help="also measure `mllm-monitor relay`, side by side"
    )
    args = parser.parse_args()
    up_port, side_port, relay_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    sidecar = f"http://127.0.0.1:{side_port}"
    relay = f"http://127.0.0.1:{relay_port}"
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
        if args.relay:
            processes.append(
                ctx.Process(target=run_relay, args=(relay_port, upstream), daemon=True)
            )
        for process in processes:
            process.start()
        try:
            wait_up(upstream)
            wait_up(sidecar)
            memory: dict[str, dict[str, dict[str, float]]] = {}
            if args.relay:
                wait_up(relay)
                time.sleep(1.0)
                memory["idle"] = {
                    "sidecar": memory_mib(processes[1].pid or 0),
                    "relay": memory_mib(processes[2].pid or 0),
                }
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
                        f"{relay}/v1/chat/completions" if args.relay else None,
                        processes[2].pid or 0 if args.relay else 0,
                    )
            if args.relay:
                memory["after_load"] = {
                    "sidecar": memory_mib(processes[1].pid or 0),
                    "relay": memory_mib(processes[2].pid or 0),
                }
                results["memory"] = memory
            print(json.dumps(results, indent=2))
        finally:
            for process in processes:
                process.terminate()
                process.join(10)


if __name__ == "__main__":
    main()
