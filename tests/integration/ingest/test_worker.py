"""Embedding workers on a real SQLite inbox with tiny real encoders and a real reference store."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.embedding import EncoderSet
from monitor.ingest.sample_embedding import sample_fingerprint
from monitor.ingest.worker import EmbeddingWorkers
from monitor.metrics import MonitorMetrics
from monitor.reference.build import build_store
from monitor.reference.id_records import IDRecord
from monitor.reference.store import ReferenceStore
from monitor.store.repository import Repository
from monitor.store.types import NewSample
from tests.integration.ingest.proxy_support import (
    T0,
    Clock,
    make_settings,
    png_bytes,
    record,
    sqlite_repository,
    tiny_encoders,
    wait_for,
)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> EncoderSet:
    return tiny_encoders(tmp_path_factory.mktemp("models"))


def id_records(n: int = 12) -> list[IDRecord]:
    return [
        IDRecord(
            id=f"id-{i}",
            timestamp=T0,
            prompt=f"What is shown in picture number {i}?",
            response=f"an answer {i}",
            reference=f"a reference {i}" if i % 2 else None,
            image=png_bytes(i) if i % 3 else None,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, encoders: EncoderSet) -> ReferenceStore:
    return build_store(
        id_records(), root=tmp_path_factory.mktemp("refs"), name="ref", encoders=encoders
    )


def workers_for(
    repo: Repository,
    encoders: EncoderSet,
    store: ReferenceStore,
    **workers: object,
) -> tuple[EmbeddingWorkers, MonitorMetrics]:
    settings = make_settings("sqlite://", workers=workers)
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    return EmbeddingWorkers(settings, repo, encoders, {"ref": store}, metrics), metrics


def records_value(metrics: MonitorMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "mllm_monitor_records_total", {"stream": "default", "outcome": outcome}
    )
    assert value is not None
    return value


def test_a_batch_is_embedded_scored_stored_and_acknowledged(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    workers, metrics = workers_for(repo, encoders, store)
    batch = [
        record(0, image=png_bytes(1)),
        record(1),
        record(2, image=png_bytes(2), reference="the reference"),
        record(3, response=None),
    ]
    repo.enqueue(batch)

    assert workers.run_once("w1") == 4
    assert repo.inbox_depth() == 0
    stored = {r.id: repo.get_sample(r.id) for r in batch}
    kinds = {key: sample.kinds for key, sample in stored.items() if sample is not None}
    assert kinds == {
        "rec-00000": ("image", "prompt", "response"),
        "rec-00001": ("prompt", "response"),
        "rec-00002": ("image", "prompt", "response", "reference"),
        "rec-00003": ("prompt",),
    }
    for sample in stored.values():
        assert sample is not None
        assert sample.ood_score is not None and -1e-5 <= sample.ood_score <= 2.0
        assert sample.encoder_fingerprint == sample_fingerprint(encoders)
    embedded = metrics.registry.get_sample_value(
        "mllm_monitor_embedded_records_total", {"stream": "default"}
    )
    assert embedded == 4
    assert metrics.registry.get_sample_value("mllm_monitor_embed_batch_seconds_count") == 1
    assert workers.run_once("w1") == 0  # nothing left


def test_live_records_embed_exactly_as_the_reference_build(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    """The same records, through the worker, give the rows the store was built with, and an
    ID record's kNN OOD score is ~0 (its own row is in the index)."""
    repo = sqlite_repository(tmp_path)
    workers, _ = workers_for(repo, encoders, store)
    ids = id_records()
    repo.enqueue(ids)
    while workers.run_once("w1"):
        pass
    chunk = next(repo.iter_embeddings("default", T0, T0 + timedelta(seconds=1), chunk_size=100))
    order = [chunk.sample_ids.index(r.id) for r in ids]
    for kind in ("prompt", "response", "reference", "image"):
        rows_of = store.rows_of(kind)  # record positions, in store row order
        live = np.zeros((len(rows_of), store.embeddings(kind).shape[1]), dtype=np.float32)
        positions = {int(p): row for row, p in enumerate(chunk.index[kind])}
        for row, record_position in enumerate(rows_of):
            live[row] = chunk.vectors[kind][positions[order[record_position]]]
        np.testing.assert_allclose(live, store.embeddings(kind), atol=2e-3)
    scores = [repo.get_sample(r.id).ood_score for r in ids]  # type: ignore[union-attr]
    assert max(s for s in scores if s is not None) < 1e-2


def test_an_undecodable_image_is_moved_aside_and_the_rest_stored(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    workers, metrics = workers_for(repo, encoders, store)
    good = [record(i, image=png_bytes(i)) for i in range(3)]
    bad = record(9, image=b"\x89PNG\r\n\x1a\n this is not really a PNG")
    repo.enqueue([good[0], bad, good[1], good[2]])

    assert workers.run_once("w1") == 4
    assert all(repo.get_sample(r.id) is not None for r in good)
    assert repo.get_sample(bad.id) is None
    assert repo.inbox_depth() == 0
    (failure,) = repo.inbox_failures()
    assert failure.record_id == bad.id and failure.stream == "default"
    assert "ImageDecodeError" in failure.reason
    assert records_value(metrics, "failed") == 1

    # The queue is not blocked: later records are embedded as usual.
    repo.enqueue([record(20), record(21, image=png_bytes(5))])
    assert workers.run_once("w1") == 2
    assert repo.get_sample("rec-00021") is not None
    assert len(repo.inbox_failures()) == 1


def test_a_worker_killed_mid_batch_leaves_it_to_be_retried_and_stored_once(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    clock = Clock(T0)
    repo = sqlite_repository(tmp_path, clock)
    workers, _ = workers_for(repo, encoders, store, lease="2m")
    batch = [record(i, image=png_bytes(i) if i % 2 else None) for i in range(6)]
    repo.enqueue(batch)

    # A worker claims the batch, stores half of it, and dies before acknowledging anything.
    held = repo.claim("doomed", limit=10, lease=timedelta(minutes=2))
    assert len(held) == 6
    survivor, _ = workers_for(repo, encoders, store)
    survivor.run_once("scratch")  # nothing claimable: the lease still holds
    assert repo.inbox_depth() == 6
    partial = [
        NewSample.from_record(
            e.record,
            {"prompt": np.ones(4, dtype=np.float32)},
            encoder_fingerprint="doomed-run",
        )
        for e in held[:3]
    ]
    repo.add_samples(partial)

    clock.now = T0 + timedelta(minutes=3)  # the lease runs out
    assert workers.run_once("w2") == 6
    assert repo.inbox_depth() == 0
    assert all(repo.get_sample(r.id) is not None for r in batch)
    assert repo.count_samples("default", T0, T0 + timedelta(seconds=1)) == 6  # stored once
    assert repo.ack([e.id for e in held], "doomed") == 0  # the dead worker holds nothing


def test_a_record_that_keeps_killing_workers_is_moved_aside_after_max_attempts(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    clock = Clock(T0)
    repo = sqlite_repository(tmp_path, clock)
    workers, metrics = workers_for(repo, encoders, store, max_attempts=2, lease="1m")
    repo.enqueue([record(1)])
    for attempt in range(2):  # two workers take it and die
        assert len(repo.claim(f"doomed-{attempt}", lease=timedelta(minutes=1))) == 1
        clock.now += timedelta(minutes=2)
    assert workers.run_once("w") == 1
    assert repo.get_sample("rec-00001") is None
    (failure,) = repo.inbox_failures()
    assert "gave up after 2 attempts" in failure.reason and failure.attempts == 3
    assert records_value(metrics, "failed") == 1
    assert repo.inbox_depth() == 0


def test_late_references_are_embedded_and_joined_in_the_worker_loop(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    touched: list[object] = []
    workers, _ = workers_for(repo, encoders, store)
    workers.on_reference = touched.append
    repo.enqueue([record(1), record(2)])
    repo.add_late_reference("rec-00002", "arrived before its record was embedded")
    workers.run_once("w")
    repo.add_late_reference("rec-00001", "arrived after")
    assert workers.resolve_late_references() == 2
    for record_id in ("rec-00001", "rec-00002"):
        sample = repo.get_sample(record_id)
        assert sample is not None and sample.has_reference and "reference" in sample.kinds
    assert len(touched) == 2
    assert workers.resolve_late_references() == 0


def test_threads_drain_the_inbox_and_stop(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    workers, _ = workers_for(repo, encoders, store, count=2, batch_size=3)
    workers.start()
    try:
        repo.enqueue([record(i, image=png_bytes(i) if i % 2 else None) for i in range(10)])
        wait_for(lambda: repo.inbox_depth() == 0, what="the inbox to drain")
        assert repo.count_samples("default", T0, T0 + timedelta(seconds=1)) == 10
        assert {t.name for t in threading.enumerate()} >= {"embed-0", "embed-1"}
    finally:
        workers.stop(10)
    assert not workers.running
