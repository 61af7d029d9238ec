"""Fixtures for the storage suite: every test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from ``MLLM_MONITOR_TEST_POSTGRES_URL`` (a role allowed to CREATE DATABASE;
``.ci/run`` sets it up). Each PostgreSQL test gets a database of its own, created from that
URL and dropped afterwards. Without the variable the PostgreSQL variants are skipped, which
under CI=true fails the run (tests/conftest.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from monitor.records import TrafficRecord
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from monitor.store.types import NewSample
from tests.integration.databases import drop_database

POSTGRES_ENV = "MLLM_MONITOR_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    url = postgres_url()
    if url is None:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL to test against")
    engine = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_postgres(pg_admin: Engine) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"mllm_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield make_url(postgres_url() or "").set(database=name).render_as_string(hide_password=False)
    drop_database(pg_admin, name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    url: str = request.getfixturevalue("fresh_postgres")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    """The engine, its database upgraded to head."""
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def repo(migrated: Engine) -> Repository:
    return Repository(migrated)


@pytest.fixture
def raw_repo(migrated: Engine) -> Repository:
    """A repository with raw retention switched on (TTL one day)."""
    return Repository(migrated, store_raw=True, raw_ttl=timedelta(days=1))


def unit_vector(rng: np.random.Generator, dim: int = 8) -> np.ndarray:
    v = rng.standard_normal(dim)
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


def make_record(
    i: int,
    *,
    stream: str = "default",
    at: datetime = T0,
    image: bool = True,
    reference: bool = False,
) -> TrafficRecord:
    return TrafficRecord(
        id=f"rec-{i:06d}",
        timestamp=at,
        stream=stream,
        model="llava-1.5-7b",
        prompt=f"prompt {i}",
        image=bytes([i % 256]) * 16 if image else None,
        response=f"answer {i}",
        reference=f"reference {i}" if reference else None,
    )


def make_sample(
    record: TrafficRecord,
    rng: np.random.Generator,
    *,
    dim: int = 8,
    ood_score: float | None = 0.5,
) -> NewSample:
    kinds = ["prompt", "response"]
    if record.image is not None:
        kinds.append("image")
    if record.reference is not None:
        kinds.append("reference")
    return NewSample.from_record(
        record,
        {kind: unit_vector(rng, dim) for kind in kinds},
        encoder_fingerprint="clip-b32+xlmr-l0:test",
        ood_score=ood_score,
    )
