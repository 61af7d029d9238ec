"""False pages of the drift detector on ID windows, and its delay on a shift (synthetic data).

The detector is calibrated the product's way (``calibrate_arrays``, then
``detector_calibration``) for one false page per 200 windows, so 20,000 fresh ID windows hold
about 100 pages if it keeps its promise: few enough windows for CI, enough pages to count.
Windows are fresh draws from the synthetic ID distribution (prompt, image and answer; not from
the calibration's pool), their statistics come from ``WindowStatistics``, their score's two
p-values (the bound's and the answer term's, past the trials) from the same nulls and tail
models ``assess_window`` reads (checked on the first windows against its ``score_p_values``),
and pages from ``Detector.step`` on ``detector_score``. benchmarks/bench_pager.py measures the
default 90-day interval on real traffic.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from monitor.detection import IDArrays, WindowStatistics, assess_window, bound_null
from monitor.detection.assess import tail_null, term_trial_values
from monitor.detection.calibrate import detector_calibration
from monitor.detection.detector import Detector, DetectorState, detector_score
from monitor.detection.window_stats import calibrate_arrays
from tests.synthetic_id import IDModel

pytestmark = pytest.mark.slow

RECORDS = 100
WINDOW = timedelta(minutes=5)
INTERVAL_WINDOWS = 200
ID_WINDOWS = 20_000
LEVEL = 0.99  # of the Poisson interval the configured interval must fall in or below
KEYS = ("prompt", "image", "response")


class Setup:
    """A synthetic store's calibration and detector, and the windows' statistics."""

    def __init__(self) -> None:
        self.model = IDModel()
        records = self.model.draw(np.random.default_rng(1), 3_000)
        data = IDArrays.from_compact(
            records["prompt"], images=records["image"], responses=records["response"]
        )
        self.calibration = calibrate_arrays(
            data, window_sizes=[RECORDS], comparison_fraction=0.3, seed=0
        )
        self.calibration["detector"] = detector_calibration(
            self.calibration,
            window=WINDOW,
            false_page_interval=INTERVAL_WINDOWS * WINDOW,
            seed=0,
        )
        detector = Detector.from_calibration(self.calibration)
        assert detector is not None
        self.detector = detector
        self.stats = WindowStatistics.for_calibration(data, self.calibration)
        null = bound_null(self.calibration, n=RECORDS, n_images=RECORDS, n_references=None)
        answers = term_trial_values(self.calibration, "response", RECORDS)
        assert null is not None and answers is not None
        self.tails = {"bound": tail_null(null.values), "response": tail_null(answers)}

    def values(self, window: dict[str, np.ndarray]) -> dict[str, float | None]:
        return self.stats(
            prompts=window["prompt"],
            images=window["image"],
            responses=window["response"],
            reference_pairs=None,
        )

    def windows(
        self,
        rng: np.random.Generator,
        windows: int,
        shifted: IDModel | None = None,
        share: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """The bound and the answer term of ``windows`` fresh windows, ``share`` of each from
        ``shifted``."""
        out = {"bound": np.empty(windows), "response": np.empty(windows)}
        taken = round(share * RECORDS)
        for i in range(windows):
            window = self.model.draw(rng, RECORDS - taken)
            if shifted is not None and taken:
                extra = shifted.draw(rng, taken)
                window = {k: np.vstack([window[k], extra[k]]) for k in KEYS}
            values = self.values(window)
            bound, response = values["bound_scale_adjusted"], values["response"]
            assert bound is not None and response is not None
            out["bound"][i], out["response"][i] = bound, response
        return out

    def score_p_values(self, windows: dict[str, np.ndarray]) -> list[dict[str, float | None]]:
        """Each window's ``score_p_values``: both terms' tail p-values."""
        p = {term: tail.p_values(windows[term]).tolist() for term, tail in self.tails.items()}
        return [{"bound": b, "response": r} for b, r in zip(p["bound"], p["response"], strict=True)]

    def run(
        self, windows: dict[str, np.ndarray], state: DetectorState | None = None
    ) -> list[DetectorState]:
        states = []
        for p_values in self.score_p_values(windows):
            state = self.detector.step(state, detector_score(p_values))
            states.append(state)
        return states


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def test_the_detector_is_calibrated_on_both_score_terms(setup: Setup) -> None:
    assert setup.calibration["detector"]["score"] == "bound+response"


def test_the_test_reads_what_assess_window_reads(setup: Setup) -> None:
    rng = np.random.default_rng(5)
    for shifted in (None, IDModel(seed=7)):
        window = setup.model.draw(rng, RECORDS)
        if shifted is not None:  # a window far out, read past the trials by the tail models
            window = shifted.draw(rng, RECORDS)
        values = setup.values(window)
        found = assess_window(
            setup.calibration,
            values,
            n=RECORDS,
            n_images=RECORDS,
            n_references=0,
            ood_fraction=None,
            alpha=0.01,
        )
        mine = setup.score_p_values(
            {
                "bound": np.array([values["bound_scale_adjusted"]], dtype=np.float64),
                "response": np.array([values["response"]], dtype=np.float64),
            }
        )[0]
        assert set(found.score_p_values) == set(mine)
        for term, p in found.score_p_values.items():
            assert p is not None and p == pytest.approx(mine[term], rel=1e-12), term
        assert detector_score(found.score_p_values) == pytest.approx(
            detector_score(mine), rel=1e-12
        )


def test_id_windows_page_no_more_often_than_configured(setup: Setup) -> None:
    states = setup.run(setup.windows(np.random.default_rng(2), ID_WINDOWS))
    alarmed = np.array([s.alarmed for s in states])
    pages = int(np.count_nonzero(alarmed[1:] & ~alarmed[:-1]) + alarmed[0])
    # The exact (Garwood) interval of the page rate: the configured interval must not lie
    # above the achieved one's upper end (pages more often than promised beyond chance).
    low_rate = stats.chi2.ppf((1 - LEVEL) / 2, 2 * pages) / 2 if pages else 0.0
    longest = math.inf if low_rate == 0 else ID_WINDOWS / low_rate
    achieved = ID_WINDOWS / pages if pages else math.inf
    assert longest >= INTERVAL_WINDOWS, (
        f"{pages} pages in {ID_WINDOWS} ID windows: one per {achieved:.0f} windows "
        f"(at most {longest:.0f} at {LEVEL:.0%}), configured one per {INTERVAL_WINDOWS}"
    )


def test_a_shift_pages_within_a_few_windows(setup: Setup) -> None:
    rng = np.random.default_rng(3)
    other = IDModel(seed=7)  # another distribution, 5% of each window from the shift on
    delays = []
    for _ in range(10):
        before = setup.run(setup.windows(rng, 24))
        after = setup.run(setup.windows(rng, 8, shifted=other, share=0.05), before[-1])
        paged = [i + 1 for i, s in enumerate(after) if s.alarmed]
        delays.append(paged[0] if paged else math.inf)
    assert sum(d <= 4 for d in delays) >= 9, delays
