"""A leader that loses its PostgreSQL advisory lock without dying (a single leader's, or the
lock of the stream it leads): its lock session is
terminated from another connection (``pg_terminate_backend``, as a dropped connection or an
operator would). The leader must notice before its next window, stop computing, say so, and
another replica takes over. Two schedulers, each on a repository (engine) of its own, stand for
two replicas; the shared test server holds a database of the test's own."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.config import Settings
from monitor.embedding import EncoderSet
from monitor.ingest.readiness import Readiness
from monitor.leadership import StreamShares
from monitor.metrics import MonitorMetrics
from monitor.records import WindowKey
from monitor.reference import IDRecord, build_store, load_store
from monitor.scheduler import WindowScheduler
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository, open_repository
from monitor.store.types import NewSample
from monitor.windows import window_start
from tests.integration.daemon.test_pipeline import StandIn
from tests.integration.databases import drop_database

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
SIZE = timedelta(minutes=5)


@pytest.fixture
def database_url() -> Iterator[str]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to test against")
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"mllm_leader_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


@pytest.fixture(params=["single", "per_stream"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    stand_in = StandIn("text")
    encoders = EncoderSet(image=None, text=stand_in, fusion="mean")  # type: ignore[arg-type]
    records = [IDRecord(id=f"b-{i}", prompt=f"q{i}", response=f"a{i}") for i in range(40)]
    build_store(records, root=tmp_path / "refs", name="bare", encoders=encoders)
    settings = Settings(
        database={"url": database_url},
        reference={"root": str(tmp_path / "refs")},
        streams=[{"name": "live", "reference": "bare"}],
        windows={"size": "5m", "lateness": "0s", "min_samples": 20},
        # A long lock timeout: only the re-check before each window can notice in time.
        scheduler={
            "lock_timeout": "60s",
            "check_interval": "60s",
            "leadership": request.param,
        },
    )
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    engine = create_engine(make_url(database_url), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


class Replica:
    """One scheduler on a repository (an engine, so a lock session) of its own, over every
    configured stream, recording the windows it computes."""

    def __init__(self, settings: Settings) -> None:
        self.repository: Repository = open_repository(settings)
        self.readiness = Readiness()
        self.metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
        loaded = {
            ref: load_store(settings.reference.root, ref)
            for ref in {s.reference for s in settings.streams}
        }
        stores = {s.name: loaded[s.reference] for s in settings.streams}
        self.scheduler = WindowScheduler(
            settings, self.repository, stores, self.metrics, readiness=self.readiness
        )
        self.computed: list[WindowKey] = []
        compute = self.scheduler.pipeline.compute

        def counted(key: WindowKey) -> Any:
            self.computed.append(key)
            return compute(key)

        self.scheduler.pipeline.compute = counted  # type: ignore[method-assign, assignment]

    def scheduler_check(self) -> dict[str, Any]:
        return self.readiness.snapshot()[1]["scheduler"]

    def leader_gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("mllm_monitor_scheduler_leader")

    def streams_led(self) -> float | None:
        return self.metrics.registry.get_sample_value("mllm_monitor_scheduler_streams_led")

    def close(self) -> None:
        self.scheduler.stop(5)
        self.repository.close()


def clear_of_window_end(margin: timedelta = timedelta(seconds=10)) -> None:
    """Windows are of wall-clock time: a test that computes "the last few windows" must not
    straddle a window's end, or the window that closes meanwhile becomes due as well. These
    tests take seconds; when the current window ends within ``margin``, wait past its end."""
    now = datetime.now(UTC)
    left = window_start(now, SIZE) + SIZE - now
    if left < margin:
        time.sleep(left.total_seconds() + 1)


@pytest.fixture
def replicas(settings: Settings) -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(settings), Replica(settings)
    clear_of_window_end()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def add_samples(repo: Repository, base: datetime, index: int, n: int, tag: str = "") -> None:
    text_rows = StandIn("text")
    start = base + index * SIZE
    ids = [f"live-{index}-{tag}{j}" for j in range(n)]
    prompts = text_rows.encode_texts([f"q {i}" for i in ids])
    answers = text_rows.encode_texts([f"a {i}" for i in ids])
    repo.add_samples(
        [
            NewSample(
                id=ids[j],
                stream="live",
                event_time=start + (j + 1) * SIZE / (n + 2),
                encoder_fingerprint="stand-in",
                embeddings={"prompt": prompts[j], "response": answers[j]},
                has_image=False,
                has_reference=False,
                ood_score=0.0,
            )
            for j in range(n)
        ]
    )


def terminate_lock_session(admin: Engine) -> int:
    """End the session holding the exclusive advisory lock, the single leader's or the
    stream's (what a dropped connection does)."""
    with admin.connect() as conn:
        pids = list(
            conn.execute(
                text(
                    "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                )
            ).scalars()
        )
        assert len(pids) == 1, pids
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]}).scalar()
    return int(pids[0])


def take_lock(replica: Replica) -> None:
    """The other replica's lock try succeeds once the terminated session has ended."""
    leadership = replica.scheduler.leadership

    def try_acquire() -> bool:
        if isinstance(leadership, StreamShares):
            return leadership.locks.join() and leadership.locks.try_take("live")
        return replica.scheduler.lock.try_acquire()

    deadline = time.monotonic() + 10
    while not try_acquire():
        assert time.monotonic() < deadline, "the terminated session's lock was never freed"
        time.sleep(0.05)


def test_a_leader_whose_lock_session_is_terminated_stops_and_another_replica_takes_over(
    replicas: tuple[Replica, Replica], admin: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    base = window_start(datetime.now(UTC) - 6 * SIZE, SIZE)
    for index in range(3):
        add_samples(a.repository, base, index, 3)
    assert a.scheduler.tick() >= 6  # windows 0..5 (3..5 empty)
    assert b.scheduler.tick() == 0 and a.scheduler.is_leader and not b.scheduler.is_leader
    assert b.scheduler_check()["detail"].startswith("standby")

    terminate_lock_session(admin)
    take_lock(b)
    # A pass with nothing to compute: the leader still re-checks its lock and reports it lost.
    with caplog.at_level(logging.ERROR, logger="monitor.scheduler"):
        assert a.scheduler.tick() == 0
    assert not a.scheduler.is_leader and a.leader_gauge() == 0
    assert any("leader lock lost" in r.getMessage() for r in caplog.records)
    assert a.scheduler_check()["detail"].startswith("standby: leader lock lost")
    # Late samples make window 1 stale: work for the leader's next pass, which is b's.
    add_samples(b.repository, base, 1, 2, tag="late")
    before = len(a.computed)
    assert a.scheduler.tick() == 0
    assert len(a.computed) == before  # not one more window
    # The replica that took the lock computes the stale window.
    assert b.scheduler.tick() >= 1
    assert b.scheduler.is_leader and b.leader_gauge() == 1
    assert WindowKey("live", base + SIZE, base + 2 * SIZE) in b.computed
    assert a.scheduler.tick() == 0  # still standby
    assert a.scheduler_check()["detail"].startswith("standby")
    windows = b.repository.get_windows("live")
    assert len({w.key for w in windows}) == len(windows)
    assert next(w for w in windows if w.key.start == base + SIZE).n == 5


def test_a_leader_whose_lock_session_is_terminated_mid_pass_stops_before_the_next_window(
    replicas: tuple[Replica, Replica], admin: Engine
) -> None:
    a, b = replicas
    base = window_start(datetime.now(UTC) - 6 * SIZE, SIZE)
    for index in range(3):
        add_samples(a.repository, base, index, 3)
    compute = a.scheduler.pipeline.compute

    def lose_lock_after_first(key: WindowKey) -> Any:
        result = compute(key)
        if len(a.computed) == 1:
            terminate_lock_session(admin)
            take_lock(b)
        return result

    a.scheduler.pipeline.compute = lose_lock_after_first  # type: ignore[method-assign, assignment]
    assert a.scheduler.tick() == 1  # the first window, then it noticed
    assert len(a.computed) == 1 and not a.scheduler.is_leader and a.leader_gauge() == 0
    assert a.scheduler_check()["detail"].startswith("standby: leader lock lost")
    # The new leader carries on from there: windows 1..5, once each.
    assert b.scheduler.tick() >= 5
    assert b.computed[:5] == [
        WindowKey("live", base + i * SIZE, base + (i + 1) * SIZE) for i in range(1, 6)
    ]
    assert a.scheduler.tick() == 0
