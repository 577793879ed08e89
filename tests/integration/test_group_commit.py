"""The group commit (app.booking.writer) on its own: what a batch writes, and what one bad row
in it fails. On PostgreSQL a batch is one statement of column arrays, on SQLite an
executemany per table: both must write the same rows."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.booking import writer
from app.booking.models import Booking, BookingStatus, Channel, NewBooking
from app.booking.writer import GroupCommit, Row
from app.db import create_engine
from app.sms.models import SmsMessage, SmsStatus
from app.sms.service import OUTBOX
from tests.conftest import World

NOW = dt.datetime(2026, 12, 5, 8, 0, 0, 123456, tzinfo=dt.UTC)


def booking_rows(
    national_id: str, *, mobile: str = "09120000001", key: str | None = None, sms: bool = True
) -> list[Row]:
    booking = NewBooking(
        tracking_code=f"T{national_id}{mobile[-1]}",
        office_id=1,
        service_code="101",
        national_id=national_id,
        mobile=mobile,
        date=dt.date(2026, 12, 6),
        slot_time="10:30",
        pool="*",
        status=BookingStatus.BOOKED,
        channel=Channel.WALK_IN if not sms else Channel.WEB,
        idempotency_key=key,
        created_at=NOW,
    )
    rows = [booking.row()]
    if sms:
        message = {
            "id": f"sms-{national_id}-{mobile[-1]}",
            "to": mobile,
            "body": "نوبت شما ثبت شد.\nکد: «۱۲»",
            "kind": "booking_confirmed",
        }
        rows.append((OUTBOX, {**message, "status": SmsStatus.QUEUED, "attempts": 0}))
    return rows


async def allowed() -> bool:
    return True


@pytest.fixture
async def group_commit(world: World) -> GroupCommit:
    await world.office()
    return GroupCommit(world.container.bookings.writer.engine, send_sms=lambda ids: None, may_commit=allowed)


async def test_a_batch_writes_every_row_as_given(
    world: World, group_commit: GroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three bookings in one batch, of both shapes (a walk-in has no message), a key and none."""
    insert, batches = writer._insert, []

    async def counted(connection: Any, rows: Any) -> None:
        batches.append(rows)
        await insert(connection, rows)

    monkeypatch.setattr(writer, "_insert", counted)
    writes = [booking_rows("0000000001", key="k-1"), booking_rows("0000000002", sms=False), booking_rows("0000000003")]
    await asyncio.gather(*(group_commit.write(None, rows) for rows in writes))
    assert len(batches) == 1

    async with world.container.sessions() as session:
        bookings = (await session.scalars(select(Booking).order_by(Booking.national_id))).all()
        messages = (await session.scalars(select(SmsMessage).order_by(SmsMessage.id))).all()
    assert [
        (b.tracking_code, b.office_id, b.service_code, b.mobile, b.date, b.slot_time, b.pool, b.status, b.channel)
        for b in bookings
    ] == [
        (f"T000000000{n}1", 1, "101", "09120000001", dt.date(2026, 12, 6), "10:30", "*", BookingStatus.BOOKED, channel)
        for n, channel in ((1, Channel.WEB), (2, Channel.WALK_IN), (3, Channel.WEB))
    ]
    assert [b.idempotency_key for b in bookings] == ["k-1", None, None]
    assert all(b.created_at.replace(tzinfo=b.created_at.tzinfo or dt.UTC) == NOW for b in bookings)
    assert all(b.cancelled_at is None and b.moved_from_office_id is None for b in bookings)
    assert [(m.id, m.to, m.body, m.status, m.attempts) for m in messages] == [
        (f"sms-000000000{n}-1", "09120000001", "نوبت شما ثبت شد.\nکد: «۱۲»", SmsStatus.QUEUED, 0) for n in (1, 3)
    ]
    assert all(m.created_at is not None for m in messages)  # the database's default


async def test_a_row_that_breaks_a_constraint_fails_only_its_own_booking(
    world: World, group_commit: GroupCommit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same citizen twice on a day, in one batch with a third booking: the batch is
    committed again one booking at a time, and only the second of the pair fails."""
    insert, inserts = writer._insert, []

    async def counted(connection: Any, rows: Any) -> None:
        inserts.append(rows)
        await insert(connection, rows)

    monkeypatch.setattr(writer, "_insert", counted)
    writes = [booking_rows("0000000001"), booking_rows("0000000001", mobile="09120000002"), booking_rows("0000000003")]
    outcomes = await asyncio.gather(*(group_commit.write(None, rows) for rows in writes), return_exceptions=True)
    assert len(inserts) == 4  # the three together, refused; then each alone

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], IntegrityError)
    async with world.container.sessions() as session:
        written = (await session.execute(select(Booking.national_id, Booking.mobile).order_by(Booking.id))).all()
        messages = (await session.scalars(select(SmsMessage.to))).all()
    assert sorted(written) == [("0000000001", "09120000001"), ("0000000003", "09120000001")]
    assert sorted(messages) == ["09120000001", "09120000001"]  # not the failed booking's


async def test_a_value_too_long_for_its_column_is_refused_not_cut(
    world: World, group_commit: GroupCommit, database_url: str
) -> None:
    """As a plain insert refuses it (the arrays are text, not the column's varchar(n), whose
    explicit cast would cut it short and make two keys one)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite does not bound a varchar's length")
    with pytest.raises(DBAPIError, match="too long"):
        await group_commit.write(None, booking_rows("0000000001", key="k" * 81))
    async with world.container.sessions() as session:
        assert (await session.scalars(select(Booking.id))).all() == []


def test_a_column_left_to_a_default_of_pythons_is_refused() -> None:
    """The batch statement applies only the database's defaults: a column whose default is
    Python's, left out, would be written NULL. (SmsMessage.status defaults to queued.)"""
    table: Table = OUTBOX
    columns: tuple[str, ...] = ("id", "to", "body", "kind", "attempts")
    with pytest.raises(ValueError, match=r"sms_messages\.status"):
        writer._batch_insert(postgresql.dialect(), ((table, columns),))


async def test_a_seat_a_recount_left_out_is_refused_alone_and_its_batch_commits(world: World) -> None:
    """One booking of a batch took its seat before a recount that has run since (its day's
    count changed): it is refused, and the others of its batch commit (refusing the whole
    batch had answered up to 500 bookings 503 for one stalled request)."""
    await world.office()
    day = ("010001", dt.date(2026, 12, 6))

    async def counts(days: set[tuple[str, dt.date]]) -> dict[tuple[str, dt.date], str]:
        return {asked: "after the recount" for asked in days}

    group_commit = GroupCommit(
        world.container.bookings.writer.engine,
        send_sms=lambda ids: None,
        may_commit=allowed,
        mark=lambda: "recounted",
        counts=counts,
    )
    stalled = writer.Counted("before", day, "before the recount")
    fresh = writer.Counted("before", day, "after the recount")  # noted before, its seat taken after
    answers = await asyncio.gather(
        group_commit.write(None, booking_rows("0000000001"), counted=stalled),
        group_commit.write(None, booking_rows("0000000002"), counted=fresh),
        group_commit.write(None, booking_rows("0000000003")),
        return_exceptions=True,
    )
    assert isinstance(answers[0], writer.CountingPaused) and answers[1:] == [None, None]
    async with world.container.sessions() as session:
        booked = set(await session.scalars(select(Booking.national_id)))
    assert booked == {"0000000002", "0000000003"}


async def test_closing_waits_for_the_batch_under_way(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown while a batch commits: its callers get its answer, and the rows land. The
    engine had been disposed of under it."""
    group_commit = GroupCommit(
        create_engine(world.container.settings.database_url), send_sms=lambda ids: None, may_commit=allowed
    )
    await world.office()
    insert, inserting, go_on = writer._insert, asyncio.Event(), asyncio.Event()

    async def slow(connection: Any, rows: Any) -> Any:
        inserting.set()
        await go_on.wait()
        return await insert(connection, rows)

    monkeypatch.setattr(writer, "_insert", slow)
    written = asyncio.create_task(group_commit.write(None, booking_rows("0000000001")))
    await asyncio.wait_for(inserting.wait(), 5)
    closing = asyncio.create_task(group_commit.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waits for the batch
    go_on.set()
    await asyncio.wait_for(asyncio.gather(written, closing), 5)
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 1


async def test_a_record_that_stops_answering_fails_the_batch_in_bounded_time(world: World) -> None:
    """A primary that vanished without a reset answers nothing: without a time limit on a
    statement, the batch, and every booking of the instance queued behind it, waited until
    the kernel gave up on the connection (a quarter of an hour). Here the record holds the
    table (as a hung server would hold the answer): the batch fails within its limit, and
    writes nothing."""
    if not world.container.settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite is a file of the instance's own: no server to stop answering")
    await world.office()
    url = world.container.settings.database_url
    group_commit = GroupCommit(create_engine(url, statement_seconds=1), send_sms=lambda ids: None, may_commit=allowed)
    holder = create_engine(url, statement_seconds=None)
    try:
        async with holder.connect() as connection:
            await connection.execute(text("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE"))
            started = asyncio.get_running_loop().time()
            # As the record away (a SQLAlchemyError, which every path that handles the record's
            # failure catches), not asyncio's TimeoutError, which each had let through.
            with pytest.raises(DBAPIError) as failed:
                await asyncio.wait_for(group_commit.write(None, booking_rows("0000000001")), 10)
            assert isinstance(failed.value.orig, TimeoutError)
            assert asyncio.get_running_loop().time() - started < 5  # tried twice, a second each
            await connection.rollback()
        async with world.container.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Booking)) == 0
    finally:
        await group_commit.close()
        await group_commit.engine.dispose()
        await holder.dispose()
