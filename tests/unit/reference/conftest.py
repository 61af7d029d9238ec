"""Fixtures for reference-store tests.

``TableEncoder`` is a test double for the Encoder protocol (like httpx's MockTransport): it
returns precomputed rows for texts of the form "row:<i>", so store building, calibration and
kNN can be tested on synthetic embeddings of known distribution. Real-encoder builds use
MiniLM and a tiny CLIP elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from monitor.embedding.images import ImageSource


class TableEncoder:
    kind = "table"

    def __init__(self, table: np.ndarray, fingerprint: str = "table-v1") -> None:
        self.table = table.astype(np.float32)
        self.dim = table.shape[1]
        self.fingerprint = fingerprint

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.table[[int(t.split(":")[1]) for t in texts]]

    def encode_images(self, images: Sequence[ImageSource | Image.Image]) -> np.ndarray:
        raise NotImplementedError


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
