"""The JSONL file of ID records a reference store is built from: one record per line. (The
store's own ``manifest.json``, its checksummed inventory, is :mod:`monitor.reference.store`'s.)

A line is a record as the records API takes it (:class:`~monitor.records.TrafficRecord`):
``prompt`` and ``response`` (required here), ``reference`` (optional), ``image`` (optional: a
path under the image root, a ``data:image/...;base64,`` URL, or ``{"url": ...}`` holding
either), ``id`` (optional, ``line-N`` when absent), ``timestamp`` (RFC 3339 or epoch
seconds; default now), ``stream``, ``model``. Unknown fields are ignored; errors name the
file and line.

Lines are split on ``\\n`` only: JSON strings may hold U+2028, U+0085 and other characters
that :meth:`str.splitlines` would also break on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.embedding.images import ImageLimits, image_bytes
from monitor.errors import ImageDecodeError, ReferenceStoreError
from monitor.records import TrafficRecord


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class IDRecord(TrafficRecord):
    """An ID-records line: a TrafficRecord whose image may instead be a file path.

    ``image`` holds inline image bytes (from a data URL); ``image_path`` a path relative to the
    build's image root, read only by the build (paths are accepted in ID-records files only).
    """

    timestamp: datetime = field(default_factory=_now)
    image_path: str | None = None

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_path is not None


def read_id_records(path: Path) -> list[IDRecord]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ReferenceStoreError(f"ID records file not found: {path}", path=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceStoreError(f"cannot read ID records file {path}: {exc}", path=path) from exc
    records: list[IDRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = _parse(line, path, number)
        if record.id in seen:
            raise ReferenceStoreError(f"{path}:{number}: duplicate id {record.id!r}", path=path)
        seen.add(record.id)
        records.append(record)
    if not records:
        raise ReferenceStoreError(f"ID records file {path} has no records", path=path)
    return records


def _parse(line: str, path: Path, number: int) -> IDRecord:
    where = f"{path}:{number}"

    def fail(message: str) -> ReferenceStoreError:
        return ReferenceStoreError(f"{where}: {message}", path=path)

    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise fail("a record must be a JSON object")
    if isinstance(data.get("image"), dict):
        data["image"] = data["image"].get("url")
    values: dict[str, str | None] = {}
    for name in ("id", "prompt", "response", "reference", "image", "stream", "model"):
        value = data.get(name)
        if name == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise fail(f"field {name!r} must be a string, got {type(value).__name__}")
        values[name] = value
    for name in ("prompt", "response"):
        if values[name] is None:
            raise fail(f"missing required field {name!r}")
    inline, image_path = None, None
    image = values["image"]
    if image and image.lstrip().startswith("data:"):
        try:
            # The size limit of the build applies later; here only the decoding.
            inline = image_bytes(image, limits=ImageLimits(max_bytes=len(image) + 1))
        except ImageDecodeError as exc:
            raise fail(f"field 'image': {exc}") from exc
    elif image and image.lstrip().lower().startswith(("http://", "https://")):
        raise fail("field 'image': remote image URLs are not fetched for reference stores")
    elif image:
        image_path = image
    extra: dict[str, Any] = {}
    if values["stream"]:
        extra["stream"] = values["stream"]
    if "timestamp" in data and data["timestamp"] is not None:
        extra["timestamp"] = _timestamp(data["timestamp"], fail)
    return IDRecord(
        id=values["id"] or f"line-{number}",
        prompt=values["prompt"],
        response=values["response"],
        reference=values["reference"],
        model=values["model"],
        image=inline,
        image_path=image_path,
        **extra,
    )


def _timestamp(value: object, fail: Callable[[str], ReferenceStoreError]) -> datetime:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError("not finite")
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    except (ValueError, OverflowError, OSError) as exc:
        raise fail(f"field 'timestamp' is not a valid time: {value!r}") from exc
    raise fail("field 'timestamp' must be RFC 3339 text or epoch seconds")
