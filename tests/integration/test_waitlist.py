"""The waitlist: a freed seat goes to the first in line in the same step as the release."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import select

from app.booking.models import Booking
from app.capacity import keys
from app.settings import Settings
from app.sms.backends import OUTBOX
from tests.conftest import Deliver, Served, World, booking_body, fails_once, holds, watch_held
from tests.integration.test_failures import lose_the_commits_answer

Client = AsyncTestClient[Litestar]


def one_slot_office_rules() -> list[Any]:
    from app.capacity.plan import DayRule

    return [DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)]


async def statuses(world: World, office: str) -> dict[str, tuple[str, str]]:
    async with world.container.sessions() as session:
        rows = await session.execute(select(Booking.tracking_code, Booking.status, Booking.slot_time))
        return {code: (status.value, time) for code, status, time in rows}


async def test_join_only_when_full_and_cancel_promotes_the_first(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    early = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert early.status_code == 409 and early.json()["code"] == "seats_available"

    owner = world.token("09120000001")
    booked = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    assert booked.status_code == 201
    first_mobile, second_mobile = "09120000002", "09120000003"
    first = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token(first_mobile)
    )
    second = await client.post(
        "/api/v1/waitlist",
        json=booking_body(office, world.national_id(), day, None),
        headers=world.token(second_mobile),
    )
    assert first.status_code == 201 and first.json()["status"] == "waitlisted"
    assert (first.json()["waitlist_position"], second.json()["waitlist_position"]) == (1, 2)

    cancel = await client.post(f"/api/v1/bookings/{booked.json()['tracking_code']}/cancel", headers=owner)
    assert cancel.status_code == 200
    promoted = (await client.get(f"/api/v1/bookings/{first.json()['tracking_code']}")).json()
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")
    still = (await client.get(f"/api/v1/bookings/{second.json()['tracking_code']}")).json()
    assert still["status"] == "waitlisted"
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00"))) == 1
    await deliver()
    assert any(first_mobile in str(m) and "رسید" in m.decode() for m in redis_sync.lrange(OUTBOX, 0, 20))


async def test_a_place_in_line_is_shown_as_one_not_as_a_booking(client: Client, world: World) -> None:
    """The page announced a join as "your appointment is registered", the place in line
    never shown: a citizen on a small screen went to the office."""
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09120000001")
    )
    assert booked.status_code == 201, booked.text
    codes = []
    for mobile in ("09120000002", "09120000003"):
        joined = await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token(mobile)
        )
        assert joined.status_code == 201, joined.text
        codes.append(joined.json()["tracking_code"])
    looked_up = [(await client.get(f"/api/v1/bookings/{code}")).json()["waitlist_position"] for code in codes]
    assert looked_up == [1, 2]
    assert (await client.get(f"/api/v1/bookings/{booked.json()['tracking_code']}")).json()["waitlist_position"] is None
    page = await client.get(f"/bookings/{codes[1]}?new=1")
    assert "در فهرست انتظار ثبت شدید" in page.text and "نوبت شما ثبت شد" not in page.text
    assert "نفر ۲ در صف" in page.text


async def test_a_day_its_clerk_closes_ends_its_line_and_tells_those_in_it(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """Closed by its clerk, the day's line could never move, and its place held the citizen's
    one booking of the service that day: at no other office could they book it. Nobody was
    told, and the night cancelled it without a word."""
    from tests.integration.test_console import staff_of

    office, other = await world.office(rules=one_slot_office_rules()), await world.office()
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09120000001")
    )
    assert booked.status_code == 201, booked.text
    waiting_id, waiting = world.national_id(), world.token("09120000002")
    joined = await client.post("/api/v1/waitlist", json=booking_body(office, waiting_id, day, None), headers=waiting)
    assert joined.status_code == 201, joined.text
    clerk = await staff_of(client, world, office)
    closed = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}?move_overflow=true",
        json={"rules": [], "reason": "تعمیرات"},
        headers=clerk,
    )
    assert closed.status_code == 200, closed.text
    ended = (await client.get(f"/api/v1/bookings/{joined.json()['tracking_code']}")).json()
    assert ended["status"] == "cancelled"
    assert not redis_sync.exists(keys.waitlist(office, day, "*"))
    # Free of it, the citizen books the service elsewhere that day.
    elsewhere = await client.post("/api/v1/bookings", json=booking_body(other, waiting_id, day), headers=waiting)
    assert elsewhere.status_code == 201, elsewhere.text
    await deliver()
    assert any("09120000002" in str(m) and "روز یا دفتر دیگری" in m.decode() for m in redis_sync.lrange(OUTBOX, 0, 50))


async def test_leaving_the_waitlist(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    owner = world.token("09120000011")
    booked = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    leaver = world.token("09120000012")
    queued = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=leaver
    )
    left = await client.post(f"/api/v1/bookings/{queued.json()['tracking_code']}/cancel", headers=leaver)
    assert left.status_code == 200 and left.json()["status"] == "cancelled"
    assert redis_sync.llen(keys.waitlist(office, day, "*")) == 0
    await client.post(f"/api/v1/bookings/{booked.json()['tracking_code']}/cancel", headers=owner)
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00"))) == 0


async def test_cancel_in_a_full_slot_with_50_waiting_under_a_race(
    client: Client, served: Served, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    owner = world.token("09121000000")
    booked = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    waiting = []
    for i in range(50):
        joined = await client.post(
            "/api/v1/waitlist",
            json=booking_body(office, world.national_id(), day, None),
            headers=world.token(f"0912200{i:04d}"),
        )
        assert joined.status_code == 201
        waiting.append(joined.json()["tracking_code"])

    async def new_booking() -> Any:
        return await served.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )

    results = await asyncio.gather(
        *(new_booking() for _ in range(100)),
        served.post(f"/api/v1/bookings/{booked.json()['tracking_code']}/cancel", headers=owner),
        *(new_booking() for _ in range(100)),
    )
    assert results[100].status_code == 200
    assert all(r.status_code == 409 for i, r in enumerate(results) if i != 100)
    state = await statuses(world, office)
    holders = [code for code, (status, _) in state.items() if status == "booked"]
    assert holders == [waiting[0]]
    assert sum(1 for status, _ in state.values() if status == "waitlisted") == 49
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00"))) == 1
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == [c.encode() for c in waiting[1:]]


async def test_waitlist_entries_count_against_the_limits(client: Client, world: World) -> None:
    offices = [await world.office(rules=one_slot_office_rules()) for _ in range(4)]
    day = world.tomorrow()
    for office in offices:
        await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )
    national_id = world.national_id()
    headers = world.token()
    same_day = [
        await client.post("/api/v1/waitlist", json=booking_body(o, national_id, day, None), headers=headers)
        for o in offices[:2]
    ]
    assert [r.status_code for r in same_day] == [201, 409]
    assert same_day[1].json()["code"] == "already_booked"
    other = [
        await client.post(
            "/api/v1/waitlist", json=booking_body(o, national_id, day, None, service="102"), headers=headers
        )
        for o in offices[2:]
    ]
    assert [r.status_code for r in other] == [201, 409]


async def test_rebuild_keeps_the_line(client: Client, world: World, redis_sync: SyncRedis) -> None:
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token())
    codes = []
    for _ in range(3):
        joined = await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
        )
        codes.append(joined.json()["tracking_code"].encode())
    async with watch_held():  # its own recount, not the watch's too
        redis_sync.flushdb()
        async with world.container.sessions() as session:
            await world.container.capacity.rebuild(session=session, today=world.container.clock.today())
        assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == codes
    state = await statuses(world, office)
    assert [state[code.decode()][0] for code in codes] == ["waitlisted"] * len(codes)


async def test_lifting_a_crowd_cap_gives_the_seats_to_the_waitlist_first(client: Client, world: World) -> None:
    from app.capacity import crowd_caps
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=4)])
    day = world.tomorrow()
    today = world.container.clock.today()
    await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token())
    async with world.container.sessions() as session:
        cap = await crowd_caps.add(
            session=session,
            capacity=world.container.capacity,
            today=today,
            province_code="01",
            starts_on=day,
            ends_on=day,
            percent=25,
            reason="directive",
            created_by="test",
        )
    queued = [
        await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
        )
        for _ in range(4)
    ]
    assert [q.status_code for q in queued] == [201] * 4
    async with world.container.sessions() as session:
        await crowd_caps.lift(
            session=session,
            capacity=world.container.capacity,
            today=today,
            cap_id=cap.id,
            now=world.container.clock.now(),
        )
    # Between the lift and the fill, the freed seats are the line's: nobody else books them.
    public = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert public.status_code == 409, public.text
    async with world.container.sessions() as session:
        await world.container.bookings.fill_waitlists(session=session)
    states = [(await client.get(f"/api/v1/bookings/{q.json()['tracking_code']}")).json()["status"] for q in queued]
    assert states == ["booked", "booked", "booked", "waitlisted"]


async def test_seats_added_go_to_the_line_not_to_whoever_books_first(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Between a capacity raise and the fill that follows it, the added seat is not for sale."""
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert taken.status_code == 201
    waiting = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert waiting.status_code == 201, waiting.text
    # The first half of a raise: the plan has a second seat, the line has not been served yet.
    redis_sync.hset(keys.office_day(office, day), keys.seats_field("*", "10:00"), 2)
    refused = world.national_id()
    for slot in ("10:00", None):
        jumped = await client.post(
            "/api/v1/bookings", json=booking_body(office, refused, day, slot), headers=world.token()
        )
        assert jumped.status_code == 409, jumped.text
    # Refused a booking, the same citizen may join the line (told "seats available", neither).
    behind = await client.post("/api/v1/waitlist", json=booking_body(office, refused, day, None), headers=world.token())
    assert behind.status_code == 201 and behind.json()["waitlist_position"] == 2, behind.text
    async with world.container.sessions() as session:
        await world.container.bookings.fill_waitlists(session=session, office_codes={office})
    assert (await statuses(world, office))[waiting.json()["tracking_code"]] == ("booked", "10:00")
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00"))) == 2


async def test_a_join_whose_message_cannot_be_recorded_is_still_a_join(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In line (row and place committed), the citizen is told so, not 503: a retry would be
    "already booked that day"."""
    from app.sms.models import SmsMessage

    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert taken.status_code == 201
    bookings = client.app.state.container.bookings

    def unrecordable(session: Any, **_: Any) -> None:
        session.add(SmsMessage(id="x", to=None, body="-", kind="waitlist_joined"))  # NOT NULL: the commit fails

    monkeypatch.setattr(bookings.messenger, "queue", unrecordable)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201 and joined.json()["waitlist_position"] == 1, joined.text
    assert (await statuses(world, office))[joined.json()["tracking_code"]] == ("waitlisted", "")


async def test_a_seat_given_back_after_its_day_promotes_nobody(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day's counters and line live until the next day ends. A seat given back after
    midnight (the minute's fill, a failed commit's give-back) had gone to yesterday's line:
    a slot already past, told by SMS, and a no-show at the night's close."""
    import datetime as dt

    from app.capacity.plan import DayRule
    from app.clock import Clock

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    day = world.tomorrow()
    holder = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert holder.status_code == 201, holder.text
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201, joined.text
    after = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 1), tzinfo=world.container.clock.tz)
    monkeypatch.setattr(Clock, "now", lambda self: after)
    async with world.container.sessions() as session:
        await world.container.bookings.free_seat(session=session, office_code=office, day=day, pool="*", time="10:00")
    waiting = (await client.get(f"/api/v1/bookings/{joined.json()['tracking_code']}")).json()
    assert waiting["status"] == "waitlisted"
    assert redis_sync.llen(keys.waitlist(office, day, "*")) == 1


@pytest.mark.parametrize("hold_runs", ["before the answer is lost", "after the 503"])
async def test_a_join_whose_hold_answer_was_lost_holds_nothing(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, hold_runs: str
) -> None:
    """Redis's answer to the join's HOLD was lost (503): HOLD had run, or Redis runs it only
    after the 503. Either way the citizen's limit is freed and their retry joins. (Before, the
    hold stayed: the retry, and any booking of that service that day, was refused "already
    booked that day".)"""
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert taken.status_code == 201, taken.text
    scripts = client.app.state.container.capacity.scripts
    hold = scripts.hold
    late: list[tuple[list[Any], list[Any]]] = []

    async def answer_lost(keys_: list[Any], args: list[Any]) -> Any:
        monkeypatch.setattr(scripts, "hold", hold)  # once
        if hold_runs == "after the 503":
            late.append((keys_, args))
        else:
            await hold(keys_, args)
        raise RedisTimeoutError("Timeout reading from Redis")

    monkeypatch.setattr(scripts, "hold", answer_lost)
    national_id = world.national_id()
    body, headers = booking_body(office, national_id, day, None), world.token()
    lost = await client.post("/api/v1/waitlist", json=body, headers=headers)
    assert lost.status_code == 503, lost.text
    for keys_, args in late:  # Redis gets round to it now, and it takes nothing
        assert redis_sync.eval(hold.script, len(keys_), *keys_, *args) == [b"FORGOTTEN"]
    assert holds(redis_sync, national_id) == []
    again = await client.post("/api/v1/waitlist", json=body, headers=headers)
    assert again.status_code == 201 and again.json()["waitlist_position"] == 1, again.text


async def test_a_join_whose_commit_landed_but_the_answer_was_lost_is_in_line(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's COMMIT went out and its answer was lost: the record is asked, and has the
    row, so the citizen joins the line as after any join, and the next seat freed is theirs.
    (Before, the answer was 503 and they were in no line: never promoted, their retry
    refused "already booked that day", their row cancelled at midnight.)"""
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    owner = world.token("09120000031")
    taken = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    assert taken.status_code == 201, taken.text
    national_id = world.national_id()
    lose_the_commits_answer(client, monkeypatch, committed=True, engine=client.app.state.container.engine)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, national_id, day, None), headers=world.token()
    )
    assert joined.status_code == 201 and joined.json()["waitlist_position"] == 1, joined.text
    code = joined.json()["tracking_code"]
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == [code.encode()]
    assert redis_sync.hget(keys.citizen_holds(national_id), code) is not None
    cancelled = await client.post(f"/api/v1/bookings/{taken.json()['tracking_code']}/cancel", headers=owner)
    assert cancelled.status_code == 200, cancelled.text
    assert (await statuses(world, office))[code] == ("booked", "10:00")


@pytest.mark.parametrize("redis_then", ["answers", "is away a moment"])
async def test_a_join_whose_commit_did_not_land_holds_nothing(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, redis_then: str
) -> None:
    """The join's COMMIT answer was lost and the record says it did not land (503): the hold
    is given back, with Redis away a moment once it answers, and the retry joins. (Before,
    Redis away left the hold: the citizen, in no line, was refused "already booked" that day.)"""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.booking import service as booking_service

    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert taken.status_code == 201, taken.text
    container = client.app.state.container
    if redis_then == "is away a moment":
        fails_once(monkeypatch, container.capacity, "unhold", RedisConnectionError("Redis away a moment"))
        monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    lose_the_commits_answer(client, monkeypatch, committed=False, engine=container.engine)
    national_id = world.national_id()
    body, headers = booking_body(office, national_id, day, None), world.token()
    lost = await client.post("/api/v1/waitlist", json=body, headers=headers)
    assert lost.status_code == 503, lost.text

    for _ in range(50):
        if not holds(redis_sync, national_id):
            break
        await asyncio.sleep(0.1)
    assert holds(redis_sync, national_id) == []
    assert redis_sync.llen(keys.waitlist(office, day, "*")) == 0
    again = await client.post("/api/v1/waitlist", json=body, headers=headers)
    assert again.status_code == 201 and again.json()["waitlist_position"] == 1, again.text


async def test_the_line_a_second_tap_finds_is_the_one_it_asked_for(client: Client, world: World) -> None:
    """Refused "already booked" for another service, the join page found the citizen's line
    for a different service at the office that day, and said they were in it."""
    from app.booking.schemas import WaitlistJoin

    office = await world.office(rules=one_slot_office_rules(), services=("101", "102"))
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert taken.status_code == 201, taken.text  # the day full
    national_id, mobile = world.national_id(), world.mobile()
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, national_id, day, None), headers=world.token(mobile)
    )
    assert joined.status_code == 201, joined.text
    async with world.container.sessions() as session:

        def asked(service: str) -> WaitlistJoin:
            return WaitlistJoin(national_id=national_id, office_code=office, service_code=service, date=day.isoformat())

        bookings = world.container.bookings
        assert (
            await bookings.waiting(session=session, mobile=mobile, request=asked("101"))
            == joined.json()["tracking_code"]
        )
        assert await bookings.waiting(session=session, mobile=mobile, request=asked("102")) is None


async def test_a_promotion_stalled_across_a_whole_recount_books_nobody_twice(
    client: Client, world: World, redis_sync: SyncRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder cancels and the seat is given to the first in line; before the promotion is
    recorded (a request stalled: a full pool, a frozen process), a whole recount runs, writing
    the day from a record where that citizen still waits and the seat is free. Recorded then,
    the promotion booked a seat the line gave again to the same citizen, who, booked already,
    passed it on: free, it was sold to someone else, two bookings in a one-seat slot. Left to
    the recount now, whose end gives the line its seat: one booking."""
    from tests.conftest import rebuild
    from tests.integration.test_races import consistent

    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    owner = world.token("09124000000")
    held = await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=owner)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201
    waiting = joined.json()["tracking_code"]
    app = client.app.state.container
    promote = app.bookings._promote

    async def after_a_recount(session: Any, given: Any) -> Any:
        await rebuild(app)  # the whole recount, between the seat's release and its record
        return await promote(session, given)

    monkeypatch.setattr(app.bookings, "_promote", after_a_recount)
    cancel = await client.post(f"/api/v1/bookings/{held.json()['tracking_code']}/cancel", headers=owner)
    assert cancel.status_code == 200
    monkeypatch.setattr(app.bookings, "_promote", promote)
    async with world.container.sessions() as session:  # the recount's end: its lines filled
        await world.container.bookings.fill_waitlists(session=session, office_codes={office})
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "booked"
    late = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert late.status_code == 409, late.text
    await consistent(settings)


async def test_a_join_stalled_across_a_whole_recount_is_refused_and_leaves_no_one_unheld(
    client: Client, world: World, redis_sync: SyncRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's hold was taken; before its row was committed (a stalled request), a whole
    recount ran from a record without the row, and wrote the citizen's holds without it.
    Committed then, the citizen waited in line with no hold: free to book that service that
    day once more. Refused now (503, nothing kept); tried again, it joins, held."""
    from app.booking import service as booking_service
    from tests.conftest import rebuild
    from tests.integration.test_races import consistent

    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    full = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09124000001")
    )
    assert full.status_code == 201, full.text
    app = client.app.state.container
    hold_off = booking_service.hold_off_recounts

    async def after_a_recount(session: Any) -> Any:
        monkeypatch.setattr(booking_service, "hold_off_recounts", hold_off)
        await rebuild(app)  # the whole recount, between the join's hold and its commit
        return await hold_off(session)

    monkeypatch.setattr(booking_service, "hold_off_recounts", after_a_recount)
    national_id, mobile = world.national_id(), "09124000002"
    body = booking_body(office, national_id, day, None)
    stalled = await client.post("/api/v1/waitlist", json=body, headers=world.token(mobile))
    assert stalled.status_code == 503, stalled.text
    assert holds(redis_sync, national_id) == []
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == []
    assert [status for status, _ in (await statuses(world, office)).values()] == ["booked"]
    again = await client.post("/api/v1/waitlist", json=body, headers=world.token(mobile))
    assert again.status_code == 201, again.text
    assert holds(redis_sync, national_id) == [again.json()["tracking_code"].encode()]
    await consistent(settings)


async def test_a_failed_join_taken_back_as_a_recount_begins_stands_as_the_recount_writes_it(
    client: Client, world: World, redis_sync: SyncRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's row was committed; its step into the line failed as a recount began. The
    recount may have read the row waiting already: it writes the citizen into the line, held.
    Taken back then (the row deleted, the hold let go before the recount wrote it again), the
    line kept a code with no row and the citizen a hold with no booking, refused that day. The
    join stands: the recount's line has it, the request is answered as joined (a 503 had the
    citizen try again, or book, and be refused "already booked"), and a second tap is told
    it is in line."""
    from tests.integration.test_races import consistent

    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    full = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09124000003")
    )
    assert full.status_code == 201, full.text
    capacity = client.app.state.container.capacity

    async def as_a_recount_begins(**_: Any) -> Any:
        capacity.ready = False  # as the watch does when a recount begins
        raise RedisTimeoutError("the line's step timed out")

    monkeypatch.setattr(capacity, "join_waitlist", as_a_recount_begins)
    national_id, mobile = world.national_id(), "09124000004"
    body = booking_body(office, national_id, day, None)
    async with watch_held():
        stands = await client.post("/api/v1/waitlist", json=body, headers=world.token(mobile))
    assert stands.status_code == 201 and stands.json()["status"] == "waitlisted", stands.text
    monkeypatch.undo()
    capacity.ready = True
    waiting = [code for code, (status, _) in (await statuses(world, office)).items() if status == "waitlisted"]
    assert waiting == [stands.json()["tracking_code"]]
    assert holds(redis_sync, national_id) == [waiting[0].encode()]
    await world.rebuild()  # the recount's end
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting[0].encode()]
    again = await client.post("/api/v1/waitlist", json=body, headers=world.token(mobile))
    assert again.status_code == 409 and again.json()["code"] == "already_booked", again.text
    await consistent(settings)


async def test_a_line_whose_last_slot_has_begun_is_ended_and_each_citizen_told(
    client: Client, world: World, redis_sync: SyncRedis, morning: Any, monkeypatch: pytest.MonkeyPatch, deliver: Deliver
) -> None:
    """Nobody in a line can be given a seat once the day's last slot for its counter has begun.
    The citizen waited with no word until the night, holding the service that day; told now."""
    from app.clock import Clock

    office = await world.office(rules=one_slot_office_rules())  # 10:00 to 10:30, one seat
    today = morning.date()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    national_id, mobile = world.national_id(), "09125000001"
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, national_id, today, None), headers=world.token(mobile)
    )
    assert joined.status_code == 201, joined.text
    code = joined.json()["tracking_code"]
    jobs = world.container
    for minute, ended in ((59, 0), (61, 1)):  # 09:59: the slot is ahead; 10:01: it has begun
        at = morning.replace(hour=9) + dt.timedelta(minutes=minute)
        monkeypatch.setattr(Clock, "now", lambda self, at=at: at)
        async with jobs.sessions() as session:
            assert await jobs.bookings.end_spent_lines(session=session) == ended
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"
    assert (await client.get(f"/api/v1/bookings/{booked.json()['tracking_code']}")).json()["status"] == "booked"
    assert redis_sync.lrange(keys.waitlist(office, today, "*"), 0, -1) == []
    assert holds(redis_sync, national_id) == []  # free to book the service elsewhere today
    await deliver()
    told = [m.decode() for m in redis_sync.lrange(OUTBOX, 0, 50) if mobile.encode() in m]
    assert any("به پایان رسید" in m and code in m for m in told), told


async def full_with_a_line(client: Client, world: World, *, waiting: int) -> tuple[str, dt.date, list[str]]:
    """An office's one seat tomorrow booked, and ``waiting`` citizens in its line: the office,
    the day and their tracking codes, first in line first."""
    office = await world.office(rules=one_slot_office_rules())
    day = world.tomorrow()
    await client.post("/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token())
    codes = []
    for _ in range(waiting):
        joined = await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
        )
        assert joined.status_code == 201, joined.text
        codes.append(joined.json()["tracking_code"])
    return office, day, codes


async def test_a_join_run_again_for_a_code_in_line_keeps_its_one_place(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """The join's script run a second time for a citizen in line (a recount wrote the line from
    the record after the join's commit, then the join's own step ran): one place, not two (each
    would be given a seat, the second passed on only once found booked)."""
    office, day, codes = await full_with_a_line(client, world, waiting=2)
    place = await world.container.capacity.join_waitlist(
        office_code=office, day=day, pool="*", not_before=None, tracking_code=codes[0]
    )
    assert place == 1
    assert [code.decode() for code in redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1)] == codes


async def test_a_recount_writes_each_line_whole_once_and_drops_lines_nobody_waits_in(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """A join's own step landing while the recount wrote the lines (deleted first, filled
    later) had its citizen written by both: twice in line, given two seats. Each line is now
    written at once as the record has it; one the record has nobody waiting in goes."""
    office, day, codes = await full_with_a_line(client, world, waiting=3)
    line = keys.waitlist(office, day, "*")
    stray = keys.waitlist(office, day, "102")
    redis_sync.rpush(stray, "NOBODY0000")  # a line the record has no one in
    async with watch_held(), world.container.sessions() as session:
        execute = session.execute

        async def then_a_joins_step(statement: Any, *args: Any, **kwargs: Any) -> Any:
            read = await execute(statement, *args, **kwargs)
            if (
                "bookings" in str(statement)
                and "waitlisted" in str(statement.compile()).lower() + str(statement.compile().params).lower()
            ):
                redis_sync.rpush(line, codes[0])  # the join's own step, landing meanwhile
            return read

        session.execute = then_a_joins_step  # type: ignore[method-assign]
        await world.container.capacity.rebuild(session=session, today=world.container.clock.today())
    assert [code.decode() for code in redis_sync.lrange(line, 0, -1)] == codes
    assert redis_sync.ttl(line) > 0 and not redis_sync.exists(stray)
