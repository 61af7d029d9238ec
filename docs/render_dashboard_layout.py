"""Draw the Grafana dashboard's layout from its JSON: one box per panel on Grafana's 24-column
grid (its gridPos), with the panel's title, type and PromQL expressions; rows as bars. It is a
drawing of deploy/grafana/dashboard.json, not a screenshot of Grafana.

    python docs/render_dashboard_layout.py --html layout.html       # the page only
    python docs/render_dashboard_layout.py --png docs/images/dashboard.png

The PNG is taken with headless Chromium (Debian's ``chromium``, driven by Playwright);
docs/make_screenshots.py regenerates it together with the report's screenshot.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
WIDTH = 1280  # pixels of the page; 24 grid columns across it
ROW_HEIGHT = 20  # pixels per grid unit of height (Grafana draws 30: this is more compact)

_STYLE = """
body { margin: 0; padding: 12px; background: #111217; color: #ccccdc;
       font-family: system-ui, sans-serif; width: %(width)dpx; box-sizing: border-box; }
h1 { font-size: 16px; margin: 0 0 2px 0; color: #fff; }
p.note { font-size: 12px; margin: 0 0 10px 0; color: #9fa1b1; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr);
        grid-auto-rows: %(row)dpx; gap: 6px; }
.panel { background: #181b1f; border: 1px solid #2c3235; border-radius: 3px; padding: 4px 6px;
         overflow: hidden; min-width: 0; }
.row { color: #fff; font-weight: 600; font-size: 13px; border-bottom: 1px solid #2c3235;
       align-self: end; padding: 0 0 2px 0; }
.title { font-size: 12px; font-weight: 600; color: #fff; white-space: nowrap;
         overflow: hidden; text-overflow: ellipsis; }
.type { font-size: 10px; color: #6e9fff; margin-bottom: 3px; }
code { display: block; font-size: 9px; line-height: 11px; color: #9fa1b1; white-space: pre-wrap;
       word-break: break-all; margin-bottom: 2px; }
"""


def _expressions(panel: dict[str, Any]) -> list[str]:
    return [str(t["expr"]) for t in panel.get("targets", []) if t.get("expr")]


def _placed(panel: dict[str, Any]) -> str:
    pos = panel["gridPos"]
    return (
        f"grid-column: {pos['x'] + 1} / span {pos['w']}; "
        f"grid-row: {pos['y'] + 1} / span {pos['h']};"
    )


def _panel_html(panel: dict[str, Any]) -> str:
    title = html.escape(str(panel.get("title", "")))
    if panel.get("type") == "row":
        return f"<div class='row' style='{_placed(panel)}'>{title}</div>"
    codes = "".join(f"<code>{html.escape(e)}</code>" for e in _expressions(panel))
    return (
        f"<div class='panel' style='{_placed(panel)}'><div class='title'>{title}</div>"
        f"<div class='type'>{html.escape(str(panel.get('type', '')))}</div>{codes}</div>"
    )


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too (Grafana nests them under the row)."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])
    return out


def layout_html(dashboard: dict[str, Any]) -> str:
    """The dashboard's layout as one self-contained HTML page."""
    boxes = "\n".join(_panel_html(p) for p in panels_of(dashboard))
    title = html.escape(str(dashboard.get("title", "dashboard")))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}: layout</title><link rel='icon' href='data:,'>"
        f"<style>{_STYLE % {'width': WIDTH, 'row': ROW_HEIGHT}}</style></head><body>"
        f"<h1>{title}</h1><p class='note'>Layout drawn from deploy/grafana/dashboard.json "
        "(panel positions, titles, types and PromQL), not a Grafana screenshot.</p>"
        f"<div class='grid'>\n{boxes}\n</div></body></html>"
    )


@contextmanager
def chromium_page(width: int) -> Iterator[Any]:
    """A Playwright page of the Debian chromium (no browser download), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit(
            "chromium is not installed: apt-get install --no-install-recommends chromium"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            yield browser.new_page(viewport={"width": width, "height": 800})
        finally:
            browser.close()


def screenshot_html(page_html: str, out: Path, *, width: int = WIDTH) -> None:
    """A full-page PNG of ``page_html`` in headless Chromium."""
    with chromium_page(width) as page:
        page.set_content(page_html, wait_until="load")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--html", type=Path, help="write the layout page here")
    parser.add_argument("--png", type=Path, help="write a screenshot of the page here")
    args = parser.parse_args()
    page = layout_html(json.loads(args.dashboard.read_text()))
    if args.html:
        args.html.write_text(page)
    if args.png:
        screenshot_html(page, args.png)
    if not (args.html or args.png):
        parser.error("give --html and/or --png")


if __name__ == "__main__":
    main()
