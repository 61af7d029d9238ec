"""A record id names one record: a repeat (a retry, or the same id with other content) is a
duplicate, counted and reported, never stored again and never counted as sampled."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import StreamSettings
from monitor.ingest.sampling import is_sampled
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository
from monitor.store.types import NewSample
from tests.integration.ingest.conftest import make_settings
from tests.integration.ingest.test_records_api import good

STAMP = datetime(2025, 3, 1, tzinfo=UTC)


def record(record_id: str, prompt: str = "p", stream: str = "default") -> TrafficRecord:
    return TrafficRecord(id=record_id, timestamp=STAMP, stream=stream, prompt=prompt)


def counted(metrics: MonitorMetrics, outcome: str, stream: str = "default") -> float:
    value = metrics.registry.get_sample_value(
        "mllm_monitor_records_total", {"stream": stream, "outcome": outcome}
    )
    return value or 0.0


def inbox_prompts(repository: Repository) -> dict[str, list[str | None]]:
    prompts: dict[str, list[str | None]] = {}
    for entry in repository.claim("peek", limit=1000):
        prompts.setdefault(entry.record.id, []).append(entry.record.prompt)
    return prompts


def test_an_id_waiting_in_the_inbox_is_a_duplicate_and_the_first_record_wins(
    ingest: IngestService, repository: Repository, metrics: MonitorMetrics
) -> None:
    first = ingest.submit([record("chatcmpl-CONSTANT", "first prompt")])
    assert (first.sampled, first.duplicates, first.duplicate_ids) == (1, 0, [])
    again = ingest.submit([record("chatcmpl-CONSTANT", "a different prompt"), record("other")])
    assert again.accepted == 2 and again.sampled == 1 and again.skipped == 0
    assert again.duplicates == 1 and again.duplicate_ids == ["chatcmpl-CONSTANT"]
    assert again.ids == ["chatcmpl-CONSTANT", "other"]
    assert inbox_prompts(repository) == {"chatcmpl-CONSTANT": ["first prompt"], "other": ["p"]}
    assert counted(metrics, "sampled") == 2
    assert counted(metrics, "duplicate") == 1


def test_repeats_within_one_call_keep_the_first_and_report_each_repeat(
    ingest: IngestService, repository: Repository, metrics: MonitorMetrics
) -> None:
    # What the sidecar submits when an upstream reuses one completion id for every answer.
    records = [record("same", f"prompt {i}") for i in range(10)] + [record("b")]
    result = ingest.submit(records)
    assert result.sampled == 2 and result.duplicates == 9
    assert result.duplicate_ids == ["same"] * 9
    assert inbox_prompts(repository) == {"same": ["prompt 0"], "b": ["p"]}
    assert counted(metrics, "sampled") == 2 and counted(metrics, "duplicate") == 9


def test_an_embedded_id_is_a_duplicate(
    ingest: IngestService, repository: Repository, metrics: MonitorMetrics
) -> None:
    ingest.submit([record("done")])
    (entry,) = repository.claim("w")
    repository.add_samples(
        [NewSample.from_record(entry.record, {"prompt": np.ones(4)}, encoder_fingerprint="t")],
        ack=[entry.id],
        worker_id="w",
    )
    assert repository.inbox_depth() == 0
    result = ingest.submit([record("done", "retried")])
    assert result.sampled == 0 and result.duplicate_ids == ["done"]
    assert repository.inbox_depth() == 0
    assert counted(metrics, "duplicate") == 1


def test_an_id_the_sampler_leaves_out_is_skipped_not_a_duplicate(
    ingest: IngestService, metrics: MonitorMetrics
) -> None:
    dropped = next(f"h{i}" for i in range(1000) if not is_sampled(f"h{i}", 0.5))
    result = ingest.submit([record(dropped, stream="half"), record(dropped, stream="half")])
    assert (result.sampled, result.duplicates, result.skipped) == (0, 0, 2)
    assert counted(metrics, "skipped", "half") == 2
    assert counted(metrics, "duplicate", "half") == 0


def test_duplicates_take_no_share_of_the_rate_cap(repository: Repository) -> None:
    settings = make_settings(streams=[StreamSettings(name="default", max_records_per_second=2)])
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    service = IngestService(settings, repository, metrics, clock=lambda: 1000.0)
    result = service.submit([record("a"), record("a"), record("a"), record("b")])
    assert result.sampled == 2 and result.duplicate_ids == ["a", "a"]
    assert counted(metrics, "skipped") == 0


def test_records_api_a_resent_record_is_not_counted_as_sampled(
    client: TestClient, repository: Repository, metrics: MonitorMetrics
) -> None:
    first = client.post("/v1/records", json=good(1))
    assert first.status_code == 202, first.text
    assert first.json()["sampled"] == 1
    again = client.post("/v1/records", json=good(1, prompt="another question"))
    assert again.status_code == 202, again.text
    body = again.json()
    assert body["accepted"] == 1 and body["sampled"] == 0 and body["skipped"] == 0
    assert body["duplicates"] == 1
    assert body["ids"] == ["good-1"]
    assert inbox_prompts(repository) == {"good-1": ["what is in picture 1?"]}
    assert counted(metrics, "sampled") == 1
    assert counted(metrics, "duplicate") == 1
