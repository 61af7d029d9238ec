"""Pure parts of the storage layer: encodings, hashes, URLs, time zones (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from monitor.errors import DatabaseUnavailableError, EmbeddingError
from monitor.records import TrafficRecord
from monitor.store._samples import decode_vectors, encode_vector
from monitor.store.engine import create_db_engine, masked, one_line, parse_url
from monitor.store.models import UTCDateTime
from monitor.store.types import (
    NewSample,
    content_sha256,
    record_from_json,
    record_to_json,
)


def test_vectors_are_float16_little_endian_and_decode_to_float32() -> None:
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(768).astype(np.float32)
    vector /= np.linalg.norm(vector)
    dim, blob = encode_vector(vector)
    assert dim == 768 and len(blob) == 2 * 768
    assert blob == vector.astype("<f2").tobytes()
    back = decode_vectors([blob, blob], 768)
    assert back.dtype == np.float32 and back.shape == (2, 768)
    np.testing.assert_allclose(back[1], vector, atol=1e-3)
    assert abs(float(np.linalg.norm(back[0])) - 1.0) < 1e-3


@pytest.mark.parametrize(
    ("vector", "problem"),
    [
        (np.zeros(0), "1-d"),
        (np.ones((2, 3)), "1-d"),
        (np.array([1.0, np.inf]), "NaN or infinite"),
        (np.array([1e6, 0.0]), "NaN or infinite"),  # overflows float16
    ],
)
def test_unusable_vectors_are_refused(vector: np.ndarray, problem: str) -> None:
    with pytest.raises(EmbeddingError, match=problem):
        encode_vector(vector)


def test_decoding_a_blob_of_the_wrong_size_fails() -> None:
    from monitor.errors import StorageError

    with pytest.raises(StorageError, match="dimension"):
        decode_vectors([b"\x00" * 6], 4)


def test_records_survive_the_inbox_json() -> None:
    record = TrafficRecord(
        id="r1",
        timestamp=datetime(2025, 1, 1, 9, tzinfo=timezone(timedelta(hours=2))),
        stream="s",
        model="m",
        prompt="Qu'y a-t-il sur l'image ? ü",
        image=bytes(range(256)),
        response="un chat",
        reference=None,
    )
    back = record_from_json(record_to_json(record))
    assert back == record  # same instant; returned in UTC
    assert back.timestamp.tzinfo is UTC


def test_samples_from_records_hash_content() -> None:
    record = TrafficRecord(id="r", timestamp=datetime(2025, 1, 1, tzinfo=UTC), prompt="hi")
    sample = NewSample.from_record(record, {}, encoder_fingerprint="fp")
    assert sample.prompt_sha256 == content_sha256("hi") == content_sha256(b"hi")
    assert sample.prompt_sha256 is not None and len(sample.prompt_sha256) == 64
    assert sample.image_sha256 is None and not sample.has_image and not sample.has_reference


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg://u:p@h/d"])
def test_utc_datetime_normalises_on_the_way_in_and_out(url: str) -> None:
    dialect = create_db_engine(url).dialect  # no connection is made
    kind = UTCDateTime()
    local = datetime(2025, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    bound = kind.process_bind_param(local, dialect)
    assert bound is not None
    if dialect.name == "sqlite":
        assert bound == datetime(2025, 1, 1, 12) and bound.tzinfo is None
    else:
        assert bound == local and bound.utcoffset() == timedelta(0)
    naive = datetime(2025, 1, 1, 12)
    out = kind.process_result_value(naive, dialect)
    assert out == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert kind.process_bind_param(None, dialect) is None


def test_urls_are_masked_and_postgresql_means_psycopg() -> None:
    assert masked("postgresql+psycopg://u:secret@h:5432/d") == "postgresql+psycopg://u:***@h:5432/d"
    assert "secret" not in masked("postgresql+psycopg://u:secret@h:notaport/d")
    assert parse_url("postgresql://u:p@h/d").drivername == "postgresql+psycopg"
    with pytest.raises(DatabaseUnavailableError, match="invalid database URL"):
        parse_url("not a url")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql+nosuchdriver://u:p@h/d", "cannot use database URL"),
        ("mysql://u:p@h/d", "unsupported database"),
    ],
)
def test_unusable_urls_fail_before_connecting(url: str, problem: str) -> None:
    with pytest.raises(DatabaseUnavailableError, match=problem) as info:
        create_db_engine(url)
    assert "\n" not in str(info.value) and ":p@" not in str(info.value)


def test_driver_errors_become_one_line() -> None:
    from sqlalchemy.exc import OperationalError

    exc = OperationalError("SELECT 1", {}, Exception("boom\n\tIs the server running?"))
    assert one_line(exc) == "boom Is the server running?"


def test_the_repository_exposes_every_part_method_under_a_flat_name() -> None:
    from monitor.store.repository import Repository

    repo = Repository(create_db_engine("sqlite://"))
    in_transaction = {(repo.streams, "find"), (repo.inbox, "ack_in")}  # take an open connection
    parts = (repo.streams, repo.inbox, repo.samples, repo.windows, repo.artifacts)
    flat = vars(repo)
    for part in parts:
        assert vars(part)["_db"] is repo.db  # one engine, one clock
        for name in dir(part):
            if name.startswith("_") or (part, name) in in_transaction:
                continue
            method = getattr(part, name)
            assert any(value == method for value in flat.values()), (
                f"{type(part).__name__}.{name} has no flat name on Repository"
            )
    assert vars(repo.samples)["_streams"] is repo.streams  # one stream-id cache
    assert vars(repo.windows)["_streams"] is repo.streams
    repo.close()
