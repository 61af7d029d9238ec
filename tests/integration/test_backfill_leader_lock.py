"""Range backfill computes windows only while it holds the leader lock, the one a running
``serve``'s scheduler computes windows under (hardening item 19): it waits for it up to
``--lock-wait`` seconds, then stops with a clear message and writes nothing. Before, it took no
lock and raced the scheduler over the same windows.

The CLI runs as the installed entry point in a subprocess; the lock is held by this test's
process (another process, as a running ``serve`` would be), on SQLite (a file lock) and on
PostgreSQL (an advisory lock, MLLM_MONITOR_TEST_POSTGRES_URL)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.config import load_settings
from monitor.embedding import EncoderSet
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository, open_repository
from tests.integration.databases import drop_database
from tests.support.config_files import write_config

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
DIM = 8
SINCE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(minutes=15)  # three 5-minute windows, long due


class Hashed:
    """A stand-in encoder: unit vectors from content hashes (a store needs some)."""

    dim = DIM
    fingerprint = "hashed-stand-in"

    def _rows(self, keys: list[bytes]) -> np.ndarray:
        out = np.empty((len(keys), DIM), dtype=np.float32)
        for i, key in enumerate(keys):
            seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
            row = np.random.default_rng(seed).standard_normal(DIM)
            out[i] = row / np.linalg.norm(row)
        return out

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._rows([t.encode() for t in texts])

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self._rows([np.asarray(im).tobytes() for im in images])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    records = [IDRecord(id=f"r-{i}", prompt=f"q{i}", response=f"a{i}") for i in range(40)]
    encoders = EncoderSet(image=Hashed(), text=Hashed(), fusion="mean")  # type: ignore[arg-type]
    build_store(records, root=root, name="bare", encoders=encoders)
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitor.db'}"
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to test against")
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"mllm_lock_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


@pytest.fixture
def config(tmp_path: Path, reference: Path, database_url: str) -> Path:
    path = write_config(
        tmp_path / "mllm-monitor.toml",
        database={"url": database_url},
        reference={"root": reference},
        streams=[{"name": "live", "reference": "bare"}],
        windows={"size": "5m", "lateness": "0s"},
        scheduler={"lock_path": tmp_path / "scheduler.lock"},
    )
    engine = engine_from_settings(load_settings(path).database)
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def repository(config: Path) -> Iterator[Repository]:
    repo = open_repository(load_settings(config))
    yield repo
    repo.close()


def backfill_command(config: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_MONITOR_")}
    span = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
    program = "import sys; from monitor.cli import main; sys.argv[0] = 'mllm-monitor'; main()"
    command = [sys.executable, "-c", program, "backfill", "-c", str(config), "-s", "live"]
    return [*command, *span, *args], env


def backfill(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = backfill_command(config, *args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_range_backfill_refuses_while_another_process_holds_the_leader_lock(
    config: Path, repository: Repository
) -> None:
    settings = load_settings(config)
    lock = repository.leader_lock(path=settings.scheduler.lock_path)
    assert lock.try_acquire()  # as a running serve's scheduler holds it
    try:
        started = time.monotonic()
        done = backfill(config, "--lock-wait", "1")
        waited = time.monotonic() - started
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert "waiting up to 1 s for the leader lock" in done.stderr
        assert "another process holds the leader lock" in done.stderr
        assert "mllm-monitor serve" in done.stderr and "--lock-wait" in done.stderr
        assert waited >= 1.0
        assert repository.get_windows("live") == []  # nothing written

        # A dry run writes nothing: it needs no lock.
        dry = backfill(config, "--dry-run", "--json", "--lock-wait", "0")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert '"computed": 3' in dry.stdout
    finally:
        lock.release()
    assert repository.get_windows("live") == []


def test_range_backfill_waits_for_the_leader_lock_then_computes(
    config: Path, repository: Repository
) -> None:
    settings = load_settings(config)
    lock = repository.leader_lock(path=settings.scheduler.lock_path)
    assert lock.try_acquire()
    command, env = backfill_command(config, "--lock-wait", "60")
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killer = threading.Timer(120, process.kill)
    killer.start()
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # it says it waits before anything else
        assert "waiting up to 60 s for the leader lock" in first, first
        assert repository.get_windows("live") == []  # nothing computed while it waits
        lock.release()  # the scheduler steps down (serve stops): the backfill goes on
        out, err = process.communicate(timeout=120)
    finally:
        killer.cancel()
        lock.release()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out + err
    assert [w.key.start for w in repository.get_windows("live")] == [
        SINCE + k * timedelta(minutes=5) for k in range(3)
    ]
    # And it let the lock go: the scheduler takes it again.
    again = repository.leader_lock(path=settings.scheduler.lock_path)
    assert again.try_acquire()
    again.release()
