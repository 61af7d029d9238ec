"""``mllm-monitor db upgrade|downgrade|current``: the database schema (Alembic migrations)."""

from __future__ import annotations

from typing import Annotated

import typer

from monitor.commands._common import ConfigOption
from monitor.config import load_settings


def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[
        str, typer.Option("--revision", "-r", help="Target revision (default: the newest).")
    ] = "head",
) -> None:
    """Create the schema on an empty database, or migrate it up to REVISION."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

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


def db_current(config: ConfigOption = None) -> None:
    """Print the database's schema revision and the one this code needs (exit 1 if they
    differ)."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

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


def register(app: typer.Typer) -> None:
    """Add the ``db`` group to the root app."""
    db_app = typer.Typer(
        help="Create, migrate and inspect the database schema (Alembic migrations).",
        no_args_is_help=True,
    )
    db_app.command("upgrade")(db_upgrade)
    db_app.command("downgrade")(db_downgrade)
    db_app.command("current")(db_current)
    app.add_typer(db_app, name="db")
