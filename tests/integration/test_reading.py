"""The readers' copy of the counters (app.capacity.reading), against a real Redis: how old a
read may be, that an instance sees its own changes at once and the others' within a ttl, and
how long it keeps what nobody changed."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from app.capacity import keys
from app.capacity.errors import OfficeClosed
from app.capacity.reading import PoolDay
from app.capacity.service import Capacity, SeatRequest, day_expiry
from app.clock import Clock

DAY = dt.date(2030, 2, 7)
OFFICE = "990101"


async def _fresh_day(capacity: Capacity, seats: int = 2, office: str = OFFICE) -> None:
    key = keys.office_day(office, DAY)
    await capacity.redis.delete(key)
    args: list[str | int] = ["replace", day_expiry(DAY, ZoneInfo("UTC")), "_status", "active", "_cap", 100]
    args += [keys.seats_field("*", "08:00"), seats, keys.seats_field("101", "09:00"), 1]
    await capacity.scripts.materialise(keys=[key], args=args)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _capacity(redis: Redis, ttl: float) -> Capacity:
    return Capacity(redis, clock=Clock("UTC"), horizon_days=14, read_cache_seconds=ttl)


async def _free(capacity: Capacity, office: str = OFFICE) -> int:
    view = await capacity.day_view(office_code=office, day=DAY)
    assert view is not None
    return next(s.free for s in view.slots if s.pool == "*")


async def _reserve(capacity: Capacity, tracking_code: str = "t") -> None:
    reserved = await capacity.reserve(
        SeatRequest(office_code=OFFICE, day=DAY, pool="*", time="08:00", not_before=None, tracking_code=tracking_code)
    )
    assert reserved is not None


async def test_another_instances_booking_shows_within_the_ttl(redis: Redis) -> None:
    reader, writer = _capacity(redis, 1.0), _capacity(redis, 1.0)
    await _fresh_day(writer)
    assert await _free(reader) == 2
    await _reserve(writer)
    assert await _free(reader) == 2  # the copy, at most 1 s old
    await asyncio.sleep(1.05)
    assert await _free(reader) == 1


async def test_a_day_nobody_changed_is_kept_past_the_ttl(redis: Redis) -> None:
    reader = _capacity(redis, 0.2)
    reader.reads.keep = 3.0  # the steps before the second read have 2.7 s, on a slow machine
    office = "990102"
    # A look sees the last second's changes again: those of the tests before this one too.
    await redis.delete(keys.DAYS_CHANGED)
    await _fresh_day(reader, office=office)
    assert await _free(reader, office) == 2
    # Changed behind nobat's back (as by an instance that died before telling it).
    await redis.hset(keys.office_day(office, DAY), keys.used_field("*", "08:00"), 1)
    await asyncio.sleep(0.3)
    assert await _free(reader, office) == 2  # past the ttl, but nobody said it changed: kept
    await asyncio.sleep(3.0)
    assert await _free(reader, office) == 1  # past ``keep``: read again


async def test_a_reader_forgets_everything_when_redis_clock_goes_back(redis: Redis) -> None:
    """A replica that took over may keep a clock behind the old primary's: what is told then
    scores below where the readers last looked, so they forget everything instead."""
    reader = _capacity(redis, 0.2)
    office = "990103"
    await _fresh_day(reader, office=office)
    assert await _free(reader, office) == 2
    await redis.hset(keys.office_day(office, DAY), keys.used_field("*", "08:00"), 1)
    assert reader.reads._heard_up_to is not None
    reader.reads._heard_up_to += 60_000  # as if Redis's clock were now a minute behind it
    await asyncio.sleep(0.25)
    assert await _free(reader, office) == 1


async def test_every_instance_forgets_a_recount_within_the_ttl(redis: Redis) -> None:
    reader, writer = _capacity(redis, 0.2), _capacity(redis, 0.2)
    await _fresh_day(writer)
    assert await _free(reader) == 2
    with writer.reads.changing(None):
        await _fresh_day(writer, seats=5)
    await writer.reads.told()
    await asyncio.sleep(0.25)
    assert await _free(reader) == 5


@pytest.mark.parametrize("changed_day", [DAY, None], ids=["the day", "every day of the office"])
async def test_a_read_a_change_overtook_is_not_kept(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, changed_day: dt.date | None
) -> None:
    """A read whose reply was on its way while a change to the day was made (or heard of) is
    answered, but not kept: it may show the day before the change."""
    capacity = _capacity(redis, 60)
    reads = capacity.reads
    await _fresh_day(capacity)
    await reads.sums([], DAY)  # the first look (which forgets everything) behind us
    execute = reads.auto.execute_many

    async def overtaken(commands: Sequence[tuple[Any, ...]], **options: Any) -> list[Any]:
        replies = await execute(commands, **options)
        reads.forget(OFFICE, changed_day)  # the change, made while the reply was on its way
        return replies

    monkeypatch.setattr(reads.auto, "execute_many", overtaken)
    [(_, _, until)] = (await reads.sums([OFFICE], DAY)).values()
    await reads.day(OFFICE, DAY)
    assert (OFFICE, DAY) not in reads._sums and (OFFICE, DAY) not in reads._days
    assert until == 0.0  # nor said to be
    monkeypatch.setattr(reads.auto, "execute_many", execute)
    await reads.sums([OFFICE], DAY)
    await reads.day(OFFICE, DAY)
    assert (OFFICE, DAY) in reads._sums and (OFFICE, DAY) in reads._days  # read after it: kept
    assert not reads._reading and not reads._overtaken  # nothing left of the reads in flight


async def test_a_read_asked_for_after_a_change_is_kept_while_an_older_one_is_on_its_way(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a steady stream of reads an office-day is always being read: a change must not
    keep every later read of it from being kept, only those it may have overtaken."""
    capacity = _capacity(redis, 60)
    reads = capacity.reads
    await _fresh_day(capacity)
    await reads.sums([], DAY)  # the first look behind us
    execute = reads.auto.execute_many
    held = asyncio.Event()

    async def slow_first(commands: Sequence[tuple[Any, ...]], **options: Any) -> list[Any]:
        replies = await execute(commands, **options)
        if not held.is_set():
            held.set()
            await asyncio.sleep(0.2)  # the older read's reply, slow on its way
        return replies

    monkeypatch.setattr(reads.auto, "execute_many", slow_first)
    older = asyncio.create_task(reads.sums([OFFICE], DAY))
    await held.wait()
    await _reserve(capacity)  # the change, while the older read is on its way
    await asyncio.sleep(0.01)
    newer = (await reads.sums([OFFICE], DAY))[OFFICE][0]
    assert newer is not None and (OFFICE, DAY) in reads._sums  # kept: it saw the change
    assert newer.of("*").used == 1
    stale, _, stale_until = (await older)[OFFICE]
    assert stale is not None and stale.of("*").used == 0  # answered as it was read...
    assert stale_until == 0.0  # ...not said to be kept (the newer read is)
    assert reads._sums[(OFFICE, DAY)][1].of("*").used == 1  # ...but kept over the newer one: no
    assert not reads._reading and not reads._overtaken


async def test_an_instance_sees_its_own_booking_at_once(redis: Redis) -> None:
    capacity = _capacity(redis, 60)
    await _fresh_day(capacity)
    assert await _free(capacity) == 2
    await _reserve(capacity)
    assert await _free(capacity) == 1
    await capacity.release(office_code=OFFICE, day=DAY, pool="*", time="08:00")
    assert await _free(capacity) == 2


async def test_ttl_zero_reads_redis_every_time(redis: Redis) -> None:
    reader, writer = _capacity(redis, 0), _capacity(redis, 0)
    await _fresh_day(writer)
    assert await _free(reader) == 2
    await _reserve(writer)
    assert await _free(reader) == 1


async def test_waiting_reports_and_days_are_read_together(redis: Redis) -> None:
    capacity = _capacity(redis, 60)
    try:
        await _fresh_day(capacity)
        await redis.hset(keys.WAITING_NOW, OFFICE, f"7|{dt.datetime.now(dt.UTC).isoformat()}")
        found = await capacity.reads.sums([OFFICE, "990199"], DAY)
        summed, waiting, until = found[OFFICE]
        assert summed is not None and waiting == 7
        assert until == capacity.reads._sums[(OFFICE, DAY)][0] > time.monotonic()  # kept, until then
        assert _totals(summed.of("101")) == (1, 0, ("09:00",))  # a service's own pool
        assert _totals(summed.of("*")) == (2, 0, ("08:00",))  # the shared one
        assert _totals(summed.of("102")) == (0, 0, ())  # no slot of its own that day
        assert found["990199"] == (None, 0, 0.0)  # not in Redis, so not kept: the caller materialises it
        await redis.hset(keys.WAITING_NOW, OFFICE, f"9|{dt.datetime.now(dt.UTC).isoformat()}")
        assert (await capacity.reads.sums([OFFICE], DAY))[OFFICE][1] == 7  # remembered
        capacity.reads.forget(OFFICE)
        assert (await capacity.reads.sums([OFFICE], DAY))[OFFICE][1] == 9
    finally:
        await redis.hdel(keys.WAITING_NOW, OFFICE)


async def test_another_instances_waiting_report_shows_within_the_ttl_and_an_untold_one_is_kept(
    redis: Redis,
) -> None:
    """Reports are kept as long as a day's counters (a search reads thirty offices' reports,
    and asking Redis for them every ttl had been most of a search's trips), so each is told."""
    reader, reporter = _capacity(redis, 0.2), _capacity(redis, 0.2)
    reader.reads.keep = 5.0  # longer than the test, on a slow machine
    office = "990103"
    # A look sees the last second's changes again: those of the tests before this one too.
    await redis.delete(keys.DAYS_CHANGED)
    await _fresh_day(reader, office=office)

    async def waiting() -> int:
        return (await reader.reads.sums([office], DAY))[office][1]

    try:
        await redis.hset(keys.WAITING_NOW, office, f"3|{dt.datetime.now(dt.UTC).isoformat()}")
        assert await waiting() == 3
        # Reported behind nobat's back (as by an instance that died before telling it).
        await redis.hset(keys.WAITING_NOW, office, f"5|{dt.datetime.now(dt.UTC).isoformat()}")
        await asyncio.sleep(0.3)
        assert await waiting() == 3  # past the ttl, but nobody said it changed: kept
        await redis.hset(keys.WAITING_NOW, office, f"6|{dt.datetime.now(dt.UTC).isoformat()}")
        reporter.reads.waiting_changed(office)  # as LoadService.report_waiting tells it
        await reporter.reads.told()
        assert (office, DAY) in reader.reads._sums
        await asyncio.sleep(0.25)
        assert await waiting() == 6  # heard within the ttl
        assert (office, DAY) in reader.reads._sums  # and the office's day was not forgotten with it
    finally:
        await redis.hdel(keys.WAITING_NOW, office)


async def test_a_waiting_read_a_report_overtook_is_not_kept(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    capacity = _capacity(redis, 60)
    reads = capacity.reads
    await _fresh_day(capacity)
    await reads.sums([], DAY)  # the first look behind us
    execute = reads.auto.execute_many

    async def overtaken(commands: Sequence[tuple[Any, ...]], **options: Any) -> list[Any]:
        replies = await execute(commands, **options)
        reads.waiting_changed(OFFICE)  # a report, made while the reply was on its way
        return replies

    monkeypatch.setattr(reads.auto, "execute_many", overtaken)
    [(_, _, until)] = (await reads.sums([OFFICE], DAY)).values()
    assert OFFICE not in reads._waiting and (OFFICE, DAY) in reads._sums  # the day is kept
    assert until == 0.0  # and what was read of the office together is not
    monkeypatch.setattr(reads.auto, "execute_many", execute)
    reads.forget(OFFICE, DAY)
    await reads.sums([OFFICE], DAY)
    assert OFFICE in reads._waiting  # read after it: kept
    assert not reads._reading and not reads._overtaken
    await reads.told()


async def test_a_search_sees_its_own_instances_booking_at_once(redis: Redis) -> None:
    capacity = _capacity(redis, 60)
    await _fresh_day(capacity)
    [(before, _, _)] = (await capacity.reads.sums([OFFICE], DAY)).values()
    assert before is not None and _totals(before.of("*")) == (2, 0, ("08:00",))
    await _reserve(capacity, "t1")
    await _reserve(capacity, "t2")
    [(after, _, _)] = (await capacity.reads.sums([OFFICE], DAY)).values()
    assert after is not None and _totals(after.of("*")) == (2, 2, ())  # full: no free time left


async def test_no_line_opens_on_a_day_whose_slots_have_no_seats(redis: Redis) -> None:
    """A closure keeps, at no seats, the fields of a slot someone is still booked in: the line
    of such a day had taken joiners, for the minute's job to cancel and text a minute later."""
    capacity = _capacity(redis, 0)
    office = "990105"
    key = keys.office_day(office, DAY)
    await redis.delete(key, keys.waitlist(office, DAY, "*"))
    args: list[str | int] = ["replace", day_expiry(DAY, ZoneInfo("UTC")), "_status", "active", "_cap", 100]
    args += [keys.seats_field("*", "08:00"), 0, keys.used_field("*", "08:00"), 1]
    await capacity.scripts.materialise(keys=[key], args=args)
    with pytest.raises(OfficeClosed):
        await capacity.join_waitlist(office_code=office, day=DAY, pool="*", not_before=None, tracking_code="T1")
    assert not await redis.exists(keys.waitlist(office, DAY, "*"))
    await redis.delete(key)


def _totals(pool: PoolDay) -> tuple[int, int, tuple[str, ...]]:
    """A pool's day in sum: seats, used, and the times with a seat left."""
    return pool.planned, pool.used, pool.free_times
