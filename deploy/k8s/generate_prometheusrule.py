"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The PrometheusRule (prometheus-operator) holds exactly the rule groups of alerts.yml, so the
rules are written and unit-tested (promtool test rules) in one place only:

    python deploy/k8s/generate_prometheusrule.py          # rewrite the file
    python deploy/k8s/generate_prometheusrule.py --check  # exit 1 if it is out of date

tests/integration/deploy/test_packaging.py checks the same equality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
OUTPUT = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/generate_prometheusrule.py; do not
# edit here: edit alerts.yml (and its promtool tests), then rerun the script.
"""


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    """The PrometheusRule object holding the rule groups of an alerts.yml document."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "mllm-monitor",
            "labels": {"app.kubernetes.io/name": "mllm-monitor"},
        },
        "spec": {"groups": alerts["groups"]},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts_path: Path = ALERTS) -> str:
    alerts = yaml.safe_load(alerts_path.read_text(encoding="utf-8"))
    body = yaml.dump(
        prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
