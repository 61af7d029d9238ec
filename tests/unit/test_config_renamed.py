"""A renamed settings section is refused with its new name, in a file and in the environment,
so that no key (a secret above all) is silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_settings
from monitor.errors import ConfigError


def test_the_old_reference_model_section_in_a_file_names_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLLM_MONITOR_CONFIG", raising=False)
    path = tmp_path / "m.toml"
    path.write_text('[references]\nmodel_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    with pytest.raises(ConfigError, match=r"\[references\] is now \[reference_model\]"):
        load_settings(path)
    path.write_text('[reference_model]\nmodel_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    assert load_settings(path).reference_model.model == "m"


def test_an_old_reference_model_variable_names_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLLM_MONITOR_CONFIG", raising=False)
    monkeypatch.setenv("MLLM_MONITOR_REFERENCES__API_KEY", "secret")
    with pytest.raises(ConfigError, match="use MLLM_MONITOR_REFERENCE_MODEL__API_KEY"):
        load_settings(None)
    monkeypatch.delenv("MLLM_MONITOR_REFERENCES__API_KEY")
    monkeypatch.setenv("MLLM_MONITOR_REFERENCE_MODEL__API_KEY", "secret")
    assert load_settings(None).reference_model.api_key == "secret"
