"""Hostile requests to the records and windows APIs, and a storage outage seen through HTTP.

* a refused request is counted once, not once per record it claims to hold (a 100,000-record
  batch refused with 413 must not trip the rejected-records alert on its own);
* bad ``since`` / ``until`` of ``GET /v1/windows`` are a 400 naming the parameter, and a window
  id no database can hold is a 404 (both were 500s);
* a gzip body is inflated under ``[ingest] max_body_bytes`` (a gzip bomb is a 413, not memory);
  other content codings are a 415 naming Content-Encoding;
* a storage outage (a PostgreSQL cluster of the test's own, stopped and started again) answers
  503 with Retry-After, counts the refused records as ``unavailable`` and turns the inbox depth
  gauge to NaN, then recovers.
"""

from __future__ import annotations

import gzip
import json
import math
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import IngestSettings, Settings
from monitor.ingest.app import create_app
from monitor.ingest.readiness import Readiness
from monitor.ingest.service import IngestService
from monitor.ingest.windows_api import build_windows_router
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from monitor.timestamps import parse_time
from tests.integration.daemon.own_postgres import OwnPostgres, own_postgres
from tests.integration.ingest.conftest import TEST_INGEST, make_settings, serve

JSON = {"content-type": "application/json"}


def good(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"hostile-{i}", "prompt": f"prompt {i}", "response": "an answer", **extra}


def outcome_total(metrics: MonitorMetrics, outcome: str) -> float:
    """``records_total{outcome}`` summed over every stream label."""
    return sum(
        sample.value
        for family in metrics.records.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["outcome"] == outcome
    )


def counter(metrics: MonitorMetrics, stream: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "mllm_monitor_records_total", {"stream": stream, "outcome": outcome}
    )
    return value or 0.0


# -- item 7: a refused request is counted once --------------------------------------------------


def test_an_oversized_batch_is_one_rejection_not_one_per_record(
    client: TestClient, metrics: MonitorMetrics, settings: Settings
) -> None:
    count = 100_000
    assert count > settings.ingest.max_batch_records
    payload = json.dumps({"records": [{"prompt": "x"} for _ in range(count)]}).encode()
    assert len(payload) < settings.ingest.max_body_bytes  # refused for its records, not bytes
    answer = client.post("/v1/records", content=payload, headers=JSON)
    assert answer.status_code == 413 and answer.json()["error"]["field"] == "records"
    assert outcome_total(metrics, "rejected") == 1


def test_a_batch_with_one_bad_record_rejects_its_records_by_stream(
    client: TestClient, metrics: MonitorMetrics
) -> None:
    # parsed and refused as a whole: each of its records was offered and refused
    records = [good(1), good(2, stream="half"), good(3, timestamp="yesterday")]
    answer = client.post("/v1/records", json={"records": records})
    assert answer.status_code == 422
    assert counter(metrics, "default", "rejected") == 2
    assert counter(metrics, "half", "rejected") == 1
    assert outcome_total(metrics, "rejected") == 3


@pytest.mark.parametrize(
    ("payload", "headers", "status"),
    [
        (b'{"prompt": "x"}', {"content-type": "text/plain"}, 415),
        (b"x" * (TEST_INGEST.max_body_bytes + 1), JSON, 413),
        (b'{"prompt": ', JSON, 400),
    ],
    ids=["media type", "streamed too large", "bad json"],
)
def test_a_request_refused_before_its_records_counts_once(
    running_app: Any, payload: bytes, headers: dict[str, str], status: int
) -> None:
    with httpx.Client(base_url=running_app.url, timeout=30) as http:
        answer = http.post("/v1/records", content=payload, headers=headers)
    assert answer.status_code == status, answer.text
    assert outcome_total(running_app.metrics, "rejected") == 1
    assert counter(running_app.metrics, "_other", "rejected") == 1


def test_a_declared_size_over_the_limit_counts_once(running_app: Any) -> None:
    # a Content-Length of a terabyte, refused before the body is read (httpx will not lie)
    host, port = running_app.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n{}"
        )
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 413"), head
    assert outcome_total(running_app.metrics, "rejected") == 1


def test_a_repeated_id_is_reported_as_a_duplicate_in_the_answer(
    client: TestClient, metrics: MonitorMetrics
) -> None:
    first = client.post("/v1/records", json=good(1))
    assert first.status_code == 202 and first.json()["duplicates"] == 0
    again = client.post("/v1/records", json=good(1, prompt="another prompt, same id"))
    assert again.status_code == 202, again.text
    assert {k: again.json()[k] for k in ("accepted", "sampled", "duplicates", "skipped")} == {
        "accepted": 1,
        "sampled": 0,
        "duplicates": 1,
        "skipped": 0,
    }
    assert counter(metrics, "default", "duplicate") == 1


# -- item 9: the windows API refuses times and ids it cannot hold -------------------------------


@pytest.fixture
def windows_client(
    settings: Settings, repository: Repository, metrics: MonitorMetrics
) -> Iterator[TestClient]:
    names = [s.name for s in settings.streams]
    app = create_app(
        settings,
        repository,
        metrics,
        readiness=Readiness(),
        ingest=IngestService(settings, repository, metrics),
        routers=[build_windows_router(repository, names)],
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


HOSTILE_TIMES = [
    "0001-01-01T00:00:00+01:00",  # astimezone overflows below year 1
    "9999-12-31T23:59:59-01:00",  # ... and above year 9999
    "1" + "0" * 400,  # an epoch of 401 digits
    "-1",
    "1e300",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59Z",
    "2026-03-01T12:00:00Z" + " " * 10 + "x" * 100,
]


@pytest.mark.parametrize("value", HOSTILE_TIMES)
@pytest.mark.parametrize("name", ["since", "until"])
def test_windows_bad_times_are_400_naming_the_parameter(
    windows_client: TestClient, name: str, value: str
) -> None:
    answer = windows_client.get("/v1/windows", params={name: value})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_parameter" and error["field"] == name
    assert error["message"].startswith(f"{name}: ")


@pytest.mark.parametrize("value", HOSTILE_TIMES)
def test_parse_time_raises_value_error_only(value: str) -> None:
    # the CLI and the windows API both parse with it and turn a ValueError into a usage error
    with pytest.raises(ValueError, match=r"time|range|long|plausible|1970|9000|unit"):
        parse_time(value)


def test_parse_time_still_takes_naive_times_as_utc() -> None:
    assert parse_time("2026-03-01T12:00:00").isoformat() == "2026-03-01T12:00:00+00:00"


@pytest.mark.parametrize(
    "window_id",
    [
        "9223372036854775808",  # 2**63: too large for SQLite's INTEGER
        "9" * 400,
        "-9223372036854775809",
        "0",
        "-1",
        "+1",
        "1_0",
        "\uff11",  # FULLWIDTH DIGIT ONE, which int() accepts
        "%20",
    ],
)
def test_windows_id_that_cannot_exist_is_404(windows_client: TestClient, window_id: str) -> None:
    answer = windows_client.get(f"/v1/windows/{window_id}")
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["field"] == "id"


def test_windows_api_over_loopback_http(
    settings: Settings, repository: Repository, metrics: MonitorMetrics
) -> None:
    """The issue's requests as sent, through uvicorn: 400 naming the parameter, 404 for the id."""
    names = [s.name for s in settings.streams]
    app = create_app(
        settings, repository, metrics, routers=[build_windows_router(repository, names)]
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for name in ("since", "until"):
            for value in HOSTILE_TIMES[:3]:
                answer = http.get("/v1/windows", params={name: value})
                assert answer.status_code == 400, (name, value, answer.text)
                assert answer.json()["error"]["field"] == name
        answer = http.get("/v1/windows/9223372036854775808")
        assert answer.status_code == 404 and answer.json()["error"]["field"] == "id"
        assert http.get("/v1/windows", params={"since": "2026-03-01T12:00:00Z"}).json() == {
            "windows": []
        }


# -- item 14: content codings -------------------------------------------------------------------


def test_a_gzip_body_is_inflated_and_accepted(client: TestClient, repository: Repository) -> None:
    payload = gzip.compress(json.dumps({"records": [good(1), good(2)]}).encode())
    answer = client.post(
        "/v1/records", content=payload, headers={**JSON, "content-encoding": "gzip"}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["sampled"] == 2 and repository.inbox_depth() == 2


def test_a_gzip_bomb_is_413_without_inflating_it(
    running_app: Any,
) -> None:
    limit = running_app.settings.ingest.max_body_bytes
    inflated = 64 * limit  # 256 MiB of spaces, about 256 KB compressed
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1024 * 1024)
    parts = [compressor.compress(b'{"prompt": "x", "pad": "')]
    parts += [compressor.compress(chunk) for _ in range(inflated // len(chunk))]
    parts.append(compressor.compress(b'"}') + compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < limit // 8
    with httpx.Client(base_url=running_app.url, timeout=30) as http:
        start = time.monotonic()
        answer = http.post(
            "/v1/records", content=bomb, headers={**JSON, "content-encoding": "gzip"}
        )
        elapsed = time.monotonic() - start
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["code"] == "payload_too_large" and "max_body_bytes" in error["message"]
        assert elapsed < 5  # stopped at the cap, not after inflating 256 MiB
        assert http.post("/v1/records", json=good(1)).status_code == 202


@pytest.mark.parametrize(
    ("encoding", "payload", "status", "field"),
    [
        ("br", b"\x1b\x00", 415, "content-encoding"),
        ("deflate, gzip", b"x", 415, "content-encoding"),
        ("gzip", b"not gzip at all", 400, "body"),
        ("gzip", gzip.compress(b'{"prompt": "x"}')[:-6], 400, "body"),  # truncated stream
        ("gzip", gzip.compress(b'{"prompt": "x"}') + b"trailing", 400, "body"),
    ],
    ids=["brotli", "two codings", "not gzip", "truncated gzip", "trailing garbage"],
)
def test_content_codings_other_than_gzip_or_broken_gzip_are_refused(
    client: TestClient, encoding: str, payload: bytes, status: int, field: str
) -> None:
    answer = client.post(
        "/v1/records", content=payload, headers={**JSON, "content-encoding": encoding}
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field
    if status == 415:
        assert "Content-Encoding" in error["message"]


def test_identity_content_encoding_is_plain(client: TestClient) -> None:
    answer = client.post(
        "/v1/records",
        content=json.dumps(good(1)).encode(),
        headers={**JSON, "content-encoding": "identity"},
    )
    assert answer.status_code == 202, answer.text


# -- item 18: a storage outage, through HTTP ----------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of the test's own, that it stops and starts (never the shared one)."""
    with own_postgres() as server:
        yield server


def scraped(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = http.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def records_sample(values: dict[Any, float], stream: str, outcome: str) -> float:
    key = (
        "mllm_monitor_records_total",
        tuple(sorted({"stream": stream, "outcome": outcome}.items())),
    )
    return values[key]


@contextmanager
def app_on(url: str, settings: Settings) -> Iterator[tuple[str, Repository, MonitorMetrics]]:
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    repository = Repository(engine)
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    try:
        with serve(create_app(settings, repository, metrics)) as base:
            yield base, repository, metrics
    finally:
        repository.close()


def test_postgres_outage_is_503_with_retry_after_counted_and_a_nan_inbox_gauge(
    own_cluster: OwnPostgres,
) -> None:
    settings = make_settings(
        ingest=IngestSettings(**{**TEST_INGEST.model_dump(), "retry_after": "7s"})
    )
    batch = {"records": [good(1), good(2), good(3, stream="half")]}
    with app_on(own_cluster.url, settings) as (base, repository, _metrics):
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/v1/records", json=good(0)).status_code == 202
            assert scraped(http)[("mllm_monitor_inbox_depth", ())] == 1.0

            own_cluster.stop()
            refused = http.post("/v1/records", json=batch)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert refused.headers["retry-after"] == "7"
            late = http.post("/v1/references", json={"id": "hostile-0", "reference": "r"})
            assert late.status_code == 503 and late.headers["retry-after"] == "7"
            values = scraped(http)
            assert math.isnan(values[("mllm_monitor_inbox_depth", ())])
            # the refused records, by stream, as what the sender must send again
            assert records_sample(values, "default", "unavailable") == 2
            assert records_sample(values, "half", "unavailable") == 1
            assert records_sample(values, "default", "rejected") == 0
            assert records_sample(values, "default", "sampled") == 1
            assert http.get("/healthz").status_code == 200

            own_cluster.start()
            again = http.post("/v1/records", json=batch)
            assert again.status_code == 202, again.text
            half_sampled = again.json()["sampled"] - 2
            values = scraped(http)
            assert values[("mllm_monitor_inbox_depth", ())] == 3.0 + half_sampled
            assert records_sample(values, "default", "unavailable") == 2
        assert repository.inbox_depth() == 3 + half_sampled
