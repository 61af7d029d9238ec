"""SQLAlchemy 2 models: the schema of everything the monitor keeps.

Only :mod:`monitor.store.repository` issues statements against these tables; the Alembic
migrations in ``migrations/`` create them (never ``create_all``), and a test checks that
autogenerate finds no difference between the two.

Times are stored as timezone-aware UTC (:class:`UTCDateTime`: SQLite keeps no zone, so values
are normalised to UTC on the way in and marked UTC on the way out). Embeddings are float16
little-endian blobs with their dimension beside them. Raw prompts, answers and images live only
in ``raw_content``, written when raw retention is switched on and purged after its TTL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; naive input is taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores text: drop the zone so every value has the same sortable form.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Stream(Base):
    __tablename__ = "streams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Sample(Base):
    """One sampled, embedded record: metadata and content hashes, never raw content."""

    __tablename__ = "samples"
    # created_at: the scheduler finds samples stored after their window was computed (0002).
    __table_args__ = (Index(None, "stream_id", "event_time"), Index(None, "created_at"))

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the record id
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime())
    model: Mapped[str | None] = mapped_column(String(256))
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    response_sha256: Mapped[str | None] = mapped_column(String(64))
    reference_sha256: Mapped[str | None] = mapped_column(String(64))
    has_image: Mapped[bool] = mapped_column(Boolean)
    has_reference: Mapped[bool] = mapped_column(Boolean)
    ood_score: Mapped[float | None] = mapped_column(Double)
    sampling_weight: Mapped[float] = mapped_column(Double)
    encoder_fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Embedding(Base):
    """One embedding of a sample: float16 little-endian bytes, ``dim`` values."""

    __tablename__ = "embeddings"
    __table_args__ = (
        CheckConstraint("kind IN ('image', 'prompt', 'response', 'reference')", name="kind"),
        CheckConstraint("dim > 0", name="dim_positive"),
    )

    sample_id: Mapped[str] = mapped_column(
        ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class RawContent(Base):
    """Raw prompt, answer, reference and image of a sample: only with raw retention on."""

    __tablename__ = "raw_content"

    sample_id: Mapped[str] = mapped_column(
        ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True
    )
    prompt: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    image: Mapped[bytes | None] = mapped_column(LargeBinary)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class InboxItem(Base):
    """An accepted record awaiting embedding; claimed with a lease, deleted when acknowledged."""

    __tablename__ = "inbox"
    __table_args__ = (Index(None, "lease_until"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Indexed: references and replays look records up by id (Repository.locate_records).
    record_id: Mapped[str] = mapped_column(String(128), index=True)
    stream: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the record as JSON
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer)


class InboxFailure(Base):
    """A record a worker moved out of the inbox because it cannot be embedded (an undecodable
    image, too many attempts), with the reason; kept for the operator, raw content not kept."""

    __tablename__ = "inbox_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(128), index=True)
    stream: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LateReference(Base):
    """A reference answer that arrived after its record (``POST /v1/references``)."""

    __tablename__ = "late_references"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    record_id: Mapped[str] = mapped_column(String(128), index=True)
    text: Mapped[str | None] = mapped_column(Text)  # cleared once embedded
    reference_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class Window(Base):
    """One computed window; (stream, start, end) is its identity, so recomputing upserts."""

    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("stream_id", "window_start", "window_end"),
        CheckConstraint("status IN ('ok', 'insufficient')", name="status"),
        CheckConstraint("risk_level IN (0, 1, 2)", name="risk_level"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    estimator_version: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    n_references: Mapped[int] = mapped_column(Integer)
    risk_level: Mapped[int] = mapped_column(SmallInteger)
    jsd_visual: Mapped[float | None] = mapped_column(Double)
    jsd_text: Mapped[float | None] = mapped_column(Double)
    jsd_output_id: Mapped[float | None] = mapped_column(Double)
    jsd_output_live: Mapped[float | None] = mapped_column(Double)
    p_visual: Mapped[float | None] = mapped_column(Double)
    p_text: Mapped[float | None] = mapped_column(Double)
    p_output_id: Mapped[float | None] = mapped_column(Double)
    p_output_live: Mapped[float | None] = mapped_column(Double)
    threshold_visual: Mapped[float | None] = mapped_column(Double)
    threshold_text: Mapped[float | None] = mapped_column(Double)
    threshold_output_id: Mapped[float | None] = mapped_column(Double)
    threshold_output_live: Mapped[float | None] = mapped_column(Double)
    jsd_response: Mapped[float | None] = mapped_column(Double)  # answer drift (0002)
    p_response: Mapped[float | None] = mapped_column(Double)
    threshold_response: Mapped[float | None] = mapped_column(Double)
    jsd_mode: Mapped[str | None] = mapped_column(String(16))
    bound_scale_adjusted: Mapped[float | None] = mapped_column(Double)
    bound_entropy_scaled: Mapped[float | None] = mapped_column(Double)
    bound_complete: Mapped[bool] = mapped_column(Boolean)
    bound_p_value: Mapped[float | None] = mapped_column(Double)
    bound_threshold: Mapped[float | None] = mapped_column(Double)
    bound_significant: Mapped[bool | None] = mapped_column(Boolean)
    emi_live: Mapped[float | None] = mapped_column(Double)
    emi_id: Mapped[float | None] = mapped_column(Double)
    emid: Mapped[float | None] = mapped_column(Double)
    emid_low: Mapped[float | None] = mapped_column(Double)
    emid_high: Mapped[float | None] = mapped_column(Double)
    ood_fraction: Mapped[float | None] = mapped_column(Double)
    ood_threshold: Mapped[float | None] = mapped_column(Double)
    # The sequential detector after this window (0006); NULL without one.
    detector_score: Mapped[float | None] = mapped_column(Double)
    detector_statistic: Mapped[float | None] = mapped_column(Double)
    detector_threshold: Mapped[float | None] = mapped_column(Double)
    detector_alarmed: Mapped[bool | None] = mapped_column(Boolean)
    # The window's warning, so a replayed detector state can re-derive its level (0006).
    warning: Mapped[bool | None] = mapped_column(Boolean)
    # When the computation started: a sample stored or a reference resolved later makes the
    # window stale, and the scheduler recomputes it.
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RiskTransition(Base):
    """A change of a stream's risk level, with the window that caused it (at most one per
    window: a recomputed window updates its own transition, never adds a second)."""

    __tablename__ = "risk_transitions"
    __table_args__ = (Index(None, "stream_id", "at"), Index(None, "window_id", unique=True))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"))
    window_id: Mapped[int | None] = mapped_column(ForeignKey("windows.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_level: Mapped[int] = mapped_column(SmallInteger)
    to_level: Mapped[int] = mapped_column(SmallInteger)
    reason: Mapped[str] = mapped_column(Text)


class ReferenceSet(Base):
    """Metadata of a built reference store (the FAISS files live under reference.root)."""

    __tablename__ = "reference_sets"
    __table_args__ = (UniqueConstraint("name", "checksum"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    encoder_fingerprint: Mapped[str] = mapped_column(String(128))
    checksum: Mapped[str] = mapped_column(String(128))
    n_samples: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    n_references: Mapped[int] = mapped_column(Integer)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime())
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class EstimatorArtifact(Base):
    """Metadata of a trained or imported estimator (CLUB weights, null tables): not the files."""

    __tablename__ = "estimator_artifacts"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    reference_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("reference_sets.id", ondelete="SET NULL")
    )
    path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(128))
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime())
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
