"""Does the rate cap bias a window, and would weighting the window's terms repair it?

    python benchmarks/bench_sampling_weights.py [--windows 200] [--own-null-windows 30] [--seed 0]

One stream's traffic, second by second: quiet at 2 records/s, and one burst of 6 s at 50
records/s in every 30 s window; in the shifted scenarios 20% or 5% of burst records are MME
(none in quiet periods), in the control none are. The product's own ``TokenBucket`` (a cap of 5
records/s, burst as the ingest service builds it) runs on a virtual clock over the whole
stream, one ``take(1)`` per arrival. Windows are 30 s so that their records fit the held-out
MMBench records (5-minute windows at these rates hold 780 kept of 3,480 records: the same
shares, ten times the counts).

Records: real LLaVA-v1.5-13b MMBench and MME prompts and answers embedded by MiniLM
(pager_data.py). 3,000 MMBench records are the ID reference, calibrated with
``calibrate_arrays`` (comparison fraction 0.3, windows of 20 to 100 records, false-alarm rate
0.01); ID traffic is drawn from the other 1,377.

Each window is read these ways, by the product's ``WindowStatistics`` terms and
``assess_window`` p-values, and scored by ``detector_score``:

- uniform: a uniform random subset of all its traffic, as many records as the cap kept (what
  an unbiased sample of that size would show);
- capped: the records the cap kept, unweighted (what the product computes today);
- weighted: the kept records weighted by arrived / kept in their second (the weight an
  arrival-rate-aware cap would record), as weighted second moments (the terms' covariance
  sum_i w_i x_i x_i^T; the JSD normalises the trace, so the weights' scale does not matter),
  read against the null at the weights' effective size (sum w)^2 / sum w^2 and, naively, at
  the kept count;
- weighted, own null: the same weighted terms against nulls drawn for the window itself (200
  pseudo-windows of the calibration pool's records carrying the window's weights; the first
  ``--own-null-windows`` windows only, as it costs 400 JSDs a window);
- resampled: as many draws from the kept records as were kept, with probability
  proportional to the weight (importance resampling, duplicates included), unweighted.

Prints the shares of MME records and a table per scenario: median p-values of the text and
answer terms, mean detector score, and the share of windows scoring past z = 2.33 (a
one-window p below 0.01). Writes nothing but the embedding cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pager_data import TextRows, load_sources  # noqa: E402

from monitor.detection import (  # noqa: E402
    IDArrays,
    WindowStatistics,
    assess_window,
    calibrate_arrays,
)
from monitor.detection.assess import tail_null  # noqa: E402
from monitor.detection.detector import detector_score  # noqa: E402
from monitor.estimators.rjsd import EmbeddingSet, ReferenceJSD  # noqa: E402
from monitor.ingest.sampling import TokenBucket  # noqa: E402

WINDOW_S = 30
BURST_S = 6
QUIET_RATE = 2.0
BURST_RATE = 50.0
CAP = 5.0
BURST_SHIFTS = (0.20, 0.05)
REFERENCE = 3_000
ALPHA = 0.01
SIZES = [20, 30, 40, 60, 80, 100]
Z_LEVEL = 2.33  # z of a one-window p of 0.01
OWN_NULL_TRIALS = 200

Rows = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]
Values = dict[str, float | None]


@dataclass
class Window:
    """One window's traffic: the source of each arrival, and which the cap kept, with weights."""

    shifted: npt.NDArray[np.bool_]  # per arrival: an MME record
    kept: npt.NDArray[np.bool_]  # per arrival: granted by the bucket
    weights: Floats  # per kept record: arrived / kept in its second


@dataclass
class Reading:
    """A variant's results over windows."""

    n: list[float] = field(default_factory=list)
    share: list[float] = field(default_factory=list)
    text_p: list[float] = field(default_factory=list)
    response_p: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)


class Traffic:
    """The stream's arrivals through one token bucket on a virtual clock."""

    def __init__(self, rng: np.random.Generator, shift: float) -> None:
        self.rng, self.shift = rng, shift
        self.now = 0.0
        self.bucket = TokenBucket(CAP, clock=lambda: self.now)

    def window(self, start: float) -> Window:
        burst_from = int(self.rng.integers(0, WINDOW_S - BURST_S + 1))
        shifted: list[npt.NDArray[np.bool_]] = []
        kept: list[npt.NDArray[np.bool_]] = []
        weights: list[Floats] = []
        for second in range(WINDOW_S):
            in_burst = burst_from <= second < burst_from + BURST_S
            count = int(self.rng.poisson(BURST_RATE if in_burst else QUIET_RATE))
            times = start + second + np.sort(self.rng.random(count))
            granted = np.zeros(count, dtype=bool)
            for i, at in enumerate(times.tolist()):
                self.now = at
                granted[i] = self.bucket.take(1) == 1
            share = self.shift if in_burst else 0.0
            shifted.append(self.rng.random(count) < share)
            kept.append(granted)
            if granted.any():
                weights.append(np.full(int(granted.sum()), count / granted.sum()))
        return Window(np.concatenate(shifted), np.concatenate(kept), np.concatenate(weights))


class Reader:
    """The product's terms, p-values and score of windows against one calibrated reference."""

    def __init__(self, mmbench: TextRows, seed: int) -> None:
        order = np.random.default_rng(seed).permutation(mmbench.n)
        reference = order[:REFERENCE]
        self.held_out = np.sort(order[REFERENCE:])
        data = IDArrays.from_compact(
            mmbench.prompts[reference], responses=mmbench.responses[reference]
        )
        start = time.perf_counter()
        self.calibration: dict[str, Any] = calibrate_arrays(
            data, window_sizes=SIZES, comparison_fraction=0.3, seed=seed, false_alarm_rate=ALPHA
        )
        self.calibrate_s = time.perf_counter() - start
        self.data = data
        self.stats = WindowStatistics.for_calibration(data, self.calibration)
        comparison = np.asarray(self.calibration["comparison"], dtype=np.intp)
        self.pool = np.setdiff1d(np.arange(data.n), comparison)
        # The text term's comparison, as WindowStatistics holds it: its text() takes rows only,
        # and a weighted window is a prepared set.
        self.text_jsd = ReferenceJSD(data.prompts[comparison], mode=self.calibration["jsd_mode"])

    def values(self, prompts: Rows, responses: Rows, weights: Floats | None = None) -> Values:
        if weights is None:
            return self.stats(
                prompts=prompts, images=None, responses=responses, reference_pairs=None
            )
        values: Values = {
            "visual": None,
            "text": self.text_jsd(weighted_set(prompts, weights, "window prompts")),
            "output_id": None,
            "output_live": None,
            "response": self.stats.response(weighted_set(responses, weights, "window answers")),
        }
        values["bound_scale_adjusted"] = self.stats.bounds(values)[0].value
        return values

    def own_null_read(
        self, into: Reading, values: Values, weights: Floats, share: float, seed: int
    ) -> None:
        """p-values against nulls drawn for this window's weights: OWN_NULL_TRIALS pseudo-windows
        of len(weights) pool records, each weighted as the window is (tail p-values as
        assess_window reads the calibration's nulls)."""
        rng = np.random.default_rng(seed)
        null: dict[str, list[float]] = {"text": [], "response": [], "bound_scale_adjusted": []}
        responses = self.data.responses
        assert responses is not None
        for _ in range(OWN_NULL_TRIALS):
            rows = rng.choice(self.pool, len(weights), replace=False)
            trial = self.values(self.data.prompts[rows], responses[rows], weights)
            for term, found in null.items():
                value = trial[term]
                assert value is not None
                found.append(value)
        p = {term: tail_null(np.asarray(null[term])).p_value(_known(values[term])) for term in null}
        into.n.append(len(weights))
        into.share.append(share)
        into.text_p.append(p["text"])
        into.response_p.append(p["response"])
        score = detector_score({"bound": p["bound_scale_adjusted"], "response": p["response"]})
        assert score is not None
        into.score.append(score)

    def read(self, into: Reading, values: Values, n: int, share: float) -> None:
        found = assess_window(
            self.calibration,
            values,
            n=n,
            n_images=0,
            n_references=0,
            ood_fraction=None,
            alpha=ALPHA,
        )
        score = detector_score(found.score_p_values)
        text_p, response_p = found.p_values.get("text"), found.response_tail_p_value
        assert score is not None and text_p is not None and response_p is not None
        into.n.append(n)
        into.share.append(share)
        into.text_p.append(text_p)
        into.response_p.append(response_p)
        into.score.append(score)


def _known(value: float | None) -> float:
    assert value is not None
    return value


def weighted_set(rows: Rows, weights: Floats, name: str) -> EmbeddingSet:
    """Rows scaled by sqrt(w / mean w): their second moment is sum_i w_i x_i x_i^T (scaled)."""
    checked = EmbeddingSet.checked(rows, name)
    scale = np.sqrt(weights / weights.mean())[:, None]
    return EmbeddingSet(checked.rows * scale, exact=True, name=name)


VARIANTS = (
    "uniform",
    "capped",
    "weighted at n_eff",
    "weighted at n",
    "weighted, own null",
    "resampled",
)


def run_scenario(
    reader: Reader,
    sources: dict[str, TextRows],
    shift: float,
    windows: int,
    own_null_windows: int,
    seed: int,
) -> tuple[dict[str, Reading], dict[str, float]]:
    rng = np.random.default_rng(seed)
    traffic = Traffic(rng, shift)
    mmbench, mme = sources["mmbench"], sources["mme"]
    readings = {name: Reading() for name in VARIANTS}
    shares = {"all": 0.0, "kept": 0.0, "weighted": 0.0, "arrived": 0.0, "n_kept": 0.0}
    for w in range(windows):
        window = traffic.window(float(w * WINDOW_S))
        count = len(window.shifted)
        # Each arrival's record: held-out MMBench ones without repeats, MME ones likewise.
        ids = rng.choice(reader.held_out, count, replace=False)
        mme_ids = rng.choice(mme.n, count, replace=False)
        prompts = np.where(window.shifted[:, None], mme.prompts[mme_ids], mmbench.prompts[ids])
        answers = np.where(window.shifted[:, None], mme.responses[mme_ids], mmbench.responses[ids])
        kept = np.flatnonzero(window.kept)
        n = len(kept)
        kept_shift = window.shifted[kept]
        shares["all"] += window.shifted.mean() / windows
        shares["kept"] += kept_shift.mean() / windows
        weights = window.weights
        shares["weighted"] += float((weights * kept_shift).sum() / weights.sum()) / windows
        shares["arrived"] += count / windows
        shares["n_kept"] += n / windows

        uniform = np.sort(rng.choice(count, n, replace=False))
        reader.read(
            readings["uniform"],
            reader.values(prompts[uniform], answers[uniform]),
            n,
            float(window.shifted[uniform].mean()),
        )
        capped = reader.values(prompts[kept], answers[kept])
        reader.read(readings["capped"], capped, n, float(kept_shift.mean()))
        if w == 0:
            check_equal_weights(reader, prompts[kept], answers[kept], capped)
        weighted = reader.values(prompts[kept], answers[kept], weights)
        share = float((weights * kept_shift).sum() / weights.sum())
        n_eff = round(weights.sum() ** 2 / (weights**2).sum())
        reader.read(readings["weighted at n_eff"], weighted, n_eff, share)
        reader.read(readings["weighted at n"], weighted, n, share)
        if w < own_null_windows:
            reader.own_null_read(readings["weighted, own null"], weighted, weights, share, w)
        drawn = kept[rng.choice(n, n, replace=True, p=weights / weights.sum())]
        reader.read(
            readings["resampled"],
            reader.values(prompts[drawn], answers[drawn]),
            n,
            float(window.shifted[drawn].mean()),
        )
    return readings, shares


def check_equal_weights(reader: Reader, prompts: Rows, answers: Rows, plain: Values) -> None:
    """A constant weight (the sampling weight 1 / sample_rate) leaves every term unchanged."""
    constant = reader.values(prompts, answers, np.full(len(prompts), 10.0))
    for term in ("text", "response", "bound_scale_adjusted"):
        a, b = plain[term], constant[term]
        assert a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), 1e-12), (
            term,
            a,
            b,
        )


def print_table(title: str, readings: dict[str, Reading]) -> None:
    print(f"\n{title}")
    print(
        f"{'variant':<20}{'n':>7}{'MME share':>11}{'median p text':>15}"
        f"{'median p answers':>18}{'mean score':>12}{'score > 2.33':>14}"
    )
    for name, r in readings.items():
        score = np.asarray(r.score)
        print(
            f"{name:<20}{np.mean(r.n):>7.1f}{np.mean(r.share):>11.3f}"
            f"{np.median(r.text_p):>15.2e}{np.median(r.response_p):>18.2e}"
            f"{score.mean():>12.2f}{np.mean(score > Z_LEVEL):>14.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--own-null-windows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with threadpool_limits(1):
        sources = load_sources()
        reader = Reader(sources["mmbench"], args.seed)
        print(
            f"calibrated {REFERENCE} MMBench records, windows {SIZES}, "
            f"{reader.calibration['trials']} trials: {reader.calibrate_s:.0f} s"
        )
        scenarios = [
            (f"shifted: {share:.0%} of burst records from MME", share) for share in BURST_SHIFTS
        ]
        for i, (title, shift) in enumerate([*scenarios, ("control: no MME records", 0.0)]):
            seed = args.seed + 1 + i
            start = time.perf_counter()
            readings, shares = run_scenario(
                reader, sources, shift, args.windows, args.own_null_windows, seed
            )
            print(
                f"\n{title}: {args.windows} windows of {WINDOW_S} s, "
                f"{shares['arrived']:.0f} records arrived and {shares['n_kept']:.1f} kept "
                f"a window; MME share of all traffic {shares['all']:.3f}, of kept records "
                f"{shares['kept']:.3f}, weighted by arrived / kept {shares['weighted']:.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
            print_table(title, readings)


if __name__ == "__main__":
    main()
