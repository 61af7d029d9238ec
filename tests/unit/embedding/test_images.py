"""Safe image decoding: a hostile corpus, limits, orientation, modes, paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor.embedding.images import ImageLimits, decode_image
from monitor.errors import ImageDecodeError, InvalidInputError
from tests.unit.embedding.hostile_images import corpus

LIMITS = ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=40_000_000)
CASES = corpus()


@pytest.mark.parametrize(("name", "payload", "refusal"), CASES, ids=[c[0] for c in CASES])
def test_each_hostile_image_is_refused_clearly_or_decoded_correctly(
    name: str, payload: bytes | str, refusal: str | None
) -> None:
    start = time.perf_counter()
    if refusal is not None:
        with pytest.raises(ImageDecodeError, match=refusal) as info:
            decode_image(payload, limits=LIMITS)
        assert isinstance(info.value, InvalidInputError)  # a 4xx for the HTTP layer
        assert info.value.field == "image"
    else:
        image = decode_image(payload, limits=LIMITS)
        assert image.mode == "RGB"
        assert image.width >= 1 and image.height >= 1
    assert time.perf_counter() - start < 2.0  # no hang, no bomb expansion


def test_exif_orientation_is_applied() -> None:
    payload = dict((c[0], c[1]) for c in CASES)["exif rotated jpeg"]
    assert decode_image(payload).size == (40, 80)  # stored 80 x 40, displayed rotated


def test_first_frame_of_an_animation() -> None:
    payload = dict((c[0], c[1]) for c in CASES)["animated gif"]
    red = np.asarray(decode_image(payload))[10, 10]
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    payload = dict((c[0], c[1]) for c in CASES)["16-bit png"]
    pixels = np.asarray(decode_image(payload))
    assert pixels.min() < 10 and pixels.max() > 245
    assert 100 < pixels.mean() < 160  # a gradient, not all white


def test_transparent_palette_and_cmyk_convert_to_rgb() -> None:
    payloads = dict((c[0], c[1]) for c in CASES)
    assert decode_image(payloads["palette with transparency"]).mode == "RGB"
    cmyk = np.asarray(decode_image(payloads["cmyk jpeg"]), dtype=float)
    assert cmyk.std() > 20  # still a photo, not a flat colour


def test_pil_images_are_checked_too() -> None:
    assert decode_image(Image.new("LA", (4, 4))).mode == "RGB"
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(Image.new("L", (100, 100)), limits=ImageLimits(max_pixels=99))


def test_file_paths_only_where_allowed_and_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8), "blue").save(root / "ok.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    with pytest.raises(
        ImageDecodeError, match="only accepted in the ID records of a reference build"
    ):
        decode_image(root / "ok.png")
    assert decode_image("ok.png", allow_paths=True, root=root).size == (8, 8)
    with pytest.raises(ImageDecodeError, match="escapes the image root"):
        decode_image("../secret.png", allow_paths=True, root=root)
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image("missing.png", allow_paths=True, root=root)


def test_a_symlink_out_of_the_root_is_refused_and_one_inside_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(root / "sub" / "ok.png")
    Image.new("RGB", (9, 9), "red").save(tmp_path / "secret.png")
    (root / "leak.png").symlink_to(tmp_path / "secret.png")  # a file link leading out
    (root / "outside").symlink_to(tmp_path)  # a directory link leading out
    (root / "inside.png").symlink_to(root / "sub" / "ok.png")
    for escaping in ("leak.png", "outside/secret.png", "sub/../../secret.png"):
        with pytest.raises(ImageDecodeError, match="escapes the image root"):
            decode_image(escaping, allow_paths=True, root=root)
    assert decode_image("inside.png", allow_paths=True, root=root).size == (8, 8)
    # The root itself may be reached through a link: the check compares resolved paths.
    (tmp_path / "root-link").symlink_to(root)
    assert decode_image("sub/ok.png", allow_paths=True, root=tmp_path / "root-link").size == (8, 8)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came: never here
    (tmp_path / "folder.png").mkdir()
    start = time.perf_counter()
    for name in ("pipe.png", "folder.png"):
        with pytest.raises(ImageDecodeError, match="not a regular file"):
            decode_image(name, allow_paths=True, root=tmp_path)
    assert time.perf_counter() - start < 5


def test_a_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"\0" * 1001)
    with pytest.raises(ImageDecodeError, match="1,001 bytes, over the limit of 1,000"):
        decode_image("big.png", allow_paths=True, root=tmp_path, limits=ImageLimits(max_bytes=1000))


def test_default_limits_are_the_settings_defaults() -> None:
    from monitor.config import ImageEncoderSettings

    defaults = ImageEncoderSettings()
    assert ImageLimits() == ImageLimits(defaults.max_bytes, defaults.max_pixels)


def test_unsupported_value_type() -> None:
    with pytest.raises(ImageDecodeError, match="unsupported image value of type int"):
        decode_image(42)  # type: ignore[arg-type]
