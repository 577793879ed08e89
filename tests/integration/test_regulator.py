"""The regulator's crowd caps and closures through the API, with role checks."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import false, func, select
from sqlalchemy.exc import OperationalError

from app import cli
from app.booking.models import Booking
from app.capacity import keys
from app.capacity.models import Closure, CrowdCap
from app.console import service as console_service
from app.regulator import service as regulator_module
from app.regulator.schemas import ClosureIn
from app.regulator.service import CLOSURE_MOVES_LOCK
from app.settings import Settings
from app.sms.backends import OUTBOX
from app.sms.models import SmsMessage
from app.staff.models import AuditEntry, StaffAccount, StaffRole
from app.staff.service import StaffPrincipal
from tests.conftest import Deliver, World, booking_body, fails_once
from tests.integration.test_console import account, sign_in, staff_of

Client = AsyncTestClient[Litestar]


async def test_only_the_regulator_caps_and_the_guild_may_read(client: Client, world: World) -> None:
    from app.capacity.plan import DayRule

    # One slot a day: a cap limits the day's seats, so the day is that slot.
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=4)])
    await account(world, "regulator-1", StaffRole.REGULATOR, None)
    await account(world, "guild-1", StaffRole.GUILD, None)
    staff = await staff_of(client, world, office)
    guild = await sign_in(client, "guild-1")
    regulator = await sign_in(client, "regulator-1")
    day = world.tomorrow().isoformat()
    body = {"starts_on": day, "ends_on": day, "percent": 50, "reason": "مصوبهٔ ستاد", "province_code": "01"}
    for who in (staff, guild):
        refused = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=who)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert (await client.get("/api/v1/regulator/crowd-caps", headers=staff)).status_code == 403
    created = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
    assert created.status_code == 201, created.text
    # Sent again (a retry after a slow answer): lifted later, the copy had kept the cap in force.
    again = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
    assert again.status_code == 409 and again.json()["code"] == "crowd_cap_exists", again.text
    assert again.json()["crowd_cap_id"] == created.json()["id"]
    listed = (await client.get("/api/v1/regulator/crowd-caps", headers=guild)).json()
    assert [c["percent"] for c in listed] == [50]
    slots = (await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day})).json()
    assert [(s["seats"], s["free"]) for s in slots["slots"]] == [(4, 2)]
    bad = await client.post("/api/v1/regulator/crowd-caps", json={**body, "percent": 150}, headers=regulator)
    assert bad.status_code == 422 and bad.json()["field"] == "percent"
    lifted = await client.post(f"/api/v1/regulator/crowd-caps/{created.json()['id']}/lift", headers=regulator)
    assert lifted.status_code == 200 and lifted.json()["active"] is False
    slots = (await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day})).json()
    assert [(s["seats"], s["free"]) for s in slots["slots"]] == [(4, 4)]
    # Lifted, the same order may be given again.
    assert (await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)).status_code == 201


async def test_a_province_caps_lift_gives_its_lines_the_room_asking_for_them_by_name(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """The lift filled every line of the country by a SCAN of the whole keyspace, seconds in a
    rush; it asks for its province's offices' lines by name now, and the first in line there
    gets the seat the cap had taken."""
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=2)])
    await world.rebuild()
    await account(world, "regulator-4", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-4")
    day = world.tomorrow()
    body = {"starts_on": day.isoformat(), "ends_on": day.isoformat(), "percent": 50, "reason": "ستاد",
            "province_code": "01"}  # fmt: skip
    created = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
    assert created.status_code == 201, created.text
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201, joined.text
    scans = int(redis_sync.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))
    lifted = await client.post(f"/api/v1/regulator/crowd-caps/{created.json()['id']}/lift", headers=regulator)
    assert lifted.status_code == 200 and lifted.json()["pending"] is False, lifted.text
    assert (await client.get(f"/api/v1/bookings/{joined.json()['tracking_code']}")).json()["status"] == "booked"
    assert int(redis_sync.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)) == scans


async def test_a_closure_of_today_leaves_the_mornings_bookings_to_the_night(
    client: Client,
    world: World,
    redis_sync: SyncRedis,
    deliver: Deliver,
    morning: dt.datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closed at 14:00 for bad air, the office's 09:00 citizen (served without a click, or
    absent) was texted, and moved to an afternoon slot elsewhere that they would miss, a
    no-show there. Begun over an hour before, the slot keeps its booking, which the night
    cancels without a penalty; one under way (13:30), and later ones, are moved or told."""
    from app.booking.tasks import close_day
    from app.clock import Clock

    office = await world.office(seats=1)
    await world.rebuild()
    await account(world, "regulator-3", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-3")
    today = morning.date()
    codes = {}
    for slot in ("09:00", "13:30", "16:00"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes[slot] = booked.json()["tracking_code"]
    two = morning.replace(hour=14)
    monkeypatch.setattr(Clock, "now", lambda self: two)
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": today.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert sorted(m["tracking_code"] for m in closed.json()["moved"]) == sorted([codes["13:30"], codes["16:00"]])

    async def status(slot: str) -> str:
        return str((await client.get(f"/api/v1/bookings/{codes[slot]}")).json()["status"])

    assert await status("09:00") == "booked"
    # The minute's job leaves the closure be: the booking it kept is no booking left to move
    # (taken for one, the whole closure had run again every minute until midnight).
    changed = redis_sync.get(keys.CLOSURES_CHANGED)
    async with world.container.sessions() as session:
        assert await world.container.regulator.finish_closures(session=session) == 0
    assert redis_sync.get(keys.CLOSURES_CHANGED) == changed
    midnight = morning.replace(hour=0) + dt.timedelta(days=1)
    monkeypatch.setattr(Clock, "now", lambda self: midnight)
    await asyncio.to_thread(close_day)
    assert await status("09:00") == "cancelled"  # at a closed office: no no-show


async def test_a_closure_with_many_bookings_takes_its_seats_out_at_once_and_moves_them_by_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tehran closed for a day's air moved some hundred thousand bookings inside the
    regulator's request: minutes past any balancer's timeout, every move held in one answer.
    Past MOVES_IN_REQUEST the seats come out at once and the minute's job moves them."""
    from app.regulator import service as regulator_service

    monkeypatch.setattr(regulator_service, "MOVES_IN_REQUEST", 2)
    office = await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-9", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-9")
    day = world.tomorrow()
    codes = []
    for slot in ("10:00", "10:00", "10:30"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert (closed.json()["moved"], closed.json()["moves_pending"]) == ([], True)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    # No seat sold: the booked slots' seats are out (kept at none, with their bookings until moved).
    assert refused.status_code == 409 and refused.json()["code"] in ("office_closed", "day_full"), refused.text
    async with world.container.sessions() as session:
        assert await world.container.regulator.finish_closures(session=session) == 3
    for code in codes:
        assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00")) or 0) == 0


async def test_a_closure_posted_while_another_closures_moves_hold_the_day_takes_its_seats_out_at_once(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Tehran's closure for a day, its bookings moved by the minute's job for minutes; Alborz
    closed for the same day meanwhile: its request could not take the day's lock, did
    nothing, and Alborz's offices sold seats until Tehran's job had ended."""
    from app.regulator import service as regulator_service

    office = await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-10", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-10")
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    code = booked.json()["tracking_code"]
    lock = f"{regulator_service.CLOSURE_MOVES_LOCK}:{day.isoformat()}"
    redis_sync.set(lock, "the job moving another province", ex=60)
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert (closed.json()["moved"], closed.json()["moves_pending"]) == ([], True)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert refused.status_code == 409, refused.text  # no seat sold while the moves wait
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    redis_sync.delete(lock)
    async with world.container.sessions() as session:
        assert await world.container.regulator.finish_closures(session=session) == 1
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"


async def test_a_closure_tells_and_cancels_when_nowhere_is_open(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    office = await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-2", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-2")
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09124440000")
    )
    code = booked.json()["tracking_code"]
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert closed.json()["moved"] == [{"tracking_code": code, "moved": False, "office_code": None, "slot": None}]
    assert closed.json()["moves_pending"] is False
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00")) or 0) == 0
    await deliver()
    assert any("09124440000" in m.decode() and "لغو" in m.decode() for m in redis_sync.lrange(OUTBOX, 0, 20))
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert refused.status_code == 422 and refused.json()["code"] == "no_such_slot"

    reopened = await client.delete(f"/api/v1/regulator/closures/{closed.json()['id']}", headers=regulator)
    assert reopened.status_code == 204
    again = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert again.status_code == 201


async def test_a_closure_beats_an_office_override(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(seats=2)
    await world.rebuild()
    staff = await staff_of(client, world, office)
    await account(world, "regulator-3", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-3")
    day = world.tomorrow()
    rules = {"rules": [{"opens": "09:00", "closes": "12:00", "slot_minutes": 30, "seats": 3}], "reason": "نوبت اضافه"}
    planned = await client.put(f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=rules, headers=staff)
    assert planned.status_code == 200, planned.text
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    plans = {p["date"]: p for p in (await client.get(f"/api/v1/staff/offices/{office}/days", headers=staff)).json()}
    assert plans[day.isoformat()]["source"] == "closure" and plans[day.isoformat()]["seats"] == 0
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "09:30"), headers=world.token()
    )
    assert refused.status_code == 422 and refused.json()["code"] == "no_such_slot"


@pytest.mark.parametrize("closure", ["added", "removed"])
async def test_a_clerks_change_read_before_a_closures_commit_is_written_again(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, closure: str
) -> None:
    """The clerk's replan read the calendar, then a closure of the day was added (or removed)
    and applied in full, then the replan wrote what it had read: it had opened the closed day
    again (the office sold seats nobody could use), or closed the reopened one."""
    office = await world.office(seats=2)
    await world.rebuild()
    staff = await staff_of(client, world, office)
    name = f"regulator-race-{closure}"
    await account(world, name, StaffRole.REGULATOR, None)
    regulator = await sign_in(client, name)
    day = world.tomorrow()
    body = {"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    if closure == "removed":
        first = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
        assert first.status_code == 201, first.text
    container = client.app.state.container  # the app's parts, on its loop
    async with world.container.sessions() as session:
        account_id = await session.scalar(select(StaffAccount.id).where(StaffAccount.username == name))
    principal = StaffPrincipal(account_id, name, StaffRole.REGULATOR, None, None)
    scripts = container.capacity.scripts
    run_many = scripts.run_many
    changed = []

    async def change_the_closures_first(script: Any, calls: Any, **kwargs: Any) -> Any:
        if script is scripts.replan and calls[0][1][0] == "apply" and not changed:
            changed.append(closure)  # the clerk's replan has read the calendar: the regulator now
            async with container.sessions() as other:
                if closure == "added":
                    await container.regulator.close(session=other, staff=principal, data=ClosureIn(**body))
                else:
                    await container.regulator.reopen(session=other, staff=principal, closure_id=first.json()["id"])
        return await run_many(script, calls, **kwargs)

    monkeypatch.setattr(scripts, "run_many", change_the_closures_first)
    rules = {"rules": [{"opens": "09:00", "closes": "12:00", "slot_minutes": 30, "seats": 3}], "reason": "نوبت اضافه"}
    planned = await client.put(f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=rules, headers=staff)
    assert planned.status_code == 200, planned.text
    assert changed == [closure]
    listed = (await client.get("/api/v1/regulator/closures", headers=regulator)).json()
    assert len(listed) == (1 if closure == "added" else 0)
    seats = {
        field.decode(): int(n) for field, n in redis_sync.hgetall(keys.office_day(office, day)).items()
        if field.startswith(b"s|") and int(n)
    }  # fmt: skip
    if closure == "added":
        assert seats == {}
    else:
        assert seats == {keys.seats_field("*", f"{h:02d}:{m:02d}"): 3 for h in (9, 10, 11) for m in (0, 30)}


async def test_a_clerks_change_among_closures_that_never_settle_is_left_to_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the replan's writes met another closure's commit: the plan is in the record,
    so the clerk is not told it failed (a retry would record it again); the job writes it."""
    office = await world.office(seats=2)
    await world.rebuild()
    staff = await staff_of(client, world, office)
    day = world.tomorrow()
    scripts = client.app.state.container.capacity.scripts
    run_many = scripts.run_many

    async def a_closure_each_time(script: Any, calls: Any, **kwargs: Any) -> Any:
        if script is scripts.replan:
            redis_sync.incr(keys.CLOSURES_CHANGED)
        return await run_many(script, calls, **kwargs)

    monkeypatch.setattr(scripts, "run_many", a_closure_each_time)
    rules = {"rules": [{"opens": "09:00", "closes": "10:00", "slot_minutes": 30, "seats": 3}], "reason": "نوبت اضافه"}
    planned = await client.put(f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=rules, headers=staff)
    assert planned.status_code == 200, planned.text
    assert redis_sync.hexists(keys.PLANS_TO_APPLY, office)
    monkeypatch.setattr(scripts, "run_many", run_many)
    monkeypatch.setattr(console_service, "PLAN_REQUEST_SECONDS", 0)
    async with world.container.sessions() as session:
        assert await world.container.console.finish_plans(session=session) == 1
    seats = {f.decode(): int(n) for f, n in redis_sync.hgetall(keys.office_day(office, day)).items() if f[:2] == b"s|"}
    assert {field: n for field, n in seats.items() if n} == {"s|*|09:00": 3, "s|*|09:30": 3}
    assert not redis_sync.hexists(keys.PLANS_TO_APPLY, office)


async def test_a_reopen_whose_second_write_fails_is_committed_and_left_to_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reopen's commit is done when its second write from the record fails: a 5xx then
    had the regulator's retry meet a 404. The offices are left to the plans' job."""
    office = await world.office(seats=2)
    await world.rebuild()
    regulator = await sign_in_regulator(client, world, "regulator-reopen")
    day = world.tomorrow()
    body = {"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    closed = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert closed.status_code == 201, closed.text
    capacity = client.app.state.container.capacity

    async def redis_gone() -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(capacity, "closures_changed", redis_gone)
    reopened = await client.delete(f"/api/v1/regulator/closures/{closed.json()['id']}", headers=regulator)
    assert reopened.status_code == 204, reopened.text
    assert (await client.get("/api/v1/regulator/closures", headers=regulator)).json() == []
    assert redis_sync.hexists(keys.PLANS_TO_APPLY, office)
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text  # opened by its first write


async def test_a_closure_a_recount_may_have_missed_stays_noted_for_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recount that began between the closure's last look and its commit read the record
    without it, and wrote its offices open after the closure's moves: the closure is left
    noted, and the job closes them again once the recount is done."""
    office = await world.office(seats=2)
    await world.rebuild()
    regulator = await sign_in_regulator(client, world, "regulator-recount")
    day = world.tomorrow()
    regulator_service = client.app.state.container.regulator
    close_offices = regulator_service._close_offices

    async def recounted_first(*args: Any, **kwargs: Any) -> Any:
        marker = redis_sync.get(keys.REBUILT_AT)
        assert marker is not None
        redis_sync.set(keys.REBUILT_AT, b"a later recount" + marker[marker.index(b"|") :])  # done on the same servers
        return await close_offices(*args, **kwargs)

    monkeypatch.setattr(regulator_service, "_close_offices", recounted_first)
    body = {"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    closed = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert closed.status_code == 201, closed.text
    assert redis_sync.hexists(keys.CLOSURES_TO_APPLY, str(closed.json()["id"]))
    # What the recount wrote: the day open again.
    redis_sync.hset(keys.office_day(office, day), keys.seats_field("*", "10:00"), 2)
    monkeypatch.setattr(regulator_module, "CLOSURE_REQUEST_SECONDS", 0)
    async with world.container.sessions() as session:
        await world.container.regulator.finish_closures(session=session)
    assert int(redis_sync.hget(keys.office_day(office, day), keys.seats_field("*", "10:00")) or 0) == 0
    assert not redis_sync.hexists(keys.CLOSURES_TO_APPLY, str(closed.json()["id"]))


async def sign_in_regulator(client: Client, world: World, name: str) -> dict[str, str]:
    await account(world, name, StaffRole.REGULATOR, None)
    return await sign_in(client, name)


@pytest.mark.parametrize("change", ["add", "lift"])
async def test_a_cap_redis_refuses_after_its_commit_bites_by_the_minutes_job(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Recorded (with who set it), then Redis refused to take it: 201, pending, and the minute's
    job makes it bite. (A 503 had the regulator add it again; and no job told the counters
    of active offices, so the cap never bit, or a lifted one bit on.)"""
    from app.capacity import crowd_caps
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=4)])
    await world.rebuild()
    await account(world, "regulator-4", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-4")
    capacity = client.app.state.container.capacity
    refresh_meta = capacity.refresh_meta
    day = world.tomorrow().isoformat()

    async def seats_free() -> list[tuple[int, int]]:
        slots = (await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day})).json()
        return [(s["seats"], s["free"]) for s in slots["slots"]]

    async def away(**_: object) -> None:
        raise RedisConnectionError("Redis away a moment")

    body = {"starts_on": day, "ends_on": day, "percent": 50, "reason": "مصوبهٔ ستاد", "province_code": None}
    waiting = None
    if change == "lift":
        cap_id = (await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)).json()["id"]
        assert await seats_free() == [(4, 2)]
        for _ in range(2):  # the capped day full, and one citizen in line
            booking = booking_body(office, world.national_id(), world.tomorrow(), None)
            assert (await client.post("/api/v1/bookings", json=booking, headers=world.token())).status_code == 201
        joined = await client.post(
            "/api/v1/waitlist",
            json=booking_body(office, world.national_id(), world.tomorrow(), None),
            headers=world.token(),
        )
        waiting = joined.json()["tracking_code"]
    monkeypatch.setattr(capacity, "refresh_meta", away)
    if change == "add":
        answer = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
        assert answer.status_code == 201, answer.text
    else:
        answer = await client.post(f"/api/v1/regulator/crowd-caps/{cap_id}/lift", headers=regulator)
        assert answer.status_code == 200, answer.text
    assert answer.json()["pending"] is True
    monkeypatch.setattr(capacity, "refresh_meta", refresh_meta)
    async with world.container.sessions() as session:
        caps = list(await session.scalars(select(CrowdCap.id)))
        actions = list(await session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "regulator-4")))
    assert len(caps) == 1 and actions[-1] == f"crowd_cap.{change}"  # recorded together
    assert await seats_free() == ([(4, 4)] if change == "add" else [(4, 0)])  # the counters not told yet

    async def finish() -> int:
        async with world.container.sessions() as session:
            return await world.container.regulator.finish_caps(session=session)

    assert await finish() == 0  # its request's, for a minute: the job would read the record too early
    monkeypatch.setattr(crowd_caps, "CAP_REQUEST_SECONDS", 0)
    assert await finish() == 1
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)  # the app hears of it
    assert await seats_free() == ([(4, 2)] if change == "add" else [(4, 1)])
    if waiting is not None:  # the room the lift made went to the line first
        assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "booked"
    assert await finish() == 0  # told once


@pytest.mark.parametrize("told", ["at once", "by the minute's job", "ended by the minute's job", "by the command"])
async def test_a_crowd_cap_at_zero_ends_the_lines_of_its_days(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, told: str, settings: Settings
) -> None:
    """A day capped to 0% (a lockdown's directive) sells no seat, a freed one included: its
    lines are cancelled and told, the day after's kept, as are the bookings already made.
    The same from ``python -m app crowd-cap add``, which had left the lines waiting for good."""
    from app.capacity import crowd_caps
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    await account(world, "regulator-0", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-0")
    tomorrow, after = world.tomorrow(), world.tomorrow() + dt.timedelta(days=1)
    lines = {}
    for day in (tomorrow, after):  # each day full, and one citizen in its line
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        joined = await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
        )
        lines[day] = joined.json()["tracking_code"]
    if told == "by the minute's job":
        fails_once(monkeypatch, client.app.state.container.capacity, "refresh_meta", RedisConnectionError("away"))
    if told == "ended by the minute's job":  # told, and the record failed as the lines ended
        fails_once(monkeypatch, client.app.state.container.bookings, "end_shut_lines", OperationalError("", {}, None))
    body = {
        "starts_on": tomorrow.isoformat(),
        "ends_on": tomorrow.isoformat(),
        "percent": 0,
        "reason": "قرنطینه",
        "province_code": None,
    }
    if told == "by the command":
        args = argparse.Namespace(
            action="add", province=None, starts=body["starts_on"], ends=body["ends_on"], percent=0, reason="قرنطینه"
        )
        await cli.crowd_cap(settings, args)
        async with world.container.sessions() as session:
            assert await session.scalar(select(AuditEntry.actor).where(AuditEntry.action == "crowd_cap.add")) == "cli"
    else:
        capped = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
        assert capped.status_code == 201 and capped.json()["pending"] is (told != "at once"), capped.text
    if told not in ("at once", "by the command"):
        monkeypatch.setattr(crowd_caps, "CAP_REQUEST_SECONDS", 0)
        async with world.container.sessions() as session:
            assert await world.container.regulator.finish_caps(session=session) == 1
    statuses = {day: (await client.get(f"/api/v1/bookings/{code}")).json()["status"] for day, code in lines.items()}
    assert statuses == {tomorrow: "cancelled", after: "waitlisted"}
    async with world.container.sessions() as session:
        booked = await session.scalar(select(func.count()).select_from(Booking).where(Booking.status == "booked"))
        told_sms = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "booking_cancelled")))
    assert booked == 2 and len(told_sms) == 1 and lines[tomorrow] in told_sms[0]


async def test_a_reopen_redis_refuses_removes_nothing_and_may_be_tried_again(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offices' seats go back into Redis before the removal commits: refused there, the
    closure stays (503, and the retry finds it). Removed first, the offices had stayed closed
    in Redis with no closure in the record to say so, and the retry was a 404."""
    office = await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-5", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-5")
    day = world.tomorrow()
    body = {"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    first = (await client.post("/api/v1/regulator/closures", json=body, headers=regulator)).json()["id"]
    again = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)  # a retry
    assert again.status_code == 409 and again.json()["code"] == "closure_exists", again.text
    assert again.json()["closure_id"] == first
    other_order = {**body, "reason": "عزای عمومی"}  # a closure of its own
    second = (await client.post("/api/v1/regulator/closures", json=other_order, headers=regulator)).json()["id"]
    capacity = client.app.state.container.capacity
    replan = capacity.replan

    async def away(**_: object) -> None:
        raise RedisConnectionError("Redis away a moment")

    async def book() -> int:
        booking = booking_body(office, world.national_id(), day)
        return (await client.post("/api/v1/bookings", json=booking, headers=world.token())).status_code

    monkeypatch.setattr(capacity, "replan", away)
    refused = await client.delete(f"/api/v1/regulator/closures/{first}", headers=regulator)
    assert refused.status_code == 503, refused.text
    monkeypatch.setattr(capacity, "replan", replan)
    # Noted before its replan, which might have opened some offices: the job closes them again.
    assert redis_sync.hexists(keys.CLOSURES_TO_APPLY, str(first))
    # While a closure's moves hold the day, a reopen waits: beside them it could be closed again.
    day_lock = f"{CLOSURE_MOVES_LOCK}:{day.isoformat()}"
    redis_sync.set(day_lock, "the minute's job", px=30_000)
    busy = await client.delete(f"/api/v1/regulator/closures/{first}", headers=regulator)
    assert busy.status_code == 503 and busy.json()["code"] == "closure_busy", busy.text
    assert busy.headers["Retry-After"]
    redis_sync.delete(day_lock)
    listed = (await client.get("/api/v1/regulator/closures", headers=regulator)).json()
    assert [c["id"] for c in listed] == [first, second]
    assert (await client.delete(f"/api/v1/regulator/closures/{first}", headers=regulator)).status_code == 204
    assert await book() == 422  # the other closure of the day still closes it
    assert (await client.delete(f"/api/v1/regulator/closures/{first}", headers=regulator)).status_code == 404
    assert (await client.delete(f"/api/v1/regulator/closures/{second}", headers=regulator)).status_code == 204
    assert await book() == 201
    assert not redis_sync.hlen(keys.CLOSURES_TO_APPLY)  # each reopen done, its note gone


@pytest.mark.parametrize("province_code", ["01", None])
async def test_the_same_closure_posted_at_the_same_instant_is_recorded_once(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, province_code: str | None
) -> None:
    """Two identical orders at once (a retry beside a slow first answer) both passed the check
    for a copy, read before either committed, and both were recorded: reopening one then left
    the day shut by the other. The index holds where the check cannot; the second is a 409."""
    await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-8", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-8")
    body = {"date": world.tomorrow().isoformat(), "province_code": province_code, "reason": "آلودگی هوا"}
    same_closure = regulator_module._same_closure
    blind = iter([True, True])  # each order's check runs before the other's commit

    def raced(*args: Any) -> tuple[Any, ...]:
        return (false(),) if next(blind, False) else same_closure(*args)

    monkeypatch.setattr(regulator_module, "_same_closure", raced)
    first = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert first.status_code == 201, first.text
    again = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert again.status_code == 409 and again.json()["code"] == "closure_exists", again.text
    assert again.json()["closure_id"] == first.json()["id"]
    listed = (await client.get("/api/v1/regulator/closures", headers=regulator)).json()
    assert [c["id"] for c in listed] == [first.json()["id"]]
    async with world.container.sessions() as session:
        actions = list(await session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "regulator-8")))
    assert actions.count("closure.add") == 1  # the refused one left no trace


async def test_a_closure_refused_by_the_record_for_another_reason_is_not_called_a_copy(
    client: Client, world: World, database_url: str
) -> None:
    """Only the one-order index's refusal is "closed already": another (an id sequence left
    behind by a restore, here) is a fault, answered as one, not a 409 that tells the regulator
    the day is shut while nothing was recorded."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite's ids follow the rows; PostgreSQL's sequence can be left behind")
    await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-9", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-9")
    async with world.container.sessions() as session:  # restored with its ids, the sequence not moved
        session.add(Closure(id=1, date=world.tomorrow(), province_id=1, reason="عزا", created_by="restore"))
        await session.commit()
    body = {"date": world.tomorrow().isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    refused = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert refused.status_code == 500, refused.text
    listed = (await client.get("/api/v1/regulator/closures", headers=regulator)).json()
    assert [c["reason"] for c in listed] == ["عزا"]


async def test_a_closure_cancels_the_places_in_line_and_tells_the_citizens(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A day closed has no seat to promote anyone to: left in line, the citizen was told
    nothing, could not book that day elsewhere (a place in line counts against the limits),
    and was cancelled at midnight without a word. Now cancelled at once, and told, as a block does."""
    from tests.integration.test_console_moves import full_with_one_waiting

    day = world.tomorrow()
    office, holder, waiting = await full_with_one_waiting(client, world, day)
    async with world.container.sessions() as session:
        national_id = await session.scalar(select(Booking.national_id).where(Booking.tracking_code == waiting))
    assert national_id and redis_sync.hexists(keys.citizen_holds(national_id), waiting)
    await account(world, "regulator-6", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-6")
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert sorted(m["tracking_code"] for m in closed.json()["moved"]) == sorted([holder, waiting])
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "cancelled"
    assert not redis_sync.exists(keys.waitlist(office, day, "*"))
    await deliver()
    assert any(waiting in m.decode() and "لغو" in m.decode() for m in redis_sync.lrange(OUTBOX, 0, 20))
    assert not redis_sync.hexists(keys.citizen_holds(national_id), waiting)  # no longer counted against the limits
    # Nor may anyone join its line again (the closed day keeps its booked slots' fields, at no seats).
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 409 and joined.json()["code"] == "office_closed", joined.text


async def test_a_closure_waits_a_moment_for_its_day_and_is_applied_at_once(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Another closure of the day, or a reopen, holds the day's lock a moment: the request
    waits for it, rather than leave its offices selling seats until the minute's job."""
    office = await world.office(seats=2)
    await world.rebuild()
    await account(world, "regulator-7", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-7")
    day = world.tomorrow()
    redis_sync.set(f"{CLOSURE_MOVES_LOCK}:{day.isoformat()}", "a reopen", px=1000)
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"},
        headers=regulator,
    )
    assert closed.status_code == 201 and closed.json()["moves_pending"] is False, closed.text
    assert int(redis_sync.hget(keys.office_day(office, day), keys.seats_field("*", "10:00")) or 0) == 0


@pytest.mark.parametrize("creates", ["on demand", "the nightly roll", "a recount"])
async def test_a_cap_committed_while_a_day_is_created_reaches_that_day(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, creates: str
) -> None:
    """A day is created (as it enters the horizon, or read before Redis had it) or counted
    again from a read of the record made just before a crowd cap's commit; the cap, told
    before the day was written, finds it absent and leaves it (or is written over). Once
    written, the day is told the cap. (It had kept 100% until the next rebuild.)"""
    from app.capacity import crowd_caps
    from app.capacity import service as capacity_service

    office, day, container = await world.office(), world.tomorrow(), world.container
    assert not redis_sync.exists(keys.office_day(office, day))
    read_caps = capacity_service.load_caps
    added: list[crowd_caps.CrowdCapOut] = []

    async def a_cap_right_after_the_read(session: Any, **dates: Any) -> Any:
        caps = await read_caps(session, **dates)
        monkeypatch.setattr(capacity_service, "load_caps", read_caps)  # once
        async with container.sessions() as other:
            added.append(
                await crowd_caps.add(
                    session=other, capacity=container.capacity, today=container.clock.today(),
                    province_code=None, starts_on=day, ends_on=day, percent=50, reason="مصوبه", created_by="r",
                )
            )  # fmt: skip
        return caps

    monkeypatch.setattr(capacity_service, "load_caps", a_cap_right_after_the_read)
    async with container.sessions() as session:
        if creates == "on demand":
            await container.capacity.materialise_day(session=session, office_code=office, day=day)
        elif creates == "the nightly roll":
            await container.capacity.extend_horizon(session=session, today=container.clock.today())
        else:  # its days written over those the cap was told to
            await container.capacity.rebuild(session=session, today=container.clock.today())
    assert added[0].pending is False  # told, and found the day absent
    assert redis_sync.hget(keys.office_day(office, day), "_cap") == b"50"


async def test_a_closure_or_its_reopen_as_a_recount_begins_is_refused_and_changes_nothing(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recount that read the record before a reopen's commit writes the province's offices
    closed again after the reopen opened them, its note forgotten: the reopened day refused
    every booking until the next night. (A closure so, its offices sold seats for a minute.)
    Refused now, as a cancel is: 503, and the record and the day as they were."""
    office = await world.office(seats=2)
    await world.rebuild()
    regulator = await sign_in_regulator(client, world, "regulator-barrier")
    day = world.tomorrow()
    body = {"date": day.isoformat(), "province_code": "01", "reason": "آلودگی هوا"}
    closed = await client.post("/api/v1/regulator/closures", json=body, headers=regulator)
    assert closed.status_code == 201, closed.text
    capacity = client.app.state.container.capacity

    async def recount_begun() -> bool:
        return False

    monkeypatch.setattr(capacity, "may_commit", recount_begun)
    reopen = await client.delete(f"/api/v1/regulator/closures/{closed.json()['id']}", headers=regulator)
    other = {**body, "date": (day + dt.timedelta(days=1)).isoformat()}
    another = await client.post("/api/v1/regulator/closures", json=other, headers=regulator)
    assert [reopen.status_code, another.status_code] == [503, 503], [reopen.text, another.text]
    listed = (await client.get("/api/v1/regulator/closures", headers=regulator)).json()
    assert [c["id"] for c in listed] == [closed.json()["id"]]
    # Its note kept: after the recount, the job writes the day from the record (closed).
    assert redis_sync.hexists(keys.CLOSURES_TO_APPLY, str(closed.json()["id"]))
    assert (
        int(redis_sync.hget(keys.office_day(office, day + dt.timedelta(days=1)), keys.seats_field("*", "10:00"))) == 2
    )


async def test_a_closure_weeks_ahead_is_recorded_and_shuts_the_day_as_it_enters_the_horizon(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decree for a day a month away had to wait (422) until the day came within the
    horizon, and someone to remember it then. A year ahead is the bound, as for an office's plan."""
    from app.clock import Clock

    office = await world.office()
    await world.rebuild()
    regulator = await sign_in_regulator(client, world, "regulator-far")
    today = world.container.clock.today()
    day = today + dt.timedelta(days=30)
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": None, "reason": "عزای عمومی"},
        headers=regulator,
    )
    assert closed.status_code == 201, closed.text
    assert closed.json()["moved"] == [] and closed.json()["moves_pending"] is False
    assert not redis_sync.exists(keys.office_day(office, day))  # no counters written a month early
    too_far = await client.post(
        "/api/v1/regulator/closures",
        json={"date": (today + dt.timedelta(days=400)).isoformat(), "province_code": None, "reason": "x"},
        headers=regulator,
    )
    assert too_far.status_code == 422 and too_far.json()["field"] == "date", too_far.text

    # The day enters the horizon: written closed.
    later = dt.datetime.combine(day - dt.timedelta(days=3), dt.time(9, 0), tzinfo=world.container.clock.tz)
    monkeypatch.setattr(Clock, "now", lambda self: later)
    async with world.container.sessions() as session:
        await world.container.capacity.extend_horizon(session=session, today=later.date())
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text


async def test_a_far_closure_committed_as_its_day_enters_the_horizon_is_applied_at_once(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posted at 23:59:59 for the day that enters the horizon at midnight, committed after
    it: the night's new day had been written open from the record without it, and stayed
    open until a booking came to be moved."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.clock import Clock

    office = await world.office()
    await world.rebuild()
    regulator = await sign_in_regulator(client, world, "regulator-midnight")
    tz = world.container.clock.tz
    before = dt.datetime.combine(world.container.clock.today(), dt.time(23, 59, 59), tzinfo=tz)
    after = before + dt.timedelta(seconds=2)
    day = before.date() + dt.timedelta(days=world.container.settings.horizon_days)  # tomorrow's last
    passed = False
    commit = AsyncSession.commit

    async def midnight_at_the_commit(session: AsyncSession) -> None:
        nonlocal passed
        await commit(session)
        passed = True

    monkeypatch.setattr(Clock, "now", lambda self: after if passed else before)
    monkeypatch.setattr(AsyncSession, "commit", midnight_at_the_commit)
    closed = await client.post(
        "/api/v1/regulator/closures",
        json={"date": day.isoformat(), "province_code": None, "reason": "عزای عمومی"},
        headers=regulator,
    )
    monkeypatch.setattr(AsyncSession, "commit", commit)
    assert closed.status_code == 201, closed.text
    assert closed.json()["moves_pending"] is False
    assert redis_sync.exists(keys.office_day(office, day))  # written...
    assert int(redis_sync.hget(keys.office_day(office, day), keys.seats_field("*", "10:00")) or 0) == 0  # closed
    assert not redis_sync.hexists(keys.CLOSURES_TO_APPLY, str(closed.json()["id"]))
