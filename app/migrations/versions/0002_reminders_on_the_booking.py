"""reminders on the booking: two timestamps and the index the minute-by-minute scan uses

Reminders were two RQ jobs scheduled per booking (3-4 KB of RQ's Redis each, 16-18 GB for a
horizon with every seat sold); a periodic job now finds what is due from the record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 16:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reminded_evening_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reminded_hour_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_bookings_day", ["date", "status", "slot_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.drop_index("ix_bookings_day")
        batch_op.drop_column("reminded_hour_at")
        batch_op.drop_column("reminded_evening_at")
