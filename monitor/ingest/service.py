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
* :meth:`IngestService.resolve_images` fetches the http(s) image URLs of parsed records under
  the SSRF rules of :mod:`monitor.ingest.image_urls` and validates the images; records must
  go through it before :meth:`submit` (which refuses unresolved URLs).
* :meth:`IngestService.add_references` keeps late reference answers. A record id is known when
  its record waits in the inbox or is embedded (a sample); the reference is stored either way
  and joined when the record is embedded (the embedding workers resolve pending references).
  An id that the deterministic sampler left out of its stream (the item's ``stream``, or every
  configured stream when none is given) is skipped quietly: its record was never kept. Any
  other unknown id raises :class:`~monitor.errors.UnknownRecordError` before anything is stored.

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
from dataclasses import dataclass, replace

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
    """``accepted``: valid records taken; ``sampled``: those now durable in the inbox."""

    accepted: int
    sampled: int
    ids: list[str]

    @property
    def skipped(self) -> int:
        return self.accepted - self.sampled


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
        self._retry_after = settings.ingest.retry_after.total_seconds()
        self._lock = threading.Lock()
        self._depth_estimate = 0
        self._depth_counted_at = -math.inf

    # -- records ------------------------------------------------------------------------------

    def submit(self, records: Sequence[TrafficRecord]) -> SubmitResult:
        """Sample, cap and enqueue; returns once the kept records are durable."""
        for i, record in enumerate(records):
            if record.stream not in self._rates:
                raise InvalidInputError(f"unknown stream {record.stream!r}", field=f"[{i}].stream")
            if record.image_url is not None:
                raise InvalidInputError(
                    "image URL not fetched: pass records through resolve_images first",
                    field=f"[{i}].image",
                )
        positions = {record.id: i for i, record in enumerate(records)}
        kept, skipped = self._sample(records)
        granted = self._cap(kept)
        to_enqueue = [record for stream_records in granted.values() for record in stream_records]
        to_enqueue.sort(key=lambda record: positions[record.id])  # keep the callers' order
        try:
            self._enqueue(to_enqueue)
        except BaseException:
            for stream, stream_records in granted.items():
                if stream in self._buckets:
                    self._buckets[stream].give_back(len(stream_records))
            raise
        for stream, stream_records in granted.items():
            self.metrics.count_records(stream, "sampled", len(stream_records))
            skipped[stream] = skipped.get(stream, 0) + len(kept[stream]) - len(stream_records)
        for stream, count in skipped.items():
            self.metrics.count_records(stream, "skipped", count)
        return SubmitResult(
            accepted=len(records), sampled=len(to_enqueue), ids=[r.id for r in records]
        )

    def _sample(
        self, records: Sequence[TrafficRecord]
    ) -> tuple[dict[str, list[TrafficRecord]], dict[str, int]]:
        kept: dict[str, list[TrafficRecord]] = {}
        skipped: dict[str, int] = {}
        for record in records:
            rate = self._rates[record.stream]
            if is_sampled(record.id, rate):
                weighted = replace(record, sampling_weight=sampling_weight(rate))
                kept.setdefault(record.stream, []).append(weighted)
            else:
                skipped[record.stream] = skipped.get(record.stream, 0) + 1
        return kept, skipped

    def _cap(self, kept: dict[str, list[TrafficRecord]]) -> dict[str, list[TrafficRecord]]:
        granted: dict[str, list[TrafficRecord]] = {}
        for stream, stream_records in kept.items():
            bucket = self._buckets.get(stream)
            allowed = len(stream_records) if bucket is None else bucket.take(len(stream_records))
            granted[stream] = stream_records[:allowed]
        return granted

    def _enqueue(self, records: list[TrafficRecord]) -> None:
        if not records:
            return
        with self._lock:
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
        joined = pending = 0
        for ref, where in keep:
            self.repository.add_late_reference(ref.id, ref.text)
            if where == "sample":
                joined += 1
            else:
                pending += 1
        self.metrics.late_references.labels(outcome="joined").inc(joined)
        self.metrics.late_references.labels(outcome="pending").inc(pending)
        return ReferenceResult(joined=joined, pending=pending, skipped=skipped)

    def _never_sampled(self, ref: ReferenceItem) -> bool:
        streams = [ref.stream] if ref.stream is not None else list(self._rates)
        return all(not is_sampled(ref.id, self._rates[stream]) for stream in streams)
