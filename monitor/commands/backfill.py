"""``mllm-monitor backfill``: historical traffic in, and windows (re)computed.

Two forms:

* ``backfill --from-jsonl FILE``: each line goes through what live traffic goes through:
  :func:`~monitor.ingest.parsing.parse_record` (validation), :class:`IngestService.submit`
  (sampling, the durable inbox), :meth:`EmbeddingWorkers.run_once` (embedding, kNN OOD score,
  storage); then the windows the file touched are computed by :meth:`WindowPipeline.compute`
  when the leader lock is free (else the process holding it, a running ``serve``, computes
  them: its scheduler finds the new samples). The file is streamed in batches (memory holds one
  batch) and split on ``\\n`` only (U+2028 inside a JSON string is valid). An invalid line is
  reported on stderr with its line number and skipped (``--strict``: the run stops there). A
  line without an ``id`` gets a stable one from its content (``h-`` + 32 hex digits of a
  SHA-256 of the canonical JSON), so a rerun adds nothing twice: ids already in the inbox or
  stored are skipped. The records go through the durable inbox, so every running replica's
  workers help embed them; this process embeds too.
* ``backfill --stream S --since T [--until T]``: computes the windows of a range (``--until``
  defaults to now) from stored embeddings with the current reference store, estimator and
  calibration, oldest first (the risk rule and the detector read the windows before). Windows
  already stored are kept unless ``--recompute``; an interrupted run simply runs again (each window
  is one idempotent upsert, so there are neither duplicates nor gaps). Only windows that are
  due (end + lateness passed) are computed: a later one is the scheduler's. The range is
  planned by arithmetic (no list of windows, so ten years cost what an hour does), and a range
  with more windows to compute than ``--max-windows`` (default ``[scheduler] max_catch_up``)
  is refused, saying how many.
  The windows are computed holding the leader lock (:mod:`monitor.leadership`), so never
  while a scheduler computes any: it waits up to ``--lock-wait`` seconds for it, then stops.
  ``--dry-run`` reads, writes nothing, and says what it would do.

``--from-jsonl FILE --dry-run`` parses and validates every line as the real run does and
counts valid, invalid and duplicate lines and the windows it would recompute; it writes
nothing, fetches no image and loads no encoder.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.commands._common import (
    TIME_HELP,
    ConfigOption,
    JsonOption,
    Reporter,
    Services,
    err_console,
    load,
    one_line,
    out_console,
    require_stream,
    services,
    time_option,
)
from monitor.errors import InboxFullError, InvalidInputError, MonitorError
from monitor.files import input_file
from monitor.records import TrafficRecord, WindowKey
from monitor.windows import iter_windows, last_due_end, window_start

DEFAULT_BATCH = 512
# Seconds range backfill waits for the leader lock (--lock-wait).
DEFAULT_LOCK_WAIT = 30.0


# -- the JSONL side --------------------------------------------------------------------------


def content_id(obj: dict[str, Any]) -> str:
    """A stable record id from the record's content (for lines without an ``id``)."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "h-" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class LineError:
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"line {self.line}:{where} {self.message}"


class LineTooLong(bytes):
    """What :func:`read_lines` yields for a line over its byte limit: its size, not its bytes."""

    size: int


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; split on b'\\n' only, streamed. A line over
    ``max_bytes`` (the records API's body limit, for the same records) is not held: a
    :class:`LineTooLong` stands for it, which :func:`load_line` reports as invalid. A read
    error names the file and the line (the OSError of a read names neither)."""
    limit = max_bytes if max_bytes is not None else 1 << 62
    number = 0
    try:
        with path.open("rb") as fh:
            while raw := fh.readline(limit + 2):  # + 2: the line's own \r\n
                number += 1
                if not raw.endswith(b"\n") and len(raw) == limit + 2:
                    size = len(raw)
                    while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                        size += len(rest)
                    too_long = LineTooLong()
                    too_long.size = size + len(rest.rstrip(b"\r\n"))
                    yield number, too_long
                    continue
                line = raw.rstrip(b"\r\n")
                if len(line) > limit:
                    too_long = LineTooLong()
                    too_long.size = len(line)
                    yield number, too_long
                elif line.strip():
                    yield number, line
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise MonitorError(
            f"cannot read {path} after line {number}: {exc.strerror or exc}"
        ) from exc


def parse_line(
    number: int, line: bytes, *, settings: Any, now: datetime, stream: str | None
) -> TrafficRecord:
    """One JSONL line to a record, by the rules of live traffic (InvalidInputError otherwise)."""
    from monitor.ingest.parsing import parse_record

    obj = load_line(line)
    try:
        if obj.get("id") is None:
            obj["id"] = content_id(obj)
        if stream is not None and obj.get("stream") is None:
            obj["stream"] = stream
        return parse_record(obj, settings=settings, now=now)
    except (ValueError, OverflowError, RecursionError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        # A value the validator did not foresee (an offset past year 9999, an epoch of 400
        # digits): it is this line that is bad, not the run.
        raise InvalidInputError(f"unusable value: {type(exc).__name__}: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_line(line: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object (strict: no NaN / Infinity), or InvalidInputError; a
    line nested too deeply for the parser is invalid like any other."""
    if isinstance(line, LineTooLong):
        raise InvalidInputError(
            f"a line of {line.size:,} bytes, over the limit of a request ([ingest] max_body_bytes)"
        )
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidInputError("not JSON: nested too deeply") from exc
    except ValueError as exc:  # NaN, Infinity; an integer of more than 4300 digits
        raise InvalidInputError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInputError("a record must be a JSON object")
    return obj


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
        """Count and report an invalid line (the first 100 are kept for --json)."""
        self.invalid += 1
        if len(self.errors) < 100:
            self.errors.append(str(error))
        err_console.print(one_line(f"invalid {error}"), markup=False)

    def note_time(self, record: TrafficRecord) -> None:
        span = self.spans.setdefault(record.stream, [record.timestamp, record.timestamp])
        span[0] = min(span[0], record.timestamp)
        span[1] = max(span[1], record.timestamp)


def parsed_batches(
    path: Path,
    settings: Any,
    *,
    stream: str | None,
    batch: int,
    summary: IngestSummary,
    invalid: Callable[[LineError], None],
) -> Iterator[list[tuple[int, TrafficRecord]]]:
    """The file's valid records with their line numbers, ``batch`` at a time; every line is
    counted in ``summary`` and each invalid one handed to ``invalid``. "Now" (the future-time
    rule) is read again after each batch: a long file is judged by the time it is read at."""
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
            pending = []
            now = datetime.now(UTC)
    if pending:
        yield pending


class JsonlBackfill:
    """Streams a JSONL file through the live ingest path; see the module doc."""

    def __init__(
        self, found: Services, *, stream: str | None, strict: bool, batch: int = DEFAULT_BATCH
    ) -> None:
        from monitor.ingest.service import IngestService
        from monitor.ingest.worker import EmbeddingWorkers, process_worker_id

        self.found = found
        self.settings = found.settings
        self.stream = stream
        self.strict = strict
        self.batch = batch
        self.ingest = IngestService(found.settings, found.repository, found.metrics)
        self.workers = EmbeddingWorkers(
            found.settings, found.repository, found.encoders, found.stores, found.metrics
        )
        self.worker_id = f"{process_worker_id()}-backfill"  # unique, as the daemon's are
        self.summary = IngestSummary()
        self._outstanding: set[str] = set()

    def run(self, path: Path, reporter: Reporter) -> IngestSummary:
        started = time.perf_counter()
        for numbered in parsed_batches(
            path,
            self.settings,
            stream=self.stream,
            batch=self.batch,
            summary=self.summary,
            invalid=self._invalid,
        ):
            self._submit(numbered)
            reporter.advance(len(numbered))
        self._drain(final=True)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _invalid(self, error: LineError) -> None:
        self.summary.note_invalid(error)
        if self.strict:
            raise MonitorError(f"{error} (--strict: stopped at the first invalid line)")

    def _submit(self, numbered: list[tuple[int, TrafficRecord]]) -> None:
        records = self._resolve(numbered)
        seen: dict[str, int] = {}
        fresh: list[TrafficRecord] = []
        for number, record in records:
            if record.id in seen:
                self.summary.duplicates += 1
                err_console.print(
                    one_line(
                        f"duplicate line {number}: id {record.id!r} repeats line {seen[record.id]}"
                    ),
                    markup=False,
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
        self, repository: Any, settings: Any, *, stream: str | None, batch: int = DEFAULT_BATCH
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.stream = stream
        self.batch = batch
        self.summary = IngestSummary()
        # 8-byte digests of the ids seen so far: a repeat across batches is found without
        # holding the ids themselves.
        self._seen: set[bytes] = set()

    def run(self, path: Path, reporter: Reporter) -> IngestSummary:
        started = time.perf_counter()
        for numbered in parsed_batches(
            path,
            self.settings,
            stream=self.stream,
            batch=self.batch,
            summary=self.summary,
            invalid=self.summary.note_invalid,
        ):
            self._count([record for _, record in numbered])
            reporter.advance(len(numbered))
        self.summary.seconds = time.perf_counter() - started
        return self.summary

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


# -- the window side -------------------------------------------------------------------------


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
    settings: Any, stream: str, since: datetime, until: datetime, now: datetime
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
    reporter_description: str = "windows",
    max_windows: int | None = None,
) -> RangeSummary:
    """(Re)compute the due windows of [since, until) of ``stream``; see the module doc.

    With ``max_windows``, a range with more windows to compute is refused (TooManyWindowsError)
    before anything is written."""
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
    with Reporter(f"{reporter_description} {stream}", todo) as reporter:
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
            reporter.advance()
    if unreplayed is not None:
        pipeline.replay_after(unreplayed)
    summary.seconds = time.perf_counter() - started
    return summary


class TooManyWindowsError(MonitorError):
    """A range with more windows to compute than --max-windows allows (a usage error)."""

    def __init__(self, stream: str, count: int, cap: int) -> None:
        super().__init__(
            f"the range has {count:,} windows of stream {stream!r} to compute, more than "
            f"--max-windows {cap:,} (default: [scheduler] max_catch_up): narrow --since/--until, "
            f"or pass --max-windows {count} to compute them all"
        )
        self.count = count


def windows_touched(
    settings: Any, spans: dict[str, list[datetime]]
) -> dict[str, tuple[datetime, datetime]]:
    """[first window start, last window end) per stream of the event times seen."""
    size = settings.windows.size
    return {
        stream: (window_start(first, size), window_start(last, size) + size)
        for stream, (first, last) in spans.items()
    }


# -- output ----------------------------------------------------------------------------------


def _print_range_table(summaries: list[RangeSummary]) -> None:
    from rich.table import Table

    dry = any(s.dry_run for s in summaries)
    table = Table(title="backfill (dry run: nothing written)" if dry else "backfill")
    for name in ("stream", "due windows", "stored before", "would compute" if dry else "computed"):
        table.add_column(name, justify="right" if name != "stream" else "left")
    if not dry:
        for name in ("ok", "insufficient", "risk 0/1/2", "seconds", "windows/s"):
            table.add_column(name, justify="right")
    table.add_column("samples", justify="right")
    table.add_column("not due yet", justify="right")
    for s in summaries:
        row = [s.stream, str(s.planned), str(s.existing), str(s.computed)]
        if not dry:
            row += [
                str(s.ok),
                str(s.insufficient),
                f"{s.risk[0]}/{s.risk[1]}/{s.risk[2]}",
                f"{s.seconds:.2f}",
                f"{s.per_second:.1f}",
            ]
        row += [str(s.samples), str(s.not_due)]
        table.add_row(*row)
    out_console().print(table)


def _range_json(s: RangeSummary) -> dict[str, Any]:
    data = asdict(s)
    data["risk"] = {str(k): v for k, v in s.risk.items()}
    data["windows_per_second"] = s.per_second
    return data


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill(
        config: ConfigOption = None,
        from_jsonl: Annotated[
            Path | None,
            typer.Option(
                "--from-jsonl",
                help="Historical traffic, one record a line (a POST /v1/records record or OpenAI "
                "messages + response), fed through validation, sampling, embedding and storage "
                "as live traffic; then its windows are computed (left to the scheduler of a "
                "running serve when it holds the leader lock).",
                dir_okay=False,
            ),
        ] = None,
        stream: Annotated[
            str | None,
            typer.Option(
                "--stream",
                "-s",
                help="With --from-jsonl: the stream of lines that name none. Otherwise: the "
                "stream whose windows to compute (required).",
            ),
        ] = None,
        since: Annotated[str | None, typer.Option(help=f"Range start. {TIME_HELP}")] = None,
        until: Annotated[
            str | None, typer.Option(help=f"Range end (default: now). {TIME_HELP}")
        ] = None,
        recompute: Annotated[
            bool, typer.Option("--recompute", help="Recompute windows already stored too.")
        ] = False,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Say what would be done; write nothing. With --from-jsonl: validate every "
                "line, count valid / invalid / duplicate lines and the windows to recompute.",
            ),
        ] = False,
        strict: Annotated[
            bool, typer.Option("--strict", help="Stop at the first invalid line.")
        ] = False,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, max=100_000, help="Lines per batch.")
        ] = DEFAULT_BATCH,
        max_windows: Annotated[
            int | None,
            typer.Option(
                "--max-windows",
                min=1,
                help="Refuse a range with more windows to compute than this (default: "
                "[scheduler] max_catch_up). With --from-jsonl: the records are stored, the "
                "windows of a stream over it are left (exit 1).",
            ),
        ] = None,
        lock_wait: Annotated[
            float,
            typer.Option(
                "--lock-wait",
                min=0,
                max=86_400,
                help="Range form: seconds to wait for the leader lock, which the scheduler of "
                "a running serve holds while it leads; the range is computed only while "
                "holding it, so the two never race (0: one try). Not needed by --dry-run.",
            ),
        ] = DEFAULT_LOCK_WAIT,
        as_json: JsonOption = False,
    ) -> None:
        """Feed historical traffic through the live path, or (re)compute a range's windows.

        Reruns add nothing twice; an interrupted run finishes when run again. With
        --from-jsonl, invalid lines are reported (line number, field, reason) and skipped, and
        the exit code is then 1.
        """
        start, end = time_option(since, "since"), time_option(until, "until")
        if from_jsonl is not None:
            if since is not None or until is not None:
                raise typer.BadParameter(
                    "--since/--until go with the range form, not with --from-jsonl",
                    param_hint="--from-jsonl",
                )
            _from_jsonl(
                config, from_jsonl, stream, strict, batch_size, as_json, dry_run, max_windows
            )
            return
        if stream is None or start is None:
            raise typer.BadParameter(
                "give --from-jsonl FILE, or --stream S --since T [--until T]",
                param_hint="--stream",
            )
        end = end if end is not None else datetime.now(UTC)  # as report and windows list
        if end <= start:
            raise typer.BadParameter("--until must be after --since", param_hint="--until")
        settings = load(config, compute=True)
        require_stream(settings, stream)
        cap = settings.scheduler.max_catch_up if max_windows is None else max_windows
        opened = services(settings, encoders=False, stores=not dry_run)  # a dry run reads only
        with opened as found, _leader_lock(found, lock_wait, dry_run):
            try:
                summary = backfill_range(
                    found,
                    stream,
                    start,
                    end,
                    recompute=recompute,
                    dry_run=dry_run,
                    max_windows=cap,
                )
            except TooManyWindowsError as exc:
                raise typer.BadParameter(str(exc), param_hint="--max-windows") from exc
        if as_json:
            typer.echo(json.dumps({"windows": [_range_json(summary)]}, indent=2, default=str))
        else:
            _print_range_table([summary])


def _leader_lock(found: Services, wait: float, dry_run: bool) -> AbstractContextManager[None]:
    """The leader lock while a range is computed (a dry run writes nothing: no lock)."""
    from monitor.leadership import leader_lock_held

    if dry_run:
        return nullcontext()
    return leader_lock_held(
        found.repository,
        found.settings,
        wait=wait,
        notify=lambda message: err_console.print(one_line(message), markup=False),
    )


def _leader_lock_if_free(found: Services) -> AbstractContextManager[bool]:
    """The leader lock while --from-jsonl computes its windows, if free (a running scheduler
    computes them otherwise)."""
    from monitor.leadership import leader_lock_if_free

    return leader_lock_if_free(
        found.repository,
        found.settings,
        notify=lambda message: err_console.print(one_line(message), markup=False),
    )


def _from_jsonl(
    config: Path | None,
    path: Path,
    stream: str | None,
    strict: bool,
    batch_size: int,
    as_json: bool,
    dry_run: bool = False,
    max_windows: int | None = None,
) -> None:
    settings = load(config, compute=True)
    if stream is not None:
        require_stream(settings, stream)
    input_file(path, "--from-jsonl file")
    cap = settings.scheduler.max_catch_up if max_windows is None else max_windows
    ranges: list[RangeSummary] = []
    too_many: list[str] = []  # streams whose windows are over the cap: left, and said

    def compute(
        found: Services, name: str, first: datetime, last: datetime, recompute: bool
    ) -> None:
        try:
            ranges.append(
                backfill_range(
                    found,
                    name,
                    first,
                    last,
                    recompute=recompute,
                    dry_run=dry_run,
                    max_windows=cap,
                )
            )
        except TooManyWindowsError as exc:
            stored = "would be stored" if dry_run else "are stored"
            too_many.append(f"{exc} (the records {stored}; their windows are left)")

    if dry_run:
        with services(settings, encoders=False, stores=False) as found:
            check = JsonlCheck(found.repository, settings, stream=stream, batch=batch_size)
            with Reporter(f"records from {path.name}", None) as reporter:
                ingested = check.run(path, reporter)
            for name, (first, last) in windows_touched(settings, ingested.spans).items():
                compute(found, name, first, last, ingested.accepted > 0)
    else:
        with services(settings, encoders=True) as found:
            job = JsonlBackfill(found, stream=stream, strict=strict, batch=batch_size)
            with Reporter(f"records from {path.name}", None) as reporter:
                ingested = job.run(path, reporter)
            with _leader_lock_if_free(found) as held:  # else the leader computes them
                touched = windows_touched(settings, ingested.spans) if held else {}
                for name, (first, last) in touched.items():
                    compute(found, name, first, last, ingested.sampled > 0)
    data = asdict(ingested)
    data.pop("spans")
    data["records_per_second"] = ingested.lines / ingested.seconds if ingested.seconds else 0.0
    data["dry_run"] = dry_run
    if as_json:
        typer.echo(
            json.dumps(
                {"records": data, "windows": [_range_json(r) for r in ranges]},
                indent=2,
                default=str,
            )
        )
    elif dry_run:
        typer.echo(
            f"dry run, nothing written: {ingested.lines:,} lines: {ingested.accepted:,} valid "
            f"and new, {ingested.duplicates:,} duplicate (repeated or already there), "
            f"{ingested.invalid:,} invalid ({ingested.seconds:.1f} s)"
        )
    else:
        typer.echo(
            f"{ingested.lines:,} lines: {ingested.accepted:,} accepted, {ingested.sampled:,} "
            f"sampled, {ingested.embedded:,} embedded here, {ingested.duplicates:,} already "
            f"there, {ingested.invalid:,} invalid ({ingested.seconds:.1f} s, "
            f"{data['records_per_second']:.0f} lines/s, embedding {ingested.embed_seconds:.1f} s)"
        )
    if ranges and not as_json:
        _print_range_table(ranges)
    for message in too_many:
        err_console.print(one_line(f"error: {message}"), markup=False)
    if ingested.invalid or too_many:
        raise typer.Exit(1)
