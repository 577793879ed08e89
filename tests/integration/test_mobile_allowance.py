"""The bookings one mobile may make (NOBAT_BOOKINGS_PER_MOBILE), against a real Redis and
record: a phone books for its family up to the bound; what was refused or retried is not
counted; concurrent tries never pass it."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import func, select

from app.booking.models import Booking
from app.capacity import keys
from app.capacity.plan import DayRule
from app.errors import RateLimited
from app.ratelimit import RateLimiter
from app.settings import Settings
from tests.conftest import Served, World, booking_body, fails_once

Client = AsyncTestClient[Litestar]

ALLOWANCE = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(bookings_per_mobile=f"{ALLOWANCE}/3600")


async def rows_of(world: World, mobile: str) -> int:
    async with world.container.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Booking).where(Booking.mobile == mobile)) or 0)


def used(redis: SyncRedis, office: str, day: dt.date) -> int:
    fields = redis.hgetall(keys.office_day(office, day))
    return sum(int(v) for f, v in fields.items() if f.decode().startswith(keys.used_field("*", "")))


async def book(client: Client | Served, world: World, mobile: str, office: str, day: dt.date, **extra: Any) -> Any:
    headers = {**world.token(mobile), **extra.pop("headers", {})}
    return await client.post(
        "/api/v1/bookings",
        json=booking_body(office, extra.pop("national_id", None) or world.national_id(), day, **extra),
        headers=headers,
    )


async def assert_used_up(client: Client, world: World, mobile: str, office: str, day: dt.date) -> None:
    """The phone's next booking is refused for its bound, and it holds the bookings it made."""
    over = await book(client, world, mobile, office, day)
    assert over.status_code == 429 and over.json()["code"] == "too_many_bookings_from_mobile", over.text
    assert await rows_of(world, mobile) == ALLOWANCE


async def test_a_mobile_books_for_its_family_up_to_its_allowance(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=10)
    day = world.tomorrow()
    mobile = "09121234567"
    for _ in range(ALLOWANCE):
        assert (await book(client, world, mobile, office, day)).status_code == 201

    refused_id = world.national_id()
    refused = await book(client, world, mobile, office, day, national_id=refused_id)
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "too_many_bookings_from_mobile"
    assert problem["limit"] == ALLOWANCE and "۳" in problem["message_fa"]
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    # Refused before anything changed: no row, no seat, no hold on the national ID.
    assert await rows_of(world, mobile) == ALLOWANCE
    assert used(redis_sync, office, day) == ALLOWANCE
    assert redis_sync.hlen(keys.citizen_holds(refused_id)) == 0

    # Another phone is not touched by it, and the same national ID books from its own phone.
    other = await book(client, world, "09127654321", office, day, national_id=refused_id)
    assert other.status_code == 201, other.text


async def test_the_booking_page_past_the_allowance_says_when_to_try_again(client: Client, world: World) -> None:
    """The page's refusal is a 429 like the API's, with its Retry-After (the page had dropped it)."""
    from tests.integration.test_pages_double_taps import HTML, book_form, sign_in

    office = await world.office(seats=10)
    mobile = "09121234568"
    for _ in range(ALLOWANCE):
        assert (await book(client, world, mobile, office, world.tomorrow())).status_code == 201
    sign_in(client, world, mobile)
    refused = await client.post("/book", data=await book_form(client, world, office), headers=HTML)
    assert refused.status_code == 429, refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 3600


async def test_refused_tries_and_retries_do_not_use_the_allowance(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(rules=[DayRule(opens="10:00", closes="12:00", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    mobile = "09121112222"
    national_id = world.national_id()
    first = await book(
        client, world, mobile, office, day, slot="10:00", national_id=national_id, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status_code == 201
    # A full slot, a bad national ID, and three retries of the booking made.
    for _ in range(3):
        full = await book(client, world, mobile, office, day, slot="10:00")
        assert full.status_code == 409 and full.json()["code"] == "slot_full"
    bad = await book(client, world, mobile, office, day, national_id="1111111111")
    assert bad.status_code == 422
    replay_body = booking_body(office, national_id, day, "10:00")
    for _ in range(3):
        replay = await client.post(
            "/api/v1/bookings", json=replay_body, headers={**world.token(mobile), "Idempotency-Key": "k-1"}
        )
        assert replay.status_code == 201 and replay.headers.get("Idempotent-Replayed") == "true"

    # Only the one booking made counts: two more fit, then the bound.
    assert (await book(client, world, mobile, office, day, slot="10:30")).status_code == 201
    assert (await book(client, world, mobile, office, day, slot="11:00")).status_code == 201
    await assert_used_up(client, world, mobile, office, day)
    assert used(redis_sync, office, day) == ALLOWANCE


async def test_concurrent_tries_from_one_mobile_never_pass_the_allowance(
    served: Served, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=50)
    day = world.tomorrow()
    mobile = "09123334444"
    tries = await asyncio.gather(*(book(served, world, mobile, office, day) for _ in range(30)))
    statuses = sorted(r.status_code for r in tries)
    assert statuses == [201] * ALLOWANCE + [429] * (30 - ALLOWANCE), statuses
    assert await rows_of(world, mobile) == ALLOWANCE
    assert used(redis_sync, office, day) == ALLOWANCE


async def test_tries_that_fail_in_a_race_give_their_allowance_back(
    client: Client, served: Served, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    mobile = "09125556666"
    # Twenty at once for one seat: the allowance is taken by all that pass it, and given
    # back by those the seat refuses.
    race = await asyncio.gather(*(book(served, world, mobile, office, day, slot="10:00") for _ in range(20)))
    assert sorted(r.status_code for r in race).count(201) == 1
    assert {r.json()["code"] for r in race if r.status_code != 201} <= {"slot_full", "too_many_bookings_from_mobile"}
    # So the phone still has the rest of its allowance: the race's losers used none of it.
    assert (await book(client, world, mobile, office, day, slot="10:30")).status_code == 201
    other_office = await world.office(seats=5)
    assert (await book(client, world, mobile, other_office, day)).status_code == 201
    await assert_used_up(client, world, mobile, other_office, day)


async def test_a_waitlist_join_is_one_of_the_allowance(client: Client, world: World, redis_sync: SyncRedis) -> None:
    full = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    open_office = await world.office(seats=5)
    day = world.tomorrow()
    assert (await book(client, world, "09120000009", full, day)).status_code == 201
    mobile = "09127778888"

    async def join() -> Any:
        return await client.post(
            "/api/v1/waitlist", json=booking_body(full, world.national_id(), day, None), headers=world.token(mobile)
        )

    refused = await client.post(
        "/api/v1/waitlist", json=booking_body(open_office, world.national_id(), day, None), headers=world.token(mobile)
    )
    assert refused.status_code == 409 and refused.json()["code"] == "seats_available"  # given back
    assert (await join()).status_code == 201
    assert (await book(client, world, mobile, open_office, day)).status_code == 201
    assert (await join()).status_code == 201
    over = await join()
    assert over.status_code == 429 and over.json()["code"] == "too_many_bookings_from_mobile"
    await assert_used_up(client, world, mobile, open_office, day)


async def test_an_allowance_counts_what_was_taken_not_what_was_tried(redis_url: str, redis_sync: SyncRedis) -> None:
    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis)

    async def take(subject: str) -> int:
        return int(await limiter.auto.run_script(*limiter.take_call("t", subject, "2/60")))

    try:
        assert await take("a") == 0
        assert await take("a") == 0
        # Refused tries while the allowance is used up take nothing...
        for _ in range(3):
            assert 0 < await take("a") <= 60
        # ...so one given back is one that may be taken again, once.
        await limiter.give_back("t", "a")
        assert await take("a") == 0
        assert await take("a") > 0
        # Given back more than was taken (its window ended meanwhile), it never goes below nothing.
        for _ in range(3):
            await limiter.give_back("t", "b")
        assert [await take("b") == 0 for _ in range(3)] == [True, True, False]
    finally:
        await redis.aclose()


async def test_an_allowance_used_up_in_its_last_half_second_is_still_refused(
    redis_url: str, redis_sync: SyncRedis
) -> None:
    """Redis's TTL rounds: with under half a second of the window left it reads 0, which the
    scripts answered as "allowed" (a take then counted nothing, and its give-back took one
    of someone's later takes)."""
    from app.ratelimit import _key

    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis)

    async def take() -> int:
        return int(await limiter.auto.run_script(*limiter.take_call("t", "late", "1/60")))

    async def hit() -> int:
        try:
            await limiter.hit("h", "late", "1/60")
        except RateLimited as refused:
            return refused.retry_after
        return 0

    try:
        for action, attempt in (("t", take), ("h", hit)):
            key = _key(action, "late")
            for _ in range(5):
                redis_sync.set(key, 1, px=450)  # used up, 450 ms of its window left
                answer = await attempt()
                if redis_sync.pttl(key) < 1000:  # not a window begun anew (a stall past the 450 ms)
                    break
            assert answer == 1, action
    finally:
        await redis.aclose()


async def test_a_retry_once_the_allowance_is_used_up_still_gets_its_booking(
    client: Client, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=10)
    day = world.tomorrow()
    mobile = "09129990000"
    bodies = [booking_body(office, world.national_id(), day) for _ in range(ALLOWANCE)]
    made = []
    for number, body in enumerate(bodies):
        headers = {**world.token(mobile), "Idempotency-Key": f"family-{number}"}
        made.append(await client.post("/api/v1/bookings", json=body, headers=headers))
    assert [r.status_code for r in made] == [201] * ALLOWANCE
    # The app lost the last answer and asks again: its booking, not "too many".
    retried = await client.post(
        "/api/v1/bookings",
        json=bodies[-1],
        headers={**world.token(mobile), "Idempotency-Key": f"family-{ALLOWANCE - 1}"},
    )
    assert retried.status_code == 201, retried.text
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert retried.json()["tracking_code"] == made[-1].json()["tracking_code"]
    await assert_used_up(client, world, mobile, office, day)
    assert used(redis_sync, office, day) == ALLOWANCE


@pytest.mark.parametrize("request_fails_at", ["a booking's insert", "a join's take"])
async def test_a_failed_requests_allowance_is_given_back_once_redis_answers(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch, request_fails_at: str
) -> None:
    """A booking the record refused gave its allowance back in one try, and Redis away at that
    moment kept it taken (one booking fewer for the phone all day); a join's take whose
    answer was lost was never given back. Both are now given back once Redis answers."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import OperationalError

    from app.booking import service as booking_service

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    mobile = "09121239876"
    container = client.app.state.container
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    counter = f"{keys.NAMESPACE}:rl:{booking_service.MOBILE_ALLOWANCE}:{mobile}"
    if request_fails_at == "a booking's insert":
        fails_once(monkeypatch, container.bookings.writer, "write", OperationalError("INSERT", {}, Exception("away")))
        fails_once(monkeypatch, container.bookings.limiter, "give_back", RedisConnectionError("Redis away a moment"))
        assert (await book(client, world, mobile, office, day)).status_code == 503
    else:
        assert (await book(client, world, world.mobile(), office, day)).status_code == 201  # the day is full
        auto = container.bookings.limiter.auto
        run_script = auto.run_script

        async def answer_lost(*args: Any) -> Any:
            monkeypatch.setattr(auto, "run_script", run_script)
            await run_script(*args)
            raise RedisTimeoutError("Timeout reading from Redis")

        monkeypatch.setattr(auto, "run_script", answer_lost)
        joined = await client.post(
            "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token(mobile)
        )
        assert joined.status_code == 503, joined.text
    for _ in range(50):
        if int(redis_sync.get(counter) or 0) == 0:
            break
        await asyncio.sleep(0.1)
    assert int(redis_sync.get(counter) or 0) == 0


async def test_a_take_whose_trip_failed_is_not_given_back_later(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The booking's trip to Redis failed (the take most likely never ran), and so did the
    give-back: sent again once Redis answered, it took back one of the phone's earlier
    bookings, and each failed request of an outage one more."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.booking import service as booking_service

    office = await world.office(seats=10)
    day = world.tomorrow()
    mobile = "09121239877"
    assert (await book(client, world, mobile, office, day)).status_code == 201
    container = client.app.state.container
    counter = f"{keys.NAMESPACE}:rl:{booking_service.MOBILE_ALLOWANCE}:{mobile}"
    assert int(redis_sync.get(counter) or 0) == 1
    fails_once(monkeypatch, container.capacity, "hold_and_reserve", RedisConnectionError("Redis away"))
    fails_once(monkeypatch, container.bookings.limiter, "give_back", RedisConnectionError("Redis away a moment"))
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    assert (await book(client, world, mobile, office, day)).status_code == 503
    await asyncio.sleep(0.5)  # the give-back, had it been sent again
    assert int(redis_sync.get(counter) or 0) == 1
