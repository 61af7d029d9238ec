"""The Grafana dashboard's structure: variables, datasource, panels and the provisioning."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.integration.deploy.prometheus_server import DEPLOY

GRAFANA = DEPLOY / "grafana"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "dashboard.json").read_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_variables_stream_and_datasource() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    stream = variables["stream"]
    assert stream["type"] == "query" and stream["multi"] and stream["includeAll"]
    assert "mllm_monitor_risk_level" in stream["definition"]


def test_panels_query_through_the_datasource_variable() -> None:
    doc = dashboard()
    panels = [p for p in all_panels(doc) if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in all_panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_the_issue_s_views_are_there() -> None:
    """Bound and terms with thresholds, p-values, EMI/EMID with a band, OOD, risk, ingest."""
    exprs = "\n".join(t["expr"] for p in all_panels(dashboard()) for t in p.get("targets", []))
    for name in (
        "mllm_monitor_upper_bound{",
        "mllm_monitor_upper_bound_threshold",
        "mllm_monitor_upper_bound_p_value",
        "mllm_monitor_window_jsd{",
        "mllm_monitor_window_jsd_threshold",
        "mllm_monitor_window_p_value",
        "mllm_monitor_emi_nats",
        "mllm_monitor_emid_nats",
        "mllm_monitor_emid_interval_nats",
        "mllm_monitor_ood_ratio{",
        "mllm_monitor_ood_ratio_threshold",
        "mllm_monitor_risk_level",
        "mllm_monitor_records_total",
        "mllm_monitor_inbox_depth",
        "mllm_monitor_window_compute_seconds_bucket",
    ):
        assert name in exprs, name
    # The EMID band: the upper edge fills down to the lower edge, one panel per stream.
    emid = next(p for p in all_panels(dashboard()) if p["title"].startswith("EMID with"))
    assert emid["repeat"] == "stream"
    fills = [
        prop["value"]
        for override in emid["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "custom.fillBelowTo"
    ]
    legends = {t["legendFormat"] for t in emid["targets"]}
    assert fills and set(fills) <= legends


def test_provisioning_points_at_the_dashboard() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/mllm-monitor.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert dashboard()["uid"] == "mllm-monitor"
