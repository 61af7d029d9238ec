"""The two paging rules run over sequences of windows, for the pager benchmark.

A :class:`Judge` turns a window's statistics (the values of
:class:`~monitor.detection.WindowStatistics`) into what each rule reads: the bound's p-value
(BEFORE: critical when p < alpha in k of the last m windows, :func:`monitor.detection.risk.
assess_risk`), the detector's score z of the bound's tail p-value (AFTER:
:class:`~monitor.detection.detector.Detector`), and the warning. It reads the very nulls
:func:`~monitor.detection.assess.assess_window` reads (``null_for`` / ``bound_null``), once for
the window's counts, and computes p-values for many windows at a time; :meth:`Judge.check`
compares it with ``assess_window`` itself window by window (which refits the bound's tail per
call, too slow for 100,000 windows).
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
from scipy import stats

from monitor.detection.assess import assess_window, bound_null, null_for
from monitor.detection.detector import Detector, DetectorState, window_score
from monitor.detection.risk import RiskPolicy, WindowSignals, assess_risk
from monitor.detection.window_stats import TESTED_TERMS
from monitor.estimators.calibration import NullDistribution
from monitor.estimators.tail import TailNull
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
        self.tail = TailNull(bound.values)

    def bound_p_values(self, bounds: Floats) -> Floats:
        return _p_values(self.bound, bounds)

    def tail_p_values(self, bounds: Floats) -> Floats:
        """The bound's tail p-values (what the detector's score reads)."""
        return self.tail.p_values(bounds)

    def warnings(self, values: Sequence[Values]) -> Bools:
        """The warning of each window (Bonferroni over the terms it has; no OOD fraction)."""
        terms = [t for t in self.term_nulls if all(v.get(t) is not None for v in values)]
        level = self.alpha / len(terms)
        hit = np.zeros(len(values), dtype=bool)
        for term in terms:
            observed = np.array([v[term] for v in values], dtype=np.float64)
            hit |= _p_values(self.term_nulls[term], observed) < level
        return hit

    def check(self, values: Sequence[Values]) -> int:
        """Windows on which this judge and ``assess_window`` agree (the bound's p-value and tail
        p-value, the warning); raises on the first disagreement."""
        bounds = np.array([v["bound_scale_adjusted"] for v in values], dtype=np.float64)
        p, tail_p = self.bound_p_values(bounds), self.tail_p_values(bounds)
        warnings = self.warnings(values)
        for i, window in enumerate(values):
            found = assess_window(
                self.calibration,
                window,
                n=self.counts.n,
                n_images=self.counts.n_images,
                n_references=self.counts.n_references,
                ood_fraction=None,
                alpha=self.alpha,
            )
            assert found.p_values["bound"] == p[i], (found.p_values["bound"], p[i])
            found_tail = found.bound_tail_p_value
            assert found_tail is not None and math.isclose(found_tail, tail_p[i], rel_tol=1e-12)
            assert found.warning == warnings[i], (found.warning, warnings[i])
        return len(values)


def _p_values(null: NullDistribution, observed: Floats) -> Floats:
    """:meth:`NullDistribution.p_value` of many values: (1 + #{null >= x}) / (1 + B)."""
    at_least = null.trials - np.searchsorted(null.values, observed, side="left")
    out: Floats = np.asarray((1.0 + at_least) / (1.0 + null.trials), dtype=np.float64)
    return out


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
    state: RuleState, policy: RiskPolicy, detector: Detector, hit: bool, tail_p: float
) -> tuple[bool, bool]:
    """One window through both rules: (the old rule is critical, the detector is alarmed)."""
    signals = WindowSignals(sufficient=True, bound_significant=hit)
    level = assess_risk(signals, list(state.recent), policy).level
    if policy.m > 1:
        state.recent.append(signals)
    state.detector = detector.step(state.detector, window_score(tail_p))
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
    hits: Bools, tail_p: Floats, policy: RiskPolicy, detector: Detector
) -> tuple[Run, float]:
    """Both rules over a stream of windows, and the detector's seconds per window (the score
    and the step)."""
    state = RuleState.fresh(policy)
    old = np.zeros(len(hits), dtype=bool)
    for i, hit in enumerate(hits.tolist()):
        signals = WindowSignals(sufficient=True, bound_significant=hit)
        old[i] = assess_risk(signals, list(state.recent), policy).level == RiskLevel.CRITICAL
        state.recent.append(signals)
    alarmed = np.zeros(len(hits), dtype=bool)
    detector_state: DetectorState | None = None
    start = time.perf_counter()
    for i, p in enumerate(tail_p.tolist()):
        detector_state = detector.step(detector_state, window_score(p))
        alarmed[i] = detector_state.alarmed
    per_step = (time.perf_counter() - start) / max(len(tail_p), 1)
    return Run(old, alarmed), per_step


def poisson_interval(count: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson mean from one observed count."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if count == 0 else float(stats.chi2.ppf(tail, 2 * count) / 2.0)
    return low, float(stats.chi2.ppf(1.0 - tail, 2 * count + 2) / 2.0)


def binomial_interval(hits: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if hits == 0 else float(stats.beta.ppf(tail, hits, trials - hits + 1))
    high = 1.0 if hits == trials else float(stats.beta.ppf(1.0 - tail, hits + 1, trials - hits))
    return low, high
