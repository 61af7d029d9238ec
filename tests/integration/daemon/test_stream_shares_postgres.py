"""Per-stream leadership on PostgreSQL: three schedulers, each on a repository (engine, so lock
session) of its own, stand for three replicas sharing six streams. They split the streams
evenly and disjointly, compute every window once, take a dead replica's streams over at their
next tick (its session terminated mid-window), and stay out of a backfill's and a single
leader's way."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from monitor import scheduler as scheduler_module
from monitor.config import Settings
from monitor.detection import calibrate_store
from monitor.detection.detector import Detector
from monitor.embedding import EncoderSet
from monitor.leadership import StreamShares, leader_lock_if_free
from monitor.records import WindowKey
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store._leader import DEFAULT_LOCK_NAME
from monitor.store._stream_locks import stream_lock_key
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository
from monitor.store.types import NewSample
from monitor.windows import window_start
from tests.integration.daemon.test_leader_lost_postgres import (  # noqa: F401
    Replica,
    admin,
    clear_of_window_end,
    database_url,
)
from tests.integration.daemon.test_pipeline import StandIn

SIZE = timedelta(minutes=5)
STREAMS = [f"s{i}" for i in range(6)]
WINDOWS = 3
PER_WINDOW = 6

pytestmark = pytest.mark.slow


def make_settings(tmp_path: Path, url: str, leadership: str = "auto") -> Settings:
    return Settings(
        database={"url": url},
        reference={"root": str(tmp_path / "refs")},
        streams=[{"name": s, "reference": "bare"} for s in STREAMS],
        windows={"size": "5m", "lateness": "0s", "min_samples": PER_WINDOW},
        scheduler={"lock_timeout": "60s", "check_interval": "60s", "leadership": leadership},
    )


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:  # noqa: F811
    encoders = EncoderSet(image=None, text=StandIn("text"), fusion="mean")  # type: ignore[arg-type]
    records = [IDRecord(id=f"b-{i}", prompt=f"q{i}", response=f"a{i}") for i in range(400)]
    store = build_store(records, root=tmp_path / "refs", name="bare", encoders=encoders)
    # Calibrated, so every window carries a detector state: the chains can be checked.
    calibrate_store(
        store,
        window_sizes=[PER_WINDOW],
        false_alarm_rate=0.05,
        window=SIZE,
        false_page_interval=timedelta(days=1),
    )
    settings = make_settings(tmp_path, database_url)
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def replicas(settings: Settings) -> Iterator[list[Replica]]:
    made = [Replica(settings) for _ in range(3)]
    clear_of_window_end()
    try:
        yield made
    finally:
        for replica in made:
            replica.close()


def add_samples(repo: Repository, base: datetime, n: int = PER_WINDOW) -> None:
    stand_in = StandIn("text")
    rows = []
    for stream, index in itertools.product(STREAMS, range(WINDOWS)):
        ids = [f"{stream}-{index}-{j}" for j in range(n)]
        prompts = stand_in.encode_texts([f"q {i}" for i in ids])
        answers = stand_in.encode_texts([f"a {i}" for i in ids])
        start = base + index * SIZE
        rows += [
            NewSample(
                id=ids[j],
                stream=stream,
                event_time=start + (j + 1) * SIZE / (n + 2),
                encoder_fingerprint="stand-in",
                embeddings={"prompt": prompts[j], "response": answers[j]},
                has_image=False,
                has_reference=False,
                ood_score=0.0,
            )
            for j in range(n)
        ]
    repo.add_samples(rows)


def tick_all(replicas: list[Replica], rounds: int) -> None:
    for _ in range(rounds):
        for replica in replicas:
            replica.scheduler.tick()


def terminate(admin: Engine, stream: str) -> None:  # noqa: F811
    """End the session that holds ``stream``'s lock (what a killed replica's end does)."""
    key = stream_lock_key(DEFAULT_LOCK_NAME, stream)
    with admin.connect() as conn:
        pid = conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"key": key},
        ).scalar_one()
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def check_windows(repo: Repository, base: datetime, windows: int) -> None:
    """Every stream: one row per window, each window ending where the next starts, and one
    detector chain: each window's state is the step from the previous window's, whoever
    computed which."""
    for stream in STREAMS:
        stored = repo.get_windows(stream)
        assert [w.key.start for w in stored] == [base + i * SIZE for i in range(windows)], stream
        state = None
        for window in stored:
            reading = window.detector
            assert reading is not None, window.key
            state = Detector.for_threshold(reading.threshold).step(state, reading.score)
            assert (state.statistic, state.alarmed) == pytest.approx(
                (reading.statistic, reading.alarmed)
            ), window.key


def test_replicas_share_the_streams_evenly_and_compute_each_window_once(
    replicas: list[Replica],
) -> None:
    # First looks: the first replica takes every stream, then gives back what is over its
    # share as the others join; two rounds settle it.
    tick_all(replicas, 3)
    led = [set(r.scheduler.led) for r in replicas]
    assert [len(s) for s in led] == [2, 2, 2], led
    assert set().union(*led) == set(STREAMS)
    assert [r.streams_led() for r in replicas] == [2, 2, 2]
    leader = "mllm_monitor_scheduler_leader"
    assert [r.metrics.registry.get_sample_value(leader) for r in replicas] == [1, 1, 1]
    base = window_start(datetime.now(UTC) - 4 * SIZE, SIZE)
    add_samples(replicas[0].repository, base)
    tick_all(replicas, 2)
    computed = [k for r in replicas for k in r.computed]
    assert len(computed) == len(set(computed))  # never twice
    due = {WindowKey(s, base + i * SIZE, base + (i + 1) * SIZE) for s in STREAMS for i in range(4)}
    assert set(computed) == due
    for replica, streams in zip(replicas, led, strict=True):  # each computed its own share
        assert {k.stream for k in replica.computed} == streams
    check_windows(replicas[0].repository, base, 4)


def test_a_dead_replicas_streams_move_to_the_others_mid_window(
    replicas: list[Replica],
    admin: Engine,  # noqa: F811
) -> None:
    a, b, c = replicas
    tick_all(replicas, 3)  # shares settle before any work exists
    base = window_start(datetime.now(UTC) - 4 * SIZE, SIZE)
    add_samples(a.repository, base)
    victim = c.scheduler.led[0]
    compute = c.scheduler.pipeline.compute

    def die_after_first(key: WindowKey) -> Any:
        result = compute(key)
        terminate(admin, victim)  # mid-pass: the session, and all of c's locks, end
        return result

    c.scheduler.pipeline.compute = die_after_first  # type: ignore[method-assign, assignment]
    assert c.scheduler.tick() == 1  # one window, then it noticed before the next
    assert not c.scheduler.is_leader
    c.close()
    tick_all([a, b], 3)
    led = [set(r.scheduler.led) for r in (a, b)]
    assert [len(s) for s in led] == [3, 3] and led[0] | led[1] == set(STREAMS), led
    computed = [k for r in replicas for k in r.computed]
    assert len(computed) == len(set(computed))  # the dead one's first window is not redone
    check_windows(a.repository, base, 4)


def test_backfill_and_a_single_leader_exclude_per_stream_replicas(
    tmp_path: Path, settings: Settings, replicas: list[Replica]
) -> None:
    a = replicas[0]
    tick_all([a], 1)
    assert len(a.scheduler.led) == len(STREAMS)
    # A backfill finds the lock taken while any replica leads streams...
    with leader_lock_if_free(a.repository, settings) as held:
        assert held is False
    # ...and takes it once none does; meanwhile no replica can join.
    for replica in replicas:
        replica.scheduler.stop(5)
    with leader_lock_if_free(a.repository, settings) as held:
        assert held is True
        fresh = Replica(settings)
        try:
            assert fresh.scheduler.tick() == 0 and not fresh.scheduler.is_leader
            assert isinstance(fresh.scheduler.leadership, StreamShares)
        finally:
            fresh.close()
    # A single leader (an older replica, or leadership = "single") excludes them too.
    single = Replica(make_settings(tmp_path, settings.database.url, "single"))
    try:
        single.scheduler.tick()
        assert single.scheduler.is_leader
        fresh = Replica(settings)
        try:
            fresh.scheduler.tick()
            assert not fresh.scheduler.is_leader
        finally:
            fresh.close()
    finally:
        single.close()


def test_per_stream_leadership_needs_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"per_stream.*needs PostgreSQL"):
        make_settings(tmp_path, f"sqlite:///{tmp_path}/m.db", "per_stream")
    assert not make_settings(tmp_path, f"sqlite:///{tmp_path}/m.db").per_stream_leadership


def test_a_replica_joining_mid_pass_gets_its_share_in_that_pass(
    replicas: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = replicas
    monkeypatch.setattr(scheduler_module, "REBALANCE_EVERY", timedelta(0))  # before each stream
    tick_all([a], 1)  # alone: a leads every stream
    base = window_start(datetime.now(UTC) - 4 * SIZE, SIZE)
    add_samples(a.repository, base)
    compute = a.scheduler.pipeline.compute

    def b_joins_after_first(key: WindowKey) -> Any:
        result = compute(key)
        if len(a.computed) == 1:
            assert b.scheduler.tick() == 0  # joins; every stream is a's for now
        return result

    a.scheduler.pipeline.compute = b_joins_after_first  # type: ignore[method-assign, assignment]
    a.scheduler.tick()
    # a gave back half at its next look, mid-pass, and went on with its own share only (and the
    # stream it had finished before it looked, which it may have given back).
    assert len(a.scheduler.led) == 3
    first = a.computed[0].stream
    assert {k.stream for k in a.computed} == set(a.scheduler.led) | {first}
    b.scheduler.tick()
    assert set(b.scheduler.led) == set(STREAMS) - set(a.scheduler.led)
    assert {k.stream for k in b.computed} == set(b.scheduler.led) - {first}
    computed = a.computed + b.computed
    assert len(computed) == len(set(computed)) == len(STREAMS) * 4
    check_windows(a.repository, base, 4)
