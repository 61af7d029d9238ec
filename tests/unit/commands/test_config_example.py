"""`mllm-monitor config example`: generated from the settings model, loads back to the defaults,
lists every field of every section."""

from __future__ import annotations

import tomllib

from pydantic import BaseModel
from typer.testing import CliRunner

from monitor.cli import app
from monitor.commands.config_example import example_toml
from monitor.config import Settings


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(_paths(annotation, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def _listed(data: dict[str, object], text: str, prefix: str = "") -> set[str]:
    found = set()
    for key, value in data.items():
        if isinstance(value, dict):
            found |= _listed(value, text, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                found |= _listed(item, text, f"{prefix}{key}.")
        else:
            found.add(f"{prefix}{key}")
    return found


def test_example_loads_back_to_the_defaults() -> None:
    data = tomllib.loads(example_toml())
    assert Settings(**data) == Settings()


def test_example_lists_every_settings_field() -> None:
    text = example_toml()
    listed = _listed(tomllib.loads(text), text)
    # Fields without a default value (None) are written as a commented line.
    unset = {
        line.split("=")[0].strip("# ").strip() for line in text.splitlines() if "(unset" in line
    }
    expected = set(_paths(Settings))
    streams = {p for p in expected if p == "streams"}
    expected -= streams
    from monitor.config import StreamSettings

    expected |= {f"streams.{name}" for name in StreamSettings.model_fields}
    missing = {p for p in expected if p not in listed and p.rsplit(".", 1)[-1] not in unset}
    assert not missing, missing


def test_example_carries_the_comments_of_the_settings_module() -> None:
    text = example_toml()
    assert "[encoders.image]" in text and "[[streams]]" in text
    assert "# 429 once the inbox holds this many" in text  # a trailing comment in config.py
    assert 'size = "5m"' in text  # durations in their TOML form


def test_cli_prints_it() -> None:
    result = CliRunner().invoke(app, ["config", "example"])
    assert result.exit_code == 0
    assert result.output == example_toml()


def test_example_explains_the_detector_settings() -> None:
    text = example_toml()
    alerts = text[text.index("[alerts]") : text.index("[ingest]")]
    assert 'false_page_interval = "90d"' in alerts and 'hysteresis = ""' in alerts
    assert "Mean time between false criticals per stream" in alerts
    assert "Empty: the sequential detector decides criticals" in alerts
    assert "clears when the statistic falls to the clear level" in text
