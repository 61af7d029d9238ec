"""`backfill --from-jsonl` and range backfill on real traffic (MMBench as ID, MME as a shift),
`windows explain` and `report` on the windows it computed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image

from monitor.commands.report import PANELS, PNG_SIZE
from tests.integration.commands.conftest import (
    BASE,
    WINDOW_RECORDS,
    Workspace,
    window_records,
)
from tests.integration.llava_traffic import rfc3339, write_jsonl

pytestmark = pytest.mark.slow
FIVE = timedelta(minutes=5)
ID_WINDOWS, SHIFT_WINDOWS = 4, 4
MIXED = ID_WINDOWS + SHIFT_WINDOWS  # index of the window with 15 ID and 5 shifted records
END = BASE + (MIXED + 1) * FIVE


def _rows(windows: list[Any]) -> list[dict[str, Any]]:
    return [w.to_dict() for w in windows]


def _without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "computed_at"} for row in rows]


@pytest.fixture(scope="module")
def backfilled(workspace: Workspace) -> dict[str, Any]:
    """The traffic file, backfilled once: 4 ID windows, 4 MME windows, one mixed window."""
    records = []
    for w in range(ID_WINDOWS):
        part = workspace.mmbench[w * WINDOW_RECORDS : (w + 1) * WINDOW_RECORDS]
        records += window_records(part, BASE + w * FIVE)  # no ids: content ids
    for w in range(SHIFT_WINDOWS):
        part = workspace.mme[w * WINDOW_RECORDS : (w + 1) * WINDOW_RECORDS]
        records += window_records(part, BASE + (ID_WINDOWS + w) * FIVE)
    start = BASE + MIXED * FIVE
    records += window_records(workspace.mmbench[100:115], start, prefix="mix-id")
    records += window_records(
        workspace.mme[100:105], start + timedelta(seconds=3), prefix="mix-shift"
    )
    path = write_jsonl(workspace.root / "traffic.jsonl", records)
    result = workspace.cli("backfill", "--from-jsonl", str(path))
    assert result.exit_code == 0, result.output
    repository = workspace.repository()
    try:
        windows = repository.get_windows("default", BASE, END)
        samples = repository.count_samples("default", BASE, END)
    finally:
        repository.close()
    return {"path": path, "records": records, "windows": windows, "samples": samples}


def test_from_jsonl_windows_rise_on_the_shift_and_a_rerun_adds_nothing(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    windows = backfilled["windows"]
    assert backfilled["samples"] == len(backfilled["records"])
    assert [w.key.start for w in windows] == [BASE + i * FIVE for i in range(MIXED + 1)]
    assert all(w.status == "ok" for w in windows)
    held_out, shifted = windows[:ID_WINDOWS], windows[ID_WINDOWS:MIXED]
    assert max(w.jsd.text for w in held_out) < min(w.jsd.text for w in shifted)
    assert max(int(w.risk_level) for w in held_out) < 2
    assert all(int(w.risk_level) == 2 for w in shifted[1:])  # critical by the second window

    rerun = workspace.cli("backfill", "--from-jsonl", str(backfilled["path"]), "--json")
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)["records"]
    assert summary["accepted"] == 0 and summary["duplicates"] == len(backfilled["records"])
    repository = workspace.repository()
    try:
        assert repository.count_samples("default", BASE, END) == backfilled["samples"]
        assert _rows(repository.get_windows("default", BASE, END)) == _rows(windows)
    finally:
        repository.close()


def test_invalid_lines_are_reported_with_their_line_numbers(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    start = BASE + timedelta(days=1)
    records: list[Any] = window_records(workspace.mme[200:240], start, prefix="bad-file")
    lines = [json.dumps(r) for r in records]
    lines[6] = '{"prompt": "cut short'  # line 7: not JSON
    lines[22] = json.dumps({**records[22], "prompt": 5})  # line 23: wrong type
    path = workspace.root / "five-percent-invalid.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = workspace.cli("backfill", "--from-jsonl", str(path), "--stream", "drill")
    assert result.exit_code == 1, result.output
    assert "invalid line 7: not JSON" in result.stderr
    assert "invalid line 23: prompt:" in result.stderr
    assert result.stderr.count("invalid line") == 2
    repository = workspace.repository()
    try:
        assert repository.count_samples("drill", start, start + 2 * FIVE) == 38
    finally:
        repository.close()

    strict = workspace.root / "strict.jsonl"
    later = window_records(workspace.mme[300:310], start + timedelta(days=1), prefix="strict")
    lines = [json.dumps(r) for r in later]
    lines[3] = "[1, 2]"
    strict.write_text("\n".join(lines) + "\n")
    result = workspace.cli("backfill", "--from-jsonl", str(strict), "--strict")
    assert result.exit_code == 1
    assert "line 4" in result.stderr and "--strict" in result.stderr
    repository = workspace.repository()
    try:
        ids = [f"strict-{i}" for i in range(4, 10)]
        assert repository.locate_records(ids) == {}  # nothing after the bad line
    finally:
        repository.close()


def test_range_backfill_is_idempotent_and_dry_run_writes_nothing(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    span = ["--stream", "default", "--since", rfc3339(BASE), "--until", rfc3339(END)]
    repository = workspace.repository()
    try:
        before = _rows(repository.get_windows("default", BASE, END))
        transitions = len(repository.risk_transitions("default"))
        dry = workspace.cli("backfill", *span, "--recompute", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        plan = json.loads(dry.stdout)["windows"][0]
        assert plan["dry_run"] and plan["computed"] == MIXED + 1 and plan["existing"] == MIXED + 1
        assert _rows(repository.get_windows("default", BASE, END)) == before  # computed_at too

        for _ in range(2):
            again = workspace.cli("backfill", *span, "--recompute")
            assert again.exit_code == 0, again.output
            after = _rows(repository.get_windows("default", BASE, END))
            assert _without_time(after) == _without_time(before)
            assert [r["computed_at"] for r in after] != [r["computed_at"] for r in before]
        assert len(repository.risk_transitions("default")) == transitions
    finally:
        repository.close()


def test_range_backfill_killed_midway_finishes_on_rerun(workspace: Workspace) -> None:
    since, until = BASE - timedelta(days=10), BASE - timedelta(days=8)
    expected = [since + i * FIVE for i in range(2 * 288)]
    args = ["backfill", "--stream", "drill", "--since", rfc3339(since), "--until", rfc3339(until)]
    process = subprocess.Popen(
        [sys.executable, "-c", "from monitor.cli import main; main()", *args],
        env={**os.environ, "MLLM_MONITOR_CONFIG": str(workspace.config)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    repository = workspace.repository()
    try:
        deadline = time.monotonic() + 120
        while len(repository.get_windows("drill", since, until)) < 40:
            assert process.poll() is None, "backfill ended before it could be killed"
            assert time.monotonic() < deadline, "backfill computed no windows"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        done = len(repository.get_windows("drill", since, until))
        assert 40 <= done < len(expected)

        result = workspace.cli("backfill", *args[1:], "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)["windows"][0]
        assert summary["existing"] == done and summary["computed"] == len(expected) - done
        windows = repository.get_windows("drill", since, until)
        assert [w.key.start for w in windows] == expected  # no duplicate, no gap
    finally:
        if process.poll() is None:
            process.kill()
        repository.close()


def test_windows_explain_lists_the_most_shifted_samples_first(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    mixed = backfilled["windows"][MIXED]
    result = workspace.cli("windows", "explain", str(mixed.id), "--top-k", "8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    samples = data["top_ood_samples"]
    assert len(samples) == 8
    scores = [s["ood_score"] for s in samples]
    assert scores == sorted(scores, reverse=True)
    assert all(s["id"].startswith("mix-shift-") for s in samples[:3])
    assert all(s["nearest_id"] and s["nearest_id"][0].startswith("id-") for s in samples)
    assert all(s["prompt"] is None for s in samples)  # raw text is not retained by default

    critical = backfilled["windows"][MIXED - 1]
    text = workspace.cli("windows", "explain", str(critical.id))
    assert text.exit_code == 0, text.output
    # The drift detector decides criticals by default: explain shows it alarmed.
    assert "detector:" in text.stdout and "clear level" in text.stdout and "text" in text.stdout
    explained = json.loads(workspace.cli("windows", "explain", str(critical.id), "--json").stdout)
    shares = [t["bound_share"] for t in explained["terms"] if t["bound_share"] is not None]
    assert sum(shares) == pytest.approx(1.0)
    assert explained["risk"]["recomputed_risk_level"] == int(critical.risk_level) == 2
    assert explained["risk"]["detector"]["alarmed"] is True
    assert explained["risk"]["detector"]["stored"] == critical.to_dict()["detector"]
    assert len(explained["risk"]["history"]) == 3


def test_report_png_and_html(workspace: Workspace, backfilled: dict[str, Any]) -> None:
    span = ["--stream", "default", "--since", rfc3339(BASE), "--until", rfc3339(END)]
    png = workspace.root / "report.png"
    result = workspace.cli("report", *span, "--out", str(png))
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size == PNG_SIZE and image.format == "PNG"

    page = workspace.root / "report.html"
    result = workspace.cli("report", *span, "--out", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.count("src='data:image/png;base64,") == len(PANELS)
    assert "<table id='windows'>" in text and "<table id='transitions'>" in text
    for window in backfilled["windows"]:
        assert f"<td>{window.id}</td>" in text
    assert "http" not in text.replace("mllm-monitor", "")  # self-contained: nothing fetched


def test_hostile_lines_are_invalid_lines_not_the_end_of_the_run(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    start = BASE + timedelta(days=5)
    records = window_records(workspace.mme[320:326], start, prefix="hostile")
    lines = [json.dumps(r) for r in records]
    lines[1] = json.dumps({**records[1], "timestamp": "0001-01-01T00:00:00+01:00"})
    lines[2] = json.dumps({**records[2], "timestamp": "9999-12-31T23:59:59-01:00"})
    lines[3] = json.dumps({**records[3], "timestamp": 10**400})  # too large for a float
    lines[4] = "[" * 100_000 + "]" * 100_000  # RecursionError in the JSON parser
    path = workspace.root / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = workspace.cli("backfill", "--from-jsonl", str(path), "--stream", "drill")
    assert result.exit_code == 1, result.output  # invalid lines: 1, not 3
    assert "unexpected" not in result.output and "Traceback" not in result.output
    for number in (2, 3, 4, 5):
        assert f"invalid line {number}:" in result.stderr, result.stderr
    repository = workspace.repository()
    try:
        assert repository.locate_records(["hostile-0", "hostile-5"]) == {
            "hostile-0": "sample",
            "hostile-5": "sample",
        }
    finally:
        repository.close()


def test_windows_explain_escapes_stored_ids(
    workspace: Workspace, backfilled: dict[str, Any]
) -> None:
    """Rows stored before ids were checked may hold C1 controls and bidi overrides: explain
    shows them escaped, never raw to the terminal."""
    import sqlite3

    mixed = backfilled["windows"][MIXED]
    hostile = "\u202e\x9b31m"
    db = sqlite3.connect(workspace.root / "monitor.db")
    rename = [
        "PRAGMA foreign_keys = OFF",
        "UPDATE samples SET id = id || ? WHERE id LIKE 'mix-shift-%'",
        "UPDATE embeddings SET sample_id = sample_id || ? WHERE sample_id LIKE 'mix-shift-%'",
    ]
    try:
        for statement in rename:
            db.execute(statement, () if "PRAGMA" in statement else (hostile,))
        db.commit()
        result = workspace.cli("windows", "explain", str(mixed.id), "--top-k", "3")
        assert result.exit_code == 0, result.output
        assert "\u202e" not in result.stdout and "\x9b" not in result.stdout
        assert "mix-shift-" in result.stdout and "\\u202e\\x9b31m" in result.stdout
    finally:
        db.execute("PRAGMA foreign_keys = OFF")
        for table, column in (("samples", "id"), ("embeddings", "sample_id")):
            db.execute(
                f"UPDATE {table} SET {column} = substr({column}, 1, length({column}) - ?) "
                f"WHERE {column} LIKE ?",
                (len(hostile), f"%{hostile}"),
            )
        db.commit()
        db.close()
