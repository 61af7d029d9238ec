"""The durable inbox under contention: two workers (own engines, like two processes)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from tests.integration.store.conftest import make_record

N_RECORDS = 500


def _worker(
    url: str, name: str, start: threading.Barrier, claimed: list[int], acked: list[int]
) -> None:
    engine = create_db_engine(url)
    repo = Repository(engine)
    try:
        start.wait()
        while batch := repo.claim(name, limit=7, lease=timedelta(minutes=5)):
            ids = [item.id for item in batch]
            claimed.extend(ids)
            assert repo.ack(ids, name) == len(ids)
            acked.extend(ids)
    finally:
        engine.dispose()


def test_two_workers_never_claim_the_same_record(migrated: Engine, db_url: str) -> None:
    repo = Repository(migrated)
    ids = repo.enqueue([make_record(i) for i in range(N_RECORDS)])
    start = threading.Barrier(2)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    acked: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            _worker(db_url, name, start, claimed[name], acked[name])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    both = claimed["a"] + claimed["b"]
    duplicates = [i for i, count in Counter(both).items() if count > 1]
    assert duplicates == []
    assert sorted(both) == sorted(ids)  # nothing lost, nothing invented
    assert sorted(acked["a"] + acked["b"]) == sorted(ids)  # each acknowledged exactly once
    assert claimed["a"] and claimed["b"]  # both really took part
    assert repo.inbox_depth() == 0


def test_an_expired_lease_returns_its_records(repo: Repository) -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    ids = repo.enqueue([make_record(i) for i in range(3)], received_at=now)
    crashed = repo.claim("crashed", limit=10, lease=timedelta(seconds=30), now=now)
    assert [item.id for item in crashed] == ids
    # Still leased 29 s later: nobody else gets them.
    assert repo.claim("rescuer", now=now + timedelta(seconds=29)) == []
    rescued = repo.claim("rescuer", lease=timedelta(minutes=1), now=now + timedelta(seconds=31))
    assert [item.id for item in rescued] == ids
    assert all(item.attempts == 2 for item in rescued)
    assert rescued[0].lease_until == now + timedelta(seconds=91)
    # The crashed worker comes back and acks: it no longer holds them, nothing happens.
    assert repo.ack(ids, "crashed") == 0
    assert repo.inbox_depth() == 3
    assert repo.ack(ids, "rescuer") == 3
    assert repo.inbox_depth() == 0


def test_acknowledged_records_are_not_lost_or_redelivered(repo: Repository) -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    records = [make_record(i) for i in range(10)]
    repo.enqueue(records, received_at=now)
    first = repo.claim("w", limit=4, lease=timedelta(seconds=10), now=now)
    assert repo.ack([item.id for item in first], "w") == 4
    # Long after every lease ran out, only the unacknowledged six come back.
    later = repo.claim("w2", limit=100, now=now + timedelta(hours=1))
    assert [item.record.id for item in later] == [r.id for r in records[4:]]
    # A fresh repository (a restarted process) sees the same durable state.
    reopened = Repository(create_db_engine(repo.engine.url))
    try:
        assert reopened.inbox_depth() == 6
    finally:
        reopened.close()
