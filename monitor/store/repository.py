"""The repository: the only code in mllm-monitor that issues SQL.

Public methods take and return plain data (``monitor.records`` and ``monitor.store.types``),
each in its own short transaction. Everything lives in one class, built from parts by concern:

* streams (``ensure_stream``, ``list_streams``) and transactions: ``monitor.store._base``
* the durable inbox (``enqueue``, ``claim``, ``ack``, ``release``, ``inbox_depth``):
  ``monitor.store._inbox``
* samples and embeddings (``add_samples``, ``get_sample``, ``count_samples``,
  ``iter_embeddings``), late references, raw retention (``purge_raw``): ``monitor.store._samples``
* windows (``upsert_window``, ``get_windows``), risk transitions, reference sets and estimator
  artifacts: ``monitor.store._windows``

:func:`open_repository` is what the daemon and the CLI call: it connects, checks that the
schema is at the revision this code needs, and raises one clear error otherwise.
"""

from __future__ import annotations

from monitor.config import Settings
from monitor.store._windows import WindowsMixin
from monitor.store.engine import check_connection, engine_from_settings
from monitor.store.migrate import require_head


class Repository(WindowsMixin):
    """Everything the monitor keeps, behind one object built from an Engine."""


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
