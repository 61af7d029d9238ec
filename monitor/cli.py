"""The ``mllm-monitor`` command line: thin commands over the same services as the daemon.

Exit codes: 0 success, 1 a runtime error of the monitor, 2 bad usage or invalid settings.
Errors print one line (or one short list) on stderr, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from monitor import __version__
from monitor.config import load_settings
from monitor.errors import ConfigError, MonitorError

EXIT_ERROR = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="mllm-monitor",
    help="Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and validate the settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

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

_err = Console(stderr=True, soft_wrap=True)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Map the project's exceptions to one message on stderr and an exit code."""
    try:
        yield
    except ConfigError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except MonitorError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(EXIT_ERROR) from exc


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
) -> None:
    """Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577)."""


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


def main() -> None:
    app()
