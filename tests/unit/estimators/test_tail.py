"""The null's tail model: p-values past 1 / (B + 1), conservative where the fit is unsure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitor.estimators.tail import MIN_TRIALS, TailNull


def test_p_values_go_past_the_trials_resolution_and_fall_with_the_value() -> None:
    values = np.random.default_rng(0).gamma(4.0, 1.0, 500)
    null = TailNull(values)
    assert null.fit is not None
    beyond = np.array([values.max() + 1.0, values.max() + 3.0, values.max() + 6.0])
    p = null.p_values(beyond)
    assert (p < 1.0 / 501).all()
    assert (np.diff(p) < 0).all()
    # In the body it is the empirical p-value.
    median = float(np.median(values))
    assert null.p_value(median) == pytest.approx((1 + (values >= median).sum()) / 501)


@pytest.mark.parametrize(
    ("draw", "truth"),
    [
        (lambda rng, n: rng.gamma(4.0, 1.0, n), stats.gamma(4.0)),
        (lambda rng, n: rng.standard_normal(n), stats.norm()),
        (lambda rng, n: rng.chisquare(50, n), stats.chi2(50)),
    ],
)
def test_deep_p_values_are_within_two_decades_and_not_smaller_than_the_truth(
    draw: object, truth: object
) -> None:
    """From 500 trials, p = 1e-4 is read within a factor of 100, and not below a third of it
    (the median of 10 nulls): the model errs on the conservative side."""
    rng = np.random.default_rng(1)
    x = truth.isf(1e-4)  # type: ignore[attr-defined]
    logs = [np.log10(TailNull(draw(rng, 500)).p_value(x)) + 4 for _ in range(10)]  # type: ignore[operator]
    assert -0.5 < float(np.median(logs)) < 2.0


def test_isf_inverts_p_values() -> None:
    null = TailNull(np.random.default_rng(2).gamma(4.0, 1.0, 500))
    p = np.array([0.5, 0.1, 0.01, 1e-4, 1e-7])
    assert null.p_values(null.isf(p)) == pytest.approx(p, rel=0.05)


def test_too_few_trials_keep_the_empirical_p_value() -> None:
    values = np.arange(MIN_TRIALS - 1, dtype=float)
    null = TailNull(values)
    assert null.fit is None
    assert null.p_value(1e9) == pytest.approx(1.0 / MIN_TRIALS)
