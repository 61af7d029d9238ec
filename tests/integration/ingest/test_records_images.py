"""Images at ingest cost what they must: with no image encoder they are dropped unread, and
with one they are checked without being decoded in full (the worker decodes them once).

30 PNGs of 36 Mpx in one request cost 7.9 s of CPU and ~700 MB of RSS that was never given
back while every image was decoded here; the bounds below are a fraction of that."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from monitor.config import EncoderSettings, ImageEncoderSettings
from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import TEST_INGEST, make_settings

BIG = 6000  # 36 Mpx: 108 MB once decoded, ~120 kB as a PNG of one colour


def big_png_base64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (BIG, BIG), (10, 200, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def build(repository: Repository, kind: str) -> TestClient:
    settings = make_settings(
        ingest=TEST_INGEST.model_copy(update={"max_body_bytes": 32 * 1024 * 1024}),
        encoders=EncoderSettings(image=ImageEncoderSettings(kind=kind)),
    )
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    return TestClient(create_app(settings, repository, metrics), raise_server_exceptions=False)


def rss_mb() -> float:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc to read the RSS from")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def post_thirty(client: TestClient) -> tuple[float, float, Any]:
    image = big_png_base64()
    records = [{"id": f"big-{i}", "prompt": "what is this?", "image": image} for i in range(30)]
    client.post("/v1/records", json={"id": "warm-up", "prompt": "p"})  # threads, caches
    before = rss_mb()
    started = time.process_time()  # every thread of the process, the request's pool included
    answer = client.post("/v1/records", json={"records": records})
    cpu = time.process_time() - started
    assert answer.status_code == 202, answer.text
    assert answer.json()["sampled"] == 30
    return cpu, rss_mb() - before, answer


@pytest.mark.parametrize("kind", ["none", "clip_vision"])
def test_thirty_large_images_cost_little_cpu_and_memory(repository: Repository, kind: str) -> None:
    with build(repository, kind) as client:
        cpu, grown, _ = post_thirty(client)
    assert cpu < 2.0, f"{cpu:.2f} s of CPU for 30 large images (kind {kind})"
    assert grown < 150, f"RSS grew by {grown:.0f} MB (kind {kind})"
    held = {entry.record.id: entry.record for entry in repository.claim("w", limit=100)}
    images = [record.image for key, record in held.items() if key.startswith("big-")]
    assert len(images) == 30
    if kind == "none":  # dropped: the inbox holds no image bytes
        assert images == [None] * 30
    else:  # checked and kept for the worker, byte for byte
        assert {base64.b64encode(image or b"").decode() for image in images} == {big_png_base64()}


def test_with_no_image_encoder_images_are_dropped_unread(repository: Repository) -> None:
    with build(repository, "none") as client:
        records = [
            {"id": "image-only", "image": big_png_base64()},  # still a record: it has content
            {"id": "not-an-image", "prompt": "p", "image": "data:image/png;base64,@@@@"},
            {"id": "url", "prompt": "p", "image": {"url": "https://elsewhere.example/cat.png"}},
            {
                "id": "chat",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "and this?"},
                            {"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}},
                        ],
                    }
                ],
            },
        ]
        answer = client.post("/v1/records", json={"records": records})
        assert answer.status_code == 202, answer.text
        # the wrong type of value is still a 422: only the image's content goes unread
        wrong = client.post("/v1/records", json={"prompt": "p", "image": 5})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "image"
        # dropped, but counted: an operator can see that images arrive and go unused
        exposition = client.get("/metrics").text
        assert 'mllm_monitor_images_dropped_total{stream="default"} 4.0' in exposition
    held = {entry.record.id: entry.record for entry in repository.claim("w", limit=100)}
    assert set(held) == {"image-only", "not-an-image", "url", "chat"}
    for record in held.values():
        assert record.image is None and record.image_url is None
    assert held["image-only"].prompt is None and held["chat"].prompt == "and this?"
