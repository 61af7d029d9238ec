"""The sequential change detector of a stream: a capped one-sided CUSUM on window scores.

Why CUSUM: among detectors of a persistent shift in a sequence's mean it has the shortest
worst-case delay for a given false-alarm rate (Lorden, Moustakides), its run-length theory is
known (Siegmund), and its state is one number per stream, stored with each window.

* Score of a window: z = Phi^-1(1 - p) of p = 1 - (1 - min(p_bound, p_response))^2, the smaller
  of the bound's p-value and the answer term's (Sidak over the two), each past the trials'
  resolution from its null's modelled tail (:class:`monitor.estimators.tail.TailNull`). On ID
  traffic z is about standard normal or lower; a shift moves it up. Why both: the bound (the
  paper's quantity) reads inputs and reference outputs, and on text-only traffic it is the
  prompts alone, which barely see a 5% mix of another benchmark (measured on MMBench with 5%
  MME, windows of 100 records, MiniLM: mean z 0.7 for the prompts, 3.2 for the answers, 0.3 and
  -0.5 on held-out ID windows); answers moving away from ID answers is the clearest sign of a
  change in what the model does. So an answer-only shift (a model swap) can page alone here,
  where under the k-of-m rule the answer term only warns. Insufficient or uncalibrated windows
  have no score and leave the state as it was (neither significant nor quiet).
* Statistic: S = min(cap, max(0, S + z - drift)). ``drift`` (1.0) makes it quickest for
  shifts that raise z by about 2 (the CUSUM is optimal for a shift of twice its drift); a
  larger shift pages sooner still, a 6-sigma window at once.
* Critical starts when S > threshold, and clears when S <= clear_level (half the threshold):
  an alert does not flap on a window that dips. S is capped at twice the threshold, so after a
  long shift S falls to the clear level within about 1.5 * threshold / drift quiet windows
  (6 to 8 at the default interval).
* The threshold is not from a formula (those assume windows whose p-values are exactly uniform
  and independent): :func:`calibrate_detector` simulates ID window sequences from the
  calibration's pseudo-windows and picks the smallest threshold whose simulated mean time
  between pages is at least ``[alerts] false_page_interval`` (times INTERVAL_MARGIN) at the
  window size, then measures the interval on fresh simulated windows. Past MAX_SIMULATED_WINDOWS
  (short windows and long intervals: 90 days of 2 s windows is 3.9 million windows, a hundred
  times that to measure) the threshold is extrapolated from three measurable intervals, log run
  length being linear in the threshold, and the measured interval is then a lower bound. Half the
  trials give the p-values (the null), the other half the ID windows drawn (their values past
  the trials from the tail model), so the simulation also carries the error of reading a
  window against a null of finitely many trials. Permutation-calibrated stores (p-values of
  B permutations, valid per window) simulate discrete uniform p-values instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from monitor.errors import CalibrationError
from monitor.estimators.tail import TailNull

DRIFT = 1.0
# The p-values a window's score combines (monitor.detection.assess gives both past the trials).
SCORE_TERMS = ("bound", "response")
CLEAR_FRACTION = 0.5  # clear level / threshold
CAP_FACTOR = 2.0  # cap / threshold
SCORE_LIMIT = 8.0  # |z| beyond this carries no more information (p about 6e-16)
# Simulated windows per configured interval: about this many false pages at the threshold
# chosen, so the achieved interval is measured within about +-10% (Poisson).
PAGES_SIMULATED = 100
MIN_SIMULATED_WINDOWS = 200_000
# At most this many (32 MiB of scores a set): longer intervals extrapolate the threshold.
MAX_SIMULATED_WINDOWS = 4_000_000
PARALLEL_SEQUENCES = 2_000
# The threshold is chosen for this many times the interval: the page count it is chosen on
# varies more than Poisson (a few halvings of the trials page far more than the rest), and
# fresh ID windows must still meet the interval asked for. Measured on two gamma-tailed terms,
# 3 seeds x 2 nulls: fresh intervals 115-161 days for 90 asked (1.25 and 400 halvings: 92-161;
# one synthetic store came out at 72), detector calibration 14 s.
INTERVAL_MARGIN = 1.5
SPLITS = 1000  # random halvings of the trials (null / windows) the sequences spread over
# Score shifts (in standard deviations of z) whose detection delay calibrate reports.
REFERENCE_SHIFTS = (1.0, 2.0, 3.0, 5.0)

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class DetectorState:
    """A stream's detector after a window: the CUSUM statistic and whether it pages."""

    statistic: float = 0.0
    alarmed: bool = False


@dataclass(frozen=True, slots=True)
class Detector:
    """The capped one-sided CUSUM of the module docstring."""

    threshold: float
    clear_level: float
    cap: float
    drift: float = DRIFT

    @classmethod
    def for_threshold(cls, threshold: float, drift: float = DRIFT) -> Detector:
        return cls(threshold, CLEAR_FRACTION * threshold, CAP_FACTOR * threshold, drift)

    @classmethod
    def from_calibration(cls, calibration: Mapping[str, Any] | None) -> Detector | None:
        """The detector a store's calibration holds (None: none, an older calibration)."""
        found = (calibration or {}).get("detector")
        if not found:
            return None
        return cls(
            float(found["threshold"]),
            float(found["clear_level"]),
            float(found["cap"]),
            float(found["drift"]),
        )

    def step(self, state: DetectorState | None, score: float | None) -> DetectorState:
        """The state after a window with ``score`` (None: unchanged)."""
        state = state or DetectorState()
        if score is None or not math.isfinite(score):
            return state
        statistic = float(self.advance(np.float64(state.statistic), score))
        limit = self.clear_level if state.alarmed else self.threshold
        return DetectorState(statistic, statistic > limit)

    def advance(self, statistic: Any, scores: Any) -> Any:
        """The CUSUM recursion, for one stream (:meth:`step`) or many simulated ones at once."""
        return np.minimum(self.cap, np.maximum(0.0, statistic + scores - self.drift))


def window_score(p_value: float | None) -> float | None:
    """z = Phi^-1(1 - p), clipped to +-SCORE_LIMIT; None for no p-value."""
    if p_value is None or not math.isfinite(p_value):
        return None
    return float(z_scores(np.float64(p_value)))


def z_scores(p: Any) -> Any:
    """Phi^-1(1 - p) of p-values (an array or a scalar), clipped to +-SCORE_LIMIT."""
    z = stats.norm.isf(np.clip(p, 1e-300, 1.0))
    return np.clip(z, -SCORE_LIMIT, SCORE_LIMIT)


@dataclass(frozen=True, slots=True)
class PageSimulation:
    """False pages of a detector over simulated ID windows."""

    windows: int
    pages: int

    def interval_windows(self) -> float:
        """Mean windows between pages (inf when none was seen)."""
        return math.inf if self.pages == 0 else self.windows / self.pages

    def interval_ci_windows(self, level: float = 0.95) -> tuple[float, float]:
        """Exact (Garwood) Poisson interval of the mean windows between pages."""
        low_count, high_count = poisson_interval(self.pages, level)
        high = math.inf if low_count == 0.0 else self.windows / low_count
        return (self.windows / high_count, high)


def poisson_interval(count: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson mean from one observed count."""
    tail = (1.0 - level) / 2.0
    low = 0.0 if count == 0 else float(stats.chi2.ppf(tail, 2 * count) / 2.0)
    return low, float(stats.chi2.ppf(1.0 - tail, 2 * count + 2) / 2.0)


def count_pages(detector: Detector, scores: Scores) -> PageSimulation:
    """Pages (starts of an alarm) of ``detector`` run over ``scores`` (sequences x windows),
    each sequence starting from a quiet state."""
    sequences, length = scores.shape
    statistic = np.zeros(sequences)
    alarmed = np.zeros(sequences, dtype=bool)
    pages = 0
    for t in range(length):
        statistic = detector.advance(statistic, scores[:, t])
        now = np.where(alarmed, statistic > detector.clear_level, statistic > detector.threshold)
        pages += int(np.count_nonzero(now & ~alarmed))
        alarmed = now
    return PageSimulation(sequences * length, pages)


def detection_delays(detector: Detector, scores: Scores) -> npt.NDArray[np.float64]:
    """Windows until the first page of each sequence (1 = its first window; inf: never)."""
    sequences, length = scores.shape
    statistic = np.zeros(sequences)
    delay = np.full(sequences, np.inf)
    for t in range(length):
        statistic = detector.advance(statistic, scores[:, t])
        fresh = np.isinf(delay) & (statistic > detector.threshold)
        delay[fresh] = t + 1
    return delay


def detector_score(p_values: Mapping[str, float | None]) -> float | None:
    """A window's score: z of the Sidak-combined smallest p-value over the SCORE_TERMS it has
    p-values for (:func:`sidak`; on ID traffic the bound and the answer term are nearly
    independent, and the detector's threshold is calibrated on their joint trials either way).
    None when it has none."""
    present = [
        p for term in SCORE_TERMS if (p := p_values.get(term)) is not None and math.isfinite(p)
    ]
    if not present:
        return None
    return window_score(sidak(min(present), len(present)))


def sidak(smallest: float | npt.NDArray[np.float64], terms: int) -> Any:
    """1 - (1 - p)^m: the smallest of m p-values made a p-value again (exactly uniform for
    independent terms; Bonferroni's m p instead would put every window whose p-values are
    all over 1/m at p = 1, a score of -8 that empties the statistic a quarter of the time)."""
    with np.errstate(divide="ignore"):  # p = 1: log1p(-1) = -inf gives 1, as it should
        return -np.expm1(terms * np.log1p(-np.minimum(smallest, 1.0)))


def simulated_id_scores(
    null_values: Mapping[str, npt.ArrayLike] | None,
    sequences: int,
    length: int,
    rng: np.random.Generator,
    *,
    permutation_trials: int | None = None,
    permutation_terms: int = 1,
) -> Scores:
    """Scores of simulated ID windows, ``sequences`` x ``length`` (module docstring).

    ``null_values``: each score term's calibration values, aligned by trial (trial i of every
    term is one pseudo-window). Each split halves the trials: one half is the null (its tail
    model gives the p-values), the other the windows: a window is one of its trials (the
    terms' dependence kept), each term's value smoothed within its rank cell and, for the
    largest, drawn past it from that half's tail model. Each sequence is one deployment: it
    reads one null throughout, and the sequences spread over SPLITS splits, so the page rate is
    averaged over how far a null of finitely many trials can stray (one split alone measured
    31 days where another, fresh, measured 90). A permutation calibration (None) draws
    ``permutation_terms`` independent discrete uniform p-values of B permutations.
    """
    p = np.ones((sequences, length))
    if null_values is None:
        if permutation_trials is None:
            raise CalibrationError("simulating ID windows needs null values or a permutation count")
        terms = permutation_terms
        for _ in range(terms):
            k = rng.integers(1, permutation_trials + 2, size=(sequences, length))
            np.minimum(p, k / (permutation_trials + 1.0), out=p)
    else:
        columns = [np.asarray(v, dtype=np.float64) for v in null_values.values()]
        sizes = {len(c) for c in columns}
        if len(sizes) != 1 or min(sizes) < 4:
            raise CalibrationError("simulating ID windows needs at least 4 trials, aligned")
        count, terms = sizes.pop(), len(columns)
        half = count // 2
        for rows in np.array_split(np.arange(sequences), min(SPLITS, sequences)):
            order = rng.permutation(count)
            nulls, windows = order[:half], order[half:]
            drawn = rng.integers(0, len(windows), size=rows.size * length)
            smallest = np.ones(rows.size * length)
            for column in columns:
                pool = column[windows]
                # Upper rank of each window trial (0 = largest), smoothed within its cell.
                rank = len(pool) - 1 - np.argsort(np.argsort(pool, kind="stable"), kind="stable")
                cell = (rank[drawn] + rng.uniform(0.0, 1.0, size=drawn.size)) / len(pool)
                values = TailNull(pool).isf(cell)
                np.minimum(smallest, TailNull(column[nulls]).p_values(values), out=smallest)
            p[rows] = smallest.reshape(rows.size, length)
    out: Scores = z_scores(sidak(p, terms))
    return out


def calibrate_detector(
    null_values: Mapping[str, npt.ArrayLike] | npt.ArrayLike | None,
    *,
    window: timedelta,
    false_page_interval: timedelta,
    seed: int = 0,
    permutation_trials: int | None = None,
    permutation_terms: int = 1,
    drift: float = DRIFT,
) -> dict[str, Any]:
    """The detector's threshold for ``false_page_interval`` at windows of ``window``, and what
    it achieves (JSON-ready: ``calibration.json["detector"]``). ``null_values``: each score
    term's null at the calibration's window size, aligned by trial (an array: the bound's
    alone); None with ``permutation_trials`` (and ``permutation_terms`` score terms)."""
    started = time.perf_counter()
    columns: Mapping[str, npt.ArrayLike] | None = (
        null_values
        if null_values is None or isinstance(null_values, Mapping)
        else {"bound": null_values}
    )
    window_s, interval_s = window.total_seconds(), false_page_interval.total_seconds()
    if window_s <= 0 or interval_s < window_s:
        raise CalibrationError(
            f"the false-page interval ({false_page_interval}) must be at least one window "
            f"({window})"
        )
    per_interval = interval_s / window_s
    total = min(
        MAX_SIMULATED_WINDOWS,
        max(MIN_SIMULATED_WINDOWS, math.ceil(PAGES_SIMULATED * INTERVAL_MARGIN * per_interval)),
    )
    length = max(64, math.ceil(total / PARALLEL_SEQUENCES))
    rng = np.random.default_rng(seed)
    simulate = partial(
        simulated_id_scores,
        columns,
        PARALLEL_SEQUENCES,
        length,
        permutation_trials=permutation_trials,
        permutation_terms=permutation_terms,
    )
    scores = simulate(rng)

    def threshold_for(windows_per_page: float) -> float:
        """The smallest threshold whose simulated pages come no oftener than this."""

        def quiet_enough(threshold: float) -> bool:
            found = count_pages(Detector.for_threshold(threshold, drift), scores)
            return found.pages * windows_per_page <= found.windows

        low, high = 0.0, 4.0 * SCORE_LIMIT
        if not quiet_enough(high):
            raise CalibrationError(
                f"no detector threshold reaches one false page per {false_page_interval}: the "
                "simulated ID windows score too high; recalibrate with more trials"
            )
        while high - low > 0.01:
            middle = (low + high) / 2.0
            low, high = (low, middle) if quiet_enough(middle) else (middle, high)
        return high

    wanted = INTERVAL_MARGIN * per_interval
    reachable = scores.size / PAGES_SIMULATED  # the longest interval measured to +-10%
    extrapolated = wanted > reachable
    if not extrapolated:
        threshold = threshold_for(wanted)
    else:
        # Too many windows to simulate (short windows, long intervals): the log of the mean
        # run length of a CUSUM grows linearly in its threshold (Siegmund's approximation), so
        # the threshold is extended along the line through two intervals that can be measured.
        logs = np.log([reachable / 16.0, reachable / 4.0, reachable])
        found = [threshold_for(float(np.exp(x))) for x in logs]
        slope, intercept = np.polyfit(logs, found, 1)
        threshold = float(intercept + slope * math.log(wanted))
    detector = Detector.for_threshold(threshold, drift)
    # Measured on fresh windows (another split of the trials, other draws): the threshold was
    # chosen on the first set, whose page count is biased towards the target.
    fresh = simulate(rng)
    achieved = count_pages(detector, fresh)
    ci_low, ci_high = achieved.interval_ci_windows()
    shifted = fresh[:, :64]
    delays = {
        f"{shift:g}": _median(detection_delays(detector, shifted + shift))
        for shift in REFERENCE_SHIFTS
    }
    return {
        "threshold": detector.threshold,
        "clear_level": detector.clear_level,
        "cap": detector.cap,
        "drift": detector.drift,
        "score": "+".join(columns) if columns is not None else f"{permutation_terms} terms",
        "false_page_interval_seconds": interval_s,
        "window_seconds": window_s,
        "achieved_interval_seconds": achieved.interval_windows() * window_s,
        "interval_ci_seconds": [ci_low * window_s, ci_high * window_s],
        "simulated_windows": achieved.windows,
        "pages": achieved.pages,
        "extrapolated": extrapolated,
        "delay_windows": delays,
        "seconds": round(time.perf_counter() - started, 3),
    }


def check_detector(
    calibration: Mapping[str, Any],
    *,
    false_page_interval: timedelta,
    window: timedelta,
    store: str,
) -> None:
    """Refuse a detector calibrated for another false-page interval or window size."""
    found = calibration.get("detector")
    command = f"rerun `mllm-monitor calibrate --reference {store}`"
    if not found:
        raise CalibrationError(
            f"reference store {store!r} has no drift detector calibration (calibrated by an "
            f"older version); {command}"
        )
    wanted = (false_page_interval.total_seconds(), window.total_seconds())
    have = (float(found["false_page_interval_seconds"]), float(found["window_seconds"]))
    if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(wanted, have, strict=True)):
        raise CalibrationError(
            f"reference store {store!r} was calibrated for one false page per "
            f"{_duration(have[0])} at {_duration(have[1])} windows; the settings ask for one per "
            f"{_duration(wanted[0])} at {_duration(wanted[1])} windows: {command}"
        )


def _median(delays: npt.NDArray[np.float64]) -> float | None:
    value = float(np.median(delays))
    return value if math.isfinite(value) else None


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
