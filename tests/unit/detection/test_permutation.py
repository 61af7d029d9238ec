"""Per-window permutation nulls: same values as the live statistics, a false-alarm rate at its
nominal level where pseudo-windows cannot calibrate, power on a shift, and the method choice."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detection.assess import assess_window
from monitor.detection.calibrate import choose_method, describe_calibration
from monitor.detection.permutation import (
    EXCEEDANCES,
    MAX_COMPARISON,
    PERMUTATION,
    PSEUDO_WINDOWS,
    PermutationTest,
    SplitNull,
    StoppedNull,
    _SplitJSD,
    calibration_method,
    permutation_calibration,
)
from monitor.detection.window_stats import IDArrays, WindowStatistics
from monitor.errors import CalibrationError
from monitor.estimators.calibration import NullDistribution
from monitor.estimators.rjsd import representation_jsd

DIM = 8


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    basis = np.random.default_rng(7).standard_normal((3, DIM))
    rows = rng.standard_normal((n, 3)) @ basis + 0.5 * rng.standard_normal((n, DIM))
    rows[:, 0] += shift
    return unit(rows)


def window_arrays(
    prompts: np.ndarray,
    responses: np.ndarray | None = None,
    images: np.ndarray | None = None,
    has_image: np.ndarray | None = None,
    references: np.ndarray | None = None,
    has_reference: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray | None], dict[str, np.ndarray]]:
    """The pipeline's per-kind rows (zeros where absent) and masks of one window."""
    n = len(prompts)
    none = np.zeros(n, dtype=bool)
    return (
        {"prompt": prompts, "image": images, "response": responses, "reference": references},
        {
            "prompt": np.ones(n, dtype=bool),
            "image": has_image if has_image is not None else none,
            "response": np.full(n, responses is not None),
            "reference": has_reference if has_reference is not None else none,
        },
    )


@pytest.mark.parametrize(("rows", "dim"), [(40, 64), (90, 8)])  # Gram and covariance paths
@pytest.mark.parametrize("mode", ["balanced", "paper"])
def test_a_split_jsd_equals_the_jsd_of_its_two_sides(rows: int, dim: int, mode: str) -> None:
    rng = np.random.default_rng(rows)
    x = unit(rng.standard_normal((rows, dim)))
    side = np.zeros(rows, dtype=bool)
    side[rng.choice(rows, size=rows // 3, replace=False)] = True
    got = _SplitJSD(x.astype(np.float64), mode)(side)  # type: ignore[arg-type]
    # A window's float32 covariance is summed in float32 blocks (within ~3e-7 relative).
    expected = representation_jsd(x[side], x[~side], mode=mode)  # type: ignore[arg-type]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_the_window_split_reads_the_live_values_and_every_term_gets_a_null() -> None:
    rng = np.random.default_rng(0)
    m, n = 60, 30
    has_image = rng.random(m) < 0.5
    has_reference = rng.random(m) < 0.7
    data = IDArrays.from_compact(
        draw(rng, m),
        responses=draw(rng, m),
        images=draw(rng, int(has_image.sum())),
        has_image=has_image,
        references=draw(rng, int(has_reference.sum())),
        has_reference=has_reference,
    )
    comparison = np.arange(m)
    stats = WindowStatistics.from_arrays(data, comparison)
    w_image, w_reference = rng.random(n) < 0.5, rng.random(n) < 0.7
    prompts, answers = draw(rng, n), draw(rng, n)
    images, references = draw(rng, n), draw(rng, n)
    values = stats(
        prompts=prompts,
        images=images[w_image],
        responses=answers,
        reference_pairs=(answers[w_reference], references[w_reference]),
    )
    rows, present = window_arrays(prompts, answers, images, w_image, references, w_reference)
    nulls = PermutationTest(data, comparison, "balanced").nulls(
        rows, present, values, trials=19, seed=3
    )
    assert set(nulls) == {"visual", "text", "response", "output_live", "bound"}
    assert all(1 <= null.trials <= 19 for null in nulls.values())
    # The identity split (window vs comparison) reproduces the live value (to the float32
    # rounding of a live window's covariance): the same computation serves window and null.
    test = PermutationTest(data, comparison, "balanced")
    union = test._union("prompt", rows, present)
    split = _SplitJSD(union[0][union[1]], "balanced")(np.arange(n + m) < n)
    assert split == pytest.approx(values["text"], rel=1e-6)


def test_false_alarms_are_at_the_nominal_level_on_average_over_id_sets() -> None:
    """The permutation p-value is exact over draws of window and comparison together, at any
    size ratio (here the comparison is only twice the window, where pseudo-windows alarm at
    0.093 for 0.05). 39 permutations: p < 0.1 means at most 2 of 39 at least as large,
    probability 3/40 = 0.075 for a continuous statistic. (For one fixed comparison set the
    rate strays from it: the module docstring, and the default window fraction.)"""
    rng = np.random.default_rng(11)
    windows, alarms = 300, 0
    for i in range(windows):
        data = IDArrays.from_compact(draw(rng, 60))
        stats = WindowStatistics.from_arrays(data, np.arange(60))
        prompts = draw(rng, 30)
        values = stats(prompts=prompts, images=None, responses=None, reference_pairs=None)
        rows, present = window_arrays(prompts)
        null = PermutationTest(data, np.arange(60), "balanced").nulls(
            rows, present, values, trials=39, seed=i
        )["text"]
        alarms += null.p_value(values["text"]) < 0.1  # type: ignore[arg-type]
    rate, se = alarms / windows, (0.075 * 0.925 / windows) ** 0.5
    assert abs(rate - 0.075) < 3 * se, rate


def test_a_shifted_window_gets_the_smallest_p_value_and_a_warning() -> None:
    rng = np.random.default_rng(5)
    data = IDArrays.from_compact(draw(rng, 80), responses=draw(rng, 80))
    calibration = permutation_calibration(data, false_alarm_rate=0.05, hysteresis=(1, 1))
    stats = WindowStatistics.for_calibration(data, calibration)
    test = PermutationTest(data, calibration["comparison"], calibration["jsd_mode"])
    prompts, answers = draw(rng, 40), draw(rng, 40, shift=1.5)  # the answers drift
    values = stats(prompts=prompts, images=None, responses=answers, reference_pairs=None)
    rows, present = window_arrays(prompts, answers)
    nulls = test.nulls(rows, present, values, trials=calibration["trials"], seed=0)
    assessment = assess_window(
        calibration,
        values,
        n=40,
        n_images=0,
        n_references=0,
        ood_fraction=None,
        alpha=0.05,
        window_nulls=nulls,
    )
    assert assessment.p_values["response"] == pytest.approx(1 / (calibration["trials"] + 1))
    assert assessment.significant_terms == ("response",)
    assert assessment.warning and assessment.tests == 2
    text_p = assessment.p_values["text"]
    assert text_p is not None and text_p > 0.05 / 2
    assert assessment.p_values["bound"] is not None and not assessment.bound_significant


def test_a_quiet_term_stops_early_with_the_sequential_p_value_and_a_shifted_one_runs_on() -> None:
    rng = np.random.default_rng(9)
    data = IDArrays.from_compact(draw(rng, 80), responses=draw(rng, 80))
    stats = WindowStatistics.from_arrays(data, np.arange(80))
    prompts, answers = draw(rng, 40), draw(rng, 40, shift=1.5)
    values = stats(prompts=prompts, images=None, responses=answers, reference_pairs=None)
    rows, present = window_arrays(prompts, answers)
    nulls = PermutationTest(data, np.arange(80), "balanced").nulls(
        rows, present, values, trials=199, seed=1
    )
    text, response = nulls["text"], nulls["response"]
    assert isinstance(text, StoppedNull) and text.exceedances == EXCEEDANCES
    assert text.splits < 100 and text.threshold(0.05) is None
    assert text.p_value(values["text"]) == EXCEEDANCES / text.splits  # type: ignore[arg-type]
    assert isinstance(response, SplitNull) and response.trials == 199
    assert response.p_value(values["response"]) == 1 / 200  # type: ignore[arg-type]


def test_permutation_calibration_fixes_the_comparison_and_the_number_of_permutations() -> None:
    rng = np.random.default_rng(2)
    data = IDArrays.from_compact(draw(rng, MAX_COMPARISON + 50))
    calibration = permutation_calibration(data, false_alarm_rate=0.01)
    assert calibration_method(calibration) == PERMUTATION
    assert calibration["trials"] == 500 and calibration["nulls"] == {}
    assert len(calibration["comparison"]) == MAX_COMPARISON
    assert calibration["max_window_records"] == 50  # 5% of the comparison by default
    assert "500 permutations against 1000 ID records, windows tested on at most 50" in (
        describe_calibration(calibration)
    )
    assert permutation_calibration(data, max_window_fraction=1.0)["max_window_records"] == 1000
    small = IDArrays.from_compact(draw(rng, 60))
    assert permutation_calibration(small)["max_window_records"] == 5  # MIN_TERM_COUNT
    with pytest.raises(CalibrationError, match="window fraction"):
        permutation_calibration(small, max_window_fraction=0.0)
    with pytest.raises(CalibrationError, match="need at least 500"):
        permutation_calibration(data, false_alarm_rate=0.01, trials=100)
    assert calibration_method({"format": "x"}) == PSEUDO_WINDOWS  # older calibrations


def test_auto_picks_permutations_only_for_stores_too_small_for_pseudo_windows() -> None:
    rng = np.random.default_rng(3)
    small, large = IDArrays.from_compact(draw(rng, 218)), IDArrays.from_compact(draw(rng, 2000))
    assert choose_method("auto", small, None, 0.5, 0.05) == PERMUTATION
    assert choose_method("auto", large, None, 0.5, 0.05) == PSEUDO_WINDOWS
    assert choose_method("auto", small, [5], 0.5, 0.05) == PSEUDO_WINDOWS  # sizes asked for
    assert choose_method("permutation", large, None, 0.5, 0.05) == PERMUTATION
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        choose_method("bootstrap", small, None, 0.5, 0.05)


def test_splits_that_cannot_compute_a_term_count_as_extreme_and_do_not_break_the_null() -> None:
    """A window of 10 images far from the ID images (40% of 200 records have one): a split
    whose window side holds under 2 images (the live minimum) cannot compute the visual term
    and counts as at least as extreme; the other splits all stay below the window."""
    rng = np.random.default_rng(4)
    has_image = rng.random(200) < 0.4
    data = IDArrays.from_compact(
        draw(rng, 200), images=draw(rng, int(has_image.sum())), has_image=has_image
    )
    stats = WindowStatistics.from_arrays(data, np.arange(200))
    prompts = draw(rng, 10)
    images = unit(np.eye(DIM)[[7] * 10] + 0.05 * rng.standard_normal((10, DIM)))
    values = stats(prompts=prompts, images=images, responses=None, reference_pairs=None)
    rows, present = window_arrays(prompts, images=images, has_image=np.ones(10, dtype=bool))
    nulls = PermutationTest(data, np.arange(200), "balanced").nulls(
        rows, present, values, trials=99, seed=1
    )
    visual = nulls["visual"]
    assert isinstance(visual, SplitNull) and visual.trials == 99 and visual.unusable == 3
    assert visual.p_value(values["visual"]) == pytest.approx(4 / 100)  # type: ignore[arg-type]
    threshold = visual.threshold(0.05)
    assert threshold is not None and values["visual"] > threshold  # type: ignore[operator]


@pytest.mark.parametrize("unusable", [0, 3, 30])
def test_a_split_null_threshold_agrees_with_its_p_value(unusable: int) -> None:
    values = np.random.default_rng(unusable).random(99 - unusable)
    null = SplitNull.of([*values, *[np.inf] * unusable])
    assert null.trials == 99 and null.unusable == unusable
    for alpha in (0.05, 0.2):
        threshold = null.threshold(alpha)
        for observed in np.linspace(-0.1, 1.1, 241):
            significant = null.p_value(observed) < alpha
            assert significant == (threshold is not None and observed > threshold)
    if unusable == 0:  # the same numbers as a calibrated null
        calibrated = NullDistribution(99, values)
        assert null.threshold(0.05) == calibrated.threshold(0.05)
        assert null.p_value(0.5) == calibrated.p_value(0.5)
