"""The figures of the Concepts page, drawn from a real run.

    python docs/make_concept_figures.py [--out docs/images]

1. ``pipeline.svg``: the path from a sampled record to a page, as boxes and arrows.
2. ``detector.png``: a real ``mllm-monitor quickstart`` run (its shipped MMBench reference and
   traffic, the MiniLM encoder, ``serve`` on loopback), its windows read back with
   ``mllm-monitor windows list --json``: the p-values of the bound and of the answer-drift term
   per window, and the drift detector's statistic against its threshold, over ten held-out
   MMBench windows and then five MME windows. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# Figure objects need no pyplot backend. SVG text stays text: small and selectable.
matplotlib.rcParams["svg.fonttype"] = "none"

ROOT = Path(__file__).resolve().parents[1]
CLI = [
    sys.executable,
    "-c",
    "import sys; from monitor.cli import main; sys.argv[0] = 'mllm-monitor'; main()",
]
ID_WINDOWS = 10  # the quickstart's held-out MMBench windows, then its MME windows

STAGES = (
    ("sampled record", "image, prompt,\nanswer"),
    ("embeddings", "CLIP / XLM-R\nor MiniLM"),
    ("window", "5 min of one\nstream"),
    ("terms", "JSD vs reference:\nvisual, text, answers"),
    ("p-values", "vs ID-vs-ID\nnull"),
    ("detector", "CUSUM of\nwindow scores"),
    ("page", "critical risk,\nPrometheus alert"),
)


def pipeline_figure(path: Path) -> None:
    figure = Figure(figsize=(11, 1.9))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, len(STAGES) * 1.6)
    ax.set_ylim(0, 1.9)
    ax.axis("off")
    for i, (title, detail) in enumerate(STAGES):
        x = 0.1 + i * 1.6
        colour = "#f8d4d2" if title == "page" else "#e8eef7"
        box = FancyBboxPatch(
            (x, 0.35), 1.25, 1.2, boxstyle="round,pad=0.02", fc=colour, ec="#33415c", lw=1
        )
        ax.add_patch(box)
        ax.text(x + 0.625, 1.3, title, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x + 0.625, 0.8, detail, ha="center", va="center", fontsize=8)
        if i:
            ax.add_patch(
                FancyArrowPatch(
                    (x - 0.33, 0.95), (x - 0.02, 0.95), arrowstyle="-|>", mutation_scale=12
                )
            )
    ax.text(
        0.1,
        0.12,
        "the reference store feeds terms, p-values and detector: ID embeddings and their "
        "calibration (the nulls, the detector's threshold for the false-page interval)",
        fontsize=8,
        color="#33415c",
    )
    figure.savefig(path, format="svg")


def quickstart_windows(workspace: Path) -> list[dict[str, Any]]:
    subprocess.run(
        [*CLI, "quickstart", "--dir", str(workspace), "--port", "0", "--exit-after-report"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    listed = subprocess.run(
        [*CLI, "windows", "list", "--json", "--since", "-30d", "--until", "now"],
        cwd=workspace,
        check=True,
        capture_output=True,
        text=True,
    )
    windows: list[dict[str, Any]] = json.loads(listed.stdout)["windows"]
    return [w for w in windows if w["status"] == "ok"]


def detector_figure(windows: list[dict[str, Any]], path: Path) -> None:
    x = list(range(1, len(windows) + 1))
    figure = Figure(figsize=(9, 5.2), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    bound_p = [w["upper_bound"]["p_value"] for w in windows]
    response_p = [w["p_values"]["response"] for w in windows]
    top.plot(x, bound_p, "ko-", ms=4, label="bound p-value")
    top.plot(x, response_p, "o-", color="#8c564b", ms=4, label="answer drift (response) p-value")
    top.set_yscale("log")
    top.set_ylabel("p-value")
    top.set_title("Each window's terms, tested against the reference's ID-vs-ID null")
    statistic = [w["detector"]["statistic"] for w in windows]
    threshold = [w["detector"]["threshold"] for w in windows]
    bottom.plot(x, statistic, "o-", color="#444444", ms=4, label="detector statistic S")
    bottom.plot(x, threshold, "r--", lw=1, label="threshold (pages above)")
    critical = [
        (i, s) for i, s, w in zip(x, statistic, windows, strict=True) if w["risk_level"] == 2
    ]
    if critical:
        bottom.plot(*zip(*critical, strict=True), "o", color="red", ms=7, label="critical")
    bottom.set_ylabel("S")
    bottom.set_xlabel("window (5 minutes each)")
    bottom.set_title("The drift detector: a capped CUSUM of the window scores")
    for ax in (top, bottom):
        ax.axvspan(ID_WINDOWS + 0.5, len(x) + 0.5, color="#f8d4d2", alpha=0.5, lw=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", fontsize=8)
    for middle, height, label in (
        ((ID_WINDOWS + 1) / 2, 0.06, "held-out MMBench (ID)"),
        ((ID_WINDOWS + 1 + len(x)) / 2, 0.5, "MME (shift)"),
    ):
        top.text(
            middle,
            height,
            label,
            ha="center",
            fontsize=9,
            transform=top.get_xaxis_transform(),
            bbox={"fc": "white", "ec": "none", "alpha": 0.8},
        )
    figure.savefig(path, format="png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline_figure(args.out / "pipeline.svg")
    with tempfile.TemporaryDirectory() as tmp:
        windows = quickstart_windows(Path(tmp) / "quickstart")
    detector_figure(windows, args.out / "detector.png")
    print(f"wrote {args.out / 'pipeline.svg'} and {args.out / 'detector.png'}")


if __name__ == "__main__":
    main()
