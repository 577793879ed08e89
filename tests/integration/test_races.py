"""Capacity paths raced against each other through a served instance (real sockets, requests
in flight together), each ending with the load test's check of the whole record against
Redis: every slot's bookings in the record == its seats used in Redis <= its seats, every
citizen in line in the record in Redis's line, no national ID over its limits
(loadtests.check). The paths raced one at a time elsewhere (a booking against bookings, a
cancel against bookings and a line) are in test_booking.py and test_waitlist.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from sqlalchemy import func, select

from app.booking.models import SEAT_STATUSES, Booking, BookingStatus
from app.capacity import keys
from app.capacity.plan import DayRule
from app.capacity.watch import rebuild_paused
from app.offices.models import Office
from app.settings import Settings
from loadtests.check import check_service
from tests.conftest import Served, World, booking_body
from tests.integration.test_complaints import regulator
from tests.integration.test_console import staff_of

Client = AsyncTestClient[Litestar]


async def consistent(settings: Settings) -> None:
    """The load test's check over the whole horizon, all of it clean."""
    result = await asyncio.to_thread(check_service, settings)
    assert result.ok, result.examples


async def statuses(world: World, codes: list[str]) -> dict[str, BookingStatus]:
    async with world.container.sessions() as session:
        rows = await session.execute(
            select(Booking.tracking_code, Booking.status).where(Booking.tracking_code.in_(codes))
        )
        return {code: status for code, status in rows}


def used(redis: SyncRedis, office: str, day: dt.date, time: str) -> int:
    value = redis.hget(keys.office_day(office, day), keys.used_field("*", time))
    assert value is not None, "the day's counters are not in Redis"
    return int(value)


async def book(client: Client | Served, world: World, office: str, day: dt.date, slot: str | None) -> Any:
    return await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
    )


async def test_one_booking_cancelled_twice_at_once_gives_its_seat_back_once(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """Two taps of «لغو», or the page and the SMS: one cancels, the other is told it is no
    longer active. The slot's other holder keeps their seat: a second release had freed it."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    owners = [world.token(f"0912300000{n}") for n in range(10)]
    codes = []
    for n, owner in enumerate(owners):
        slot = f"{10 + n // 2}:00"  # two holders in each slot
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=owner
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    cancels = [(code, owner) for n, (code, owner) in enumerate(zip(codes, owners, strict=True)) if n % 2 == 0]
    answers = await asyncio.gather(
        *(served.post(f"/api/v1/bookings/{code}/cancel", headers=owner) for code, owner in cancels for _ in range(2))
    )
    for first, second in zip(answers[::2], answers[1::2], strict=True):
        assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
        refused = first if first.status_code == 409 else second
        assert refused.json()["code"] == "booking_not_active"
    assert [used(redis_sync, office, day, f"{10 + n}:00") for n in range(5)] == [1] * 5
    state = await statuses(world, codes)
    assert [state[code] for code in codes] == [BookingStatus.CANCELLED, BookingStatus.BOOKED] * 5
    await consistent(settings)


async def test_a_check_in_and_a_cancel_at_once_end_one_way(
    client: Client, served: Served, world: World, morning: dt.datetime, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The clerk checks a citizen in as the citizen cancels from the doorway: either they are
    in the room (the cancel refused: a seat freed now would be sold to someone else) or the
    seat is free again; never both, never neither."""
    office = await world.office(seats=12)
    clerk = await staff_of(client, world, office)
    today = morning.date()
    owners = [world.token(f"091231000{n:02d}") for n in range(12)]
    codes = []
    for owner in owners:
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "10:00"), headers=owner
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    base = f"/api/v1/staff/offices/{office}/queue"
    answers = await asyncio.gather(
        *(
            request
            for code, owner in zip(codes, owners, strict=True)
            for request in (
                served.post(f"{base}/{code}/check-in", headers=clerk),
                served.post(f"/api/v1/bookings/{code}/cancel", headers=owner),
            )
        )
    )
    state = await statuses(world, codes)
    for code, check_in, cancel in zip(codes, answers[::2], answers[1::2], strict=True):
        if state[code] == BookingStatus.CHECKED_IN:
            assert check_in.status_code == 200, check_in.text
            assert cancel.status_code == 409 and cancel.json()["code"] in ("booking_checked_in", "booking_not_active")
        else:
            assert state[code] == BookingStatus.CANCELLED
            assert cancel.status_code == 200, cancel.text
            assert check_in.status_code == 409, check_in.text
    checked_in = sum(1 for status in state.values() if status == BookingStatus.CHECKED_IN)
    assert used(redis_sync, office, today, "10:00") == checked_in
    await consistent(settings)


async def test_walk_ins_and_web_bookings_for_the_last_seats_sell_each_once(
    client: Client, served: Served, world: World, morning: dt.datetime, redis_sync: SyncRedis, settings: Settings
) -> None:
    """A clerk takes walk-ins at the counter while the web books the same morning: three seats,
    forty asking at once, three sold."""
    office = await world.office(rules=[DayRule(opens="09:00", closes="09:30", slot_minutes=30, seats=3)])
    # Not in the served instance's directory (made after it started), as an office new since
    # its load is: each of the twenty walk-ins asks the record, on its own session (a second
    # connection each had starved them all until the pool's 30 s: 503s).
    clerk = await staff_of(client, world, office)
    today = morning.date()

    async def walk_in() -> Any:
        body = {"national_id": world.national_id(), "service_code": "101"}
        return await served.post(f"/api/v1/staff/offices/{office}/walk-ins", json=body, headers=clerk)

    answers = await asyncio.gather(
        *(request for _ in range(20) for request in (walk_in(), book(served, world, office, today, "09:00")))
    )
    done = [answer for answer in answers if answer.status_code == 201]
    assert len(done) == 3, sorted({answer.status_code for answer in answers})
    assert {answer.status_code for answer in answers} == {201, 409}, [a.text for a in answers if a.status_code >= 500]
    assert used(redis_sync, office, today, "09:00") == 3
    state = await statuses(world, [answer.json()["tracking_code"] for answer in done])
    assert set(state.values()) == {BookingStatus.BOOKED}
    await consistent(settings)


async def test_thirty_join_a_line_at_once_each_in_their_own_place(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """A full slot, thirty joining its line at once: thirty places, one each, in Redis's line
    as in the record; the seat a holder gives back goes to the first of them."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    owner = world.token("09123200000")
    held = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    assert held.status_code == 201

    async def join() -> Any:
        body = booking_body(office, world.national_id(), day, None)
        return await served.post("/api/v1/waitlist", json=body, headers=world.token())

    joined = await asyncio.gather(*(join() for _ in range(30)))
    assert [answer.status_code for answer in joined] == [201] * 30, {a.text for a in joined if a.status_code != 201}
    places = sorted(answer.json()["waitlist_position"] for answer in joined)
    assert places == list(range(1, 31))
    by_place = {answer.json()["waitlist_position"]: answer.json()["tracking_code"] for answer in joined}
    line = [code.decode() for code in redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1)]
    assert line == [by_place[place] for place in places]
    await consistent(settings)
    cancel = await client.post(f"/api/v1/bookings/{held.json()['tracking_code']}/cancel", headers=owner)
    assert cancel.status_code == 200
    state = await statuses(world, line)
    assert state[line[0]] == BookingStatus.BOOKED
    assert [state[code] for code in line[1:]] == [BookingStatus.WAITLISTED] * 29
    await consistent(settings)


async def test_a_clerks_cut_while_citizens_book_the_slot_leaves_no_slot_over(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The clerk cuts a day's seats from six to two as thirty citizens book it: whoever the cut
    leaves over is moved to another slot of the day (or told), and no slot ends with more
    bookings than seats, in Redis or the record."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=6)])
    clerk = await staff_of(client, world, office)
    day = world.tomorrow()
    for _ in range(4):
        assert (await book(client, world, office, day, "10:00")).status_code == 201
    cut = {"rules": [{"opens": "10:00", "closes": "12:00", "slot_minutes": 30, "seats": 2}]}
    override = f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}?move_overflow=true"
    answers = await asyncio.gather(
        *(book(served, world, office, day, "10:00") for _ in range(15)),
        served.put(override, json=cut, headers=clerk),
        *(book(served, world, office, day, "10:00") for _ in range(15)),
    )
    assert answers[15].status_code == 200, answers[15].text
    assert {answer.status_code for answer in answers} <= {200, 201, 409}, [a.text for a in answers]
    assert used(redis_sync, office, day, "10:00") <= 2
    await consistent(settings)


async def test_a_crowd_cap_made_while_citizens_book_counts_every_booking(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The regulator caps the province at a quarter of its seats as forty citizens book its
    offices: each booking is sold whole or refused, counted in Redis as in the record; once
    the cap is in force, a day at or over its share sells no more. Each office has 32 seats
    for its 20 requests, so a cap lost on the way (all 20 sold, the day not full) fails."""
    rules = [DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=8)]
    offices = [await world.office(rules=rules), await world.office(rules=rules)]
    day = world.tomorrow()
    cap = {
        "province_code": "01",
        "starts_on": day.isoformat(),
        "ends_on": day.isoformat(),
        "percent": 25,
        "reason": "ازدحام",
    }
    staff = await regulator(client, world)
    answers = await asyncio.gather(
        *(book(served, world, offices[n % 2], day, None) for n in range(20)),
        served.post("/api/v1/regulator/crowd-caps", json=cap, headers=staff),
        *(book(served, world, offices[n % 2], day, None) for n in range(20)),
    )
    assert answers[20].status_code == 201, answers[20].text
    assert {answer.status_code for answer in answers} <= {201, 409}, [a.text for a in answers if a.status_code > 409]
    await consistent(settings)
    for office in offices:  # a quarter of 32 seats: 8
        assert redis_sync.hget(keys.office_day(office, day), "_cap") == b"25"
        booked = seats_used(redis_sync, office, day)
        assert 8 <= booked <= 20, booked  # the cap's share at least, the requests at most
        later = await book(client, world, office, day, None)
        assert (later.status_code, later.json()["code"]) == (409, "day_full"), later.text


async def test_a_closure_made_while_citizens_book_the_day_leaves_nobody_booked_there(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The regulator closes the province for a day as citizens book it: each booking that got
    in before the closure is moved to the open office nearby or cancelled and told, and none
    is left booked at a closed office (a booking that slipped in after the moves were read
    would be)."""
    closing = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=4)])
    day = world.tomorrow()
    closure = {"date": day.isoformat(), "province_code": "01", "reason": "تعطیلی"}
    staff = await regulator(client, world)
    # Three booked before, so that the closure surely has bookings to move, whoever wins the race.
    before = [await book(client, world, closing, day, None) for _ in range(3)]
    answers = await asyncio.gather(
        *(book(served, world, closing, day, None) for _ in range(10)),
        served.post("/api/v1/regulator/closures", json=closure, headers=staff),
        *(book(served, world, closing, day, None) for _ in range(10)),
    )
    assert answers[10].status_code == 201, answers[10].text
    assert answers[10].json()["moves_pending"] is False
    assert {answer.status_code for answer in answers} <= {201, 409}, [a.text for a in answers if a.status_code > 409]
    codes = [
        answer.json()["tracking_code"]
        for answer in [*before, *answers]
        if answer.status_code == 201 and "tracking_code" in answer.json()
    ]
    assert len(codes) >= 3
    state = await statuses(world, codes)
    assert set(state) == set(codes)
    assert BookingStatus.BOOKED not in set(state.values()), state
    await consistent(settings)


SLOTS = ("10:00", "10:30", "11:00", "11:30")


def seats_used(redis: SyncRedis, office: str, day: dt.date) -> int:
    """The day's seats Redis counts used, every slot's."""
    fields = redis.hgetall(keys.office_day(office, day))
    return sum(int(value) for name, value in fields.items() if name.startswith(b"u|"))


async def seated_at(world: World, office: str) -> int:
    """Bookings holding a seat at the office, in the record."""
    async with world.container.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Booking)
            .join(Office, Office.id == Booking.office_id)
            .where(Office.code == office, Booking.status.in_(SEAT_STATUSES))
        )
        return int(count or 0)


async def test_a_weekly_plan_cut_while_citizens_book_leaves_no_slot_over(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The clerk cuts every weekday from four seats a slot to one (the whole horizon replanned,
    day by day) as citizens book three of its days: whoever the cut leaves over is moved or
    told, and no slot of any day ends over its one seat."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=4)])
    clerk = await staff_of(client, world, office)
    days = [world.tomorrow() + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        for _ in range(3):
            assert (await book(client, world, office, day, "10:00")).status_code == 201
    one = [{"opens": "10:00", "closes": "12:00", "slot_minutes": 30, "seats": 1}]
    cut = served.put(
        f"/api/v1/staff/offices/{office}/template?move_overflow=true",
        json={"days": {str(weekday): one for weekday in range(7)}},
        headers=clerk,
    )
    answers = await asyncio.gather(
        *(book(served, world, office, days[n % 3], None) for n in range(15)),
        cut,
        *(book(served, world, office, days[n % 3], None) for n in range(15)),
    )
    assert answers[15].status_code == 200, answers[15].text
    assert {answer.status_code for answer in answers} <= {200, 201, 409}, [a.text for a in answers]
    for day in days:
        assert max(used(redis_sync, office, day, time) for time in SLOTS) <= 1
        assert sum(used(redis_sync, office, day, time) for time in SLOTS) == 4  # 3 before, at least 1 more
    await consistent(settings)


async def test_a_day_plan_cleared_while_citizens_book_leaves_no_slot_over(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """A day planned with four seats a slot goes back to the weekly plan's one as citizens book
    it: those the template has no seat for are moved or told, and no slot ends over its seat."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=1)])
    clerk = await staff_of(client, world, office)
    day = world.tomorrow()
    override = f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}"
    four = {"rules": [{"opens": "10:00", "closes": "12:00", "slot_minutes": 30, "seats": 4}], "reason": "دو باجه"}
    assert (await client.put(override, json=four, headers=clerk)).status_code == 200
    for _ in range(6):
        assert (await book(client, world, office, day, None)).status_code == 201
    answers = await asyncio.gather(
        *(book(served, world, office, day, None) for _ in range(10)),
        served.delete(f"{override}?move_overflow=true", headers=clerk),
        *(book(served, world, office, day, None) for _ in range(10)),
    )
    assert answers[10].status_code == 200, answers[10].text
    assert {answer.status_code for answer in answers} <= {200, 201, 409}, [a.text for a in answers]
    assert [used(redis_sync, office, day, time) for time in SLOTS] == [1] * 4
    assert redis_sync.hget(keys.office_day(office, day), keys.seats_field("*", "10:00")) == b"1"
    await consistent(settings)


async def test_a_crowd_cap_lifted_while_citizens_book_gives_its_seats_to_the_line_first(
    client: Client, served: Served, world: World, settings: Settings
) -> None:
    """The province's cap is lifted as citizens book a day the cap had filled, with four in its
    line: the seats it frees are the line's first, whoever books at that moment."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=4)])
    day = world.tomorrow()
    staff = await regulator(client, world)
    cap = {"province_code": "01", "starts_on": day.isoformat(), "ends_on": day.isoformat(), "percent": 25}
    made = await client.post("/api/v1/regulator/crowd-caps", json={**cap, "reason": "ازدحام"}, headers=staff)
    assert made.status_code == 201, made.text
    for _ in range(2):  # a quarter of 8 seats
        assert (await book(client, world, office, day, None)).status_code == 201
    line = []
    for _ in range(4):
        body = booking_body(office, world.national_id(), day, None)
        joined = await client.post("/api/v1/waitlist", json=body, headers=world.token())
        assert joined.status_code == 201, joined.text
        line.append(joined.json()["tracking_code"])
    answers = await asyncio.gather(
        *(book(served, world, office, day, None) for _ in range(6)),
        served.post(f"/api/v1/regulator/crowd-caps/{made.json()['id']}/lift", headers=staff),
        *(book(served, world, office, day, None) for _ in range(6)),
    )
    assert answers[6].status_code == 200, answers[6].text
    assert {answer.status_code for answer in answers} <= {200, 201, 409}, [a.text for a in answers]
    async with world.container.sessions() as session:  # the minute's job, for a fill the lift left to it
        await world.container.bookings.fill_waitlists(session=session)
    state = await statuses(world, line)
    assert [state[code] for code in line] == [BookingStatus.BOOKED] * 4
    assert await seated_at(world, office) <= 8
    await consistent(settings)


async def test_an_office_blocked_while_citizens_book_it_keeps_nobody_booked_there(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The regulator blocks an office as citizens book it: every booking that got in, before
    or during the block's moves, is moved to another office or cancelled and told (by the
    block, or by the minute's job for one still on its way to the record)."""
    rules = [DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=4)]
    blocked = await world.office(rules=rules)
    await world.office(rules=rules)  # somewhere to move them to
    day = world.tomorrow()
    staff = await regulator(client, world)
    for _ in range(3):
        assert (await book(client, world, blocked, day, None)).status_code == 201
    answers = await asyncio.gather(
        *(book(served, world, blocked, day, None) for _ in range(10)),
        served.post(f"/api/v1/regulator/offices/{blocked}/block", json={"reason": "تخلف"}, headers=staff),
        *(book(served, world, blocked, day, None) for _ in range(10)),
    )
    assert answers[10].status_code == 201, answers[10].text
    assert {answer.status_code for answer in answers} <= {201, 403, 409}, [a.text for a in answers]
    # A booking on its way to the record as the block read it is the minute's job's (README).
    async with world.container.sessions() as session:
        await world.container.enforcement.finish_blocks(session=session)
    assert await seated_at(world, blocked) == 0
    assert seats_used(redis_sync, blocked, day) == 0
    assert (await book(client, world, blocked, day, None)).json()["code"] == "office_blocked"
    told = answers[10].json()
    assert told["bookings_moved"] + told["bookings_cancelled"] >= 3  # those booked before, at least
    await consistent(settings)


async def test_an_office_restricted_then_lifted_while_citizens_book_it_counts_every_booking(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """Restricted to a quarter of its seats as citizens book, then lifted as they book again:
    each booking sold whole or refused, the day at its share refusing until the lift, and
    open after it. 32 seats for the requests, so a restriction lost on the way (all sold,
    the day not full) fails."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=8)])
    day = world.tomorrow()
    staff = await regulator(client, world)
    restrict = {"reason": "ازدحام", "cap_percent": 25}
    answers = await asyncio.gather(
        *(book(served, world, office, day, None) for _ in range(8)),
        served.post(f"/api/v1/regulator/offices/{office}/restrict", json=restrict, headers=staff),
        *(book(served, world, office, day, None) for _ in range(8)),
    )
    assert answers[8].status_code == 201, answers[8].text
    assert {answer.status_code for answer in answers} <= {201, 409}, [a.text for a in answers]
    booked = seats_used(redis_sync, office, day)
    assert 8 <= booked <= 16, booked
    refused = await book(client, world, office, day, None)
    assert (refused.status_code, refused.json()["code"]) == (409, "day_full"), refused.text
    answers = await asyncio.gather(
        *(book(served, world, office, day, None) for _ in range(4)),
        served.post(f"/api/v1/regulator/offices/{office}/lift", json={"reason": "رفع شد"}, headers=staff),
        *(book(served, world, office, day, None) for _ in range(4)),
    )
    assert answers[4].status_code == 200, answers[4].text
    assert {answer.status_code for answer in answers} <= {200, 201, 409}, [a.text for a in answers]
    assert (await book(client, world, office, day, None)).status_code == 201
    await consistent(settings)


async def test_joins_and_cancels_at_once_leave_no_seat_free_while_someone_waits(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings
) -> None:
    """Three holders cancel as six citizens join the slot's line: a seat freed goes to the
    first in line at once, and a join that meets a free seat (its holder just left, nobody in
    line) is told to book it. Never a free seat and someone waiting."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=3)])
    day = world.tomorrow()
    holders = []
    for n in range(3):
        owner = world.token(f"0912340000{n}")
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=owner
        )
        assert booked.status_code == 201, booked.text
        holders.append((booked.json()["tracking_code"], owner))

    async def join() -> Any:
        body = booking_body(office, world.national_id(), day, None)
        return await served.post("/api/v1/waitlist", json=body, headers=world.token())

    answers = await asyncio.gather(
        join(),
        join(),
        *(served.post(f"/api/v1/bookings/{code}/cancel", headers=owner) for code, owner in holders),
        join(),
        join(),
        join(),
        join(),
    )
    joins = [answer for n, answer in enumerate(answers) if n not in (2, 3, 4)]
    assert [answer.status_code for answer in answers[2:5]] == [200] * 3, [a.text for a in answers[2:5]]
    assert {answer.status_code for answer in joins} <= {201, 409}, [a.text for a in joins]
    refused = [answer.json()["code"] for answer in joins if answer.status_code == 409]
    assert set(refused) <= {"seats_available"}, refused
    waiting = redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1)
    assert used(redis_sync, office, day, "10:00") == 3 or not waiting, (waiting, used(redis_sync, office, day, "10:00"))
    joined = [answer.json()["tracking_code"] for answer in joins if answer.status_code == 201]
    state = await statuses(world, joined)
    promoted = [code for code in joined if state[code] == BookingStatus.BOOKED]
    assert len(promoted) == min(3, len(joined)) and len(joined) - len(promoted) == len(waiting)
    await consistent(settings)


async def test_a_recount_during_a_rush_loses_no_booking_and_sells_no_seat_twice(
    client: Client, served: Served, world: World, settings: Settings
) -> None:
    """Redis is counted again from the record (`python -m app rebuild`) while citizens go on
    booking, cancelling and joining lines, before, during and after it: bookings pause (503)
    and resume; each booking confirmed is in the record, each slot within its seats, each
    line as the record has it."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=6)])
    day = world.tomorrow()
    held = []
    for _ in range(6):
        owner = world.token()
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=owner
        )
        assert booked.status_code == 201, booked.text
        held.append((booked.json()["tracking_code"], owner))
    container = served.app.state.container
    over = asyncio.Event()
    answers: list[Any] = []

    async def recount() -> int:
        await asyncio.sleep(0.2)
        try:
            # Settled as in production (seconds): a commit queued behind SQLite's one writer
            # longer than a shorter pause was counted out of the recount.
            return await rebuild_paused(container.capacity, container.sessions, today=container.clock.today(), wait=2.0)
        finally:
            over.set()

    async def join() -> Any:
        body = booking_body(office, world.national_id(), day, None)
        return await served.post("/api/v1/waitlist", json=body, headers=world.token())

    async def rush() -> None:
        cancels = [served.post(f"/api/v1/bookings/{code}/cancel", headers=owner) for code, owner in held[:3]]
        while True:
            answers.extend(await asyncio.gather(*(book(served, world, office, day, None) for _ in range(3)), join()))
            if cancels:
                answers.append(await cancels.pop())
            if over.is_set():
                return
            await asyncio.sleep(0.05)

    written, _ = await asyncio.gather(recount(), rush())
    assert written > 0
    assert {answer.status_code for answer in answers} <= {200, 201, 409, 503}, [a.text for a in answers]
    assert 503 in {answer.status_code for answer in answers}  # the rush met the pause
    confirmed = [a.json()["tracking_code"] for a in answers if a.status_code == 201]
    state = await statuses(world, confirmed)
    assert set(state) == set(confirmed)
    assert set(state.values()) <= {BookingStatus.BOOKED, BookingStatus.WAITLISTED}
    await consistent(settings)


async def test_a_booking_served_early_twice_while_citizens_book_its_slot_sells_the_seat_once(
    client: Client, served: Served, world: World, morning: dt.datetime, redis_sync: SyncRedis, settings: Settings
) -> None:
    """The clerk taps «served» twice for a citizen booked at 15:00, checked in and served at 07:00, as
    citizens try for the 15:00 seat: it is given back once and sold at most once."""
    office = await world.office(seats=1)
    clerk = await staff_of(client, world, office)
    today = morning.date()
    owner = await book(client, world, office, today, "15:00")
    assert owner.status_code == 201, owner.text
    code = owner.json()["tracking_code"]
    base = f"/api/v1/staff/offices/{office}/queue"
    assert (await client.post(f"{base}/{code}/check-in", headers=clerk)).status_code == 200  # in the room
    answers = await asyncio.gather(
        served.post(f"{base}/{code}/served", headers=clerk),
        *(book(served, world, office, today, "15:00") for _ in range(6)),
        served.post(f"{base}/{code}/served", headers=clerk),
    )
    serves, bookings = [answers[0], answers[-1]], answers[1:-1]
    assert any(s.status_code == 200 for s in serves), [s.text for s in serves]
    assert all(s.status_code in (200, 409) for s in serves), [s.text for s in serves]
    sold = [b for b in bookings if b.status_code == 201]
    assert len(sold) <= 1 and all(b.status_code in (201, 409) for b in bookings), [b.text for b in bookings]
    assert used(redis_sync, office, today, "15:00") == len(sold)
    if not sold:  # every try came before the seat was back: it is on sale now
        assert (await book(client, world, office, today, "15:00")).status_code == 201
    await consistent(settings)
