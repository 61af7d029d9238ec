"""``backfill --from-jsonl``: a JSONL file through what live traffic goes through.

Each line is validated by :func:`~monitor.ingest.parsing.parse_record`, submitted by
:meth:`IngestService.submit` (sampling, the durable inbox) and embedded and stored by
:meth:`EmbeddingWorkers.run_once`; the file is streamed in batches (memory holds one batch).
An invalid line is counted, handed to ``notify`` with its line number and skipped (``strict``:
the run stops there). Ids already in the inbox or stored are skipped, so a rerun adds nothing
twice. The records go through the durable inbox, so every running replica's workers help embed
them; this process embeds too. :class:`JsonlCheck` (the dry run) parses and validates every
line the same way and writes nothing, fetches no image and loads no encoder."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.backfill import Notify, ProgressCallback, no_notice, no_progress
from monitor.backfill.lines import LineError, parse_line, read_lines
from monitor.errors import InboxFullError, InvalidInputError, MonitorError
from monitor.records import TrafficRecord

if TYPE_CHECKING:
    from monitor.config import Settings
    from monitor.services import Services
    from monitor.store.repository import Repository

DEFAULT_BATCH = 512


@dataclass
class IngestSummary:
    lines: int = 0
    invalid: int = 0
    duplicates: int = 0  # already in the inbox or stored (a rerun), or repeated in the file
    accepted: int = 0
    sampled: int = 0
    embedded: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0
    spans: dict[str, list[datetime]] = field(default_factory=dict)  # stream -> [first, last]
    errors: list[str] = field(default_factory=list)  # the first few, for --json

    def note_invalid(self, error: LineError) -> None:
        """Count an invalid line (the first 100 are kept for --json)."""
        self.invalid += 1
        if len(self.errors) < 100:
            self.errors.append(str(error))

    def note_time(self, record: TrafficRecord) -> None:
        span = self.spans.setdefault(record.stream, [record.timestamp, record.timestamp])
        span[0] = min(span[0], record.timestamp)
        span[1] = max(span[1], record.timestamp)


def parsed_batches(
    path: Path,
    settings: Settings,
    *,
    stream: str | None,
    batch: int,
    summary: IngestSummary,
    invalid: Callable[[LineError], None],
    progress: ProgressCallback = no_progress,
) -> Iterator[list[tuple[int, TrafficRecord]]]:
    """The file's valid records with their line numbers, ``batch`` at a time; every line is
    counted in ``summary`` and each invalid one handed to ``invalid``; ``progress`` counts the
    records of each batch once the caller has handled it (the total is unknown). "Now" (the
    future-time rule) is read again after each batch: a long file is judged by the time it is
    read at."""
    what, done = f"records from {path.name}", 0
    progress(what, done, None)
    pending: list[tuple[int, TrafficRecord]] = []
    now = datetime.now(UTC)
    for number, line in read_lines(path, settings.ingest.max_body_bytes):
        summary.lines += 1
        try:
            record = parse_line(number, line, settings=settings, now=now, stream=stream)
        except InvalidInputError as exc:
            invalid(LineError(number, exc.field, str(exc)))
            continue
        pending.append((number, record))
        if len(pending) >= batch:
            yield pending
            done += len(pending)
            progress(what, done, None)
            pending = []
            now = datetime.now(UTC)
    if pending:
        yield pending
        progress(what, done + len(pending), None)


class JsonlBackfill:
    """Streams a JSONL file through the live ingest path; see the module doc."""

    def __init__(
        self,
        found: Services,
        *,
        stream: str | None,
        strict: bool,
        batch: int = DEFAULT_BATCH,
        notify: Notify = no_notice,
    ) -> None:
        from monitor.ingest.service import IngestService
        from monitor.ingest.worker import EmbeddingWorkers, process_worker_id

        if found.encoders is None:  # the caller's mistake, not the file's
            raise ValueError("JsonlBackfill needs services opened with their encoders")
        self.found = found
        self.settings = found.settings
        self.stream = stream
        self.strict = strict
        self.batch = batch
        self.notify = notify  # each invalid or repeated line, as it is met
        self.ingest = IngestService(found.settings, found.repository, found.metrics)
        self.workers = EmbeddingWorkers(
            found.settings, found.repository, found.encoders, found.stores, found.metrics
        )
        self.worker_id = f"{process_worker_id()}-backfill"  # unique, as the daemon's are
        self.summary = IngestSummary()
        self._outstanding: set[str] = set()

    def run(self, path: Path, progress: ProgressCallback = no_progress) -> IngestSummary:
        """Feed the file; ``progress`` counts the valid records handled (the total is unknown)."""
        started = time.perf_counter()
        for numbered in parsed_batches(
            path,
            self.settings,
            stream=self.stream,
            batch=self.batch,
            summary=self.summary,
            invalid=self._invalid,
            progress=progress,
        ):
            self._submit(numbered)
        self._drain(final=True)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _invalid(self, error: LineError) -> None:
        self.summary.note_invalid(error)
        self.notify(f"invalid {error}")
        if self.strict:
            raise MonitorError(f"{error} (--strict: stopped at the first invalid line)")

    def _submit(self, numbered: list[tuple[int, TrafficRecord]]) -> None:
        records = self._resolve(numbered)
        seen: dict[str, int] = {}
        fresh: list[TrafficRecord] = []
        for number, record in records:
            if record.id in seen:
                self.summary.duplicates += 1
                self.notify(
                    f"duplicate line {number}: id {record.id!r} repeats line {seen[record.id]}"
                )
                continue
            seen[record.id] = number
            fresh.append(record)
        known = self.found.repository.locate_records([r.id for r in fresh])
        fresh = [r for r in fresh if r.id not in known]
        self.summary.duplicates += len(seen) - len(fresh)
        if not fresh:
            return
        while True:
            try:
                result = self.ingest.submit(fresh)
                break
            except InboxFullError:
                if self._drain(final=False) == 0:  # the other replicas hold it: wait a little
                    time.sleep(min(self.settings.ingest.retry_after.total_seconds(), 1.0))
        self.summary.accepted += result.accepted
        self.summary.sampled += result.sampled
        for record in fresh:
            self.summary.note_time(record)
        self._drain(final=False)
        self._note_outstanding([r.id for r in fresh])

    def _resolve(
        self, numbered: list[tuple[int, TrafficRecord]]
    ) -> list[tuple[int, TrafficRecord]]:
        """Fetch http(s) image URLs as the records API does; a failed fetch is an invalid
        line."""
        import asyncio

        out: list[tuple[int, TrafficRecord]] = []
        for number, record in numbered:
            if record.image_url is None:
                out.append((number, record))
                continue
            try:
                resolved = asyncio.run(self.ingest.resolve_images([record], fields=["image"]))
            except InvalidInputError as exc:
                self._invalid(LineError(number, exc.field, str(exc)))
                continue
            out.append((number, resolved[0]))
        return out

    def _drain(self, *, final: bool) -> int:
        """Embed what the inbox holds (other replicas' workers may take part of it); with
        ``final``, also wait until this run's records that others claimed are stored (at most
        one lease: a replica that died lets its lease run out, and this process takes them)."""
        settled = 0
        while True:
            started = time.perf_counter()
            done = self.workers.run_once(self.worker_id)
            self.summary.embed_seconds += time.perf_counter() - started
            settled += done
            if done == 0:
                break
        self.summary.embedded += settled
        if final:
            deadline = time.monotonic() + self.settings.workers.lease.total_seconds() + 5
            while self._still_waiting() and time.monotonic() < deadline:
                time.sleep(0.5)
                settled += self._drain(final=False)
        return settled

    def _note_outstanding(self, ids: list[str]) -> None:
        """Remember this run's records still in the inbox after a drain: other replicas hold
        them (only those ids are kept, so memory stays bounded)."""
        located = self.found.repository.locate_records(ids)
        self._outstanding.update(i for i, where in located.items() if where == "inbox")

    def _still_waiting(self) -> bool:
        if not self._outstanding:
            return False
        located = self.found.repository.locate_records(sorted(self._outstanding))
        self._outstanding = {i for i, where in located.items() if where == "inbox"}
        return bool(self._outstanding)


class JsonlCheck:
    """``--from-jsonl FILE --dry-run``: every line parsed and validated as the real run does,
    counted as valid, invalid or duplicate (repeated in the file, or already in the inbox or
    stored); nothing is written, no image URL fetched, no encoder loaded."""

    def __init__(
        self,
        repository: Repository,
        settings: Settings,
        *,
        stream: str | None,
        batch: int = DEFAULT_BATCH,
        notify: Notify = no_notice,
    ) -> None:
        self.repository = repository
        self.notify = notify  # each invalid line, as it is met
        self.settings = settings
        self.stream = stream
        self.batch = batch
        self.summary = IngestSummary()
        # 8-byte digests of the ids seen so far: a repeat across batches is found without
        # holding the ids themselves.
        self._seen: set[bytes] = set()

    def run(self, path: Path, progress: ProgressCallback = no_progress) -> IngestSummary:
        """Check the file; ``progress`` counts the valid records (the total is unknown)."""
        started = time.perf_counter()
        for numbered in parsed_batches(
            path,
            self.settings,
            stream=self.stream,
            batch=self.batch,
            summary=self.summary,
            invalid=self._invalid,
            progress=progress,
        ):
            self._count([record for _, record in numbered])
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _invalid(self, error: LineError) -> None:
        self.summary.note_invalid(error)
        self.notify(f"invalid {error}")

    def _count(self, records: list[TrafficRecord]) -> None:
        fresh: list[TrafficRecord] = []
        for record in records:
            digest = hashlib.blake2b(record.id.encode("utf-8", "surrogatepass"), digest_size=8)
            if digest.digest() in self._seen:
                self.summary.duplicates += 1  # repeated in the file
                continue
            self._seen.add(digest.digest())
            fresh.append(record)
        known = self.repository.locate_records([r.id for r in fresh])
        for record in fresh:
            if record.id in known:
                self.summary.duplicates += 1
            else:
                self.summary.accepted += 1  # would be accepted (sampling is not predicted)
                self.summary.note_time(record)
