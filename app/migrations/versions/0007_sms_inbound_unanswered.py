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

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: on a large table, build it first by hand with CREATE INDEX CONCURRENTLY
    # (docs/deployment.md); a plain build here holds every inbound webhook's insert meanwhile.
    # (The migration runs in one transaction, where CONCURRENTLY cannot.)
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_sms_inbound_unanswered ON sms_inbound (received_at) WHERE answered_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_sms_inbound_unanswered")
