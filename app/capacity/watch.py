"""Watching Redis: when it comes back empty (restarted, flushed) or is another server (a
failover to a replica that may lack the last writes: ``Capacity.is_built``), new bookings
wait with a 503 until every counter is rebuilt from the record, by one instance at a time.

The count waits first. Bookings already past the pause (on this instance, or on one that has
not looked yet) may have taken their seat and not yet committed; counted before its commit,
a booking would be missing from Redis and its seat sold again. So the rebuild starts
``settle`` seconds later (NOBAT_REBUILD_SETTLE_SECONDS): time for every instance to look
(each does every ``WATCH_INTERVAL``) and for those bookings to commit or give up; on
PostgreSQL it then waits for any commit still under way (``wait_for_commits``). A booking
asks Redis itself before its commit (``Capacity.may_commit``), so one held on a server that
failed over, or in a job's process (no watch), is not committed either.

When the count is done, every instance that saw the pause runs ``on_resume``: the app gives
the free seats to the waitlists then. A seat freed during the pause (a cancel whose promotion
could not be recorded) was left free with the line in front of it, and while anyone is in
line the reserve script sells no one else a seat: without the fill, that seat stayed empty
until the next cancel at that office-day."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.exceptions import RedisError, ResponseError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.writer import wait_for_commits
from app.capacity import keys
from app.capacity.scripts import as_text
from app.capacity.service import Capacity, EvictionPolicy
from app.clock import Clock
from app.redis import renewed_lock

log = logging.getLogger(__name__)

REBUILD_LOCK = f"{keys.NAMESPACE}:rebuild-lock"
LOCK_SECONDS = 30
"""The rebuild lock's life, renewed every third of it while its holder works: a holder that
died (a `python -m app rebuild` killed) keeps every instance paused this long at most."""
WATCH_INTERVAL = 1.0
"""Seconds between an instance's looks at Redis: within this, every instance has paused."""


class RedisWatch:
    def __init__(
        self,
        *,
        capacity: Capacity,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        clock: Clock,
        settle: float,
        interval: float = WATCH_INTERVAL,
        on_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.capacity = capacity
        self.sessions = sessions
        self.clock = clock
        self.settle = settle
        self.interval = interval
        self.on_resume = on_resume
        self._paused = False  # this instance saw the counters unbuilt, or Redis away
        self._policy_checked = False  # Capacity.require_no_eviction, at the first look Redis answers
        self._told_at = -SAY_WHY_EVERY  # when a paused look last said why in the log

    async def check(self) -> None:
        """One look: mark capacity ready or not, and rebuild if Redis lost its data. Redis
        set to evict keys raises, and bookings stay paused (at start-up: the app does not
        start); away at start-up, it is asked at the first look it answers."""
        try:
            if not self._policy_checked:
                self.capacity.ready = False
                await self.capacity.require_no_eviction()
                self._policy_checked = True
            if await self.capacity.is_built():
                # Written to, not only read (every master of a cluster): a Redis full under
                # noeviction (OOM) or with its disk full (MISCONF) answers PING and GET and
                # refuses every booking, and the readiness the engineer is paged on had stayed
                # green through it.
                await self.capacity.probe_writes()
                self.capacity.ready, self.capacity.paused_by = True, ""
                await self._resume()
                return
            self.capacity.ready, self._paused, self.capacity.paused_by = False, True, ""  # rebuilding
            # Other servers behind the counters (a failover, a node added): theirs asked too.
            await self.capacity.require_no_eviction()
            await rebuild_paused(self.capacity, self.sessions, today=self.clock.today(), wait=self.settle)
            self.capacity.ready = True
            await self._resume()
        except RebuildRunning:
            return  # another instance (or `python -m app rebuild`) is at it
        except RedisError as error:
            self.capacity.ready, self._paused = False, True
            self.capacity.paused_by = f"redis {type(error).__name__}"
            self._say_why(error)
        except EvictionPolicy as error:
            if self.capacity.watched:
                # Running (Redis away at the start, or a node replaced since): said once a
                # minute, as what it is. Raised into the loop, it had logged "rebuilding
                # capacity failed" with a traceback every second, and no rebuild was tried.
                self.capacity.ready, self._paused, self.capacity.paused_by = False, True, "redis evicts keys"
                self._say_why(error)
            else:
                raise  # at start-up: the app does not start

    def _say_why(self, error: Exception) -> None:
        """In the log, at most once a SAY_WHY_EVERY: a pause that said nothing had shown the
        engineer a "rebuilding" that never ended, and nothing was being rebuilt."""
        now = time.monotonic()
        if now - self._told_at < SAY_WHY_EVERY:
            return
        self._told_at = now
        # Refused (a command the Redis user may not run, as hosted Redis forbids INFO; a
        # cluster's node given as a plain Redis) is a fault of set-up, which no wait ends.
        level = logging.ERROR if isinstance(error, ResponseError | EvictionPolicy) else logging.WARNING
        log.log(level, "bookings paused: the capacity Redis answered %s: %s", type(error).__name__, error)

    async def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.on_resume is not None:
            try:
                await self.on_resume()
            except Exception:  # bookings go on; the next cancel there fills the line too
                log.exception("could not give the free seats to the waitlists after a recount")

    async def run(self) -> None:
        self.capacity.watched = True  # ``ready`` is kept fresh from here on
        while True:
            try:
                await self.check()
            except Exception:  # the record failed mid-rebuild: stay paused, and look again
                self.capacity.ready = False
                log.exception("rebuilding capacity failed; trying again")
            await asyncio.sleep(self.interval)


SAY_WHY_EVERY = 60.0
"""Seconds between two log lines saying why bookings stay paused."""


class RebuildRunning(Exception):
    """Another instance, or `python -m app rebuild`, holds the rebuild lock."""


class RebuildTakenOver(RebuildRunning):
    """This recount's lock lapsed half-way and another took it over: that one ends the pause."""


async def rebuild_paused(
    capacity: Capacity,
    sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    *,
    today: dt.date,
    wait: float,
) -> int:
    """Count Redis again from the record, by one instance (or `python -m app rebuild`) at a
    time: bookings pause on every instance (the rebuild marker goes), ``wait`` seconds pass
    for those in flight, then the count; bookings resume when it is done. The office-days
    written."""
    owner = uuid.uuid4().hex

    async def still_ours() -> None:
        # Its lock lapsed (this process stalled past its life) and another recount took it
        # over: the pause is that one's to end, and its count may still be writing days.
        if as_text(await capacity.redis.get(REBUILD_LOCK) or "") != owner:
            raise RebuildTakenOver()

    async with rebuild_lock(capacity.redis, owner) as held:
        if not held:
            raise RebuildRunning()
        await capacity.redis.delete(keys.REBUILT_AT)
        log.warning("bookings paused: counting Redis from the record in %.0f s", wait)
        await asyncio.sleep(wait)
        async with sessions() as session:
            await wait_for_commits(session)
            return await capacity.rebuild(session=session, today=today, still_ours=still_ours)


def rebuild_lock(redis: Any, owner: str) -> AbstractAsyncContextManager[bool]:
    """Take the rebuild lock (yields False if another holds it), renewing it while held."""
    return renewed_lock(redis, REBUILD_LOCK, owner, seconds=LOCK_SECONDS)
