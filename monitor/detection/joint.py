"""The warning's joint test: the null of the smallest p-value over the terms a window tests.

A window tests several terms (and the OOD fraction); it warns when the smallest of their
p-values is unusually small. How small is unusual comes from the calibration's trials: trial i
of every term (and count) was computed on the same pseudo-window, so the trials carry the
terms' dependence. The window and its B trials are B + 1 pseudo-windows, exchangeable under
the null hypothesis. Each of them gets, per term, the p-value of its value against the other B

    p = (1 + #{others >= value}) / (B + 1)

(for the window this is the p-value every term reports; for a trial the others are the other
trials and the window), and its min-p, the smallest over the terms. Only integers are compared:
a p-value is its numerator over B + 1, and ties count against the value (conservative).

The window warns when fewer than alpha (B + 1) - 1 trials have a min-p at or below its own:
under the null its min-p's rank among the B + 1 is uniform (ties only make it larger), so the
warning's false-alarm rate is below alpha, at any dependence between the terms. Equivalently
the window's min-p lies below the joint level: the (K + 1)-th smallest trial min-p, K the
largest count with (K + 1) / (B + 1) < alpha. A term is significant when its p-value lies below
that level; with a single term the rule is exactly p < alpha.

Ties at the top cost resolution: each term's largest trial has p = 1/(B + 1), so with T terms
about T trials share the smallest min-p, and a joint level needs (T + 1) / (B + 1) < alpha to
let anything fire. Where the trials alone (without the window, so the choice does not depend
on it) give a joint level below alpha / tests, the window is read with Bonferroni instead
(:func:`monitor.detection.assess.assess_window`, ``joint`` False).

When the OOD fraction has no trials of its own (no per-record flags at calibration, or more
scored samples than the trials recorded) its binomial p-value joins the terms' min-p assuming
independence: the level is the largest trial min-p whose rank bound a and binomial chance b of
an OOD p-value below it keep 1 - (1 - a)(1 - b) < alpha.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import binom

from monitor.errors import CalibrationError
from monitor.estimators.calibration import binomial_count_threshold

Counts = npt.NDArray[np.int64]


def term_numerators(trials: npt.NDArray[np.float64], observed: float) -> tuple[int, Counts]:
    """(the window's p-value numerator against the trials, each trial's against the other
    trials and the window); p = numerator / (B + 1). ``trials`` in trial order."""
    ordered = np.sort(trials)
    count = len(trials)
    window = 1 + count - int(np.searchsorted(ordered, observed, side="left"))
    # Trials >= each trial, itself included: its own 1 stands for the formula's 1.
    at_least = count - np.searchsorted(ordered, trials, side="left")
    return window, (at_least + (observed >= trials)).astype(np.int64)


def trials_numerators(trials: npt.NDArray[np.float64]) -> Counts:
    """Each trial's p-value numerator against the other trials alone (no window)."""
    ordered = np.sort(trials)
    at_least: Counts = (len(trials) - np.searchsorted(ordered, trials, side="left")).astype(
        np.int64
    )
    return at_least


def largest_numerator_below(alpha: float, trials: int) -> int:
    """Largest j with j / (trials + 1) < alpha, computed as the p-values are (float division)."""
    j = max(0, int(np.ceil(alpha * (trials + 1))))
    while j > 0 and j / (trials + 1) >= alpha:
        j -= 1
    while (j + 1) / (trials + 1) < alpha:
        j += 1
    return j


def joint_level(
    trial_minima: Counts,
    alpha: float,
    *,
    ood_chance: Callable[[float], float] | None = None,
) -> int | None:
    """The joint level's numerator: a p-value whose numerator is below it is significant.

    ``trial_minima``: each trial's min-p numerator. ``ood_chance(q)``: the chance that an ID
    window's binomial OOD p-value is below q, for an OOD test joined assuming independence
    (module docstring). None when no level keeps the rate below alpha.
    """
    trials = len(trial_minima)
    most = largest_numerator_below(alpha, trials)
    if most < 1:
        raise CalibrationError(
            f"the calibration's {trials} trials cannot resolve p-values below {alpha:.4g} (the "
            f"joint test at a false-alarm rate of {alpha}; the smallest p-value is "
            f"1/{trials + 1}); rerun `mllm-monitor calibrate` with more trials"
        )
    ordered = np.sort(trial_minima)
    for rank in range(most - 1, -1, -1):
        level = int(ordered[rank])
        if ood_chance is None:
            return level
        terms = (rank + 1) / (trials + 1)
        if 1.0 - (1.0 - terms) * (1.0 - ood_chance(level / (trials + 1))) < alpha:
            return level
    return None


def threshold_below(ordered: npt.NDArray[np.float64], level: int) -> float | None:
    """The value t with ``observed > t`` exactly when the numerator of observed's p-value
    against the sorted trials ``ordered`` is below ``level``; None when none is."""
    # 1 + #{trials >= observed} < level: at most level - 2 trials at or above it.
    most = min(level - 2, len(ordered) - 1)
    return float(ordered[len(ordered) - 1 - most]) if most >= 0 else None


def binomial_chance_below(scored: int, rate: float) -> Callable[[float], float]:
    """q -> P(the binomial OOD p-value of an ID window of ``scored`` samples is below q)."""

    def chance(q: float) -> float:
        if q >= 1.0:
            return 1.0
        k = binomial_count_threshold(scored, rate, q)
        return 0.0 if k is None else float(binom.sf(k - 1, scored, rate))

    return chance


def binomial_p_value(flagged: int, scored: int, rate: float) -> float:
    """P(Binomial(scored, rate) >= flagged)."""
    return float(binom.sf(flagged - 1, scored, rate))


def ood_trial_counts(calibration: Mapping[str, Any], scored: int) -> Counts | None:
    """Flagged records among the first ``scored`` of each trial's pseudo-window, in trial
    order; None without per-record flags at calibration or past the records they cover."""
    found = calibration.get("ood_null")
    if not found or scored > int(found["records"]) or scored < 1:
        return None
    # Each trial's ranks are ascending: the count below ``scored`` is a bisection.
    return np.array(
        [bisect.bisect_left(ranks, scored) for ranks in found["flag_ranks"]], dtype=np.int64
    )
