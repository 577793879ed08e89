"""bookings.id and audit_log.id as 64-bit numbers on PostgreSQL

Both were SERIAL, 32 bits: at the three million bookings a day deployment.md plans for,
bookings' numbers run out in under two years, and then every booking's insert fails. Widening
rewrites the table and its indexes while holding every read and write of it: seconds while
it is small, hours once it holds a year. So it is done now, within the upgrade, while the
table is small; a large one stops the upgrade with the statements to run in a maintenance
window (app.migrations.live_index's rule for a large table). SQLite's INTEGER PRIMARY KEY is
64 bits already: nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 17:00:00
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

from app.migrations.live_index import SMALL_TABLE_ROWS

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("bookings", "audit_log")


def _statements(table: str, sequence: str) -> list[str]:
    return [f"ALTER TABLE {table} ALTER COLUMN id TYPE bigint", f"ALTER SEQUENCE {sequence} AS bigint"]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        width = bind.execute(
            text(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = :table AND column_name = 'id'"
            ),
            {"table": table},
        ).scalar_one()
        sequence = bind.execute(text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}).scalar_one()
        statements = _statements(table, sequence)
        if width == "bigint":  # widened by hand, as the message below asks
            op.execute(f"ALTER SEQUENCE {sequence} AS bigint")
            continue
        rows = bind.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {SMALL_TABLE_ROWS + 1}) t"))
        if rows.scalar_one() > SMALL_TABLE_ROWS:
            raise RuntimeError(
                f"{table} is too large to widen its id within the upgrade (the rewrite holds every read and "
                f"write of it): in a maintenance window run {'; '.join(statements)}; then start again"
            )
        for statement in statements:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        sequence = bind.execute(text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}).scalar_one()
        op.execute(f"ALTER SEQUENCE {sequence} AS integer")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE integer")
