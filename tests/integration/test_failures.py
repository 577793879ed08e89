"""Failures of the real parts, each against real servers: Redis restarted empty mid-day,
the database gone, a commit's or Redis's answer lost, an SMS worker killed mid-send."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import func, literal, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import cli, db
from app import container as container_module
from app.booking import relocation, writer
from app.booking import service as booking_service
from app.booking.models import SEAT_STATUSES, Booking, Channel
from app.booking.schemas import BookingCreate
from app.booking.service import BookingRules
from app.capacity import keys, watch
from app.capacity.errors import CapacityRebuilding
from app.capacity.plan import DayRule
from app.capacity.scripts import as_text
from app.capacity.service import Seat, SeatRequest, _reserve_call
from app.capacity.watch import rebuild_paused
from app.container import Container
from app.db import commit_outcome
from app.enforcement.service import MOVES_LOCK
from app.main import create_app
from app.offices.models import Office, OfficeStatus
from app.redis import AutoPipeline, EmbeddedRedis, connect, renewed_lock
from app.regulator.service import CLOSURE_MOVES_LOCK
from app.settings import SEND_JOB_TIMEOUT, Settings
from app.sms.models import SmsMessage, SmsStatus
from app.web import problem_for
from loadtests.twilio_standin import TwilioStandIn
from tests.conftest import (
    World,
    booking_body,
    fails_once,
    health_until,
    holds,
    rebuild,
    started_app,
    watch_held,
)
from tests.integration.test_complaints import STEPS, complain, regulator
from tests.integration.test_console import staff_of, used

Client = AsyncTestClient[Litestar]


@pytest.fixture
def capacity_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to stop and start again; the job queues stay on the shared one."""
    server = EmbeddedRedis(tmp_path / "capacity").start()
    yield server
    server.stop()


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(settings: Settings, capacity_redis: EmbeddedRedis, settings_changes: dict[str, Any]) -> Settings:
    return settings.with_(redis_url=capacity_redis.url, rq_redis_url=settings.redis_url, **settings_changes)


async def holds_let_go(server: EmbeddedRedis, national_id: str) -> None:
    """Wait (up to 5 s) for the citizen's holds to be given back, as once Redis answers."""
    with SyncRedis.from_url(server.url) as redis:
        for _ in range(50):
            if not holds(redis, national_id):
                break
            await asyncio.sleep(0.1)
        assert holds(redis, national_id) == []


def ten_oclock_used(server: EmbeddedRedis, office: str, day: dt.date) -> int:
    """Seats counted in the capacity Redis for the office's 10:00 slot (where ``book`` books)."""
    with SyncRedis.from_url(server.url) as redis:
        return used(redis, office, day, "10:00")


async def booked_and_a_regulator(client: Client, world: World) -> tuple[str, dt.date, str, dict[str, str]]:
    """An office with a booking for tomorrow (its tracking code), and a signed-in regulator."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    code = (await book(client, world, office, day)).json()["tracking_code"]
    return office, day, code, await regulator(client, world)


async def finish_blocks(jobs: Container) -> int:
    """The minute's job (workers.cron) that moves what blocks left."""
    async with jobs.sessions() as session:
        return await jobs.enforcement.finish_blocks(session=session)


async def finish_closures(jobs: Container) -> int:
    """The minute's job (workers.cron) that moves what closures left."""
    async with jobs.sessions() as session:
        return await jobs.regulator.finish_closures(session=session)


async def book(client: Client, world: World, office: str, day: dt.date) -> Any:
    return await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )


async def test_redis_restarted_empty_mid_day(client: Client, world: World, capacity_redis: EmbeddedRedis) -> None:
    office = await world.office(seats=3)
    day = world.tomorrow()
    for _ in range(2):
        assert (await book(client, world, office, day)).status_code == 201

    capacity_redis.stop()
    down = await book(client, world, office, day)
    assert down.status_code == 503 and down.headers["Retry-After"]
    assert down.json()["code"] == "service_unavailable"
    ready = await client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["redis"] == "unavailable"

    capacity_redis.start()  # same port, no data
    deadline = time.monotonic() + 20
    while True:
        again = await book(client, world, office, day)
        if again.status_code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert again.status_code == 201, again.text  # the third seat, counted from the record
    full = await book(client, world, office, day)
    assert full.status_code == 409
    assert ten_oclock_used(capacity_redis, office, day) == 3
    async with world.container.sessions() as session:
        booked = await session.scalar(
            select(func.count()).select_from(Booking).where(Booking.status.in_(SEAT_STATUSES))
        )
    assert booked == 3


async def test_an_instance_started_while_redis_is_away_serves_once_it_is_back(
    client: Client, world: World, settings: Settings, capacity_redis: EmbeddedRedis
) -> None:
    """A pod restarted during Redis's failover starts (not ready), rather than failing its
    start-up until its restarts back off for minutes, and serves as soon as Redis answers."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    capacity_redis.stop()
    async with AsyncTestClient(create_app(settings), timeout=60) as started:
        assert (await started.get("/health/live")).status_code == 200
        assert (await started.get("/health/ready")).status_code == 503
        assert (await book(started, world, office, day)).status_code == 503

        capacity_redis.start()  # same port, no data: counted again from the record
        await health_until(started, 200)
        assert (await book(started, world, office, day)).status_code == 201
        nearby = await started.get("/api/v1/offices/nearby", params={"service": "101", "lat": 35.7, "lon": 51.4})
        assert nearby.status_code == 200, nearby.text
        assert office in [found["code"] for found in nearby.json()["offices"]]
    assert ten_oclock_used(capacity_redis, office, day) == 1


@pytest.mark.parametrize("settings_changes", [{"rebuild_settle_seconds": 4.0}])
async def test_a_rebuild_waits_for_the_bookings_in_flight(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis loses its data while a booking that took the last seat is still on its way to
    its commit: the booking does not commit during the pause (503), the count starts after
    it, and the record and Redis agree. (Counted first and committed after, it had been in
    the record with its seat counted free: sold again.)"""
    office = await world.office(seats=1)
    await world.rebuild()
    day = world.tomorrow()
    redis = SyncRedis.from_url(capacity_redis.url)
    writer = client.app.state.container.bookings.writer
    write = writer.write

    async def lose_redis_then_write(*args: Any, **kwargs: Any) -> None:
        redis.flushall()  # with the seat taken: the instance notices within a second
        await asyncio.sleep(2.5)  # a commit under load, or behind a slow disk
        await write(*args, **kwargs)

    monkeypatch.setattr(writer, "write", lose_redis_then_write)
    assert (await book(client, world, office, day)).status_code == 503
    monkeypatch.setattr(writer, "write", write)
    await health_until(client, 200)  # the watch saw the counters gone, counted, and resumed
    async with world.container.sessions() as session:
        recorded = await session.scalar(select(func.count()).select_from(Booking))
    assert ten_oclock_used(capacity_redis, office, day) == recorded == 0
    assert (await book(client, world, office, day)).status_code == 201
    redis.close()


async def test_a_booking_undone_after_a_recount_frees_no_one_elses_seat(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking took its seat, the day was then counted again from the record (which did not
    have it), and its insert failed: giving its seat back would free somebody else's."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    container = client.app.state.container
    write = container.bookings.writer.write

    async def recount_then_fail(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(container.bookings.writer, "write", write)  # once
        async with container.sessions() as session:
            await container.capacity.rebuild(session=session, today=container.clock.today())
        raise OperationalError("INSERT", {}, Exception("the record went away"))

    monkeypatch.setattr(container.bookings.writer, "write", recount_then_fail)
    assert (await book(client, world, office, day)).status_code == 503
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the first


def insert_fails_then_redis_away(monkeypatch: pytest.MonkeyPatch, container: Container) -> None:
    """The next booking's insert fails, and Redis is away a moment as it gives back its hold
    (each once): its undo waits for Redis (``BookingService._undo_later``)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    write, unhold = container.bookings.writer.write, container.capacity.unhold

    async def insert_fails(*_: Any, **__: Any) -> None:
        monkeypatch.setattr(container.bookings.writer, "write", write)  # once
        raise OperationalError("INSERT", {}, Exception("the record went away"))

    async def redis_away(**_: Any) -> None:
        monkeypatch.setattr(container.capacity, "unhold", unhold)  # back for the next call
        raise RedisConnectionError("Redis away a moment")

    monkeypatch.setattr(container.bookings.writer, "write", insert_fails)
    monkeypatch.setattr(container.capacity, "unhold", redis_away)


async def test_a_failed_booking_undone_while_redis_is_away_is_undone_once_it_answers(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record refused the insert, and Redis was away a moment as the booking gave back
    what it took: its hold, seat and Idempotency-Key stayed taken for nobody. The citizen was
    refused "already booked" until the day went by, a retry with the key was "in progress" for
    a day, and nothing recounted a Redis that came back as it was. Now given back once it answers."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    insert_fails_then_redis_away(monkeypatch, client.app.state.container)
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    body, headers = booking_body(office, world.national_id(), day), world.token()
    headers = {**headers, "Idempotency-Key": "undo-later-1"}
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
    for _ in range(50):  # the instance gives back what it can once Redis answers
        if await world.container.redis.hlen(keys.BOOKINGS_TO_SETTLE):
            break
        await asyncio.sleep(0.1)
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the job's to free, once the record says
    async with world.container.sessions() as session:
        assert await world.container.bookings.settle_bookings(session=session) == 1
    assert ten_oclock_used(capacity_redis, office, day) == 0
    retried = await client.post("/api/v1/bookings", json=body, headers=headers)  # the same request again
    assert retried.status_code == 201, retried.text
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_failed_bookings_undo_sends_its_seat_once_and_its_marks_until_they_land(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seat is left to the job in one write at most: its answer lost, it may have landed,
    and written again after the job had freed the seat, the seat would be freed twice. The
    marks that free the hold and the key are sent until they land (marking twice marks once)."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    container = client.app.state.container
    settle, forget = container.capacity.settle_booking_later, container.capacity.forget_unanswered
    calls = {"settle": 0, "forget": 0}

    async def settle_answer_lost(*args: Any) -> None:
        calls["settle"] += 1
        await settle(*args)
        raise RedisTimeoutError("the answer was lost")

    async def forget_not_yet(**kwargs: Any) -> bool:
        calls["forget"] += 1
        return calls["forget"] > 1 and await forget(**kwargs)

    insert_fails_then_redis_away(monkeypatch, container)
    monkeypatch.setattr(container.capacity, "settle_booking_later", settle_answer_lost)
    monkeypatch.setattr(container.capacity, "forget_unanswered", forget_not_yet)
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1, 0.1, 0.1, 0.1))
    body = booking_body(office, world.national_id(), day)
    headers = {**world.token(), "Idempotency-Key": "undo-later-2"}
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
    for _ in range(50):
        if calls["forget"] >= 2:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the tries left, had they gone on
    assert calls == {"settle": 1, "forget": 2}
    async with world.container.sessions() as session:
        assert await world.container.bookings.settle_bookings(session=session) == 1  # it had landed
    assert ten_oclock_used(capacity_redis, office, day) == 0
    retried = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert retried.status_code == 201, retried.text


@pytest.mark.parametrize("redis_then", ["back", "still away"])
async def test_a_failed_bookings_undo_waiting_for_redis_tries_once_more_as_the_instance_stops(
    client: Client,
    world: World,
    settings: Settings,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    redis_then: str,
) -> None:
    """An instance stopped (a deploy) while an undo waited minutes for its next try: the task
    went with the event loop, and the citizen's hold and key stayed taken until a rebuild with
    nothing in the log. Now it tries at once as the instance stops, or is named in the log."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    office = await world.office(seats=2)
    day = world.tomorrow()
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (3600,))
    body = booking_body(office, world.national_id(), day)
    headers = {**world.token(), "Idempotency-Key": "undo-at-shutdown"}
    async with AsyncTestClient(create_app(settings), timeout=60) as stopping:
        container = stopping.app.state.container

        async def still_away(**_: Any) -> bool:
            raise RedisConnectionError("Redis still away")

        insert_fails_then_redis_away(monkeypatch, container)
        if redis_then == "still away":
            monkeypatch.setattr(container.capacity, "forget_unanswered", still_away)
        assert (await stopping.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
        started = time.monotonic()
    assert time.monotonic() - started < 10  # not the hour of the next try
    if redis_then == "still away":
        assert "a failed booking's hold and key stay taken" in caplog.text
        return
    assert await world.container.redis.hlen(keys.BOOKINGS_TO_SETTLE) == 1  # the seat, the job's to free
    async with world.container.sessions() as session:
        assert await world.container.bookings.settle_bookings(session=session) == 1
    assert ten_oclock_used(capacity_redis, office, day) == 0
    retried = await client.post("/api/v1/bookings", json=body, headers=headers)  # another instance
    assert retried.status_code == 201, retried.text


async def test_a_cancel_released_after_a_recount_frees_no_one_elses_seat(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record let a cancelled booking go, the day was then counted again from it (which
    left the seat out), and only then was the seat released: that freed somebody else's."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    mine = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    assert (await book(client, world, office, day)).status_code == 201
    container = client.app.state.container
    release = container.capacity.release

    async def recount_then_release(**kwargs: Any) -> Any:
        await rebuild(container)
        return await release(**kwargs)

    monkeypatch.setattr(container.capacity, "release", recount_then_release)
    code = mine.json()["tracking_code"]
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200, cancelled.text
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the other citizen's


async def test_a_cancel_frees_its_seat_in_a_day_counted_before_count_ids(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """A day written before days carried their count's id (an upgrade that kept Redis) is
    still freed by a cancel: not left counted until the next rebuild."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    mine = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    assert (await book(client, world, office, day)).status_code == 201
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.hdel(keys.office_day(office, day), "_count") == 1
    code = mine.json()["tracking_code"]
    assert (await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))).is_success
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def full_with_one_waiting(client: Client, world: World) -> tuple[str, dt.date, str, str]:
    """An office with one slot of two seats tomorrow, both booked (one by 09121110000, who
    will cancel), and a third citizen waiting: the office, the day, and the tracking codes
    of the one who cancels and of the one waiting."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=2)])
    await world.rebuild()
    day = world.tomorrow()
    mine = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    assert (await book(client, world, office, day)).status_code == 201
    waiting = await client.post(
        "/api/v1/waitlist", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert waiting.status_code == 201, waiting.text
    return office, day, mine.json()["tracking_code"], waiting.json()["tracking_code"]


async def cancel_in_a_pause(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, *, recount: bool
) -> tuple[str, dt.date, str]:
    """``full_with_one_waiting``, then a cancel whose freed seat goes to the head of the line
    just as capacity pauses (and, with ``recount``, the day is counted from the record, where
    that citizen still waits). The office, the day, and the waiting citizen's tracking code."""
    office, day, code, waiting = await full_with_one_waiting(client, world)
    container = client.app.state.container
    release = container.capacity.release

    async def release_then_pause(**kwargs: Any) -> Any:
        promotions = await release(**kwargs)
        container.capacity.ready = False  # the watch pauses...
        if recount:
            await rebuild(container)  # ...and counts
        return promotions

    async with watch_held():
        monkeypatch.setattr(container.capacity, "release", release_then_pause)
        try:
            cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
        finally:
            container.capacity.ready = True
            monkeypatch.setattr(container.capacity, "release", release)
    assert cancelled.status_code == 200, cancelled.text
    return office, day, waiting


async def test_a_promotion_given_back_after_a_recount_frees_no_one_elses_seat(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A freed seat went to the head of the line, the day was counted again from the record
    (where that citizen still waits), and the promotion was not recorded: the seat given
    back again was not in the count, and freeing it freed the other holder's."""
    office, day, code, waiting = await full_with_one_waiting(client, world)
    bookings = client.app.state.container.bookings
    promote = bookings._promote

    async def recount_then_lose_the_promotion(*args: Any) -> tuple[set[str], set[str], None]:
        monkeypatch.setattr(bookings, "_promote", promote)  # once: the seat then goes round again
        await rebuild(client.app.state.container)
        return set(), set(), None

    monkeypatch.setattr(bookings, "_promote", recount_then_lose_the_promotion)
    assert (await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))).is_success
    promoted = (await client.get(f"/api/v1/bookings/{waiting}")).json()
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")
    assert ten_oclock_used(capacity_redis, office, day) == 2  # the other citizen, and the one promoted


@pytest.mark.parametrize("recount", [True, False])
async def test_a_promotion_during_a_recount_pause_is_not_recorded_and_keeps_the_line(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, recount: bool
) -> None:
    """A freed seat went to the head of the line, then capacity paused (and the day was
    counted from the record, where that citizen still waits). Recorded after the count, the
    promotion would hold a seat the count left out, for somebody else to take; so nothing is
    recorded during the pause, and the citizen keeps their place at the head of the line
    (handed round instead, the seat had taken the whole line, one citizen at a time)."""
    office, day, waiting = await cancel_in_a_pause(client, world, monkeypatch, recount=recount)
    still = (await client.get(f"/api/v1/bookings/{waiting}")).json()
    assert still["status"] == "waitlisted"
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the other citizen's
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]


async def test_a_seat_left_free_in_a_recount_goes_to_the_line_when_bookings_resume(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seat of a cancel during a recount is left free with the citizen still first in
    line (above). While anyone is in line nobody else may book it, and joining the line was
    refused as "seats available": the seat stayed empty until another cancel there. When the
    watch sees the count done, the line is filled."""
    office, day, waiting = await cancel_in_a_pause(client, world, monkeypatch, recount=True)
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"

    # The app's watch (a look a second) meets a recount: the counters unbuilt, then built again.
    with SyncRedis.from_url(capacity_redis.url) as redis:
        redis.delete(keys.REBUILT_AT)
    for _ in range(100):
        promoted = (await client.get(f"/api/v1/bookings/{waiting}")).json()
        if promoted["status"] != "waitlisted":
            break
        await asyncio.sleep(0.1)
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")
    assert ten_oclock_used(capacity_redis, office, day) == 2


@pytest.mark.parametrize("promoted_meanwhile", [True, False])
async def test_a_waitlist_join_whose_answer_is_lost(
    client: Client,
    world: World,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    promoted_meanwhile: bool,
) -> None:
    """The join ran in Redis, but its answer was lost. If a cancel meanwhile gave the seat to
    this citizen, that booking is recorded and announced: it stays (the undo had deleted it,
    leaving a seat counted for nobody and an SMS with a code that no longer exists).
    Otherwise the join is taken back whole: row, hold and place in line."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    day = world.tomorrow()
    mine = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    container = client.app.state.container
    join = container.capacity.join_waitlist

    async def join_then_lose_the_answer(**kwargs: Any) -> Any:
        await join(**kwargs)
        if promoted_meanwhile:
            async with container.sessions() as session:
                await container.bookings.cancel(
                    session=session, tracking_code=mine.json()["tracking_code"], mobile="09121110000"
                )
        raise RedisTimeoutError("the answer was lost")

    monkeypatch.setattr(container.capacity, "join_waitlist", join_then_lose_the_answer)
    national_id = world.national_id()
    joined = await client.post(
        "/api/v1/waitlist", json=booking_body(office, national_id, day, None), headers=world.token("09125550000")
    )
    assert joined.status_code == 503, joined.text
    async with world.container.sessions() as session:
        rows = (
            await session.execute(select(Booking.status, Booking.slot_time).where(Booking.mobile == "09125550000"))
        ).all()
    with SyncRedis.from_url(capacity_redis.url) as redis:
        held = holds(redis, national_id)
        line = redis.lrange(keys.waitlist(office, day, "*"), 0, -1)
    if promoted_meanwhile:
        assert [(r.status.value, r.slot_time) for r in rows] == [("booked", "10:00")]
        assert len(held) == 1 and ten_oclock_used(capacity_redis, office, day) == 1
    else:
        assert (rows, held, line) == ([], [], [])
        assert ten_oclock_used(capacity_redis, office, day) == 1  # the first citizen's


async def test_nothing_commits_while_capacity_is_paused_for_a_recount(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking that reaches its commit after this instance paused for a recount is rolled
    back (503): committed now, the count might miss it and sell its seat again."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    capacity = client.app.state.container.capacity
    commit = client.app.state.container.bookings.writer._commit

    async def paused_meanwhile(*args: Any) -> None:
        capacity.ready = False  # as the watch does when Redis lost its counters
        await commit(*args)

    monkeypatch.setattr(client.app.state.container.bookings.writer, "_commit", paused_meanwhile)
    async with watch_held():
        paused = await book(client, world, office, day)
    capacity.ready = True
    assert paused.status_code == 503, paused.text
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 0
    assert ten_oclock_used(capacity_redis, office, day) == 0  # given back


@pytest.mark.parametrize("failing", ["release", "promotion"])
async def test_a_cancel_whose_seat_cannot_be_given_back_is_still_a_cancel(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The cancel is committed; then Redis fails to take the seat back, or the record fails
    to book the citizen the seat went to. The answer is still 200 (it is cancelled), and the
    citizen's limit is free: they may book that day again (it had stayed taken until a
    rebuild, refusing them as already booked that day)."""
    _office, day, code, _waiting = await full_with_one_waiting(client, world)
    container = client.app.state.container
    if failing == "release":
        monkeypatch.setattr(container.capacity, "release", _fails(RedisTimeoutError("Redis went away")))
    else:
        monkeypatch.setattr(container.bookings, "_promote", _fails(OperationalError("UPDATE", {}, Exception("gone"))))
    async with world.container.sessions() as session:
        mine = await session.scalar(select(Booking).where(Booking.tracking_code == code))
        assert mine is not None
        national_id = mine.national_id
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    elsewhere = await world.office()
    again = await client.post(
        "/api/v1/bookings", json=booking_body(elsewhere, national_id, day), headers=world.token("09121110000")
    )
    assert again.status_code == 201, again.text


async def a_promotion_the_record_fails_to_take(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dt.date, str]:
    """A cancel whose seat went to the head of the line, the record failing as it booked them
    (``full_with_one_waiting``): the office, the day, and the waiting citizen's code."""
    office, day, code, waiting = await full_with_one_waiting(client, world)
    messenger = client.app.state.container.bookings.messenger
    queue = messenger.queue

    def record_gone(session: Any, *, kind: str, **kwargs: Any) -> Any:
        if kind == "waitlist_promoted":
            raise OperationalError("INSERT", {}, Exception("the record went away"))
        return queue(session, kind=kind, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(messenger, "queue", record_gone)
        cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200, cancelled.text
    return office, day, waiting


async def test_a_promotion_the_record_fails_to_take_keeps_the_line_and_is_filled_later(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel's seat went to the head of the line, and the record failed before it booked
    them. The citizen had left the line in Redis, holding a seat nobody had booked, until a
    rebuild. Now the seat is freed, they are first in line again, and the minute's job gives
    it to them once the record is back."""
    office, day, waiting = await a_promotion_the_record_fails_to_take(client, world, monkeypatch)
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the other citizen's
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]
        assert set(redis.hkeys(keys.WAITLISTS_TO_FILL)) == {keys.waitlist(office, day, "*").encode()}

    jobs = world.container  # the job's own parts
    async with jobs.sessions() as session:
        assert await jobs.bookings.fill_waitlists_left(session=session) == 1
    promoted = (await client.get(f"/api/v1/bookings/{waiting}")).json()
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")
    assert ten_oclock_used(capacity_redis, office, day) == 2
    async with jobs.sessions() as session:
        assert await jobs.bookings.fill_waitlists_left(session=session) == 0


@pytest.mark.parametrize("left", ["by a run killed half-way", "in the set of before"])
async def test_a_line_left_to_fill_is_filled_whatever_happened_to_the_last_run(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, left: str
) -> None:
    """The job took the lines off as it began: a worker killed before it filled them (a
    deploy, the OOM killer) lost them, and the citizens in line waited in front of a free
    seat until the next cancel there or a recount."""
    office, day, waiting = await a_promotion_the_record_fails_to_take(client, world, monkeypatch)
    line = keys.waitlist(office, day, "*")
    jobs = world.container  # the job's own parts
    if left == "in the set of before":
        with SyncRedis.from_url(capacity_redis.url) as redis:
            redis.delete(keys.WAITLISTS_TO_FILL)
            redis.sadd(keys.WAITLISTS_TO_FILL_BEFORE, line)
    else:

        async def killed(**kwargs: Any) -> None:
            raise SystemExit("killed")  # and no handler of the job's runs after it

        async def nothing(*args: Any, **kwargs: Any) -> None:
            pass

        with monkeypatch.context() as patched:
            patched.setattr(jobs.bookings, "free_seats", killed)
            patched.setattr(jobs.capacity, "fill_later", nothing)
            async with jobs.sessions() as session:
                with pytest.raises(SystemExit):
                    await jobs.bookings.fill_waitlists_left(session=session)
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    async with jobs.sessions() as session:
        assert await jobs.bookings.fill_waitlists_left(session=session) == 1
    promoted = (await client.get(f"/api/v1/bookings/{waiting}")).json()
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.hlen(keys.WAITLISTS_TO_FILL) == 0 and redis.scard(keys.WAITLISTS_TO_FILL_BEFORE) == 0


@pytest.mark.parametrize(
    ("landed", "answer"), [(False, "its own"), (True, "its own"), (None, "none yet"), (False, "another's")]
)
async def test_a_promotion_whose_commit_raised_asks_the_record_whether_it_landed(
    client: Client,
    world: World,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    landed: bool | None,
    answer: str,
) -> None:
    """A cancel's seat went to the head of the line, and the promotion's commit raised, its
    answer lost. Not landed, the citizen is first in line again and the minute's job books
    them (they had been out of the line until a rebuild, their seat held for nobody); landed,
    they are booked and the seat is counted once, not given back to be sold again; not to be
    told at once (None), the seat stays counted and the minute's job asks again. PostgreSQL
    saying "committed" of another transaction with the same id (after a failover) is found
    out by the promoted booking, still waitlisted: not landed."""
    if (landed is not False or answer != "its own") and not database_url.startswith("postgresql"):
        pytest.skip("a SQLite commit that raises has not landed, and its outcome is always told")
    office, day, code, waiting = await full_with_one_waiting(client, world)
    capacity = client.app.state.container.capacity
    may_commit, commit = capacity.may_commit, AsyncSession.commit
    armed, asked, dropped = False, 0, 0

    async def arming() -> bool:
        nonlocal armed, asked
        asked += 1
        armed = asked == 2  # the cancel's own question first; the promotion's commit follows the second
        return await may_commit()

    async def lost(session: AsyncSession) -> None:
        nonlocal armed, dropped
        if not armed:
            return await commit(session)
        armed, dropped = False, dropped + 1
        if landed:
            await commit(session)
        raise OperationalError("COMMIT", {}, Exception("the connection dropped"))

    async def untold(session: AsyncSession, *_: Any, **__: Any) -> None:
        await session.rollback()

    monkeypatch.setattr(capacity, "may_commit", arming)
    monkeypatch.setattr(AsyncSession, "commit", lost)
    if answer == "none yet":
        monkeypatch.setattr(booking_service, "commit_outcome", untold)
    if answer == "another's":
        monkeypatch.setattr(booking_service, "hold_off_recounts", await another_transactions_id(world))
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200, cancelled.text
    monkeypatch.undo()
    assert dropped == 1, "the promotion's commit was the one whose answer was lost"

    line = keys.waitlist(office, day, "*")
    with SyncRedis.from_url(capacity_redis.url) as redis:
        if landed is not False:
            assert redis.lrange(line, 0, -1) == [] and redis.hkeys(keys.WAITLISTS_TO_FILL) == []
            assert ten_oclock_used(capacity_redis, office, day) == 2  # the seat kept
            assert redis.hlen(keys.PROMOTIONS_TO_SETTLE) == (1 if landed is None else 0)
        else:
            assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
            assert ten_oclock_used(capacity_redis, office, day) == 1  # the other citizen's
            assert redis.lrange(line, 0, -1) == [waiting.encode()]
            assert set(redis.hkeys(keys.WAITLISTS_TO_FILL)) == {line.encode()}
    jobs = world.container  # the job's own parts
    async with jobs.sessions() as session:
        await jobs.bookings.fill_waitlists_left(session=session)
    promoted = (await client.get(f"/api/v1/bookings/{waiting}")).json()
    assert (promoted["status"], promoted["slot"]) == ("booked", "10:00")  # None: it had not landed
    assert ten_oclock_used(capacity_redis, office, day) == 2
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.hlen(keys.PROMOTIONS_TO_SETTLE) == 0 and redis.lrange(line, 0, -1) == []


async def test_a_commit_still_finishing_is_waited_for_not_guessed(
    world: World, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read while it is still in progress (a commit waiting for a replica), a transaction
    looks not landed when it is about to: its outcome is waited for, and past the wait it
    cannot be told."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a SQLite transaction is over when its commit returns")
    async with world.container.sessions() as finishing, world.container.sessions() as asking:
        xid = await writer.hold_off_recounts(finishing)

        async def commit_soon() -> None:
            await asyncio.sleep(0.3)
            await finishing.commit()

        finished = asyncio.create_task(commit_soon())
        wrote_nothing = select(literal(1))  # nothing of its own to find
        assert await commit_outcome(asking, xid, wrote_nothing) is True  # waited for
        await finished

        xid = await writer.hold_off_recounts(finishing)
        monkeypatch.setattr(db, "SETTLE_SECONDS", 0.2)
        assert await commit_outcome(asking, xid, wrote_nothing) is None  # still open: cannot be told
        await finishing.rollback()
        assert await commit_outcome(asking, xid, wrote_nothing) is False


async def test_an_untold_promotion_is_asked_about_again_until_the_record_can_say(
    world: World, capacity_redis: EmbeddedRedis, database_url: str
) -> None:
    """Left to the minute's job, a promotion whose transaction is still open stays left; once
    it has landed it is dropped, its seat kept and no one put back in line."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a SQLite commit's outcome is always told")
    container = world.container
    office = await world.office()
    seat = Seat(office, world.tomorrow(), "*", "10:00")
    async with container.sessions() as finishing, container.sessions() as job:
        xid = await writer.hold_off_recounts(finishing)
        assert xid is not None
        await container.capacity.settle_promotions_later(xid, [("ABCDEFGHJK", seat)])
        assert await container.bookings.settle_promotions(session=job) == 0  # still open
        await finishing.commit()
        assert await container.bookings.settle_promotions(session=job) == 1
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.hlen(keys.PROMOTIONS_TO_SETTLE) == 0
        assert redis.lrange(keys.waitlist(office, seat.day, "*"), 0, -1) == []  # landed: nobody put back


async def test_promotions_that_did_not_land_go_back_in_the_order_they_were_made(
    world: World, capacity_redis: EmbeddedRedis, database_url: str
) -> None:
    """Put back in their tracking codes' order, whoever sorted first took the head of the
    line (the earliest slot, or the one seat left)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a SQLite commit's outcome is always told")
    container = world.container
    office = await world.office()
    await world.rebuild()
    with SyncRedis.from_url(capacity_redis.url) as redis:
        count = redis.hget(keys.office_day(office, world.tomorrow()), "_count")
        redis.hincrby(keys.office_day(office, world.tomorrow()), keys.used_field("*", "10:00"), 2)  # the two seats
    seat = Seat(office, world.tomorrow(), "*", "10:00", (count or b"").decode())
    first, second = "ZZZZZZZZZ1", "AAAAAAAAA2"  # promoted in this order; sorted, the other
    async with container.sessions() as finishing, container.sessions() as job:
        xid = await writer.hold_off_recounts(finishing)
        assert xid is not None
        await container.capacity.settle_promotions_later(xid, [(first, seat), (second, seat)])
        await finishing.rollback()  # it did not land
        await container.bookings.settle_promotions(session=job)
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, seat.day, "*"), 0, -1) == [first.encode(), second.encode()]


async def test_settling_promotions_goes_on_past_one_that_fails_and_drops_days_gone_by(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Two promotions whose commits did not land, at two offices, and the undo of one fails:
    the other's citizen is back in line and its seat free, the failed one's seat stays held
    (the safe side), and both lines are left to fill (the failed undo may have run in part).
    A promotion whose day has gone by is dropped unasked: PostgreSQL may no longer know a
    transaction that old. Nothing is left to settle, and nothing is undone twice."""
    if not database_url.startswith("postgresql"):
        pytest.skip("promotions are left to settle on PostgreSQL only (SQLite's commits are always told)")
    container, redis = world.container, SyncRedis.from_url(capacity_redis.url)
    offices, day = [await world.office(seats=1) for _ in range(2)], world.tomorrow()
    async with container.sessions() as aborted:
        for number, office in enumerate(offices):
            assert (await book(client, world, office, day)).status_code == 201  # the seat it was given
            count = as_text(redis.hget(keys.office_day(office, day), "_count"))
            xid = await writer.hold_off_recounts(aborted)
            assert xid is not None
            await aborted.rollback()  # the promotion's transaction did not land
            await container.capacity.settle_promotions_later(
                xid, [(f"PROMOTED{number:02d}", Seat(office, day, "*", "10:00", count))]
            )
    gone_by = Seat(offices[0], day - dt.timedelta(days=3), "*", "10:00")
    await container.capacity.settle_promotions_later(2**40, [("GONEBY0001", gone_by)])  # an id no record knows
    fails_once(monkeypatch, container.capacity, "unpromote", RedisTimeoutError("Redis went away"))
    async with container.sessions() as job:
        assert await container.bookings.settle_promotions(session=job) == 3
        assert await container.bookings.settle_promotions(session=job) == 0  # nothing twice
    assert redis.hlen(keys.PROMOTIONS_TO_SETTLE) == 0
    lines = [keys.waitlist(office, day, "*") for office in offices]
    assert sorted(redis.llen(line) for line in lines) == [0, 1]  # one put back; the other's undo failed
    assert sorted(used(redis, office, day, "10:00") for office in offices) == [0, 1]  # its seat still held
    assert set(redis.hkeys(keys.WAITLISTS_TO_FILL)) == {line.encode() for line in lines}
    redis.close()


async def test_a_jobs_promotion_is_not_committed_once_a_recount_has_begun(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel by SMS runs in a job's process, which no watch keeps paused: its seat went to
    the head of the line just as a recount began. Committed after the count read the record,
    the promotion would hold a seat the count left free. It is not committed, and the citizen
    keeps their place at the head of the line."""
    office, day, code, waiting = await full_with_one_waiting(client, world)
    jobs = world.container  # the job's own parts: no watch keeps its ``ready``
    recount_begins_after(monkeypatch, jobs, "release")
    async with jobs.sessions() as session:
        await jobs.bookings.cancel(session=session, tracking_code=code, mobile="09121110000")
    async with jobs.sessions() as session:
        still = await session.scalar(select(Booking.status).where(Booking.tracking_code == waiting))
    assert still == "waitlisted"
    assert ten_oclock_used(capacity_redis, office, day) == 1  # the other citizen's
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]


async def test_a_jobs_fill_knows_an_offices_own_counters(client: Client, world: World) -> None:
    """A job's process loads no office directory: filling an office's lines, it knew only
    the shared pool, and a line for a service's own counter kept its free seat all day."""
    rules = [DayRule(opens="10:00", closes="11:00", seats=1), DayRule(opens="10:00", closes="11:00", service="102")]
    office = await world.office(rules=rules)
    jobs = world.container
    assert await jobs.offices.pools({office}) == {office: {"*", "101", "102"}}  # the services it offers


async def test_redis_failing_as_a_promotion_asks_it_keeps_the_citizen_first_in_line(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion asks Redis whether it may commit; Redis timing out then counts as a no.
    (Raised instead, the citizen had left the line holding a seat nobody booked.)"""
    office, day, code, waiting = await full_with_one_waiting(client, world)
    capacity = client.app.state.container.capacity
    may_commit = capacity.may_commit

    async def the_cancels_then_away() -> bool:  # the cancel's own question answered, the promotion's not
        monkeypatch.setattr(capacity, "may_commit", _fails(RedisTimeoutError("Redis went away")))
        return await may_commit()

    monkeypatch.setattr(capacity, "may_commit", the_cancels_then_away)
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200, cancelled.text
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    assert ten_oclock_used(capacity_redis, office, day) == 1
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]
        assert set(redis.hkeys(keys.WAITLISTS_TO_FILL)) == {keys.waitlist(office, day, "*").encode()}


async def test_a_raise_whose_promotions_meet_a_recount_is_answered(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clerk adds seats; the line's promotion finds a recount begun, and rolls back. The
    clerk's change is answered (it had been a 500: the rollback expired the office the
    answer read), and the citizen keeps their place for the recount's fill."""
    office, day, _code, waiting = await full_with_one_waiting(client, world)
    capacity = client.app.state.container.capacity
    asked: list[None] = []

    async def recounting() -> bool:
        """The clerk's change commits; the recount begins just after (a recount begun
        before it refuses the change itself: test_console.py)."""
        asked.append(None)
        return len(asked) == 1

    monkeypatch.setattr(capacity, "may_commit", recounting)
    raised = await client.put(
        f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}",
        json={"rules": [{"opens": "10:00", "closes": "10:30", "slot_minutes": 30, "seats": 3}], "reason": "one more"},
        headers=await staff_of(client, world, office),
    )
    assert raised.status_code == 200, raised.text
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]


async def test_the_minute_jobs_wait_out_a_recount_quietly(world: World) -> None:
    """During a recount (and at the first start, before the count is done) the jobs that
    finish moves and fill lines do nothing; an error a minute in every log had been the
    answer."""
    jobs = world.container
    office = await world.office()
    # Work left for each: a line to fill, a plan to apply (noted well before).
    await jobs.capacity.fill_later([Seat(office, world.tomorrow(), "*", "")])
    await jobs.capacity.apply_later(office, noted_in=keys.PLANS_TO_APPLY)
    await jobs.redis.delete(keys.REBUILT_AT)
    async with jobs.sessions() as session:
        assert await jobs.bookings.fill_waitlists_left(session=session) == 0
        assert await jobs.console.finish_plans(session=session) == 0
        assert await jobs.enforcement.finish_blocks(session=session) == 0
    # Waited out, not done nor dropped: each is there for the run after the recount.
    assert await jobs.redis.hlen(keys.WAITLISTS_TO_FILL) == 1
    assert list(await jobs.capacity.to_apply(older_than=0, noted_in=keys.PLANS_TO_APPLY)) == [office]


def recount_begins_after(monkeypatch: pytest.MonkeyPatch, jobs: Container, step: str) -> None:
    """A recount begins (the rebuild marker goes) just after the job's capacity ``step`` runs."""
    original = getattr(jobs.capacity, step)

    async def then_a_recount(**kwargs: Any) -> Any:
        done = await original(**kwargs)
        await jobs.redis.delete(keys.REBUILT_AT)
        return done

    monkeypatch.setattr(jobs.capacity, step, then_a_recount)


def _fails(error: Exception) -> Any:
    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    return failing


async def test_nothing_is_cancelled_while_capacity_is_paused_for_a_recount(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """Cancelled during the pause, the count could leave the seat out and the release after
    it free it again: the citizen is asked to try again in a few seconds."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    code = booked.json()["tracking_code"]
    capacity = client.app.state.container.capacity
    async with watch_held():
        capacity.ready = False  # as the watch does when the counters must be counted again
        try:
            paused = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
        finally:
            capacity.ready = True
    assert paused.status_code == 503, paused.text
    assert paused.headers["Retry-After"]
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    again = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert again.status_code == 200, again.text


async def test_a_cancel_is_not_committed_once_another_instances_recount_has_begun(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recount begun on another instance after this one's look (its ``ready`` is up to a
    second old) may read the record before the cancel's commit: its count keeps the seat, and
    the release, made for the older count, frees nothing of it. Asked of Redis once the
    barrier is held, as a booking's commit asks, the cancel waits for the recount."""
    office = await world.office(seats=1)
    await world.rebuild()
    day = world.tomorrow()
    mobile = "09121110000"
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token(mobile)
    )
    code = booked.json()["tracking_code"]
    jobs = world.container  # an instance whose watch has not looked since the recount began
    from app.booking import service as booking_service

    hold_off = booking_service.hold_off_recounts

    async def a_recount_begun_first(session: Any) -> Any:
        await jobs.redis.delete(keys.REBUILT_AT)  # on another instance, just before the barrier
        return await hold_off(session)

    monkeypatch.setattr(booking_service, "hold_off_recounts", a_recount_begun_first)
    async with jobs.sessions() as session:
        with pytest.raises(CapacityRebuilding):
            await jobs.bookings.cancel(session=session, tracking_code=code, mobile=mobile)
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_waitlist_join_is_not_committed_once_another_instances_recount_has_begun(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed after the recount had read the record, the join was left out of the rebuilt
    line (never promoted, yet "waitlisted") and of the citizen's rebuilt holds."""
    from app.booking.schemas import WaitlistJoin

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    jobs = world.container
    recount_begins_after(monkeypatch, jobs, "hold")
    national_id = world.national_id()
    join = WaitlistJoin(national_id=national_id, office_code=office, service_code="101", date=day.isoformat())
    async with jobs.sessions() as session:
        with pytest.raises(CapacityRebuilding):
            await jobs.bookings.join_waitlist(session=session, mobile=world.mobile(), request=join)
    async with jobs.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 1  # the booking alone
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.hlen(keys.citizen_holds(national_id)) == 0


async def test_a_waitlist_join_whose_commit_question_meets_redis_away_gives_its_hold_back_later(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failed as the join asked whether it may commit, and again as it gave its hold
    back: the citizen, with no place in line, was refused "already booked" that day."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.booking.schemas import WaitlistJoin

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    jobs = world.container
    monkeypatch.setattr(jobs.capacity, "may_commit", _fails(RedisConnectionError("Redis away")))
    fails_once(monkeypatch, jobs.capacity, "unhold", RedisConnectionError("Redis away a moment"))
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    national_id = world.national_id()
    join = WaitlistJoin(national_id=national_id, office_code=office, service_code="101", date=day.isoformat())
    async with jobs.sessions() as session:
        with pytest.raises(RedisConnectionError):
            await jobs.bookings.join_waitlist(session=session, mobile=world.mobile(), request=join)
    await holds_let_go(capacity_redis, national_id)


async def test_capacity_changes_and_blocks_wait_out_a_recount(client: Client, world: World) -> None:
    """A clerk's new plan, a regulator's block or closure, or a confirmed forgery (which
    blocks) move seats: during a recount they answer 503 and change nothing, and go through
    once it is done."""
    office, forged = await world.office(seats=2), await world.office(seats=2)
    day = world.tomorrow()
    clerk = await staff_of(client, world, office)
    regulator_ = await regulator(client, world)
    capacity = client.app.state.container.capacity
    override = f"/api/v1/staff/offices/{office}/overrides/{day.isoformat()}"
    closed = {"rules": [], "reason": "تعمیرات"}
    block = f"/api/v1/regulator/offices/{office}/block"
    complaint = (await complain(client, world, forged, "09125550001", category="forgery"))["tracking_code"]
    transition = f"/api/v1/regulator/complaints/{complaint}/transition"
    for step in STEPS[:3]:
        assert (await client.post(transition, json={"to": step, "inspector": "بازرس"}, headers=regulator_)).is_success
    confirm = {"to": "violation_confirmed", "note": "جعل احراز شد"}
    closure = {"date": (day + dt.timedelta(days=1)).isoformat(), "reason": "سیل", "province_code": None}
    cap = {
        "starts_on": day.isoformat(),
        "ends_on": day.isoformat(),
        "percent": 50,
        "reason": "ستاد",
        "province_code": None,
    }
    async with watch_held():
        capacity.ready = False  # as the watch does when the counters must be counted again
        try:
            paused = [
                await client.put(override, json=closed, headers=clerk),
                await client.post(block, json={"reason": "تصمیم"}, headers=regulator_),
                await client.post(transition, json=confirm, headers=regulator_),
                await client.post("/api/v1/regulator/closures", json=closure, headers=regulator_),
                await client.post("/api/v1/regulator/crowd-caps", json=cap, headers=regulator_),
            ]
        finally:
            capacity.ready = True
    assert [r.status_code for r in paused] == [503] * 5, [r.text for r in paused]
    assert (await client.get("/api/v1/regulator/closures", headers=regulator_)).json() == []
    assert (await client.get("/api/v1/regulator/crowd-caps", headers=regulator_)).json() == []
    days = (await client.get(f"/api/v1/staff/offices/{office}/days", headers=clerk)).json()
    assert {d["date"]: d["source"] for d in days}[day.isoformat()] == "template"
    complaint_now = await client.get(f"/api/v1/regulator/complaints/{complaint}", headers=regulator_)
    assert complaint_now.json()["state"] == "inspection_reported"
    assert (await client.put(override, json=closed, headers=clerk)).status_code == 200
    assert (await client.post(block, json={"reason": "تصمیم"}, headers=regulator_)).status_code == 201
    assert (await client.post(transition, json=confirm, headers=regulator_)).status_code == 200
    assert (await client.post("/api/v1/regulator/closures", json=closure, headers=regulator_)).status_code == 201
    assert (await client.post("/api/v1/regulator/crowd-caps", json=cap, headers=regulator_)).status_code == 201
    async with world.container.sessions() as session:
        status = await session.scalar(select(Office.status).where(Office.code == forged))
    assert status == OfficeStatus.BLOCKED


async def test_a_closure_whose_seats_cannot_come_out_of_redis_is_finished_by_the_job(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded, then Redis away a moment: 201 (a 503 had the regulator close the day again),
    and the minute's job takes the seats out and moves the bookings."""
    office, day, code, regulator_ = await booked_and_a_regulator(client, world)
    capacity = client.app.state.container.capacity

    async def away(**_: Any) -> Any:
        raise RedisTimeoutError("Redis away a moment")

    monkeypatch.setattr(capacity, "replan", away)
    closure = {"date": day.isoformat(), "province_code": "01", "reason": "سیل"}
    closed = await client.post("/api/v1/regulator/closures", json=closure, headers=regulator_)
    assert closed.status_code == 201, closed.text
    assert (closed.json()["moved"], closed.json()["moves_pending"]) == ([], True)
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    assert await finish_closures(world.container) == 1  # the job's own parts
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"
    assert ten_oclock_used(capacity_redis, office, day) == 0


async def test_a_closure_whose_seats_cannot_come_out_where_nobody_booked_is_finished_by_the_job(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with nobody booked there yet: the job had looked only for bookings to move,
    so the closed office took bookings (to be moved or cancelled a minute later) until one
    came. The closure is noted before its commit, and the job takes its seats out."""
    from app.regulator import service as regulator_service

    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    regulator_ = await regulator(client, world)
    capacity = client.app.state.container.capacity
    replan = capacity.replan

    async def away(**_: Any) -> Any:
        raise RedisTimeoutError("Redis away a moment")

    monkeypatch.setattr(capacity, "replan", away)
    closure = {"date": day.isoformat(), "province_code": "01", "reason": "سیل"}
    closed = await client.post("/api/v1/regulator/closures", json=closure, headers=regulator_)
    assert closed.status_code == 201 and closed.json()["moves_pending"] is True, closed.text
    monkeypatch.setattr(capacity, "replan", replan)
    assert await finish_closures(world.container) == 0  # its request's, for a minute
    assert ten_oclock_seats(capacity_redis, office, day) == 2  # still open in Redis
    monkeypatch.setattr(regulator_service, "CLOSURE_REQUEST_SECONDS", 0)
    assert await finish_closures(world.container) == 0  # nobody to move...
    assert ten_oclock_seats(capacity_redis, office, day) == 0  # ...but its seats are out
    assert not SyncRedis.from_url(capacity_redis.url).hlen(keys.CLOSURES_TO_APPLY)  # done once
    await world.container.capacity.reads.told()
    await asyncio.sleep(world.container.settings.read_cache_seconds + 0.1)  # the app hears of it
    refused = await book(client, world, office, day)
    assert refused.status_code == 422 and refused.json()["code"] == "no_such_slot", refused.text


def ten_oclock_seats(server: EmbeddedRedis, office: str, day: dt.date) -> int:
    with SyncRedis.from_url(server.url) as redis:
        return int(redis.hget(keys.office_day(office, day), keys.seats_field("*", "10:00")) or 0)


async def test_the_crowd_cap_command_waits_out_a_recount(
    client: Client, world: World, settings: Settings, capacity_redis: EmbeddedRedis
) -> None:
    """As the API answers 503 during a recount, the command refuses and records nothing."""
    await world.rebuild()
    day = world.tomorrow().isoformat()
    args = argparse.Namespace(action="add", province=None, starts=day, ends=day, percent=50, reason="ستاد", id=None)
    regulator_ = await regulator(client, world)
    SyncRedis.from_url(capacity_redis.url).delete(keys.REBUILT_AT)  # as Redis is after a restart
    with pytest.raises(SystemExit, match="counted again"):
        await cli.crowd_cap(settings, args)
    assert (await client.get("/api/v1/regulator/crowd-caps", headers=regulator_)).json() == []
    await world.rebuild()
    await cli.crowd_cap(settings, args)
    assert [c["percent"] for c in (await client.get("/api/v1/regulator/crowd-caps", headers=regulator_)).json()] == [50]


@pytest.mark.parametrize("blocker", ["the regulator", "a confirmed forgery"])
async def test_a_block_whose_moves_meet_a_recount_moves_them_after_it(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, blocker: str
) -> None:
    """A recount began while a block was moving the office's bookings: the block stands,
    and the minute's job moves them once the count is done. (Refused with a 503 instead,
    they stayed booked at an office that takes nobody, and a confirmed forgery, already
    recorded, could not be confirmed again to move them.) The job leaves an office whose
    bookings a block is moving, and stops when a recount begins during its own moves."""
    office, other = await world.office(seats=2), await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    code = (await book(client, world, office, day)).json()["tracking_code"]
    regulator_ = await regulator(client, world)
    if blocker == "a confirmed forgery":
        complaint = (await complain(client, world, office, "09125550001", category="forgery"))["tracking_code"]
        transition = f"/api/v1/regulator/complaints/{complaint}/transition"
        for step in STEPS[:3]:
            await client.post(transition, json={"to": step, "inspector": "بازرس"}, headers=regulator_)
    capacity = client.app.state.container.capacity
    record_moves = relocation._record_moves

    async def paused_meanwhile(*args: Any) -> set[int]:
        capacity.ready = False  # as the watch does when the counters must be counted again
        return await record_moves(*args)

    monkeypatch.setattr(relocation, "_record_moves", paused_meanwhile)
    async with watch_held():
        try:
            if blocker == "the regulator":
                blocked = await client.post(
                    f"/api/v1/regulator/offices/{office}/block", json={"reason": "تصمیم"}, headers=regulator_
                )
            else:
                blocked = await client.post(transition, json={"to": "violation_confirmed"}, headers=regulator_)
        finally:
            capacity.ready = True
    assert blocked.is_success, blocked.text
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["office_code"] == office  # not moved yet
    monkeypatch.setattr(relocation, "_record_moves", record_moves)
    jobs = world.container  # the job's own parts: no watch keeps its ``ready``
    async with renewed_lock(jobs.redis, f"{MOVES_LOCK}:{office}", "a block", seconds=30):
        assert await finish_blocks(jobs) == 0  # the block is moving them
    find = relocation._Places.find

    async def recount_begins(self: Any, booking: Any) -> Any:
        await jobs.redis.delete(keys.REBUILT_AT)
        return await find(self, booking)

    monkeypatch.setattr(relocation._Places, "find", recount_begins)
    assert await finish_blocks(jobs) == 0
    monkeypatch.setattr(relocation._Places, "find", find)
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["office_code"] == office
    assert ten_oclock_used(capacity_redis, other, day) == 0  # the seat it took went back
    await world.rebuild()
    assert await finish_blocks(jobs) == 1
    assert await finish_blocks(jobs) == 0  # nothing left
    moved = (await client.get(f"/api/v1/bookings/{code}")).json()
    assert (moved["status"], moved["office_code"], moved["slot"]) == ("booked", other, "10:00")
    assert ten_oclock_used(capacity_redis, office, day) == 0
    assert ten_oclock_used(capacity_redis, other, day) == 1


async def test_a_closure_whose_moves_meet_a_recount_moves_them_after_it(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recount began while a closure was moving its offices' bookings: the closure stands
    (201; a 503 after it was recorded had the regulator close the day again, and the citizens
    stayed booked at a closed office with no message), and the minute's job moves them once
    the count is done. The job leaves a day whose bookings a closure is moving."""
    office, day, code, regulator_ = await booked_and_a_regulator(client, world)
    capacity = client.app.state.container.capacity
    find = relocation._Places.find

    async def paused_meanwhile(self: Any, booking: Any) -> Any:
        capacity.ready = False  # as the watch does when the counters must be counted again
        return await find(self, booking)

    monkeypatch.setattr(relocation._Places, "find", paused_meanwhile)
    closure = {"date": day.isoformat(), "province_code": "01", "reason": "سیل"}
    async with watch_held():
        try:
            closed = await client.post("/api/v1/regulator/closures", json=closure, headers=regulator_)
        finally:
            capacity.ready = True
    assert closed.status_code == 201, closed.text
    assert (closed.json()["moved"], closed.json()["moves_pending"]) == ([], True)
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"  # not moved yet
    monkeypatch.setattr(relocation._Places, "find", find)
    jobs = world.container  # the job's own parts: no watch keeps its ``ready``
    async with renewed_lock(jobs.redis, f"{CLOSURE_MOVES_LOCK}:{day.isoformat()}", "a closure", seconds=30):
        assert await finish_closures(jobs) == 0  # the closure is moving them
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
    assert await finish_closures(jobs) == 1
    assert await finish_closures(jobs) == 0  # nothing left
    # The whole province is closed: nowhere to go, so cancelled, and the seat given back.
    assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "cancelled"
    assert ten_oclock_used(capacity_redis, office, day) == 0


async def test_a_rebuild_on_a_live_system_pauses_bookings_everywhere(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """``python -m app rebuild``: the instances see the marker gone and pause bookings, and
    cannot start a rebuild of their own while this one holds the lock; then all resume."""
    office = await world.office(seats=3)
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    capacity, sessions, today = world.container.capacity, world.container.sessions, world.container.clock.today()
    # Waits 5 s: the instance's watch sees the marker gone (a look a second), a booking is
    # refused, and a rebuild of its own is refused, all before the count.
    rebuild = asyncio.create_task(rebuild_paused(capacity, sessions, today=today, wait=5.0))
    paused = None
    for _ in range(40):
        await asyncio.sleep(0.1)
        if (await client.get("/health/ready")).status_code == 503:
            paused = await book(client, world, office, day)
            break
    with pytest.raises(watch.RebuildRunning):
        await rebuild_paused(capacity, sessions, today=today, wait=0)
    assert await rebuild > 0
    assert paused is not None and paused.status_code == 503, paused
    resumed = None
    for _ in range(200):
        resumed = await book(client, world, office, day)
        if resumed.status_code != 503:
            break
        await asyncio.sleep(0.1)
    assert resumed is not None and resumed.status_code == 201, resumed.text
    assert ten_oclock_used(capacity_redis, office, day) == 2


async def test_a_recount_whose_lock_was_taken_over_does_not_end_the_pause(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recount that stalled past its lock's life, while another took the lock and began
    counting: it had set the marker at its end, and every instance resumed booking while the
    other's count, read before those bookings, went on writing days over them."""
    capacity, sessions, today = world.container.capacity, world.container.sessions, world.container.clock.today()
    rebuild_waitlists = capacity._rebuild_waitlists

    async def taken_over(**kwargs: Any) -> None:
        await rebuild_waitlists(**kwargs)
        await capacity.redis.set(watch.REBUILD_LOCK, "a later recount", px=60_000)  # ours lapsed

    async with watch_held():
        monkeypatch.setattr(capacity, "_rebuild_waitlists", taken_over)
        with pytest.raises(watch.RebuildRunning):
            await rebuild_paused(capacity, sessions, today=today, wait=0)
        assert not await capacity.redis.exists(keys.REBUILT_AT)  # still paused, for the other to end
        monkeypatch.setattr(capacity, "_rebuild_waitlists", rebuild_waitlists)
        await capacity.redis.delete(watch.REBUILD_LOCK)
        await rebuild_paused(capacity, sessions, today=today, wait=0)
        assert await capacity.redis.exists(keys.REBUILT_AT)


async def test_the_rebuild_lock_lives_while_held_and_goes_with_its_holder(
    capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewed while its holder works; a holder that died keeps the instances paused for one
    lock life at most (it had been ten minutes)."""
    monkeypatch.setattr(watch, "LOCK_SECONDS", 1.5)
    redis = connect(capacity_redis.url)
    try:
        async with watch.rebuild_lock(redis, "me") as held:
            assert held
            await asyncio.sleep(3.5)  # longer than the lock's life: renewed meanwhile
            assert await redis.get(watch.REBUILD_LOCK) == "me"
            async with watch.rebuild_lock(redis, "other") as also:
                assert not also
        assert not await redis.exists(watch.REBUILD_LOCK)
        await redis.set(watch.REBUILD_LOCK, "killed", px=600)  # a holder gone without a word
        await asyncio.sleep(0.7)
        async with watch.rebuild_lock(redis, "me") as held:
            assert held
    finally:
        await redis.aclose()


async def test_the_rebuild_command_during_a_recount_says_nothing_was_done(settings: Settings) -> None:
    """It had printed "bookings pause on every instance" and then died in a bare traceback,
    nothing paused and nothing counted: an operator could believe a rebuild had run."""
    with SyncRedis.from_url(settings.redis_url or "") as redis:
        redis.set(watch.REBUILD_LOCK, "the night's recount", px=60_000)
        try:
            with pytest.raises(SystemExit, match="a recount is already under way"):
                await cli.rebuild(settings)
        finally:
            redis.delete(watch.REBUILD_LOCK)


async def test_a_lock_outlives_a_failed_renewal_and_never_frees_a_successors(capacity_redis: EmbeddedRedis) -> None:
    """One renewal that times out (retries are off) had ended the renewing: the lock lapsed
    while its holder worked on, and a second holder (the next minute's job, a block's
    request) moved the same bookings beside it. And a holder whose lock had lapsed freed the
    successor's at its end, with a GET then a DEL."""
    redis = connect(capacity_redis.url)
    evaluate = redis.eval
    failures: list[str] = []

    async def timing_out_once(script: str, *args: Any) -> Any:
        if "PEXPIRE" in script and not failures:
            failures.append(script)
            raise RedisTimeoutError("Timeout reading from socket")
        return await evaluate(script, *args)

    redis.eval = timing_out_once  # type: ignore[method-assign]
    try:
        async with renewed_lock(redis, "nobat:test-lock", "me", seconds=4.5) as held:
            assert held
            await asyncio.sleep(6.0)  # the first renewal (at 1.5 s) failed, the next ones did not
            assert failures and await redis.get("nobat:test-lock") == "me"
            await redis.set("nobat:test-lock", "successor")  # as after a lapse
        assert await redis.get("nobat:test-lock") == "successor"
    finally:
        await redis.delete("nobat:test-lock")
        await redis.aclose()


async def test_a_rebuild_that_fails_is_tried_again(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record failing mid-rebuild once must not end the watch: the instance would stay
    paused (503) until restarted."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    capacity = client.app.state.container.capacity
    fails_once(monkeypatch, capacity, "rebuild", OperationalError("SELECT", {}, Exception("the record went away")))
    redis = SyncRedis.from_url(capacity_redis.url)
    redis.flushall()
    redis.close()
    seen = []
    for _ in range(100):  # paused, then (the rebuild tried again) back
        seen.append((await client.get("/health/ready")).status_code)
        if seen[-1] == 200 and 503 in seen:
            break
        await asyncio.sleep(0.1)
    assert seen[-1] == 200 and 503 in seen, seen
    assert (await book(client, world, office, day)).status_code == 201


async def two_booked_and_a_replica_short_of_the_second(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> tuple[str, dt.date]:
    """An office with two seats at 10:00 tomorrow, both booked; Redis's dump (the replica a
    failover would promote) taken between the two. The office and the day."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    with SyncRedis.from_url(capacity_redis.url) as redis:
        redis.save()  # the replica has everything up to here...
    assert (await book(client, world, office, day)).status_code == 201  # ...but not this seat
    return office, day


async def test_a_failover_to_a_replica_short_of_the_last_writes_is_counted_again(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """Redis fails over to a replica that never received the last booking's seat: the
    counters say the seat is free, and the rebuild marker is there. The instance sees
    another server and counts again before anyone books."""
    office, day = await two_booked_and_a_replica_short_of_the_second(client, world, capacity_redis)
    capacity_redis.stop()
    capacity_redis.start()  # the replica takes over at the same address: a new server, the old data
    redis = SyncRedis.from_url(capacity_redis.url)
    assert redis.exists(keys.REBUILT_AT)
    new_server = redis.info("server")["run_id"]
    for _ in range(100):
        if (redis.get(keys.REBUILT_AT) or b"").decode().endswith(new_server):
            break
        await asyncio.sleep(0.1)
    assert used(redis, office, day, "10:00") == 2
    redis.close()
    for _ in range(3):  # a connection the restart broke fails its one trip (503), then reconnects
        third = await book(client, world, office, day)
        if third.status_code != 503:
            break
    assert third.status_code == 409, third.text


async def test_no_seat_is_sold_twice_before_the_watch_sees_a_failover(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a failover and the watch's next look (up to a second), the new server says a
    seat sold on the old one is free. The booking that takes it is held there, and must not
    be committed: the group commit asks which server it holds on."""
    office, day = await two_booked_and_a_replica_short_of_the_second(client, world, capacity_redis)
    check = watch.RedisWatch.check

    async def not_looked_yet(self: watch.RedisWatch) -> None:
        return None

    monkeypatch.setattr(watch.RedisWatch, "check", not_looked_yet)
    capacity_redis.stop()
    capacity_redis.start()  # the replica takes over with the old data, unseen by the watch
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert used(redis, office, day, "10:00") == 1
    for _ in range(3):  # a connection the restart broke fails its one trip, then reconnects
        third = await book(client, world, office, day)
        assert third.status_code == 503, third.text
        if "rebuilt" in third.json()["detail"]:
            break
    assert "rebuilt" in third.json()["detail"], third.text
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 2
    assert (await client.get("/health/ready")).status_code == 503  # this instance has paused

    monkeypatch.setattr(watch.RedisWatch, "check", check)  # the watch looks, and counts again
    for _ in range(100):
        if (await client.get("/health/ready")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert ten_oclock_used(capacity_redis, office, day) == 2
    assert (await book(client, world, office, day)).status_code == 409


async def test_a_jobs_booking_is_not_committed_once_a_recount_has_begun(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMS booking is made in a job's process, which no watch keeps paused during a
    recount. Committed after the count had read the record, its seat would be missing from
    Redis and sold again: the group commit asks Redis itself."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    jobs = world.container  # the job's own parts: no watch keeps its ``ready``
    recount_begins_after(monkeypatch, jobs, "hold_and_reserve")
    request = BookingCreate(
        national_id=world.national_id(), office_code=office, service_code="101", date=day.isoformat()
    )
    with pytest.raises(CapacityRebuilding):
        await jobs.bookings.book(
            sessions=jobs.sessions, mobile=world.mobile(), request=request, idempotency_key=None, channel=Channel.SMS
        )
    async with jobs.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 0
    with SyncRedis.from_url(capacity_redis.url) as redis:
        counters = redis.hgetall(keys.office_day(office, day))
    assert counters and sum(int(n) for field, n in counters.items() if field.startswith(b"u|")) == 0


async def test_a_recount_waits_for_a_commit_slower_than_the_settle_time(
    client: Client, world: World, capacity_redis: EmbeddedRedis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking allowed to commit just before a recount paused bookings, whose commit then
    took longer than the settle time (0 s here): the count must wait for it, or read the
    record without it and leave its seat free to be sold again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the embedded SQLite record has one instance and relies on the settle time")
    office = await world.office(seats=1)
    await world.rebuild()
    day = world.tomorrow()
    app = client.app.state.container
    may_commit, recounts = app.bookings.writer.may_commit, []

    async def allowed_then_slow() -> bool:
        answer = await may_commit()
        recounts.append(asyncio.create_task(rebuild_paused(app.capacity, app.sessions, today=day, wait=0)))
        await asyncio.sleep(1.5)
        return answer

    async def recounted() -> int:
        return await recounts[0]

    monkeypatch.setattr(app.bookings.writer, "may_commit", allowed_then_slow)
    assert (await book(client, world, office, day)).status_code == 201
    assert client.blocking_portal.call(recounted) > 0
    assert ten_oclock_used(capacity_redis, office, day) == 1  # counted, with the commit it waited for
    monkeypatch.setattr(app.bookings.writer, "may_commit", may_commit)
    await health_until(client, 200)  # the app's watch saw the pause, and sees the count done at its next look
    assert (await book(client, world, office, day)).status_code == 409


async def test_a_recount_waits_out_a_stuck_commit_and_the_others_go_on_meanwhile(
    world: World, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holds the barrier and hangs (its instance froze mid-commit). The recount waits
    for it in short tries, between which every other batch gets through (refused for the
    recount, not hung behind it); the server ends the stuck one after a while."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the barrier is PostgreSQL's")
    import asyncpg

    monkeypatch.setattr(writer, "BARRIER_WAIT", "200ms")
    dsn = database_url.replace("+asyncpg", "")
    stuck, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        hung = stuck.transaction()
        await hung.start()
        await stuck.execute(f"SELECT pg_advisory_xact_lock_shared({writer.RECOUNT_BARRIER})")
        async with world.container.sessions() as session:
            recount = asyncio.create_task(writer.wait_for_commits(session))
            await asyncio.sleep(0.5)
            assert not recount.done()
            async with other.transaction():  # a healthy batch, meanwhile
                await asyncio.wait_for(
                    other.execute(f"SELECT pg_advisory_xact_lock_shared({writer.RECOUNT_BARRIER})"), 1
                )
            await hung.rollback()  # the stuck batch ends
            await asyncio.wait_for(recount, 2)
    finally:
        await stuck.close()
        await other.close()
    async with world.container.bookings.writer.engine.connect() as connection, connection.begin():
        await writer.hold_off_recounts(connection)  # a holder that froze is ended by the server
        assert await connection.scalar(text("SHOW idle_in_transaction_session_timeout")) == writer.BARRIER_HOLDER_IDLE


async def test_database_gone_answers_503_and_holds_no_seat(
    client: Client, world: World, capacity_redis: EmbeddedRedis, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        # An open SQLite file cannot be taken from a running process; the failed-insert test
        # in test_booking.py covers SQLite, this one the production record.
        pytest.skip("needs a database server to stop")
    import asyncpg

    office = await world.office(seats=3)
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(database_url.rsplit("/", 1)[0].replace("+asyncpg", "") + "/postgres")
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        gone = await book(client, world, office, day)
        assert gone.status_code == 503, gone.text
        assert gone.headers["Retry-After"]
        assert ten_oclock_used(capacity_redis, office, day) == 1
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    back = await book(client, world, office, day)
    assert back.status_code == 201


async def test_a_database_that_takes_no_packets_is_answered_503_while_the_citizen_waits(
    client: Client, world: World, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg raises a connect that timed out unwrapped (TimeoutError, as it raises a name
    that did not resolve): every read of the record had answered 500 with a traceback, and
    only after asyncpg's own 60 s."""
    if not database_url.startswith("postgresql"):
        pytest.skip("asyncpg's connect")
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 0.5)
    office = await world.office()
    with socket.socket() as listener:  # a server that takes connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        engine = db.create_engine(f"postgresql+asyncpg://nobat@127.0.0.1:{listener.getsockname()[1]}/nobat")
        try:
            monkeypatch.setattr(client.app.state.container, "sessions", db.session_factory(engine))
            began = time.monotonic()
            answer = await client.get(f"/api/v1/offices/{office}/load")
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] and answer.json()["code"] == "service_unavailable"
            assert time.monotonic() - began < 5
        finally:
            await engine.dispose()
    # The same for a host whose name did not resolve (DNS during a failover).
    assert problem_for(socket.gaierror(-2, "Name or service not known")).status_code == 503


async def test_bookings_go_on_when_the_database_drops_the_group_commits_connections(
    client: Client, world: World, capacity_redis: EmbeddedRedis, database_url: str
) -> None:
    """The writer's connections are not checked as they leave its pool: one the database
    dropped (a restart, a failover) must cost a retry of the batch, not a citizen's 503."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs a database server to drop connections")
    import asyncpg

    office = await world.office(seats=3)
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201  # the writer has a connection now
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(database_url.rsplit("/", 1)[0].replace("+asyncpg", "") + "/postgres")
    try:
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name
        )
        assert dropped >= 1
    finally:
        await admin.close()
    again = await book(client, world, office, day)
    assert again.status_code == 201, again.text
    assert ten_oclock_used(capacity_redis, office, day) == 2


async def another_transactions_id(world: World) -> Callable[[Any], Awaitable[int | None]]:
    """Stands in for ``hold_off_recounts``: the id of another transaction, one committed, as
    after a failover to a replica that never had the real one and gave its id again."""
    async with world.container.sessions() as session:
        other = await writer.hold_off_recounts(session)
        await session.commit()

    async def its_id(_: Any) -> int | None:
        return other

    return its_id


async def written_in(container: Container, tracking_code: str) -> int | None:
    """The id of the transaction that wrote the booking (None on SQLite, which gives none)."""
    async with container.sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            return None
        xmin = text("xmin::text::bigint")
        return (await session.execute(select(xmin).where(Booking.tracking_code == tracking_code))).scalar_one()


def lose_the_commits_answer(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    *,
    committed: bool,
    dropped: bool = False,
    engine: AsyncEngine | None = None,
) -> None:
    """The bookings' next group commit is sent and its answer lost, as when the connection
    drops or the database fails over with the COMMIT on its way; ``committed``: whether it
    landed; ``dropped``: whether SQLAlchemy saw the connection gone. (On the writer's own
    engine, at the driver: whatever the writer's code does; ``engine``: the next commit on
    that one instead, the requests' own for a cancel.)"""
    dialect = (engine or client.app.state.container.bookings.writer.engine).dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def lost(dbapi_connection: Any) -> None:
        monkeypatch.setattr(dialect, "do_commit", commit)  # once
        (commit if committed else rollback)(dbapi_connection)
        lost = Exception("connection lost with the COMMIT on its way")
        raise OperationalError("COMMIT", {}, lost, connection_invalidated=dropped)

    monkeypatch.setattr(dialect, "do_commit", lost)


async def test_a_booking_whose_commit_landed_but_the_answer_was_lost_keeps_its_seat(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record has it, so it is the citizen's: confirmed, and its seat is not sold again."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    lose_the_commits_answer(client, monkeypatch, committed=True)
    booked = await book(client, world, office, day)
    assert booked.status_code == 201, booked.text
    assert (await client.get(f"/api/v1/bookings/{booked.json()['tracking_code']}")).json()["status"] == "booked"
    assert (await book(client, world, office, day)).status_code == 409  # the one seat is taken
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_booking_whose_commit_did_not_land_gives_its_seat_back_once_the_record_says_so(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The commit's answer was lost, and it did not land: the citizen gets a 503. The record
    says so (PostgreSQL's ``txid_status``, SQLite's file read back), asked once for the
    batch, so the seat is given back at once; and the citizen's limit and the request's
    Idempotency-Key are freed: the same request, retried, books."""
    office = await world.office(seats=2)
    day = world.tomorrow()
    body = booking_body(office, world.national_id(), day)
    headers = {**world.token(), "Idempotency-Key": "retried-after-a-lost-commit"}
    lose_the_commits_answer(client, monkeypatch, committed=False)
    lost = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert lost.status_code == 503, lost.text
    redis = SyncRedis.from_url(capacity_redis.url)
    assert used(redis, office, day, "10:00") == 0
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 0  # nothing left to the minute's job
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert used(redis, office, day, "10:00") == 1
    redis.close()


@pytest.mark.parametrize(("answer", "kept"), [("nothing", True), ("an error", True), ("another transaction's", False)])
async def test_what_the_record_says_of_a_lost_commit_that_did_not_land(
    client: Client,
    world: World,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    answer: str,
    kept: bool,
) -> None:
    """The commit's answer was lost, and it did not land: 503. PostgreSQL cannot say (down,
    or the transaction still finishing), or asking it fails in a way nobody foresaw: the
    commit might still land, so the seat stays counted (for nobody until a rebuild: the safe
    side), and a lost commit that did land is found in the record. The minute's job asks
    again, and the record then says it did not land: the seat is freed. It says "committed"
    of a transaction id given again after a failover to a replica that never had the batch:
    the batch's own row is read back, not found, and the seat is given back at once."""
    if answer == "another transaction's" and not database_url.startswith("postgresql"):
        pytest.skip("SQLite gives no transaction id")

    async def untold(*_: Any, **__: Any) -> None:
        if answer == "an error":
            raise RuntimeError("an error of a kind the writer does not know")

    office = await world.office(seats=2)
    day = world.tomorrow()
    if answer == "another transaction's":
        taking = await another_transactions_id(world)
        insert = writer._insert

        async def reused(connection: Any, rows: Any) -> int | None:
            await insert(connection, rows)
            return await taking(connection)

        monkeypatch.setattr(writer, "_insert", reused)
    else:
        monkeypatch.setattr(writer, "commit_outcome", untold)
    lose_the_commits_answer(client, monkeypatch, committed=False)
    assert (await book(client, world, office, day)).status_code == 503
    assert ten_oclock_used(capacity_redis, office, day) == (1 if kept else 0)
    if kept:
        lose_the_commits_answer(client, monkeypatch, committed=True)
        assert (await book(client, world, office, day)).status_code == 201  # found in the record
        assert ten_oclock_used(capacity_redis, office, day) == 2
    async with world.container.sessions() as session:
        await world.container.bookings.fill_waitlists_left(session=session)
    assert ten_oclock_used(capacity_redis, office, day) == (1 if kept else 0)  # the booking's alone


async def test_the_seat_of_a_lost_commit_is_settled_once_and_never_after_a_recount(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Left to the minute's job, a lost commit's seat is freed once the record says it did
    not land, by one run only (two at once here); one that landed keeps its seat; and a day
    counted again from the record since frees nothing (the count left the seat out)."""
    monkeypatch.setattr(writer, "commit_outcome", lambda *_, **__: asyncio.sleep(0))  # cannot say
    container, redis = world.container, SyncRedis.from_url(capacity_redis.url)
    office, recounted = await world.office(seats=3), await world.office(seats=3)
    day = world.tomorrow()
    for _ in range(2):
        lose_the_commits_answer(client, monkeypatch, committed=False)
        assert (await book(client, world, office, day)).status_code == 503
    assert (await book(client, world, office, day)).status_code == 201
    # The recorded booking left to settle too, as when its commit lands after the look.
    _, [(_, seat), *_] = (await container.capacity.bookings_to_settle())[0]
    async with container.sessions() as session:
        code = (await session.execute(select(Booking.tracking_code))).scalar_one()
    await container.capacity.settle_booking_later(code, await written_in(container, code), seat)
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 3
    assert 'nobat_commits_to_settle{kind="bookings"} 3.0' in (await client.get("/metrics")).text
    async with container.sessions() as session, container.sessions() as other:
        settled = await asyncio.gather(
            container.bookings.settle_bookings(session=session), container.bookings.settle_bookings(session=other)
        )
    assert sum(settled) == 3 and redis.hlen(keys.BOOKINGS_TO_SETTLE) == 0
    assert used(redis, office, day, "10:00") == 1  # the recorded booking's: the two lost freed, once each

    lose_the_commits_answer(client, monkeypatch, committed=False)
    assert (await book(client, world, recounted, day)).status_code == 503
    await world.rebuild()  # the day counted again from the record: its seat left out
    assert (await book(client, world, recounted, day)).status_code == 201
    async with container.sessions() as session:
        assert await container.bookings.settle_bookings(session=session) == 1
    assert used(redis, recounted, day, "10:00") == 1  # the new booking's, not freed
    redis.close()


async def test_forgetting_a_lost_answer_keeps_the_mark_of_a_retry_that_booked_meanwhile(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """A booking answered 503 marks its Idempotency-Key forgotten, so that a retry books.
    When a retry with the key has booked before that mark reaches Redis, the retry's mark
    stays, and the next retry is answered with its booking from it."""
    office, day, national_id = await world.office(seats=3), world.tomorrow(), world.national_id()
    mobile, key = "09121111111", "retry-me-2"
    headers = {**world.token(mobile), "Idempotency-Key": key}
    body = booking_body(office, national_id, day)
    retry = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert retry.status_code == 201
    booked = retry.json()["tracking_code"]

    lost = SeatRequest(office, day, "*", "10:00", None, "LOSTANSWER", idempotency=(mobile, key))
    await world.container.capacity.forget_unanswered(national_id=national_id, seat=lost)
    redis = SyncRedis.from_url(capacity_redis.url)
    assert redis.get(keys.idempotency(office, mobile, key)) == booked.encode()

    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201 and again.json()["tracking_code"] == booked
    assert again.headers["Idempotent-Replayed"] == "true"
    assert ten_oclock_used(capacity_redis, office, day) == 1
    redis.close()


async def test_a_request_forgotten_before_its_retry_was_forgotten_too_takes_no_seat_run_late(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """Redis stalls: a booking with an Idempotency-Key is answered 503 and forgotten, and so is
    its retry. Redis then runs the first one's RESERVE: it takes no seat (the key had kept the
    retry's mark alone, and the first one booked a seat nobody held, the key answering every
    later retry with a booking the record never had). The next retry books."""
    office, day, national_id = await world.office(seats=3), world.tomorrow(), world.national_id()
    mobile, key = "09121111111", "retry-me-3"
    await client.get(f"/api/v1/offices/{office}/slots", params={"service": "101", "date": day.isoformat()})
    capacity = world.container.capacity
    first, retry = (
        SeatRequest(office, day, "*", "10:00", None, code, idempotency=(mobile, key))
        for code in ("FIRSTLOST1", "RETRYLOST2")
    )
    for lost in (first, retry):
        await capacity.forget_unanswered(national_id=national_id, seat=lost)
    for late in (first, retry):
        assert as_text((await capacity.scripts.reserve(*_reserve_call(late)))[0]) == "FORGOTTEN"
    assert ten_oclock_used(capacity_redis, office, day) == 0

    booked = await client.post(
        "/api/v1/bookings",
        json=booking_body(office, national_id, day),
        headers={**world.token(mobile), "Idempotency-Key": key},
    )
    assert booked.status_code == 201, booked.text
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_lost_commit_the_job_finds_landed_counts_against_the_citizens_limit_again(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Answered 503 and not yet in the record, a booking frees its citizen's limit so that a
    retry can book; found landed by the minute's job, it counts against the limit again (one
    active booking allowed here: the next is refused) and keeps its seat. One cancelled
    while the job holds them again is let go again. Held before they are taken off the
    list, so that one whose taking off fails is held already, and settled by the next run."""
    container, redis = world.container, SyncRedis.from_url(capacity_redis.url)
    app_bookings = client.app.state.container.bookings
    monkeypatch.setattr(app_bookings, "rules", BookingRules(max_active=1, per_mobile=app_bookings.rules.per_mobile))
    office, day = await world.office(seats=3), world.tomorrow()
    held, cancelled = world.national_id(), world.national_id()
    codes = {}
    for national_id in (held, cancelled):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token()
        )
        assert booked.status_code == 201
        code = codes[national_id] = booked.json()["tracking_code"]
        # What _after_lost_commit does when the record does not have the booking yet.
        asked = SeatRequest(office, day, "*", "10:00", None, code)
        await container.capacity.forget_unanswered(national_id=national_id, seat=asked)
        await container.capacity.settle_booking_later(
            code, await written_in(container, code), Seat(office, day, "*", "10:00")
        )
    assert redis.hget(keys.citizen_holds(held), codes[held]) is None  # freed: could book past the limit
    hold_again = container.capacity.hold_again

    async def cancelled_meanwhile(**booking: Any) -> None:
        """A cancel that commits, and lets go of its hold, after the job read the booking
        active and before it holds it again."""
        if booking["tracking_code"] == codes[cancelled]:
            async with container.sessions() as session:
                await session.execute(
                    update(Booking).where(Booking.tracking_code == codes[cancelled]).values(status="cancelled")
                )
                await session.commit()
        await hold_again(**booking)

    monkeypatch.setattr(container.capacity, "hold_again", cancelled_meanwhile)
    bookings_settled = container.capacity.bookings_settled

    async def held_ones_fail_once(taking: list[str]) -> list[str]:
        if codes[held] not in taking:
            return await bookings_settled(taking)
        monkeypatch.setattr(container.capacity, "bookings_settled", bookings_settled)
        raise RedisTimeoutError("Redis went away")

    monkeypatch.setattr(container.capacity, "bookings_settled", held_ones_fail_once)
    async with container.sessions() as session:
        assert await container.bookings.settle_bookings(session=session) == 1  # the held one's taking off failed
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 1  # left for the next run, which settles it
    assert redis.hget(keys.citizen_holds(held), codes[held]) == f"{day.isoformat()}|101".encode()
    assert redis.hget(keys.citizen_holds(cancelled), codes[cancelled]) is None
    async with container.sessions() as session:
        assert await container.bookings.settle_bookings(session=session) == 1
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 0
    assert redis.hget(keys.citizen_holds(held), codes[held]) == f"{day.isoformat()}|101".encode()
    assert redis.hget(keys.citizen_holds(cancelled), codes[cancelled]) is None
    later = day + dt.timedelta(days=1)
    refused = await client.post("/api/v1/bookings", json=booking_body(office, held, later), headers=world.token())
    assert refused.status_code == 409 and refused.json()["code"] == "too_many_bookings", refused.text
    again = await client.post("/api/v1/bookings", json=booking_body(office, cancelled, later), headers=world.token())
    assert again.status_code == 201, again.text  # the cancelled booking counts for nothing
    assert used(redis, office, day, "10:00") == 2  # both landed, their seats kept (this cancel is the record's only)
    redis.close()


async def test_settling_lost_commits_goes_on_past_one_that_fails_and_drops_days_gone_by(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A commit whose seats Redis fails to free holds up neither the others nor the lines'
    fill (its seat stays counted: the safe side); and one whose day has gone by is dropped
    unasked, for the record may no longer know a transaction that old."""
    monkeypatch.setattr(writer, "commit_outcome", lambda *_, **__: asyncio.sleep(0))  # cannot say
    container, redis = world.container, SyncRedis.from_url(capacity_redis.url)
    office, day = await world.office(seats=3), world.tomorrow()
    for _ in range(2):
        lose_the_commits_answer(client, monkeypatch, committed=False)
        assert (await book(client, world, office, day)).status_code == 503
    gone_by = Seat(office, day - dt.timedelta(days=3), "*", "10:00")
    await container.capacity.settle_booking_later("GONEBY0001", 2**40, gone_by)  # an id no record knows
    fails_once(monkeypatch, container.bookings, "free_seats", RedisTimeoutError("Redis went away"))
    async with container.sessions() as session:
        assert await container.bookings.settle_bookings(session=session) == 3
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 0
    assert used(redis, office, day, "10:00") == 1  # one freed; the other's free failed: counted
    redis.close()


async def test_a_lost_commit_that_did_not_land_on_a_dropped_connection_goes_again(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """As a batch whose connection was found gone before its commit: the record says nothing
    of it landed, so it is committed again, once, on a new connection, and the citizen is
    booked without knowing."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    lose_the_commits_answer(client, monkeypatch, committed=False, dropped=True)
    booked = await book(client, world, office, day)
    assert booked.status_code == 201, booked.text
    assert (await client.get(f"/api/v1/bookings/{booked.json()['tracking_code']}")).json()["status"] == "booked"
    assert ten_oclock_used(capacity_redis, office, day) == 1
    assert (await book(client, world, office, day)).status_code == 409  # the one seat is taken


@pytest.mark.parametrize("landed", [False, True])
async def test_a_lost_commit_the_record_cannot_be_asked_about_is_left_to_the_job(
    client: Client,
    world: World,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    landed: bool,
) -> None:
    """The commit's answer was lost, and the record does not answer either (a failover, most
    often): 503, and the booking is left to the minute's job as one the record did not have.
    The citizen's limit and the request's Idempotency-Key are freed, so the same request,
    retried, books, or is answered with the booking if it landed. The job then frees the
    lost commit's seat if it did not land, or keeps it and holds the citizen's limit again.
    (Before, the 503 came first: the seat stayed counted for nobody until a rebuild, and the
    retry was refused as a request in progress.)"""
    monkeypatch.setattr(writer, "commit_outcome", lambda *_, **__: asyncio.sleep(0))  # cannot say
    app_bookings = client.app.state.container.bookings
    fails_once(
        monkeypatch,
        app_bookings,
        "_by_tracking_code",
        OperationalError("SELECT", {}, Exception("the record is failing over")),
    )
    redis = SyncRedis.from_url(capacity_redis.url)
    office, day, national_id = await world.office(seats=2), world.tomorrow(), world.national_id()
    body = booking_body(office, national_id, day)
    headers = {**world.token(), "Idempotency-Key": "retried-while-the-record-fails-over"}
    lose_the_commits_answer(client, monkeypatch, committed=landed)
    lost = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert lost.status_code == 503, lost.text
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 1  # left to the minute's job
    [lost_code] = [as_text(code) for code in redis.hkeys(keys.BOOKINGS_TO_SETTLE)]
    assert used(redis, office, day, "10:00") == 1  # counted meanwhile: the safe side
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert (again.json()["tracking_code"] == lost_code) is landed
    async with world.container.sessions() as session:
        await world.container.bookings.fill_waitlists_left(session=session)
    assert redis.hlen(keys.BOOKINGS_TO_SETTLE) == 0
    assert used(redis, office, day, "10:00") == 1  # one booking, one seat
    # The citizen's limit held by the one booking there is: the lost one if it landed.
    assert redis.hget(keys.citizen_holds(national_id), again.json()["tracking_code"]) is not None
    assert (redis.hget(keys.citizen_holds(national_id), lost_code) is not None) is landed
    redis.close()


@pytest.mark.parametrize("landed", [True, False])
async def test_a_cancel_whose_commit_answer_was_lost_gives_its_seat_back_once(
    client: Client,
    world: World,
    capacity_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    landed: bool,
) -> None:
    """The cancel's COMMIT went out and its answer was lost: the record is asked. Landed, it
    is a cancel like any other: 200, the citizen's limit and the seat freed at once. Not, it
    is a 503 with the booking standing, and the retry cancels. Either way the seat is freed
    once. (Before, a cancel that landed was a 503, its retry a 409, and its seat was sold to
    nobody until the next rebuild.)"""
    redis = SyncRedis.from_url(capacity_redis.url)
    office, day, national_id = await world.office(seats=2), world.tomorrow(), world.national_id()
    mine = await client.post(
        "/api/v1/bookings", json=booking_body(office, national_id, day), headers=world.token("09121110000")
    )
    assert mine.status_code == 201 and (await book(client, world, office, day)).status_code == 201
    code = mine.json()["tracking_code"]
    lose_the_commits_answer(client, monkeypatch, committed=landed, engine=client.app.state.container.engine)
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    if not landed:
        assert cancelled.status_code == 503, cancelled.text
        assert (await client.get(f"/api/v1/bookings/{code}")).json()["status"] == "booked"
        assert used(redis, office, day, "10:00") == 2  # nothing freed
        cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert used(redis, office, day, "10:00") == 1  # the other citizen's
    assert redis.hget(keys.citizen_holds(national_id), code) is None
    again = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert again.status_code == 409, again.text
    assert used(redis, office, day, "10:00") == 1  # freed once
    assert (await book(client, world, office, day)).status_code == 201  # the freed seat sells again
    redis.close()


async def test_a_failure_after_the_commit_does_not_undo_the_booking(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the record said "committed", nothing after it (here: handing the SMS over) may
    fail the booking: its caller would give back a seat a recorded booking holds."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    writer = client.app.state.container.bookings.writer
    send = writer.send_sms

    def broken(sms_ids: Any) -> None:
        monkeypatch.setattr(writer, "send_sms", send)  # once
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(writer, "send_sms", broken)
    assert (await book(client, world, office, day)).status_code == 201
    assert (await book(client, world, office, day)).status_code == 409  # the one seat is taken


async def test_a_request_cancelled_while_its_booking_commits_never_gives_the_seat_back(
    client: Client, world: World, capacity_redis: EmbeddedRedis
) -> None:
    """The caller is cancelled (a shutdown) while its rows are in a commit: the commit goes
    on and lands, so the seat must stay counted."""
    office = await world.office(seats=1)
    await world.rebuild()
    day = world.tomorrow()
    container = world.container
    writer = container.bookings.writer
    commit = writer._commit
    started = asyncio.Event()

    async def slow_commit(*args: Any, **kwargs: Any) -> None:
        started.set()  # the caller is waiting on it now
        await asyncio.sleep(0.3)
        await commit(*args, **kwargs)

    writer._commit = slow_commit  # type: ignore[method-assign]
    booking = asyncio.create_task(
        container.bookings.book(
            sessions=container.sessions,
            mobile="09120000001",
            request=msgspec.convert(booking_body(office, world.national_id(), day), BookingCreate),
            idempotency_key=None,
        )
    )
    await started.wait()
    booking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await booking
    await asyncio.sleep(0.6)  # the commit lands
    async with container.sessions() as session:
        held = await session.scalar(select(func.count()).select_from(Booking).where(Booking.status.in_(SEAT_STATUSES)))
    assert held == ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_booking_whose_answer_from_redis_was_lost_can_be_retried(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the hold and the reserve, and the answer was lost (a timeout): 503. The seat
    cannot be told from anyone's, so it stays counted; the citizen's limit and the request's
    Idempotency-Key are freed, so the same request, retried, books (it had been refused as
    "already booked that day", and then as "in progress", for a booking that never was)."""
    office = await world.office(seats=2)
    await world.rebuild()  # the day in Redis: the lost trip's reserve takes a seat
    day = world.tomorrow()
    run_scripts = AutoPipeline.run_scripts

    async def ran_but_unanswered(self: AutoPipeline, calls: Any, **options: Any) -> Any:
        monkeypatch.setattr(AutoPipeline, "run_scripts", run_scripts)  # once: the booking's trip
        await run_scripts(self, calls, **options)
        raise RedisTimeoutError("Timeout reading from Redis")

    monkeypatch.setattr(AutoPipeline, "run_scripts", ran_but_unanswered)
    body = booking_body(office, world.national_id(), day)
    headers = {**world.token(), "Idempotency-Key": "retried-after-a-timeout"}
    lost = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert lost.status_code == 503, lost.text
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert ten_oclock_used(capacity_redis, office, day) == 2  # one leaked


@pytest.mark.parametrize("forget", ["answered", "timed out too"])
async def test_a_booking_whose_scripts_run_after_its_503_takes_nothing(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, forget: str
) -> None:
    """Redis stalled: the booking's answer timed out (503), its limit and Idempotency-Key
    were freed, and only then did Redis run its scripts. Run then, they put both back: the
    retry was refused, and the citizen had "a booking that day" that never was. The same
    when freeing them timed out too (the stalled Redis runs that late as well)."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    run_scripts = AutoPipeline.run_scripts
    waiting: list[tuple[Any, ...]] = []
    capacity_scripts = client.app.state.container.capacity.scripts

    async def not_run_yet(self: AutoPipeline, calls: Any, **options: Any) -> Any:
        monkeypatch.setattr(AutoPipeline, "run_scripts", run_scripts)  # once: the booking's trip
        waiting.extend(calls)
        if forget == "timed out too":
            scripts = capacity_scripts.forget

            async def forget_not_run_yet(*, keys: list[str], args: list[Any]) -> Any:
                waiting.append((scripts, keys, args))
                raise RedisTimeoutError("Timeout reading from Redis")

            monkeypatch.setattr(capacity_scripts, "forget", forget_not_run_yet)
        raise RedisTimeoutError("Timeout reading from Redis")

    monkeypatch.setattr(AutoPipeline, "run_scripts", not_run_yet)
    national_id = world.national_id()
    body = booking_body(office, national_id, day)
    headers = {**world.token(), "Idempotency-Key": "answered-late"}
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
    with SyncRedis.from_url(capacity_redis.url) as redis:
        for script, keys_, args in waiting:  # Redis gets round to them now
            redis.eval(script.script, len(keys_), *keys_, *args)
        held = holds(redis, national_id)
    assert held == []
    assert ten_oclock_used(capacity_redis, office, day) == 0  # the late reserve took nothing
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert ten_oclock_used(capacity_redis, office, day) == 1


async def test_a_lost_answers_marks_that_fail_too_are_sent_again_once_redis_answers(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the booking's scripts and its answer was lost (503), and the marks that free
    the citizen's hold and the key failed too: sent once, the citizen was refused "already
    booked" that day, and the retry was answered with a booking nowhere, until the recount.
    Sent again now, once Redis answers."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    run_scripts = AutoPipeline.run_scripts
    capacity_scripts = client.app.state.container.capacity.scripts

    async def ran_answer_lost(self: AutoPipeline, calls: Any, **options: Any) -> Any:
        monkeypatch.setattr(AutoPipeline, "run_scripts", run_scripts)  # once: the booking's trip
        await run_scripts(self, calls, **options)
        fails_once(monkeypatch, capacity_scripts, "forget", RedisTimeoutError("Timeout reading from Redis"))
        raise RedisTimeoutError("Timeout reading from Redis")

    monkeypatch.setattr(AutoPipeline, "run_scripts", ran_answer_lost)
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    national_id = world.national_id()
    body = booking_body(office, national_id, day)
    headers = {**world.token(), "Idempotency-Key": "marks-sent-again"}
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
    await holds_let_go(capacity_redis, national_id)
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 201, again.text


async def test_a_booking_stalled_past_a_whole_recount_is_refused_not_sold_twice(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its seat taken, the booking stalled (a frozen process) while a recount ran from start
    to end: the recount counted its day again from a record without it, and, committed after,
    its seat was sold again. Refused now (503), its seat not counted twice; and a booking
    made after a recount the instance did not see commits (its day's own count says so)."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    app = client.app.state.container
    write = app.bookings.writer.write

    async def after_a_recount(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(app.bookings.writer, "write", write)
        await rebuild(app)  # begins and ends while the booking waits
        await write(*args, **kwargs)

    monkeypatch.setattr(app.bookings.writer, "write", after_a_recount)
    stalled = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert stalled.status_code == 503, stalled.text
    assert ten_oclock_used(capacity_redis, office, day) == 0
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 0
    await world.rebuild()  # another recount this instance does not see: its next booking still commits
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    assert ten_oclock_used(capacity_redis, office, day) == 1


STUCK_SECONDS = SEND_JOB_TIMEOUT + 1
"""The least the service starts with (above the send job's timeout); the steps from the claim
to the first sweep have this long, on a slow machine."""


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class SlowTwilio:
    """A proxy in front of the stand-in: forwards at once, answers late, so a worker can be
    killed after Twilio took the message and before it heard back."""

    def __init__(self, target: str, delay: float) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = urllib.request.Request(
                    target + self.path, data=body, method="POST", headers=dict(self.headers)
                )
                with urllib.request.urlopen(request) as answer:
                    payload, status = answer.read(), answer.status
                time.sleep(outer.delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                request = urllib.request.Request(target + self.path, headers=dict(self.headers))
                with urllib.request.urlopen(request) as answer:
                    payload = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.delay = delay
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()


async def test_a_worker_killed_mid_send_still_sends_exactly_once(
    world: World, settings: Settings, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.sms.tasks import sweep

    standin = TwilioStandIn().start()
    slow = SlowTwilio(standin.base_url, delay=30)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": capacity_redis.url,
        "RQ_REDIS_URL": settings.rq_redis_url or "",
        "NOBAT_SECRET_KEY": settings.secret_key,
        "NOBAT_SMS_BACKEND": "twilio",
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": "token",
        "TWILIO_FROM": "+15005550006",
        "TWILIO_API_BASE_URL": slow.url,
        # Short, so the test need not wait the default; the sweep reads it as in production.
        "NOBAT_SMS_STUCK_SECONDS": str(STUCK_SECONDS),
    }
    message_id = world.container.messenger.queue  # the messenger of this deployment
    async with world.container.sessions() as session:
        assert message_id(session, to="09121234567", body="پیام آزمایشی", kind="test")
        await session.commit()  # enqueued on RQ after the commit
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.worker", env=env, start_new_session=True
    )
    try:
        await asyncio.to_thread(standin.wait_for, 1, 30)  # Twilio has it; the worker waits for the answer
        # The worker and its work horse (RQ puts the horse in a process group of its own).
        horses = children(worker.pid)
        assert horses, "the work horse is sending"
        for horse in horses:
            os.kill(horse, signal.SIGKILL)
        os.killpg(worker.pid, signal.SIGKILL)
        await asyncio.wait_for(worker.wait(), 10)
        async with world.container.sessions() as session:
            stuck = await session.scalar(select(SmsMessage))
            assert stuck is not None and stuck.status == SmsStatus.SENDING
        slow.delay = 0
        # The sweep finds the abandoned message and enqueues it again; the restarted
        # worker asks the provider first and does not send it twice.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # Still within NOBAT_SMS_STUCK_SECONDS: as far as the sweep knows, a worker is on it.
        assert await asyncio.to_thread(sweep) == 0
        assert stuck.updated_at is not None
        await asyncio.sleep(STUCK_SECONDS + 1)
        assert await asyncio.to_thread(sweep) == 1
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workers.worker", "--burst", env=env, start_new_session=True
        )
        await asyncio.wait_for(worker.wait(), 60)
        async with world.container.sessions() as session:
            sent = await session.scalar(select(SmsMessage))
            assert sent is not None and sent.status == SmsStatus.SENT and sent.provider_sid
        assert len(standin.messages) == 1
    finally:
        if worker.returncode is None:
            os.killpg(worker.pid, signal.SIGKILL)
        slow.stop()
        standin.stop()


@contextlib.contextmanager
def silent_redis() -> Iterator[str]:
    """A Redis URL whose server takes connections and never answers (a host gone quiet, a
    partition): each command waits out the client's timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections the kernel completes, and nobody reads
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


async def test_a_sign_in_does_not_wait_for_a_job_queue_that_never_answers(
    settings: Settings, container: Container
) -> None:
    """A commit's messages are enqueued off the event loop: RQ's Redis gone quiet had held
    each sign-in (and every other request of the instance meanwhile) for its client's whole
    timeout. The message stays in the record for the sweep."""
    with silent_redis() as quiet, started_app(settings.with_(rq_redis_url=quiet)) as app:
        async with AsyncTestClient(app, timeout=60) as client:
            started: Container = app.state.container
            timeout = started.jobs.redis.connection_pool.connection_kwargs["socket_timeout"]
            began = time.monotonic()
            sent = await client.post("/api/v1/auth/otp", json={"mobile": "09120003333"})
            assert sent.status_code == 202, sent.text
            assert time.monotonic() - began < timeout  # not the enqueue's timeout, waited out
            # The enqueue, on its thread, gives up after the timeout; nothing else is lost.
            assert await asyncio.to_thread(started.messenger.wait_sent, 4 * timeout)
            async with container.sessions() as session:
                message = await session.scalar(select(SmsMessage).where(SmsMessage.to == "09120003333"))
            assert message is not None and message.status == SmsStatus.QUEUED


async def test_a_shutdown_step_that_never_ends_is_given_up_and_named(
    app: Litestar, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance stops even when one step of its shutdown hangs, the steps after it still
    run, and the log names the one that hung."""
    monkeypatch.setattr(container_module, "SHUTDOWN_STEP_SECONDS", 0.5)
    later_steps: list[str] = []

    async def never() -> None:
        await asyncio.sleep(3600)

    async with AsyncTestClient(app, timeout=60) as client:
        assert (await client.get("/health/live")).status_code == 200
        container: Container = app.state.container
        monkeypatch.setattr(container.capacity.reads, "told", never)
        closing = container.requests.close

        async def close_requests() -> None:
            later_steps.append("requests")
            await closing()

        monkeypatch.setattr(container.requests, "close", close_requests)
        started = time.monotonic()
    assert time.monotonic() - started < 10
    assert "shutdown: telling the last changes did not end in 0.5 s" in caplog.text
    assert later_steps == ["requests"]


async def test_a_waitlist_join_whose_line_meets_redis_away_gives_its_hold_back_later(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's row was committed, then Redis failed as it joined the line and again as the
    join was taken back: the hold stayed, and the citizen, in no line and with no row, was
    refused "already booked" that day. Given back once Redis answers."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.booking.schemas import WaitlistJoin

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    assert (await book(client, world, office, day)).status_code == 201
    jobs = world.container
    monkeypatch.setattr(jobs.capacity, "join_waitlist", _fails(RedisConnectionError("Redis away")))
    monkeypatch.setattr(jobs.capacity, "leave_waitlist", _fails(RedisConnectionError("Redis away")))
    fails_once(monkeypatch, jobs.capacity, "unhold", RedisConnectionError("Redis away a moment"))
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    national_id = world.national_id()
    join = WaitlistJoin(national_id=national_id, office_code=office, service_code="101", date=day.isoformat())
    async with jobs.sessions() as session:
        with pytest.raises(RedisConnectionError):
            await jobs.bookings.join_waitlist(session=session, mobile=world.mobile(), request=join)
    async with jobs.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Booking)) == 1  # the booking alone
    await holds_let_go(capacity_redis, national_id)


async def test_a_refused_booking_whose_seat_cannot_be_given_back_lets_go_of_its_key(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused "already booked that day", the request gave back the seat its trip had taken,
    and Redis failed as it did: its Idempotency-Key pointed at a booking that exists nowhere,
    and the retry was answered "in progress" for a day. The key is let go of once Redis
    answers; the seat stays counted (RELEASE may have run), the safe side."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    office = await world.office(seats=2)
    day = world.tomorrow()
    national_id = world.national_id()
    container = client.app.state.container
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, national_id, day, "10:00"), headers=world.token()
    )
    assert first.status_code == 201, first.text
    fails_once(monkeypatch, container.capacity, "release", RedisConnectionError("Redis away a moment"))
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    body, mobile = booking_body(office, national_id, day, "10:30"), world.mobile()
    headers = {**world.token(mobile), "Idempotency-Key": "refused-seat-kept"}
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 503
    with SyncRedis.from_url(capacity_redis.url) as redis:
        for _ in range(50):  # let go of once Redis answers
            if redis.get(keys.idempotency(office, mobile, "refused-seat-kept")).startswith(b"!"):
                break
            await asyncio.sleep(0.1)
    again = await client.post("/api/v1/bookings", json=body, headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "already_booked", again.text


async def test_a_cancel_that_meets_redis_away_lets_go_of_the_hold_once_it_answers(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel was committed and its seat given back, then Redis failed as it let go of
    the citizen's hold: the citizen was refused "already booked" for that service that day,
    for a booking they had cancelled. Let go of once Redis answers."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    office = await world.office(seats=2)
    day = world.tomorrow()
    national_id, mobile = world.national_id(), world.mobile()
    body = booking_body(office, national_id, day, "10:00")
    booked = await client.post("/api/v1/bookings", json=body, headers=world.token(mobile))
    assert booked.status_code == 201, booked.text
    container = client.app.state.container
    fails_once(monkeypatch, container.capacity, "unhold", RedisConnectionError("Redis away a moment"))
    monkeypatch.setattr(booking_service, "UNDO_RETRY_SECONDS", (0.1,))
    code = booked.json()["tracking_code"]
    cancelled = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token(mobile))
    assert cancelled.status_code == 200, cancelled.text
    with SyncRedis.from_url(capacity_redis.url) as redis:
        for _ in range(50):
            if redis.hget(keys.citizen_holds(national_id), code) is None:
                break
            await asyncio.sleep(0.1)
    again = await client.post("/api/v1/bookings", json=body, headers=world.token(mobile))
    assert again.status_code == 201, again.text


async def test_a_promotion_whose_connection_cannot_be_had_puts_the_citizen_back_first_in_line(
    client: Client, world: World, capacity_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A primary gone silent: the promotion's connection, checked on its way out of the pool,
    times out, raised as the driver raised it (asyncio's TimeoutError, an OSError), not as one
    of SQLAlchemy's. It went past every handler: the cancel, committed, was answered 503, and
    the citizen, out of the line in Redis, held a seat nobody had booked until the night."""
    from app.booking import service as booking_service

    office, day, code, waiting = await full_with_one_waiting(client, world)
    hold_off = booking_service.hold_off_recounts
    calls: list[None] = []

    async def the_second_connection_times_out(session: Any) -> Any:
        calls.append(None)
        if len(calls) == 2:  # the cancel's went through; the promotion's does not
            raise TimeoutError("the connection's check timed out")
        return await hold_off(session)

    monkeypatch.setattr(booking_service, "hold_off_recounts", the_second_connection_times_out)
    cancel = await client.post(f"/api/v1/bookings/{code}/cancel", headers=world.token("09121110000"))
    assert cancel.status_code == 200, cancel.text  # committed: answered so
    monkeypatch.setattr(booking_service, "hold_off_recounts", hold_off)
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "waitlisted"
    with SyncRedis.from_url(capacity_redis.url) as redis:
        assert redis.lrange(keys.waitlist(office, day, "*"), 0, -1) == [waiting.encode()]  # first again
    async with world.container.sessions() as session:  # the minute's job gives the line its seat
        await world.container.bookings.fill_waitlists_left(session=session)
    assert (await client.get(f"/api/v1/bookings/{waiting}")).json()["status"] == "booked"


async def test_a_pause_the_watch_cannot_end_says_why_in_the_log(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis user forbidden INFO (hosted Redis's -@dangerous) kept bookings paused forever
    with "rebuilding" on /health/ready and not a line in the log. Said once a minute, at error
    level for a refusal, which no wait ends."""
    from redis.exceptions import NoPermissionError

    container = world.container

    async def refused() -> bool:
        raise NoPermissionError("this user has no permissions to run the 'info' command")

    monkeypatch.setattr(container.capacity, "is_built", refused)
    looks = watch.RedisWatch(capacity=container.capacity, sessions=container.sessions, clock=container.clock, settle=0)
    looks._policy_checked = True  # the policy's look is a test of its own
    with caplog.at_level(logging.WARNING, logger="app.capacity.watch"):
        for _ in range(3):
            await looks.check()
    said = [r for r in caplog.records if "bookings paused: the capacity Redis answered" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR and "'info'" in said[0].getMessage(), said
    assert not container.capacity.ready


async def test_a_redis_that_refuses_writes_pauses_bookings_and_says_so(
    client: Client, world: World, capacity_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis full under noeviction (or its disk full) answers PING, GET and INFO and refuses
    every booking: /health/ready, what the engineer is paged on, had stayed green."""
    container = world.container
    looks = watch.RedisWatch(capacity=container.capacity, sessions=container.sessions, clock=container.clock, settle=0)
    looks._policy_checked = True  # the policy's look is a test of its own
    await looks.check()
    assert container.capacity.ready
    with SyncRedis.from_url(capacity_redis.url) as redis:
        used_memory = int(redis.info("memory")["used_memory"])
        redis.config_set("maxmemory", used_memory // 2)  # full: every write refused, OOM
        with caplog.at_level(logging.WARNING, logger="app.capacity.watch"):
            await looks.check()
        assert not container.capacity.ready and container.capacity.paused_by.startswith("redis ")
        said = [r for r in caplog.records if "bookings paused: the capacity Redis answered" in r.getMessage()]
        assert len(said) == 1 and "maxmemory" in said[0].getMessage(), said
        for _ in range(40):  # the served instance's own watch, within its second
            ready = await client.get("/health/ready")
            if ready.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert ready.status_code == 503 and ready.json()["capacity"].startswith("redis "), ready.text
        redis.config_set("maxmemory", 0)
    await looks.check()
    assert container.capacity.ready and container.capacity.paused_by == ""


async def test_a_redis_that_may_evict_found_while_running_pauses_and_says_so_once_a_minute(
    world: World, capacity_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis away at the start, or a failover to a node set to evict keys: the policy's refusal
    was raised into the watch's loop, which logged "rebuilding capacity failed" with a
    traceback every second, and the new node's policy was never asked at all."""
    container = world.container
    container.capacity.watched = True  # a running instance's watch
    looks = watch.RedisWatch(capacity=container.capacity, sessions=container.sessions, clock=container.clock, settle=0)
    await looks.check()
    assert container.capacity.ready
    with SyncRedis.from_url(capacity_redis.url) as redis:
        redis.config_set("maxmemory-policy", "volatile-lru")
        redis.delete(keys.REBUILT_AT)  # as on a node the counters were not built on
        with caplog.at_level(logging.WARNING, logger="app.capacity.watch"):
            for _ in range(3):
                await looks.check()
        assert not container.capacity.ready and container.capacity.paused_by == "redis evicts keys"
        said = [r for r in caplog.records if "noeviction" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR and not said[0].exc_info, said
        redis.config_set("maxmemory-policy", "noeviction")
    await looks.check()
    assert container.capacity.ready and container.capacity.paused_by == ""
