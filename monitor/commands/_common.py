"""What the commands share: the --config and --reference options, time arguments, error-line
sanitising, the services the daemon runs (opened the same way), and progress output (a bar
with ETA on a terminal, plain lines otherwise)."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from monitor.config import NAME_PATTERN, Settings, load_settings, mask_url
from monitor.errors import MonitorError
from monitor.metrics import MonitorMetrics
from monitor.timestamps import parse_time
from monitor.windows import window_key

if TYPE_CHECKING:  # the store package pulls in faiss and torch: loaded when a command runs
    from monitor.reference.store import ReferenceStore

# The exit codes of every command (documented in `mllm-monitor --help`; monitor.cli maps
# exceptions to them).
EXIT_OK = 0
EXIT_ERROR = 1  # the monitor could not do what was asked, or a check failed
EXIT_USAGE = 2  # bad command line or invalid settings
EXIT_INTERNAL = 3  # an error the monitor did not anticipate: a bug, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $MLLM_MONITOR_CONFIG, then ./mllm-monitor.toml, "
        "then embedded defaults).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

err_console = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)

# The most characters of an error message shown: a hostile input echoed in a message must not
# flood the terminal.
_MAX_MESSAGE = 2000
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


# Not printable: C0/C1 controls (U+009B is a one-byte CSI), bidi overrides and other format
# characters (U+202E reverses what follows), separators but the space, unassigned code points.
_NOT_PRINTABLE = re.compile(r"[^ -~]")  # fast path: anything outside printable ASCII is checked


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped as Python writes it (``\\x9b``,
    ``\\u202e``, ``\\n``): stored text (ids, names, messages from the database or a server)
    cannot move the cursor, recolour or reorder a terminal. Rich markup escaping is separate."""
    return _NOT_PRINTABLE.sub(lambda m: m[0] if m[0].isprintable() else repr(m[0])[1:-1], text)


def echo(text: str = "", *, err: bool = False) -> None:
    """``typer.echo`` of :func:`printable` text, line by line (its line breaks are kept): what
    every command prints stored text with."""
    typer.echo("\n".join(printable(line) for line in text.split("\n")), err=err)


def one_line(text: str) -> str:
    """Whitespace collapsed, control characters escaped, URL credentials masked, length cut."""
    text = printable(" ".join(text.split()))
    text = _URL.sub(lambda m: mask_url(m[0]), text)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " [...]"


def store_name(value: str) -> str:
    """Refuse a store name that could not be a directory name (control characters, '/')."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise typer.BadParameter(
            f"invalid store name {one_line(repr(value))}: 1 to 64 letters, digits, '_', '.', "
            "':' or '-', starting with a letter, digit or '_'"
        )
    return value


StoreOption = Annotated[
    str,
    typer.Option(
        "--reference",
        "-r",
        help="Name of the reference store (under reference.root).",
        callback=store_name,
    ),
]


def load_for_compute(config: Path | None) -> Settings:
    """The settings, with [compute] applied once: for commands that run encoders, estimators
    or FAISS (before any of them runs)."""
    from monitor.compute import apply_compute_settings

    settings = load_settings(config)
    apply_compute_settings(settings.compute)
    return settings


def open_configured_store(config: Path | None, name: str) -> tuple[Settings, ReferenceStore]:
    """The settings (with [compute] applied) and the store ``name`` opened under the configured
    encoders, whose fingerprints it must match: what every store command starts with."""
    from monitor.embedding import encoders_from_settings
    from monitor.reference import open_store

    settings = load_for_compute(config)
    encoders = encoders_from_settings(settings.encoders)
    return settings, open_store(settings.reference.root, name, encoders)


def progress_bar(
    *, console: Console | None = None, transient: bool = False, indent: str = ""
) -> Progress:
    """A rich progress bar (count and elapsed time) for the store commands; on stderr unless
    ``console`` says otherwise."""
    return Progress(
        TextColumn(indent + "{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or err_console,
        transient=transient,
    )


def stage_reporter(progress: Progress) -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback (``build_store``'s) with one bar per stage,
    made when the stage first reports."""
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done)

    return report


def out_console() -> Console:
    """stdout for tables: wide enough for a summary table when stdout is a pipe or a file."""
    return Console(
        width=None if sys.stdout.isatty() else 200, soft_wrap=True, emoji=False, highlight=False
    )


def time_option(value: str | None, name: str) -> datetime | None:
    """A time option's value, or a usage error (exit 2) naming the option."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{exc} (use RFC 3339 like 2026-03-01T12:00:00Z, epoch seconds, now, or -6h / -30m)",
            param_hint=f"--{name}",
        ) from exc


TIME_HELP = "RFC 3339, epoch seconds, 'now', or relative like -6h / -30m."


def parse_window_id(value: str) -> str:
    """``value`` as a window id, or the "no window" error when no window could have it (the
    API's rule: plain digits within the database's 64-bit keys), said before anything is
    opened or queried (SQLite cannot bind a larger number)."""
    key = window_key(value.strip())
    if key is None:
        raise no_window(value)
    return str(key)


def no_window(window_id: str) -> MonitorError:
    """The error (exit 1) for an id that names no stored window."""
    shown = one_line(repr(window_id[:40] + ("..." if len(window_id) > 40 else "")))
    return MonitorError(f"no window with id {shown} (see `mllm-monitor windows list`)")


def load(config: Path | None, *, compute: bool = False) -> Settings:
    """The settings; with ``compute``, [compute] applied (before encoders or estimators run)."""
    from monitor.logs import configure_logging

    settings = load_settings(config)
    # The services log as in the daemon; a command shows warnings and errors only, as text.
    if not logging.getLogger().handlers:  # not when embedded (tests, a host application)
        configure_logging(logging.WARNING, json_logs=False)
    if compute:
        from monitor.compute import apply_compute_settings

        apply_compute_settings(settings.compute)
    return settings


def require_stream(settings: Settings, stream: str) -> None:
    names = [s.name for s in settings.streams]
    if stream not in names:
        raise typer.BadParameter(
            f"stream {stream!r} is not configured (configured: {', '.join(names)})",
            param_hint="--stream",
        )


@dataclass
class Services:
    """The daemon's services for one command: repository, metrics (a private registry),
    reference stores by stream, and the encoders when asked for."""

    settings: Settings
    repository: Any
    metrics: MonitorMetrics
    stores: dict[str, Any] = field(default_factory=dict)
    encoders: Any = None

    def close(self) -> None:
        self.repository.close()


@contextmanager
def services(settings: Settings, *, encoders: bool, stores: bool = True) -> Iterator[Services]:
    """Open what the daemon opens: the repository (schema checked), the streams' reference
    stores (checked against the encoders when these are loaded; none without ``stores``, as
    a dry run needs) and the encoders."""
    from monitor.reference import load_store, open_store
    from monitor.store.repository import open_repository

    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    loaded_encoders = None
    if encoders:
        from monitor.embedding import encoders_from_settings

        loaded_encoders = encoders_from_settings(settings.encoders)
    by_name: dict[str, Any] = {}
    by_stream: dict[str, Any] = {}
    for stream in settings.streams if stores else ():
        name = stream.reference
        if name not in by_name:
            root = settings.reference.root
            by_name[name] = (
                open_store(root, name, loaded_encoders)
                if loaded_encoders is not None
                else load_store(root, name)
            )
        by_stream[stream.name] = by_name[name]
    repository = open_repository(settings)
    found = Services(settings, repository, metrics, by_stream, loaded_encoders)
    try:
        yield found
    finally:
        found.close()


class Reporter:
    """Progress of a long command: a rich bar with ETA when stderr is a terminal, else a plain
    line at most every ``every`` seconds (logs, CI)."""

    def __init__(self, description: str, total: int | None, *, every: float = 5.0) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._every = every
        self._last = 0.0
        self._shown = -1
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None
        if sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err_console,
            )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self.done and self._shown != self.done:
            self._line()

    def advance(self, count: int = 1, *, total: int | None = None) -> None:
        self.done += count
        if total is not None:
            self.total = total
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, total=self.total)
            return
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._line()

    def _line(self) -> None:
        self._shown = self.done
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = f"{self.description}: {self.done:,}"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            eta = f", ETA {left:.0f} s" if math.isfinite(left) else ""
            line += f"/{self.total:,} ({100 * self.done / self.total:.0f}%){eta}"
        line += f", {elapsed:.1f} s"
        err_console.print(line, markup=False)


def fail(message: str) -> MonitorError:
    """An error the CLI prints as one line with exit code 1."""
    return MonitorError(message)
