"""The record: one async engine, one session per request, one transaction per session."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from redis.exceptions import RedisError
from sqlalchemy import BigInteger, Connection, Enum, Integer, Select, Table, event, text, update
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


WIDE_ID = BigInteger().with_variant(Integer, "sqlite")
"""The id of a table that grows by millions a day (bookings, the audit log): 64 bits on
PostgreSQL, where SERIAL's 32 run out within two years; SQLite numbers only an INTEGER
primary key by itself, and that is 64 bits there already."""


def enum_column(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings, checked by the application: adding a value needs no migration.
    return Enum(cls, native_enum=False, length=30, values_callable=lambda e: [m.value for m in e])


CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection to PostgreSQL (asyncpg's own default is 60): a server that
takes no packets (a dead host, a failover under way) is answered 503 with Retry-After
while the citizen still waits, not after a minute."""


STATEMENT_SECONDS = 30.0
"""Seconds a statement (a commit too) may wait for PostgreSQL's answer on the web instances.
Without a limit, a primary that vanished without a reset (a dead host, a cut network) held
the group commit's statement, and every booking of the instance behind it, until the
kernel gave up on the connection: a quarter of an hour. Timed out, the commit's outcome is
asked of the record (app.booking.writer), and requests are answered 503."""
JOB_STATEMENT_SECONDS = 600.0
"""The same for the jobs: the night's recount and close read and write a country's rows."""


RECORD_AWAY: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)
"""What the record's failure raises: SQLAlchemy's errors, and a connection that could not be
made or checked out (a connect timing out, a pre-ping past its time limit), which SQLAlchemy
passes on as the driver raised it (OSError; asyncio's TimeoutError is one). A path that
gives seats back or asks a commit's outcome when the record fails catches all of them."""


RECORD_OR_REDIS_AWAY: tuple[type[Exception], ...] = (*RECORD_AWAY, RedisError)
"""The record's failure (``RECORD_AWAY``) or Redis's."""


def create_engine(
    url: str, *, pool_size: int = 20, pre_ping: bool = True, statement_seconds: float | None = STATEMENT_SECONDS
) -> AsyncEngine:
    """``pre_ping``: check each connection as it leaves the pool (a round trip), so that one
    the database dropped (a restart, a failover) is replaced before it fails a request.
    ``statement_seconds``: how long a statement waits for PostgreSQL's answer (None: for ever)."""
    # hide_parameters: a failed statement's error names its SQL, not its values. They hold
    # national IDs, mobiles and citizens' own text, in forms (invisible marks, a card's
    # grouping, an object's repr) the logs' masking cannot all know; and every error logged
    # (a 500, a job's failure, RQ's kept traceback) carried them.
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": statement_seconds},
        hide_parameters=True,
    )
    event.listen(engine.sync_engine, "handle_error", _timed_out_is_unavailable)
    return engine


def _timed_out_is_unavailable(context: ExceptionContext) -> OperationalError | None:
    """A statement past ``statement_seconds`` raises asyncio's TimeoutError, which SQLAlchemy
    passes on as it is: raised as the record away instead (its connection dropped: asyncpg
    leaves it mid-statement), it reaches every handler that catches SQLAlchemy's errors. (A
    connection that cannot be had never reaches this hook: ``RECORD_AWAY`` names both.)"""
    error = context.original_exception
    if not isinstance(error, TimeoutError):
        return None
    context.is_disconnect = True
    return OperationalError(context.statement, context.parameters, error, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers go on while a booking commits; the busy timeout makes writers
    # queue instead of failing with "database is locked" during a rush.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


Entity = TypeVar("Entity", bound=Base)


async def lock_row(session: AsyncSession, entity: type[Entity], row_id: int) -> Entity | None:
    """The row as the record has it now, locked until the transaction ends: a decision read
    from it (a complaint's state, an office's status, the fines so far) cannot interleave
    with another transaction's taking the same decision.

    On PostgreSQL, SELECT ... FOR NO KEY UPDATE: callers exclude each other, and rows that
    only refer to it (a booking at the office, committed by the group commit) still insert;
    plain FOR UPDATE would hold every booking at the office until the commit. SQLite has no
    row locks, and its driver begins a transaction only at the first write, so a read then a
    write could interleave with another's (a complaint confirmed, and fined, twice): a write
    that changes nothing comes first, which holds SQLite's one write lock until the commit,
    and makes what the transaction reads next current. It sets a column that is no key
    (setting the primary key to itself had SQLite check every table that refers to it)."""
    if session.get_bind().dialect.name == "sqlite":
        table = cast(Table, entity.__table__)
        plain = next(c for c in table.columns if not (c.primary_key or c.foreign_keys or c.unique))
        [key] = table.primary_key.columns
        await session.execute(update(table).where(key == row_id).values({plain.name: plain}))
    # OF the entity's own table: the rows it loads eagerly by outer joins cannot be locked.
    return await session.get(entity, row_id, with_for_update={"of": entity, "key_share": True}, populate_existing=True)


Found = TypeVar("Found")


async def read_until(
    session: AsyncSession, read: Callable[[], Awaitable[Found | None]], seconds: float
) -> Found | None:
    """What ``read`` finds in the record, asked every 0.1 s for up to ``seconds``: another
    request (the first of a double tap) may be about to commit it. None if it never came."""
    deadline = time.monotonic() + seconds
    while True:
        # A read of its own each time: SQLite's would go on seeing the record as it first read it.
        await session.rollback()
        found = await read()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.1)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""A way to a session, for code that needs the record only now and then: the read paths ask
it only when Redis lacks a day (a slots read or a search otherwise never touches the
record, and the session made for each had cost a slots read an eighth of its instructions)."""


class Within:
    """The session already open, as ``Sessions``: for a caller inside a transaction whose
    reads must see its own writes (a relocation reading the days it moves bookings to)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def __call__(self) -> AbstractAsyncContextManager[AsyncSession]:
        return contextlib.nullcontext(self.session)


class OnDemand:
    """One session for a piece of work that seldom needs the record, opened at the first
    ``await session()`` and closed when the ``async with`` ends; given ``Within``, the
    caller's session, as open from the start. A booking needs one only when Redis lacks
    the day or on its way out of a failure: its rows go in through the group commit's own
    connections."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self._opening: AbstractAsyncContextManager[AsyncSession] | None = None
        self.opened: AsyncSession | None = sessions.session if isinstance(sessions, Within) else None

    async def session(self) -> AsyncSession:
        if self.opened is None:
            self._opening = self._sessions()
            self.opened = await self._opening.__aenter__()
        return self.opened

    async def __aenter__(self) -> OnDemand:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._opening is not None:
            await self._opening.__aexit__(*exc_info)


SETTLE_SECONDS = 5.0
"""How long ``commit_outcome`` waits for a transaction PostgreSQL is still finishing."""


async def commit_outcome(
    session: AsyncSession, xid: int | None, written: Select[Any], *, wait: float | None = None
) -> bool | None:
    """After a commit raised: whether the transaction ``xid`` (PostgreSQL's ``txid_current()``;
    None on SQLite) landed. None when that cannot be told: the record
    does not answer, or the transaction is still finishing after ``wait`` seconds (a commit
    waiting for a replica; SETTLE_SECONDS unless given). The session is rolled back (what it
    had loaded is expired).

    PostgreSQL says it itself (``txid_status``, made for a commit's lost answer): reading
    the rows back could look while the commit is still finishing, and see it not landed
    when it is about to. A commit waiting for its synchronous standby is "in progress" to
    it, not "committed", though its commit log says so already (it looks at the running
    transactions first: checked on 15.18 with a standby that never answers). Its
    "committed" is checked all the same by ``written``, a query
    that finds a row only if the transaction landed: after a failover to a replica that never
    had it, its id is given again, and PostgreSQL would answer for another transaction. (Its
    "aborted" is true either way.) SQLite gives no id: its record is a file, and ``written``
    read back says, for a commit there has ended by the time it is asked (a commit that
    raises fails in the call)."""
    try:
        await session.rollback()  # a transaction still open on a live connection ends here, not landed
        if xid is None:
            landed = await session.scalar(written) is not None
            await session.rollback()
            return landed
        deadline = asyncio.get_running_loop().time() + (SETTLE_SECONDS if wait is None else wait)
        while True:
            status = await session.scalar(text("SELECT txid_status(:xid)"), {"xid": xid})
            await session.rollback()
            if status == "committed":
                landed = await session.scalar(written) is not None
                await session.rollback()
                return landed
            if status == "aborted":
                return False
            if status is None or asyncio.get_running_loop().time() >= deadline:
                return None  # a status of None: PostgreSQL no longer knows the transaction
            await asyncio.sleep(0.1)
    except RECORD_AWAY:
        with contextlib.suppress(*RECORD_AWAY):
            await session.rollback()
        return None


async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Yield a session; commit when the handler returned, roll back when it raised."""
    session = factory()
    try:
        yield session
    except BaseException:
        try:
            if session.in_transaction():
                await session.rollback()
        except Exception:
            # The database is gone (that may be why we are here): the handler's own error
            # is the one the caller must see, not this one.
            log.warning("rollback failed; the connection is discarded")
        raise
    else:
        # Most reads never open a transaction (the hot paths read Redis and memory):
        # nothing to commit then, and no connection to check out for it. (Adding an
        # object begins one, so what was only added is still committed.)
        if session.in_transaction():
            await session.commit()
    finally:
        # A session that holds no transaction holds no connection either: closing it would
        # only cost a hop through SQLAlchemy's greenlet (a tenth of a booking with commit's).
        if session.in_transaction():
            await session.close()


def import_models() -> None:
    """Import every domain's models so their tables are on Base.metadata."""
    from app.booking import models as _booking  # noqa: F401
    from app.capacity import models as _capacity  # noqa: F401
    from app.complaints import models as _complaints  # noqa: F401
    from app.enforcement import models as _enforcement  # noqa: F401
    from app.offices import models as _offices  # noqa: F401
    from app.sms import models as _sms  # noqa: F401
    from app.staff import models as _staff  # noqa: F401


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


MIGRATION_LOCK_SECONDS = 5
"""How long a migration waits for a table another transaction holds (the night's close, a
recount, a long report) before it gives up. Waiting, it queued every later read and write of
that table behind it: a deploy during the night's close held every booking's insert past its
statement limit."""


class MigrationWaited(RuntimeError):
    """A migration gave up waiting for a table in use; nothing was changed."""


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several app instances may start at once: one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_xact_lock(727370)"))
        # After the advisory lock: that one is waited for as long as the other's migration takes.
        connection.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_SECONDS}s'"))
    try:
        command.upgrade(alembic_config(connection), "head")
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise MigrationWaited(
            f"a migration waited over {MIGRATION_LOCK_SECONDS} s for a table another transaction holds "
            "(the night's close, a recount, a long query) and changed nothing: start the instance again "
            "in a minute (the instances still serving go on meanwhile)"
        ) from error


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the schema up to date with the migrations (both SQLite and PostgreSQL)."""
    import_models()
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    # On connections of its own, with no time limit on a statement: a migration may rewrite
    # a large table, and the web engine's limit (STATEMENT_SECONDS) would fail it half-way.
    url = engine.url.render_as_string(hide_password=False)
    migrating = create_engine(url, pool_size=1, pre_ping=False, statement_seconds=None)
    try:
        async with migrating.begin() as conn:
            await conn.run_sync(_upgrade)
    finally:
        await migrating.dispose()


__all__ = ["Base", "Engine", "create_engine", "create_schema", "session_factory", "session_scope"]
