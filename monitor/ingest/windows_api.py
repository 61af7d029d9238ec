"""``GET /v1/windows`` and ``GET /v1/windows/{id}``: computed windows as JSON.

    GET /v1/windows?stream=S&since=T&until=T  ->  {"windows": [WindowResult.to_dict(), ...]}

``stream`` is optional: without it, the windows of every configured stream (by stream, then
start). ``since`` / ``until`` are RFC 3339 times, epoch seconds between 1970 and 9000, ``now``
or times relative to now such as ``-6h`` (:func:`monitor.timestamps.parse_time`, as the CLI);
windows overlapping [since, until) are returned, oldest first. A bad parameter is a 400 with
``{"error": {"code", "message", "field"}}`` naming it; an unknown stream is a 404, and so is a
window id that no window can have (not a positive 64-bit integer). The routes need the
monitor's bearer token (``require_token`` of the ingest app).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from monitor.timestamps import parse_time
from monitor.windows import window_key


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

    @router.get(
        "/v1/windows",
        summary="Computed windows overlapping [since, until), of one stream or all, oldest first",
    )
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
                    bounds[name] = parse_time(raw)
                except ValueError as exc:
                    return _error(400, "invalid_parameter", f"{name}: {exc}", name)
        start, end = bounds["since"], bounds["until"]
        if start is not None and end is not None and end <= start:
            return _error(400, "invalid_parameter", "until must be after since", "until")
        chosen = [stream] if stream is not None else list(known)
        windows = repository.list_windows(chosen, since=start, until=end)
        return {"windows": [w.to_dict() for w in windows]}

    @router.get("/v1/windows/{window_id}", summary="One computed window by its id")
    def get_window(window_id: str) -> Any:
        key = window_key(window_id)
        found = repository.get_window(str(key)) if key is not None else None
        if found is None or found.key.stream not in known:
            return _error(404, "not_found", f"no window with id {window_id!r}", "id")
        return found.to_dict()

    return router
