"""The window pipeline and the scheduler on a real SQLite repository and a real reference store
(built through the store builder with a deterministic stand-in encoder, so every term exists:
images, prompts, answers, references, a CLUB estimator, a calibration)."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlalchemy import event

from monitor.config import Settings
from monitor.detection import calibrate_store
from monitor.detection.detector import Detector, DetectorState
from monitor.embedding import EncoderSet
from monitor.metrics import MonitorMetrics
from monitor.pipeline import WindowPipeline
from monitor.records import RiskLevel, WindowKey, WindowResult
from monitor.reference import IDRecord, build_store, load_store, train_store_estimator
from monitor.scheduler import WindowScheduler
from monitor.store import migrate
from monitor.store.engine import engine_from_settings
from monitor.store.repository import Repository, open_repository
from monitor.store.types import NewSample
from monitor.windows import window_start
from tests.integration.databases import drop_database

DIM = 16
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIZE = timedelta(minutes=5)
PAGE_INTERVAL = timedelta(days=1)


class StandIn:
    """Unit vectors from content hashes around a shared low-rank structure; ``shift`` moves
    the structure (a domain shift)."""

    def __init__(self, salt: str, shift: float = 0.0) -> None:
        self.dim = DIM
        self.fingerprint = f"stand-in-{salt}"
        rng = np.random.default_rng(len(salt))
        self._basis = rng.standard_normal((4, DIM))
        self._offset = shift * rng.standard_normal(DIM)

    def rows(self, keys: list[bytes]) -> np.ndarray:
        out = np.empty((len(keys), DIM), dtype=np.float32)
        for i, key in enumerate(keys):
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
            row = rng.standard_normal(4) @ self._basis + 0.3 * rng.standard_normal(DIM)
            row = row + self._offset
            out[i] = row / np.linalg.norm(row)
        return out

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.rows([t.encode() for t in texts])

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.rows([np.asarray(im).tobytes() for im in images])


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    encoders = EncoderSet(image=StandIn("image"), text=StandIn("text"), fusion="mean")  # type: ignore[arg-type]
    records = [
        IDRecord(
            id=f"id-{i}",
            prompt=f"q{i}",
            response=f"a{i}",
            reference=f"r{i}",
            image=png(i),
        )
        for i in range(1000)
    ]
    store = build_store(records, root=root, name="full", encoders=encoders)
    train_store_estimator(store, hidden=8, epochs=2, patience=1)
    # The detector calibrated for one false page a day (few simulated windows: quick).
    calibrate_store(
        store,
        window_sizes=[25],
        false_alarm_rate=0.05,
        window=SIZE,
        false_page_interval=PAGE_INTERVAL,
    )
    bare = [IDRecord(id=f"b-{i}", prompt=f"q{i}", response=f"a{i}") for i in range(40)]
    build_store(bare, root=root, name="bare", encoders=encoders)
    return root


@pytest.fixture
def settings(tmp_path: Path, reference: Path) -> Settings:
    settings = Settings(
        database={"url": f"sqlite:///{tmp_path / 'p.db'}"},
        reference={"root": str(reference)},
        streams=[{"name": "live", "reference": "full"}, {"name": "raw", "reference": "bare"}],
        windows={"size": "5m", "lateness": "0s", "min_samples": 20},
        alerts={"false_alarm_rate": 0.05, "hysteresis": "2/3"},
        scheduler={"lock_path": str(tmp_path / "lock")},
    )
    engine = engine_from_settings(settings.database)
    migrate.upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def repository(settings: Settings) -> Any:
    repo = open_repository(settings)
    yield repo
    repo.close()


def add_window(
    repo: Repository,
    stream: str,
    index: int,
    n: int,
    *,
    shift: float = 0.0,
    tag: str = "",
    base: datetime = T0,
) -> WindowKey:
    text, image = StandIn("text", shift), StandIn("image", shift)
    start = base + index * SIZE
    ids = [f"{stream}-{index}-{tag}{j}" for j in range(n)]
    prompts = text.encode_texts([f"live q {i}" for i in ids])
    answers = text.encode_texts([f"live a {i}" for i in ids])
    refs = text.encode_texts([f"live r {i}" for i in ids])
    images = image.rows([f"img {i}".encode() for i in ids])
    repo.add_samples(
        [
            NewSample(
                id=ids[j],
                stream=stream,
                event_time=start + (j + 1) * SIZE / (n + 2),
                encoder_fingerprint="stand-in",
                embeddings={
                    "prompt": prompts[j],
                    "response": answers[j],
                    "reference": refs[j],
                    "image": images[j],
                },
                has_image=True,
                has_reference=True,
                ood_score=0.0,
            )
            for j in range(n)
        ]
    )
    return WindowKey(stream, start, start + SIZE)


def stores(settings: Settings) -> dict[str, Any]:
    root = settings.reference.root
    return {"live": load_store(root, "full"), "raw": load_store(root, "bare")}


def test_a_window_gets_every_term_and_recomputing_is_idempotent(
    settings: Settings, repository: Repository
) -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, ["live", "raw"])
    pipeline = WindowPipeline(settings, repository, stores(settings), metrics)
    key = add_window(repository, "live", 0, 40)
    first = pipeline.compute(key)
    data = first.to_dict()
    assert first.status == "ok" and first.n == 40 and first.n_images == first.n_references == 40
    assert all(data["jsd"][t] is not None for t in data["jsd"])
    # (output_live's null needs a larger pool than this store has: value, no p-value)
    for term in ("visual", "text", "response"):
        assert data["p_values"][term] is not None, data["p_values"]
        assert 0 < data["p_values"][term] <= 1 and data["thresholds"][term] is not None
    # complete; judged without the live output term, whose null this store cannot give
    assert data["upper_bound"]["complete"] and data["upper_bound"]["p_value"] is not None
    assert first.emid is not None and first.emid_interval is not None
    low, high = first.emid_interval
    assert low <= first.emid <= high
    assert math.isclose(first.emid, (first.emi_id or 0) - (first.emi_live or 0), abs_tol=1e-9)
    assert first.jsd_mode == "balanced"
    # Same key, same row, same numbers.
    again = pipeline.compute(key)
    assert again.id == first.id and len(repository.get_windows("live")) == 1
    assert again.jsd == first.jsd and again.emid_interval == first.emid_interval
    # Gauges show it; None would be NaN.
    sample = registry.get_sample_value
    assert sample("mllm_monitor_window_samples", {"stream": "live"}) == 40
    assert sample(
        "mllm_monitor_upper_bound", {"stream": "live", "form": "scale_adjusted"}
    ) == pytest.approx(first.bound_scale_adjusted)
    assert sample("mllm_monitor_windows_total", {"stream": "live", "status": "ok"}) == 2


def test_small_windows_are_insufficient_and_uncalibrated_streams_get_values_only(
    settings: Settings, repository: Repository
) -> None:
    registry = CollectorRegistry()
    pipeline = WindowPipeline(
        settings, repository, stores(settings), MonitorMetrics(registry, ["live", "raw"])
    )
    thin = pipeline.compute(add_window(repository, "live", 0, 10))
    assert thin.status == "insufficient" and thin.risk_level is RiskLevel.OK
    assert thin.jsd.text is None and thin.n == 10
    samples = registry.get_sample_value("mllm_monitor_window_samples", {"stream": "live"})
    assert samples is not None and math.isnan(samples)  # insufficient: gauges untouched
    raw = pipeline.compute(add_window(repository, "raw", 0, 30))
    assert raw.status == "ok" and raw.jsd.text is not None and raw.jsd.response is not None
    assert raw.p_values.text is None and raw.bound_significant is None
    assert raw.risk_level is RiskLevel.OK


def test_a_shift_goes_warning_then_critical_with_transitions(
    settings: Settings, repository: Repository
) -> None:
    pipeline = WindowPipeline(
        settings, repository, stores(settings), MonitorMetrics(CollectorRegistry(), ["live"])
    )
    levels = [pipeline.compute(add_window(repository, "live", i, 40)).risk_level for i in range(3)]
    shifted = [
        pipeline.compute(add_window(repository, "live", 3 + i, 40, shift=3.0)).risk_level
        for i in range(3)
    ]
    assert RiskLevel.CRITICAL not in levels
    assert shifted[1:] == [RiskLevel.CRITICAL, RiskLevel.CRITICAL]
    transitions = repository.risk_transitions("live")
    assert transitions[-1].to_level is RiskLevel.CRITICAL and transitions[-1].reason
    assert repository.current_risk("live") is RiskLevel.CRITICAL


def test_scheduler_catches_up_and_recomputes_windows_that_got_late_samples(
    settings: Settings, repository: Repository
) -> None:
    # Real time (the repository stamps samples with it): windows of the last 20 minutes.
    base = window_start(datetime.now(UTC) - 4 * SIZE, SIZE)
    for i in range(3):
        add_window(repository, "live", i, 25, base=base)
    scheduler = WindowScheduler(
        settings,
        repository,
        stores(settings),
        MonitorMetrics(CollectorRegistry(), ["live", "raw"]),
    )
    assert scheduler.tick() == 4  # windows 0..3 of "live" (3 is empty); "raw" has no data
    assert [w.n for w in repository.get_windows("live")] == [25, 25, 25, 0]
    assert scheduler.tick() == 0  # nothing new
    # Late samples land in window 1: it is recomputed, once, and so is window 2, whose 2-of-3
    # risk level reads it (window 3 is insufficient: the rule reads sufficient windows only).
    add_window(repository, "live", 1, 5, tag="late", base=base)
    before = {w.key: w.computed_at for w in repository.get_windows("live")}
    assert scheduler.tick() == 2
    after = repository.get_windows("live")
    assert [w.n for w in after] == [25, 30, 25, 0]
    assert [w.computed_at > before[w.key] for w in after] == [False, True, True, False]
    assert scheduler.tick() == 0
    scheduler.stop(5)
    # The lock was released: another scheduler can lead.
    other = WindowScheduler(
        settings,
        repository,
        stores(settings),
        MonitorMetrics(CollectorRegistry(), ["live", "raw"]),
    )
    assert other.lock.try_acquire()
    other.lock.release()


def test_a_stale_window_recomputes_the_next_sufficient_windows_that_read_it(
    settings: Settings, repository: Repository
) -> None:
    """2-of-3: the next two sufficient windows read a window, skipping an insufficient one."""
    base = window_start(datetime.now(UTC) - 6 * SIZE, SIZE)
    for i, n in enumerate([25, 25, 5, 25, 25]):  # window 2 is under min_samples (20)
        add_window(repository, "live", i, n, base=base)
    scheduler = WindowScheduler(
        settings, repository, stores(settings), MonitorMetrics(CollectorRegistry(), ["live"])
    )
    scheduler.tick()
    assert [w.status for w in repository.get_windows("live")][:5] == [
        "ok",
        "ok",
        "insufficient",
        "ok",
        "ok",
    ]
    add_window(repository, "live", 0, 3, tag="late", base=base)
    before = {w.key: w.computed_at for w in repository.get_windows("live")}
    assert scheduler.tick() == 3  # window 0, then 1 and 3 (not 2, nor 4)
    after = repository.get_windows("live")[:5]
    assert [w.computed_at > before[w.key] for w in after] == [True, True, False, True, False]
    scheduler.stop(5)


# -- a window and its risk transition: one transaction (hardening item 19) ------------------


def _on_statements(engine: Any, call: Any, when: str = "before_cursor_execute") -> Any:
    """A real SQLAlchemy hook: ``call(statement)`` before (or, with ``when`` =
    "after_cursor_execute", after) each statement; returns the listener (for event.remove)."""

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        call(statement)

    event.listen(engine, when, listener)
    return listener


def _touches_transitions(statement: str, verbs: tuple[str, ...]) -> bool:
    head = " ".join(statement.split()).upper()
    return head.startswith(verbs) and "RISK_TRANSITIONS" in head.split(" WHERE ")[0]


def _chain(repository: Repository, stream: str = "live") -> list[tuple[int, int]]:
    return [(int(t.from_level), int(t.to_level)) for t in repository.risk_transitions(stream)]


def test_a_failure_between_the_window_and_its_transition_loses_neither(
    settings: Settings, repository: Repository
) -> None:
    """A write failure injected at the transition insert: before, the window was stored in a
    transaction of its own and the 0 -> 1 transition lost for good (the history then read
    0 -> 2); now neither is stored, and computing the window again stores both."""
    pipeline = WindowPipeline(
        settings, repository, stores(settings), MonitorMetrics(CollectorRegistry(), ["live"])
    )
    first = add_window(repository, "live", 0, 40, shift=3.0)

    def fail(statement: str) -> None:
        if _touches_transitions(statement, ("INSERT",)):
            raise RuntimeError("injected: the transition write failed")

    listener = _on_statements(repository.engine, fail)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            pipeline.compute(first)
    finally:
        event.remove(repository.engine, "before_cursor_execute", listener)
    assert repository.get_windows("live") == []  # not stored: the scheduler computes it again
    assert repository.risk_transitions("live") == []

    result = pipeline.compute(first)
    assert result.risk_level is RiskLevel.WARNING, "a shifted first window warns (1 of 2)"
    assert _chain(repository) == [(0, 1)]
    assert repository.risk_transitions("live")[0].window_id == result.id
    second = pipeline.compute(add_window(repository, "live", 1, 40, shift=3.0))
    assert second.risk_level is RiskLevel.CRITICAL
    assert _chain(repository) == [(0, 1), (1, 2)]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_backend(request: pytest.FixtureRequest, settings: Settings) -> Any:
    """``settings`` on SQLite, or the same on a fresh PostgreSQL database (from
    MLLM_MONITOR_TEST_POSTGRES_URL)."""
    if request.param == "sqlite":
        yield settings
        return
    import os
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = os.environ.get("MLLM_MONITOR_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MLLM_MONITOR_TEST_POSTGRES_URL is not set: no PostgreSQL to test against")
    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"mllm_pipeline_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        database = make_url(url).set(database=name).render_as_string(hide_password=False)
        on_postgres = settings.model_copy(
            update={"database": settings.database.model_copy(update={"url": database})}
        )
        engine = engine_from_settings(on_postgres.database)
        migrate.upgrade(engine)
        engine.dispose()
        yield on_postgres
    finally:
        drop_database(admin, name)
        admin.dispose()


def test_two_pipelines_racing_on_one_stream_leave_one_chain(any_backend: Settings) -> None:
    """`serve`'s scheduler and a backfill, each with its own repository, compute two windows of
    one stream at once; the first is held just after it has read the stream's level, before it
    writes its transition. Before, the second read the same level (still OK) meanwhile and the
    history read 0 -> 1, then 0 -> 2; now the level is read under the stream's lock, inside
    the window's transaction, so the second waits for the first to commit."""
    settings = any_backend
    serve, backfill = open_repository(settings), open_repository(settings)
    try:
        keys = [add_window(serve, "live", i, 40, shift=3.0) for i in range(2)]
        first_inside, second_read = threading.Event(), threading.Event()
        second_writing = threading.Event()

        def hold_first(statement: str) -> None:
            reads = _touches_transitions(statement, ("SELECT",))
            if threading.current_thread().name == "serve" and reads and not first_inside.is_set():
                first_inside.set()
                # Until the other writer has read the level (a broken store lets it read the old
                # one meanwhile), or has waited a while to write (a correct store makes it wait
                # for this transaction).
                second_writing.wait(timeout=60)
                second_read.wait(timeout=1.0)

        def note_second(statement: str) -> None:
            if threading.current_thread().name != "backfill":
                return
            head = " ".join(statement.split()).upper()
            if head.startswith(("BEGIN IMMEDIATE", "INSERT INTO WINDOWS")) or "FOR NO KEY" in head:
                second_writing.set()  # (the store's first write statement, on either backend)

        def note_second_read(statement: str) -> None:
            reads = _touches_transitions(statement, ("SELECT",))
            if threading.current_thread().name == "backfill" and reads:
                second_read.set()  # (after the statement: the level is read)

        listeners = [
            (r.engine, when, _on_statements(r.engine, call, when))
            for r in (serve, backfill)
            for when, call in (
                ("after_cursor_execute", hold_first),
                ("before_cursor_execute", note_second),
                ("after_cursor_execute", note_second_read),
            )
        ]
        results: dict[str, Any] = {}

        # Each with its stream's model built already: the second writer's compute is quick.
        pipelines = {
            name: WindowPipeline(
                settings, repository, stores(settings), MonitorMetrics(CollectorRegistry(), [])
            )
            for name, repository in (("serve", serve), ("backfill", backfill))
        }
        for pipeline in pipelines.values():
            pipeline.model("live")

        def run(name: str, key: WindowKey) -> None:
            if name == "backfill":
                assert first_inside.wait(timeout=60), "the first writer never read the level"
            try:
                results[name] = pipelines[name].compute(key)
            except BaseException as exc:  # re-raised below
                results[name] = exc

        threads = [
            threading.Thread(target=run, name="serve", args=("serve", keys[0])),
            threading.Thread(target=run, name="backfill", args=("backfill", keys[1])),
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            for engine, when, listener in listeners:
                event.remove(engine, when, listener)
        for outcome in results.values():
            if isinstance(outcome, BaseException):
                raise outcome
        assert set(results) == {"serve", "backfill"}
        history = serve.risk_transitions("live")
        assert history, "the shifted windows move the level"
        level = RiskLevel.OK
        for entry in history:
            assert entry.from_level == level, _chain(serve)
            level = entry.to_level
        assert serve.current_risk("live") is level
    finally:
        serve.close()
        backfill.close()


# -- the sequential detector (alerts.hysteresis = "") ---------------------------------------


@pytest.fixture
def detector_settings(settings: Settings) -> Settings:
    """``settings`` with the drift detector deciding criticals (same database)."""
    alerts = {"false_alarm_rate": 0.05, "false_page_interval": "1d", "hysteresis": ""}
    return Settings(**{**settings.model_dump(), "alerts": alerts})


def _pipeline(settings: Settings, repository: Repository, registry: Any = None) -> WindowPipeline:
    metrics = MonitorMetrics(registry or CollectorRegistry(), ["live", "raw"])
    return WindowPipeline(settings, repository, stores(settings), metrics)


def _detector(settings: Settings) -> Detector:
    found = Detector.from_calibration(stores(settings)["live"].calibration)
    assert found is not None
    return found


def _state(window: WindowResult) -> DetectorState:
    assert window.detector is not None
    return DetectorState(window.detector.statistic, window.detector.alarmed)


def test_the_detector_state_is_stored_with_each_window_and_survives_a_restart(
    detector_settings: Settings, repository: Repository
) -> None:
    detector = _detector(detector_settings)
    first = _pipeline(detector_settings, repository)
    quiet = first.compute(add_window(repository, "live", 0, 40))
    shifted = first.compute(add_window(repository, "live", 1, 40, shift=3.0))
    assert quiet.detector is not None and shifted.detector is not None
    assert shifted.detector.score is not None and shifted.detector.score > 3.0
    assert shifted.detector.statistic > 0.0
    assert shifted.detector.threshold == detector.threshold
    assert _state(shifted) == detector.step(_state(quiet), shifted.detector.score)
    # A new pipeline (a restarted monitor) goes on from the stored state, not from zero.
    registry = CollectorRegistry()
    restarted = _pipeline(detector_settings, repository, registry)
    after = restarted.compute(add_window(repository, "live", 2, 40))  # ID traffic again
    assert after.detector is not None and after.detector.score is not None
    assert _state(after) == detector.step(_state(shifted), after.detector.score)
    assert _state(after) != detector.step(None, after.detector.score)
    stored = repository.get_window(str(after.id))
    assert stored is not None and stored.detector == after.detector
    assert stored.to_dict()["detector"] == after.detector.to_dict()
    # Critical exactly while alarmed; the gauges show the newest sufficient window.
    for window in (quiet, shifted, after):
        assert window.detector is not None
        assert (window.risk_level is RiskLevel.CRITICAL) == window.detector.alarmed
    assert shifted.detector.alarmed, "a strongly shifted window pages"
    sample = registry.get_sample_value
    assert sample("mllm_monitor_detector_statistic", {"stream": "live"}) == pytest.approx(
        after.detector.statistic
    )
    assert sample("mllm_monitor_detector_threshold", {"stream": "live"}) == pytest.approx(
        detector.threshold
    )
    # A stream without calibration has no detector: null in the window, NaN in the gauges.
    raw = restarted.compute(add_window(repository, "raw", 0, 30))
    assert raw.detector is None and raw.to_dict()["detector"] is None
    for name in ("mllm_monitor_detector_statistic", "mllm_monitor_detector_threshold"):
        value = sample(name, {"stream": "raw"})
        assert value is not None and math.isnan(value)


def test_insufficient_windows_carry_the_detector_state_unchanged(
    detector_settings: Settings, repository: Repository
) -> None:
    detector = _detector(detector_settings)
    pipeline = _pipeline(detector_settings, repository)
    shifted = pipeline.compute(add_window(repository, "live", 0, 40, shift=3.0))
    thin = pipeline.compute(add_window(repository, "live", 1, 10, shift=3.0))
    empty = pipeline.compute(WindowKey("live", T0 + 2 * SIZE, T0 + 3 * SIZE))
    assert shifted.detector is not None and shifted.detector.statistic > 0.0
    for carried in (thin, empty):
        assert carried.status == "insufficient" and carried.risk_level is RiskLevel.OK
        assert carried.detector is not None and carried.detector.score is None
        assert _state(carried) == _state(shifted)
    quiet = pipeline.compute(add_window(repository, "live", 3, 40))
    assert quiet.detector is not None and quiet.detector.score is not None
    assert _state(quiet) == detector.step(_state(shifted), quiet.detector.score)


def test_a_recomputed_window_replays_the_detector_over_the_windows_after_it(
    detector_settings: Settings, repository: Repository
) -> None:
    """Late shifted samples change window 1's score: the stored windows after it get the
    states (and levels) that follow from its new state, with their stored scores, in window
    order, and their statistics are not recomputed; the replay stops at the first window
    whose state comes out as stored."""
    detector = _detector(detector_settings)
    pipeline = _pipeline(detector_settings, repository)
    # Computed out of window order: the state comes from the window before, not the last one.
    keys = [add_window(repository, "live", i, 40) for i in range(12)]
    for key in (*keys[6:], *keys[:6]):
        pipeline.compute(key)
    before = {w.key: w for w in repository.get_windows("live")}
    chain = [before[k] for k in keys]
    for previous, window in itertools.pairwise(chain):
        assert window.detector is not None
        assert _state(window) == detector.step(_state(previous), window.detector.score)
    add_window(repository, "live", 1, 60, shift=3.0, tag="late")
    recomputed = pipeline.compute(keys[1], replay=False)
    assert recomputed.detector is not None and recomputed.detector.statistic > 0.0
    replayed = pipeline.replay_after(recomputed)
    after = {w.key: w for w in repository.get_windows("live")}
    state = _state(recomputed)
    expected_changes = 0
    stopped = False
    for key in keys[2:]:
        old, new = before[key], after[key]
        assert old.detector is not None and new.detector is not None
        assert new.detector.score == old.detector.score  # stored score reused
        assert new.computed_at == old.computed_at and new.jsd == old.jsd  # not recomputed
        state = detector.step(state, old.detector.score)
        if not stopped and state == _state(old):
            stopped = True
        if not stopped:
            expected_changes += 1
            assert _state(new) == state
            assert (new.risk_level is RiskLevel.CRITICAL) == state.alarmed
        else:
            assert new.detector == old.detector  # after the stop: left as stored
    assert replayed == expected_changes >= 1
    assert stopped, "ID windows bring the statistic back to the stored states"
    # Replaying again changes nothing.
    assert pipeline.replay_after(recomputed) == 0


def test_the_scheduler_recomputes_a_stale_window_and_replays_the_later_ones(
    detector_settings: Settings, repository: Repository
) -> None:
    base = window_start(datetime.now(UTC) - 5 * SIZE, SIZE)
    for i in range(4):
        add_window(repository, "live", i, 25, base=base)
    scheduler = WindowScheduler(
        detector_settings,
        repository,
        stores(detector_settings),
        MonitorMetrics(CollectorRegistry(), ["live", "raw"]),
    )
    scheduler.tick()
    before = {w.key: w for w in repository.get_windows("live")}
    add_window(repository, "live", 1, 60, shift=3.0, tag="late", base=base)
    assert scheduler.tick() == 1  # window 1 only: the later ones are replayed, not recomputed
    after = repository.get_windows("live")
    changed = [w for w in after[2:] if w.detector != before[w.key].detector]
    assert changed and all(w.computed_at == before[w.key].computed_at for w in after[2:])
    old = before[after[2].key].detector
    assert old is not None and after[2].detector is not None
    assert after[2].detector.statistic > old.statistic  # window 1's new score carries on
    scheduler.stop(5)


def test_hysteresis_mode_stores_no_detector(settings: Settings, repository: Repository) -> None:
    window = _pipeline(settings, repository).compute(add_window(repository, "live", 0, 40))
    assert window.status == "ok" and window.detector is None


def test_explain_shows_the_detector_and_why_the_window_is_critical(
    detector_settings: Settings, repository: Repository, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.commands.explain import _print, risk_explanation
    from monitor.services import Services

    detector = _detector(detector_settings)
    pipeline = _pipeline(detector_settings, repository)
    pipeline.compute(add_window(repository, "live", 0, 40))
    critical = pipeline.compute(add_window(repository, "live", 1, 40, shift=3.0))
    thin = pipeline.compute(add_window(repository, "live", 2, 10))
    found = Services(
        detector_settings,
        repository,
        MonitorMetrics(CollectorRegistry(), ["live", "raw"]),
        stores(detector_settings),
    )
    assert critical.detector is not None and critical.risk_level is RiskLevel.CRITICAL
    risk = risk_explanation(found, critical)
    shown = risk["detector"]
    assert shown["stored"] == critical.detector.to_dict()
    assert shown["recomputed"] == critical.detector.to_dict()  # same data, same state
    assert (shown["statistic"], shown["alarmed"]) == (critical.detector.statistic, True)
    assert (shown["threshold"], shown["clear_level"]) == (detector.threshold, detector.clear_level)
    assert shown["why"].startswith("statistic = min(cap")
    assert f"critical: it passed the threshold {detector.threshold:.4g}" in shown["why"]
    assert risk["recomputed_risk_level"] == 2 and "drift detector" in risk["rule"]
    assert any(reason.startswith("detector ") for reason in risk["reasons"])
    assert [h["detector_statistic"] for h in risk["history"]] == [
        w.detector.statistic if w.detector else None
        for w in repository.recent_windows("live", critical.key.start, 3)
    ]
    carried = risk_explanation(found, thin)["detector"]
    assert carried["score"] is None and carried["statistic"] == critical.detector.statistic
    assert "state is carried over" in carried["why"]
    _print({"window": critical.to_dict(), "terms": [], "risk": risk, "top_ood_samples": []})
    text = capsys.readouterr().out
    assert f"threshold {detector.threshold:.4g}, clear level {detector.clear_level:.4g}" in text
    assert "alarmed True" in text
