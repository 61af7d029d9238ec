"""Capped inflation of gzip / deflate bodies: the records API's request bodies and the sidecar's
answers share it.

    inflate(data, wbits, limit) -> bytes

The cap applies to the output: a small compressed body can inflate to gigabytes, so inflation
stops after ``limit + 1`` bytes of output and raises
:class:`~monitor.errors.PayloadTooLargeError`. A gzip body may hold several members one after
the other (RFC 1952): each is inflated in turn, all under the one cap. A truncated body raises
:class:`~monitor.errors.InvalidInputError`; a corrupt one ``zlib.error``. Callers turn these
into their own answers (a 413 or 400, a counted lost sample).
"""

from __future__ import annotations

import zlib

from monitor.errors import InvalidInputError, PayloadTooLargeError

GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header required
DEFLATE_WBITS = zlib.MAX_WBITS  # a zlib stream


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` inflated, at most ``limit`` bytes of it; see the module doc for what it raises."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits)
        part = inflater.decompress(rest, limit + 1 - size)
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise PayloadTooLargeError(f"inflates to over {limit:,} bytes")
        parts.append(part)
        if not inflater.eof:
            raise InvalidInputError("truncated")
        rest = inflater.unused_data if wbits == GZIP_WBITS else b""  # the next gzip member
    return b"".join(parts)


__all__ = ["DEFLATE_WBITS", "GZIP_WBITS", "inflate"]
