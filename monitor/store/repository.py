"""The repository: the only code in mllm-monitor that issues SQL.

Public methods take and return plain data (``monitor.records`` and ``monitor.store.types``),
each in its own short transaction. The repository is composed of parts by concern, each a
small class sharing one :class:`~monitor.store._base.Database` (engine, clock, transactions):

* ``streams`` (``ensure_stream``, ``list_streams``): ``monitor.store._base``
* ``inbox``, the durable inbox (``enqueue``, ``claim``, ``renew``, ``ack``, ``release``,
  ``inbox_depth``, ``oldest_received``, ``move_aside`` and ``inbox_failures`` for records that
  cannot be embedded):
  ``monitor.store._inbox``
* ``samples``, samples and embeddings (``add_samples``, ``get_sample``, ``count_samples``,
  ``iter_embeddings``), late references (``locate_records``, ``add_late_reference(s)``), raw
  retention (``purge_raw``): ``monitor.store._samples``
* ``windows``, window results and risk transitions (``store_window``: a window and its
  transition in one transaction; ``upsert_window``, ``get_windows``, ``list_windows``,
  ``recent_windows``, ``next_windows``, ``last_window_end``, ``earliest_sample_time``,
  ``stale_locations``, ``record_risk_transition``, ``current_risk``): ``monitor.store._windows``
* ``leader``, the lock that lets one process compute windows: ``monitor.store._leader``
* ``artifacts``, reference sets and estimator artifacts (``register_reference_set``,
  ``get_estimator``): ``monitor.store._artifacts``

The repository exposes every part's methods under the flat names above, so callers write
``repo.claim(...)``; the parts are public too (``repo.inbox.claim``).

:func:`open_repository` is what the daemon and the CLI call: it connects, checks that the
schema is at the revision this code needs, and raises one clear error otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from monitor.config import Settings
from monitor.store._artifacts import Artifacts
from monitor.store._base import Database, Streams
from monitor.store._inbox import Inbox
from monitor.store._leader import DEFAULT_LOCK_NAME, LeaderLock, leader_lock
from monitor.store._samples import Samples
from monitor.store._stream_locks import StreamLocks
from monitor.store._windows import Windows
from monitor.store.engine import check_connection, engine_from_settings
from monitor.store.migrate import require_head
from monitor.timestamps import utcnow


class Repository:
    """Everything the monitor keeps, behind one object built from an Engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        store_raw: bool = False,
        raw_ttl: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = Database(engine, clock=clock)
        self.streams = Streams(self.db)
        self.inbox = Inbox(self.db)
        self.samples = Samples(
            self.db, self.streams, self.inbox, store_raw=store_raw, raw_ttl=raw_ttl
        )
        self.windows = Windows(self.db, self.streams)
        self.artifacts = Artifacts(self.db)

        # The flat API: bound methods of the parts (typed as theirs, no wrappers to keep in step).
        self.ensure_stream = self.streams.ensure
        self.list_streams = self.streams.names

        self.enqueue = self.inbox.enqueue
        self.claim = self.inbox.claim
        self.ack = self.inbox.ack
        self.release = self.inbox.release
        self.renew = self.inbox.renew
        self.oldest_received = self.inbox.oldest_received
        self.inbox_depth = self.inbox.depth
        self.move_aside = self.inbox.move_aside
        self.inbox_failures = self.inbox.failures

        self.add_samples = self.samples.add_samples
        self.get_sample = self.samples.get_sample
        self.count_samples = self.samples.count_samples
        self.iter_embeddings = self.samples.iter_embeddings
        self.locate_records = self.samples.locate_records
        self.add_late_reference = self.samples.add_late_reference
        self.add_late_references = self.samples.add_late_references
        self.pending_late_references = self.samples.pending_late_references
        self.get_late_reference = self.samples.get_late_reference
        self.resolve_late_reference = self.samples.resolve_late_reference
        self.get_raw = self.samples.get_raw
        self.purge_raw = self.samples.purge_raw

        self.store_window = self.windows.store_window
        self.upsert_window = self.windows.upsert_window
        self.get_window = self.windows.get_window
        self.get_windows = self.windows.get_windows
        self.list_windows = self.windows.list_windows
        self.record_risk_transition = self.windows.record_risk_transition
        self.risk_transitions = self.windows.risk_transitions
        self.current_risk = self.windows.current_risk
        self.recent_windows = self.windows.recent_windows
        self.next_windows = self.windows.next_windows
        self.last_window_end = self.windows.last_window_end
        self.earliest_sample_time = self.windows.earliest_sample_time
        self.last_computed_at = self.windows.last_computed_at
        self.stale_locations = self.windows.stale_locations

        self.register_reference_set = self.artifacts.register_reference_set
        self.get_reference_set = self.artifacts.get_reference_set
        self.register_estimator = self.artifacts.register_estimator
        self.get_estimator = self.artifacts.get_estimator

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def leader_lock(self, *, path: Path | None = None, name: str = DEFAULT_LOCK_NAME) -> LeaderLock:
        """The lock that lets one process compute windows (advisory on PostgreSQL, a file
        lock beside the SQLite database or at ``path``); see :mod:`monitor.store._leader`."""
        return leader_lock(self.db.engine, path=path, name=name)

    def stream_locks(self, *, name: str = DEFAULT_LOCK_NAME) -> StreamLocks:
        """Per-stream leader locks (PostgreSQL only); see :mod:`monitor.store._stream_locks`."""
        return StreamLocks(self.db.engine, name)

    def close(self) -> None:
        """Close the pooled connections."""
        self.db.engine.dispose()


def open_repository(settings: Settings, *, check_schema: bool = True) -> Repository:
    """Connect to ``settings.database`` and return its repository.

    Raises DatabaseUnavailableError (bad URL, unreachable server, refused login) or
    SchemaMismatchError (the database is not at this code's revision; the message names
    ``mllm-monitor db upgrade``).
    """
    engine = engine_from_settings(settings.database)
    try:
        if check_schema:
            require_head(engine)  # before connecting: a missing SQLite file is not created
        check_connection(engine)
    except BaseException:
        engine.dispose()
        raise
    return Repository(
        engine, store_raw=settings.retention.store_raw, raw_ttl=settings.retention.raw_ttl
    )
