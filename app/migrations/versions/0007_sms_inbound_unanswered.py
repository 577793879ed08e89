"""sms_inbound: an index over the messages not answered

The minute's job that carries out inbound messages whose delivery died looks for those not
answered, received in the last hour. The table keeps every message, and without an index
the job read it whole once a minute, a cost growing with every SMS ever received.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 05:40:00
"""

from __future__ import annotations

from alembic import op

from app.migrations.live_index import create_index

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Built here only on a small table; on a large one the upgrade stops and names the
    # CONCURRENTLY build to run first (app.migrations.live_index, docs/deployment.md).
    create_index("ix_sms_inbound_unanswered", "sms_inbound", "received_at", where="answered_at IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_sms_inbound_unanswered")
