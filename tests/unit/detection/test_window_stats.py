"""WindowStatistics: one window's terms, as calibration and live windows compute them."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detection.window_stats import WindowStatistics
from monitor.estimators.rjsd import representation_jsd
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
