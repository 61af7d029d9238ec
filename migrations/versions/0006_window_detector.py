"""Windows: the sequential detector after each window (its score, statistic, threshold and
alarm), and the window's warning (so a window whose detector state is replayed after an
earlier window was recomputed can re-derive its level without recomputing its statistics).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DOUBLES = ("detector_score", "detector_statistic", "detector_threshold")
_BOOLEANS = ("detector_alarmed", "warning")


def upgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        for name in _DOUBLES:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))
        for name in _BOOLEANS:
            batch.add_column(sa.Column(name, sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        for name in (*_DOUBLES, *_BOOLEANS):
            batch.drop_column(name)
