"""kNN out-of-distribution score: cosine distance to the k-th nearest ID neighbour.

Pure functions over similarities that an index (FAISS, in :mod:`monitor.reference`) returns:
inner products of L2-normalised rows, sorted in decreasing order per query.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.errors import InvalidInputError

FloatArray = npt.NDArray[np.floating[Any]]


def kth_neighbour_distance(similarities: FloatArray, k: int) -> npt.NDArray[np.float64]:
    """1 - cosine similarity to the k-th neighbour, per query row (rows sorted descending)."""
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 2 or not 1 <= k <= sims.shape[1]:
        raise InvalidInputError(
            f"need (n, >= {k}) similarities for k = {k}, got shape {sims.shape}", field="k"
        )
    distance: npt.NDArray[np.float64] = 1.0 - sims[:, k - 1]
    return distance


def ood_threshold(id_scores: FloatArray, tpr: float = 0.95) -> float:
    """The score below or at which a fraction ``tpr`` of held-out ID samples fall."""
    scores = np.asarray(id_scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise InvalidInputError("need at least one finite ID score to calibrate", field="scores")
    if not 0.0 < tpr < 1.0:
        raise InvalidInputError(f"tpr must lie in (0, 1), got {tpr}", field="tpr")
    return float(np.quantile(scores, tpr, method="higher"))


def ood_fraction(scores: FloatArray, threshold: float) -> float:
    """Fraction of a window's samples scored above the threshold (0 for an empty window)."""
    values = np.asarray(scores, dtype=np.float64)
    return float(np.mean(values > threshold)) if values.size else 0.0
