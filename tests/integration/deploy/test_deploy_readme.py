"""deploy/README.md: the alert runbook covers every shipped alert at the anchor its runbook_url
names, with three things to check; every mllm-monitor command it shows is a command of the CLI
with options it has; its internal links resolve."""

from __future__ import annotations

import re
import shlex
from typing import Any

from tests.integration.deploy.deploy_files import document
from tests.integration.deploy.project_facts import DEPLOY, cli_command

README = DEPLOY / "README.md"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections() -> dict[str, str]:
    """Heading text -> its body, for every heading of the README."""
    found: dict[str, str] = {}
    current = None
    for line in README.read_text().splitlines():
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            current = match[1].strip()
            found[current] = ""
        elif current is not None:
            found[current] += line + "\n"
    return found


def alert_rules() -> list[dict[str, Any]]:
    doc = document("prometheus/alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def commands_in(text: str) -> list[list[str]]:
    """`mllm-monitor ...` invocations: inline code, code lines, after `--` or a bin/ path."""
    found = []
    for match in re.finditer(
        r"(?:^|`|/bin/|-- )mllm-monitor ([a-z][a-z-]*(?:[^`\n|;&#]*))", text, re.M
    ):
        found.append(shlex.split(match[1]))
    return found


def test_runbook_has_a_section_per_alert_at_its_runbook_anchor() -> None:
    headings = sections()
    anchors = {github_anchor(h) for h in headings}
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        name = rule["alert"]
        assert name in headings, f"no runbook section for {name}"
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "deploy/README.md"
        assert anchor in anchors and github_anchor(name) == anchor
        body = headings[name]
        for step in ("1. ", "2. ", "3. "):
            assert re.search(rf"^{re.escape(step)}", body, re.M), f"{name}: no step {step}"
        assert commands_in(body), f"{name}: no mllm-monitor command to run"
    alert_names = {rule["alert"] for rule in rules}
    runbook = [h for h in headings if h.startswith("MllmMonitor")]
    assert set(runbook) == alert_names, "runbook sections for alerts that do not exist"


def test_every_command_shown_is_a_cli_command() -> None:
    commands = commands_in(README.read_text())
    assert len(commands) >= 30
    seen = set()
    for argv in commands:
        command = cli_command(argv)
        seen.add(command.name)
    assert seen >= {"upgrade", "current", "downgrade", "serve", "explain", "report", "list"}


def test_internal_links_resolve() -> None:
    text = README.read_text()
    anchors = {github_anchor(h) for h in sections()}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links
    assert set(links) <= anchors
    for relative in re.findall(r"\]\((?!#|https?:)([^)#]+)\)", text):
        assert (DEPLOY / relative).exists(), relative


def test_the_readme_covers_each_path_and_the_upgrade_order() -> None:
    headings = set(sections())
    assert {
        "Compose demo",
        "Docker",
        "Kubernetes",
        "systemd",
        "Upgrades and rollback",
        "Sizing",
        "Alert runbook",
    } <= headings
    upgrades = sections()["Upgrades and rollback"]
    assert "db upgrade" in upgrades and "db downgrade" in upgrades
