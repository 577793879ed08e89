"""Nearby ranking and live load against a real Redis: GEO index, counters, caps."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from app.capacity import crowd_caps, keys
from app.capacity.plan import DayRule
from app.capacity.service import SeatRequest
from app.clock import Clock
from app.offices.models import OfficeStatus
from app.settings import Settings
from tests.conftest import Served, World, booking_body, count_sessions

Client = AsyncTestClient[Litestar]

# Three offices on a line east of a citizen at (35.70, 51.40): ~1 km, ~3 km, ~6 km.
ORIGIN = {"lat": 35.70, "lon": 51.40}


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(settings: Settings, settings_changes: dict[str, Any]) -> Settings:
    return settings.with_(**settings_changes)


# The instance hears no other's changes during the test: what it keeps is changed by its own
# searches and bookings alone. (Looking once a second, a look a second after the first search
# heard the recount's "every day changed" again, as a look hears the second before the last,
# and forgot every standing kept: on a slow machine, the test counted the wrong reads.)
ALONE = pytest.mark.parametrize("settings_changes", [{"read_cache_seconds": 60}])


async def three_offices(world: World) -> list[str]:
    offices = [await world.office(seats=2, lat=35.70, lon=51.40 + km / 90.4) for km in (1, 3, 6)]
    await world.rebuild()
    return offices


async def nearby(client: Client, **params: object) -> list[dict[str, object]]:
    response = await client.get("/api/v1/offices/nearby", params={"service": "101", **ORIGIN, **params})
    assert response.status_code == 200, response.text
    return response.json()["offices"]  # type: ignore[no-any-return]


async def test_least_busy_near_office_ranks_first(client: Client, world: World) -> None:
    near, middle, far = await three_offices(world)
    day = world.tomorrow()
    ranked = await nearby(client, date=day.isoformat())
    assert [o["code"] for o in ranked] == [near, middle, far]
    assert ranked[0]["distance_km"] < ranked[1]["distance_km"] < ranked[2]["distance_km"]
    assert ranked[0]["busyness"] == "low" and ranked[0]["busyness_fa"] == "خلوت"
    assert ranked[0]["next_free_slot"] == "08:00" and ranked[0]["next_free_slot_fa"] == "۸:۰۰"

    # Fill the nearest office for the whole day: it drops to the bottom, marked high.
    for slot_index in range(24):
        slot = f"{8 + slot_index // 2:02d}:{30 * (slot_index % 2):02d}"
        for _ in range(2):
            response = await client.post(
                "/api/v1/bookings", json=booking_body(near, world.national_id(), day, slot), headers=world.token()
            )
            assert response.status_code == 201
    ranked = await nearby(client, date=day.isoformat())
    assert [o["code"] for o in ranked] == [middle, far, near]
    assert ranked[2]["seats_free"] == 0 and ranked[2]["busyness"] == "high" and ranked[2]["next_free_slot"] is None
    assert ranked[2]["load"] == 1.0


async def test_waiting_people_and_restriction_rank_down(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    near, middle, far = await three_offices(world)
    clock = world.container.clock
    seven = dt.datetime.combine(clock.today(), dt.time(7, 0), tzinfo=clock.tz)  # every slot of today ahead
    today, tomorrow = seven.date().isoformat(), world.tomorrow().isoformat()

    async def ranked_on(day: str) -> list[dict[str, object]]:
        with monkeypatch.context() as at_seven:
            at_seven.setattr(Clock, "now", lambda self: seven)
            return await nearby(client, date=day)

    for day in (today, tomorrow):
        assert [o["code"] for o in await ranked_on(day)] == [near, middle, far]  # now kept
    # Told by another instance (the world's container): heard within the ttl. Reported at
    # the real time, as the reading judges a report's age by it.
    await world.container.load.report_waiting(office_code=near, count=20)
    await world.container.capacity.set_status(
        office_code=middle, status=OfficeStatus.RESTRICTED, cap_percent=50, today=clock.today()
    )
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    ranked = await ranked_on(today)
    assert [o["code"] for o in ranked] == [far, near, middle]
    assert ranked[1]["waiting_now"] == 20 and ranked[1]["busyness"] == "high"
    assert ranked[2]["restricted"] is True and ranked[2]["status"] == "restricted"
    # The room today says nothing of tomorrow: the office with the queue and an empty
    # tomorrow had ranked down, and been called busy, for tomorrow too.
    ranked = await ranked_on(tomorrow)
    assert [o["code"] for o in ranked] == [near, far, middle]
    assert ranked[0]["waiting_now"] == 0 and ranked[0]["busyness"] == "low"


async def test_blocked_offices_never_appear(client: Client, world: World) -> None:
    near, middle, far = await three_offices(world)
    assert len(await nearby(client, date=world.tomorrow().isoformat())) == 3
    await world.container.capacity.set_status(
        office_code=near, status=OfficeStatus.BLOCKED, cap_percent=100, today=world.container.clock.today()
    )
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)  # another instance's change
    ranked = await nearby(client, date=world.tomorrow().isoformat())
    assert [o["code"] for o in ranked] == [middle, far]


@ALONE
async def test_standings_are_kept_between_searches_and_worked_out_again_once_changed(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    near, middle, far = await three_offices(world)
    day = world.tomorrow()
    reads = client.app.state.container.capacity.reads  # the instance the client talks to
    read_for: list[list[str]] = []
    sums = reads.sums

    async def counted(codes: list[str], on: dt.date) -> object:
        read_for.append(sorted(codes))
        return await sums(codes, on)

    monkeypatch.setattr(reads, "sums", counted)
    first = await nearby(client, date=day.isoformat())
    assert read_for == [sorted([near, middle, far])]
    assert await nearby(client, date=day.isoformat()) == first  # all three kept: nothing read
    assert len(read_for) == 1
    response = await client.post(
        "/api/v1/bookings", json=booking_body(middle, world.national_id(), day, "08:00"), headers=world.token()
    )
    assert response.status_code == 201
    after = await nearby(client, date=day.isoformat())
    assert read_for[1:] == [[middle]]  # only the office booked at, at once
    assert next(o for o in after if o["code"] == middle)["seats_free"] == 47
    assert await nearby(client, service="102", date=day.isoformat())  # another service: its own
    assert read_for[2:] == [sorted([near, middle, far])]


@ALONE
async def test_todays_next_free_slot_follows_the_clock_while_the_standings_are_kept(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each search finds its next free slot from the kept standing at its own clock, ahead or
    behind another search's: from the next minute on, and none once the last has begun."""
    near, middle, far = await three_offices(world)
    clock = world.container.clock
    today = clock.today()
    now = [dt.time(10, 29)]
    monkeypatch.setattr(Clock, "now", lambda self: dt.datetime.combine(today, now[0], tzinfo=clock.tz))

    async def next_free_slots(at: dt.time) -> list[tuple[str, str | None]]:
        now[0] = at
        return [(o["code"], o["next_free_slot"]) for o in await nearby(client, date=today.isoformat())]

    assert await next_free_slots(dt.time(10, 29)) == [(near, "10:30"), (middle, "10:30"), (far, "10:30")]
    reads = client.app.state.container.capacity.reads
    sums = reads.sums
    monkeypatch.setattr(reads, "sums", None)  # kept until the next slot begins: none is read again
    assert await next_free_slots(dt.time(10, 29, 30)) == [(near, "10:30"), (middle, "10:30"), (far, "10:30")]
    monkeypatch.setattr(reads, "sums", sums)  # worked out again from 10:30 on (from the copy)
    assert await next_free_slots(dt.time(10, 30)) == [(near, "11:00"), (middle, "11:00"), (far, "11:00")]
    monkeypatch.setattr(reads, "sums", None)
    assert await next_free_slots(dt.time(10, 45)) == [(near, "11:00"), (middle, "11:00"), (far, "11:00")]
    monkeypatch.setattr(reads, "sums", sums)
    # The day's last slot begun: none left, all three last, nearest first.
    assert await next_free_slots(dt.time(19, 30)) == [(near, None), (middle, None), (far, None)]


@ALONE
async def test_today_only_the_slots_ahead_count(client: Client, world: World, morning: dt.datetime) -> None:
    """At 13:00 an empty morning is no free seat and no lighter load. An office with one seat
    left in the afternoon had ranked above one with a full morning and ten free after lunch:
    the whole day's sums said it was the quieter."""
    now = [morning]
    mornings_empty = await world.office(
        rules=[DayRule(opens="08:00", closes="12:00", seats=2), DayRule(opens="14:00", closes="16:00", seats=1)],
        lat=35.70, lon=51.40 + 1 / 90.4,
    )  # fmt: skip
    mornings_full = await world.office(
        rules=[DayRule(opens="08:00", closes="12:00", seats=1), DayRule(opens="14:00", closes="19:00", seats=1)],
        lat=35.70, lon=51.40 + 3 / 90.4,
    )  # fmt: skip
    await world.rebuild()
    day = morning.date()

    async def book(office: str, slot: str) -> None:
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text

    for slot in ("08:00", "08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "11:30"):
        await book(mornings_full, slot)
    for slot in ("14:30", "15:00", "15:30"):
        await book(mornings_empty, slot)

    async def search(at: dt.time) -> dict[str, dict[str, Any]]:
        now[0] = dt.datetime.combine(day, at, tzinfo=morning.tzinfo)
        return {o["code"]: o for o in await nearby(client, date=day.isoformat())}

    import app.clock

    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(app.clock.Clock, "now", lambda self: now[0])
        at_seven = await search(dt.time(7, 0))
        assert list(at_seven) == [mornings_empty, mornings_full]  # the whole day ahead: the emptier, nearer
        assert (at_seven[mornings_empty]["seats_free"], at_seven[mornings_full]["seats_free"]) == (17, 10)
        after_lunch = await search(dt.time(13, 0))
        assert list(after_lunch) == [mornings_full, mornings_empty]
        assert (after_lunch[mornings_empty]["seats_free"], after_lunch[mornings_empty]["load"]) == (1, 0.75)
        assert (after_lunch[mornings_full]["seats_free"], after_lunch[mornings_full]["load"]) == (10, 0.0)
        # Its last free slot begun, the office kept from 13:00 is worked out again: none left.
        begun = await search(dt.time(14, 0, 30))
        assert (begun[mornings_empty]["seats_free"], begun[mornings_empty]["next_free_slot"]) == (0, None)
        assert begun[mornings_empty]["open"] is True  # full for the rest of the day, not closed


async def test_a_closed_day_says_so_and_ranks_after_the_full_offices(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """A regulator's closure leaves its booked slots at no seats: nearby had shown the office
    as open and busy ("high"), as if full. It is shut (``open`` false) and ranks last, after
    the full offices, which may yet free a seat; the search page says it takes nobody that day."""
    near, middle, far = await three_offices(world)
    day = world.tomorrow()
    for slot_index in range(24):  # the middle one full
        slot = f"{8 + slot_index // 2:02d}:{30 * (slot_index % 2):02d}"
        for _ in range(2):
            booked = await client.post(
                "/api/v1/bookings", json=booking_body(middle, world.national_id(), day, slot), headers=world.token()
            )
            assert booked.status_code == 201, booked.text
    # The near one's day shut, as a closure leaves it: every slot at no seats.
    shut = keys.office_day(near, day)
    redis_sync.hset(shut, mapping={field: 0 for field in redis_sync.hkeys(shut) if field.startswith(b"s|")})
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    ranked = await nearby(client, date=day.isoformat())
    assert [(o["code"], o["open"]) for o in ranked] == [(far, True), (middle, True), (near, False)]
    page = await client.get(
        "/offices", params={"service": "101", **ORIGIN, "date": day.isoformat()}, headers={"Accept": "text/html"}
    )
    assert page.text.count("تعطیل") == 1 and "در این روز نوبت نمی‌دهد" in page.text


async def test_a_change_made_while_a_search_materialises_a_day_is_not_hidden_by_its_standings(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search reads its offices' counters, then counts into Redis a day it lacked (an await
    on SQL). A booking made meanwhile at an office it had already read must show on the next
    search: the standing worked out before it was forgotten with it, not kept for seconds."""
    near, _, far = await three_offices(world)
    day = world.tomorrow()
    container = client.app.state.container  # the instance the client talks to, on its own loop
    await world.container.redis.delete(keys.office_day(far, day))  # not in Redis: materialised
    materialise = container.capacity.materialise_day

    async def booked_meanwhile(**kwargs: Any) -> bool:
        seat = SeatRequest(office_code=near, day=day, pool="*", time="08:00", not_before=None, tracking_code="t")
        assert await container.capacity.reserve(seat) is not None  # a booking at this instance
        return await materialise(**kwargs)

    monkeypatch.setattr(container.capacity, "materialise_day", booked_meanwhile)
    first = await nearby(client, date=day.isoformat())
    monkeypatch.setattr(container.capacity, "materialise_day", materialise)
    assert next(o for o in first if o["code"] == near)["seats_free"] == 48  # read before the booking
    after = await nearby(client, date=day.isoformat())
    assert next(o for o in after if o["code"] == near)["seats_free"] == 47


async def test_an_office_the_directory_reads_again_is_weighed_again(client: Client, world: World) -> None:
    """Its template may have given the service a pool of its own: the standing goes with it."""
    near, middle, far = await three_offices(world)
    day = world.tomorrow()
    container = client.app.state.container
    await nearby(client, date=day.isoformat())
    assert {near, middle, far} <= set(container.load.standings.of("101", day, 0.0))
    await asyncio.to_thread(client.blocking_portal.call, container.offices.changed, middle)
    assert set(container.load.standings.of("101", day, 0.0)) == {near, far}


async def test_by_city_and_bad_input(client: Client, world: World) -> None:
    await three_offices(world)
    by_city = await client.get("/api/v1/offices/nearby", params={"service": "101", "city": "تهران", "limit": 2})
    assert by_city.status_code == 200 and len(by_city.json()["offices"]) == 2
    for params, status, code in [
        ({"service": "101", "lat": 48.0, "lon": 2.3}, 422, "invalid_input"),
        ({"service": "101"}, 422, "invalid_input"),
        ({"service": "101", "city": "آتلانتیس"}, 404, "city_not_found"),
        ({"service": "999", **ORIGIN}, 404, "service_not_found"),
        ({"service": "101", **ORIGIN, "limit": 500}, 422, "invalid_input"),
        ({"service": "101", **ORIGIN, "date": "2001-01-01"}, 422, "invalid_input"),
        ({"service": "101", "lat": "north", "lon": 51}, 422, "invalid_input"),
    ]:
        response = await client.get("/api/v1/offices/nearby", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["code"] == code


async def test_office_load_by_hour(client: Client, world: World) -> None:
    office = await world.office(seats=2)
    today = world.container.clock.today()
    await world.container.load.report_waiting(office_code=office, count=7)
    load = await client.get(f"/api/v1/offices/{office}/load")
    assert load.status_code == 200, load.text
    body = load.json()
    assert body["waiting_now"] == 7 and body["busyness"] == "medium"
    assert body["date"] == today.isoformat()
    assert body["hours"][0] == {"hour": "08:00", "seats": 4, "used": 0, "load": 0.0}
    assert sum(h["seats"] for h in body["hours"]) == body["seats"] == 48
    assert (await client.get("/api/v1/offices/999999/load")).status_code == 404


def two_hours(seats: int) -> list[DayRule]:
    """Four half-hour slots: a day small enough to fill in a test."""
    return [DayRule(opens="08:00", closes="10:00", slot_minutes=30, seats=seats)]


async def add_cap(world: World, *, percent: int, ends_on: dt.date, province_code: str | None = "01") -> int:
    today = world.container.clock.today()
    async with world.container.sessions() as session:
        cap = await crowd_caps.add(
            session=session,
            capacity=world.container.capacity,
            today=today,
            province_code=province_code,
            starts_on=today,
            ends_on=ends_on,
            percent=percent,
            reason="ستاد ملی کرونا",
            created_by="regulator",
        )
    return cap.id


async def test_crowd_cap_applies_to_new_bookings_at_once(client: Client, world: World) -> None:
    office = await world.office(rules=two_hours(2))  # 8 seats a day
    day = world.tomorrow()
    for slot in ("08:00", "08:00", "08:30"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
        )
        assert booked.status_code == 201
    cap_id = await add_cap(world, percent=25, ends_on=day)
    # 25% of the day's 8 seats is 2, and 3 are taken: the bookings stand, new ones are refused.
    for slot, code in (("09:00", "slot_full"), (None, "day_full")):
        refused = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
        )
        assert refused.status_code == 409 and refused.json()["code"] == code, refused.text
    slots = (
        await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    ).json()
    assert {s["free"] for s in slots["slots"]} == {0}
    later = day + dt.timedelta(days=1)
    uncapped = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), later, "08:00"), headers=world.token()
    )
    assert uncapped.status_code == 201
    async with world.container.sessions() as session:
        await crowd_caps.lift(
            session=session,
            capacity=world.container.capacity,
            today=world.container.clock.today(),
            cap_id=cap_id,
            now=world.container.clock.now(),
        )
    again = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "09:00"), headers=world.token()
    )
    assert again.status_code == 201


async def test_a_cap_limits_the_day_not_each_slot(client: Client, world: World) -> None:
    """An office with one seat a slot (most rural ICT offices) keeps half its day under a 50%
    cap; rounding each slot down would have closed it."""
    office = await world.office(rules=two_hours(1))  # 4 seats a day
    await world.rebuild()  # into the nearby index
    day = world.tomorrow()
    await add_cap(world, percent=50, ends_on=day)
    answers = [
        await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [201, 201, 409]
    assert [a.json().get("slot") for a in answers[:2]] == ["08:00", "08:30"]
    ranked = await nearby(client, date=day.isoformat())
    mine = next(o for o in ranked if o["code"] == office)
    assert (mine["seats_free"], mine["next_free_slot"]) == (0, None)


async def test_a_day_redis_lacks_is_counted_from_the_record_when_read(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slots and nearby open a session only for a day Redis lacks (a day rolled into the
    horizon, a wipe): that day comes back with the bookings the record holds. A search
    missing several days reads them all through one session."""
    office = await world.office(rules=two_hours(1))  # 4 seats a day
    neighbour = await world.office(rules=two_hours(1))
    await world.rebuild()  # into the nearby index
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "08:00"), headers=world.token()
    )
    assert booked.status_code == 201, booked.text

    redis_sync.delete(keys.office_day(office, day))
    answer = await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    assert answer.status_code == 200, answer.text
    assert [(s["time"], s["free"]) for s in answer.json()["slots"]] == [
        ("08:00", 0), ("08:30", 1), ("09:00", 1), ("09:30", 1)
    ]  # fmt: skip

    redis_sync.delete(keys.office_day(office, day), keys.office_day(neighbour, day))
    container = client.app.state.container
    opened = count_sessions(monkeypatch, container)
    found = {o["code"]: o for o in await nearby(client, date=day.isoformat())}
    assert (found[office]["seats_free"], found[office]["next_free_slot"]) == (3, "08:30")
    assert (found[neighbour]["seats_free"], found[neighbour]["next_free_slot"]) == (4, "08:00")
    assert redis_sync.exists(keys.office_day(office, day), keys.office_day(neighbour, day)) == 2
    assert len(opened) == 1


async def test_concurrent_bookings_under_a_cap_never_exceed_it(served: Served, world: World) -> None:
    office = await world.office(rules=two_hours(10))  # 40 seats a day
    day = world.tomorrow()
    await add_cap(world, percent=30, ends_on=day, province_code=None)
    responses = await asyncio.gather(
        *(
            served.post(
                "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
            )
            for _ in range(60)
        )
    )
    assert [r.status_code for r in responses].count(201) == 12


async def test_a_service_with_its_own_counter_shows_that_counters_seats(client: Client, world: World) -> None:
    """A passport desk (its own counter) closed for a day: the office has no seats for the
    service then, whatever its shared counter has, and nearby says so, as booking does."""
    from tests.integration.test_console import staff_of

    office = await world.office(
        rules=[
            DayRule(opens="08:00", closes="12:00", slot_minutes=30, seats=2),
            DayRule(opens="09:00", closes="10:00", slot_minutes=30, seats=1, service="103"),
        ],
        services=("101", "103"),
        lat=ORIGIN["lat"],
        lon=ORIGIN["lon"],
    )
    await world.rebuild()
    day = world.tomorrow()
    [desk] = await nearby(client, service="103", date=day.isoformat())
    assert (desk["seats_free"], desk["next_free_slot"]) == (2, "09:00")
    headers = await staff_of(client, world, office)
    shared_only = {"rules": [{"opens": "08:00", "closes": "12:00", "slot_minutes": 30, "seats": 2}], "reason": "-"}
    changed = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=shared_only, headers=headers
    )
    assert changed.status_code == 200, changed.text
    [desk] = await nearby(client, service="103", date=day.isoformat())
    assert (desk["seats_free"], desk["next_free_slot"]) == (0, None)
    refused = await client.post(
        "/api/v1/bookings", json={**booking_body(office, world.national_id(), day, None), "service_code": "103"},
        headers=world.token(),
    )  # fmt: skip
    assert refused.status_code in (409, 422), refused.text


async def test_a_slot_holding_more_than_its_seats_hides_no_other_slots_seats(
    client: Client, world: World, redis_sync: SyncRedis, morning: dt.datetime
) -> None:
    """A same-day cut leaves a slot whose citizens were served, or are checked in, holding more
    than its new seats. Booking and the slots page count each slot on its own: so do nearby
    and the office's load, which had summed the day and shown its free seats taken by them."""
    office = await world.office(seats=2)  # 24 slots of 2
    await world.rebuild()
    day = morning.date()  # at 07:00: every slot of the day ahead
    for _ in range(2):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
    redis_sync.hset(keys.office_day(office, day), keys.seats_field("*", "10:00"), 0)  # the cut: 10:00 closed
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)  # heard of, as another instance's
    found = {o["code"]: o for o in await nearby(client, date=day.isoformat(), limit="50")}
    assert found[office]["seats_free"] == 46  # every other slot's two
    slots = await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    assert sum(s["free"] for s in slots.json()["slots"]) == 46
    load = (await client.get(f"/api/v1/offices/{office}/load")).json()
    assert (load["seats"], load["used"]) == (48, 2)


async def test_a_day_redis_cannot_give_is_not_called_closed(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day Redis lacks even after materialising it (a race with a recount) is not known to
    take nobody: shown without a free slot, not as closed."""
    near, *_ = await three_offices(world)
    day = world.tomorrow()
    redis_sync.delete(keys.office_day(near, day))

    async def lost(**_: object) -> bool:
        return True  # written, and gone again before the read

    monkeypatch.setattr(client.app.state.container.capacity, "materialise_day", lost)
    ranked = await nearby(client, date=day.isoformat())
    assert [(o["code"], o["open"], o["next_free_slot"]) for o in ranked][-1] == (near, True, None)


async def test_an_office_loads_seats_under_a_cap_pool_by_pool(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """A cap bounds each pool's day, as a booking takes its seat: a shared pool full before a
    restriction took none of the passport desk's room, yet the office's load had summed them
    and shown the desk's seats gone."""
    office = await world.office(
        rules=[
            DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=4),
            DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=4, service="103"),
        ],
        services=("101", "103"),
    )
    await world.rebuild()
    today = world.container.clock.today()
    day_key = keys.office_day(office, today)
    redis_sync.hset(day_key, mapping={keys.used_field("*", "10:00"): 4, "_cap": 50})  # booked full, then capped
    await world.container.capacity.reads.told()
    load = (await client.get(f"/api/v1/offices/{office}/load")).json()
    assert (load["used"], load["seats"]) == (4, 6), load  # the desk's half of 4 still to take
    assert load["busyness"] == "medium"


async def test_an_office_restricted_to_no_seat_is_shown_closed_not_full(client: Client, world: World) -> None:
    """A 0% restriction (or a share of a small day that rounds to no seat) sells nothing, not
    even a freed seat: shown open and full, the office offered a line its join then refused."""
    near, *_ = await three_offices(world)
    day = world.tomorrow()
    await nearby(client, date=day.isoformat())  # their standings kept: the change must reach them
    await world.container.capacity.set_status(
        office_code=near, status=OfficeStatus.RESTRICTED, cap_percent=0, today=world.container.clock.today()
    )
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    ranked = await nearby(client, date=day.isoformat())
    assert [(o["code"], o["open"]) for o in ranked][-1] == (near, False)
    assert all(o["open"] for o in ranked if o["code"] != near)


async def test_a_blocked_offices_slots_show_no_seat_free(client: Client, world: World) -> None:
    """RESERVE refuses a blocked office: its slots had been answered with seats free that an
    API client would try, and be refused."""
    office = await world.office(rules=two_hours(2))
    day = world.tomorrow()
    params = {"service": "101", "date": day.isoformat()}
    assert {
        s["free"] for s in (await client.get(f"/api/v1/offices/{office}/slots", params=params)).json()["slots"]
    } == {2}
    await world.container.capacity.set_status(
        office_code=office, status=OfficeStatus.BLOCKED, cap_percent=100, today=world.container.clock.today()
    )
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    answer = (await client.get(f"/api/v1/offices/{office}/slots", params=params)).json()
    assert answer["status"] == "blocked" and {s["free"] for s in answer["slots"]} == {0}


async def test_a_citys_searches_spread_over_the_city_not_its_centres_thirty(client: Client, world: World) -> None:
    """A search by city has one origin, the city's centre: every one of them had weighed the
    same thirty central offices, and a city of hundreds sent all its citizens to those."""
    for n in range(60):  # a city's offices, each a hundred metres further out than the last
        await world.office(lat=35.69 + 0.001 * n, lon=51.39)
    await world.rebuild()
    shown: set[str] = set()
    for _ in range(12):
        found = await client.get("/api/v1/offices/nearby", params={"service": "101", "city": "تهران", "limit": 10})
        assert found.status_code == 200, found.text
        shown |= {office["code"] for office in found.json()["offices"]}
    # Equally empty, the nearer ones win each draw; but the draws differ (the same ten, each
    # time, before: the best of the same thirty).
    assert len(shown) > 15, sorted(shown)
    # A position's search is as it was: the nearest weighed, the same answer each time.
    at = {"service": "101", "lat": 35.69, "lon": 51.39, "limit": 10}
    answers = [
        [o["code"] for o in (await client.get("/api/v1/offices/nearby", params=at)).json()["offices"]] for _ in range(3)
    ]
    assert answers[0] == answers[1] == answers[2]


async def test_a_towns_search_always_weighs_the_towns_own_office(client: Client, world: World) -> None:
    """A town with one office, and forty around it further out: drawn from all of them at
    random, the town's own office had been left out of most of its searches."""
    own = await world.office(lat=35.69, lon=51.39)
    for n in range(40):
        await world.office(lat=35.69 + 0.12 + 0.002 * n, lon=51.39)  # 13 km out and more
    await world.rebuild()
    for _ in range(8):
        found = await client.get("/api/v1/offices/nearby", params={"service": "101", "city": "تهران", "limit": 10})
        assert own in [office["code"] for office in found.json()["offices"]]


async def test_a_day_capped_to_no_seat_shows_no_slot_and_offers_no_line(client: Client, world: World) -> None:
    """The office page read its slots full and offered the waitlist, which the join refused."""
    office = await world.office(rules=two_hours(2))
    day = world.tomorrow()
    params = {"service": "101", "date": day.isoformat()}
    assert (await client.get(f"/api/v1/offices/{office}/slots", params=params)).json()["slots"]
    await world.container.capacity.set_status(
        office_code=office, status=OfficeStatus.RESTRICTED, cap_percent=0, today=world.container.clock.today()
    )
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)
    assert (await client.get(f"/api/v1/offices/{office}/slots", params=params)).json()["slots"] == []
    page = await client.get(f"/offices/{office}", params=params, headers={"Accept": "text/html"})
    assert page.status_code == 200 and "/waitlist" not in page.text
