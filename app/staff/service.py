"""Sign-in for office staff, the regulator and the guild: passwords, lockout, server-side
sessions in Redis; who may touch which office; and the audit log of their changes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity import keys
from app.capacity.scripts import as_text
from app.db import lock_row
from app.errors import Forbidden, InvalidInput, ServiceUnavailable, Unauthorized
from app.locale import normalize_digits
from app.offices.models import Office
from app.offices.service import normalize_code
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.staff.devices import known_device, remember_device
from app.staff.errors import AccountLocked, NotYourOffice, WrongCredentials
from app.staff.models import AuditEntry, StaffAccount, StaffRole, utcnow

USERNAME = re.compile(r"[a-z0-9._-]{3,40}")
MIN_PASSWORD = 10
MAX_TOKEN = 100  # token_urlsafe(32) is 43 characters; anything far longer is not ours
ENABLED_SECONDS = 10.0
"""How long an instance trusts that an account is still enabled before asking the record again."""

UNKNOWN_NAME_SECONDS = 24 * 3600
"""How long an unknown username's wrong passwords are remembered short of a lock. An
account's count lasts until a sign-in resets it, which a clerk's does daily; these need an
end, or a spray of made-up names would pile up in Redis."""

TAKE_UNKNOWN_NAME_TRY = """
-- KEYS[1] = an unknown name's wrong passwords, KEYS[2] = its lock (the lock's end)
-- ARGV[1] = now, ARGV[2] = the tries before a lock, ARGV[3] = the end of a lock set now,
-- ARGV[4] = the lock's life (s), ARGV[5] = the count's life (s). Times are ISO 8601 in UTC
-- to the microsecond (_iso): as strings they sort as the times do.
-- Returns the lock's end while the name is locked (the guess is not checked). Else counts
-- the guess and returns nil: the one that reaches the limit locks, and a new count starts.
local lock = redis.call('GET', KEYS[2])
if lock and lock > ARGV[1] then return lock end
local tries = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if tries >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
  redis.call('DEL', KEYS[1])
end
return false
"""

# argon2id is memory-hard (64 MiB a hash by default): a handful at once per process keeps a
# burst of sign-ins from exhausting memory; the rest wait their turn.
HASH_SLOTS = 4
HASH_QUEUE = 8 * HASH_SLOTS
"""Sign-ins under way beyond those hashing, at most: a few seconds' worth of waiting for a
hash slot; past it the answer is 503 at once. Unbounded, a burst of made-up sign-ins from
many addresses grew the line without end, and every real clerk's sign-in waited behind it."""


class StaffPrincipal(msgspec.Struct, frozen=True):
    """Who is signed in, as the session in Redis remembers it."""

    account_id: int
    username: str
    role: StaffRole
    office_id: int | None
    office_code: str | None


class SignedIn(NamedTuple):
    token: str
    principal: StaffPrincipal
    device: str
    """The browser's proofs of sign-in, this account's first (app.staff.devices): its cookie."""


def _signed_out() -> Unauthorized:
    return Unauthorized(
        "Sign in to your staff account first (the session is missing or has expired).",
        detail_fa="ابتدا با حساب کاربری کارکنان وارد شوید (نشست وجود ندارد یا منقضی شده است).",
    )


def _key_of(sessions_ended_at: dt.datetime | None) -> str:
    """What a session keeps of the account's ``sessions_ended_at`` when it was opened: an
    operator's reset or disable since ends it (a rehash at sign-in, the same password, does not)."""
    at = "" if sessions_ended_at is None else _iso(_aware(sessions_ended_at).astimezone(dt.UTC))
    return hashlib.sha256(at.encode()).hexdigest()[:16]


def _session_key(token: str) -> str:
    # Only a digest names the session: a Redis dump or MONITOR does not hand out live tokens.
    # No key is needed: the token is 256 random bits, not something to brute-force.
    return keys.staff_session(hashlib.sha256(token.encode()).hexdigest())


def _browser_failures_key(account_id: int, browser: str) -> str:
    return f"{keys.NAMESPACE}:staff-browser-failures:{account_id}:{browser}"


def _unknown_name_key(secret: str, name: str, part: str) -> str:
    # Keyed, not a bare digest: people type their password into the username box, and a
    # Redis dump must not hold an unsalted hash of it for a day.
    # Braced, a name's two keys share a Redis Cluster slot: its lock and reset are one MULTI.
    digest = hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest()
    return f"{keys.NAMESPACE}:staff-unknown-{part}:{{{digest}}}"


def _iso(value: dt.datetime) -> str:
    # Always to the microsecond: TAKE_UNKNOWN_NAME_TRY compares these as strings.
    return value.isoformat(timespec="microseconds")


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite gives back the UTC we stored without its offset; PostgreSQL keeps it.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _normalize_username(value: str) -> str:
    return normalize_digits(value).strip().lower()


class StaffAuth:
    def __init__(
        self,
        *,
        redis: Redis,
        settings: Settings,
        limiter: RateLimiter,
        hasher: PasswordHasher | None = None,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.limiter = limiter
        self.sessions = sessions  # None: sessions are not checked against the accounts (commands)
        self._accounts: dict[int, tuple[float, tuple[str, int | None, str] | None]] = {}  # id: (until, standing)
        self.hasher = hasher or PasswordHasher()
        self._hash_slots = asyncio.Semaphore(HASH_SLOTS)
        self._signing_in = 0
        self._take_unknown_name = redis.register_script(TAKE_UNKNOWN_NAME_TRY)
        # Verified against when the username is unknown, so that answer takes as long as a
        # wrong password does; made with our own parameters so it costs the same.
        # Made on first use: a worker or a command that never signs anyone in skips the cost.
        self._dummy: str | None = None

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self._hash(secrets.token_urlsafe(16))
        return self._dummy

    @contextlib.asynccontextmanager
    async def _place_in_line(self) -> AsyncIterator[None]:
        """A sign-in's place, taken as it begins (before any try is counted: refused after
        its try, a clerk sending the right password through a flood of made-up sign-ins had
        locked their own account) and held to its end; 503 when ``HASH_SLOTS + HASH_QUEUE``
        are under way. Taken at the look, with no wait between: a few hundred arriving within
        one commit's time had each seen room and all joined."""
        if self._signing_in >= HASH_SLOTS + HASH_QUEUE:
            raise ServiceUnavailable("Too many sign-ins at once; try again in a few seconds.", retry_after=5)
        self._signing_in += 1
        try:
            yield
        finally:
            self._signing_in -= 1

    @contextlib.asynccontextmanager
    async def _hash_slot(self) -> AsyncIterator[None]:
        async with self._hash_slots:
            yield

    async def _hash(self, password: str) -> str:
        async with self._hash_slot():
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        # In a thread: one verify is ~0.1 s of CPU, which would stall every other request
        # on the event loop.
        async with self._hash_slot():
            try:
                return await asyncio.to_thread(self.hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    async def sign_in(
        self, *, session: AsyncSession, username: str, password: str, client: str, device: str = ""
    ) -> SignedIn:
        async with self._place_in_line():
            return await self._sign_in(session, username, password, client, device)

    async def _sign_in(self, session: AsyncSession, username: str, password: str, client: str, device: str) -> SignedIn:
        """Check the password and open a session. ``device``: the browser's proofs of earlier
        sign-ins (app.staff.devices), to be kept as ``SignedIn.device``: a browser that
        signed in to the account before is not barred by its lockout, only by its own.

        This commits ``session``: the failure count must persist even though the request
        fails (the request's transaction rolls back on any error, which would forget the
        wrong password and make lockout impossible). Call it on a session holding nothing else.
        """
        name = _normalize_username(username)
        now = utcnow()
        row = None
        if USERNAME.fullmatch(name):
            row = (
                await session.execute(
                    select(StaffAccount, Office.code)
                    .outerjoin(Office, Office.id == StaffAccount.office_id)
                    .where(StaffAccount.username == name)
                )
            ).first()
        # Nothing is held while the password is checked: a connection kept through the wait
        # for a hash slot and the hash itself, a burst of sign-ins took the whole pool, and
        # every clerk's page waited for one.
        if row is not None:
            account, office_code = row
            account_id, password_hash, disabled = account.id, account.password_hash, account.disabled
            ended = account.sessions_ended_at
        await session.rollback()
        if row is None:
            await self.limiter.hit("staff-login-address", client, self.settings.staff_login_per_address)
            # Counted and locked like an account (OWASP): were only real accounts to lock,
            # wrong passwords until one did (or did not) would tell which usernames exist.
            await self._take_unknown_name_try(name, now)
            await self._verify(await self._dummy_hash(), password)
            raise WrongCredentials()

        today = now.date().toordinal()
        browser = known_device(
            self.settings.secret_key, device, account_id=account_id, account_key=password_hash, today=today
        )
        if browser is None:
            # The address's limit binds browsers that never signed in to the account: a stranger
            # behind an office's shared address, using it up, kept every clerk there out of
            # their own browsers too (which the device proof exists to let in).
            await self.limiter.hit("staff-login-address", client, self.settings.staff_login_per_address)
        # Each guess takes its try before its password is checked, and the try that reaches
        # the limit locks: a burst of guesses, all sent before any was checked, gets no more
        # than the limit checked. A browser that signed in before is counted apart.
        own_lock = None
        if browser is not None:
            await self._take_browser_try(account_id, browser, now)
        else:
            own_lock = await self._take_try(session, account_id, now)
        # A disabled account answers, and counts, like a wrong password: it is not worth
        # confirming, nor is its password (one that never led to a lock would be the right one).
        if not await self._verify(password_hash, password) or disabled:
            if browser is not None:
                # Counted against the account too, which locks it to other browsers (a lock
                # already on it runs its course).
                with contextlib.suppress(AccountLocked):
                    await self._take_try(session, account_id, now)
            raise WrongCredentials()

        new_hash = await self._hash(password) if self.hasher.check_needs_rehash(password_hash) else None
        account = await self._reset_count(session, account_id, ended, own_lock, now)
        if new_hash is not None:
            account.password_hash = new_hash
        await session.commit()
        if browser is not None:
            await self.redis.delete(_browser_failures_key(account.id, browser))

        principal = StaffPrincipal(
            account_id=account.id,
            username=account.username,
            role=account.role,
            office_id=account.office_id,
            office_code=office_code,
        )
        token = await self._open_session(principal, _key_of(account.sessions_ended_at))
        proof = remember_device(
            self.settings.secret_key, device, account_id=account.id, account_key=account.password_hash, today=today
        )
        return SignedIn(token, principal, proof)

    async def _take_try(self, session: AsyncSession, account_id: int, now: dt.datetime) -> dt.datetime | None:
        """Count a guess at the account's password before it is checked: the try that
        reaches ``staff_max_failures`` locks the account. Returns the lock's end when this
        try set it (a right password lifts it again); AccountLocked when the account is locked.

        Read and counted under the row's lock, so parallel guesses take their tries one after
        another. Committed at once: the count must outlive a failed request (see sign_in),
        and the row must not stay locked while the password is checked."""
        account = await lock_row(session, StaffAccount, account_id)
        if account is None:  # removed since it was read
            await session.rollback()
            raise WrongCredentials()
        locked_until = None if account.locked_until is None else _aware(account.locked_until)
        if locked_until is not None and locked_until > now:
            await session.rollback()
            raise AccountLocked(locked_until, now=now)
        own_lock = None
        account.failed_attempts += 1
        if account.failed_attempts >= self.settings.staff_max_failures:
            own_lock = now + dt.timedelta(seconds=self.settings.staff_lockout_seconds)
            account.failed_attempts, account.locked_until = 0, own_lock
        await session.commit()
        return own_lock

    async def _reset_count(
        self,
        session: AsyncSession,
        account_id: int,
        ended: dt.datetime | None,
        own_lock: dt.datetime | None,
        now: dt.datetime,
    ) -> StaffAccount:
        """After a right password (right when the account's sessions were last ``ended``): the
        account as the record has it now, its count reset, and the lock this guess's own try
        set (``own_lock``) lifted (not committed). A lock other guesses set since runs its
        course for every other browser."""
        account = await lock_row(session, StaffAccount, account_id)
        # Reset or disabled while the password was being checked (a leaked one, replaced): the
        # old password is not let in under the new one's sessions and device proofs. (By the
        # mark a reset and a disable leave, not the hash, which another sign-in's upgrade of
        # its parameters changes too.)
        if account is None or account.sessions_ended_at != ended or account.disabled:
            await session.rollback()
            raise WrongCredentials()
        locked_until = None if account.locked_until is None else _aware(account.locked_until)
        if own_lock is not None or locked_until is None or locked_until <= now:
            account.failed_attempts = 0
            account.locked_until = None
        return account

    async def _take_browser_try(self, account_id: int, browser: str, now: dt.datetime) -> None:
        """``_take_try`` for a browser that signed in to the account before, in Redis:
        AccountLocked once it has had its ``staff_max_failures`` tries. A right password
        gives them all back (sign_in deletes the count)."""
        # The window starts at the first try, as the account's lock runs from its last.
        key = _browser_failures_key(account_id, browser)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=self.settings.staff_lockout_seconds, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, tries, ttl = await pipe.execute()
        if tries > self.settings.staff_max_failures and ttl > 0:
            raise AccountLocked(now + dt.timedelta(milliseconds=ttl), now=now)

    async def _take_unknown_name_try(self, name: str, now: dt.datetime) -> None:
        """``_take_try`` for a username no account has, in Redis (TAKE_UNKNOWN_NAME_TRY)."""
        # The lock's end is kept, not read back from its TTL: an account's lock gives the
        # same locked_until at every answer, to the microsecond, and so must this one.
        locked_until = now + dt.timedelta(seconds=self.settings.staff_lockout_seconds)
        lock = await self._take_unknown_name(
            keys=[_unknown_name_key(self.settings.secret_key, name, part) for part in ("failures", "lock")],
            args=[
                _iso(now),
                self.settings.staff_max_failures,
                _iso(locked_until),
                self.settings.staff_lockout_seconds,
                UNKNOWN_NAME_SECONDS,
            ],
        )
        if lock is not None:
            raise AccountLocked(dt.datetime.fromisoformat(as_text(lock)), now=now)

    async def _open_session(self, principal: StaffPrincipal, key_of: str) -> str:
        token = secrets.token_urlsafe(32)
        key = _session_key(token)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "account_id": principal.account_id,
                    "username": principal.username,
                    "role": principal.role.value,
                    "office_id": "" if principal.office_id is None else principal.office_id,
                    "office_code": principal.office_code or "",
                    "key": key_of,
                },
            )
            pipe.expire(key, self.settings.staff_session_ttl_seconds)
            await pipe.execute()
        return token

    async def principal(self, token: str) -> StaffPrincipal:
        """The signed-in account behind ``token``; Unauthorized when missing or expired."""
        if not token or len(token) > MAX_TOKEN:
            raise _signed_out()
        raw = await self.redis.hgetall(_session_key(token))
        if not raw:
            raise _signed_out()
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        account_id = int(fields["account_id"])
        office_id = int(fields["office_id"]) if fields["office_id"] else None
        # Disabled, given another role or office, or a new password since: the session ends,
        # rather than act for hours as what the account was (a clerk moved to another office,
        # a regulator made guild, a password that leaked and was reset).
        said = (fields["role"], office_id, fields.get("key"))  # no key: opened before sessions kept one

        def stands(standing: tuple[str, int | None, str] | None) -> bool:
            return standing is not None and standing[:2] == said[:2] and said[2] in (None, standing[2])

        # Asked of the record again before a session is ended for a copy up to ENABLED_SECONDS
        # old: one opened a moment ago, after a change this instance had not yet read, is right.
        if (
            self.sessions is not None
            and not stands(await self._standing(account_id))
            and not stands(await self._standing(account_id, fresh=True))
        ):
            await self.redis.delete(_session_key(token))
            raise _signed_out()
        return StaffPrincipal(
            account_id=account_id,
            username=fields["username"],
            role=StaffRole(fields["role"]),
            office_id=office_id,
            office_code=fields["office_code"] or None,
        )

    async def _standing(self, account_id: int, *, fresh: bool = False) -> tuple[str, int | None, str] | None:
        """The account's role and office as the record has them now; None when it is gone or
        disabled. A session opened before a change ends within ``ENABLED_SECONDS``, not when
        it expires hours later. Asked of the record once per account per ``ENABLED_SECONDS``
        on each instance."""
        assert self.sessions is not None, "asked only with a record"
        now = time.monotonic()
        known = self._accounts.get(account_id)
        if known is not None and known[0] > now and not fresh:
            return known[1]
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(
                        StaffAccount.disabled, StaffAccount.role, StaffAccount.office_id, StaffAccount.sessions_ended_at
                    ).where(StaffAccount.id == account_id)
                )
            ).first()
        standing = (
            None
            if row is None or row.disabled
            else (StaffRole(row.role).value, row.office_id, _key_of(row.sessions_ended_at))
        )
        self._accounts[account_id] = (now + ENABLED_SECONDS, standing)
        return standing

    async def sign_out(self, token: str) -> None:
        if token and len(token) <= MAX_TOKEN:
            await self.redis.delete(_session_key(token))

    async def create_account(
        self,
        *,
        session: AsyncSession,
        username: str,
        password: str,
        role: StaffRole | str,
        office_code: str | None,
    ) -> StaffAccount:
        """Add an account (flushed, not committed). InvalidInput names the field at fault."""
        name = _normalize_username(username)
        if not USERNAME.fullmatch(name):
            raise InvalidInput(
                "username",
                "A username is 3 to 40 characters: a-z, 0-9, dot, underscore or hyphen.",
                detail_fa="نام کاربری ۳ تا ۴۰ نویسه از حروف کوچک لاتین، رقم، نقطه، زیرخط یا خط تیره است.",
            )
        _check_password(password)
        try:
            role = StaffRole(role)
        except ValueError:
            raise InvalidInput(
                "role",
                "The role is office_staff, regulator or guild.",
                detail_fa="نقش باید office_staff، regulator یا guild باشد.",
            ) from None
        office_id: int | None = None
        if role is StaffRole.OFFICE_STAFF:
            if not office_code:
                raise InvalidInput(
                    "office_code",
                    "Office staff belong to one office; give its code.",
                    detail_fa="کارکنان دفتر باید به یک دفتر تعلق داشته باشند؛ کد دفتر را وارد کنید.",
                )
            office_id = await session.scalar(
                select(Office.id).where(Office.code == normalize_code(office_code, "office_code"))
            )
            if office_id is None:
                raise InvalidInput("office_code", "No office has this code.", detail_fa="دفتری با این کد وجود ندارد.")
        elif office_code:
            raise InvalidInput(
                "office_code",
                "Regulator and guild accounts belong to no office.",
                detail_fa="حساب‌های نهاد ناظر و اتحادیه به دفتری تعلق ندارند.",
            )
        if await session.scalar(select(StaffAccount.id).where(StaffAccount.username == name)) is not None:
            raise InvalidInput("username", "This username is taken.", detail_fa="این نام کاربری گرفته شده است.")
        account = StaffAccount(
            username=name,
            password_hash=await self._hash(password),
            role=role,
            office_id=office_id,
            failed_attempts=0,
            disabled=False,
        )
        session.add(account)
        await session.flush()
        return account

    async def manage(
        self, *, session: AsyncSession, username: str, action: str, password: str | None = None
    ) -> StaffAccount:
        """An operator's change to an account (flushed, not committed; the caller audits it):
        ``reset-password`` (its sessions end, on every instance within ``ENABLED_SECONDS``, as
        do its browsers' proofs), ``disable`` (its sessions end for good), ``enable``,
        ``unlock`` (its lock and count of wrong passwords gone: a clerk locked out on a new
        browser). Each unlocks too. (Sessions opened before sessions kept a mark keep working
        until they expire, or the account is disabled while they are used.)"""
        account = await session.scalar(
            select(StaffAccount).where(StaffAccount.username == _normalize_username(username))
        )
        if account is None:
            raise InvalidInput("username", "No account has this username.", detail_fa="حسابی با این نام کاربری نیست.")
        if action == "reset-password":
            _check_password(password or "")
            account.password_hash = await self._hash(password or "")
            account.sessions_ended_at = utcnow()
        elif action in ("disable", "enable"):
            account.disabled = action == "disable"
            if account.disabled:  # ended for good: an idle one is not revived by the enable
                account.sessions_ended_at = utcnow()
        elif action != "unlock":
            raise InvalidInput(
                "action",
                "The action is reset-password, disable, enable or unlock.",
                detail_fa="کار باید reset-password، disable، enable یا unlock باشد.",
            )
        account.failed_attempts, account.locked_until = 0, None
        await session.flush()
        return account


def require_role(principal: StaffPrincipal, *roles: StaffRole) -> None:
    if principal.role not in roles:
        raise Forbidden(
            f"This needs one of these roles: {', '.join(r.value for r in roles)}.",
            detail_fa="نقش شما اجازهٔ این کار را نمی‌دهد.",
        )


def require_office(principal: StaffPrincipal, office_code: str) -> None:
    """Office staff may touch only their own office; the regulator may touch any.

    Guild accounts belong to no office and are refused too: a handler that lets the guild
    see every office says so by not calling this for them.
    """
    if principal.role is StaffRole.REGULATOR:
        return
    own = principal.office_code
    if principal.role is StaffRole.OFFICE_STAFF and own is not None and normalize_digits(office_code).strip() == own:
        return
    raise NotYourOffice()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(
            "password", f"A password is at least {MIN_PASSWORD} characters.", detail_fa="گذرواژه دست‌کم ۱۰ نویسه است."
        )


def _json(value: object | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


async def audit(
    session: AsyncSession,
    *,
    actor: StaffPrincipal,
    action: str,
    target: str,
    office_id: int | None,
    before: object | None,
    after: object | None,
    at: dt.datetime,
) -> AuditEntry:
    """Record one change in the caller's transaction (not committed: the change and its
    entry stand or fall together)."""
    if at.tzinfo is None:
        raise ValueError("audit times must carry a time zone")
    entry = AuditEntry(
        at=at.astimezone(dt.UTC),
        actor=actor.username,
        actor_role=actor.role.value,
        office_id=office_id,
        action=action,
        target=target,
        before=_json(before),
        after=_json(after),
    )
    session.add(entry)
    return entry
