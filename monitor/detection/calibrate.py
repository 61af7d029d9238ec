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

from monitor.detection.assess import bound_null, bound_trial_values, null_for, term_trial_values
from monitor.detection.detector import SCORE_TERMS, calibrate_detector
from monitor.detection.permutation import (
    CALIBRATION_METHODS,
    PERMUTATION,
    PSEUDO_WINDOWS,
    permutation_calibration,
)
from monitor.detection.selfcheck import (
    DEFAULT_HOLDOUT_FRACTION,
    failures,
    self_check,
    skipped,
)
from monitor.detection.window_stats import (
    DEFAULT_WINDOW_SIZES,
    WARNING_TESTS,
    IDArrays,
    calibrate_arrays,
    comparison_size,
    store_arrays,
    store_ood_flags,
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
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
) -> dict[str, Any]:
    """Calibrate ``store`` and write its ``calibration.json``; see ``calibrate_arrays`` and
    ``permutation_calibration`` (``method``: ``auto``, ``pseudo-windows``, ``permutation``;
    ``window_fraction``: the permutation test's ``max_window_fraction``, None its default).
    With ``window`` and ``false_page_interval`` (``[windows] size`` and ``[alerts]
    false_page_interval``) the drift detector is calibrated too (:func:`detector_calibration`).
    ``holdout_fraction`` of a pseudo-window pool is held out for the self-check
    (:mod:`monitor.detection.selfcheck`) when the rest still fits the window sizes.
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
        held, no_check = holdout_plan(
            arrays, window_sizes, comparison_fraction, max_pool_fraction, holdout_fraction
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
            holdout_fraction=held,
            ood_flags=store_ood_flags(store),
        )
        data["method"] = PSEUDO_WINDOWS
    tpr = store.ood.get("tpr")
    data["ood_flag_rate"] = 1.0 - float(tpr) if tpr is not None else None
    if window is not None and false_page_interval is not None:
        data["detector"] = detector_calibration(
            data, window=window, false_page_interval=false_page_interval, seed=seed
        )
    if chosen == PERMUTATION:
        no_check = (
            "a permutation calibration draws each window's null from all ID records; none are "
            "held out to check it with"
        )
    data["self_check"] = skipped(no_check) if no_check else self_check(arrays, data, seed=seed)
    data["created_at"] = datetime.now(UTC).isoformat()
    write_store_json(store, CALIBRATION, data, calibrated=True)
    return data


def holdout_plan(
    data: IDArrays,
    window_sizes: Sequence[int] | None,
    comparison_fraction: float,
    max_pool_fraction: float,
    holdout_fraction: float,
) -> tuple[float, str | None]:
    """(the share of the pool to hold out, None; or 0 and why there is no self-check): records
    are held out only when the rest of the pool still fits the window sizes asked, or every
    default size the whole pool fits."""
    pool = data.n - comparison_size(data.n, comparison_fraction)
    held = round(holdout_fraction * pool)
    if held == 0:
        return 0.0, f"no ID records held out (holdout fraction {holdout_fraction:g})"
    limit, after = int(max_pool_fraction * pool), int(max_pool_fraction * (pool - held))
    wanted = (
        list(window_sizes)
        if window_sizes is not None
        else [s for s in DEFAULT_WINDOW_SIZES if s <= limit]
    )
    if wanted and max(wanted) <= after:
        return holdout_fraction, None
    largest = max(wanted) if wanted else DEFAULT_WINDOW_SIZES[0]
    return 0.0, (
        f"holding out {holdout_fraction:.0%} of the pool ({held} of {pool} records) would leave "
        f"pseudo-windows of at most {after} records, too few for windows of {largest}; add ID "
        "records for a self-check"
    )


def detector_calibration(
    calibration: dict[str, Any], *, window: timedelta, false_page_interval: timedelta, seed: int
) -> dict[str, Any]:
    """The detector for a calibration, simulated at each calibrated window size on the nulls
    of its score terms (:data:`~monitor.detection.detector.SCORE_TERMS`: the bound, with every
    term the store has at its largest count up to the size, and the answer term), aligned by
    trial; the largest threshold is kept (the quietest; a window of another size reads an
    interpolated null of the same shape). A permutation calibration simulates its discrete
    p-values."""
    if calibration.get("method") == PERMUTATION:
        return calibrate_detector(
            None,
            window=window,
            false_page_interval=false_page_interval,
            seed=seed,
            permutation_trials=int(calibration["trials"]),
            permutation_terms=len(SCORE_TERMS) if "response" in calibration["nulls"] else 1,
        )
    best: dict[str, Any] | None = None
    for size in calibration["window_sizes"]:
        bound = bound_trial_values(
            calibration,
            n=size,
            n_images=_largest_count(calibration, "visual", size),
            n_references=_largest_count(calibration, "output_live", size),
        )
        if bound is None:
            continue
        terms = {"bound": bound[1]}
        response = term_trial_values(calibration, "response", size)
        if response is not None:
            terms["response"] = response
        found = calibrate_detector(
            terms, window=window, false_page_interval=false_page_interval, seed=seed
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
        f"{found['false_page_interval_seconds'] / day:g} days"
        + (
            "; the threshold extrapolated past what was simulated)"
            if found.get("extrapolated")
            else ")"
        ),
        f"  median windows until a page, by shift of the window score (in standard deviations): "
        f"{delays}",
    ]


def describe_self_check(calibration: dict[str, Any]) -> list[str]:
    """Lines saying what the self-check measured on held-out ID records (for the CLI)."""
    found = calibration.get("self_check")
    if not found:
        return []
    if not found["ran"]:
        return [f"self-check: not run ({found['reason']})"]

    def rate(measured: dict[str, Any]) -> str:
        if measured["interval"] is None:
            return "none assessed"
        low, high = measured["interval"]
        return (
            f"{measured['count']} of {measured['windows']} ({100 * measured['rate']:.2g}%, 95% "
            f"interval {100 * low:.2g}% to {100 * high:.2g}%)"
        )

    lines = [
        f"self-check on {found['windows']} windows of {found['window_records']} held-out ID "
        f"records (of {found['holdout_records']}): warned {rate(found['warnings'])} at a "
        f"false-alarm rate of {100 * found['false_alarm_rate']:.2g}%; bound significant "
        f"{rate(found['bound_significant'])}"
    ]
    detector = found.get("detector")
    if detector:
        day = 86_400.0
        one, few = detector["one_sequence"], detector["sequences"]
        low, high = one["interval_ci_seconds"]
        span = f"{one['windows'] * detector['window_seconds'] / day:.3g} days"
        lines.append(
            f"  drift detector over them: {one['pages']} pages in {one['windows']} windows "
            f"({span}): "
            + (
                f"one per at least {low / day:.3g} days (95%)"
                if one["pages"] == 0
                else f"one per {one['interval_seconds'] / day:.3g} days (95% interval "
                f"{low / day:.3g} to {high / day:.3g})"
            )
            + f"; {few['pages']} pages as {few['sequences']} sequences from a quiet start"
        )
    problems = failures(found)
    lines.append(
        "  within its bounds"
        if not problems
        else "  OUTSIDE its bounds: " + "; ".join(problems) + "; recalibrate with more ID records"
    )
    return lines


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
