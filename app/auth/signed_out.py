"""Citizen tokens ended by signing out, refused by every instance within a second.

A citizen's token is a signed JWT checked in process (app.auth.service): the check is on every
booking, and a trip to Redis for it would be one more per booking. Signing out must still end
the token before it expires (NOBAT_TOKEN_TTL_SECONDS, a day): one copied off a shared computer
at an office, say, would otherwise go on booking and cancelling in the citizen's name until
then. (What is ended is the token signed out with, not the citizen's other sign-ins.)

So a sign-out adds a digest of the token to one Redis sorted set, scored by Redis's clock, and
every instance reads what was added since its last look once a second, in the background
(``run``); the check itself stays a lookup in memory. The instance that signs a token out
refuses it at once. A digest is kept as long as a token lives, and a margin for the
instances' clocks: after that the token has expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.capacity.keys import NAMESPACE
from app.capacity.scripts import as_text

log = logging.getLogger(__name__)

SIGNED_OUT = f"{NAMESPACE}:signed-out"
"""Sorted set: the digest of each token signed out -> when (ms, by Redis's clock)."""
LOOK_EVERY = 1.0
"""Seconds between an instance's looks: a token signed out on another is refused within this."""
CLOCKS_MARGIN_SECONDS = 300
"""Kept this much past a token's life: its expiry is judged by the clock of the instance that
checks it, the digest's age by Redis's."""

SIGN_OUT = """
-- KEYS[1] = SIGNED_OUT, ARGV[1] = the token's digest, ARGV[2] = how long (ms) a digest is kept
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
"""

SINCE = """
-- KEYS[1] = SIGNED_OUT, ARGV[1] = Redis's clock (ms) at the last look ("": none)
-- Returns {that clock now, {digest, ms, ...}}: those signed out since a second before the last
-- look (the clock may step back a little: NTP), or all of them at the first look or when the
-- clock went back further (a replica took over).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = '-inf'
if ARGV[1] ~= '' and tonumber(ARGV[1]) <= now then since = tonumber(ARGV[1]) - 1000 end
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES')}
"""


def digest(token: str) -> str:
    """What the set holds of a token: a digest of what its signature signs (header and claims).
    Not of the whole text: PyJWT reads the signature's base64 past padding added to it, so
    "token=" signs in as "token" does. Never the token itself, though it no longer signs in.
    """
    return hashlib.sha256(token.rpartition(".")[0].encode()).hexdigest()[:32]


class SignedOutTokens:
    def __init__(self, redis: Redis, *, keep_seconds: int) -> None:
        self.keep_ms = (keep_seconds + CLOCKS_MARGIN_SECONDS) * 1000
        self._sign_out = redis.register_script(SIGN_OUT)
        self._since = redis.register_script(SINCE)
        # digest -> when it was signed out (ms, Redis's clock), about the oldest first: the
        # order in which they were heard of.
        self._digests: dict[str, int] = {}
        self._looked_at: int | None = None  # Redis's clock at the last look

    def __contains__(self, token: str) -> bool:
        # A digest costs a microsecond or two, against a booking's few hundred.
        return bool(self._digests) and digest(token) in self._digests

    async def add(self, token: str) -> None:
        """Sign the token out: refused here at once (even if Redis does not answer, which is
        raised), by the other instances at their next look."""
        found = digest(token)
        self._digests[found] = self._looked_at or 0  # until Redis gives its time
        self._digests[found] = int(await self._sign_out(keys=[SIGNED_OUT], args=[found, self.keep_ms]))

    async def look(self) -> None:
        """Learn the tokens signed out on other instances since the last look."""
        now, found = await self._since(keys=[SIGNED_OUT], args=["" if self._looked_at is None else self._looked_at])
        for i in range(0, len(found), 2):
            self._digests.setdefault(as_text(found[i]), int(float(found[i + 1])))
        self._looked_at = int(now)
        self._forget_expired(int(now) - self.keep_ms)

    async def run(self, every: float = LOOK_EVERY) -> None:
        """Look every ``every`` seconds until cancelled (the app's lifespan, after its own first look)."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.look()
            except RedisError:
                # Until Redis answers, the tokens signed out on other instances meanwhile go on
                # working here: not for booking, which needs Redis, but for the complaints.
                log.warning("could not read the tokens signed out; trying again")
            except Exception:  # the loop must outlive any one look: else sign-outs go unheard
                log.exception("reading the tokens signed out failed; trying again")

    def _forget_expired(self, before: int) -> None:
        """Drop the digests of tokens that have expired since: the oldest, from the front."""
        while self._digests:
            oldest = next(iter(self._digests))
            if self._digests[oldest] >= before:
                return
            del self._digests[oldest]
