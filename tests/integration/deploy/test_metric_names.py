"""Every metric named by the shipped alert rules and dashboard is one the app exports."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.metrics import MonitorMetrics
from tests.integration.deploy.deploy_files import document
from tests.integration.deploy.prometheus_server import ALERTS, DEPLOY, tool_path

DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
METRIC_NAME = re.compile(r"\bmllm_monitor_[a-z0-9_]*[a-z0-9]\b")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Names in a scrape of MonitorMetrics: families and samples (_total, _bucket, ...)."""
    registry = CollectorRegistry()
    MonitorMetrics(registry, ["default", "chat"])
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def rule_expressions() -> list[str]:
    doc = document(ALERTS)
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def annotation_texts() -> list[str]:
    """Annotations of the alert rules; some query gauges through templates (`query`)."""
    doc = document(ALERTS)
    return [
        str(text)
        for group in doc["groups"]
        for rule in group["rules"]
        for text in rule.get("annotations", {}).values()
    ]


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL string of the dashboard: panel targets and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "query", "definition"} and isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict) and key == "query" and "query" in value:
                found.append(str(value["query"]))
            else:
                found.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_queries(item))
    return found


def test_scrape_has_the_suffixed_names(exported: set[str]) -> None:
    # Sanity of the comparison itself: counters and histograms appear with their suffixes.
    assert {"mllm_monitor_records_total", "mllm_monitor_window_compute_seconds_bucket"} <= exported
    assert "mllm_monitor_records" in exported


def test_alert_rules_use_exported_metrics(exported: set[str]) -> None:
    used = {name for expr in rule_expressions() for name in METRIC_NAME.findall(expr)}
    assert len(used) >= 10
    assert used - exported == set()


def test_alert_annotations_query_exported_metrics(exported: set[str]) -> None:
    # The critical drift description reads the detector's gauges by name: a renamed gauge
    # would leave it saying "no drift detector reading" on every page.
    used = {name for text in annotation_texts() for name in METRIC_NAME.findall(text)}
    assert {"mllm_monitor_detector_statistic", "mllm_monitor_detector_threshold"} <= used
    assert used - exported == set()


def test_dashboard_uses_exported_metrics(exported: set[str]) -> None:
    text = DASHBOARD.read_text()
    queries = dashboard_queries(document(DASHBOARD))
    used_in_queries = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert len(used_in_queries) >= 15
    # Every name anywhere in the file (titles and descriptions too) must exist.
    assert set(METRIC_NAME.findall(text)) - exported == set()


def test_promtool_check_metrics_is_clean_on_a_scrape() -> None:
    """The exposition passes promtool's lint (names, units, suffixes, help), with values set."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, ["default", "chat"])
    metrics.set_window_settings(size_seconds=300, lateness_seconds=60)
    metrics.count_records("chat", "sampled", 3)
    metrics.window_compute_seconds.labels(stream="chat").observe(0.4)
    metrics.risk_level.labels(stream="chat").set(2)
    scrape = generate_latest(registry)
    result = subprocess.run(
        [tool_path("promtool"), "check", "metrics"],
        input=scrape,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
