"""``windows explain`` says what the risk rule does: its reasons are the rule's own, and its
description of the rule in effect agrees with :func:`assess_risk` on the windows that have
been explained wrongly before (the bound alone, the answer term alone)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import pytest

from monitor.commands.explain import _print_risk, decision_explanation, rule_explanation
from monitor.detection.risk import (
    RiskPolicy,
    WindowSignals,
    assess_risk,
    describe_policy,
)
from monitor.detection.window_stats import TESTED_TERMS
from monitor.records import DetectorReading, RiskLevel

K_OF_M = RiskPolicy(k=2, m=3)
DETECTOR = RiskPolicy(detector=True)
POLICIES = [K_OF_M, RiskPolicy(k=2, m=3, bound_budget=0.5), DETECTOR]
QUIET_DETECTOR = DetectorReading(score=0.1, statistic=0.0, threshold=8.0, alarmed=False)
# Significant bound, nothing else: no term, no OOD, the detector quiet.
BOUND_ONLY = WindowSignals(
    sufficient=True, bound_significant=True, bound=0.9, detector=QUIET_DETECTOR
)
RESPONSE_ONLY = WindowSignals(
    sufficient=True,
    warning=True,
    bound_significant=False,
    bound=0.1,
    reasons=("response p=0.001",),
    detector=QUIET_DETECTOR,
)


def printed(policy: RiskPolicy, current: WindowSignals, previous: list[WindowSignals]) -> str:
    decision = assess_risk(current, previous, policy)
    risk = {
        "stored_risk_level": int(decision.level),
        **rule_explanation(policy),
        **decision_explanation(decision),
        "bound_significant": current.bound_significant,
        "history": [],
        "detector": None,
    }
    return "\n".join(_lines(risk))


def _lines(risk: dict[str, Any]) -> list[str]:
    out = io.StringIO()
    with redirect_stdout(out):
        _print_risk(risk)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("policy", POLICIES)
def test_the_bound_alone_neither_warns_nor_is_said_to(policy: RiskPolicy) -> None:
    decision = assess_risk(BOUND_ONLY, [], policy)
    assert decision.level is RiskLevel.OK
    description = describe_policy(policy, TESTED_TERMS)
    assert not any("bound" in condition for condition in description.warning)
    text = printed(policy, BOUND_ONLY, [])
    warning_line = next(line for line in text.splitlines() if "warning when" in line)
    assert "bound" not in warning_line
    assert "the bound alone never warns" in text
    assert "reasons the rule gave: none" in text


def test_k_bound_hits_are_critical_as_described() -> None:
    decision = assess_risk(BOUND_ONLY, [BOUND_ONLY], K_OF_M)
    assert decision.level is RiskLevel.CRITICAL
    (critical, _emid) = describe_policy(K_OF_M, TESTED_TERMS).critical
    assert "bound is significant in at least 2 of the last 3" in critical


@pytest.mark.parametrize("policy", POLICIES)
def test_the_reasons_printed_are_the_rules(policy: RiskPolicy) -> None:
    alarmed = DetectorReading(score=6.0, statistic=9.0, threshold=8.0, alarmed=True)
    windows = [
        (RESPONSE_ONLY, []),
        (BOUND_ONLY, [BOUND_ONLY]),
        (WindowSignals(sufficient=True, bound_significant=True, bound=0.9, detector=alarmed), []),
        (WindowSignals(sufficient=False), []),
    ]
    for current, previous in windows:
        decision = assess_risk(current, previous, policy)
        lines = _lines(
            {
                "stored_risk_level": 0,
                **rule_explanation(policy),
                **decision_explanation(decision),
                "history": [],
                "detector": None,
            }
        )
        shown = [line.removeprefix("  - ") for line in lines if line.startswith("  - ")]
        assert shown == list(decision.reasons)
        assert f"recomputed now {int(decision.level)}" in lines[1]


def test_the_answer_term_warns_and_is_never_critical_under_k_of_m() -> None:
    assert [
        int(assess_risk(RESPONSE_ONLY, [RESPONSE_ONLY] * i, K_OF_M).level) for i in range(4)
    ] == [1] * 4
    description = describe_policy(K_OF_M, TESTED_TERMS)
    assert "response" in description.warning[0]
    assert any(
        "response term warns but never makes a window critical" in n for n in description.never
    )
    # Under the detector the answer term reads into the score, which can page.
    detector = describe_policy(DETECTOR, TESTED_TERMS)
    assert "response" in detector.critical[0]
    assert not any("response" in n for n in detector.never)


def test_the_description_follows_the_policy() -> None:
    assert (
        "at least 1 of the last 4"
        in describe_policy(RiskPolicy(k=1, m=4), TESTED_TERMS).critical[0]
    )
    budgeted = describe_policy(RiskPolicy(detector=True, bound_budget=0.25), TESTED_TERMS)
    assert "over its budget 0.25" in budgeted.critical[0]
    # A detector alarm with the bound within budget is not critical, as described.
    alarmed = DetectorReading(score=6.0, statistic=9.0, threshold=8.0, alarmed=True)
    within = WindowSignals(sufficient=True, bound_significant=True, bound=0.1, detector=alarmed)
    assert (
        assess_risk(within, [], RiskPolicy(detector=True, bound_budget=0.25)).level is RiskLevel.OK
    )
    assert (
        "EMID budget 0.05"
        in describe_policy(RiskPolicy(emid_budget=0.05), TESTED_TERMS).critical[-1]
    )
