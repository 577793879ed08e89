"""crowd_caps: one cap in force per province, dates, percent and reason

A retried cap (a national one answers only once every office's counters have it) was
recorded twice; lifting one then left the copy in force, every office of the country still
capped. A unique index over the caps in force holds where the service's check cannot.
``coalesce`` because a national cap has no province, and two NULLs are distinct to a unique
index on both databases.

Copies already in force are lifted first, the oldest kept: they cap the same offices by the
same share on the same dates, so capacity stays exactly as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        UPDATE crowd_caps SET lifted_at = CURRENT_TIMESTAMP
        WHERE lifted_at IS NULL AND id NOT IN (
            SELECT min(id) FROM crowd_caps WHERE lifted_at IS NULL
            GROUP BY coalesce(province_id, 0), starts_on, ends_on, percent, reason
        )
        """
    )
    op.create_index(
        "uq_crowd_caps_same_order",
        "crowd_caps",
        [sa.text("coalesce(province_id, 0)"), "starts_on", "ends_on", "percent", "reason"],
        unique=True,
        sqlite_where=sa.text("lifted_at IS NULL"),
        postgresql_where=sa.text("lifted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_crowd_caps_same_order", table_name="crowd_caps")
