"""Settings files for tests, written from dicts instead of TOML typed by hand.

``write_config(path, database={"url": url}, streams=[{"name": "chat"}])`` writes ``[database]``
and ``[[streams]]``. A dict is a table (nested dicts are sub-tables), a list of dicts an array of
tables; paths are written as strings. tomli_w is not a dependency, so a small writer does it;
tests that feed the parser hostile text on purpose keep writing that text themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_config(path: Path, settings: Mapping[str, Any] | None = None, **sections: Any) -> Path:
    """Write ``settings`` and/or keyword ``sections`` as TOML to ``path``; return ``path``."""
    path.write_text(toml_text({**(settings or {}), **sections}))
    return path


def toml_text(document: Mapping[str, Any]) -> str:
    """``document`` as TOML text: plain keys first, then tables and arrays of tables."""
    return "".join(_table(document, prefix=()))


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(table: Mapping[str, Any], prefix: tuple[str, ...]) -> list[str]:
    lines = [f"{_key(k)} = {_value(v)}\n" for k, v in table.items() if not _nested(v)]
    for key, value in table.items():
        name = ".".join(_key(part) for part in (*prefix, key))
        if isinstance(value, Mapping):
            lines.append(f"\n[{name}]\n")
            lines.extend(_table(value, (*prefix, key)))
        elif _is_table_array(value):
            for entry in value:
                lines.append(f"\n[[{name}]]\n")
                lines.extend(_table(entry, (*prefix, key)))
    return lines


def _nested(value: Any) -> bool:
    return isinstance(value, Mapping) or _is_table_array(value)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _string(key)


def _string(text: str) -> str:
    # JSON escapes are TOML escapes; DEL is the one control character JSON leaves raw.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | Path):
        return _string(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")
