"""Citizen sign-in with a one-time SMS code, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.auth import service as auth_service
from app.auth import signed_out
from app.pages.citizen import SIGNIN_MOBILE_COOKIE
from app.pages.render import CITIZEN_COOKIE
from app.settings import Settings
from app.sms.backends import OUTBOX
from tests.conftest import Deliver, World, fails_once

Client = AsyncTestClient[Litestar]


def codes_sent(redis: SyncRedis, mobile: str) -> list[str]:
    """The codes sent to the mobile, the latest first."""
    messages = [json.loads(raw) for raw in redis.lrange(OUTBOX, 0, 50)]
    return [found[1] for m in messages if m["to"] == mobile and (found := re.search(r"\(([0-9]{6})\)", m["body"]))]


def last_code(redis: SyncRedis, mobile: str) -> str:
    sent = codes_sent(redis, mobile)
    assert sent, f"no code sent to {mobile}"
    return sent[0]


async def test_code_signs_in_once(client: Client, redis_sync: SyncRedis, deliver: Deliver) -> None:
    sent = await client.post("/api/v1/auth/otp", json={"mobile": "+98 912 000 1111"})
    assert sent.status_code == 202 and sent.json()["mobile"] == "09120001111"
    assert await asyncio.to_thread(client.app.state.container.messenger.wait_sent, 10)  # handed over
    # The code waits on its own queue, which workers take before confirmations and reminders.
    assert redis_sync.llen("rq:queue:codes") == 1 and redis_sync.llen("rq:queue:sms") == 0
    await deliver()
    code = last_code(redis_sync, "09120001111")
    persian = code.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))
    verified = await client.post("/api/v1/auth/verify", json={"mobile": "00989120001111", "code": persian})
    assert verified.status_code == 200, verified.text
    token = verified.json()["access_token"]
    assert verified.json()["token_type"] == "Bearer"
    # Once: through the API, again at once is refused (the sign-in page's second tap: below).
    again = await client.post("/api/v1/auth/verify", json={"mobile": "09120001111", "code": code})
    assert again.status_code == 400 and again.json()["code"] == "otp_expired"
    # The token works where a citizen must be signed in.
    lookup = await client.post("/api/v1/bookings/ABCDEFGHJK/cancel", headers={"Authorization": f"Bearer {token}"})
    assert lookup.status_code == 404


async def test_a_code_asked_for_twice_at_once_is_sent_once(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A double tap on «فرستادن کد» over a slow line sent two SMS, used two of the number's
    three codes in ten minutes, and a third tap put the first code out of play (the first
    SMS to come was then "wrong"). Asked for again within seconds, the code on its way is the
    answer; after them, a new one is sent."""
    monkeypatch.setattr(auth_service, "RESEND_AFTER_SECONDS", 10)
    for _ in range(3):
        assert (await client.post("/api/v1/auth/otp", json={"mobile": "09120003838"})).status_code == 202
    await deliver()
    [code] = codes_sent(redis_sync, "09120003838")
    redis_sync.delete(auth_service._sent_key("09120003838"))  # as its ten seconds going by
    assert (await client.post("/api/v1/auth/otp", json={"mobile": "09120003838"})).status_code == 202
    await deliver()
    assert len(codes_sent(redis_sync, "09120003838")) == 2
    # Both live (the one before the last signs in until its end), the first among them.
    verified = await client.post("/api/v1/auth/verify", json={"mobile": "09120003838", "code": code})
    assert verified.status_code == 200, verified.text


async def test_a_second_ask_is_not_told_sent_of_a_code_whose_first_ask_failed(
    world: World, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second tap came while the first was committing its code, and was told "sent"; the
    first's commit then failed, and no code came. The second waits for the first, and sends
    its own when the first failed."""
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(auth_service, "RESEND_AFTER_SECONDS", 10)
    auth = world.container.auth
    real = auth._send_code
    started, fail = asyncio.Event(), asyncio.Event()

    async def committing_then_failing(session: Any, mobile: str) -> None:
        if not started.is_set():
            started.set()
            await fail.wait()
            raise OperationalError("COMMIT", {}, Exception("the connection dropped"))
        await real(session, mobile)

    monkeypatch.setattr(auth, "_send_code", committing_then_failing)

    async def ask() -> str:
        async with world.container.sessions() as session:
            return await auth.request_code(session=session, mobile="09120003939", client="10.0.0.1")

    first = asyncio.create_task(ask())
    await started.wait()
    second = asyncio.create_task(ask())
    await asyncio.sleep(0.2)  # the second waits on the first
    assert not second.done()
    fail.set()
    with pytest.raises(OperationalError):
        await first
    assert await second == "09120003939"
    await deliver()
    assert len(codes_sent(redis_sync, "09120003939")) == 1  # the second's own


async def test_a_code_taken_signs_in_again_only_with_its_forms_secret_and_briefly(
    world: World, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second tap on «ورود» over a slow line, whose first answer (and its cookie) the browser
    dropped, found the code used up: the citizen was signed out, and asked for another SMS
    on a rush morning. Sent again with the same sign-in form's secret, the code signs in again
    for a few seconds. Without it (the API, someone who saw the code over a shoulder behind
    the same NAT), or after those seconds, a sign-out or a sign-out everywhere, it is used up."""
    from app.auth.errors import CodeExpired

    auth = world.container.auth
    for mobile, ask in (("09120003434", "web"), ("09120003535", "texted")):
        code = await _a_code(world, redis_sync, deliver, mobile, ask)
        first = await auth.verify(mobile=mobile, code=code, client="10.0.0.1", again="form-a")
        assert await auth.verify(mobile=mobile, code=code, client="10.0.0.1", again="form-a")  # the second tap
        assert auth.mobile_from_token(first) == mobile
        for other in ("form-b", ""):  # the same address, another form or none
            with pytest.raises(CodeExpired):
                await auth.verify(mobile=mobile, code=code, client="10.0.0.1", again=other)
        # Another's try ended nothing: the second tap still signs in.
        assert await auth.verify(mobile=mobile, code=code, client="10.0.0.1", again="form-a")
        await auth.sign_out(first)  # Back on a shared computer, after signing out
        with pytest.raises(CodeExpired):
            await auth.verify(mobile=mobile, code=code, client="10.0.0.1", again="form-a")
    code = await _a_code(world, redis_sync, deliver, "09120003636", "web")
    token = await auth.verify(mobile="09120003636", code=code, client="10.0.0.1", again="form-a")
    await auth.sign_out_everywhere(token)
    with pytest.raises(CodeExpired):
        await auth.verify(mobile="09120003636", code=code, client="10.0.0.1", again="form-a")
    monkeypatch.setattr(auth_service, "TAKEN_SECONDS", 1)
    code = await _a_code(world, redis_sync, deliver, "09120003737", "web")
    await auth.verify(mobile="09120003737", code=code, client="10.0.0.1", again="form-a")
    await asyncio.sleep(1.2)
    with pytest.raises(CodeExpired):
        await auth.verify(mobile="09120003737", code=code, client="10.0.0.1", again="form-a")


async def _a_code(world: World, redis_sync: SyncRedis, deliver: Deliver, mobile: str, ask: str) -> str:
    if ask == "texted":
        return await texted_code(world, redis_sync, deliver, mobile)
    async with world.container.sessions() as session:
        await world.container.auth.request_code(session=session, mobile=mobile, client="10.0.0.1")
    await deliver()
    return last_code(redis_sync, mobile)


async def test_a_code_pasted_with_a_phones_invisible_marks_and_spaces_signs_in(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """Copied out of a right-to-left SMS, a code comes wrapped in direction marks or isolates
    (and typed, split in two): the same code, not a badly formed one."""
    await client.post("/api/v1/auth/otp", json={"mobile": "09120001212"})
    await deliver()
    code = last_code(redis_sync, "09120001212")
    pasted = "\u2068" + code[:3] + " " + code[3:].translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")) + "\u2069"
    verified = await client.post("/api/v1/auth/verify", json={"mobile": "09120001212", "code": pasted})
    assert verified.status_code == 200, verified.text
    texted = await texted_code(world, redis_sync, deliver, "09120001212")
    pasted = "\u200e" + texted[:5] + "-\u200f" + texted[5:]
    verified = await client.post("/api/v1/auth/verify", json={"mobile": "09120001212", "code": pasted})
    assert verified.status_code == 200, verified.text
    page = await client.get("/signin/code?mobile=09120001212&next=/")
    assert 'maxlength="12"' in page.text  # room for them: a browser cuts a paste at maxlength


async def test_five_wrong_tries_burn_the_code(client: Client, redis_sync: SyncRedis, deliver: Deliver) -> None:
    await client.post("/api/v1/auth/otp", json={"mobile": "09120002222"})
    await deliver()
    code = last_code(redis_sync, "09120002222")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(4):
        response = await client.post("/api/v1/auth/verify", json={"mobile": "09120002222", "code": wrong})
        assert response.status_code == 400 and response.json()["code"] == "otp_wrong"
    fifth = await client.post("/api/v1/auth/verify", json={"mobile": "09120002222", "code": wrong})
    assert fifth.json()["code"] == "otp_expired"
    right_too_late = await client.post("/api/v1/auth/verify", json={"mobile": "09120002222", "code": code})
    assert right_too_late.status_code == 400 and right_too_late.json()["code"] == "otp_expired"


async def test_with_two_codes_live_a_wrong_try_is_a_guess_at_each(
    client: Client, redis_sync: SyncRedis, deliver: Deliver, settings: Settings
) -> None:
    """Asking for a second code must not double the guessing bound: with two live, each
    wrong try counts twice, and the codes burn before the guesses pass the bound."""
    assert settings.otp_max_attempts == 5
    mobile = "09120002323"
    for _ in range(2):
        await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    latest, first = codes_sent(redis_sync, mobile)
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in (latest, first))
    answers = [await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": wrong}) for _ in range(2)]
    assert [a.json()["code"] for a in answers] == ["otp_wrong", "otp_expired"]  # 4 guesses, not 5 tries x 2
    right_too_late = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": first})
    assert right_too_late.json()["code"] == "otp_expired"


async def test_asking_for_a_code_again_does_not_give_the_wrong_tries_back(
    client: Client, redis_sync: SyncRedis, deliver: Deliver, settings: Settings
) -> None:
    """Five wrong tries burn a code, and asking for another while it lives must not start its
    count again: the tries so far go on counting while the earlier code is kept. One that
    could not take another guess at both codes within the bound is burnt instead, and the
    new code counts alone."""
    assert settings.otp_max_attempts == 5

    async def verify(mobile: str, code: str) -> str:
        answer = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": code})
        return "signed in" if answer.status_code == 200 else answer.json()["code"]

    def wrong_for(*codes: str) -> str:
        return next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in codes)

    # Four wrong tries, then a new code: the first could not take a fifth guess beside it.
    mobile = "09120002424"
    await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    first = last_code(redis_sync, mobile)
    assert [await verify(mobile, wrong_for(first)) for _ in range(4)] == ["otp_wrong"] * 4
    await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    latest = last_code(redis_sync, mobile)
    assert await verify(mobile, wrong_for(first, latest)) == "otp_wrong"
    assert await verify(mobile, first) == "otp_wrong"  # its sixth guess: burnt
    assert await verify(mobile, latest) == "signed in"

    # Two wrong tries, then a new code: both are kept, and the count with them.
    mobile = "09120002525"
    await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    first = last_code(redis_sync, mobile)
    assert [await verify(mobile, wrong_for(first)) for _ in range(2)] == ["otp_wrong"] * 2
    await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    latest = last_code(redis_sync, mobile)
    # 2 + 2 guesses: one more try at both would pass the bound, so the codes burn.
    assert await verify(mobile, wrong_for(first, latest)) == "otp_expired"
    assert await verify(mobile, first) == "otp_expired"


async def test_code_expires(
    client: Client, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The latest code ends at NOBAT_OTP_TTL_SECONDS by its own end (Redis still holding it),
    and Redis lets it go by then too."""
    mobile = "09120003333"
    started = time.time()
    monkeypatch.setattr(auth_service, "_now_ms", lambda: int(started * 1000))
    await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    code = last_code(redis_sync, mobile)
    ttl = client.app.state.container.settings.otp_ttl_seconds
    assert 0 < redis_sync.ttl(auth_service._otp_key(mobile)) <= ttl
    monkeypatch.setattr(auth_service, "_now_ms", lambda: int((started + ttl + 1) * 1000))
    response = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": code})
    assert response.json()["code"] == "otp_expired", response.text


async def test_the_code_before_the_last_still_signs_in(
    client: Client, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A citizen asks for a code again while the first SMS is on its way, and types the one
    that came: it signs in, until its own end. Signing in uses up both; a code two back, or
    past its end, is wrong."""
    mobile = "09120004444"
    for _ in range(2):
        await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    latest, first = codes_sent(redis_sync, mobile)
    assert (await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": first})).status_code == 200
    used_up = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": latest})
    assert used_up.json()["code"] == "otp_expired"

    mobile = "09120005555"
    started = time.time()
    for late in (0, 60, 61):  # three codes: now, a minute on, a second after (each lives 120 s)
        monkeypatch.setattr(auth_service, "_now_ms", lambda late=late: int((started + late) * 1000))
        await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    await deliver()
    third, second, first = codes_sent(redis_sync, mobile)
    wrong = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": first})
    assert wrong.status_code == 400 and wrong.json()["code"] == "otp_wrong"  # two back
    monkeypatch.setattr(auth_service, "_now_ms", lambda: int((started + 180.5) * 1000))  # the second ended at 180
    wrong = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": second})
    assert wrong.status_code == 400 and wrong.json()["code"] == "otp_wrong"
    assert (await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": third})).status_code == 200


async def test_codes_are_rate_limited_per_mobile(client: Client, settings: Settings) -> None:
    count, _ = (int(x) for x in settings.otp_per_mobile.split("/"))
    for _ in range(count):
        assert (await client.post("/api/v1/auth/otp", json={"mobile": "09120004444"})).status_code == 202
    limited = await client.post("/api/v1/auth/otp", json={"mobile": "09120004444"})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.json()["code"] == "rate_limited"
    assert "«ورود»" in limited.json()["message_fa"]  # perhaps someone else's asking: text for one
    other = await client.post("/api/v1/auth/otp", json={"mobile": "09120005555"})
    assert other.status_code == 202


async def test_codes_are_rate_limited_per_address(settings: Settings) -> None:
    from app.main import create_app

    app = create_app(settings.with_(otp_per_address="3/60"))
    async with AsyncTestClient(app) as client:
        statuses = [
            (await client.post("/api/v1/auth/otp", json={"mobile": f"0912000600{i}"})).status_code for i in range(5)
        ]
    assert statuses == [202, 202, 202, 429, 429]


async def test_codes_from_every_address_together_are_bounded_and_told_to_text(
    settings: Settings, redis_sync: SyncRedis
) -> None:
    """A few hundred addresses, each under its own allowance, asking for random numbers'
    codes filled the SMS queue: citizens' codes waited behind them past their two minutes, and
    each was paid for. The web's codes are bounded all together; past the bound a citizen is
    asked to text «ورود», and the number's own allowance is not spent."""
    from app.main import create_app

    app = create_app(settings.with_(otp_web_total="3/60", trust_forwarded_for=True))
    async with AsyncTestClient(app) as client:
        answers = [
            await client.post(
                "/api/v1/auth/otp", json={"mobile": f"0912000700{n}"}, headers={"X-Forwarded-For": f"198.51.100.{n}"}
            )
            for n in range(5)
        ]
        assert [answer.status_code for answer in answers] == [202, 202, 202, 429, 429]
        refused = answers[3]
        assert refused.json()["code"] == "rate_limited" and "«ورود»" in refused.json()["message_fa"]
        assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert redis_sync.keys("*otp-mobile*09120007002*") and not redis_sync.keys("*otp-mobile*09120007003*")


async def test_requests_for_a_number_used_up_do_not_spend_every_addresss_codes(settings: Settings) -> None:
    """Counted whether sent or not, the requests for one number whose own allowance was used
    up (sending nothing), from a few hundred addresses, spent the whole country's web codes
    in seconds: every citizen was told to text «ورود», and no SMS went out to show it."""
    from app.main import create_app

    app = create_app(settings.with_(otp_web_total="3/60", otp_per_mobile="1/600", trust_forwarded_for=True))
    async with AsyncTestClient(app) as client:

        async def ask(mobile: str, n: int) -> Any:
            return await client.post(
                "/api/v1/auth/otp", json={"mobile": mobile}, headers={"X-Forwarded-For": f"198.51.100.{n}"}
            )

        assert (await ask("09120007100", 1)).status_code == 202
        for n in range(2, 8):  # the same number again, from other addresses: its own allowance refuses
            refused = await ask("09120007100", n)
            assert refused.status_code == 429 and "«ورود»" in refused.json()["message_fa"], refused.text
        assert [(await ask(f"0912000710{n}", 10 + n)).status_code for n in (1, 2)] == [202, 202]
        busy = await ask("09120007103", 20)  # the bound itself still holds
        assert busy.status_code == 429 and busy.json()["code"] == "rate_limited", busy.text


async def test_only_wrong_guesses_at_live_codes_use_up_an_addresss_verifications(settings: Settings) -> None:
    """One client behind an office's Wi-Fi or a carrier's NAT posted codes for numbers with no
    code (which can find nothing), and used up the address's verifications: every citizen
    behind it was refused sign-in for ten minutes. Only wrong guesses at a live code count."""
    from app.main import create_app

    async with AsyncTestClient(create_app(settings.with_(verify_per_address="3/600"))) as client:
        for n in range(5):  # numbers with no code: nothing found, nothing counted
            answer = await client.post("/api/v1/auth/verify", json={"mobile": f"0912000{8800 + n}", "code": "123456"})
            assert answer.status_code == 400 and answer.json()["code"] == "otp_expired", answer.text
        assert (await client.post("/api/v1/auth/otp", json={"mobile": "09120008899"})).status_code == 202
        wrong = [
            (await client.post("/api/v1/auth/verify", json={"mobile": "09120008899", "code": "000000"})).status_code
            for _ in range(4)
        ]
    assert wrong == [400, 400, 400, 429]  # guesses at a live code: three, then the address waits


async def test_codes_are_limited_per_mobile_over_a_day(settings: Settings) -> None:
    """Each code takes five guesses: within the ten-minute limit alone, a number's code could
    be guessed at 2,160 times a day."""
    from app.main import create_app

    app = create_app(settings.with_(otp_per_mobile="100/600", otp_per_mobile_day="4/86400"))
    async with AsyncTestClient(app) as client:
        statuses = [
            (await client.post("/api/v1/auth/otp", json={"mobile": "09120007777"})).status_code for _ in range(5)
        ]
        limited = await client.post("/api/v1/auth/otp", json={"mobile": "09120007777"})
        other = await client.post("/api/v1/auth/otp", json={"mobile": "09120008888"})
    assert statuses == [202, 202, 202, 202, 429]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 3600
    # Perhaps used up by someone else: the phone's holder is told how to ask by SMS instead
    # (tests/integration/test_sms.py), with the service's number when it sends by Twilio.
    assert limited.json()["code"] == "rate_limited" and "«ورود»" in limited.json()["message_fa"]
    assert "text LOGIN from this phone." in limited.json()["detail"]
    assert other.status_code == 202


async def test_bad_mobiles_and_codes_are_refused(client: Client, redis_sync: SyncRedis, deliver: Deliver) -> None:
    for mobile in ("02112345678", "0912", "abc", ""):
        response = await client.post("/api/v1/auth/otp", json={"mobile": mobile})
        assert response.status_code == 422 and response.json()["field"] == "mobile"
    response = await client.post("/api/v1/auth/verify", json={"mobile": "09120007777", "code": "12"})
    assert response.status_code == 422 and response.json()["field"] == "code"
    await deliver()
    assert redis_sync.llen(OUTBOX) == 0


async def test_a_code_is_not_sent_for_a_body_any_website_could_post(client: Client, redis_sync: SyncRedis) -> None:
    """A page elsewhere can make its visitors' browsers POST text/plain or a form without a
    preflight; read as JSON, it could send codes to any number from their addresses."""
    body = '{"mobile": "09120009999"}'
    for kind in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        refused = await client.post("/api/v1/auth/otp", content=body, headers={"Content-Type": kind})
        assert refused.status_code == 415 and refused.json()["code"] == "unsupported_media_type", refused.text
    # Bytes a page's fetch() sends with no Content-Type at all (mode "no-cors"): read as JSON too, before.
    untyped = await client.post("/api/v1/auth/otp", content=body.encode())
    assert "content-type" not in untyped.request.headers
    assert untyped.status_code == 415, untyped.text
    staff = await client.post(
        "/api/v1/staff/login", content='{"username": "x", "password": "y"}', headers={"Content-Type": "text/plain"}
    )
    assert staff.status_code == 415, staff.text  # password guesses spread over a page's visitors
    assert not redis_sync.exists("nobat:otp:09120009999")  # no code made
    sent = await client.post("/api/v1/auth/otp", content=body, headers={"Content-Type": "application/json"})
    assert sent.status_code == 202 and redis_sync.exists("nobat:otp:09120009999")


async def test_the_sign_in_routes_count_toward_the_per_address_api_limit(settings: Settings) -> None:
    """Their own check (JSON only) must not take the place of the app's per-address limit."""
    from app.main import create_app

    body = {"mobile": "09120007778", "code": "123456"}
    async with AsyncTestClient(create_app(settings.with_(api_per_address="2/3600"))) as client:
        statuses = [(await client.post("/api/v1/auth/verify", json=body)).status_code for _ in range(3)]
    assert statuses == [400, 400, 429]


async def test_codes_asked_from_one_ipv6_network_count_as_one_address(settings: Settings) -> None:
    """A new address of the same /64 for each request (any IPv6 phone can) is the same
    client to the per-address limit on codes, not a fresh one each time."""
    from app.main import create_app

    limited = settings.with_(otp_per_address="2/3600", trust_forwarded_for=True)
    async with AsyncTestClient(create_app(limited)) as client:
        statuses = [
            (
                await client.post(
                    "/api/v1/auth/otp",
                    json={"mobile": f"0912000{7780 + n}"},
                    headers={"X-Forwarded-For": f"2001:db8:7:7::{n + 1:x}"},
                )
            ).status_code
            for n in range(3)
        ]
        elsewhere = await client.post(
            "/api/v1/auth/otp", json={"mobile": "09120007790"}, headers={"X-Forwarded-For": "2001:db8:7:8::1"}
        )
    assert statuses == [202, 202, 429]
    assert elsewhere.status_code == 202  # another network: a limit of its own


async def sign_in(client: Client, redis_sync: SyncRedis, deliver: Deliver, mobile: str) -> dict[str, str]:
    """A phone's sign-in: ask for a code, read it from the outbox, trade it for a token."""
    assert (await client.post("/api/v1/auth/otp", json={"mobile": mobile})).status_code == 202
    await deliver()
    verified = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": last_code(redis_sync, mobile)})
    assert verified.status_code == 200, verified.text
    return {"Authorization": f"Bearer {verified.json()['access_token']}"}


async def test_a_sign_in_codes_text_leaves_the_record_once_sent(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """Redis keeps a keyed digest of a code, but the record kept its SMS whole: anyone who
    could read the record, a replica or a backup could sign in as the citizen. The text is
    erased once sent; the citizen signs in with the code the phone received."""
    from sqlalchemy import select

    from app.sms.models import SmsMessage
    from app.sms.tasks import CODE_ERASED

    assert await signed_in(client, await sign_in(client, redis_sync, deliver, "09120002323"))
    async with world.container.sessions() as session:
        [(body, status)] = (await session.execute(select(SmsMessage.body, SmsMessage.status))).all()
    assert (body, status.value) == (CODE_ERASED, "sent")
    assert not any(ch.isdigit() for ch in body)


async def signed_in(client: Client, headers: dict[str, str]) -> bool:
    """Whether the token still signs in: a cancel of no booking is 404 to a citizen, 401 to no one."""
    answer = await client.post("/api/v1/bookings/ABCDEFGHJK/cancel", headers=headers)
    assert answer.status_code in (401, 404), answer.text
    return answer.status_code == 404


async def refused_soon(client: Client, *tokens: dict[str, str]) -> bool:
    """Whether every token is refused by the instance within 10 s: another instance's
    sign-out reaches it at its next look (``signed_out.LOOK_EVERY``; more on a slow machine)."""
    for _ in range(100):
        if not any([await signed_in(client, token) for token in tokens]):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_signed_out_token_is_refused_at_once_and_by_every_instance(
    client: Client, settings: Settings, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    from app.main import create_app

    headers = await sign_in(client, redis_sync, deliver, "09120001212")
    # PyJWT reads the signature past padding added to it: the same token, another text.
    padded = {"Authorization": headers["Authorization"] + "="}
    async with AsyncTestClient(create_app(settings)) as elsewhere:  # another instance, same Redis
        assert await signed_in(client, headers) and await signed_in(elsewhere, headers)
        assert await signed_in(client, padded)
        assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        assert not await signed_in(client, headers) and not await signed_in(client, padded)
        assert await refused_soon(elsewhere, headers, padded)
        # Idempotent, and only a token that signs in is added: no header, garbage, again.
        for other in ({}, {"Authorization": "Bearer not-a-token"}, headers):
            assert (await elsewhere.post("/api/v1/auth/logout", headers=other)).status_code == 204
    assert redis_sync.zcard(signed_out.SIGNED_OUT) == 1
    # The citizen signs in again, with a new token.
    assert await signed_in(client, await sign_in(client, redis_sync, deliver, "09120001212"))


@pytest.mark.parametrize("told_by", ["the retry", "the next look"])
async def test_a_sign_out_that_met_redis_away_reaches_every_instance(
    client: Client,
    settings: Settings,
    redis_sync: SyncRedis,
    deliver: Deliver,
    monkeypatch: pytest.MonkeyPatch,
    told_by: str,
) -> None:
    """Refused here at once, the telling failed (503): the retry, refused here as signed out
    already, had answered 204 and told nobody, and the token went on booking elsewhere."""
    from app.main import create_app

    headers = await sign_in(client, redis_sync, deliver, "09120001414")
    tokens = client.app.state.container.auth.signed_out
    if told_by == "the retry":  # the instance's own looks tell nothing meanwhile: only the retry can

        async def looks_at_nothing() -> None:
            return None

        monkeypatch.setattr(tokens, "look", looks_at_nothing)
    fails_once(monkeypatch, tokens, "_tell", RedisConnectionError("Redis away a moment"))
    async with AsyncTestClient(create_app(settings)) as elsewhere:  # another instance, same Redis
        assert await signed_in(elsewhere, headers)
        assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 503
        assert not await signed_in(client, headers)
        if told_by == "the retry":
            assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        # Else told by the instance's next look (each second, on its own loop).
        assert await refused_soon(elsewhere, headers)
        assert redis_sync.zcard(signed_out.SIGNED_OUT) == 1


async def test_a_token_from_an_instance_whose_clock_runs_ahead_signs_in(client: Client, settings: Settings) -> None:
    """The redirect after the code lands on another instance, a few seconds behind the one
    that signed the citizen in: the token is not refused as "not yet valid" (its code is
    used up, and the citizen would have had to ask for another). An expired one still is."""
    now = int(time.time())

    def token(issued: int, expires: int) -> dict[str, str]:
        claims = {"sub": "09120001818", "iat": issued, "exp": expires, "role": "citizen", "at": issued * 1000}
        return {"Authorization": "Bearer " + jwt.encode(claims, settings.secret_key, "HS256")}

    assert await signed_in(client, token(now + 5, now + 600))
    assert not await signed_in(client, token(now - 700, now - 100))


async def test_signing_out_everywhere_ends_every_token_of_the_number_and_no_other(
    client: Client, settings: Settings, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    from app.main import create_app

    phone = await sign_in(client, redis_sync, deliver, "09120001616")
    office_computer = await sign_in(client, redis_sync, deliver, "09120001616")
    someone_else = await sign_in(client, redis_sync, deliver, "09120001717")
    now = int(time.time())
    before_at = {  # a token issued before tokens said when they signed in, by Redis's clock
        "Authorization": "Bearer "
        + jwt.encode(
            {"sub": "09120001616", "iat": now, "exp": now + 600, "role": "citizen"}, settings.secret_key, "HS256"
        )
    }
    assert await signed_in(client, before_at)
    async with AsyncTestClient(create_app(settings)) as elsewhere:  # another instance, same Redis
        assert await signed_in(elsewhere, office_computer)
        assert (await client.post("/api/v1/auth/logout/everywhere", headers=phone)).status_code == 204
        assert not await signed_in(client, phone) and not await signed_in(client, office_computer)
        assert not await signed_in(client, before_at)
        assert await refused_soon(elsewhere, office_computer, phone)
        assert await signed_in(client, someone_else) and await signed_in(elsewhere, someone_else)
        # Only a token that signs in may: an ended one (which could sign its citizen out
        # again and again), none, or garbage is refused, and ends nothing.
        for refused in (phone, {}, {"Authorization": "Bearer not-a-token"}):
            answer = await elsewhere.post("/api/v1/auth/logout/everywhere", headers=refused)
            assert answer.status_code == 401, answer.text
        # The citizen signs in again at once, with a token issued after the sign-out.
        again = await sign_in(client, redis_sync, deliver, "09120001616")
        assert await signed_in(client, again) and await signed_in(elsewhere, again)
    assert redis_sync.zcard(signed_out.SIGNED_OUT) == 1
    async with AsyncTestClient(create_app(settings)) as started_later:
        assert not await signed_in(started_later, office_computer) and await signed_in(started_later, again)


async def test_an_instance_started_after_a_sign_out_refuses_the_token(
    client: Client, settings: Settings, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    from app.main import create_app

    headers = await sign_in(client, redis_sync, deliver, "09120001313")
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    async with AsyncTestClient(create_app(settings)) as started_later:
        assert not await signed_in(started_later, headers)


async def sign_out_on_the_page(client: Client, headers: dict[str, str], action: str = "/signout") -> Any:
    """The page's sign-out (``action``), from a browser holding the token as its cookie: its answer."""
    client.cookies.set(CITIZEN_COOKIE, headers["Authorization"].removeprefix("Bearer "))
    page = await client.get("/", headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', page.text)
    assert csrf and f'action="{action}"' in page.text  # signed in, with the button
    return await client.post(action, data={"_csrf": csrf.group(1)}, follow_redirects=False)


async def test_sign_outs_lost_by_redis_are_told_again_for_instances_started_after(
    client: Client, settings: Settings, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """Redis restarted empty (it is counted again from the record, and kept without
    persistence): the sign-outs were gone from it, and an instance started after (a deploy)
    took the signed-out token for a good one for the rest of its day. The instances that
    heard of them tell them again."""
    from redis.cluster import key_slot

    from app.main import create_app

    headers = await sign_in(client, redis_sync, deliver, "09120001919")
    everywhere = await sign_in(client, redis_sync, deliver, "09120001920")
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    assert (await client.post("/api/v1/auth/logout/everywhere", headers=everywhere)).status_code == 204
    # On a cluster the node that loses the set loses its marker: the two share a slot.
    assert key_slot(signed_out.SET_MADE.encode()) == key_slot(signed_out.SIGNED_OUT.encode())
    redis_sync.delete(signed_out.SIGNED_OUT, signed_out.SET_MADE)  # as a restart without persistence
    for _ in range(100):  # the instance's next look (a second)
        if redis_sync.zcard(signed_out.SIGNED_OUT) == 2:
            break
        await asyncio.sleep(0.1)
    async with AsyncTestClient(create_app(settings)) as started_after:
        assert not await signed_in(started_after, headers)
        assert not await signed_in(started_after, everywhere)


async def test_signing_out_everywhere_on_the_page_ends_every_token_of_the_number(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    lost_phone = await sign_in(client, redis_sync, deliver, "09120002020")
    browser = await sign_in(client, redis_sync, deliver, "09120002020")
    answer = await sign_out_on_the_page(client, browser, "/signout/everywhere")
    assert answer.status_code == 303 and answer.headers["location"] == "/?notice=signed_out_everywhere"
    assert CITIZEN_COOKIE in answer.headers["set-cookie"] and "Max-Age=0" in answer.headers["set-cookie"]
    assert not await signed_in(client, lost_phone) and not await signed_in(client, browser)
    page = await client.get(answer.headers["location"], headers={"Accept": "text/html"})
    assert "از حساب خود در همهٔ دستگاه‌ها خارج شدید." in page.text
    assert 'action="/signout/everywhere"' not in page.text  # signed out: no button
    # From a page left open after that: nothing ended, the citizen is asked to sign in.
    client.cookies.set(CITIZEN_COOKIE, browser["Authorization"].removeprefix("Bearer "))
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', (await client.get("/signin")).text)
    assert csrf
    stale = await client.post("/signout/everywhere", data={"_csrf": csrf.group(1)}, follow_redirects=False)
    assert stale.status_code == 303 and stale.headers["location"] == "/signin?notice=sign_in_first"
    assert redis_sync.zcard(signed_out.SIGNED_OUT) == 1


async def test_signing_out_on_a_page_left_open_past_the_sign_in_signs_out(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The sign-in ran out while the page was open: the form's token, bound to it, no longer
    matches. Signing out is then done, not a "form expired" page (which had left the
    citizen unsure whether the shared computer still held their sign-in)."""
    headers = await sign_in(client, redis_sync, deliver, "09120001717")
    client.cookies.set(CITIZEN_COOKIE, headers["Authorization"].removeprefix("Bearer "))
    page = await client.get("/", headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', page.text)
    assert csrf
    client.cookies.set(CITIZEN_COOKIE, "a.sign-in.that-ran-out")
    plain = await client.post("/signout", data={"_csrf": csrf.group(1)}, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == "/?notice=signed_out", plain.text
    assert CITIZEN_COOKIE in plain.headers["set-cookie"] and "Max-Age=0" in plain.headers["set-cookie"]
    client.cookies.set(CITIZEN_COOKIE, "a.sign-in.that-ran-out")
    everywhere = await client.post("/signout/everywhere", data={"_csrf": csrf.group(1)}, follow_redirects=False)
    assert everywhere.status_code == 303 and everywhere.headers["location"] == "/signin?notice=sign_in_first"
    # Signed in, the form's token is still asked for.
    client.cookies.set(CITIZEN_COOKIE, headers["Authorization"].removeprefix("Bearer "))
    forged = await client.post("/signout", data={"_csrf": "0" * 64}, follow_redirects=False)
    assert forged.status_code == 403
    assert await signed_in(client, headers)


async def test_another_sites_form_posted_to_sign_out_deletes_no_cookie(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A form on another site, posted here, comes without the sign-in cookie (SameSite=Lax).
    Answered with the cookie's deletion, which the browser takes from a top-level navigation,
    any site could sign a citizen out in the middle of booking."""
    headers = await sign_in(client, redis_sync, deliver, "09120001515")
    client.cookies.clear()  # as the browser sends the cross-site POST: no sign-in cookie
    for action in ("/signout", "/signout/everywhere"):
        answer = await client.post(action, data={}, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        assert CITIZEN_COOKIE not in answer.headers.get("set-cookie", ""), action
    assert await signed_in(client, headers)


async def test_signing_out_on_the_page_ends_the_token_too(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A copy of the cookie (a shared computer's, the browser's disk) must not sign in after."""
    headers = await sign_in(client, redis_sync, deliver, "09120001414")
    assert (await sign_out_on_the_page(client, headers)).status_code == 303
    assert not await signed_in(client, headers)


async def test_signing_out_on_the_page_without_redis_still_signs_out_here(
    client: Client, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down: the others cannot be told, but this instance refuses the token and the
    browser's cookie goes, rather than an error page that leaves the citizen signed in."""
    headers = await sign_in(client, redis_sync, deliver, "09120001515")

    async def unreachable(**_: Any) -> None:
        raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(client.app.state.container.auth.signed_out, "_tell", unreachable)
    signed = await sign_out_on_the_page(client, headers)
    assert signed.status_code == 303
    assert CITIZEN_COOKIE in signed.headers["set-cookie"] and "Max-Age=0" in signed.headers["set-cookie"]
    assert not await signed_in(client, headers)
    assert redis_sync.zcard(signed_out.SIGNED_OUT) == 0


async def test_the_watch_for_sign_outs_outlives_a_failed_look(redis_url: str) -> None:
    redis = AsyncRedis.from_url(redis_url)
    tokens = signed_out.SignedOutTokens(redis, keep_seconds=60)
    looks = 0
    look = tokens.look

    async def failing_at_first() -> None:
        nonlocal looks
        looks += 1
        if looks <= 2:
            raise RedisConnectionError("down") if looks == 1 else ValueError("a bug")
        await look()

    tokens.look = failing_at_first  # type: ignore[method-assign]
    watch = asyncio.create_task(tokens.run(every=0.01))
    try:
        for _ in range(500):  # up to 5 s: a loaded machine (the browser tests beside) is slow to look
            if looks > 3 or watch.done():
                break
            await asyncio.sleep(0.01)
        assert looks > 3 and not watch.done()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await redis.aclose()


async def test_a_digest_is_kept_as_long_as_a_token_lives(
    redis_url: str, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis and each instance forget a signed-out token once it would have expired anyway:
    neither grows without end."""
    monkeypatch.setattr(signed_out, "CLOCKS_MARGIN_SECONDS", 0)
    redis = AsyncRedis.from_url(redis_url)
    try:
        here, there = (signed_out.SignedOutTokens(redis, keep_seconds=1) for _ in range(2))
        await there.look()
        await here.add("header.first.signature")
        await there.look()
        assert "header.first.signature" in there and "header.second.signature" not in there
        await asyncio.sleep(1.1)
        await here.add("header.second.signature")
        assert redis_sync.zrange(signed_out.SIGNED_OUT, 0, -1) == [
            signed_out.digest("header.second.signature").encode()
        ]
        await there.look()
        assert "header.first.signature" not in there and "header.second.signature" in there

        # A sign-out everywhere, the same: it ends what signed in until its moment (ms).
        await here.add_everywhere("09120001818", 2000)
        await there.look()
        await here.add_everywhere("09120001818", 1000)  # heard after: the later moment stays
        await there.look()
        assert there.ended_everywhere("09120001818", 2000) and not there.ended_everywhere("09120001818", 2001)
        assert not there.ended_everywhere("09120001919", 0)  # another number
        await asyncio.sleep(1.1)
        await here.add("header.third.signature")
        await there.look()
        assert not there.ended_everywhere("09120001818", 1000)
        assert redis_sync.zcard(signed_out.SIGNED_OUT) == 1
    finally:
        await redis.aclose()


async def texted_code(world: World, redis_sync: SyncRedis, deliver: Deliver, mobile: str) -> str:
    """The phone texts ورود, as the SMS channel takes it: the code it gets back."""
    async with world.container.sessions() as session:
        await world.container.auth.request_code_by_sms(session=session, mobile=mobile)
        await session.commit()
    await deliver()
    [body] = [json.loads(raw)["body"] for raw in redis_sync.lrange(OUTBOX, 0, 0)]
    code = re.search(r"([0-9A-Z]{5}-[0-9A-Z]{5})", body)
    assert code, body
    return code[1]


def form_token(page: Any) -> str:
    found = re.search(r'name="_csrf" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found[1]


async def test_a_second_tap_on_the_sign_in_page_signs_in_as_the_first(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The first tap's answer, and its cookie, lost on a slow line; the second tap, the same
    form sent again, found the code used up, and the citizen was left signed out."""
    mobile = "09120002525"
    page = await client.get("/signin")
    sent = await client.post("/signin", data={"_csrf": form_token(page), "mobile": mobile}, follow_redirects=False)
    code_page = await client.get(sent.headers["location"])
    await deliver()
    form = {"_csrf": form_token(code_page), "mobile": mobile, "next": "/lookup", "code": last_code(redis_sync, mobile)}
    first = await client.post("/signin/code", data=form, follow_redirects=False)
    assert first.status_code == 303, first.text
    client.cookies.delete(CITIZEN_COOKIE)  # the browser never saw the first answer
    if SIGNIN_MOBILE_COOKIE not in client.cookies:
        client.cookies.set(SIGNIN_MOBILE_COOKIE, mobile)
    second = await client.post("/signin/code", data=form, follow_redirects=False)
    assert second.status_code == 303 and second.headers["location"] == "/lookup", second.text
    assert CITIZEN_COOKIE in second.headers.get("set-cookie", "")


async def test_a_second_tap_after_the_sign_in_goes_on_where_the_first_was_going(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The first tap signed in and its cookie was kept, its page still loading; the second tap
    sent the old form, whose token was bound to the visit, not the sign-in: "form expired", and
    the slot the citizen had picked (in ``next``) was lost in a rush."""
    mobile = "09120002626"
    page = await client.get("/signin")
    sent = await client.post("/signin", data={"_csrf": form_token(page), "mobile": mobile}, follow_redirects=False)
    code_page = await client.get(sent.headers["location"])
    await deliver()
    chosen = "/book?office=010002&service=101"
    form = {"_csrf": form_token(code_page), "mobile": mobile, "next": chosen, "code": last_code(redis_sync, mobile)}
    first = await client.post("/signin/code", data=form, follow_redirects=False)
    assert first.status_code == 303 and CITIZEN_COOKIE in client.cookies, first.text
    second = await client.post("/signin/code", data=form, follow_redirects=False)
    assert second.status_code == 303 and second.headers["location"] == chosen, second.text
    # Signed in as another number, the form is checked as any other: no way past the token.
    other = {**form, "mobile": "09120002727", "_csrf": "forged"}
    assert (await client.post("/signin/code", data=other, follow_redirects=False)).status_code == 403


async def test_the_sign_in_pages_keep_the_number_out_of_every_address(
    client: Client, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The code step's address had the full number (/signin/code?mobile=0912...): kept in the
    browser's history on an office's shared computer, in a proxy's logs, in a bookmark. The
    number now rides in a short-lived cookie, gone once the citizen is signed in or starts over."""
    mobile = "09120002424"
    page = await client.get("/signin")
    sent = await client.post(
        "/signin", data={"_csrf": form_token(page), "mobile": mobile, "next": "/lookup"}, follow_redirects=False
    )
    assert sent.status_code == 303, sent.text
    assert "9120002424" not in sent.headers["location"] and "mobile" not in sent.headers["location"]
    assert "Path=/signin;" in sent.headers["set-cookie"]  # sent back to the sign-in pages alone
    code_page = await client.get(sent.headers["location"])
    assert f'type="hidden" name="mobile" value="{mobile}"' in code_page.text
    assert "9120002424" not in "".join(re.findall(r'href="([^"]*)"', code_page.text))  # nor in its links
    texted = await client.get("/signin/code?texted=1&next=/lookup")  # the link to the texted-code form
    assert f'type="hidden" name="mobile" value="{mobile}"' in texted.text
    await deliver()
    signed_in = await client.post(
        "/signin/code",
        data={
            "_csrf": form_token(code_page),
            "mobile": mobile,
            "next": "/lookup",
            "code": last_code(redis_sync, mobile),
        },
        follow_redirects=False,
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/lookup", signed_in.text
    assert SIGNIN_MOBILE_COOKIE not in client.cookies  # the number is not left behind
    assert (await client.get("/signin/code?next=/", follow_redirects=False)).status_code == 303  # back to /signin

    # Asked for a code and walked away: the next citizen to open the sign-in page starts over,
    # and the texted-code form asks for their number rather than offer the last one.
    await client.post("/signin", data={"_csrf": form_token(await client.get("/signin")), "mobile": mobile})
    assert SIGNIN_MOBILE_COOKIE in client.cookies
    await client.get("/signin")
    assert SIGNIN_MOBILE_COOKIE not in client.cookies
    # Nor does a mistyped number leave the last one offered.
    await client.post("/signin", data={"_csrf": form_token(await client.get("/signin")), "mobile": mobile})
    await client.post("/signin", data={"_csrf": form_token(await client.get("/signin/code")), "mobile": "0912"})
    assert SIGNIN_MOBILE_COOKIE not in client.cookies
    fresh = await client.get("/signin/code?texted=1&next=/")
    assert 'type="hidden" name="mobile"' not in fresh.text and 'name="mobile"' in fresh.text


async def test_the_sign_in_page_takes_a_code_asked_for_by_text(
    client: Client, world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """The page that refuses more codes for a number links to where a code asked for by
    texting ورود is typed, with the number given, and that form takes its ten letters and
    digits (the six-digit form would cut them short)."""
    mobile = "09120002323"
    settings = world.container.settings
    for _ in range(int(settings.otp_per_mobile_day.split("/")[0])):
        await world.container.limiter.hit("otp-mobile-day", mobile, settings.otp_per_mobile_day)
    page = await client.get("/signin")
    refused = await client.post("/signin", data={"_csrf": form_token(page), "mobile": mobile, "next": "/"})
    assert refused.status_code == 429 and "«ورود»" in refused.text
    link = re.search(r'href="(/signin/code\?texted=1[^"]*)"', refused.text)
    assert link and "mobile=" not in link[1], refused.text  # kept in a cookie, not in the address
    form = await client.get(link[1].replace("&amp;", "&"))
    assert 'maxlength="20"' in form.text and 'inputmode="numeric"' not in form.text
    assert f'type="hidden" name="mobile" value="{mobile}"' in form.text

    code = await texted_code(world, redis_sync, deliver, mobile)
    fields = {"_csrf": form_token(form), "mobile": mobile, "next": "/", "texted": "1"}
    wrong = await client.post("/signin/code", data={**fields, "code": "ZZZZZ-ZZZZZ"})
    assert wrong.status_code == 400 and 'maxlength="20"' in wrong.text  # the texted form again
    signed_in = await client.post("/signin/code", data={**fields, "code": code.lower()}, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text
    assert CITIZEN_COOKIE in signed_in.headers["set-cookie"]

    # Texted before coming here at all: the sign-in page links to the form, which asks for the number too.
    assert "/signin/code?texted=1" in (await client.get("/signin")).text
    bare = await client.get("/signin/code?texted=1&next=/")
    assert bare.status_code == 200 and 'name="mobile"' in bare.text and 'type="hidden" name="mobile"' not in bare.text
    code = await texted_code(world, redis_sync, deliver, mobile)
    fields = {**fields, "_csrf": form_token(bare)}  # the form's token is bound to the session signed in above
    typo = await client.post("/signin/code", data={**fields, "ask_mobile": "1", "mobile": "0912", "code": code})
    assert typo.status_code == 422 and 'name="mobile"' in typo.text  # asked again, the code kept
    # A whole number, one digit wrong: it had gone hidden into every later try, each "expired".
    other = "09120002324"
    wrong_number = await client.post("/signin/code", data={**fields, "ask_mobile": "1", "mobile": other, "code": code})
    assert wrong_number.status_code == 400
    assert 'type="hidden" name="mobile"' not in wrong_number.text and f'value="{other}"' in wrong_number.text
    assert "شماره را بررسی کنید" in wrong_number.text
    again = await client.post("/signin/code", data={**fields, "ask_mobile": "1", "code": code}, follow_redirects=False)
    assert again.status_code == 303, again.text
