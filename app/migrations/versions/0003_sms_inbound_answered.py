"""inbound SMS: whether it was answered, and when a delivery started carrying it out

A delivery that failed midway (Redis or the database down) left the message recorded as
received but never answered; Twilio's retry was then dropped as a repeat. The retry now
finds ``answered_at`` unset and carries the message out again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sms_inbound", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True))
    # Messages received before this revision were handled the old way: none is carried out again.
    op.execute("UPDATE sms_inbound SET claimed_at = received_at, answered_at = received_at")


def downgrade() -> None:
    with op.batch_alter_table("sms_inbound", schema=None) as batch_op:
        batch_op.drop_column("answered_at")
        batch_op.drop_column("claimed_at")
