"""A real Prometheus server scrapes MonitorMetrics with the shipped rules: the critical-drift
alert fires for the critical stream only.

The exporter is static (prometheus_client's HTTP server on loopback, gauges set by the test);
the same fixture scrapes ``mllm-monitor serve`` in the daemon's end-to-end test. ``for:`` is
shortened to 1 s (see prometheus_server.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from monitor.metrics import MonitorMetrics
from tests.integration.deploy.prometheus_server import DEPLOY, PrometheusServer

pytestmark = pytest.mark.slow


def dashboard_exprs() -> list[str]:
    doc = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    panels = [p for row in doc["panels"] for p in (row, *row.get("panels", []))]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture
def exporter() -> Iterator[tuple[str, MonitorMetrics]]:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, ["shifted", "id"])
    metrics.set_window_settings(size_seconds=60, lateness_seconds=5)
    now = time.time()
    for stream, level, statistic in (("shifted", 2, 9.5), ("id", 0, 0.4)):
        metrics.risk_level.labels(stream=stream).set(level)
        metrics.detector_statistic.labels(stream=stream).set(statistic)
        metrics.detector_threshold.labels(stream=stream).set(6.1)
        metrics.last_window_end_timestamp_seconds.labels(stream=stream).set(now)
        metrics.calibrated.labels(stream=stream).set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_critical_alert_fires_for_the_critical_stream_only(
    tmp_path: Path, exporter: tuple[str, MonitorMetrics]
) -> None:
    target, metrics = exporter
    with PrometheusServer(tmp_path / "prometheus", [target]) as prometheus:
        alert = prometheus.wait_for_alert("MllmMonitorCriticalDrift", {"stream": "shifted"})
        assert alert["labels"]["severity"] == "critical"
        # Its description reads the stream's detector gauges through Prometheus's template
        # `query`, expanded on the real server (an error reads "<error expanding template ...>").
        description = alert["annotations"]["description"]
        assert description.startswith("Stream shifted is at risk level 2 (critical). ")
        assert "crossed its threshold: statistic 9.5 > threshold 6.1;" in description
        assert "back at or below its clear level" in description
        # The recording rule: each stream's statistic over its threshold.
        ratio = {
            s["metric"]["stream"]: round(float(s["value"][1]), 4)
            for s in prometheus.query("stream:mllm_monitor_detector_statistic:ratio_to_threshold")
        }
        assert ratio == {"shifted": round(9.5 / 6.1, 4), "id": round(0.4 / 6.1, 4)}
        assert prometheus.targets_up()
        # The ID stream was scraped (risk 0) and its alert is neither pending nor firing.
        level = prometheus.query('mllm_monitor_risk_level{stream="id"}')
        assert [sample["value"][1] for sample in level] == ["0"]
        assert prometheus.alerts_named("MllmMonitorCriticalDrift", {"stream": "id"}) == []
        # Nothing else fires on a healthy, calibrated, fresh exporter.
        names = {a["labels"]["alertname"] for a in prometheus.alerts()}
        assert names == {"MllmMonitorCriticalDrift"}

        # Every dashboard query is valid PromQL that Prometheus evaluates ($stream: all).
        for expr in dashboard_exprs():
            prometheus.query(expr.replace("$stream", ".+"))

        # The level drops to warning: the alert resolves (leaves the active list).
        metrics.risk_level.labels(stream="shifted").set(1)
        deadline = time.monotonic() + 20
        while prometheus.alerts_named("MllmMonitorCriticalDrift") and time.monotonic() < deadline:
            time.sleep(0.25)
        assert prometheus.alerts_named("MllmMonitorCriticalDrift") == []
