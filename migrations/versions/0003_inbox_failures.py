"""Inbox failures: records an embedding worker moved out of the inbox because they cannot be
embedded (an undecodable image, too many attempts), with the reason, so one bad record never
blocks the queue and is never retried forever.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_failures",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_failures")),
    )
    op.create_index(
        op.f("ix_inbox_failures_record_id"), "inbox_failures", ["record_id"], unique=False
    )
    op.create_index(
        op.f("ix_inbox_failures_failed_at"), "inbox_failures", ["failed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_inbox_failures_failed_at"), table_name="inbox_failures")
    op.drop_index(op.f("ix_inbox_failures_record_id"), table_name="inbox_failures")
    op.drop_table("inbox_failures")
