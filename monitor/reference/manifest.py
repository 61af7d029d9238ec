"""The JSONL manifest a reference store is built from: one ID record per line.

Fields: ``prompt`` and ``response`` (required), ``reference`` (the reference answer, optional),
``image`` (a path under the configured image root, or a data URL; optional), ``id`` (optional,
``line-N`` when absent). Unknown fields are ignored; errors name the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ReferenceStoreError


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    id: str
    prompt: str
    response: str
    reference: str | None = None
    image: str | None = None


def read_manifest(path: Path) -> list[ManifestRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ReferenceStoreError(f"manifest not found: {path}", path=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceStoreError(f"cannot read manifest {path}: {exc}", path=path) from exc
    records: list[ManifestRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(line, path, number)
        if record.id in seen:
            raise ReferenceStoreError(f"{path}:{number}: duplicate id {record.id!r}", path=path)
        seen.add(record.id)
        records.append(record)
    if not records:
        raise ReferenceStoreError(f"manifest {path} has no records", path=path)
    return records


def _parse(line: str, path: Path, number: int) -> ManifestRecord:
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReferenceStoreError(f"{where}: invalid JSON: {exc.msg}", path=path) from exc
    if not isinstance(data, dict):
        raise ReferenceStoreError(f"{where}: a record must be a JSON object", path=path)
    values: dict[str, str | None] = {}
    for field in ("id", "prompt", "response", "reference", "image"):
        value = data.get(field)
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise ReferenceStoreError(
                f"{where}: field {field!r} must be a string, got {type(value).__name__}", path=path
            )
        values[field] = value
    for field in ("prompt", "response"):
        if values[field] is None:
            raise ReferenceStoreError(f"{where}: missing required field {field!r}", path=path)
    return ManifestRecord(
        id=values["id"] or f"line-{number}",
        prompt=values["prompt"] or "",
        response=values["response"] or "",
        reference=values["reference"],
        image=values["image"] or None,
    )
