"""closures: one row per day, province and reason

Two identical closures posted at the same instant could both pass the service's check and
both be recorded; reopening one then left the day shut by the other. A unique index holds
where the check cannot. ``coalesce`` because a national closure has no province, and two
NULLs are distinct to a unique index on both databases.

Copies already recorded are removed first, the oldest kept: they close the same offices on
the same day, so the day stays shut exactly as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 13:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DELETE FROM closures WHERE id NOT IN (
            SELECT min(id) FROM closures GROUP BY date, coalesce(province_id, 0), reason
        )
        """
    )
    op.create_index(
        "uq_closures_same_order",
        "closures",
        ["date", sa.text("coalesce(province_id, 0)"), "reason"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_closures_same_order", table_name="closures")
