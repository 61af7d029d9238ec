"""read_window's in-place re-normalisation gives the same float32 values, bit for bit, as the
expression it replaced, and leaves arrays it does not own untouched."""

from __future__ import annotations

import numpy as np

from monitor.detection.window_model import renormalise as _renormalise


def _reference(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: np.ndarray = np.where(norms > 0, rows / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    return out


def test_in_place_renormalisation_matches_the_copying_expression_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((300, 48)).astype(np.float16).astype(np.float32)
    rows[[0, 17, 299]] = 0.0  # samples without the kind: zero rows stay zero
    expected = _reference(rows)
    kept = rows.copy()
    assert _renormalise(rows).tobytes() == expected.tobytes()
    assert rows.tobytes() == kept.tobytes()  # not in place unless asked
    out = _renormalise(rows, in_place=True)
    assert out is rows and out.dtype == np.float32
    assert out.tobytes() == expected.tobytes()
    assert not out[[0, 17, 299]].any()
