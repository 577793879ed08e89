"""Citizen sign-in with a one-time code sent by SMS, and the bearer tokens it yields."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from typing import Any

import jwt
from cachetools import LRUCache
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.errors import CodeExpired, CodesUsedUp, WebCodesBusy, WrongCode
from app.auth.signed_out import SignedOutTokens
from app.booking.tracking import SEPARATORS, new_tracking_code, normalize_tracking_code
from app.capacity.keys import NAMESPACE
from app.capacity.scripts import NOW_MS
from app.errors import InvalidInput, RateLimited, Unauthorized
from app.identity import normalize_mobile
from app.locale import normalize_digits, to_persian_digits
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.sms.service import SIGN_IN_CODE, TEXTED_SIGN_IN_CODE, Messenger

ISSUE = """
-- KEYS[1] = the mobile's codes: hash {digest, expires, earlier, earlier_expires, tries}
-- ARGV[1] = the new code's digest, ARGV[2] = its end (unix ms), ARGV[3] = its life (s),
-- ARGV[4] = now (unix ms), ARGV[5] = guesses at a code that burn the codes (VERIFY).
-- The code before it stays good until its own end, and the wrong tries counted so far count
-- on with it: asking again must not give a code its tries back. Unless it could not take
-- another guess at both codes within the bound (VERIFY counts such a try twice): then it is
-- burnt, and the new code is counted alone.
local live = redis.call('HMGET', KEYS[1], 'digest', 'expires', 'tries')
redis.call('DEL', KEYS[1])
local tries = tonumber(live[3]) or 0
if live[1] and live[2] and tonumber(live[2]) > tonumber(ARGV[4]) and tries + 2 <= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'earlier', live[1], 'earlier_expires', live[2])
else
  tries = 0
end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'expires', ARGV[2], 'tries', tries)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 'OK'
"""

VERIFY = (
    NOW_MS
    + """-- KEYS[1] = the mobile's codes (ISSUE)
-- ARGV[1] = digest of the code presented, ARGV[2] = guesses at a code that burn the codes,
-- ARGV[3] = now (unix ms), ARGV[4] = seconds a code taken answers again (TAKEN_SECONDS),
-- ARGV[5] = the form's secret it came with ("": none, never taken again)
-- Returns {OK, Redis's clock in ms} (and deletes the codes: signing in is once), WRONG, BURNT
-- or NONE. The code just taken, presented again with the same form's secret within ARGV[4]
-- (a second tap on a slow line, whose first answer, and its cookie, the browser dropped), is
-- OK again, as of the first take; no other code is live then.
-- A wrong try while two codes are live was a guess at each, and counts twice: else asking
-- for a second code doubled the chance of each guess, and the guessing bound with it. The
-- codes burn before a try would take the count past the bound.
local code = redis.call(
  'HMGET', KEYS[1], 'digest', 'expires', 'earlier', 'earlier_expires', 'taken', 'taken_at', 'taken_by')
local now = tonumber(ARGV[3])
local function live(digest, expires) return digest and (not expires or tonumber(expires) > now) end
local latest, earlier = live(code[1], code[2]), live(code[3], code[4])
if (latest and code[1] == ARGV[1]) or (earlier and code[3] == ARGV[1]) then
  local at = now_ms()
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'taken', ARGV[1], 'taken_at', at, 'taken_by', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'OK', at}
end
if ARGV[5] ~= '' and code[5] == ARGV[1] and code[7] == ARGV[5] then return {'OK', tonumber(code[6])} end
-- None live: gone, but a code just taken stays for its second tap (another's try ends nothing).
if not latest and not earlier then
  if not code[5] then redis.call('DEL', KEYS[1]) end
  return 'NONE'
end
local cost = (latest and earlier) and 2 or 1
local tries = redis.call('HINCRBY', KEYS[1], 'tries', cost)
if tries + cost > tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) return 'BURNT' end
return 'WRONG'
"""
)

TAKE_TEXTED = (
    NOW_MS
    + """-- KEYS[1] = the mobile's texted code (its digest), ARGV[1] = the digest of the code presented,
-- ARGV[2] = seconds a code taken answers again, ARGV[3] = the form's secret (as VERIFY's)
-- Returns VERIFY's OK (and takes it: signing in is once), WRONG or NONE. No try is counted:
-- the code cannot be guessed, and a count anyone can run up is a way to burn it.
local digest = redis.call('GET', KEYS[1])
if not digest then return 'NONE' end
local taken, at, by = string.match(digest, '^taken|([^|]*)|(%d+)|(.*)$')
if taken then
  if ARGV[3] ~= '' and taken == ARGV[1] and by == ARGV[3] then return {'OK', tonumber(at)} end
  return 'NONE'
end
if digest ~= ARGV[1] then return 'WRONG' end
local now = now_ms()
redis.call('SET', KEYS[1], 'taken|' .. ARGV[1] .. '|' .. now .. '|' .. ARGV[3], 'EX', ARGV[2])
return {'OK', now}
"""
)

FORGET_TAKEN = """-- KEYS[1], KEYS[2] = the mobile's web codes and texted code (one slot)
-- Forgets a code just taken (VERIFY's and TAKE_TEXTED's record of it); a live code stays.
redis.call('HDEL', KEYS[1], 'taken', 'taken_at', 'taken_by')
local texted = redis.call('GET', KEYS[2])
if texted and string.sub(texted, 1, 6) == 'taken|' then redis.call('DEL', KEYS[2]) end
return 1
"""

END_CODES = (
    NOW_MS
    + """-- KEYS[1], KEYS[2] = the mobile's web codes and texted code (one slot)
-- Deletes both; returns the moment, in ms by the clock VERIFY and TAKE_TEXTED read: a code
-- taken before is taken earlier by it, and one asked for after is not there.
redis.call('DEL', KEYS[1], KEYS[2])
return now_ms()
"""
)

TEXTED_CODE_SECONDS = 600
"""Life of a code asked for by text (``ورود``): read on the phone and typed into a computer,
perhaps at an office's counter. 50 random bits, like a tracking code: no guess finds it in
that time, so wrong ones are not counted against it (counted, anyone could burn it)."""

FIRST_ASK_WAIT_SECONDS = 2.0
"""How long a second ask waits for the first one's code to be sent (``_sent_by_the_first``)."""
RESEND_AFTER_SECONDS = 10
"""A web code asked for within this of the last one is the last one (a double tap); 0: off
(the tests that ask for codes one after another)."""

TAKEN_SECONDS = 30
"""How long a code just taken signs in again, as of its first take, sent with the same sign-in
form's secret (its CSRF token, bound to that browser's visit cookie): a second tap on «ورود»
over a slow line, whose first answer (and its cookie) the browser dropped, had found the code
used up, and the citizen signed out, asking for another SMS on a rush morning. Anyone else
(one who saw the code over a shoulder, behind the same NAT) finds it used up, as before; a
new code, a sign-out or a sign-out everywhere ends it."""

TOKEN_ALGORITHM = "HS256"
VERIFIED_TOKENS = 100_000
"""Tokens an instance remembers having verified: a rush's citizens, a few MB."""


def _otp_key(mobile: str) -> str:
    return f"{NAMESPACE}:otp:{mobile}"


def _sent_key(mobile: str) -> str:
    """Set for RESEND_AFTER_SECONDS once a web code is sent (``request_code``)."""
    return f"{NAMESPACE}:otp-sent:{{{_otp_key(mobile)}}}"


def _texted_key(mobile: str) -> str:
    # On the web codes' slot of a Redis Cluster (their key is its hash tag): both are taken,
    # and ended, on one node, by its clock (END_CODES).
    return f"{NAMESPACE}:otp-texted:{{{_otp_key(mobile)}}}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class CitizenAuth:
    def __init__(self, *, redis: Redis, settings: Settings, limiter: RateLimiter, messenger: Messenger) -> None:
        self.redis = redis
        self.settings = settings
        self.limiter = limiter
        self.messenger = messenger
        self._issue = redis.register_script(ISSUE)
        self._verify = redis.register_script(VERIFY)
        self._take_texted = redis.register_script(TAKE_TEXTED)
        self._end_codes = redis.register_script(END_CODES)
        self._forget_taken = redis.register_script(FORGET_TAKEN)
        # The number a refusal tells citizens to text: TWILIO_FROM may be a messaging service.
        sender = settings.twilio_from
        self.sms_number = settings.sms_number or (sender if sender.startswith("+") else "")
        self.signed_out = SignedOutTokens(redis, keep_seconds=settings.token_ttl_seconds)
        # token -> (mobile, expiry, signed in at). PyJWT checks a token's base64 one character at a time in
        # Python: a twentieth of a booking. A token verified once stays valid until it
        # expires (the key only changes with a restart), so the same string is not checked twice.
        self._verified: LRUCache[str, tuple[str, int, int]] = LRUCache(maxsize=VERIFIED_TOKENS)

    def _digest(self, mobile: str, code: str) -> str:
        # Only a keyed digest is stored: a Redis dump does not reveal live codes.
        return hmac.new(self.settings.secret_key.encode(), f"{mobile}:{code}".encode(), hashlib.sha256).hexdigest()

    async def request_code(self, *, session: AsyncSession, mobile: str, client: str) -> str:
        mobile = normalize_mobile(mobile)
        await self.limiter.hit("otp-address", client, self.settings.otp_per_address)
        # A code asked for again a moment after the last (a double tap on a slow line) is the
        # one on its way: a second SMS used up the number's codes (three in ten minutes), and
        # a third tap put the first code out of play, the first SMS to come then "wrong".
        sent = _sent_key(mobile)
        first = RESEND_AFTER_SECONDS <= 0 or await self.redis.set(sent, "sending", nx=True, ex=RESEND_AFTER_SECONDS)
        # Else a second ask: the first's code is the answer, unless the first failed (the
        # record away, its limit reached): then this one asks itself, answered as it fares.
        if not first and await self._sent_by_the_first(sent):
            return mobile
        try:
            await self._send_code(session, mobile)
        except BaseException:
            with contextlib.suppress(Exception):  # not sent: the next ask sends one
                await self.redis.delete(sent)
            raise
        with contextlib.suppress(Exception):
            await self.redis.set(sent, "sent", xx=True, keepttl=True)
        return mobile

    async def _sent_by_the_first(self, sent: str) -> bool:
        """Whether the ask a moment before sent its code: waited for while it is being sent
        (about a commit's time), for a second tap must not be told "sent" of a code whose
        commit then failed. Still sending after FIRST_ASK_WAIT_SECONDS: on its way."""
        # Polled: the first ask may be another instance's, so no event of this one can say.
        state = await self.redis.get(sent)
        for _ in range(int(FIRST_ASK_WAIT_SECONDS / 0.05)):
            if state not in ("sending", b"sending"):
                break
            await asyncio.sleep(0.05)
            state = await self.redis.get(sent)
        return state is not None

    async def _send_code(self, session: AsyncSession, mobile: str) -> None:
        # Every address's together, first: refused here, the number's own allowance is kept.
        # Taken, not hit: a refusal takes nothing of it, and the number's own refusal gives
        # it back. Hit, the requests for a number used up (sending nothing) spent the whole
        # country's budget in seconds, from a few hundred addresses, and nobody could sign in.
        wait = await self.limiter.take("otp-web", "all", self.settings.otp_web_total)
        if wait:
            raise WebCodesBusy(wait, sms_number=self.sms_number)
        try:
            await self.limiter.hit("otp-mobile", mobile, self.settings.otp_per_mobile)
            await self.limiter.hit("otp-mobile-day", mobile, self.settings.otp_per_mobile_day)
        except RateLimited as error:
            with contextlib.suppress(RedisError):  # kept taken: the safe side
                await self.limiter.give_back("otp-web", "all")
            # Perhaps used up by someone else: the phone's holder is told to text for one.
            raise CodesUsedUp(error.retry_after, sms_number=self.sms_number) from None
        code = f"{secrets.randbelow(10**6):06d}"
        # The code before it still signs in until its own end: on a rush morning a citizen
        # asks again while the first SMS is on its way, and types the one that came.
        ttl = self.settings.otp_ttl_seconds
        now = _now_ms()
        await self._issue(
            keys=[_otp_key(mobile)],
            args=[self._digest(mobile, code), now + ttl * 1000, ttl, now, self.settings.otp_max_attempts],
        )
        self._queue_code(session, mobile, f"{to_persian_digits(code)} ({code})", ttl, SIGN_IN_CODE)
        # The code goes out only once this row is committed; commit now rather than at the
        # end of the request so the worker can send it while the response is on its way.
        await session.commit()

    async def request_code_by_sms(self, *, session: AsyncSession, mobile: str) -> None:
        """A code asked for by a text from the number itself (``ورود``), queued in the
        caller's transaction. Anyone can use up a number's web codes by asking for them, and
        burn a live one with wrong guesses: this one only the phone's holder can ask for,
        under limits of their own, and it cannot be guessed, so no count of wrong tries
        burns it (TEXTED_CODE_SECONDS). Each ask replaces the last."""
        await self.limiter.hit("otp-sms", mobile, self.settings.otp_per_mobile)
        await self.limiter.hit("otp-sms-day", mobile, self.settings.otp_per_mobile_day)
        code = new_tracking_code()
        await self.redis.set(_texted_key(mobile), self._digest(mobile, code), ex=TEXTED_CODE_SECONDS)
        self._queue_code(session, mobile, f"{code[:5]}-{code[5:]}", TEXTED_CODE_SECONDS, TEXTED_SIGN_IN_CODE)

    def _queue_code(self, session: AsyncSession, mobile: str, code: str, ttl: int, kind: str) -> None:
        minutes = to_persian_digits(str(max(1, ttl // 60)))
        self.messenger.queue(
            session,
            kind=kind,
            to=mobile,
            body=f"نوبت: کد ورود شما {code} است. تا {minutes} دقیقه معتبر است.",
        )

    async def verify(self, *, mobile: str, code: str, client: str, again: str = "") -> str:
        """A token for the mobile whose code this is. ``again``: a secret of the form the code
        came in (the sign-in page's), with which the code just taken signs in again for
        TAKEN_SECONDS (a second tap); none (the API), a code signs in once."""
        mobile = normalize_mobile(mobile)
        # Only wrong guesses at a live code are kept counted: the sign-ins of a carrier's NAT
        # address do not use it up, and neither can one client's requests for numbers with no
        # code (which find nothing), as they had for everyone behind the address.
        wait = await self.limiter.take("verify-address", client, self.settings.verify_per_address)
        if wait:
            raise RateLimited(wait)
        outcome: Any = None
        try:
            outcome = await self._take_code(mobile, code, again)
        finally:
            if outcome not in ("WRONG", "BURNT"):
                with contextlib.suppress(RedisError):  # kept counted: the safe side
                    await self.limiter.give_back("verify-address", client)
        if isinstance(outcome, list):  # OK, and when by Redis's clock
            return self.issue_token(mobile, signed_in_at=int(outcome[1]))
        if outcome == "WRONG":
            raise WrongCode()
        if outcome == "BURNT":  # perhaps by someone else's guesses: a texted code cannot be
            raise CodeExpired(
                "Too many wrong tries burnt the code. Ask for a new one, or text LOGIN from this phone for one.",
                detail_fa="با چند بار ورود نادرست، کد باطل شد. کد تازه بگیرید، یا از همین گوشی پیامک «ورود» بفرستید.",
            )
        raise CodeExpired()

    async def _take_code(self, mobile: str, code: str, again: str) -> Any:
        """VERIFY's or TAKE_TEXTED's outcome for the code as typed: OK (a list: when, by
        Redis's clock), "WRONG", "BURNT" or "NONE"."""
        # Copied from the SMS, a code may carry spaces and a phone's invisible direction marks.
        code = SEPARATORS.sub("", normalize_digits(code))
        if len(code) == 6 and code.isascii() and code.isdigit():
            outcome = await self._verify(
                keys=[_otp_key(mobile)],
                args=[self._digest(mobile, code), self.settings.otp_max_attempts, _now_ms(), TAKEN_SECONDS, again],
            )
        else:
            try:
                code = normalize_tracking_code(code)  # written as a tracking code is, and as forgiving
            except InvalidInput:
                raise InvalidInput(
                    "code",
                    "The code is 6 digits (10 letters and digits if it was asked for by text).",
                    detail_fa="کد ۶ رقم است (کدی که با پیامک «ورود» گرفته‌اید ۱۰ حرف و رقم لاتین است).",
                ) from None
            outcome = await self._take_texted(
                keys=[_texted_key(mobile)], args=[self._digest(mobile, code), TAKEN_SECONDS, again]
            )
        return outcome.decode() if isinstance(outcome, bytes) else outcome

    def issue_token(self, mobile: str, *, signed_in_at: int | None = None) -> str:
        """A token for the mobile. ``signed_in_at`` (the "at" claim): when its code was taken,
        in ms by the clock of the Redis node holding the number's codes, which a sign-out
        everywhere reads too (``_end_every_token``). Not given (tests, load tests): this
        instance's clock now."""
        now = time.time()
        claims = {
            "sub": mobile,
            "iat": int(now),
            "exp": int(now) + self.settings.token_ttl_seconds,
            "role": "citizen",
            "at": int(now * 1000) if signed_in_at is None else signed_in_at,
        }
        return jwt.encode(claims, self.settings.secret_key, algorithm=TOKEN_ALGORITHM)

    async def sign_out(self, token: str) -> None:
        """End the token before it expires, on every instance (app.auth.signed_out). One that
        does not sign in (expired, forged, signed out already) is left alone: only a citizen's
        own sign-in adds to the set."""
        if token in self.signed_out:
            # Signed out here before: its retry (the first answered 503, Redis away) tells the
            # other instances now, or answers 503 again.
            await self.signed_out.tell_again(token)
            return
        try:
            mobile = self.mobile_from_token(token)
        except Unauthorized:
            return
        await self.signed_out.add(token)
        # And the code it was taken with, which its form could take again for a few seconds
        # (TAKEN_SECONDS): Back on a shared computer must not sign the citizen in again.
        await self._forget_taken(keys=[_otp_key(mobile), _texted_key(mobile)])

    async def sign_out_everywhere(self, token: str) -> None:
        """``_end_every_token`` of the token's number, on every instance. Only a token that
        signs in may: an old one, signed out, could otherwise sign its citizen out again and
        again."""
        await self._end_every_token(self.mobile_from_token(token))

    async def sign_out_everywhere_by_sms(self, mobile: str) -> None:
        """``_end_every_token`` asked for by a text from the number itself (``خروج``), under a
        limit as a code asked for by text is: each is answered by a text of ours."""
        await self.limiter.hit("sign-out-sms", mobile, self.settings.otp_per_mobile)
        await self._end_every_token(mobile)

    async def _end_every_token(self, mobile: str) -> None:
        """End every token of the number signed in until now, and its live codes: one already
        on a lost phone must not sign in after. Both by the clock of the node that holds the
        number's codes (END_CODES), which told each token when its code was taken: a sign-in
        racing this took its code before (and is ended) or finds none. Within the same
        millisecond it is ended too; the citizen signs in again."""
        until = await self._end_codes(keys=[_otp_key(mobile), _texted_key(mobile)])
        await self.signed_out.add_everywhere(mobile, int(until))

    def mobile_from_token(self, token: str) -> str:
        if token in self.signed_out:
            raise Unauthorized("The token was signed out; sign in again.")
        known = self._verified.get(token)
        if known is None or time.time() >= known[1]:
            known = self._verify_token(token)
        mobile, _, signed_in_at = known
        if self.signed_out.ended_everywhere(mobile, signed_in_at):
            raise Unauthorized("The number signed out everywhere; sign in again.")
        return mobile

    def _verify_token(self, token: str) -> tuple[str, int, int]:
        """The token's mobile, expiry and sign-in time (ms), checked (and remembered while it lasts)."""
        try:
            # "Issued at" is not checked against this instance's clock: one a moment behind the
            # instance that signed the citizen in (the redirect after the code lands on another)
            # refused the token as not yet valid, and the code, used up, could not be tried
            # again. (It is the sign-in's time for a sign-out everywhere, not a limit.)
            claims = jwt.decode(
                token, self.settings.secret_key, algorithms=[TOKEN_ALGORITHM], options={"verify_iat": False}
            )
        except jwt.PyJWTError:
            raise Unauthorized("The token is invalid or expired; sign in again.") from None
        if claims.get("role") != "citizen":
            raise Unauthorized()
        expires, issued = claims.get("exp"), claims.get("iat")
        if not isinstance(expires, int) or not isinstance(issued, int):
            raise Unauthorized("The token is invalid or expired; sign in again.")
        signed_in_at = claims.get("at", issued * 1000)  # none: a token from before "at"
        if not isinstance(signed_in_at, int):
            raise Unauthorized("The token is invalid or expired; sign in again.")
        found = (str(claims["sub"]), expires, signed_in_at)
        self._verified[token] = found
        return found
