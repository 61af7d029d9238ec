"""Windows: the answer-drift term (`response`: JSD, p-value, threshold), the JSD mode, the
bound's p-value / threshold / significance, the OOD threshold; an index on samples.created_at
(the scheduler recomputes windows that got samples after they were computed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DOUBLES = (
    "jsd_response",
    "p_response",
    "threshold_response",
    "bound_p_value",
    "bound_threshold",
    "ood_threshold",
)


def upgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        for name in _DOUBLES[:3]:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))
        batch.add_column(sa.Column("jsd_mode", sa.String(length=16), nullable=True))
        for name in _DOUBLES[3:5]:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))
        batch.add_column(sa.Column("bound_significant", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("ood_threshold", sa.Double(), nullable=True))
    op.create_index(op.f("ix_samples_created_at"), "samples", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_samples_created_at"), table_name="samples")
    with op.batch_alter_table("windows") as batch:
        for name in (*_DOUBLES, "jsd_mode", "bound_significant"):
            batch.drop_column(name)
