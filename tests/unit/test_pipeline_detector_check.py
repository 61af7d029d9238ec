"""serve and backfill refuse a store whose drift detector was calibrated for another
false_page_interval or window size, where the detector decides criticals."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from monitor.config import Settings
from monitor.errors import CalibrationError
from monitor.pipeline import check_detector_settings

DAY = 86_400.0


def _store(interval_s: float = 90 * DAY, window_s: float = 300.0) -> SimpleNamespace:
    detector = {
        "threshold": 6.0,
        "clear_level": 3.0,
        "cap": 12.0,
        "drift": 1.0,
        "false_page_interval_seconds": interval_s,
        "window_seconds": window_s,
    }
    return SimpleNamespace(calibration={"trials": 1000, "detector": detector})


def test_a_matching_detector_passes_and_a_mismatch_is_refused() -> None:
    settings = Settings()
    assert settings.alerts.false_page_interval == timedelta(days=90)
    check_detector_settings(settings, _store(), "default")
    with pytest.raises(CalibrationError, match="calibrate --reference default"):
        check_detector_settings(settings, _store(interval_s=30 * DAY), "default")
    with pytest.raises(CalibrationError):
        check_detector_settings(settings, _store(window_s=600.0), "default")
    longer = Settings(windows={"size": "10m"}, alerts={"false_page_interval": "30d"})
    check_detector_settings(longer, _store(interval_s=30 * DAY, window_s=600.0), "default")


def test_k_of_m_mode_and_uncalibrated_stores_are_not_checked() -> None:
    check_detector_settings(Settings(alerts={"hysteresis": "2/3"}), _store(window_s=1.0), "s")
    check_detector_settings(Settings(), SimpleNamespace(calibration=None), "s")
    with pytest.raises(CalibrationError, match="no drift detector"):
        check_detector_settings(Settings(), SimpleNamespace(calibration={"trials": 9}), "s")
