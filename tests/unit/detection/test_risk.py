"""The risk rule of DESIGN section 4: warnings, k-of-m hysteresis, budgets, insufficient
windows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from monitor.detection.risk import RiskPolicy, WindowSignals, assess_risk, policy_from_settings
from monitor.records import DetectorReading, RiskLevel

QUIET = WindowSignals(sufficient=True, bound_significant=False, bound=0.5)
HIT = WindowSignals(sufficient=True, warning=True, bound_significant=True, bound=0.9)
THIN = WindowSignals(sufficient=False)
POLICY = RiskPolicy(k=2, m=3)


def levels(windows: list[WindowSignals], policy: RiskPolicy = POLICY) -> list[int]:
    return [int(assess_risk(w, windows[:i], policy).level) for i, w in enumerate(windows)]


def test_quiet_windows_are_ok() -> None:
    assert levels([QUIET] * 5) == [0] * 5


def test_first_shifted_window_warns_and_the_kth_is_critical() -> None:
    assert levels([QUIET, QUIET, HIT, HIT, HIT]) == [0, 0, 1, 2, 2]
    decision = assess_risk(HIT, [QUIET, HIT], POLICY)
    assert decision.level is RiskLevel.CRITICAL and "2 of the last 3" in decision.reason


def test_one_noisy_window_is_at_most_a_warning() -> None:
    assert levels([QUIET, HIT, QUIET, QUIET, HIT, QUIET]) == [0, 1, 0, 0, 1, 0]


def test_k_of_m_counts_only_the_last_m_windows() -> None:
    # hits two windows apart with a quiet one between: 2 of the last 3 -> critical
    assert levels([HIT, QUIET, HIT]) == [1, 0, 2]
    # two quiet windows between: never 2 in 3
    assert levels([HIT, QUIET, QUIET, HIT]) == [1, 0, 0, 1]
    # the critical holds while k of the last m still hit, then clears
    assert levels([HIT, HIT, QUIET, QUIET]) == [1, 2, 2, 0]


def test_insufficient_windows_are_neither_significant_nor_quiet() -> None:
    # they never alert ...
    assert assess_risk(THIN, [HIT, HIT], POLICY).level is RiskLevel.OK
    # ... and are skipped in the count: HIT, THIN, THIN, HIT is two hits in a row
    assert levels([HIT, THIN, THIN, HIT]) == [1, 0, 0, 2]


def test_a_warning_term_alone_is_a_warning_not_a_critical() -> None:
    response_only = WindowSignals(
        sufficient=True, warning=True, bound_significant=False, reasons=("response p=0.001",)
    )
    assert levels([response_only] * 4) == [1, 1, 1, 1]
    assert "response" in assess_risk(response_only, [], POLICY).reason


def test_uncalibrated_windows_never_count() -> None:
    raw = WindowSignals(sufficient=True, bound_significant=None, bound=5.0)
    assert levels([raw] * 4) == [0] * 4


def test_bound_budget_must_also_be_exceeded_when_a_number() -> None:
    policy = RiskPolicy(k=2, m=3, bound_budget=1.0)
    assert levels([HIT, HIT, HIT], policy) == [1, 1, 1]  # warnings from the term, no critical
    over = WindowSignals(sufficient=True, bound_significant=True, bound=1.2)
    assert levels([over, over], policy) == [0, 2]  # the bound alone never warns


def test_emid_interval_above_budget_is_critical_at_once() -> None:
    policy = RiskPolicy(k=2, m=3, emid_budget=0.05)
    above = WindowSignals(sufficient=True, bound_significant=False, emid_interval=(0.06, 0.2))
    straddling = WindowSignals(sufficient=True, bound_significant=False, emid_interval=(-0.01, 0.2))
    assert assess_risk(above, [], policy).level is RiskLevel.CRITICAL
    assert assess_risk(straddling, [], policy).level is RiskLevel.OK


def test_policy_from_settings_and_validation() -> None:
    assert policy_from_settings((2, 3), "auto", 0.0) == RiskPolicy(2, 3, None, 0.0)
    assert policy_from_settings((1, 1), 0.8, 0.1).bound_budget == 0.8
    assert levels([HIT], RiskPolicy(k=1, m=1)) == [2]
    with pytest.raises(ValueError, match="k <= m"):
        RiskPolicy(k=3, m=2)


def reference_levels(windows: list[WindowSignals], k: int, m: int) -> list[int]:
    """The rule of the module docstring written out plainly (budget "auto", no EMID): level 2
    when at least k of the last m sufficient windows, this one included, have a significant
    bound; else 1 on a warning; insufficient windows are 0 and skipped in the count."""
    out = []
    for i, window in enumerate(windows):
        if not window.sufficient:
            out.append(0)
            continue
        last_m = [w for w in windows[: i + 1] if w.sufficient][-m:]
        if sum(w.bound_significant is True for w in last_m) >= k:
            out.append(2)
        else:
            out.append(1 if window.warning else 0)
    return out


@pytest.mark.parametrize(("k", "m"), [(1, 1), (1, 2), (2, 2), (1, 3), (2, 3), (3, 3), (2, 4)])
def test_k_of_m_matches_the_rule_on_every_short_history(k: int, m: int) -> None:
    """Every sequence of 6 windows (quiet, hit, insufficient): critical at exactly k hits in
    the last m, never at k - 1, and the window count is exactly m (not m - 1 or m + 1)."""
    policy = RiskPolicy(k=k, m=m)
    kinds = (QUIET, HIT, THIN)
    for code in range(len(kinds) ** 6):
        windows = [kinds[code // len(kinds) ** i % len(kinds)] for i in range(6)]
        assert levels(windows, policy) == reference_levels(windows, k, m), (k, m, windows)


def test_a_bound_equal_to_its_budget_is_not_over_it() -> None:
    """``bound_budget``: the bound must exceed it; equal is not over."""
    policy = RiskPolicy(k=1, m=1, bound_budget=0.8)
    at = WindowSignals(sufficient=True, bound_significant=True, bound=0.8)
    above = WindowSignals(sufficient=True, bound_significant=True, bound=0.8000001)
    assert levels([at, above, at], policy) == [0, 2, 0]


def test_an_emid_interval_starting_at_the_budget_is_not_above_it() -> None:
    """The whole interval must lie above ``emid_budget``: a lower end equal to it does not."""
    policy = RiskPolicy(k=2, m=3, emid_budget=0.05)
    at = WindowSignals(sufficient=True, bound_significant=False, emid_interval=(0.05, 0.2))
    above = WindowSignals(sufficient=True, bound_significant=False, emid_interval=(0.0500001, 0.2))
    assert assess_risk(at, [], policy).level is RiskLevel.OK
    assert assess_risk(above, [], policy).level is RiskLevel.CRITICAL


DETECTOR = RiskPolicy(detector=True)


def _reading(statistic: float, alarmed: bool, threshold: float = 6.0) -> DetectorReading:
    return DetectorReading(score=1.0, statistic=statistic, threshold=threshold, alarmed=alarmed)


def test_detector_mode_pages_exactly_while_the_detector_is_alarmed() -> None:
    over = replace(QUIET, detector=_reading(7.2, True, 6.1))
    held = replace(QUIET, detector=_reading(4.0, True))  # under the threshold, not yet cleared
    quiet = replace(HIT, detector=_reading(5.9, False))  # bound hits, detector not alarmed
    decision = assess_risk(over, [], DETECTOR)
    assert (
        decision.level is RiskLevel.CRITICAL and "detector 7.2 > threshold 6.1" in decision.reason
    )
    assert assess_risk(held, [], DETECTOR).level is RiskLevel.CRITICAL
    assert "still alarmed" in assess_risk(held, [], DETECTOR).reason
    # Hits in every window never page by themselves: the detector alone decides criticals.
    assert levels([quiet] * 5, DETECTOR) == [1] * 5
    assert levels([HIT] * 5, DETECTOR) == [1] * 5  # no detector (no calibration): warnings only
    assert assess_risk(replace(THIN, detector=_reading(9.0, True)), [], DETECTOR).level == 0


def test_detector_mode_keeps_the_bound_and_emid_budgets() -> None:
    budgeted = RiskPolicy(bound_budget=1.0, detector=True)
    low = WindowSignals(sufficient=True, bound=0.9, detector=_reading(8.0, True))
    high = replace(low, bound=1.2)
    assert assess_risk(low, [], budgeted).level is RiskLevel.OK
    warned = assess_risk(replace(low, warning=True), [], budgeted)
    assert warned.level is RiskLevel.WARNING and "within budget 1" in warned.reason
    assert assess_risk(high, [], budgeted).level is RiskLevel.CRITICAL
    emid = RiskPolicy(emid_budget=0.05, detector=True)
    above = WindowSignals(sufficient=True, emid_interval=(0.06, 0.2), detector=_reading(0.0, False))
    assert assess_risk(above, [], emid).level is RiskLevel.CRITICAL


def test_policy_from_settings_without_hysteresis_is_the_detector() -> None:
    policy = policy_from_settings(None, 0.8, 0.1)
    assert policy.detector and policy.bound_budget == 0.8 and policy.emid_budget == 0.1
    assert not policy_from_settings((2, 3), "auto", 0.0).detector
