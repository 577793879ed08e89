"""The regulator's crowd caps and closures through the API, with role checks."""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select

from app.capacity import keys
from app.capacity.models import CrowdCap
from app.sms.backends import OUTBOX
from app.staff.models import AuditEntry, StaffRole
from tests.conftest import Deliver, World, booking_body
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


async def test_a_cap_whose_redis_update_fails_is_recorded_with_who_set_it(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await account(world, "regulator-4", StaffRole.REGULATOR, None)
    regulator = await sign_in(client, "regulator-4")
    capacity = client.app.state.container.capacity

    async def away(**_: object) -> None:
        raise RedisConnectionError("Redis away a moment")

    monkeypatch.setattr(capacity, "refresh_meta", away)
    day = world.tomorrow().isoformat()
    body = {"starts_on": day, "ends_on": day, "percent": 50, "reason": "مصوبهٔ ستاد"}
    refused = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=regulator)
    assert refused.status_code == 503, refused.text
    async with world.container.sessions() as session:
        caps = list(await session.scalars(select(CrowdCap.id)))
        actions = list(await session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "regulator-4")))
    assert len(caps) == 1 and actions == ["crowd_cap.add"]  # recorded together, or not at all
