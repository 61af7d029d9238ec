"""The shipped Prometheus rules and config pass promtool, and every alert is unit-tested."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.deploy.deploy_files import document
from tests.integration.deploy.prometheus_server import ALERTS, DEPLOY, shortened_rules, tool_path

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool_path("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def all_rules() -> list[dict[str, Any]]:
    doc = document(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "record" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_loads_the_rules() -> None:
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names, "no alert rules found"
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_tested_and_named_by_convention() -> None:
    tested = {
        check["expr"].strip()
        for case in document(RULE_TESTS)["tests"]
        for check in case.get("promql_expr_test", [])
        if check.get("exp_samples")
    }
    for rule in recording_rules():
        # level:metric:operation, so a recorded series is never taken for an exported one.
        assert rule["record"].count(":") == 2, rule["record"]
        assert rule["record"] in tested, f"recording rule {rule['record']} has no test"


def test_every_alert_is_labelled_and_documented() -> None:
    anchors = []
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        anchors.append(annotations["runbook_url"])
        assert annotations["runbook_url"] == f"deploy/README.md#{rule['alert'].lower()}"
    assert len(set(anchors)) == len(anchors)
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    assert "for" in by_name["MllmMonitorCriticalDrift"]
    assert by_name["MllmMonitorCriticalDrift"]["labels"]["severity"] == "critical"


def test_critical_drift_pages_on_the_daemon_s_level_and_explains_the_detector() -> None:
    """The product decides criticals (the rule does not re-derive the detector in PromQL); the
    description reads the detector's statistic and threshold and states the clearing rule."""
    rule = next(r for r in alert_rules() if r["alert"] == "MllmMonitorCriticalDrift")
    assert rule["expr"].strip() == "max by (stream) (mllm_monitor_risk_level) >= 2"
    description = rule["annotations"]["description"]
    for needed in (
        "mllm_monitor_detector_statistic{",
        "mllm_monitor_detector_threshold{",
        "CUSUM of window scores",
        "crossed its threshold",
        "one false page per alerts.false_page_interval",
        "at or below its clear level",
        'alerts.hysteresis = "k/m"',
    ):
        assert needed in description, needed


def test_shortened_rules_keep_the_expressions(tmp_path: Path) -> None:
    fast = shortened_rules(tmp_path / "alerts.fast.yml", for_="1s")
    result = promtool("check", "rules", fast)
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = {rule["alert"]: rule for rule in alert_rules()}
    doc = yaml.safe_load(fast.read_text())
    shortened = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert shortened.keys() == shipped.keys()
    for name, rule in shortened.items():
        assert rule["expr"] == shipped[name]["expr"]
        assert rule.get("for", "1s") == "1s"
