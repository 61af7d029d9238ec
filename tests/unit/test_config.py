"""Settings: TOML file, environment overrides, validation messages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import (
    MAX_DURATION,
    load_settings,
    mask_url,
    parse_duration,
    redact,
    resolve_config_path,
    unknown_environment_variables,
)
from monitor.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


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
    assert s.alerts.bound_budget == "auto"
    # The sequential detector decides criticals by default (no k-of-m rule).
    assert s.alerts.hysteresis == "" and s.alerts.hysteresis_k_of_m is None
    assert s.alerts.false_page_interval == timedelta(days=90)
    assert s.alerts.trials_hysteresis == (1, 1)
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
        ('[alerts]\nfalse_page_interval = "0s"\n', "alerts.false_page_interval: must be positive"),
        ('[alerts]\nfalse_page_interval = "90 days"\n', "alerts.false_page_interval: invalid"),
        ('[alerts]\nhysteresis = "2-3"\n', "alerts.hysteresis: must be 'k/m'"),
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


def test_redact_is_generic_by_key_name_and_url_credentials() -> None:
    """Settings added later are covered: any secret-named key, any URL with credentials."""
    data: dict[str, Any] = {
        "future_section": {
            "webhook_token": "t0k",
            "client_secret": "c1",
            "openai_api_key": "k2",
            "apiKey": "k3",
            "db_password": "p4",
            "max_tokens": 512,  # a number, not a secret
            "tokenizer": "xlm-roberta-base",  # not a secret word
            "endpoints": ["https://user:p5@a.example/x", "https://b.example/?token=t6&n=1"],
            "dsn": "postgresql://p7@db/x",  # bare userinfo: often a token
        },
        "empty_token": "",
    }
    shown = redact(data)
    assert shown == {
        "future_section": {
            "webhook_token": "***",
            "client_secret": "***",
            "openai_api_key": "***",
            "apiKey": "***",
            "db_password": "***",
            "max_tokens": 512,
            "tokenizer": "xlm-roberta-base",
            "endpoints": ["https://user:***@a.example/x", "https://b.example/?token=***&n=1"],
            "dsn": "postgresql://***@db/x",
        },
        "empty_token": "",
    }
    assert data["future_section"]["client_secret"] == "c1"  # the input is left alone


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///./mllm-monitor.db", "sqlite:///./mllm-monitor.db"),
        (
            "postgresql+psycopg://u:pw@h:5432/db?sslmode=require",
            "postgresql+psycopg://u:***@h:5432/db?sslmode=require",
        ),
        ("https://a:b@c@h/p#frag", "https://a:***@h/p#frag"),  # password "b@c"
        ("http://h/p?password=x&api_key=y#z", "http://h/p?password=***&api_key=***#z"),
        ("http://h/p?q=a@b", "http://h/p?q=a@b"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_unknown_environment_variables_are_named_with_a_hint() -> None:
    problems = unknown_environment_variables(
        {
            "MLLM_MONITOR_DATABASE__URL": "sqlite:///a.db",  # a setting
            "MLLM_MONITOR_ENCODERS__IMAGE__KIND": "none",  # a nested setting
            "MLLM_MONITOR_CONFIG": "x.toml",  # not a setting, allowed
            "MLLM_MONITOR_TEST_POSTGRES_URL": "postgresql://",  # not a setting, allowed
            "MLLM_MONITOR_TOKEN": "t0ken",  # not a setting, allowed
            "MLLM_MONITOR_ALERTS__HYSTERESYS": "2/3",
            "MLLM_MONITOR_ENCODERS__IMAGE__KINDS": "none",
            "OTHER_VARIABLE": "ignored",
            # Kubernetes service links of a Service named mllm-monitor, allowed:
            "MLLM_MONITOR_SERVICE_HOST": "10.0.0.7",
            "MLLM_MONITOR_SERVICE_PORT": "8080",
            "MLLM_MONITOR_SERVICE_PORT_HTTP": "8080",
            "MLLM_MONITOR_PORT": "tcp://10.0.0.7:8080",
            "MLLM_MONITOR_PORT_8080_TCP": "tcp://10.0.0.7:8080",
            "MLLM_MONITOR_PORT_8080_TCP_ADDR": "10.0.0.7",
            "MLLM_MONITOR_PORT_8080_TCP_PORT": "8080",
            "MLLM_MONITOR_PORT_8080_TCP_PROTO": "tcp",
        }
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith("MLLM_MONITOR_ALERTS__HYSTERESYS: unknown setting 'hysteresys'")
    assert "did you mean 'hysteresis'?" in problems[0]
    assert "'kinds' in encoders.image" in problems[1]


def test_a_typo_in_a_variable_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLLM_MONITOR_SERVER__PROT", "9000")
    with pytest.raises(ConfigError, match="MLLM_MONITOR_SERVER__PROT: unknown setting 'prot'"):
        load_settings()


def test_durations_are_bounded_and_never_booleans() -> None:
    assert parse_duration("3650d") == MAX_DURATION
    for bad in ("3651d", 1e308, 10**400, float("nan"), True, "1e3s"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_compute_threads_and_the_old_encoders_key(tmp_path: Path) -> None:
    assert load_settings().compute.threads == 0  # automatic
    assert load_settings(write(tmp_path, "[compute]\nthreads = 3\n")).compute.threads == 3
    with pytest.raises(ConfigError, match=r"encoders: 'threads' was replaced by compute\.threads"):
        load_settings(write(tmp_path, "[encoders]\nthreads = 3\n"))


def test_alerts_modes_detector_by_default_and_k_of_m_on_request(tmp_path: Path) -> None:
    chosen = load_settings(
        write(tmp_path, '[alerts]\nfalse_page_interval = "30d"\nhysteresis = " 3 / 5 "\n')
    )
    assert chosen.alerts.false_page_interval == timedelta(days=30)
    assert chosen.alerts.hysteresis == "3/5" and chosen.alerts.hysteresis_k_of_m == (3, 5)
    assert chosen.alerts.trials_hysteresis == (3, 5)
    blank = load_settings(write(tmp_path, '[alerts]\nhysteresis = "  "\n'))
    assert blank.alerts.hysteresis == "" and blank.alerts.hysteresis_k_of_m is None
    assert blank.redacted()["alerts"]["false_page_interval"] == "90d"
