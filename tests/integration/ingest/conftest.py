"""Shared fixtures for the ingest suite (records API, sidecar, workers): a migrated SQLite
repository, metrics on a fresh registry, settings with small limits, the app, and the app
served by uvicorn on a free loopback port.

Reuse: ``serve(app)`` (a context manager yielding the base URL) runs any ASGI app on
127.0.0.1 in a thread; ``running_app`` is the ingest app served that way; ``make_settings``
builds settings with the test limits (override any section by keyword).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import (
    EncoderSettings,
    ImageEncoderSettings,
    IngestSettings,
    Settings,
    StreamSettings,
)
from monitor.ingest.app import create_app
from monitor.ingest.readiness import Readiness
from monitor.ingest.service import IngestService
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository

# Small limits, so each one can be crossed cheaply in a test.
TEST_INGEST = IngestSettings(
    max_body_bytes=4 * 1024 * 1024,
    max_batch_records=200,
    max_text_chars=10_000,
    max_messages=16,
    max_inbox_depth=10_000,
)
TEST_STREAMS = [
    StreamSettings(name="default"),
    StreamSettings(name="half", sample_rate=0.5),
]


def make_settings(**sections: Any) -> Settings:
    """Test settings: two streams (default, half at rate 0.5), small limits, 1 MiB images."""
    values: dict[str, Any] = {
        "ingest": TEST_INGEST,
        "streams": TEST_STREAMS,
        "encoders": EncoderSettings(image=ImageEncoderSettings(max_bytes=1024 * 1024)),
    }
    values.update(sections)
    return Settings(**values)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    migrate.upgrade(engine)
    repo = Repository(engine)
    yield repo
    repo.close()


@pytest.fixture
def metrics(settings: Settings) -> MonitorMetrics:
    return MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def ingest(settings: Settings, repository: Repository, metrics: MonitorMetrics) -> IngestService:
    return IngestService(settings, repository, metrics)


@pytest.fixture
def app(
    settings: Settings,
    repository: Repository,
    metrics: MonitorMetrics,
    readiness: Readiness,
    ingest: IngestService,
) -> FastAPI:
    return create_app(settings, repository, metrics, readiness=readiness, ingest=ingest)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """The app in process (ASGI, no sockets): fast, for the many-request tests."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@contextmanager
def serve(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` with uvicorn on a free port of ``host`` in a thread; yields its base URL."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class RunningApp:
    """The ingest app served on loopback, with what it was built from."""

    url: str
    app: FastAPI
    settings: Settings
    repository: Repository
    metrics: MonitorMetrics


@pytest.fixture
def running_app(
    app: FastAPI, settings: Settings, repository: Repository, metrics: MonitorMetrics
) -> Iterator[RunningApp]:
    with serve(app) as url:
        yield RunningApp(url, app, settings, repository, metrics)
