"""The quickstart's pure parts: its settings, the replay plan, the outcome, the workspace."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.commands import quickstart
from monitor.config import load_settings
from monitor.reference.id_records import IDRecord


def records(n: int, tag: str) -> list[IDRecord]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        IDRecord(id=f"{tag}-{i}", timestamp=now, prompt=f"{tag} {i}?", response="A")
        for i in range(n)
    ]


def test_written_settings_load_and_say_what_the_quickstart_needs(tmp_path: Path) -> None:
    path = tmp_path / "mllm-monitor.toml"
    path.write_text(quickstart.config_text(tmp_path, port=18080, model_dir=tmp_path / "minilm"))
    settings = load_settings(path)
    assert settings.database.url.startswith("sqlite:///")
    assert settings.server.host == "127.0.0.1" and settings.server.port == 18080
    assert settings.encoders.image.kind == "none"
    assert settings.encoders.text.kind == "hf_mean_pool"
    assert settings.encoders.text.model == str(tmp_path / "minilm")
    assert settings.windows.size == quickstart.WINDOW
    assert settings.windows.min_samples == quickstart.WINDOW_RECORDS
    assert [s.name for s in settings.streams] == [quickstart.STREAM]


def test_plan_puts_id_then_shift_in_aligned_past_windows() -> None:
    now = datetime(2026, 3, 1, 12, 30, 41, tzinfo=UTC)
    total = quickstart.ID_WINDOWS + quickstart.SHIFT_WINDOWS
    plan = quickstart.example_windows(
        records(quickstart.ID_WINDOWS * quickstart.WINDOW_RECORDS, "id"),
        records(quickstart.SHIFT_WINDOWS * quickstart.WINDOW_RECORDS, "shift"),
        now,
    )
    assert [w.phase for w in plan] == ["ID"] * quickstart.ID_WINDOWS + ["shift"] * (
        quickstart.SHIFT_WINDOWS
    )
    assert plan[-1].end == datetime(2026, 3, 1, 12, 29, tzinfo=UTC)  # a minute before now
    assert plan[0].start == plan[-1].end - total * quickstart.WINDOW
    assert all(b.start == a.end for a, b in itertools.pairwise(plan))
    payload = quickstart.window_payload(plan[0], "run")
    assert len(payload) == quickstart.WINDOW_RECORDS
    times = [datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")) for p in payload]
    assert all(plan[0].start <= t < plan[0].end for t in times)
    assert len({p["id"] for p in payload}) == len(payload)


def test_plan_refuses_too_little_traffic() -> None:
    with pytest.raises(quickstart.QuickstartError):
        quickstart.example_windows(records(5, "id"), records(5, "shift"), datetime.now(UTC))


def report(phase: str, level: int) -> quickstart.WindowReport:
    window = quickstart.PlannedWindow(0, phase, datetime(2026, 1, 1, tzinfo=UTC), ())
    result: dict[str, Any] = {"risk_level": level}
    return quickstart.WindowReport(window, result)


def test_outcome_counts_quiet_id_and_first_critical_shift() -> None:
    reports = [report("ID", 0), report("ID", 1), report("shift", 1), report("shift", 2)]
    result = quickstart.outcome(reports)
    assert (result.id_windows, result.id_warnings, result.id_critical) == (2, 1, 0)
    assert (result.shift_flagged, result.first_critical) == (2, 2)
    assert result.as_expected
    assert not quickstart.outcome([report("ID", 2), report("shift", 2)]).as_expected
    assert not quickstart.outcome([report("ID", 0), report("shift", 1)]).as_expected


def test_workspace_refuses_a_foreign_directory_and_cleans_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(quickstart.QuickstartError, match="not made by the quickstart"):
        quickstart.prepare_workspace(foreign)
    assert (foreign / "notes.txt").exists()

    own = tmp_path / "own"
    quickstart.prepare_workspace(own)
    (own / "references").mkdir()
    (own / "mllm-monitor.db").write_text("old")
    (own / "keep.txt").write_text("user file")
    quickstart.prepare_workspace(own)
    assert not (own / "references").exists() and not (own / "mllm-monitor.db").exists()
    assert (own / "keep.txt").exists()


def test_window_line_shows_risk_and_terms() -> None:
    window = quickstart.PlannedWindow(
        3, "shift", datetime(2026, 1, 1, 10, 0, tzinfo=UTC), tuple(records(30, "s"))
    )
    line = quickstart.window_line(
        quickstart.WindowReport(
            window,
            {
                "n": 30,
                "risk_level": 2,
                "upper_bound": {"scale_adjusted": 0.7, "p_value": 0.002},
                "jsd": {"text": 0.5, "response": 0.6},
                "p_values": {"text": 0.002, "response": None},
                "ood_fraction": 1.0,
            },
        )
    )
    assert line.startswith("10:00-10:01")
    assert "MME (shift)" in line and "critical" in line and "0.7000" in line and "100%" in line
