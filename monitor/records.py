"""Plain data passed between the layers: traffic records, window keys, window results.

No dependencies beyond the standard library, so every layer can import it. Field names follow
the documented record and window contracts; ``WindowResult.to_dict`` is the JSON shape of
``GET /v1/windows`` and ``mllm-monitor windows list --json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Literal

# The four JSD terms of the EMID bound.
TERMS: tuple[str, ...] = ("visual", "text", "output_id", "output_live")
# Every term of a window, also the `term` label of the metrics: the bound's four, and answer
# drift (`response`: the window's model answers vs the ID ones; not part of the bound).
WINDOW_TERMS: tuple[str, ...] = (*TERMS, "response")
#: The embeddings a sample can have (the fused image+prompt query is the reference store's).
EMBEDDING_KINDS: tuple[str, ...] = ("image", "prompt", "response", "reference")

WindowStatus = Literal["ok", "insufficient"]


class RiskLevel(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """One sampled exchange: query (image and/or prompt), the model's answer, maybe a reference."""

    id: str
    timestamp: datetime
    stream: str = "default"
    model: str | None = None
    prompt: str | None = None
    image: bytes | None = None
    response: str | None = None
    reference: str | None = None
    # 1 / the stream's sample_rate when sampled: each kept record stands for this many.
    sampling_weight: float = 1.0
    # An http(s) image URL not fetched yet (the ingest API fetches it before enqueueing).
    image_url: str | None = None
    # The record came with an image that no encoder would use (none configured): dropped unread,
    # counted at submit; never stored.
    image_dropped: bool = False

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def has_reference(self) -> bool:
        return self.reference is not None


@dataclass(frozen=True, slots=True, order=True)
class WindowKey:
    """A tumbling window of event time for one stream: [start, end)."""

    stream: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} is not after its start {self.start}")


@dataclass(frozen=True, slots=True)
class TermValues:
    """One number (or None where not computable) per window term."""

    visual: float | None = None
    text: float | None = None
    output_id: float | None = None
    output_live: float | None = None
    response: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in WINDOW_TERMS}


@dataclass(frozen=True, slots=True)
class DetectorReading:
    """The sequential detector after a window: the window's score (None: insufficient or not
    scored, the state carried over unchanged), the statistic, the threshold it pages over, and
    whether it is alarmed (an alarm lasts until the statistic falls to the clear level)."""

    score: float | None
    statistic: float
    threshold: float
    alarmed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "alarmed": self.alarmed,
        }


@dataclass(frozen=True, slots=True)
class WindowResult:
    """Everything computed for one window; None marks a value that could not be computed."""

    key: WindowKey
    n: int
    n_images: int
    n_references: int
    status: WindowStatus
    risk_level: RiskLevel
    estimator_version: str
    computed_at: datetime
    id: str | None = None
    jsd: TermValues = field(default_factory=TermValues)
    p_values: TermValues = field(default_factory=TermValues)
    thresholds: TermValues = field(default_factory=TermValues)
    bound_scale_adjusted: float | None = None
    bound_entropy_scaled: float | None = None
    bound_complete: bool = False
    emi_live: float | None = None
    emi_id: float | None = None
    emid: float | None = None
    emid_interval: tuple[float, float] | None = None
    ood_fraction: float | None = None
    # Beyond the documented core fields: how the terms were computed and judged.
    jsd_mode: str | None = None  # "balanced" | "paper": the calibration's mode
    bound_p_value: float | None = None  # of the scale-adjusted bound, under its null
    bound_threshold: float | None = None
    bound_significant: bool | None = None  # None: no calibration
    ood_threshold: float | None = None  # calibrated threshold on ood_fraction
    # The sequential detector after this window; None without one (k-of-m rule, no calibration).
    detector: DetectorReading | None = None
    # The window's warning (a corrected term or OOD significant): kept so that a window's
    # level can be re-derived when only its detector state changes. None: not recorded.
    warning: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream": self.key.stream,
            "start": _rfc3339(self.key.start),
            "end": _rfc3339(self.key.end),
            "n": self.n,
            "n_images": self.n_images,
            "n_references": self.n_references,
            "status": self.status,
            "risk_level": int(self.risk_level),
            "jsd": self.jsd.to_dict(),
            "p_values": self.p_values.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "upper_bound": {
                "scale_adjusted": self.bound_scale_adjusted,
                "entropy_scaled": self.bound_entropy_scaled,
                "complete": self.bound_complete,
                "p_value": self.bound_p_value,
                "threshold": self.bound_threshold,
                "significant": self.bound_significant,
            },
            "emi": {"live": self.emi_live, "id": self.emi_id},
            "emid": self.emid,
            "emid_interval": list(self.emid_interval) if self.emid_interval else None,
            "ood_fraction": self.ood_fraction,
            "ood_threshold": self.ood_threshold,
            "jsd_mode": self.jsd_mode,
            "detector": self.detector.to_dict() if self.detector is not None else None,
            "estimator_version": self.estimator_version,
            "computed_at": _rfc3339(self.computed_at),
        }


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment} has no time zone; use UTC")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
