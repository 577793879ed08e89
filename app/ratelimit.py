"""Rate limits that hold across server processes and machines: one atomic Redis script per
hit where each hit costs us (sign-in codes), counts added up a few times a second for the
limit on every request, and allowances that count what was done rather than tried (the
bookings a mobile may make: taken, and given back when no booking came of it).

Litestar's own rate-limit middleware keeps its lock per process (litestar issue #4700), so a
limit there is multiplied by the number of workers; these are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.capacity.keys import NAMESPACE
from app.errors import RateLimited
from app.redis import AutoPipeline, ScriptCall
from app.settings import parse_limit

log = logging.getLogger(__name__)

HIT = """
-- KEYS[1] = the counter of one subject (a mobile, a client address) for one action
-- ARGV[1] = most hits allowed per window, ARGV[2] = window length in seconds
-- Returns 0 when the hit is allowed, else the seconds until the window ends.
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if hits > tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) ttl = tonumber(ARGV[2]) end
  return math.max(ttl, 1)  -- TTL rounds: under half a second left reads 0, which is "allowed"
end
return 0
"""


TAKE = """
-- KEYS[1] = what one subject has used of an allowance, ARGV as HIT's.
-- Like HIT, but a refused take is not counted, and a take given back (GIVE_BACK) is not:
-- the allowance counts what was done, not what was tried.
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) ttl = tonumber(ARGV[2]) end
  return math.max(ttl, 1)  -- TTL rounds: under half a second left reads 0, which is "allowed"
end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 0
"""

GIVE_BACK = """
-- KEYS[1] = as TAKE's. One take back, never below nothing (the window may have ended since).
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""


class RateLimiter:
    def __init__(self, redis: Redis, auto: AutoPipeline | None = None) -> None:
        # A booking takes from an allowance: its trip is shared with the other requests'.
        self.auto = auto or AutoPipeline(redis)
        self._hit = redis.register_script(HIT)
        self._take = redis.register_script(TAKE)
        self._give_back = redis.register_script(GIVE_BACK)

    async def hit(self, action: str, subject: str, limit: str) -> None:
        """Count one hit; raise RateLimited (with Retry-After) when over ``limit`` ("COUNT/SECONDS")."""
        count, seconds = _parsed(limit)
        retry_after = int(await self._hit(keys=[_key(action, subject)], args=[count, seconds]))
        if retry_after:
            raise RateLimited(retry_after)

    def take_call(self, action: str, subject: str, limit: str) -> ScriptCall:
        """The script call that takes one of ``subject``'s allowance for ``action``
        ("COUNT/SECONDS"), for a trip of the caller's (``AutoPipeline.run_scripts``). Its reply
        is 0 when taken, else the seconds until the window ends (nothing taken). Undone by
        ``give_back``."""
        count, seconds = _parsed(limit)
        return (self._take, [_key(action, subject)], [count, seconds])

    async def take(self, action: str, subject: str, limit: str) -> int:
        """Take one of ``subject``'s allowance for ``action`` on a trip of its own: 0 when
        taken, else the seconds until the window ends (nothing taken). Undone by ``give_back``."""
        return int(await self.auto.run_script(*self.take_call(action, subject, limit)))

    async def give_back(self, action: str, subject: str) -> None:
        await self.auto.run_script(self._give_back, [_key(action, subject)], [])


ADD_HITS = """
-- KEYS[1] = the counters of one action and window: a hash, subject -> hits
-- ARGV[1] = seconds the hash lives, ARGV[2..] = subject, hits pairs
-- Returns each subject's total (every instance's hits), in the order given.
local totals = {}
for i = 2, #ARGV, 2 do
  totals[#totals + 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return totals
"""

SWEEP_SECONDS = 10


# One subject's count in one window: (window, every instance's hits in it as Redis last said,
# this instance's hits not yet added there). A plain tuple, replaced at each hit: the tens of
# thousands of a rush's addresses are then not tracked by the garbage collector.
_Count = tuple[int, int, int]


class RequestLimiter:
    """The per-address limit on every request, without a Redis round trip per request.

    ``RateLimiter`` above costs each hit a script call: right for sign-in codes (each one is
    an SMS we pay for) but, on every API request and page, it was a tenth of a slots read.
    Here an instance counts hits in memory, in fixed windows of wall-clock time (the same on
    every instance), and adds its counts to Redis every ``flush_every`` seconds, one script
    call per action and window (ADD_HITS), whose reply tells it everyone's totals. So the limit holds across instances
    to within what the other instances admitted since the last flush (a tenth of a second by
    default): a guard against floods from one address, not a metered quota.
    """

    def __init__(self, redis: Redis, *, flush_every: float = 0.1) -> None:
        self.redis = redis
        self.flush_every = flush_every
        self._counts: dict[tuple[str, str], _Count] = {}
        self._seconds: dict[str, int] = {}  # each action's window length
        self._unsent: set[tuple[str, str]] = set()  # those with hits not yet added
        self._flushing: asyncio.Task[None] | None = None
        self._swept_at = 0.0
        self._add = redis.register_script(ADD_HITS)

    def hit(self, action: str, subject: str, limit: str) -> None:
        """Count one hit; raise RateLimited (with Retry-After) when over ``limit`` ("COUNT/SECONDS")."""
        count, seconds = _parsed(limit)
        now = time.time()
        window = int(now // seconds)
        key = (action, subject)
        counted, known, pending = self._counts.get(key, (window, 0, 0))
        if counted != window:
            known = pending = 0
        if known + pending >= count:
            raise RateLimited(max(1, math.ceil((window + 1) * seconds - now)))
        self._counts[key] = (window, known, pending + 1)
        self._seconds[action] = seconds
        self._unsent.add(key)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_soon())

    async def flush(self) -> None:
        """Add this instance's counts to Redis and learn everyone's."""
        now = time.time()
        if now - self._swept_at > SWEEP_SECONDS:
            # Windows gone by, with nothing left to add: forgotten, a few times a minute (not
            # at every flush: a rush has tens of thousands of addresses).
            self._swept_at = now
            self._counts = {
                key: (window, known, pending)
                for key, (window, known, pending) in self._counts.items()
                if pending or window == int(now // self._seconds[key[0]])
            }
        sending = [(key, self._counts[key]) for key in self._unsent]
        self._unsent = set()  # hits from now on come back in, for the next flush
        if not sending:
            return
        # One hash per action and window, a field per subject, added to by one script call
        # for all its subjects (one command per subject had been 6% of a booking).
        groups: dict[tuple[str, int], list[tuple[tuple[str, str], int, int]]] = {}
        for key, (window, _, pending) in sending:
            groups.setdefault((key[0], window), []).append((key, window, pending))
        try:
            for (action, window), group in groups.items():
                args: list[str | int] = [self._seconds[action] + 1]
                for (_, subject), _, pending in group:
                    args += [subject, pending]
                totals = await self._add(keys=[f"{NAMESPACE}:rl:{action}:{window}"], args=args)
                for (key, sent_window, sent), total in zip(group, totals, strict=True):
                    now_window, _, pending = self._counts.get(key, (-1, 0, 0))
                    if now_window == sent_window:
                        # Hits that came while this was on its way stay pending, for the next flush.
                        self._counts[key] = (now_window, int(total), pending - sent)
        except BaseException:
            # Counted here still; added at the next flush (a group already added is not
            # added twice: its pending hits were taken off above).
            self._unsent.update(key for key, entry in sending if self._counts.get(key, entry)[2])
            raise

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
        with contextlib.suppress(RedisError):
            await self.flush()

    async def _flush_soon(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush()
            except RedisError as error:
                # Counted locally meanwhile; added at the next flush. (Without Redis, no
                # booking or read gets far anyway.)
                log.warning("rate-limit counts not added to Redis: %s", type(error).__name__)
            if not self._unsent:
                return


def _key(action: str, subject: str) -> str:
    return f"{NAMESPACE}:rl:{action}:{subject}"


@functools.lru_cache(maxsize=32)
def _parsed(limit: str) -> tuple[int, int]:
    return parse_limit(limit)
