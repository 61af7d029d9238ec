"""Sections about the windows the estimators run on and when their results alert."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from monitor.config._types import Duration, Section


class WindowSettings(Section):
    # Length of the tumbling windows of event time (aligned to the Unix epoch) that the
    # estimators run on; the detector's threshold is calibrated for it.
    size: Duration = timedelta(minutes=5)
    # Wait after a window's end before it is computed, so late records still count in it.
    lateness: Duration = timedelta(minutes=1)
    # A window with fewer records is stored as insufficient: it never alerts.
    min_samples: int = Field(default=50, ge=2)
    # A window with more samples is computed on a uniform random subset of this many (seeded by
    # the window, so a recomputation agrees): memory and time stay bounded at any traffic.
    # n and the OOD fraction always count every sample.
    max_compute_samples: int = Field(default=10_000, ge=100)

    @model_validator(mode="after")
    def _positive(self) -> WindowSettings:
        if self.size <= timedelta(0):
            raise ValueError("windows.size must be positive")
        if self.lateness < timedelta(0):
            raise ValueError("windows.lateness must not be negative")
        return self


def _auto_or_positive(value: object) -> object:
    """'auto', or a finite positive number: one clear message instead of one per union arm."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be 'auto' or a positive number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError("must be 'auto' or a positive number") from None
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError("must be 'auto' or a finite positive number")
    return number


class AlertSettings(Section):
    """When a window warns or pages. By default a sequential detector (a capped one-sided CUSUM
    of window scores from the bound's and the answers' p-values) decides criticals: it pages
    when its statistic passes the calibrated threshold and
    clears when the statistic falls to the clear level or below."""

    # Significance level of each window's tests (terms corrected for their number, bound, OOD
    # fraction): about the rate of warnings on in-distribution traffic. 0 < rate < 0.5.
    false_alarm_rate: float = Field(default=0.01, gt=0.0, lt=0.5)
    # "auto": the detector (or the k-of-m rule) alone decides criticals; a positive number: a
    # critical also needs the window's scale-adjusted bound over it.
    bound_budget: Annotated[Literal["auto"] | float, BeforeValidator(_auto_or_positive)] = "auto"
    # Nats: with reference answers, critical when the whole bootstrap interval of EMID (the
    # EMI drop from ID) lies above it.
    emid_budget: float = Field(default=0.0, ge=0.0)
    # Mean time between false criticals per stream on ID traffic, at the configured window
    # size: the detector's threshold is calibrated for it (rerun `mllm-monitor calibrate` after
    # changing it or [windows] size).
    false_page_interval: Duration = timedelta(days=90)
    # Empty: the sequential detector decides criticals. "k/m": the older rule instead, critical
    # when the bound is significant in k of the last m sufficient windows (like "2/3").
    hysteresis: str = ""

    @field_validator("hysteresis")
    @classmethod
    def _k_of_m(cls, value: str) -> str:
        if not value.strip():
            return ""
        match = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", value)
        if not match or not 1 <= int(match[1]) <= int(match[2]) <= 100:
            raise ValueError(
                "must be 'k/m' with 1 <= k <= m <= 100, like '2/3', or empty (the detector)"
            )
        return f"{int(match[1])}/{int(match[2])}"

    @field_validator("false_page_interval")
    @classmethod
    def _positive_interval(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @property
    def hysteresis_k_of_m(self) -> tuple[int, int] | None:
        """(k, m) of the k-of-m rule; None when the detector decides criticals."""
        if not self.hysteresis:
            return None
        k, m = self.hysteresis.split("/")
        return int(k), int(m)

    @property
    def trials_hysteresis(self) -> tuple[int, int]:
        """The rule's (k, m) as ``minimum_trials`` takes it: (1, 1), one window, for the
        detector (its per-window scores need the bound resolved at the false-alarm rate)."""
        return self.hysteresis_k_of_m or (1, 1)
