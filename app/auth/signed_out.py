"""Citizen tokens ended by signing out, refused by every instance within a second.

A citizen's token is a signed JWT checked in process (app.auth.service): the check is on every
booking, and a trip to Redis for it would be one more per booking. Signing out must still end
the token before it expires (NOBAT_TOKEN_TTL_SECONDS, a day): one copied off a shared computer
at an office, say, would otherwise go on booking and cancelling in the citizen's name until
then. Signing out ends the token signed out with; signing out everywhere ends every token of
the number issued until then (a lost phone, a computer one no longer sits at).

So a sign-out is told to every instance as a change to the counters is (app.capacity.reading,
with the same two scripts): a digest of the token goes into one Redis sorted set, scored by
Redis's clock, and every instance reads what was added since its last look once a second, in
the background (``run``); the check itself stays a lookup in memory. The instance that signs a token out
refuses it at once. A digest is kept as long as a token lives, and a margin for the
instances' clocks: after that the token has expired. Signing out everywhere is one more
member of the set (``EVERYWHERE``), kept as long: the number and the moment, by the clock
of the Redis node that holds the number's codes, which also told each token when its code
was taken (app.auth.service): one clock, not two machines'. A moment is all it keeps, so
nothing lost or left over can refuse a later sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.capacity.keys import NAMESPACE
from app.capacity.scripts import HEAR_CHANGES, TELL_CHANGES, as_text

log = logging.getLogger(__name__)

SIGNED_OUT = f"{NAMESPACE}:signed-out"
"""Sorted set: the digest of each token signed out -> when (ms, by Redis's clock)."""
SET_MADE = f"{{{SIGNED_OUT}}}:made"
"""A random id written once with the set, and never expiring: changed or gone, Redis lost the set
(restarted empty). In the set's own slot on a cluster (its hash tag is the set's name), so that
the node that loses the one loses the other. (A replica that took over short of the last few
sign-outs keeps it: those few go unheard by instances started after.)"""
EVERYTHING = 0
"""The last look's time that reads all the set holds: the first look, or after Redis's clock
went back (a replica took over) and the set's times may be below the last look's."""
LOOK_EVERY = 1.0
"""Seconds between an instance's looks: a token signed out on another is refused within this."""
CLOCKS_MARGIN_SECONDS = 300
"""Kept this much past a token's life: its expiry is judged by the clock of the instance that
checked it, a digest's age by Redis's (in the set) or by when it was heard of (here)."""


EVERYWHERE = "everywhere:"
"""A member "everywhere:<mobile>:<ms>" ends the number's tokens signed in until then (Redis's clock)."""


def digest(token: str) -> str:
    """What the set holds of a token: a digest of what its signature signs (header and claims).
    Not of the whole text: PyJWT reads the signature's base64 past padding added to it, so
    "token=" signs in as "token" does. Never the token itself, though it no longer signs in.
    """
    return hashlib.sha256(token.rpartition(".")[0].encode()).hexdigest()[:32]


class SignedOutTokens:
    def __init__(self, redis: Redis, *, keep_seconds: int) -> None:
        self.keep = keep_seconds + CLOCKS_MARGIN_SECONDS
        self._tell = redis.register_script(TELL_CHANGES)
        self._hear = redis.register_script(HEAR_CHANGES)
        # member of the set (a digest, or EVERYWHERE's) -> when this instance heard of it
        # (monotonic), the oldest first
        self._heard: dict[str, float] = {}
        self._until: dict[str, int] = {}  # mobile -> its tokens signed in until then (ms) are ended
        self._looked_at: int | None = None  # Redis's clock at the last look
        # Members refused here whose telling failed (Redis away): told again at each look.
        # Else a sign-out during a blip held on this instance only, and its retry, refused
        # here as signed out already, told nobody: the token went on working elsewhere.
        self._untold: set[str] = set()
        self._redis = redis
        self._made: str | None = None  # SET_MADE as the last look read it

    def __contains__(self, token: str) -> bool:
        # A digest costs a microsecond or two, against a booking's few hundred.
        return bool(self._heard) and digest(token) in self._heard

    def ended_everywhere(self, mobile: str, signed_in_at: int) -> bool:
        """Whether the number signed out everywhere since a token signed in at this moment (ms)."""
        return bool(self._until) and signed_in_at <= self._until.get(mobile, -1)

    async def add(self, token: str) -> None:
        """Sign the token out: refused here at once (even if Redis does not answer, which is
        raised), by the other instances at their next look."""
        await self._add(digest(token))

    async def add_everywhere(self, mobile: str, until: int) -> None:
        """End every token of the number signed in until this moment (ms, Redis's clock), as ``add``."""
        await self._add(f"{EVERYWHERE}{mobile}:{until}")

    async def tell_again(self, token: str) -> None:
        """Tell the others of a token signed out here whose telling failed (a retry of the
        sign-out): raises as ``add`` while Redis does not answer; nothing if it was told."""
        if (member := digest(token)) in self._untold:
            await self._tell_one(member)

    async def _add(self, member: str) -> None:
        self._heard_of(member, time.monotonic())
        self._untold.add(member)
        await self._tell_one(member)

    async def _tell_one(self, member: str) -> None:
        await self._tell(keys=[SIGNED_OUT], args=[self.keep * 1000, member])
        self._untold.discard(member)

    def _heard_of(self, member: str, heard: float) -> None:
        if member in self._heard:
            return
        self._heard[member] = heard
        if member.startswith(EVERYWHERE):
            try:
                mobile, until = _everywhere(member)
            except ValueError:  # not ours: one bad member must not stop every look after it
                log.error("a sign-out everywhere that is not one: %r", member)
                return
            self._until[mobile] = max(until, self._until.get(mobile, -1))

    async def look(self) -> None:
        """Tell what this instance could not, then learn the tokens signed out on other
        instances since the last look."""
        await self._notice_a_lost_set()
        for member in list(self._untold):
            await self._tell_one(member)
        since = EVERYTHING if self._looked_at is None else self._looked_at
        now, found = await self._hear(keys=[SIGNED_OUT], args=[since])
        if int(now) < since:  # Redis's clock went back: what was told meanwhile may score below
            now, found = await self._hear(keys=[SIGNED_OUT], args=[EVERYTHING])
        heard = time.monotonic()
        for member in found:
            self._heard_of(as_text(member), heard)
        self._looked_at = int(now)
        self._forget_expired(heard - self.keep)

    async def _notice_a_lost_set(self) -> None:
        """When Redis has lost the set, every instance tells again what it has heard of: an
        instance started since (a deploy, a restart) read an empty set, and took every token
        signed out until then for a good one, for the rest of its day."""
        made = await self._redis.get(SET_MADE)
        if made is None:
            await self._redis.set(SET_MADE, secrets.token_hex(8), nx=True)
            made = await self._redis.get(SET_MADE)
        made = as_text(made)
        if self._made is not None and made != self._made and self._heard:
            log.warning("the tokens signed out were lost by Redis: telling again the %d heard of", len(self._heard))
            self._untold.update(self._heard)
        self._made = made

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

    def _forget_expired(self, before: float) -> None:
        """Drop what ended tokens that have expired since: the oldest, from the front."""
        while self._heard:
            oldest = next(iter(self._heard))
            if self._heard[oldest] >= before:
                return
            del self._heard[oldest]
            self._untold.discard(oldest)  # its token has expired: nothing left to end
            if oldest.startswith(EVERYWHERE):
                with contextlib.suppress(ValueError):  # logged when heard
                    mobile, until = _everywhere(oldest)
                    if self._until.get(mobile) == until:  # not a later one's
                        del self._until[mobile]


def _everywhere(member: str) -> tuple[str, int]:
    """The mobile and the moment of an EVERYWHERE member."""
    mobile, _, until = member.removeprefix(EVERYWHERE).rpartition(":")
    return mobile, int(until)
