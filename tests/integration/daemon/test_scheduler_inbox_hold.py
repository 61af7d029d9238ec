"""The scheduler does not publish a window short while records that may belong to it are still
in the inbox (received before the window was due, not yet embedded: a batch in progress, or
one a dead worker held until its lease ran out); it computes the window once they are stored,
and holds it at most twice the workers' lease, so a stuck inbox does not stop windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.embedding import EncoderSet
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord, WindowKey
from monitor.reference import IDRecord, build_store, load_store
from monitor.scheduler import WindowScheduler
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository, open_repository
from monitor.store.types import NewSample
from monitor.windows import window_start
from tests.integration.daemon.test_pipeline import StandIn

SIZE = timedelta(minutes=5)


def make_settings(tmp_path: Path, lease: str) -> Settings:
    stand_in = StandIn("text")
    encoders = EncoderSet(image=None, text=stand_in, fusion="mean")  # type: ignore[arg-type]
    records = [IDRecord(id=f"b-{i}", prompt=f"q{i}", response=f"a{i}") for i in range(40)]
    build_store(records, root=tmp_path / "refs", name="bare", encoders=encoders)
    settings = Settings(
        database={"url": f"sqlite:///{tmp_path / 'm.db'}"},
        reference={"root": str(tmp_path / "refs")},
        streams=[{"name": "live", "reference": "bare"}],
        windows={"size": "5m", "lateness": "0s", "min_samples": 20},
        workers={"lease": lease},
        scheduler={"lock_path": str(tmp_path / "lock")},
    )
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    return settings


def sample(record: TrafficRecord) -> NewSample:
    rows = StandIn("text").encode_texts([record.prompt or "", record.response or ""])
    return NewSample.from_record(
        record, {"prompt": rows[0], "response": rows[1]}, encoder_fingerprint="stand-in"
    )


def live(i: int, at: datetime) -> TrafficRecord:
    return TrafficRecord(id=f"r-{i}", timestamp=at, stream="live", prompt=f"q {i}", response="a")


def scheduler_for(settings: Settings, repo: Repository) -> tuple[WindowScheduler, list[Any]]:
    metrics = MonitorMetrics(CollectorRegistry(), ["live"])
    stores = {"live": load_store(settings.reference.root, "bare")}
    scheduler = WindowScheduler(settings, repo, stores, metrics)
    computed: list[WindowKey] = []
    compute = scheduler.pipeline.compute

    def counted(key: WindowKey) -> Any:
        computed.append(key)
        return compute(key)

    scheduler.pipeline.compute = counted  # type: ignore[method-assign, assignment]
    return scheduler, computed


@pytest.mark.parametrize("lease", ["10m", "1m"])
def test_a_window_waits_for_its_records_in_the_inbox_within_the_hold(
    tmp_path: Path, lease: str
) -> None:
    settings = make_settings(tmp_path, lease)
    repo = open_repository(settings)
    try:
        now = datetime.now(UTC)
        # Three windows all due more than twice the short lease (2 min) ago, whatever the time
        # of day: a window due less than that ago is rightly still held with a 1m lease.
        base = window_start(now - 3 * SIZE - timedelta(minutes=2), SIZE)
        windows = [WindowKey("live", base + i * SIZE, base + (i + 1) * SIZE) for i in range(3)]
        repo.add_samples(
            [sample(live(i, base + timedelta(minutes=1, seconds=i))) for i in range(3)]
        )
        # A record of window 1, received on time, still in the inbox (a batch in progress).
        pending = live(99, base + SIZE + timedelta(minutes=1))
        repo.enqueue([pending], received_at=base + SIZE + timedelta(minutes=1, seconds=5))
        scheduler, computed = scheduler_for(settings, repo)
        scheduler.tick()
        if lease == "1m":
            # Waiting for 10+ minutes, beyond the hold (2 x lease): the windows go out anyway.
            assert computed[:3] == windows
            return
        assert computed == windows[:1]  # windows 1 and 2 wait for the record
        assert [w.key for w in repo.get_windows("live")] == windows[:1]
        # The worker stores it and acknowledges it: the windows are computed, complete.
        held = repo.claim("w", limit=10, lease=timedelta(minutes=10))
        repo.add_samples([sample(pending)], ack=[e.id for e in held], worker_id="w")
        scheduler.tick()
        assert computed[1:3] == windows[1:]
        assert computed.count(windows[1]) == 1  # once, not short and then again
        assert next(w for w in repo.get_windows("live") if w.key == windows[1]).n == 1
        scheduler.stop(5)
    finally:
        repo.close()
