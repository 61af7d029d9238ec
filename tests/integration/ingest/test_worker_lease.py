"""Worker ids and leases on a real SQLite inbox: every worker id is unique to its process and
object, a batch in progress keeps its lease however long it takes, and a batch whose samples
could not be stored is given back at once instead of waiting out its lease."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from monitor.embedding import EncoderSet
from monitor.errors import StorageError
from monitor.ingest.worker import EmbeddingWorkers
from monitor.metrics import MonitorMetrics
from monitor.reference.build import build_store
from monitor.reference.id_records import IDRecord
from monitor.reference.store import ReferenceStore
from monitor.store.models import InboxItem
from monitor.store.repository import Repository
from tests.integration.ingest.proxy_support import (
    T0,
    make_settings,
    record,
    sqlite_repository,
    tiny_encoders,
    wait_for,
)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> EncoderSet:
    return tiny_encoders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, encoders: EncoderSet) -> ReferenceStore:
    records = [
        IDRecord(id=f"id-{i}", timestamp=T0, prompt=f"question {i}", response=f"answer {i}")
        for i in range(8)
    ]
    return build_store(records, root=tmp_path_factory.mktemp("refs"), name="ref", encoders=encoders)


class SlowText:
    """The real text encoder, made slow: an embedding call that outlasts a lease."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner = inner
        self.seconds = seconds
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.seconds)
        rows: np.ndarray = self._inner.encode_texts(texts)
        return rows


def slow(encoders: EncoderSet, seconds: float) -> EncoderSet:
    return EncoderSet(image=encoders.image, text=SlowText(encoders.text, seconds), fusion="concat")  # type: ignore[arg-type]


def workers_for(
    repo: Repository, encoders: EncoderSet, store: ReferenceStore, **workers: object
) -> EmbeddingWorkers:
    settings = make_settings("sqlite://", workers=workers)
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    return EmbeddingWorkers(settings, repo, encoders, {"ref": store}, metrics)


def claimed_by(repo: Repository) -> list[str | None]:
    with repo.engine.connect() as conn:
        return list(conn.execute(select(InboxItem.claimed_by).order_by(InboxItem.id)).scalars())


def test_two_worker_sets_claim_under_different_ids_unique_to_the_process(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    repo.enqueue([record(1), record(2)])
    # Two processes' worth of workers on one inbox (one record each: batches of one).
    a = workers_for(repo, slow(encoders, 3.0), store, batch_size=1)
    b = workers_for(repo, slow(encoders, 3.0), store, batch_size=1)
    a.start()
    b.start()
    try:
        wait_for(
            lambda: len(held := claimed_by(repo)) == 2 and None not in held,
            timeout=20,
            what="both records claimed at once",
        )
        holders = claimed_by(repo)
        assert len(set(holders)) == 2, holders  # not "embed-0" twice
        assert set(holders) == {a.worker_ids[0], b.worker_ids[0]}
        host = socket.gethostname()[:48]
        assert all(h is not None and h.startswith(f"{host}-{os.getpid()}-") for h in holders)
        wait_for(lambda: repo.inbox_depth() == 0, timeout=30, what="both records stored")
    finally:
        a.stop(10)
        b.stop(10)
    assert repo.get_sample("rec-00001") is not None and repo.get_sample("rec-00002") is not None


def test_worker_ids_differ_between_processes() -> None:
    code = (
        "from monitor.ingest.worker import process_worker_id as p; print(p())"
    )  # fmt: skip
    ids = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(ids) == 2 and all(len(i) <= 80 for i in ids), ids


def test_a_batch_that_takes_longer_than_its_lease_is_renewed_not_stolen(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    repo.enqueue([record(1), record(2), record(3)])
    lease = timedelta(milliseconds=600)
    worker = workers_for(repo, slow(encoders, 2.5), store, lease="600ms")
    settled: list[int] = []
    thread = threading.Thread(target=lambda: settled.append(worker.run_once("slow-worker")))
    thread.start()
    wait_for(lambda: None not in claimed_by(repo), timeout=10, what="the batch claimed")
    stolen = []
    while thread.is_alive():  # another replica keeps trying, well past the 0.6 s lease
        stolen.extend(repo.claim("thief", limit=10, lease=lease))
        time.sleep(0.05)
    thread.join()
    assert stolen == []
    assert settled == [3]
    assert repo.inbox_depth() == 0
    assert all(repo.get_sample(f"rec-{i:05d}") is not None for i in (1, 2, 3))


def test_a_batch_whose_samples_cannot_be_stored_is_given_back_at_once(
    tmp_path: Path, encoders: EncoderSet, store: ReferenceStore
) -> None:
    repo = sqlite_repository(tmp_path)
    repo.enqueue([record(1), record(2)])
    worker = workers_for(repo, encoders, store, lease="5m")
    # A real storage failure on the sample write (as a full disk or a constraint would give).
    with repo.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_samples BEFORE INSERT ON samples "
                "BEGIN SELECT RAISE(ABORT, 'injected sample write failure'); END"
            )
        )
    with pytest.raises(StorageError, match="injected sample write failure"):
        worker.run_once("failing-worker")
    assert repo.get_sample("rec-00001") is None and repo.inbox_depth() == 2
    # Claimable now, not five minutes from now: the failed batch was given back.
    again = repo.claim("other-replica", limit=10, lease=timedelta(minutes=5))
    assert [e.record.id for e in again] == ["rec-00001", "rec-00002"]
    assert [e.attempts for e in again] == [2, 2]
    assert repo.release([e.id for e in again], "other-replica") == 2
    with repo.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_samples"))
    assert worker.run_once("failing-worker") == 2
    assert repo.inbox_depth() == 0 and repo.get_sample("rec-00002") is not None
