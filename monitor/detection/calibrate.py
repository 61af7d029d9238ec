"""Null calibration of a reference store: what pure ID windows of each size look like.

Thin glue: read the store's embeddings, run :func:`~monitor.detection.window_stats.
calibrate_arrays` (the pure part: comparison / pool split, nulls per term and count, the
rules for sizes and trials), record the store's OOD flag rate, and write ``calibration.json``
into the store. Live windows read these nulls through :func:`~monitor.detection.assess.
assess_window`, computing their values with the same :class:`WindowStatistics`.

Two methods: ``pseudo-windows`` (nulls drawn once, here, from a pool of ID records) and
``permutation`` (nulls drawn per window from the window and the comparison records:
:mod:`monitor.detection.permutation`; for stores too small for the first). ``auto`` picks
pseudo-windows when explicit window sizes are asked for or the smallest default size fits the
pool, else permutation.

The window-vs-comparison JSDs use the ``balanced`` mode by default (why: the docstring of
:mod:`monitor.estimators.rjsd`); the mode is recorded so live windows use the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from monitor.detection.assess import bound_null, null_for
from monitor.detection.detector import calibrate_detector
from monitor.detection.permutation import (
    CALIBRATION_METHODS,
    PERMUTATION,
    PSEUDO_WINDOWS,
    permutation_calibration,
)
from monitor.detection.window_stats import (
    DEFAULT_WINDOW_SIZES,
    WARNING_TESTS,
    IDArrays,
    calibrate_arrays,
    comparison_size,
    store_arrays,
)
from monitor.errors import CalibrationError
from monitor.estimators.calibration import MAX_POOL_FRACTION, minimum_trials
from monitor.estimators.rjsd import DEFAULT_JSD_MODE, JSDMode
from monitor.reference.store import CALIBRATION, ReferenceStore, write_store_json

__all__ = ["DEFAULT_WINDOW_SIZES", "bound_null", "calibrate_store", "null_for"]


def calibrate_store(
    store: ReferenceStore,
    *,
    window_sizes: Sequence[int] | None = None,
    trials: int | None = None,
    comparison_fraction: float = 0.5,
    seed: int = 0,
    mode: JSDMode = DEFAULT_JSD_MODE,
    false_alarm_rate: float = 0.01,
    hysteresis: tuple[int, int] = (2, 3),
    max_pool_fraction: float = MAX_POOL_FRACTION,
    method: str = "auto",
    window_fraction: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    window: timedelta | None = None,
    false_page_interval: timedelta | None = None,
) -> dict[str, Any]:
    """Calibrate ``store`` and write its ``calibration.json``; see ``calibrate_arrays`` and
    ``permutation_calibration`` (``method``: ``auto``, ``pseudo-windows``, ``permutation``;
    ``window_fraction``: the permutation test's ``max_window_fraction``, None its default).
    With ``window`` and ``false_page_interval`` (``[windows] size`` and ``[alerts]
    false_page_interval``) the drift detector is calibrated too (:func:`detector_calibration`).
    """
    arrays = store_arrays(store)
    chosen = choose_method(method, arrays, window_sizes, comparison_fraction, max_pool_fraction)
    if chosen == PERMUTATION:
        if window_sizes is not None:
            raise CalibrationError(
                "a permutation calibration tests every window size; do not pass window sizes"
            )
        data = permutation_calibration(
            arrays,
            trials=trials,
            seed=seed,
            mode=mode,
            false_alarm_rate=false_alarm_rate,
            hysteresis=hysteresis,
            max_window_fraction=max_pool_fraction if window_fraction is None else window_fraction,
        )
    else:
        if window_fraction is not None:
            raise CalibrationError(
                "the window fraction is a setting of the permutation method; pseudo-windows "
                "are sized by --window-sizes"
            )
        data = calibrate_arrays(
            arrays,
            window_sizes=window_sizes,
            trials=trials,
            comparison_fraction=comparison_fraction,
            seed=seed,
            mode=mode,
            false_alarm_rate=false_alarm_rate,
            hysteresis=hysteresis,
            max_pool_fraction=max_pool_fraction,
            progress=progress,
        )
        data["method"] = PSEUDO_WINDOWS
    tpr = store.ood.get("tpr")
    data["ood_flag_rate"] = 1.0 - float(tpr) if tpr is not None else None
    if window is not None and false_page_interval is not None:
        data["detector"] = detector_calibration(
            data, window=window, false_page_interval=false_page_interval, seed=seed
        )
    data["created_at"] = datetime.now(UTC).isoformat()
    write_store_json(store, CALIBRATION, data, calibrated=True)
    return data


def detector_calibration(
    calibration: dict[str, Any], *, window: timedelta, false_page_interval: timedelta, seed: int
) -> dict[str, Any]:
    """The detector for a calibration: simulated on the bound's null at each calibrated window
    size (every term the store has, at its largest count up to the size), keeping the largest
    threshold (the quietest; a window of another size reads an interpolated null of the same
    shape). A permutation calibration simulates its discrete p-values."""
    if calibration.get("method") == PERMUTATION:
        return calibrate_detector(
            None,
            window=window,
            false_page_interval=false_page_interval,
            seed=seed,
            permutation_trials=int(calibration["trials"]),
        )
    best: dict[str, Any] | None = None
    for size in calibration["window_sizes"]:
        null = bound_null(
            calibration,
            n=size,
            n_images=_largest_count(calibration, "visual", size),
            n_references=_largest_count(calibration, "output_live", size),
        )
        if null is None:
            continue
        # The null's values in trial order are what the simulation splits; sorted is fine too.
        found = calibrate_detector(
            np.asarray(null.values),
            window=window,
            false_page_interval=false_page_interval,
            seed=seed,
        )
        found["window_records"] = size
        if best is None or found["threshold"] > best["threshold"]:
            best = found
    if best is None:
        raise CalibrationError(
            "no window size has a null of the bound: cannot calibrate the detector"
        )
    return best


def _largest_count(calibration: dict[str, Any], term: str, size: int) -> int | None:
    counts = [int(c) for c in calibration["nulls"].get(term, {}) if int(c) <= size]
    return max(counts) if counts else None


def choose_method(
    method: str,
    data: IDArrays,
    window_sizes: Sequence[int] | None,
    comparison_fraction: float,
    max_pool_fraction: float,
) -> str:
    """``method``, with ``auto`` resolved (module docstring)."""
    if method not in (*CALIBRATION_METHODS, "auto"):
        raise CalibrationError(
            f"unknown calibration method {method!r}; expected auto, "
            + ", ".join(CALIBRATION_METHODS)
        )
    if method != "auto":
        return method
    pool = data.n - comparison_size(data.n, comparison_fraction)
    fits = int(max_pool_fraction * pool) >= DEFAULT_WINDOW_SIZES[0]
    return PSEUDO_WINDOWS if window_sizes is not None or fits else PERMUTATION


def describe_calibration(calibration: dict[str, Any]) -> str:
    """One line saying how windows are tested (for the CLI)."""
    if calibration.get("method") == PERMUTATION:
        return (
            f"per-window permutation test, {calibration['trials']} permutations against "
            f"{len(calibration['comparison'])} ID records, windows tested on at most "
            f"{calibration['max_window_records']} records, {calibration['jsd_mode']} JSD"
        )
    return (
        f"pseudo-window nulls for window sizes {calibration['window_sizes']}, "
        f"{calibration['trials']} trials each, {calibration['jsd_mode']} JSD"
    )


def describe_detector(calibration: dict[str, Any]) -> list[str]:
    """Lines saying what the drift detector achieves (for the CLI); none without one."""
    found = calibration.get("detector")
    if not found:
        return []
    day = 86_400.0
    low, high = found["interval_ci_seconds"]
    delays = ", ".join(
        f"+{shift}: {'never' if windows is None else f'{windows:g}'}"
        for shift, windows in found["delay_windows"].items()
    )
    return [
        f"drift detector: pages when its statistic passes {found['threshold']:.3g}, clears at "
        f"{found['clear_level']:.3g} or below",
        f"  false pages on {found['simulated_windows']:,} simulated ID windows of "
        f"{found['window_seconds']:g} s: one per {found['achieved_interval_seconds'] / day:.1f} "
        f"days (95% interval {low / day:.1f} to {high / day:.1f}; asked: one per "
        f"{found['false_page_interval_seconds'] / day:g} days)",
        f"  median windows until a page, by shift of the window score (in standard deviations): "
        f"{delays}",
    ]


def check_supports(
    calibration: dict[str, Any], false_alarm_rate: float, hysteresis: tuple[int, int], store: str
) -> None:
    """Refuse a calibration with too few trials for ``false_alarm_rate`` (say, one lowered in
    the config after calibrating): every window would fail on it, so ``serve`` checks first."""
    needed = minimum_trials(false_alarm_rate, WARNING_TESTS, hysteresis)
    if int(calibration["trials"]) < needed:
        raise CalibrationError(
            f"reference store {store!r} was calibrated with {calibration['trials']} trials; "
            f"[alerts] false_alarm_rate = {false_alarm_rate} needs at least {needed}: rerun "
            f"`mllm-monitor calibrate --reference {store}`"
        )
