"""The load test's own parts that read the service's Redis, against a real one: a change to
the day hashes must not quietly turn a run's bookings into refusals (it did once: a closed
day taken for an open one, and the bare reference answering 500)."""

from __future__ import annotations

import datetime as dt

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from loadtests.bare_reserve import bench_day_fields, bench_day_key, create_app, day_slots
from loadtests.workloads import open_office_days
from tests.conftest import World
from tests.integration.test_console import staff_of

Client = AsyncTestClient[Litestar]


async def test_open_office_days_leaves_out_a_closed_day(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office()
    await world.rebuild()
    open_day = world.tomorrow()
    closed_day = open_day + dt.timedelta(days=1)
    closed = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{closed_day.isoformat()}",
        json={"rules": [], "reason": "تعمیرات"},
        headers=await staff_of(client, world, office),
    )
    assert closed.status_code == 200, closed.text
    assert open_office_days(redis_sync, [(office, open_day), (office, closed_day)]) == [(office, open_day)]


async def test_the_bare_reserve_endpoint_takes_a_seat(redis_url: str, redis_sync: SyncRedis) -> None:
    day = "2030-01-05"
    key = bench_day_key("990001", day)
    redis_sync.hset(key, mapping=bench_day_fields(day_slots()))
    try:
        async with AsyncTestClient(create_app(redis_url)) as bare:
            taken = await bare.post("/reserve", json={"office_code": "990001", "date": day})
            assert taken.status_code == 201, taken.text
            assert taken.json()["slot"] == "08:00"
    finally:
        redis_sync.delete(key)
