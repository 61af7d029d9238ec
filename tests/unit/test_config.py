"""Settings: TOML file, environment overrides, validation messages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import load_settings, resolve_config_path
from monitor.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MLLM_MONITOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray ./mllm-monitor.toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_match_the_design() -> None:
    s = load_settings()
    assert s.source is None
    assert s.database.url == "sqlite:///./mllm-monitor.db"
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.encoders.image.kind == "clip_vision" and s.encoders.fusion == "mean"
    assert s.windows.size == timedelta(minutes=5) and s.windows.min_samples == 50
    assert s.alerts.bound_budget == "auto" and s.alerts.hysteresis_k_of_m == (2, 3)
    assert [st.name for st in s.streams] == ["default"]


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[database]
url = "postgresql+psycopg://monitor@db/monitor"
[windows]
size = "10m"
lateness = "90s"
[alerts]
bound_budget = 2.5
hysteresis = "3/4"
[[streams]]
name = "chat"
sample_rate = 0.25
[[streams]]
name = "vision"
""",
    )
    s = load_settings(path)
    assert s.source == path
    assert s.database.url.startswith("postgresql+psycopg://")
    assert s.windows.size == timedelta(minutes=10) and s.windows.lateness == timedelta(seconds=90)
    assert s.alerts.bound_budget == 2.5 and s.alerts.hysteresis_k_of_m == (3, 4)
    assert [(st.name, st.sample_rate) for st in s.streams] == [("chat", 0.25), ("vision", 1.0)]
    windows = s.redacted()["windows"]
    assert (windows["size"], windows["lateness"], windows["min_samples"]) == ("10m", "90s", 50)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite:///a.db"\n[windows]\nmin_samples = 10\n')
    monkeypatch.setenv("MLLM_MONITOR_DATABASE__URL", "sqlite:///b.db")
    monkeypatch.setenv("MLLM_MONITOR_SERVER__PORT", "9090")
    s = load_settings(path)
    assert s.database.url == "sqlite:///b.db"
    assert s.server.port == 9090
    assert s.windows.min_samples == 10


def test_config_path_from_environment_then_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_config_path() is None
    (tmp_path / "mllm-monitor.toml").write_text("[server]\nport = 1234\n")
    assert load_settings().server.port == 1234
    other = write(tmp_path, "[server]\nport = 4321\n")
    monkeypatch.setenv("MLLM_MONITOR_CONFIG", str(other))
    assert load_settings().server.port == 4321


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[windows]\nsize = "5 minutes"\n', "windows.size: invalid duration '5 minutes'"),
        ("[windows]\nsise = 3\n", "windows.sise: unknown key"),
        ('[alerts]\nhysteresis = "4/3"\n', "alerts.hysteresis: must be 'k/m' with 1 <= k <= m"),
        ("[alerts]\nfalse_alarm_rate = 0.9\n", "alerts.false_alarm_rate"),
        ('[server]\nhost = "0.0.0.0"\n', "server.token must be set"),
        ('[database]\nurl = "mysql://x"\n', "database.url: must be a sqlite"),
        ('[encoders]\nfusion = "sum"\n', "encoders.fusion"),
        ('[encoders]\ndevice = "gpu"\n', "encoders.device"),
        ('[[streams]]\nname = "a"\n[[streams]]\nname = "a"\n', "repeated: a"),
    ],
)
def test_invalid_settings_name_the_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert any(problem in p for p in info.value.problems), info.value.problems
    assert problem in str(info.value)


def test_token_allows_binding_off_loopback(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[server]\nhost = "0.0.0.0"\ntoken = "s3cret"\n'))
    assert s.server.host == "0.0.0.0"
    assert s.redacted()["server"]["token"] == "***"
    assert load_settings(write(tmp_path, '[server]\nhost = "::1"\n')).server.host == "::1"


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"cannot read config file.*line 1"):
        load_settings(write(tmp_path, "[database\n"))


def test_bad_environment_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_MONITOR_SERVER__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings()
