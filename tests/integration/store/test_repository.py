"""The repository contract, run unchanged on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from monitor.errors import EmbeddingError
from monitor.records import DetectorReading, RiskLevel, TermValues, WindowKey, WindowResult
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from monitor.store.types import (
    EstimatorInfo,
    NewSample,
    PurgeCounts,
    ReferenceSetInfo,
    content_sha256,
)
from tests.integration.store.conftest import T0, make_record, make_sample, unit_vector

# float16 keeps about 3 significant digits: unit-vector components round-trip to ~5e-4.
F16_ATOL = 1e-3


def test_streams_are_created_once(repo: Repository) -> None:
    first = repo.ensure_stream("chat")
    again = Repository(repo.engine).ensure_stream("chat")  # no cache: read from the table
    assert first == again
    assert repo.ensure_stream("vision") != first
    assert repo.list_streams() == ["chat", "vision"]


def test_samples_keep_hashes_and_metadata_not_raw_content(repo: Repository) -> None:
    rng = np.random.default_rng(0)
    record = make_record(1, reference=True)
    repo.add_samples([make_sample(record, rng)])
    stored = repo.get_sample(record.id)
    assert stored is not None
    assert stored.stream == "default" and stored.event_time == T0
    assert stored.event_time.tzinfo is not None
    assert stored.model == "llava-1.5-7b"
    assert stored.prompt_sha256 == content_sha256(record.prompt)
    assert stored.image_sha256 == content_sha256(record.image)
    assert stored.response_sha256 == content_sha256(record.response)
    assert stored.reference_sha256 == content_sha256(record.reference)
    assert stored.has_image and stored.has_reference
    assert stored.ood_score == 0.5 and stored.sampling_weight == 1.0
    assert stored.encoder_fingerprint == "clip-b32+xlmr-l0:test"
    assert stored.kinds == ("image", "prompt", "response", "reference")
    assert repo.get_raw(record.id) is None  # raw retention is off by default
    with repo.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM raw_content")).scalar_one() == 0
    assert repo.get_sample("no-such-record") is None


def test_adding_the_same_sample_twice_stores_it_once(repo: Repository) -> None:
    rng = np.random.default_rng(1)
    sample = make_sample(make_record(1), rng)
    repo.add_samples([sample])
    changed = dataclasses.replace(sample, ood_score=9.0)
    repo.add_samples([changed, make_sample(make_record(2), rng)])
    assert repo.count_samples("default", T0, T0 + timedelta(seconds=1)) == 2
    stored = repo.get_sample(sample.id)
    assert stored is not None and stored.ood_score == 0.5  # the first write stands


def test_bad_embeddings_are_refused_and_nothing_is_written(repo: Repository) -> None:
    rng = np.random.default_rng(2)
    good = make_sample(make_record(1), rng)
    bad = dataclasses.replace(make_sample(make_record(2), rng), embeddings={"audio": np.ones(4)})
    with pytest.raises(EmbeddingError, match="audio"):
        repo.add_samples([good, bad])
    nan = dataclasses.replace(good, embeddings={"prompt": np.array([np.nan, 1.0])})
    with pytest.raises(EmbeddingError, match="NaN"):
        repo.add_samples([nan])
    flat = dataclasses.replace(good, embeddings={"prompt": np.ones((2, 2))})
    with pytest.raises(EmbeddingError, match="1-d"):
        repo.add_samples([flat])
    assert repo.get_sample(good.id) is None


def test_times_are_stored_as_utc_whatever_zone_they_come_in(repo: Repository) -> None:
    rng = np.random.default_rng(3)
    tokyo = timezone(timedelta(hours=9))
    local = T0.astimezone(tokyo)  # same instant, other zone
    naive = (T0 + timedelta(minutes=1)).replace(tzinfo=None)  # taken as UTC
    repo.add_samples(
        [
            make_sample(dataclasses.replace(make_record(1), timestamp=local), rng),
            make_sample(dataclasses.replace(make_record(2), timestamp=naive), rng),
        ]
    )
    first, second = repo.get_sample("rec-000001"), repo.get_sample("rec-000002")
    assert first is not None and second is not None
    assert first.event_time == T0 and first.event_time.utcoffset() == timedelta(0)
    assert second.event_time == T0 + timedelta(minutes=1)
    # A query bound in another zone selects by instant, not by wall clock.
    assert repo.count_samples("default", local, local + timedelta(seconds=1)) == 1


def _fill(repo: Repository, n: int, *, dim: int = 8, stream: str = "default") -> list[NewSample]:
    rng = np.random.default_rng(4)
    samples = [
        make_sample(
            make_record(i, stream=stream, at=T0 + timedelta(seconds=i), image=i % 3 != 0),
            rng,
            dim=dim,
            ood_score=None if i % 5 == 0 else float(i),
        )
        for i in range(n)
    ]
    repo.add_samples(samples)
    return samples


def test_embeddings_stream_back_in_chunks_in_event_time_order(repo: Repository) -> None:
    samples = _fill(repo, 25)
    _fill(repo, 5, stream="other")  # another stream is never mixed in
    start, end = T0 + timedelta(seconds=2), T0 + timedelta(seconds=22)  # [2, 22)
    chunks = list(repo.iter_embeddings("default", start, end, chunk_size=7))
    assert [len(c) for c in chunks] == [7, 7, 6]
    ids = [i for c in chunks for i in c.sample_ids]
    assert ids == [s.id for s in samples[2:22]]
    times = [t for c in chunks for t in c.event_times]
    assert times == [s.event_time for s in samples[2:22]]
    by_id = {s.id: s for s in samples}
    for chunk in chunks:
        for kind in ("image", "prompt", "response"):
            rows, where = chunk.vectors[kind], chunk.index[kind]
            assert rows.dtype == np.float32 and rows.shape == (len(where), 8)
            for row, position in zip(rows, where, strict=True):
                expected = by_id[chunk.sample_ids[position]].embeddings[kind]
                np.testing.assert_allclose(row, expected, atol=F16_ATOL)
        # text-only records have no image row; every record has a prompt row
        assert len(chunk.index["prompt"]) == len(chunk)
        with_image = [by_id[i].has_image for i in chunk.sample_ids]
        assert list(chunk.index["image"]) == [k for k, has in enumerate(with_image) if has]
        assert chunk.vectors["reference"].shape == (0, 0)  # nobody has one
        expected_ood = [by_id[i].ood_score for i in chunk.sample_ids]
        assert [None if np.isnan(x) else x for x in chunk.ood_scores] == expected_ood


def test_embedding_reads_select_kinds_and_stop_early(repo: Repository) -> None:
    _fill(repo, 12)
    end = T0 + timedelta(hours=1)
    chunks = list(repo.iter_embeddings("default", T0, end, kinds=["image"], chunk_size=100))
    assert len(chunks) == 1 and set(chunks[0].vectors) == {"image"}
    assert len(chunks[0]) == 12  # samples without the kind are still listed
    assert len(chunks[0].index["image"]) == 8
    iterator = repo.iter_embeddings("default", T0, end, chunk_size=5)
    assert len(next(iterator)) == 5
    iterator.close()  # an abandoned read releases its connection
    assert repo.count_samples("default", T0, end) == 12
    assert list(repo.iter_embeddings("nobody", T0, end)) == []
    assert list(repo.iter_embeddings("default", end, end + timedelta(hours=1))) == []
    with pytest.raises(ValueError, match="kinds"):
        list(repo.iter_embeddings("default", T0, end, kinds=["audio"]))


def test_inbox_round_trip_claim_ack_release(repo: Repository) -> None:
    records = [make_record(i, reference=i == 1) for i in range(5)]
    ids = repo.enqueue(records)
    assert len(ids) == 5 and ids == sorted(ids)
    assert repo.inbox_depth() == 5
    claimed = repo.claim("w1", limit=3)
    assert [c.id for c in claimed] == ids[:3]
    assert [c.record for c in claimed] == records[:3]  # the record survives the inbox intact
    assert all(c.attempts == 1 for c in claimed)
    rest = repo.claim("w2", limit=10)
    assert [c.id for c in rest] == ids[3:]
    assert repo.claim("w3") == []  # everything is leased
    assert repo.ack([claimed[0].id], "w2") == 0  # not w2's to acknowledge
    assert repo.ack([c.id for c in claimed], "w1") == 3
    assert repo.release([rest[0].id], "w2") == 1  # given back unprocessed
    again = repo.claim("w3")
    assert [c.id for c in again] == [rest[0].id] and again[0].attempts == 2
    assert repo.inbox_depth() == 2


def test_samples_and_their_inbox_acks_commit_together(repo: Repository) -> None:
    rng = np.random.default_rng(5)
    records = [make_record(i) for i in range(3)]
    repo.enqueue(records)
    claimed = repo.claim("w1", limit=3)
    acked = repo.add_samples(
        [make_sample(c.record, rng) for c in claimed],
        ack=[c.id for c in claimed],
        worker_id="w1",
    )
    assert acked == 3 and repo.inbox_depth() == 0
    assert repo.count_samples("default", T0, T0 + timedelta(seconds=1)) == 3
    with pytest.raises(ValueError, match="worker_id"):
        repo.add_samples([], ack=[1])


def test_late_reference_is_embedded_onto_its_sample_and_its_text_dropped(
    repo: Repository,
) -> None:
    rng = np.random.default_rng(6)
    repo.add_samples([make_sample(make_record(1), rng)])
    early = repo.add_late_reference("rec-000002", "not stored yet")  # sample comes later
    ref_id = repo.add_late_reference("rec-000001", "the reference answer")
    pending = repo.pending_late_references()
    assert [p.id for p in pending] == [ref_id]  # only references whose sample exists
    assert pending[0].text == "the reference answer"
    vector = unit_vector(rng)
    where = repo.resolve_late_reference(ref_id, vector)
    assert where is not None and where.stream == "default" and where.event_time == T0
    stored = repo.get_sample("rec-000001")
    assert stored is not None and stored.has_reference and "reference" in stored.kinds
    assert stored.reference_sha256 == content_sha256("the reference answer")
    chunk = next(repo.iter_embeddings("default", T0, T0 + timedelta(seconds=1)))
    np.testing.assert_allclose(chunk.vectors["reference"][0], vector, atol=F16_ATOL)
    resolved = repo.get_late_reference(ref_id)
    assert resolved is not None and resolved.text is None and resolved.resolved_at is not None
    assert repo.pending_late_references() == []
    assert repo.resolve_late_reference(early, vector) is None  # its sample is unknown
    assert repo.resolve_late_reference(10**9, vector) is None


def _window(
    stream: str = "default", start: datetime = T0, *, n: int = 120, **changes: object
) -> WindowResult:
    result = WindowResult(
        key=WindowKey(stream, start, start + timedelta(minutes=5)),
        n=n,
        n_images=80,
        n_references=12,
        status="ok",
        risk_level=RiskLevel.WARNING,
        estimator_version="club-paper-global@1",
        computed_at=T0 + timedelta(minutes=6),
        jsd=TermValues(visual=0.21, text=0.05, output_id=0.11, output_live=None),
        p_values=TermValues(visual=0.001, text=0.4, output_id=0.2, output_live=None),
        thresholds=TermValues(visual=0.15, text=0.16, output_id=0.14, output_live=None),
        bound_scale_adjusted=1.9,
        bound_entropy_scaled=None,
        bound_complete=False,
        emi_live=None,
        emi_id=0.42,
        emid=None,
        emid_interval=None,
        ood_fraction=0.07,
    )
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def test_window_round_trips_every_field(repo: Repository) -> None:
    result = _window(emid=0.1, emid_interval=(0.02, 0.3), emi_live=0.3, bound_complete=True)
    window_id = repo.upsert_window(result)
    (stored,) = repo.get_windows("default")
    assert stored == dataclasses.replace(result, id=window_id)
    assert repo.get_window(window_id) == stored
    assert repo.get_window("12345678") is None and repo.get_window("x") is None
    assert stored.to_dict()["jsd"]["output_live"] is None  # absent stays null, never zero


def test_window_detector_and_warning_round_trip(repo: Repository) -> None:
    reading = DetectorReading(score=-0.25, statistic=6.5, threshold=6.125, alarmed=True)
    window_id = repo.upsert_window(_window(detector=reading, warning=False))
    stored = repo.get_window(window_id)
    assert stored is not None and stored.detector == reading and stored.warning is False
    carried = DetectorReading(score=None, statistic=0.0, threshold=6.125, alarmed=False)
    repo.upsert_window(
        _window("default", T0 + timedelta(minutes=5), detector=carried, status="insufficient")
    )
    none_id = repo.upsert_window(_window("default", T0 + timedelta(minutes=10)))
    first, second, third = repo.get_windows("default")
    assert second.detector == carried and second.detector.score is None
    assert third.id == none_id and third.detector is None and third.warning is None
    assert third.to_dict()["detector"] is None
    assert first.to_dict()["detector"] == {
        "score": -0.25,
        "statistic": 6.5,
        "threshold": 6.125,
        "alarmed": True,
    }


def test_recomputing_a_window_updates_the_same_row(repo: Repository) -> None:
    first = repo.upsert_window(_window())
    assert repo.upsert_window(_window()) == first  # idempotent
    again = repo.upsert_window(
        _window(n=150, estimator_version="club@2", risk_level=RiskLevel.CRITICAL)
    )
    assert again == first
    (stored,) = repo.get_windows("default")
    assert stored.n == 150 and stored.estimator_version == "club@2"
    assert stored.risk_level is RiskLevel.CRITICAL


def test_windows_are_listed_by_stream_and_range(repo: Repository) -> None:
    for k in range(4):
        repo.upsert_window(_window(start=T0 + timedelta(minutes=5 * k)))
    repo.upsert_window(_window("other"))
    starts = [w.key.start for w in repo.get_windows("default")]
    assert starts == [T0 + timedelta(minutes=5 * k) for k in range(4)]
    inside = repo.get_windows("default", T0 + timedelta(minutes=6), T0 + timedelta(minutes=12))
    assert [w.key.start for w in inside] == [T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)]
    assert repo.get_windows("nobody") == []


def test_risk_transitions_record_the_stream_history(repo: Repository) -> None:
    assert repo.current_risk("default") is RiskLevel.OK
    window_id = repo.upsert_window(_window())
    repo.record_risk_transition(
        "default", T0, RiskLevel.OK, RiskLevel.WARNING, window_id=window_id, reason="visual p"
    )
    repo.record_risk_transition(
        "default", T0 + timedelta(minutes=5), RiskLevel.WARNING, RiskLevel.CRITICAL
    )
    history = repo.risk_transitions("default")
    assert [(h.from_level, h.to_level) for h in history] == [
        (RiskLevel.OK, RiskLevel.WARNING),
        (RiskLevel.WARNING, RiskLevel.CRITICAL),
    ]
    assert history[0].window_id == window_id and history[0].reason == "visual p"
    assert repo.current_risk("default") is RiskLevel.CRITICAL
    assert len(repo.risk_transitions("default", since=T0 + timedelta(minutes=1))) == 1


def test_reference_sets_and_estimators_register_idempotently(repo: Repository) -> None:
    built = datetime(2025, 1, 1, tzinfo=UTC)
    info = ReferenceSetInfo(
        name="default",
        path="references/default",
        encoder_fingerprint="fp1",
        checksum="sha256:aa",
        n_samples=1000,
        n_images=900,
        n_references=1000,
        built_at=built,
        details={"source": "manifest.jsonl"},
    )
    ref_id = repo.register_reference_set(info)
    assert repo.register_reference_set(dataclasses.replace(info, path="moved")) == ref_id
    newer = dataclasses.replace(info, checksum="sha256:bb", built_at=built + timedelta(days=1))
    assert repo.register_reference_set(newer) != ref_id
    latest = repo.get_reference_set("default")
    assert latest is not None and latest.checksum == "sha256:bb"
    assert latest.details == {"source": "manifest.jsonl"} and latest.registered_at is not None
    assert repo.get_reference_set("nope") is None

    club = EstimatorInfo(
        name="club",
        version="1",
        kind="club",
        path="estimators/club-1.pt",
        checksum="sha256:cc",
        trained_at=built,
        reference_set_id=ref_id,
        details={"hidden": 500},
    )
    est_id = repo.register_estimator(club)
    assert repo.register_estimator(dataclasses.replace(club, checksum="sha256:dd")) == est_id
    repo.register_estimator(dataclasses.replace(club, version="2", trained_at=T0))
    latest_club = repo.get_estimator("club")
    assert latest_club is not None and latest_club.version == "2"
    first = repo.get_estimator("club", "1")
    assert first is not None and first.checksum == "sha256:dd" and first.reference_set_id == ref_id
    assert first.details == {"hidden": 500}


def test_raw_content_is_kept_only_when_switched_on_and_purged_after_its_ttl(
    raw_repo: Repository,
) -> None:
    rng = np.random.default_rng(7)
    record = make_record(1, reference=True)
    raw_repo.add_samples([make_sample(record, rng)])
    raw = raw_repo.get_raw(record.id)
    assert raw is not None
    assert (raw.prompt, raw.response, raw.reference, raw.image) == (
        record.prompt,
        record.response,
        record.reference,
        record.image,
    )
    # A late reference whose sample never shows up is forgotten after the TTL too.
    stored_at = datetime.now(UTC)
    raw_repo.add_late_reference("never-sampled", "text", received_at=stored_at)
    soon = raw_repo.purge_raw(now=stored_at + timedelta(hours=1))
    assert soon == PurgeCounts(raw_content=0, late_references=0)
    assert raw_repo.get_raw(record.id) is not None
    later = raw_repo.purge_raw(now=stored_at + timedelta(days=1, minutes=1))
    assert later.raw_content == 1 and later.late_references == 1
    assert raw_repo.get_raw(record.id) is None
    assert raw_repo.get_sample(record.id) is not None  # hashes and embeddings stay


def test_switching_raw_retention_off_purges_what_was_kept(
    raw_repo: Repository, repo: Repository
) -> None:
    rng = np.random.default_rng(8)
    raw_repo.add_samples([make_sample(make_record(1), rng)])
    assert repo.purge_raw().raw_content == 1  # repo has raw retention off
    assert repo.get_raw("rec-000001") is None


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = create_db_engine(
        f"sqlite:///{tmp_path / 'p.db'}", connect_timeout=timedelta(seconds=2.5)
    )
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 2500
    finally:
        engine.dispose()


def test_foreign_keys_are_enforced(repo: Repository) -> None:
    with pytest.raises(IntegrityError), repo.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO embeddings (sample_id, kind, dim, vector) VALUES (:s, :k, 1, :v)"),
            {"s": "missing", "k": "prompt", "v": b"\x00\x00"},
        )
