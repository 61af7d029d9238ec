"""The calibration self-check through the CLI: ``calibrate`` runs it on held-out records of a
real store (tiny real encoder) and prints it, ``calibration.json`` keeps it, ``reference show``
prints it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import app
from tests.conftest import LLAVA_SHIFT
from tests.support import config_files
from tests.unit.embedding.conftest import make_xlmr

pytestmark = pytest.mark.slow
runner = CliRunner()


def write_config(tmp_path: Path, text: Path) -> Path:
    return config_files.write_config(
        tmp_path / "monitor.toml",
        encoders={
            "local_files_only": True,
            "image": {"kind": "none"},
            "text": {"kind": "xlmr_embedding_layer", "model": text},
        },
        reference={"root": tmp_path / "references"},
    )


def id_manifest(tmp_path: Path, records: int) -> Path:
    """``records`` prompts cut from the LLaVA-Bench answers (one distribution: any share of
    them is as ID as the rest)."""
    lines = (LLAVA_SHIFT / "qa90_gpt4_answer.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    path = tmp_path / "id.jsonl"
    rows = []
    for i in range(records):
        text, cut = texts[i % len(texts)] * 3, i // len(texts) * 40
        rows.append(
            {"id": f"q{i}", "prompt": text[cut : cut + 80], "response": text[cut + 80 :][:120]}
        )
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def test_calibrate_runs_and_prints_the_self_check(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_xlmr(tmp_path / "xlmr"))
    built = runner.invoke(
        app, ["reference", "build", "-c", str(config), "-m", str(id_manifest(tmp_path, 400))]
    )
    assert built.exit_code == 0, built.output
    calibrated = runner.invoke(app, ["calibrate", "-c", str(config), "--window-sizes", "4"])
    assert calibrated.exit_code == 0, calibrated.output
    check = json.loads((tmp_path / "references" / "default" / "calibration.json").read_text())[
        "self_check"
    ]
    # 400 records: 200 compared with, 40 of the pool's 200 held out, windows of 4.
    assert check["ran"] and check["holdout_records"] == 40 and check["window_records"] == 4
    assert check["windows"] == 400 and check["detector"]["one_sequence"]["windows"] == 400
    verdict = "  within its bounds" if check["passed"] else "  OUTSIDE its bounds: "
    printed = calibrated.output.splitlines()
    start = next(
        i
        for i, line in enumerate(printed)
        if line.startswith("self-check on 400 windows of 4 held-out ID records (of 40): warned ")
    )
    assert printed[start + 1].startswith("  drift detector over them: ")
    assert printed[start + 2].startswith(verdict)

    shown = runner.invoke(app, ["reference", "show", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    for line in printed[start : start + 3]:
        assert f"    {line}" in shown.output.splitlines(), shown.output


def test_a_store_too_small_to_hold_records_out_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path, make_xlmr(tmp_path / "xlmr"))
    built = runner.invoke(
        app, ["reference", "build", "-c", str(config), "-m", str(id_manifest(tmp_path, 160))]
    )
    assert built.exit_code == 0, built.output
    # A pool of 80 fits windows of 4 (5%), the 64 left after holding out 16 do not.
    calibrated = runner.invoke(app, ["calibrate", "-c", str(config), "--window-sizes", "4"])
    assert calibrated.exit_code == 0, calibrated.output
    assert (
        "self-check: not run (holding out 20% of the pool (16 of 80 records) would leave "
        "pseudo-windows of at most 3 records, too few for windows of 4; add ID records for a "
        "self-check)" in calibrated.output
    )
    shown = runner.invoke(app, ["reference", "show", "-c", str(config)])
    assert "    self-check: not run (holding out 20% of the pool" in shown.output
