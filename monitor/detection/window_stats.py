"""Window statistics and their nulls: the one implementation both calibration and live use.

:class:`WindowStatistics` holds the comparison set (ID records) and computes every term of a
window against it. Calibration pushes pseudo-windows drawn from the pool through the very same
methods, so a live value and its null are computed identically.

Every term's null is keyed by the count of records that actually enter that term (a JSD
depends on how many rows it is computed from, not on the window's record count): ``text``
and ``response`` by the window's records n, ``visual`` by its images, ``output_live`` by its
reference pairs. One calibration trial draws one random order of the
pool; the pseudo-window of size s for text is the first s records of that order, the visual
one the first c records with an image, the output one the first c records with a reference.
Values of one trial therefore come from (nearly) the same records whatever the buckets, which
keeps the terms' dependence, and the bound's null for any (n, images, references) is the bound
of each trial's term values (:func:`monitor.detection.assess.bound_null`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from monitor.errors import CalibrationError
from monitor.estimators.arrays import l2_normalise
from monitor.estimators.calibration import MAX_POOL_FRACTION, minimum_trials, split_reference
from monitor.estimators.emi import UpperBound, emid_upper_bound
from monitor.estimators.knn import kth_neighbour_distance
from monitor.estimators.rjsd import (
    DEFAULT_JSD_MODE,
    EmbeddingSet,
    JSDMode,
    ReferenceJSD,
    representation_jsd,
    set_jsd,
)

if TYPE_CHECKING:
    from monitor.protocols import StoreView
    from monitor.reference.store import ReferenceStore

Rows = npt.NDArray[np.floating[Any]]
Mask = npt.NDArray[np.bool_]

CALIBRATION_FORMAT = "mllm-monitor/calibration@2"
# Terms that get a per-window null and p-value; output_id is one number per comparison set.
TESTED_TERMS: tuple[str, ...] = ("visual", "text", "output_live", "response")
# Which window count keys each tested term's null.
COUNT_OF: dict[str, str] = {
    "visual": "n_images",
    "text": "n",
    "response": "n",
    "output_live": "n_references",
}
DEFAULT_WINDOW_SIZES = (50, 100, 200, 500)
# Smallest image / reference count calibrated: fewer rows give a JSD too noisy to test, and
# such windows get no p-value for that term (nor for the bound that includes it).
MIN_TERM_COUNT = 5
SMALL_COUNTS = (5, 7, 10, 14)
# The live output term (model vs reference answers of the same records) has a narrow null far
# from 0, so the pool's own sampling deviation, shared by all its pseudo-windows, weighs more
# than for the terms against the comparison set: measured (alpha = 0.05, 4-6 calibrations of
# 150-300 fresh windows), 5 to 7 pairs of a 1,000-pair pool (0.5-0.7%) -> 0.049-0.051, 10 of
# 1,000 (1%) -> 0.062, 50 of 4,000 (1.25%) -> 0.084. Reference counts are calibrated up to
# 0.5% of the pool's pairs (a pool of 1,000 pairs for the smallest count, 5); larger counts
# read the largest calibrated count's null, which is conservative.
OUTPUT_POOL_FRACTION = 0.005
# From this count on, a count between two calibrated ones reads a null interpolated between
# them; below it, the smaller count's null (monitor.detection.assess says why).
INTERPOLATE_FROM = 20
# Tests a warning reads: the four tested terms and the OOD fraction (minimum trials: each
# p-value resolved at alpha / WARNING_TESTS; resolve_trials says why).
WARNING_TESTS = len(TESTED_TERMS) + 1


class WindowStatistics:
    """Every term of a window against one comparison set of ID records.

    Rows are L2-normalised float32 arrays; ``reference_pairs`` is (model answers, reference
    answers) of the comparison records that have a reference. ``entropy_scale`` is H of the
    entropy-scaled bound (1.0 unless given: :func:`monitor.estimators.emi.emid_upper_bound`).
    """

    def __init__(
        self,
        *,
        prompts: Rows,
        images: Rows | None = None,
        responses: Rows | None = None,
        reference_pairs: tuple[Rows, Rows] | None = None,
        jsd_mode: JSDMode = DEFAULT_JSD_MODE,
        entropy_scale: float = 1.0,
    ) -> None:
        self.jsd_mode: JSDMode = jsd_mode
        self.entropy_scale = entropy_scale
        self._text = ReferenceJSD(prompts, mode=jsd_mode)
        self._visual = _reference_or_none(images, jsd_mode)
        self._response = _reference_or_none(responses, jsd_mode)
        self.output_id: float | None = None
        if reference_pairs is not None and len(reference_pairs[0]) >= 2:
            self.output_id = representation_jsd(*reference_pairs, mode=jsd_mode)

    @classmethod
    def for_calibration(
        cls, data: IDArrays, calibration: dict[str, Any] | None
    ) -> WindowStatistics:
        """Statistics of the ID data ``data`` (a store's: :func:`store_arrays`) as
        ``calibration`` compares with them: its comparison set and JSD mode; with None, every
        record in the balanced mode (values then have no nulls to be read against)."""
        if calibration is None:
            return cls.from_arrays(data, np.arange(data.n))
        check_calibration(calibration)
        return cls.from_arrays(
            data,
            np.asarray(calibration["comparison"], dtype=np.intp),
            jsd_mode=calibration["jsd_mode"],
            entropy_scale=float(calibration.get("entropy_scale", 1.0)),
        )

    @classmethod
    def from_arrays(
        cls,
        data: IDArrays,
        comparison: npt.NDArray[np.intp],
        *,
        jsd_mode: JSDMode = DEFAULT_JSD_MODE,
        entropy_scale: float = 1.0,
    ) -> WindowStatistics:
        """Statistics against the records ``comparison`` (positions) of ID data by record."""
        images = comparison[data.has_image[comparison]]
        pairs = comparison[data.has_reference[comparison]]
        return cls(
            prompts=data.prompts[comparison],
            images=data.images[images] if data.images is not None and images.size else None,
            responses=data.responses[comparison] if data.responses is not None else None,
            reference_pairs=(
                (data.responses[pairs], data.references[pairs])
                if data.responses is not None and data.references is not None and pairs.size
                else None
            ),
            jsd_mode=jsd_mode,
            entropy_scale=entropy_scale,
        )

    def text(self, prompts: Rows) -> float | None:
        return self._text(prompts, name="window prompts") if len(prompts) else None

    def visual(self, images: Rows | None) -> float | None:
        if self._visual is None or images is None or len(images) < 2:
            return None
        return self._visual(images, name="window images")

    def response(self, responses: Rows | EmbeddingSet | None) -> float | None:
        if self._response is None or responses is None or _count(responses) == 0:
            return None
        return self._response(responses, name="window responses")

    def output_live(self, pairs: tuple[Rows | EmbeddingSet, Rows] | None) -> float | None:
        """JSD of a window's answers against their references (both window sets: large ones
        take the float32-block covariance of :class:`EmbeddingSet`)."""
        if pairs is None or _count(pairs[0]) < 2:
            return None
        answers, references = pairs
        if not isinstance(answers, EmbeddingSet):
            answers = self._window_set(answers, "window answers")
        return set_jsd(
            answers, self._window_set(references, "window references"), mode=self.jsd_mode
        )

    def _window_set(self, rows: Rows, name: str) -> EmbeddingSet:
        # The paper mode takes float64 covariances (set_jsd says why): prepared as such here.
        return EmbeddingSet.checked(rows, name, exact=self.jsd_mode == "paper")

    def bounds(self, values: dict[str, float | None]) -> tuple[UpperBound, UpperBound]:
        """The scale-adjusted and entropy-scaled bounds of a window's terms (mode recorded)."""
        terms = (values["visual"], values["text"], values["output_id"], values["output_live"])
        return (
            emid_upper_bound(*terms, jsd_mode=self.jsd_mode),
            emid_upper_bound(
                *terms,
                form="entropy_scaled",
                entropy_scale=self.entropy_scale,
                jsd_mode=self.jsd_mode,
            ),
        )

    def __call__(
        self,
        *,
        prompts: Rows,
        images: Rows | None,
        responses: Rows | None,
        reference_pairs: tuple[Rows, Rows] | None,
    ) -> dict[str, float | None]:
        """Every term of one window, and both bounds (None where not computable)."""
        live_pairs: tuple[Rows | EmbeddingSet, Rows] | None = reference_pairs
        answers: Rows | EmbeddingSet | None = responses
        if (
            responses is not None
            and len(responses)
            and reference_pairs is not None
            and _same_rows(responses, reference_pairs[0])
        ):
            # Every answer has a reference (the usual window): the response term and the live
            # output term share one covariance and entropy of the answers (at n = 10,000,
            # d = 768, 0.1 s saved for a 5 ms comparison).
            answers = self._window_set(responses, "window responses")
            live_pairs = (answers, reference_pairs[1])
        values: dict[str, float | None] = {
            "visual": self.visual(images),
            "text": self.text(prompts),
            "output_id": self.output_id,
            "output_live": self.output_live(live_pairs),
            "response": self.response(answers),
        }
        scale_adjusted, entropy_scaled = self.bounds(values)
        values["bound_scale_adjusted"] = scale_adjusted.value
        values["bound_entropy_scaled"] = entropy_scaled.value
        return values


class IDArrays:
    """ID embeddings by record: prompts for all, images / references where a record has one.

    ``images`` and ``references`` hold one row per record (rows of records without one are
    never read); build from compact rows with :meth:`from_compact`.
    """

    def __init__(
        self,
        prompts: Rows,
        responses: Rows | None,
        images: Rows | None,
        has_image: Mask,
        references: Rows | None,
        has_reference: Mask,
    ) -> None:
        self.prompts, self.responses = prompts, responses
        self.images, self.references = images, references
        self.has_image = np.asarray(has_image, dtype=bool)
        self.has_reference = np.asarray(has_reference, dtype=bool)
        if len(self.has_image) != len(prompts) or len(self.has_reference) != len(prompts):
            raise CalibrationError("has_image and has_reference need one entry per prompt row")

    @classmethod
    def from_compact(
        cls,
        prompts: Rows,
        *,
        responses: Rows | None = None,
        images: Rows | None = None,
        has_image: Mask | None = None,
        references: Rows | None = None,
        has_reference: Mask | None = None,
    ) -> IDArrays:
        """``images`` / ``references``: rows of the records flagged in the masks, in order."""
        n = len(prompts)
        image_mask = _mask(has_image, images, n, "images")
        reference_mask = _mask(has_reference, references, n, "references")
        return cls(
            prompts,
            responses,
            _spread(images, image_mask),
            image_mask,
            _spread(references, reference_mask),
            reference_mask,
        )

    @property
    def n(self) -> int:
        return len(self.prompts)


def store_arrays(store: StoreView) -> IDArrays:
    def rows(kind: str) -> Rows | None:
        return store.embeddings(kind) if kind in store.kinds else None

    return IDArrays.from_compact(
        store.embeddings("prompt"),
        responses=rows("response"),
        images=rows("image"),
        has_image=store.has_image,
        references=rows("reference"),
        has_reference=store.has_reference,
    )


def calibrate_arrays(
    data: IDArrays,
    *,
    window_sizes: Sequence[int] | None = None,
    trials: int | None = None,
    comparison_fraction: float = 0.5,
    seed: int = 0,
    mode: JSDMode = DEFAULT_JSD_MODE,
    false_alarm_rate: float = 0.01,
    hysteresis: tuple[int, int] = (2, 3),
    max_pool_fraction: float = MAX_POOL_FRACTION,
    entropy_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    holdout_fraction: float = 0.0,
    ood_flags: Mask | None = None,
) -> dict[str, Any]:
    """Null distributions of every tested term, from ID embeddings (no store, no IO).

    ``holdout_fraction`` of the pool is held out of the nulls and recorded (``holdout``).
    ``ood_flags``: each record's own OOD flag (:func:`store_ood_flags`); given, every trial
    records which of its first records (up to the largest window size) are flagged
    (``ood_null``), so the warning's joint test takes the OOD fraction from the same
    pseudo-windows as the terms (:mod:`monitor.detection.joint`).

    ``window_sizes`` None: the default sizes that fit the pool; given sizes that do not fit
    (over ``max_pool_fraction`` of the pool) are refused with a CalibrationError. ``trials``
    None: the minimum the alerting rule needs (:func:`minimum_trials`); fewer are refused.
    Returns the JSON-ready calibration (``calibrate_store`` writes it beside the store).
    """
    n = data.n
    if not 0.0 < comparison_fraction < 1.0:
        raise CalibrationError(f"comparison_fraction must lie in (0, 1), got {comparison_fraction}")
    comparison, pool = split_reference(n, comparison_size(n, comparison_fraction), seed=seed)
    if not 0.0 <= holdout_fraction < 1.0:
        raise CalibrationError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    # Held-out ID records never enter the nulls: the calibration's self-check reads them as
    # live windows (monitor.detection.selfcheck), so its false-alarm rate is measured out of
    # sample. The last records of a seeded order of the pool.
    held = round(holdout_fraction * len(pool))
    holdout = np.sort(np.random.default_rng(seed + 1).permutation(pool)[len(pool) - held :])
    pool = np.setdiff1d(pool, holdout)
    limit = int(max_pool_fraction * len(pool))
    sizes = _record_sizes(window_sizes, limit, n, len(pool), max_pool_fraction)
    trials, needed = resolve_trials(trials, false_alarm_rate, hysteresis, "trials")
    stats = WindowStatistics.from_arrays(
        data, comparison.astype(np.intp), jsd_mode=mode, entropy_scale=entropy_scale
    )
    ladders = {
        "text": sizes,
        "response": sizes if data.responses is not None else [],
        "visual": _count_ladder(sizes, int(max_pool_fraction * data.has_image[pool].sum()))
        if data.images is not None
        else [],
        "output_live": _count_ladder(
            sizes,
            int(min(max_pool_fraction, OUTPUT_POOL_FRACTION) * data.has_reference[pool].sum()),
        )
        if data.references is not None and data.responses is not None
        else [],
    }
    uncalibrated = _uncalibrated(data, pool, ladders, max_pool_fraction)
    if ood_flags is not None and len(ood_flags) != n:
        raise CalibrationError(f"ood_flags: {len(ood_flags)} flags for {n} records")
    ood_records = max(ladders["text"])
    flag_ranks: list[list[int]] = []
    collected: dict[str, dict[int, list[float | None]]] = {
        term: {size: [] for size in ladder} for term, ladder in ladders.items()
    }
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        order = rng.permutation(pool)
        with_image = order[data.has_image[order]]
        with_reference = order[data.has_reference[order]]
        for size in ladders["text"]:
            collected["text"][size].append(stats.text(data.prompts[order[:size]]))
        for size in ladders["response"]:
            assert data.responses is not None
            collected["response"][size].append(stats.response(data.responses[order[:size]]))
        for size in ladders["visual"]:
            assert data.images is not None
            collected["visual"][size].append(stats.visual(data.images[with_image[:size]]))
        for size in ladders["output_live"]:
            assert data.responses is not None and data.references is not None
            rows = with_reference[:size]
            collected["output_live"][size].append(
                stats.output_live((data.responses[rows], data.references[rows]))
            )
        if ood_flags is not None:
            flag_ranks.append(np.flatnonzero(ood_flags[order[:ood_records]]).tolist())
        if progress:
            progress(trial + 1, trials)
    nulls = {
        term: {str(size): values for size, values in by_size.items()}
        for term, by_size in collected.items()
        if by_size
    }
    return {
        "format": CALIBRATION_FORMAT,
        "seed": seed,
        "trials": trials,
        "minimum_trials": needed,
        "false_alarm_rate": false_alarm_rate,
        "hysteresis": f"{hysteresis[0]}/{hysteresis[1]}",
        "window_sizes": sizes,
        "count_buckets": {term: list(ladder) for term, ladder in ladders.items()},
        "uncalibrated": uncalibrated,
        "max_pool_fraction": max_pool_fraction,
        "pool": {
            "records": len(pool),
            "images": int(data.has_image[pool].sum()),
            "references": int(data.has_reference[pool].sum()),
        },
        "jsd_mode": mode,
        "entropy_scale": entropy_scale,
        "comparison": comparison.tolist(),
        "holdout": holdout.tolist(),
        "output_id": stats.output_id,
        "nulls": nulls,
        "ood_null": (
            {"records": ood_records, "flag_ranks": flag_ranks} if ood_flags is not None else None
        ),
    }


def store_ood_flags(store: ReferenceStore) -> Mask | None:
    """Each record's own OOD flag as the store's threshold was set: its query row scored
    leave-one-out (its own match dropped) against the store's query index; None for a store
    without a query index or OOD threshold."""
    ood = store.ood
    if "query" not in store.kinds or not ood or ood.get("threshold") is None:
        return None
    rows = l2_normalise(store.embeddings("query"))
    k = int(ood["k"])
    index = store.index("query")
    if int(index.ntotal) < k + 1:
        return None
    sims, ids = index.search(np.ascontiguousarray(rows, dtype=np.float32), k + 1)
    own = ids == np.arange(len(rows))[:, None]
    # Drop each row's own match (or the last neighbour, when an exact duplicate displaced it).
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(k + 1) < k)
    scores = kth_neighbour_distance(sims[keep].reshape(len(rows), k), k)
    flags: Mask = scores > float(ood["threshold"])
    return flags


def comparison_size(n: int, comparison_fraction: float) -> int:
    """How many of n ID records the pseudo-window calibration compares with (the rest are its
    pool)."""
    return min(n - 1, max(1, round(n * comparison_fraction)))


def resolve_trials(
    trials: int | None, false_alarm_rate: float, hysteresis: tuple[int, int], what: str
) -> tuple[int, int]:
    """(trials, the minimum the warning rule needs): None takes the minimum, fewer are refused.
    ``what`` names them in the error (trials, permutations).

    The minimum lets each of the WARNING_TESTS p-values reach alpha / WARNING_TESTS. A
    permutation calibration's warning is Bonferroni at that level. The pseudo-window warning's
    joint test is valid from (B + 1) alpha > 1 on (:mod:`monitor.detection.joint`), but its
    level lies between alpha / tests (independent terms) and alpha (identical ones), so the
    terms' p-values still need that resolution for it to fire when they are weakly dependent.
    """
    needed = minimum_trials(false_alarm_rate, WARNING_TESTS, hysteresis)
    trials = needed if trials is None else trials
    if trials < needed:
        raise CalibrationError(
            f"{trials} {what} cannot resolve the warning rule: {WARNING_TESTS} tests at a "
            f"false-alarm rate of {false_alarm_rate} need p-values below "
            f"{false_alarm_rate / WARNING_TESTS:.4g}, so they need at least {needed} {what}"
        )
    return trials, needed


def _uncalibrated(
    data: IDArrays,
    pool: npt.NDArray[np.integer[Any]],
    ladders: dict[str, list[int]],
    max_pool_fraction: float,
) -> dict[str, str]:
    """Why a term the store has data for got no null (too few pool rows for its smallest count)."""
    have = {
        "visual": (data.images is not None, int(data.has_image[pool].sum()), max_pool_fraction),
        "output_live": (
            data.references is not None and data.responses is not None,
            int(data.has_reference[pool].sum()),
            min(max_pool_fraction, OUTPUT_POOL_FRACTION),
        ),
    }
    reasons = {}
    for term, (present, rows, fraction) in have.items():
        if present and not ladders[term]:
            reasons[term] = (
                f"the pool has {rows} rows for it; its smallest count, {MIN_TERM_COUNT}, needs "
                f"{math.ceil(MIN_TERM_COUNT / fraction)}: windows get no p-value for this term "
                "nor for a bound that includes it"
            )
    return reasons


def check_calibration(calibration: dict[str, Any]) -> None:
    """Refuse a calibration written by an older version (its nulls are keyed differently)."""
    if calibration.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(
            "the store's calibration was written by an older version of mllm-monitor (its nulls "
            "are keyed by window size only); rerun `mllm-monitor calibrate`"
        )


def _record_sizes(
    requested: Sequence[int] | None, limit: int, n: int, pool: int, fraction: float
) -> list[int]:
    why = (
        f"{n} ID records leave a pool of {pool}, and a pseudo-window may hold at most "
        f"{fraction:g} of its pool ({limit} records) for the null to keep the false-alarm rate"
    )
    if requested is None:
        fitting = [s for s in DEFAULT_WINDOW_SIZES if s <= limit]
        if not fitting:
            fitting = [limit] if limit >= MIN_TERM_COUNT else []
        if not fitting:
            raise CalibrationError(f"{why}: too few ID records to calibrate; add ID records")
        return fitting
    sizes = sorted(set(int(s) for s in requested))
    if not sizes or sizes[0] < 2:
        raise CalibrationError(f"window sizes must be at least 2, got {list(requested)}")
    too_large = [s for s in sizes if s > limit]
    if too_large:
        raise CalibrationError(
            f"window sizes {too_large} do not fit: {why}; calibrate sizes up to {limit}, or "
            "add ID records"
        )
    return sizes


def _count_ladder(sizes: Sequence[int], limit: int) -> list[int]:
    """Image / reference count buckets: 5, 7, 10, 14, then doubling from 20, plus the window
    sizes. Between small counts a window reads the smaller count's null (conservative; see
    :mod:`monitor.detection.assess`), so they are spaced by sqrt(2) to lose little power."""
    ladder = set(sizes) | set(SMALL_COUNTS)
    count = INTERPOLATE_FROM
    while count < max(sizes):
        ladder.add(count)
        count *= 2
    return sorted(c for c in ladder if MIN_TERM_COUNT <= c <= min(limit, max(sizes)))


def _count(rows: Rows | EmbeddingSet) -> int:
    return rows.n if isinstance(rows, EmbeddingSet) else len(rows)


def _same_rows(a: Rows, b: Rows) -> bool:
    return a is b or (a.shape == b.shape and bool(np.array_equal(a, b)))


def _reference_or_none(rows: Rows | None, mode: JSDMode) -> ReferenceJSD | None:
    return ReferenceJSD(rows, mode=mode) if rows is not None and len(rows) else None


def _mask(mask: Mask | None, rows: Rows | None, n: int, name: str) -> Mask:
    if mask is None:
        return np.full(n, rows is not None, dtype=bool)
    out = np.asarray(mask, dtype=bool)
    if rows is not None and int(out.sum()) != len(rows):
        raise CalibrationError(f"{name}: {len(rows)} rows for {int(out.sum())} flagged records")
    return out


def _spread(rows: Rows | None, mask: Mask) -> Rows | None:
    if rows is None:
        return None
    if len(rows) == len(mask):
        return rows
    full = np.zeros((len(mask), rows.shape[1]), dtype=rows.dtype)
    full[mask] = rows
    return full
