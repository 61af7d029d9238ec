"""The ingest service: sample, cap, and durably enqueue parsed records; keep late references.

``IngestService(settings, repository, metrics)`` is shared by the records API and the sidecar:

* :meth:`IngestService.submit` takes parsed records (see :mod:`monitor.ingest.parsing`) and
  returns :class:`SubmitResult` once the sampled ones are in the durable inbox. Sampling is
  per stream and deterministic on the record id, and a kept record carries the weight
  ``1 / sample_rate`` (:mod:`monitor.ingest.sampling`); the per-stream rate cap skips what is
  over it. All or nothing: when the inbox holds ``[ingest] max_inbox_depth`` records (or would,
  with this batch) it raises :class:`~monitor.errors.InboxFullError` and writes nothing; a
  storage failure raises :class:`~monitor.errors.StorageError` and writes nothing (one
  transaction). Outcomes are counted in ``mllm_monitor_records_total``.

  **A record id names one record; the first one kept wins.** A kept record whose id is already
  waiting in the inbox or embedded, or repeats an earlier record of the same call, is a
  *duplicate* (a retry, or the same id with different content): it is not stored again, it is
  counted ``{outcome="duplicate"}`` and reported in :attr:`SubmitResult.duplicate_ids`, so a
  caller that keys records by someone else's id (the sidecar, by the upstream's completion id)
  can tell. Ids are checked among the records the sampler keeps (a skipped id was never stored),
  before the rate cap (a duplicate takes no share of it). The check and the insert run under
  one lock per process; two replicas taking the same new id in the same instant can both
  enqueue it, and the embedding worker then stores the first (samples are idempotent per id).
* :meth:`IngestService.resolve_images` fetches the http(s) image URLs of parsed records under
  the SSRF rules of :mod:`monitor.ingest.image_urls` and validates the images; records must
  go through it before :meth:`submit` (which refuses unresolved URLs).
* :meth:`IngestService.add_references` keeps late reference answers. A record id is known when
  its record waits in the inbox or is embedded (a sample); the reference is stored either way
  and joined when the record is embedded (the embedding workers resolve pending references).
  An id that the deterministic sampler left out of its stream (the item's ``stream``, or every
  configured stream when none is given) is skipped quietly: its record was never kept. Any
  other unknown id raises :class:`~monitor.errors.UnknownRecordError` before anything is stored.
  A record id holds at most ``[ingest] max_references_per_record`` references in all (a
  corrected answer or two, not a flood): a request that would take an id past it is refused
  whole (:class:`~monitor.errors.InvalidInputError` naming the reference that passes it,
  a 422) and nothing of it is stored; the references already kept stay as they are.

The inbox depth is counted at most once a second (plus what this process enqueued since), and
again whenever the estimate comes near the limit; with several replicas the limit is therefore
soft by at most one second of traffic.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from starlette.concurrency import run_in_threadpool

from monitor.config import Settings
from monitor.errors import InboxFullError, InvalidInputError, UnknownRecordError
from monitor.ingest.image_urls import ImageFetcher
from monitor.ingest.parsing import ReferenceItem, validate_image
from monitor.ingest.sampling import TokenBucket, is_sampled, sampling_weight
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.store.repository import Repository

DEPTH_RECOUNT_SECONDS = 1.0
MAX_PARALLEL_FETCHES = 8


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """``accepted``: valid records taken; ``sampled``: those now durable in the inbox;
    ``duplicate_ids``: ids of the kept records not stored because their id was known already
    (in the callers' order, once per repeat); ``skipped``: the rest (sampling, rate cap)."""

    accepted: int
    sampled: int
    ids: list[str]
    duplicate_ids: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_ids)

    @property
    def skipped(self) -> int:
        return self.accepted - self.sampled - self.duplicates


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """Late references stored for embedded records (joined), for records still in the inbox
    (pending), and left out because their record was never sampled (skipped)."""

    joined: int
    pending: int
    skipped: int


class IngestService:
    """Sampling, rate caps and the durable inbox, for every way records come in."""

    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        metrics: MonitorMetrics,
        *,
        fetcher: ImageFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.fetcher = fetcher or ImageFetcher(
            settings.ingest, max_bytes=settings.encoders.image.max_bytes
        )
        self._rates = {s.name: s.sample_rate for s in settings.streams}
        self._buckets = {
            s.name: TokenBucket(s.max_records_per_second, clock=clock)
            for s in settings.streams
            if s.max_records_per_second > 0
        }
        self._clock = clock
        self._max_depth = settings.ingest.max_inbox_depth
        self._max_references = settings.ingest.max_references_per_record
        self._retry_after = settings.ingest.retry_after.total_seconds()
        self._lock = threading.Lock()
        self._depth_estimate = 0
        self._depth_counted_at = -math.inf

    # -- records ------------------------------------------------------------------------------

    def submit(self, records: Sequence[TrafficRecord]) -> SubmitResult:
        """Sample, drop duplicates, cap and enqueue; returns once the kept records are durable."""
        for i, record in enumerate(records):
            if record.stream not in self._rates:
                raise InvalidInputError(f"unknown stream {record.stream!r}", field=f"[{i}].stream")
            if record.image_url is not None:
                raise InvalidInputError(
                    "image URL not fetched: pass records through resolve_images first",
                    field=f"[{i}].image",
                )
        kept, skipped = self._sample(records)
        with self._lock:  # between looking ids up and enqueueing them, within this process
            fresh, duplicates = self._drop_duplicates(records, kept)
            granted = self._cap(fresh)
            # the callers' order (positions, not ids: a duplicate id is no longer in the list)
            to_enqueue = sorted(
                (item for stream_items in granted.values() for item in stream_items),
                key=lambda item: item[0],
            )
            try:
                self._enqueue_locked([record for _, record in to_enqueue])
            except BaseException:
                for stream, stream_items in granted.items():
                    if stream in self._buckets:
                        self._buckets[stream].give_back(len(stream_items))
                raise
        for stream, stream_items in granted.items():
            self.metrics.count_records(stream, "sampled", len(stream_items))
            skipped[stream] = skipped.get(stream, 0) + len(fresh[stream]) - len(stream_items)
        for stream, count in skipped.items():
            self.metrics.count_records(stream, "skipped", count)
        for position in duplicates:
            self.metrics.count_records(records[position].stream, "duplicate")
        for record in records:
            if record.image_dropped:
                self.metrics.images_dropped.labels(stream=record.stream).inc()
        return SubmitResult(
            accepted=len(records),
            sampled=len(to_enqueue),
            ids=[r.id for r in records],
            duplicate_ids=[records[position].id for position in duplicates],
        )

    def _drop_duplicates(
        self, records: Sequence[TrafficRecord], kept: dict[str, list[tuple[int, TrafficRecord]]]
    ) -> tuple[dict[str, list[tuple[int, TrafficRecord]]], list[int]]:
        """``kept`` without the records whose id is known (stored, or earlier in this call),
        and the positions of those duplicates in the callers' order."""
        candidates = sorted(item for stream_items in kept.values() for item in stream_items)
        if not candidates:
            return kept, []
        known = self.repository.locate_records([record.id for _, record in candidates])
        seen: set[str] = set(known)
        duplicates: list[int] = []
        for position, record in candidates:
            if record.id in seen:
                duplicates.append(position)
            seen.add(record.id)
        if not duplicates:
            return kept, []
        dropped = set(duplicates)
        fresh = {
            stream: [item for item in stream_items if item[0] not in dropped]
            for stream, stream_items in kept.items()
        }
        return fresh, duplicates

    def _sample(
        self, records: Sequence[TrafficRecord]
    ) -> tuple[dict[str, list[tuple[int, TrafficRecord]]], dict[str, int]]:
        """Kept records by stream, each with its position in ``records``; skipped counts."""
        kept: dict[str, list[tuple[int, TrafficRecord]]] = {}
        skipped: dict[str, int] = {}
        for position, record in enumerate(records):
            rate = self._rates[record.stream]
            if is_sampled(record.id, rate):
                weighted = replace(record, sampling_weight=sampling_weight(rate))
                kept.setdefault(record.stream, []).append((position, weighted))
            else:
                skipped[record.stream] = skipped.get(record.stream, 0) + 1
        return kept, skipped

    def _cap(
        self, kept: dict[str, list[tuple[int, TrafficRecord]]]
    ) -> dict[str, list[tuple[int, TrafficRecord]]]:
        granted: dict[str, list[tuple[int, TrafficRecord]]] = {}
        for stream, stream_items in kept.items():
            bucket = self._buckets.get(stream)
            allowed = len(stream_items) if bucket is None else bucket.take(len(stream_items))
            granted[stream] = stream_items[:allowed]
        return granted

    def _enqueue_locked(self, records: list[TrafficRecord]) -> None:
        """Enqueue under ``self._lock`` (held by the caller), within the inbox depth limit."""
        if not records:
            return
        now = self._clock()
        stale = now - self._depth_counted_at > DEPTH_RECOUNT_SECONDS
        if stale or self._depth_estimate + len(records) > self._max_depth:
            self._count_depth(now)
        if self._depth_estimate + len(records) > self._max_depth:
            raise InboxFullError(
                f"the inbox holds {self._depth_estimate:,} records; this batch of "
                f"{len(records):,} would pass its limit of {self._max_depth:,} "
                "([ingest] max_inbox_depth): retry later",
                retry_after=self._retry_after,
            )
        self.repository.enqueue(records)
        self._depth_estimate += len(records)

    def _count_depth(self, now: float) -> None:
        self._depth_estimate = self.repository.inbox_depth()
        self._depth_counted_at = now
        self.metrics.inbox_depth.set(self._depth_estimate)

    def refresh_inbox_depth(self) -> int:
        """Count the inbox now and update the ``inbox_depth`` gauge (the /metrics scrape)."""
        with self._lock:
            self._count_depth(self._clock())
            return self._depth_estimate

    async def resolve_images(
        self, records: Sequence[TrafficRecord], *, fields: Sequence[str] | None = None
    ) -> list[TrafficRecord]:
        """Records with their http(s) image URLs fetched and validated (``image_url`` cleared).

        ``fields`` names each record for error messages (default ``records[i].image``)."""
        pending = [i for i, record in enumerate(records) if record.image_url is not None]
        if not pending:
            return list(records)
        names = (
            list(fields)
            if fields is not None
            else [f"records[{i}].image" for i in range(len(records))]
        )
        gate = asyncio.Semaphore(MAX_PARALLEL_FETCHES)

        async def fetch(i: int) -> bytes:
            url = records[i].image_url
            assert url is not None
            async with gate:
                data = await self.fetcher.fetch(url, field=names[i])
            return await run_in_threadpool(
                validate_image, data, settings=self.settings, field=names[i]
            )

        results = await asyncio.gather(*(fetch(i) for i in pending), return_exceptions=True)
        resolved = list(records)
        for i, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            resolved[i] = replace(records[i], image=result, image_url=None)
        return resolved

    # -- late references ----------------------------------------------------------------------

    def add_references(
        self, items: Sequence[ReferenceItem | tuple[str, str]], *, batch: bool = True
    ) -> ReferenceResult:
        """Keep late references for known records (all known, or nothing is stored)."""
        refs = [item if isinstance(item, ReferenceItem) else ReferenceItem(*item) for item in items]
        located = self.repository.locate_records([ref.id for ref in refs])
        keep: list[tuple[ReferenceItem, str]] = []
        skipped = 0
        for i, ref in enumerate(refs):
            where = located.get(ref.id)
            if where is not None:
                keep.append((ref, where))
            elif self._never_sampled(ref):
                skipped += 1
            else:
                self.metrics.late_references.labels(outcome="unknown").inc()
                raise UnknownRecordError(
                    f"no record {ref.id!r} is waiting or embedded: send the record first",
                    field=f"references[{i}].id" if batch else "id",
                )
        over = self.repository.add_late_references(
            [(ref.id, ref.text) for ref, _ in keep], max_per_record=self._max_references
        )
        if over:
            raise self._too_many_references(refs, over, batch=batch)
        joined = sum(1 for _, where in keep if where == "sample")
        pending = len(keep) - joined
        self.metrics.late_references.labels(outcome="joined").inc(joined)
        self.metrics.late_references.labels(outcome="pending").inc(pending)
        return ReferenceResult(joined=joined, pending=pending, skipped=skipped)

    def _too_many_references(
        self, refs: Sequence[ReferenceItem], over: dict[str, int], *, batch: bool
    ) -> InvalidInputError:
        """The error naming the first reference that takes its id past the bound."""
        limit = self._max_references
        held = dict(over)
        for ref in refs:  # what was stored before this request: the total less this request's
            if ref.id in held:
                held[ref.id] -= 1
        for i, ref in enumerate(refs):
            if ref.id in held:
                held[ref.id] += 1
                if held[ref.id] > limit:
                    shown = ref.id if len(ref.id) <= 64 else ref.id[:64] + "..."
                    return InvalidInputError(
                        f"record {shown!r} would hold {over[ref.id]:,} references, over the "
                        f"limit of {limit:,} per record ([ingest] max_references_per_record); "
                        "nothing of this request was stored",
                        field=f"references[{i}].id" if batch else "id",
                    )
        raise AssertionError("the store reported an id over the bound that was not sent")

    def _never_sampled(self, ref: ReferenceItem) -> bool:
        streams = [ref.stream] if ref.stream is not None else list(self._rates)
        return all(not is_sampled(ref.id, self._rates[stream]) for stream in streams)
