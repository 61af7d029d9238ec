"""``GET /v1/windows`` and ``GET /v1/windows/{id}``: computed windows as JSON.

    GET /v1/windows?stream=S&since=T&until=T  ->  {"windows": [WindowResult.to_dict(), ...]}

``stream`` is optional: without it, the windows of every configured stream (by stream, then
start). ``since`` / ``until`` are RFC 3339 times or epoch seconds between 1970 and 9000;
windows overlapping [since, until) are returned, oldest first. A bad parameter is a 400 with
``{"error": {"code", "message", "field"}}`` naming it; an unknown stream is a 404, and so is a
window id that no window can have (not a positive 64-bit integer). The routes need the
monitor's bearer token (``require_token`` of the ingest app).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from monitor.records import WindowResult
from monitor.timestamps import parse_instant

#: Window ids are positive 64-bit integer keys (SQLite INTEGER, PostgreSQL BIGINT).
MAX_WINDOW_ID = 2**63 - 1
_WINDOW_ID = re.compile(r"[0-9]{1,19}")


def parse_time(value: str, field: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset; a naive time is UTC) or epoch seconds, 1970 to
    9000 (:func:`~monitor.timestamps.parse_instant`, the rule of every door); raises
    ValueError naming ``field``, nothing else (the CLI turns it into exit 2)."""
    try:
        return parse_instant(value, naive_is_utc=True)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc


def window_key(window_id: str) -> int | None:
    """The integer key of a window id from a URL, or None when no window can have it.

    Only plain decimal digits within the database's 64-bit keys: ``int()`` alone takes
    ``+1``, ``1_0`` and non-ASCII digits, and a key past 2**63 - 1 fails in SQLite (a 500)."""
    if not _WINDOW_ID.fullmatch(window_id):
        return None
    key = int(window_id)
    return key if 0 < key <= MAX_WINDOW_ID else None


def list_windows(
    repository: Any,
    streams: Sequence[str],
    since: datetime | None,
    until: datetime | None,
) -> list[WindowResult]:
    """Windows of each stream overlapping [since, until), by stream then start."""
    results: list[WindowResult] = []
    for stream in streams:
        results.extend(repository.get_windows(stream, since=since, until=until))
    return results


def _error(status: int, code: str, message: str, field: str | None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "field": field}}
    )


def build_windows_router(repository: Any, streams: Sequence[str]) -> APIRouter:
    """The windows routes over ``repository``, for the configured ``streams``."""
    # Imported here: the app module builds on this one's router, not the other way round.
    require_token = importlib.import_module("monitor.ingest.app").require_token
    known = tuple(streams)
    router = APIRouter(dependencies=[Depends(require_token)])

    @router.get("/v1/windows")
    def get_windows(
        stream: str | None = Query(default=None),
        since: str | None = Query(default=None),
        until: str | None = Query(default=None),
    ) -> Any:
        if stream is not None and stream not in known:
            return _error(
                404,
                "unknown_stream",
                f"stream {stream!r} is not configured (configured: {', '.join(known)})",
                "stream",
            )
        bounds: dict[str, datetime | None] = {"since": None, "until": None}
        for name, raw in (("since", since), ("until", until)):
            if raw is not None:
                try:
                    bounds[name] = parse_time(raw, name)
                except ValueError as exc:
                    return _error(400, "invalid_parameter", str(exc), name)
        start, end = bounds["since"], bounds["until"]
        if start is not None and end is not None and end <= start:
            return _error(400, "invalid_parameter", "until must be after since", "until")
        chosen = [stream] if stream is not None else list(known)
        windows = list_windows(repository, chosen, start, end)
        return {"windows": [w.to_dict() for w in windows]}

    @router.get("/v1/windows/{window_id}")
    def get_window(window_id: str) -> Any:
        key = window_key(window_id)
        found = repository.get_window(str(key)) if key is not None else None
        if found is None or found.key.stream not in known:
            return _error(404, "not_found", f"no window with id {window_id!r}", "id")
        return found.to_dict()

    return router
