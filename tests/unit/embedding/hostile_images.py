"""A corpus of hostile and awkward images, built in memory (nothing is committed).

Each case is (name, payload, expectation): expectation is either an error-message fragment
(the decoder must refuse with ImageDecodeError) or None (it must decode to a sane RGB image).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny (bogus) data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _exif_rotated_jpeg() -> bytes:
    image = _photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    return _encode(image, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), color) for color in ("red", "green", "blue")]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _sixteen_bit_png() -> bytes:
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    return _encode(Image.fromarray(values), "PNG")  # mode I;16


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return _encode(image, "PNG", transparency=0)


def corpus() -> list[tuple[str, bytes | str, str | None]]:
    png = _encode(_photo(), "PNG")
    jpeg = _encode(_photo(), "JPEG", quality=90)
    return [
        ("empty", b"", "0 bytes"),
        ("wrong magic", b"GIF89a-not-really" + b"\x00" * 40, "not a recognised image"),
        ("plain text", b"hello, this is not an image at all", "not a recognised image"),
        ("truncated png", png[: len(png) // 2], "corrupt or truncated"),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], "corrupt or truncated"),
        ("bomb header 100k x 100k", _png_with_header(100_000, 100_000), "decompression bomb"),
        ("huge dimensions 60000 x 800", _png_with_header(60_000, 800), "over the limit"),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        ("svg with xml prolog", b'<?xml version="1.0"?><svg/>', "SVG"),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        ("ico (refused format)", _encode(_photo(16, 16), "ICO"), "not a recognised image"),
        ("not base64", "data:image/png;base64,@@@@not-base64@@@@", "not valid base64"),
        (
            "data url of text",
            "data:text/plain;base64," + base64.b64encode(b"hi").decode(),
            "not an image",
        ),
        ("remote url", "https://example.com/cat.png", "not fetched"),
        ("oversize bytes", png + b"\x00" * (2 * 1024 * 1024), "over the limit"),
        ("cmyk jpeg", _encode(_photo().convert("CMYK"), "JPEG"), None),
        ("16-bit png", _sixteen_bit_png(), None),
        ("animated gif", _animated_gif(), None),
        ("exif rotated jpeg", _exif_rotated_jpeg(), None),
        ("rgba png", _encode(_photo().convert("RGBA"), "PNG"), None),
        ("palette with transparency", _palette_with_transparency(), None),
        ("greyscale", _encode(_photo().convert("L"), "PNG"), None),
        ("1x1 pixel", _encode(Image.new("RGB", (1, 1), "white"), "PNG"), None),
        ("extreme aspect 4000 x 2", _encode(Image.new("RGB", (4000, 2), "gray"), "PNG"), None),
        ("data url png", "data:image/png;base64," + base64.b64encode(png).decode(), None),
        ("bare base64 jpeg", base64.b64encode(jpeg).decode(), None),
        ("bmp", _encode(_photo(), "BMP"), None),
        ("webp", _encode(_photo(), "WEBP"), None),
        (
            "multi-page tiff",
            _encode(_photo(), "TIFF", save_all=True, append_images=[_photo(seed=1)]),
            None,
        ),
    ]
