"""The records API on PostgreSQL: durable before 202, all or nothing, 429 when full.

Uses the storage suite's fresh-database fixtures (a database per test, dropped after)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import TEST_INGEST, make_settings, serve
from tests.integration.ingest.test_records_api import good
from tests.integration.store.conftest import fresh_postgres, pg_admin  # noqa: F401


@pytest.fixture
def pg_repository(fresh_postgres: str) -> Iterator[Repository]:  # noqa: F811
    engine = create_db_engine(fresh_postgres)
    migrate.upgrade(engine)
    repo = Repository(engine)
    yield repo
    repo.close()


def test_postgres_all_or_nothing_durable_and_429(pg_repository: Repository) -> None:
    settings = make_settings(
        ingest=TEST_INGEST.model_copy(update={"max_inbox_depth": 150}),
    )
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    app = create_app(settings, pg_repository, metrics)
    with serve(app) as url, httpx.Client(base_url=url) as http:
        mixed = [good(i) for i in range(50)] + [good(50, timestamp="NaN")]
        refused = http.post("/v1/records", json={"records": mixed})
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "records[50].timestamp"
        assert pg_repository.inbox_depth() == 0
        ok = http.post(
            "/v1/records", json={"records": [good(i, stream="half") for i in range(100)]}
        )
        assert ok.status_code == 202
        sampled = ok.json()["sampled"]
        assert 0 < sampled < 100 and pg_repository.inbox_depth() == sampled
        fill = 150 - sampled
        batch = {"records": [good(1000 + i) for i in range(fill + 1)]}
        full = http.post("/v1/records", json=batch)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert pg_repository.inbox_depth() == sampled
        kept_id = next(i for i in ok.json()["ids"] if i in pg_repository.locate_records([i]))
        late = http.post("/v1/references", json={"id": kept_id, "reference": "r"})
        assert late.json() == {"joined": 0, "pending": 1, "skipped": 0}
        assert http.post("/v1/references", json={"id": "nope", "reference": "r"}).status_code == 404
    held = pg_repository.claim("w", limit=500)
    assert {entry.record.sampling_weight for entry in held} == {2.0}
