"""An index added to a table that is live in production: built here only while the table is
small, and left to the operator, built CONCURRENTLY, once it is not.

A migration runs in one transaction (instances migrate at start, under one lock), where
PostgreSQL cannot build an index CONCURRENTLY. A plain build holds every insert into the
table until it ends: on ``sms_messages``, which each booking's and each sign-in code's
transaction writes to, minutes of a national outage on a table of millions of rows. So a
large table without the index stops the upgrade, and the instance's start, with the command
that builds it without holding anyone (the instances still serving go on meanwhile).
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

SMALL_TABLE_ROWS = 100_000
"""Rows a plain build goes through in well under a second."""


def create_index(name: str, table: str, columns: str, where: str = "") -> None:
    where_clause = f" WHERE {where}" if where else ""
    definition = f"{name} ON {table} ({columns}){where_clause}"
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        valid = bind.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"), {"name": name}
        ).scalar()
        if valid is False:  # a CONCURRENTLY build that failed part-way leaves it so
            raise RuntimeError(
                f"index {name} is invalid (a build that failed): DROP INDEX CONCURRENTLY {name}; "
                f"then CREATE INDEX CONCURRENTLY {definition}; then start again"
            )
        if valid is None:
            rows = bind.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {SMALL_TABLE_ROWS + 1}) t"))
            if rows.scalar_one() > SMALL_TABLE_ROWS:
                raise RuntimeError(
                    f"{table} is too large to index within the upgrade (it would hold every insert "
                    f"meanwhile): first run CREATE INDEX CONCURRENTLY {definition}; then start again"
                )
    op.execute(f"CREATE INDEX IF NOT EXISTS {definition}")
