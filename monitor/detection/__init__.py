"""A window's statistics against its reference store, and the verdict on them.

WindowStatistics (every term of a window, live and in calibration), calibrate_store /
calibrate_arrays (the nulls of pure ID windows), assess_window (p-values, thresholds, the
warning), the risk rule, and the sequential detector.
"""

from monitor.detection.assess import WindowAssessment, assess_window, bound_null, null_for
from monitor.detection.calibrate import calibrate_store
from monitor.detection.window_stats import (
    TESTED_TERMS,
    IDArrays,
    WindowStatistics,
    calibrate_arrays,
)

__all__ = [
    "TESTED_TERMS",
    "IDArrays",
    "WindowAssessment",
    "WindowStatistics",
    "assess_window",
    "bound_null",
    "calibrate_arrays",
    "calibrate_store",
    "null_for",
]
