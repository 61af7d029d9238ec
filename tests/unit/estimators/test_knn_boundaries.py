"""kNN OOD threshold and fraction at their boundary: a score equal to the threshold is not
flagged (the threshold is itself an ID score)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.estimators.knn import ood_fraction, ood_threshold


def test_a_score_equal_to_the_threshold_is_not_flagged() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.3, 0.4])
    assert ood_fraction(scores, 0.3) == pytest.approx(0.2)  # only 0.4 is above
    assert ood_fraction(scores, 0.4) == 0.0
    assert ood_fraction(scores, np.nextafter(0.3, 0.0)) == pytest.approx(0.6)


@pytest.mark.parametrize(("n", "tpr"), [(10, 0.9), (20, 0.95), (7, 0.5), (100, 0.99), (3, 0.6)])
def test_the_threshold_is_an_id_score_with_at_least_tpr_of_them_at_or_below_it(
    n: int, tpr: float
) -> None:
    scores = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    threshold = ood_threshold(scores, tpr)
    assert threshold in scores
    assert np.mean(scores <= threshold) >= tpr
    assert ood_fraction(scores, threshold) <= 1 - tpr + 1e-12
