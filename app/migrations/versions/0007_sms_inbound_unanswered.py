"""sms_inbound: an index over the messages not answered

The minute's job that carries out inbound messages whose delivery died looks for those not
answered, received in the last hour. The table keeps every message, and without an index
the job read it whole once a minute, a cost growing with every SMS ever received.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_sms_inbound_unanswered",
        "sms_inbound",
        ["received_at"],
        sqlite_where=sa.text("answered_at IS NULL"),
        postgresql_where=sa.text("answered_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sms_inbound_unanswered", table_name="sms_inbound")
