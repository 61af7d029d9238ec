"""`mllm-monitor replay` against a real `mllm-monitor serve` on loopback: every record is
delivered exactly once, across the 429s of a small inbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.backfill.lines import content_id
from tests.integration.commands.conftest import BASE, Workspace, window_records, write_config

pytestmark = pytest.mark.slow
RECORDS = 90


def _listening_url(log: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("msg") == "listening":
                return str(entry["url"])
        time.sleep(0.2)
    raise AssertionError(f"serve did not listen within {timeout} s: {log.read_text()[-3000:]}")


def test_replay_delivers_every_record_exactly_once_across_429(workspace: Workspace) -> None:
    # The same database and store, a serve whose inbox takes 30 records (so a second batch of
    # 25 is refused with 429 until the worker drains), and no scheduler (windows are not the
    # point here).
    serve_dir = workspace.root / "serve"
    serve_dir.mkdir()
    config = write_config(
        workspace.root,
        "serve.toml",
        ingest='max_inbox_depth = 30\nretry_after = "1s"',
        scheduler="enabled = false",
    )
    start = BASE + timedelta(days=3)
    records = window_records(workspace.mme[400 : 400 + RECORDS], start)  # no ids
    traffic = workspace.root / "replay.jsonl"
    traffic.write_text("".join(json.dumps(r) + "\n" for r in records))
    log = serve_dir / "serve.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from monitor.cli import main; main()",
                "serve",
                "-c",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=serve_dir,
            env=dict(os.environ),
        )
    repository = workspace.repository()
    try:
        url = _listening_url(log, process, timeout=180)
        result = workspace.cli(
            "replay", str(traffic), "--url", url, "--stream", "replay", "--batch-size", "25",
            "--max-retries", "60", "--json",  # the inbox drains at the pace of this machine
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["accepted"] == RECORDS and summary["invalid"] == 0
        assert summary["retries"] >= 1  # the inbox was full at least once: a 429 was honoured

        ids = [content_id(r) for r in records]
        deadline = time.monotonic() + 120
        while repository.count_samples("replay", start, start + timedelta(hours=1)) < RECORDS:
            assert time.monotonic() < deadline, "the records were not all embedded"
            time.sleep(0.5)
        assert repository.count_samples("replay", start, start + timedelta(hours=1)) == RECORDS
        assert repository.locate_records(ids) == dict.fromkeys(ids, "sample")
        assert repository.inbox_depth() == 0 and repository.inbox_failures() == []
    finally:
        repository.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
