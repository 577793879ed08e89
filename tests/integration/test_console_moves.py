"""A clerk's cut that moves people, against a real Redis and the record: the same number of
steps however many are moved, nothing moved when the record refuses, a citizen's own
cancellation racing the move, a check-in racing one, and seats a raise adds handed to the
line in one commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import event, select
from sqlalchemy import update as sa_update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking import relocation
from app.booking.models import SEAT_STATUSES, Booking, BookingStatus
from app.booking.relocation import _Places
from app.booking.service import BookingService
from app.capacity import keys
from app.capacity.plan import DayRule
from app.capacity.service import Seat
from app.console import service as console_service
from app.console.service import Console
from app.offices.models import Office
from app.settings import Settings
from app.sms.models import SmsMessage
from app.staff.models import StaffRole
from app.staff.service import StaffPrincipal
from tests.conftest import Served, World, booking_body, rebuild, watch_held
from tests.integration.test_complaints import regulator
from tests.integration.test_console import staff_of, used
from tests.integration.test_races import consistent

Client = AsyncTestClient[Litestar]


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement sent to the record inside the block (by any engine: the app's
    are its own, not the test's)."""
    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", count)


async def book_full(client: Client, world: World, office: str, day: dt.date, slots: list[str], each: int) -> list[str]:
    codes = []
    for slot in slots:
        for _ in range(each):
            booked = await client.post(
                "/api/v1/bookings", json=booking_body(office, world.national_id(), day, slot), headers=world.token()
            )
            assert booked.status_code == 201, booked.text
            codes.append(booked.json()["tracking_code"])
    return codes


async def a_busy_office(client: Client, world: World) -> tuple[str, str, list[str], str]:
    """An office whose two seats tomorrow are booked and one citizen in its line, and a
    neighbour with room: (the office, the neighbour, the booked tracking codes, the waiting one's)."""
    day = world.tomorrow()
    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)])
    neighbour = await world.office(seats=4, lat=35.701, lon=51.401)
    await world.rebuild()
    booked = await book_full(client, world, office, day, ["10:00", "10:30"], 1)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201, joined.text
    return office, neighbour, booked, joined.json()["tracking_code"]


async def book_as(client: Client, world: World, office: str, day: dt.date, mobiles: list[str]) -> list[str]:
    """One booking at 10:00 for each phone (so each can cancel its own); the tracking codes."""
    codes = []
    for mobile in mobiles:
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token(mobile)
        )
        assert booked.status_code == 201, booked.text
        codes.append(booked.json()["tracking_code"])
    return codes


async def full_with_one_waiting(client: Client, world: World, day: dt.date) -> tuple[str, str, str]:
    """An office with one seat that day, booked, and one citizen in its line: (the office,
    the holder's tracking code, the waiting one's)."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    [holder] = await book_full(client, world, office, day, ["10:00"], 1)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    return office, holder, joined.json()["tracking_code"]


async def cancelled_in_the_record(world: World, codes: list[str]) -> None:
    """Cancel these bookings in the record only: their seats are left for the test to free."""
    async with world.container.sessions() as session:
        await session.execute(
            sa_update(Booking).where(Booking.tracking_code.in_(codes)).values(status=BookingStatus.CANCELLED)
        )
        await session.commit()


async def plan_the_day(
    client: Client | Served,
    office: str,
    day: dt.date,
    headers: dict[str, str],
    rules: list[dict[str, Any]],
    reason: str,
) -> Any:
    """The clerk plans the day with these rules, moving whoever no longer fits."""
    return await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}?move_overflow=true",
        json={"rules": rules, "reason": reason},
        headers=headers,
    )


async def cut_to_one_seat(client: Client | Served, office: str, day: dt.date, headers: dict[str, str]) -> Any:
    """The clerk plans the day with one seat a slot, moving whoever no longer fits."""
    one = [{"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 1}]
    return await plan_the_day(client, office, day, headers, one, "one counter")


async def assert_record_matches_redis(world: World, redis: SyncRedis, offices: list[str], day: dt.date) -> None:
    """Every slot: the bookings holding a seat in the record == the seats Redis counts used."""
    async with world.container.sessions() as session:
        rows = await session.execute(
            select(Office.code, Booking.pool, Booking.slot_time)
            .join(Office, Office.id == Booking.office_id)
            .where(Office.code.in_(offices), Booking.date == day, Booking.status.in_(SEAT_STATUSES))
        )
        record = Counter((code, f"u|{pool}|{time}") for code, pool, time in rows)
    for office in offices:
        counted = {
            field.decode(): int(value)
            for field, value in redis.hgetall(keys.office_day(office, day)).items()
            if field.startswith(b"u|") and int(value)
        }
        assert counted == {field: n for (code, field), n in record.items() if code == office}, office


async def test_a_cut_takes_as_many_steps_for_nine_moved_as_for_one(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    day = world.tomorrow()
    few, many = await world.office(seats=4), await world.office(seats=4)
    await book_full(client, world, few, day, ["10:00"], 2)
    await book_full(client, world, many, day, ["10:00", "10:30", "11:00"], 4)
    sent = {}
    for office in (few, many):
        headers = await staff_of(client, world, office)
        with statements() as sent[office]:
            cut = await cut_to_one_seat(client, office, day, headers)
        assert cut.status_code == 200, cut.text
        assert all(m["moved"] and m["office_code"] == office for m in cut.json()["moved"])
    assert len(sent[few]) > 5
    assert len(sent[few]) == len(sent[many]), (sent[few], sent[many])
    await assert_record_matches_redis(world, redis_sync, [few, many], day)


async def test_a_change_that_takes_over_a_failed_ones_note_leaves_it_to_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clerk closed tomorrow, and Redis failed before the new plan reached it (a 503);
    a moment later they changed the day after, which went through. Its request forgot the
    office's note, the failed change's too: tomorrow stayed open in Redis, selling seats at a
    closed office, until the night's recount. Now the note stays for the minute's job."""
    office = await world.office(seats=4)
    await world.rebuild()
    day, after = world.tomorrow(), world.tomorrow() + dt.timedelta(days=1)
    headers = await staff_of(client, world, office)
    capacity = client.app.state.container.capacity
    replan = capacity.replan

    async def fails_to_apply(*args: Any, apply: bool, **kwargs: Any) -> Any:
        if apply:  # once committed, as the plan goes to Redis
            monkeypatch.setattr(capacity, "replan", replan)
            raise RedisTimeoutError("Redis went away")
        return await replan(*args, apply=apply, **kwargs)

    monkeypatch.setattr(capacity, "replan", fails_to_apply)
    assert (await plan_the_day(client, office, day, headers, [], "تعمیرات")).status_code == 503
    assert redis_sync.hget(keys.office_day(office, day), "s|*|10:00") == b"4"  # still open
    changed = await cut_to_one_seat(client, office, after, headers)
    assert changed.status_code == 200 and changed.json()["days_changed"] == 1, changed.text
    assert redis_sync.hget(keys.office_day(office, after), "s|*|10:00") == b"1"
    assert redis_sync.hget(keys.PLANS_TO_APPLY, office)  # tomorrow's change: still to apply

    monkeypatch.setattr(console_service, "PLAN_REQUEST_SECONDS", 0)
    jobs = world.container
    async with jobs.sessions() as session:
        assert await jobs.console.finish_plans(session=session) == 1
    assert redis_sync.hget(keys.office_day(office, day), "s|*|10:00") is None  # closed, in Redis too
    assert not redis_sync.hgetall(keys.PLANS_TO_APPLY)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert refused.status_code == 422 and refused.json()["code"] == "no_such_slot", refused.text


async def test_a_change_applies_its_own_day_as_its_clerk_asked_whatever_is_pending(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Another clerk's change, asking to cancel nobody, is still noted (under way, or failed);
    this one closes a day and asks to move (or cancel) whoever it leaves: its own day is
    applied as asked, nobody left booked on a closed day."""
    office = await world.office(seats=4)
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    headers = await staff_of(client, world, office)
    await world.container.capacity.apply_later(office, noted_in=keys.PLANS_TO_APPLY, tag="cancel-nobody")
    closed = await plan_the_day(client, office, day, headers, [], "تعمیرات")
    assert closed.status_code == 200, closed.text
    async with world.container.sessions() as session:
        left = await session.scalar(select(Booking).where(Booking.tracking_code == booked.json()["tracking_code"]))
    assert left is not None and not (left.status in SEAT_STATUSES and left.date == day), left.status
    assert redis_sync.hget(keys.PLANS_TO_APPLY, office)  # the pending one's, for the job


async def test_a_later_change_keeps_a_pending_ones_ask_to_cancel_nobody(world: World) -> None:
    """A clerk's change asked to move nobody, and its request failed; a change noted after it
    (another clerk's, the regulator's reopening) must not turn it into one that cancels."""
    capacity, noted_in = world.container.capacity, keys.PLANS_TO_APPLY
    first = await capacity.apply_later("0100", noted_in=noted_in, tag="cancel-nobody")
    assert first.change.split("|")[2:] == ["cancel-nobody"] and not first.earlier
    later = await capacity.apply_later("0100", "0200", noted_in=noted_in)
    assert later.earlier and later.change.split("|")[2:] == ["cancel-nobody"]
    assert later.change.split("|")[:2] != first.change.split("|")[:2]
    noted = await capacity.to_apply(older_than=0, noted_in=noted_in)
    assert noted["0100"] == later.change and noted["0200"].split("|")[2:] == [""]  # its own, untagged
    tagged = await capacity.apply_later("0200", noted_in=noted_in, tag="cancel-nobody")  # over an untagged one
    assert tagged.earlier and tagged.change.split("|")[2:] == ["cancel-nobody"]
    noted["0200"] = tagged.change
    await capacity.applied("0100", first.change, noted_in=noted_in)  # the failed one's: not forgotten
    assert "0100" in await capacity.to_apply(older_than=0, noted_in=noted_in)
    await capacity.applied("0100", later.change, noted_in=noted_in)
    await capacity.applied("0200", noted["0200"], noted_in=noted_in)
    assert not await capacity.to_apply(older_than=0, noted_in=noted_in)
    again = await capacity.apply_later("0100", noted_in=noted_in)  # nothing pending: its own tag
    assert not again.earlier and again.change.endswith("|")


async def test_a_cut_whose_moves_fail_half_way_is_finished_by_the_minutes_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clerk's cut was committed, then Redis failed before its moves: the clerk saw a
    503, and unless they tried again, citizens stayed booked in seats the office no longer
    kept. The minute's job applies it, once the request has had its minute."""
    day = world.tomorrow()
    office = await world.office(seats=4)
    await book_full(client, world, office, day, ["10:00"], 3)
    headers = await staff_of(client, world, office)
    console = client.app.state.container.console
    move_all = console.move_all

    async def redis_gone(*args: Any, **kwargs: Any) -> Any:
        raise RedisTimeoutError("Redis went away")

    monkeypatch.setattr(console, "move_all", redis_gone)
    assert (await cut_to_one_seat(client, office, day, headers)).status_code == 503
    monkeypatch.setattr(console, "move_all", move_all)
    assert int(redis_sync.hget(keys.office_day(office, day), "u|*|10:00") or 0) == 3  # nobody moved
    jobs = world.container  # the job's own parts
    async with jobs.sessions() as session:
        assert await jobs.console.finish_plans(session=session) == 0  # the request's, for a minute
    monkeypatch.setattr(console_service, "PLAN_REQUEST_SECONDS", 0)
    async with jobs.sessions() as session:
        assert await jobs.console.finish_plans(session=session) == 1
    assert int(redis_sync.hget(keys.office_day(office, day), "u|*|10:00") or 0) == 1
    await assert_record_matches_redis(world, redis_sync, [office], day)
    assert not redis_sync.hgetall(keys.PLANS_TO_APPLY)
    async with jobs.sessions() as session:
        assert await jobs.console.finish_plans(session=session) == 0  # nothing left

    assert (await cut_to_one_seat(client, office, day, headers)).status_code == 200  # seen through
    assert not redis_sync.hgetall(keys.PLANS_TO_APPLY)


@pytest.mark.parametrize("refusal", ["the record goes away", "a recount begins", "a recount the watch has not seen"])
async def test_a_move_refused_at_its_commit_moves_nobody_and_gives_the_seats_back(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """The record refuses the moves, or a recount of the counters begins before their commit
    (committed during it, the moves could be left out of the count and their new seats sold
    again): the clerk is told 503, nobody moves, the seats the moves took go back, and the
    cut goes through after."""
    office = await world.office(seats=3)
    day = world.tomorrow()
    codes = await book_full(client, world, office, day, ["10:00"], 3)
    headers = await staff_of(client, world, office)
    capacity = client.app.state.container.capacity
    record_moves = relocation._record_moves

    marker = redis_sync.get(keys.REBUILT_AT)

    async def refused(*args: Any) -> set[int]:
        if refusal == "the record goes away":
            raise OperationalError("UPDATE bookings", {}, Exception("the record went away"))
        if refusal == "a recount begins":
            capacity.ready = False  # as the watch does when the counters must be counted again
        else:  # before the watch's next look: only Redis knows
            redis_sync.delete(keys.REBUILT_AT)
        return await record_moves(*args)

    monkeypatch.setattr(relocation, "_record_moves", refused)
    async with watch_held():
        try:
            cut = await cut_to_one_seat(client, office, day, headers)
        finally:
            capacity.ready = True
            redis_sync.set(keys.REBUILT_AT, marker)
    assert cut.status_code == 503, cut.text
    for code in codes:
        booking = (await client.get(f"/api/v1/bookings/{code}")).json()
        assert (booking["slot"], booking["status"]) == ("10:00", "booked")
    # The seats the moves had taken (09:30, 10:30) are free again; 10:00 keeps its three.
    await assert_record_matches_redis(world, redis_sync, [office], day)

    monkeypatch.setattr(relocation, "_record_moves", record_moves)
    again = await cut_to_one_seat(client, office, day, headers)
    assert again.status_code == 200, again.text
    assert len(again.json()["moved"]) == 2
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_old_seats_released_after_a_recount_free_no_one_elses(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moves were committed, the day was then counted again from the record (the movers
    at their new times), and only then were their old seats released: that freed the seat
    of the one who stayed."""
    office = await world.office(seats=3)
    day = world.tomorrow()
    await book_full(client, world, office, day, ["10:00"], 3)
    headers = await staff_of(client, world, office)
    bookings = client.app.state.container.bookings
    free_seats = bookings.free_seats

    async def recount_then_free(**kwargs: Any) -> None:
        monkeypatch.setattr(bookings, "free_seats", free_seats)  # once
        await rebuild(client.app.state.container)
        await free_seats(**kwargs)

    monkeypatch.setattr(bookings, "free_seats", recount_then_free)
    cut = await cut_to_one_seat(client, office, day, headers)
    assert cut.status_code == 200, cut.text
    assert len(cut.json()["moved"]) == 2
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_a_commit_whose_answer_is_lost_never_frees_a_movers_seat(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moves were written but the reply never came: their new seats must stay counted
    (a seat counted free under a booking is a double sale). The record is asked: it has the
    moves, so the clerk is answered with them and their old seats go back (a 503 had left
    the clerk guessing, and the old seats counted for nobody until the night)."""
    office = await world.office(seats=3)
    day = world.tomorrow()
    await book_full(client, world, office, day, ["10:00"], 3)
    headers = await staff_of(client, world, office)
    commit = AsyncSession.commit

    async def commit_then_lose_the_answer(self: AsyncSession) -> None:
        moving = any(isinstance(row, SmsMessage) and row.kind == "booking_moved" for row in self.new)
        await commit(self)
        if moving:
            raise OperationalError("COMMIT", {}, Exception("connection lost after COMMIT"))

    monkeypatch.setattr(AsyncSession, "commit", commit_then_lose_the_answer)
    cut = await cut_to_one_seat(client, office, day, headers)
    assert cut.status_code == 200 and len(cut.json()["moved"]) == 2, cut.text
    async with world.container.sessions() as session:
        rows = await session.execute(
            select(Booking.slot_time).where(Booking.date == day, Booking.status.in_(SEAT_STATUSES))
        )
        record = Counter(time for (time,) in rows)
    assert sorted(record) == ["09:30", "10:00", "10:30"]
    for time, holders in record.items():
        assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", time)) or 0) == holders


@pytest.mark.parametrize("round_", range(3))
async def test_citizens_cancelling_while_the_clerk_cuts_their_slot(
    client: Client, served: Served, world: World, redis_sync: SyncRedis, settings: Settings, round_: int
) -> None:
    """A cancellation that lands between the move's look at the record and its commit wins:
    the old seat is given back once (not by both), and the seat the move took goes back."""
    office = await world.office(seats=6)
    day = world.tomorrow()
    mobiles = [f"0912333{round_}{i:03d}" for i in range(6)]
    codes = await book_as(client, world, office, day, mobiles)
    headers = await staff_of(client, world, office)

    async def cancel(code: str, mobile: str) -> Any:
        await asyncio.sleep(0.005 * round_)
        return await served.post(f"/api/v1/bookings/{code}/cancel", headers=world.token(mobile))

    cut, *cancels = await asyncio.gather(
        cut_to_one_seat(served, office, day, headers),
        *(cancel(code, mobile) for code, mobile in zip(codes, mobiles, strict=True)),
    )
    assert cut.status_code == 200, cut.text
    assert all(c.status_code in (200, 409) for c in cancels), [c.text for c in cancels]
    await assert_record_matches_redis(world, redis_sync, [office], day)
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("*", "10:00")) or 0) <= 1
    await consistent(settings)  # every slot within its seats: two moved into one would match above


async def test_a_cancellation_between_the_moves_look_and_its_commit_wins(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The citizen cancels after the move found a new seat for them and before it wrote:
    the booking stays cancelled, its old seat is given back once, and the new seat too."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    mobiles = ["09124440001", "09124440002"]
    codes = await book_as(client, world, office, day, mobiles)
    find = _Places.find

    async def find_then_cancel(places: _Places, booking: Booking) -> Any:
        placed = await find(places, booking)
        async with AsyncSession(places.session.bind, expire_on_commit=False) as other:
            await places.relocator.bookings.cancel(
                session=other, tracking_code=booking.tracking_code, mobile=booking.mobile
            )
        return placed

    monkeypatch.setattr(_Places, "find", find_then_cancel)
    headers = await staff_of(client, world, office)
    cut = await cut_to_one_seat(client, office, day, headers)
    assert cut.status_code == 200, cut.text
    assert cut.json()["moved"] == []
    statuses = {code: (await client.get(f"/api/v1/bookings/{code}")).json() for code in codes}
    assert sorted(b["status"] for b in statuses.values()) == ["booked", "cancelled"]
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_seats_a_raise_adds_go_to_the_line_in_one_commit(client: Client, world: World) -> None:
    """Promotions are recorded together: as many statements for six promoted as for one."""
    day = world.tomorrow()
    sent = {}
    for waiting in (1, 6):
        office = await world.office(seats=1)
        full = {"rules": [{"opens": "10:00", "closes": "10:30", "slot_minutes": 30, "seats": 1}], "reason": "x"}
        headers = await staff_of(client, world, office)
        assert (
            await client.put(f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=full, headers=headers)
        ).status_code == 200
        await book_full(client, world, office, day, ["10:00"], 1)
        line = []
        for _ in range(waiting):
            joined = await client.post(
                "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
            )
            assert joined.status_code == 201, joined.text
            line.append(joined.json()["tracking_code"])
        raised = {**full, "rules": [{**full["rules"][0], "seats": 1 + waiting}]}  # type: ignore[dict-item]
        with statements() as sent[waiting]:
            response = await client.put(
                f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}", json=raised, headers=headers
            )
        assert response.status_code == 200, response.text
        for code in line:
            assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    assert len(sent[1]) > 5
    assert len(sent[1]) == len(sent[6]), (sent[1], sent[6])


async def test_a_citizen_twice_in_line_gets_one_seat_and_the_other_goes_back(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    day = world.tomorrow()
    office = await world.office(seats=1)
    full = {"rules": [{"opens": "10:00", "closes": "10:30", "slot_minutes": 30, "seats": 1}], "reason": "x"}
    headers = await staff_of(client, world, office)
    url = f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}"
    assert (await client.put(url, json=full, headers=headers)).status_code == 200
    await book_full(client, world, office, day, ["10:00"], 1)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    code = joined.json()["tracking_code"]
    redis_sync.rpush(keys.waitlist(office, day, "*"), code)  # twice in line (a rebuild racing the join)
    raised = {**full, "rules": [{**full["rules"][0], "seats": 3}]}
    assert (await client.put(url, json=raised, headers=headers)).status_code == 200
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_one_failed_release_does_not_lose_the_others_promotions(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    day = world.tomorrow()
    office, holder, waiting = await full_with_one_waiting(client, world, day)
    await cancelled_in_the_record(world, [holder])
    container = world.container
    other = await world.office(seats=1)
    redis_sync.set(keys.office_day(other, day), "not a hash")  # this seat's call fails
    async with container.sessions() as session:
        with pytest.raises(ResponseError):
            await container.bookings.free_seats(
                session=session, seats=[Seat(office, day, "*", "10:00"), Seat(other, day, "*", "10:00")]
            )
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "booked"
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_a_block_writes_nothing_while_it_looks_for_seats(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancellations and moves are written together at the end: a write begun earlier
    would hold SQLite's one write lock (every booking in the country) through the search."""
    day = world.tomorrow()
    office, neighbour, booked, _ = await a_busy_office(client, world)
    find = _Places.find
    written_before: list[str] = []

    async def find_watching(places: _Places, booking: Booking) -> Any:
        written_before.extend(s for s in sent if re.match(r"\s*(UPDATE|INSERT INTO|DELETE FROM) bookings\b", s))
        return await find(places, booking)

    monkeypatch.setattr(_Places, "find", find_watching)
    headers = await regulator(client, world)
    with statements() as sent:
        blocked = await client.post(
            f"/api/v1/regulator/offices/{office}/block", json={"reason": "تصمیم"}, headers=headers
        )
    assert blocked.status_code == 201, blocked.text
    assert (blocked.json()["bookings_moved"], blocked.json()["bookings_cancelled"]) == (2, 1)
    assert written_before == []
    assert any(re.match(r"\s*UPDATE bookings\b", s) for s in sent)
    for code in booked:
        assert (await client.get(f"/api/v1/bookings/{code}")).json()["office_code"] == neighbour
    await assert_record_matches_redis(world, redis_sync, [office, neighbour], day)


async def test_a_cut_never_moves_a_citizen_who_fits_when_redis_counts_a_seat_nobody_holds(
    client: Client, world: World, app: Litestar, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A citizen's cancel is committed, and before its seat goes back in Redis the clerk
    cuts the slot to the two bookings left: Redis still counts three, the record two, and
    nobody is moved or cancelled."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=3)])
    day = world.tomorrow()
    mobiles = ["09125550001", "09125550002", "09125550003"]
    codes = await book_as(client, world, office, day, mobiles)
    free_seat = BookingService.free_seat
    cut: list[Any] = []

    async def cut_before_the_release(self: BookingService, **kw: Any) -> None:
        if not cut:
            container = app.state.container
            clerk = StaffPrincipal(
                account_id=1, username="c", role=StaffRole.OFFICE_STAFF, office_id=None, office_code=office
            )
            async with container.sessions() as other:
                cut.append(
                    await container.console.set_override(
                        session=other,
                        staff=clerk,
                        office_code=office,
                        day=day,
                        rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=2)],
                        reason="two counters",
                        move_overflow=True,
                    )
                )
        await free_seat(self, **kw)

    monkeypatch.setattr(BookingService, "free_seat", cut_before_the_release)
    cancelled = await client.post(f"/api/v1/bookings/{codes[0]}/cancel", headers=world.token(mobiles[0]))
    assert cancelled.status_code == 200, cancelled.text
    assert cut[0].moved == []
    statuses = [(await client.get(f"/api/v1/bookings/{c}")).json()["status"] for c in codes]
    assert statuses == ["cancelled", "booked", "booked"]
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_a_check_in_after_a_move_to_another_office_is_refused(
    client: Client, world: World, morning: dt.datetime, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move that lands between the clerk's look and the check-in's write (SQLite has no
    row locks) wins: the old office does not check in a booking that now lives elsewhere."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's row lock makes the move wait for the check-in")
    office, elsewhere = await world.office(seats=1), await world.office(seats=1)
    today = morning.date()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), today, "08:00"), headers=world.token()
    )
    code = booked.json()["tracking_code"]
    queued = Console._queued

    async def look_then_move(console: Console, session: AsyncSession, *args: Any) -> Any:
        found = await queued(console, session, *args)
        async with AsyncSession(session.bind) as other:
            moved_to = await other.scalar(select(Office.id).where(Office.code == elsewhere))
            await other.execute(sa_update(Booking).where(Booking.tracking_code == code).values(office_id=moved_to))
            await other.commit()
        return found

    monkeypatch.setattr(Console, "_queued", look_then_move)
    headers = await staff_of(client, world, office)
    checked = await client.post(f"/api/v1/staff/offices/{office}/queue/{code}/check-in", headers=headers)
    assert checked.status_code == 409, checked.text
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"


async def test_a_retry_of_a_booking_the_office_moved_is_answered_with_it_where_it_is_now(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """The citizen's app retries (same Idempotency-Key) after the clerk moved the booking:
    the same request, answered with the booking as it now stands, not a 422."""
    office, nearby = await world.office(seats=2), await world.office(seats=2)
    day = world.tomorrow()
    mobile, national_id = "09121230000", world.national_id()
    body = booking_body(office, national_id, day, "10:00")
    headers = {**world.token(mobile), "Idempotency-Key": "retry-after-move"}
    booked = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert booked.status_code == 201
    code = booked.json()["tracking_code"]

    staff = await staff_of(client, world, office)
    later = [{"opens": "11:00", "closes": "12:00", "slot_minutes": 30, "seats": 2}]
    cut = await plan_the_day(client, office, day, staff, later, "late start")
    assert cut.status_code == 200, cut.text
    assert cut.json()["moved"] == [{"tracking_code": code, "moved": True, "office_code": office, "slot": "11:00"}]

    retried = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert (retried.json()["tracking_code"], retried.json()["office_code"], retried.json()["slot"]) == (
        code,
        office,
        "11:00",
    )
    # Still another request with that key is refused, and nothing was booked by any of it.
    other = await client.post("/api/v1/bookings", json={**body, "service_code": "102"}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    elsewhere = await client.post("/api/v1/bookings", json={**body, "office_code": nearby}, headers=headers)
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "idempotency_key_reused"
    async with world.container.sessions() as session:
        assert len(list(await session.scalars(select(Booking.id).where(Booking.mobile == mobile)))) == 1
    await assert_record_matches_redis(world, redis_sync, [office, nearby], day)


async def test_a_retry_of_a_booking_moved_to_another_office_is_answered_with_it_there(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office, nearby = await world.office(seats=1), await world.office(seats=1)
    await world.rebuild()  # the directory knows both, as at start
    day = world.tomorrow()
    body = booking_body(office, world.national_id(), day, "10:00")
    headers = {**world.token("09121230001"), "Idempotency-Key": "retry-after-closing"}
    code = (await client.post("/api/v1/bookings", json=body, headers=headers)).json()["tracking_code"]

    staff = await staff_of(client, world, office)
    closed = await plan_the_day(client, office, day, staff, [], "closed")
    assert closed.status_code == 200, closed.text
    assert closed.json()["moved"] == [{"tracking_code": code, "moved": True, "office_code": nearby, "slot": "10:00"}]

    retried = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    assert (retried.json()["tracking_code"], retried.json()["office_code"]) == (code, nearby)
    assert retried.json()["office_name_fa"] != ""
    await assert_record_matches_redis(world, redis_sync, [office, nearby], day)


async def test_seats_after_a_chunk_whose_promotions_failed_are_still_given_back(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record fails while the first chunk's promotion is recorded: that citizen goes back
    to the head of the line, and the chunks after it still free their seats (they had stayed
    counted, sold to nobody, until a rebuild)."""
    from app.booking import service as booking_service

    monkeypatch.setattr(booking_service, "SEATS_PER_TRIP", 1)
    day = world.tomorrow()
    full, first_holder, waiting = await full_with_one_waiting(client, world, day)
    other = await world.office(seats=1)
    [second_holder] = await book_full(client, world, other, day, ["10:00"], 1)
    await cancelled_in_the_record(world, [first_holder, second_holder])
    container = world.container

    async def record_away(*_: Any) -> Any:
        return set(), set(), OperationalError("UPDATE bookings", {}, Exception("the record went away"))

    monkeypatch.setattr(BookingService, "_promote", record_away)
    async with container.sessions() as session:
        with pytest.raises(OperationalError):
            await container.bookings.free_seats(
                session=session, seats=[Seat(full, day, "*", "10:00"), Seat(other, day, "*", "10:00")]
            )
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    assert redis_sync.lrange(keys.waitlist(full, day, "*"), 0, -1) == [waiting.encode()]
    assert redis_sync.hexists(keys.WAITLISTS_TO_FILL, keys.waitlist(full, day, "*"))
    await assert_record_matches_redis(world, redis_sync, [full, other], day)


async def hours_moved_to_ten_till_noon(
    client: Client, world: World, office: str, day: dt.date, moved_to: dict[str, str]
) -> None:
    """The clerk moves the day's hours to 10:00-12:00 (an hour a slot, two seats each): the
    bookings named are moved within their own office, each to its slot."""
    headers = await staff_of(client, world, office)
    later = [{"opens": "10:00", "closes": "12:00", "slot_minutes": 60, "seats": 2}]
    moved = await plan_the_day(client, office, day, headers, later, "late start")
    assert moved.status_code == 200, moved.text
    assert sorted(moved.json()["moved"], key=lambda m: m["tracking_code"]) == [
        {"tracking_code": code, "moved": True, "office_code": office, "slot": moved_to[code]}
        for code in sorted(moved_to)
    ]


async def test_a_move_today_leaves_the_citizen_time_to_get_there(
    client: Client, world: World, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10:50 the clerk ends the day at noon. The 15:30 citizen was moved to the free slot
    nearest their time from the minute on: 11:00, ten minutes after the SMS, which they could
    not reach, and were marked absent at night. A move today is half an hour ahead at least:
    with no such seat the same day, the booking is cancelled and the citizen told."""
    from tests.integration.test_console import move_clock

    office = await world.office(seats=1)
    today = morning.date()
    codes = {}
    for slot in ("11:30", "15:30"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes[slot] = booked.json()["tracking_code"]
    headers = await staff_of(client, world, office)
    move_clock(monkeypatch, morning.replace(hour=10, minute=50))
    noon = [{"opens": "08:00", "closes": "12:00", "slot_minutes": 30, "seats": 1}]
    cut = await plan_the_day(client, office, today, headers, noon, "early close")
    assert cut.status_code == 200, cut.text
    assert cut.json()["moved"] == [{"tracking_code": codes["15:30"], "moved": False, "office_code": None, "slot": None}]
    assert (await client.get(f"/api/v1/bookings/{codes['15:30']}")).json()["status"] == "cancelled"
    assert (await client.get(f"/api/v1/bookings/{codes['11:30']}")).json()["slot"] == "11:30"


async def test_a_clerk_moving_the_hours_keeps_the_booked_ahead_of_the_line(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """09:00 goes and 11:00 comes, two seats each, at an office full with one citizen in line:
    the two booked at 09:00 move to 11:00 at their own office, and the one in line keeps
    waiting. (The line used to stop their moves: they were sent away or cancelled, and the
    line was given 11:00.)"""
    day = world.tomorrow()
    office = await world.office(rules=[DayRule(opens="09:00", closes="11:00", slot_minutes=60, seats=2)])
    nine = (await book_full(client, world, office, day, ["09:00", "10:00"], 2))[:2]
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201, joined.text
    waiting = joined.json()["tracking_code"]

    await hours_moved_to_ten_till_noon(client, world, office, day, moved_to={code: "11:00" for code in nine})
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    assert redis_sync.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_a_clerk_moving_the_hours_of_a_capped_day_keeps_its_booked_there(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """Restricted to 50%, an office's day of four seats takes two, both booked at 09:00. The
    clerk moves the hours (09:00 goes, 11:00 comes): both move to 10:00 at their own office,
    the day keeps its two. (The cap counted the seats the moves were about to give back, so
    it found the day full: the two were sent away or cancelled.)"""
    day = world.tomorrow()
    office = await world.office(
        rules=[DayRule(opens="09:00", closes="11:00", slot_minutes=60, seats=2)], status="restricted"
    )
    async with world.container.sessions() as session:
        await session.execute(sa_update(Office).where(Office.code == office).values(cap_percent=50))
        await session.commit()
    await world.rebuild()
    nine = await book_full(client, world, office, day, ["09:00"], 2)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert refused.status_code == 409, refused.text  # the cap's two are taken

    await hours_moved_to_ten_till_noon(client, world, office, day, moved_to={code: "10:00" for code in nine})
    await assert_record_matches_redis(world, redis_sync, [office], day)
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "11:00"), headers=world.token()
    )
    assert refused.status_code == 409, refused.text  # still the cap's two, no more


async def test_a_booking_moved_to_another_office_waits_behind_its_line(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    """A closure sends a booking to a nearby office whose seat was just added and not yet
    handed to its line (the moment between a clerk's raise and its fill): there the moved
    citizen is a new arrival, and the seat stays the line's."""
    day = world.tomorrow()
    one_seat = [DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)]
    office, nearby = await world.office(rules=one_seat), await world.office(rules=one_seat, lat=35.701)
    await world.rebuild()  # the directory knows both
    [holder] = await book_full(client, world, office, day, ["10:00"], 1)
    await book_full(client, world, nearby, day, ["10:00"], 1)
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(nearby, world.national_id(), day, None), headers=world.token()
    )
    assert joined.status_code == 201, joined.text
    redis_sync.hset(keys.office_day(nearby, day), "s|*|10:00", 2)  # raised, not yet filled

    headers = await staff_of(client, world, office)
    closed = await plan_the_day(client, office, day, headers, [], "closed")
    assert closed.status_code == 200, closed.text
    assert closed.json()["moved"] == [{"tracking_code": holder, "moved": False, "office_code": None, "slot": None}]
    assert redis_sync.lrange(keys.waitlist(nearby, day, "*"), 0, -1) == [joined.json()["tracking_code"].encode()]
    await assert_record_matches_redis(world, redis_sync, [office, nearby], day)


@pytest.mark.parametrize("applied_by", ["the request", "the minute's job"])
async def test_a_booking_that_slips_into_a_cut_whose_clerk_moved_nobody_is_not_cancelled(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, applied_by: str
) -> None:
    """The clerk cut the day asking that nobody be moved (move_overflow=false), and the check
    found nobody; a citizen then took a seat of the cut slot before the new plan reached
    Redis. Whoever applied the plan cancelled that booking, the office having no seat left
    that day. It stays, over the plan (the slot takes nobody new)."""
    import msgspec

    from app.booking.schemas import BookingCreate

    day = world.tomorrow()
    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)])
    kept = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:30"), headers=world.token()
    )
    assert kept.status_code == 201, kept.text
    headers = await staff_of(client, world, office)
    parts = client.app.state.container
    console = parts.console
    plan_row, move_all = console._plan_row, console.move_all
    slipped: list[str] = []

    async def a_booking_slips_in(*args: Any) -> Any:
        booked = await parts.bookings.book(  # on the app's loop: the request's own parts
            sessions=parts.sessions,
            mobile=world.mobile(),
            request=msgspec.convert(booking_body(office, world.national_id(), day, "10:00"), BookingCreate),
            idempotency_key=None,
        )
        slipped.append(booked.booking.tracking_code)
        return await plan_row(*args)

    async def redis_gone(*args: Any, **kwargs: Any) -> Any:
        raise RedisTimeoutError("Redis went away")

    monkeypatch.setattr(console, "_plan_row", a_booking_slips_in)
    if applied_by == "the minute's job":
        monkeypatch.setattr(console, "move_all", redis_gone)
    cut = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}?move_overflow=false",
        json={"rules": [{"opens": "10:30", "closes": "11:00", "slot_minutes": 30, "seats": 1}], "reason": "late start"},
        headers=headers,
    )
    if applied_by == "the request":
        assert cut.status_code == 200 and cut.json()["moved"] == [], cut.text
    else:
        assert cut.status_code == 503, cut.text
        monkeypatch.setattr(console, "move_all", move_all)
        monkeypatch.setattr(console_service, "PLAN_REQUEST_SECONDS", 0)
        async with world.container.sessions() as session:
            assert await world.container.console.finish_plans(session=session) == 1
    assert len(slipped) == 1
    async with world.container.sessions() as session:
        status = await session.scalar(select(Booking.status).where(Booking.tracking_code == slipped[0]))
    assert status == BookingStatus.BOOKED
    await assert_record_matches_redis(world, redis_sync, [office], day)


async def test_a_booking_that_reaches_the_record_after_a_cuts_tries_is_moved_by_the_job(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking took its seat before the clerk's cut and reached the record only after the
    cut's looks for it (a slow commit; as often a move here by another office's cut or a
    closure, which commits its batch at its end). The cut had let its note go, and nothing
    looked again: the citizen stayed booked in hours the office no longer keeps. Now the
    minute's job applies the plan again and moves them."""
    from app.booking.schemas import BookingCreate

    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=2)])
    day = world.tomorrow()
    [first] = await book_as(client, world, office, day, ["09125550011"])
    parts = world.container
    write = parts.bookings.writer.write
    seated, landing = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> None:
        seated.set()  # its seat is taken in Redis
        await landing.wait()
        await write(*args, **kwargs)

    monkeypatch.setattr(parts.bookings.writer, "write", slow)
    on_its_way = asyncio.create_task(
        parts.bookings.book(
            sessions=parts.sessions,
            mobile="09125550012",
            request=BookingCreate(**booking_body(office, world.national_id(), day, "10:00")),
            idempotency_key=None,
        )
    )
    await asyncio.wait_for(seated.wait(), 10)
    assert used(redis_sync, office, day, "10:00") == 2
    headers = await staff_of(client, world, office)
    one = [{"opens": "10:00", "closes": "11:00", "slot_minutes": 30, "seats": 1}]
    cut = await plan_the_day(client, office, day, headers, one, "one counter")
    assert cut.status_code == 200 and cut.json()["moved"] == [], cut.text  # nobody in the record to move
    landing.set()
    late = (await on_its_way).booking.tracking_code
    monkeypatch.setattr(console_service, "PLAN_REQUEST_SECONDS", 0)
    async with world.container.sessions() as session:
        assert await world.container.console.finish_plans(session=session) == 1
        slots = dict(
            (await session.execute(select(Booking.tracking_code, Booking.slot_time).where(Booking.date == day))).all()
        )
    assert slots == {first: "10:00", late: "10:30"}  # the later booking moves
    await assert_record_matches_redis(world, redis_sync, [office], day)
    async with world.container.sessions() as session:
        assert await world.container.console.finish_plans(session=session) == 0  # done once


async def test_a_cut_moves_web_bookings_before_the_walk_ins_in_the_room(
    client: Client, world: World, morning: dt.datetime, redis_sync: SyncRedis
) -> None:
    """The walk-ins are the day's newest bookings, so a cut's "newest first" had sent the
    people sitting in the room to another office, and kept those booked days ago."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=3)])
    await world.office(lat=35.71)  # somewhere to move to
    await world.rebuild()
    today = morning.date()
    clerk = await staff_of(client, world, office)
    web = await book_as(client, world, office, today, ["09125550011", "09125550012"])
    walk_in = await client.post(
        f"/api/v1/staff/offices/{office}/walk-ins",
        json={"national_id": world.national_id(), "service_code": "101"},
        headers=clerk,
    )
    assert walk_in.status_code == 201 and walk_in.json()["slot"] == "10:00", walk_in.text
    container = world.container  # another instance's clerk: the test's own loop
    principal = StaffPrincipal(
        account_id=1, username="c", role=StaffRole.OFFICE_STAFF, office_id=None, office_code=office
    )
    async with container.sessions() as session:
        change = await container.console.set_override(
            session=session,
            staff=principal,
            office_code=office,
            day=today,
            rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=2)],
            reason="one counter fewer",
            move_overflow=True,
        )
    assert [m.tracking_code for m in change.moved] == [web[1]]  # the newest web booking
    async with world.container.sessions() as session:
        kept = await session.scalar(select(Booking).where(Booking.tracking_code == walk_in.json()["tracking_code"]))
    assert kept is not None and kept.status is BookingStatus.BOOKED and kept.slot_time == "10:00"
    await assert_record_matches_redis(world, redis_sync, [office], today)
