"""check_image, the ingest-time check: it refuses what decode_image refuses from the header
and the file structure, passes every image decode_image accepts, and stays cheap on images
that are large once decoded."""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from monitor.embedding.images import ImageLimits, check_image, decode_image, image_bytes
from monitor.errors import ImageDecodeError
from tests.unit.embedding.hostile_images import corpus

LIMITS = ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=40_000_000)  # as test_images
CASES = corpus()


@pytest.mark.parametrize(("name", "payload", "refusal"), CASES, ids=[c[0] for c in CASES])
def test_check_image_agrees_with_decode_image_on_the_corpus(
    name: str, payload: bytes | str, refusal: str | None
) -> None:
    try:
        data = image_bytes(payload, limits=LIMITS)
    except ImageDecodeError:
        return  # refused before any image is looked at: image_bytes' part, tested with it
    if refusal is None:
        check_image(data, limits=LIMITS)
        decode_image(data, limits=LIMITS)
    else:
        with pytest.raises(ImageDecodeError, match=refusal):
            check_image(data, limits=LIMITS)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_image_is_checked_without_decoding_it_in_full(fmt: str) -> None:
    data = encoded(Image.new("RGB", (6000, 6000), (10, 200, 30)), fmt)
    started = time.process_time()
    for _ in range(5):
        check_image(data)
    # a full decode of 36 Mpx takes ~0.25 s of CPU each; the PNG check reads no pixel, the JPEG
    # one decodes 1/64 of them
    assert time.process_time() - started < 0.5


def test_a_truncated_large_jpeg_is_still_refused() -> None:
    data = encoded(Image.effect_noise((2000, 2000), 64).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        check_image(data[: len(data) * 2 // 3])


def test_pixel_limit_is_checked_before_anything_is_read() -> None:
    data = encoded(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        check_image(data, limits=ImageLimits(max_pixels=300 * 299))
    check_image(base64.b64decode(base64.b64encode(data)), limits=ImageLimits(max_pixels=90_000))
