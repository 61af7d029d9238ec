"""Helpers of the daemon tests: real ``mllm-monitor serve`` processes on loopback, their JSON
logs, the records API, the windows API and the metrics scrape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

TOKEN = "daemon-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[3]
LLAVA_TEXT = ROOT.parent / "shared" / "data" / "llava-eval-text"


def read_jsonl(name: str) -> list[dict[str, Any]]:
    lines = (LLAVA_TEXT / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition``; on timeout fail with ``explain()`` (what was seen instead)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            seen = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(0.2)


@dataclass
class Server:
    """One ``mllm-monitor serve`` process; its JSON log lines go to ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    _offset: int = field(default=0)

    def logs(self) -> list[dict[str, Any]]:
        """This process's log lines (the file may hold an earlier process's before them)."""
        entries = []
        with self.log_path.open("rb") as fh:
            fh.seek(self._offset)
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                entries.append({"msg": line, "raw": True})
        return entries

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 180) -> str:
        def listening() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
                )
            for entry in self.logs():
                if entry.get("msg") == "listening":
                    self.url = str(entry["url"])
                    return True
            return False

        wait_for(listening, timeout=timeout, what="mllm-monitor serve to listen")
        return self.url

    def metric(self, name: str, **labels: str) -> float:
        """One sample of a live scrape (NaN parsed as float('nan'))."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            found = dict(
                part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
            )
            if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
                return float(value)
        raise AssertionError(f"no sample {name}{labels} in the scrape")

    def windows(self, stream: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.url}/v1/windows", params={"stream": stream}, headers=AUTH, timeout=30
        )
        assert answer.status_code == 200, answer.text
        windows: list[dict[str, Any]] = answer.json()["windows"]
        return windows

    def post(self, records: Sequence[dict[str, Any]], batch: int = 100) -> None:
        with httpx.Client(timeout=60) as client:
            for start in range(0, len(records), batch):
                body = {"records": list(records[start : start + batch])}
                for _ in range(100):
                    answer = client.post(f"{self.url}/v1/records", json=body, headers=AUTH)
                    if answer.status_code != 429:
                        break
                    time.sleep(float(answer.headers.get("Retry-After", "1")))
                assert answer.status_code == 202, answer.text


@contextmanager
def serving(config: Path, log_path: Path, **env: str) -> Iterator[Server]:
    """Start ``mllm-monitor serve --config CONFIG``; kill it on exit if it still runs."""
    log_file = log_path.open("ab")
    offset = log_file.tell()
    process = subprocess.Popen(
        [sys.executable, "-c", "from monitor.cli import main; main()", "serve", "-c", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        cwd=config.parent,
    )
    server = Server(process, log_path, _offset=offset)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(30)
        log_file.close()


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
