"""deploy/examples/otel-collector/collector.yaml: the Collector fans traces out to the existing
backend and to the monitor; its otlphttp exporter, whose endpoint gets ``/v1/traces`` appended,
reaches the monitor's POST /v1/traces with the bearer token. Checked against a real app on
loopback: the exporter's URL and header, as the Collector would build them, are accepted."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import CollectorRegistry

from monitor.config import NON_SETTING_VARIABLES, ServerSettings, Settings
from monitor.ingest.app import create_app
from monitor.ingest.otlp import GENAI_MARKERS
from monitor.metrics import MonitorMetrics
from monitor.store import migrate
from monitor.store.engine import create_db_engine
from monitor.store.repository import Repository
from tests.integration.deploy.deploy_files import document
from tests.integration.ingest.conftest import serve
from tests.support.otlp_spans import WRITERS, Recorder

COLLECTOR = "examples/otel-collector/collector.yaml"
EXPORTER = "otlphttp/mllm-monitor"
TOKEN_REFERENCE = re.compile(r"^Bearer \$\{env:([A-Z0-9_]+)\}$")


@pytest.fixture
def collector() -> dict[str, Any]:
    parsed: dict[str, Any] = document(COLLECTOR)
    return parsed


def test_the_monitor_exporter_is_the_root_url_with_the_token_from_the_environment(
    collector: dict[str, Any],
) -> None:
    exporter = collector["exporters"][EXPORTER]
    url = urlsplit(exporter["endpoint"])
    # otlphttp appends /v1/traces: a path here would be doubled (…/v1/traces/v1/traces).
    assert url.scheme == "http" and url.path in ("", "/")
    assert url.port == ServerSettings().port
    token = TOKEN_REFERENCE.match(exporter["headers"]["Authorization"])
    assert token is not None and token[1] in NON_SETTING_VARIABLES  # what compose.yaml reads


def test_every_trace_reaches_the_backend_and_llm_spans_the_monitor(
    collector: dict[str, Any],
) -> None:
    pipelines = collector["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in collector[kind], f"{name} is not defined under {kind}"
    [to_monitor] = [p for p in pipelines.values() if EXPORTER in p["exporters"]]
    to_backend = [p for p in pipelines.values() if "otlp/backend" in p["exporters"]]
    assert to_backend and set(to_monitor["receivers"]) <= set(to_backend[0]["receivers"])
    assert "kafka" in to_monitor["receivers"] and "otlp" in to_monitor["receivers"]
    assert not any(p.startswith("filter") for p in to_backend[0]["processors"])
    # The filter keeps every span the monitor reads as an LLM span.
    [condition] = collector["processors"]["filter/llm-spans"]["traces"]["span"]
    for marker in (*GENAI_MARKERS, "gen_ai.operation.name", "llm.request.type"):
        assert f'attributes["{marker}"] == nil' in condition, marker
    assert 'attributes["openinference.span.kind"] != "LLM"' in condition


def test_the_exporter_as_the_collector_builds_it_is_accepted(
    collector: dict[str, Any], tmp_path: Any
) -> None:
    token = "collector-token"
    settings = Settings(server=ServerSettings(token=token))
    engine = create_db_engine(f"sqlite:///{tmp_path / 'monitor.db'}")
    migrate.upgrade(engine)
    repository = Repository(engine)
    metrics = MonitorMetrics(CollectorRegistry(), [s.name for s in settings.streams])
    config = collector["exporters"][EXPORTER]
    header = TOKEN_REFERENCE.sub(f"Bearer {token}", config["headers"]["Authorization"])
    recorder = Recorder()
    WRITERS["openllmetry"](recorder.tracer, "through the collector", "a")
    try:
        with serve(create_app(settings, repository, metrics)) as url:
            # The Collector's URL: the configured root with its host swapped for loopback, and
            # /v1/traces appended as otlphttp does.
            root = urlsplit(config["endpoint"])._replace(netloc=urlsplit(url).netloc).geturl()
            endpoint = root.rstrip("/") + "/v1/traces"
            exporter = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": header})
            assert exporter.export(recorder.spans()) == SpanExportResult.SUCCESS
            bare = OTLPSpanExporter(endpoint=endpoint)  # without the token: refused
            assert bare.export(recorder.spans()) == SpanExportResult.FAILURE
        assert repository.inbox_depth() == 1
    finally:
        repository.close()
