"""The tests' settings-file writer writes TOML that reads back as the dict it was given."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from tests.support.config_files import toml_text, write_config


def test_tables_sub_tables_and_arrays_of_tables_read_back() -> None:
    document = {
        "database": {"url": 'sqlite:///a "b"\\c?x=1&y=2#z'},
        "encoders": {"local_files_only": True, "image": {"kind": "none"}, "text": {"max": 64}},
        "alerts": {"false_alarm_rate": 0.05, "hysteresis": "2/3"},
        "streams": [{"name": "chat", "sample_rate": 0.25}, {"name": "é\n\t\x00\x7f"}],
        "dotted.key": {"list": [1, 2.5, "three", False]},
    }
    assert tomllib.loads(toml_text(document)) == document


def test_plain_keys_come_before_tables_and_an_empty_list_stays_a_list() -> None:
    text = toml_text({"windows": {"size": "5m"}, "streams": []})
    assert text.startswith("streams = []\n")
    assert tomllib.loads(text) == {"streams": [], "windows": {"size": "5m"}}


def test_non_finite_floats_and_paths(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "m.toml", {"windows": {"size": math.inf}}, reference={"root": tmp_path}
    )
    read = tomllib.loads(path.read_text())
    assert read == {"windows": {"size": math.inf}, "reference": {"root": str(tmp_path)}}
    assert math.isnan(tomllib.loads(toml_text({"a": {"b": math.nan}}))["a"]["b"])


def test_a_value_without_a_toml_form_is_refused() -> None:
    with pytest.raises(TypeError, match="no TOML form for object"):
        toml_text({"a": {"b": object()}})
