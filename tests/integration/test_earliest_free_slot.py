"""Property: the earliest free slot RESERVE finds (with the slot times and the cursor it keeps
in the day hash) is the one a plain look at every slot would find, whatever came before:
bookings of named slots, releases, new plans, and time going by today (real Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from app.capacity import keys
from app.capacity.errors import DayFull, NoSuchSlot, OfficeClosed, SlotFull
from app.capacity.service import Capacity, SeatRequest, day_expiry
from app.clock import Clock

DAY = dt.date(2030, 3, 9)
OFFICE = "990002"
TIMES = ["08:00", "08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]

seat_counts = st.lists(st.integers(min_value=0, max_value=2), min_size=len(TIMES), max_size=len(TIMES))
operation = st.one_of(
    st.tuples(st.just("earliest"), st.integers(min_value=0, max_value=2)),  # minutes of the clock to move on, x 30
    st.tuples(st.just("named"), st.sampled_from(TIMES)),
    st.tuples(st.just("release"), st.integers(min_value=0, max_value=100)),
    st.tuples(st.just("replan"), seat_counts),
)


def _expected(seats: dict[str, int], used: dict[str, int], not_before: str) -> str | None:
    return next((t for t in TIMES if t >= not_before and seats[t] - used[t] > 0), None)


async def _run(redis_url: str, first_seats: list[int], today: bool, operations: list[tuple[str, object]]) -> None:
    redis = Redis.from_url(redis_url)
    capacity = Capacity(redis, clock=Clock("UTC"), horizon_days=14)
    day_key = keys.office_day(OFFICE, DAY)
    await redis.delete(day_key)
    seats = dict(zip(TIMES, first_seats, strict=True))
    used = dict.fromkeys(TIMES, 0)
    args: list[str | int] = ["replace", day_expiry(DAY, dt.UTC), "_status", "active", "_cap", 100]  # type: ignore[arg-type]
    for time in TIMES:
        args += [keys.seats_field("*", time), seats[time]]
    await capacity.scripts.materialise(keys=[day_key], args=args)
    held: list[str] = []
    clock = 0  # today: slots before TIMES[clock] have started and are not bookable

    async def reserve(time: str | None) -> str | None:
        not_before = TIMES[clock] if today and clock < len(TIMES) else ("12:00" if today else None)
        try:
            got = await capacity.reserve(
                SeatRequest(office_code=OFFICE, day=DAY, pool="*", time=time, not_before=not_before, tracking_code="t")
            )
        except (SlotFull, DayFull, NoSuchSlot, OfficeClosed):  # closed: every slot of today has started
            return None
        assert got is not None
        return got.time

    try:
        for kind, value in operations:
            not_before = (TIMES[clock] if clock < len(TIMES) else "12:00") if today else ""
            if kind == "earliest":
                if today:
                    clock += int(value)  # type: ignore[call-overload]
                    not_before = TIMES[clock] if clock < len(TIMES) else "12:00"
                want = _expected(seats, used, not_before)
                got = await reserve(None)
                assert got == want, (got, want, seats, used, not_before)
            elif kind == "named":
                time = str(value)
                want = time if time >= not_before and seats[time] - used[time] > 0 else None
                got = await reserve(time)
                assert got == want
            elif kind == "release" and held:
                got = held.pop(int(value) % len(held))  # type: ignore[call-overload]
                await capacity.release(office_code=OFFICE, day=DAY, pool="*", time=got)
                used[got] -= 1
                continue
            elif kind == "replan":
                seats = dict(zip(TIMES, value, strict=True))  # type: ignore[call-overload]
                plan: list[str | int] = ["apply", ""]  # no slot kept as begun
                for time in TIMES:
                    plan += [keys.seats_field("*", time), seats[time]]
                await capacity.scripts.replan(keys=[day_key], args=plan)
                continue
            else:
                continue
            if got is not None:
                held.append(got)
                used[got] += 1
    finally:
        await redis.aclose()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seats=seat_counts, today=st.booleans(), operations=st.lists(operation, min_size=1, max_size=40))
@example(seats=[0] * len(TIMES), today=True, operations=[("earliest", 2)] * 5)  # every slot of today started
@example(seats=[1] * len(TIMES), today=False, operations=[("earliest", 0)] * 9 + [("release", 3), ("earliest", 0)])
def test_the_earliest_free_slot_is_the_first_with_a_seat(
    redis_url: str, seats: list[int], today: bool, operations: list[tuple[str, object]]
) -> None:
    asyncio.run(_run(redis_url, seats, today, operations))


async def test_a_busy_day_finds_its_free_slot_without_reading_the_full_ones(redis_url: str) -> None:
    """The cursor's point: on a day of 288 slots filled from the morning, a booking reads a
    few fields, not every slot (counted in Redis's own command statistics)."""
    redis = Redis.from_url(redis_url)
    capacity = Capacity(redis, clock=Clock("UTC"), horizon_days=14)
    day_key = keys.office_day(OFFICE, DAY)
    times = [f"{m // 60:02d}:{m % 60:02d}" for m in range(0, 24 * 60, 5)]
    try:
        await redis.delete(day_key)
        args: list[str | int] = ["replace", day_expiry(DAY, dt.UTC), "_status", "active", "_cap", 100]  # type: ignore[arg-type]
        for time in times:
            args += [keys.seats_field("*", time), 1]
        await capacity.scripts.materialise(keys=[day_key], args=args)
        booked = []
        for _ in range(200):
            got = await capacity.reserve(
                SeatRequest(office_code=OFFICE, day=DAY, pool="*", time=None, not_before=None, tracking_code="t")
            )
            assert got is not None
            booked.append(got.time)
        assert booked == times[:200]
        await redis.config_resetstat()
        for _ in range(10):
            await capacity.reserve(
                SeatRequest(office_code=OFFICE, day=DAY, pool="*", time=None, not_before=None, tracking_code="t")
            )
        hget = (await redis.info("commandstats")).get("cmdstat_hget", {}).get("calls", 0)
        assert hget <= 10 * 9  # without the cursor: 400 and more per booking
    finally:
        await redis.delete(day_key)
        await redis.aclose()
