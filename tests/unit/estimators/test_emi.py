"""EMI, EMID and the upper bound: forms, missing terms, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.errors import InvalidInputError
from monitor.estimators.club import CLUB
from monitor.estimators.emi import emi, emid, emid_upper_bound


def test_scale_adjusted_form_is_the_documented_sum() -> None:
    bound = emid_upper_bound(0.04, 0.09, 0.0016, 0.0081)
    assert bound.value == pytest.approx(0.2 + 0.3 + 0.2 + 0.3)
    assert bound.terms == pytest.approx(
        {"visual": 0.2, "text": 0.3, "output_id": 0.2, "output_live": 0.3}
    )
    assert bound.complete and bound.missing == ()


def test_entropy_scaled_form_scales_inputs_by_h_and_outputs_by_4() -> None:
    bound = emid_upper_bound(0.04, 0.09, 0.0016, 0.0081, form="entropy_scaled", entropy_scale=3.0)
    assert bound.value == pytest.approx(3.0 * (0.2 + 0.3) + 4.0 * (0.2 + 0.3))
    assert bound.terms["visual"] == pytest.approx(0.6)
    assert bound.terms["output_live"] == pytest.approx(1.2)


def test_missing_terms_are_none_and_mark_the_bound_incomplete() -> None:
    text_only = emid_upper_bound(None, 0.09, 0.0016, None)
    assert text_only.value == pytest.approx(0.3 + 0.2)
    assert text_only.terms["visual"] is None and text_only.terms["output_live"] is None
    assert not text_only.complete
    assert text_only.missing == ("visual", "output_live")
    nothing = emid_upper_bound(None, None, None, None)
    assert nothing.value is None and not nothing.complete


def test_zero_is_not_missing() -> None:
    bound = emid_upper_bound(0.0, 0.0, 0.0, 0.0)
    assert bound.value == 0.0 and bound.complete


def test_rounding_noise_below_zero_is_clipped_but_real_negatives_rejected() -> None:
    assert emid_upper_bound(-1e-12, 0.0, 0.0, 0.0).terms["visual"] == 0.0
    with pytest.raises(InvalidInputError, match="'text' is negative") as info:
        emid_upper_bound(0.1, -0.2, 0.1, 0.1)
    assert info.value.field == "text"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_terms_rejected(bad: float) -> None:
    with pytest.raises(InvalidInputError, match="not finite"):
        emid_upper_bound(bad, 0.1, 0.1, 0.1)


def test_bad_form_and_scale() -> None:
    with pytest.raises(InvalidInputError, match="unknown bound form"):
        emid_upper_bound(0.1, 0.1, 0.1, 0.1, form="tight")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="positive number"):
        emid_upper_bound(0.1, 0.1, 0.1, 0.1, form="entropy_scaled", entropy_scale=0.0)
    with pytest.raises(InvalidInputError, match="H = 1"):
        emid_upper_bound(0.1, 0.1, 0.1, 0.1, entropy_scale=2.0)


def test_emi_is_model_mi_minus_reference_mi_and_emid_their_drop() -> None:
    rng = np.random.default_rng(0)
    model = CLUB(6, 6, hidden=16)
    x, y_hat, y = (rng.standard_normal((30, 6)) for _ in range(3))
    assert emi(model, x, y_hat, y) == pytest.approx(model.estimate(x, y_hat) - model.estimate(x, y))
    assert emi(model, x, y_hat, y_hat) == pytest.approx(0.0, abs=1e-12)
    x2, y_hat2, y2 = (rng.standard_normal((20, 6)) for _ in range(3))
    assert emid(model, x, y_hat, y, x2, y_hat2, y2) == pytest.approx(
        emi(model, x, y_hat, y) - emi(model, x2, y_hat2, y2)
    )


def test_the_bound_records_the_jsd_mode_of_its_terms() -> None:
    assert emid_upper_bound(0.04, 0.09, 0.0016, 0.0081).jsd_mode is None  # not stated
    bound = emid_upper_bound(0.04, 0.09, 0.0016, None, jsd_mode="balanced")
    assert bound.jsd_mode == "balanced" and not bound.complete
    scaled = emid_upper_bound(
        0.04, 0.09, 0.0016, 0.0081, form="entropy_scaled", entropy_scale=2.0, jsd_mode="paper"
    )
    assert scaled.jsd_mode == "paper"
