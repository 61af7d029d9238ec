"""The command line: --help, --version, config check and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor import __version__
from monitor.cli import EXIT_USAGE, app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MLLM_MONITOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mllm-monitor {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "config" in result.output
    result = runner.invoke(app, ["config", "check", "--help"])
    assert result.exit_code == 0 and "--config" in result.output


def test_config_check_on_defaults_and_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "embedded defaults" in result.output
    path = tmp_path / "m.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\ntoken = "hidden"\n')
    result = runner.invoke(app, ["config", "check", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["server"] == {"host": "0.0.0.0", "port": 8080, "token": "***"}


def test_invalid_config_exits_2_with_the_problem_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[windows]\nsize = "soon"\n')
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == EXIT_USAGE
    assert "windows.size" in result.output
    assert "Traceback" not in result.output
