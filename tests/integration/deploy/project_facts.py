"""What the deploy files may refer to, read from the project itself: the app's routes, the CLI's
commands and options, the settings model, the console scripts. Used by the packaging tests
(test_k8s_manifests.py, test_packaging.py) to cross-check every manifest against the code.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import Settings, load_settings, unknown_environment_variables
from tests.integration.deploy.prometheus_server import DEPLOY, ROOT

__all__ = ["DEPLOY", "ROOT"]

PYPROJECT = ROOT / "pyproject.toml"

# Values standing in for secrets when a manifest's settings are loaded: any valid value works,
# nothing connects.
SECRET_STANDINS = {
    "MLLM_MONITOR_DATABASE__URL": "postgresql+psycopg://user:pass@db.invalid:5432/mllm_monitor",
    "MLLM_MONITOR_SERVER__TOKEN": "test-token",
    "MLLM_MONITOR_REFERENCE_MODEL__API_KEY": "test-key",
    "MLLM_MONITOR_RELAY__TOKEN": "test-token",
}


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    return scripts


@contextmanager
def daemon_app(tmp_dir: Path) -> Iterator[TestClient]:
    """A client of the app as the daemon builds it (records, health, metrics, the sidecar
    route, the windows route), on a throwaway SQLite file; the upstream is unreachable."""
    from monitor.daemon import serving_app
    from monitor.metrics import MonitorMetrics
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings
    from monitor.store.repository import open_repository

    settings = Settings(
        database={"url": f"sqlite:///{tmp_dir / 'routes.db'}"},
        proxy={"upstream": "http://127.0.0.1:9"},
    )
    engine = engine_from_settings(settings.database)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    repository = open_repository(settings)
    try:
        metrics = MonitorMetrics(CollectorRegistry(), ["default"])
        app, _ = serving_app(settings, repository, metrics)
        with TestClient(app) as client:
            yield client
    finally:
        repository.close()


@contextmanager
def relay_app() -> Iterator[TestClient]:
    """A client of ``mllm-monitor relay``'s app; the upstream and central are unreachable."""
    from monitor.relay.app import create_relay_app

    settings = Settings(
        proxy={"upstream": "http://127.0.0.1:9"}, relay={"central_url": "http://127.0.0.1:9"}
    )
    with TestClient(create_relay_app(settings, registry=CollectorRegistry())) as client:
        yield client


def route_exists(client: TestClient, method: str, path: str) -> bool:
    """Whether the app routes METHOD PATH (any answer but the app's own not_found / 405)."""
    response = client.request(method, path, headers={"Authorization": "Bearer test-token"})
    if response.status_code == 405:
        return False
    if response.status_code == 404:
        body = response.json() if "json" in response.headers.get("content-type", "") else {}
        code = body.get("error", {}).get("code")
        return code is not None and code != "not_found"
    return True


def cli_command(argv: list[str]) -> Any:
    """The (click-like) command that ``mllm-monitor ARGV...`` runs; asserts every --option it
    is given exists on that command (values are not checked: they may be paths elsewhere)."""
    from monitor.cli import app

    command: Any = typer.main.get_command(app)
    words = list(argv)
    # Groups have .commands (typer vendors click, so no isinstance check on click's classes).
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        assert sub is not None, f"`mllm-monitor {' '.join(argv)}`: no command {words[0]!r}"
        command = sub
        words.pop(0)
    assert not hasattr(command, "commands"), f"`mllm-monitor {' '.join(argv)}` is a group"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("-") and not re.match(r"-\d", word):  # -1, -24h are values
            option = word.split("=", 1)[0]
            assert option in known, f"`mllm-monitor {' '.join(argv)}`: no option {option}"
    return command


def assert_settings_variables(names: list[str] | set[str], where: str) -> None:
    """Every MLLM_MONITOR_* name is a setting (or one of the few non-setting variables)."""
    problems = unknown_environment_variables({name: "x" for name in names})
    assert problems == [], f"{where}: {problems}"


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with every MLLM_MONITOR_* variable replaced by ``values`` (restored after)."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith("MLLM_MONITOR_"):
                del os.environ[name]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_with_environment(config: Path, env: Mapping[str, str]) -> Settings:
    """The settings a process would get with this file and these variables."""
    with environment(env):
        return load_settings(config)
