"""Embedding workers: the durable inbox to stored samples, in batches.

    EmbeddingWorkers(settings, repository, encoders, stores, metrics, *, reference_model=None)
        .start()                  N threads ([workers] count), plus the reference-model sampler
        .stop(timeout)            finish the batch in hand, then stop
        .worker_ids               this object's worker ids: ``<host>-<pid>-<random>-embed-<n>``
        .run_once(worker_id)      one inbox batch; returns how many records it settled
        .resolve_late_references(limit)   embed references that arrived after their record

One batch: claim up to ``[workers] batch_size`` records under a lease; decode, embed and score
them (kNN OOD) into samples (:class:`~monitor.ingest.sample_embedding.SampleEmbedder`); store
samples and embeddings and acknowledge the inbox items in one transaction; offer the records
without a reference to the reference-model sampler. One worker a process also joins late
references (posted after their record was embedded) to their samples.

Failure handling:

* every worker id is unique to its process (host name, pid, random), so a restarted process
  never takes its predecessor's claims for its own, nor one replica another's;
* a batch is claimed under a short lease (``[workers] lease``, 30 s) that a heartbeat renews
  every third of it while the batch is in hand, so a slow batch is never taken over;
* a worker that dies mid-batch holds nothing for longer than the lease: it runs out and another
  worker claims the records again; samples are stored idempotently (by record id), so a record
  embedded twice is stored once;
* a record that cannot be embedded (an undecodable image, an embedding that is not finite) is
  moved aside with its reason (``Repository.move_aside``) and counted as ``failed``; the rest of
  its batch is stored;
* a record claimed more than ``[workers] max_attempts`` times (it crashed or stalled every
  worker that took it) is moved aside without another try;
* any other error (a failed sample write, an encoder failure) gives the batch back at once
  (``release``), so it is claimable again without waiting for the lease, and the loop backs
  off; when even that fails (the database is down) the lease runs out. Nothing is lost.

While a batch is in hand its records are in no window yet: a window whose due time passes
meanwhile is computed without them, and recomputed when their samples are stored (the
scheduler's stale-window pass). With the short lease that is seconds, not minutes.

``stores`` maps stream names (or reference-store names) to loaded reference stores; a stream
without one gets samples with no OOD score (:mod:`monitor.ingest.ood_scoring`). Encoders are
shared by all workers of the process and called under one lock; the other workers meanwhile
decode, score and write.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

from monitor.config import Settings
from monitor.embedding import EncoderSet
from monitor.errors import InvalidInputError, MonitorError
from monitor.ingest.ood_scoring import OodScorer
from monitor.ingest.sample_embedding import PreparedRecord, SampleEmbedder
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.reference.store import ReferenceStore
from monitor.store.repository import Repository
from monitor.store.types import InboxEntry, WindowLocation

log = logging.getLogger("monitor.ingest.worker")

# Longest pause between tries while the database (or anything else) keeps failing.
_MAX_BACKOFF_SECONDS = 30.0


class ReferenceSampler(Protocol):
    """What the workers need of the reference-model sampler (``monitor.ingest.reference_model``)."""

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def offer(self, record: TrafficRecord) -> bool: ...


def process_worker_id() -> str:
    """A prefix unique to this process and object: host name, pid and a random part (a pid
    alone repeats across containers and restarts). At most 80 characters (the inbox keeps
    128 for a worker id)."""
    host = socket.gethostname()[:48] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


class EmbeddingWorkers:
    """In-process embedding workers over one repository, one encoder set, and the stores."""

    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        encoders: EncoderSet,
        stores: Mapping[str, ReferenceStore],
        metrics: MonitorMetrics,
        *,
        reference_model: ReferenceSampler | None = None,
        on_reference: Callable[[WindowLocation], None] | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.encoders = encoders
        self.metrics = metrics
        self.reference_model = reference_model
        self.on_reference = on_reference  # a late reference changed this sample's window
        self.embedder = SampleEmbedder(settings, encoders, OodScorer(settings, stores))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        prefix = process_worker_id()
        self.worker_ids = [f"{prefix}-embed-{n}" for n in range(settings.workers.count)]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start ``[workers] count`` threads (and the reference-model sampler)."""
        if self._threads:
            return
        self._stop.clear()
        if self.reference_model is not None:
            self.reference_model.start()
        for n, worker_id in enumerate(self.worker_ids):
            thread = threading.Thread(
                target=self._loop, args=(worker_id, n == 0), name=f"embed-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self.worker_ids:
            log.info("embedding workers started", extra={"workers": self.worker_ids})

    def stop(self, timeout: float) -> None:
        """Let each worker finish its batch, then stop; gives up waiting after ``timeout``
        (an unfinished batch is retried after its lease)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("embedding workers still busy at shutdown", extra={"workers": alive})
        self._threads = []
        if self.reference_model is not None:
            self.reference_model.stop(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _loop(self, worker_id: str, resolves_references: bool) -> None:
        idle = self.settings.workers.poll_interval.total_seconds()
        backoff = idle
        while not self._stop.is_set():
            try:
                settled = self.run_once(worker_id)
                # One worker a process joins late references (others would only redo it).
                if resolves_references:
                    settled += self.resolve_late_references()
                backoff = idle
            except Exception as exc:  # never let a worker die: back off and try again
                level = logging.WARNING if isinstance(exc, MonitorError) else logging.ERROR
                log.log(level, "embedding worker failed; retrying", exc_info=True)
                backoff = min(_MAX_BACKOFF_SECONDS, max(backoff * 2, 0.1))
                self._stop.wait(backoff)
                continue
            if settled == 0:
                self._stop.wait(idle)

    # -- one batch -------------------------------------------------------------------------

    def run_once(self, worker_id: str) -> int:
        """Claim, embed, score, store and acknowledge one batch; returns records settled
        (stored or moved aside), 0 when the inbox had nothing to claim."""
        cfg = self.settings.workers
        entries = self.repository.claim(worker_id, limit=cfg.batch_size, lease=cfg.lease)
        if not entries:
            return 0
        try:
            with self._lease_renewed(entries, worker_id):
                return self._settle(entries, worker_id)
        except Exception:
            self._release(entries, worker_id)
            raise

    def _settle(self, entries: Sequence[InboxEntry], worker_id: str) -> int:
        cfg = self.settings.workers
        started = time.perf_counter()
        failed: dict[int, str] = {}
        work: list[PreparedRecord] = []
        for entry in entries:
            if entry.attempts > cfg.max_attempts:
                failed[entry.id] = (
                    f"gave up after {entry.attempts - 1} attempts (every worker that took it "
                    "crashed, stalled or failed to store it)"
                )
                continue
            try:
                work.append(self.embedder.prepare(entry.id, entry.record))
            except InvalidInputError as exc:
                failed[entry.id] = f"{type(exc).__name__}: {exc}"

        samples, embed_failures = self.embedder.embed(work)
        failed.update(embed_failures)
        if failed:
            self._move_aside(entries, failed, worker_id)
        stored_ids = [item.inbox_id for item in work if item.inbox_id not in failed]
        if samples:
            self.repository.add_samples(samples, ack=stored_ids, worker_id=worker_id)
        self.metrics.embed_batch_seconds.observe(time.perf_counter() - started)
        for sample in samples:
            if sample.stream in self.metrics.streams:
                self.metrics.embedded_records.labels(stream=sample.stream).inc()
        self._offer_references(work, failed)
        return len(entries)

    @contextmanager
    def _lease_renewed(self, entries: Sequence[InboxEntry], worker_id: str) -> Iterator[None]:
        """Renew the batch's lease every third of it until the block ends (a heartbeat thread:
        one embedding call can outlast a lease, and cannot be interrupted to renew it)."""
        lease = self.settings.workers.lease
        ids = [entry.id for entry in entries]
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(lease.total_seconds() / 3):
                try:
                    held = self.repository.renew(ids, worker_id, lease=lease)
                except Exception as exc:  # the next beat tries again; the lease may run out
                    log.warning("renewing the lease of a batch failed: %s", exc)
                    continue
                if held == 0 and not done.is_set():
                    log.warning("a batch's lease passed to another worker: %s", worker_id)

        thread = threading.Thread(target=heartbeat, name=f"lease-{worker_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _release(self, entries: Sequence[InboxEntry], worker_id: str) -> None:
        """Give a failed batch back at once (what is still held of it), not after its lease."""
        try:
            released = self.repository.release([entry.id for entry in entries], worker_id)
        except Exception as exc:  # the database is away too: the lease runs out instead
            log.warning("could not give back a failed batch; retried after its lease: %s", exc)
            return
        log.info("failed batch given back", extra={"worker": worker_id, "records": released})

    def _move_aside(
        self, entries: Sequence[InboxEntry], failed: Mapping[int, str], worker_id: str
    ) -> None:
        streams = {entry.id: entry.record.stream for entry in entries}
        moved = self.repository.move_aside(dict(failed), worker_id)
        for item_id, reason in failed.items():
            log.warning(
                "record moved aside",
                extra={"record_stream": streams[item_id], "inbox_id": item_id, "reason": reason},
            )
        for item_id in failed:
            self.metrics.count_records(streams[item_id], "failed")
        if moved < len(failed):
            log.info("some failed records were no longer held by %s", worker_id)

    def _offer_references(
        self,
        work: Sequence[PreparedRecord],
        failed: Mapping[int, str],
    ) -> None:
        if self.reference_model is None:
            return
        for item in work:
            if item.inbox_id in failed or item.record.reference is not None:
                continue
            try:
                self.reference_model.offer(item.record)
            except Exception:  # the sampler must never cost a stored sample
                log.exception("offering a record to the reference model failed")

    # -- late references ---------------------------------------------------------------------

    def resolve_late_references(self, limit: int | None = None) -> int:
        """Embed references that arrived after their record was embedded; returns how many."""
        pending = self.repository.pending_late_references(limit or self.settings.workers.batch_size)
        pending = [ref for ref in pending if ref.text is not None]
        if not pending:
            return 0
        vectors = self.embedder.embed_texts([ref.text or "" for ref in pending])
        for ref, vector in zip(pending, vectors, strict=True):
            where = self.repository.resolve_late_reference(ref.id, vector)
            if where is not None and self.on_reference is not None:
                self.on_reference(where)
        return len(pending)


__all__ = ["EmbeddingWorkers", "ReferenceSampler", "process_worker_id"]
