"""The leader lock: exactly one process at a time computes windows.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated
  connection. When the holder dies, or its connection does, PostgreSQL ends the session and
  frees the lock, so another replica's next try takes it. The holder checks its connection
  periodically (:meth:`LeaderLock.check`) and stops computing as soon as it is gone.
* SQLite (one machine): an exclusive ``fcntl.flock`` on a file beside the database. The kernel
  frees it when the holding process exits, however it exits.

Both answer ``try_acquire() -> bool`` (never blocks), ``check() -> bool`` (still held) and
``release()``. ``try_acquire`` raises :class:`~monitor.errors.StorageError`
(``DatabaseUnavailableError`` when PostgreSQL cannot be reached) instead of answering False:
"another process holds the lock" and "the database is away" call for different reports.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text

from monitor.errors import StorageError
from monitor.store.engine import translate_errors

DEFAULT_LOCK_NAME = "mllm-monitor/windows"


class LeaderLock(Protocol):
    def try_acquire(self) -> bool: ...
    def check(self) -> bool: ...
    def release(self) -> None: ...

    @property
    def description(self) -> str: ...


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def discard(conn: Connection) -> None:
    """Throw a lock session's connection away (not back to the pool: its session may be dead,
    or hold locks)."""
    try:
        conn.invalidate()
        conn.close()
    except Exception:  # a dead connection may fail to close; it is discarded anyway
        pass


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a connection of its own."""

    def __init__(self, engine: Engine, name: str = DEFAULT_LOCK_NAME) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("advisory locks need PostgreSQL")
        self._engine = engine
        self._key = lock_key(name)
        self._name = name
        self._conn: Connection | None = None

    @property
    def description(self) -> str:
        return f"PostgreSQL advisory lock {self._name!r} (key {self._key})"

    def try_acquire(self) -> bool:
        """Take the lock if free; False when another session holds it. An unreachable
        database raises DatabaseUnavailableError (it is not "someone else leads")."""
        if self._conn is not None:
            return self.check()
        with translate_errors(self._engine.url, "taking the leader lock"):
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                    ).scalar_one()
                )
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def check(self) -> bool:
        """Still held: the session that holds it answers and still lists the lock."""
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid() AND granted "
                    "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": self._key},
            ).scalar_one()
        except Exception:
            self._drop()
            return False
        if not held:
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            self._conn.close()
        except Exception:
            self._drop()  # the session is gone: PostgreSQL has freed the lock already
        self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            discard(self._conn)
        self._conn = None


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing), held by this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    @property
    def description(self) -> str:
        return f"file lock {self.path}"

    def try_acquire(self) -> bool:
        import fcntl

        if self._fh is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("a+")
        except OSError as exc:
            raise StorageError(f"cannot open the leader lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def check(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        import fcntl

        if self._fh is None:
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None


def leader_lock(
    engine: Engine, *, path: Path | None = None, name: str = DEFAULT_LOCK_NAME
) -> LeaderLock:
    """The lock for this database: advisory on PostgreSQL, a file lock on SQLite (``path``, by
    default ``<database file>.scheduler.lock``)."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, name)
    if path is None:
        database = engine.url.database
        if not database or database == ":memory:":
            raise StorageError(
                "an in-memory SQLite database has no file to put the leader lock beside: "
                "set [scheduler] lock_path"
            )
        path = Path(database).with_name(Path(database).name + ".scheduler.lock")
    return FileLock(path)
