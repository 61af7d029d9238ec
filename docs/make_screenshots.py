"""Regenerate the screenshots of the docs, from the repository root (dev extra installed, and
Debian's chromium: apt-get install --no-install-recommends chromium):

    python docs/make_screenshots.py                  # both, about 2 minutes
    python docs/make_screenshots.py --only dashboard # the dashboard's layout only (seconds)

docs/images/report.png: the top of the HTML report of a quickstart run. The quickstart runs in
a temporary workspace (``mllm-monitor quickstart --exit-after-report``: held-out MMBench windows,
then MME windows, a domain shift), then ``mllm-monitor report`` writes report.html over its
windows, and headless Chromium takes the picture.

docs/images/dashboard.png: the Grafana dashboard's layout drawn from its JSON
(docs/render_dashboard_layout.py), not a Grafana screenshot.

Each PNG is kept under MAX_BYTES (reduced to a 256-colour palette when larger).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from render_dashboard_layout import DASHBOARD, chromium_page, layout_html, screenshot_html

IMAGES = Path(__file__).resolve().parent / "images"
MAX_BYTES = 250_000
REPORT_WIDTH = 1100  # pixels of the browser window
REPORT_PANELS = 3  # the picture ends below the report's third panel: summary and first panels


def _cli(*args: str) -> str:
    """Run ``mllm-monitor`` (the one installed beside this Python); returns its stdout."""
    command = Path(sys.executable).with_name("mllm-monitor")
    executable = str(command) if command.exists() else shutil.which("mllm-monitor")
    if executable is None:
        raise SystemExit("mllm-monitor is not installed: pip install -e '.[dev]'")
    result = subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "PATH": str(Path(executable).parent)},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"mllm-monitor {args[0]} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def quickstart_report(workspace: Path) -> Path:
    """report.html of a quickstart run in ``workspace``, over the windows that hold records."""
    _cli("quickstart", "--dir", str(workspace), "--port", "0", "--exit-after-report")
    config = str(workspace / "mllm-monitor.toml")
    listed: dict[str, Any] = json.loads(_cli("windows", "list", "--json", "--config", config))
    full = [w for w in listed["windows"] if w["n"] > 0]
    if not full:
        raise SystemExit("the quickstart stored no windows with records")
    page = workspace / "report.html"
    _cli(
        "report",
        *("--stream", str(full[0]["stream"]), "--since", str(full[0]["start"])),
        *("--until", str(full[-1]["end"]), "--out", str(page), "--config", config),
    )
    return page


def screenshot_file(page: Path, out: Path) -> None:
    """The top of ``page`` in headless Chromium, down to its REPORT_PANELS-th image."""
    with chromium_page(REPORT_WIDTH) as view:
        view.goto(page.as_uri(), wait_until="load")
        images = view.locator("img")
        last = images.nth(min(REPORT_PANELS, images.count()) - 1).bounding_box()
        height = 800 if last is None else last["y"] + last["height"] + 12
        clip = {"x": 0, "y": 0, "width": REPORT_WIDTH, "height": height}
        out.write_bytes(view.screenshot(full_page=True, clip=clip))


def shrink(path: Path) -> int:
    """Keep ``path`` under MAX_BYTES: a 256-colour palette when the full-colour PNG is larger."""
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
        path.write_bytes(buffer.getvalue())
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over {MAX_BYTES}")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("report", "dashboard"))
    args = parser.parse_args()
    IMAGES.mkdir(exist_ok=True)
    if args.only in (None, "dashboard"):
        out = IMAGES / "dashboard.png"
        screenshot_html(layout_html(json.loads(DASHBOARD.read_text())), out)
        print(f"wrote {out} ({shrink(out)} bytes)")
    if args.only in (None, "report"):
        out = IMAGES / "report.png"
        with tempfile.TemporaryDirectory(prefix="mllm-monitor-screenshots-") as tmp:
            screenshot_file(quickstart_report(Path(tmp) / "quickstart"), out)
        print(f"wrote {out} ({shrink(out)} bytes)")


if __name__ == "__main__":
    main()
