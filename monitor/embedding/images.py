"""Image decoding in one place: every image the monitor sees is decoded here, safely.

Accepted: raw bytes, base64 text, ``data:image/...;base64,`` URLs, PIL images, and file paths
where the caller allows them (the ID records a reference store is built from, only). Refused with an
:class:`~monitor.errors.ImageDecodeError` naming the problem: empty or oversize input, unknown
or refused formats (SVG, PDF, ...), truncated or corrupt files, decompression bombs (checked
from the header, before any pixel is decoded), remote URLs (never fetched here).
Every accepted image comes out RGB, EXIF orientation applied, first frame of an animation.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from monitor.config import IMAGE_MAX_BYTES, IMAGE_MAX_PIXELS
from monitor.errors import ImageDecodeError

ImageSource: TypeAlias = "bytes | bytearray | memoryview | str | os.PathLike[str]"

# Raster formats an MLLM takes; everything else (SVG, PDF, EPS, ICO, ...) is refused.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)(?P<params>(;[\w=.+-]+)*),(?P<data>.*)$", re.S)
_REFUSED_SIGNATURES = {
    b"%PDF": "PDF documents are not images",
    b"<svg": "SVG (vector) images are not accepted: send a raster image (PNG, JPEG, ...)",
    b"<?xml": "XML/SVG content is not an image: send a raster image (PNG, JPEG, ...)",
    b"%!PS": "PostScript is not accepted",
}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds applied before and during decoding (defaults: those of ``[encoders.image]``)."""

    max_bytes: int = IMAGE_MAX_BYTES
    max_pixels: int = IMAGE_MAX_PIXELS


def decode_image(
    source: ImageSource | Image.Image,
    *,
    limits: ImageLimits = ImageLimits(),
    allow_paths: bool = False,
    root: Path | None = None,
) -> Image.Image:
    """Decode ``source`` into an RGB PIL image, or raise ImageDecodeError saying why not."""
    if isinstance(source, Image.Image):
        _check_pixels(source.size, limits)
        return _to_rgb(source)
    data = _read_bytes(source, limits, allow_paths=allow_paths, root=root)
    return _decode_bytes(data, limits)


def check_image(data: bytes, *, limits: ImageLimits = ImageLimits()) -> None:
    """Validate encoded image bytes as cheaply as the format allows; ImageDecodeError if not.

    For ingest, where the image is only checked (the embedding worker decodes it later):
    refused formats, the header and the pixel limit as :func:`decode_image` checks them, then
    the body without building the full image where the format allows it: PNG by walking its
    chunks and their CRCs (no pixel is inflated), JPEG decoded at 1/8 scale (every scan is
    still read, so truncation shows, in 1/64 of the memory); other formats decode their first
    frame. The decoded pixels are released before returning, not left to the garbage
    collector. A PNG whose chunks are intact but whose compressed pixels are not passes here
    and is refused by the worker (moved aside, counted ``failed``)."""
    image = _open(data, limits)
    try:
        with _decoding_errors():
            if image.format == "PNG":
                image.verify()
            else:
                if image.format == "JPEG":
                    width, height = image.size
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.seek(0)
                image.load()
    finally:
        image.close()


def image_bytes(
    source: ImageSource,
    *,
    limits: ImageLimits = ImageLimits(),
    allow_paths: bool = False,
    root: Path | None = None,
) -> bytes:
    """The encoded bytes behind ``source`` (for hashing and caching), with size limits applied."""
    return _read_bytes(source, limits, allow_paths=allow_paths, root=root)


def _read_bytes(
    source: ImageSource, limits: ImageLimits, *, allow_paths: bool, root: Path | None
) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, os.PathLike) or (
        isinstance(source, str) and allow_paths and not source.startswith("data:")
    ):
        if not allow_paths:
            raise ImageDecodeError(
                "file paths are only accepted in the ID records of a reference build", field="image"
            )
        data = _read_path(Path(source), limits, root)
    elif isinstance(source, str):
        data = _decode_text(source, limits)
    else:
        raise ImageDecodeError(
            f"unsupported image value of type {type(source).__name__}", field="image"
        )
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)", field="image")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,}", field="image"
        )
    return data


def _read_path(path: Path, limits: ImageLimits, root: Path | None) -> bytes:
    """The bytes of a regular file, at most ``limits.max_bytes`` of them.

    Under a ``root`` the path is resolved first (every symlink followed, ``..`` removed) and
    must stay inside the resolved root; the file is then opened without following a symlink,
    so one swapped in after the check is refused rather than followed. Only regular files are
    read: a FIFO or device would block or never end, so it is refused from ``fstat`` of the
    descriptor, opened non-blocking, before any read."""
    if root is not None:
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise ImageDecodeError(
                f"image path {str(path)!r} escapes the image root {root}", field="image"
            )
        path = resolved
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if root is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"image file not found: {path}", field="image") from exc
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file {path}: {exc}", field="image") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError(
                f"image path {path} is not a regular file (a directory, FIFO, socket or device)",
                field="image",
            )
        if info.st_size > limits.max_bytes:
            raise ImageDecodeError(
                f"image file {path} is {info.st_size:,} bytes, over the limit of "
                f"{limits.max_bytes:,}",
                field="image",
            )
        with os.fdopen(os.dup(fd), "rb") as fh:  # a copy: ``fd`` is closed below either way
            return fh.read(limits.max_bytes + 1)  # bounded even if the file grows meanwhile
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file {path}: {exc}", field="image") from exc
    finally:
        os.close(fd)


def _decode_text(text: str, limits: ImageLimits) -> bytes:
    payload = text.strip()
    if payload.startswith(("http://", "https://")):
        raise ImageDecodeError(
            "remote image URLs are not fetched here; send the image inline", field="image"
        )
    match = _DATA_URL.match(payload)
    if payload.startswith("data:"):
        if not match or ";base64" not in match["params"]:
            raise ImageDecodeError(
                "a data URL image must be base64-encoded (data:image/png;base64,...)", field="image"
            )
        if match["mime"] and not match["mime"].startswith("image/"):
            raise ImageDecodeError(
                f"data URL has media type {match['mime']!r}, not an image", field="image"
            )
        payload = match["data"]
    # 4 base64 characters carry 3 bytes: refuse oversize input before decoding it.
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise ImageDecodeError(
            f"image is over the limit of {limits.max_bytes:,} bytes", field="image"
        )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image is not valid base64: {exc}", field="image") from exc


def _decode_bytes(data: bytes, limits: ImageLimits) -> Image.Image:
    image = _open(data, limits)
    with _decoding_errors():
        image.seek(0)  # first frame of an animation
        image.load()
        return _to_rgb(image)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image behind ``data`` opened (header read, no pixel decoded), within the limits."""
    head = data[:64].lstrip()
    for signature, reason in _REFUSED_SIGNATURES.items():
        if head[: len(signature)].lower() == signature.lower():
            raise ImageDecodeError(reason, field="image")
    with _decoding_errors():
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    try:
        _check_pixels(image.size, limits)
    except BaseException:
        image.close()
        raise
    return image


@contextmanager
def _decoding_errors() -> Iterator[None]:
    """PIL's many ways of saying no, as one ImageDecodeError saying why."""
    try:
        with warnings.catch_warnings():
            # PIL warns (and past 2x its limit, raises) on bombs; our own limit decides first.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"not a recognised image (accepted formats: {', '.join(ALLOWED_FORMATS)})",
            field="image",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"image refused as a decompression bomb: {exc}", field="image"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as exc:
        raise ImageDecodeError(f"image is corrupt or truncated: {exc}", field="image") from exc


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})", field="image")
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_pixels:,}",
            field="image",
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB") if image.mode != "RGB" else image
