"""Plain data crossing the repository boundary (no ORM objects ever leave it)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.files import sha256_hex
from monitor.records import RiskLevel, TrafficRecord


def content_sha256(value: str | bytes | None) -> str | None:
    """Hex SHA-256 of text (UTF-8) or bytes; None stays None. What samples keep instead of raw."""
    if value is None:
        return None
    return sha256_hex(value)


def as_utc(moment: datetime) -> datetime:
    """Timezone-aware UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def record_to_json(record: TrafficRecord) -> str:
    """A record as the inbox keeps it until embedded (image bytes as base64)."""
    data: dict[str, Any] = {
        "id": record.id,
        "timestamp": as_utc(record.timestamp).isoformat(),
        "stream": record.stream,
        "model": record.model,
        "prompt": record.prompt,
        "image": base64.b64encode(record.image).decode("ascii") if record.image else None,
        "response": record.response,
        "reference": record.reference,
        "sampling_weight": record.sampling_weight,
        "image_url": record.image_url,
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def record_from_json(text: str) -> TrafficRecord:
    data = json.loads(text)
    image = data.get("image")
    return TrafficRecord(
        id=data["id"],
        timestamp=as_utc(datetime.fromisoformat(data["timestamp"])),
        stream=data["stream"],
        model=data.get("model"),
        prompt=data.get("prompt"),
        image=base64.b64decode(image) if image is not None else None,
        response=data.get("response"),
        reference=data.get("reference"),
        sampling_weight=float(data.get("sampling_weight", 1.0)),
        image_url=data.get("image_url"),
    )


@dataclass(frozen=True, slots=True)
class RawContent:
    """Raw content of a sample; kept only with ``retention.store_raw`` on, until its TTL."""

    prompt: str | None = None
    response: str | None = None
    reference: str | None = None
    image: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewSample:
    """An embedded record to store: metadata, hashes, embeddings by kind, maybe raw content."""

    id: str
    stream: str
    event_time: datetime
    encoder_fingerprint: str
    embeddings: Mapping[str, np.ndarray]  # kind ("image", "prompt", ...) -> (dim,) vector
    model: str | None = None
    prompt_sha256: str | None = None
    image_sha256: str | None = None
    response_sha256: str | None = None
    reference_sha256: str | None = None
    has_image: bool = False
    has_reference: bool = False
    ood_score: float | None = None
    sampling_weight: float = 1.0
    raw: RawContent | None = None  # dropped by the repository unless raw retention is on

    @classmethod
    def from_record(
        cls,
        record: TrafficRecord,
        embeddings: Mapping[str, np.ndarray],
        *,
        encoder_fingerprint: str,
        ood_score: float | None = None,
        sampling_weight: float | None = None,
    ) -> NewSample:
        """Hashes and flags from the record; its raw content rides along for opt-in retention.
        The sampling weight is the record's own unless given."""
        return cls(
            id=record.id,
            stream=record.stream,
            event_time=record.timestamp,
            encoder_fingerprint=encoder_fingerprint,
            embeddings=embeddings,
            model=record.model,
            prompt_sha256=content_sha256(record.prompt),
            image_sha256=content_sha256(record.image),
            response_sha256=content_sha256(record.response),
            reference_sha256=content_sha256(record.reference),
            has_image=record.image is not None,
            has_reference=record.reference is not None,
            ood_score=ood_score,
            sampling_weight=record.sampling_weight if sampling_weight is None else sampling_weight,
            raw=RawContent(record.prompt, record.response, record.reference, record.image),
        )


@dataclass(frozen=True, slots=True)
class StoredSample:
    """A stored sample's metadata, and which embedding kinds it has."""

    id: str
    stream: str
    event_time: datetime
    model: str | None
    prompt_sha256: str | None
    image_sha256: str | None
    response_sha256: str | None
    reference_sha256: str | None
    has_image: bool
    has_reference: bool
    ood_score: float | None
    sampling_weight: float
    encoder_fingerprint: str
    created_at: datetime
    kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A claimed inbox item: the record, and the lease under which this worker holds it."""

    id: int
    record: TrafficRecord
    received_at: datetime
    attempts: int
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class InboxFailureEntry:
    """A record moved out of the inbox because it could not be embedded, and why."""

    record_id: str
    stream: str
    reason: str
    attempts: int
    received_at: datetime
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class EmbeddingChunk:
    """Embeddings of up to ``chunk_size`` samples, in event-time order.

    ``vectors[kind]`` holds float32 rows only for the samples that have that kind;
    ``index[kind]`` gives each row's position in ``sample_ids`` (so kinds can be paired).
    Every requested kind is a key; a kind no sample has is a (0, 0) array.
    """

    sample_ids: list[str]
    event_times: list[datetime]
    ood_scores: np.ndarray  # float64, NaN where no score
    sampling_weights: np.ndarray  # float64
    vectors: dict[str, np.ndarray]
    index: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass(frozen=True, slots=True)
class WindowLocation:
    """Where a sample falls: the stream and event time whose window a change touches."""

    stream: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class LateReferenceEntry:
    id: int
    record_id: str
    text: str | None  # None once resolved (embedded)
    reference_sha256: str
    received_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class RiskTransitionEntry:
    id: int
    stream: str
    at: datetime
    from_level: RiskLevel
    to_level: RiskLevel
    reason: str
    window_id: str | None


@dataclass(frozen=True, slots=True)
class ReferenceSetInfo:
    """Metadata of a built reference store (the files stay under ``reference.root``)."""

    name: str
    path: str
    encoder_fingerprint: str
    checksum: str
    n_samples: int
    n_images: int
    n_references: int
    built_at: datetime
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    registered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EstimatorInfo:
    """Metadata of an estimator artifact (CLUB weights, null tables), not the file."""

    name: str
    version: str
    kind: str
    path: str
    checksum: str
    trained_at: datetime
    reference_set_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    registered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """What a retention run removed."""

    raw_content: int
    late_references: int


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """What storing a window (``Repository.store_window``) wrote: the window's id and the
    stream's risk level before and after the write (equal when the window did not move it)."""

    id: str
    level_before: RiskLevel
    level_after: RiskLevel

    @property
    def changed(self) -> bool:
        return self.level_before != self.level_after
