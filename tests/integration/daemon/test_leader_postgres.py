"""Two ``mllm-monitor serve`` processes on one PostgreSQL database: windows are computed by one
process at a time (the holder of the advisory lock), each window is one row, and when the
leader is killed the other process takes the lock over within the lock timeout and carries on
without a gap. Live traffic (timestamps = now) goes to both replicas; a tiny XLM-R encoder keeps
embedding fast."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from monitor.config import load_settings
from monitor.embedding import encoders_from_settings
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import open_repository
from monitor.windows import window_start
from tests.integration.daemon.support import TOKEN, Server, rfc3339, serving, wait_for
from tests.integration.databases import drop_database
from tests.support import config_files

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
LOCK_TIMEOUT = 2.0
SIZE = timedelta(seconds=2)

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to test against")
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"mllm_daemon_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


def write_config(tmp: Path, url: str) -> Path:
    from tests.unit.embedding.conftest import make_xlmr

    model = make_xlmr(tmp / "xlmr")
    return config_files.write_config(
        tmp / "mllm-monitor.toml",
        database={"url": url},
        server={"port": 0, "token": TOKEN},
        encoders={
            "local_files_only": True,
            "image": {"kind": "none"},
            "text": {"kind": "xlmr_embedding_layer", "model": model},
        },
        compute={"threads": 1},
        reference={"root": tmp / "references"},
        windows={"size": "2s", "lateness": "3s", "min_samples": 3},
        workers={"count": 1, "poll_interval": "50ms"},
        scheduler={"check_interval": "300ms", "lock_timeout": f"{LOCK_TIMEOUT}s"},
    )


def computed(server: Server) -> list[dict[str, Any]]:
    return [e for e in server.logs() if e.get("msg") == "window computed"]


def took_lock_at(server: Server) -> datetime | None:
    for entry in server.logs():
        if entry.get("msg", "").startswith("leader lock taken"):
            return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    return None


def test_one_leader_computes_windows_and_the_other_takes_over(
    tmp_path: Path, fresh_postgres: str
) -> None:
    config = write_config(tmp_path, fresh_postgres)
    settings = load_settings(config)
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    build_store(
        [IDRecord(id=f"id-{i}", prompt=f"question {i}", response=f"answer {i}") for i in range(30)],
        root=settings.reference.root,
        name="default",
        encoders=encoders_from_settings(settings.encoders),
    )

    stop = threading.Event()
    sent: list[datetime] = []

    def traffic(targets: list[Server]) -> None:
        """Live records, 8 a second, alternately to each live replica."""
        i = 0
        while not stop.is_set():
            alive = [s for s in targets if s.process.poll() is None]
            if alive:
                now = datetime.now(UTC)
                try:
                    alive[i % len(alive)].post(
                        [
                            {
                                "id": f"r{i}",
                                "timestamp": rfc3339(now),
                                "prompt": f"q {i}",
                                "response": f"a {i}",
                            }
                        ]
                    )
                    sent.append(now)
                except Exception:  # the replica was killed mid-request: the client retries
                    continue
                i += 1
            time.sleep(0.125)

    with serving(config, tmp_path / "a.log") as a, serving(config, tmp_path / "b.log") as b:
        a.wait_listening()
        b.wait_listening()
        wait_for(
            lambda: (
                a.metric("mllm_monitor_scheduler_leader")
                + b.metric("mllm_monitor_scheduler_leader")
                == 1
            ),
            timeout=30,
            what="one leader",
        )
        leader, standby = (a, b) if a.metric("mllm_monitor_scheduler_leader") == 1 else (b, a)
        sender = threading.Thread(target=traffic, args=([a, b],), daemon=True)
        sender.start()
        try:
            wait_for(lambda: len(computed(leader)) >= 4, timeout=60, what="leader windows")
            assert computed(standby) == []  # one process at a time
            killed_at = datetime.now(UTC)
            leader.process.send_signal(signal.SIGKILL)
            assert leader.process.wait(30) == -signal.SIGKILL
            wait_for(lambda: took_lock_at(standby) is not None, timeout=30, what="the takeover")
            taken = took_lock_at(standby)
            assert taken is not None
            assert (taken - killed_at).total_seconds() < LOCK_TIMEOUT + 1.5
            wait_for(lambda: len(computed(standby)) >= 4, timeout=60, what="standby windows")
        finally:
            stop.set()
            sender.join(10)
        last_end = window_start(sent[-1], SIZE) + SIZE
        wait_for(
            lambda: any(e["start"] == rfc3339(last_end - SIZE) for e in computed(standby)),
            timeout=60,
            what="the last window",
        )
        standby.process.send_signal(signal.SIGTERM)
        assert standby.process.wait(60) == 0

    # Before the kill only the leader computed; after it only the new leader did.
    by_leader = {e["start"] for e in computed(leader)}
    by_standby = computed(standby)
    assert all(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) >= taken for e in by_standby)
    # Each window is one row, and the windows run without a gap from the first to the last.
    repo = open_repository(settings)
    try:
        windows = repo.get_windows("default")
    finally:
        repo.close()
    starts = [w.key.start for w in windows]
    assert len(starts) == len(set(starts))
    assert all(x.key.end == y.key.start for x, y in itertools.pairwise(windows))
    assert windows[-1].key.end >= last_end
    # The new leader caught up from where the dead one stopped: no window computed by neither.
    stored = {rfc3339(s) for s in starts}
    assert stored == by_leader | {e["start"] for e in by_standby}
    # Windows were computed once each, except those recomputed because samples of them were
    # stored after their computation (records the dead leader held in its worker).
    twice = stored & by_leader & {e["start"] for e in by_standby}
    assert len(twice) <= 2, sorted(twice)
