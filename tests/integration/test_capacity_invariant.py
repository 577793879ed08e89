"""Property: whatever the interleaving of reserves and releases, 0 <= used <= seats (real Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from app.capacity import keys
from app.capacity.errors import DayFull, SlotFull
from app.capacity.service import Capacity, SeatRequest, day_expiry
from app.clock import Clock

DAY = dt.date(2030, 1, 5)
OFFICE = "990001"
TIMES = ["08:00", "08:30", "09:00"]

operation = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from([*TIMES, None])),
    st.tuples(st.just("release"), st.integers(min_value=0, max_value=50)),
)


async def _fresh_day(redis: Redis, seats: int) -> Capacity:
    """The day counted into Redis afresh, each slot with ``seats`` and none used."""
    capacity = Capacity(redis, clock=Clock("UTC"), horizon_days=14)
    day_key = keys.office_day(OFFICE, DAY)
    await redis.delete(day_key)
    args: list[str | int] = ["replace", day_expiry(DAY, dt.UTC), "_status", "active", "_cap", 100]  # type: ignore[arg-type]
    for time in TIMES:
        args += [keys.seats_field("*", time), seats]
    await capacity.scripts.materialise(keys=[day_key], args=args)
    return capacity


async def _run(redis_url: str, seats: int, batches: list[list[tuple[str, object]]]) -> None:
    redis = Redis.from_url(redis_url)
    capacity = await _fresh_day(redis, seats)
    day_key = keys.office_day(OFFICE, DAY)
    held: list[str] = []
    expected = dict.fromkeys(TIMES, 0)

    async def reserve(time: str | None) -> str | None:
        try:
            got = await capacity.reserve(
                SeatRequest(office_code=OFFICE, day=DAY, pool="*", time=time, not_before=None, tracking_code="t")
            )
        except (SlotFull, DayFull):
            return None
        assert got is not None
        return got.time

    try:
        for batch in batches:
            tasks = []
            releasing = []
            for kind, value in batch:
                if kind == "reserve":
                    tasks.append(reserve(value))  # type: ignore[arg-type]
                elif held:
                    time = held.pop(int(value) % len(held))  # type: ignore[call-overload]
                    releasing.append(time)
                    tasks.append(capacity.release(office_code=OFFICE, day=DAY, pool="*", time=time))
            results = await asyncio.gather(*tasks)
            for result in results:
                if isinstance(result, str):
                    held.append(result)
                    expected[result] += 1
            for time in releasing:
                expected[time] -= 1
            state = await redis.hgetall(day_key)
            for time in TIMES:
                used = int(state.get(keys.used_field("*", time).encode(), 0))
                assert 0 <= used <= seats
                assert used == expected[time]
    finally:
        await redis.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seats=st.integers(min_value=1, max_value=4),
    batches=st.lists(st.lists(operation, min_size=1, max_size=12), min_size=1, max_size=8),
)
def test_any_interleaving_keeps_used_within_seats(
    redis_url: str, redis_sync: SyncRedis, seats: int, batches: list
) -> None:  # type: ignore[type-arg]
    asyncio.run(_run(redis_url, seats, batches))


def test_release_never_goes_below_zero(redis_url: str, redis_sync: SyncRedis) -> None:
    """Releases of a seat nobody holds (a release sent twice, a recount between) free
    nothing: below zero, each would be a seat sold that does not exist."""

    def used() -> int:
        return int(redis_sync.hget(keys.office_day(OFFICE, DAY), keys.used_field("*", "08:00")) or 0)

    async def run() -> None:
        redis = Redis.from_url(redis_url)
        try:
            capacity = await _fresh_day(redis, 1)

            async def release() -> None:
                await capacity.release(office_code=OFFICE, day=DAY, pool="*", time="08:00")

            await asyncio.gather(*(release() for _ in range(5)))
            assert used() == 0
            seat = SeatRequest(office_code=OFFICE, day=DAY, pool="*", time="08:00", not_before=None, tracking_code="t")
            assert await capacity.reserve(seat) is not None
            assert used() == 1  # the one seat, sold once: the releases made no room
            await asyncio.gather(*(release() for _ in range(3)))
            assert used() == 0
        finally:
            await redis.aclose()

    asyncio.run(run())
