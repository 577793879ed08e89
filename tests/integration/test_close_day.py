"""The nightly close (app.booking.tasks.close_day): the no-shows it marks suspend the national
IDs that reach the limit, in the record and in Redis, however the run ends."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.booking.models import Booking, BookingStatus, Suspension
from app.booking.tasks import close_day
from app.capacity.models import Closure
from app.capacity.service import Capacity
from app.clock import Clock
from app.enforcement.models import ActionKind, OfficeAction
from tests.conftest import Deliver, World, booking_body

Client = AsyncTestClient[Litestar]


async def past_bookings(world: World, *rows: tuple[str, int, BookingStatus]) -> None:
    """Bookings of ``days`` ago, in the record only: (national ID, days ago, status)."""
    today = world.container.clock.today()
    async with world.container.sessions() as session:
        for number, (national_id, days_ago, status) in enumerate(rows):
            session.add(
                Booking(
                    tracking_code=f"PAST{number:06d}", office_id=1, service_code="101", national_id=national_id,
                    mobile="09120000000", date=today - dt.timedelta(days=days_ago), slot_time="10:00", pool="*",
                    status=status,
                )
            )  # fmt: skip
        await session.commit()


async def books(client: Client, world: World, office: str, national_id: str, *, days_ahead: int = 2) -> int:
    day = world.container.clock.today() + dt.timedelta(days=days_ahead)
    answer = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token())
    return answer.status_code


async def test_the_night_suspends_those_who_reach_the_limit_of_no_shows(
    client: Client, world: World, deliver: Deliver
) -> None:
    office = await world.office()
    await world.rebuild()
    third, second, already = world.national_id(), world.national_id(), world.national_id()
    today = world.container.clock.today()
    await past_bookings(
        world,
        (third, 10, BookingStatus.NO_SHOW), (third, 5, BookingStatus.NO_SHOW), (third, 1, BookingStatus.BOOKED),
        (second, 40, BookingStatus.NO_SHOW), (second, 1, BookingStatus.BOOKED),  # one past the window
        *((already, days_ago, BookingStatus.NO_SHOW) for days_ago in (6, 5, 4)), (already, 1, BookingStatus.BOOKED),
    )  # fmt: skip
    async with world.container.sessions() as session:
        session.add(Suspension(national_id=already, until=today + dt.timedelta(days=3), reason="3 no-shows"))
        await session.commit()

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["suspended"]) == (3, 1)
    async with world.container.sessions() as session:
        suspended = (await session.execute(select(Suspension.national_id, Suspension.until))).all()
    assert sorted(suspended) == sorted([(third, today + dt.timedelta(days=7)), (already, today + dt.timedelta(days=3))])
    assert await books(client, world, office, third) == 403  # told to Redis, where booking refuses it
    assert await books(client, world, office, second) == 201
    again = await asyncio.to_thread(close_day)
    assert (again["no_shows"], again["suspended"]) == (0, 0)


async def test_the_nights_window_is_the_clerks_thirty_days_and_a_moved_booking_is_not_counted(
    client: Client, world: World, deliver: Deliver
) -> None:
    """The night runs after midnight: its window, counted from its own day, held 29 days where
    a clerk's mark of the same no-show counts 30. And a booking a block or a closure moved to
    another office, missed, had counted as the citizen's own no-show."""
    await world.office()
    await world.rebuild()
    edge, moved = world.national_id(), world.national_id()
    await past_bookings(
        world,
        (edge, 30, BookingStatus.NO_SHOW), (edge, 15, BookingStatus.NO_SHOW), (edge, 1, BookingStatus.BOOKED),
        (moved, 10, BookingStatus.NO_SHOW), (moved, 5, BookingStatus.NO_SHOW), (moved, 1, BookingStatus.BOOKED),
    )  # fmt: skip
    async with world.container.sessions() as session:
        yesterday = world.container.clock.today() - dt.timedelta(days=1)
        made = await session.scalar(select(Booking).where(Booking.national_id == moved, Booking.date == yesterday))
        assert made is not None
        made.moved_from_office_id = made.office_id + 1000  # from an office that was blocked
        await session.commit()

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["suspended"]) == (2, 1)
    async with world.container.sessions() as session:
        assert list(await session.scalars(select(Suspension.national_id))) == [edge]


async def test_the_no_shows_a_suspension_was_made_for_do_not_count_again(
    client: Client, world: World, deliver: Deliver
) -> None:
    """Three no-shows suspended a citizen for a week; the week is over. One more no-show had
    made three in 30 days again, and each further one another week: the README's rule is
    three, and the first three were settled by the suspension they made."""
    office = await world.office()
    await world.rebuild()
    once, again = world.national_id(), world.national_id()
    today = world.container.clock.today()
    await past_bookings(
        world,
        *((once, days_ago, BookingStatus.NO_SHOW) for days_ago in (14, 13, 12)), (once, 1, BookingStatus.BOOKED),
        *((again, days_ago, BookingStatus.NO_SHOW) for days_ago in (14, 13, 12, 3, 2)), (again, 1, BookingStatus.BOOKED),
    )  # fmt: skip
    # A week's, made by the night after the third, ended four days ago.
    made = dt.datetime.combine(today - dt.timedelta(days=11), dt.time(0, 5), world.container.clock.tz)
    async with world.container.sessions() as session:
        for national_id in (once, again):
            session.add(
                Suspension(national_id=national_id, until=today - dt.timedelta(days=4), reason="3", created_at=made)
            )
        await session.commit()

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["suspended"]) == (2, 1)  # three since the last: suspended
    assert await books(client, world, office, once) == 201
    assert await books(client, world, office, again) == 403


async def test_the_night_looks_back_a_month_not_to_the_services_first_day(
    world: World, deliver: Deliver, morning: dt.datetime
) -> None:
    """Each of its statements walked every past day's bookings, a cost growing with every
    booking ever made; a month of failed nights is long paged (the jobs' metric)."""
    from app.booking.tasks import CLOSE_LOOKS_BACK

    await world.office()
    month = CLOSE_LOOKS_BACK.days
    recent, old = world.national_id(), world.national_id()
    await past_bookings(world, (recent, month, BookingStatus.BOOKED), (old, month + 1, BookingStatus.BOOKED))
    result = await asyncio.to_thread(close_day)
    assert result["no_shows"] == 1
    async with world.container.sessions() as session:
        statuses = dict((await session.execute(select(Booking.national_id, Booking.status))).all())
    assert statuses == {recent: BookingStatus.NO_SHOW, old: BookingStatus.BOOKED}


async def test_a_walk_in_never_marked_served_is_served_not_a_no_show(world: World, deliver: Deliver) -> None:
    """A walk-in was at the counter when the clerk booked them; served at once and never
    marked (forty people in the room), the night made each a no-show, and three such visits
    in a month suspended the citizen from booking."""
    from app.booking.models import Channel

    await world.office()
    citizen = world.national_id()
    moved = world.national_id()  # a walk-in a block moved to another office, never gone there
    later = world.national_id()  # one a clerk's cut moved to a later slot of the same office
    await past_bookings(
        world,
        *((citizen, days_ago, BookingStatus.BOOKED) for days_ago in (3, 2, 1)),
        (moved, 1, BookingStatus.BOOKED),
        (later, 1, BookingStatus.BOOKED),
    )
    async with world.container.sessions() as session:
        for booking in await session.scalars(select(Booking)):
            booking.channel = Channel.WALK_IN
            if booking.national_id == moved:
                booking.moved_from_office_id = 2
            if booking.national_id == later:
                booking.moved_from_office_id = booking.office_id
        await session.commit()
    result = await asyncio.to_thread(close_day)
    assert (result["no_shows"], result["served"], result["suspended"]) == (1, 4, 0)


async def test_bookings_on_an_official_holiday_learned_late_are_cancelled_not_no_shows(
    world: World, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holiday the calendar learned on the day (a release at noon) leaves the slots begun
    before it to the night (as a closure does): they were made no-shows, and their citizens,
    who found the office shut, could be suspended. An office whose own plan opened it that
    day took its citizens: its absent are no-shows; one whose clerk closed the day too (an
    empty plan) took nobody."""
    from app.capacity import service as capacity_service
    from app.capacity.models import CapacityOverride
    from app.capacity.plan import DayRule, encode_rules

    for _ in range(3):
        await world.office()
    today = world.container.clock.today()
    holiday = today - dt.timedelta(days=2)
    monkeypatch.setattr(capacity_service, "official_holidays", lambda first, last: {holiday} & {first, last, holiday})
    monkeypatch.setenv("NOBAT_OFFICIAL_HOLIDAYS", "true")
    shut, opened, closed_too, working = (world.national_id() for _ in range(4))
    await past_bookings(
        world,
        (shut, 2, BookingStatus.BOOKED),
        (opened, 2, BookingStatus.BOOKED),
        (closed_too, 2, BookingStatus.BOOKED),
        (working, 1, BookingStatus.BOOKED),
    )
    opening = encode_rules([DayRule(opens="08:00", closes="12:00", slot_minutes=30, seats=1)])
    async with world.container.sessions() as session:
        session.add(CapacityOverride(office_id=2, date=holiday, rules=opening, reason="کشیک"))
        session.add(CapacityOverride(office_id=3, date=holiday, rules=encode_rules([]), reason="تعطیل"))
        for national_id, office_id in ((opened, 2), (closed_too, 3)):
            (
                await session.scalars(select(Booking).where(Booking.national_id == national_id))
            ).one().office_id = office_id
        await session.commit()
    result = await asyncio.to_thread(close_day)
    assert (result["closed_office"], result["no_shows"]) == (2, 2), result
    async with world.container.sessions() as session:
        statuses = dict((await session.execute(select(Booking.national_id, Booking.status))).all())
    assert statuses == {
        shut: BookingStatus.CANCELLED,
        opened: BookingStatus.NO_SHOW,
        closed_too: BookingStatus.CANCELLED,
        working: BookingStatus.NO_SHOW,
    }


async def test_the_night_weighs_the_no_shows_clerks_marked_yesterday(
    client: Client, world: World, deliver: Deliver
) -> None:
    """A clerk's third no-show mark whose suspension was not made (the record or Redis away
    just after the mark): the night found no booking of its own to close, and the citizen
    went on booking. It now weighs yesterday's marks too."""
    office = await world.office()
    await world.rebuild()
    citizen = world.national_id()
    await past_bookings(world, *((citizen, days_ago, BookingStatus.NO_SHOW) for days_ago in (10, 5, 1)))
    result = await asyncio.to_thread(close_day)
    assert (result["no_shows"], result["suspended"]) == (0, 1)
    assert await books(client, world, office, citizen) == 403


async def test_a_night_that_dies_before_telling_redis_is_told_by_the_next_run(
    client: Client, world: World, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record has the suspension and the bookings marked; the next run marks nothing, and
    still puts the suspension where booking sees it, though it runs on the next day (a run
    stopped at 02:00 is followed by the next midnight's)."""
    office = await world.office()
    await world.rebuild()
    citizen = world.national_id()
    await past_bookings(
        world, *((citizen, days_ago, BookingStatus.NO_SHOW) for days_ago in (3, 2)), (citizen, 1, BookingStatus.BOOKED)
    )
    tell = Capacity.tell_suspensions

    async def dies(*args: object, **kwargs: object) -> int:
        raise RuntimeError("the worker was killed")

    monkeypatch.setattr(Capacity, "tell_suspensions", dies)
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(close_day)
    assert await books(client, world, office, citizen) == 201  # not yet told: booking does not know

    monkeypatch.setattr(Capacity, "tell_suspensions", tell)
    now = Clock.now
    monkeypatch.setattr(Clock, "now", lambda self: now(self) + dt.timedelta(days=1))
    again = await asyncio.to_thread(close_day)
    assert (again["no_shows"], again["suspended"]) == (0, 0)
    assert await books(client, world, office, citizen, days_ahead=3) == 403


async def test_a_booking_left_at_an_office_a_closure_shut_is_cancelled_not_a_no_show(
    client: Client, world: World, deliver: Deliver
) -> None:
    """A closure's moves that never ran (a recount, Redis away until midnight) left the
    booking at a shut office: a no-show there counted toward the citizen's suspension."""
    await world.office()
    await world.rebuild()
    citizen = world.national_id()
    today = world.container.clock.today()
    # Two no-shows already; the third would suspend. Then yesterday's booking, at an office shut by a closure.
    other = world.national_id()
    await past_bookings(
        world,
        (citizen, 3, BookingStatus.NO_SHOW),
        (citizen, 2, BookingStatus.NO_SHOW),
        (citizen, 1, BookingStatus.BOOKED),
        (other, 2, BookingStatus.BOOKED),  # the day before: no closure, a no-show
    )
    async with world.container.sessions() as session:
        session.add(Closure(date=today - dt.timedelta(days=1), province_id=1, reason="سیل", created_by="regulator"))
        await session.commit()

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["closed_office"], result["suspended"]) == (1, 1, 0)
    async with world.container.sessions() as session:
        shut = await session.scalar(select(Booking).where(Booking.tracking_code == "PAST000002"))
    assert shut is not None and shut.status == BookingStatus.CANCELLED and shut.cancelled_at is not None


async def test_a_booking_left_at_an_office_a_block_shut_is_cancelled_not_a_no_show(
    client: Client, world: World, deliver: Deliver
) -> None:
    """A block's moves that never ran (a recount, Redis away until midnight) left the booking
    at an office that took nobody: a no-show there counted toward the citizen's suspension.
    A day before the block began, or after it was lifted, the office was open: a no-show."""
    blocked, lifted = await world.office(), await world.office()
    clock = world.container.clock
    now, today = clock.now(), clock.today()
    citizen, other = world.national_id(), world.national_id()

    def ago(days: int) -> dt.datetime:
        return now - dt.timedelta(days=days)

    def booking(number: int, national_id: str, office_id: int, days_ago: int, status: BookingStatus) -> Booking:
        return Booking(
            tracking_code=f"BLOCK{number:05d}", office_id=office_id, service_code="101", national_id=national_id,
            mobile="09120000000", date=today - dt.timedelta(days=days_ago), slot_time="10:00", pool="*",
            status=status, created_at=ago(10),
        )  # fmt: skip

    async with world.container.sessions() as session:
        session.add_all(
            [
                booking(1, citizen, 1, 4, BookingStatus.NO_SHOW),
                booking(2, citizen, 1, 3, BookingStatus.NO_SHOW),
                booking(3, citizen, 1, 1, BookingStatus.BOOKED),  # the office blocked since two days ago
                booking(4, other, 1, 3, BookingStatus.BOOKED),  # the day before the block: a no-show
                booking(5, other, 2, 2, BookingStatus.BOOKED),  # after that office's block was lifted
            ]
        )
        for office_id, started, lifted_at in ((1, ago(2), None), (2, ago(6), ago(4))):
            session.add(
                OfficeAction(
                    office_id=office_id, kind=ActionKind.BLOCK, reason="-", source="regulator", actor="r",
                    started_at=started, lifted_at=lifted_at,
                )
            )  # fmt: skip
        await session.commit()
    assert (blocked, lifted) == ("010001", "010002")

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["closed_office"], result["suspended"]) == (2, 1, 0)
    async with world.container.sessions() as session:
        statuses = dict(
            (await session.execute(select(Booking.tracking_code, Booking.status).where(Booking.id > 0))).all()
        )
    assert statuses["BLOCK00003"] == BookingStatus.CANCELLED
    assert (statuses["BLOCK00004"], statuses["BLOCK00005"]) == (BookingStatus.NO_SHOW, BookingStatus.NO_SHOW)


async def test_a_blocks_first_day_counts_from_its_hour_and_a_weeks_blocks_all_count(
    client: Client, world: World, deliver: Deliver
) -> None:
    """A block at noon shut the office for the afternoon: a citizen who missed the morning's
    slot, while it was open, is a no-show, not cancelled. And every block of the week counts:
    one OR term each had passed SQLite's depth of 1,000 once there were that many."""
    await world.office()
    clock = world.container.clock
    today = clock.today()
    day = today - dt.timedelta(days=2)
    noon = dt.datetime.combine(day, dt.time(12, 0), tzinfo=clock.tz)
    citizens = [world.national_id() for _ in range(3)]

    def booking(number: int, national_id: str, slot: str, days_ago: int = 2) -> Booking:
        return Booking(
            tracking_code=f"HOUR{number:06d}", office_id=1, service_code="101", national_id=national_id,
            mobile="09120000000", date=today - dt.timedelta(days=days_ago), slot_time=slot, pool="*",
            status=BookingStatus.BOOKED, created_at=noon - dt.timedelta(days=5),
        )  # fmt: skip

    async with world.container.sessions() as session:
        session.add_all(
            [booking(1, citizens[0], "10:00"), booking(2, citizens[1], "12:00"), booking(3, citizens[2], "14:30")]
        )
        session.add(
            OfficeAction(
                office_id=1, kind=ActionKind.BLOCK, reason="-", source="regulator", actor="r", started_at=noon,
            )
        )  # fmt: skip
        # A busy week's other blocks, lifted since (all of this office here, for the test's sake).
        session.add_all(
            OfficeAction(
                office_id=1,
                kind=ActionKind.BLOCK,
                reason="-",
                source="regulator",
                actor="r",
                started_at=noon - dt.timedelta(days=5, minutes=n),
                lifted_at=noon - dt.timedelta(days=4, minutes=n),
            )
            for n in range(1, 1200)
        )
        await session.commit()

    result = await asyncio.to_thread(close_day)

    assert (result["no_shows"], result["closed_office"]) == (1, 2)
    async with world.container.sessions() as session:
        statuses = dict(
            (await session.execute(select(Booking.tracking_code, Booking.status).where(Booking.id > 0))).all()
        )
    assert statuses == {
        "HOUR000001": BookingStatus.NO_SHOW,  # 10:00, before the block
        "HOUR000002": BookingStatus.CANCELLED,  # its slot began as the block came
        "HOUR000003": BookingStatus.CANCELLED,
    }


async def test_a_no_show_on_the_day_the_night_suspended_counts_towards_the_next(
    world: World, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The night's close suspends for the no-shows up to yesterday; one marked that same day
    (a booking made before the suspension) was never counted after, for only the no-shows
    after the day a suspension was made counted. It counts towards the next now."""
    await world.office()
    national_id = world.national_id()
    today = world.container.clock.today()
    night = today - dt.timedelta(days=9)  # the night that suspended
    ago = {(today - night).days + n: status for n, status in ((3, "no_show"), (2, "no_show"), (1, "booked"))}
    await past_bookings(world, *((national_id, days, BookingStatus(status)) for days, status in ago.items()))
    tz = world.container.clock.tz
    for day in (night, today):
        at = dt.datetime.combine(day, dt.time(0, 10), tzinfo=tz)
        monkeypatch.setattr(Clock, "now", lambda self, at=at: at)
        await asyncio.to_thread(close_day)
        if day == night:  # that day, after the night's close: a clerk's mark, then two more
            async with world.container.sessions() as session:
                for number, days_ago in enumerate(((today - night).days, 5)):
                    session.add(
                        Booking(
                            tracking_code=f"LATER{number:05d}", office_id=1, service_code="101",
                            national_id=national_id, mobile="09120000000", date=today - dt.timedelta(days=days_ago),
                            slot_time="10:00", pool="*", status=BookingStatus.NO_SHOW,
                        )
                    )  # fmt: skip
                session.add(
                    Booking(
                        tracking_code="LATER00009", office_id=1, service_code="101", national_id=national_id,
                        mobile="09120000000", date=today - dt.timedelta(days=1), slot_time="10:00", pool="*",
                        status=BookingStatus.BOOKED,
                    )
                )  # fmt: skip
                await session.commit()
    async with world.container.sessions() as session:
        made = list(await session.scalars(select(Suspension.counted_to).order_by(Suspension.id)))
    # The night's, then today's: that day's no-show, the one 5 days ago and yesterday's.
    assert made == [night - dt.timedelta(days=1), today - dt.timedelta(days=1)], made


async def test_a_close_run_by_day_counts_todays_no_show_once(
    world: World, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The night's close run again at 11:00 (requeued by the engineer) counts a no-show a
    clerk marked this morning: the suspension it makes has counted today, and today's
    no-show does not count again towards the next."""
    await world.office()
    national_id = world.national_id()
    today = world.container.clock.today()
    await past_bookings(
        world,
        (national_id, 3, BookingStatus.NO_SHOW),
        (national_id, 1, BookingStatus.BOOKED),  # the night's to close
        (national_id, 0, BookingStatus.NO_SHOW),  # a clerk's mark this morning
    )
    at = dt.datetime.combine(today, dt.time(11, 0), tzinfo=world.container.clock.tz)
    monkeypatch.setattr(Clock, "now", lambda self: at)
    await asyncio.to_thread(close_day)
    async with world.container.sessions() as session:
        assert list(await session.scalars(select(Suspension.counted_to))) == [today]
