"""sms_messages, sms_inbound: indexes for the night's purge of old messages

Messages are kept NOBAT_SMS_KEPT_DAYS (90) and then deleted by a nightly job: their bodies
carry tracking codes, national IDs and complaints' words, and both tables grew with every
SMS ever sent or received. Without an index on when each was made, the purge would read
each table whole every night.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 08:30:00
"""

from __future__ import annotations

from alembic import op

from app.migrations.live_index import create_index

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each built here only on a small table; on a large one the upgrade stops and names the
    # CONCURRENTLY build to run first (app.migrations.live_index, docs/deployment.md).
    create_index("ix_sms_messages_created_at", "sms_messages", "created_at")
    create_index("ix_sms_inbound_received_at", "sms_inbound", "received_at")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_sms_inbound_received_at")
    op.execute("DROP INDEX IF EXISTS ix_sms_messages_created_at")
