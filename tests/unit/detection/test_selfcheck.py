"""The calibration self-check: held-out ID records pass, a held-out set unlike the nulls' pool
fails and says why, the bound is read as assess_window reads it, and calibrate_store holds
records out only when the rest of the pool still fits the window sizes."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from monitor.detection.calibrate import describe_self_check, holdout_plan
from monitor.detection.selfcheck import (
    clopper_pearson,
    failure_line,
    failures,
    self_check,
)
from monitor.detection.window_stats import IDArrays, calibrate_arrays

WINDOW = 40
DAY = 86_400.0


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def id_arrays(n: int = 2_500, d: int = 12, seed: int = 3) -> IDArrays:
    rng = np.random.default_rng(seed)
    prompts = unit(rng.normal(size=(n, d)) + 0.5)
    responses = unit(prompts @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(n, d)))
    references = unit(responses + 0.5 * rng.normal(size=(n, d)))
    return IDArrays.from_compact(prompts, responses=responses, references=references)


@pytest.fixture(scope="module")
def calibrated() -> tuple[IDArrays, dict[str, Any]]:
    data = id_arrays()
    calibration = calibrate_arrays(
        data, window_sizes=[WINDOW], false_alarm_rate=0.05, holdout_fraction=0.2, seed=1
    )
    calibration["ood_flag_rate"] = 0.05
    # A detector as calibrate_store records one (threshold of the default interval's order).
    calibration["detector"] = {
        "threshold": 6.0,
        "clear_level": 3.0,
        "cap": 12.0,
        "drift": 1.0,
        "window_seconds": 300.0,
        "false_page_interval_seconds": 90 * DAY,
        "window_records": WINDOW,
    }
    return data, calibration


def shifted_holdout(data: IDArrays, calibration: dict[str, Any], by: float) -> IDArrays:
    """The same records, the held-out ones' prompts and answers moved off the pool's."""
    held = np.asarray(calibration["holdout"])
    prompts, responses = data.prompts.copy(), data.responses.copy()  # type: ignore[union-attr]
    offset = np.zeros(prompts.shape[1], dtype=np.float32)
    offset[0] = by
    prompts[held] = unit(prompts[held] + offset)
    responses[held] = unit(responses[held] + offset)
    return IDArrays(prompts, responses, None, data.has_image, data.references, data.has_reference)


def test_held_out_id_records_pass(calibrated: tuple[IDArrays, dict[str, Any]]) -> None:
    data, calibration = calibrated
    check = self_check(data, calibration, windows=200, seed=0)
    assert check["ran"] and check["passed"], check
    assert check["failures"] == [] and failure_line("x", {"self_check": check}) is None
    assert check["window_records"] == WINDOW and check["holdout_records"] == 250
    warned = check["warnings"]
    assert warned["windows"] == 200 and warned["interval"][0] <= 0.05 <= warned["interval"][1]
    assert check["bound_significant"]["windows"] == 200
    one = check["detector"]["one_sequence"]
    assert check["detector"]["scored_windows"] == 200
    assert one["pages"] == 0 and one["interval_seconds"] is None
    # No page: the interval's lower 95% bound, windows x window length / 3.69 (Garwood).
    assert one["interval_ci_seconds"][0] == pytest.approx(200 * 300 / 3.689, rel=1e-3)
    assert one["interval_ci_seconds"][1] is None
    assert check["detector"]["sequences"]["sequences"] == 4
    json.dumps(check, allow_nan=False)  # JSON-ready
    lines = describe_self_check({"self_check": check})
    assert lines[0].startswith("self-check on 200 windows of 40 held-out ID records (of 250)")
    assert "0 pages in 200 windows" in lines[1] and lines[-1] == "  within its bounds"


def test_a_holdout_unlike_the_pool_fails_and_says_so(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    data, calibration = calibrated
    check = self_check(shifted_holdout(data, calibration, 1.0), calibration, windows=200)
    assert not check["passed"]
    assert check["warnings"]["interval"][0] > 0.05
    assert check["detector"]["one_sequence"]["pages"] >= 1
    assert any("held-out ID windows warned" in reason for reason in check["failures"])
    assert any("the drift detector paged" in reason for reason in check["failures"])
    line = failure_line("x", {"self_check": check})
    assert line is not None and "\n" not in line
    assert line.startswith("reference store 'x' failed its calibration self-check: ")
    assert line.endswith("; recalibrate with more ID records")
    assert describe_self_check({"self_check": check})[-1].startswith("  OUTSIDE its bounds: ")


def test_clopper_pearson_bounds() -> None:
    low, high = clopper_pearson(0, 400)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 400))
    low, high = clopper_pearson(400, 400)
    assert low == pytest.approx(0.025 ** (1 / 400)) and high == 1.0
    low, high = clopper_pearson(4, 400)
    assert low < 0.01 < high


def test_a_page_puts_a_long_interval_out_of_reach() -> None:
    def check(pages: int) -> dict[str, Any]:
        windows, window_s = 400, 300.0
        high_rate = {0: 3.689, 1: 5.572}[pages]
        return {
            "ran": True,
            "false_alarm_rate": 0.01,
            "warnings": {"count": 4, "windows": 400, "rate": 0.01, "interval": [0.003, 0.025]},
            "detector": {
                "false_page_interval_seconds": 90 * DAY,
                "one_sequence": {
                    "pages": pages,
                    "windows": windows,
                    "interval_seconds": windows * window_s / pages if pages else None,
                    "interval_ci_seconds": [
                        windows * window_s / high_rate,
                        windows * window_s / 0.0253 if pages else None,
                    ],
                },
            },
        }

    assert failures(check(0)) == []
    # One page in 400 five-minute windows: at most one per 55 days (95%), short of 90.
    (reason,) = failures(check(1))
    assert (
        "paged 1 times in 400 held-out ID windows" in reason and "configured: one per 90" in reason
    )
    assert failures({"ran": False, "reason": "none held out"}) == []


@pytest.mark.parametrize(
    ("n", "sizes", "held"),
    [
        (1_200, [30], 0.0),  # the quickstart's store: 480 records left fit windows of 24
        (1_200, [20], 0.2),
        (2_200, None, 0.0),  # a pool of 1,100 fits 50-record windows, 880 do not
        (2_600, None, 0.2),
    ],
)
def test_records_are_held_out_only_when_the_rest_fits(
    n: int, sizes: list[int] | None, held: float
) -> None:
    share, reason = holdout_plan(id_arrays(n, 4), sizes, 0.5, 0.05, 0.2)
    assert share == held
    assert (reason is None) == (held > 0)
    if reason is not None:
        assert "add ID records for a self-check" in reason


def test_a_check_not_run_says_why() -> None:
    assert describe_self_check({"self_check": {"ran": False, "reason": "too few"}}) == [
        "self-check: not run (too few)"
    ]
    assert describe_self_check({}) == []
    assert math.isfinite(clopper_pearson(1, 2)[0])
