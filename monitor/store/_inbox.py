"""The durable inbox: accepted records wait here, claimed under a lease, until embedded.

A record is durable once :meth:`Inbox.enqueue` returns. Workers :meth:`claim` batches
under a lease and :meth:`renew` it while they work; a worker that crashes simply lets its
lease run out, and its records become claimable again; one whose batch failed gives it back at
once (:meth:`release`). Worker ids are unique per process (host, pid, random), so one process
never mistakes another's claims, its own predecessor's included, for its own. :meth:`ack`
deletes only what the acking worker still holds, so a record whose lease passed to another
worker is acknowledged once, by that worker.

Claims are atomic on both backends: PostgreSQL takes rows with ``FOR UPDATE SKIP LOCKED``
(workers never wait on each other), SQLite runs the claim as one UPDATE in a
``BEGIN IMMEDIATE`` transaction (one writer at a time, so two claims cannot overlap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Update, delete, func, insert, or_, select, update

from monitor.records import TrafficRecord
from monitor.store._base import ID_BATCH, Database, batched
from monitor.store.models import InboxFailure, InboxItem
from monitor.store.types import (
    InboxEntry,
    InboxFailureEntry,
    as_utc,
    record_from_json,
    record_to_json,
)


class Inbox:
    """The inbox part of the repository."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue(
        self, records: Sequence[TrafficRecord], *, received_at: datetime | None = None
    ) -> list[int]:
        """Store accepted records durably; returns their inbox ids in the records' order."""
        if not records:
            return []
        now = self._db.now(received_at)
        rows = [
            {
                "record_id": record.id,
                "stream": record.stream,
                "payload": record_to_json(record),
                "received_at": now,
                "claimed_by": None,
                "lease_until": None,
                "attempts": 0,
            }
            for record in records
        ]
        with self._db.write("enqueueing records") as conn:
            result = conn.execute(
                insert(InboxItem).returning(InboxItem.id, sort_by_parameter_order=True), rows
            )
            return list(result.scalars())

    def claim(
        self,
        worker_id: str,
        *,
        limit: int = 32,
        lease: timedelta = timedelta(minutes=5),
        now: datetime | None = None,
    ) -> list[InboxEntry]:
        """Take up to ``limit`` unclaimed (or lease-expired) records, oldest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        moment = self._db.now(now)
        until = moment + lease
        stmt = claim_statement(worker_id, limit=limit, now=moment, lease_until=until)
        with self._db.write("claiming inbox records") as conn:
            rows = conn.execute(stmt).all()
        entries = [
            InboxEntry(
                id=row.id,
                record=record_from_json(row.payload),
                received_at=as_utc(row.received_at),
                attempts=row.attempts,
                lease_until=until,
            )
            for row in rows
        ]
        return sorted(entries, key=lambda entry: entry.id)

    def renew(
        self,
        item_ids: Sequence[int],
        worker_id: str,
        *,
        lease: timedelta,
        now: datetime | None = None,
    ) -> int:
        """Extend the lease of records this worker still holds to ``now + lease`` (a batch in
        progress); returns how many it still held."""
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        until = self._db.now(now) + lease
        renewed = 0
        with self._db.write("renewing inbox leases") as conn:
            for chunk in batched(list(item_ids), ID_BATCH):
                result = conn.execute(
                    update(InboxItem)
                    .where(InboxItem.id.in_(chunk), InboxItem.claimed_by == worker_id)
                    .values(lease_until=until)
                )
                renewed += result.rowcount
        return renewed

    def ack(self, item_ids: Sequence[int], worker_id: str) -> int:
        """Delete processed records this worker still holds; returns how many it held."""
        with self._db.write("acknowledging inbox records") as conn:
            return self.ack_in(conn, item_ids, worker_id)

    def ack_in(self, conn: Connection, item_ids: Sequence[int], worker_id: str) -> int:
        """:meth:`ack` inside the caller's transaction (samples stored and acked at once)."""
        done = 0
        for chunk in batched(list(item_ids), ID_BATCH):
            result = conn.execute(
                delete(InboxItem).where(InboxItem.id.in_(chunk), InboxItem.claimed_by == worker_id)
            )
            done += result.rowcount
        return done

    def release(self, item_ids: Sequence[int], worker_id: str) -> int:
        """Give claimed records back unprocessed (shutdown, or a batch that failed)."""
        released = 0
        with self._db.write("releasing inbox records") as conn:
            for chunk in batched(list(item_ids), ID_BATCH):
                result = conn.execute(
                    update(InboxItem)
                    .where(InboxItem.id.in_(chunk), InboxItem.claimed_by == worker_id)
                    .values(claimed_by=None, lease_until=None)
                )
                released += result.rowcount
        return released

    def move_aside(self, reasons: Mapping[int, str], worker_id: str) -> int:
        """Take records this worker holds out of the inbox for good (they cannot be embedded),
        keeping their ids, streams and reasons in ``inbox_failures``; returns how many it held."""
        moved = 0
        now = self._db.now()
        with self._db.write("moving failed records aside") as conn:
            for chunk in batched(list(reasons), ID_BATCH):
                held = conn.execute(
                    select(
                        InboxItem.id,
                        InboxItem.record_id,
                        InboxItem.stream,
                        InboxItem.attempts,
                        InboxItem.received_at,
                    ).where(InboxItem.id.in_(chunk), InboxItem.claimed_by == worker_id)
                ).all()
                if not held:
                    continue
                conn.execute(
                    insert(InboxFailure),
                    [
                        {
                            "record_id": row.record_id,
                            "stream": row.stream,
                            "reason": reasons[row.id],
                            "attempts": row.attempts,
                            "received_at": row.received_at,
                            "failed_at": now,
                        }
                        for row in held
                    ],
                )
                conn.execute(delete(InboxItem).where(InboxItem.id.in_([r.id for r in held])))
                moved += len(held)
        return moved

    def failures(self, limit: int = 100) -> list[InboxFailureEntry]:
        """Records moved aside, newest first."""
        with self._db.read("listing failed records") as conn:
            rows = conn.execute(
                select(InboxFailure.__table__).order_by(InboxFailure.id.desc()).limit(limit)
            ).all()
        return [
            InboxFailureEntry(
                record_id=row.record_id,
                stream=row.stream,
                reason=row.reason,
                attempts=row.attempts,
                received_at=as_utc(row.received_at),
                failed_at=as_utc(row.failed_at),
            )
            for row in rows
        ]

    def oldest_received(self) -> dict[str, datetime]:
        """Per stream, when its oldest record still in the inbox (waiting or being embedded)
        was received; streams with nothing in the inbox are absent."""
        with self._db.read("reading the inbox's oldest records") as conn:
            rows = conn.execute(
                select(InboxItem.stream, func.min(InboxItem.received_at)).group_by(InboxItem.stream)
            ).all()
        return {stream: as_utc(received) for stream, received in rows if received is not None}

    def depth(self) -> int:
        """Records waiting or in progress (the queue-depth gauge)."""
        with self._db.read("counting the inbox") as conn:
            return int(conn.execute(select(func.count()).select_from(InboxItem)).scalar_one())


def claim_statement(worker_id: str, *, limit: int, now: datetime, lease_until: datetime) -> Update:
    """The claim as one statement: lease the oldest free rows, returning them.

    ``SKIP LOCKED`` is what lets PostgreSQL workers claim side by side: rows another claim has
    locked but not yet committed are passed over instead of waited for (SQLite ignores the
    clause; its ``BEGIN IMMEDIATE`` serialises claims)."""
    free = (
        select(InboxItem.id)
        .where(or_(InboxItem.lease_until.is_(None), InboxItem.lease_until <= now))
        .order_by(InboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (
        update(InboxItem)
        .where(InboxItem.id.in_(free))
        .values(claimed_by=worker_id, lease_until=lease_until, attempts=InboxItem.attempts + 1)
        .returning(InboxItem.id, InboxItem.payload, InboxItem.received_at, InboxItem.attempts)
    )
