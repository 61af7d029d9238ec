"""The window scheduler: the only module that imports APScheduler.

    WindowScheduler(settings, repository, stores, metrics, readiness=...).start() / .stop(timeout)

One APScheduler 3.x ``BackgroundScheduler`` job ticks every ``min(check_interval,
lock_timeout)`` (misfires coalesce into one run, never two at once). Each tick:

1. Leadership (:mod:`monitor.leadership`). A stream's windows are computed only by the holder
   of its lock: on PostgreSQL a lock per stream, the replicas sharing the streams evenly; on
   SQLite (or with ``scheduler.leadership = "single"``) one lock for every stream. Each tick
   takes free streams up to this replica's share (or the single lock), so when a replica dies
   the others take its streams over within about ``lock_timeout``. The holder re-checks a
   stream's lock before each window (one cheap query on the locks' own connection), so a
   replica whose locks went away without it dying (its PostgreSQL session dropped or
   terminated) stops before its next window and says so (log, gauge, readiness), while
   another takes over. A replica that cannot reach the database to ask for the lock reports
   "database unavailable" (not ready), not "standby".
2. Due windows, per stream: from the end of the last computed window (or, for a new stream,
   from the window of its earliest stored sample) up to the newest window whose end plus
   ``windows.lateness`` has passed; at most ``scheduler.max_catch_up`` of them (the newest).
   With ``scheduler.catch_up`` off, a new leader computes only the newest due window.
   A window is held back while the inbox still holds a record of its stream received before
   the window's due time (it may belong to the window: published now, the window would be
   short until recomputed), for at most twice ``workers.lease`` (a stuck backlog must not stop
   the windows).
3. Stale windows: windows whose data changed after they were computed (a sample stored late, a
   late reference resolved, both found by the repository) are recomputed, oldest first. With
   the drift detector (the default), the pipeline then replays the detector over the windows
   stored after each (their states and levels follow from it; their statistics stay). With the
   k-of-m rule (``alerts.hysteresis = "k/m"``), the next m - 1 sufficient windows stored after
   each, whose risk level reads it, are recomputed too.

Recomputing is idempotent (same key, same row), so a window computed twice across a leader
change is still one row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from monitor.compute import apply_compute_settings
from monitor.config import Settings
from monitor.errors import DatabaseUnavailableError, MonitorError, StorageError
from monitor.leadership import SingleLeader, scheduler_leadership
from monitor.metrics import MonitorMetrics
from monitor.pipeline import WindowPipeline
from monitor.protocols import LeaderLock, ReadinessBoard, SchedulerRepository, StoreView
from monitor.records import WindowKey
from monitor.timestamps import utcnow
from monitor.windows import due_windows, is_due, window_containing

log = logging.getLogger("monitor.scheduler")

# How far back the stale-window search looks beyond the previous pass (commit delays, clocks).
STALE_SLACK = timedelta(seconds=60)
# How often a pass over many streams looks at leadership again between streams.
REBALANCE_EVERY = timedelta(seconds=2)


class WindowScheduler:
    """Computes every stream's due and stale windows while this process holds the lock."""

    def __init__(
        self,
        settings: Settings,
        repository: SchedulerRepository,
        stores: Mapping[str, StoreView],
        metrics: MonitorMetrics,
        *,
        readiness: ReadinessBoard | None = None,
        clock: Callable[[], datetime] = utcnow,
        lock: LeaderLock | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.readiness = readiness
        self.clock = clock
        self.pipeline = WindowPipeline(settings, repository, stores, metrics, clock=clock)
        self.leadership = scheduler_leadership(settings, repository, lock=lock)
        self.streams = [s.name for s in settings.streams]
        self.led: tuple[str, ...] = ()  # the streams whose windows this replica computes
        self._stopping = threading.Event()
        self._running = threading.Lock()  # one pass at a time (ticks, run_pass)
        # Per led stream: where the next stale-window search starts.
        self._stale_since: dict[str, datetime] = {}
        self._lost_lock = False  # the last leadership ended by losing the lock
        self._lead_detail = "leader"  # readiness detail while leading
        self._unreachable = False  # the last try to take the lock could not reach the database
        self._scheduler: BackgroundScheduler | None = None
        self._compute_threads: set[int] = set()
        metrics.set_window_settings(
            settings.windows.size.total_seconds(), settings.windows.lateness.total_seconds()
        )
        self._set_ready(True, "starting")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.settings.scheduler
        interval = min(cfg.check_interval, cfg.lock_timeout).total_seconds()
        scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=max(interval, 0.05),
            id="windows",
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("window scheduler started", extra={"lock": self.leadership.description})

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the window in progress, stop ticking, release the lock."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._running.acquire(timeout=timeout):
            self._running.release()
        else:
            log.warning("a window computation did not finish in time", extra={"timeout": timeout})
        self._step_down()
        try:
            self.leadership.release()
        except Exception:
            log.exception("releasing the leader lock failed")

    # -- one tick --------------------------------------------------------------------------

    def tick(self) -> int:
        """Check leadership, then compute what is due and stale. Returns windows computed."""
        if self._stopping.is_set() or not self._running.acquire(blocking=False):
            return 0
        try:
            if threading.get_ident() not in self._compute_threads:
                # OpenMP thread counts are per calling thread: limit this job thread's too.
                apply_compute_settings(self.settings.compute)
                self._compute_threads.add(threading.get_ident())
            if not self._lead():
                return 0
            return self.run_pass(self.clock())
        except DatabaseUnavailableError as exc:
            log.error("window pass failed", extra={"error": str(exc)})
            self._set_ready(False, f"database unavailable: {exc}")
            return 0
        except MonitorError as exc:
            log.error("window pass failed", extra={"error": str(exc)})
            self._set_ready(False, f"last window pass failed: {exc}")
            return 0
        except Exception:
            log.exception("window pass failed")
            self._set_ready(False, "last window pass failed (see the log)")
            return 0
        finally:
            self._running.release()

    @property
    def is_leader(self) -> bool:
        """Whether this replica computes any stream's windows now."""
        return bool(self.led)

    @property
    def lock(self) -> LeaderLock:
        """The single leader lock (``scheduler.leadership = "single"``, or SQLite)."""
        if not isinstance(self.leadership, SingleLeader):
            raise AttributeError("per-stream leadership has no single leader lock")
        return self.leadership.lock

    def _lead(self) -> bool:
        """Take (and, per stream, balance) leadership; True while this replica leads a stream."""
        try:
            turn = self.leadership.lead()
        except StorageError as exc:
            # Not "standby": nobody may be leading, and this replica cannot know.
            if not self._unreachable:
                log.warning("cannot reach the database for the leader lock: %s", exc)
            self._unreachable = True
            self._step_down()
            self._set_ready(False, f"database unavailable: {exc}")
            return False
        self._unreachable = False
        if turn.lost:
            log.error(
                "leader lock lost: no longer computing windows",
                extra={"lock": self.leadership.description, "streams": list(turn.lost)},
            )
            self._lost_lock = True
        if not turn.streams:
            self._step_down()
            lost = "leader lock lost; " if self._lost_lock else ""
            self._set_ready(True, f"standby: {lost}{turn.detail}")
            return False
        self.led = turn.streams
        self._lost_lock = False
        self._lead_detail = turn.detail
        self.metrics.scheduler_leader.set(1)
        self.metrics.scheduler_streams_led.set(len(turn.streams))
        if turn.gained:  # else a failed pass stays reported until a pass succeeds
            self._set_ready(True, turn.detail)
        for stream in turn.gained:
            self._take_over(stream)
        if turn.gained:
            log.info(
                "leader lock taken: computing windows",
                extra={"lock": self.leadership.description, "streams": list(turn.gained)},
            )
        for stream in set(self._stale_since) - set(turn.streams):
            del self._stale_since[stream]  # given back to another replica
        return True

    def _take_over(self, stream: str) -> None:
        """A stream newly led: its detector state from the database, and a stale-window search
        from its last computation (the previous leader may have missed late samples)."""
        self.pipeline.restore(stream)
        last = self.repository.last_computed_at(stream)
        self._stale_since[stream] = last - STALE_SLACK if last is not None else self.clock()

    def _lose_lock(self, message: str) -> None:
        log.error(message, extra={"lock": self.leadership.description})
        self._lost_lock = True
        self._step_down()
        self._set_ready(True, "standby: leader lock lost")

    def _step_down(self) -> None:
        if self.led:
            self.led = ()
            self._stale_since.clear()
            self.metrics.scheduler_leader.set(0)
            self.metrics.scheduler_streams_led.set(0)

    def run_pass(self, now: datetime) -> int:
        """Compute every due window, then every stale one, of the streams this replica leads
        (the caller has taken leadership)."""
        computed = 0
        pass_started = self.clock()
        until = self.due_until(now)
        pending, looked = list(self.led), self.clock()
        passed: set[str] = set()  # streams this pass has taken up
        while pending:
            stream = pending.pop(0)
            passed.add(stream)
            if self.clock() - looked >= REBALANCE_EVERY:
                # A long pass (a catch-up) looks again between streams, so a replica that just
                # joined gets its share now, and a dead one's streams are taken over in this
                # pass, not after it.
                looked = self.clock()
                if not self._lead():
                    return computed
                pending += [s for s in self.led if s not in pending and s not in passed]
                if stream not in self.led:
                    continue  # given back to a replica that joined
            for key in self.due(stream, until.get(stream, now)):
                if not self._may_continue(stream):
                    return computed
                self.pipeline.compute(key)
                computed += 1
        since = [self._stale_since[s] for s in self.led if s in self._stale_since]
        if since:
            for key in self.stale(min(since), now, until=until):
                if key.stream not in self.led:
                    continue
                if not self._may_continue(key.stream):
                    return computed
                self.pipeline.compute(key)
                computed += 1
        for stream in self.led:
            self._stale_since[stream] = pass_started - STALE_SLACK
        if self.is_leader:
            self._set_ready(True, self._lead_detail)
        return computed

    def due_until(self, now: datetime) -> dict[str, datetime]:
        """Per stream with records in the inbox: windows due by this time are complete (every
        record received before the oldest one still waiting is stored); windows due later wait
        for the inbox, at most twice the workers' lease (a backlog must not stop windows)."""
        hold = 2 * self.settings.workers.lease
        return {
            stream: min(now, max(received, now - hold))
            for stream, received in self.repository.oldest_received().items()
        }

    def due(self, stream: str, now: datetime) -> list[WindowKey]:
        cfg, windows = self.settings.scheduler, self.settings.windows
        after = self.repository.last_window_end(stream)
        earliest = None if after is not None else self.repository.earliest_sample_time(stream)
        return due_windows(
            stream,
            now=now,
            size=windows.size,
            lateness=windows.lateness,
            after=after,
            earliest=earliest,
            limit=cfg.max_catch_up if cfg.catch_up else 1,
        )

    def stale(
        self, since: datetime, now: datetime, *, until: Mapping[str, datetime] | None = None
    ) -> list[WindowKey]:
        """Due windows whose data changed after they were computed, and, with the k-of-m
        rule, the stored windows whose risk level reads theirs (the next m - 1 sufficient ones:
        the rule skips insufficient windows), oldest first (the detector's later windows are
        replayed by the pipeline, not recomputed). A window never computed that is held for the
        inbox (``until``, see :meth:`due_until`) is left to :meth:`due`."""
        size, lateness = self.settings.windows.size, self.settings.windows.lateness
        keys = {
            window_containing(loc.stream, loc.event_time, size)
            for loc in self.repository.stale_locations(since)
            if loc.stream in self.streams
        }
        k_of_m = self.settings.alerts.hysteresis_k_of_m
        m = k_of_m[1] if k_of_m is not None else 1
        readers = {
            stored.key
            for key in keys
            for stored in self.repository.next_windows(key.stream, key.start, m - 1)
        }
        due = {k for k in keys | readers if is_due(k, now, lateness)}
        for stream, held_after in (until or {}).items():
            end = self.repository.last_window_end(stream)
            due -= {
                k
                for k in due
                if k.stream == stream
                and (end is None or k.start >= end)
                and not is_due(k, held_after, lateness)
            }
        return sorted(due)

    def _may_continue(self, stream: str) -> bool:
        """Before each window: stop on shutdown, and re-check the stream's lock (a window costs
        far more than the check; a lost lock must not compute even one more)."""
        if self._stopping.is_set():
            return False
        if not self.leadership.still_leads(stream):
            self._lose_lock("leader lock lost mid-pass: no longer computing windows")
            return False
        return True

    def _set_ready(self, ok: bool, detail: str) -> None:
        if self.readiness is not None:
            self.readiness.set("scheduler", ok, detail)
