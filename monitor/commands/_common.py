"""What the commands share: the --config and --reference options, time arguments, error-line
sanitising, and progress output (a rich bar; for long runs with ETA, and plain lines when not a
terminal). The services the daemon runs are opened by :mod:`monitor.services`."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from monitor.config import NAME_PATTERN, Settings, load_settings, mask_url
from monitor.errors import MonitorError
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


# Seconds between the progress lines of a long run when stderr is not a terminal (logs, CI).
PROGRESS_LINE_EVERY = 5.0


def progress_bar(
    *,
    console: Console | None = None,
    transient: bool = False,
    indent: str = "",
    log_every: float | None = None,
) -> Progress:
    """The progress of every command: a rich bar (count and elapsed time) on stderr unless
    ``console`` says otherwise. With ``log_every`` (a run that may take hours: backfill,
    replay), the bar shows an ETA too, and where the console is not a terminal (logs, CI) each
    task is a plain line at most every ``log_every`` seconds and once at the end, instead of
    rich's one line when all is done."""
    console = console or err_console
    columns = [
        TextColumn(indent + "{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if log_every is None:
        return Progress(*columns, console=console, transient=transient)
    if not console.is_terminal:
        return LinesProgress(console=console, every=log_every)
    columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient)


class LinesProgress(Progress):
    """Progress where no bar can be drawn: a plain line per task (count, share of the total
    and ETA when it is known, elapsed seconds) at most every ``every`` seconds while it moves,
    and its last count when the progress stops."""

    def __init__(self, *, console: Console, every: float) -> None:
        super().__init__(console=console, disable=True)
        self._every = every
        self._last: dict[TaskID, float] = {}  # when each task's last line was written
        self._shown: dict[TaskID, float] = {}  # the count that line showed

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        super().update(
            task_id,
            total=total,
            completed=completed,
            advance=advance,
            description=description,
            visible=visible,
            refresh=refresh,
            **fields,
        )
        now = time.monotonic()
        if self._task(task_id).completed and now - self._last.get(task_id, 0.0) >= self._every:
            self._last[task_id] = now
            self._line(task_id)

    def stop(self) -> None:
        super().stop()
        for task in self.tasks:
            if task.completed and self._shown.get(task.id) != task.completed:
                self._line(task.id)

    def _task(self, task_id: TaskID) -> Task:
        return next(task for task in self.tasks if task.id == task_id)

    def _line(self, task_id: TaskID) -> None:
        task = self._task(task_id)
        self._shown[task_id] = task.completed
        done, total, elapsed = int(task.completed), task.total, task.elapsed or 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{task.description}: {done:,}"
        if total:
            left = (total - done) / rate if rate > 0 else math.inf
            eta = f", ETA {left:.0f} s" if math.isfinite(left) else ""
            line += f"/{int(total):,} ({100 * done / total:.0f}%){eta}"
        line += f", {elapsed:.1f} s"
        self.console.print(line, markup=False)


def stage_reporter(progress: Progress) -> Callable[[str, int, int | None], None]:
    """A ``progress(stage, done, total)`` callback (``build_store``'s, the backfill services')
    with one bar per stage, made when the stage first reports (``total`` None: unknown)."""
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int | None) -> None:
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


def notice(message: str) -> None:
    """One line on stderr about something a run met (an invalid line, a retry, a wait for the
    leader lock): the ``notify`` callback of the services."""
    err_console.print(one_line(message), markup=False)


def fail(message: str) -> MonitorError:
    """An error the CLI prints as one line with exit code 1."""
    return MonitorError(message)
