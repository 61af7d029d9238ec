"""Per-window permutation nulls: a valid test for ID sets too small to calibrate.

Pseudo-window calibration (:mod:`monitor.detection.window_stats`) needs a pool about 20 times
the window (``MAX_POOL_FRACTION``), which a store of a few hundred records does not have. A
permutation test needs no pool: the window's and the comparison's records are pooled and split
at random into sets of their sizes, ``trials`` times, every term and the bound computed on each
split as on the window. Under the null hypothesis (the window is exchangeable with the ID
records) the window is one random split among them, so

    p = (1 + #{splits with a value >= the window's}) / (1 + trials)

is valid at any size, and one set of splits serves every term and the bound (their dependence
kept). A quiet term stops once EXCEEDANCES splits have reached its value (Besag and Clifford's
sequential p-value, Biometrika 78, 1991; about 20 splits at p = 0.5) and then has no threshold,
only its p-value. A split whose window side lacks rows a term needs counts as at least as
extreme as the window (conservative).

What a user must know: valid on average is not exact per store. The comparison records are one
draw of the ID distribution, shared by every window, so one store's false-alarm rate varies
around the configured one, the more the closer windows come to the comparison's size (figures:
benchmarks/README.md). A window is therefore tested on at most ``max_window_fraction`` (default
5%) of the comparison's size, a seeded subset of its records; ``calibrate --window-fraction``
trades that per-store control for power. Each window costs three eigendecompositions per term
and split, so ``calibrate`` picks this method only when no default window size fits the pool,
with the comparison capped at ``MAX_COMPARISON`` records and the window at ``MAX_WINDOW``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.detection.window_stats import (
    CALIBRATION_FORMAT,
    MIN_TERM_COUNT,
    IDArrays,
    WindowStatistics,
    resolve_trials,
)
from monitor.errors import CalibrationError
from monitor.estimators.calibration import MAX_POOL_FRACTION
from monitor.estimators.emi import emid_upper_bound
from monitor.estimators.rjsd import (
    DEFAULT_JSD_MODE,
    EmbeddingSet,
    JSDMode,
    representation_jsd,
    set_jsd,
    von_neumann_entropy,
)
from monitor.records import EMBEDDING_KINDS

Rows = npt.NDArray[np.floating[Any]]
Mask = npt.NDArray[np.bool_]

PERMUTATION = "permutation"
PSEUDO_WINDOWS = "pseudo-windows"
CALIBRATION_METHODS = (PSEUDO_WINDOWS, PERMUTATION)
MAX_COMPARISON = 1_000
MAX_WINDOW = 1_000
# Splits at least as large as the window that settle a term (Besag and Clifford's h).
EXCEEDANCES = 10
# Terms of the scale-adjusted bound computed per split (output_id from the split's other side).
BOUND_TERMS = {"visual", "text", "output_live"}
# Fewest window-side rows a term is computed from, as WindowStatistics computes it live.
MIN_ROWS = {"visual": 2}
# Which embedding kind each two-sample term compares.
KIND_OF = {"text": "prompt", "visual": "image", "response": "response"}


def calibration_method(calibration: Mapping[str, Any] | None) -> str | None:
    """The method a calibration was made with (calibrations before permutations had none)."""
    if calibration is None:
        return None
    return str(calibration.get("method", PSEUDO_WINDOWS))


def permutation_calibration(
    data: IDArrays,
    *,
    trials: int | None = None,
    seed: int = 0,
    mode: JSDMode = DEFAULT_JSD_MODE,
    false_alarm_rate: float = 0.01,
    hysteresis: tuple[int, int] = (2, 3),
    entropy_scale: float = 1.0,
    max_window_fraction: float = MAX_POOL_FRACTION,
) -> dict[str, Any]:
    """A calibration whose nulls are drawn per window by permutation (no IO).

    It fixes what every window is tested against: the comparison records (all of them, or a
    seeded subset of MAX_COMPARISON), the JSD mode, the number of splits (None: the minimum
    the warning rule needs, as for pseudo-windows; fewer are refused) and the most window
    records a test takes (``max_window_fraction`` of the comparison, at least MIN_TERM_COUNT,
    at most MAX_WINDOW: the module docstring says why).
    """
    if data.n < 2:
        raise CalibrationError(f"{data.n} ID records: a permutation test needs at least 2")
    if not 0.0 < max_window_fraction <= 1.0:
        raise CalibrationError(f"the window fraction must lie in (0, 1], got {max_window_fraction}")
    trials, needed = resolve_trials(trials, false_alarm_rate, hysteresis, "permutations")
    comparison = np.arange(data.n)
    if data.n > MAX_COMPARISON:
        rng = np.random.default_rng(seed)
        comparison = np.sort(rng.choice(data.n, size=MAX_COMPARISON, replace=False))
    stats = WindowStatistics.from_arrays(
        data, comparison.astype(np.intp), jsd_mode=mode, entropy_scale=entropy_scale
    )
    return {
        "format": CALIBRATION_FORMAT,
        "method": PERMUTATION,
        "seed": seed,
        "trials": trials,
        "minimum_trials": needed,
        "false_alarm_rate": false_alarm_rate,
        "hysteresis": f"{hysteresis[0]}/{hysteresis[1]}",
        "window_sizes": [],
        "count_buckets": {},
        "uncalibrated": {},
        "max_window_fraction": max_window_fraction,
        "max_window_records": min(
            MAX_WINDOW, max(MIN_TERM_COUNT, int(max_window_fraction * len(comparison)))
        ),
        "jsd_mode": mode,
        "entropy_scale": entropy_scale,
        "comparison": comparison.tolist(),
        "output_id": stats.output_id,
        "nulls": {},
    }


@dataclass(frozen=True)
class StoppedNull:
    """A term's permutation null stopped after ``splits`` splits, when ``exceedances`` of them
    had reached the window's value: the sequential p-value of Besag and Clifford (1991),
    exceedances / splits, valid like the full one. Only that p-value is known (the threshold is
    None): the splits stop long before the tail a threshold would need."""

    splits: int
    exceedances: int

    @property
    def trials(self) -> int:
        return self.splits

    def p_value(self, observed: float) -> float:
        """The p-value of the value the null was drawn for (``observed`` is that value)."""
        return self.exceedances / self.splits

    def threshold(self, alpha: float) -> float | None:
        return None


@dataclass(frozen=True)
class SplitNull:
    """A term's null over every split: the finite split values, and the ``unusable`` splits
    that could not compute the term, which count as at least as extreme as any window."""

    values: npt.NDArray[np.float64]  # sorted ascending
    unusable: int = 0

    @classmethod
    def of(cls, collected: Sequence[float]) -> SplitNull:
        values = np.asarray(collected, dtype=np.float64)
        finite = np.isfinite(values)
        return cls(np.sort(values[finite]), int((~finite).sum()))

    @property
    def trials(self) -> int:
        return len(self.values) + self.unusable

    def p_value(self, observed: float) -> float:
        """(1 + #{splits >= observed}) / (1 + trials), unusable splits included."""
        at_least = len(self.values) - int(np.searchsorted(self.values, observed, side="left"))
        return (1 + at_least + self.unusable) / (1 + self.trials)

    def threshold(self, alpha: float) -> float | None:
        """The t with ``observed > t`` exactly when ``p_value(observed) < alpha``; None when
        no value can reach alpha (too few splits, or too many unusable ones)."""
        # Most finite splits >= observed that keep (1 + k + unusable) / (1 + trials) < alpha.
        k_max = math.ceil(alpha * (1 + self.trials)) - 2 - self.unusable
        if k_max < 0 or not len(self.values):
            return None
        k_max = min(k_max, len(self.values) - 1)
        return float(self.values[len(self.values) - 1 - k_max])


class PermutationTest:
    """Permutation nulls of a window's terms and bound against one comparison set."""

    def __init__(
        self, data: IDArrays, comparison: Sequence[int] | npt.NDArray[np.intp], mode: JSDMode
    ) -> None:
        rows = np.asarray(comparison, dtype=np.intp)
        self.mode: JSDMode = mode
        self.size = len(rows)
        self.rows: dict[str, Rows | None] = {
            "prompt": data.prompts[rows],
            "image": data.images[rows] if data.images is not None else None,
            "response": data.responses[rows] if data.responses is not None else None,
            "reference": data.references[rows] if data.references is not None else None,
        }
        self.present: dict[str, Mask] = {
            "prompt": np.ones(len(rows), dtype=bool),
            "image": data.has_image[rows],
            "response": np.full(len(rows), data.responses is not None),
            "reference": data.has_reference[rows],
        }

    def nulls(
        self,
        window_rows: Mapping[str, Rows | None],
        window_present: Mapping[str, Mask],
        observed: Mapping[str, float | None],
        *,
        trials: int,
        seed: int,
    ) -> dict[str, SplitNull | StoppedNull]:
        """Nulls of every term ``observed`` has a value for, and of the scale-adjusted bound
        (``bound``): a term stops early (:class:`StoppedNull`) once EXCEEDANCES splits reach
        its value, else it runs all ``trials`` splits (a :class:`SplitNull`).

        ``window_rows`` / ``window_present``: per kind (prompt, image, response, reference),
        one row per window record (zeros where absent) and which records have it.
        """
        n = len(window_present["prompt"])
        union = {kind: self._union(kind, window_rows, window_present) for kind in EMBEDDING_KINDS}
        splitters = {
            term: _SplitJSD(union[kind][0][union[kind][1]], self.mode, MIN_ROWS.get(term, 1))
            for term, kind in KIND_OF.items()
            if observed.get(term) is not None and union[kind][0] is not None
        }
        pair = union["response"][1] & union["reference"][1]
        answers = union["response"][0][pair] if pair.any() else None
        references = union["reference"][0][pair] if pair.any() else None
        tested = [*splitters, "output_live" if answers is not None else "", "bound"]
        key = {"bound": "bound_scale_adjusted"}
        targets: dict[str, float] = {
            term: float(value)
            for term in tested
            if term and (value := observed.get(key.get(term, term))) is not None
        }
        # The comparison side's own output term changes with the split too.
        id_tested = observed.get("output_id") is not None and answers is not None
        collected: dict[str, list[float]] = {term: [] for term in targets}
        exceeded = dict.fromkeys(targets, 0)
        stopped: dict[str, StoppedNull] = {}
        rng = np.random.default_rng(seed)
        total = n + self.size
        for done in range(1, trials + 1):
            active = [term for term in targets if term not in stopped]
            if not active:
                break
            needed = set(active) | (BOUND_TERMS if "bound" in active else set())
            in_window = np.zeros(total, dtype=bool)
            in_window[rng.choice(total, size=n, replace=False)] = True
            split: dict[str, float | None] = {
                term: splitter(in_window[union[KIND_OF[term]][1]])
                for term, splitter in splitters.items()
                if term in needed
            }
            output_id = observed.get("output_id")
            if answers is not None and references is not None:
                side = in_window[pair]
                if "output_live" in needed and "output_live" in targets:
                    split["output_live"] = _paired_jsd(answers, references, side, self.mode)
                if id_tested and "bound" in active:
                    output_id = _paired_jsd(answers, references, ~side, self.mode)
            for term in active:
                value = _bound(split, output_id, observed) if term == "bound" else split[term]
                value = np.inf if value is None else value
                collected[term].append(value)
                exceeded[term] += value >= targets[term]
                if exceeded[term] >= EXCEEDANCES and done < trials:
                    stopped[term] = StoppedNull(done, exceeded[term])
        return {
            term: stopped.get(term) or SplitNull.of(values) for term, values in collected.items()
        }

    def _union(
        self, kind: str, window_rows: Mapping[str, Rows | None], window_present: Mapping[str, Mask]
    ) -> tuple[Any, Mask]:
        """(window rows over comparison rows, float64; which have ``kind``); rows None when
        neither side has the kind."""
        own, theirs = window_rows.get(kind), self.rows[kind]
        n = len(window_present["prompt"])
        mask = np.concatenate(
            [
                window_present[kind] if own is not None else np.zeros(n, dtype=bool),
                self.present[kind] if theirs is not None else np.zeros(self.size, dtype=bool),
            ]
        )
        if own is None and theirs is None:
            return None, mask
        width = (own if own is not None else theirs).shape[1]  # type: ignore[union-attr]
        blocks = [
            own if own is not None else np.zeros((n, width)),
            theirs if theirs is not None else np.zeros((self.size, width)),
        ]
        return np.vstack(blocks).astype(np.float64), mask


class _SplitJSD:
    """JSD between the two sides of a split of one set of unit rows, as
    :func:`~monitor.estimators.rjsd.set_jsd` computes it for live windows: fewer rows than
    the dimension take sub-blocks of the rows' one Gram matrix (same spectra); otherwise the
    sides are sets of their own, one side's covariance the whole's minus the other's."""

    def __init__(self, rows: Rows, mode: JSDMode, minimum: int = 1) -> None:
        self.rows, self.mode, self.minimum = rows, mode, minimum
        k, dim = rows.shape
        self.squared = np.einsum("ij,ij->i", rows, rows)
        self.gram = rows @ rows.T if k < dim else None
        self.cov = rows.T @ rows if self.gram is None else None

    def __call__(self, side: Mask) -> float | None:
        a, b = np.flatnonzero(side), np.flatnonzero(~side)
        if len(a) < self.minimum or len(b) == 0:
            return None
        if self.gram is None:
            assert self.cov is not None
            side_a = EmbeddingSet(self.rows[a], exact=True)
            side_b = EmbeddingSet(self.rows[b], exact=True, cov=self.cov - side_a.cov)
            return set_jsd(side_a, side_b, mode=self.mode)
        w_a, w_b = (
            (1.0, 1.0)
            if self.mode == "paper"
            else (1.0 / self.squared[a].sum(), 1.0 / self.squared[b].sum())
        )
        scale = np.sqrt(np.where(side, w_a, w_b))
        h_mix = von_neumann_entropy(self.gram * np.outer(scale, scale))
        h_a = von_neumann_entropy(self.gram[np.ix_(a, a)])
        h_b = von_neumann_entropy(self.gram[np.ix_(b, b)])
        return max(h_mix - 0.5 * (h_a + h_b), 0.0)


def _paired_jsd(answers: Rows, references: Rows, side: Mask, mode: JSDMode) -> float | None:
    if int(side.sum()) < 2:
        return None
    return representation_jsd(answers[side], references[side], mode=mode)


def _bound(
    split: Mapping[str, float | None],
    output_id: float | None,
    observed: Mapping[str, float | None],
) -> float:
    """The split's scale-adjusted bound over the terms present in the window's bound; a term
    the split could not compute makes it infinite (conservative, as in the module docstring)."""
    terms: list[float | None] = []
    for term in ("visual", "text", "output_id", "output_live"):
        if observed.get(term) is None:
            terms.append(None)
            continue
        value = output_id if term == "output_id" else split.get(term)
        if value is None:
            return float(np.inf)
        terms.append(value)
    bound = emid_upper_bound(*terms).value
    return float(np.inf) if bound is None else bound
