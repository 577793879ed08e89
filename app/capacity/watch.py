"""Watching Redis: when it comes back empty (restarted, failed over, flushed), new bookings
wait with a 503 until every counter is rebuilt from the record, by one instance at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity import keys
from app.capacity.service import Capacity
from app.clock import Clock

log = logging.getLogger(__name__)

REBUILD_LOCK = f"{keys.NAMESPACE}:rebuild-lock"
LOCK_SECONDS = 600


class RedisWatch:
    def __init__(
        self,
        *,
        capacity: Capacity,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        clock: Clock,
        interval: float = 1.0,
    ) -> None:
        self.capacity = capacity
        self.sessions = sessions
        self.clock = clock
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
                log.warning("redis has no counters: rebuilding from the record")
                async with self.sessions() as session:
                    await self.capacity.rebuild(session=session, today=self.clock.today())
            finally:
                if await redis.get(REBUILD_LOCK) == self.owner.encode():
                    await redis.delete(REBUILD_LOCK)
            self.capacity.ready = True
        except RedisError:
            self.capacity.ready = False

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval)
