"""Risk levels (0 ok, 1 warning, 2 critical), from one window's assessment and the windows
before it. Pure.

* 0 ok: none of the below.
* 1 warning: a term's shift is significant after correcting for the number of terms tested, or
  the OOD fraction is over its calibrated threshold (so a warning fires at about the configured
  false-alarm rate on ID traffic). The answer-drift ``response`` term can raise a warning, never
  a critical on its own: it is not part of the bound.
* 2 critical: the bound is significant (and over ``alerts.bound_budget`` when that is a
  number) in at least k of the last m windows (``alerts.hysteresis = "k/m"``, this window
  included); or, when references exist, the whole bootstrap interval of EMID lies above
  ``alerts.emid_budget``.

Insufficient windows (under ``windows.min_samples``) never alert, and in the k-of-m count they
are neither significant nor quiet: they are skipped, so the last m windows are the last m
sufficient ones. Windows without calibration (no p-values) cannot count as significant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monitor.records import RiskLevel


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """``[alerts]`` as the rule needs it."""

    k: int = 2
    m: int = 3
    bound_budget: float | None = None  # None: "auto", the calibrated threshold alone decides
    emid_budget: float = 0.0

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
    recent = [w for w in previous if w.sufficient][-(policy.m - 1) :] if policy.m > 1 else []
    hits = sum(w.bound_hit(policy) for w in (*recent, current))
    critical = False
    if current.bound_hit(policy) or hits >= policy.k:
        if hits >= policy.k:
            critical = True
            reasons.append(f"bound significant in {hits} of the last {len(recent) + 1} windows")
        else:
            reasons.append("bound significant")
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


def policy_from_settings(
    hysteresis: tuple[int, int], bound_budget: float | str, emid_budget: float
) -> RiskPolicy:
    """The policy of ``[alerts]`` (``bound_budget = "auto"`` becomes None)."""
    k, m = hysteresis
    budget = None if isinstance(bound_budget, str) else float(bound_budget)
    return RiskPolicy(k=k, m=m, bound_budget=budget, emid_budget=float(emid_budget))
