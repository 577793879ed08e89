"""Rate limits that hold across server processes and machines: one atomic Redis script each.

Litestar's own rate-limit middleware keeps its lock per process (litestar issue #4700), so a
limit there is multiplied by the number of workers; these are not.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.capacity.keys import NAMESPACE
from app.errors import RateLimited
from app.settings import parse_limit

HIT = """
-- KEYS[1] = the counter of one subject (a mobile, a client address) for one action
-- ARGV[1] = most hits allowed per window, ARGV[2] = window length in seconds
-- Returns 0 when the hit is allowed, else the seconds until the window ends.
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if hits > tonumber(ARGV[1]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) ttl = tonumber(ARGV[2]) end
  return ttl
end
return 0
"""


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._hit = redis.register_script(HIT)

    async def hit(self, action: str, subject: str, limit: str) -> None:
        """Count one hit; raise RateLimited (with Retry-After) when over ``limit`` ("COUNT/SECONDS")."""
        count, seconds = parse_limit(limit)
        retry_after = int(await self._hit(keys=[f"{NAMESPACE}:rl:{action}:{subject}"], args=[count, seconds]))
        if retry_after:
            raise RateLimited(retry_after)
