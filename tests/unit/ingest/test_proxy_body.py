"""The sidecar's answer decoding: a compressed answer is inflated under a cap, never whole."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from monitor.errors import InvalidInputError, PayloadTooLargeError
from monitor.ingest.proxy_body import decoded
from tests.integration.ingest.hostile_upstream import gzip_bomb

MIB = 1024 * 1024


def test_a_gzip_bomb_stops_inflating_at_the_cap() -> None:
    bomb = gzip_bomb(256)  # 256 KB inflating to 256 MiB
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match="max_sample_bytes"):
            decoded(bomb, "gzip", 4 * MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MIB  # the cap and a copy, not the 256 MiB


def test_answers_within_the_cap_are_inflated_as_before() -> None:
    text = b'{"choices": []}' * 1000
    assert decoded(gzip.compress(text), "gzip", len(text)) == text
    assert decoded(gzip.compress(text[:9]) + gzip.compress(text[9:]), "x-gzip", MIB) == text
    assert decoded(zlib.compress(text), "Deflate", MIB) == text
    assert decoded(text, "identity", 10) == text  # not compressed: the caller checks its size
    with pytest.raises(PayloadTooLargeError):
        decoded(gzip.compress(text), "gzip", len(text) - 1)


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "corrupt"),
        (gzip.compress(b"x" * 1000)[:-12], "gzip", "truncated"),
        (b"anything", "br", "content-encoding 'br'"),
    ],
)
def test_unreadable_answers_are_invalid(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decoded(body, encoding, MIB)
