"""The Grafana dashboard's structure: variables, datasource, panels and the provisioning."""

from __future__ import annotations

from typing import Any

from tests.integration.deploy.deploy_files import document
from tests.integration.deploy.prometheus_server import DEPLOY

GRAFANA = DEPLOY / "grafana"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = document(GRAFANA / "dashboard.json")
    return doc


def top_panels() -> list[dict[str, Any]]:
    """Rows and the panels between them (rows that are not collapsed hold no panels)."""
    panels: list[dict[str, Any]] = dashboard()["panels"]
    return panels


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
        "mllm_monitor_detector_statistic{",
        "mllm_monitor_detector_threshold{",
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


def test_detector_panel_draws_the_statistic_against_its_threshold_per_stream() -> None:
    """One time series panel per stream: the statistic, and the threshold as a dashed line.
    (test_metric_names.py checks that both gauges are ones MonitorMetrics exports.)"""
    panels = all_panels(dashboard())
    (detector,) = [
        p for p in panels if any("detector_statistic" in t["expr"] for t in p.get("targets", []))
    ]
    assert detector["type"] == "timeseries"
    assert detector["repeat"] == "stream" and "$stream" in detector["title"]
    legends = {t["legendFormat"]: t["expr"] for t in detector["targets"]}
    assert legends.keys() == {"statistic", "threshold"}
    assert legends["statistic"].startswith("max by (stream) (mllm_monitor_detector_statistic{")
    assert legends["threshold"].startswith("max by (stream) (mllm_monitor_detector_threshold{")
    assert all('stream=~"$stream"' in expr for expr in legends.values())
    dashed = [
        override["matcher"]["options"]
        for override in detector["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "custom.lineStyle" and prop["value"]["fill"] == "dash"
    ]
    assert dashed == ["threshold"]
    assert "clear level" in detector["description"]
    assert "false_page_interval" in detector["description"]
    # The panel sits under its own row, right after the risk row.
    rows = [p for p in top_panels() if p["type"] == "row"]
    assert [r["title"] for r in rows[:2]] == ["Risk", "Drift detector"]


def test_risk_panel_describes_the_detector_rule() -> None:
    (risk,) = [p for p in all_panels(dashboard()) if p["title"] == "Risk level (last window)"]
    description = risk["description"]
    assert "drift detector" in description and "clear level" in description
    assert 'hysteresis = "k/m"' in description


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in top_panels():
        pos = panel["gridPos"]
        covered = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not covered & cells, panel["title"]
        cells |= covered


def test_provisioning_points_at_the_dashboard() -> None:
    datasources = document(GRAFANA / "provisioning/datasources/prometheus.yml")
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = document(GRAFANA / "provisioning/dashboards/mllm-monitor.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert dashboard()["uid"] == "mllm-monitor"
