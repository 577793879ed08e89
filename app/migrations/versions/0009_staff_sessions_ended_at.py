"""staff_accounts.sessions_ended_at: when an operator last ended the account's sessions

A session keeps a mark of it and ends once an operator resets the password or disables the
account: a leaked password's sessions went on for hours after its reset, and an idle one
outlived a disable to work again after the enable. A nullable column with no default: added
without rewriting the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("staff_accounts", sa.Column("sessions_ended_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("staff_accounts", "sessions_ended_at")
