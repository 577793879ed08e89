"""The long-lived objects one app instance wires together, built once at start-up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.service import CitizenAuth
from app.booking.relocation import Relocator
from app.booking.service import BookingRules, BookingService
from app.booking.writer import GroupCommit
from app.capacity.service import Capacity
from app.clock import Clock
from app.complaints.service import Complaints
from app.console.service import Console
from app.db import STATEMENT_SECONDS, create_engine, session_factory
from app.enforcement.policy import Policy
from app.enforcement.service import Enforcement
from app.jobs import Jobs
from app.load.service import LoadService
from app.offices.directory import OfficeDirectory
from app.ratelimit import RateLimiter, RequestLimiter
from app.redis import CLUSTER_SCHEME, connect
from app.regulator.service import Regulator
from app.settings import Settings
from app.sms.channel import SmsChannel
from app.sms.service import Messenger
from app.staff.service import StaffAuth

log = logging.getLogger(__name__)

SHUTDOWN_STEP_SECONDS = 15.0
"""The longest one step of an instance's shutdown may take before it is given up (a step is
a script call or two, a flush, closing the pools: well under a second when Redis and the
database answer, and at most a few of their 2 s timeouts when they do not)."""


async def shut_down(step: str, done: Awaitable[Any]) -> None:
    """Wait for one step of the shutdown, giving it up after SHUTDOWN_STEP_SECONDS with its
    name in the log.
    An instance whose shutdown never ends holds its port and its workers until it is killed,
    and nothing says why: a test run had once stopped for 13 minutes in one, in a step that
    could not be told from the others."""
    try:
        async with asyncio.timeout(SHUTDOWN_STEP_SECONDS):
            await done
    except TimeoutError:
        log.error("shutdown: %s did not end in %g s; going on without it", step, SHUTDOWN_STEP_SECONDS)


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    clock: Clock
    offices: OfficeDirectory
    capacity: Capacity
    jobs: Jobs
    limiter: RateLimiter
    requests: RequestLimiter  # the per-address limit on every request
    messenger: Messenger
    auth: CitizenAuth
    bookings: BookingService
    load: LoadService
    staff: StaffAuth
    relocator: Relocator
    console: Console
    regulator: Regulator
    sms_channel: SmsChannel
    enforcement: Enforcement
    complaints: Complaints

    async def close(self) -> None:
        # First, while Redis is open: what failed bookings took, given back (else until a rebuild).
        # (Bounded within the step's limit, so that those left are named, not dropped.)
        await shut_down("giving back what failed bookings took", self.bookings.close(SHUTDOWN_STEP_SECONDS / 2))
        # The other instances hear of the last changes made here (else when their copies end).
        await shut_down("telling the last changes", self.capacity.reads.told())
        await shut_down("adding the last rate-limit counts", self.requests.close())
        await shut_down("closing the group commit", self.bookings.writer.close())
        await shut_down("enqueuing the last messages", asyncio.to_thread(self.messenger.close))
        self.jobs.close()
        await shut_down("closing Redis", self.redis.aclose())
        await shut_down("closing the database", self.engine.dispose())


def build_container(
    settings: Settings, redis_url: str, *, statement_seconds: float | None = STATEMENT_SECONDS
) -> Container:
    engine = create_engine(settings.database_url, pool_size=settings.db_pool, statement_seconds=statement_seconds)
    sessions = session_factory(engine)
    redis = connect(redis_url)
    clock = Clock(settings.tz)
    capacity = Capacity(
        redis,
        clock=clock,
        horizon_days=settings.horizon_days,
        official_holidays=settings.official_holidays,
        read_cache_seconds=settings.read_cache_seconds,
    )
    if redis_url.startswith(CLUSTER_SCHEME) and not settings.rq_redis_url:
        raise RuntimeError("with a Redis Cluster, set RQ_REDIS_URL to a plain Redis for the job queues")
    jobs = Jobs(settings.rq_redis_url or redis_url)
    messenger = Messenger(jobs=jobs, clock=clock)
    limiter = RateLimiter(redis, capacity.auto)
    auth = CitizenAuth(redis=redis, settings=settings, limiter=limiter, messenger=messenger)
    offices = OfficeDirectory(sessions=sessions, redis=redis)
    bookings = BookingService(
        offices=offices,
        capacity=capacity,
        clock=clock,
        rules=BookingRules(max_active=settings.max_active_bookings, per_mobile=settings.bookings_per_mobile),
        limiter=limiter,
        messenger=messenger,
        # The writer has connections of its own, so requests waiting on it cannot starve it.
        writer=GroupCommit(
            create_engine(settings.database_url, pool_size=2, pre_ping=False, statement_seconds=statement_seconds),
            send_sms=messenger.hand_over,
            may_commit=capacity.may_commit,
            mark=lambda: capacity.mark,
            counts=capacity.counts,
        ),
    )
    load = LoadService(capacity=capacity, clock=clock, offices=offices)
    relocator = Relocator(bookings=bookings, load=load)
    console = Console(bookings=bookings, relocator=relocator, load=load, clock=clock, settings=settings)
    policy = Policy(
        window_days=settings.complaint_window_days,
        restrict_after_substantiated=settings.restrict_after_substantiated,
        restrict_after_received=settings.restrict_after_received,
        restricted_cap_percent=settings.restricted_cap_percent,
        fine_base_rials=settings.fine_base_rials,
        fine_cap_rials=settings.fine_cap_rials,
    )
    enforcement = Enforcement(
        capacity=capacity,
        bookings=bookings,
        relocator=relocator,
        clock=clock,
        policy=policy,
        appeal_days=settings.appeal_days,
    )
    complaints = Complaints(
        enforcement=enforcement,
        messenger=messenger,
        clock=clock,
        policy=policy,
        response_hours=settings.complaint_response_hours,
        limiter=limiter,
        per_mobile=settings.complaints_per_mobile,
    )
    sms_channel = SmsChannel(
        bookings=bookings,
        load=load,
        auth=auth,
        messenger=messenger,
        clock=clock,
        horizon_days=settings.horizon_days,
        replies_per_mobile=settings.sms_replies_per_mobile,
        no_show_grace=dt.timedelta(minutes=settings.no_show_grace_minutes),
    )
    sms_channel.complaints = complaints.sms_complaint
    return Container(
        settings=settings,
        engine=engine,
        sessions=sessions,
        redis=redis,
        clock=clock,
        offices=offices,
        capacity=capacity,
        jobs=jobs,
        limiter=limiter,
        requests=RequestLimiter(redis),
        messenger=messenger,
        auth=auth,
        bookings=bookings,
        load=load,
        staff=StaffAuth(redis=redis, settings=settings, limiter=limiter, sessions=sessions),
        relocator=relocator,
        console=console,
        regulator=Regulator(console=console),
        sms_channel=sms_channel,
        enforcement=enforcement,
        complaints=complaints,
    )
