"""The load test's correctness check (loadtests.check) against a real record and Redis: it
must see what it is there to see, or a run that broke a rule would pass."""

from __future__ import annotations

import asyncio
import datetime as dt

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.booking.models import Booking, BookingStatus, Channel
from loadtests import check
from tests.conftest import World, booking_body

Client = AsyncTestClient[Litestar]


async def run_check(world: World, *, per_mobile: str) -> check.CheckResult:
    settings = world.container.settings
    assert settings.redis_url
    return await asyncio.to_thread(
        check.check_once,
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        tz=settings.tz,
        horizon_days=settings.horizon_days,
        max_active=settings.max_active_bookings,
        per_mobile=per_mobile,
    )


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

    # A fourth made past the service's back (a waitlisted row: no seat, so only the
    # allowance is broken), and a walk-in, which no allowance counts.
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
                    status=BookingStatus.WAITLISTED,
                    channel=channel,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
        await session.commit()
    over = await run_check(world, per_mobile="3/3600")
    assert not over.ok and over.mobile_over_allowance == 1
    assert [e["made"] for e in over.examples if e["kind"] == "mobile_over_allowance"] == [4]
    assert (await run_check(world, per_mobile="4/3600")).ok
