"""Alembic, driven from code: upgrade, downgrade, current revision and the head check.

``mllm-monitor db ...`` and :func:`monitor.store.repository.open_repository` use these; the
daemon and every command that touches the database refuse to run unless
:func:`require_head` passes, and the error names the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.errors import SchemaMismatchError, StorageError
from monitor.store.engine import SQLITE_BEGIN_OPTION, masked, sqlite_file, storage_error

UPGRADE_COMMAND = "mllm-monitor db upgrade"


def default_script_location() -> Path:
    """The ``migrations/`` package shipped beside ``monitor/`` (in a checkout and when
    installed: both are top-level packages of the distribution)."""
    import monitor

    location = Path(monitor.__file__).resolve().parent.parent / "migrations"
    if not (location / "env.py").is_file():
        raise StorageError(
            f"the Alembic migrations are missing (no {location / 'env.py'}): reinstall mllm-monitor"
        )
    return location


def alembic_config(script_location: Path | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or default_script_location()))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision(script_location: Path | None = None) -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config(script_location)).get_current_head()
    if head is None:
        raise StorageError("the migrations folder has no revisions")
    return head


@dataclass(frozen=True, slots=True)
class RevisionState:
    current: str | None  # None: empty database (no schema)
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database (or a missing SQLite file)."""
    path = sqlite_file(engine.url)
    if path is not None and not path.exists():
        return None  # do not create the file just to look at it
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise storage_error(exc, engine.url, "reading the schema revision") from exc


def revision_state(engine: Engine, script_location: Path | None = None) -> RevisionState:
    return RevisionState(current_revision(engine), head_revision(script_location))


def require_head(engine: Engine, script_location: Path | None = None) -> str:
    """Return the revision if the database is at head, else raise SchemaMismatchError."""
    state = revision_state(engine, script_location)
    if state.at_head:
        return state.head
    where = masked(engine.url)
    if state.current is None:
        message = (
            f"database {where} is empty (no schema), this code needs revision {state.head}: "
            f"run `{UPGRADE_COMMAND}`"
        )
    elif _known(state.current, script_location):
        message = (
            f"database {where} is at revision {state.current}, this code needs {state.head}: "
            f"run `{UPGRADE_COMMAND}`"
        )
    else:
        message = (
            f"database {where} is at revision {state.current}, unknown to this version of "
            f"mllm-monitor (head {state.head}): run the newer mllm-monitor that wrote it, or "
            "downgrade the database with it"
        )
    raise SchemaMismatchError(message, current=state.current, expected=state.head)


def upgrade(engine: Engine, revision: str = "head", script_location: Path | None = None) -> None:
    """Migrate the database up to ``revision`` (creates the schema on an empty database)."""
    with _migration_connection(engine, f"upgrading to {revision}") as conn:
        cfg = alembic_config(script_location)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str, script_location: Path | None = None) -> None:
    """Migrate down to ``revision`` ("base" drops every table, and every row with them)."""
    current = current_revision(engine)
    if current is None:
        raise SchemaMismatchError(
            f"database {masked(engine.url)} is empty (no schema): nothing to downgrade",
            current=None,
            expected=head_revision(script_location),
        )
    with _migration_connection(engine, f"downgrading to {revision}") as conn:
        cfg = alembic_config(script_location)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _known(revision: str, script_location: Path | None) -> bool:
    try:
        script = ScriptDirectory.from_config(alembic_config(script_location))
        return script.get_revision(revision) is not None
    except CommandError:
        return False


@contextmanager
def _migration_connection(engine: Engine, doing: str) -> Iterator[Connection]:
    """One transaction for the whole migration; SQLite foreign keys off meanwhile.

    Batch migrations on SQLite copy and drop tables, which must not cascade through foreign
    keys; the pragma can only change outside a transaction, hence the raw driver calls.
    """
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as conn:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            try:
                with conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}).begin():
                    yield conn
            finally:
                if sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    except CommandError as exc:
        raise StorageError(f"cannot migrate database {masked(engine.url)}: {exc}") from exc
    except SQLAlchemyError as exc:
        raise storage_error(exc, engine.url, doing) from exc
