"""The report's panels: the detector's panel draws the statistic that pages, and a stream
without a detector (the k-of-m rule) still gets every panel."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from monitor.commands.report import PANELS, render_panels
from monitor.records import DetectorReading, RiskLevel, WindowKey, WindowResult

START = datetime(2026, 12, 1, tzinfo=UTC)


def windows(with_detector: bool) -> list[WindowResult]:
    out = []
    for i, statistic in enumerate([0.0, 0.4, 0.2, 3.0, 6.5, 9.0, 7.0]):
        start = START + timedelta(minutes=5 * i)
        alarmed = statistic > 6.0
        out.append(
            WindowResult(
                key=WindowKey("default", start, start + timedelta(minutes=5)),
                n=100,
                n_images=0,
                n_references=0,
                status="ok",
                risk_level=RiskLevel(2 if alarmed else 0),
                estimator_version="",
                computed_at=start + timedelta(minutes=6),
                detector=DetectorReading(
                    score=statistic, statistic=statistic, threshold=6.0, alarmed=alarmed
                )
                if with_detector
                else None,
            )
        )
    return out


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def test_the_detector_panel_comes_first_and_draws_the_statistic() -> None:
    assert PANELS[0][0] == "detector"
    drawn = render_panels(windows(True), 0.01)
    empty = render_panels(windows(False), 0.01)
    assert list(drawn) == [name for name, _ in PANELS]
    # Same windows, same shading: only the detector's lines tell the two images apart.
    assert np.abs(pixels(drawn["detector"]) - pixels(empty["detector"])).sum() > 1000
    assert np.array_equal(pixels(drawn["bound"]), pixels(empty["bound"]))
