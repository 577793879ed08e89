"""A capacity cut never takes a seat from a citizen who is already in the room."""

from __future__ import annotations

import datetime as dt

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from app.capacity.service import Overflow
from tests.conftest import World, booking_body
from tests.integration.test_console import seats, staff_of, used

Client = AsyncTestClient[Litestar]


async def test_a_cut_below_the_checked_in_is_refused_even_when_moving(
    client: Client,
    world: World,
    redis_sync: SyncRedis,
    morning: dt.datetime,
) -> None:
    office = await world.office(seats=2)
    headers = await staff_of(client, world, office)
    today = morning.date()
    base = f"/api/v1/staff/offices/{office}"
    for _ in range(2):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "10:00"), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        checked = await client.post(f"{base}/queue/{booked.json()['tracking_code']}/check-in", headers=headers)
        assert checked.status_code == 200, checked.text
    rule = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 1}
    cut = await client.put(
        f"{base}/overrides/{today.isoformat()}?move_overflow=true",
        json={"rules": [rule], "reason": "یک باجه"},
        headers=headers,
    )
    assert cut.status_code == 409 and cut.json()["code"] == "capacity_below_checked_in", cut.text
    assert cut.json()["slots"][0]["slot"] == "10:00"
    assert seats(redis_sync, office, today, "10:00") == 2 and used(redis_sync, office, today, "10:00") == 2


async def test_a_slot_left_over_by_a_race_keeps_its_holders_seats(world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(seats=2)
    day = world.tomorrow()
    await world.rebuild()
    key_seats, key_used = "s|*|10:00", "u|*|10:00"
    from app.capacity import keys

    redis_sync.hset(keys.office_day(office, day), mapping={key_seats: 1, key_used: 2})
    await world.container.capacity.keep_holders(
        [Overflow(office_code=office, day=day, pool="*", time="10:00", seats=1, booked=2)]
    )
    assert seats(redis_sync, office, day, "10:00") == 2
