"""The store's kNN OOD threshold: fresh ID records are flagged at the rate 1 - TPR.

The threshold is calibrated on the store's own records, each scored leave-one-out (without its
own match). Scored with its own match, every ID record would be 0 away from itself at k = 1
and one neighbour closer at k = 3, the threshold would fall, and fresh ID traffic would be
flagged far more often than 1 - TPR.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from monitor.reference import BuildOptions
from tests.unit.reference.conftest import id_rows, small_store

RECORDS, FRESH, TPR = 3000, 4000, 0.9


@pytest.mark.parametrize("k", [1, 3])
def test_fresh_id_records_are_flagged_at_one_minus_tpr(tmp_path: Path, k: int) -> None:
    _, store = small_store(tmp_path, n=RECORDS, options=BuildOptions(ood_k=k, ood_tpr=TPR, seed=k))
    assert store.ood["k"] == k and store.ood["calibration_rows"] == RECORDS
    fresh = id_rows(np.random.default_rng(100 + k), FRESH)
    rate = float(store.ood_flags(fresh).mean())
    expected = 1 - TPR
    # Binomial error of the fresh rate, plus that of the threshold (a quantile of RECORDS
    # leave-one-out scores), 3 standard errors.
    tolerance = 3 * math.sqrt(expected * TPR * (1 / FRESH + 1 / RECORDS))
    assert abs(rate - expected) <= tolerance, (k, rate)
