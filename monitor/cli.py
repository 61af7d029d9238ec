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
db_app = typer.Typer(
    help="Create, migrate and inspect the database schema (Alembic migrations).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

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


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[
        str, typer.Option("--revision", "-r", help="Target revision (default: the newest).")
    ] = "head",
) -> None:
    """Create the schema on an empty database, or migrate it up to REVISION."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        try:
            before = migrate.current_revision(engine)
            migrate.upgrade(engine, revision)
            after = migrate.current_revision(engine)
        finally:
            engine.dispose()
    where = masked(settings.database.url)
    if before == after:
        typer.echo(f"database {where} already at revision {after}")
    else:
        typer.echo(f"database {where} upgraded: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
def db_downgrade(
    config: ConfigOption = None,
    revision: Annotated[
        str,
        typer.Option(
            "--revision",
            "-r",
            help="Target revision: -1 (one step back, the default) or base (drops every table).",
        ),
    ] = "-1",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Migrate the schema down to REVISION; what the dropped tables held is lost."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        where = masked(settings.database.url)
        try:
            before = migrate.current_revision(engine)
            if not yes:
                typer.confirm(
                    f"Downgrade database {where} from revision {before or 'empty'} to "
                    f"{revision}? Data in the tables it drops is lost.",
                    abort=True,
                )
            migrate.downgrade(engine, revision)
            after = migrate.current_revision(engine)
        finally:
            engine.dispose()
    typer.echo(f"database {where} downgraded: {before} -> {after or 'empty (base)'}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the database's schema revision and the one this code needs (exit 1 if they
    differ)."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        try:
            state = migrate.revision_state(engine)
            typer.echo(f"database: {masked(settings.database.url)}")
            typer.echo(f"current:  {state.current or 'empty (no schema)'}")
            typer.echo(f"head:     {state.head}")
            migrate.require_head(engine)
        finally:
            engine.dispose()


def main() -> None:
    app()
