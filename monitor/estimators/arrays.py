"""Input checks shared by the estimators: one place that turns arrays into clear errors.

Every estimator accepts numpy arrays and torch tensors alike; these helpers convert to numpy
(no copy where possible) and reject empty, non-finite, mis-shaped or non-normalised input with
an :class:`~monitor.errors.EmbeddingError` that names the argument and the first bad row.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from monitor.errors import EmbeddingError

ArrayLike: TypeAlias = "npt.NDArray[Any] | torch.Tensor"
FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]

# Rows stored as float16 come back with norms off by ~1e-3; anything further is a caller's bug.
UNIT_NORM_TOLERANCE = 5e-3


def to_numpy(a: object, name: str) -> FloatArray:
    """A float32/float64 numpy view of ``a`` (float16 and integers are upcast to float32/64)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"{name} is not an array: {exc}", field=name) from exc
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype in (np.float32, np.float64):
        return arr
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr.astype(np.float64)
    raise EmbeddingError(f"{name} must hold real numbers, got dtype {arr.dtype}", field=name)


def check_embeddings(
    a: object,
    name: str,
    *,
    dim: int | None = None,
    unit_norm: bool = False,
    normalize: bool = False,
) -> FloatArray:
    """Validate an (n, d) embedding matrix and return it as numpy.

    ``unit_norm`` requires L2-normalised rows (within :data:`UNIT_NORM_TOLERANCE`);
    ``normalize`` rescales the rows instead (a copy). Zero rows are an error either way.
    """
    arr = to_numpy(a, name)
    if arr.ndim != 2:
        raise EmbeddingError(
            f"{name} must be a 2-D (n, d) array of embeddings, got shape {arr.shape}", field=name
        )
    n, d = arr.shape
    if n == 0 or d == 0:
        raise EmbeddingError(
            f"{name} is empty (shape {arr.shape}): need at least one row", field=name
        )
    if dim is not None and d != dim:
        raise EmbeddingError(f"{name} has dimension {d}, expected {dim}", field=name)
    # A row with NaN or inf has a non-finite sum: check the n sums first, rows only on failure.
    if not np.isfinite(arr.sum(axis=1)).all() and not (finite := np.isfinite(arr).all(1)).all():
        bad = np.flatnonzero(~finite)
        raise EmbeddingError(
            f"{name} has {bad.size} row(s) with NaN or inf (first at row {bad[0]})", field=name
        )
    if not (unit_norm or normalize):
        return arr
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))
    zero = norms == 0.0
    if zero.any():
        raise EmbeddingError(
            f"{name} has {int(zero.sum())} all-zero row(s) (first at row {np.flatnonzero(zero)[0]})"
            ": a zero vector has no direction to compare",
            field=name,
        )
    if normalize:
        return l2_normalise(arr, dtype=arr.dtype)
    off = np.abs(norms - 1.0)
    worst = int(np.argmax(off))
    if off[worst] > UNIT_NORM_TOLERANCE:
        raise EmbeddingError(
            f"rows of {name} are not L2-normalised (row {worst} has norm {norms[worst]:.6g}); "
            "normalise them first or pass normalize=True",
            field=name,
        )
    return arr


def l2_normalise(rows: object, *, dtype: npt.DTypeLike = np.float32) -> FloatArray:
    """A copy of the rows (along the last axis) scaled to unit L2 norm, as float ``dtype``: the
    package's one normalisation. Norms are summed in float64 (float16/float32 sums lose digits
    at large d); an all-zero row stays zero instead of becoming NaN (callers that must refuse
    zero rows, like :func:`check_embeddings`, check first)."""
    arr = np.asarray(rows)
    norms = np.sqrt(np.einsum("...i,...i->...", arr, arr, dtype=np.float64)).astype(dtype)
    unit: FloatArray = arr.astype(dtype, copy=True)
    unit /= np.where(norms == 0, 1, norms)[..., None]
    return unit


def check_same_dim(a: FloatArray, b: FloatArray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise EmbeddingError(
            f"{name_a} and {name_b} differ in dimension ({a.shape[1]} vs {b.shape[1]})",
            field=name_b,
        )


def check_same_rows(a: FloatArray, b: FloatArray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise EmbeddingError(
            f"{name_a} and {name_b} must be paired row by row, got {a.shape[0]} and "
            f"{b.shape[0]} rows",
            field=name_b,
        )
