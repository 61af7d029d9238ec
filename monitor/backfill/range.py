"""``backfill --stream S --since T [--until T]``: the windows of a range (re)computed.

The windows are computed from stored embeddings with the current reference store, estimator
and calibration, oldest first (the risk rule and the detector read the windows before).
Windows already stored are kept unless ``recompute``; an interrupted run simply runs again
(each window is one idempotent upsert, so there are neither duplicates nor gaps). Only windows
that are due (end + lateness passed) are computed: a later one is the scheduler's. The range
is planned by arithmetic (no list of windows, so ten years cost what an hour does), and a range
with more windows to compute than ``max_windows`` is refused, saying how many. The caller holds
the leader lock (:mod:`monitor.leadership`) while a range is computed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from monitor.backfill import ProgressCallback, no_progress
from monitor.errors import TooManyWindowsError
from monitor.records import WindowKey
from monitor.windows import iter_windows, last_due_end, window_start

if TYPE_CHECKING:
    from monitor.config import Settings
    from monitor.services import Services


@dataclass
class RangeSummary:
    stream: str
    planned: int = 0  # due windows in the range
    existing: int = 0  # of those, stored before this run
    computed: int = 0
    ok: int = 0
    insufficient: int = 0
    risk: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})
    not_due: int = 0  # windows of the range left to the scheduler
    samples: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class WindowPlan:
    """The windows of a range, by arithmetic: ``first`` is the start of the window holding
    ``since``; ``due`` windows follow it (end + lateness passed), then ``not_due`` ones.
    Nothing is listed, so a ten-year range costs what a one-hour one does; :meth:`windows` yields
    the due windows one at a time."""

    stream: str
    first: datetime
    size: timedelta
    due: int
    not_due: int

    @property
    def due_end(self) -> datetime:
        """End of the last due window (``first`` when none is)."""
        return self.first + self.due * self.size

    def windows(self) -> Iterator[WindowKey]:
        return iter_windows(self.stream, self.first, self.due_end, self.size)

    def holds(self, key: WindowKey) -> bool:
        """True for a stored window that is one of the due windows (same grid and size)."""
        offset = key.start - self.first
        return (
            key.end - key.start == self.size
            and self.first <= key.start < self.due_end
            and offset % self.size == timedelta(0)
        )


def plan_windows(
    settings: Settings, stream: str, since: datetime, until: datetime, now: datetime
) -> WindowPlan:
    """The windows of [since, until): how many are due, how many are not yet (none listed)."""
    size, lateness = settings.windows.size, settings.windows.lateness
    first = window_start(since, size)
    total = max(0, -((first - until) // size))  # ceil((until - first) / size)
    # A window is due once its end is at or before last_due_end (is_due's rule, on the grid).
    due = min(total, max(0, (last_due_end(now, size, lateness) - first) // size))
    return WindowPlan(stream, first, size, due, total - due)


def backfill_range(
    found: Services,
    stream: str,
    since: datetime,
    until: datetime,
    *,
    recompute: bool,
    dry_run: bool,
    max_windows: int | None = None,
    progress: ProgressCallback = no_progress,
) -> RangeSummary:
    """(Re)compute the due windows of [since, until) of ``stream``; see the module doc.

    With ``max_windows``, a range with more windows to compute is refused (TooManyWindowsError)
    before anything is written. ``progress`` counts the windows computed of those to compute."""
    from monitor.pipeline import WindowPipeline, check_detector_settings

    repository = found.repository
    plan = plan_windows(found.settings, stream, since, until, datetime.now(UTC))
    summary = RangeSummary(stream=stream, planned=plan.due, not_due=plan.not_due, dry_run=dry_run)
    stored: set[datetime] = set()
    if plan.due:
        # Only the windows stored in the range are held (what the database has), never the
        # plan's keys.
        stored = {
            w.key.start
            for w in repository.get_windows(stream, since=plan.first, until=plan.due_end)
            if plan.holds(w.key)
        }
        summary.existing = len(stored)
        summary.samples = repository.count_samples(stream, plan.first, plan.due_end)
    todo = plan.due if recompute else plan.due - summary.existing
    if max_windows is not None and todo > max_windows:
        raise TooManyWindowsError(stream, todo, max_windows)
    if dry_run:
        summary.computed = todo  # what it would compute
        return summary
    store = found.stores.get(stream)
    if store is not None:
        check_detector_settings(found.settings, store, store.name)
    pipeline = WindowPipeline(found.settings, repository, found.stores, found.metrics)
    pipeline.restore(stream)  # older windows recomputed do not rewrite the risk history
    started = time.perf_counter()
    # The detector is replayed after a run of computed windows, not after each (the windows of
    # a run are computed in order, each from the state of the one before): one pass, not a
    # pass per window over every later one.
    unreplayed = None
    what = f"windows {stream}"
    progress(what, 0, todo)
    for key in plan.windows():
        if not recompute and key.start in stored:
            if unreplayed is not None:
                pipeline.replay_after(unreplayed)
                unreplayed = None
            continue
        result = unreplayed = pipeline.compute(key, replay=False)
        summary.computed += 1
        if result.status == "ok":
            summary.ok += 1
            summary.risk[int(result.risk_level)] += 1
        else:
            summary.insufficient += 1
        progress(what, summary.computed, todo)
    if unreplayed is not None:
        pipeline.replay_after(unreplayed)
    summary.seconds = time.perf_counter() - started
    return summary


def windows_touched(
    settings: Settings, spans: dict[str, list[datetime]]
) -> dict[str, tuple[datetime, datetime]]:
    """[first window start, last window end) per stream of the event times seen."""
    size = settings.windows.size
    return {
        stream: (window_start(first, size), window_start(last, size) + size)
        for stream, (first, last) in spans.items()
    }
