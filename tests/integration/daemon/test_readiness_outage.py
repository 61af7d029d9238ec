"""``/readyz`` follows the database: a real ``mllm-monitor serve`` on a PostgreSQL server of the
test's own, which the test stops and starts again. Readiness must turn 503 within 2 s of the
server stopping, name the failure (the database check, and the scheduler's "database
unavailable", not "standby"), and turn 200 again once the server is back. The SQLite cases (a
full disk, a read-only one) run the same check on a small filesystem of the test's own."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.config import load_settings
from monitor.detection.calibrate import calibrate_store
from monitor.embedding import encoders_from_settings
from monitor.ingest.readiness import CachedProbe, database_check
from monitor.reference import IDRecord, build_store
from monitor.store import migrate
from monitor.store.engine import create_db_engine, engine_from_settings
from tests.integration.daemon.own_postgres import OwnPostgres, own_postgres
from tests.integration.daemon.support import AUTH, serving, wait_for
from tests.integration.daemon.test_leader_postgres import write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres() -> Iterator[OwnPostgres]:
    with own_postgres() as server:
        yield server


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{url}/readyz", timeout=10)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def test_readyz_turns_503_within_2_s_of_postgresql_stopping_and_200_when_it_returns(
    tmp_path: Path, postgres: OwnPostgres
) -> None:
    config = write_config(tmp_path, postgres.url)
    # Its 2-second windows: a false page per hour keeps the detector's calibration small.
    with config.open("a") as text:
        text.write('[alerts]\nfalse_page_interval = "1h"\n')
    settings = load_settings(config)
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    store = build_store(
        [IDRecord(id=f"id-{i}", prompt=f"q {i}", response=f"a {i}") for i in range(30)],
        root=settings.reference.root,
        name="default",
        encoders=encoders_from_settings(settings.encoders),
    )
    alerts = settings.alerts  # calibrated: every check passes while the database answers
    calibrate_store(
        store,
        false_alarm_rate=alerts.false_alarm_rate,
        hysteresis=alerts.trials_hysteresis,
        window=settings.windows.size,
        false_page_interval=alerts.false_page_interval,
    )
    with serving(config, tmp_path / "serve.log") as server:
        url = server.wait_listening()
        wait_for(lambda: readyz(url)[0] == 200, timeout=30, what="/readyz 200")
        status, body = readyz(url)
        assert status == 200, body
        assert body["checks"]["database"] == {"ok": True, "detail": "answers"}

        postgres.stop()
        stopped = time.monotonic()
        # 503, and the database check itself failing (the scheduler may notice first).
        while (seen := readyz(url))[0] == 200 or seen[1]["checks"]["database"]["ok"]:
            assert time.monotonic() - stopped < 2.0, f"two seconds after: {seen}"
            time.sleep(0.05)
        turned = time.monotonic() - stopped
        print(f"/readyz turned 503 {turned:.2f} s after PostgreSQL stopped")
        assert seen[0] == 503 and seen[1]["ready"] is False
        database = seen[1]["checks"]["database"]
        assert database["ok"] is False and "cannot connect to database" in database["detail"]
        assert "127.0.0.1" in database["detail"]
        # The scheduler says why it does not lead: it cannot reach the database.
        wait_for(
            lambda: readyz(url)[1]["checks"]["scheduler"]["detail"].startswith(
                "database unavailable"
            ),
            timeout=10,
            what="the scheduler to report the database unavailable",
        )
        assert readyz(url)[1]["checks"]["scheduler"]["ok"] is False
        record = {"id": "r-1", "prompt": "q", "response": "a"}
        answer = httpx.post(f"{url}/v1/records", json=record, headers=AUTH, timeout=30)
        assert answer.status_code == 503  # what /readyz now says

        postgres.start()
        started = time.monotonic()
        wait_for(lambda: readyz(url)[0] == 200, timeout=30, what="/readyz 200 again")
        print(f"/readyz back to 200 {time.monotonic() - started:.2f} s after PostgreSQL returned")
        checks = readyz(url)[1]["checks"]
        assert checks["database"] == {"ok": True, "detail": "answers"}
        assert checks["scheduler"]["ok"] is True
        assert checks["scheduler"]["detail"].startswith("leader")
        answer = httpx.post(f"{url}/v1/records", json=record, headers=AUTH, timeout=30)
        assert answer.status_code == 202, answer.text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 4 MiB tmpfs, or None where mounting is not allowed (it needs CAP_SYS_ADMIN)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_database_check_fails_on_a_full_or_read_only_sqlite_disk(
    small_disk: Path | None, tmp_path: Path
) -> None:
    if small_disk is None:
        # No filesystem of our own: the real disk, "full" for a need larger than its free space.
        engine = create_db_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
        migrate.upgrade(engine)
        need = shutil.disk_usage(tmp_path).free + 2**30
        try:
            assert database_check(engine)() == (True, "answers")
            ok, detail = database_check(engine, min_free_bytes=need)()
            assert not ok and detail.startswith("disk full:") and "monitor.db" in detail
        finally:
            engine.dispose()
        return
    engine = create_db_engine(f"sqlite:///{small_disk / 'monitor.db'}")
    migrate.upgrade(engine)
    probe = CachedProbe(database_check(engine), ttl=0.0)
    try:
        assert probe() == (True, "answers")
        # Fill the disk as traffic would: SELECT 1 still answers, every write now fails.
        with (small_disk / "filler").open("wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        ok, detail = probe()
        assert not ok and detail.startswith("disk full:") and "monitor.db" in detail
        (small_disk / "filler").unlink()
        assert probe() == (True, "answers")
        engine.dispose()  # open files keep a filesystem from going read-only
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        ok, detail = probe()
        assert not ok and "monitor.db" in detail, detail
    finally:
        engine.dispose()


def test_a_probe_that_hangs_answers_not_ready_in_its_timeout_and_runs_once_at_a_time() -> None:
    calls: list[float] = []
    release = time.monotonic() + 3.0

    def hanging() -> tuple[bool, str]:
        calls.append(time.monotonic())
        while time.monotonic() < release:
            time.sleep(0.01)
        return True, "late"

    probe = CachedProbe(hanging, ttl=1.0, timeout=0.3)
    started = time.monotonic()
    ok, detail = probe()
    assert not ok and detail.startswith("no answer within 0.3 s")
    assert time.monotonic() - started < 1.0
    assert not probe()[0] and len(calls) == 1  # still the one check in flight
    wait_for(lambda: probe() == (True, "late"), timeout=10, what="the late answer")
    assert len(calls) == 1  # cached for ttl
