"""Reading a window against its calibration: p-values, thresholds, the warning and the bound.

* With a permutation calibration, every term and the bound read the nulls drawn for the window
  itself (``window_nulls``: :mod:`monitor.detection.permutation`); otherwise:
* Each tested term (:data:`TESTED_TERMS`) reads a null for the count of rows entering it
  (records for text and response, images for visual, reference pairs for output_live):
  - a calibrated count: its null;
  - between two calibrated counts, from 20 on: each quantile interpolated linearly in
    1/sqrt(n), each trial keeping its rank so that the bound's null keeps the terms'
    dependence (linear in 1/n comes out low below 20, where quantiles bend);
  - between two calibrated counts below 20: the smaller count's null (conservative: JSD
    shrinks with n); small counts are calibrated sqrt(2) apart (5, 7, 10, 14) for that;
  - above the largest count: the largest count's null (conservative);
  - below the smallest: no p-value (a larger count's null is far too narrow for it).
* The warning is one joint test of the terms with a p-value and the OOD fraction
  (:mod:`monitor.detection.joint`): the window's smallest p-value against the null of the
  smallest p-value over the calibration's trials, whose terms were computed on the same
  pseudo-windows, so the null carries their dependence. Its false-alarm rate is below alpha at
  any dependence; a term (or the OOD fraction) is significant below the joint level
  (``term_level``), between alpha / tests (independent terms) and alpha (identical ones), so it
  gains power over Bonferroni where terms correlate (as text and response do). Bonferroni is
  read instead where the trials alone give a joint level below alpha / tests (too few trials
  past the ties of their top values), and for a permutation calibration, whose terms stop on
  splits of their own.
* The OOD fraction counts the flags among the samples that have an OOD score
  (``ood_scored``). A calibration made with the records' own flags (``ood_null``) holds each
  trial's count, and the OOD fraction joins the joint test up to the largest window size; past
  it, or without them, its binomial tail (each ID sample flagged with probability 1 - TPR)
  joins the terms' min-p assuming independence.
* The bound (scale-adjusted) is tested at ``alpha`` against the bound of each calibration
  trial's term values, with the same terms present as in the window; it is the input of the
  critical rule, not of the warning.

The measurements behind these choices are in benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from monitor.detection.joint import (
    binomial_chance_below,
    binomial_p_value,
    joint_level,
    ood_trial_counts,
    term_numerators,
    threshold_below,
    trials_numerators,
)
from monitor.detection.window_stats import INTERPOLATE_FROM, TESTED_TERMS, check_calibration
from monitor.errors import CalibrationError
from monitor.estimators.calibration import NullDistribution, binomial_count_threshold
from monitor.estimators.emi import emid_upper_bound
from monitor.estimators.tail import TailNull

ASSESSED: tuple[str, ...] = ("visual", "text", "output_id", "output_live", "response", "bound")
OOD = "ood"  # the OOD fraction, as a member of the warning's family


class TermNull(Protocol):
    """What a window's test reads from a null: a calibrated :class:`NullDistribution`, or a
    permutation null (:mod:`monitor.detection.permutation`), whose threshold may be unknown."""

    @property
    def trials(self) -> int: ...

    def p_value(self, observed: float) -> float: ...

    def threshold(self, alpha: float) -> float | None: ...


@dataclass(frozen=True)
class WindowAssessment:
    """p-values and thresholds per term (None: not computable, not calibrated, or too small)."""

    p_values: dict[str, float | None]
    thresholds: dict[str, float | None]
    significant_terms: tuple[str, ...]  # p-value below the warning's per-term level
    warning: bool
    bound_significant: bool | None
    ood_threshold: float | None  # a window is OOD-significant when its fraction exceeds this
    ood_significant: bool
    calibrated: bool
    tests: int = 0  # terms (and the OOD fraction) the warning tests
    # A p-value below it is significant: the joint min-p level, or alpha / tests (Bonferroni).
    term_level: float | None = None
    # The bound's p-value past the trials' resolution (the null's modelled upper tail): the
    # drift detector's score reads it.
    bound_tail_p_value: float | None = None
    # The answer-drift term's p-value, also past the trials (the detector's second score term).
    response_tail_p_value: float | None = None
    ood_p_value: float | None = None  # the OOD count's p-value (its trials', or binomial)
    joint: bool = False  # the warning is the min-p test (False: Bonferroni, or nothing tested)

    @property
    def score_p_values(self) -> dict[str, float | None]:
        """The p-values the drift detector's score combines (past the trials' resolution)."""
        return {"bound": self.bound_tail_p_value, "response": self.response_tail_p_value}


def null_for(calibration: dict[str, Any], statistic: str, n: int) -> NullDistribution | None:
    """The null of ``statistic`` (a tested term) for n rows entering it (module docstring).

    None when n is below every calibrated count or the term has no null. ``window_size`` of
    the result is n for an interpolated null, else the calibrated count read.
    """
    check_calibration(calibration)
    found = _term_values(calibration["nulls"].get(statistic), n)
    if found is None:
        return None
    size, values = found
    return NullDistribution(size, values)


def bound_null(
    calibration: dict[str, Any],
    *,
    n: int,
    n_images: int | None,
    n_references: int | None,
) -> NullDistribution | None:
    """Null of the scale-adjusted bound for a window with these counts.

    ``n_images`` / ``n_references`` None: the window has no such term (the bound leaves it
    out, and so does its null). None when a present term has no null at its count.
    """
    found = bound_trial_values(calibration, n=n, n_images=n_images, n_references=n_references)
    return None if found is None else NullDistribution(found[0], found[1])


def bound_trial_values(
    calibration: dict[str, Any],
    *,
    n: int,
    n_images: int | None,
    n_references: int | None,
) -> tuple[int, npt.NDArray[np.float64]] | None:
    """(size, the bound of each calibration trial, in trial order) for these counts: what
    :func:`bound_null` sorts; trial order keeps the bound aligned with the other terms."""
    check_calibration(calibration)
    nulls = calibration["nulls"]
    text = _term_values(nulls.get("text"), n)
    if text is None:
        return None
    visual = live = None
    if n_images is not None:
        visual = _term_values(nulls.get("visual"), n_images)
        if visual is None:
            return None
    if n_references is not None:
        live = _term_values(nulls.get("output_live"), n_references)
        if live is None:
            return None
    out_id = calibration.get("output_id")
    values = [
        emid_upper_bound(
            visual[1][i] if visual is not None else None,
            text[1][i],
            out_id,
            live[1][i] if live is not None else None,
        ).value
        for i in range(len(text[1]))
    ]
    return text[0], np.asarray(values, dtype=np.float64)


def term_trial_values(
    calibration: dict[str, Any], term: str, n: int
) -> npt.NDArray[np.float64] | None:
    """A tested term's null for n rows, in trial order (None below every calibrated count)."""
    check_calibration(calibration)
    found = _term_values(calibration["nulls"].get(term), n)
    return None if found is None else found[1]


def assess_window(
    calibration: dict[str, Any] | None,
    values: Mapping[str, float | None],
    *,
    n: int,
    n_images: int,
    n_references: int,
    ood_fraction: float | None,
    alpha: float,
    ood_flag_rate: float | None = None,
    window_nulls: Mapping[str, TermNull] | None = None,
    ood_scored: int | None = None,
) -> WindowAssessment:
    """p-values, thresholds and the warning of one window (``values`` from WindowStatistics).

    ``ood_flag_rate``: the per-sample flag rate of fresh ID records (1 - TPR of the store's
    OOD threshold); None reads it from the calibration, and without either OOD is not tested
    (unless the calibration holds its own OOD trials). ``window_nulls``: nulls drawn for this
    very window (terms and ``bound``; a permutation calibration,
    :mod:`monitor.detection.permutation`), read instead of the calibration's.
    ``ood_scored``: how many samples ``ood_fraction`` is over (those with an OOD score; None:
    all n). The OOD test counts flags among them: extrapolating a fraction of a few scored
    samples to all n would make 2 flags of 10 look like 80 of 400.
    """
    if ood_flag_rate is None and calibration is not None:
        ood_flag_rate = calibration.get("ood_flag_rate")
    scored = n if ood_scored is None else ood_scored
    flagged = round(ood_fraction * scored) if ood_fraction is not None and scored >= 1 else None
    ood = _OOD(flagged, scored, None if ood_flag_rate is None else float(ood_flag_rate))
    counts = {"visual": n_images, "text": n, "response": n, "output_live": n_references}
    if calibration is not None and window_nulls is None:
        warning = _joint_warning(calibration, values, counts, ood, alpha)
    else:
        warning = _bonferroni_warning(calibration, values, counts, window_nulls, ood, alpha)
    p_values, thresholds = warning.p_values, warning.thresholds
    bound_significant: bool | None = None
    bound_tail_p_value: float | None = None
    bound_value = values.get("bound_scale_adjusted")
    if calibration is not None and bound_value is not None:
        null = (
            window_nulls.get("bound")
            if window_nulls is not None
            else bound_null(
                calibration,
                n=n,
                n_images=n_images if values.get("visual") is not None else None,
                n_references=n_references if values.get("output_live") is not None else None,
            )
        )
        if null is not None:
            p_values["bound"] = null.p_value(bound_value)
            bound_significant = null.p_value(bound_value) < alpha
            # A permutation null (drawn for this window) keeps its own p-value: the detector of
            # such a store was calibrated on discrete permutation p-values.
            bound_tail_p_value = (
                tail_null(null.values).p_value(bound_value)
                if isinstance(null, NullDistribution)
                else p_values["bound"]
            )
            if (null.trials + 1) * alpha > 1.0:
                thresholds["bound"] = null.threshold(alpha)
    response_tail_p_value = p_values.get("response")
    response_value = values.get("response")
    if calibration is not None and window_nulls is None and response_value is not None:
        trials = term_trial_values(calibration, "response", n)
        if trials is not None:
            response_tail_p_value = tail_null(trials).p_value(response_value)
    return WindowAssessment(
        p_values=p_values,
        thresholds=thresholds,
        significant_terms=warning.significant,
        warning=bool(warning.significant) or warning.ood_significant,
        bound_significant=bound_significant,
        ood_threshold=warning.ood_threshold,
        ood_significant=warning.ood_significant,
        calibrated=calibration is not None,
        tests=warning.tests,
        term_level=warning.level,
        bound_tail_p_value=bound_tail_p_value,
        response_tail_p_value=response_tail_p_value,
        ood_p_value=warning.ood_p_value,
        joint=warning.joint,
    )


@dataclass(frozen=True)
class _OOD:
    """A window's OOD count: ``flagged`` of ``scored`` samples (None: not measured)."""

    flagged: int | None
    scored: int
    rate: float | None  # fresh ID records' flag rate; None: unknown

    @property
    def binomial(self) -> bool:
        return self.flagged is not None and self.rate is not None


@dataclass
class _Warning:
    p_values: dict[str, float | None]
    thresholds: dict[str, float | None]
    significant: tuple[str, ...] = ()
    tests: int = 0
    level: float | None = None
    ood_threshold: float | None = None
    ood_significant: bool = False
    ood_p_value: float | None = None
    joint: bool = False


def _joint_warning(
    calibration: dict[str, Any],
    values: Mapping[str, float | None],
    counts: Mapping[str, int],
    ood: _OOD,
    alpha: float,
) -> _Warning:
    """The min-p test over the calibration's shared pseudo-windows (:mod:`.joint`)."""
    check_calibration(calibration)
    out = _Warning(dict.fromkeys(ASSESSED), dict.fromkeys(ASSESSED), joint=True)
    family: dict[str, npt.NDArray[np.float64]] = {}
    observed: dict[str, float] = {}
    for term in TESTED_TERMS:
        value = values.get(term)
        found = _term_values(calibration["nulls"].get(term), counts[term])
        if value is not None and found is not None:
            family[term], observed[term] = found[1], float(value)
    ood_trials = ood_trial_counts(calibration, ood.scored) if ood.flagged is not None else None
    if ood_trials is not None and ood.flagged is not None:
        family[OOD], observed[OOD] = ood_trials.astype(np.float64), float(ood.flagged)
    joined_ood = ood.binomial and ood_trials is None
    out.tests = len(family) + int(joined_ood)
    if not family:
        return _binomial_ood(out, ood, alpha) if joined_ood else out
    lengths = {len(trials) for trials in family.values()}
    if len(lengths) != 1:
        raise CalibrationError(
            "the calibration's nulls hold different numbers of trials; rerun `mllm-monitor "
            "calibrate`"
        )
    trials = lengths.pop()
    numerators = {term: term_numerators(family[term], observed[term]) for term in family}
    minima = np.min(np.stack([trial for _, trial in numerators.values()]), axis=0)
    chance = None
    if joined_ood:
        assert ood.rate is not None
        chance = binomial_chance_below(ood.scored, ood.rate)
    # Past the ties of the trials' top values (each term's largest trial has p = 1/(B + 1)), a
    # joint level needs trials: where the trials alone (without the window, so the choice does
    # not depend on it) give a level below Bonferroni's, Bonferroni is read instead.
    alone = np.min(np.stack([trials_numerators(family[term]) for term in family]), axis=0)
    level_alone = joint_level(alone, alpha, ood_chance=chance)
    if level_alone is None or level_alone / (trials + 1) < alpha / out.tests:
        return _bonferroni_warning(calibration, values, counts, None, ood, alpha)
    level = joint_level(minima, alpha, ood_chance=chance)
    for term, (window, _) in numerators.items():
        if term != OOD:
            out.p_values[term] = window / (trials + 1)
    if level is None:
        return out
    out.level = level / (trials + 1)
    out.significant = tuple(
        t for t, (window, _) in numerators.items() if t != OOD and window < level
    )
    for term in family:
        if term != OOD:
            out.thresholds[term] = threshold_below(np.sort(family[term]), level)
    if OOD in numerators:
        assert ood_trials is not None and ood.flagged is not None
        window = numerators[OOD][0]
        out.ood_p_value = window / (trials + 1)
        out.ood_significant = window < level
        # Smallest count whose numerator 1 + #{trials >= count} falls below the level.
        ordered = np.sort(ood_trials)
        for count in range(ood.scored + 1):
            if 1 + len(ordered) - int(np.searchsorted(ordered, count, side="left")) < level:
                out.ood_threshold = (count - 1) / ood.scored
                break
    elif joined_ood:
        _binomial_ood(out, ood, out.level)
    return out


def _bonferroni_warning(
    calibration: dict[str, Any] | None,
    values: Mapping[str, float | None],
    counts: Mapping[str, int],
    window_nulls: Mapping[str, TermNull] | None,
    ood: _OOD,
    alpha: float,
) -> _Warning:
    """Each term and the OOD fraction at alpha / tests: permutation nulls (each term stops on
    its own splits, so no split holds every term's value) or no calibration."""
    out = _Warning(dict.fromkeys(ASSESSED), dict.fromkeys(ASSESSED))
    nulls: dict[str, TermNull] = {}
    if calibration is not None:
        for term in TESTED_TERMS:
            value = values.get(term)
            if value is None:
                continue
            null: TermNull | None = (
                window_nulls.get(term)
                if window_nulls is not None
                else null_for(calibration, term, counts[term])
            )
            if null is not None:
                nulls[term] = null
                out.p_values[term] = null.p_value(value)
    out.tests = len(nulls) + int(ood.binomial)
    if not out.tests:
        return out
    level = alpha / out.tests
    if calibration is not None and nulls:
        trials = int(calibration["trials"])
        if (trials + 1) * level <= 1.0:
            raise CalibrationError(
                f"the calibration's {trials} trials cannot resolve p-values below {level:.4g} "
                f"({out.tests} tests at a false-alarm rate of {alpha}); rerun `mllm-monitor "
                "calibrate` with more trials"
            )
    out.level = level
    out.significant = tuple(t for t in nulls if _below(out.p_values[t], level))
    for term, null in nulls.items():
        out.thresholds[term] = null.threshold(level)
    if ood.binomial:
        _binomial_ood(out, ood, level)
    return out


def _binomial_ood(out: _Warning, ood: _OOD, level: float) -> _Warning:
    """The OOD count's binomial test at ``level`` (each fresh ID sample flagged at the rate)."""
    assert ood.flagged is not None and ood.rate is not None
    if out.level is None:
        out.level = level
    out.ood_p_value = binomial_p_value(ood.flagged, ood.scored, ood.rate)
    k = binomial_count_threshold(ood.scored, ood.rate, level)
    if k is not None:
        out.ood_threshold = (k - 1) / ood.scored
        out.ood_significant = ood.flagged >= k
    return out


def tail_null(values: npt.NDArray[np.float64]) -> TailNull:
    """The tail model of a null's values, fitted once per distinct null (a stream's windows
    read the same few: 1 ms a fit against 20 us a read)."""
    return _tail_of(np.ascontiguousarray(values, dtype=np.float64).tobytes())


@lru_cache(maxsize=256)
def _tail_of(raw: bytes) -> TailNull:
    return TailNull(np.frombuffer(raw, dtype=np.float64))


def _below(p_value: float | None, level: float) -> bool:
    return p_value is not None and p_value < level


def _term_values(
    by_size: Mapping[str, Any] | None, n: int
) -> tuple[int, npt.NDArray[np.float64]] | None:
    """(size, values in trial order) of a term's null for n rows; None below every count."""
    if not by_size:
        return None
    sizes = sorted(int(s) for s in by_size)
    below = [s for s in sizes if s <= n]
    if not below:
        return None
    low = below[-1]
    low_values = np.asarray(by_size[str(low)], dtype=np.float64)
    above = [s for s in sizes if s > n]
    if low == n or not above:
        return low, low_values
    high = above[0]
    if low < INTERPOLATE_FROM:
        return low, low_values
    high_values = np.asarray(by_size[str(high)], dtype=np.float64)
    weight = (low**-0.5 - n**-0.5) / (low**-0.5 - high**-0.5)
    low_sorted, high_sorted = np.sort(low_values), np.sort(high_values)
    quantiles = low_sorted + weight * (high_sorted - low_sorted)
    # Each trial takes the interpolated quantile of its rank in the smaller count's null.
    ranks = np.argsort(np.argsort(low_values, kind="stable"), kind="stable")
    return n, quantiles[ranks]
