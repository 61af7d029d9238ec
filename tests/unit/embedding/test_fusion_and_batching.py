"""Fusion of image and prompt embeddings, length-grouped batches, the cache, and settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.config import EncoderSettings, ImageEncoderSettings, TextEncoderSettings
from monitor.embedding import encoders_from_settings, fuse
from monitor.embedding.batching import EmbeddingCache, encode_with_cache, length_grouped_batches
from monitor.errors import ConfigError, EmbeddingError
from tests.unit.embedding.conftest import make_xlmr


def rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_mean_fusion_is_the_papers_average_and_text_only_rows_use_the_prompt() -> None:
    text, image = rows(4, 8, 0), rows(4, 8, 1)
    has_image = np.array([True, False, True, False])
    x = fuse(text, image, has_image, "mean")
    np.testing.assert_allclose(x[0], (image[0] + text[0]) / 2)
    np.testing.assert_allclose(x[1], text[1])
    np.testing.assert_allclose(fuse(text, None, None, "mean"), text)


def test_concat_fusion_zero_fills_missing_images() -> None:
    text, image = rows(3, 8, 0), rows(3, 5, 1)
    x = fuse(text, image, np.array([True, False, True]), "concat")
    assert x.shape == (3, 13)
    np.testing.assert_allclose(x[0], np.r_[image[0], text[0]])
    np.testing.assert_allclose(x[1], np.r_[np.zeros(5), text[1]])


def test_fusion_errors() -> None:
    with pytest.raises(ConfigError, match="needs equal image and text dims, got 5 and 8"):
        fuse(rows(2, 8, 0), rows(2, 5, 1), None, "mean")
    with pytest.raises(EmbeddingError, match="3 image rows for 2 text rows"):
        fuse(rows(2, 8, 0), rows(3, 8, 1), None, "mean")
    with pytest.raises(EmbeddingError, match="no image embeddings"):
        fuse(rows(2, 8, 0), None, np.array([True, False]), "mean")


def test_length_grouping_covers_every_index_once_and_sorts_by_length() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_grouped_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) <= 3 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)


def test_encode_with_cache_computes_each_distinct_key_once() -> None:
    calls: list[list[int]] = []

    def compute(positions: list[int]) -> np.ndarray:
        calls.append(positions)
        return np.array([[float(p)] for p in positions], dtype=np.float32)

    cache = EmbeddingCache(10)
    out = encode_with_cache(["a", "b", "a", "c"], 1, cache, compute)
    assert calls == [[0, 1, 3]]
    assert out[:, 0].tolist() == [0.0, 1.0, 0.0, 3.0]
    encode_with_cache(["c", "a"], 1, cache, compute)
    assert len(calls) == 1  # both cached
    off = EmbeddingCache(0)
    encode_with_cache(["a"], 1, off, compute)
    assert len(off) == 0


def test_encoders_from_settings(tiny_clip: Path, tiny_xlmr: Path, tmp_path: Path) -> None:
    settings = EncoderSettings(
        image=ImageEncoderSettings(model=str(tiny_clip)),
        text=TextEncoderSettings(model=str(tiny_xlmr)),
        batch_size=4,
    )
    encoders = encoders_from_settings(settings)
    assert encoders.image is not None and encoders.image.dim == 32
    assert encoders.query_dim == 32
    text_only = encoders_from_settings(
        settings.model_copy(update={"image": ImageEncoderSettings(kind="none")})
    )
    assert text_only.image is None
    wide = make_xlmr(tmp_path / "wide", hidden=48)
    mismatched = settings.model_copy(update={"text": TextEncoderSettings(model=str(wide))})
    with pytest.raises(ConfigError, match="fusion = 'mean' needs equal"):
        encoders_from_settings(mismatched)
    concat = mismatched.model_copy(update={"fusion": "concat"})
    assert encoders_from_settings(concat).query_dim == 80
