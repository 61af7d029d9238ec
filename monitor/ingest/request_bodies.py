"""Request bodies of the monitor's routes: size limits, gzip, media type and strict JSON, and the
error a request gets when it is refused before its content is looked at.

    read_body(request, limit) -> bytes     an application/json body (gzip inflated), or refused
    read_raw_body(request, limit) -> bytes the body of any media type, size and gzip checked
    parse_json(raw) -> Any                 strict JSON (no NaN/Infinity), or refused
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from monitor.errors import InvalidInputError, PayloadTooLargeError
from monitor.ingest.inflate import GZIP_WBITS, inflate


class RequestRejectedError(InvalidInputError):
    """A request refused before its content is looked at (encoding, media type, size)."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message, field=field)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused early: wrong media type, declared or actual size over ``limit``."""
    media, params = media_type(request)
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise RequestRejectedError(
            415,
            "unsupported_media_type",
            f"the body must be application/json, not {media[:100] or 'unspecified'}",
            field="content-type",
        )
    charset = _charset(params)
    if charset not in ("utf-8", "utf8"):
        raise RequestRejectedError(
            415,
            "unsupported_media_type",
            f"the body must be UTF-8, not {charset[:100]}",
            field="content-type",
        )
    data = await read_raw_body(request, limit)
    if not data.strip():
        raise RequestRejectedError(400, "invalid_json", "the body is empty", field="body")
    return data


def media_type(request: Request) -> tuple[str, str]:
    """(media type in lower case, the Content-Type's parameters)."""
    media, _, params = request.headers.get("content-type", "").partition(";")
    return media.strip().lower(), params


async def read_raw_body(request: Request, limit: int) -> bytes:
    """The body whatever its media type: size over ``limit`` refused (declared or as it
    arrives, and once inflated when it comes gzipped)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestRejectedError(
                400, "bad_request", "Content-Length is not a number", field="content-length"
            )
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    gzipped = _gzipped(request.headers.get("content-encoding", ""))
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _too_large(None, limit)
    data = bytes(received)
    if gzipped:
        data = await run_in_threadpool(gunzip, data, limit)
    return data


def _gzipped(header: str) -> bool:
    """Whether a Content-Encoding is gzip; identity (or none) is plain; anything else is 415."""
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return False
    if coding in ("gzip", "x-gzip"):
        return True
    raise RequestRejectedError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {header.strip()[:100]!r} is not supported: send the body as it "
        "is, or gzip",
        field="content-encoding",
    )


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body (one or more members), refusing it as soon as it passes ``limit``.

    The cap applies to the output: a small gzip bomb stops after ``limit`` bytes of work."""
    try:
        return inflate(data, GZIP_WBITS, limit)
    except PayloadTooLargeError as exc:
        raise _too_large(None, limit, inflated=True) from exc
    except InvalidInputError as exc:  # truncated
        raise RequestRejectedError(
            400, "invalid_encoding", "the gzip body is truncated", field="body"
        ) from exc
    except zlib.error as exc:
        raise RequestRejectedError(
            400, "invalid_encoding", f"the body is not valid gzip: {exc}", field="body"
        ) from exc


def _charset(params: str) -> str:
    """The charset parameter of a Content-Type (UTF-8 when absent), lower-cased."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return "utf-8"


def _too_large(size: int | None, limit: int, *, inflated: bool = False) -> PayloadTooLargeError:
    shown = f"{size:,} bytes" if size is not None else "over the limit"
    what = "the inflated body" if inflated else "the body"
    return PayloadTooLargeError(
        f"{what} is {shown}; the limit is {limit:,} bytes ([ingest] max_body_bytes)",
        field="body",
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes (no NaN/Infinity), or RequestRejectedError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejectedError(
            400,
            "invalid_encoding",
            f"the body is not UTF-8: {exc.reason} at byte {exc.start}",
            field="body",
        ) from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise RequestRejectedError(
            400, "invalid_json", "the JSON is nested too deeply", field="body"
        ) from exc
    except ValueError as exc:
        raise RequestRejectedError(
            400, "invalid_json", f"the body is not valid JSON: {exc}", field="body"
        ) from exc
