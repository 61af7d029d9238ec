"""What every part of the repository shares: transactions, error translation, streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.engine import SQLITE_BEGIN_OPTION, translate_errors
from monitor.store.models import Stream
from monitor.store.types import as_utc

T = TypeVar("T")

# Rows per statement when a list of ids goes into an IN (...) clause.
ID_BATCH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RepositoryBase:
    """Holds the engine; opens short transactions; maps SQLAlchemy errors to StorageError."""

    def __init__(
        self,
        engine: Engine,
        *,
        store_raw: bool = False,
        raw_ttl: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {engine.dialect.name!r}")
        self._engine = engine
        self._store_raw = store_raw
        self._raw_ttl = raw_ttl
        self._clock = clock
        self._stream_ids: dict[str, int] = {}

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def _now(self, now: datetime | None = None) -> datetime:
        return as_utc(now) if now is not None else as_utc(self._clock())

    @contextmanager
    def _write(self, doing: str) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite: writers queue, never deadlock)."""
        with translate_errors(self._engine.url, doing), self._engine.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self, doing: str) -> Iterator[Connection]:
        with (
            translate_errors(self._engine.url, doing),
            self._engine.connect() as conn,
            conn.begin(),
        ):
            yield conn

    def _insert(self, table: type[Any] | Table) -> Any:
        """The dialect's INSERT (it has ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- streams ---------------------------------------------------------------------------

    def ensure_stream(self, name: str) -> int:
        """The stream's id, creating the stream on first use (safe under concurrency)."""
        cached = self._stream_ids.get(name)
        if cached is not None:
            return cached
        with self._write("creating a stream") as conn:
            conn.execute(
                self._insert(Stream)
                .values(name=name, created_at=self._now())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stream_id = conn.execute(select(Stream.id).where(Stream.name == name)).scalar_one()
        self._stream_ids[name] = stream_id
        return stream_id

    def list_streams(self) -> list[str]:
        with self._read("listing streams") as conn:
            return list(conn.execute(select(Stream.name).order_by(Stream.name)).scalars())

    def _find_stream(self, conn: Connection, name: str) -> int | None:
        cached = self._stream_ids.get(name)
        if cached is not None:
            return cached
        found = conn.execute(select(Stream.id).where(Stream.name == name)).scalar_one_or_none()
        if found is not None:
            self._stream_ids[name] = found
        return found
