"""One risk transition per window: a unique index on ``risk_transitions.window_id``.

A window and the transition it causes are now written in one transaction, and a recomputed
window updates its own transition; the index makes a second transition for one window
impossible. Databases written by earlier versions may hold several transitions of one window
(each recomputation that changed its level added one): the newest stays linked to its window
(the one reports read), the older ones keep their place in the history with no window.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    transitions = sa.table(
        "risk_transitions",
        sa.column("id", sa.BigInteger()),
        sa.column("window_id", sa.BigInteger()),
    )
    newer = transitions.alias("newer")
    # Unlink every transition of a window but its newest (NULLs do not collide in the index).
    op.execute(
        transitions.update()
        .where(
            transitions.c.window_id.is_not(None),
            sa.exists()
            .where(newer.c.window_id == transitions.c.window_id, newer.c.id > transitions.c.id)
            .correlate(transitions),
        )
        .values(window_id=None)
    )
    op.create_index(
        op.f("ix_risk_transitions_window_id"), "risk_transitions", ["window_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_risk_transitions_window_id"), table_name="risk_transitions")
