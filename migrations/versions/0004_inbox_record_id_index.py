"""Index the inbox by record id: a late reference, a replay or a backfill looks its records up
by id (``Repository.locate_records``), which scanned the whole inbox (up to ``[ingest]
max_inbox_depth`` rows) per lookup without it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_inbox_record_id"), "inbox", ["record_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_inbox_record_id"), table_name="inbox")
