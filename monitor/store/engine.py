"""Engine creation: the one place that turns ``[database]`` settings into a SQLAlchemy Engine.

SQLite (the embedded default) gets WAL, a busy timeout and foreign keys on every connection,
and transactions this module can start as ``BEGIN IMMEDIATE`` (writers queue on the busy
timeout instead of failing half-way). PostgreSQL goes through psycopg 3 with a connect timeout.
Connection problems become one-line :class:`DatabaseUnavailableError` messages with the
password masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from monitor.config import DatabaseSettings, mask_url
from monitor.errors import DatabaseUnavailableError, StorageError

# Execution option read by the SQLite "begin" listener: the BEGIN form to emit.
SQLITE_BEGIN_OPTION = "mllm_sqlite_begin"


def parse_url(url: str | URL) -> URL:
    """The URL as SQLAlchemy reads it; ``postgresql://`` means psycopg 3 here."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise DatabaseUnavailableError(
            f"invalid database URL {_mask_text(str(url))!r}: expected sqlite:///PATH "
            "or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        ) from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: str | URL) -> str:
    """The URL for messages and logs, password and secret query parameters (a driver's
    sslpassword, say) replaced by *** (mask_url: SQLAlchemy hides only the password)."""
    try:
        return mask_url(make_url(url).render_as_string(hide_password=True))
    except (ArgumentError, ValueError):
        return mask_url(_mask_text(str(url)))


def _mask_text(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(str(url.database))


def create_db_engine(
    url: str | URL,
    *,
    connect_timeout: timedelta = timedelta(seconds=5),
    echo: bool = False,
) -> Engine:
    """An Engine for ``url`` with the project's connection settings (does not connect yet)."""
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    seconds = max(connect_timeout.total_seconds(), 0.001)
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = seconds
        connect_args["check_same_thread"] = False
    elif backend == "postgresql":
        connect_args["connect_timeout"] = max(1, round(seconds))
    else:
        raise DatabaseUnavailableError(
            f"unsupported database {masked(parsed)}: use sqlite:/// or postgresql+psycopg://"
        )
    try:
        engine = create_engine(
            parsed, echo=echo, connect_args=connect_args, pool_pre_ping=backend != "sqlite"
        )
    except ArgumentError as exc:  # unknown driver (NoSuchModuleError) and friends
        raise DatabaseUnavailableError(
            f"cannot use database URL {masked(parsed)}: {one_line(exc)}"
        ) from exc
    except ImportError as exc:
        raise DatabaseUnavailableError(
            f"driver for {masked(parsed)} is not installed: {exc}"
        ) from exc
    if backend == "sqlite":
        _configure_sqlite(engine, busy_ms=round(seconds * 1000))
    return engine


def engine_from_settings(settings: DatabaseSettings) -> Engine:
    return create_db_engine(
        settings.url, connect_timeout=settings.connect_timeout, echo=settings.echo
    )


def _configure_sqlite(engine: Engine, *, busy_ms: int) -> None:
    in_memory = sqlite_file(engine.url) is None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN is ours (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def one_line(exc: BaseException) -> str:
    """A DBAPI or SQLAlchemy error as one short line (no SQL, no background link)."""
    inner: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        inner = exc.orig
    text = str(inner).split("[SQL:", 1)[0].split("(Background on this error", 1)[0]
    text = " ".join(text.split())
    return text or type(inner).__name__


def storage_error(exc: SQLAlchemyError, url: URL | str, doing: str) -> StorageError:
    """The project's error for a SQLAlchemy one (the caller chains it with ``from``)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return DatabaseUnavailableError(
            f"database {masked(url)} unavailable while {doing}: {one_line(exc)}"
        )
    return StorageError(f"database {masked(url)} failed while {doing}: {one_line(exc)}")


@contextmanager
def translate_errors(url: URL | str, doing: str) -> Iterator[None]:
    """Turn SQLAlchemy errors raised inside into one-line StorageError subclasses."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise storage_error(exc, url, doing) from exc


def check_connection(engine: Engine) -> None:
    """Connect once; an unreachable server or refused login raises DatabaseUnavailableError."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to database {masked(engine.url)}: {one_line(exc)}"
        ) from exc
