"""bookings.promoted_at: when a place in line was given its seat; suspensions.counted_to

A seat freed a minute before its slot went to the head of the line, who could not get there
in time, and their no-show counted towards a week's suspension. A no-show of a booking
promoted within ``MOVE_LEAD`` of its slot no longer counts (app.console.service).

A suspension's ``counted_to``, the last day whose no-shows it counted: the night's close
counts up to yesterday, and a no-show marked on the day it made one was never counted after.

Nullable columns with no default: added without rewriting the tables.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bookings", sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("suspensions", sa.Column("counted_to", sa.Date(), nullable=True))


def downgrade() -> None:
    op.drop_column("suspensions", "counted_to")
    op.drop_column("bookings", "promoted_at")
