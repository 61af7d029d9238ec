"""Initial schema: streams, samples, embeddings, raw content, inbox, late references, windows,
risk transitions, reference sets and estimator artifacts.

Hand-checked against monitor/store/models.py: a test runs Alembic autogenerate against the
models after upgrading and expects no difference, on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
    )
    op.create_index(op.f("ix_inbox_lease_until"), "inbox", ["lease_until"], unique=False)
    op.create_table(
        "late_references",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("reference_sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_late_references")),
    )
    op.create_index(
        op.f("ix_late_references_record_id"), "late_references", ["record_id"], unique=False
    )
    op.create_index(
        op.f("ix_late_references_resolved_at"), "late_references", ["resolved_at"], unique=False
    )
    op.create_table(
        "reference_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("encoder_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("checksum", sa.String(length=128), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("n_references", sa.Integer(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_sets")),
        sa.UniqueConstraint("name", "checksum", name=op.f("uq_reference_sets_name_checksum")),
    )
    op.create_table(
        "streams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_streams")),
        sa.UniqueConstraint("name", name=op.f("uq_streams_name")),
    )
    op.create_table(
        "estimator_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("reference_set_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=128), nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["reference_set_id"],
            ["reference_sets.id"],
            name=op.f("fk_estimator_artifacts_reference_set_id_reference_sets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_estimator_artifacts")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_estimator_artifacts_name_version")),
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("prompt_sha256", sa.String(length=64), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("response_sha256", sa.String(length=64), nullable=True),
        sa.Column("reference_sha256", sa.String(length=64), nullable=True),
        sa.Column("has_image", sa.Boolean(), nullable=False),
        sa.Column("has_reference", sa.Boolean(), nullable=False),
        sa.Column("ood_score", sa.Double(), nullable=True),
        sa.Column("sampling_weight", sa.Double(), nullable=False),
        sa.Column("encoder_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
            name=op.f("fk_samples_stream_id_streams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
    )
    op.create_index(
        op.f("ix_samples_stream_id_event_time"),
        "samples",
        ["stream_id", "event_time"],
        unique=False,
    )
    op.create_table(
        "windows",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("estimator_version", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("n_references", sa.Integer(), nullable=False),
        sa.Column("risk_level", sa.SmallInteger(), nullable=False),
        sa.Column("jsd_visual", sa.Double(), nullable=True),
        sa.Column("jsd_text", sa.Double(), nullable=True),
        sa.Column("jsd_output_id", sa.Double(), nullable=True),
        sa.Column("jsd_output_live", sa.Double(), nullable=True),
        sa.Column("p_visual", sa.Double(), nullable=True),
        sa.Column("p_text", sa.Double(), nullable=True),
        sa.Column("p_output_id", sa.Double(), nullable=True),
        sa.Column("p_output_live", sa.Double(), nullable=True),
        sa.Column("threshold_visual", sa.Double(), nullable=True),
        sa.Column("threshold_text", sa.Double(), nullable=True),
        sa.Column("threshold_output_id", sa.Double(), nullable=True),
        sa.Column("threshold_output_live", sa.Double(), nullable=True),
        sa.Column("bound_scale_adjusted", sa.Double(), nullable=True),
        sa.Column("bound_entropy_scaled", sa.Double(), nullable=True),
        sa.Column("bound_complete", sa.Boolean(), nullable=False),
        sa.Column("emi_live", sa.Double(), nullable=True),
        sa.Column("emi_id", sa.Double(), nullable=True),
        sa.Column("emid", sa.Double(), nullable=True),
        sa.Column("emid_low", sa.Double(), nullable=True),
        sa.Column("emid_high", sa.Double(), nullable=True),
        sa.Column("ood_fraction", sa.Double(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'insufficient')", name=op.f("ck_windows_status")),
        sa.CheckConstraint("risk_level IN (0, 1, 2)", name=op.f("ck_windows_risk_level")),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
            name=op.f("fk_windows_stream_id_streams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_windows")),
        sa.UniqueConstraint(
            "stream_id",
            "window_start",
            "window_end",
            name=op.f("uq_windows_stream_id_window_start_window_end"),
        ),
    )
    op.create_table(
        "embeddings",
        sa.Column("sample_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('image', 'prompt', 'response', 'reference')", name=op.f("ck_embeddings_kind")
        ),
        sa.CheckConstraint("dim > 0", name=op.f("ck_embeddings_dim_positive")),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["samples.id"],
            name=op.f("fk_embeddings_sample_id_samples"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sample_id", "kind", name=op.f("pk_embeddings")),
    )
    op.create_table(
        "raw_content",
        sa.Column("sample_id", sa.String(length=128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["samples.id"],
            name=op.f("fk_raw_content_sample_id_samples"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sample_id", name=op.f("pk_raw_content")),
    )
    op.create_index(op.f("ix_raw_content_expires_at"), "raw_content", ["expires_at"], unique=False)
    op.create_table(
        "risk_transitions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=False),
        sa.Column("window_id", BIG_ID, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_level", sa.SmallInteger(), nullable=False),
        sa.Column("to_level", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"],
            ["streams.id"],
            name=op.f("fk_risk_transitions_stream_id_streams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["window_id"],
            ["windows.id"],
            name=op.f("fk_risk_transitions_window_id_windows"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_transitions")),
    )
    op.create_index(
        op.f("ix_risk_transitions_stream_id_at"),
        "risk_transitions",
        ["stream_id", "at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_risk_transitions_stream_id_at"), table_name="risk_transitions")
    op.drop_table("risk_transitions")
    op.drop_index(op.f("ix_raw_content_expires_at"), table_name="raw_content")
    op.drop_table("raw_content")
    op.drop_table("embeddings")
    op.drop_table("windows")
    op.drop_index(op.f("ix_samples_stream_id_event_time"), table_name="samples")
    op.drop_table("samples")
    op.drop_table("estimator_artifacts")
    op.drop_table("streams")
    op.drop_table("reference_sets")
    op.drop_index(op.f("ix_late_references_resolved_at"), table_name="late_references")
    op.drop_index(op.f("ix_late_references_record_id"), table_name="late_references")
    op.drop_table("late_references")
    op.drop_index(op.f("ix_inbox_lease_until"), table_name="inbox")
    op.drop_table("inbox")
