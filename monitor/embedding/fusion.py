"""Fusion of image and prompt embeddings into the query embedding x.

``mean`` is the paper's x = (z_v + z_t) / 2 (not re-normalised) and needs equal dims;
``concat`` is [z_v, z_t]. A text-only record uses z_t alone: x = z_t under ``mean``, and
[0, z_t] under ``concat`` (so every row keeps the same width).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from monitor.errors import ConfigError, EmbeddingError

Fusion = Literal["mean", "concat"]
Rows = npt.NDArray[np.float32]


def fused_dim(mode: Fusion, image_dim: int | None, text_dim: int) -> int:
    """Width of x; raises ConfigError when ``mean`` is asked of unequal dims."""
    if image_dim is None:
        return text_dim
    if mode == "mean":
        if image_dim != text_dim:
            raise ConfigError(
                f"encoders.fusion = 'mean' needs equal image and text dims, got {image_dim} "
                f"and {text_dim}: use fusion = 'concat' or encoders of the same width"
            )
        return text_dim
    return image_dim + text_dim


def fuse(
    text: Rows, image: Rows | None, has_image: npt.NDArray[np.bool_] | None, mode: Fusion = "mean"
) -> Rows:
    """x for each record; rows of ``image`` where ``has_image`` is False are ignored."""
    n, text_dim = text.shape
    if image is None:
        if has_image is not None and bool(np.any(has_image)):
            raise EmbeddingError(
                "records have images but no image embeddings were given", field="image"
            )
        if mode == "mean":
            return text.astype(np.float32, copy=True)
        raise EmbeddingError("concat fusion needs the image embeddings' width", field="image")
    if image.shape[0] != n:
        raise EmbeddingError(f"{image.shape[0]} image rows for {n} text rows", field="image")
    mask = np.ones(n, dtype=bool) if has_image is None else np.asarray(has_image, dtype=bool)
    width = fused_dim(mode, image.shape[1], text_dim)
    if mode == "mean":
        out = text.astype(np.float32, copy=True)
        out[mask] = (image[mask] + text[mask]) / 2
        return out
    out = np.zeros((n, width), dtype=np.float32)
    out[mask, : image.shape[1]] = image[mask]
    out[:, image.shape[1] :] = text
    return out
