"""Computing windows outside the scheduler (backfill) under the scheduler's leader lock.

    with leader_lock_held(repository, settings, wait=30.0, notify=print):
        ...  # compute windows: no scheduler computes any meanwhile
    with leader_lock_if_free(repository, settings, notify=print) as held:
        ...  # compute windows if held; else a scheduler computes them

The scheduler of every ``serve`` replica computes windows only while it holds the leader lock
(:mod:`monitor.store._leader`). A backfill that computed windows without it raced a running
scheduler over the same streams (each reading the windows the other was writing); holding the
same lock makes the two take turns. A running ``serve`` holds the lock for as long as it leads,
so a range backfill waits at most ``wait`` seconds, then stops with a message that says so and
what to do, before writing anything; ``backfill --from-jsonl``, whose records a running
scheduler finds on its own, leaves their windows to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from monitor.config import Settings
from monitor.errors import MonitorError

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
