"""Embedding workers: the durable inbox to stored samples, in batches.

    EmbeddingWorkers(settings, repository, encoders, stores, metrics, *, reference_model=None)
        .start()                  N threads ([workers] count), plus the reference-model sampler
        .stop(timeout)            finish the batch in hand, then stop
        .worker_ids               this object's worker ids: ``<host>-<pid>-<random>-embed-<n>``
        .run_once(worker_id)      one inbox batch; returns how many records it settled
        .resolve_late_references(limit)   embed references that arrived after their record

One batch: claim up to ``[workers] batch_size`` records under a lease; decode images (safely,
in :mod:`monitor.embedding.images`); embed prompts, answers, references and images exactly as
the reference build embeds ID records (:func:`embed_records`); score each query x against the
stream's reference store (kNN OOD); store samples and embeddings and acknowledge the inbox items
in one transaction.

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
without one gets samples with no OOD score. Encoders are shared by all workers of the process
and called under one lock (tokenizers are not safe to share between threads, and torch already
uses every core for one batch); the other workers meanwhile decode, score and write.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from monitor.config import Settings
from monitor.embedding import EncoderSet, ImageLimits, decode_image, fuse
from monitor.errors import EncoderError, InvalidInputError, MonitorError
from monitor.metrics import MonitorMetrics
from monitor.records import TrafficRecord
from monitor.reference.store import ReferenceStore
from monitor.store.repository import Repository
from monitor.store.types import InboxEntry, NewSample, WindowLocation

log = logging.getLogger("monitor.ingest.worker")
Rows = npt.NDArray[np.float32]

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


def sample_fingerprint(encoders: EncoderSet) -> str:
    """The encoder fingerprint stored with each sample: image and text encoders together."""
    image = encoders.image.fingerprint if encoders.image is not None else "none"
    return f"{image}+{encoders.text.fingerprint}"


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
        self.fingerprint = sample_fingerprint(encoders)
        self._stores = _stores_by_stream(settings, stores)
        image = settings.encoders.image
        self._image_limits = ImageLimits(max_bytes=image.max_bytes, max_pixels=image.max_pixels)
        self._encode_lock = threading.Lock()
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
        work: list[tuple[InboxEntry, TrafficRecord, Image.Image | None]] = []
        for entry in entries:
            if entry.attempts > cfg.max_attempts:
                failed[entry.id] = (
                    f"gave up after {entry.attempts - 1} attempts (every worker that took it "
                    "crashed, stalled or failed to store it)"
                )
                continue
            try:
                record, image = self._prepare(entry.record)
            except InvalidInputError as exc:
                failed[entry.id] = f"{type(exc).__name__}: {exc}"
                continue
            work.append((entry, record, image))

        samples, embed_failures = self._embed(work)
        failed.update(embed_failures)
        if failed:
            self._move_aside(entries, failed, worker_id)
        stored_ids = [entry.id for entry, _, _ in work if entry.id not in failed]
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

    def _prepare(self, record: TrafficRecord) -> tuple[TrafficRecord, Image.Image | None]:
        """The record as it will be embedded and its decoded image (ImageDecodeError when the
        image is not one)."""
        if record.image is None:
            if record.image_url is not None:
                raise InvalidInputError(
                    "the record's image URL was never fetched", field="image_url"
                )
            return record, None
        if self.encoders.image is None:
            # A text-only deployment ignores images; the sample says it has none.
            return dataclasses.replace(record, image=None), None
        return record, decode_image(record.image, limits=self._image_limits)

    def _embed(
        self, work: Sequence[tuple[InboxEntry, TrafficRecord, Image.Image | None]]
    ) -> tuple[list[NewSample], dict[int, str]]:
        """Samples for ``work``, batched; when the batch fails, each record alone, so one bad
        record is moved aside and the others are stored."""
        if not work:
            return [], {}
        try:
            return self._embed_together(work), {}
        except InvalidInputError as exc:
            if len(work) == 1:
                return [], {work[0][0].id: f"{type(exc).__name__}: {exc}"}
        samples: list[NewSample] = []
        failed: dict[int, str] = {}
        for item in work:
            try:
                samples.extend(self._embed_together([item]))
            except InvalidInputError as exc:
                failed[item[0].id] = f"{type(exc).__name__}: {exc}"
        return samples, failed

    def _embed_together(
        self, work: Sequence[tuple[InboxEntry, TrafficRecord, Image.Image | None]]
    ) -> list[NewSample]:
        records = [record for _, record, _ in work]
        with self._encode_lock:
            rows = embed_records(self.encoders, records, [image for _, _, image in work])
        ood = self._ood_scores(records, rows["query"])
        cursors = dict.fromkeys(("image", "response", "reference"), 0)
        samples: list[NewSample] = []
        for i, record in enumerate(records):
            embeddings: dict[str, np.ndarray] = {"prompt": rows["prompt"][i]}
            for kind, present in (
                ("image", work[i][2] is not None),
                ("response", record.response is not None),
                ("reference", record.reference is not None),
            ):
                if present:
                    embeddings[kind] = rows[kind][cursors[kind]]
                    cursors[kind] += 1
            samples.append(
                NewSample.from_record(
                    record,
                    embeddings,
                    encoder_fingerprint=self.fingerprint,
                    ood_score=ood[i],
                )
            )
        return samples

    def _ood_scores(
        self, records: Sequence[TrafficRecord], queries: np.ndarray
    ) -> list[float | None]:
        """kNN OOD score of each record's x against its stream's reference store."""
        scores: list[float | None] = [None] * len(records)
        by_stream: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_stream.setdefault(record.stream, []).append(i)
        for stream, positions in by_stream.items():
            store = self._stores.get(stream)
            if store is None or "query" not in store.kinds:
                continue
            for position, score in zip(
                positions, store.knn_scores(queries[positions]), strict=True
            ):
                scores[position] = float(score)
        return scores

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
        work: Sequence[tuple[InboxEntry, TrafficRecord, Image.Image | None]],
        failed: Mapping[int, str],
    ) -> None:
        if self.reference_model is None:
            return
        for entry, record, _ in work:
            if entry.id in failed or record.reference is not None:
                continue
            try:
                self.reference_model.offer(record)
            except Exception:  # the sampler must never cost a stored sample
                log.exception("offering a record to the reference model failed")

    # -- late references ---------------------------------------------------------------------

    def resolve_late_references(self, limit: int | None = None) -> int:
        """Embed references that arrived after their record was embedded; returns how many."""
        pending = self.repository.pending_late_references(limit or self.settings.workers.batch_size)
        pending = [ref for ref in pending if ref.text is not None]
        if not pending:
            return 0
        with self._encode_lock:
            vectors = self.encoders.text.encode_texts([ref.text or "" for ref in pending])
        for ref, vector in zip(pending, vectors, strict=True):
            where = self.repository.resolve_late_reference(ref.id, vector)
            if where is not None and self.on_reference is not None:
                self.on_reference(where)
        return len(pending)


def embed_records(
    encoders: EncoderSet, records: Sequence[TrafficRecord], images: Sequence[Image.Image | None]
) -> dict[str, Rows]:
    """One batch of live records embedded as the reference build embeds ID records.

    The same encoders, calls and fusion as :mod:`monitor.reference.build`: prompts (an
    image-only record's prompt is ""), answers and references through the text encoder, images
    through the image encoder, and x = ``fuse(prompt, image, has_image, fusion)``; a test checks
    that a record embeds to the very rows the store built from it holds. ``prompt`` and ``query``
    have one row per record; ``response``, ``reference`` and ``image`` one row per record that
    has one, in record order.
    """
    out: dict[str, Rows] = {"prompt": encoders.text.encode_texts([r.prompt or "" for r in records])}
    for kind, texts in (
        ("response", [r.response for r in records]),
        ("reference", [r.reference for r in records]),
    ):
        present = [text for text in texts if text is not None]
        if present:
            out[kind] = encoders.text.encode_texts(present)
    has_image = np.array([image is not None for image in images], dtype=bool)
    full_image = None
    if has_image.any():
        if encoders.image is None:
            raise EncoderError("records have images but encoders.image.kind is 'none'")
        out["image"] = encoders.image.encode_images([i for i in images if i is not None])
        full_image = np.zeros((len(records), out["image"].shape[1]), dtype=np.float32)
        full_image[has_image] = out["image"]
    elif encoders.image is not None and encoders.fusion == "concat":
        full_image = np.zeros((len(records), encoders.image.dim), dtype=np.float32)
    out["query"] = fuse(out["prompt"], full_image, has_image, encoders.fusion)
    return out


def _stores_by_stream(
    settings: Settings, stores: Mapping[str, ReferenceStore]
) -> dict[str, ReferenceStore]:
    """Stores keyed by stream, whether given by stream name or by reference-store name."""
    found: dict[str, ReferenceStore] = {}
    for stream in settings.streams:
        store = stores.get(stream.name) or stores.get(stream.reference)
        if store is not None:
            found[stream.name] = store
    return found


__all__ = ["EmbeddingWorkers", "ReferenceSampler", "embed_records", "sample_fingerprint"]
