"""Alembic environment: the app's own metadata and engine; run through app.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from app.db import Base, import_models

import_models()
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m app migrate` (it passes the app's connection)")
run_migrations(connection)
