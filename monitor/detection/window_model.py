"""What a window is judged by, and the one place that judges it: the stream's model.

    StreamModel(stream, store, settings).estimate(WindowData) -> Estimate   (pure: no IO)
    judge_window(estimate, detector=..., before=..., previous=..., policy=...) -> Verdict

:class:`StreamModel` holds everything a stream's windows are computed against, built once from
its reference store: the window statistics against the calibration's comparison set (so live
values and their nulls are computed alike), the permutation test of a store calibrated that way,
the drift detector, the OOD threshold and the CLUB estimator. :meth:`StreamModel.estimate`
computes a window's terms, EMI / EMID and its assessment (p-values, thresholds, the warning, the
bound and the score's p-values); :func:`judge_window` steps the detector and applies the risk
rule. The pipeline (live and backfill) and ``windows explain`` both go through these two, so a
window's verdict is decided in one place.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor import __version__
from monitor.config import Settings, StreamSettings
from monitor.detection.assess import WindowAssessment, assess_window
from monitor.detection.detector import Detector, DetectorState, detector_score
from monitor.detection.permutation import PERMUTATION, PermutationTest, calibration_method
from monitor.detection.risk import RiskDecision, RiskPolicy, WindowSignals, assess_risk
from monitor.detection.window_stats import WindowStatistics, store_arrays
from monitor.embedding.fusion import fuse
from monitor.errors import MonitorError
from monitor.estimators.calibration import emid_bootstrap
from monitor.estimators.club import CLUB
from monitor.estimators.emi import emi
from monitor.protocols import StoreView
from monitor.records import DetectorReading
from monitor.reference import load_store_estimator
from monitor.reference.estimator import held_out_pairs

log = logging.getLogger("monitor.detection")

Rows = npt.NDArray[np.float32]
# ID records used for EMI(ID) and the ID side of the EMID bootstrap (a seeded subset beyond).
MAX_ID_EMI_RECORDS = 5_000
BOOTSTRAP_RESAMPLES = 200
# Live pairs a window's EMID bootstrap resamples; larger windows use an m-out-of-n bootstrap.
BOOTSTRAP_ROWS = 1_000


@dataclass
class WindowData:
    """A window's embeddings, one row per computed sample for every kind (zeros where a sample
    lacks that kind, None where every sample does), with a mask per kind."""

    n: int  # every sample of the window (also those left out by the compute cap)
    rows: dict[str, Rows | None]
    present: dict[str, npt.NDArray[np.bool_]]
    ood_flagged: int = 0  # samples over the store's OOD threshold
    ood_scored: int = 0  # samples with an OOD score

    def of(self, kind: str) -> Rows | None:
        """Rows of the samples that have ``kind``, in order; None when none has it."""
        rows, mask = self.rows.get(kind), self.present[kind]
        if rows is None or not mask.any():
            return None
        return rows if mask.all() else rows[mask]

    def count(self, kind: str) -> int:
        return int(self.present[kind].sum())

    @property
    def n_images(self) -> int:
        return self.count("image")

    @property
    def pair_mask(self) -> npt.NDArray[np.bool_]:
        """Samples with a prompt, a model answer and a reference (EMI, output_live)."""
        return self.present["prompt"] & self.present["response"] & self.present["reference"]

    @property
    def n_references(self) -> int:
        return int(self.pair_mask.sum())

    @property
    def ood_fraction(self) -> float | None:
        return self.ood_flagged / self.ood_scored if self.ood_scored else None


@dataclass
class Estimate:
    """What the pure part computes for one window."""

    values: dict[str, float | None]
    assessment: WindowAssessment
    emi_live: float | None = None
    emi_id: float | None = None
    emid: float | None = None
    emid_interval: tuple[float, float] | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


class StreamModel:
    """Everything a stream's windows are computed against, built once from its store."""

    def __init__(self, stream: StreamSettings, store: StoreView, settings: Settings) -> None:
        self.stream = stream.name
        self.store = store
        self.calibration: dict[str, Any] | None = store.calibration
        arrays = store_arrays(store)
        self.stats = WindowStatistics.for_calibration(arrays, self.calibration)
        # A permutation calibration draws each window's nulls from the window itself.
        self.permutation: PermutationTest | None = None
        if self.calibration is not None and calibration_method(self.calibration) == PERMUTATION:
            self.permutation = PermutationTest(
                arrays, self.calibration["comparison"], self.stats.jsd_mode
            )
        self.alpha = settings.alerts.false_alarm_rate
        # The sequential detector decides criticals unless the k-of-m rule is configured.
        self.detector: Detector | None = (
            Detector.from_calibration(self.calibration)
            if settings.alerts.hysteresis_k_of_m is None
            else None
        )
        self.fusion = store.manifest.get("fusion", "mean")
        self.ood_threshold = float(store.ood["threshold"]) if store.ood else math.inf
        tpr = store.ood.get("tpr") if store.ood else None
        self.ood_flag_rate = 1.0 - float(tpr) if tpr is not None else None
        self.club = self._load_club(store)
        self.id_emi: tuple[Rows, Rows, Rows] | None = None
        self.emi_id: float | None = None
        if self.club is not None and "reference" in store.kinds:
            self.id_emi = _id_emi_rows(store)
            self.emi_id = emi(self.club, *self.id_emi)
        club_version = (store.manifest.get("estimator") or {}).get("version", "none")
        calibration_sum = (store.manifest.get("files") or {}).get("calibration.json") or "none"
        self.version = f"{__version__}/club:{club_version}/cal:{calibration_sum[:12]}"

    @staticmethod
    def _load_club(store: StoreView) -> CLUB | None:
        if not store.manifest.get("estimator"):
            return None
        try:
            return load_store_estimator(store)
        except MonitorError as exc:
            log.warning("CLUB estimator unusable: no EMI", extra={"error": str(exc)})
            return None

    def estimate(self, data: WindowData, *, seed: int = 0) -> Estimate:
        """Every term, EMI/EMID and the assessment of one window (pure: no IO)."""
        whole = data  # EMI / EMID use every computed sample; only the tested terms are capped
        if self.permutation is not None:
            assert self.calibration is not None
            data = capped(data, int(self.calibration["max_window_records"]), seed)
        pairs = None
        both = data.pair_mask
        responses, references = data.rows["response"], data.rows["reference"]
        if both.sum() >= 2 and responses is not None and references is not None:
            pairs = (responses[both], references[both])
        prompts = data.of("prompt")
        values = self.stats(
            prompts=prompts if prompts is not None else np.zeros((0, 1), dtype=np.float32),
            images=data.of("image"),
            responses=data.of("response"),
            reference_pairs=pairs,
        )
        window_nulls = None
        if self.permutation is not None:
            assert self.calibration is not None
            window_nulls = self.permutation.nulls(
                data.rows, data.present, values, trials=int(self.calibration["trials"]), seed=seed
            )
        assessment = assess_window(
            self.calibration,
            values,
            n=data.n,
            n_images=data.n_images,
            n_references=data.n_references,
            ood_fraction=data.ood_fraction,
            ood_scored=data.ood_scored,
            alpha=self.alpha,
            ood_flag_rate=self.ood_flag_rate,
            window_nulls=window_nulls,
        )
        if (
            self.calibration is not None
            and self.permutation is None
            and assessment.bound_significant is None
            and values["output_live"] is not None
        ):
            assessment = self._bound_without_live_output(data, values, assessment)
        result = Estimate(values=values, assessment=assessment, emi_id=self.emi_id)
        if self.club is not None and self.id_emi is not None:
            self._emi(whole, result, seed)  # (nothing when the window has under 2 pairs)
        reasons = [
            f"{term} p={assessment.p_values[term]:.3g}" for term in assessment.significant_terms
        ]
        if assessment.ood_significant:
            reasons.append(f"OOD fraction {data.ood_fraction:.3f} > {assessment.ood_threshold:.3f}")
        result.reasons = tuple(reasons)
        return result

    def _bound_without_live_output(
        self, data: WindowData, values: dict[str, float | None], assessment: WindowAssessment
    ) -> WindowAssessment:
        """When the live output term has no null at this window's reference count (a store
        with few references), judge the bound on the terms that have one: the bound without
        the live output term, against its own null. The stored bound values keep every term."""
        reduced = dict(values, output_live=None)
        scale_adjusted, _ = self.stats.bounds(reduced)
        reduced["bound_scale_adjusted"] = scale_adjusted.value
        partial = assess_window(
            self.calibration,
            reduced,
            n=data.n,
            n_images=data.n_images,
            n_references=0,
            ood_fraction=None,
            alpha=self.alpha,
        )
        return replace(
            assessment,
            p_values={**assessment.p_values, "bound": partial.p_values.get("bound")},
            thresholds={**assessment.thresholds, "bound": partial.thresholds.get("bound")},
            bound_significant=partial.bound_significant,
            bound_tail_p_value=partial.bound_tail_p_value,
        )

    def _emi(self, data: WindowData, result: Estimate, seed: int) -> None:
        assert self.club is not None and self.id_emi is not None
        both = data.pair_mask
        prompts, responses, references = (data.rows[k] for k in ("prompt", "response", "reference"))
        if both.sum() < 2 or prompts is None or responses is None or references is None:
            return
        images = data.rows["image"]

        def paired(rows: Rows) -> Rows:
            # The usual window has every pair: its rows as they are, not a 30 MB copy each.
            return rows if all_paired else rows[both]

        all_paired = bool(both.all())
        x = fuse(
            paired(prompts),
            paired(images) if images is not None else None,
            data.present["image"][both],
            self.fusion,
        )
        y_hat, y = paired(responses), paired(references)
        result.emi_live = emi(self.club, x, y_hat, y)
        if result.emi_id is not None:
            result.emid = result.emi_id - result.emi_live
        result.emid_interval = self._emid_interval(x, y_hat, y, result.emid, seed)

    def _emid_interval(
        self, x: Rows, y_hat: Rows, y: Rows, emid: float | None, seed: int
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of EMID. Beyond BOOTSTRAP_ROWS live pairs it is an
        m-out-of-n bootstrap: both sides subsampled by the same fraction f, the interval's
        half-widths scaled by sqrt(f) around the full-data estimate (EMI is a smooth mean-like
        statistic, so its spread shrinks as 1 / sqrt(n)); the cost stays bounded."""
        assert self.club is not None and self.id_emi is not None
        id_x, id_y_hat, id_y = self.id_emi
        fraction = min(1.0, BOOTSTRAP_ROWS / len(x))
        if fraction < 1.0:
            rng = np.random.default_rng(seed)
            live = np.sort(rng.choice(len(x), size=BOOTSTRAP_ROWS, replace=False))
            m_id = max(2, round(fraction * len(id_x)))
            ids = np.sort(rng.choice(len(id_x), size=m_id, replace=False))
            x, y_hat, y = x[live], y_hat[live], y[live]
            id_x, id_y_hat, id_y = id_x[ids], id_y_hat[ids], id_y[ids]
        interval = emid_bootstrap(
            self.club, id_x, id_y_hat, id_y, x, y_hat, y, resamples=BOOTSTRAP_RESAMPLES, seed=seed
        )
        if fraction == 1.0 or emid is None:
            return (interval.low, interval.high)
        scale = math.sqrt(fraction)
        return (
            emid + (interval.low - interval.estimate) * scale,
            emid + (interval.high - interval.estimate) * scale,
        )


@dataclass(frozen=True)
class Verdict:
    """A window's risk decision, the detector's reading after it, and what the rule read."""

    decision: RiskDecision
    detector: DetectorReading | None
    signals: WindowSignals


def judge_window(
    estimate: Estimate,
    *,
    detector: Detector | None,
    before: DetectorState | None,
    previous: Sequence[WindowSignals],
    policy: RiskPolicy,
) -> Verdict:
    """The verdict on a sufficient window: the detector stepped on its score (from ``before``,
    the state after the stream's previous window), then the risk rule (``previous``: the
    earlier windows the k-of-m rule reads; empty for the detector)."""
    reading = None
    if detector is not None:
        score = detector_score(estimate.assessment.score_p_values)
        reading = detector_reading(detector, detector.step(before, score), score)
    assessment = estimate.assessment
    signals = WindowSignals(
        sufficient=True,
        warning=assessment.warning,
        bound_significant=assessment.bound_significant,
        bound=estimate.values["bound_scale_adjusted"],
        emid_interval=estimate.emid_interval,
        reasons=estimate.reasons,
        detector=reading,
    )
    return Verdict(assess_risk(signals, previous, policy), reading, signals)


def detector_reading(
    detector: Detector, state: DetectorState | None, score: float | None
) -> DetectorReading:
    """What a window stores of ``state`` (None: the detector's start, quiet at zero)."""
    state = state or DetectorState()
    return DetectorReading(score, state.statistic, detector.threshold, state.alarmed)


def detector_state(reading: DetectorReading) -> DetectorState:
    return DetectorState(reading.statistic, reading.alarmed)


def renormalise(rows: Rows, *, in_place: bool = False) -> Rows:
    """Stored embeddings are float16: re-normalise so the estimators' unit-norm check holds
    (all-zero rows, of samples without that kind, stay zero and are never read)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if in_place and rows.dtype == np.float32:
        # Overwrite ``rows`` (an array the caller owns, as read_window's): the same float32
        # values as the expression below without its three window-sized temporaries.
        np.divide(rows, np.maximum(norms, 1e-12), out=rows)
        rows[~(norms[:, 0] > 0)] = 0.0
        return rows
    out: Rows = np.where(norms > 0, rows / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    return out


def _id_emi_rows(store: StoreView) -> tuple[Rows, Rows, Rows]:
    """(x, model answer, reference) of the ID records the store's CLUB was not trained on (out
    of sample), or of every record with a reference when the store keeps no hold-out; a seeded
    subset of MAX_ID_EMI_RECORDS when more."""
    try:
        x, y_hat, y = held_out_pairs(store)
    except MonitorError:
        with_reference = store.rows_of("reference")
        x = store.embeddings("query")[with_reference]
        y_hat = store.embeddings("response")[with_reference]
        y = store.embeddings("reference")
    if len(y) > MAX_ID_EMI_RECORDS:
        chosen = np.sort(
            np.random.default_rng(0).choice(len(y), size=MAX_ID_EMI_RECORDS, replace=False)
        )
        x, y_hat, y = x[chosen], y_hat[chosen], y[chosen]
    return x, renormalise(y_hat), renormalise(y)


def capped(data: WindowData, limit: int, seed: int) -> WindowData:
    """``data`` with at most ``limit`` rows (a seeded uniform subset; counts unchanged)."""
    rows = len(data.present["prompt"])
    if rows <= limit:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    return replace(
        data,
        rows={k: None if r is None else r[keep] for k, r in data.rows.items()},
        present={k: m[keep] for k, m in data.present.items()},
    )
