"""Plain records: window keys and the stable JSON shape of window results."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from monitor.records import (
    WINDOW_TERMS,
    DetectorReading,
    RiskLevel,
    TermValues,
    WindowKey,
    WindowResult,
)

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_window_key_rejects_empty_window() -> None:
    with pytest.raises(ValueError, match="not after its start"):
        WindowKey("default", START, START)


def test_window_result_json_shape_has_the_contract_names() -> None:
    result = WindowResult(
        key=WindowKey("chat", START, START + timedelta(minutes=5)),
        n=120,
        n_images=0,
        n_references=0,
        status="ok",
        risk_level=RiskLevel.WARNING,
        estimator_version="club-abc",
        computed_at=START + timedelta(minutes=6),
        jsd=TermValues(text=0.2, output_id=0.5),
        bound_scale_adjusted=1.29,
    )
    data = result.to_dict()
    assert set(data) >= {
        "id",
        "stream",
        "start",
        "end",
        "n",
        "n_images",
        "n_references",
        "status",
        "risk_level",
        "jsd",
        "p_values",
        "thresholds",
        "upper_bound",
        "emi",
        "emid",
        "emid_interval",
        "ood_fraction",
        "estimator_version",
        "computed_at",
    }
    assert data["start"] == "2026-11-27T12:00:00Z" and data["end"] == "2026-11-27T12:05:00Z"
    assert (
        tuple(data["jsd"])
        == WINDOW_TERMS
        == (
            "visual",
            "text",
            "output_id",
            "output_live",
            "response",
        )
    )
    assert tuple(data["p_values"]) == tuple(data["thresholds"]) == WINDOW_TERMS
    assert data["jsd"]["visual"] is None and data["jsd"]["text"] == 0.2
    assert data["upper_bound"] == {
        "scale_adjusted": 1.29,
        "entropy_scaled": None,
        "complete": False,
        "p_value": None,
        "threshold": None,
        "significant": None,
    }
    assert data["emi"] == {"live": None, "id": None} and data["emid"] is None
    assert data["risk_level"] == 1


def test_window_json_carries_the_detector_or_null() -> None:
    key = WindowKey("chat", START, START + timedelta(minutes=5))
    plain = WindowResult(
        key=key,
        n=120,
        n_images=0,
        n_references=0,
        status="ok",
        risk_level=RiskLevel.OK,
        estimator_version="v",
        computed_at=START,
    )
    assert plain.to_dict()["detector"] is None
    reading = DetectorReading(score=2.5, statistic=7.25, threshold=6.1, alarmed=True)
    data = replace(plain, detector=reading, risk_level=RiskLevel.CRITICAL).to_dict()
    assert data["detector"] == {"score": 2.5, "statistic": 7.25, "threshold": 6.1, "alarmed": True}
    carried = DetectorReading(score=None, statistic=7.25, threshold=6.1, alarmed=True)
    assert replace(plain, detector=carried).to_dict()["detector"]["score"] is None
