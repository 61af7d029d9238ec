"""`backfill --from-jsonl` computes the windows of its records only when the leader lock is
free (hardening item 19): while another process holds it (a running `serve`, whose scheduler
finds the new samples and computes their windows itself), the records are stored and their
windows left to that process, never computed by both at once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.config import load_settings
from tests.integration.commands.conftest import (
    BASE,
    Workspace,
    window_records,
)
from tests.integration.llava_traffic import rfc3339, write_jsonl

pytestmark = pytest.mark.slow
FIVE = timedelta(minutes=5)
START = BASE + timedelta(days=40)  # a range no other test of the workspace writes


def test_from_jsonl_leaves_windows_to_the_process_holding_the_leader_lock(
    workspace: Workspace,
) -> None:
    records = window_records(workspace.mme[400:420], START, prefix="leader-held")
    path = write_jsonl(workspace.root / "leader-held.jsonl", records)
    repository = workspace.repository()
    lock = repository.leader_lock(path=load_settings(workspace.config).scheduler.lock_path)
    try:
        assert lock.try_acquire()  # as a running serve's scheduler holds it
        try:
            held = workspace.cli("backfill", "--from-jsonl", str(path), "--stream", "drill")
        finally:
            lock.release()
        assert held.exit_code == 0, held.output
        assert "windows not computed here" in held.stderr
        assert "another process holds the leader lock" in held.stderr
        assert repository.count_samples("drill", START, START + FIVE) == len(records)
        assert repository.get_windows("drill", START, START + FIVE) == []

        # What the scheduler would do: with the lock free, the window is computed.
        span = ["--since", rfc3339(START), "--until", rfc3339(START + FIVE)]
        free = workspace.cli("backfill", "--stream", "drill", *span, "--lock-wait", "0")
        assert free.exit_code == 0, free.output
        (window,) = repository.get_windows("drill", START, START + FIVE)
        assert window.n == len(records)
    finally:
        repository.close()
