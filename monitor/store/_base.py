"""What every part of the repository shares: the database (transactions, clock) and streams.

The repository is composed of parts (:mod:`monitor.store.repository`); each part receives the
:class:`Database` and, where it names streams, the one :class:`Streams` registry, so parts
never inherit from each other to reach a helper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.engine import SQLITE_BEGIN_OPTION, translate_errors
from monitor.store.models import Stream
from monitor.store.types import as_utc
from monitor.timestamps import utcnow

T = TypeVar("T")

# Rows per statement when a list of ids goes into an IN (...) clause.
ID_BATCH = 500


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Database:
    """Holds the engine and the clock; opens short transactions; maps SQLAlchemy errors to
    StorageError."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {engine.dialect.name!r}")
        self.engine = engine
        self._clock = clock

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def now(self, now: datetime | None = None) -> datetime:
        """``now`` in UTC when given (tests, replays), else the clock's time."""
        return as_utc(now) if now is not None else as_utc(self._clock())

    @contextmanager
    def write(self, doing: str) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite: writers queue, never deadlock)."""
        with translate_errors(self.engine.url, doing), self.engine.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def read(self, doing: str) -> Iterator[Connection]:
        with (
            translate_errors(self.engine.url, doing),
            self.engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    def insert(self, table: type[Any] | Table) -> Any:
        """The dialect's INSERT (it has ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


class Streams:
    """Stream names and their ids, cached (a stream is never renamed or deleted)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ids: dict[str, int] = {}

    def ensure(self, name: str) -> int:
        """The stream's id, creating the stream on first use (safe under concurrency)."""
        cached = self._ids.get(name)
        if cached is not None:
            return cached
        with self._db.write("creating a stream") as conn:
            conn.execute(
                self._db.insert(Stream)
                .values(name=name, created_at=self._db.now())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stream_id = conn.execute(select(Stream.id).where(Stream.name == name)).scalar_one()
        self._ids[name] = stream_id
        return stream_id

    def names(self) -> list[str]:
        with self._db.read("listing streams") as conn:
            return list(conn.execute(select(Stream.name).order_by(Stream.name)).scalars())

    def find(self, conn: Connection, name: str) -> int | None:
        """The stream's id inside an open transaction; None when there is no such stream."""
        cached = self._ids.get(name)
        if cached is not None:
            return cached
        found = conn.execute(select(Stream.id).where(Stream.name == name)).scalar_one_or_none()
        if found is not None:
            self._ids[name] = found
        return found
