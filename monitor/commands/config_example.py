"""``mllm-monitor config example``: a commented TOML file with every key at its default.

Generated from the settings model itself (:class:`monitor.config.Settings`): every field of every
section, its default (durations as ``"5m"``), and as comments the section's docstring and the
comments written next to the field in ``monitor/config/`` (else its pydantic description). Nothing
is listed by hand, so the example cannot drift from the settings; a test loads it back and checks
it lists every field, and another that every field has a meaning (:func:`settings_without_meaning`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from typing import Any

import typer
from pydantic import BaseModel

from monitor.config import Settings

_FIELD = re.compile(r"^    (\w+)\s*:")
_TRAILING = re.compile(r"#\s?(.*)$")


def _field_comments(cls: type[BaseModel]) -> dict[str, list[str]]:
    """Comments next to each field in the class source: the lines just above, and the one at
    the end of its line."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, list[str]] = {}
    above: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if line.startswith("    #") and not line.startswith("     "):
            above.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match and match[1] in cls.model_fields:
            found = list(above)
            code = line.split("#", 1)
            if len(code) == 2 and code[0].count('"') % 2 == 0:
                found.append(code[1].strip())
            comments[match[1]] = found
        above = []
    return comments


def field_meaning(cls: type[BaseModel], name: str, comments: dict[str, list[str]]) -> list[str]:
    """What the field ``name`` of ``cls`` means, as lines: its comments (``comments`` is
    :func:`_field_comments` of ``cls``), else its pydantic description; empty when neither."""
    found = [line for line in comments.get(name, []) if line]
    if found:
        return found
    description = cls.model_fields[name].description or ""
    return [" ".join(description.split())] if description.strip() else []


def _leaf_models(prefix: str, model: BaseModel) -> Iterator[tuple[str, BaseModel]]:
    """``model`` and every section nested in it, each with its dotted key prefix."""
    yield prefix, model
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaf_models(f"{prefix}{name}.", value)


def settings_without_meaning(root: BaseModel | None = None) -> list[str]:
    """The dotted keys of settings (of ``root``, by default the whole settings tree) that have
    neither a comment nor a description, which both this example and the reference page would
    show without a meaning."""
    defaults = Settings.model_construct() if root is None else root
    missing: list[str] = []
    for section in type(defaults).model_fields:
        value = getattr(defaults, section)
        first = value[0] if isinstance(value, list) and value else value
        if not isinstance(first, BaseModel):
            raise TypeError(f"settings field {section} is neither a section nor a list of them")
        for prefix, model in _leaf_models(f"{section}.", first):
            cls = type(model)
            comments = _field_comments(cls)
            missing.extend(
                prefix + name
                for name in cls.model_fields
                if not isinstance(getattr(model, name), BaseModel)
                and not field_meaning(cls, name, comments)
            )
    return missing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _doc(cls: type[BaseModel]) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    if not doc or cls.__doc__ is None:
        return []
    return [line.rstrip() for line in doc.splitlines()]


def _section(lines: list[str], header: str, model: BaseModel) -> None:
    cls = type(model)
    scalars = {
        name: info
        for name, info in cls.model_fields.items()
        if not isinstance(getattr(model, name), BaseModel)
    }
    lines.append("")
    lines.extend(f"# {line}".rstrip() for line in _doc(cls))
    lines.append(header)
    comments = _field_comments(cls)
    dumped = model.model_dump(mode="json")
    for name in scalars:
        for comment in field_meaning(cls, name, comments):
            lines.append(f"# {comment}")
        value = dumped[name]
        if value is None:
            lines.append(f"# {name} =    (unset by default)")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name in cls.model_fields:
        nested = getattr(model, name)
        if isinstance(nested, BaseModel):
            inner = header.strip("[]")
            _section(lines, f"[{inner}.{name}]", nested)


def example_toml() -> str:
    """The commented example file (the embedded defaults, written out)."""
    defaults = Settings.model_construct()
    lines = [
        "# mllm-monitor settings: every key with its default (generated by "
        "`mllm-monitor config example`).",
        "# Any key can be overridden by an environment variable: MLLM_MONITOR_<SECTION>__<KEY>,",
        "# e.g. MLLM_MONITOR_DATABASE__URL. Durations are a number and a unit: 250ms, 90s, 5m, "
        "1h, 1d.",
    ]
    for name in Settings.model_fields:
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            _section(lines, f"[{name}]", value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for item in value:
                _section(lines, f"[[{name}]]", item)
        else:
            raise TypeError(f"settings field {name} is neither a section nor a list of them")
    return "\n".join(lines).lstrip("\n") + "\n"


def register(config_app: typer.Typer) -> None:
    @config_app.command("example")
    def config_example() -> None:
        """Print a commented TOML file with every key and its default (from the settings
        model, so it is always complete)."""
        typer.echo(example_toml(), nl=False)
