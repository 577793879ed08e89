"""Staff, regulator and guild accounts: passwords, lockout, Redis sessions, office scope, audit.

The ``staff`` fixture builds the service on the test's own loop over the app's record and
Redis; the HTTP tests need ``container.staff`` and ``StaffAuthController`` wired into the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
import threading
from collections.abc import Awaitable
from typing import Any

import msgspec
import pytest
from argon2 import PasswordHasher, Type
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from sqlalchemy import select, update

from app.capacity import keys
from app.container import Container
from app.errors import (
    DomainError,
    Forbidden,
    InvalidInput,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    problem_body,
)
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.staff import service as staff_service
from app.staff.demo import ensure_demo_accounts
from app.staff.devices import known_device
from app.staff.errors import AccountLocked, NotYourOffice, WrongCredentials
from app.staff.models import AuditEntry, StaffAccount, StaffRole, utcnow
from app.staff.routes import DEVICE_COOKIE
from app.staff.service import (
    SignedIn,
    StaffAuth,
    StaffPrincipal,
    _unknown_name_key,
    audit,
    require_office,
    require_role,
)
from tests.conftest import World

Client = AsyncTestClient[Litestar]
PASSWORD = "correct horse battery"
CLIENT = "192.0.2.1"


def service(
    container: Container, *, settings: Settings | None = None, hasher: PasswordHasher | None = None
) -> StaffAuth:
    return StaffAuth(
        redis=container.redis,
        settings=settings or container.settings,
        limiter=RateLimiter(container.redis),
        hasher=hasher,
        sessions=container.sessions,
    )


@pytest.fixture
def staff(container: Container) -> StaffAuth:
    return service(container)


async def make_account(
    container: Container,
    staff: StaffAuth,
    username: str,
    *,
    role: StaffRole = StaffRole.OFFICE_STAFF,
    office_code: str | None = None,
    password: str = PASSWORD,
) -> None:
    async with container.sessions() as session:
        await staff.create_account(
            session=session, username=username, password=password, role=role, office_code=office_code
        )
        await session.commit()


async def sign_in(container: Container, staff: StaffAuth, username: str, password: str, device: str = "") -> SignedIn:
    async with container.sessions() as session:
        return await staff.sign_in(session=session, username=username, password=password, client=CLIENT, device=device)


async def account(container: Container, username: str) -> StaffAccount:
    async with container.sessions() as session:
        found = await session.scalar(select(StaffAccount).where(StaffAccount.username == username))
        assert found is not None
        return found


async def unlock(container: Container, username: str) -> None:
    """Move the lock into the past, as if the lockout had run out."""
    async with container.sessions() as session:
        await session.execute(
            update(StaffAccount)
            .where(StaffAccount.username == username)
            .values(locked_until=utcnow() - dt.timedelta(seconds=1))
        )
        await session.commit()


async def unlock_unknown(container: Container, username: str) -> None:
    """Move an unknown username's lock into the past, as ``unlock`` does an account's."""
    key = _unknown_name_key(container.settings.secret_key, username, "lock")
    assert await container.redis.exists(key)
    await container.redis.set(key, (utcnow() - dt.timedelta(seconds=1)).isoformat(), keepttl=True)


def session_key(token: str) -> str:
    return keys.staff_session(hashlib.sha256(token.encode()).hexdigest())


# --- the service ---------------------------------------------------------------------------


async def test_sign_in_opens_a_session_kept_by_digest(
    container: Container, staff: StaffAuth, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office()
    await make_account(container, staff, "Clerk.One", office_code=office)
    token, principal, _ = await sign_in(container, staff, "  CLERK.one ", PASSWORD)
    assert principal.username == "clerk.one" and principal.role is StaffRole.OFFICE_STAFF
    assert principal.office_code == office and principal.office_id is not None
    assert await staff.principal(token) == principal
    # Redis knows the session only by the token's digest, and expires it.
    assert redis_sync.exists(session_key(token))
    assert 0 < redis_sync.ttl(session_key(token)) <= container.settings.staff_session_ttl_seconds
    for key in redis_sync.scan_iter(match=f"{keys.NAMESPACE}:staff:*"):
        assert token.encode() not in key
        assert all(token.encode() not in value for value in redis_sync.hvals(key))


async def test_a_lockout_spares_a_browser_the_clerk_signed_in_from_before(
    container: Container, staff: StaffAuth, world: World
) -> None:
    """Anyone who knows a clerk's username can lock the account. The clerk's own browser,
    which signed in before, is not barred by it; its own wrong passwords lock it alone."""
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    await make_account(container, staff, "other", office_code=office)
    shared = (await sign_in(container, staff, "other", PASSWORD)).device  # the office's computer
    own = (await sign_in(container, staff, "clerk", PASSWORD, device=shared)).device
    limit = container.settings.staff_max_failures
    for _ in range(limit):  # someone else, elsewhere
        with pytest.raises(WrongCredentials):
            await sign_in(container, staff, "clerk", "wrong password")
    with pytest.raises(AccountLocked):
        await sign_in(container, staff, "clerk", PASSWORD)
    with pytest.raises(AccountLocked):  # the other account's proof is not this one's
        await sign_in(container, staff, "clerk", PASSWORD, device=shared)
    account_id, nonce, given, _ = own.split(".")[0].split("-")
    forged = f"{account_id}-{nonce}-{given}-{'0' * 32}"
    with pytest.raises(AccountLocked):
        await sign_in(container, staff, "clerk", PASSWORD, device=forged)

    signed = await sign_in(container, staff, "clerk", PASSWORD, device=own)  # at the counter
    assert signed.principal.username == "clerk" and signed.device == own
    with pytest.raises(AccountLocked):  # the lock runs its course for everyone else
        await sign_in(container, staff, "clerk", PASSWORD)
    for _ in range(limit):  # the clerk's own typos, on their own browser
        with pytest.raises(WrongCredentials):
            await sign_in(container, staff, "clerk", "wrong password", device=own)
    with pytest.raises(AccountLocked) as refused:
        await sign_in(container, staff, "clerk", PASSWORD, device=own)
    assert 0 < int(refused.value.headers["Retry-After"]) <= container.settings.staff_lockout_seconds
    assert (await sign_in(container, staff, "other", PASSWORD, device=own)).principal.username == "other"


async def test_wrong_passwords_lock_the_account(container: Container, staff: StaffAuth, world: World) -> None:
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    limit = container.settings.staff_max_failures
    for tries in range(1, limit):
        with pytest.raises(WrongCredentials):
            await sign_in(container, staff, "clerk", "wrong password")
        # Counted in the record although the sign-in failed.
        assert (await account(container, "clerk")).failed_attempts == tries
    with pytest.raises(WrongCredentials):
        await sign_in(container, staff, "clerk", "wrong password")
    locked = await account(container, "clerk")
    assert locked.failed_attempts == 0 and locked.locked_until is not None

    with pytest.raises(AccountLocked) as refused:
        await sign_in(container, staff, "clerk", PASSWORD)
    retry_after = int(refused.value.headers["Retry-After"])
    assert 0 < retry_after <= container.settings.staff_lockout_seconds
    assert problem_body(refused.value)["locked_until"] == refused.value.locked_until.isoformat()

    await unlock(container, "clerk")
    await sign_in(container, staff, "clerk", PASSWORD)
    assert (await account(container, "clerk")).locked_until is None


async def test_success_resets_the_failure_count(container: Container, staff: StaffAuth) -> None:
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    for _ in range(2):
        with pytest.raises(WrongCredentials):
            await sign_in(container, staff, "regulator", "wrong password")
    assert (await account(container, "regulator")).failed_attempts == 2
    _, principal, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert principal.office_code is None and principal.office_id is None
    assert (await account(container, "regulator")).failed_attempts == 0


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        # Production's parameters: a check slow enough that the burst tests' right password
        # comes while the wrong ones are still being checked.
        super().__init__()
        self.verified = 0
        self._counted = threading.Condition()  # verifies run in threads, several at once

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._counted:
            self.verified += 1
            self._counted.notify_all()
        return super().verify(hash, password)

    def wait_verified(self, count: int, timeout: float = 30) -> bool:
        """Whether ``count`` verifies have begun within ``timeout`` seconds."""
        with self._counted:
            return self._counted.wait_for(lambda: self.verified >= count, timeout)


async def test_unknown_username_costs_a_verify_and_reads_like_a_wrong_password(container: Container) -> None:
    hasher = CountingHasher()
    staff = service(container, hasher=hasher)
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    with pytest.raises(WrongCredentials) as unknown:
        await sign_in(container, staff, "nobody-here", PASSWORD)
    assert hasher.verified == 1
    with pytest.raises(WrongCredentials) as wrong:
        await sign_in(container, staff, "guild", "wrong password")
    assert hasher.verified == 2
    assert problem_body(unknown.value) == problem_body(wrong.value)
    # A name that could never be valid still costs the same.
    with pytest.raises(WrongCredentials):
        await sign_in(container, staff, "x" * 500, PASSWORD)
    assert hasher.verified == 3


async def test_an_unknown_username_costs_what_an_account_does_until_both_lock(container: Container) -> None:
    hasher = CountingHasher()
    staff = service(container, hasher=hasher)
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    limit = container.settings.staff_max_failures
    for username in ("guild", "nobody-here"):
        hasher.verified = 0
        for _ in range(limit):
            with pytest.raises(WrongCredentials):
                await sign_in(container, staff, username, "wrong password")
        with pytest.raises(AccountLocked):
            await sign_in(container, staff, username, "wrong password")
        assert hasher.verified == limit  # a lock answers before any verify, for both


class WatchingHasher(PasswordHasher):
    """Notes whether the sign-in's session held a transaction (a pooled connection) while the
    password was checked; and, while ``gate`` is clear, holds every check."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.session: Any = None
        self.held: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.held.append(self.session.in_transaction())
        assert self.gate.wait(30)
        return super().verify(hash, password)


async def test_no_connection_is_held_while_a_password_is_checked(container: Container, world: World) -> None:
    """A sign-in waits for a hash slot, then hashes for a fifth of a second: with its read's
    transaction still open, a burst of made-up sign-ins took every connection of the pool,
    and every clerk's page waited."""
    hasher = WatchingHasher()
    staff = service(container, hasher=hasher)
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    async with container.sessions() as session:
        hasher.session = session
        device = (await staff.sign_in(session=session, username="clerk", password=PASSWORD, client=CLIENT)).device
        for username, password, known in (
            ("nobody-here", PASSWORD, ""),
            ("clerk", "wrong password", ""),
            ("clerk", "wrong password", device),
            ("clerk", PASSWORD, device),
        ):
            with contextlib.suppress(WrongCredentials):
                await staff.sign_in(session=session, username=username, password=password, client=CLIENT, device=known)
    assert hasher.held == [False] * 5


async def sign_in_refused(container: Container, staff: StaffAuth, hasher: WatchingHasher, name: str) -> Exception:
    """A sign-in as ``name`` with PASSWORD: how it was refused (signed in, it fails the test)."""
    async with container.sessions() as session:
        hasher.session = session
        try:
            await staff.sign_in(session=session, username=name, password=PASSWORD, client=CLIENT)
        except DomainError as error:
            return error
    raise AssertionError("signed in")


async def test_sign_ins_past_the_hash_line_are_answered_at_once(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sign-ins wait for one of a few hash slots; a line grown past ``HASH_QUEUE`` is answered
    503 at once rather than joined (it had no end: a burst of made-up sign-ins from many
    addresses, and each clerk's waited behind all of it)."""
    monkeypatch.setattr(staff_service, "HASH_QUEUE", 2)
    hasher = WatchingHasher()
    staff = service(container, hasher=hasher)
    await staff._dummy_hash()
    await make_account(container, staff, "clerk", role=StaffRole.GUILD)
    hasher.gate.clear()

    def attempt(name: str) -> Awaitable[Exception]:
        return sign_in_refused(container, staff, hasher, name)

    waiting = [asyncio.create_task(attempt(f"nobody-{n}")) for n in range(staff_service.HASH_SLOTS + 2)]
    for _ in range(500):
        if len(hasher.held) == staff_service.HASH_SLOTS:
            break
        await asyncio.sleep(0.01)
    assert len(hasher.held) == staff_service.HASH_SLOTS and staff._signing_in == staff_service.HASH_SLOTS + 2
    refused = await attempt("one-too-many")
    assert isinstance(refused, ServiceUnavailable) and refused.headers["Retry-After"] == "5"
    # A clerk's sign-in refused so counts no try: five of them had locked the account.
    assert isinstance(await attempt("clerk"), ServiceUnavailable)
    assert (await account(container, "clerk")).failed_attempts == 0
    hasher.gate.set()
    assert all(isinstance(error, WrongCredentials) for error in await asyncio.gather(*waiting))
    assert staff._signing_in == 0
    assert isinstance(await attempt("after-the-burst"), WrongCredentials)


async def test_a_burst_arriving_at_once_takes_the_lines_places_as_it_looks(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few hundred made-up sign-ins arriving within one commit's time each looked at the
    line before any had reached it, and all joined: the bound was no bound."""
    monkeypatch.setattr(staff_service, "HASH_QUEUE", 2)
    hasher = WatchingHasher()
    staff = service(container, hasher=hasher)
    await staff._dummy_hash()
    hasher.gate.clear()

    def attempt(name: str) -> Awaitable[Exception]:
        return sign_in_refused(container, staff, hasher, name)

    burst = [asyncio.create_task(attempt(f"nobody-{n}")) for n in range(10)]
    for _ in range(500):  # four hashing (held at the gate), two waiting, four refused
        if len(hasher.held) == staff_service.HASH_SLOTS and sum(task.done() for task in burst) == 4:
            break
        await asyncio.sleep(0.01)
    assert staff._signing_in == staff_service.HASH_SLOTS + 2
    hasher.gate.set()
    answers = await asyncio.gather(*burst)
    assert sum(isinstance(answer, ServiceUnavailable) for answer in answers) == 4
    assert sum(isinstance(answer, WrongCredentials) for answer in answers) == 6


async def test_a_password_reset_while_the_old_one_is_checked_lets_it_in_no_more(container: Container) -> None:
    """The operator resets a leaked password as a sign-in with it waits for its hash: the
    old password, right for the hash read before, opened a session (and a device proof)
    under the new one."""
    hasher = WatchingHasher()
    staff = service(container, hasher=hasher)
    await make_account(container, staff, "clerk", role=StaffRole.GUILD)
    hasher.gate.clear()

    async def leaked() -> Exception | SignedIn:
        async with container.sessions() as session:
            hasher.session = session
            try:
                return await staff.sign_in(session=session, username="clerk", password=PASSWORD, client=CLIENT)
            except DomainError as error:
                return error

    signing_in = asyncio.create_task(leaked())
    for _ in range(500):
        if hasher.held:
            break
        await asyncio.sleep(0.01)
    async with container.sessions() as session:
        await staff.manage(session=session, username="clerk", action="reset-password", password="a new password")
        await session.commit()
    hasher.gate.set()
    assert isinstance(await signing_in, WrongCredentials)
    assert (await sign_in(container, staff, "clerk", "a new password")).principal.username == "clerk"


@pytest.mark.parametrize("who", ["account", "unknown name", "remembered browser"])
async def test_a_burst_of_guesses_gets_no_more_checked_than_the_limit(
    container: Container, world: World, who: str
) -> None:
    """Guesses sent all at once must not each find the account still unlocked: no more than
    the limit are checked in a lock window however many arrive together, and a right
    password sent once the burst has used the tries up, while they are still being checked,
    is refused too. Alike for an account, an unknown name and the clerk's own browser."""
    hasher = CountingHasher()
    staff = service(container, hasher=hasher)
    await make_account(container, staff, "clerk", office_code=await world.office())
    device = (await sign_in(container, staff, "clerk", PASSWORD)).device if who == "remembered browser" else ""
    username = "nobody-here" if who == "unknown name" else "clerk"
    limit = container.settings.staff_max_failures
    hasher.verified = 0

    async def guess(password: str) -> tuple[int, str]:
        try:
            await sign_in(container, staff, username, password, device)
        except DomainError as refused:
            return refused.status, refused.code
        return 200, "signed in"

    async def right_once_the_tries_are_taken() -> tuple[int, str]:
        assert await asyncio.to_thread(hasher.wait_verified, limit)
        return await guess(PASSWORD)

    burst = [guess("wrong password") for _ in range(20)]
    answers = await asyncio.gather(*burst, right_once_the_tries_are_taken())
    assert sorted(answers) == [(401, "wrong_credentials")] * limit + [(403, "account_locked")] * (21 - limit)
    assert hasher.verified == limit

    # The lock runs its course (its end moved into the past, or its count gone, as then).
    if who == "account":
        await unlock(container, "clerk")
    elif who == "unknown name":
        await unlock_unknown(container, username)
    else:
        await container.redis.delete(*await container.redis.keys(f"{keys.NAMESPACE}:staff-browser-failures:*"))
    if who == "unknown name":  # counted afresh, as an account is
        assert await guess("wrong password") == (401, "wrong_credentials")
    else:
        assert await guess(PASSWORD) == (200, "signed in")


async def test_disabled_account_is_refused_like_a_wrong_password(container: Container, staff: StaffAuth) -> None:
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    async with container.sessions() as session:
        await session.execute(update(StaffAccount).values(disabled=True))
        await session.commit()
    with pytest.raises(WrongCredentials):
        await sign_in(container, staff, "guild", PASSWORD)
    # Counted like a wrong password too: a right one that never led to a lock would show.
    for _ in range(container.settings.staff_max_failures - 1):
        with pytest.raises(WrongCredentials):
            await sign_in(container, staff, "guild", PASSWORD)
    with pytest.raises(AccountLocked):
        await sign_in(container, staff, "guild", PASSWORD)


async def test_old_hashes_are_upgraded_on_sign_in(container: Container) -> None:
    weak = service(container, hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    await make_account(container, weak, "guild", role=StaffRole.GUILD)
    old = (await account(container, "guild")).password_hash
    assert "m=8192,t=1,p=1" in old
    current = service(container, hasher=PasswordHasher())  # production's parameters
    await sign_in(container, current, "guild", PASSWORD)
    new = (await account(container, "guild")).password_hash
    assert new != old and not current.hasher.check_needs_rehash(new)
    await sign_in(container, current, "guild", PASSWORD)


def test_staff_passwords_are_hashed_at_productions_cost_unless_told(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other test hashes at argon2's cheapest (tests/conftest.py): the service's own
    default, which production uses, is argon2's recommended profile, not that."""
    monkeypatch.undo()  # the suite's cheap hashes
    default = service(container).hasher
    recommended = PasswordHasher()
    assert (default.time_cost, default.memory_cost, default.parallelism) == (
        recommended.time_cost,
        recommended.memory_cost,
        recommended.parallelism,
    )
    assert default.memory_cost >= 64 * 1024 and default.type is Type.ID


async def test_sign_in_is_rate_limited_per_address(container: Container) -> None:
    staff = service(container, settings=container.settings.with_(staff_login_per_address="2/60"))
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    own_browser = (await sign_in(container, staff, "guild", PASSWORD)).device
    with pytest.raises(WrongCredentials):
        await sign_in(container, staff, "guild", "wrong password")
    with pytest.raises(RateLimited):
        await sign_in(container, staff, "guild", PASSWORD)
    async with container.sessions() as session:
        await staff.sign_in(session=session, username="guild", password=PASSWORD, client="192.0.2.2")
    # A browser that signed in to the account before is not bound by the address's limit: a
    # stranger behind an office's shared address, using it up, had kept the clerks out too.
    assert (await sign_in(container, staff, "guild", PASSWORD, device=own_browser)).principal.username == "guild"


async def test_sign_out_and_expiry_end_the_session(
    container: Container, staff: StaffAuth, redis_sync: SyncRedis
) -> None:
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    token, _, _ = await sign_in(container, staff, "regulator", PASSWORD)
    other, _, _ = await sign_in(container, staff, "regulator", PASSWORD)
    await staff.sign_out(token)
    with pytest.raises(Unauthorized):
        await staff.principal(token)
    await staff.principal(other)  # one sign-out ends one session
    redis_sync.pexpire(session_key(other), 1)
    await asyncio.sleep(0.01)
    with pytest.raises(Unauthorized):
        await staff.principal(other)
    for nothing in ("", "x" * 1000, "not-a-token"):
        with pytest.raises(Unauthorized):
            await staff.principal(nothing)


async def test_disabling_an_account_ends_its_sessions(
    container: Container, staff: StaffAuth, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staff_service, "ENABLED_SECONDS", 0.0)  # ask the record at every request
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    token, principal, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert await staff.principal(token) == principal
    async with container.sessions() as session:
        (await session.get(StaffAccount, principal.account_id)).disabled = True  # type: ignore[union-attr]
        await session.commit()
    with pytest.raises(Unauthorized):
        await staff.principal(token)
    assert not redis_sync.exists(session_key(token))  # ended, not just refused


async def test_a_new_role_or_office_ends_the_sessions_opened_before(
    container: Container, staff: StaffAuth, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regulator made guild, a clerk moved to another office: the session opened before
    acted for hours as what the account had been. It ends; the account signs in again as
    what it is now."""
    monkeypatch.setattr(staff_service, "ENABLED_SECONDS", 0.0)  # ask the record at every request
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    token, principal, _ = await sign_in(container, staff, "regulator", PASSWORD)
    untouched, _, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert await staff.principal(token) == principal
    async with container.sessions() as session:
        account = await session.get(StaffAccount, principal.account_id)
        assert account is not None
        account.role = StaffRole.GUILD
        await session.commit()
    for ended in (token, untouched):
        with pytest.raises(Unauthorized):
            await staff.principal(ended)
        assert not redis_sync.exists(session_key(ended))
    again, now, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert now.role == StaffRole.GUILD and await staff.principal(again) == now


async def test_a_password_reset_by_the_operator_ends_the_sessions_opened_before(
    container: Container, staff: StaffAuth, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clerk's password leaked and was reset: the session opened with it (someone else's
    copy) went on for hours, marking no-shows and cutting seats. It ends; the new password
    signs in, the old one no more. A session opened before sessions kept the password's mark
    is not ended for lacking it."""
    monkeypatch.setattr(staff_service, "ENABLED_SECONDS", 0.0)  # ask the record at every request
    await make_account(container, staff, "clerk-leak", role=StaffRole.REGULATOR)
    token, principal, _ = await sign_in(container, staff, "clerk-leak", PASSWORD)
    older, _, _ = await sign_in(container, staff, "clerk-leak", PASSWORD)
    redis_sync.hdel(session_key(older), "key")  # as a session opened by the version before
    async with container.sessions() as session:
        await staff.manage(session=session, username="clerk-leak", action="unlock")
        # The same password hashed again (argon2's parameters changed: a sign-in rehashes it).
        found = await session.scalar(select(StaffAccount).where(StaffAccount.username == "clerk-leak"))
        assert found is not None
        found.password_hash = PasswordHasher().hash(PASSWORD)
        await session.commit()
    assert await staff.principal(token) == principal and await staff.principal(older) == principal
    async with container.sessions() as session:
        await staff.manage(session=session, username="clerk-leak", action="reset-password", password="a-new-secret-1")
        await session.commit()
    with pytest.raises(Unauthorized):
        await staff.principal(token)
    assert not redis_sync.exists(session_key(token))
    assert await staff.principal(older) == principal  # no mark to compare: kept, until it expires
    with pytest.raises(WrongCredentials):
        await sign_in(container, staff, "clerk-leak", PASSWORD)
    again, _, _ = await sign_in(container, staff, "clerk-leak", "a-new-secret-1")
    assert await staff.principal(again) == principal
    # Disabled, then enabled: a session opened before the disable, idle meanwhile, stays ended.
    for action in ("disable", "enable"):
        async with container.sessions() as session:
            await staff.manage(session=session, username="clerk-leak", action=action)
            await session.commit()
    with pytest.raises(Unauthorized):
        await staff.principal(again)


async def test_a_session_opened_after_a_change_this_instance_has_not_read_is_kept(
    container: Container, staff: StaffAuth
) -> None:
    """Its copy of the account (kept up to ENABLED_SECONDS) still says regulator; the account,
    made guild, signs in again at once: the new session is right, and kept, not ended for
    disagreeing with an old copy."""
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    token, principal, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert await staff.principal(token) == principal  # the copy: regulator
    async with container.sessions() as session:
        account = await session.get(StaffAccount, principal.account_id)
        assert account is not None
        account.role = StaffRole.GUILD
        await session.commit()
    again, now, _ = await sign_in(container, staff, "regulator", PASSWORD)
    assert await staff.principal(again) == now and now.role == StaffRole.GUILD
    assert await staff.principal(again) == now  # and the copy is now the record's


@pytest.mark.parametrize(
    ("username", "password", "role", "office", "field"),
    [
        ("ab", PASSWORD, "office_staff", True, "username"),
        ("x" * 41, PASSWORD, "office_staff", True, "username"),
        ("has space", PASSWORD, "office_staff", True, "username"),
        ("نام", PASSWORD, "office_staff", True, "username"),
        ("clerk", "short-pw1", "office_staff", True, "password"),
        ("clerk", PASSWORD, "cashier", True, "role"),
        ("clerk", PASSWORD, "office_staff", False, "office_code"),
        ("clerk", PASSWORD, "office_staff", "999999", "office_code"),
        ("clerk", PASSWORD, "regulator", True, "office_code"),
        ("clerk", PASSWORD, "guild", True, "office_code"),
        ("taken", PASSWORD, "guild", False, "username"),
        ("TAKEN", PASSWORD, "regulator", False, "username"),
    ],
)
async def test_create_account_validates(
    container: Container,
    staff: StaffAuth,
    world: World,
    username: str,
    password: str,
    role: str,
    office: bool | str,
    field: str,
) -> None:
    code = await world.office()
    await make_account(container, staff, "taken", role=StaffRole.GUILD)
    office_code = office if isinstance(office, str) else (code if office else None)
    async with container.sessions() as session:
        with pytest.raises(InvalidInput) as refused:
            await staff.create_account(
                session=session, username=username, password=password, role=role, office_code=office_code
            )
    assert refused.value.field == field
    assert refused.value.detail_fa and refused.value.detail_en


async def test_create_account_accepts_persian_digits_in_the_office_code(
    container: Container, staff: StaffAuth, world: World
) -> None:
    code = await world.office()
    persian = code.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))
    async with container.sessions() as session:
        created = await staff.create_account(
            session=session, username="clerk", password=PASSWORD, role="office_staff", office_code=persian
        )
        assert created.id is not None and created.role is StaffRole.OFFICE_STAFF
        await session.rollback()  # create_account does not commit
    async with container.sessions() as session:
        assert await session.scalar(select(StaffAccount.id)) is None


def principal(role: StaffRole, office_code: str | None = None) -> StaffPrincipal:
    return StaffPrincipal(
        account_id=1, username="someone", role=role, office_id=1 if office_code else None, office_code=office_code
    )


def test_require_role() -> None:
    require_role(principal(StaffRole.REGULATOR), StaffRole.REGULATOR, StaffRole.GUILD)
    with pytest.raises(Forbidden) as refused:
        require_role(principal(StaffRole.OFFICE_STAFF, "010001"), StaffRole.REGULATOR)
    assert refused.value.status == 403 and refused.value.code == "forbidden"


def test_require_office() -> None:
    clerk = principal(StaffRole.OFFICE_STAFF, "010001")
    require_office(clerk, "010001")
    require_office(clerk, "۰۱۰۰۰۱")
    with pytest.raises(NotYourOffice) as refused:
        require_office(clerk, "010002")
    assert refused.value.status == 403 and refused.value.code == "not_your_office"
    require_office(principal(StaffRole.REGULATOR), "010002")
    with pytest.raises(NotYourOffice):
        require_office(principal(StaffRole.GUILD), "010002")


class Template(msgspec.Struct):
    seats: int
    opens: str


async def test_audit_keeps_before_and_after(container: Container, world: World) -> None:
    code = await world.office()
    actor = principal(StaffRole.OFFICE_STAFF, code)
    tehran = dt.timezone(dt.timedelta(hours=3, minutes=30))
    at = dt.datetime(2026, 4, 25, 9, 30, tzinfo=tehran)
    async with container.sessions() as session:
        await audit(
            session,
            actor=actor,
            action="capacity.template.set",
            target=f"office:{code}",
            office_id=1,
            before=Template(seats=2, opens="08:00"),
            after={"seats": 3, "opens": "07:30", "day": dt.date(2026, 4, 25)},
            at=at,
        )
        await audit(
            session,
            actor=actor,
            action="booking.check_in",
            target="booking:ABCDEFGHJK",
            office_id=1,
            before=None,
            after={"status": "checked_in"},
            at=at,
        )
        await session.commit()
    async with container.sessions() as session:
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        assert [e.action for e in entries] == ["capacity.template.set", "booking.check_in"]
        first = entries[0]
        assert (first.actor, first.actor_role, first.office_id) == ("someone", "office_staff", 1)
        assert first.before is not None and first.after is not None
        assert msgspec.json.decode(first.before) == {"seats": 2, "opens": "08:00"}
        assert msgspec.json.decode(first.after) == {"seats": 3, "opens": "07:30", "day": "2026-04-25"}
        stored = first.at if first.at.tzinfo else first.at.replace(tzinfo=dt.UTC)
        assert stored == at
        assert entries[1].before is None
        # Append-only: the ORM refuses to change or remove an entry.
        first.target = "office:elsewhere"
        with pytest.raises(RuntimeError, match="append-only"):
            await session.flush()
        await session.rollback()
    async with container.sessions() as session:
        entry = await session.scalar(select(AuditEntry).limit(1))
        await session.delete(entry)
        with pytest.raises(RuntimeError, match="append-only"):
            await session.flush()


async def test_audit_wants_an_aware_time(container: Container) -> None:
    async with container.sessions() as session:
        with pytest.raises(ValueError, match="time zone"):
            await audit(
                session,
                actor=principal(StaffRole.REGULATOR),
                action="office.block",
                target="office:010001",
                office_id=None,
                before=None,
                after=None,
                at=dt.datetime(2026, 4, 25, 9, 30),
            )


async def test_demo_accounts_are_made_once_and_sign_in(container: Container, staff: StaffAuth, world: World) -> None:
    first, second = await world.office(), await world.office()
    async with container.sessions() as session:
        rows = await ensure_demo_accounts(session, staff, [first, second])
        await session.commit()
    assert rows == [
        (f"staff-{first}", f"demo-{first}-pass", first),
        (f"staff-{second}", f"demo-{second}-pass", second),
        ("regulator", "regulator-demo-pass", "regulator"),
        ("guild", "guild-demo-pass", "guild"),
    ]
    async with container.sessions() as session:
        assert await ensure_demo_accounts(session, staff, [first, second]) == rows
        await session.commit()
    async with container.sessions() as session:
        assert len(list(await session.scalars(select(StaffAccount.id)))) == 4
    for username, password, _ in rows:
        _, signed_in, _ = await sign_in(container, staff, username, password)
        assert signed_in.username == username
    _, clerk, _ = await sign_in(container, staff, f"staff-{first}", f"demo-{first}-pass")
    assert clerk.office_code == first


# --- HTTP (needs container.staff and StaffAuthController wired into the app) ---------------


async def login(client: Client, username: str, password: str = PASSWORD) -> Any:
    return await client.post("/api/v1/staff/login", json={"username": username, "password": password})


async def test_http_sign_in_and_me(client: Client, container: Container, staff: StaffAuth, world: World) -> None:
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    response = await login(client, "Clerk")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == container.settings.staff_session_ttl_seconds
    assert (body["username"], body["role"], body["office_code"]) == ("clerk", "office_staff", office)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"nobat_staff={body['access_token']}")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()

    # The cookie alone signs the web pages in ...
    me = await client.get("/api/v1/staff/me")
    assert me.status_code == 200 and me.json() == {"username": "clerk", "role": "office_staff", "office_code": office}
    # ... and the bearer token alone signs API clients in.
    client.cookies.clear()
    assert (await client.get("/api/v1/staff/me")).status_code == 401
    me = await client.get("/api/v1/staff/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == "clerk"
    # A citizen's token is not a staff session.
    citizen = await client.get("/api/v1/staff/me", headers=world.token())
    assert citizen.status_code == 401


async def test_http_the_cookie_signs_in_reads_and_not_changes(
    client: Client, container: Container, staff: StaffAuth, world: World
) -> None:
    """A browser sends the cookie with a form another site makes it post, where SameSite is
    not honoured: through the API, a change takes the bearer token."""
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    token = (await login(client, "clerk")).json()["access_token"]  # the client keeps the cookie
    waiting = f"/api/v1/staff/offices/{office}/waiting"
    forged = await client.put(waiting, json={"waiting": 7})
    assert forged.status_code == 401 and "bearer" in forged.json()["detail"]
    assert forged.headers["www-authenticate"] == "Bearer"
    assert await container.redis.hget(keys.WAITING_NOW, office) is None  # nothing changed
    assert (await client.get("/api/v1/staff/me")).status_code == 200  # reading, by the cookie
    done = await client.put(waiting, json={"waiting": 7}, headers={"Authorization": f"Bearer {token}"})
    assert done.status_code == 204, done.text
    assert (await container.redis.hget(keys.WAITING_NOW, office)) is not None


async def test_http_wrong_password_and_unknown_user_read_the_same(
    client: Client, container: Container, staff: StaffAuth
) -> None:
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    wrong = await login(client, "regulator", "not the password")
    unknown = await login(client, "no-such-user", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == "wrong_credentials"
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


async def test_http_lockout(client: Client, container: Container, staff: StaffAuth, world: World) -> None:
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    for _ in range(container.settings.staff_max_failures):
        response = await login(client, "clerk", "not the password")
        assert response.status_code == 401 and response.json()["code"] == "wrong_credentials"
    locked = await login(client, "clerk")
    assert locked.status_code == 403, locked.text
    assert locked.json()["code"] == "account_locked"
    assert 0 < int(locked.headers["retry-after"]) <= container.settings.staff_lockout_seconds
    until = dt.datetime.fromisoformat(locked.json()["locked_until"])
    assert until > utcnow()
    assert locked.json()["message_fa"] and locked.json()["message_en"]

    await unlock(container, "clerk")
    assert (await login(client, "clerk")).status_code == 200


async def test_http_an_unknown_username_locks_like_a_real_one(
    client: Client, container: Container, staff: StaffAuth, world: World
) -> None:
    """Were only real accounts to lock, wrong passwords until a lock (or none) would tell
    anyone which usernames exist (OWASP): an unknown or malformed name is counted, locked
    and let go again just as an account is."""
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    limit = container.settings.staff_max_failures
    names = ("clerk", "nobody-here", "Not A Username!")

    async def tries(username: str) -> list[tuple[int, str, bool]]:
        seen, locked_until = [], set()
        for _ in range(limit + 2):
            response = await login(client, username, "not the password")
            body = response.json()
            seen.append((response.status_code, body["code"], "retry-after" in response.headers))
            if body["code"] == "account_locked":
                assert 0 < int(response.headers["retry-after"]) <= container.settings.staff_lockout_seconds
                locked_until.add(body["locked_until"])
        assert len(locked_until) == 1  # the same lock at every answer
        return seen

    expected = [(401, "wrong_credentials", False)] * limit + [(403, "account_locked", True)] * 2
    assert [await tries(name) for name in names] == [expected] * len(names)
    stored = await container.redis.keys("*")
    assert not [key for key in stored for name in names[1:] if name.lower() in key]  # only a digest

    await unlock(container, "clerk")
    for name in names[1:]:
        await unlock_unknown(container, name.lower())
    # The lock ran its course and the count starts again, alike.
    assert [await tries(name) for name in names] == [expected] * len(names)


async def test_http_lockout_spares_the_clerks_own_browser(
    client: Client, container: Container, staff: StaffAuth, world: World
) -> None:
    """The API and the sign-in page keep the browser's proof in a cookie of its own, which
    outlives the session; someone else locking the account does not lock that browser out."""
    office = await world.office()
    await make_account(container, staff, "clerk", office_code=office)
    signed = await login(client, "clerk")
    assert signed.status_code == 200
    proof = client.cookies.get(DEVICE_COOKIE)
    clerk = await account(container, "clerk")
    today = utcnow().date().toordinal()
    key = container.settings.secret_key
    assert proof and known_device(key, proof, account_id=clerk.id, account_key=clerk.password_hash, today=today)
    bearer = {"Authorization": f"Bearer {signed.json()['access_token']}"}
    assert (await client.post("/api/v1/staff/logout", headers=bearer)).status_code == 204
    assert client.cookies.get(DEVICE_COOKIE) == proof  # signing out does not forget the browser
    [kept] = [cookie for cookie in client.cookies.jar if cookie.name == DEVICE_COOKIE]
    client.cookies.clear()  # someone else, elsewhere
    for _ in range(container.settings.staff_max_failures):
        assert (await login(client, "clerk", "not the password")).status_code == 401
    assert (await login(client, "clerk")).json()["code"] == "account_locked"
    client.cookies.jar.set_cookie(kept)  # the clerk, at the counter
    assert (await login(client, "clerk")).status_code == 200
    page = await client.get("/office/signin")
    form = {
        "username": "clerk",
        "password": PASSWORD,
        "_csrf": re.findall(r'name="_csrf" value="([0-9a-f]+)"', page.text)[0],
    }
    signed_in = await client.post("/office/signin", data=form, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text
    assert client.cookies.get(DEVICE_COOKIE) == proof


async def test_http_sign_out_ends_the_session(client: Client, container: Container, staff: StaffAuth) -> None:
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    token = (await login(client, "guild")).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/staff/me", headers=bearer)).status_code == 200
    out = await client.post("/api/v1/staff/logout", headers=bearer)
    assert out.status_code == 204
    assert "nobat_staff=" in out.headers["set-cookie"]
    assert (await client.get("/api/v1/staff/me", headers=bearer)).status_code == 401
    # Signing out again is not an error.
    assert (await client.post("/api/v1/staff/logout", headers=bearer)).status_code == 204


async def test_http_sign_out_by_the_cookie_alone_is_refused(
    client: Client, container: Container, staff: StaffAuth
) -> None:
    """Another site's form sends the cookie and nothing else: it does not end the session."""
    await make_account(container, staff, "guild", role=StaffRole.GUILD)
    token = (await login(client, "guild")).json()["access_token"]
    assert client.cookies.get("nobat_staff") == token
    refused = await client.post("/api/v1/staff/logout")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "nobat_staff=" not in refused.headers.get("set-cookie", "")
    assert (await client.get("/api/v1/staff/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    assert (await client.get("/api/v1/staff/me")).status_code == 200  # the cookie still reads


async def test_http_expired_session_is_refused(
    client: Client, container: Container, staff: StaffAuth, redis_sync: SyncRedis
) -> None:
    await make_account(container, staff, "regulator", role=StaffRole.REGULATOR)
    token = (await login(client, "regulator")).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/staff/me", headers=bearer)).status_code == 200
    redis_sync.delete(session_key(token))
    expired = await client.get("/api/v1/staff/me", headers=bearer)
    assert expired.status_code == 401 and expired.json()["code"] == "unauthorized"


async def test_http_me_needs_a_session(client: Client) -> None:
    assert (await client.get("/api/v1/staff/me")).status_code == 401
    malformed = await client.get("/api/v1/staff/me", headers={"Authorization": "Basic abc"})
    assert malformed.status_code == 401


@pytest.mark.parametrize(
    "form",
    ["queue/ABCDEFGHJK/check-in", "walk-ins", "waiting", "capacity/template", "capacity/overrides"],
)
async def test_an_office_form_sent_after_the_session_ended_asks_for_sign_in(client: Client, form: str) -> None:
    """The session gone (expired, signed out elsewhere), a clerk's form was refused "form
    expired" (403), a dead end with the form lost; now they are sent to sign in and back."""
    sent = await client.post(f"/office/010001/{form}", data={"_csrf": "0" * 64}, follow_redirects=False)
    assert sent.status_code in (302, 303), sent.text
    assert sent.headers["location"].startswith("/office/signin?next=")


async def test_the_sign_in_page_tells_the_deployments_lockout_and_when_to_try_again(
    settings: Settings, container: Container
) -> None:
    """It said "5 wrong passwords, 15 minutes" whatever NOBAT_STAFF_MAX_FAILURES and
    NOBAT_STAFF_LOCKOUT_SECONDS said, and its refusal dropped the lock's Retry-After."""
    from app.main import create_app

    staff = service(container)
    await make_account(container, staff, "clerk-page", role=StaffRole.GUILD)
    locked = settings.with_(staff_max_failures=3, staff_lockout_seconds=600)
    async with AsyncTestClient(create_app(locked)) as client:
        page = await client.get("/office/signin")
        assert "پس از ۳ گذرواژهٔ نادرست پیاپی، حساب ۱۰ دقیقه قفل می‌شود." in page.text
        csrf = re.findall(r'name="_csrf" value="([0-9a-f]+)"', page.text)[0]
        form = {"username": "clerk-page", "password": "not the password", "_csrf": csrf}
        answers = [await client.post("/office/signin", data=form) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [401, 401, 401]
    assert answers[3].status_code == 403 and 0 < int(answers[3].headers["Retry-After"]) <= 600
