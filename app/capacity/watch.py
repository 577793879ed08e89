"""Watching Redis: when it comes back empty (restarted, failed over, flushed), new bookings
wait with a 503 until every counter is rebuilt from the record, by one instance at a time.

The count waits first. Bookings already past the pause (on this instance, or on one that has
not looked yet) may have taken their seat and not yet committed; counted before its commit,
a booking would be missing from Redis and its seat sold again. So the rebuild starts
``settle`` seconds later (NOBAT_REBUILD_SETTLE_SECONDS): time for every instance to look
(each does every ``WATCH_INTERVAL``) and for those bookings to commit or give up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity import keys
from app.capacity.service import Capacity
from app.clock import Clock

log = logging.getLogger(__name__)

REBUILD_LOCK = f"{keys.NAMESPACE}:rebuild-lock"
LOCK_SECONDS = 600
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
    ) -> None:
        self.capacity = capacity
        self.sessions = sessions
        self.clock = clock
        self.settle = settle
        self.interval = interval
        self.owner = uuid.uuid4().hex

    async def check(self) -> None:
        """One look: mark capacity ready or not, and rebuild if Redis lost its data."""
        redis = self.capacity.redis
        try:
            if await self.capacity.is_built():
                self.capacity.ready = True
                return
            self.capacity.ready = False
            if not await redis.set(REBUILD_LOCK, self.owner, nx=True, ex=LOCK_SECONDS):
                return  # another instance is rebuilding
            try:
                log.warning("redis has no counters: rebuilding from the record in %.0f s", self.settle)
                await asyncio.sleep(self.settle)
                async with self.sessions() as session:
                    await self.capacity.rebuild(session=session, today=self.clock.today())
            finally:
                await release_lock(redis, self.owner)
            self.capacity.ready = True
        except RedisError:
            self.capacity.ready = False

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval)


async def rebuild_paused(capacity: Capacity, session: AsyncSession, *, today: dt.date, wait: float) -> int:
    """Recount Redis from the record while the service runs (``python -m app rebuild``):
    bookings pause on every instance (the rebuild marker goes, as when Redis loses its
    data, and this holds the instances' rebuild lock), wait ``wait`` seconds for those in
    flight, then the count; bookings resume when it is done. The office-days written."""
    owner = uuid.uuid4().hex
    if not await capacity.redis.set(REBUILD_LOCK, owner, nx=True, ex=LOCK_SECONDS):
        raise RuntimeError("another rebuild is running")
    try:
        await capacity.redis.delete(keys.REBUILT_AT)
        await asyncio.sleep(wait)
        return await capacity.rebuild(session=session, today=today)
    finally:
        await release_lock(capacity.redis, owner)


async def release_lock(redis: Any, owner: str) -> None:
    if await redis.get(REBUILD_LOCK) in (owner, owner.encode()):
        await redis.delete(REBUILD_LOCK)
