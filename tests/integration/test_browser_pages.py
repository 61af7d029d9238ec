"""The pages users look at, opened in a real browser: every page of the documentation site
(``mkdocs build --strict``) and an HTML report written by ``mllm-monitor report``, each served
over HTTP on 127.0.0.1 and loaded in headless Chromium (Debian's package, driven by Playwright);
and the page docs/render_dashboard_layout.py draws the Grafana dashboard's layout on.

A page passes when it logs no console error and throws no uncaught exception, loads nothing from
another origin (the pages must work offline), every image rendered, and every same-origin link
and asset answers HTTP 200 with its ``#anchor`` naming an element. External links are collected
only. Without Chromium the tests fail under ``CI=true`` (``.ci/run`` installs it) and skip
elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.commands.report import PANELS
from monitor.config import load_settings
from monitor.records import RiskLevel, TermValues, WindowKey, WindowResult
from monitor.store.repository import open_repository
from tests.conftest import ROOT
from tests.support.browser import (
    block_other_origins,
    chromium_path,
    open_pages,
    serve_directory,
    unresolved,
)
from tests.support.scripts import load_script

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]

T0 = datetime(2026, 1, 5, tzinfo=UTC)
FIVE = timedelta(minutes=5)
QUIET, SHIFTED = 8, 4  # windows of the report: quiet, then a shift (warning, then critical)


def _unavailable(reason: str) -> None:
    """Fail under CI (which installs everything), skip on a developer's machine."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        _unavailable("chromium is not installed: apt-get install --no-install-recommends chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(20_000)
            yield context
        finally:
            browser.close()


def _window(index: int) -> WindowResult:
    """A window of the made-up stream: quiet terms, then a shift in the text term."""
    shifted = index >= QUIET
    level = (
        RiskLevel.OK if not shifted else RiskLevel.WARNING if index == QUIET else RiskLevel.CRITICAL
    )
    text = 0.31 + 0.05 * (index - QUIET) if shifted else 0.04 + 0.004 * (index % 3)
    start = T0 + index * FIVE
    return WindowResult(
        key=WindowKey("default", start, start + FIVE),
        n=20,
        n_images=0,
        n_references=0,
        status="ok",
        risk_level=level,
        estimator_version="none",
        computed_at=start + 2 * FIVE,
        jsd=TermValues(text=text, output_live=0.05 + 0.01 * shifted),
        p_values=TermValues(text=0.001 if shifted else 0.4, output_live=0.3),
        thresholds=TermValues(text=0.12, output_live=0.11),
        bound_scale_adjusted=2.0 * text,
        bound_threshold=0.25,
        bound_p_value=0.002 if shifted else 0.5,
        emi_id=0.42,
        ood_fraction=0.4 if shifted else 0.03,
        ood_threshold=0.1,
    )


def _write_report(root: Path) -> Path:
    """``mllm-monitor report`` (the real CLI app) on an SQLite store of made-up windows."""
    config = root / "monitor.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{root / "monitor.db"}"\n'
        f'[reference]\nroot = "{root / "refs"}"\n'
        '[windows]\nsize = "5m"\nlateness = "1m"\n'
    )
    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade", "-c", str(config)])
    assert result.exit_code == 0, result.output
    repository = open_repository(load_settings(config))
    try:
        for index in range(QUIET + SHIFTED):
            window = _window(index)
            repository.store_window(window, reason=f"text term {window.jsd.text:.2f}")
        repository.upsert_window(replace(_window(QUIET + SHIFTED), status="insufficient", n=3))
    finally:
        repository.close()
    page = root / "report" / "index.html"
    page.parent.mkdir()
    span = ["--since", T0.isoformat(), "--until", (T0 + 20 * FIVE).isoformat()]
    result = runner.invoke(
        app, ["report", "-s", "default", *span, "-o", str(page), "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    return page.parent


def _build_site(site: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _problems(checks: list[Any]) -> list[str]:
    out = [f"{check.url}: {problem}" for check in checks for problem in check.problems]
    refs = set().union(*(check.internal_refs for check in checks))
    return out + unresolved(refs)


def test_every_docs_page_renders_without_errors(browser_context: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _build_site(site)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert "index.html" in pages and "getting-started/index.html" in pages
    with serve_directory(site) as base:
        block_other_origins(browser_context, base.rstrip("/"))
        checks = open_pages(browser_context, [base + page for page in pages])
        problems = _problems(checks)
    assert not problems, "\n".join(problems)
    # The pages link each other and their assets: the check above saw real links.
    assert len(set().union(*(c.internal_refs for c in checks))) > 5 * len(pages)
    external = set().union(*(c.external_links for c in checks))
    assert all(link.startswith(("https://", "http://")) for link in external), external


def test_html_report_renders_every_panel(browser_context: Any, tmp_path: Path) -> None:
    served = _write_report(tmp_path)
    with serve_directory(served) as base:
        block_other_origins(browser_context, base.rstrip("/"))
        (check,) = open_pages(browser_context, [base])
        problems = _problems([check])
    assert not problems, "\n".join(problems)
    assert check.images == len(PANELS)  # every panel's image decoded, none broken


def test_dashboard_layout_draws_every_panel(browser_context: Any, tmp_path: Path) -> None:
    """docs/render_dashboard_layout.py (the picture in the docs): one visible box per panel."""
    layout = load_script(ROOT / "docs" / "render_dashboard_layout.py")
    dashboard = json.loads(layout.DASHBOARD.read_text())
    (tmp_path / "index.html").write_text(layout.layout_html(dashboard))
    with serve_directory(tmp_path) as base:
        block_other_origins(browser_context, base.rstrip("/"))
        (check,) = open_pages(browser_context, [base])
        assert not _problems([check]), "\n".join(_problems([check]))
        page = browser_context.new_page()
        page.goto(base)
        boxes = page.eval_on_selector_all(
            ".panel, .row",
            "els => els.map(e => [e.textContent, e.getBoundingClientRect().width,"
            " e.getBoundingClientRect().height])",
        )
        page.close()
    panels = layout.panels_of(dashboard)
    assert len(boxes) == len(panels)
    for (text, width, height), panel in zip(boxes, panels, strict=True):
        assert text.startswith(panel["title"]) and width > 0 and height > 0, (text, panel)
