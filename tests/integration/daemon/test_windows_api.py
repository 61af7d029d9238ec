"""GET /v1/windows and `mllm-monitor windows list|show`: the DESIGN section 3 shape, filters,
and 4xx JSON errors for bad parameters. Real SQLite, the real ingest app, no encoders."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from monitor.cli import app as cli
from monitor.config import Settings
from monitor.ingest.app import create_app
from monitor.ingest.readiness import Readiness
from monitor.ingest.service import IngestService
from monitor.ingest.windows_api import build_windows_router
from monitor.metrics import MonitorMetrics
from monitor.records import DetectorReading, RiskLevel, TermValues, WindowKey, WindowResult
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository, open_repository
from monitor.timestamps import parse_time
from tests.support.config_files import write_config

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIZE = timedelta(minutes=5)
TOKEN = "windows-token"
READING = DetectorReading(score=3.5, statistic=7.25, threshold=6.125, alarmed=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        database={"url": f"sqlite:///{tmp_path / 'w.db'}"},
        server={"token": TOKEN},
        streams=[{"name": "chat"}, {"name": "vision"}],
    )
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def repository(settings: Settings) -> Repository:
    repo = open_repository(settings)
    for i in range(3):
        repo.upsert_window(
            WindowResult(
                key=WindowKey("chat", T0 + i * SIZE, T0 + (i + 1) * SIZE),
                n=120,
                n_images=0,
                n_references=0,
                status="ok",
                risk_level=RiskLevel(i % 3),
                estimator_version="test",
                computed_at=T0 + (i + 1) * SIZE,
                jsd=TermValues(text=0.1 * (i + 1), response=0.2),
                p_values=TermValues(text=0.5, response=0.01),
                bound_scale_adjusted=0.7,
                jsd_mode="balanced",
                detector=READING if i == 2 else None,
            )
        )
    return repo


@pytest.fixture
def client(settings: Settings, repository: Repository) -> TestClient:
    metrics = MonitorMetrics(CollectorRegistry(), ["chat", "vision"])
    app = create_app(
        settings,
        repository,
        metrics,
        readiness=Readiness(),
        ingest=IngestService(settings, repository, metrics),
        routers=[build_windows_router(repository, ["chat", "vision"])],
    )
    return TestClient(app)


def get(client: TestClient, **params: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    answer = client.get("/v1/windows", params=params, headers={"Authorization": f"Bearer {TOKEN}"})
    return answer.status_code, answer.json()


def test_windows_in_the_design_shape_with_filters(client: TestClient) -> None:
    status, body = get(client, stream="chat")
    assert status == 200 and len(body["windows"]) == 3
    first = body["windows"][0]
    assert first["start"] == "2026-03-01T12:00:00Z" and first["end"] == "2026-03-01T12:05:00Z"
    assert set(first["jsd"]) == {"visual", "text", "output_id", "output_live", "response"}
    assert first["p_values"]["response"] == 0.01 and first["jsd"]["visual"] is None
    assert first["upper_bound"]["scale_adjusted"] == 0.7 and first["jsd_mode"] == "balanced"
    assert [w["risk_level"] for w in body["windows"]] == [0, 1, 2]
    # since / until select the windows that overlap [since, until)
    _, body = get(client, stream="chat", since="2026-03-01T12:05:00Z", until="1772367000")
    assert [w["start"] for w in body["windows"]] == ["2026-03-01T12:05:00Z"]
    # no stream: every configured stream
    _, body = get(client)
    assert len(body["windows"]) == 3
    status, body = get(client, stream="vision")
    assert status == 200 and body == {"windows": []}


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"stream": "nope"}, 404, "stream"),
        ({"since": "yesterday"}, 400, "since"),
        ({"until": "nan"}, 400, "until"),
        ({"since": "1e300"}, 400, "since"),
        ({"since": "2026-03-01T13:00:00Z", "until": "2026-03-01T12:00:00Z"}, 400, "until"),
    ],
)
def test_bad_parameters_are_4xx_json(
    client: TestClient, params: dict[str, str], status: int, field: str
) -> None:
    code, body = get(client, **params)
    assert code == status and body["error"]["field"] == field and body["error"]["message"]


def test_the_token_is_required(client: TestClient) -> None:
    assert client.get("/v1/windows").status_code == 401


def test_parse_time_forms() -> None:
    assert parse_time("2026-03-01T12:00:00Z") == T0
    assert parse_time("2026-03-01T13:00:00+01:00") == T0
    assert parse_time(str(T0.timestamp())) == T0


def test_since_and_until_may_be_relative_to_now_as_in_the_cli(client: TestClient) -> None:
    code, absolute = get(client, since="2016-01-01T00:00:00Z")
    code_relative, relative = get(client, since="-3650d", until="now")
    assert code == code_relative == 200 and absolute["windows"]
    assert relative == absolute
    assert get(client, since="+1d")[1]["windows"] == []


def cli_config(settings: Settings) -> Path:
    """A settings file for the CLI, next to the test's SQLite database."""
    config = Path(settings.database.url.removeprefix("sqlite:///")).with_name("m.toml")
    return write_config(config, database={"url": settings.database.url}, streams=[{"name": "chat"}])


def test_cli_windows_list_json_and_show(settings: Settings, repository: Repository) -> None:
    config = cli_config(settings)
    runner = CliRunner()
    result = runner.invoke(cli, ["windows", "list", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    windows = json.loads(result.output)["windows"]
    assert len(windows) == 3 and windows[2]["risk_level"] == 2
    assert windows == [w.to_dict() for w in repository.get_windows("chat")]
    result = runner.invoke(cli, ["windows", "list", "-c", str(config), "--since", "bad"])
    assert result.exit_code == 2 and "since" in result.output
    result = runner.invoke(cli, ["windows", "show", windows[1]["id"], "-c", str(config)])
    assert result.exit_code == 0 and json.loads(result.output) == windows[1]
    result = runner.invoke(cli, ["windows", "show", "999", "-c", str(config)])
    assert result.exit_code == 1


def test_windows_carry_the_detector_in_json_and_in_the_table(
    client: TestClient, settings: Settings
) -> None:
    _, body = get(client, stream="chat")
    assert [w["detector"] for w in body["windows"]] == [
        None,
        None,
        {"score": 3.5, "statistic": 7.25, "threshold": 6.125, "alarmed": True},
    ]
    answer = client.get(
        f"/v1/windows/{body['windows'][2]['id']}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.json()["detector"] == body["windows"][2]["detector"]
    config = cli_config(settings)
    result = CliRunner().invoke(cli, ["windows", "list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert "detector" in header and len(rows) == 3
    assert "7.25/6.125 alarmed" in rows[2] and "alarmed" not in rows[0]
