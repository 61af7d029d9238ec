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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from monitor.config import Settings
from monitor.detection.detector import DetectorState, check_detector
from monitor.detection.risk import (
    RiskDecision,
    RiskPolicy,
    WindowSignals,
    assess_risk,
    policy_from_settings,
)
from monitor.detection.window_model import (
    StreamModel,
    WindowData,
    detector_reading,
    detector_state,
    judge_window,
    renormalise,
)
from monitor.errors import MonitorError, StorageError
from monitor.metrics import MonitorMetrics
from monitor.protocols import SampleReader, StoreView, WindowRepository
from monitor.records import (
    EMBEDDING_KINDS,
    TERMS,
    WINDOW_TERMS,
    DetectorReading,
    RiskLevel,
    TermValues,
    WindowKey,
    WindowResult,
)
from monitor.timestamps import utcnow

if TYPE_CHECKING:
    from monitor.store.types import StoredWindow

log = logging.getLogger("monitor.pipeline")

Rows = npt.NDArray[np.float32]
# ID records used for EMI(ID) and the ID side of the EMID bootstrap (a seeded subset beyond).
MAX_ID_EMI_RECORDS = 5_000
BOOTSTRAP_RESAMPLES = 200
# Live pairs a window's EMID bootstrap resamples; larger windows use an m-out-of-n bootstrap.
BOOTSTRAP_ROWS = 1_000
# Stored windows read per query while replaying the detector after a recomputed window.
REPLAY_BATCH = 256


class WindowPipeline:
    """Computes, stores and publishes windows of the configured streams."""

    def __init__(
        self,
        settings: Settings,
        repository: WindowRepository,
        stores: Mapping[str, StoreView],
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
            self.metrics.note_window_end(stream, newest[0].key.end)
            self._publish(newest[0])

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
            carried = detector_reading(model.detector, before, None) if model.detector else None
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
        return detector_state(previous[0].detector)

    def previous_signals(self, key: WindowKey) -> list[WindowSignals]:
        """What the k-of-m rule reads of the stream's windows stored before ``key`` (none for
        the detector, whose state carries the history)."""
        if self.policy.detector:
            return []
        return [
            WindowSignals(
                sufficient=True, bound_significant=w.bound_significant, bound=w.bound_scale_adjusted
            )
            for w in self.repository.recent_windows(key.stream, key.start, self.policy.m - 1)
        ]

    def decide(self, key: WindowKey, signals: WindowSignals) -> RiskDecision:
        """The risk decision of window ``key`` with ``signals`` (a replayed window's)."""
        return assess_risk(signals, self.previous_signals(key), self.policy)

    def replay_after(self, window: WindowResult) -> int:
        """Replay the detector over the windows stored after ``window`` (module docstring);
        returns how many were stored again. Each goes through ``store_window``, so the stream's
        risk transitions stay one chain."""
        stream = window.key.stream
        detector = self.model(stream).detector
        if detector is None or window.detector is None:
            return 0
        state, replayed = detector_state(window.detector), 0
        for stored in self._stored_after(stream, window.key.start):
            score = stored.detector.score if stored.detector is not None else None
            state = detector.step(state, score)
            if stored.detector is not None and detector_state(stored.detector) == state:
                break  # the rest follow from an unchanged state
            self._store_replayed(stored, detector_reading(detector, state, score))
            replayed += 1
        if replayed:
            log.info(
                "detector replayed",
                extra={"stream": stream, "after": window.to_dict()["start"], "windows": replayed},
            )
        return replayed

    def _stored_after(self, stream: str, after: datetime) -> Iterator[WindowResult]:
        """The stream's stored windows after ``after``, in order, read REPLAY_BATCH at a time."""
        while True:
            later = self.repository.next_windows(stream, after, REPLAY_BATCH, status=None)
            yield from later
            if len(later) < REPLAY_BATCH:
                return
            after = later[-1].key.start

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
        estimate = model.estimate(data, seed=window_seed(key))
        assessment, values = estimate.assessment, estimate.values
        verdict = judge_window(
            estimate,
            detector=model.detector,
            before=before,
            previous=self.previous_signals(key),
            policy=self.policy,
        )
        decision, reading = verdict.decision, verdict.detector
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
        self.metrics.note_window_end(stream, result.key.end)
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
        self._publish(result)

    def _publish(self, result: WindowResult) -> None:
        """The window gauges show the stream's newest sufficient window."""
        self.metrics.publish_window(
            result, bound_budget=self.policy.bound_budget, emid_budget=self.policy.emid_budget
        )


def read_window(
    repository: SampleReader, key: WindowKey, *, max_samples: int, ood_threshold: float
) -> WindowData | None:
    """The window's embeddings (a seeded uniform subset of ``max_samples`` when larger);
    None when it has no sample."""
    total = repository.count_samples(key.stream, key.start, key.end)
    if total == 0:
        return None
    keep: npt.NDArray[np.bool_] | None = None
    if total > max_samples:
        rng = np.random.default_rng(window_seed(key))
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=max_samples, replace=False)] = True
    # Each kind's rows go straight into one array of the expected size (allocated when the kind
    # first appears; samples before it keep zero rows), not into per-chunk parts concatenated
    # at the end: the window is held once, not twice (10,000 samples, d = 768: 117 MiB).
    capacity = max_samples if keep is not None else total
    out: dict[str, Rows] = {}
    masks: dict[str, list[npt.NDArray[np.bool_]]] = {kind: [] for kind in EMBEDDING_KINDS}
    n = flagged = scored = offset = filled = 0
    for chunk in repository.iter_embeddings(key.stream, key.start, key.end, kinds=EMBEDDING_KINDS):
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
        for kind in EMBEDDING_KINDS:
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
    for kind in EMBEDDING_KINDS:
        present[kind] = np.concatenate(masks[kind]) if masks[kind] else np.zeros(0, dtype=bool)
        if kind in out and len(out[kind]) < filled:
            # Grown past the count only in chunks that had the kind: zero rows for the rest.
            short = out[kind]
            out[kind] = np.zeros((filled, short.shape[1]), dtype=np.float32)
            out[kind][: len(short)] = short
        rows_of[kind] = renormalise(out[kind][:filled], in_place=True) if kind in out else None
    return WindowData(n=n, rows=rows_of, present=present, ood_flagged=flagged, ood_scored=scored)


def window_seed(key: WindowKey) -> int:
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


def check_detector_settings(settings: Settings, store: StoreView, name: str) -> None:
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
