"""`mllm-monitor db upgrade | downgrade | current` and the errors a user meets first."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from monitor.cli import EXIT_ERROR, EXIT_USAGE, app
from monitor.config import load_settings
from monitor.errors import DatabaseUnavailableError, SchemaMismatchError
from monitor.store import migrate
from monitor.store.repository import open_repository
from tests.support.config_files import write_config

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def _use(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MLLM_MONITOR_DATABASE__URL", url)


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_upgrade_current_downgrade(
    monkeypatch: pytest.MonkeyPatch, db_url: str, engine: Engine
) -> None:
    _use(monkeypatch, db_url)
    head = migrate.head_revision()
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == EXIT_ERROR
    assert "empty (no schema)" in result.output and f"head:     {head}" in result.output
    assert "mllm-monitor db upgrade" in _one_error_line(result.output)

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"empty -> {head}" in result.output
    assert migrate.current_revision(engine) == head
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and "already at revision" in result.output

    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0, result.output
    assert f"current:  {head}" in result.output

    # Downgrading asks first; "no" leaves the schema alone.
    result = runner.invoke(app, ["db", "downgrade", "--revision", "base"], input="n\n")
    assert result.exit_code != 0 and "Data in the tables it drops is lost" in result.output
    assert migrate.current_revision(engine) == head
    result = runner.invoke(app, ["db", "downgrade", "--revision", "base", "--yes"])
    assert result.exit_code == 0, result.output
    assert migrate.current_revision(engine) is None


def test_settings_file_is_honoured(tmp_path: Path) -> None:
    db = tmp_path / "from-file.db"
    path = write_config(tmp_path / "m.toml", database={"url": f"sqlite:///{db}"})
    result = runner.invoke(app, ["db", "upgrade", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert db.is_file()


def test_unknown_scheme_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "mysql://u:p@127.0.0.1/x")
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == EXIT_USAGE
    assert "database.url" in result.output and "Traceback" not in result.output


def test_malformed_url_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "postgresql+psycopg://u:hunter2@127.0.0.1:notaport/x")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == EXIT_ERROR
    line = _one_error_line(result.output)
    assert "invalid database URL" in line and "hunter2" not in line


def test_unreachable_server_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "postgresql+psycopg://u:hunter2@127.0.0.1:1/x")  # nothing listens on 1
    for command in (["db", "current"], ["db", "upgrade"]):
        result = runner.invoke(app, command)
        assert result.exit_code == EXIT_ERROR
        line = _one_error_line(result.output)
        assert "u:***@127.0.0.1:1/x" in line and "hunter2" not in line
        assert "Connection refused" in line or "connection failed" in line


def test_missing_sqlite_directory_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use(monkeypatch, f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == EXIT_ERROR
    assert "unable to open database file" in _one_error_line(result.output)


def test_unknown_revision_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use(monkeypatch, f"sqlite:///{tmp_path / 'm.db'}")
    result = runner.invoke(app, ["db", "upgrade", "--revision", "nosuch"])
    assert result.exit_code == EXIT_ERROR
    assert "nosuch" in _one_error_line(result.output)


def test_open_repository_refuses_a_database_not_at_head(
    monkeypatch: pytest.MonkeyPatch, db_url: str, engine: Engine
) -> None:
    _use(monkeypatch, db_url)
    settings = load_settings()
    with pytest.raises(SchemaMismatchError, match="mllm-monitor db upgrade"):
        open_repository(settings)
    migrate.upgrade(engine)
    repo = open_repository(settings)
    try:
        assert repo.list_streams() == []
    finally:
        repo.close()


def test_open_repository_does_not_create_a_missing_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "absent.db"
    _use(monkeypatch, f"sqlite:///{path}")
    with pytest.raises(SchemaMismatchError, match="empty"):
        open_repository(load_settings())
    assert not path.exists()


def test_open_repository_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, "postgresql+psycopg://u:p@127.0.0.1:1/x")
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1"):
        open_repository(load_settings())
