"""Window results and risk transitions.

A window and the risk transition it causes are written in one transaction
(:meth:`Windows.store_window`): a failure between the two writes loses neither alone, and
the level a transition starts from is read inside that transaction, under a per-stream lock
(PostgreSQL: the stream's row, ``FOR NO KEY UPDATE``, which sample inserts referencing the
stream do not wait for; SQLite: ``BEGIN IMMEDIATE`` already serialises writers), so two
writers racing on one stream still leave one chain (each transition starts where the one
before it ended).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, or_, select, update
from sqlalchemy.orm import aliased

from monitor.records import (
    WINDOW_TERMS,
    DetectorReading,
    RiskLevel,
    TermValues,
    WindowKey,
    WindowResult,
)
from monitor.store._base import Database, Streams
from monitor.store.models import (
    LateReference,
    RiskTransition,
    Sample,
    Stream,
    Window,
)
from monitor.store.types import (
    RiskTransitionEntry,
    StoredWindow,
    WindowLocation,
    as_utc,
)

_WINDOW_KEY = ("stream_id", "window_start", "window_end")


class Windows:
    """The windows part of the repository: window results and the risk-transition log."""

    def __init__(self, db: Database, streams: Streams) -> None:
        self._db = db
        self._streams = streams

    def upsert_window(self, result: WindowResult) -> str:
        """Store a window result; the same (stream, start, end) updates the same row. The
        stream's risk history is left alone (:meth:`store_window` moves it too).

        Returns the window's id (stable across recomputations)."""
        stream_id = self._streams.ensure(result.key.stream)
        with self._db.write("storing a window") as conn:
            return str(self._upsert(conn, result, stream_id))

    def store_window(self, result: WindowResult, *, reason: str = "") -> StoredWindow:
        """Store a window result and the risk transition it causes, in one transaction.

        The window moves the stream's level only when it is sufficient and the newest
        sufficient window of its stream (an older window recomputed leaves the history alone).
        It causes at most one transition: a recomputation with another level updates the
        window's own transition (or removes it when the window no longer changes the level),
        never adds a second one. ``reason`` is the transition's."""
        stream_id = self._streams.ensure(result.key.stream)
        with self._db.write("storing a window") as conn:
            # The lock first, so every writer of the stream takes its locks in one order.
            conn.execute(
                select(Stream.id).where(Stream.id == stream_id).with_for_update(key_share=True)
            )
            window_id = self._upsert(conn, result, stream_id)
            before, after = self._move_risk(conn, stream_id, window_id, result, reason)
        return StoredWindow(id=str(window_id), level_before=before, level_after=after)

    def _upsert(self, conn: Connection, result: WindowResult, stream_id: int) -> int:
        values = _window_values(result, stream_id)
        changed = {k: v for k, v in values.items() if k not in _WINDOW_KEY}
        stmt = (
            self._db.insert(Window)
            .values(**values)
            .on_conflict_do_update(index_elements=list(_WINDOW_KEY), set_=changed)
            .returning(Window.id)
        )
        return int(conn.execute(stmt).scalar_one())

    def _move_risk(
        self,
        conn: Connection,
        stream_id: int,
        window_id: int,
        result: WindowResult,
        reason: str,
    ) -> tuple[RiskLevel, RiskLevel]:
        """Inside store_window's transaction, under the stream's lock: the transition (if any)
        that ``result`` causes. Returns the stream's level before and after."""
        last = conn.execute(
            select(RiskTransition.id, RiskTransition.at, RiskTransition.to_level)
            .where(RiskTransition.stream_id == stream_id)
            .order_by(RiskTransition.at.desc(), RiskTransition.id.desc())
            .limit(1)
        ).first()
        current = RiskLevel(last.to_level) if last is not None else RiskLevel.OK
        if result.status != "ok":
            return current, current  # insufficient windows never move the level
        newest = conn.execute(
            select(func.max(Window.window_start)).where(
                Window.stream_id == stream_id, Window.status == "ok"
            )
        ).scalar_one()
        if newest is not None and as_utc(newest) > as_utc(result.key.start):
            return current, current  # an older window: the level follows the newest one
        own = conn.execute(
            select(RiskTransition.id, RiskTransition.from_level).where(
                RiskTransition.window_id == window_id
            )
        ).first()
        if own is not None and last is not None and own.id != last.id:
            return current, current  # history went on after this window's transition
        prior = RiskLevel(own.from_level) if own is not None else current
        target = result.risk_level
        if target == current:
            return current, current
        # Never before the transition it follows: the history's order is the chain's order.
        at = max(as_utc(result.computed_at), as_utc(last.at)) if last else result.computed_at
        if own is None:
            conn.execute(
                self._db.insert(RiskTransition).values(
                    stream_id=stream_id,
                    window_id=window_id,
                    at=as_utc(at),
                    from_level=int(prior),
                    to_level=int(target),
                    reason=reason,
                )
            )
        elif target == prior:  # the recomputed window no longer changes the level
            conn.execute(delete(RiskTransition).where(RiskTransition.id == own.id))
        else:
            conn.execute(
                update(RiskTransition)
                .where(RiskTransition.id == own.id)
                .values(to_level=int(target), at=as_utc(at), reason=reason)
            )
        return current, target

    def get_window(self, window_id: str) -> WindowResult | None:
        try:
            key = int(window_id)
        except ValueError:
            return None
        with self._db.read("reading a window") as conn:
            row = conn.execute(_window_select().where(Window.id == key)).first()
            return _window_result(row) if row is not None else None

    def get_windows(
        self, stream: str, since: datetime | None = None, until: datetime | None = None
    ) -> list[WindowResult]:
        """Windows of ``stream`` that overlap [since, until), oldest first."""
        with self._db.read("listing windows") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return []
            stmt = _window_select().where(Window.stream_id == stream_id)
            if since is not None:
                stmt = stmt.where(Window.window_end > as_utc(since))
            if until is not None:
                stmt = stmt.where(Window.window_start < as_utc(until))
            rows = conn.execute(stmt.order_by(Window.window_start)).all()
            return [_window_result(row) for row in rows]

    def list_windows(
        self,
        streams: Sequence[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[WindowResult]:
        """Windows of each of ``streams`` that overlap [since, until), by stream then start."""
        return [w for stream in streams for w in self.get_windows(stream, since, until)]

    def recent_windows(
        self, stream: str, before: datetime, limit: int, *, status: str | None = "ok"
    ) -> list[WindowResult]:
        """The last ``limit`` windows of ``stream`` starting before ``before`` (of ``status``;
        None: any), oldest first. What the risk rule's k-of-m count reads."""
        if limit < 1:
            return []
        with self._db.read("listing recent windows") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return []
            stmt = _window_select().where(
                Window.stream_id == stream_id, Window.window_start < as_utc(before)
            )
            if status is not None:
                stmt = stmt.where(Window.status == status)
            rows = conn.execute(stmt.order_by(Window.window_start.desc()).limit(limit)).all()
            return [_window_result(row) for row in reversed(rows)]

    def next_windows(
        self, stream: str, after: datetime, limit: int, *, status: str | None = "ok"
    ) -> list[WindowResult]:
        """The first ``limit`` windows of ``stream`` starting after ``after`` (of ``status``;
        None: any), oldest first: those whose k-of-m count reads the window at ``after``."""
        if limit < 1:
            return []
        with self._db.read("listing next windows") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return []
            stmt = _window_select().where(
                Window.stream_id == stream_id, Window.window_start > as_utc(after)
            )
            if status is not None:
                stmt = stmt.where(Window.status == status)
            rows = conn.execute(stmt.order_by(Window.window_start).limit(limit)).all()
            return [_window_result(row) for row in rows]

    def last_window_end(self, stream: str) -> datetime | None:
        """End of the stream's newest computed window; None before the first."""
        with self._db.read("reading the last window") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return None
            end = conn.execute(
                select(func.max(Window.window_end)).where(Window.stream_id == stream_id)
            ).scalar_one_or_none()
            return as_utc(end) if end is not None else None

    def earliest_sample_time(self, stream: str) -> datetime | None:
        """Event time of the stream's oldest stored sample; None without samples."""
        with self._db.read("reading the earliest sample") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return None
            first = conn.execute(
                select(func.min(Sample.event_time)).where(Sample.stream_id == stream_id)
            ).scalar_one_or_none()
            return as_utc(first) if first is not None else None

    def last_computed_at(self, stream: str | None = None) -> datetime | None:
        """When the newest window computation (of ``stream``, or of any stream) started; None
        before the first."""
        with self._db.read("reading the last computation") as conn:
            newest = select(func.max(Window.computed_at))
            if stream is not None:
                stream_id = self._streams.find(conn, stream)
                if stream_id is None:
                    return None
                newest = newest.where(Window.stream_id == stream_id)
            moment = conn.execute(newest).scalar_one_or_none()
            return as_utc(moment) if moment is not None else None

    def stale_locations(self, since: datetime) -> list[WindowLocation]:
        """Where data changed after its window was computed, for changes at or after ``since``:
        samples stored, or late references resolved, after the computation of the window that
        holds them (or with no window holding them yet), and windows that hold more samples now
        than they were computed with. The scheduler maps these to windows and recomputes the
        due ones. One location per (stream, event time)."""
        moment = as_utc(since)
        covering = and_(
            Window.stream_id == Sample.stream_id,
            Window.window_start <= Sample.event_time,
            Window.window_end > Sample.event_time,
        )
        late_samples = (
            select(Stream.name, Sample.event_time)
            .select_from(Sample)
            .join(Stream, Stream.id == Sample.stream_id)
            .outerjoin(Window, covering)
            .where(
                Sample.created_at >= moment,
                or_(Window.id.is_(None), Window.computed_at < Sample.created_at),
            )
        )
        late_references = (
            select(Stream.name, Sample.event_time)
            .select_from(LateReference)
            .join(Sample, Sample.id == LateReference.record_id)
            .join(Stream, Stream.id == Sample.stream_id)
            .outerjoin(Window, covering)
            .where(
                LateReference.resolved_at >= moment,
                or_(Window.id.is_(None), Window.computed_at < LateReference.resolved_at),
            )
        )
        # A window read while a sample batch was being written (stamped, not yet committed)
        # looks newer than samples it never saw: its stored count, short of what its range
        # holds now, finds it (timestamps alone cannot: the stamp precedes the commit).
        held = aliased(Sample)
        holds_now = (
            select(func.count())
            .select_from(held)
            .where(
                held.stream_id == Window.stream_id,
                held.event_time >= Window.window_start,
                held.event_time < Window.window_end,
            )
            .correlate(Window)
            .scalar_subquery()
        )
        short_windows = (
            select(Stream.name, func.min(Sample.event_time))
            .select_from(Sample)
            .join(Stream, Stream.id == Sample.stream_id)
            .join(Window, covering)
            .where(Sample.created_at >= moment)
            .group_by(Stream.name, Window.id)
            .having(Window.n < holds_now)
        )
        with self._db.read("finding stale windows") as conn:
            found = {
                (row[0], as_utc(row[1]))
                for stmt in (late_samples, late_references)
                for row in conn.execute(stmt.distinct())
            }
            found |= {(row[0], as_utc(row[1])) for row in conn.execute(short_windows)}
        return [WindowLocation(stream=name, event_time=at) for name, at in sorted(found)]

    # -- risk state ---------------------------------------------------------------------------

    def record_risk_transition(
        self,
        stream: str,
        at: datetime,
        from_level: RiskLevel,
        to_level: RiskLevel,
        *,
        window_id: str | None = None,
        reason: str = "",
    ) -> int:
        stream_id = self._streams.ensure(stream)
        with self._db.write("recording a risk transition") as conn:
            return int(
                conn.execute(
                    self._db.insert(RiskTransition)
                    .values(
                        stream_id=stream_id,
                        window_id=int(window_id) if window_id is not None else None,
                        at=as_utc(at),
                        from_level=int(from_level),
                        to_level=int(to_level),
                        reason=reason,
                    )
                    .returning(RiskTransition.id)
                ).scalar_one()
            )

    def risk_transitions(
        self, stream: str, since: datetime | None = None
    ) -> list[RiskTransitionEntry]:
        with self._db.read("listing risk transitions") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return []
            stmt = select(RiskTransition.__table__).where(RiskTransition.stream_id == stream_id)
            if since is not None:
                stmt = stmt.where(RiskTransition.at >= as_utc(since))
            rows = conn.execute(stmt.order_by(RiskTransition.at, RiskTransition.id)).all()
            return [
                RiskTransitionEntry(
                    id=row.id,
                    stream=stream,
                    at=as_utc(row.at),
                    from_level=RiskLevel(row.from_level),
                    to_level=RiskLevel(row.to_level),
                    reason=row.reason,
                    window_id=str(row.window_id) if row.window_id is not None else None,
                )
                for row in rows
            ]

    def current_risk(self, stream: str) -> RiskLevel:
        """The level of the stream's latest transition; OK when it never had one."""
        with self._db.read("reading the risk level") as conn:
            level = conn.execute(
                select(RiskTransition.to_level)
                .join(Stream, Stream.id == RiskTransition.stream_id)
                .where(Stream.name == stream)
                .order_by(RiskTransition.at.desc(), RiskTransition.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            return RiskLevel(level) if level is not None else RiskLevel.OK


def _window_values(result: WindowResult, stream_id: int) -> dict[str, Any]:
    interval = result.emid_interval
    detector = result.detector
    values: dict[str, Any] = {
        "stream_id": stream_id,
        "window_start": as_utc(result.key.start),
        "window_end": as_utc(result.key.end),
        "estimator_version": result.estimator_version,
        "status": result.status,
        "n": result.n,
        "n_images": result.n_images,
        "n_references": result.n_references,
        "risk_level": int(result.risk_level),
        "bound_scale_adjusted": result.bound_scale_adjusted,
        "bound_entropy_scaled": result.bound_entropy_scaled,
        "bound_complete": result.bound_complete,
        "emi_live": result.emi_live,
        "emi_id": result.emi_id,
        "emid": result.emid,
        "emid_low": interval[0] if interval is not None else None,
        "emid_high": interval[1] if interval is not None else None,
        "ood_fraction": result.ood_fraction,
        "ood_threshold": result.ood_threshold,
        "jsd_mode": result.jsd_mode,
        "bound_p_value": result.bound_p_value,
        "bound_threshold": result.bound_threshold,
        "bound_significant": result.bound_significant,
        "detector_score": detector.score if detector is not None else None,
        "detector_statistic": detector.statistic if detector is not None else None,
        "detector_threshold": detector.threshold if detector is not None else None,
        "detector_alarmed": detector.alarmed if detector is not None else None,
        "warning": result.warning,
        "computed_at": as_utc(result.computed_at),
    }
    for term in WINDOW_TERMS:
        values[f"jsd_{term}"] = getattr(result.jsd, term)
        values[f"p_{term}"] = getattr(result.p_values, term)
        values[f"threshold_{term}"] = getattr(result.thresholds, term)
    return values


def _window_select() -> Any:
    return select(Window.__table__, Stream.name.label("stream_name")).join(
        Stream, Stream.id == Window.stream_id
    )


def _terms(row: Row[Any], prefix: str) -> TermValues:
    return TermValues(**{term: getattr(row, f"{prefix}_{term}") for term in WINDOW_TERMS})


def _window_result(row: Row[Any]) -> WindowResult:
    interval = (
        (row.emid_low, row.emid_high)
        if row.emid_low is not None and row.emid_high is not None
        else None
    )
    return WindowResult(
        key=WindowKey(row.stream_name, as_utc(row.window_start), as_utc(row.window_end)),
        n=row.n,
        n_images=row.n_images,
        n_references=row.n_references,
        status=row.status,
        risk_level=RiskLevel(row.risk_level),
        estimator_version=row.estimator_version,
        computed_at=as_utc(row.computed_at),
        id=str(row.id),
        jsd=_terms(row, "jsd"),
        p_values=_terms(row, "p"),
        thresholds=_terms(row, "threshold"),
        bound_scale_adjusted=row.bound_scale_adjusted,
        bound_entropy_scaled=row.bound_entropy_scaled,
        bound_complete=bool(row.bound_complete),
        emi_live=row.emi_live,
        emi_id=row.emi_id,
        emid=row.emid,
        emid_interval=interval,
        ood_fraction=row.ood_fraction,
        jsd_mode=row.jsd_mode,
        bound_p_value=row.bound_p_value,
        bound_threshold=row.bound_threshold,
        bound_significant=row.bound_significant,
        ood_threshold=row.ood_threshold,
        detector=_detector(row),
        warning=row.warning,
    )


def _detector(row: Row[Any]) -> DetectorReading | None:
    """The stored detector reading; None when the window has none (no detector then, or a
    window stored before the detector existed)."""
    if row.detector_statistic is None or row.detector_threshold is None:
        return None
    return DetectorReading(
        score=row.detector_score,
        statistic=float(row.detector_statistic),
        threshold=float(row.detector_threshold),
        alarmed=bool(row.detector_alarmed),
    )
