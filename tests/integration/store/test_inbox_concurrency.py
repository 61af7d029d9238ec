"""The durable inbox under contention: two workers (own engines, like two processes)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event

from monitor.store import migrate
from monitor.store._inbox import claim_statement
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
            # Let the other worker in: on SQLite one worker could otherwise win every write
            # lock and drain all batches alone (seen once in CI), and the test would not
            # exercise two claimers at all.
            time.sleep(0.001)
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


def _engine_with_lock_timeout(url: str, timeout: str) -> Engine:
    """An engine whose sessions give up waiting for a row lock after ``timeout``: a claim
    that blocks fails fast instead of hanging the suite."""
    engine = create_db_engine(url)

    @event.listens_for(engine, "connect")
    def _set_timeouts(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{timeout}'")
            cursor.execute("SET statement_timeout = '10s'")
        dbapi_connection.commit()

    return engine


def test_a_claim_skips_rows_another_open_claim_holds(fresh_postgres: str) -> None:
    """PostgreSQL only: the claim's SELECT must say SKIP LOCKED. Worker A runs the very claim
    statement in a transaction it keeps open (its rows locked, uncommitted); worker B's claim
    must return the next rows at once. A blocking FOR UPDATE would make B wait for A (here: a
    lock timeout after 2 s, a StorageError)."""
    holder_engine = create_db_engine(fresh_postgres)
    claimer_engine = _engine_with_lock_timeout(fresh_postgres, "2s")
    try:
        migrate.upgrade(holder_engine)
        repo = Repository(claimer_engine)
        ids = repo.enqueue([make_record(i) for i in range(6)])
        now = datetime.now(UTC)
        with holder_engine.connect() as holder, holder.begin():
            held = holder.execute(
                claim_statement("a", limit=2, now=now, lease_until=now + timedelta(minutes=5))
            ).all()
            assert sorted(row.id for row in held) == ids[:2]
            started = time.monotonic()
            taken = repo.claim("b", limit=3)
            waited = time.monotonic() - started
            assert [item.id for item in taken] == ids[2:5]
            assert waited < 1.0, f"claim waited {waited:.2f} s on another worker's locks"
        # A committed: its two rows are leased now, so B gets only the last free one.
        assert [item.id for item in repo.claim("b", limit=10)] == ids[5:]
    finally:
        claimer_engine.dispose()
        holder_engine.dispose()
