"""The ``mllm-monitor`` command line: thin commands over the same services as the daemon.

This module holds the root app, the global options (--version, --debug), ``config check`` and
the mapping of errors to exit codes; the other commands live in :mod:`monitor.commands`, one
module per command group, added to the apps here by ``register_commands``.

Every command ends with one of the exit codes of :data:`EXIT_CODES_HELP` (also in ``--help``).
Any error, expected or not, prints one line on stderr (a list only for several invalid
settings), never a traceback; ``--debug`` adds the traceback. The root group's ``invoke`` does
this for every command, so commands added later are covered without doing anything.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from monitor import __version__
from monitor.commands import EXIT_ERROR as EXIT_ERROR
from monitor.commands import EXIT_INTERNAL as EXIT_INTERNAL
from monitor.commands import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from monitor.commands import EXIT_OK as EXIT_OK
from monitor.commands import EXIT_USAGE as EXIT_USAGE
from monitor.commands import ConfigOption, register_commands
from monitor.commands import one_line as _one_line
from monitor.config import load_settings
from monitor.errors import ConfigError, MonitorError

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the monitor could not do what was asked (bad data, reference "
    "store, estimator, database, file system) or a check failed; 2 bad usage or invalid "
    "settings; 3 unexpected internal error (a bug: rerun with --debug and report the "
    "traceback); 130 interrupted."
)


def _exit_code(exc: BaseException) -> int:
    """The documented exit code of an exception, by class."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, MonitorError | OSError):
        return EXIT_ERROR
    return EXIT_INTERNAL


def error_message(exc: BaseException) -> str:
    """What the CLI prints after 'error: ' for an exception (one line but for a list of
    several invalid settings)."""
    if isinstance(exc, ConfigError) and exc.problems:
        head = _one_line(str(exc).split("\n", 1)[0])
        if len(exc.problems) == 1:
            return f"{head} {_one_line(exc.problems[0])}"
        return head + "".join(f"\n  - {_one_line(p)}" for p in exc.problems)
    if isinstance(exc, MonitorError):
        return _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return _one_line(": ".join([exc.strerror, *names]))
    detail = _one_line(str(exc))
    return (
        f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
        "(rerun with --debug for the traceback, and please report it)"
    )


# Set by the root callback from --debug before any command runs.
_debug = {"traceback": False}


def _fail(exc: Exception) -> typer.Exit:
    """Print the error line (after the traceback with --debug); the Exit to raise."""
    if _debug["traceback"]:
        traceback.print_exception(exc, file=sys.stderr)
    _err.print(f"[red]error:[/red] {escape(error_message(exc))}", highlight=False)
    return typer.Exit(_exit_code(exc))


class _Group(typer.core.TyperGroup):
    """The root group: any exception of any command becomes one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context (a private module)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # the CLI's own: --help, usage errors (exit 2), typer.Exit, declined prompts
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise  # stdout closed by the reader (`| head`): typer's main exits 1 quietly
        except Exception as exc:
            raise _fail(exc) from exc


app = typer.Typer(
    name="mllm-monitor",
    help="Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
config_app = typer.Typer(help="Inspect and validate the settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# emoji=False: a message quoting ':name:' from user input stays as typed.
_err = Console(stderr=True, soft_wrap=True, emoji=False)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Map the project's exceptions to one message on stderr and an exit code (the root group
    does the same for anything raised outside this block)."""
    try:
        yield
    except MonitorError as exc:
        raise _fail(exc) from exc


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mllm-monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print the traceback too.")
    ] = False,
) -> None:
    """Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577)."""
    _debug["traceback"] = debug


@config_app.command("check")
def config_check(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON.")] = False,
) -> None:
    """Validate the settings (file + MLLM_MONITOR_* environment) and print the result."""
    with _exit_codes():
        settings = load_settings(config)
    shown = settings.redacted()
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    origin = str(settings.source) if settings.source else "embedded defaults"
    typer.echo(f"settings OK ({origin}, environment overrides applied)")
    for section, values in shown.items():
        typer.echo(f"  {section}: {json.dumps(values)}")


# A line that starts a list item keeps its own line in --help.
_LIST_ITEM = re.compile(r"^\s*(?:[*-] |\d+[.)] )")


def _reflow(text: str) -> str:
    """A docstring's paragraphs as single lines, so that --help wraps them to the terminal.
    Typer keeps the line breaks of every paragraph after the first, which at 80 columns rags
    each source line into a long and a short one. List items and ``\\b`` blocks stay as written."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = paragraph.split("\n")
        if lines[0].startswith("\b"):
            paragraphs.append(paragraph)
            continue
        joined = [lines[0]]
        for line in lines[1:]:
            if _LIST_ITEM.match(line):
                joined.append(line)
            else:
                joined[-1] = f"{joined[-1]} {line.strip()}"
        paragraphs.append("\n".join(joined))
    return "\n\n".join(paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        text = command.help or (inspect.getdoc(command.callback) if command.callback else None)
        if text:
            command.help = _reflow(text)
    for subgroup in group.registered_groups:
        if subgroup.typer_instance is not None:
            _reflow_help(subgroup.typer_instance)


# Every other command lives in monitor.commands, one module per command group.
register_commands(app, config_app=config_app)
_reflow_help(app)


def main() -> None:
    app()
