"""Who computes windows: the scheduler's leadership, and backfill under the same locks.

The scheduler of every ``serve`` replica computes a stream's windows only while it holds that
stream's lock:

* :class:`StreamShares` (PostgreSQL, ``scheduler.leadership = "auto"`` or ``"per_stream"``): a
  lock per stream, and the replicas share the streams evenly, so N replicas compute N streams'
  windows at once; a dead replica's streams move to the others within one lock timeout.
* :class:`SingleLeader` (SQLite, or ``"single"``): one lock, whose holder computes every stream.

Backfill computes windows under the single leader lock, which no replica can hold while any
other replica leads a stream (the per-stream replicas hold it shared):

    with leader_lock_held(repository, settings, wait=30.0, notify=print):
        ...  # compute windows: no scheduler computes any meanwhile
    with leader_lock_if_free(repository, settings, notify=print) as held:
        ...  # compute windows if held; else a scheduler computes them

A backfill that computed windows without it raced a running scheduler over the same streams
(each reading the windows the other was writing); holding the lock makes the two take turns. A
running ``serve`` holds it for as long as it leads, so a range backfill waits at most ``wait``
seconds, then stops with a message that says so and what to do, before writing anything;
``backfill --from-jsonl``, whose records a running scheduler finds on its own, leaves their
windows to it.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.protocols import LeaderLock, SchedulerRepository, StreamLocks

# How often a waiting backfill tries the lock again.
POLL_SECONDS = 1.0


@contextmanager
def leader_lock_held(
    repository: Any,
    settings: Settings,
    *,
    wait: float,
    notify: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the leader lock inside the block, waiting up to ``wait`` seconds for it (0: one
    try); ``notify`` is told once when it has to wait. Raises MonitorError (exit 1) when it
    stays taken, StorageError when the database cannot be asked."""
    lock = repository.leader_lock(path=settings.scheduler.lock_path)
    deadline = time.monotonic() + max(wait, 0.0)
    told = False
    while not lock.try_acquire():
        left = deadline - time.monotonic()
        if left <= 0:
            raise MonitorError(
                f"another process holds the leader lock ({lock.description}) and computes "
                f"windows, most likely a running `mllm-monitor serve` (waited {wait:g} s). Its "
                "scheduler computes due windows and recomputes those whose data changed on its "
                "own; to compute this range here, stop its scheduler (stop serve, or set "
                "[scheduler] enabled = false) and run again, or wait longer (--lock-wait)"
            )
        if notify is not None and not told:
            notify(
                f"waiting up to {wait:g} s for the leader lock ({lock.description}): another "
                "process computes windows"
            )
            told = True
        time.sleep(min(POLL_SECONDS, left))
    try:
        yield
    finally:
        lock.release()


@contextmanager
def leader_lock_if_free(
    repository: Any, settings: Settings, *, notify: Callable[[str], None] | None = None
) -> Iterator[bool]:
    """Hold the leader lock inside the block when it is free (True). When another process
    holds it (False; ``notify`` is told why), that process's scheduler computes the windows
    itself: samples stored after a window was computed make it stale, and a new window's
    samples make it due, so there is nothing to wait for."""
    lock = repository.leader_lock(path=settings.scheduler.lock_path)
    if not lock.try_acquire():
        if notify is not None:
            notify(
                f"windows not computed here: another process holds the leader lock "
                f"({lock.description}), most likely a running `mllm-monitor serve`, whose "
                "scheduler computes the windows of these records on its own"
            )
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


# -- the scheduler's leadership: which streams this replica computes windows for ------------


@dataclass(frozen=True)
class Turn:
    """One look at leadership: the streams led now, those newly led, and those whose lock went
    away without being given up (a dropped or terminated session)."""

    streams: tuple[str, ...]
    gained: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    detail: str = ""  # why nothing is led, or how much is


class Leadership(Protocol):
    @property
    def description(self) -> str: ...

    def lead(self) -> Turn:
        """Take (or give back) streams; raises StorageError when the database cannot be
        asked (not the same as "another replica leads")."""
        ...

    def still_leads(self, stream: str) -> bool:
        """Checked before each window: a lost lock must not compute even one more."""
        ...

    def release(self) -> None: ...


class SingleLeader:
    """One lock for every stream: the holder computes all of them (SQLite, or
    ``scheduler.leadership = "single"``)."""

    def __init__(self, lock: LeaderLock, streams: Sequence[str]) -> None:
        self.lock = lock
        self.streams = tuple(streams)
        self._leads = False

    @property
    def description(self) -> str:
        return self.lock.description

    def lead(self) -> Turn:
        if self._leads:
            if self.lock.check():
                return Turn(self.streams, detail="leader")
            self._leads = False
            lost = self.streams
        else:
            lost = ()
        if not self.lock.try_acquire():
            return Turn((), lost=lost, detail="another process computes windows")
        self._leads = True
        return Turn(self.streams, gained=self.streams, lost=lost, detail="leader")

    def still_leads(self, stream: str) -> bool:
        return self.lock.check()

    def release(self) -> None:
        self._leads = False
        self.lock.release()


class StreamShares:
    """A lock per stream (PostgreSQL): every replica takes an even share of the streams,
    ``ceil(streams / replicas)``, and gives back what is over its share when more replicas join,
    so N replicas compute N streams' windows at once. Each replica prefers streams by rendezvous
    hashing of its own id and the stream name, so shares spread without coordination, and a
    dead replica's streams, freed by PostgreSQL with its session, are taken by the others at
    their next look (within ``scheduler.lock_timeout``)."""

    def __init__(
        self, locks: StreamLocks, streams: Sequence[str], *, replica: str | None = None
    ) -> None:
        self.locks = locks
        self.streams = tuple(streams)
        replica = replica or uuid.uuid4().hex
        self._preference = sorted(
            self.streams,
            key=lambda s: hashlib.blake2b(f"{replica}/{s}".encode(), digest_size=8).digest(),
        )
        self._led: set[str] = set()

    @property
    def description(self) -> str:
        return self.locks.description

    def lead(self) -> Turn:
        before = self._led
        if not self.locks.join():
            self._led = set()
            return Turn(
                (),
                lost=self._ordered(before),
                detail="another process holds the leader lock of every stream (a single "
                "leader, or a backfill computing windows)",
            )
        held = self.locks.held(self.streams)
        lost = before - held
        if not self.locks.joined:  # the session died between join() and held()
            self._led = set()
            return Turn((), lost=self._ordered(lost), detail="the leader locks' session ended")
        members = max(self.locks.members(), 1)
        share = math.ceil(len(self.streams) / members)
        if len(held) > share:
            # Give back the least preferred first: the others take them at their next look.
            for stream in reversed(self._preference):
                if len(held) <= share:
                    break
                if stream in held:
                    self.locks.give_up(stream)
                    held.discard(stream)
        else:
            for stream in self._preference:
                if len(held) >= share:
                    break
                if stream not in held and self.locks.try_take(stream):
                    held.add(stream)
        self._led = held
        sharing = "1 replica leads" if members == 1 else f"{members} replicas share"
        detail = (
            f"leader of {len(held)} of {len(self.streams)} streams ({sharing} them)"
            if held
            else f"other replicas lead every stream ({sharing} them)"
        )
        return Turn(
            self._ordered(held),
            gained=self._ordered(held - before),
            lost=self._ordered(lost),
            detail=detail,
        )

    def still_leads(self, stream: str) -> bool:
        if self.locks.check(stream):
            return True
        self._led.discard(stream)
        return False

    def release(self) -> None:
        self._led = set()
        self.locks.release()

    def _ordered(self, streams: set[str] | tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s for s in self.streams if s in streams)


def scheduler_leadership(
    settings: Settings, repository: SchedulerRepository, *, lock: LeaderLock | None = None
) -> Leadership:
    """Per-stream shares on PostgreSQL (unless ``scheduler.leadership = "single"``), else one
    lock for all; an explicit ``lock`` means one lock for all."""
    streams = [s.name for s in settings.streams]
    if lock is None and settings.per_stream_leadership:
        return StreamShares(repository.stream_locks(), streams)
    if lock is None:
        lock = repository.leader_lock(path=settings.scheduler.lock_path)
    return SingleLeader(lock, streams)
