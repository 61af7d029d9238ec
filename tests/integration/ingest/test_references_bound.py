"""Late references are bounded per record id ([ingest] max_references_per_record): a request
that would pass the bound is refused whole with a 422 naming the reference that passes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.models import LateReference
from monitor.store.repository import Repository
from tests.integration.ingest.conftest import TEST_INGEST, make_settings
from tests.integration.ingest.test_records_api import good
from tests.integration.store.conftest import fresh_postgres, pg_admin  # noqa: F401


def build(repository: Repository, **limits: Any) -> TestClient:
    settings = make_settings(ingest=TEST_INGEST.model_copy(update=limits))
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    return TestClient(create_app(settings, repository, metrics), raise_server_exceptions=False)


def stored(repository: Repository, record_id: str) -> int:
    with repository.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(LateReference)
                .where(LateReference.record_id == record_id)
            ).scalar_one()
        )


def refs(record_id: str, count: int, start: int = 0) -> dict[str, Any]:
    return {
        "references": [
            {"id": record_id, "reference": f"answer {i}"} for i in range(start, start + count)
        ]
    }


def test_a_thousand_references_for_one_id_are_refused_and_none_stored(
    repository: Repository,
) -> None:
    client = build(repository, max_batch_records=1000)
    assert client.post("/v1/records", json=good(1)).status_code == 202
    answer = client.post("/v1/references", json=refs("good-1", 1000))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["field"] == "references[8].id"  # the ninth, with the default bound of 8
    assert "max_references_per_record" in error["message"] and "8" in error["message"]
    assert stored(repository, "good-1") == 0


def test_the_bound_counts_what_is_stored_already(repository: Repository) -> None:
    client = build(repository, max_references_per_record=3)
    assert client.post("/v1/records", json={"records": [good(1), good(2)]}).status_code == 202
    first = client.post("/v1/references", json=refs("good-1", 2))
    assert first.status_code == 202 and first.json()["pending"] == 2
    # one more is within the bound; two more are not (the second of them is named)
    over = client.post(
        "/v1/references",
        json={
            "references": [
                {"id": "good-2", "reference": "fine"},
                {"id": "good-1", "reference": "third"},
                {"id": "good-1", "reference": "fourth"},
            ]
        },
    )
    assert over.status_code == 422 and over.json()["error"]["field"] == "references[2].id"
    assert stored(repository, "good-1") == 2 and stored(repository, "good-2") == 0
    third = client.post("/v1/references", json={"id": "good-1", "reference": "third"})
    assert third.status_code == 202 and third.json()["pending"] == 1
    fourth = client.post("/v1/references", json={"id": "good-1", "reference": "fourth"})
    assert fourth.status_code == 422 and fourth.json()["error"]["field"] == "id"
    assert stored(repository, "good-1") == 3
    # other ids are not affected by one id's bound
    assert client.post("/v1/references", json=refs("good-2", 3)).status_code == 202
    assert stored(repository, "good-2") == 3


@pytest.fixture
def pg_repository(fresh_postgres: str) -> Iterator[Repository]:  # noqa: F811
    engine = create_db_engine(fresh_postgres)
    migrate.upgrade(engine)
    repo = Repository(engine)
    yield repo
    repo.close()


def test_the_bound_on_postgres(pg_repository: Repository) -> None:
    client = build(pg_repository, max_references_per_record=4, max_batch_records=1000)
    assert client.post("/v1/records", json=good(1)).status_code == 202
    assert client.post("/v1/references", json=refs("good-1", 3)).status_code == 202
    over = client.post("/v1/references", json=refs("good-1", 1000, start=3))
    assert over.status_code == 422 and over.json()["error"]["field"] == "references[1].id"
    assert stored(pg_repository, "good-1") == 3
    assert client.post("/v1/references", json=refs("good-1", 1, start=3)).status_code == 202
    assert stored(pg_repository, "good-1") == 4
