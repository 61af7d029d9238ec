"""Every setting has a meaning (a comment next to its field, or its description), which both
`mllm-monitor config example` and the settings reference page show; a setting added without
one fails here and in the reference generator."""

from __future__ import annotations

from pydantic import BaseModel, Field

from monitor.commands.config_example import (
    _field_comments,
    example_toml,
    field_meaning,
    settings_without_meaning,
)


class _Described(BaseModel):
    # Above the field.
    commented: int = 1
    trailing: int = 2  # at the end of its line
    described: int = Field(default=3, description="from the description")
    bare: int = 4


class _Tree(BaseModel):
    section: _Described = _Described()
    entries: list[_Described] = [_Described()]


def test_every_setting_has_a_meaning() -> None:
    assert settings_without_meaning() == []


def test_the_check_walks_sections_and_lists_of_them() -> None:
    assert settings_without_meaning(_Tree()) == ["section.bare", "entries.bare"]


def test_a_field_without_comment_or_description_has_no_meaning() -> None:
    comments = _field_comments(_Described)
    meanings = {name: field_meaning(_Described, name, comments) for name in _Described.model_fields}
    assert meanings == {
        "commented": ["Above the field."],
        "trailing": ["at the end of its line"],
        "described": ["from the description"],
        "bare": [],
    }


def test_the_example_shows_the_meanings_of_formerly_bare_settings() -> None:
    text = example_toml()
    assert "# Bearer token the monitor's own routes" in text  # [server] token
    assert "# sqlite:///PATH (one machine)" in text  # [database] url
