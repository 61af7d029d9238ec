"""The reference-model sampler against a fake OpenAI-compatible endpoint on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from monitor.ingest.reference_model import ReferenceModel, is_selected
from monitor.ingest.worker import EmbeddingWorkers
from monitor.metrics import MonitorMetrics
from monitor.store.repository import Repository
from tests.integration.ingest.proxy_support import (
    make_settings,
    png_bytes,
    record,
    serve,
    shared_tiny_encoders,
    sqlite_repository,
)

KEY = "sk-reference"


@dataclass
class FakeReferenceModel:
    mode: str = "ok"  # ok | fail | slow
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append(body)
            self.authorizations.append(request.headers.get("authorization"))
            if self.mode == "fail":
                return JSONResponse({"error": {"message": "down"}}, status_code=500)
            if self.mode == "slow":
                await asyncio.sleep(1.0)
            text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
            return JSONResponse(
                {
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": f"ref: {text}"}}
                    ]
                }
            )

        return app


@dataclass
class Setup:
    repo: Repository
    workers: EmbeddingWorkers
    sampler: ReferenceModel
    metrics: MonitorMetrics
    fake: FakeReferenceModel


@pytest.fixture
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    mode, fraction, per_minute, timeout = request.param
    fake = FakeReferenceModel(mode)
    repo = sqlite_repository(tmp_path)
    with serve(fake.app()) as url:
        settings = make_settings(
            "sqlite://",
            reference_model={
                "model_url": f"{url}/v1",
                "model": "reference-llava",
                "fraction": fraction,
                "max_per_minute": per_minute,
                "api_key": KEY,
                "timeout": timeout,
                "concurrency": 2,
            },
            workers={"batch_size": 64},
        )
        metrics = MonitorMetrics(CollectorRegistry(), ["default"])
        sampler = ReferenceModel(settings, repo, metrics)
        workers = EmbeddingWorkers(
            settings, repo, shared_tiny_encoders(), {}, metrics, reference_model=sampler
        )
        sampler.start()
        try:
            yield Setup(repo, workers, sampler, metrics, fake)
        finally:
            sampler.stop(5)


def outcome(setup: Setup, name: str) -> float:
    value = setup.metrics.registry.get_sample_value(
        "mllm_monitor_reference_requests_total", {"outcome": name}
    )
    assert value is not None
    return value


def batch(n: int = 40) -> list[Any]:
    return [record(i, image=png_bytes(i) if i % 10 == 0 else None) for i in range(n)]


@pytest.mark.parametrize("setup", [("ok", 0.5, 1000, "10s")], indirect=True)
def test_the_configured_fraction_gets_references(setup: Setup) -> None:
    records = batch()
    setup.repo.enqueue([*records, record(99, reference="an inline reference")])
    assert setup.workers.run_once("w") == 41
    assert setup.sampler.wait_idle(10)
    assert setup.workers.resolve_late_references(100) > 0

    selected = {r.id for r in records if is_selected(r.id, 0.5)}
    assert 10 <= len(selected) <= 30  # about half
    with_reference = {
        r.id for r in records if (s := setup.repo.get_sample(r.id)) is not None and s.has_reference
    }
    assert with_reference == selected
    assert outcome(setup, "succeeded") == len(selected)
    assert len(setup.fake.requests) == len(selected)  # the inline-referenced one was not asked
    assert set(setup.fake.authorizations) == {f"Bearer {KEY}"}
    first = setup.fake.requests[0]
    assert first["model"] == "reference-llava" and first["temperature"] == 0
    image_requests = [
        r
        for r in setup.fake.requests
        if any(p["type"] == "image_url" for p in r["messages"][0]["content"])
    ]
    expected_images = {r.id for r in records if r.image is not None} & selected
    assert len(image_requests) == len(expected_images)
    for part in (p for r in image_requests for p in r["messages"][0]["content"]):
        if part["type"] == "image_url":
            assert part["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("setup", [("fail", 1.0, 1000, "10s")], indirect=True)
def test_a_failing_endpoint_changes_nothing_else(setup: Setup) -> None:
    records = batch(10)
    setup.repo.enqueue(records)
    assert setup.workers.run_once("w") == 10
    assert setup.sampler.wait_idle(10)
    assert outcome(setup, "failed") == 10
    assert setup.workers.resolve_late_references() == 0
    assert all(
        (s := setup.repo.get_sample(r.id)) is not None and not s.has_reference for r in records
    )


@pytest.mark.parametrize("setup", [("slow", 1.0, 1000, "200ms")], indirect=True)
def test_a_slow_endpoint_times_out_without_holding_up_the_workers(setup: Setup) -> None:
    records = batch(6)
    setup.repo.enqueue(records)
    started = time.perf_counter()
    assert setup.workers.run_once("w") == 6
    assert time.perf_counter() - started < 1.0  # the endpoint takes 1 s an answer
    assert all(setup.repo.get_sample(r.id) is not None for r in records)
    assert setup.sampler.wait_idle(10)
    assert outcome(setup, "timeout") == 6
    assert outcome(setup, "succeeded") == 0


@pytest.mark.parametrize("setup", [("ok", 1.0, 3, "10s")], indirect=True)
def test_the_per_minute_budget_skips_the_rest_and_counts_them(setup: Setup) -> None:
    setup.repo.enqueue(batch(8))
    assert setup.workers.run_once("w") == 8
    assert setup.sampler.wait_idle(10)
    assert outcome(setup, "succeeded") == 3
    assert outcome(setup, "budget_skipped") == 5
    assert len(setup.fake.requests) == 3
