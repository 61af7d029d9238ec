"""One way to open what the monitor runs on: the repository, the metrics, the encoders and the
reference stores by stream. The daemon opens the stores with :func:`stream_stores` (and checks
readiness and calibration on top); a command opens all of it with :func:`services`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry

from monitor.config import Settings, StreamSettings
from monitor.metrics import MonitorMetrics

if TYPE_CHECKING:  # the encoders and the stores pull in torch and faiss: loaded when used
    from monitor.embedding import EncoderSet
    from monitor.reference.store import ReferenceStore
    from monitor.store.repository import Repository


@dataclass
class Services:
    """What a command runs on, as the daemon does: repository, metrics (a private registry),
    reference stores by stream, and the encoders when asked for."""

    settings: Settings
    repository: Repository
    metrics: MonitorMetrics
    stores: dict[str, ReferenceStore] = field(default_factory=dict)
    encoders: EncoderSet | None = None

    def close(self) -> None:
        self.repository.close()


class StreamStore(NamedTuple):
    """A configured stream and its reference store; ``first`` for the stream that opened it."""

    stream: StreamSettings
    store: ReferenceStore
    first: bool


def stream_stores(settings: Settings, encoders: EncoderSet | None) -> Iterator[StreamStore]:
    """Each configured stream with its reference store, in the settings' order, each named
    store opened (verified) once, when the first stream naming it comes: checked against
    ``encoders`` when these are loaded, by its checksums only otherwise."""
    from monitor.reference import load_store, open_store

    root = settings.reference.root
    by_name: dict[str, ReferenceStore] = {}
    for stream in settings.streams:
        name = stream.reference
        first = name not in by_name
        if first:
            by_name[name] = (
                open_store(root, name, encoders) if encoders is not None else load_store(root, name)
            )
        yield StreamStore(stream, by_name[name], first)


@contextmanager
def services(settings: Settings, *, encoders: bool, stores: bool = True) -> Iterator[Services]:
    """Open what the daemon opens: the repository (schema checked), the streams' reference
    stores (checked against the encoders when these are loaded; none without ``stores``, as
    a dry run needs) and the encoders."""
    from monitor.store.repository import open_repository

    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    loaded_encoders = None
    if encoders:
        from monitor.embedding import encoders_from_settings

        loaded_encoders = encoders_from_settings(settings.encoders)
    by_stream = (
        {s.stream.name: s.store for s in stream_stores(settings, loaded_encoders)} if stores else {}
    )
    repository = open_repository(settings)
    found = Services(settings, repository, metrics, by_stream, loaded_encoders)
    try:
        yield found
    finally:
        found.close()
