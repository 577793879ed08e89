"""The load test's correctness check (loadtests.check) against a real record and Redis: it
must see what it is there to see, or a run that broke a rule would pass."""

from __future__ import annotations

import asyncio
import datetime as dt

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from app.booking.models import Booking, BookingStatus, Channel
from app.capacity import keys
from app.capacity.plan import DayRule
from loadtests import check
from tests.conftest import World, booking_body

Client = AsyncTestClient[Litestar]


async def run_check(world: World, *, per_mobile: str) -> check.CheckResult:
    return await asyncio.to_thread(check.check_service, world.container.settings, per_mobile=per_mobile)


async def test_the_check_passes_a_clean_record_and_finds_a_mobile_over_its_allowance(
    client: Client, world: World
) -> None:
    office = await world.office(seats=10)
    day = world.tomorrow()
    mobile = "09123450000"
    for _ in range(3):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token(mobile)
        )
        assert booked.status_code == 201, booked.text
    clean = await run_check(world, per_mobile="3/3600")
    assert clean.ok and clean.mobile_over_allowance == 0 and clean.seats_booked_sql == 3

    # A fourth made past the service's back (cancelled since: no seat, no place in line, so
    # only the allowance is broken), and a walk-in, which no allowance counts.
    async with world.container.sessions() as session:
        office_id = (await world.container.offices.bookable(office_code=office, service_code="101")).id
        for channel, code in ((Channel.SMS, "CHECKSMS01"), (Channel.WALK_IN, "CHECKWALK1")):
            session.add(
                Booking(
                    tracking_code=code,
                    office_id=office_id,
                    service_code="101",
                    national_id=world.national_id(),
                    mobile=mobile,
                    date=day + dt.timedelta(days=1),
                    slot_time="",
                    pool="*",
                    status=BookingStatus.CANCELLED,
                    channel=channel,
                    created_at=world.container.clock.now(),  # as the service writes it
                )
            )
        await session.commit()
    over = await run_check(world, per_mobile="3/3600")
    assert not over.ok and over.mobile_over_allowance == 1
    assert [e["made"] for e in over.examples if e["kind"] == "mobile_over_allowance"] == [4]
    assert (await run_check(world, per_mobile="4/3600")).ok


async def test_the_check_finds_a_capped_slot_over_its_seats_and_a_day_redis_lost(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """A cap bounds a day's total, never a slot's own seats: a capped day's slot over its
    seats had not been compared. And a day Redis lost, with bookings in SQL, had been
    skipped: its rebuild would count them against seats nobody compared."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    assert (await run_check(world, per_mobile="10/3600")).ok
    day_key = keys.office_day(office, day)
    redis_sync.hset(day_key, mapping={"_cap": 50, keys.seats_field("*", "10:00"): 0})  # one used, none left
    capped = await run_check(world, per_mobile="10/3600")
    assert not capped.ok and capped.overbooked and capped.used_above_seats == 1
    redis_sync.delete(day_key)
    lost = await run_check(world, per_mobile="10/3600")
    assert not lost.ok and lost.days_missing_in_redis == 1 and lost.seats_booked_sql == 1


async def test_the_check_finds_a_citizen_waitlisted_in_the_record_and_gone_from_the_line(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Left out of the line in Redis, a waitlisted citizen would never be promoted."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    for path in ("/api/v1/bookings", "/api/v1/waitlist"):
        made = await client.post(path, json=booking_body(office, world.national_id(), day, None), headers=world.token())
        assert made.status_code == 201, made.text
    in_line = await run_check(world, per_mobile="10/3600")
    assert in_line.ok and in_line.waitlisted == 1
    line = keys.waitlist(office, day, "*")
    [waiting] = redis_sync.lrange(line, 0, -1)
    redis_sync.rpush(line, waiting)  # twice in the line
    twice = await run_check(world, per_mobile="10/3600")
    assert not twice.ok and twice.line_not_waiting == 1
    redis_sync.delete(line)
    dropped = await run_check(world, per_mobile="10/3600")
    assert not dropped.ok and dropped.waitlisted_not_in_line == 1
    # And a code in a line that the record has not waiting (promoted or cancelled, left in it):
    # the next fill would give it a second seat.
    redis_sync.rpush(keys.waitlist(office, day, "*"), waiting, b"NOTWAITING")
    stale = await run_check(world, per_mobile="10/3600")
    assert not stale.ok and stale.line_not_waiting == 1 and stale.waitlisted_not_in_line == 0
