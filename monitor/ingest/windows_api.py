"""``GET /v1/windows`` and ``GET /v1/windows/{id}``: computed windows as DESIGN section 3 shapes.

    GET /v1/windows?stream=S&since=T&until=T  ->  {"windows": [WindowResult.to_dict(), ...]}

``stream`` is optional: without it, the windows of every configured stream (by stream, then
start). ``since`` / ``until`` are
RFC 3339 times or epoch seconds; windows overlapping [since, until) are returned, oldest first.
A bad parameter is a 400 with ``{"error": {"code", "message", "field"}}``; an unknown stream is
a 404. The routes need the monitor's bearer token (``require_token`` of the ingest app).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from monitor.records import WindowResult


def parse_time(value: str, field: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset; a naive time is UTC) or epoch seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{field}: not a finite number of seconds: {value!r}")
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"{field}: epoch seconds out of range: {value!r}") from exc
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{field}: not an RFC 3339 time or epoch seconds: {value!r} (like 2026-11-30T06:00:00Z)"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
        found = repository.get_window(window_id)
        if found is None or found.key.stream not in known:
            return _error(404, "not_found", f"no window with id {window_id!r}", "id")
        return found.to_dict()

    return router
