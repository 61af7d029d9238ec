"""Fixtures for reference-store tests.

``TableEncoder`` is a test double for the TextEncoder protocol (like httpx's MockTransport): it
returns precomputed rows for texts of the form "row:<i>", so store building, calibration and
kNN can be tested on synthetic embeddings of known distribution. Real-encoder builds use
MiniLM and a tiny CLIP elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitor.embedding import EncoderSet
from monitor.reference.build import BuildOptions, build_store
from monitor.reference.id_records import IDRecord
from monitor.reference.store import ReferenceStore


class TableEncoder:
    kind = "table"

    def __init__(self, table: np.ndarray, fingerprint: str = "table-v1") -> None:
        self.table = table.astype(np.float32)
        self.dim = table.shape[1]
        self.fingerprint = fingerprint

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.table[[int(t.split(":")[1]) for t in texts]]


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


D = 16
SCALE = np.geomspace(3.0, 0.3, D)


def id_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return unit(rng.standard_normal((n, D)) * SCALE + np.r_[1.5, np.zeros(D - 1)])


def small_store(
    root: Path,
    n: int = 60,
    *,
    name: str = "ref",
    fingerprint: str = "table-v1",
    seed: int = 0,
    options: BuildOptions | None = None,
) -> tuple[TableEncoder, ReferenceStore]:
    """A text-only store of n records (prompt i, response n+i, reference 2n+i rows)."""
    rng = np.random.default_rng(seed)
    prompts = id_rows(rng, n)
    responses = unit(prompts + 0.3 * rng.standard_normal((n, D)))
    references = unit(prompts + 0.3 * rng.standard_normal((n, D)))
    encoder = TableEncoder(np.vstack([prompts, responses, references]), fingerprint)
    records = [
        IDRecord(
            id=f"r{i}", prompt=f"row:{i}", response=f"row:{n + i}", reference=f"row:{2 * n + i}"
        )
        for i in range(n)
    ]
    store = build_store(
        records,
        root=root,
        name=name,
        encoders=EncoderSet(image=None, text=encoder, fusion="mean"),
        options=options or BuildOptions(),
    )
    return encoder, store
