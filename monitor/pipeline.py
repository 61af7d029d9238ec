"""One window, end to end: read its embeddings, compute every term, judge, store, publish.

    WindowPipeline(settings, repository, stores, metrics).compute(key) -> WindowResult

* Read: the window's samples from the repository (``iter_embeddings``, chunk by chunk). A
  window with more than ``windows.max_compute_samples`` samples is computed on a uniform random
  subset of that many, seeded by the window (a recomputation of the same data agrees); ``n``
  and the OOD fraction count every sample.
* Terms (:class:`monitor.reference.WindowStatistics`, built once per stream from the store's
  calibration, so live values and their nulls are computed the same way, in the calibration's
  JSD mode): visual (when the window has images), text, output on the ID side (from the store),
  output on the live side (when references exist), response (answer drift), both bound forms.
* EMI of the window and of the ID data, EMID with a bootstrap interval (m-out-of-n beyond
  1,000 live pairs, so its cost stays bounded), when the window has references and the store
  has a CLUB estimator.
* OOD fraction: samples whose kNN score (computed by the embedding workers) is over the store's
  threshold.
* Nulls: the calibration's (pseudo-windows), or, for a store calibrated by permutation (too
  small for pseudo-windows), the window's own: :class:`monitor.detection.permutation.
  PermutationTest` splits the window and comparison records at random (the window capped at
  the calibration's ``max_window_records``, a seeded subset, on which the values are computed
  too).
* Judgement: :func:`monitor.detection.assess_window` (p-values, thresholds, the corrected
  warning, the bound's significance) and :func:`monitor.detection.risk.assess_risk`.
  Windows under ``windows.min_samples`` are stored as insufficient and never alert; a stream
  without calibration gets values and null p-values.
* Detector (``alerts.hysteresis = ""``, a calibration with a detector): the window's score is
  z of its bound's tail p-value; the state after the previous stored window (in window order,
  whatever order they were computed in) steps on it, and the new state is stored with the
  window. An insufficient window has no score and stores the state it got. Nothing is held in
  memory, so a restarted monitor goes on from the stored state. When a window is recomputed,
  the windows stored after it are replayed: their states (and so their levels) recomputed in
  order from its new state with their stored scores (no statistic recomputed), until a
  replayed state equals the stored one.
* Write: one transaction (``Windows.store_window``): the idempotent upsert (same key, same
  row) and the risk transition when the stream's level changes (read under a per-stream lock,
  so a failure between the two or a second writer cannot break the chain); then the Prometheus
  gauges of the stream's newest sufficient window (None -> NaN).

The pure part, :meth:`StreamModel.estimate`, takes a :class:`WindowData` and no IO.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from monitor import __version__
from monitor.config import Settings, StreamSettings
from monitor.detection import WindowStatistics, assess_window
from monitor.detection.detector import Detector, DetectorState, check_detector, detector_score
from monitor.detection.permutation import (
    PERMUTATION,
    PermutationTest,
    calibration_method,
)
from monitor.detection.risk import (
    RiskDecision,
    RiskPolicy,
    WindowSignals,
    assess_risk,
    policy_from_settings,
)
from monitor.detection.window_stats import store_arrays
from monitor.embedding.fusion import fuse
from monitor.errors import MonitorError, StorageError
from monitor.estimators.calibration import emid_bootstrap
from monitor.estimators.emi import emi
from monitor.metrics import MonitorMetrics, gauge_value
from monitor.records import (
    TERMS,
    WINDOW_TERMS,
    DetectorReading,
    RiskLevel,
    TermValues,
    WindowKey,
    WindowResult,
)
from monitor.reference import load_store_estimator
from monitor.reference.estimator import held_out_pairs

if TYPE_CHECKING:
    from monitor.store._windows import StoredWindow

log = logging.getLogger("monitor.pipeline")

Rows = npt.NDArray[np.float32]
KINDS = ("image", "prompt", "response", "reference")
# ID records used for EMI(ID) and the ID side of the EMID bootstrap (a seeded subset beyond).
MAX_ID_EMI_RECORDS = 5_000
BOOTSTRAP_RESAMPLES = 200
# Live pairs a window's EMID bootstrap resamples; larger windows use an m-out-of-n bootstrap.
BOOTSTRAP_ROWS = 1_000
# Stored windows read per query while replaying the detector after a recomputed window.
REPLAY_BATCH = 256


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    assessment: Any  # monitor.reference.WindowAssessment
    emi_live: float | None = None
    emi_id: float | None = None
    emid: float | None = None
    emid_interval: tuple[float, float] | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)


class StreamModel:
    """Everything a stream's windows are computed against, built once from its store."""

    def __init__(self, stream: StreamSettings, store: Any, settings: Settings) -> None:
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
    def _load_club(store: Any) -> Any:
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
            data = _capped(data, int(self.calibration["max_window_records"]), seed)
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
        self, data: WindowData, values: dict[str, float | None], assessment: Any
    ) -> Any:
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


class WindowPipeline:
    """Computes, stores and publishes windows of the configured streams."""

    def __init__(
        self,
        settings: Settings,
        repository: Any,
        stores: Mapping[str, Any],
        metrics: MonitorMetrics,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.stores = stores
        self.metrics = metrics
        self.clock = clock
        self.policy: RiskPolicy = policy_from_settings(
            settings.alerts.hysteresis_k_of_m,
            settings.alerts.bound_budget,
            settings.alerts.emid_budget,
        )
        self._streams = {s.name: s for s in settings.streams}
        self._models: dict[str, StreamModel] = {}
        self._shown: dict[str, datetime] = {}  # start of the window the gauges show
        self._last_end: dict[str, datetime] = {}

    def model(self, stream: str) -> StreamModel:
        if stream not in self._models:
            if stream not in self._streams or stream not in self.stores:
                raise MonitorError(f"stream {stream!r} is not configured")
            self._models[stream] = StreamModel(
                self._streams[stream], self.stores[stream], self.settings
            )
        return self._models[stream]

    def restore(self, stream: str) -> None:
        """Publish the stream's newest stored sufficient window (after a restart)."""
        newest = self.repository.recent_windows(stream, datetime.max.replace(tzinfo=UTC), 1)
        if newest:
            self._publish(newest[0])
        self._shown.setdefault(stream, datetime.min.replace(tzinfo=UTC))

    def compute(self, key: WindowKey, *, replay: bool = True) -> WindowResult:
        """Compute, store and publish one window; returns what was stored (with its id).

        ``replay``: then replay the detector over the windows stored after it (False: the
        caller computes those next, or calls :meth:`replay_after` itself)."""
        started = time.perf_counter()
        computed_at = self.clock()
        model = self.model(key.stream)
        before = self.state_before(key)
        data = read_window(
            self.repository,
            key,
            max_samples=self.settings.windows.max_compute_samples,
            ood_threshold=model.ood_threshold,
        )
        reason = ""  # why the window got its level (a transition's reason)
        if data is None or data.n < self.settings.windows.min_samples:
            carried = _reading(model.detector, before, None) if model.detector else None
            result = _insufficient(key, data, model, computed_at, carried)
        else:
            result, reason = self._sufficient(key, data, model, computed_at, before)
        stored = self.repository.store_window(result, reason=reason)
        result = _with_id(result, stored.id)
        self._after_store(result, stored, reason)
        elapsed = time.perf_counter() - started
        self.metrics.window_compute_seconds.labels(stream=key.stream).observe(elapsed)
        self.metrics.windows.labels(stream=key.stream, status=result.status).inc()
        log.info(
            "window computed",
            extra={
                "stream": key.stream,
                "start": result.to_dict()["start"],
                "n": result.n,
                "status": result.status,
                "risk_level": int(result.risk_level),
                "bound": result.bound_scale_adjusted,
                "detector": result.detector.statistic if result.detector else None,
                "seconds": round(elapsed, 3),
            },
        )
        if replay:
            self.replay_after(result)
        return result

    def state_before(self, key: WindowKey) -> DetectorState | None:
        """The stream's detector state after the stored window just before ``key`` (in window
        order; None: no detector, no such window, or one stored without a detector)."""
        if self.model(key.stream).detector is None:
            return None
        previous = self.repository.recent_windows(key.stream, key.start, 1, status=None)
        if not previous or previous[0].detector is None:
            return None
        return _state(previous[0].detector)

    def decide(self, key: WindowKey, signals: WindowSignals) -> RiskDecision:
        """The risk decision of window ``key`` with ``signals`` (the k-of-m rule reads the
        stream's windows stored before it)."""
        previous: list[WindowSignals] = []
        if not self.policy.detector:
            previous = [
                WindowSignals(
                    sufficient=True,
                    bound_significant=w.bound_significant,
                    bound=w.bound_scale_adjusted,
                )
                for w in self.repository.recent_windows(key.stream, key.start, self.policy.m - 1)
            ]
        return assess_risk(signals, previous, self.policy)

    def replay_after(self, window: WindowResult) -> int:
        """Replay the detector over the windows stored after ``window`` (module docstring);
        returns how many were stored again. Each goes through ``store_window``, so the stream's
        risk transitions stay one chain."""
        stream = window.key.stream
        detector = self.model(stream).detector
        if detector is None or window.detector is None:
            return 0
        state, after, replayed = _state(window.detector), window.key.start, 0
        while True:
            later = self.repository.next_windows(stream, after, REPLAY_BATCH, status=None)
            for stored in later:
                score = stored.detector.score if stored.detector is not None else None
                state = detector.step(state, score)
                if stored.detector is not None and _state(stored.detector) == state:
                    later = []  # the rest follow from an unchanged state
                    break
                self._store_replayed(stored, _reading(detector, state, score))
                replayed += 1
            if len(later) < REPLAY_BATCH:
                break
            after = later[-1].key.start
        if replayed:
            log.info(
                "detector replayed",
                extra={"stream": stream, "after": window.to_dict()["start"], "windows": replayed},
            )
        return replayed

    def _store_replayed(self, window: WindowResult, reading: DetectorReading) -> None:
        """Store ``window`` with a replayed detector reading and the level that follows."""
        level, reason = RiskLevel.OK, ""
        if window.status == "ok":
            warning = (
                window.warning if window.warning is not None else window.risk_level == 1
            )  # a window stored before the warning was: its level tells, short of critical
            signals = WindowSignals(
                sufficient=True,
                warning=warning,
                bound_significant=window.bound_significant,
                bound=window.bound_scale_adjusted,
                emid_interval=window.emid_interval,
                reasons=("a term or the OOD fraction significant",) if warning else (),
                detector=reading,
            )
            decision = self.decide(window.key, signals)
            level, reason = decision.level, decision.reason
        updated = replace(window, detector=reading, risk_level=level)
        stored = self.repository.store_window(updated, reason=reason)
        self._after_store(updated, stored, reason)

    def _sufficient(
        self,
        key: WindowKey,
        data: WindowData,
        model: StreamModel,
        computed_at: datetime,
        before: DetectorState | None,
    ) -> tuple[WindowResult, str]:
        estimate = model.estimate(data, seed=_window_seed(key))
        assessment, values = estimate.assessment, estimate.values
        reading = None
        if model.detector is not None:
            score = detector_score(assessment.score_p_values)
            reading = _reading(model.detector, model.detector.step(before, score), score)
        signals = WindowSignals(
            sufficient=True,
            warning=assessment.warning,
            bound_significant=assessment.bound_significant,
            bound=values["bound_scale_adjusted"],
            emid_interval=estimate.emid_interval,
            reasons=estimate.reasons,
            detector=reading,
        )
        decision = self.decide(key, signals)
        result = WindowResult(
            key=key,
            n=data.n,
            n_images=data.n_images,
            n_references=data.n_references,
            status="ok",
            risk_level=decision.level,
            estimator_version=model.version,
            computed_at=computed_at,
            jsd=TermValues(**{t: values.get(t) for t in WINDOW_TERMS}),
            p_values=TermValues(**{t: assessment.p_values.get(t) for t in WINDOW_TERMS}),
            thresholds=TermValues(**{t: assessment.thresholds.get(t) for t in WINDOW_TERMS}),
            bound_scale_adjusted=values["bound_scale_adjusted"],
            bound_entropy_scaled=values["bound_entropy_scaled"],
            bound_complete=all(values.get(t) is not None for t in TERMS),
            emi_live=estimate.emi_live,
            emi_id=estimate.emi_id,
            emid=estimate.emid,
            emid_interval=estimate.emid_interval,
            ood_fraction=data.ood_fraction,
            jsd_mode=model.stats.jsd_mode,
            bound_p_value=assessment.p_values.get("bound"),
            bound_threshold=assessment.thresholds.get("bound"),
            bound_significant=assessment.bound_significant,
            ood_threshold=assessment.ood_threshold,
            detector=reading,
            warning=assessment.warning,
        )
        return result, decision.reason

    def _after_store(self, result: WindowResult, stored: StoredWindow, reason: str) -> None:
        stream = result.key.stream
        if result.key.end > self._last_end.get(stream, datetime.min.replace(tzinfo=UTC)):
            self._last_end[stream] = result.key.end
            self.metrics.last_window_end_timestamp_seconds.labels(stream=stream).set(
                result.key.end.timestamp()
            )
        if stored.changed:  # (the store decided, in the window's transaction)
            before, after = stored.level_before, stored.level_after
            (log.warning if after > before else log.info)(
                "risk level changed",
                extra={
                    "stream": stream,
                    "from": int(before),
                    "to": int(after),
                    "reason": reason,
                    "window": result.to_dict()["start"],
                },
            )
        if result.status != "ok":
            return  # insufficient windows change the gauges no more than the risk level
        if result.key.start < self._shown.get(stream, datetime.min.replace(tzinfo=UTC)):
            return  # a recomputed older window: the gauges show a newer one
        self._publish(result)

    def _publish(self, result: WindowResult) -> None:
        """Set the stream's window gauges from ``result`` (None -> NaN)."""
        m, stream = self.metrics, result.key.stream
        self._shown[stream] = result.key.start
        for term in WINDOW_TERMS:
            m.window_jsd.labels(stream=stream, term=term).set(
                gauge_value(getattr(result.jsd, term))
            )
            m.window_p_value.labels(stream=stream, term=term).set(
                gauge_value(getattr(result.p_values, term))
            )
            m.window_jsd_threshold.labels(stream=stream, term=term).set(
                gauge_value(getattr(result.thresholds, term))
            )
        m.upper_bound.labels(stream=stream, form="scale_adjusted").set(
            gauge_value(result.bound_scale_adjusted)
        )
        m.upper_bound.labels(stream=stream, form="entropy_scaled").set(
            gauge_value(result.bound_entropy_scaled)
        )
        m.upper_bound_p_value.labels(stream=stream).set(gauge_value(result.bound_p_value))
        m.upper_bound_threshold.labels(stream=stream).set(gauge_value(result.bound_threshold))
        m.upper_bound_budget.labels(stream=stream).set(gauge_value(self.policy.bound_budget))
        m.emi_nats.labels(stream=stream, side="live").set(gauge_value(result.emi_live))
        m.emi_nats.labels(stream=stream, side="id").set(gauge_value(result.emi_id))
        m.emid_nats.labels(stream=stream).set(gauge_value(result.emid))
        low, high = result.emid_interval or (None, None)
        m.emid_interval_nats.labels(stream=stream, edge="lower").set(gauge_value(low))
        m.emid_interval_nats.labels(stream=stream, edge="upper").set(gauge_value(high))
        m.emid_budget_nats.labels(stream=stream).set(self.policy.emid_budget)
        m.risk_level.labels(stream=stream).set(int(result.risk_level))
        m.window_samples.labels(stream=stream).set(result.n)
        m.ood_ratio.labels(stream=stream).set(gauge_value(result.ood_fraction))
        m.ood_ratio_threshold.labels(stream=stream).set(gauge_value(result.ood_threshold))
        reading = result.detector
        m.detector_statistic.labels(stream=stream).set(
            gauge_value(reading.statistic if reading is not None else None)
        )
        m.detector_threshold.labels(stream=stream).set(
            gauge_value(reading.threshold if reading is not None else None)
        )
        if result.key.end > self._last_end.get(stream, datetime.min.replace(tzinfo=UTC)):
            self._last_end[stream] = result.key.end
            m.last_window_end_timestamp_seconds.labels(stream=stream).set(
                result.key.end.timestamp()
            )


def read_window(
    repository: Any, key: WindowKey, *, max_samples: int, ood_threshold: float
) -> WindowData | None:
    """The window's embeddings (a seeded uniform subset of ``max_samples`` when larger);
    None when it has no sample."""
    total = repository.count_samples(key.stream, key.start, key.end)
    if total == 0:
        return None
    keep: npt.NDArray[np.bool_] | None = None
    if total > max_samples:
        rng = np.random.default_rng(_window_seed(key))
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=max_samples, replace=False)] = True
    # Each kind's rows go straight into one array of the expected size (allocated when the kind
    # first appears; samples before it keep zero rows), not into per-chunk parts concatenated
    # at the end: the window is held once, not twice (10,000 samples, d = 768: 117 MiB).
    capacity = max_samples if keep is not None else total
    out: dict[str, Rows] = {}
    masks: dict[str, list[npt.NDArray[np.bool_]]] = {kind: [] for kind in KINDS}
    n = flagged = scored = offset = filled = 0
    for chunk in repository.iter_embeddings(key.stream, key.start, key.end, kinds=KINDS):
        size = len(chunk)
        scores = chunk.ood_scores
        valid = ~np.isnan(scores)
        scored += int(valid.sum())
        flagged += int((scores[valid] > ood_threshold).sum())
        n += size
        chosen = np.arange(size)
        if keep is not None:  # samples that arrived after the count are left out
            chosen = np.flatnonzero(keep[offset : offset + size])
        offset += size
        for kind in KINDS:
            position = np.full(size, -1, dtype=np.int64)
            position[chunk.index[kind]] = np.arange(len(chunk.index[kind]))
            where = position[chosen]
            mask = where >= 0
            masks[kind].append(mask)
            if not mask.any():
                continue
            vectors = chunk.vectors[kind]
            rows = out.get(kind)
            if rows is None:
                rows = np.zeros((max(capacity, filled + len(chosen)), vectors.shape[1]), np.float32)
            elif rows.shape[1] != vectors.shape[1]:
                raise StorageError(
                    f"{kind} embeddings of different dimensions ({rows.shape[1]}, "
                    f"{vectors.shape[1]}) in window {key.start.isoformat()}"
                )
            if filled + len(chosen) > len(rows):  # samples arrived after the count
                grown = np.zeros(
                    (max(filled + len(chosen), 2 * len(rows)), rows.shape[1]), dtype=np.float32
                )
                grown[: len(rows)] = rows
                rows = grown
            out[kind] = rows
            block = rows[filled : filled + len(chosen)]
            if len(where) == len(vectors) and (where == np.arange(len(where))).all():
                block[:] = vectors  # every chosen sample has it, in order
            else:
                block[mask] = vectors[where[mask]]
        filled += len(chosen)
    if n == 0:
        return None
    rows_of: dict[str, Rows | None] = {}
    present: dict[str, npt.NDArray[np.bool_]] = {}
    for kind in KINDS:
        present[kind] = np.concatenate(masks[kind]) if masks[kind] else np.zeros(0, dtype=bool)
        if kind in out and len(out[kind]) < filled:
            # Grown past the count only in chunks that had the kind: zero rows for the rest.
            short = out[kind]
            out[kind] = np.zeros((filled, short.shape[1]), dtype=np.float32)
            out[kind][: len(short)] = short
        rows_of[kind] = _renormalise(out[kind][:filled], in_place=True) if kind in out else None
    return WindowData(n=n, rows=rows_of, present=present, ood_flagged=flagged, ood_scored=scored)


def _renormalise(rows: Rows, *, in_place: bool = False) -> Rows:
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


def _id_emi_rows(store: Any) -> tuple[Rows, Rows, Rows]:
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
    return x, _renormalise(y_hat), _renormalise(y)


def _capped(data: WindowData, limit: int, seed: int) -> WindowData:
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


def _window_seed(key: WindowKey) -> int:
    digest = hashlib.sha256(f"{key.stream}|{key.start.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _insufficient(
    key: WindowKey,
    data: WindowData | None,
    model: StreamModel,
    computed_at: datetime,
    detector: DetectorReading | None,
) -> WindowResult:
    return WindowResult(
        key=key,
        n=0 if data is None else data.n,
        n_images=0 if data is None else data.n_images,
        n_references=0 if data is None else data.n_references,
        status="insufficient",
        risk_level=RiskLevel.OK,
        estimator_version=model.version,
        computed_at=computed_at,
        ood_fraction=None if data is None else data.ood_fraction,
        jsd_mode=model.stats.jsd_mode,
        detector=detector,
        warning=False,
    )


def _with_id(result: WindowResult, window_id: str) -> WindowResult:
    return replace(result, id=window_id)


def _state(reading: DetectorReading) -> DetectorState:
    return DetectorState(statistic=reading.statistic, alarmed=reading.alarmed)


def _reading(
    detector: Detector, state: DetectorState | None, score: float | None
) -> DetectorReading:
    """What a window stores of ``state`` (None: the detector's start, quiet at zero)."""
    state = state or DetectorState()
    return DetectorReading(score, state.statistic, detector.threshold, state.alarmed)


def check_detector_settings(settings: Settings, store: Any, name: str) -> None:
    """Refuse a store whose detector was calibrated for another ``false_page_interval`` or
    window size (only where the detector decides criticals and the store is calibrated)."""
    if settings.alerts.hysteresis_k_of_m is not None or store.calibration is None:
        return
    check_detector(
        store.calibration,
        false_page_interval=settings.alerts.false_page_interval,
        window=settings.windows.size,
        store=name,
    )
