"""Risk levels (0 ok, 1 warning, 2 critical), from one window's assessment and the windows
before it. Pure.

* 0 ok: none of the below.
* 1 warning: a term's shift is significant after correcting for the number of terms tested, or
  the OOD fraction is over its calibrated threshold (so a warning fires at about the configured
  false-alarm rate on ID traffic). The bound alone never warns. Under the k-of-m rule the
  answer-drift ``response`` term can raise a warning, never a critical on its own (it is not
  part of the bound); the detector's score reads it (:mod:`monitor.detection.detector` says
  why).
* 2 critical, by default (``alerts.hysteresis = ""``): the stream's sequential detector
  (:mod:`monitor.detection.detector`) is alarmed after this window: its statistic passed the
  threshold and has not yet fallen to the clear level (and, when ``alerts.bound_budget`` is a
  number, the window's bound is over it). With ``alerts.hysteresis = "k/m"`` instead: the
  bound is significant (and over the budget when that is a number) in at least k of the last m
  windows, this one included. In either mode also when, with references, the whole bootstrap
  interval of EMID lies above ``alerts.emid_budget``.

Insufficient windows (under ``windows.min_samples``) never alert; they are neither significant
nor quiet: the k-of-m count skips them (the last m windows are the last m sufficient ones) and
the detector carries its state through them unchanged. Windows without calibration (no
p-values) cannot count as significant and have no detector score.

:func:`describe_policy` puts the rule in effect into words for ``windows explain``; it sits
here, next to :func:`assess_risk`, so that the two are changed together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monitor.records import DetectorReading, RiskLevel


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """``[alerts]`` as the rule needs it."""

    k: int = 2
    m: int = 3
    bound_budget: float | None = None  # None: "auto", the calibrated threshold alone decides
    emid_budget: float = 0.0
    detector: bool = False  # True: the sequential detector decides criticals (k, m unused)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.m:
            raise ValueError(f"hysteresis needs 1 <= k <= m, got {self.k}/{self.m}")


@dataclass(frozen=True, slots=True)
class WindowSignals:
    """What one window contributes to the rule."""

    sufficient: bool
    warning: bool = False  # a significant term (corrected) or OOD over threshold
    bound_significant: bool | None = None  # None: not calibrated, or no bound
    bound: float | None = None  # scale-adjusted bound value
    emid_interval: tuple[float, float] | None = None
    reasons: tuple[str, ...] = ()  # what made ``warning`` true, for the transition log
    detector: DetectorReading | None = None  # the stream's detector after this window

    def bound_hit(self, policy: RiskPolicy) -> bool:
        """The bound counts towards a critical in this window."""
        if not self.sufficient or not self.bound_significant:
            return False
        if policy.bound_budget is None:
            return True
        return self.bound is not None and self.bound > policy.bound_budget


@dataclass(frozen=True, slots=True)
class RiskDecision:
    level: RiskLevel
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def assess_risk(
    current: WindowSignals, previous: Sequence[WindowSignals], policy: RiskPolicy
) -> RiskDecision:
    """The risk level of ``current``, given the stream's earlier windows (oldest first)."""
    if not current.sufficient:
        return RiskDecision(RiskLevel.OK, ("insufficient window",))
    reasons: list[str] = []
    if policy.detector:
        critical = _detector_critical(current, policy, reasons)
    else:
        critical = _k_of_m_critical(current, previous, policy, reasons)
    interval = current.emid_interval
    if interval is not None and interval[0] > policy.emid_budget:
        critical = True
        reasons.append(
            f"EMID interval [{interval[0]:.4g}, {interval[1]:.4g}] above budget "
            f"{policy.emid_budget:g}"
        )
    reasons.extend(current.reasons)
    if critical:
        return RiskDecision(RiskLevel.CRITICAL, tuple(reasons))
    if current.warning:
        return RiskDecision(RiskLevel.WARNING, tuple(reasons))
    return RiskDecision(RiskLevel.OK, ())


def _k_of_m_critical(
    current: WindowSignals,
    previous: Sequence[WindowSignals],
    policy: RiskPolicy,
    reasons: list[str],
) -> bool:
    recent = [w for w in previous if w.sufficient][-(policy.m - 1) :] if policy.m > 1 else []
    hits = sum(w.bound_hit(policy) for w in (*recent, current))
    if hits >= policy.k:
        reasons.append(f"bound significant in {hits} of the last {len(recent) + 1} windows")
        return True
    if current.bound_hit(policy):
        reasons.append("bound significant")
    return False


def _detector_critical(current: WindowSignals, policy: RiskPolicy, reasons: list[str]) -> bool:
    reading = current.detector
    if reading is None or not reading.alarmed:
        return False
    if policy.bound_budget is not None and not (
        current.bound is not None and current.bound > policy.bound_budget
    ):
        bound = "none" if current.bound is None else f"{current.bound:.4g}"
        reasons.append(
            f"detector alarmed ({reading.statistic:.3g}), but the bound {bound} is within "
            f"budget {policy.bound_budget:g}"
        )
        return False
    if reading.statistic > reading.threshold:
        reasons.append(f"detector {reading.statistic:.3g} > threshold {reading.threshold:.3g}")
    else:  # still alarmed: the statistic has not fallen to the clear level yet
        reasons.append(
            f"detector {reading.statistic:.3g} still alarmed (paged over threshold "
            f"{reading.threshold:.3g}; clears at the clear level)"
        )
    return True


@dataclass(frozen=True, slots=True)
class PolicyDescription:
    """What raises each level under one policy, in words, for ``windows explain``.

    Written next to :func:`assess_risk` from the same policy fields, so that the explanation
    a user reads is the rule in effect (tests hold the two together)."""

    critical: tuple[str, ...]  # any one of these makes a window critical
    warning: tuple[str, ...]  # any one of these makes a non-critical window a warning
    never: tuple[str, ...]  # what does not raise a level on its own

    def lines(self) -> tuple[str, ...]:
        return (
            "critical when " + "; or ".join(self.critical),
            "warning when " + "; or ".join(self.warning),
            *self.never,
        )


def describe_policy(policy: RiskPolicy, warning_terms: Sequence[str]) -> PolicyDescription:
    """The rule :func:`assess_risk` applies under ``policy``; ``warning_terms``: the terms
    whose significance can raise the warning (those the window's assessment tests)."""
    budget = (
        ""
        if policy.bound_budget is None
        else f", with the bound over its budget {policy.bound_budget:g}"
    )
    if policy.detector:
        critical = [
            "the drift detector, on the bound's and the response term's p-values, is alarmed "
            f"(its statistic passed the threshold and has not fallen to the clear level since)"
            f"{budget}"
        ]
    else:
        critical = [
            f"the bound is significant{budget} in at least {policy.k} of the last "
            f"{policy.m} sufficient windows, this one included"
        ]
    critical.append(
        "with references, the whole EMID bootstrap interval lies above the EMID budget "
        f"{policy.emid_budget:g}"
    )
    warning = (
        "a term (" + ", ".join(warning_terms) + ") is significant in the joint test of the "
        "terms the window tests",
        "the OOD fraction is over its threshold",
    )
    never = ["the bound alone never warns: it only counts towards a critical"]
    if not policy.detector and "response" in warning_terms:
        never.append(
            "the response term warns but never makes a window critical: it is not part of the bound"
        )
    never += [
        "insufficient windows (under windows.min_samples) never alert",
        "windows without calibration have no p-values: nothing in them is significant",
    ]
    return PolicyDescription(tuple(critical), warning, tuple(never))


def policy_from_settings(
    hysteresis: tuple[int, int] | None, bound_budget: float | str, emid_budget: float
) -> RiskPolicy:
    """The policy of ``[alerts]`` (``bound_budget = "auto"`` becomes None; ``hysteresis``
    None: the sequential detector decides criticals)."""
    budget = None if isinstance(bound_budget, str) else float(bound_budget)
    if hysteresis is None:
        return RiskPolicy(bound_budget=budget, emid_budget=float(emid_budget), detector=True)
    k, m = hysteresis
    return RiskPolicy(k=k, m=m, bound_budget=budget, emid_budget=float(emid_budget))
