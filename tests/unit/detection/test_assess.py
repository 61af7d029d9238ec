"""WindowStatistics (one implementation for calibration and live) and assess_window."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from monitor.detection import (
    IDArrays,
    WindowStatistics,
    assess_window,
    bound_null,
    calibrate_arrays,
    null_for,
)
from monitor.detection.joint import (
    binomial_chance_below,
    binomial_p_value,
    ood_trial_counts,
)
from monitor.detection.window_stats import CALIBRATION_FORMAT
from monitor.errors import CalibrationError
from monitor.estimators.calibration import split_reference
from tests.synthetic_id import IDModel

MODEL = IDModel()
N = 2000  # a pool of 1000: windows up to 50 records
ALPHA = 0.05


def id_data(seed: int = 0, *, image_share: float = 0.5) -> IDArrays:
    rng = np.random.default_rng(seed)
    rows = MODEL.draw(rng, N)
    has_image = rng.random(N) < image_share
    has_reference = np.ones(N, dtype=bool)
    return IDArrays.from_compact(
        rows["prompt"],
        responses=rows["response"],
        images=rows["image"][has_image],
        has_image=has_image,
        references=rows["reference"][has_reference],
        has_reference=has_reference,
    )


@pytest.fixture(scope="module")
def calibrated() -> tuple[IDArrays, dict[str, Any]]:
    data = id_data()
    return data, calibrate_arrays(
        data, window_sizes=[20, 50], trials=200, seed=3, false_alarm_rate=ALPHA
    )


def window_values(stats: WindowStatistics, w: dict[str, np.ndarray], n_img: int, n_ref: int) -> Any:
    return stats(
        prompts=w["prompt"],
        images=w["image"][:n_img],
        responses=w["response"],
        reference_pairs=(w["response"][:n_ref], w["reference"][:n_ref]),
    )


def test_nulls_are_the_live_statistics_of_pool_pseudo_windows(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """Trial 0 of every null is WindowStatistics.__call__ on the first rows of one pool order."""
    data, calibration = calibrated
    _, pool = split_reference(N, N // 2, seed=3)
    order = np.random.default_rng(3).permutation(pool)
    with_image = order[data.has_image[order]]
    with_reference = order[data.has_reference[order]]
    assert data.images is not None and data.references is not None
    assert data.responses is not None
    stats = WindowStatistics.for_calibration(data, calibration)
    values = stats(
        prompts=data.prompts[order[:50]],
        images=data.images[with_image[:20]],
        responses=data.responses[order[:50]],
        reference_pairs=(
            data.responses[with_reference[:5]],
            data.references[with_reference[:5]],
        ),
    )
    nulls = calibration["nulls"]
    assert values["text"] == nulls["text"]["50"][0]
    assert values["response"] == nulls["response"]["50"][0]
    assert values["visual"] == nulls["visual"]["20"][0]
    assert values["output_live"] == nulls["output_live"]["5"][0]
    assert values["output_id"] == calibration["output_id"]
    # 1,000 pool records have a reference: pairs up to 5 (0.5% of them) are calibrated.
    assert calibration["count_buckets"]["output_live"] == [5]


def test_bounds_record_their_jsd_mode_and_entropy_scale(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    data, calibration = calibrated
    stats = WindowStatistics.for_calibration(data, calibration)
    assert stats.jsd_mode == calibration["jsd_mode"] == "balanced"
    values = window_values(stats, MODEL.draw(np.random.default_rng(1), 40), 10, 5)
    scale_adjusted, entropy_scaled = stats.bounds(values)
    assert scale_adjusted.jsd_mode == entropy_scaled.jsd_mode == "balanced"
    assert scale_adjusted.value == values["bound_scale_adjusted"]
    assert entropy_scaled.value == values["bound_entropy_scaled"]
    assert scale_adjusted.complete
    scaled = WindowStatistics.from_arrays(data, np.arange(100), entropy_scale=2.0)
    _, h2 = scaled.bounds(values)
    assert h2.entropy_scale == 2.0 and h2.value is not None
    no_refs = window_values(stats, MODEL.draw(np.random.default_rng(2), 40), 1, 1)
    assert no_refs["visual"] is None and no_refs["output_live"] is None
    assert not stats.bounds(no_refs)[0].complete


def test_a_model_swap_shows_in_the_response_term_only(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """Answer drift: the same prompts answered by another model (DESIGN: `response` term)."""
    data, calibration = calibrated
    stats = WindowStatistics.for_calibration(data, calibration)
    other_model = IDModel(seed=7)
    rng = np.random.default_rng(5)
    hits, text_hits = 0, 0
    for _ in range(10):
        w = MODEL.draw(rng, 50)
        w["response"] = other_model.draw(rng, 50)["response"]
        a = assess_window(
            calibration,
            window_values(stats, w, 0, 0),
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=ALPHA,
        )
        hits += "response" in a.significant_terms
        text_hits += "text" in a.significant_terms
    assert hits == 10 and text_hits <= 2


def test_uncalibrated_windows_get_values_but_no_p_values() -> None:
    data = id_data(1)
    stats = WindowStatistics.for_calibration(data, None)
    assert stats.jsd_mode == "balanced"
    values = window_values(stats, MODEL.draw(np.random.default_rng(3), 60), 30, 10)
    assert all(values[k] is not None for k in ("visual", "text", "output_live", "response"))
    a = assess_window(
        None,
        values,
        n=60,
        n_images=30,
        n_references=10,
        ood_fraction=0.5,
        ood_flag_rate=0.05,
        alpha=0.01,
    )
    assert not a.calibrated and set(a.p_values.values()) == {None}
    assert a.bound_significant is None and a.significant_terms == ()
    assert a.ood_significant and a.warning  # 30 of 60 flagged at a 5% ID rate
    assert a.tests == 1 and a.ood_threshold is not None and a.ood_threshold < 0.5


def test_ood_fraction_threshold_is_a_binomial_tail_valid_for_any_n(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """The OOD test alone: fresh ID flags (rate 0.05) alarm at most alpha of the time."""
    _, calibration = calibrated
    rng = np.random.default_rng(9)
    for n in (7, 60, 400):
        alarms = 0
        for _ in range(400):
            flagged = rng.random(n) < 0.05
            a = assess_window(
                calibration,
                {},
                n=n,
                n_images=0,
                n_references=0,
                ood_fraction=float(flagged.mean()),
                alpha=ALPHA,
            )
            alarms += a.ood_significant
        # calibrate_arrays records no flag rate (calibrate_store does, from the store's TPR):
        # without one, OOD is not tested.
        assert alarms == 0
        alarms = 0
        for _ in range(2000):
            flagged = rng.random(n) < 0.05
            a = assess_window(
                calibration,
                {},
                n=n,
                n_images=0,
                n_references=0,
                ood_fraction=float(flagged.mean()),
                ood_flag_rate=0.05,
                alpha=ALPHA,
            )
            alarms += a.ood_significant
        assert alarms / 2000 <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / 2000), n


def test_null_lookup_keys_each_term_by_its_own_count(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    _, calibration = calibrated
    assert null_for(calibration, "text", 19) is None  # below every count
    text_20, text_50 = null_for(calibration, "text", 20), null_for(calibration, "text", 50)
    above = null_for(calibration, "text", 80)
    assert text_20 is not None and text_50 is not None and above is not None
    assert above.window_size == 50 and np.array_equal(above.values, text_50.values)
    # Between counts from 20 on: every quantile interpolated linearly in 1/sqrt(n).
    between = null_for(calibration, "text", 35)
    assert between is not None and between.window_size == 35
    weight = (20**-0.5 - 35**-0.5) / (20**-0.5 - 50**-0.5)
    expected = text_20.values + weight * (text_50.values - text_20.values)  # sorted arrays
    np.testing.assert_allclose(between.values, expected)
    visual = null_for(calibration, "visual", 12)  # below 20: the smaller count's null
    assert visual is not None and visual.window_size == 10
    assert null_for(calibration, "output_live", 4) is None


def test_old_calibrations_are_refused_with_the_command_to_run() -> None:
    old = {"nulls": {"50": {"text": {"window_size": 50, "values": [0.1]}}}, "trials": 200}
    with pytest.raises(CalibrationError, match="rerun `mllm-monitor calibrate`"):
        assess_window(
            old, {"text": 0.1}, n=50, n_images=0, n_references=0, ood_fraction=None, alpha=0.05
        )
    with pytest.raises(CalibrationError, match="older version"):
        WindowStatistics.for_calibration(id_data(), old)


def test_terms_without_enough_pool_rows_are_reported_not_faked() -> None:
    rows = MODEL.draw(np.random.default_rng(4), N)
    has_reference = np.zeros(N, dtype=bool)
    has_reference[:300] = True  # about 150 pool pairs: the smallest count needs 1,000
    data = IDArrays.from_compact(
        rows["prompt"],
        responses=rows["response"],
        references=rows["reference"][has_reference],
        has_reference=has_reference,
    )
    calibration = calibrate_arrays(data, window_sizes=[20], trials=100, false_alarm_rate=ALPHA)
    assert "output_live" not in calibration["nulls"]
    assert "needs 1000" in calibration["uncalibrated"]["output_live"]
    assert null_for(calibration, "output_live", 50) is None


def exact_ood_count_threshold(n: int, rate: float, level: float) -> int | None:
    """Smallest k with P(Binomial(n, rate) >= k) < level, from exact rational sums (written
    apart from the code under test); the cases below stay far from ties with ``level``."""
    p, q = Fraction(rate), 1 - Fraction(rate)
    tail = Fraction(0)
    threshold = None
    for k in range(n, -1, -1):  # P(X >= k) grows as k falls
        tail += math.comb(n, k) * p**k * q ** (n - k)
        if tail >= level:
            assert abs(float(tail) - level) > 1e-9 * level, (n, rate, level, k)
            break
        threshold = k
    return threshold


@pytest.mark.parametrize(
    ("n", "rate", "alpha"),
    [
        (1, 0.05, 0.1),  # k = 1: one flagged record of one
        (5, 0.5, 0.05),  # k = n: only a fully flagged window
        (5, 0.5, 0.01),  # no k: even 5 of 5 is not significant
        (7, 0.05, 0.05),
        (20, 0.1, 0.01),
        (60, 0.05, 0.05),
        (400, 0.05, 0.002),
    ],
)
def test_ood_test_fires_at_exactly_the_binomial_threshold(
    n: int, rate: float, alpha: float
) -> None:
    """k flagged records of n are OOD-significant and k - 1 are not, for every count, and the
    reported threshold fraction separates them (the warning's reason reads fraction > it)."""
    k = exact_ood_count_threshold(n, rate, alpha)
    for flagged in range(n + 1):
        a = assess_window(
            None,
            {},
            n=n,
            n_images=0,
            n_references=0,
            ood_fraction=flagged / n,
            ood_flag_rate=rate,
            alpha=alpha,
        )
        expected = k is not None and flagged >= k
        assert a.ood_significant is expected and a.warning is expected, (flagged, k)
        if k is None:
            assert a.ood_threshold is None
        else:
            assert a.ood_threshold is not None and a.ood_threshold == pytest.approx((k - 1) / n)
            assert (flagged / n > a.ood_threshold) is expected


def test_a_binomial_ood_test_joins_the_terms_min_p_assuming_independence(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """Without OOD trials, the joint level is the largest trial min-p whose rank bound a and
    the binomial chance b of an OOD p-value below it keep 1 - (1 - a)(1 - b) < alpha; the
    OOD count is significant from the binomial k of that level on."""
    _, calibration = calibrated
    n, rate, trials = 50, 0.05, calibration["trials"]
    text = null_for(calibration, "text", n)
    assert text is not None
    chance = binomial_chance_below(n, rate)
    levels = []
    for flagged in range(8):
        a = assess_window(
            calibration,
            {"text": float(text.values[0]) - 1.0},  # below every trial: p = 1
            n=n,
            n_images=0,
            n_references=0,
            ood_fraction=flagged / n,
            ood_flag_rate=rate,
            alpha=ALPHA,
        )
        assert a.joint and a.tests == 2 and a.term_level is not None
        levels.append(a.term_level)
        # The text trials' numerators are 1..B: the level's rank is its numerator - 1.
        numerator = round(a.term_level * (trials + 1))
        combined = 1 - (1 - numerator / (trials + 1)) * (1 - chance(a.term_level))
        wider = (numerator + 1) / (trials + 1)
        assert combined < ALPHA <= 1 - (1 - wider) * (1 - chance(wider))
        k = exact_ood_count_threshold(n, rate, a.term_level)
        assert k is not None and a.ood_significant is (flagged >= k) is a.warning
        assert a.ood_p_value == pytest.approx(binomial_p_value(flagged, n, rate))
    assert len(set(levels)) == 1
    # The OOD test's discreteness leaves the term more than Bonferroni's alpha / 2.
    assert levels[0] > ALPHA / 2


def test_the_joint_level_follows_the_terms_dependence() -> None:
    """Identical terms: the joint level is the single term's (alpha); independent terms:
    near alpha / tests, never far below it; a term is significant below the level."""
    rng = np.random.default_rng(0)
    trials = 999
    same = rng.random(trials)
    other = rng.random(trials)
    for text, response, low, high in (
        (same, same, 0.049, 0.05),
        (same, other, 0.02, 0.032),
    ):
        calibration = hand_calibration({"text": text, "response": response})
        a = assess_window(
            calibration,
            {"text": 0.5, "response": 0.5},
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=ALPHA,
        )
        assert a.joint and a.tests == 2 and a.term_level is not None
        assert low <= a.term_level < high, a.term_level
        for value in (0.9, 0.99, 0.999):
            b = assess_window(
                calibration,
                {"text": value, "response": 0.5},
                n=50,
                n_images=0,
                n_references=0,
                ood_fraction=None,
                alpha=ALPHA,
            )
            p = b.p_values["text"]
            assert p is not None and b.term_level is not None
            assert ("text" in b.significant_terms) is (p < b.term_level) is b.warning
            threshold = b.thresholds["text"]
            assert threshold is not None and (value > threshold) is (p < b.term_level)


def test_too_few_trials_past_the_ties_of_their_top_values_read_bonferroni() -> None:
    """100 trials, three independent terms and a binomial OOD test at alpha = 0.05: about three
    trials share the smallest min-p, and the joint level would fall below alpha / 4; the window
    is read with Bonferroni (a p-value of 1/101 is significant). 1,000 trials: joint."""
    rng = np.random.default_rng(2)
    for trials, joint in ((100, False), (1000, True)):
        nulls = {t: rng.random(trials) for t in ("text", "response", "visual")}
        a = assess_window(
            hand_calibration(nulls),
            {"text": 2.0, "response": 0.5, "visual": 0.5},
            n=50,
            n_images=50,
            n_references=0,
            ood_fraction=0.0,
            ood_flag_rate=0.05,
            alpha=ALPHA,
        )
        assert a.joint is joint and a.tests == 4 and a.term_level is not None
        assert a.term_level >= ALPHA / 4 and a.significant_terms == ("text",) and a.warning
        if not joint:
            assert a.term_level == ALPHA / 4
        assert all(a.thresholds[t] is not None for t in nulls)


def hand_calibration(nulls: dict[str, np.ndarray], **extra: Any) -> dict[str, Any]:
    """A calibration whose nulls at count 50 are the given trials (in trial order)."""
    trials = len(next(iter(nulls.values())))
    return {
        "format": CALIBRATION_FORMAT,
        "trials": trials,
        "nulls": {term: {"50": values.tolist()} for term, values in nulls.items()},
        **extra,
    }


def test_the_joint_test_keeps_its_rate_at_any_dependence() -> None:
    """The window and its trials exchangeable (all drawn alike), three correlated terms with
    ties: the min-p rule warns at most alpha of the time, and near it."""
    rng = np.random.default_rng(1)
    trials, reps = 199, 3000
    warnings = 0
    for _ in range(reps):
        shared = rng.standard_normal(trials + 1)
        terms = {
            "text": shared + 0.3 * rng.standard_normal(trials + 1),
            "response": shared + 0.3 * rng.standard_normal(trials + 1),
            "visual": np.round(rng.standard_normal(trials + 1), 1),  # ties
        }
        calibration = hand_calibration({t: v[1:] for t, v in terms.items()})
        a = assess_window(
            calibration,
            {t: float(v[0]) for t, v in terms.items()},
            n=50,
            n_images=50,
            n_references=0,
            ood_fraction=None,
            alpha=ALPHA,
        )
        warnings += a.warning
    rate = warnings / reps
    error = 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert ALPHA - 2 * error <= rate <= ALPHA + error, rate


def ood_flags_of(prompts: np.ndarray, centre: np.ndarray, cut: float) -> np.ndarray:
    """Flags that depend on the embeddings (far from the ID centre), as kNN flags do."""
    flags: np.ndarray = prompts @ centre < cut
    return flags


def test_ood_flags_at_calibration_make_the_ood_fraction_a_calibrated_term() -> None:
    data = id_data(2)
    centre = data.prompts.mean(axis=0)
    cut = float(np.quantile(data.prompts @ centre, 0.05))
    flags = ood_flags_of(data.prompts, centre, cut)
    calibration = calibrate_arrays(
        data, window_sizes=[20, 50], trials=200, seed=4, false_alarm_rate=ALPHA, ood_flags=flags
    )
    # Trial 0 records which of its pseudo-window's first 50 records are flagged.
    _, pool = split_reference(N, N // 2, seed=4)
    order = np.random.default_rng(4).permutation(pool)
    ood_null = calibration["ood_null"]
    assert ood_null["records"] == 50
    assert ood_null["flag_ranks"][0] == np.flatnonzero(flags[order[:50]]).tolist()
    counts = ood_trial_counts(calibration, 30)
    assert counts is not None and len(counts) == 200
    assert ood_trial_counts(calibration, 51) is None
    for flagged in range(8):
        a = assess_window(
            calibration,
            {},
            n=30,
            n_images=0,
            n_references=0,
            ood_fraction=flagged / 30,
            alpha=ALPHA,
        )
        p = (1 + int((counts >= flagged).sum())) / 201
        assert a.joint and a.tests == 1 and a.ood_p_value == p
        assert a.ood_significant is (p < ALPHA) is a.warning
        assert a.ood_threshold is not None
        assert (flagged / 30 > a.ood_threshold) is a.ood_significant
    # Past the records the trials cover (50), the binomial test joins by independence.
    over = assess_window(
        calibration, {}, n=60, n_images=0, n_references=0, ood_fraction=0.5, alpha=ALPHA
    )
    assert over.tests == 0  # no flag rate recorded by calibrate_arrays: not tested
    stats = WindowStatistics.for_calibration(data, calibration)
    rng = np.random.default_rng(6)
    warnings, windows = 0, 300
    for _ in range(windows):
        w = MODEL.draw(rng, 50)
        values = window_values(stats, w, 0, 0) | {"bound_scale_adjusted": None}
        a = assess_window(
            calibration,
            values,
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=float(ood_flags_of(w["prompt"], centre, cut).mean()),
            alpha=ALPHA,
        )
        assert a.tests == 3 and a.joint
        warnings += a.warning
    assert warnings / windows <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / windows)


def _value_with_p(null_values: np.ndarray, exceeding: int) -> float:
    """A null value with exactly ``exceeding`` null values >= it: p = (1 + exceeding) / (1 + B)."""
    ordered = np.sort(null_values)
    assert len(np.unique(ordered)) == len(ordered)  # no ties: the count is exact
    return float(ordered[len(ordered) - exceeding])


def test_bound_is_significant_exactly_when_p_is_below_alpha(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """At p == alpha the bound is not significant, as NullDistribution.is_significant says;
    just above and below the boundary it follows p < alpha, and agrees with the threshold."""
    _, calibration = calibrated
    null = bound_null(calibration, n=50, n_images=None, n_references=None)
    assert null is not None and null.trials == 200
    observed = _value_with_p(null.values, 10)  # p = 11 / 201
    p = null.p_value(observed)
    assert p == 11 / 201
    for alpha in (10 / 201, 11 / 201, float(np.nextafter(11 / 201, 1.0)), 12 / 201):
        a = assess_window(
            calibration,
            {"bound_scale_adjusted": observed},
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=alpha,
        )
        assert a.p_values["bound"] == p
        assert a.bound_significant is (p < alpha) is null.is_significant(observed, alpha)
        threshold = a.thresholds["bound"]
        assert threshold is not None and (observed > threshold) is a.bound_significant
    at_boundary = assess_window(
        calibration,
        {"bound_scale_adjusted": observed},
        n=50,
        n_images=0,
        n_references=0,
        ood_fraction=None,
        alpha=p,
    )
    assert at_boundary.bound_significant is False


def test_a_term_is_significant_exactly_when_p_is_below_its_level(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """The warning's side of the same boundary: with one term the joint level is alpha, and
    p == alpha is not significant."""
    _, calibration = calibrated
    text = null_for(calibration, "text", 50)
    assert text is not None
    observed = _value_with_p(text.values, 10)
    p = text.p_value(observed)
    for alpha, significant in ((p, False), (float(np.nextafter(p, 1.0)), True)):
        a = assess_window(
            calibration,
            {"text": observed},
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=alpha,
        )
        assert a.tests == 1 and a.p_values["text"] == p
        assert ("text" in a.significant_terms) is significant and a.warning is significant


def test_a_level_equal_to_the_smallest_p_value_cannot_fire(
    calibrated: tuple[IDArrays, dict[str, Any]],
) -> None:
    """200 trials: the smallest p-value is 1/201. At alpha = 1/201 a term could never be
    significant, so the window is refused with the command to run; the bound (tested at alpha,
    outside the warning) gets its p-value but no threshold, and is never significant."""
    _, calibration = calibrated
    assert calibration["trials"] == 200
    text = null_for(calibration, "text", 50)
    assert text is not None
    top = float(text.values[-1]) + 1.0
    assert text.p_value(top) == 1 / 201  # above every trial: the smallest p-value there is
    with pytest.raises(CalibrationError, match="cannot resolve p-values"):
        assess_window(
            calibration,
            {"text": top},
            n=50,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=1 / 201,
        )
    fires = assess_window(
        calibration,
        {"text": top},
        n=50,
        n_images=0,
        n_references=0,
        ood_fraction=None,
        alpha=1.5 / 201,
    )
    assert fires.significant_terms == ("text",)
    bound = bound_null(calibration, n=50, n_images=None, n_references=None)
    assert bound is not None
    a = assess_window(
        calibration,
        {"bound_scale_adjusted": float(bound.values[-1]) + 1.0},
        n=50,
        n_images=0,
        n_references=0,
        ood_fraction=None,
        alpha=1 / 201,
    )
    assert a.p_values["bound"] == 1 / 201
    assert a.thresholds["bound"] is None and a.bound_significant is False


def test_ood_test_counts_flags_among_the_scored_samples_only() -> None:
    """A window of 400 whose first 10 samples only have an OOD score (a store added during
    the window): 2 flags of 10 at a 5% rate is not significant, though 20% of 400 would be."""
    n, scored, rate = 400, 10, 0.05
    k = exact_ood_count_threshold(scored, rate, ALPHA)
    assert k == 3
    for flagged in range(scored + 1):
        a = assess_window(
            None,
            {},
            n=n,
            n_images=0,
            n_references=0,
            ood_fraction=flagged / scored,
            ood_flag_rate=rate,
            alpha=ALPHA,
            ood_scored=scored,
        )
        assert a.ood_significant is (flagged >= k), flagged
        assert a.ood_threshold == pytest.approx((k - 1) / scored)
    unscored = assess_window(
        None,
        {},
        n=n,
        n_images=0,
        n_references=0,
        ood_fraction=None,
        ood_flag_rate=rate,
        alpha=ALPHA,
        ood_scored=0,
    )
    assert unscored.tests == 0 and not unscored.ood_significant
