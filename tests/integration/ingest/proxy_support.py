"""Shared by the sidecar, worker and reference-model tests: real servers on loopback, a fake
OpenAI-compatible upstream, the sidecar in front of an upstream, tiny real encoders, settings
and a migrated repository.

Every sidecar test builds its sidecar with :func:`running_sidecar` (any upstream URL) or
:func:`sidecar_over_fake` (in front of a :class:`FakeUpstream`): the ingest app with the proxy's
routes, served on loopback, as ``mllm-monitor serve`` assembles it.

The fake upstream speaks the chat completions API (JSON and SSE, usage, finish_reason), the
completions and models routes, and answers 400 / 401 / 429 / 500 on request (a user message
``fail:<status>``). It checks the bearer key, echoes the prompt (and says whether an image came
along), and can be told to be slow.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import openai
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from monitor.config import Settings
from monitor.embedding import EncoderSet, load_encoder
from monitor.ingest.app import create_app
from monitor.ingest.proxy import SidecarProxy, build_proxy_router
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository

API_KEY = "sk-upstream-test"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
U = TypeVar("U")


# -- servers on loopback ------------------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


# -- the fake upstream --------------------------------------------------------------------------


class FakeUpstream:
    """State the tests look at: the headers of each request, and a delay to add."""

    def __init__(self) -> None:
        self.seen_headers: list[dict[str, str]] = []
        self.delay = 0.0
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.seen_headers.append(dict(request.headers))
            if request.headers.get("authorization") != f"Bearer {API_KEY}":
                return _error(401, "invalid_api_key", "Incorrect API key provided")
            body = await request.json()
            if self.delay:
                await asyncio.sleep(self.delay)
            text, has_image = _prompt_of(body["messages"])
            if text.startswith("fail:"):
                status = int(text.split(":")[1])
                headers = {"retry-after": "0"} if status == 429 else None
                return _error(
                    status, f"fake_{status}", f"the fake upstream fails with {status}", headers
                )
            answer = f"echo: {text}" + (" [with an image]" if has_image else "")
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            usage = {
                "prompt_tokens": len(text.split()),
                "completion_tokens": len(answer.split()),
                "total_tokens": len(text.split()) + len(answer.split()),
            }
            finish = "length" if body.get("max_tokens") == 1 else "stop"
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return StreamingResponse(
                    _sse(
                        completion_id,
                        body["model"],
                        answer,
                        finish,
                        usage if include_usage else None,
                    ),
                    media_type="text/event-stream",
                    headers={"x-upstream": "fake"},
                )
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": 1_700_000_000,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
                headers={"x-upstream": "fake"},
            )

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            return JSONResponse(
                {
                    "id": "cmpl-fixed",
                    "object": "text_completion",
                    "created": 1_700_000_000,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "text": f"more {body['prompt']}",
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                }
            )

        @app.get("/v1/models")
        async def models() -> Response:
            return JSONResponse(
                {
                    "object": "list",
                    "data": [
                        {"id": "llava-fake", "object": "model", "created": 1, "owned_by": "tests"}
                    ],
                }
            )

        return app


def _prompt_of(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content, False
    texts = [p["text"] for p in content if p.get("type") == "text"]
    has_image = any(p.get("type") == "image_url" for p in content)
    return " ".join(texts), has_image


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def _sse(
    completion_id: str, model: str, answer: str, finish: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}, None)
    words = answer.split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(0)
        yield chunk({"content": word if i == 0 else f" {word}"}, None)
    yield chunk({}, finish)
    if usage is not None:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(data)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# -- the sidecar --------------------------------------------------------------------------------


@dataclass
class RunningSidecar(Generic[U]):
    """The sidecar served on loopback in front of ``upstream`` (the test's fake upstream, as the
    test drives it), with what it was built from."""

    upstream: U
    upstream_url: str
    url: str  # the sidecar's base URL
    settings: Settings
    repository: Repository
    metrics: MonitorMetrics
    ingest: IngestService
    proxy: SidecarProxy

    def client(self, *, direct: bool = False, timeout: float | None = None) -> openai.OpenAI:
        """The official OpenAI client (the test API key, no retries; openai's default timeout
        unless ``timeout``), through the sidecar or (``direct``) to the upstream itself."""
        base = f"{self.upstream_url if direct else self.url}/v1"
        if timeout is None:
            return openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0)
        return openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=timeout)

    def lost(self, reason: str) -> float:
        """Exchanges passed through unsampled for ``reason`` (``proxy_fail_open``)."""
        value = self.metrics.registry.get_sample_value(
            "mllm_monitor_proxy_fail_open_total", {"reason": reason}
        )
        assert value is not None
        return value

    def records(self, outcome: str) -> float:
        """Records of the default stream counted with ``outcome`` (dropped, rejected...)."""
        value = self.metrics.registry.get_sample_value(
            "mllm_monitor_records_total", {"stream": "default", "outcome": outcome}
        )
        return value or 0.0


@contextmanager
def running_sidecar(
    upstream: U,
    upstream_url: str,
    repository: Repository,
    *,
    db_url: str = "sqlite://",
    proxy: dict[str, Any] | None = None,
    ingest_class: type[IngestService] = IngestService,
    **sections: Any,
) -> Iterator[RunningSidecar[U]]:
    """The ingest app with the sidecar's routes for ``upstream_url``, served on loopback.

    Settings are :func:`make_settings` (``db_url``, ``sections``) with ``[proxy] upstream`` and
    the ``proxy`` options; ``ingest_class`` is the ingest service the sidecar samples into (a
    subclass can count, fail or crawl)."""
    settings = make_settings(db_url, proxy={"upstream": upstream_url, **(proxy or {})}, **sections)
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    ingest = ingest_class(settings, repository, metrics)
    router = build_proxy_router(settings, ingest, metrics)
    app = create_app(settings, repository, metrics, ingest=ingest, routers=[router])
    with serve(app) as url:
        yield RunningSidecar(
            upstream=upstream,
            upstream_url=upstream_url,
            url=url,
            settings=settings,
            repository=repository,
            metrics=metrics,
            ingest=ingest,
            proxy=router.proxy,  # type: ignore[attr-defined]
        )


@contextmanager
def sidecar_over_fake(
    repository: Repository, **options: Any
) -> Iterator[RunningSidecar[FakeUpstream]]:
    """:func:`running_sidecar` in front of a :class:`FakeUpstream` served on loopback."""
    fake = FakeUpstream()
    with (
        serve(fake.app) as upstream_url,
        running_sidecar(fake, upstream_url, repository, **options) as sidecar,
    ):
        yield sidecar


# -- data ---------------------------------------------------------------------------------------


def png_bytes(seed: int = 0, size: int = 40) -> bytes:
    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, 128))
    for x in range(0, size, 4):
        image.putpixel((x, (x + seed) % size), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_data_url(seed: int = 0) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(seed)).decode()


def record(
    i: int,
    *,
    image: bytes | None = None,
    reference: str | None = None,
    response: str | None = "an answer",
    stream: str = "default",
) -> TrafficRecord:
    return TrafficRecord(
        id=f"rec-{i:05d}",
        timestamp=T0,
        stream=stream,
        model="llava-fake",
        prompt=f"What is shown in picture number {i}?",
        image=image,
        response=None if response is None else f"{response} {i}",
        reference=reference,
    )


# -- settings, database, encoders -----------------------------------------------------------------


def make_settings(db_url: str, **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "streams": [{"name": "default", "reference": "ref"}],
        "encoders": {"fusion": "concat"},
        "workers": {"count": 1, "batch_size": 8, "poll_interval": "50ms", "lease": "1m"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings.model_validate(data)


def migrated_engine(url: str) -> Engine:
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    return engine


class Clock:
    """A settable clock for the repository (leases expire when the test says so)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def sqlite_repository(tmp: Path, clock: Callable[[], datetime] | None = None) -> Repository:
    engine = migrated_engine(f"sqlite:///{tmp / 'monitor.db'}")
    return Repository(engine, clock=clock) if clock else Repository(engine)


def tiny_encoders(models: Path) -> EncoderSet:
    """A tiny randomly initialised CLIP vision and XLM-R embedding-layer pair (concat fusion),
    made by the embedding tests' helpers and loaded through the real loading path."""
    from tests.unit.embedding.conftest import make_clip, make_xlmr

    clip_dir, xlmr_dir = models / "clip", models / "xlmr"
    if not (clip_dir / "config.json").exists():
        clip_dir.mkdir(parents=True, exist_ok=True)
        make_clip(clip_dir)
    if not (xlmr_dir / "config.json").exists():
        xlmr_dir.mkdir(parents=True, exist_ok=True)
        make_xlmr(xlmr_dir)
    image = load_encoder("clip_vision", str(clip_dir), local_files_only=True)
    text = load_encoder("xlmr_embedding_layer", str(xlmr_dir), local_files_only=True)
    return EncoderSet(image=image, text=text, fusion="concat")


_ENCODERS: dict[str, EncoderSet] = {}


def shared_tiny_encoders() -> EncoderSet:
    """:func:`tiny_encoders`, made once per test process (in a temporary directory)."""
    if "tiny" not in _ENCODERS:
        import tempfile

        _ENCODERS["tiny"] = tiny_encoders(Path(tempfile.mkdtemp(prefix="mllm-tiny-models-")))
    return _ENCODERS["tiny"]
