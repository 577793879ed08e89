"""The migrations and the models describe the same schema, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from litestar.testing import AsyncTestClient
from sqlalchemy import Connection, text

from app import migrations
from app.db import Base, create_engine, create_schema, import_models
from app.main import create_app
from app.settings import Settings

LATEST = max(path.name[:4] for path in (Path(migrations.__file__).parent / "versions").glob("[0-9]*.py"))
"""The revision of the newest migration (files are named by their revision)."""

# Each test starts from an empty database: the migrations are what is tested.
pytestmark = pytest.mark.empty_database


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def upgrade_to(revision: str) -> Callable[[Connection], None]:
    """Alembic's upgrade to ``revision``, for ``AsyncConnection.run_sync``."""
    from alembic import command

    from app.db import alembic_config

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    return run


# SQLite cannot reflect an expression index (the closures' one-order index); the
# regulator's tests prove it holds there.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
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


async def upgraded_over(
    database_url: str, revision: str, insert: str, rows: list[dict[str, Any]], ask: str
) -> list[Any]:
    """Upgrade an empty database to ``revision``, put a province and ``rows`` (``insert``) in
    it, upgrade to head, and answer ``ask``: what a migration made of rows already there."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to(revision))
            await connection.execute(
                text("INSERT INTO provinces (id, code, name_fa, name_en, population) VALUES (1, '01', 'الف', 'A', 1)")
            )
            for row in rows:
                await connection.execute(text(insert), row)
            await connection.run_sync(upgrade_to("head"))
            return list((await connection.execute(text(ask))).scalars().all())
    finally:
        await engine.dispose()


async def test_the_one_order_index_keeps_the_first_of_copies_already_recorded(database_url: str) -> None:
    """Closures recorded twice before the index came (the same day, province or country, and
    reason) are folded into the first: the day stays shut, and the index can be built."""
    closures = [
        (1, 1, "آلودگی هوا"), (2, 1, "آلودگی هوا"), (3, None, "عزا"), (4, None, "عزا"), (5, 1, "عزا"),
    ]  # fmt: skip
    kept = await upgraded_over(
        database_url,
        "0004",
        "INSERT INTO closures (id, date, province_id, reason, created_by)"
        " VALUES (:id, '2026-12-10', :province_id, :reason, 'regulator')",
        [{"id": i, "province_id": province_id, "reason": reason} for i, province_id, reason in closures],
        "SELECT id FROM closures ORDER BY id",
    )
    assert kept == [1, 3, 5]


async def test_the_one_cap_index_lifts_copies_already_in_force(database_url: str) -> None:
    """Crowd caps recorded twice before the index came (a retried national cap) are folded
    into the first: the copies are lifted (capacity stays as it was), lifted ones untouched."""
    caps = [
        (1, None, 50, False), (2, None, 50, False), (3, None, 50, True), (4, 1, 50, False), (5, None, 40, False),
    ]  # fmt: skip
    in_force = await upgraded_over(
        database_url,
        "0005",
        "INSERT INTO crowd_caps (id, province_id, starts_on, ends_on, percent, reason, created_by, lifted_at)"
        " VALUES (:id, :province_id, '2026-12-10', '2026-12-20', :percent, 'کرونا', 'regulator',"
        " CASE WHEN :lifted THEN CURRENT_TIMESTAMP END)",
        [{"id": i, "province_id": p, "percent": percent, "lifted": lifted} for i, p, percent, lifted in caps],
        "SELECT id FROM crowd_caps WHERE lifted_at IS NULL ORDER BY id",
    )
    assert in_force == [1, 4, 5]


async def test_instances_started_together_on_an_empty_database_migrate_it_and_serve(settings: Settings) -> None:
    """Every other test starts from a migrated copy; this one proves the app's own start-up
    migrates before anything reads the tables, with two instances starting at once, as a
    deploy starts them (on PostgreSQL one migrates under a lock, the other waits for it)."""
    async with contextlib.AsyncExitStack() as started:
        instances = [AsyncTestClient(create_app(settings)) for _ in range(2)]
        await asyncio.gather(*(started.enter_async_context(instance) for instance in instances))
        for instance in instances:
            assert (await instance.get("/health/ready")).status_code == 200
            assert (await instance.get("/api/v1/offices")).status_code == 200


async def test_a_large_table_stops_the_upgrade_until_its_index_is_built_without_holding_inserts(
    database_url: str,
) -> None:
    """A plain index build within the upgrade holds every insert into the table until it ends:
    on sms_messages, every booking's and sign-in code's. A large table stops the upgrade and
    names the CONCURRENTLY build; once the operator has run it, the upgrade goes on."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer and no CONCURRENTLY: a deployment's table is PostgreSQL's")
    from app.migrations.live_index import SMALL_TABLE_ROWS

    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("0007"))
            await connection.execute(
                text(
                    'INSERT INTO sms_messages (id, "to", body, kind, status, attempts, created_at)'
                    " SELECT g::text, '09121234567', '-', 'otp', 'sent', 0, now()"
                    " FROM generate_series(1, :rows) g"
                ),
                {"rows": SMALL_TABLE_ROWS + 1},
            )
        with pytest.raises(RuntimeError, match="CREATE INDEX CONCURRENTLY ix_sms_messages_created_at"):
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to("head"))
        async with engine.connect() as connection:
            await connection.execute(text("COMMIT"))  # CONCURRENTLY runs outside a transaction
            await connection.execute(
                text("CREATE INDEX CONCURRENTLY ix_sms_messages_created_at ON sms_messages (created_at)")
            )
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("head"))
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        assert version == LATEST  # every migration after it ran too
    finally:
        await engine.dispose()


async def test_the_ids_that_grow_by_millions_a_day_are_64_bits_and_a_large_table_waits_for_a_window(
    database_url: str,
) -> None:
    """bookings.id and audit_log.id were SERIAL: 32 bits, used up within two years at the
    planned three million bookings a day, after which no booking could be inserted. Widened
    within the upgrade while small; a large table stops the upgrade with the statements for a
    maintenance window (the rewrite holds the table), and goes on once they have run."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's INTEGER PRIMARY KEY is 64 bits already")
    from app.migrations.live_index import SMALL_TABLE_ROWS

    insert = (
        "INSERT INTO audit_log (at, actor, actor_role, action, target)"
        " SELECT now(), 'cli', 'system', 'test', g::text FROM generate_series(1, :rows) g"
    )
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("0009"))
            await connection.execute(text(insert), {"rows": SMALL_TABLE_ROWS + 1})
        with pytest.raises(RuntimeError, match="ALTER TABLE audit_log ALTER COLUMN id TYPE bigint"):
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to("head"))
        async with engine.begin() as connection:  # the window
            await connection.execute(text("ALTER TABLE audit_log ALTER COLUMN id TYPE bigint"))
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("head"))
            widths = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT sequence_name, data_type FROM information_schema.sequences"
                            " WHERE sequence_name IN ('bookings_id_seq', 'audit_log_id_seq')"
                        )
                    )
                ).all()
            )
            assert widths == {"bookings_id_seq": "bigint", "audit_log_id_seq": "bigint"}
            await connection.execute(text("SELECT setval('audit_log_id_seq', 3000000000)"))
            await connection.execute(text(insert), {"rows": 1})
            assert await connection.scalar(text("SELECT max(id) FROM audit_log")) == 3000000001
    finally:
        await engine.dispose()


async def test_a_migration_gives_up_on_a_table_in_use_rather_than_queue_everyone_behind_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that must lock a table (0010 widens bookings.id) waited behind a long
    transaction on it, the night's close, and every booking's insert queued behind the
    migration. It gives up after a few seconds, changing nothing, and runs once the table is
    free."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the migration waits for nobody's reads")
    from app import db

    monkeypatch.setattr(db, "MIGRATION_LOCK_SECONDS", 1)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("0009"))
        async with engine.connect() as holder:
            await holder.execute(text("SELECT count(*) FROM bookings"))  # its transaction open: a long close
            started = asyncio.get_running_loop().time()
            with pytest.raises(db.MigrationWaited, match="start the instance again"):
                await create_schema(engine)
            assert asyncio.get_running_loop().time() - started < 10
            await holder.rollback()
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT version_num FROM alembic_version")) == "0009"
        await create_schema(engine)
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT version_num FROM alembic_version")) == LATEST
    finally:
        await engine.dispose()
