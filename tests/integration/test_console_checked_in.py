"""A same-day capacity cut never takes a seat from a citizen who is already in the room, nor
counts one whose turn is over."""

from __future__ import annotations

import datetime as dt

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from app.settings import Settings
from tests.conftest import World, booking_body
from tests.integration.test_console import every_day, move_clock, seats, staff_of, used

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


async def test_a_slot_left_over_its_plan_sells_no_seat_its_holders_give_back(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut whose moves could not empty a slot (its holders checked in a moment after the
    refusal check, or a seat counted whose booking never reached the record) had raised the
    slot's seats to its holders' count: each seat a holder then gave back was sold again, and
    the slot stayed over the clerk's plan for good. It keeps the plan's seats, and is full."""
    office = await world.office(seats=2)
    headers = await staff_of(client, world, office)
    day = world.tomorrow()
    mobile = "09125550077"
    codes = []
    for _ in range(2):
        booked = await client.post(
            "/api/v1/bookings",
            json=booking_body(office, world.national_id(), day, "10:00"),
            headers=world.token(mobile),
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])

    async def nobody_moves(*_: object, **__: object) -> list[object]:
        return []

    monkeypatch.setattr(client.app.state.container.console, "move_overflow", nobody_moves)
    one_seat = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 1}
    cut = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}?move_overflow=true",
        json={"rules": [one_seat], "reason": "یک باجه"},
        headers=headers,
    )
    assert cut.status_code == 200, cut.text
    assert seats(redis_sync, office, day, "10:00") == 1 and used(redis_sync, office, day, "10:00") == 2
    cancelled = await client.post(f"/api/v1/bookings/{codes[0]}/cancel", headers=world.token(mobile))
    assert cancelled.status_code == 200, cancelled.text
    again = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert again.status_code == 409, again.text  # one seat, one holder: full
    assert (seats(redis_sync, office, day, "10:00"), used(redis_sync, office, day, "10:00")) == (1, 1)


async def test_a_cut_during_the_day_neither_refuses_nor_moves_a_slot_under_way(
    client: Client,
    world: World,
    redis_sync: SyncRedis,
    settings: Settings,
    morning: dt.datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 10:40 a clerk cuts every day to one seat, today's included. The 10:30 slot holds two
    citizens not yet clicked in (in the room, or on their way): the cut was refused for them,
    or, asked to move, sent them to another time or office by SMS, out of the slot they were
    sitting in. A slot under way keeps its seats now; the later ones are cut."""
    from tests.integration.test_races import consistent

    office = await world.office(seats=2)
    headers = await staff_of(client, world, office)
    today = morning.date()
    codes = []
    for slot in ("10:30", "10:30", "11:00"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    move_clock(monkeypatch, morning.replace(hour=10, minute=40))
    base = f"/api/v1/staff/offices/{office}"
    cut = await client.put(f"{base}/template", json=every_day(1), headers=headers)
    assert cut.status_code == 200, cut.text
    assert cut.json()["moved"] == []
    assert seats(redis_sync, office, today, "10:30") == 2 and used(redis_sync, office, today, "10:30") == 2
    assert seats(redis_sync, office, today, "11:00") == 1 and used(redis_sync, office, today, "11:00") == 1
    statuses = [(await client.get(f"/api/v1/bookings/{code}")).json() for code in codes]
    assert [(b["status"], b["slot"]) for b in statuses] == [("booked", "10:30")] * 2 + [("booked", "11:00")]
    await consistent(settings)


async def test_a_same_day_cut_is_not_refused_for_citizens_already_served(
    client: Client,
    world: World,
    redis_sync: SyncRedis,
    morning: dt.datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Served or marked absent, a citizen holds no seat, though Redis keeps theirs counted (it
    was used): at 11:00 a clerk's cut of the morning was refused for them, and one that asked
    for moves looked at their slot again for a second and then opened it at their count."""
    office = await world.office(seats=1)
    headers = await staff_of(client, world, office)
    today = morning.date()
    base = f"/api/v1/staff/offices/{office}"
    override = f"{base}/overrides/{today.isoformat()}"
    two_seats = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 2}
    opened = await client.put(override, json={"rules": [two_seats], "reason": "دو باجه"}, headers=headers)
    assert opened.status_code == 200, opened.text
    codes = []
    for slot in ("08:00", "08:00", "11:30"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    served, absent, later = codes
    move_clock(monkeypatch, morning.replace(hour=8, minute=20))
    assert (await client.post(f"{base}/queue/{served}/served", headers=headers)).status_code == 200
    assert (await client.post(f"{base}/queue/{absent}/no-show", headers=headers)).status_code == 200
    move_clock(monkeypatch, morning.replace(hour=11))

    # Back to the template's one seat: 08:00 counts two, and holds nobody.
    cleared = await client.delete(override, headers=headers)
    assert cleared.status_code == 200, cleared.text
    # The afternoon only: refused for the citizen still to come at 11:30, and for no one else.
    refused = await client.put(f"{base}/template", json=every_day(1, opens="12:00"), headers=headers)
    assert refused.status_code == 409 and refused.json()["code"] == "capacity_below_bookings", refused.text
    assert refused.json()["slots"] == [
        {"date": today.isoformat(), "slot": "11:30", "pool": "*", "seats": 0, "booked": 1}
    ]
    afternoon = {"opens": "12:00", "closes": "20:00", "slot_minutes": 30, "seats": 1}
    cut = await client.put(
        f"{override}?move_overflow=true", json={"rules": [afternoon], "reason": "بعدازظهر"}, headers=headers
    )
    assert cut.status_code == 200, cut.text
    assert [(m["tracking_code"], m["slot"]) for m in cut.json()["moved"]] == [(later, "12:00")]
    # Nobody was moved out of 08:00: under way, it keeps its seats and sells no more.
    assert seats(redis_sync, office, today, "08:00") == 2 and used(redis_sync, office, today, "08:00") == 2
    statuses = [(await client.get(f"/api/v1/bookings/{code}")).json()["status"] for code in codes]
    assert statuses == ["served", "no_show", "booked"]


async def test_a_cut_of_a_capped_day_is_finished_with_a_citizen_served_early_still_counted(
    client: Client, world: World, redis_sync: SyncRedis, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a capped day a citizen served before their slot keeps the seat counted (the cap is
    of people let in). A clerk's cut of that slot found it counting more than its holders,
    took that for a booking on its way to the record, and left the change "not finished":
    the minute's job applied the whole plan again every minute until the slot passed."""
    from app.capacity import keys
    from app.staff.models import StaffRole
    from tests.integration.test_console import account, sign_in

    office = await world.office(seats=1)
    headers = await staff_of(client, world, office)
    today, base = morning.date(), f"/api/v1/staff/offices/{office}"
    override = f"{base}/overrides/{today.isoformat()}"
    day = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30}
    opened = await client.put(override, json={"rules": [{**day, "seats": 2}], "reason": "دو باجه"}, headers=headers)
    assert opened.status_code == 200, opened.text
    await account(world, "regulator-cut", StaffRole.REGULATOR, None)
    restricted = await client.post(
        f"/api/v1/regulator/offices/{office}/restrict",
        json={"reason": "ازدحام", "cap_percent": 50},
        headers=await sign_in(client, "regulator-cut"),
    )
    assert restricted.status_code == 201, restricted.text
    codes = []
    for _ in range(2):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "15:00"), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    move_clock(monkeypatch, morning.replace(hour=10, minute=10))
    assert (await client.post(f"{base}/queue/{codes[0]}/check-in", headers=headers)).status_code == 200
    assert (await client.post(f"{base}/queue/{codes[0]}/served", headers=headers)).status_code == 200
    assert used(redis_sync, office, today, "15:00") == 2  # capped: kept

    move_clock(monkeypatch, morning.replace(hour=11))
    cut = await client.put(
        f"{override}?move_overflow=true", json={"rules": [{**day, "seats": 1}], "reason": "یک باجه"}, headers=headers
    )
    assert cut.status_code == 200, cut.text
    assert cut.json()["moved"] == []  # the one still to come keeps 15:00
    assert seats(redis_sync, office, today, "15:00") == 1
    assert redis_sync.hget(keys.PLANS_TO_APPLY, office) is None  # finished: nothing left to the job


async def test_a_cut_over_a_seat_counted_for_nobody_is_left_to_the_job_beside_one_served_early(
    client: Client, world: World, redis_sync: SyncRedis, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncapped, a citizen served early gave the seat back. Counted as the slot's holder, a
    cut that left a seat counted for a booking on its way to the record (not yet committed)
    was taken as finished: that booking landed in an hour the office no longer kept."""
    from app.capacity import keys

    office = await world.office(seats=1)
    headers = await staff_of(client, world, office)
    today, base = morning.date(), f"/api/v1/staff/offices/{office}"
    override = f"{base}/overrides/{today.isoformat()}"
    day = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 2}
    opened = await client.put(override, json={"rules": [day], "reason": "دو باجه"}, headers=headers)
    assert opened.status_code == 200, opened.text
    made = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "15:00"), headers=world.token()
    )
    early = made.json()["tracking_code"]
    move_clock(monkeypatch, morning.replace(hour=10, minute=10))
    assert (await client.post(f"{base}/queue/{early}/check-in", headers=headers)).status_code == 200
    assert (await client.post(f"{base}/queue/{early}/served", headers=headers)).status_code == 200
    assert used(redis_sync, office, today, "15:00") == 0  # given back
    redis_sync.hincrby(keys.office_day(office, today), keys.used_field("*", "15:00"), 1)  # on its way

    move_clock(monkeypatch, morning.replace(hour=11))
    cut = await client.put(
        f"{override}?move_overflow=true", json={"rules": [{**day, "closes": "14:00"}], "reason": "نیم روز"},
        headers=headers,
    )  # fmt: skip
    assert cut.status_code == 200, cut.text
    assert redis_sync.hget(keys.PLANS_TO_APPLY, office) is not None  # the job's, to move it once it lands
