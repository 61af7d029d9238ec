"""kNN OOD score, threshold and fraction (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import InvalidInputError
from monitor.estimators.knn import kth_neighbour_distance, ood_fraction, ood_threshold


def test_kth_neighbour_distance_reads_the_kth_column() -> None:
    sims = np.array([[0.9, 0.8, 0.1], [1.0, 0.5, 0.4]])
    np.testing.assert_allclose(kth_neighbour_distance(sims, 1), [0.1, 0.0])
    np.testing.assert_allclose(kth_neighbour_distance(sims, 3), [0.9, 0.6])
    with pytest.raises(InvalidInputError, match="k = 4"):
        kth_neighbour_distance(sims, 4)


def test_threshold_keeps_the_tpr_share_of_id_scores_below_it() -> None:
    scores = np.random.default_rng(0).uniform(size=1000)
    threshold = ood_threshold(scores, tpr=0.9)
    assert np.mean(scores <= threshold) == pytest.approx(0.9, abs=0.002)
    assert ood_fraction(scores, threshold) == pytest.approx(0.1, abs=0.002)
    assert ood_fraction(np.array([]), threshold) == 0.0
    with pytest.raises(InvalidInputError, match="tpr"):
        ood_threshold(scores, tpr=1.0)
    with pytest.raises(InvalidInputError, match="finite"):
        ood_threshold(np.array([np.nan]))
