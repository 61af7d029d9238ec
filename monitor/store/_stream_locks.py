"""Per-stream leader locks on PostgreSQL: N replicas compute different streams' windows at once.

Every lock lives on one dedicated connection (a PostgreSQL session), so a replica that dies,
or whose session is dropped, frees all of them at once and the others take its streams over at
their next try.

* Membership: a *shared* advisory lock on the global leader key (the key a single leader, and a
  range backfill, take *exclusively*). Holding it says "this replica leads some streams"; while
  anyone holds it, nobody can take the global key exclusively, and while a single leader or a
  backfill holds that, no replica can join. The count of sessions holding it is how many
  replicas share the streams.
* One exclusive advisory lock per stream, keyed by the lock name and the stream's name. Only the
  holder computes that stream's windows, which keeps each window computed once and each
  stream's transitions one chain.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine, text

from monitor.errors import StorageError
from monitor.store._leader import DEFAULT_LOCK_NAME, discard, lock_key
from monitor.store.engine import translate_errors

# Advisory keys as pg_locks shows a bigint key (objsubid = 1: one 64-bit key).
_ADVISORY_KEY = "((classid::bigint << 32) | objid::bigint)"
_MINE = "locktype = 'advisory' AND objsubid = 1 AND granted AND pid = pg_backend_pid()"


def stream_lock_key(name: str, stream: str) -> int:
    return lock_key(f"{name}/stream/{stream}")


class StreamLocks:
    """A replica's membership and per-stream locks, all on one connection of its own."""

    def __init__(self, engine: Engine, name: str = DEFAULT_LOCK_NAME) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("per-stream leader locks need PostgreSQL")
        self._engine = engine
        self._name = name
        self._member_key = lock_key(name)
        self._conn: Connection | None = None

    @property
    def description(self) -> str:
        return f"PostgreSQL advisory locks {self._name!r} per stream"

    def join(self) -> bool:
        """Hold the shared membership lock, opening a new session when there is none or the
        last one ended (its stream locks ended with it). False when a single leader or a
        backfill holds the global key exclusively. An unreachable database raises
        DatabaseUnavailableError."""
        if self._conn is not None:
            try:
                if self._holds(self._member_key, "ShareLock"):
                    return True
            except Exception:
                self._drop()  # the session is gone, and every lock of it with it
        with translate_errors(self._engine.url, "taking the leader lock"):
            if self._conn is None:
                self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                return bool(
                    self._conn.execute(
                        text("SELECT pg_try_advisory_lock_shared(:key)"),
                        {"key": self._member_key},
                    ).scalar_one()
                )
            except BaseException:
                self._drop()
                raise

    @property
    def joined(self) -> bool:
        """The session is open (it may have died since: :meth:`held` finds out)."""
        return self._conn is not None

    def members(self) -> int:
        """How many sessions hold the membership lock (this one included when joined)."""
        conn = self._require()
        with translate_errors(self._engine.url, "counting the replicas that lead streams"):
            try:
                return int(
                    conn.execute(
                        text(
                            "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND objsubid = 1 AND granted AND mode = 'ShareLock'"
                            f" AND {_ADVISORY_KEY} = :key"
                        ),
                        {"key": self._member_key},
                    ).scalar_one()
                )
            except BaseException:
                self._drop()
                raise

    def held(self, streams: Iterable[str]) -> set[str]:
        """Which of ``streams`` this session still holds (empty, and the session dropped, when
        the session is gone)."""
        if self._conn is None:
            return set()
        keys = {stream_lock_key(self._name, s): s for s in streams}
        try:
            rows = self._conn.execute(
                text(
                    f"SELECT {_ADVISORY_KEY} FROM pg_locks WHERE {_MINE} AND mode = 'ExclusiveLock'"
                )
            ).scalars()
            return {keys[key] for key in rows if key in keys}
        except Exception:
            self._drop()
            return set()

    def check(self, stream: str) -> bool:
        """Still held: the session answers and still lists the stream's lock."""
        if self._conn is None:
            return False
        try:
            return self._holds(stream_lock_key(self._name, stream), "ExclusiveLock")
        except Exception:
            self._drop()
            return False

    def try_take(self, stream: str) -> bool:
        """Take the stream's lock if free (never blocks)."""
        conn = self._require()
        with translate_errors(self._engine.url, "taking a stream's leader lock"):
            try:
                return bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"),
                        {"key": stream_lock_key(self._name, stream)},
                    ).scalar_one()
                )
            except BaseException:
                self._drop()
                raise

    def give_up(self, stream: str) -> None:
        """Release one stream's lock (another replica takes it at its next try)."""
        if self._conn is None:
            return
        try:
            self._conn.execute(
                text("SELECT pg_advisory_unlock(:key)"),
                {"key": stream_lock_key(self._name, stream)},
            )
        except Exception:
            self._drop()  # the session is gone, and every lock of it with it

    def release(self) -> None:
        """Release everything: end the session."""
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
            self._conn.close()
        except Exception:
            self._drop()
        self._conn = None

    def _holds(self, key: int, mode: str) -> bool:
        conn = self._require()
        return bool(
            conn.execute(
                text(
                    f"SELECT count(*) FROM pg_locks WHERE {_MINE} AND mode = :mode "
                    f"AND {_ADVISORY_KEY} = :key"
                ),
                {"key": key, "mode": mode},
            ).scalar_one()
        )

    def _require(self) -> Connection:
        if self._conn is None:
            raise StorageError("the session that holds the stream locks is gone")
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            discard(self._conn)
        self._conn = None
