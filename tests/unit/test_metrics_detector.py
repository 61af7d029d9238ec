"""The drift detector's gauges: one series per configured stream from the start, NaN until a
window with a detector reading is published."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics, gauge_value

NAMES = ("mllm_monitor_detector_statistic", "mllm_monitor_detector_threshold")


def test_detector_gauges_exist_per_stream_at_nan_before_any_window() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, ["default", "chat"])
    for name in NAMES:
        for stream in ("default", "chat"):
            value = registry.get_sample_value(name, {"stream": stream})
            assert value is not None and math.isnan(value), (name, stream)
        assert registry.get_sample_value(name, {"stream": "_other"}) is None


def test_detector_gauges_take_a_reading_and_none_is_nan() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, ["chat"])
    metrics.detector_statistic.labels(stream="chat").set(gauge_value(3.25))
    metrics.detector_threshold.labels(stream="chat").set(gauge_value(None))
    assert registry.get_sample_value(NAMES[0], {"stream": "chat"}) == 3.25
    value = registry.get_sample_value(NAMES[1], {"stream": "chat"})
    assert value is not None and math.isnan(value)
