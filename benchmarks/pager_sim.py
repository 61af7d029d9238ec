"""The two paging rules run over sequences of windows, for the pager benchmark.

A :class:`Judge` turns a window's statistics (the values of
:class:`~monitor.detection.WindowStatistics`) into what each rule reads: the bound's p-value
(BEFORE: critical when p < alpha in k of the last m windows, :func:`monitor.detection.risk.
assess_risk`), the detector's score (AFTER: :class:`~monitor.detection.detector.Detector` on
:func:`~monitor.detection.detector.detector_score` of the bound's and the answer term's tail
p-values, the product's ``WindowAssessment.score_p_values``), and the warning. It reads the
very nulls :func:`~monitor.detection.assess.assess_window` reads (``null_for`` /
``bound_null`` / ``term_trial_values``, their tail models through ``tail_null``), once for the
window's counts, and computes p-values and scores for many windows at a time. The warning is
``assess_window``'s own (:meth:`Judge.assess`: its joint min-p test, 2 ms a window, run in the
workers), and :meth:`Judge.agree` compares the judge's p-values with what ``assess_window``
gave for the same windows, raising on the first disagreement.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.detection.assess import (
    assess_window,
    bound_null,
    null_for,
    tail_null,
    term_trial_values,
)
from monitor.detection.detector import Detector, DetectorState, detector_score
from monitor.detection.risk import RiskPolicy, WindowSignals, assess_risk
from monitor.detection.window_stats import TESTED_TERMS
from monitor.estimators.calibration import NullDistribution
from monitor.records import RiskLevel

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Values = Mapping[str, float | None]


@dataclass(frozen=True)
class Counts:
    """Rows entering each term of every window (windows of one configuration share them)."""

    n: int
    n_images: int
    n_references: int


class Judge:
    """What the rules read from windows of ``counts`` records against ``calibration``."""

    def __init__(
        self, calibration: dict[str, Any], counts: Counts, detector: Detector, alpha: float
    ) -> None:
        self.calibration, self.counts, self.detector, self.alpha = (
            calibration,
            counts,
            detector,
            alpha,
        )
        by_term = {
            "visual": counts.n_images,
            "text": counts.n,
            "response": counts.n,
            "output_live": counts.n_references,
        }
        self.term_nulls: dict[str, NullDistribution] = {}
        for term in TESTED_TERMS:
            null = null_for(calibration, term, by_term[term]) if by_term[term] else None
            if null is not None:
                self.term_nulls[term] = null
        bound = bound_null(
            calibration,
            n=counts.n,
            n_images=counts.n_images if "visual" in self.term_nulls else None,
            n_references=counts.n_references if "output_live" in self.term_nulls else None,
        )
        assert bound is not None, "the calibration has no bound null for these windows"
        self.bound = bound
        self.tail = tail_null(bound.values)
        response = term_trial_values(calibration, "response", counts.n)
        assert response is not None, "the calibration has no answer-term null for these windows"
        self.response_tail = tail_null(response)

    def bound_p_values(self, bounds: Floats) -> Floats:
        return self.bound.p_values(bounds)

    def score_p_values(self, values: Sequence[Values]) -> tuple[Floats, Floats]:
        """(bound, answer term) tail p-values of each window: ``score_p_values`` of
        ``assess_window``, what the detector's score combines (NaN: the window lacks it)."""
        bounds, responses = (
            np.array([_or_nan(v.get(key)) for v in values], dtype=np.float64)
            for key in ("bound_scale_adjusted", "response")
        )
        bound_p, response_p = np.full(len(values), np.nan), np.full(len(values), np.nan)
        for p, tail, observed in (
            (bound_p, self.tail, bounds),
            (response_p, self.response_tail, responses),
        ):
            present = np.isfinite(observed)
            p[present] = tail.p_values(observed[present])
        return bound_p, response_p

    def assess(self, window: Values) -> Assessed:
        """What ``assess_window`` itself says of a window (no OOD fraction)."""
        found = assess_window(
            self.calibration,
            window,
            n=self.counts.n,
            n_images=self.counts.n_images,
            n_references=self.counts.n_references,
            ood_fraction=None,
            alpha=self.alpha,
        )
        score = found.score_p_values
        return Assessed(
            found.warning,
            _or_nan(found.p_values["bound"]),
            _or_nan(score["bound"]),
            _or_nan(score["response"]),
            _or_nan(detector_score(score)),
        )

    def agree(self, values: Sequence[Values], assessed: Sequence[Assessed]) -> int:
        """Windows on which this judge and ``assess_window`` (``assessed``, of the same windows)
        agree: the bound's p-value, the score's two p-values and the score. Raises on the first
        disagreement."""
        bounds = np.array([v["bound_scale_adjusted"] for v in values], dtype=np.float64)
        bound_p, response_p = self.score_p_values(values)
        mine = {
            "bound p": self.bound_p_values(bounds),
            "bound tail p": bound_p,
            "answer tail p": response_p,
            "score": scores(bound_p, response_p),
        }
        theirs = {
            "bound p": [a.bound_p for a in assessed],
            "bound tail p": [a.bound_tail_p for a in assessed],
            "answer tail p": [a.response_tail_p for a in assessed],
            "score": [a.score for a in assessed],
        }
        for what, own in mine.items():
            other = np.asarray(theirs[what], dtype=np.float64)
            close = np.isclose(own, other, rtol=1e-12, atol=0.0) | (np.isnan(own) & np.isnan(other))
            if not close.all():
                i = int(np.argmin(close))
                raise AssertionError(f"{what} of window {i}: {own[i]} here, {other[i]} assessed")
        return len(values)


@dataclass(frozen=True)
class Assessed:
    """What ``assess_window`` gave for a window (NaN: none)."""

    warning: bool
    bound_p: float
    bound_tail_p: float
    response_tail_p: float
    score: float


def scores(bound_p: Sequence[float] | Floats, response_p: Sequence[float] | Floats) -> Floats:
    """The detector's score of each window: ``detector_score`` of its two p-values (NaN: none)."""
    out = np.empty(len(bound_p))
    for i, (b, r) in enumerate(zip(bound_p, response_p, strict=True)):
        found = detector_score({"bound": _or_none(b), "response": _or_none(r)})
        out[i] = np.nan if found is None else found
    return out


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class RuleState:
    """Both rules' state on one stream: the last m - 1 windows' signals and the detector."""

    recent: deque[WindowSignals]
    detector: DetectorState
    old_critical: bool = False

    @classmethod
    def fresh(cls, policy: RiskPolicy) -> RuleState:
        return cls(deque(maxlen=max(policy.m - 1, 1)), DetectorState())


def step_rules(
    state: RuleState, policy: RiskPolicy, detector: Detector, hit: bool, score: float
) -> tuple[bool, bool]:
    """One window through both rules: (the old rule is critical, the detector is alarmed)."""
    signals = WindowSignals(sufficient=True, bound_significant=hit)
    level = assess_risk(signals, list(state.recent), policy).level
    if policy.m > 1:
        state.recent.append(signals)
    state.detector = detector.step(state.detector, None if math.isnan(score) else score)
    state.old_critical = level == RiskLevel.CRITICAL
    return state.old_critical, state.detector.alarmed


@dataclass(frozen=True)
class Run:
    """Both rules over one sequence of windows."""

    old_critical: Bools
    alarmed: Bools

    @staticmethod
    def onsets(critical: Bools) -> int:
        before = np.concatenate([[False], critical[:-1]])
        return int(np.count_nonzero(critical & ~before))


def run_rules(
    hits: Bools, score_p: tuple[Floats, Floats], policy: RiskPolicy, detector: Detector
) -> tuple[Run, Floats, float]:
    """Both rules over a stream of windows given the bound's significance and the score's
    (bound, answer term) p-values; the scores; the detector's seconds per window (the score,
    ``detector_score``, and the step)."""
    state = RuleState.fresh(policy)
    old = np.zeros(len(hits), dtype=bool)
    for i, hit in enumerate(hits.tolist()):
        signals = WindowSignals(sufficient=True, bound_significant=hit)
        old[i] = assess_risk(signals, list(state.recent), policy).level == RiskLevel.CRITICAL
        state.recent.append(signals)
    alarmed = np.zeros(len(hits), dtype=bool)
    found = np.full(len(hits), np.nan)
    detector_state: DetectorState | None = None
    start = time.perf_counter()
    for i, (b, r) in enumerate(zip(score_p[0].tolist(), score_p[1].tolist(), strict=True)):
        score = detector_score({"bound": _or_none(b), "response": _or_none(r)})
        detector_state = detector.step(detector_state, score)
        alarmed[i] = detector_state.alarmed
        if score is not None:
            found[i] = score
    per_step = (time.perf_counter() - start) / max(len(hits), 1)
    return Run(old, alarmed), found, per_step
