"""The records API doing its job: backpressure, sampling, rate caps, late references, auth,
readiness and metrics, on a real SQLite repository."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import IngestSettings, ServerSettings, StreamSettings
from monitor.ingest.app import create_app
from monitor.ingest.readiness import Readiness
from monitor.ingest.sampling import is_sampled
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository
from monitor.store.types import NewSample
from tests.integration.ingest.conftest import TEST_INGEST, RunningApp, make_settings
from tests.integration.ingest.test_records_api import good, png_data_url


def counter(metrics: MonitorMetrics, stream: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "mllm_monitor_records_total", {"stream": stream, "outcome": outcome}
    )
    assert value is not None
    return value


def build(repository: Repository, **sections: Any) -> tuple[TestClient, MonitorMetrics]:
    settings = make_settings(**sections)
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    return TestClient(create_app(settings, repository, metrics)), metrics


def test_full_inbox_is_429_with_retry_after_and_nothing_half_written(
    repository: Repository,
) -> None:
    limits = TEST_INGEST.model_copy(update={"max_inbox_depth": 5})
    client, metrics = build(repository, ingest=limits)
    first = client.post("/v1/records", json={"records": [good(i) for i in range(3)]})
    assert first.status_code == 202
    refused = client.post("/v1/records", json={"records": [good(i) for i in range(3, 6)]})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "inbox_full"
    assert repository.inbox_depth() == 3  # not one record of the refused batch
    assert client.post("/v1/records", json={"records": [good(6), good(7)]}).status_code == 202
    assert repository.inbox_depth() == 5
    assert client.post("/v1/records", json=good(8)).status_code == 429
    # A worker drains two; after the recount the inbox takes records again.
    taken = repository.claim("w", limit=2)
    repository.ack([entry.id for entry in taken], "w")
    client.app.state.ingest.refresh_inbox_depth()  # type: ignore[attr-defined]
    assert client.post("/v1/records", json={"records": [good(8), good(9)]}).status_code == 202
    assert repository.inbox_depth() == 5
    assert counter(metrics, "default", "rejected") == 4
    assert counter(metrics, "default", "sampled") == 7


def test_sampling_is_deterministic_on_the_id_and_keeps_the_weight(
    client: TestClient, repository: Repository, metrics: MonitorMetrics
) -> None:
    records = [good(i, stream="half") for i in range(400)]
    first = client.post("/v1/records", json={"records": records[:200]}).json()
    second = client.post("/v1/records", json={"records": records[200:]}).json()
    expected = {r["id"] for r in records if is_sampled(r["id"], 0.5)}
    assert first["sampled"] + second["sampled"] == len(expected)
    assert first["accepted"] == second["accepted"] == 200
    held = repository.claim("w", limit=1000)
    assert {entry.record.id for entry in held} == expected
    assert {entry.record.sampling_weight for entry in held} == {2.0}
    # 400 draws at 0.5: the count is within 4 standard deviations (10) of 200.
    assert abs(len(expected) - 200) < 40
    # The same ids again: the same ones are kept by the sampler, and being known already
    # they are duplicates, not stored (or counted as sampled) a second time.
    again = client.post("/v1/records", json={"records": records[:200]}).json()
    assert again["sampled"] == 0
    assert again["skipped"] == 200 - first["sampled"]
    assert counter(metrics, "half", "duplicate") == first["sampled"]
    assert counter(metrics, "half", "skipped") == 600 - len(expected) - first["sampled"]


def test_rate_cap_skips_and_counts_what_is_over_it(repository: Repository) -> None:
    now = [1000.0]
    settings = make_settings(streams=[StreamSettings(name="default", max_records_per_second=10)])
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    service = IngestService(settings, repository, metrics, clock=lambda: now[0])
    stamp = datetime(2025, 3, 1, tzinfo=UTC)
    recs = [TrafficRecord(id=f"r{i}", timestamp=stamp, prompt="p") for i in range(40)]
    assert service.submit(recs[:25]).sampled == 10  # a burst of one second's worth
    assert service.submit(recs[25:30]).sampled == 0
    now[0] += 0.5
    assert service.submit(recs[30:40]).sampled == 5
    assert repository.inbox_depth() == 15
    assert counter(metrics, "default", "skipped") == 25
    assert counter(metrics, "default", "sampled") == 15


def test_openai_messages_form_and_inline_image(client: TestClient, repository: Repository) -> None:
    completion = {"choices": [{"message": {"role": "assistant", "content": "Two cats."}}]}
    record = {
        "id": "chat-1",
        "model": "llava-1.5-7b",
        "timestamp": 1_740_830_400,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url(3)}},
                    {"type": "text", "text": "Describe it."},
                ],
            },
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": [{"type": "text", "text": "How many cats?"}]},
        ],
        "response": completion,
        "temperature": 0.2,  # unknown fields are ignored
    }
    assert client.post("/v1/records", json=record).status_code == 202
    (entry,) = repository.claim("w")
    got = entry.record
    assert got.prompt == "How many cats?"
    assert got.response == "Two cats."
    assert got.model == "llava-1.5-7b"
    assert got.timestamp == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert got.image == base64.b64decode(png_data_url(3).split(",", 1)[1])
    assert got.stream == "default" and got.image_url is None


def test_late_references_known_pending_unknown_and_unsampled(
    client: TestClient, repository: Repository, metrics: MonitorMetrics
) -> None:
    assert client.post("/v1/records", json={"records": [good(1), good(2)]}).status_code == 202
    # good-2 is embedded (a worker stored it as a sample); good-1 still waits in the inbox.
    entries = {e.record.id: e for e in repository.claim("w")}
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(8)
    repository.add_samples(
        [
            NewSample.from_record(
                entries["good-2"].record,
                {"prompt": vector / np.linalg.norm(vector)},
                encoder_fingerprint="test",
            )
        ],
        ack=[entries["good-2"].id],
        worker_id="w",
    )
    refs = {
        "references": [{"id": "good-1", "reference": "r1"}, {"id": "good-2", "reference": "r2"}]
    }
    answer = client.post("/v1/references", json=refs)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"joined": 1, "pending": 1, "skipped": 0}
    assert len(repository.pending_late_references()) == 1  # good-2's, ready to embed now
    # Unknown id in a batch: 404 naming it, and nothing of the batch stored.
    unknown = client.post(
        "/v1/references",
        json={
            "references": [{"id": "good-1", "reference": "again"}, {"id": "nope", "reference": "x"}]
        },
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "code": "unknown_record",
        "message": unknown.json()["error"]["message"],
        "field": "references[1].id",
    }
    single = client.post("/v1/references", json={"id": "nope", "reference": "x"})
    assert single.status_code == 404 and single.json()["error"]["field"] == "id"
    # An id the sampler left out of stream "half" was never kept: skipped, not an error.
    dropped = next(f"h{i}" for i in range(1000) if not is_sampled(f"h{i}", 0.5))
    skipped = client.post(
        "/v1/references", json={"id": dropped, "reference": "x", "stream": "half"}
    )
    assert skipped.status_code == 202 and skipped.json()["skipped"] == 1
    bad = client.post("/v1/references", json={"id": "good-1", "reference": 5})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "reference"
    value = metrics.registry.get_sample_value(
        "mllm_monitor_late_references_total", {"outcome": "unknown"}
    )
    assert value == 2


def test_bearer_token_guards_records_but_not_health_or_metrics(repository: Repository) -> None:
    client, _ = build(repository, server=ServerSettings(token="s3cret"))
    assert client.post("/v1/records", json=good(1)).status_code == 401
    wrong = client.post("/v1/records", json=good(1), headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    assert wrong.headers["www-authenticate"] == "Bearer"
    basic = client.post("/v1/records", json=good(1), headers={"authorization": "Basic s3cret"})
    assert basic.status_code == 401
    assert client.post("/v1/references", json={"id": "x", "reference": "y"}).status_code == 401
    right = client.post("/v1/records", json=good(1), headers={"authorization": "Bearer s3cret"})
    assert right.status_code == 202
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert repository.inbox_depth() == 1


def test_readyz_names_every_check(repository: Repository) -> None:
    settings = make_settings()
    metrics = MonitorMetrics(CollectorRegistry(), ["default", "half"])
    readiness = Readiness(required=["database", "encoders"])
    client = TestClient(create_app(settings, repository, metrics, readiness=readiness))
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["encoders"] == {"ok": False, "detail": "not checked yet"}
    readiness.set("database", True, "at head")
    readiness.set("encoders", True)
    assert client.get("/readyz").status_code == 200

    def broken() -> tuple[bool, str]:
        raise RuntimeError("connection refused")

    readiness.probe("reference_store:default", broken)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "connection refused" in answer.json()["checks"]["reference_store:default"]["detail"]


def test_metrics_over_http_count_outcomes_and_inbox_depth(running_app: RunningApp) -> None:
    with httpx.Client(base_url=running_app.url) as http:
        assert http.post("/v1/records", json={"records": [good(1), good(2)]}).status_code == 202
        assert http.post("/v1/records", json=good(3, stream="nope")).status_code == 422
        running_app.repository.enqueue(
            [TrafficRecord(id="direct", timestamp=datetime.now(UTC), prompt="p")]
        )
        text = http.get("/metrics").text
    assert 'mllm_monitor_records_total{outcome="sampled",stream="default"} 2.0' in text
    assert 'mllm_monitor_records_total{outcome="rejected",stream="_other"} 1.0' in text
    assert "mllm_monitor_inbox_depth 3.0" in text  # recounted at the scrape


def test_storage_down_is_503_and_nothing_acknowledged(
    settings: Any, repository: Repository, metrics: MonitorMetrics
) -> None:
    app = create_app(settings, repository, metrics)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/v1/records", json=good(1)).status_code == 202
    with repository.engine.begin() as conn:  # the inbox table disappears under the app
        conn.exec_driver_sql("ALTER TABLE inbox RENAME TO inbox_gone")
    answer = client.post("/v1/records", json=good(2))
    assert answer.status_code == 503, answer.text
    assert set(answer.json()["error"]) == {"code", "message", "field"}
    assert client.get("/healthz").status_code == 200


def test_image_url_allowed_host_but_fetch_disabled_by_default(client: TestClient) -> None:
    answer = client.post(
        "/v1/records", json=good(1, image={"url": "https://cdn.example.com/a.png"})
    )
    assert answer.status_code == 422
    assert "image_url_hosts is empty" in answer.json()["error"]["message"]
    assert IngestSettings().image_url_hosts == []
