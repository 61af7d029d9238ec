"""False pages of the drift detector on ID windows, and its delay on a shift (synthetic data).

The detector is calibrated the product's way (``calibrate_arrays``, then
``detector_calibration``) for one false page per 200 windows, so 20,000 fresh ID windows hold
about 100 pages if it keeps its promise: few enough windows for CI, enough pages to count.
Windows are fresh draws from the synthetic ID distribution (not from the calibration's pool),
their statistics come from ``WindowStatistics``, their bound's tail p-value from the same null
``assess_window`` reads (checked on the first windows), and pages from ``Detector.step`` on
``window_score``. benchmarks/bench_pager.py measures the default 90-day interval on real
traffic.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from monitor.detection import IDArrays, WindowStatistics, assess_window, bound_null
from monitor.detection.calibrate import detector_calibration
from monitor.detection.detector import Detector, DetectorState, window_score
from monitor.detection.window_stats import calibrate_arrays
from monitor.estimators.tail import TailNull
from tests.synthetic_id import IDModel

pytestmark = pytest.mark.slow

RECORDS = 100
WINDOW = timedelta(minutes=5)
INTERVAL_WINDOWS = 200
ID_WINDOWS = 20_000
LEVEL = 0.99  # of the Poisson interval the configured interval must fall in or below


class Setup:
    """A synthetic store's calibration and detector, and the windows' statistics."""

    def __init__(self) -> None:
        self.model = IDModel()
        records = self.model.draw(np.random.default_rng(1), 3_000)
        data = IDArrays.from_compact(records["prompt"], images=records["image"])
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
        assert null is not None
        self.tail = TailNull(null.values)

    def bounds(
        self,
        rng: np.random.Generator,
        windows: int,
        shifted: IDModel | None = None,
        share: float = 0.0,
    ) -> np.ndarray:
        """Bound values of ``windows`` fresh windows, ``share`` of each from ``shifted``."""
        out = np.empty(windows)
        taken = round(share * RECORDS)
        for i in range(windows):
            window = self.model.draw(rng, RECORDS - taken)
            if shifted is not None and taken:
                extra = shifted.draw(rng, taken)
                window = {k: np.vstack([window[k], extra[k]]) for k in ("prompt", "image")}
            values = self.stats(
                prompts=window["prompt"],
                images=window["image"],
                responses=None,
                reference_pairs=None,
            )
            bound = values["bound_scale_adjusted"]
            assert bound is not None
            out[i] = bound
        return out

    def run(self, bounds: np.ndarray, state: DetectorState | None = None) -> list[DetectorState]:
        states = []
        for p in self.tail.p_values(bounds).tolist():
            state = self.detector.step(state, window_score(p))
            states.append(state)
        return states


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def test_the_benchmark_reads_what_assess_window_reads(setup: Setup) -> None:
    rng = np.random.default_rng(5)
    for _ in range(5):
        window = setup.model.draw(rng, RECORDS)
        values = setup.stats(
            prompts=window["prompt"], images=window["image"], responses=None, reference_pairs=None
        )
        found = assess_window(
            setup.calibration,
            values,
            n=RECORDS,
            n_images=RECORDS,
            n_references=0,
            ood_fraction=None,
            alpha=0.01,
        )
        assert found.bound_tail_p_value is not None
        assert found.bound_tail_p_value == pytest.approx(
            setup.tail.p_value(float(values["bound_scale_adjusted"] or 0.0)), rel=1e-12
        )


def test_id_windows_page_no_more_often_than_configured(setup: Setup) -> None:
    states = setup.run(setup.bounds(np.random.default_rng(2), ID_WINDOWS))
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
        before = setup.run(setup.bounds(rng, 24))
        after = setup.run(setup.bounds(rng, 8, shifted=other, share=0.05), before[-1])
        paged = [i + 1 for i, s in enumerate(after) if s.alarmed]
        delays.append(paged[0] if paged else math.inf)
    assert sum(d <= 4 for d in delays) >= 9, delays
