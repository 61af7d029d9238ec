"""The calibration's self-check: held-out ID records read as live windows.

``calibrate`` holds a share of the pool out of the nulls (``calibration["holdout"]``). Here
those records become pseudo-streams: windows of the calibrated size, each drawn without
replacement from the held-out records (with replacement across windows), computed with the
same :class:`~monitor.detection.window_stats.WindowStatistics` and judged by the same
:func:`~monitor.detection.assess.assess_window` as live windows. What it measures, out of
sample:

* the share of windows that warn, with its exact (Clopper-Pearson) 95% interval, against the
  configured false-alarm rate; likewise the share whose bound is significant;
* the drift detector run over the windows' scores as one sequence (and cut into a few that
  each start quiet): its pages, and the false-page interval they imply (windows x window
  length / pages, with an exact Poisson interval; with no page, the interval's lower bound).

The store is *outside its bounds* when the warning rate's interval lies entirely above the
configured rate, or when the pages seen put the false-page interval's upper 95% bound below
the configured one: then the nulls do not describe the store's own ID records (too few of
them, or a pool unlike the rest), and ``serve`` says so.

The held-out records cannot be scored for OOD (the store's index holds them, so each is its
own nearest neighbour); the OOD test of a window is given Bernoulli flags at the store's flag
rate instead (1 - TPR, the rate its threshold was set for), so the warning's family of tests
is the one live windows have. A few hundred windows tell a false-alarm rate of 1% within about
a percent, and can catch a detector that pages far too often; they cannot confirm a false-page
interval of months (that is the detector calibration's simulation). Each window is drawn as a
live one would be, but windows share held-out records (a window holds at most a fifth of
them), so the intervals, which count windows as independent, are somewhat narrower than the
uncertainty about the store's rate: the check flags clear misses, not borderline ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from monitor.detection.assess import assess_window
from monitor.detection.detector import Detector, DetectorState, PageSimulation, detector_score
from monitor.detection.window_stats import IDArrays, WindowStatistics

DEFAULT_HOLDOUT_FRACTION = 0.2
SELF_CHECK_WINDOWS = 400
SELF_CHECK_SEQUENCES = 4
LEVEL = 0.95


def skipped(reason: str) -> dict[str, Any]:
    """A calibration's ``self_check`` when none was run, and why."""
    return {"ran": False, "reason": reason}


def self_check(
    data: IDArrays,
    calibration: Mapping[str, Any],
    *,
    windows: int = SELF_CHECK_WINDOWS,
    sequences: int = SELF_CHECK_SEQUENCES,
    seed: int = 0,
) -> dict[str, Any]:
    """The self-check of ``calibration`` on its held-out records of ``data`` (module
    docstring); JSON-ready, for ``calibration["self_check"]``."""
    started = time.perf_counter()
    holdout = np.asarray(calibration.get("holdout") or [], dtype=np.intp)
    size = check_window_records(calibration)
    if holdout.size < size:
        return skipped(f"{holdout.size} held-out records are too few for windows of {size} records")
    calibration = dict(calibration)
    statistics = WindowStatistics.for_calibration(data, calibration)
    alpha = float(calibration["false_alarm_rate"])
    flag_rate = calibration.get("ood_flag_rate")
    detector = Detector.from_calibration(calibration)
    rng = np.random.default_rng(seed)
    warnings = bound_significant = bound_assessed = assessed = 0
    scores: list[float | None] = []
    for _ in range(windows):
        rows = np.sort(rng.choice(holdout, size=size, replace=False))
        with_image = rows[data.has_image[rows]]
        with_reference = rows[data.has_reference[rows]]
        values = statistics(
            prompts=data.prompts[rows],
            images=data.images[with_image] if data.images is not None else None,
            responses=data.responses[rows] if data.responses is not None else None,
            reference_pairs=(
                (data.responses[with_reference], data.references[with_reference])
                if data.responses is not None and data.references is not None
                else None
            ),
        )
        flags = None if flag_rate is None else int(rng.binomial(size, float(flag_rate)))
        # Read as live windows are (assess_window fits each null's tail model once).
        assessment = assess_window(
            calibration,
            values,
            n=size,
            n_images=int(with_image.size),
            n_references=int(with_reference.size),
            ood_fraction=None if flags is None else flags / size,
            alpha=alpha,
            ood_scored=size,
        )
        if assessment.tests:
            assessed += 1
            warnings += int(assessment.warning)
        if assessment.bound_significant is not None:
            bound_assessed += 1
            bound_significant += int(assessment.bound_significant)
        scores.append(detector_score(assessment.score_p_values))
    result: dict[str, Any] = {
        "ran": True,
        "window_records": size,
        "windows": windows,
        "holdout_records": int(holdout.size),
        "seed": seed,
        "level": LEVEL,
        "false_alarm_rate": alpha,
        "warnings": _rate(warnings, assessed),
        "bound_significant": _rate(bound_significant, bound_assessed),
        "ood": None if flag_rate is None else f"simulated flags at rate {float(flag_rate):.4g}",
        "detector": _detector_check(detector, calibration, scores, sequences),
    }
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def check_window_records(calibration: Mapping[str, Any]) -> int:
    """The window size the self-check reads: the one the detector was calibrated at, else the
    smallest calibrated size."""
    found = calibration.get("detector") or {}
    if "window_records" in found:
        return int(found["window_records"])
    return min(int(s) for s in calibration["window_sizes"])


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided binomial interval of a rate."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))
    )
    return low, high


def failures(check: Mapping[str, Any]) -> list[str]:
    """Why a self-check's measurements are outside its bounds (empty: within them)."""
    if not check.get("ran"):
        return []
    out = []
    warned = check["warnings"]
    alpha = float(check["false_alarm_rate"])
    if warned["interval"] is not None and warned["interval"][0] > alpha:
        out.append(
            f"{warned['count']} of {warned['windows']} held-out ID windows warned "
            f"({_percent(warned['rate'])}, 95% interval {_percent(warned['interval'][0])} to "
            f"{_percent(warned['interval'][1])}; configured false-alarm rate {_percent(alpha)})"
        )
    found = check.get("detector") or {}
    sequence = found.get("one_sequence")
    if sequence is not None:
        high = sequence["interval_ci_seconds"][1]
        wanted = float(found["false_page_interval_seconds"])
        if high is not None and high < wanted:
            out.append(
                f"the drift detector paged {sequence['pages']} times in "
                f"{sequence['windows']} held-out ID windows (one per "
                f"{_days(sequence['interval_seconds'])}, 95% at most one per {_days(high)}; "
                f"configured: one per {_days(wanted)})"
            )
    return out


def failure_line(store: str, calibration: Mapping[str, Any] | None) -> str | None:
    """The one line ``serve`` logs for a store outside its self-check's bounds (None: within
    them, or no self-check)."""
    found = failures((calibration or {}).get("self_check") or {})
    if not found:
        return None
    return (
        f"reference store {store!r} failed its calibration self-check: {'; '.join(found)}; "
        "recalibrate with more ID records"
    )


def _detector_check(
    detector: Detector | None,
    calibration: Mapping[str, Any],
    scores: list[float | None],
    sequences: int,
) -> dict[str, Any] | None:
    if detector is None:
        return None
    found = calibration["detector"]
    window_s = float(found["window_seconds"])
    length = max(1, len(scores) // max(1, sequences))
    cut = [scores[i : i + length] for i in range(0, length * max(1, sequences), length)]
    return {
        "window_seconds": window_s,
        "false_page_interval_seconds": float(found["false_page_interval_seconds"]),
        "scored_windows": sum(score is not None for score in scores),
        "one_sequence": _pages(detector, [scores], window_s),
        "sequences": _pages(detector, [part for part in cut if part], window_s),
    }


def _pages(detector: Detector, runs: list[list[float | None]], window_s: float) -> dict[str, Any]:
    """Pages of ``detector`` over each run of scores from a quiet start (the serving path's
    :meth:`Detector.step`: a window without a score leaves the state as it was)."""
    pages = 0
    for run in runs:
        state = DetectorState()
        for score in run:
            after = detector.step(state, score)
            pages += int(after.alarmed and not state.alarmed)
            state = after
    found = PageSimulation(sum(len(run) for run in runs), pages)
    low, high = found.interval_ci_windows(LEVEL)
    return {
        "sequences": len(runs),
        "windows": found.windows,
        "pages": pages,
        "interval_seconds": None if pages == 0 else found.interval_windows() * window_s,
        "interval_ci_seconds": [low * window_s, high * window_s if math.isfinite(high) else None],
    }


def _rate(count: int, windows: int) -> dict[str, Any]:
    return {
        "count": count,
        "windows": windows,
        "rate": count / windows if windows else None,
        "interval": list(clopper_pearson(count, windows)) if windows else None,
    }


def _percent(rate: float) -> str:
    return f"{100 * rate:.2g}%"


def _days(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    days = seconds / 86_400
    return f"{days:.3g} days" if days >= 1 else f"{seconds / 3_600:.3g} hours"
