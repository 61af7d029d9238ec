"""False-alarm matrix: fresh ID windows read against a calibration, per case of the daemon.

Synthetic ID records (a low-rank latent plus noise, d = 32, so a calibration takes about a
second) give every kind of embedding: prompt, image and model answer depend on a shared latent,
the reference answer on the model answer's latent with a systematic difference. Each case
calibrates several independent stores (``CALIBRATIONS``) with ``calibrate_arrays``, computes
fresh ID windows with the same ``WindowStatistics``, reads them through ``assess_window``, and
checks the measured rate against the configured one within binomial error: the error of the
windows plus that of the null's own trials (each calibration's rate varies with its null).

Exact cases (the window's count is a calibrated bucket) must sit within 3 standard errors on
both sides; conservative cases (counts between buckets, the warning's joint test over several
terms) must not exceed the rate by more than 3 standard errors; windows under the smallest
bucket get no p-value. OOD flags depend on the embeddings (a record is flagged when its prompt
lies far from the ID centre, 5% of the store's records), so they move with the terms; a store
calibrated with its records' flags tests the OOD fraction on its trials, one without them
with the binomial tail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest

from monitor.detection import IDArrays, WindowStatistics, assess_window, calibrate_arrays
from monitor.detection.window_stats import TESTED_TERMS
from monitor.errors import CalibrationError
from tests.synthetic_id import LATENT, D, IDModel, _unit

pytestmark = pytest.mark.slow

ALPHA = 0.05
RECORDS = 4000  # pool 2000: windows up to 100 records (5% of the pool)
REFERENCE_SHARE = 1.0  # the pool holds 2000 pairs: pair counts 5, 7, 10 (0.5% of them)
TRIALS = 400
CALIBRATIONS = 5
WINDOWS = 150
OOD_FLAG_RATE = 0.05


MODEL = IDModel()


def id_store(seed: int) -> IDArrays:
    rng = np.random.default_rng(seed)
    rows = MODEL.draw(rng, RECORDS)
    has_reference = rng.random(RECORDS) < REFERENCE_SHARE
    return IDArrays.from_compact(
        rows["prompt"],
        responses=rows["response"],
        images=rows["image"],
        references=rows["reference"][has_reference],
        has_reference=has_reference,
    )


@dataclass(frozen=True)
class Flagger:
    """OOD flags of a store: prompts whose similarity to the store's centre is under ``cut``
    (the store's 5% quantile)."""

    centre: np.ndarray
    cut: float

    @classmethod
    def of(cls, prompts: np.ndarray) -> Flagger:
        centre = prompts.mean(axis=0)
        return cls(centre, float(np.quantile(prompts @ centre, OOD_FLAG_RATE)))

    def __call__(self, prompts: np.ndarray) -> np.ndarray:
        flags: np.ndarray = prompts @ self.centre < self.cut
        return flags


@cache
def calibration(
    seed: int, ood_trials: bool = False
) -> tuple[dict[str, Any], WindowStatistics, Flagger]:
    data = id_store(seed)
    flagger = Flagger.of(data.prompts)
    calibrated = calibrate_arrays(
        data,
        window_sizes=[50, 100],
        trials=TRIALS,
        seed=seed,
        false_alarm_rate=ALPHA,
        ood_flags=flagger(data.prompts) if ood_trials else None,
    )
    return calibrated, WindowStatistics.for_calibration(data, calibrated), flagger


@dataclass(frozen=True)
class Case:
    name: str
    n: int
    n_images: int
    n_references: int
    terms: tuple[str, ...]  # the terms kept in the window's values; "bound" reads the bound
    exact: bool  # counts on calibrated buckets: two-sided check; else one-sided
    ood: bool = False
    ood_trials: bool = False  # calibrated with the records' OOD flags

    def rates(self, calibrations: int = CALIBRATIONS, windows: int = WINDOWS) -> list[float]:
        out = []
        for seed in range(calibrations):
            calibrated, stats, flagger = calibration(seed, self.ood_trials)
            rng = np.random.default_rng(10_000 + seed)
            alarms = 0
            for _ in range(windows):
                alarms += self.alarm(calibrated, stats, flagger, rng)
            out.append(alarms / windows)
        return out

    def alarm(
        self,
        calibrated: dict[str, Any],
        stats: WindowStatistics,
        flagger: Flagger,
        rng: np.random.Generator,
    ) -> bool:
        w = MODEL.draw(rng, self.n)
        values = stats(
            prompts=w["prompt"],
            images=w["image"][: self.n_images],
            responses=w["response"],
            reference_pairs=(
                w["response"][: self.n_references],
                w["reference"][: self.n_references],
            ),
        )
        kept = {k: (v if k in self.terms or k == "output_id" else None) for k, v in values.items()}
        if "bound" in self.terms:
            kept["bound_scale_adjusted"] = values["bound_scale_adjusted"]
        flagged = flagger(w["prompt"])
        assessment = assess_window(
            calibrated,
            kept,
            n=self.n,
            n_images=self.n_images,
            n_references=self.n_references,
            ood_fraction=float(flagged.mean()) if self.ood else None,
            ood_flag_rate=OOD_FLAG_RATE,
            alpha=ALPHA,
        )
        if "bound" in self.terms:
            return bool(assessment.bound_significant)
        return assessment.warning


CASES = [
    Case("text, n = 100 (bucket, window/pool 0.05)", 100, 0, 0, ("text",), exact=True),
    Case("text, n = 50 (bucket)", 50, 0, 0, ("text",), exact=True),
    Case("text, n = 70 (between buckets 50 / 100)", 70, 0, 0, ("text",), exact=False),
    Case("response, n = 100", 100, 0, 0, ("response",), exact=True),
    Case("visual, 40 images of 100 (40%)", 100, 40, 0, ("visual",), exact=True),
    Case("visual, 25 images of 100 (between 20 / 40)", 100, 25, 0, ("visual",), exact=False),
    Case("output_live, 5 references of 100 (5%)", 100, 0, 5, ("output_live",), exact=True),
    Case("output_live, 10 references of 200 (5%)", 200, 0, 10, ("output_live",), exact=True),
    Case("output_live, 7 references of 100 (bucket)", 100, 0, 7, ("output_live",), exact=True),
    Case(
        "output_live, 12 references of 100 (above the largest, 10)",
        100,
        0,
        12,
        ("output_live",),
        False,
    ),
    Case("bound, n = 100, 40 images, 5 references", 100, 40, 5, ("bound", *TESTED_TERMS), True),
    Case("bound, n = 70, 25 images, 12 references", 70, 25, 12, ("bound", *TESTED_TERMS), False),
    Case("bound, n = 150 (above the largest bucket)", 150, 40, 10, ("bound", *TESTED_TERMS), False),
    Case("OOD fraction alone, n = 100 (binomial tail)", 100, 0, 0, (), exact=False, ood=True),
    Case("OOD fraction alone, n = 100 (its trials)", 100, 0, 0, (), False, True, True),
    Case("warning: text + response (correlated), joint", 100, 0, 0, ("text", "response"), False),
    Case("warning: 4 terms + binomial OOD, joint", 100, 40, 10, TESTED_TERMS, False, ood=True),
    Case("warning: 4 terms + OOD trials, joint", 100, 40, 10, TESTED_TERMS, False, True, True),
]


def binomial_tolerance(rate: float, calibrations: int, windows: int, trials: int) -> float:
    """3 standard errors of a mean false-alarm rate: window noise plus each null's noise."""
    return 3 * math.sqrt(
        rate * (1 - rate) * (1 / (calibrations * windows) + 1 / (calibrations * trials))
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_false_alarm_rate_stays_within_binomial_error(case: Case) -> None:
    rates = case.rates()
    measured = float(np.mean(rates))
    tolerance = binomial_tolerance(ALPHA, CALIBRATIONS, WINDOWS, TRIALS)
    assert measured <= ALPHA + tolerance, (case.name, measured, rates)
    if case.exact:
        assert measured >= ALPHA - tolerance, (case.name, measured, rates)


def test_windows_under_the_smallest_bucket_get_no_p_value() -> None:
    calibrated, stats, _ = calibration(0)
    rng = np.random.default_rng(3)
    for n, n_images, n_references in ((30, 30, 4), (49, 4, 3), (20, 2, 2)):
        w = MODEL.draw(rng, n)
        values = stats(
            prompts=w["prompt"],
            images=w["image"][:n_images],
            responses=w["response"],
            reference_pairs=(w["response"][:n_references], w["reference"][:n_references]),
        )
        assessment = assess_window(
            calibrated,
            values,
            n=n,
            n_images=n_images,
            n_references=n_references,
            ood_fraction=None,
            alpha=ALPHA,
        )
        assert assessment.p_values["text"] is None and assessment.p_values["response"] is None
        assert assessment.p_values["bound"] is None and not assessment.warning
        # counts of their own still read their own nulls: 30 images lie above the 20-bucket
        assert (assessment.p_values["visual"] is not None) == (n_images >= 5)


def test_sizes_over_the_pool_fraction_are_refused_saying_why() -> None:
    data = id_store(0)
    with pytest.raises(CalibrationError, match=r"window sizes \[200\] do not fit.*up to 100"):
        calibrate_arrays(data, window_sizes=[50, 200], trials=TRIALS, false_alarm_rate=ALPHA)
    auto = calibrate_arrays(data, trials=100, false_alarm_rate=ALPHA, window_sizes=None)
    assert auto["window_sizes"] == [50, 100]  # the defaults 200 and 500 do not fit


def test_too_few_trials_for_the_warning_rule_are_refused() -> None:
    data = id_store(0)
    with pytest.raises(CalibrationError, match="at least 500 trials"):
        calibrate_arrays(data, window_sizes=[50], trials=200, false_alarm_rate=0.01)
    calibrated = calibrate_arrays(data, window_sizes=[50], trials=100, false_alarm_rate=ALPHA)
    # Calibrated for 0.05; asking for 0.005 later cannot be resolved: refused, not silent.
    values = dict.fromkeys(("visual", "output_live", "response", "output_id"), None)
    values |= {"text": 0.1, "bound_scale_adjusted": None}
    with pytest.raises(CalibrationError, match="more trials"):
        assess_window(
            calibrated, values, n=50, n_images=0, n_references=0, ood_fraction=None, alpha=0.005
        )


def shifted_records(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    """Records whose latent moved by ``shift`` along one axis: prompts and answers (and their
    references) move together."""
    z = rng.standard_normal((n, LATENT))
    z[:, 0] += shift
    noise = {k: 0.7 * rng.standard_normal((n, D)) for k in ("prompt", "response", "reference")}
    return {
        "prompt": _unit(z @ MODEL.maps["prompt"] + MODEL.means["prompt"] + noise["prompt"]),
        "response": _unit(z @ MODEL.maps["response"] + MODEL.means["response"] + noise["response"]),
        "reference": _unit(
            z @ (MODEL.maps["response"] + MODEL.reference_extra)
            + MODEL.means["response"]
            + noise["reference"]
        ),
    }


def test_the_joint_warning_outpowers_bonferroni_on_correlated_terms_within_its_rate() -> None:
    """Windows of 100 records, text and response tested (their nulls correlate: shared
    latent). A 30% share of records shifted in prompt and answer: the joint test warns at least
    as often as Bonferroni (alpha / 2 each, from the same p-values), and on fresh ID windows
    within the false-alarm rate."""
    shifted = bonferroni_shifted = quiet = 0
    windows = 0
    for seed in range(CALIBRATIONS):
        calibrated, stats, _ = calibration(seed)
        rng = np.random.default_rng(20_000 + seed)
        for _ in range(WINDOWS):
            windows += 1
            for share in (0.0, 0.3):
                w = MODEL.draw(rng, 100)
                moved = round(share * 100)
                if moved:
                    for kind, rows in shifted_records(rng, moved, 1.0).items():
                        w[kind][100 - moved :] = rows
                values = stats(
                    prompts=w["prompt"], images=None, responses=w["response"], reference_pairs=None
                )
                values["bound_scale_adjusted"] = None
                a = assess_window(
                    calibrated,
                    values,
                    n=100,
                    n_images=0,
                    n_references=0,
                    ood_fraction=None,
                    alpha=ALPHA,
                )
                assert a.joint and a.tests == 2
                text, response = a.p_values["text"], a.p_values["response"]
                assert text is not None and response is not None
                if share:
                    shifted += a.warning
                    bonferroni_shifted += min(text, response) < ALPHA / 2
                else:
                    quiet += a.warning
    tolerance = binomial_tolerance(ALPHA, CALIBRATIONS, WINDOWS, TRIALS)
    assert quiet / windows <= ALPHA + tolerance, quiet / windows
    assert shifted >= bonferroni_shifted, (shifted, bonferroni_shifted)
    assert shifted > bonferroni_shifted + 10, (shifted, bonferroni_shifted, windows)
