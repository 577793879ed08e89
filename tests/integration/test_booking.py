"""Booking against a real Redis and a real SQLite record, through the HTTP API."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import OperationalError

from app.booking.models import Booking, BookingStatus
from app.capacity import keys
from app.capacity.plan import DayRule
from app.clock import Clock
from app.container import Container
from app.errors import DomainError
from tests.conftest import Served, World, booking_body, count_sessions, fails_once, holds, watch_held

Client = AsyncTestClient[Litestar]


def used(redis: SyncRedis, office: str, day: dt.date, time: str, pool: str = "*") -> int:
    return int(redis.hget(keys.office_day(office, day), keys.used_field(pool, time)) or 0)


async def count_rows(container: Container, **where: Any) -> int:
    async with container.sessions() as session:
        query = select(func.count()).select_from(Booking)
        for column, value in where.items():
            query = query.where(getattr(Booking, column) == value)
        return int(await session.scalar(query) or 0)


async def test_race_of_500_for_10_seats_books_exactly_10(served: Served, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(seats=10)
    day = world.tomorrow()

    async def attempt() -> Any:
        return await served.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
        )

    responses = await asyncio.gather(*(attempt() for _ in range(500)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 10, sorted(set(statuses))
    assert statuses.count(409) == 490
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"slot_full"}
    assert used(redis_sync, office, day, "10:00") == 10
    assert await count_rows(world.container, slot_time="10:00", status=BookingStatus.BOOKED) == 10
    codes = {r.json()["tracking_code"] for r in responses if r.status_code == 201}
    assert len(codes) == 10


async def test_same_idempotency_key_books_once(
    client: Client, served: Served, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=5)
    day = world.tomorrow()
    headers = {**world.token("09121111111"), "Idempotency-Key": "retry-me-1"}
    body = booking_body(office, world.national_id(), day, "10:00")

    first, second = await asyncio.gather(
        served.post("/api/v1/bookings", json=body, headers=headers),
        served.post("/api/v1/bookings", json=body, headers=headers),
    )
    third = await client.post("/api/v1/bookings", json=body, headers=headers)

    done = [r for r in (first, second, third) if r.status_code == 201]
    assert {r.json()["tracking_code"] for r in done} == {
        first.json().get("tracking_code") or third.json()["tracking_code"]
    }
    assert third.status_code == 201 and third.headers.get("Idempotent-Replayed") == "true"
    for response in (first, second):
        assert response.status_code == 201 or response.json()["code"] == "request_in_progress"
    assert used(redis_sync, office, day, "10:00") == 1
    assert await count_rows(world.container) == 1

    changed = {**body, "slot": "11:00"}
    reused = await client.post("/api/v1/bookings", json=changed, headers=headers)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert used(redis_sync, office, day, "11:00") == 0


@pytest.mark.parametrize("died", ["a moment ago", "long enough ago"])
async def test_a_retry_of_a_request_that_died_after_taking_its_seat(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, died: str
) -> None:
    """A request killed between its seat and its commit (its instance gone, its task
    cancelled) left its Idempotency-Key naming a booking the record never got: every retry
    was answered 409 request_in_progress for a day, and a text message the SMS job carried
    out again was answered so and never booked. A moment after, the request may still be on
    its way: "in progress". Once older than any request takes, the retry books."""
    from app.booking.schemas import BookingCreate
    from app.capacity.service import ABANDONED_KEY_SECONDS, IDEMPOTENCY_TTL_SECONDS

    office = await world.office(seats=5)
    day = world.tomorrow()
    mobile = "09121114444"
    body = booking_body(office, world.national_id(), day, "10:00")
    parts = world.container

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise asyncio.CancelledError  # as the task is, its rows never sent

    monkeypatch.setattr(parts.bookings.writer, "write", killed)
    with pytest.raises(asyncio.CancelledError):
        await parts.bookings.book(
            sessions=parts.sessions, mobile=mobile, request=BookingCreate(**body), idempotency_key="dies"
        )
    monkeypatch.undo()
    assert used(redis_sync, office, day, "10:00") == 1 and await count_rows(world.container) == 0
    if died == "long enough ago":
        redis_sync.expire(keys.idempotency(office, mobile, "dies"), IDEMPOTENCY_TTL_SECONDS - ABANDONED_KEY_SECONDS)
    headers = {**world.token(mobile), "Idempotency-Key": "dies"}
    retry = await client.post("/api/v1/bookings", json=body, headers=headers)
    if died == "a moment ago":
        assert retry.status_code == 409 and retry.json()["code"] == "request_in_progress", retry.text
        assert await count_rows(world.container) == 0
        return
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers, retry.text
    assert await count_rows(world.container) == 1
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true", again.text
    assert again.json()["tracking_code"] == retry.json()["tracking_code"]
    # The dead request's seat stays counted (for nobody) until the night's recount.
    assert used(redis_sync, office, day, "10:00") == 2


@pytest.mark.parametrize("day_in_redis", [True, False])
async def test_a_double_tap_whose_steps_interleave_books_once(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, day_in_redis: bool
) -> None:
    """A double tap split across two instances (or on Redis Cluster, where a booking's two
    steps go to two nodes) ran as: A's HOLD, B's HOLD, B's RESERVE, A's RESERVE. B's hold was
    refused by A's (the same service that day), A's seat by B's key; each gave back what it
    took, nothing was booked, and B was answered "already booked". Now B's HOLD knows A's for
    the same request, and the key alone lets one of them book. (Called on the service: through
    the test client, requests run one after the other.)"""
    from app.booking.schemas import BookingCreate

    office = await world.office(seats=5)
    day = world.tomorrow()
    national_id, mobile = world.national_id(), "09121113333"
    body = booking_body(office, national_id, day, "10:00")
    if day_in_redis:  # else each of the two counts it in from the record, and reserves again
        await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    parts = world.container
    run_scripts, reserve = parts.capacity.auto.run_scripts, parts.capacity.scripts.reserve
    a_held, b_reserved, a_reserved = asyncio.Event(), asyncio.Event(), asyncio.Event()
    trips: list[str] = []

    async def interleaved(calls: Any, **options: Any) -> list[Any]:
        if calls[-1][0] is not reserve:
            return await run_scripts(calls, **options)
        trips.append("A" if not trips else "B")
        async with asyncio.timeout(10):
            if trips[-1] == "A":  # its HOLD, then its RESERVE once B's steps have run
                held = await run_scripts(calls[:-1], **options)
                a_held.set()
                await b_reserved.wait()
                reserved = await run_scripts(calls[-1:], **options)
                a_reserved.set()
                return [*held, *reserved]
            await a_held.wait()  # B: both steps, answered once A's RESERVE has run
            replies = await run_scripts(calls, **options)
            b_reserved.set()
            await a_reserved.wait()
            return replies

    async def tap() -> str:
        try:
            booked = await parts.bookings.book(
                sessions=parts.sessions, mobile=mobile, request=BookingCreate(**body), idempotency_key="double-tap"
            )
        except DomainError as refused:
            return refused.code
        return "replayed" if booked.replay else "booked"

    monkeypatch.setattr(parts.capacity.auto, "run_scripts", interleaved)
    answers = await asyncio.gather(tap(), tap())
    monkeypatch.undo()
    assert sorted(answers) in (["booked", "request_in_progress"], ["booked", "replayed"]), answers
    assert await count_rows(world.container) == used(redis_sync, office, day, "10:00") == 1
    assert redis_sync.hlen(keys.citizen_holds(national_id)) == 1
    headers = {**world.token(mobile), "Idempotency-Key": "double-tap"}
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true", again.text


@pytest.mark.parametrize("record_answers", [True, False], ids=["", "record away at the look-up"])
@pytest.mark.parametrize("seats", [1, 2], ids=["slot full", "seat free"])
async def test_a_retry_a_day_later_whose_key_redis_forgot_is_answered_with_its_booking(
    client: Client,
    world: World,
    redis_sync: SyncRedis,
    monkeypatch: pytest.MonkeyPatch,
    seats: int,
    record_answers: bool,
) -> None:
    """Redis keeps a request's key a day; the record keeps it for good. A form sent again a
    day later (Back, then "book") was answered "slot full" for the citizen's own booking, or
    took a second seat until the record refused it. With the record away as it is asked,
    the retry goes on as a new booking, and takes nothing it keeps."""
    office = await world.office(seats=seats)
    day = world.tomorrow()
    national_id, mobile = world.national_id(), "09121114444"
    headers = {**world.token(mobile), "Idempotency-Key": "a-day-later"}
    body = booking_body(office, national_id, day, "10:00")
    first = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert first.status_code == 201, first.text
    redis_sync.delete(keys.idempotency(office, mobile, "a-day-later"))  # its day in Redis is over
    if not record_answers:
        bookings = client.app.state.container.bookings
        fails_once(
            monkeypatch,
            bookings,
            "by_idempotency_key",
            OperationalError("SELECT", {}, Exception("the record went away")),
        )
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    if record_answers or seats == 2:  # (a free seat: the insert's unique key answers with the booking)
        assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true", again.text
        assert again.json()["tracking_code"] == first.json()["tracking_code"]
    else:
        assert again.status_code == 409 and again.json()["code"] == "slot_full", again.text
    assert await count_rows(world.container) == used(redis_sync, office, day, "10:00") == 1
    assert redis_sync.hlen(keys.citizen_holds(national_id)) == 1


@pytest.mark.parametrize("redis_has_the_key", [True, False])
async def test_a_retry_after_a_suspension_is_answered_with_its_booking(
    client: Client, world: World, redis_sync: SyncRedis, redis_has_the_key: bool
) -> None:
    """Suspended for no-shows after the booking went through, the citizen's retry (the same
    request, its answer lost) was refused "suspended", as if nothing had been booked. The
    suspension bars new bookings; the one made stands, and the retry is answered with it."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    national_id, mobile = world.national_id(), "09121115555"
    headers = {**world.token(mobile), "Idempotency-Key": "before-the-suspension"}
    body = booking_body(office, national_id, day, "10:00")
    first = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert first.status_code == 201, first.text
    if not redis_has_the_key:
        redis_sync.delete(keys.idempotency(office, mobile, "before-the-suspension"))
    today = world.container.clock.today()
    await world.container.capacity.suspend(national_id=national_id, until=today + dt.timedelta(days=7), today=today)
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true", again.text
    assert again.json()["tracking_code"] == first.json()["tracking_code"]
    other = {**headers, "Idempotency-Key": "after-the-suspension"}
    next_day = day + dt.timedelta(days=1)
    refused = await client.post("/api/v1/bookings", json=booking_body(office, national_id, next_day), headers=other)
    assert refused.status_code == 403 and refused.json()["code"] == "booking_suspended", refused.text
    assert await count_rows(world.container) == used(redis_sync, office, day, "10:00") == 1
    assert used(redis_sync, office, next_day, "10:00") == 0


async def test_failed_insert_leaves_the_seat_free(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(seats=1)
    day = world.tomorrow()
    national_id = world.national_id()
    # The day is in Redis already; from here on only the insert can fail.
    await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    async with world.container.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE bookings RENAME TO bookings_away"))
    failed = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token())
    assert failed.status_code == 503, failed.text
    assert failed.headers.get("Retry-After")
    assert used(redis_sync, office, day, "10:00") == 0
    assert redis_sync.hlen(keys.citizen_holds(national_id)) == 0

    async with world.container.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE bookings_away RENAME TO bookings"))
    retried = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token())
    assert retried.status_code == 201
    assert used(redis_sync, office, day, "10:00") == 1


@pytest.mark.parametrize("collides", ["once", "every time"])
async def test_a_tracking_code_drawn_twice_is_drawn_again(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, collides: str
) -> None:
    """The code drawn for a booking was another booking's (50 random bits: rare, and rarer
    to see twice running): its insert was refused, and the citizen, who had no booking, was
    answered "already booked that day". Now it is drawn again; a second collision is a 503
    that books nothing and keeps nobody's seat."""
    from app.booking import service as booking_service

    office = await world.office(seats=5)
    day = world.tomorrow()
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    taken = first.json()["tracking_code"]
    draw = booking_service.new_tracking_code
    draws = iter([taken] if collides == "once" else [taken, taken])
    monkeypatch.setattr(booking_service, "new_tracking_code", lambda: next(draws, None) or draw())

    national_id = world.national_id()
    headers = {**world.token("09121112222"), "Idempotency-Key": "drawn-twice"}
    body = booking_body(office, national_id, day)
    second = await client.post("/api/v1/bookings", json=body, headers=headers)
    if collides == "once":
        assert second.status_code == 201, second.text
        assert second.json()["tracking_code"] != taken
        assert used(redis_sync, office, day, "10:00") == await count_rows(world.container) == 2
    else:
        assert second.status_code == 503 and second.headers["Retry-After"] == "1", second.text
        assert used(redis_sync, office, day, "10:00") == await count_rows(world.container) == 1
        assert redis_sync.hlen(keys.citizen_holds(national_id)) == 0
        again = await client.post("/api/v1/bookings", json=body, headers=headers)  # the citizen's retry
        assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers, again.text
    mine = await client.get(f"/api/v1/bookings/{taken}")
    assert mine.json()["status"] == "booked" and mine.json()["office_code"] == office


async def test_a_tracking_code_drawn_twice_for_a_waitlist_join_is_drawn_again(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.booking import service as booking_service

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    taken = booked.json()["tracking_code"]
    draw = booking_service.new_tracking_code
    draws = iter([taken])
    monkeypatch.setattr(booking_service, "new_tracking_code", lambda: next(draws, None) or draw())
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201 and joined.json()["status"] == "waitlisted", joined.text
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == [joined.json()["tracking_code"].encode()]
    assert joined.json()["tracking_code"] != taken


async def test_wiping_redis_and_rebuilding_gives_the_same_counters(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    offices = [await world.office(seats=3) for _ in range(3)]
    day = world.tomorrow()
    for index, office in enumerate(offices):
        for slot in ("08:00", "08:30", "12:00")[: index + 1]:
            for _ in range(index + 1):
                response = await client.post(
                    "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
                )
                assert response.status_code == 201
    cancelled = await client.post(
        "/api/v1/bookings",
        json=booking_body(offices[0], world.national_id(), day, "09:00"),
        headers=world.token("09125550000"),
    )
    cancel = await client.post(
        f"/api/v1/bookings/{cancelled.json()['tracking_code']}/cancel", headers=world.token("09125550000")
    )
    assert cancel.status_code == 200

    def snapshot() -> dict[str, dict[bytes, bytes]]:
        found = {}
        for key in redis_sync.scan_iter(match=keys.OFFICE_DAY_PATTERN):
            counters = redis_sync.hgetall(key)
            assert counters.pop(b"_count")  # which count wrote them: a new one each rebuild
            found[key.decode()] = counters
        for key in redis_sync.scan_iter(match=keys.CITIZEN_HOLDS_PATTERN):
            found[key.decode()] = redis_sync.hgetall(key)
        return found

    async with world.container.sessions() as session:
        await world.container.capacity.rebuild(session=session, today=world.container.clock.today())
    before = snapshot()
    assert used(redis_sync, offices[2], day, "12:00") == 3
    async with watch_held():  # its own recount, not the watch's too
        redis_sync.flushdb()
        assert snapshot() == {}
        async with world.container.sessions() as session:
            await world.container.capacity.rebuild(session=session, today=world.container.clock.today())
        assert snapshot() == before


async def test_a_booking_a_slots_read_and_a_search_open_no_session(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot paths never touch the record through the request (a booking's rows go in
    through the group commit's own connections): a session made for each had cost a slots
    read an eighth of its instructions. They open one only when they need it."""
    office = await world.office(seats=2)
    await world.rebuild()  # every day in Redis, the office in the nearby index
    day = world.tomorrow()
    container: Container = client.app.state.container
    opened = count_sessions(monkeypatch, container)
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    slots = await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    assert slots.status_code == 200, slots.text
    found = await client.get(
        "/api/v1/offices/nearby", params={"service": "101", "lat": "35.7", "lon": "51.4", "date": day.isoformat()}
    )
    assert found.status_code == 200 and office in [o["code"] for o in found.json()["offices"]], found.text
    assert opened == []


async def test_day_missing_from_redis_is_rebuilt_on_first_booking(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=2)
    day = world.tomorrow()
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert first.status_code == 201
    redis_sync.delete(keys.office_day(office, day))
    second = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert second.status_code == 201
    third = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert third.status_code == 409
    assert used(redis_sync, office, day, "10:00") == 2


async def test_earliest_free_slot_when_none_given(client: Client, world: World) -> None:
    office = await world.office(seats=1)
    day = world.tomorrow()
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    second = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert (first.json()["slot"], second.json()["slot"]) == ("08:00", "08:30")


async def test_cancel_frees_the_seat_at_once(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(seats=1)
    day = world.tomorrow()
    owner = world.token("09123334444")
    booked = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    code = booked.json()["tracking_code"]
    full = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert full.status_code == 409

    stranger = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09127778888"))
    assert stranger.status_code == 403 and stranger.json()["code"] == "not_your_booking"
    anonymous = await client.post(f"/api/v1/bookings/{code}/cancel")
    assert anonymous.status_code == 401

    cancelled = await client.post(f"/api/v1/bookings/{code.lower()}/cancel", headers=owner)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert used(redis_sync, office, day, "10:00") == 0
    again = await client.post(f"/api/v1/bookings/{code}/cancel", headers=owner)
    assert again.status_code == 409 and again.json()["code"] == "booking_not_active"
    # A retry whose first answer was lost can tell it went through (its "status" had
    # replaced the HTTP status, then been dropped).
    assert again.json()["booking_status"] == "cancelled" and again.json()["status"] == 409
    rebooked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert rebooked.status_code == 201


async def test_lookup_by_tracking_code_in_any_case(client: Client, world: World) -> None:
    office = await world.office()
    day = world.tomorrow()
    national_id = world.national_id()
    booked = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token())
    code = booked.json()["tracking_code"]
    assert len(code) == 10
    found = await client.get(f"/api/v1/bookings/{code[:5].lower()}-{code[5:]}")
    assert found.status_code == 200
    view = found.json()
    assert view["tracking_code"] == code and view["office_code"] == office and view["slot"] == "10:00"
    assert national_id not in view["national_id"] and view["national_id"].endswith(national_id[-4:])
    assert "ساعت ۱۰:۰۰" in view["when_fa"]
    missing = await client.get("/api/v1/bookings/ABCDEFGHJK")
    assert missing.status_code == 404 and missing.json()["code"] == "booking_not_found"
    malformed = await client.get("/api/v1/bookings/xyz")
    assert malformed.status_code == 422 and malformed.json()["field"] == "tracking_code"


async def test_citizen_limits_hold_against_a_race_across_many_offices(
    served: Served, world: World, redis_sync: SyncRedis
) -> None:
    offices = [await world.office(seats=5) for _ in range(20)]
    day = world.tomorrow()
    national_id = world.national_id()
    # Each from a phone of its own: one phone's twenty at once meet its own allowance
    # (tests.integration.test_mobile_allowance), not the citizen's limits.
    same_day = await asyncio.gather(
        *(
            served.post("/api/v1/bookings", json=booking_body(o, national_id, day), headers=world.token())
            for o in offices
        )
    )
    assert [r.status_code for r in same_day].count(201) == 1
    assert {r.json()["code"] for r in same_day if r.status_code != 201} == {"already_booked"}

    # Ten different days at ten offices at once: the limit of 3 active bookings holds.
    days = [day + dt.timedelta(days=i) for i in range(1, 11)]
    spread = await asyncio.gather(
        *(
            served.post("/api/v1/bookings", json=booking_body(o, national_id, d, service="102"), headers=world.token())
            for o, d in zip(offices, days, strict=False)
        )
    )
    assert [r.status_code for r in spread].count(201) == 2
    assert {r.json()["code"] for r in spread if r.status_code != 201} == {"too_many_bookings"}
    assert await count_rows(world.container, national_id=national_id) == 3
    total_used = sum(used(redis_sync, o, d, "10:00") for o in offices for d in [day, *days])
    assert total_used == 3


async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=1)
    blocked = await world.office(status="blocked")
    day = world.tomorrow()
    headers = world.token()
    good = booking_body(office, world.national_id(), day)
    cases: list[tuple[dict[str, Any] | str, int, str]] = [
        ({**good, "national_id": "1111111111"}, 422, "invalid_input"),
        ({**good, "national_id": "0499370898"}, 422, "invalid_input"),
        ({**good, "office_code": "999999"}, 404, "office_not_found"),
        ({**good, "service_code": "999"}, 404, "service_not_found"),
        ({**good, "service_code": "103"}, 422, "service_not_offered"),
        ({**good, "date": (day + dt.timedelta(days=30)).isoformat()}, 422, "invalid_input"),
        ({**good, "date": (day - dt.timedelta(days=3)).isoformat()}, 422, "invalid_input"),
        ({**good, "date": "not-a-date"}, 422, "invalid_input"),
        ({**good, "slot": "10:15"}, 422, "no_such_slot"),
        ({**good, "slot": "25:00"}, 422, "invalid_input"),
        ({**good, "office_code": blocked}, 403, "office_blocked"),
        ({k: v for k, v in good.items() if k != "national_id"}, 400, "malformed_request"),
        ({**good, "unexpected": 1}, 400, "malformed_request"),
        ("{not json", 400, "malformed_request"),
    ]
    for body, status, code in cases:
        if isinstance(body, str):
            response = await client.post(
                "/api/v1/bookings", content=body, headers={**headers, "Content-Type": "application/json"}
            )
        else:
            response = await client.post("/api/v1/bookings", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        problem = response.json()
        assert problem["code"] == code, (body, problem)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["message_fa"] and problem["message_en"] and problem["type"].endswith(code)
    no_token = await client.post("/api/v1/bookings", json=good)
    assert no_token.status_code == 401
    bad_token = await client.post("/api/v1/bookings", json=good, headers={"Authorization": "Bearer nope"})
    assert bad_token.status_code == 401
    assert await count_rows(world.container) == 0
    # No slot of the day taken (a bad slot read as "the earliest free" would take 08:00).
    taken = redis_sync.hgetall(keys.office_day(office, day))
    assert [(name, count) for name, count in taken.items() if name.startswith(b"u|") and int(count)] == []
    # The refusals that reached Redis (no such slot, a blocked office) held nothing either:
    # left, the citizen was told "already booked" that day.
    assert holds(redis_sync, good["national_id"]) == []
    booked = await client.post("/api/v1/bookings", json=good, headers=headers)
    assert booked.status_code == 201, booked.text


async def test_persian_and_arabic_digits_are_accepted(client: Client, world: World) -> None:
    office = await world.office(seats=2)
    day = world.tomorrow()
    to_fa = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
    to_ar = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    body = {
        "national_id": "0499370899".translate(to_fa),
        "office_code": office.translate(to_ar),
        "service_code": "101".translate(to_fa),
        "date": day.isoformat().translate(to_fa),
        "slot": "10:00".translate(to_ar),
    }
    response = await client.post("/api/v1/bookings", json=body, headers=world.token())
    assert response.status_code == 201, response.text
    assert response.json()["office_code"] == office


async def test_a_past_slot_of_today_cannot_be_booked(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused with the code clients know, and a message that says why: "no slot at that
    time" had told the citizen who picked 10:00 at 10:05 that the office never had one."""
    office = await world.office(rules=None, seats=2)
    clock = world.container.clock
    today = clock.today()
    monkeypatch.setattr(Clock, "now", lambda self: dt.datetime.combine(today, dt.time(10, 5), tzinfo=clock.tz))
    begun = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "10:00"), headers=world.token()
    )
    assert begun.status_code == 422 and begun.json()["code"] == "no_such_slot", begun.text
    assert begun.json()["message_en"] == "That slot has begun; choose a later one."
    never = await client.post(  # 30-minute slots: none at 07:15, begun or not
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "07:15"), headers=world.token()
    )
    assert never.status_code == 422 and never.json()["message_en"] == "The office has no slot at that time."
    later = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "10:30"), headers=world.token()
    )
    assert later.status_code == 201, later.text


@pytest.mark.parametrize(("now", "listed_from"), [("10:29", "10:30"), ("10:30", "11:00")])
async def test_todays_slots_are_listed_from_the_next_minute_on(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, now: str, listed_from: str
) -> None:
    # A slot that starts this minute has started: listed, as booked, from the minute after.
    office = await world.office(seats=2)
    today = world.container.clock.today()
    at = dt.datetime.combine(today, dt.time.fromisoformat(now), tzinfo=world.container.clock.tz)
    monkeypatch.setattr(Clock, "now", lambda self: at)
    response = await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": today.isoformat()})
    assert response.status_code == 200, response.text
    times = [slot["time"] for slot in response.json()["slots"]]
    assert times[0] == listed_from and times[-1] == "19:30"
    assert times == sorted(set(times))  # each once, in order


async def test_a_service_with_its_own_counter_lists_its_own_slots(client: Client, world: World) -> None:
    office = await world.office(
        rules=[
            DayRule(opens="08:00", closes="12:00", slot_minutes=60, seats=3),
            DayRule(opens="09:30", closes="11:30", slot_minutes=30, seats=1, service="102"),
        ]
    )
    day = world.tomorrow()

    async def slots(service: str) -> list[tuple[str, int]]:
        response = await client.get(
            f"/api/v1/offices/{office}/slots", params={"service": service, "date": day.isoformat()}
        )
        assert response.status_code == 200, response.text
        return [(slot["time"], slot["seats"]) for slot in response.json()["slots"]]

    assert await slots("101") == [("08:00", 3), ("09:00", 3), ("10:00", 3), ("11:00", 3)]
    assert await slots("102") == [("09:30", 1), ("10:00", 1), ("10:30", 1), ("11:00", 1)]


async def test_blocked_status_bites_in_redis_at_once(client: Client, world: World) -> None:
    from app.offices.models import OfficeStatus

    office = await world.office(seats=3)
    day = world.tomorrow()
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert first.status_code == 201
    # Only Redis is told (the record still says active): the reserve script alone must refuse.
    await world.container.capacity.set_status(
        office_code=office, status=OfficeStatus.BLOCKED, cap_percent=100, today=world.container.clock.today()
    )
    response = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert response.status_code == 403 and response.json()["code"] == "office_blocked"


async def test_a_retried_cancel_frees_the_limit_its_first_try_left(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, redis_sync: SyncRedis
) -> None:
    """The first cancel committed, but the citizen's limit was not freed (Redis away a moment;
    or the answer lost, so the citizen tries again): the retry frees it."""
    office = await world.office()
    national_id, owner, day = world.national_id(), world.token(), world.tomorrow()
    booked = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=owner)
    code = booked.json()["tracking_code"]
    capacity = client.app.state.container.capacity
    unhold = capacity.unhold

    async def away(**_: Any) -> None:
        raise RedisConnectionError("Redis away a moment")

    monkeypatch.setattr(capacity, "unhold", away)
    assert (await client.post(f"/api/v1/bookings/{code}/cancel", headers=owner)).status_code == 200
    monkeypatch.setattr(capacity, "unhold", unhold)
    stuck = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=owner)
    assert stuck.status_code == 409 and stuck.json()["code"] == "already_booked"
    other = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert other.status_code == 201 and used(redis_sync, office, day, "10:00") == 1
    retried = await client.post(f"/api/v1/bookings/{code}/cancel", headers=owner)
    assert retried.status_code == 409 and retried.json()["code"] == "booking_not_active"
    assert used(redis_sync, office, day, "10:00") == 1  # the seat is not given back twice: the other's kept
    again = await client.post("/api/v1/bookings", json=booking_body(office, national_id, day), headers=owner)
    assert again.status_code == 201, again.text


async def test_an_office_with_no_plan_is_closed_not_unavailable(client: Client, world: World) -> None:
    """A 503 (with Retry-After) had clients retry for ever: nothing would change."""
    from app.capacity.models import CapacityTemplate

    office = await world.office()
    async with world.container.sessions() as session:
        await session.execute(delete(CapacityTemplate))
        await session.commit()
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    for refused in (booked, joined):
        assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 0


async def test_today_past_the_last_slot_is_said_so_not_that_the_office_is_closed(
    client: Client, world: World, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 18:00 a booking for today at an office open till 20:00 was told «this office is
    closed on that day»: the code stays ``office_closed`` (the API's), the words say the day's
    slots are over. A day with no plan is still "closed"."""
    from app.capacity.plan import DayRule
    from app.clock import Clock

    office = await world.office(rules=[DayRule(opens="08:00", closes="18:00", slot_minutes=30, seats=2)])
    late = morning.replace(hour=17, minute=45)
    monkeypatch.setattr(Clock, "now", lambda self: late)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), late.date(), None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text
    assert "تمام شده" in refused.json()["message_fa"] and "تعطیل" not in refused.json()["message_fa"]


async def test_a_slot_a_cut_removed_is_forgotten_from_the_days_times_once_its_last_booking_goes(
    client: Client, world: World, redis_sync: SyncRedis, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clerk's cut keeps a removed slot (0 seats) while it has bookings. Its last booking
    moved or cancelled, the slot went, but RESERVE's list of the day's times kept it: past
    the day's real last slot a booking was told "the day is full", not "today's are over"."""
    from app.capacity.plan import DayRule
    from app.clock import Clock

    office = await world.office(rules=[DayRule(opens="08:00", closes="18:00", slot_minutes=30, seats=1)])
    mobile = "09125558801"
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), morning.date(), "17:30"),
        headers=world.token(mobile),
    )  # fmt: skip
    assert booked.status_code == 201, booked.text
    first_free = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), morning.date(), None), headers=world.token()
    )
    assert first_free.status_code == 201, first_free.text
    day = keys.office_day(office, morning.date())
    assert redis_sync.hexists(day, "t|*")  # the day's times, listed by a booking with no slot
    redis_sync.hset(day, keys.seats_field("*", "17:30"), 0)  # cut, kept for its booking
    late = morning.replace(hour=17, minute=10)
    monkeypatch.setattr(Clock, "now", lambda self: late)
    cancelled = await client.post(
        f"/api/v1/bookings/{booked.json()['tracking_code']}/cancel", headers=world.token(mobile)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert not redis_sync.hexists(day, keys.seats_field("*", "17:30"))
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), late.date(), None), headers=world.token()
    )
    assert refused.status_code == 409 and refused.json()["code"] == "office_closed", refused.text
    assert "تمام شده" in refused.json()["message_fa"]


async def test_a_join_today_past_the_last_slot_is_said_so_too(
    client: Client, world: World, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waitlist's words, as a booking's: today's slots are over, not "closed that day";
    and nothing is left of the join (no row, no hold)."""
    from app.capacity.plan import DayRule
    from app.clock import Clock

    office = await world.office(rules=[DayRule(opens="08:00", closes="18:00", slot_minutes=30, seats=1)])
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), morning.date(), "17:30"),
        headers=world.token(),
    )  # fmt: skip
    assert booked.status_code == 201, booked.text
    late = morning.replace(hour=17, minute=45)
    monkeypatch.setattr(Clock, "now", lambda self: late)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), late.date(), None), headers=world.token()
    )
    assert joined.status_code == 409 and joined.json()["code"] == "office_closed", joined.text
    assert "تمام شده" in joined.json()["message_fa"]
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 1
