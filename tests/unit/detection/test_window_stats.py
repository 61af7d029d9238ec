"""WindowStatistics: one window's terms, as calibration and live windows compute them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from monitor.detection.window_stats import WindowStatistics, store_ood_flags
from monitor.estimators.rjsd import representation_jsd
from monitor.reference.build import BuildOptions, _calibrate_ood
from monitor.reference.index import IndexParams, build_index
from tests.conftest import unit_rows

D = 16


@pytest.mark.parametrize("mode", ["balanced", "paper"])
def test_a_window_whose_answers_all_have_references_shares_their_set(mode: str) -> None:
    """__call__ computes the answers' covariance once for the response and live output terms
    when every answer has a reference; the values are those of the terms computed apart."""
    rng = np.random.default_rng(3)
    stats = WindowStatistics(
        prompts=unit_rows(rng, 200, D),
        responses=unit_rows(rng, 200, D),
        reference_pairs=(unit_rows(rng, 100, D), unit_rows(rng, 100, D)),
        jsd_mode=mode,  # type: ignore[arg-type]
    )
    prompts = unit_rows(rng, 60, D).astype(np.float32)
    answers = unit_rows(rng, 60, D, mean=np.full(D, 0.2)).astype(np.float32)
    references = unit_rows(rng, 60, D).astype(np.float32)
    values = stats(
        prompts=prompts,
        images=None,
        responses=answers,
        reference_pairs=(answers.copy(), references),  # equal rows, another array
    )
    assert values["response"] == stats.response(answers)
    assert values["output_live"] == stats.output_live((answers, references))
    assert values["output_live"] == pytest.approx(
        representation_jsd(answers, references, mode=mode),  # type: ignore[arg-type]
        abs=1e-12,
    )
    assert values["text"] == stats.text(prompts)
    # Some answers without a reference: the pairs are a subset, computed apart.
    subset = (answers[:40], references[:40])
    partial = stats(prompts=prompts, images=None, responses=answers, reference_pairs=subset)
    assert partial["response"] == values["response"]
    assert partial["output_live"] == stats.output_live(subset)
    assert partial["output_live"] != values["output_live"]


class _QueryStore:
    """The parts of a reference store that store_ood_flags reads: its fused query rows, their
    FAISS index and the OOD threshold, set as a build sets them."""

    def __init__(self, rows: np.ndarray, k: int) -> None:
        self.rows = rows.astype(np.float32)
        self._index = build_index(self.rows, IndexParams())
        self.kinds = ["prompt", "query"]
        self.ood = _calibrate_ood(
            self._index, self.rows, BuildOptions(ood_k=k, ood_calibration_rows=len(rows))
        )

    def embeddings(self, kind: str) -> np.ndarray:
        assert kind == "query"
        return self.rows.copy()

    def index(self, kind: str) -> Any:
        assert kind == "query"
        return self._index


@pytest.mark.parametrize("k", [1, 3])
def test_store_ood_flags_score_each_record_leave_one_out_as_the_threshold_was_set(k: int) -> None:
    """The build sets the threshold at the 95% quantile of every record's leave-one-out score:
    the records' own flags, scored the same way, are the 5% above it (ties aside), and with
    k = 1 a record's exact duplicate makes it an inlier (its own match, not the twin, is
    dropped)."""
    rng = np.random.default_rng(5)
    rows = unit_rows(rng, 400, D)
    rows[1] = rows[0]  # an exact duplicate: each is the other's nearest neighbour
    store = _QueryStore(rows, k)
    flags = store_ood_flags(store)  # type: ignore[arg-type]
    assert flags is not None and flags.shape == (400,)
    assert 0.05 - 2 / 400 <= flags.mean() <= 0.05
    scores = 1.0 - np.sort(rows @ rows.T, axis=1)[:, ::-1][:, k]  # k-th other row, brute force
    np.testing.assert_array_equal(flags, scores > store.ood["threshold"] + 1e-6)
    if k == 1:
        assert not flags[0] and not flags[1]
