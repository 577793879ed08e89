"""Which days an office is open, through the real API: Fridays closed by default, Iran's
official holidays (the `holidays` package's calendar) closed when NOBAT_OFFICIAL_HOLIDAYS is on."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import holidays
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from sqlalchemy import select, update

from app import cli
from app.capacity import keys
from app.capacity.models import CapacityOverride, CapacityTemplate
from app.capacity.plan import DayRule, default_template, encode_rules, encode_template, iranian_weekday
from app.capacity.service import CALENDAR_SETTLE
from app.clock import Clock
from app.offices.models import Office
from app.settings import Settings
from app.sms.backends import OUTBOX
from tests.conftest import Deliver, World, booking_body

Client = AsyncTestClient[Litestar]
TEHRAN = Clock("Asia/Tehran").tz


def next_holiday() -> dt.date:
    """The first official holiday at least three days ahead that is not a Friday anyway."""
    start = dt.datetime.now(TEHRAN).date() + dt.timedelta(days=3)
    calendar = holidays.country_holidays("IR", years=range(start.year, start.year + 2))
    return min(day for day in calendar if day >= start and iranian_weekday(day) != 6)


@pytest.fixture
def holiday(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    """Move the clock to three days before an official holiday, before the app starts."""
    day = next_holiday()
    morning = dt.datetime.combine(day - dt.timedelta(days=3), dt.time(7, 0), tzinfo=TEHRAN)
    monkeypatch.setattr(Clock, "now", lambda self: morning)
    return day


@pytest.fixture
def settings(settings: Settings, holiday: dt.date) -> Settings:
    # tests/conftest.py turns the holidays off so that "tomorrow" is always open; on here.
    return settings.with_(official_holidays=True)


async def slots(client: Client, office: str, day: dt.date) -> dict[str, Any]:
    response = await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    assert response.status_code == 200, response.text
    return dict(response.json())


def horizon(world: World) -> list[dt.date]:
    today = world.container.clock.today()
    return [today + dt.timedelta(days=i) for i in range(world.container.settings.horizon_days)]


async def test_an_official_holiday_closes_every_office(client: Client, world: World, holiday: dt.date) -> None:
    assert world.container.settings.official_holidays
    office = await world.office()  # open every day of the week
    await world.rebuild()
    official = holidays.country_holidays("IR", years=holiday.year)
    working = next(day for day in horizon(world) if day not in official)
    assert (await slots(client, office, working))["slots"], working
    closed = await slots(client, office, holiday)
    assert closed["slots"] == [], closed
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), holiday, None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), working, None), headers=world.token()
    )
    assert booked.status_code == 201, booked.text


async def test_fridays_are_closed_by_default(client: Client, world: World) -> None:
    office = await world.office()
    async with world.container.sessions() as session:
        # The template an office starts with (the demo network's too): no rules on Friday.
        await session.execute(update(CapacityTemplate).values(template=encode_template(default_template(counters=2))))
        await session.commit()
    await world.rebuild()
    official = holidays.country_holidays("IR", years=range(horizon(world)[0].year, horizon(world)[-1].year + 1))
    friday = next(day for day in horizon(world) if iranian_weekday(day) == 6)
    saturday = next(day for day in horizon(world) if iranian_weekday(day) == 0 and day not in official)
    closed = await slots(client, office, friday)
    assert closed["slots"] == [], closed
    assert (await slots(client, office, saturday))["slots"]
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), friday, None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text


async def test_the_rebuild_command_keeps_holidays_open_when_they_are_turned_off(
    client: Client, world: World, settings: Settings, holiday: dt.date
) -> None:
    """``python -m app rebuild`` counts the calendar as the service does: with
    NOBAT_OFFICIAL_HOLIDAYS off it had closed every holiday of the horizon anyway, in every
    office, until the night's recount."""
    office = await world.office()
    await cli.rebuild(settings.with_(official_holidays=False))
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)  # the app hears of it
    assert (await slots(client, office, holiday))["slots"]
    await cli.rebuild(settings)  # on: closed, as the service counts it
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    assert (await slots(client, office, holiday))["slots"] == []


async def test_a_new_official_holiday_moves_its_bookings_and_one_dropped_opens(
    client: Client, world: World, holiday: dt.date, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The calendar changes with a release (a lunar holiday's estimate corrected) or the
    setting, not by a request: the minute's job shuts a day become a holiday at every office
    no override opens, cancels its bookings and places in line with an SMS, and opens a day
    that is one no longer, each at once. (The bookings had stood, sold until the night's
    recount, and their citizens found the office shut and were counted absent.)"""
    capacity = world.container.capacity
    regulator = world.container.regulator
    shut = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    opened = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    async with world.container.sessions() as session:
        opened_id = await session.scalar(select(Office.id).where(Office.code == opened))
        rules = [DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)]
        session.add(CapacityOverride(office_id=opened_id, date=holiday, rules=encode_rules(rules), reason="کشیک"))
        await session.commit()
    capacity.official_holidays = False  # the release before: the day is a working one
    await world.rebuild()
    async with world.container.sessions() as session:
        assert await regulator.finish_closures(session=session) == 0

    async def book(office: str, path: str = "/api/v1/bookings", mobile: str = "09120000000") -> str:
        body = booking_body(office, world.national_id(), holiday, None if "waitlist" in path else "10:00")
        answer = await client.post(path, json=body, headers=world.token(mobile))
        assert answer.status_code == 201, answer.text
        return str(answer.json()["tracking_code"])

    booked = await book(shut, mobile="09125550001")
    waiting = await book(shut, "/api/v1/waitlist", mobile="09125550002")
    kept = await book(opened)

    capacity.official_holidays = True  # the new release: the day is an official holiday
    # Rolling out, workers of the old calendar still run the job: the new one waits (the two
    # had undone each other every minute), the day as it was.
    async with world.container.sessions() as session:
        assert await regulator.finish_closures(session=session) == 0
    assert (await client.get(f"/api/v1/bookings/{booked}")).json()["status"] == "booked"
    assert int(redis_sync.hget(keys.office_day(shut, holiday), keys.seats_field("*", "10:00")) or 0) == 1
    last_old_worker_gone(redis_sync, "none")
    async with world.container.sessions() as session:
        assert await regulator.finish_closures(session=session) == 2
    statuses = {
        code: (await client.get(f"/api/v1/bookings/{code}")).json()["status"] for code in (booked, waiting, kept)
    }
    assert statuses == {booked: "cancelled", waiting: "cancelled", kept: "booked"}
    day_key = keys.office_day(shut, holiday)
    assert int(redis_sync.hget(day_key, keys.seats_field("*", "10:00")) or 0) == 0
    assert int(redis_sync.hget(day_key, keys.used_field("*", "10:00")) or 0) == 0
    assert not redis_sync.exists(keys.waitlist(shut, holiday, "*"))
    await deliver()
    told = [m.decode() for m in redis_sync.lrange(OUTBOX, 0, 50)]
    for mobile in ("09125550001", "09125550002"):
        assert any(mobile in m and "تعطیل رسمی" in m and "لغو" in m for m in told), told
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(shut, world.national_id(), holiday, None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text

    capacity_calendar = capacity.calendar_name()
    # Followed now: the next run finds nothing to do, and writes nothing.
    changed = redis_sync.get(keys.CLOSURES_CHANGED)
    redis_sync.expire(keys.HOLIDAYS_FOLLOWED, 1000)  # a SET would clear it
    async with world.container.sessions() as session:
        assert await regulator.finish_closures(session=session) == 0
    assert redis_sync.get(keys.CLOSURES_CHANGED) == changed
    assert redis_sync.ttl(keys.HOLIDAYS_FOLLOWED) > 0  # the note not written again each minute

    capacity.official_holidays = False  # the holiday dropped again: the day opens, no recount
    last_old_worker_gone(redis_sync, capacity_calendar)
    async with world.container.sessions() as session:
        assert await regulator.finish_closures(session=session) == 0
    assert int(redis_sync.hget(day_key, keys.seats_field("*", "10:00")) or 0) == 1
    await capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    await book(shut)


def last_old_worker_gone(redis: SyncRedis, calendar: str) -> None:
    """The workers of ``calendar`` last ran the minute's job longer ago than the rollout's wait."""
    redis.hset(keys.HOLIDAY_CALENDARS, calendar, int(time.time()) - CALENDAR_SETTLE - 1)
