"""The sidecar fails open: a full inbox, a database that goes away, a sampling path that
raises or is stuck, and embedding workers that fail never change, fail or delay what the client
gets; every lost exchange is counted."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from monitor.embedding import EncoderSet
from monitor.ingest.service import IngestService, SubmitResult
from monitor.ingest.worker import EmbeddingWorkers
from monitor.records import TrafficRecord
from monitor.store.repository import Repository
from tests.integration.databases import drop_database
from tests.integration.ingest.proxy_support import (
    migrated_engine,
    record,
    running_sidecar,
    sidecar_over_fake,
    sqlite_repository,
    wait_for,
)

MODEL = "llava-fake"
POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
# Longest a stuck sampling path waits to be let go (far longer than the test's requests take).
STUCK_SECONDS = 30.0


def answers(client: openai.OpenAI, prompt: str) -> tuple[str | None, str | None]:
    """(non-streamed content, streamed content)."""
    messages: Any = [{"role": "user", "content": prompt}]
    plain = client.chat.completions.create(model=MODEL, messages=messages)
    parts = [
        choice.delta.content or ""
        for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        for choice in chunk.choices
    ]
    return plain.choices[0].message.content, "".join(parts)


def test_a_full_inbox_loses_the_sample_not_the_answer(tmp_path: Path) -> None:
    repo = sqlite_repository(tmp_path)
    repo.enqueue([record(0)])  # the inbox is at its limit of 1

    with sidecar_over_fake(repo, ingest={"max_inbox_depth": 1}) as sidecar:
        proxied, direct = sidecar.client(), sidecar.client(direct=True)
        assert answers(proxied, "is anyone there") == answers(direct, "is anyone there")
        wait_for(lambda: sidecar.lost("inbox_full") == 2, what="two exchanges counted lost")
        assert sidecar.records("dropped") == 2
    assert repo.inbox_depth() == 1


def test_a_database_that_goes_away_loses_samples_not_answers() -> None:
    """A real PostgreSQL database is dropped (its connections killed) under the sidecar."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to take away")
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"mllm_failopen_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    repo = Repository(migrated_engine(url))

    try:
        with sidecar_over_fake(repo, db_url=url) as sidecar:
            proxied, direct = sidecar.client(), sidecar.client(direct=True)
            assert answers(proxied, "before") == answers(direct, "before")
            wait_for(lambda: repo.inbox_depth() == 2, what="both exchanges sampled")

            drop_database(admin, name)
            started = time.perf_counter()
            for n in range(3):
                assert answers(proxied, f"during {n}") == answers(direct, f"during {n}")
            assert time.perf_counter() - started < 5
            wait_for(lambda: sidecar.lost("storage_error") >= 6, what="losses counted")
            assert sidecar.records("dropped") >= 6
    finally:
        repo.close()
        drop_database(admin, name, if_exists=True)
        admin.dispose()


class BrokenIngest(IngestService):
    """A monitor bug on the sampling path."""

    def submit(self, records: Sequence[TrafficRecord]) -> SubmitResult:
        raise RuntimeError("a bug in the monitor")


class StuckIngest(IngestService):
    """A sampling path whose submits are held until the test lets them go (a database on its
    knees); each gives up waiting after STUCK_SECONDS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stuck = threading.Event()  # a submit is in progress, held
        self.let_go = threading.Event()
        self.finished = 0  # submits that have returned

    def submit(self, records: Sequence[TrafficRecord]) -> SubmitResult:
        self.stuck.set()
        self.let_go.wait(STUCK_SECONDS)
        try:
            return super().submit(records)
        finally:
            self.finished += 1


def test_a_sampling_path_that_raises_changes_nothing_for_the_client(tmp_path: Path) -> None:
    repo = sqlite_repository(tmp_path)
    with sidecar_over_fake(repo, ingest_class=BrokenIngest) as sidecar:
        proxied, direct = sidecar.client(), sidecar.client(direct=True)
        for n in range(3):
            assert answers(proxied, f"question {n}") == answers(direct, f"question {n}")
        wait_for(lambda: sidecar.lost("internal_error") == 6, what="bugs counted")
        assert sidecar.records("dropped") == 6


def test_a_stuck_sampling_path_never_delays_the_client(tmp_path: Path) -> None:
    repo = sqlite_repository(tmp_path)
    with sidecar_over_fake(
        repo, proxy={"sample_queue_size": 1}, ingest_class=StuckIngest
    ) as sidecar:
        ingest = sidecar.ingest
        assert isinstance(ingest, StuckIngest)
        # A sidecar that waited for its sampler would time out here rather than hang.
        proxied = sidecar.client(timeout=STUCK_SECONDS / 2)
        direct = sidecar.client(direct=True)
        try:
            assert answers(proxied, "quick 0") == answers(direct, "quick 0")
            wait_for(ingest.stuck.is_set, what="the sampler to be stuck in a submit")
            for n in range(1, 6):
                assert answers(proxied, f"quick {n}") == answers(direct, f"quick {n}")
            # Every answer came while the first submit was still held: a sidecar that waited
            # for its sampler would have answered only after that submit gave up.
            assert ingest.finished == 0
            assert sidecar.lost("queue_full") >= 1
        finally:
            ingest.let_go.set()
        wait_for(lambda: repo.inbox_depth() >= 1, what="what fitted the queue to be sampled")


class ExplodingEncoder:
    """An encoder whose every call fails (a broken model, an exhausted GPU)."""

    kind = "exploding"
    dim = 8
    fingerprint = "exploding-v1"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("the encoder is broken")

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        raise RuntimeError("the encoder is broken")


def test_failing_embedding_workers_change_nothing_for_the_client(tmp_path: Path) -> None:
    repo = sqlite_repository(tmp_path)
    with sidecar_over_fake(repo) as sidecar:
        proxied, direct = sidecar.client(), sidecar.client(direct=True)
        broken = EncoderSet(image=None, text=ExplodingEncoder(), fusion="mean")
        workers = EmbeddingWorkers(sidecar.settings, repo, broken, {}, sidecar.metrics)
        workers.start()
        try:
            for n in range(3):
                assert answers(proxied, f"still fine {n}") == answers(direct, f"still fine {n}")
            wait_for(lambda: repo.inbox_depth() == 6, what="exchanges kept for a later worker")
        finally:
            workers.stop(5)
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert repo.count_samples("default", *everything) == 0  # nothing embedded, nothing lost


def test_an_unreachable_upstream_is_a_502_in_the_openai_error_shape(tmp_path: Path) -> None:
    repo = sqlite_repository(tmp_path)
    with running_sidecar(None, "http://127.0.0.1:9", repo) as sidecar:
        response = httpx.post(
            f"{sidecar.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
