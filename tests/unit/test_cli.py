"""The command line: --help, --version, config check, error lines and exit codes, secrets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from monitor import __version__, cli
from monitor.cli import EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, app
from monitor.errors import ConfigError, DatabaseUnavailableError, ReferenceStoreError, StorageError

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


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


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _all_commands() -> list[list[str]]:
    """Every command and group path of the CLI, including ones added later."""
    import typer.main

    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_has_help_and_the_top_level_lists_exit_codes() -> None:
    paths = _all_commands()
    assert ["config", "check"] in paths and ["calibrate"] in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
    top = runner.invoke(app, ["--help"])
    for code in ("0 success", "1 the monitor", "2 bad usage", "3 unexpected", "130 interrupted"):
        assert code in " ".join(top.output.split()), code
    assert "--debug" in top.output


def _raise(exc: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (ConfigError("bad", problems=["a.b: wrong"]), EXIT_USAGE, "error: bad a.b: wrong"),
        (ReferenceStoreError("store is broken"), EXIT_ERROR, "error: store is broken"),
        (DatabaseUnavailableError("db down"), EXIT_ERROR, "error: db down"),
        (PermissionError(13, "Permission denied", "/x/y"), EXIT_ERROR, "Permission denied: /x/y"),
        (ValueError("shape mismatch"), EXIT_INTERNAL, "unexpected ValueError: shape mismatch"),
        (KeyError("k"), EXIT_INTERNAL, "unexpected KeyError: 'k'"),
    ],
)
def test_any_error_is_one_line_and_an_exit_code_by_class(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, code: int, line: str
) -> None:
    monkeypatch.setattr(cli, "load_settings", _raise(exc))
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not escaped
    lines = _error_lines(result.output)
    assert len(lines) == 1 and line in lines[0], result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "load_settings", _raise(ValueError("boom")))
    result = runner.invoke(app, ["--debug", "config", "check"])
    assert result.exit_code == EXIT_INTERNAL
    assert "Traceback" in result.output and "ValueError: boom" in result.output
    assert _error_lines(result.output) == [
        "error: unexpected ValueError: boom (rerun with --debug for the traceback, and please "
        "report it)"
    ]


def test_keyboard_interrupt_exits_130_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "load_settings", _raise(KeyboardInterrupt()))
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == EXIT_INTERRUPTED == 130
    assert result.output == ""


def test_error_lines_are_sanitised(monkeypatch: pytest.MonkeyPatch) -> None:
    message = (
        "cannot reach postgresql+psycopg://u:hunter2@db/x\n second line \x1b[31mred\x07 "
        + "y" * 5000
    )
    monkeypatch.setattr(cli, "load_settings", _raise(StorageError(message)))
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == EXIT_ERROR
    (line,) = result.output.strip().splitlines()
    assert "hunter2" not in line and "u:***@db/x" in line
    assert "\x1b" not in line and "\\x1b[31mred\\x07" in line
    assert "second line" in line and len(line) < 2100 and line.endswith("[...]")


def test_a_multi_problem_config_error_is_a_short_list(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[windows]\nsize = "soon"\n[server]\nport = -1\n')
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == EXIT_USAGE
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: invalid config file")
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "- server.port",
        "- windows.size",
    ]


SECRETS = ("hunter2", "s3cret-token", "proxy-pass", "sk-live-123", "sk-query-456", "refpass")


def _secret_config(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.toml"
    path.write_text(
        f"""
[database]
url = "postgresql+psycopg://monitor:{SECRETS[0]}@db.internal:5432/monitor"
[server]
host = "0.0.0.0"
token = "{SECRETS[1]}"
[proxy]
upstream = "https://gateway:{SECRETS[2]}@llm.internal/v1"
[reference_model]
model_url = "https://refuser:{SECRETS[5]}@api.example.com/v1?api_key={SECRETS[4]}&x=1"
api_key = "{SECRETS[3]}"
"""
    )
    return path


def test_config_check_masks_every_secret_in_text_and_json(tmp_path: Path) -> None:
    path = _secret_config(tmp_path)
    text = runner.invoke(app, ["config", "check", "-c", str(path)])
    as_json = runner.invoke(app, ["config", "check", "-c", str(path), "--json"])
    for result in (text, as_json):
        assert result.exit_code == 0, result.output
        for secret in SECRETS:
            assert secret not in result.output, secret
    data = json.loads(as_json.output)
    assert data["database"]["url"] == "postgresql+psycopg://monitor:***@db.internal:5432/monitor"
    assert data["server"]["token"] == "***"
    assert data["proxy"]["upstream"] == "https://gateway:***@llm.internal/v1"
    assert data["reference_model"]["model_url"] == (
        "https://refuser:***@api.example.com/v1?api_key=***&x=1"
    )
    assert data["reference_model"]["api_key"] == "***"
    assert data["server"]["host"] == "0.0.0.0"  # not a secret, shown as is


def test_config_check_json_is_strict_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", "--json"])
    assert result.exit_code == 0
    json.loads(result.output, parse_constant=_no_constants)


def _no_constants(name: str) -> object:
    raise AssertionError(f"{name} is not JSON")


def test_compute_settings_are_applied_when_a_computing_command_starts(
    tmp_path: Path, monitor_threads: None
) -> None:
    import torch

    torch.set_num_threads(2)
    path = tmp_path / "m.toml"
    path.write_text(
        f'[compute]\nthreads = 1\n[reference]\nroot = "{tmp_path / "none"}"\n'
        f'[encoders]\nlocal_files_only = true\n[encoders.image]\nkind = "none"\n'
        f'[encoders.text]\nkind = "hf_mean_pool"\nmodel = "{tmp_path / "no-model"}"\n'
    )
    result = runner.invoke(app, ["calibrate", "-c", str(path)])
    assert result.exit_code == EXIT_ERROR, result.output  # no model, no store: but threads set
    assert torch.get_num_threads() == 1


@pytest.fixture
def monitor_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _command_paths() -> list[list[str]]:
    """Every command of the CLI, as the words that invoke it."""
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():  # a group's
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_names_no_internal_document(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "DESIGN" not in result.output and "../shared" not in result.output


def test_help_paragraphs_reflow_but_lists_keep_their_lines() -> None:
    from monitor.cli import _reflow

    text = "First\nline.\n\nA paragraph\nover lines:\n* one\n  item\n- two\n\n\bkept\nas is"
    assert (
        _reflow(text)
        == "First line.\n\nA paragraph over lines:\n* one item\n- two\n\n\bkept\nas is"
    )


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_every_command_help_is_reflowed(path: list[str]) -> None:
    """--help wraps prose to the terminal: no source line break is left inside a paragraph."""
    from monitor.cli import _LIST_ITEM

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for paragraph in (command.help or "").split("\n\n"):
        lines = paragraph.split("\n")
        if lines[0].startswith("\b"):
            continue
        assert all(_LIST_ITEM.match(line) for line in lines[1:]), (path, paragraph)
