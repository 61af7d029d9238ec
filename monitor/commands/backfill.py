"""``mllm-monitor backfill``: historical traffic in, and windows (re)computed.

Two forms:

* ``backfill --from-jsonl FILE``: each line goes through what live traffic goes through
  (validation, sampling, the durable inbox, embedding, storage; :mod:`monitor.backfill.jsonl`);
  an invalid line is reported on stderr with its line number and skipped (``--strict``: the
  run stops there), and a rerun adds nothing twice. Then the windows the file touched are
  computed when the leader lock is free (else the process holding it, a running ``serve``,
  computes them: its scheduler finds the new samples). ``--dry-run`` parses and validates
  every line as the real run does and counts valid, invalid and duplicate lines and the
  windows it would recompute; it writes nothing, fetches no image and loads no encoder.
* ``backfill --stream S --since T [--until T]``: computes the due windows of a range
  (``--until`` defaults to now; :mod:`monitor.backfill.range`), keeping those already stored
  unless ``--recompute``, refusing a range with more windows to compute than
  ``--max-windows`` (default ``[scheduler] max_catch_up``). The windows are computed holding
  the leader lock (:mod:`monitor.leadership`), so never while a scheduler computes any: it
  waits up to ``--lock-wait`` seconds for it, then stops. ``--dry-run`` reads, writes
  nothing, and says what it would do.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.backfill.jsonl import DEFAULT_BATCH, JsonlBackfill, JsonlCheck
from monitor.backfill.range import RangeSummary, backfill_range, windows_touched
from monitor.commands._common import (
    PROGRESS_LINE_EVERY,
    TIME_HELP,
    ConfigOption,
    JsonOption,
    err_console,
    load,
    notice,
    one_line,
    out_console,
    progress_bar,
    require_stream,
    stage_reporter,
    time_option,
)
from monitor.errors import TooManyWindowsError
from monitor.files import input_file
from monitor.services import Services, services

# Seconds range backfill waits for the leader lock (--lock-wait).
DEFAULT_LOCK_WAIT = 30.0


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
                summary = _compute_range(
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
        notify=notice,
    )


def _leader_lock_if_free(found: Services) -> AbstractContextManager[bool]:
    """The leader lock while --from-jsonl computes its windows, if free (a running scheduler
    computes them otherwise)."""
    from monitor.leadership import leader_lock_if_free

    return leader_lock_if_free(
        found.repository,
        found.settings,
        notify=notice,
    )


def _compute_range(
    found: Services,
    stream: str,
    since: datetime,
    until: datetime,
    *,
    recompute: bool,
    dry_run: bool,
    max_windows: int,
) -> RangeSummary:
    """:func:`backfill_range` with a progress bar of the windows computed (a dry run computes
    none: no bar)."""
    if dry_run:
        return backfill_range(
            found, stream, since, until, recompute=recompute, dry_run=True, max_windows=max_windows
        )
    with progress_bar(log_every=PROGRESS_LINE_EVERY) as bar:
        return backfill_range(
            found,
            stream,
            since,
            until,
            recompute=recompute,
            dry_run=False,
            max_windows=max_windows,
            progress=stage_reporter(bar),
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
                _compute_range(
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
            check = JsonlCheck(
                found.repository, settings, stream=stream, batch=batch_size, notify=notice
            )
            with progress_bar(log_every=PROGRESS_LINE_EVERY) as bar:
                ingested = check.run(path, stage_reporter(bar))
            for name, (first, last) in windows_touched(settings, ingested.spans).items():
                compute(found, name, first, last, ingested.accepted > 0)
    else:
        with services(settings, encoders=True) as found:
            job = JsonlBackfill(
                found, stream=stream, strict=strict, batch=batch_size, notify=notice
            )
            with progress_bar(log_every=PROGRESS_LINE_EVERY) as bar:
                ingested = job.run(path, stage_reporter(bar))
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
