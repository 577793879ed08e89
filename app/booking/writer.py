"""Group commit: the inserts of concurrent bookings share one transaction.

During a rush hundreds of bookings a second each want a commit, and a commit is a round
trip and a disk flush. Here the first booking to arrive is committed at once; those that
arrive while that commit is under way are committed together right after it, and so on.
No booking waits for a timer, and none is confirmed before its own rows are committed:
each caller awaits the commit that carried its rows, and gets that commit's error if it
failed. A row that breaks a constraint (the same citizen twice on a day) must not fail the
bookings it happened to share a transaction with, so a batch that fails on a constraint is
committed again one booking at a time.

On SQLite (the embedded demo) it matters even more: there is one write lock for the whole
file, and thirty sessions each waiting for it (and sleeping in the busy handler between
tries) left the event loop idle half the time in the load test; one writer committing
batches takes the lock once per batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Select, String, Table, TextClause, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.capacity.errors import CapacityRebuilding
from app.db import commit_outcome

log = logging.getLogger(__name__)

Row = tuple[Table, dict[str, Any]]
"""A row to insert: its table and its values."""
Rows = dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]]
"""A batch's rows by table and the columns they fill."""
SendSms = Callable[[Sequence[str]], None]
"""Hands committed messages over to be sent (``Messenger.hand_over``: it must not block)."""
RECOUNT_BARRIER = 727371
"""A PostgreSQL advisory lock: each batch holds it shared until its commit ends, and a
recount takes it alone a moment before it reads the record (``wait_for_commits``)."""
LANDED_WAIT = 4.0
"""Seconds the writer waits to learn whether a batch whose commit's answer was lost landed,
while no other batch commits (``GroupCommit._landed``)."""
BARRIER_WAIT = "2s"
"""How long a recount waits for the barrier at a time. Meanwhile every new batch queues
behind it: between tries they go on (and are refused, for the recount has begun)."""
CLOSE_WAIT = 10.0
"""Seconds a shutdown waits for the batch under way (``GroupCommit.close``)."""
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that ran out
BARRIER_HOLDER_IDLE = "30s"
"""A transaction holding the barrier ends this long idle: one whose instance froze or lost the
network (waiting on Redis, say) lets the recount go on, instead of keeping it waiting until
TCP gives up, hours later."""
HOLD_OFF_RECOUNTS = (
    "SELECT set_config('idle_in_transaction_session_timeout', :idle, true), pg_advisory_xact_lock_shared(:key)"
)
"""Takes the recount barrier shared, until the transaction ends (``hold_off_recounts``)."""


class CommitOutcomeUnknown(Exception):
    """The commit was sent and its answer lost (the connection dropped, the database failed
    over), and the record could not say whether it landed: every row of the batch may be in
    the record. Its seats must stay counted, or a booking in the record would share its seat
    with the next one sold, until the record can say (``xid``: the transaction's id, None on
    SQLite; app.booking.service settles them)."""

    def __init__(self, message: str, xid: int | None) -> None:
        super().__init__(message)
        self.xid = xid


class Counted(NamedTuple):
    """Where a booking's seat was counted as it was taken."""

    mark: str | None  # the count Redis was in as far as the instance knew (``Capacity.mark``)
    day: tuple[str, dt.date]  # the seat's office and day
    day_count: str  # the day's own count, as RESERVE gave it


@dataclass
class _Write:
    rows: Sequence[Row]
    sms_ids: Sequence[str]
    counted: Counted | None  # None: not checked
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class CountingPaused(Exception):
    """Redis is being counted again from the record (app.capacity.watch), or is another
    server than the one counted (a failover): a booking committed now might be missed by the
    count, or hold a seat already sold. Rolled back."""


class _Recounted(CountingPaused):
    """Writes of a batch whose seats a recount left out (``GroupCommit._check_counts``): the
    batch is rolled back, they are refused, and the others go again."""

    def __init__(self, writes: list[_Write]) -> None:
        super().__init__(f"{len(writes)} seats taken before a recount")
        self.writes = writes


class GroupCommit:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        send_sms: SendSms,
        may_commit: Callable[[], Awaitable[bool]],
        mark: Callable[[], str | None] = lambda: None,
        counts: Callable[[set[tuple[str, dt.date]]], Awaitable[dict[tuple[str, dt.date], str]]] | None = None,
        max_batch: int = 500,
    ) -> None:
        self.engine = engine  # the writer's own connections
        self.may_commit = may_commit  # False while capacity is paused for a recount, or Redis failed over
        self.mark = mark  # the count Redis is in, as ``may_commit`` last saw it (``Capacity.mark``)
        self.counts = counts  # each day's own count now (``Capacity.counts``)
        self.max_batch = max_batch
        self._pending: list[_Write] = []
        self._draining: asyncio.Task[None] | None = None
        self.send_sms = send_sms

    async def close(self) -> None:
        """Let a batch still committing finish first (up to CLOSE_WAIT): its callers, and the
        seats they hold, wait on its answer, and the engine disposed under it would cut it."""
        if self._draining is not None and not self._draining.done():
            await asyncio.wait({self._draining}, timeout=CLOSE_WAIT)
        await self.engine.dispose()

    async def write(
        self,
        session: AsyncSession | None,
        rows: Sequence[Row],
        sms_ids: Sequence[str] = (),
        *,
        counted: Counted | None = None,
    ) -> None:
        """Commit these rows (with whatever else is being committed now); then have the SMS
        messages among them (``sms_ids``) sent. ``session``: the caller's, if it has one open.
        ``counted``: the count their seats were taken in; committed in another, they are
        refused (CountingPaused)."""
        # Give the caller's connection back first: with more bookings in flight than the pool
        # holds, requests idling in a transaction would starve the others; and on SQLite a
        # transaction that wrote would hold the lock the group commit waits for.
        if session is not None and session.in_transaction():
            await session.commit()
        write = _Write(rows, sms_ids, counted)
        self._pending.append(write)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        # shield: a caller that gives up (the client went away, a shutdown) must not cancel
        # the commit its neighbours are waiting for. Its own rows go on too, so a cancelled
        # caller must not give its seat back (app.booking.service).
        await asyncio.shield(write.done)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                await self._commit(batch)
            except _Recounted as recounted:  # nothing was committed: those refused, the rest again
                for write in recounted.writes:
                    write.done.set_exception(CountingPaused())
                refused = {id(write) for write in recounted.writes}
                self._pending[:0] = [write for write in batch if id(write) not in refused]
            except IntegrityError:  # raised by an insert: nothing was committed
                for write in batch:
                    await self._commit_alone(write)
            except BaseException as error:
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            await self._commit_once(batch)
        except DBAPIError as error:
            # The writer's connections are not checked as they leave the pool (a round trip
            # per batch, 4% of a booking's CPU in its profile). One the database dropped (a
            # restart, a failover) fails before anything of the batch is committed: the batch
            # goes again, once, on a new connection; so does one whose COMMIT was lost and did
            # not land (``_landed``). (One that may have landed is CommitOutcomeUnknown.)
            if not error.connection_invalidated:
                raise
            log.warning("the group commit's connection was gone; the batch goes again on a new one")
            await self._commit_once(batch)

    async def _commit_once(self, batch: list[_Write]) -> None:
        rows: Rows = {}
        for write in batch:
            for table, values in write.rows:
                rows.setdefault((table, tuple(values)), []).append(values)
        async with self.engine.connect() as connection:
            transaction = await connection.begin()
            try:
                xid = await _insert(connection, rows)
                # Asked after every seat of the batch was held and the recount barrier taken:
                # once any instance has paused for a recount, nothing commits.
                if not await self.may_commit():
                    raise CountingPaused()
                await self._check_counts(batch)
            except BaseException:
                await transaction.rollback()  # not committed: the callers may give their seats back
                raise
            try:
                await transaction.commit()
            except BaseException as error:
                unknown = CommitOutcomeUnknown(f"the commit's answer was lost: {type(error).__name__}", xid)
                if isinstance(error, asyncio.CancelledError):
                    for write in batch:
                        if not write.done.done():
                            write.done.set_exception(unknown)
                    raise
                # Asked once for the batch, which may be hundreds of bookings. Before, each
                # looked for its own row, and one not found (yet) kept its seat counted, for
                # nobody, until the next rebuild.
                try:
                    landed = await self._landed(xid, rows)
                except asyncio.CancelledError:
                    for write in batch:
                        if not write.done.done():
                            write.done.set_exception(unknown)
                    raise
                if landed is None:
                    raise unknown from error
                if not landed:
                    raise  # nothing of the batch is in the record: an error like any other
                log.warning("a group commit's answer was lost; the record says it landed: confirmed")
            # Handed to a thread that enqueues them, so the next commit does not wait for RQ's
            # Redis (a message whose enqueue is lost is found by the sweep: its outbox row is
            # committed).
            try:
                self.send_sms([sms_id for write in batch for sms_id in write.sms_ids])
            except Exception:
                log.exception("could not hand a commit's messages over; the sweep will send them")
            # Confirmed the moment the record says so: nothing after this (closing the
            # connection) may turn a committed booking into a failed one, whose seat its
            # caller would give back.
            for write in batch:
                if not write.done.done():
                    write.done.set_result(None)

    async def _check_counts(self, batch: list[_Write]) -> None:
        """Refuse the writes whose seat was taken before a recount that has run since (a
        request stalled longer than the recount's pause: a frozen process, a slow queue): its
        day was counted again from a record without it, and the seat sold again. Asked of
        Redis only for seats taken in a count the instance has seen end since (rare): their
        days' own counts say whether a recount rewrote them. Raises ``_Recounted``."""
        mark = self.mark()
        noted = [(write, write.counted) for write in batch if write.counted and write.counted.mark != mark]
        if not noted or self.counts is None:
            return
        now = await self.counts({counted.day for _, counted in noted})
        stale = [write for write, counted in noted if now[counted.day] != counted.day_count]
        if stale:
            raise _Recounted(stale)

    async def _landed(self, xid: int | None, rows: Rows) -> bool | None:
        """Whether the batch's transaction ``xid`` landed, asked on a connection of its own
        (``app.db.commit_outcome``, which waits a few seconds for one still finishing); None
        when the record cannot say (on SQLite, which gives no id, the batch's row is read back)."""
        written = _read_back(rows)
        if written is None:
            return None
        try:
            # Every booking of the instance waits meanwhile: a few seconds at most.
            async with asyncio.timeout(LANDED_WAIT), AsyncSession(self.engine) as session:
                return await commit_outcome(session, xid, written, wait=LANDED_WAIT - 1)
        except Exception:  # anything but an answer: the seats stay counted
            log.warning("could not ask the record whether a lost commit landed", exc_info=True)
            return None

    async def _commit_alone(self, write: _Write) -> None:
        try:
            await self._commit([write])
        except BaseException as error:
            if not write.done.done():
                write.done.set_exception(error)


async def hold_off_recounts(db: AsyncSession | AsyncConnection) -> int | None:
    """Hold the recount barrier shared until this transaction ends (PostgreSQL): a recount
    reads the record only once every transaction that holds it has ended
    (``wait_for_commits``). Taken before the transaction asks whether it may commit. (The
    group commit takes it in its batch's own statement: ``_insert``.)

    Returns the transaction's id (None on SQLite), asked in the same statement: with it,
    ``app.db.commit_outcome`` learns whether a commit that raised had landed."""
    bind = db.get_bind() if isinstance(db, AsyncSession) else db
    if bind.dialect.name != "postgresql":
        return None
    held = await db.execute(text(f"{HOLD_OFF_RECOUNTS}, txid_current()"), _barrier_params())
    return int(held.one()[-1])


async def refuse_while_recounting(session: AsyncSession, may_commit: Callable[[], Awaitable[bool]]) -> None:
    """Asked once the recount barrier is held (``hold_off_recounts``), as the group commit asks
    for bookings: a recount begun meanwhile may have read the record already, and a change
    committed now would be left out of what it writes back to Redis (a cancel's seat kept in
    the count, a join out of its line, a plan undone). Refused: rolled back, CapacityRebuilding
    (503, try again in a moment). An instance's ``ready`` is up to a second old, and another's
    recount it never sees: Redis is asked."""
    if not await may_commit():
        await session.rollback()
        raise CapacityRebuilding()


async def commit_unless_recounting(session: AsyncSession, may_commit: Callable[[], Awaitable[bool]]) -> None:
    """Commit a change Redis must agree with (a clerk's plan, a closure, its removal), unless a
    recount has begun (``refuse_while_recounting``): holding the barrier, a recount reads the
    record after this commit. Committed during one that read the record before, the change,
    applied to Redis and its note forgotten, was written back over until the next night."""
    await hold_off_recounts(session)
    await refuse_while_recounting(session, may_commit)
    await session.commit()


def _read_back(rows: Rows) -> Select[Any] | None:
    """A query for one row of the batch by a key its values give (the primary key, or a unique
    column: a booking's tracking code); None when no table's rows give one."""
    for (table, columns), table_rows in rows.items():
        key = list(table.primary_key.columns)
        if not all(column.name in columns for column in key):
            key = [column for column in table.columns if column.unique and column.name in columns][:1]
        if key:
            first = table_rows[0]
            return select(key[0]).where(*(column == first[column.name] for column in key))
    return None


def _barrier_params() -> dict[str, Any]:
    return {"idle": BARRIER_HOLDER_IDLE, "key": RECOUNT_BARRIER}


async def _insert(connection: AsyncConnection, rows: Rows) -> int | None:
    """A batch's rows, and on PostgreSQL the recount barrier (``hold_off_recounts``); the
    transaction's id (None on SQLite), for ``app.db.commit_outcome`` if its commit raises."""
    if connection.dialect.name != "postgresql":  # the embedded SQLite record: no barrier
        for (table, _), table_rows in rows.items():
            await connection.execute(table.insert(), table_rows)
        return None
    # One statement for the whole batch: each column's values as one array, and the barrier.
    # An executemany per table, and the barrier on a statement of its own, had been three
    # trips to the database between BEGIN and COMMIT, with each row's parameters handled one
    # by one: this takes 40% less of the app's CPU a batch, and 15-30% less of PostgreSQL's
    # (loadtests/bench_commit.py).
    statement, to_database = _batch_insert(connection.dialect, tuple(rows))
    parameters = _barrier_params()
    for number, ((_, columns), table_rows) in enumerate(rows.items()):
        for column in columns:
            values = [row[column] for row in table_rows]
            if convert := to_database[number].get(column):  # what SQLAlchemy does to a bound value
                values = [convert(value) for value in values]
            parameters[f"t{number}_{column}"] = values
    inserted = await connection.execute(statement, parameters)
    return int(inserted.one()[-1])


@functools.lru_cache(maxsize=16)
def _batch_insert(
    dialect: Dialect, shape: tuple[tuple[Table, tuple[str, ...]], ...]
) -> tuple[TextClause, list[dict[str, Any]]]:
    """``WITH t0 AS (INSERT INTO bookings (...) SELECT * FROM unnest(:t0_id, ...)), ... SELECT
    <the barrier>, txid_current()`` (PostgreSQL runs every insert in WITH to completion, read
    or not), and for each table the columns whose values SQLAlchemy would convert (an Enum's),
    with how."""
    quote = dialect.identifier_preparer
    inserts, to_database = [], []
    for number, (table, columns) in enumerate(shape):
        for column in table.c:
            # Only the database's own defaults apply to what the statement leaves out.
            if column.name not in columns and column.default is not None:
                raise ValueError(f"{table.name}.{column.name} has a default of Python's: give its value")
        # Text arrays for text columns: the insert's own cast to varchar(n) then refuses a value
        # too long, as a plain insert does. (An explicit cast to varchar(n) would cut it short.)
        types = {
            column: "TEXT" if isinstance(table.c[column].type, String) else table.c[column].type.compile(dialect)
            for column in columns
        }
        arrays = ", ".join(f"CAST(:t{number}_{column} AS {types[column]}[])" for column in columns)
        names = ", ".join(quote.quote(column) for column in columns)
        inserts.append(
            f"t{number} AS (INSERT INTO {quote.format_table(table)} ({names}) SELECT * FROM unnest({arrays}))"
        )
        processors = {column: table.c[column].type.bind_processor(dialect) for column in columns}
        to_database.append({column: convert for column, convert in processors.items() if convert})
    return text(f"WITH {', '.join(inserts)} {HOLD_OFF_RECOUNTS}, txid_current()"), to_database


async def wait_for_commits(session: AsyncSession) -> None:
    """Wait until every batch under way, on every instance, has committed or given up. A
    recount asks once bookings have paused and before it reads the record: a batch allowed
    before the pause is then in what it reads, however slow its commit (a settle time alone
    would miss one slower than itself). On PostgreSQL; the embedded SQLite record has one
    instance, and its writer's commits are the settle time's to wait out."""
    if session.get_bind().dialect.name != "postgresql":
        return
    while True:
        try:
            await session.execute(text(f"SET LOCAL lock_timeout = '{BARRIER_WAIT}'"))
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RECOUNT_BARRIER})
        except DBAPIError as error:
            await session.rollback()
            if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.warning("a recount waits for a commit under way")
            continue
        await session.commit()  # at once: batches queue behind the lock while it is held
        return
