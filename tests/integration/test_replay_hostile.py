"""`mllm-monitor replay` against hostile servers on loopback (the installed entry point, in a
subprocess with a time limit: the old command looped forever on some of them): retries are
bounded and announced, a request has an overall time limit, answers are read strictly, and the
settings' token goes only to the configured server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from monitor.backfill.replay import same_server

TOKEN = "settings-secret-token"


@dataclass
class Hostile:
    """A loopback HTTP server whose answer to each POST is ``respond(handler, n)``."""

    respond: Callable[[BaseHTTPRequestHandler, int], None]
    requests: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler, int], None]], Hostile]]:
    servers: list[tuple[ThreadingHTTPServer, Hostile]] = []

    def start(respond: Callable[[BaseHTTPRequestHandler, int], None]) -> Hostile:
        state = Hostile(respond)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.server.last_body = self.rfile.read(length)  # type: ignore[attr-defined]
                state.requests.append(dict(self.headers))
                state.respond(self, len(state.requests))

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        state.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, state))
        return state

    yield start
    for server, state in servers:
        state.release.set()
        server.shutdown()
        server.server_close()


def answer(
    status: int, body: bytes, **headers: str
) -> Callable[[BaseHTTPRequestHandler, int], None]:
    def respond(handler: BaseHTTPRequestHandler, _: int) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def accepted(handler: BaseHTTPRequestHandler, n: int) -> None:
    answer(202, b'{"accepted": 2, "sampled": 2, "duplicates": 0, "skipped": 0, "ids": []}')(
        handler, n
    )


@pytest.fixture
def traffic(tmp_path: Path) -> Path:
    path = tmp_path / "traffic.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"r-{i}", "prompt": "p", "response": "r"}) + "\n" for i in range(2)
        )
    )
    return path


def config(tmp_path: Path, port: int = 8080) -> Path:
    path = tmp_path / "monitor.toml"
    path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\ntoken = "{TOKEN}"\n')
    return path


def replay(tmp_path: Path, *args: str, limit: float = 60) -> tuple[int, str, str, float]:
    """The entry point in a subprocess: exit code, stdout, stderr, seconds."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_MONITOR_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from monitor.cli import main; main()", "replay", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=limit,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def test_a_429_forever_is_retried_a_bounded_number_of_times_out_loud(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    server = hostile(answer(429, b'{"error": {"message": "inbox full"}}', Retry_After="0.1"))
    args = [str(traffic), "--url", server.url, "--max-retries", "2", "-c", str(config(tmp_path))]
    code, _, stderr, _ = replay(tmp_path, *args, limit=40)
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert "HTTP 429 (inbox full): retry 1 of 2 in 0.1 s" in stderr
    assert "retry 2 of 2" in stderr
    assert "gave up after 2 retries (--max-retries 2)" in stderr
    assert len(server.requests) == 3


def test_retry_after_is_honoured_within_a_cap(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    def once_full(handler: BaseHTTPRequestHandler, n: int) -> None:
        if n == 1:
            answer(429, b"{}", Retry_After="1")(handler, n)
        else:
            accepted(handler, n)

    server = hostile(once_full)
    code, stdout, stderr, seconds = replay(
        tmp_path, str(traffic), "--url", server.url, "--json", "-c", str(config(tmp_path))
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["accepted"], summary["retries"]) == (2, 1)
    assert len(server.requests) == 2 and seconds >= 1.0


def test_a_server_that_never_answers_is_given_up_on_within_the_timeout(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    def silent(handler: BaseHTTPRequestHandler, n: int) -> None:
        server.release.wait(60)

    server = hostile(silent)
    args = [str(traffic), "--url", server.url, "--timeout", "1", "--max-retries", "1"]
    code, _, stderr, seconds = replay(tmp_path, *args, "-c", str(config(tmp_path)), limit=40)
    assert code == 1, stderr
    assert "no answer from" in stderr and "within 1 s (--timeout)" in stderr
    assert "retry 1 of 1" in stderr and "gave up after 1 retries" in stderr
    assert seconds < 20 and len(server.requests) == 2


def test_an_answer_trickled_past_the_timeout_is_no_answer(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    def trickle(handler: BaseHTTPRequestHandler, n: int) -> None:
        handler.send_response(202)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(200):  # a byte every 0.2 s: each read is quick, the whole is not
            if server.release.wait(0.2):
                return
            try:
                handler.wfile.write(b" ")
                handler.wfile.flush()
            except OSError:
                return

    server = hostile(trickle)
    args = [str(traffic), "--url", server.url, "--timeout", "1", "--max-retries", "0"]
    code, _, stderr, seconds = replay(tmp_path, *args, "-c", str(config(tmp_path)), limit=40)
    assert code == 1, stderr
    assert "no whole answer from" in stderr and "within 1 s" in stderr
    assert seconds < 15


def test_a_500_is_the_server_failing(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    server = hostile(answer(500, b"<html>Internal Server Error</html>"))
    code, _, stderr, _ = replay(
        tmp_path, str(traffic), "--url", server.url, "-c", str(config(tmp_path))
    )
    assert code == 1, stderr
    assert "the server failed (HTTP 500) on lines 1-2" in stderr
    assert "Internal Server Error" in stderr and "refused a batch" not in stderr


@pytest.mark.parametrize(
    "body",
    [
        b"OK",
        b"",
        b'{"accepted": "2"}',
        b'{"accepted": 5, "sampled": 0}',  # more than was sent
        b"[1, 2]",
    ],
)
def test_a_202_without_the_counts_is_not_an_acknowledgement(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path, body: bytes
) -> None:
    server = hostile(answer(202, body))
    code, stdout, stderr, _ = replay(
        tmp_path, str(traffic), "--url", server.url, "-c", str(config(tmp_path))
    )
    assert code == 1, stdout + stderr
    assert "HTTP 202 for lines 1-2 without the records API's counts" in stderr
    assert "accepted" not in stdout


def test_the_settings_token_goes_only_to_the_configured_server(
    hostile: Callable[..., Hostile], traffic: Path, tmp_path: Path
) -> None:
    server = hostile(accepted)
    elsewhere = config(tmp_path, port=1)  # the configured server is not this one
    code, _, stderr, _ = replay(tmp_path, str(traffic), "--url", server.url, "-c", str(elsewhere))
    assert code == 0, stderr
    assert "Authorization" not in server.requests[-1]

    code, _, stderr, _ = replay(
        tmp_path, str(traffic), "--url", server.url, "--token", "given", "-c", str(elsewhere)
    )
    assert code == 0, stderr
    assert server.requests[-1]["Authorization"] == "Bearer given"

    own = config(tmp_path, port=server.port)  # the URL is the configured server's
    for url in (server.url, f"http://localhost:{server.port}/"):
        code, _, stderr, _ = replay(tmp_path, str(traffic), "--url", url, "-c", str(own))
        assert code == 0, stderr
        assert server.requests[-1]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("url", "host", "port", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("http://localhost:8080/", "127.0.0.1", 8080, True),
        ("http://[::1]:8080", "0.0.0.0", 8080, True),
        ("http://monitor.internal:8080", "monitor.internal", 8080, True),
        ("http://127.0.0.1:8081", "127.0.0.1", 8080, False),
        ("http://evil.example:8080", "127.0.0.1", 8080, False),
        ("http://evil.example:8080", "0.0.0.0", 8080, False),
        ("https://127.0.0.1", "127.0.0.1", 8080, False),
        ("http://127.0.0.1:99999", "127.0.0.1", 8080, False),
    ],
)
def test_same_server(url: str, host: str, port: int, same: bool) -> None:
    assert same_server(url, host, port) is same


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_replay_input_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "pipe.jsonl"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    code, _, stderr, _ = replay(
        tmp_path, str(path), "--url", "http://127.0.0.1:9", "-c", str(config(tmp_path)), limit=30
    )
    assert code == 1, stderr
    assert str(path) in stderr and ("FIFO" in stderr or "device" in stderr)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1", "not a URL"),
        ("http://", "no valid host"),
        ("http://127.0.0.1:99999", "port 99999 does not exist"),
        ("http://127.0.0.1:8080/?next=1", "no query or fragment"),
        ("ftp://127.0.0.1", "must start with http:// or https://"),
    ],
)
def test_a_url_that_cannot_be_the_monitor_is_a_usage_error(
    traffic: Path, tmp_path: Path, url: str, why: str
) -> None:
    code, _, stderr, _ = replay(tmp_path, str(traffic), "--url", url, "-c", str(config(tmp_path)))
    assert code == 2, stderr
    assert why in " ".join(stderr.replace("│", " ").split()) and "Traceback" not in stderr


@pytest.mark.parametrize("rate", ["inf", "1e400"])
def test_an_infinite_rate_is_a_usage_error(traffic: Path, tmp_path: Path, rate: str) -> None:
    args = ["--url", "http://127.0.0.1:9", "--rate", rate, "-c", str(config(tmp_path))]
    code, _, stderr, _ = replay(tmp_path, str(traffic), *args)  # was int(inf): exit 3
    assert code == 2, stderr
    assert "--rate" in stderr and "Traceback" not in stderr


def test_a_413_splits_the_batch_down_to_the_record_that_is_too_large(
    hostile: Callable[..., Hostile], tmp_path: Path
) -> None:
    def limit(handler: BaseHTTPRequestHandler, n: int) -> None:
        records = json.loads(handler.server.last_body)["records"]  # type: ignore[attr-defined]
        if len(records) > 2 or any(r["id"] == "big" for r in records):
            answer(413, b'{"error": {"message": "the body is over 1000 bytes"}}')(handler, n)
        else:
            count = str(len(records)).encode()
            answer(202, b'{"accepted": ' + count + b', "sampled": ' + count + b"}")(handler, n)

    server = hostile(limit)
    path = tmp_path / "five.jsonl"
    ids = ["a", "b", "big", "c", "d"]
    path.write_text("".join(json.dumps({"id": i, "prompt": "p"}) + "\n" for i in ids))
    code, stdout, stderr, _ = replay(
        tmp_path, str(path), "--url", server.url, "--json", "-c", str(config(tmp_path))
    )
    assert code == 1, stderr  # one invalid line
    assert "invalid line 3: too large for the monitor (HTTP 413)" in stderr
    summary = json.loads(stdout)
    assert (summary["accepted"], summary["invalid"]) == (4, 1)
