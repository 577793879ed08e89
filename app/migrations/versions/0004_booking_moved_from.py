"""bookings: the office a moved booking was made at

A retry of the request that made a booking (the same Idempotency-Key) was refused with 422
once the office had moved the booking to another time or office: it no longer matched the
request. ``moved_from_office_id`` tells that retry from a key used for another request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("moved_from_office_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.drop_column("moved_from_office_id")
