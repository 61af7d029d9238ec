"""CLIP vision encoder on a tiny random CLIP loaded through the real path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.embedding import (
    ImageEncoder,
    ImageLimits,
    TextEncoder,
    load_encoder,
    load_text_encoder,
)
from monitor.embedding.clip import ClipVisionEncoder
from monitor.errors import EncoderError, ImageDecodeError
from tests.unit.embedding.hostile_images import corpus

transformers = pytest.importorskip("transformers")


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (48, 64), (32, 32), (100, 37), (15, 90), (33, 33)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes
    ]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def paper_embedding(model_dir: Path, images: list[Image.Image]) -> np.ndarray:
    """The paper's computation with transformers' own processor and the full CLIP model."""
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    model = transformers.CLIPModel.from_pretrained(model_dir).eval()
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    pooled = out.hidden_states[-1][:, 1:, :].mean(dim=1)
    rows: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return rows


@pytest.mark.parametrize("batch_size", [1, 4, 32])  # 4: prefetching across several batches
def test_matches_the_papers_computation(tiny_clip: Path, batch_size: int) -> None:
    encoder = load_encoder("clip_vision", str(tiny_clip), batch_size=batch_size, cache_size=0)
    images = photos()
    expected = paper_embedding(tiny_clip, images)
    from_pil = encoder.encode_images(images)
    from_bytes = encoder.encode_images([png(image) for image in images])
    assert from_pil.dtype == np.float32
    np.testing.assert_allclose(from_pil, expected, atol=1e-5)
    np.testing.assert_allclose(from_bytes, expected, atol=1e-5)


def test_every_hostile_image_gives_an_error_or_an_embedding(tiny_clip: Path) -> None:
    limits = ImageLimits(max_bytes=2 * 1024 * 1024)
    encoder = load_encoder("clip_vision", str(tiny_clip), image_limits=limits)
    for name, payload, refusal in corpus():
        if refusal is None:
            rows = encoder.encode_images([payload])
            assert np.isfinite(rows).all(), name
            assert abs(float(np.linalg.norm(rows[0])) - 1.0) < 1e-5, name
        else:
            with pytest.raises(ImageDecodeError, match=refusal):
                encoder.encode_images([payload])


def test_bad_image_is_named_by_its_position(tiny_clip: Path) -> None:
    encoder = load_encoder("clip_vision", str(tiny_clip))
    good = png(photos()[0])
    with pytest.raises(ImageDecodeError, match="image 2: "):
        encoder.encode_images([good, good, good[:40]])


def test_repeated_images_are_embedded_once(tiny_clip: Path) -> None:
    encoder = load_encoder("clip_vision", str(tiny_clip))
    assert isinstance(encoder, ClipVisionEncoder)
    data = png(photos()[1])
    rows = encoder.encode_images([data, data, data])
    np.testing.assert_array_equal(rows[0], rows[2])
    assert encoder._cache.misses == 1


def test_a_clip_encoder_is_an_image_encoder_only(tiny_clip: Path) -> None:
    encoder = load_encoder("clip_vision", str(tiny_clip))
    assert isinstance(encoder, ImageEncoder)
    assert not isinstance(encoder, TextEncoder)
    with pytest.raises(EncoderError, match="'clip_vision' is not one of the text encoder kinds"):
        load_text_encoder("clip_vision", str(tiny_clip))
