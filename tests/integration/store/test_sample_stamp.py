"""A sample's ``created_at`` is stamped once its write holds the lock, so a window read while
the batch waited for the lock (and so computed without it) is found stale when it lands; stamped
before the wait, the window looked newer than the samples it missed and stayed short for good
(seen as a quickstart window computed with 2 of its 30 records, never recomputed)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from tests.integration.store.conftest import T0, make_record, make_sample
from tests.integration.store.test_repository import _window


def test_a_window_read_while_samples_wait_for_the_lock_is_found_stale(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    engine = create_db_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    repo = Repository(engine)
    try:
        repo.ensure_stream("default")
        sample = make_sample(make_record(1, at=T0 + timedelta(minutes=1)), np.random.default_rng(1))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        worker = threading.Thread(target=repo.add_samples, args=([sample],))
        worker.start()
        time.sleep(0.5)  # the batch is ready and waits for the lock
        read_at = datetime.now(UTC)  # a window read now sees no sample of it
        time.sleep(0.05)
        blocker.execute("COMMIT")
        blocker.close()
        worker.join(30)
        assert not worker.is_alive()
        repo.upsert_window(dataclasses.replace(_window(), n=0, computed_at=read_at))
        stale = repo.stale_locations(read_at - timedelta(minutes=1))
        assert [(loc.stream, loc.event_time) for loc in stale] == [
            ("default", T0 + timedelta(minutes=1))
        ]
    finally:
        engine.dispose()


def test_a_window_read_before_a_stamped_batch_committed_is_found_stale(repo: Repository) -> None:
    """The batch's stamp precedes its commit: a window that starts computing between the two
    reads none of it yet looks newer than all of it. Its stored count, short of what its range
    holds, finds it (seen in CI: a window of 30 published with 4 and never recomputed)."""
    repo.ensure_stream("default")
    rng = np.random.default_rng(2)
    samples = [make_sample(make_record(i, at=T0 + timedelta(minutes=1)), rng) for i in range(3)]
    repo.add_samples(samples)
    after_stamp = datetime.now(UTC) + timedelta(seconds=1)
    since = after_stamp - timedelta(minutes=1)
    repo.upsert_window(dataclasses.replace(_window(), n=1, computed_at=after_stamp))
    stale = repo.stale_locations(since)
    assert [(loc.stream, loc.event_time) for loc in stale] == [
        ("default", T0 + timedelta(minutes=1))
    ]
    # Computed with every sample it holds: not stale.
    repo.upsert_window(dataclasses.replace(_window(), n=3, computed_at=after_stamp))
    assert repo.stale_locations(since) == []
