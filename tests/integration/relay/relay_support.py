"""Shared by the relay tests: a recording records API (scripted answers), the relay served on
loopback in front of the fake upstream, and a client of it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.metrics import RelayMetrics
from monitor.relay.app import create_relay_app
from tests.integration.ingest.proxy_support import API_KEY, FakeUpstream, serve

CENTRAL_TOKEN = "central-token"


class RecordingCentral:
    """``POST /v1/records`` that answers from a script (then 202) and keeps what it accepted."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = list(script or [])
        self.refuse_prompt: str | None = None  # a batch holding it: 422 (all or nothing)
        self.requests = 0
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/records")
        async def records(request: Request) -> Response:
            if request.headers.get("authorization") != f"Bearer {CENTRAL_TOKEN}":
                return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
            body = json.loads(await request.body())
            with self.lock:
                self.requests += 1
                if self.script:
                    status, headers = self.script.pop(0)
                    return JSONResponse({"error": {"code": "x"}}, status, headers=headers)
                batch = body["records"]
                if self.refuse_prompt and any(
                    self.refuse_prompt in json.dumps(r["messages"]) for r in batch
                ):
                    return JSONResponse({"error": {"code": "invalid_field"}}, status_code=422)
                self.records.extend(batch)
                ids = [r["id"] for r in batch]
            return JSONResponse({"accepted": len(ids), "sampled": len(ids), "ids": ids}, 202)

    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.records]


def relay_settings(upstream_url: str, central_url: str, **relay: Any) -> Settings:
    return Settings.model_validate(
        {
            "proxy": {"upstream": upstream_url},
            "relay": {
                "central_url": central_url,
                "token": CENTRAL_TOKEN,
                "flush_interval": "50ms",
                "min_backoff": "20ms",
                "max_backoff": "100ms",
                **relay,
            },
        }
    )


@dataclass
class RunningRelay:
    url: str
    metrics: RelayMetrics
    app: Any

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def lost(self, reason: str) -> float:
        return self.value("mllm_monitor_proxy_fail_open_total", reason=reason)

    def chat(self, text: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {API_KEY}"},
            json={"model": "llava-fake", "messages": [{"role": "user", "content": text}]},
            timeout=10,
        )


@contextmanager
def running_relay(settings: Settings) -> Iterator[RunningRelay]:
    app = create_relay_app(settings, registry=CollectorRegistry())
    with serve(app) as url:
        yield RunningRelay(url=url, metrics=app.state.metrics, app=app)


@contextmanager
def fake_upstream() -> Iterator[str]:
    with serve(FakeUpstream().app) as url:
        yield url


def spool_segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))
