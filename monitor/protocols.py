"""What the window path needs of its collaborators, as small structural types.

The pipeline, the scheduler and the stream model are written against these, not against the
SQL repository or the FAISS store, so mypy follows the core path end to end while the heavy
modules load only when something runs, and a reader sees at a glance which few methods a
window's computation really touches. :class:`monitor.store.repository.Repository` and
:class:`monitor.reference.store.ReferenceStore` satisfy them (checked in the type check of
``monitor.daemon``, which passes the real ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from monitor.records import WindowResult
from monitor.store.types import EmbeddingChunk, StoredWindow, WindowLocation


class SampleReader(Protocol):
    """Reads a window's samples (what :func:`monitor.pipeline.read_window` needs)."""

    def count_samples(self, stream: str, start: datetime, end: datetime) -> int: ...

    def iter_embeddings(
        self,
        stream: str,
        start: datetime,
        end: datetime,
        *,
        kinds: Sequence[str] = ...,
        chunk_size: int = ...,
    ) -> Iterator[EmbeddingChunk]: ...


class WindowReader(SampleReader, Protocol):
    """Reads a window's samples and the stream's stored windows around it."""

    def recent_windows(
        self, stream: str, before: datetime, limit: int, *, status: str | None = ...
    ) -> list[WindowResult]: ...

    def next_windows(
        self, stream: str, after: datetime, limit: int, *, status: str | None = ...
    ) -> list[WindowResult]: ...


class WindowWriter(Protocol):
    """Stores a window and the risk transition it causes, in one transaction."""

    def store_window(self, result: WindowResult, *, reason: str = ...) -> StoredWindow: ...


class WindowRepository(WindowReader, WindowWriter, Protocol):
    """What :class:`monitor.pipeline.WindowPipeline` needs."""


class LeaderLock(Protocol):
    """The lock that lets one process compute windows."""

    @property
    def description(self) -> str: ...

    def try_acquire(self) -> bool: ...

    def check(self) -> bool: ...

    def release(self) -> None: ...


class StreamLocks(Protocol):
    """Per-stream leader locks (PostgreSQL): see :mod:`monitor.store._stream_locks`."""

    @property
    def description(self) -> str: ...

    @property
    def joined(self) -> bool: ...

    def join(self) -> bool: ...

    def members(self) -> int: ...

    def held(self, streams: Iterable[str]) -> set[str]: ...

    def check(self, stream: str) -> bool: ...

    def try_take(self, stream: str) -> bool: ...

    def give_up(self, stream: str) -> None: ...

    def release(self) -> None: ...


class SchedulerRepository(WindowRepository, Protocol):
    """What :class:`monitor.scheduler.WindowScheduler` needs beyond the pipeline: where work
    is (due, stale and held-back windows) and the leader lock."""

    def last_computed_at(self, stream: str | None = ...) -> datetime | None: ...

    def oldest_received(self) -> dict[str, datetime]: ...

    def last_window_end(self, stream: str) -> datetime | None: ...

    def earliest_sample_time(self, stream: str) -> datetime | None: ...

    def stale_locations(self, since: datetime) -> list[WindowLocation]: ...

    def leader_lock(self, *, path: Path | None = ..., name: str = ...) -> LeaderLock: ...

    def stream_locks(self, *, name: str = ...) -> StreamLocks: ...


class StoreView(Protocol):
    """What a stream's windows are computed against, of its reference store."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> dict[str, Any]: ...

    @property
    def kinds(self) -> list[str]: ...

    @property
    def ood(self) -> dict[str, Any]: ...

    @property
    def calibration(self) -> dict[str, Any] | None: ...

    @property
    def ids(self) -> list[str]: ...

    @property
    def has_image(self) -> npt.NDArray[np.bool_]: ...

    @property
    def has_reference(self) -> npt.NDArray[np.bool_]: ...

    @property
    def estimator_holdout(self) -> npt.NDArray[np.intp]: ...

    def rows_of(self, kind: str) -> npt.NDArray[np.intp]: ...

    def embeddings(self, kind: str) -> npt.NDArray[np.float32]: ...


class ReadinessBoard(Protocol):
    """Where a component reports whether it is ready (``/readyz``)."""

    def set(self, name: str, ok: bool, detail: str = ...) -> None: ...
