"""``mllm-monitor report --stream S --since T --until T --out report.html|.png``.

Plots of the stored windows of a range (matplotlib, Agg backend: no display needed): the
drift detector's statistic against its threshold (what pages), the scale-adjusted bound
against its calibrated threshold, each JSD term against its threshold, p-values against the
false-alarm rate, EMI (live, ID) and EMID with its bootstrap interval, and the OOD fraction
against its threshold; periods at warning / critical are shaded on every panel. ``.png``
writes the panels as one image of :data:`PNG_SIZE` pixels; ``.html`` writes one
self-contained file (each panel a base64 ``data:image/png`` image) with a summary, the table
of windows and the risk transitions.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.commands._common import (
    TIME_HELP,
    ConfigOption,
    echo,
    load,
    require_stream,
    time_option,
)
from monitor.errors import MonitorError
from monitor.files import output_file, write_output
from monitor.records import WINDOW_TERMS, WindowResult

PNG_SIZE = (1200, 1800)  # pixels of the --out .png image
_DPI = 100
PANEL_SIZE = (1000, 300)  # pixels of each HTML panel
_SHADE = {1: ("#f5c542", 0.25), 2: ("#e0413a", 0.25)}
_COLOURS = dict(
    zip(WINDOW_TERMS, ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"), strict=True)
)

Panel = Callable[[Any, Sequence[WindowResult], float], None]


def _mid(w: WindowResult) -> datetime:
    return w.key.start + (w.key.end - w.key.start) / 2


def _series(windows: Sequence[WindowResult], get: Callable[[WindowResult], float | None]) -> Any:
    import numpy as np

    return np.array([np.nan if (v := get(w)) is None else v for w in windows], dtype=float)


def _of(part: str, term: str) -> Callable[[WindowResult], float | None]:
    """A getter of one term of ``jsd`` / ``thresholds`` / ``p_values``."""

    def get(w: WindowResult) -> float | None:
        value: float | None = getattr(getattr(w, part), term)
        return value

    return get


def _shade(ax: Any, windows: Sequence[WindowResult]) -> None:
    for w in windows:
        if w.status == "ok" and int(w.risk_level) in _SHADE:
            colour, alpha = _SHADE[int(w.risk_level)]
            ax.axvspan(w.key.start, w.key.end, color=colour, alpha=alpha, lw=0)


def _bound(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    x = [_mid(w) for w in windows]
    ax.plot(x, _series(windows, lambda w: w.bound_scale_adjusted), "o-", label="bound", ms=3)
    ax.plot(x, _series(windows, lambda w: w.bound_threshold), "k--", label="threshold", lw=1)
    ax.set_title("EMID upper bound (scale-adjusted) vs its null threshold")


def _terms(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    x = [_mid(w) for w in windows]
    for term in WINDOW_TERMS:
        values = _series(windows, _of("jsd", term))
        if all(v != v for v in values):  # all NaN: the term is absent
            continue
        colour = _COLOURS[term]
        ax.plot(x, values, "o-", color=colour, label=term, ms=3)
        limits = _series(windows, _of("thresholds", term))
        ax.plot(x, limits, "--", color=colour, lw=1)
    ax.set_title("JSD terms (dashed: null thresholds)")


def _p_values(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    x = [_mid(w) for w in windows]
    for term in WINDOW_TERMS:
        values = _series(windows, _of("p_values", term))
        if all(v != v for v in values):
            continue
        ax.plot(x, values, "o-", color=_COLOURS[term], label=term, ms=3)
    ax.plot(x, _series(windows, lambda w: w.bound_p_value), "ko-", label="bound", ms=3)
    ax.axhline(alpha, color="red", ls="--", lw=1, label=f"false-alarm rate {alpha:g}")
    ax.set_yscale("log")
    ax.set_title("p-values")


def _emi(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    x = [_mid(w) for w in windows]
    ax.plot(x, _series(windows, lambda w: w.emi_live), "o-", label="EMI live", ms=3)
    ax.plot(x, _series(windows, lambda w: w.emi_id), "s-", label="EMI ID", ms=3)
    ax.plot(x, _series(windows, lambda w: w.emid), "^-", label="EMID", ms=3)
    low = _series(windows, lambda w: w.emid_interval[0] if w.emid_interval else None)
    high = _series(windows, lambda w: w.emid_interval[1] if w.emid_interval else None)
    ax.fill_between(x, low, high, alpha=0.2, label="EMID 95% interval")
    ax.set_title("EMI and EMID (nats; absent without references and an estimator)")


def _ood(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    x = [_mid(w) for w in windows]
    ax.plot(x, _series(windows, lambda w: w.ood_fraction), "o-", label="OOD fraction", ms=3)
    ax.plot(x, _series(windows, lambda w: w.ood_threshold), "k--", label="threshold", lw=1)
    ax.set_title("Out-of-distribution fraction (kNN)")


def _detector(ax: Any, windows: Sequence[WindowResult], alpha: float) -> None:
    """The panel that explains a page: the detector's statistic against its threshold."""
    x = [_mid(w) for w in windows]
    statistic = _series(windows, lambda w: w.detector.statistic if w.detector else None)
    threshold = _series(windows, lambda w: w.detector.threshold if w.detector else None)
    alarmed = _series(
        windows, lambda w: w.detector.statistic if w.detector and w.detector.alarmed else None
    )
    ax.plot(x, statistic, "o-", color="#444444", label="statistic S", ms=3)
    ax.plot(x, threshold, "r--", label="threshold (pages above)", lw=1)
    ax.plot(x, threshold / 2, ":", color="#888888", label="clears at or below", lw=1)
    ax.plot(x, alarmed, "o", color="red", label="critical", ms=5)
    ax.set_title("Drift detector: statistic vs threshold (absent under the k-of-m rule)")


PANELS: tuple[tuple[str, Panel], ...] = (
    ("detector", _detector),
    ("bound", _bound),
    ("terms", _terms),
    ("p_values", _p_values),
    ("emi", _emi),
    ("ood", _ood),
)


def _finish(ax: Any, windows: Sequence[WindowResult]) -> None:
    _shade(ax, windows)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.grid(True, alpha=0.3)


def _png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def render_png(windows: Sequence[WindowResult], alpha: float) -> bytes:
    """Every panel, stacked, in one PNG of :data:`PNG_SIZE` pixels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI, layout="tight")
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (_, draw) in zip(axes, PANELS, strict=True):
        draw(ax, windows, alpha)
        _finish(ax, windows)
    return _png_bytes(figure)


def render_panels(windows: Sequence[WindowResult], alpha: float) -> dict[str, bytes]:
    """Each panel as its own PNG (for the HTML report)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = {}
    for name, draw in PANELS:
        figure = Figure(
            figsize=(PANEL_SIZE[0] / _DPI, PANEL_SIZE[1] / _DPI), dpi=_DPI, layout="tight"
        )
        ax = figure.subplots()
        draw(ax, windows, alpha)
        _finish(ax, windows)
        out[name] = _png_bytes(figure)
    return out


def transitions(windows: Sequence[WindowResult], reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Risk level changes between consecutive sufficient windows (event time)."""
    out = []
    level = 0
    for w in windows:
        if w.status != "ok" or int(w.risk_level) == level:
            continue
        out.append(
            {
                "window": w.id,
                "start": w.to_dict()["start"],
                "from": level,
                "to": int(w.risk_level),
                "reason": reasons.get(w.id or "", ""),
            }
        )
        level = int(w.risk_level)
    return out


def _cell(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def render_html(
    stream: str,
    since: datetime,
    until: datetime,
    windows: Sequence[WindowResult],
    changes: Sequence[dict[str, Any]],
    alpha: float,
) -> str:
    panels = render_panels(windows, alpha)
    counts = {level: sum(int(w.risk_level) == level for w in windows) for level in (0, 1, 2)}
    insufficient = sum(w.status != "ok" for w in windows)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>mllm-monitor report: {html.escape(stream)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        ".r1{background:#fdf2d0}.r2{background:#f8d4d2}</style></head><body>",
        f"<h1>mllm-monitor report: stream {html.escape(stream)}</h1>",
        f"<p>{html.escape(since.isoformat())} to {html.escape(until.isoformat())}: "
        f"{len(windows)} windows ({insufficient} insufficient); risk level 0: {counts[0]}, "
        f"1 (warning): {counts[1]}, 2 (critical): {counts[2]}. Shaded: warning (yellow), "
        "critical (red).</p>",
    ]
    for name, data in panels.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<div><img alt='{name}' src='data:image/png;base64,{encoded}'></div>")
    parts.append("<h2>Risk transitions</h2>")
    if changes:
        parts.append(
            "<table id='transitions'><tr><th>window</th><th>start</th><th>from</th>"
            "<th>to</th><th>reason</th></tr>"
        )
        for c in changes:
            parts.append(
                f"<tr><td>{_cell(c['window'])}</td><td>{_cell(c['start'])}</td>"
                f"<td>{c['from']}</td><td>{c['to']}</td><td>{_cell(c['reason'])}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    parts.append("<h2>Windows</h2><table id='windows'><tr>")
    columns = ["id", "start", "n", "status", "risk", "bound", "bound threshold", "bound p"]
    columns += [f"{t} JSD" for t in WINDOW_TERMS] + ["OOD fraction", "EMID"]
    parts.append("".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
    for w in windows:
        d = w.to_dict()
        cells = [
            d["id"], d["start"], d["n"], d["status"], d["risk_level"],
            w.bound_scale_adjusted, w.bound_threshold, w.bound_p_value,
            *(getattr(w.jsd, t) for t in WINDOW_TERMS), w.ood_fraction, w.emid,
        ]  # fmt: skip
        parts.append(
            f"<tr class='r{int(w.risk_level)}'>"
            + "".join(f"<td>{_cell(c)}</td>" for c in cells)
            + "</tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(
    repository: Any, stream: str, since: datetime, until: datetime, out: Path, alpha: float
) -> int:
    """Write the report; returns the number of windows in it."""
    windows = repository.get_windows(stream, since=since, until=until)
    if not windows:
        raise MonitorError(
            f"no windows of stream {stream!r} in the range (compute them with "
            "`mllm-monitor backfill --stream S --since T --until T`)"
        )
    suffix = out.suffix.lower()
    if suffix == ".png":
        write_output(out, render_png(windows, alpha), "report file")
        return len(windows)
    reasons = {t.window_id: t.reason for t in repository.risk_transitions(stream) if t.window_id}
    page = render_html(stream, since, until, windows, transitions(windows, reasons), alpha)
    write_output(out, page.encode("utf-8"), "report file")
    return len(windows)


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        stream: Annotated[str, typer.Option("--stream", "-s", help="The stream.")],
        since: Annotated[str, typer.Option(help=f"Range start. {TIME_HELP}")],
        until: Annotated[str, typer.Option(help=f"Range end. {TIME_HELP}")] = "now",
        out: Annotated[
            Path,
            typer.Option(
                "--out", "-o", help="report.html (self-contained) or report.png.", dir_okay=False
            ),
        ] = Path("report.html"),
        config: ConfigOption = None,
    ) -> None:
        """Plots of a range's windows as a PNG, or one self-contained HTML file with tables.

        Bound, terms, p-values, EMI/EMID, OOD fraction; alert periods shaded."""
        from monitor.store.repository import open_repository

        if out.suffix.lower() not in (".html", ".htm", ".png"):
            raise typer.BadParameter("must end in .html or .png", param_hint="--out")
        start, end = time_option(since, "since"), time_option(until, "until")
        assert start is not None and end is not None
        output_file(out, "report file")  # a FIFO would block at the end, after all the work
        settings = load(config)
        require_stream(settings, stream)
        repository = open_repository(settings)
        try:
            count = write_report(
                repository, stream, start, end, out, settings.alerts.false_alarm_rate
            )
        finally:
            repository.close()
        echo(f"wrote {out} ({count} windows)")
