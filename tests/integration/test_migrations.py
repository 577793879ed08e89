"""The migrations and the models describe the same schema, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app.db import Base, create_engine, create_schema, import_models


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        import_models()
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_the_request_scope_commits_what_was_only_added(database_url: str) -> None:
    """session_scope skips the commit of a session that did nothing, not of one that added."""
    from sqlalchemy import func, select

    from app.db import session_factory, session_scope
    from app.offices.models import Province

    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        sessions = session_factory(engine)
        async for session in session_scope(sessions):
            session.add(Province(id=99, code="99", name_fa="آزمون", name_en="Test", population=1))
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Province)) == 1
    finally:
        await engine.dispose()
