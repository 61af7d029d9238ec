"""Hostile input to the data commands (windows, report, backfill) through the real CLI app, on
an SQLite database: bad times are usage errors (exit 2), an id no window can have says so
(exit 1), a bad JSONL line is an invalid line (reported, skipped), a path that is not a regular
file is refused naming it and what it is; never exit 3 or a traceback."""

from __future__ import annotations

import json
import os
import re
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from monitor.backfill.range import backfill_range, plan_windows
from monitor.cli import EXIT_ERROR, EXIT_USAGE, app
from monitor.config import load_settings
from monitor.metrics import MonitorMetrics
from monitor.services import Services
from monitor.store.repository import open_repository

runner = CliRunner()

BAD_TIMES = [
    "0001-01-01T00:00:00+01:00",  # OverflowError in astimezone
    "9999-12-31T23:59:59-01:00",
    "1" + "0" * 400,  # an epoch too large for a float
    "1e400",
    "nan",
]


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Settings with an upgraded SQLite database (no reference store: none is needed)."""
    path = tmp_path / "monitor.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "monitor.db"}"\n'
        f'[reference]\nroot = "{tmp_path / "refs"}"\n'
        '[windows]\nsize = "5m"\nlateness = "1m"\n'
    )
    result = runner.invoke(app, ["db", "upgrade", "-c", str(path)])
    assert result.exit_code == 0, result.output
    return path


def flat(output: str) -> str:
    """The output as one line: typer's usage errors come in a box, wrapped."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", output).split())


def assert_error(result: object, code: int, *needles: str) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == code, output  # type: ignore[attr-defined]
    assert "Traceback" not in output and "unexpected" not in output, output
    for needle in needles:
        assert needle in flat(output), (needle, output)
    return str(output)


@pytest.mark.parametrize("value", BAD_TIMES)
@pytest.mark.parametrize(
    "command",
    [
        ["windows", "list", "--since"],
        ["windows", "list", "--until"],
        ["report", "-s", "default", "--since"],
        ["backfill", "-s", "default", "--until", "now", "--since"],
    ],
)
def test_a_time_out_of_range_is_a_usage_error(config: Path, command: list[str], value: str) -> None:
    result = runner.invoke(app, [*command, value, "-c", str(config)])
    assert_error(result, EXIT_USAGE, "Invalid value")


@pytest.mark.parametrize("since", ["-1d", "-1h", "now", "2026-01-01T00:00:00Z", "1700000000"])
def test_windows_list_takes_the_cli_times_of_the_docs(config: Path, since: str) -> None:
    result = runner.invoke(app, ["windows", "list", "--since", since, "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no windows"


@pytest.mark.parametrize(
    "window_id", ["9223372036854775808", "9" * 400, "0", "+1_0", "1e3", "\x9b31m"]
)
@pytest.mark.parametrize("command", [["windows", "show"], ["windows", "explain"]])
def test_an_id_no_window_can_have_says_so(config: Path, command: list[str], window_id: str) -> None:
    result = runner.invoke(app, [*command, window_id, "-c", str(config)])
    output = assert_error(result, EXIT_ERROR, "error: no window with id")
    assert "\x9b" not in output
    assert len(output) < 400


def test_an_id_in_range_that_names_no_window(config: Path) -> None:
    result = runner.invoke(app, ["windows", "show", "9223372036854775807", "-c", str(config)])
    assert_error(result, EXIT_ERROR, "no window with id '9223372036854775807'")


def _line(**fields: object) -> str:
    record: dict[str, object] = {"prompt": "hello", "response": "hi"}
    record["timestamp"] = "2026-01-05T00:00:10Z"
    record.update(fields)
    return json.dumps(record)


def test_from_jsonl_dry_run_reports_hostile_lines_and_writes_nothing(
    config: Path, tmp_path: Path
) -> None:
    lines = [
        _line(id="a"),
        _line(id="b", timestamp="0001-01-01T00:00:00+01:00"),  # line 2
        '{"id": "c", "prompt": "p", "timestamp": 1' + "0" * 400 + "}",  # line 3
        "[" * 100_000 + "]" * 100_000,  # line 4: RecursionError in the JSON parser
        _line(id="d", timestamp="9999-12-31T23:59:59-01:00"),  # line 5
        _line(id="a"),  # line 6: repeats line 1
        _line(id="e", timestamp="2026-01-05T00:07:00Z"),
        _line(id="f", timestamp=float("nan")),  # line 8: NaN is not JSON
    ]
    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app, ["backfill", "--from-jsonl", str(path), "--dry-run", "--json", "-c", str(config)]
    )
    assert result.exit_code == EXIT_ERROR, result.output  # invalid lines: exit 1
    assert "Traceback" not in result.output and "unexpected" not in result.output
    for number in (2, 3, 4, 5, 8):
        assert f"invalid line {number}:" in result.stderr, result.stderr
    assert result.stderr.count("invalid line") == 5
    data = json.loads(result.stdout)
    records = data["records"]
    assert records["dry_run"] is True
    assert (records["lines"], records["invalid"], records["duplicates"]) == (8, 5, 1)
    assert records["accepted"] == 2  # a and e
    (windows,) = data["windows"]
    assert windows["dry_run"] and windows["planned"] == 2 and windows["computed"] == 2
    repository = open_repository(load_settings(config))
    try:
        assert repository.locate_records(["a", "e"]) == {}  # nothing written
        assert repository.inbox_depth() == 0
    finally:
        repository.close()


def test_from_jsonl_dry_run_text_summary(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(_line(id="x") + "\n" + _line(id="y") + "\n")
    result = runner.invoke(
        app, ["backfill", "--from-jsonl", str(path), "--dry-run", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "dry run, nothing written: 2 lines: 2 valid and new" in result.stdout


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    return fifo


def _loop(tmp_path: Path) -> Path:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop2.jsonl")
    (tmp_path / "loop2.jsonl").symlink_to(loop)
    return loop


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (_fifo, "is a FIFO"),
        (lambda _: Path("/dev/zero"), "is a device"),
        (_loop, "is a symlink loop"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: tmp / "missing.jsonl", "no such"),
    ],
)
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_from_jsonl_refuses_what_is_not_a_regular_file(
    config: Path, tmp_path: Path, make: object, what: str, dry_run: list[str]
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    args = ["backfill", "--from-jsonl", str(path), *dry_run, "-c", str(config)]
    result = runner.invoke(app, args)
    if result.exit_code == EXIT_USAGE:  # typer's own check of a directory (dir_okay=False)
        assert "is a directory" in flat(result.output), result.output
        return
    assert_error(result, EXIT_ERROR, str(path), what)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (_fifo, "is a FIFO"),
        (lambda _: Path("/dev/full"), "is a device"),
        (_loop, "is a symlink loop"),
    ],
)
def test_report_out_refuses_what_is_not_a_regular_file(
    config: Path, tmp_path: Path, make: object, what: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    if path.suffix != ".html":
        link = tmp_path / "out.html"
        link.symlink_to(path)
        path = link
    started = time.monotonic()
    result = runner.invoke(
        app, ["report", "-s", "default", "--since", "-1d", "--out", str(path), "-c", str(config)]
    )
    assert time.monotonic() - started < 30  # a FIFO does not block it
    assert_error(result, EXIT_ERROR, str(path), what)


def test_write_output_names_the_path(tmp_path: Path) -> None:
    from monitor.errors import MonitorError
    from monitor.files import write_output

    with pytest.raises(MonitorError, match=r"cannot write report file /proc/self/status\.png"):
        write_output(Path("/proc/self/status.png"), b"x", "report file")
    with pytest.raises(MonitorError, match=r"report file /dev/full is a device"):
        write_output(Path("/dev/full"), b"x", "report file")
    target = tmp_path / "real.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    write_output(link, b"new", "report file")
    assert link.is_symlink() and target.read_text() == "new"


def _services(config: Path) -> Services:
    settings = load_settings(config)
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    return Services(settings, open_repository(settings), metrics)


def test_plan_counts_windows_by_arithmetic(config: Path) -> None:
    settings = load_settings(config)
    now = datetime(2026, 3, 1, 12, 3, 30, tzinfo=UTC)
    since = now - timedelta(days=3650)
    started = time.perf_counter()
    plan = plan_windows(settings, "default", since, now, now)
    assert time.perf_counter() - started < 0.5  # listing them took seconds
    # 5-minute windows from the one holding `since`; due: end + 1 minute lateness <= now,
    # so the last one (12:00 to 12:05, holding `now`) is not due.
    assert plan.first == datetime(2016, 3, 3, 12, 0, tzinfo=UTC)
    assert (plan.due, plan.not_due) == (3650 * 288, 1)
    keys = list(plan_windows(settings, "s", now - timedelta(minutes=17), now, now).windows())
    assert [k.start.strftime("%H:%M") for k in keys] == ["11:45", "11:50", "11:55"]
    edge = plan_windows(settings, "s", now - timedelta(minutes=10), now, now + timedelta(days=1))
    assert (edge.due, edge.not_due) == (3, 0)
    empty = plan_windows(settings, "s", now, now + timedelta(minutes=5), now)
    assert (empty.due, empty.not_due) == (0, 2)


def test_a_ten_year_dry_run_is_exact_and_small(config: Path) -> None:
    from monitor.errors import TooManyWindowsError

    found = _services(config)
    try:
        until = datetime.now(UTC)
        since = until - timedelta(days=3650)
        tracemalloc.start()
        try:
            started = time.perf_counter()
            summary = backfill_range(
                found, "default", since, until, recompute=False, dry_run=True,
                max_windows=10_000_000,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        expected = plan_windows(found.settings, "default", since, until, datetime.now(UTC)).due
        assert summary.planned == summary.computed == expected > 1_000_000
        assert peak < 5_000_000, peak  # bytes: nothing per window (the list took 1.27 GB)
        assert seconds < 5
        with pytest.raises(TooManyWindowsError, match=r"windows of stream 'default'"):
            backfill_range(
                found, "default", since, until, recompute=False, dry_run=True, max_windows=10
            )
    finally:
        found.close()


def test_range_over_the_cap_is_refused_naming_the_option(config: Path) -> None:
    args = ["backfill", "-s", "default", "--since", "-3650d", "--until", "now", "--dry-run"]
    result = runner.invoke(app, [*args, "-c", str(config)])
    assert_error(result, EXIT_USAGE, "--max-windows", "max_catch_up")
    assert re.search(r"has 1,051,[12]\d\d windows", flat(result.output))  # ten years of 5 min
    capped = runner.invoke(app, [*args, "--max-windows", "2000000", "--json", "-c", str(config)])
    assert capped.exit_code == 0, capped.output
    assert json.loads(capped.stdout)["windows"][0]["computed"] > 1_000_000


def test_range_until_defaults_to_now(config: Path) -> None:
    """As report and windows list: the runbook's `backfill --stream S --since -2h --dry-run`."""
    args = ["backfill", "-s", "default", "--since", "-2h", "--dry-run", "--json"]
    result = runner.invoke(app, [*args, "-c", str(config)])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)["windows"][0]
    explicit = runner.invoke(app, [*args, "--until", "now", "-c", str(config)])
    assert explicit.exit_code == 0, explicit.output
    again = json.loads(explicit.stdout)["windows"][0]
    # two hours of 5-minute windows (24, or 25 when since is mid-window), due or not yet
    assert 24 <= planned["planned"] + planned["not_due"] <= 25
    # the same plan (a 5-minute boundary may pass between the two runs: one window more)
    assert abs(again["planned"] - planned["planned"]) <= 1


def test_a_read_error_names_the_file(config: Path) -> None:
    # A regular file whose read fails (EIO at offset 0): the OSError of a read has no name.
    args = ["backfill", "--from-jsonl", "/proc/self/mem", "--dry-run", "-c", str(config)]
    result = runner.invoke(app, args)
    assert_error(result, EXIT_ERROR, "cannot read /proc/self/mem after line 0")


def test_a_line_over_the_request_limit_is_invalid_and_not_held(
    config: Path, tmp_path: Path
) -> None:
    config.write_text(config.read_text() + "[ingest]\nmax_body_bytes = 100000\n")
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        fh.write(_line(id="small") + "\n")
        fh.write('{"id": "big", "prompt": "' + "x" * 30_000_000 + '"}\n')  # 30 MB
        fh.write(_line(id="after") + "\n")
    args = ["backfill", "--from-jsonl", str(path), "--dry-run", "--json", "-c", str(config)]
    tracemalloc.start()
    try:
        result = runner.invoke(app, args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == EXIT_ERROR, result.output
    assert "invalid line 2: a line of 30,000,027 bytes, over the limit" in result.stderr
    records = json.loads(result.stdout)["records"]
    assert (records["lines"], records["invalid"], records["accepted"]) == (3, 1, 2)
    assert peak < 10_000_000, peak  # the 30 MB line was never held


def test_from_jsonl_windows_over_the_cap_are_left_and_said(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "decade.jsonl"
    path.write_text(
        _line(id="old", timestamp="2016-01-01T00:00:00Z")
        + "\n"
        + _line(id="new", timestamp="2026-01-01T00:00:00Z")
        + "\n"
    )
    args = ["backfill", "--from-jsonl", str(path), "--dry-run", "--json", "-c", str(config)]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_ERROR, result.output
    assert "--max-windows 10,000" in flat(result.stderr) and "windows are left" in result.stderr
    data = json.loads(result.stdout)
    assert data["records"]["accepted"] == 2 and data["windows"] == []
    capped = runner.invoke(app, [*args, "--max-windows", "2000000"])
    assert capped.exit_code == 0, capped.output
    (windows,) = json.loads(capped.stdout)["windows"]
    assert windows["computed"] == windows["planned"] > 1_000_000
