"""The SMS channel end to end: real twilio client -> local Twilio stand-in, signed webhooks,
RQ jobs run by a real (in-thread) RQ worker, real Redis, real record."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from sqlalchemy import func, select, update
from sqlalchemy import text as sql
from twilio.request_validator import RequestValidator

from app.booking.models import ACTIVE_STATUSES, Booking, BookingStatus, Channel
from app.capacity.models import CapacityOverride
from app.capacity.plan import DayRule, encode_rules
from app.clock import Clock
from app.offices.models import Office
from app.pages.render import VISIT_COOKIE
from app.settings import Settings, parse_limit
from app.sms.models import CitizenPhone, InboundSms, SmsMessage, SmsStatus
from app.sms.service import SEND_SMS
from loadtests.twilio_standin import TwilioStandIn
from tests.conftest import Deliver, World, booking_body, fails_once
from tests.integration.test_console import staff_of

Client = AsyncTestClient[Litestar]
TOKEN = "twilio-test-auth-token"
PUBLIC = "https://nobat.example"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    server = TwilioStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, standin: TwilioStandIn) -> Settings:
    return settings.with_(
        sms_backend="twilio",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token=TOKEN,
        twilio_from="+15005550006",
        twilio_api_base_url=standin.base_url,
        public_url=PUBLIC,
    )


def signed(path: str, params: dict[str, str]) -> dict[str, str]:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)
    return {"X-Twilio-Signature": signature}


async def text(client: Client, body: str, *, sender: str = "+989121234567", sid: str = "SM1") -> Any:
    params = {"MessageSid": sid, "From": sender, "To": "+15005550006", "Body": body}
    return await client.post("/sms/twilio/inbound", data=params, headers=signed("/sms/twilio/inbound", params))


async def count(world: World, model: Any, *where: Any) -> int:
    async with world.container.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_a_forged_webhook_is_refused_before_its_signature_is_worked_out_and_counts_against_its_address(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhooks are not limited per address (one Twilio address carries many citizens),
    and a forged form of thousands of empty fields took tens of ms of the event loop to
    check. Such a form is refused unchecked (too big: 413), and every refusal counts against
    its sender's address, as an API request does."""
    container = client.app.state.container
    monkeypatch.setattr(container, "settings", container.settings.with_(api_per_address="3/3600"))
    checked: list[str] = []
    validate = RequestValidator.validate

    def counted(self: RequestValidator, url: str, params: Any, signature: str) -> bool:
        checked.append(url)
        return validate(self, url, params, signature)

    monkeypatch.setattr(RequestValidator, "validate", counted)
    many = {f"k{i}": "" for i in range(200)}
    wide = await client.post("/sms/twilio/inbound", data=many, headers={"X-Twilio-Signature": "x"})
    assert wide.status_code == 403 and checked == []  # refused before the signature's work
    big = await client.post("/sms/twilio/inbound", data={"Body": "x" * 40_000}, headers={"X-Twilio-Signature": "x"})
    assert big.status_code == 413, big.text
    forged = [
        (
            await client.post("/sms/twilio/status", data={"MessageSid": "SM9"}, headers={"X-Twilio-Signature": "x"})
        ).status_code
        for _ in range(3)
    ]
    assert forged == [403, 403, 429]  # with the first refusal above, past three an hour
    assert (await text(client, "HELP", sid="SMok")).status_code == 200  # Twilio's own: signed, never limited


async def test_confirmation_goes_out_through_twilio(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office()
    booked = await client.post(
        "/api/v1/bookings",
        json=booking_body(office, world.national_id(), world.tomorrow()),
        headers=world.token("09121112222"),
    )
    code = booked.json()["tracking_code"]
    assert standin.messages == []  # nothing is sent from the request itself
    await deliver()
    [sent] = standin.wait_for(1)
    assert sent["to"] == "+989121112222" and code in sent["body"]
    assert sent["status_callback"] == PUBLIC + "/sms/twilio/status#rp=ct,5xx&rc=3"  # Twilio retries a 5xx
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage).where(SmsMessage.kind == "booking_confirmed"))
        assert message is not None and message.status == SmsStatus.SENT and message.provider_sid == sent["sid"]

    params = {"MessageSid": sent["sid"], "MessageStatus": "delivered"}
    callback = await client.post("/sms/twilio/status", data=params, headers=signed("/sms/twilio/status", params))
    assert callback.status_code == 204
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage).where(SmsMessage.provider_sid == sent["sid"]))
        assert message is not None and message.status == SmsStatus.DELIVERED


async def outbox_message(world: World, body: str, kind: str = "test", **fields: Any) -> SmsMessage:
    """A message as the messenger makes it (to 09121234567), with ``fields`` changed, committed."""
    async with world.container.sessions() as session:
        made = world.container.messenger.message(to=fields.pop("to", "09121234567"), body=body, kind=kind)
        assert made is not None
        for name, value in fields.items():
            setattr(made, name, value)
        session.add(made)
        await session.commit()
    return made


async def test_a_reminder_is_not_sent_once_it_is_untrue(
    world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the evening's backlog, or a try late in its backoff, the evening's reminder
    ("tomorrow at 9") went out after midnight, when tomorrow was today, and the hour's ("in
    an hour") after the slot began. Past that, it is not sent."""
    from app.booking.reminders import EVENING_REMINDER, HOUR_REMINDER
    from app.sms.tasks import sweep

    tz = world.container.clock.tz
    now = dt.datetime.combine(world.container.clock.today(), dt.time(21, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: now)
    ages = {
        "evening last night": (EVENING_REMINDER, now - dt.timedelta(hours=21, minutes=10)),  # 23:50 yesterday
        "evening tonight": (EVENING_REMINDER, now - dt.timedelta(minutes=30)),
        "hour past its slot": (HOUR_REMINDER, now - dt.timedelta(minutes=50)),
        "hour still ahead": (HOUR_REMINDER, now - dt.timedelta(minutes=10)),
    }
    for name, (kind, made) in ages.items():
        await outbox_message(world, name, kind, id=name.replace(" ", "-"), created_at=made)
    assert await asyncio.to_thread(sweep) == 4
    await deliver()
    assert sorted(m["body"] for m in standin.wait_for(2)) == ["evening tonight", "hour still ahead"]
    async with world.container.sessions() as session:
        for name in ("evening last night", "hour past its slot"):
            row = await session.get(SmsMessage, name.replace(" ", "-"))
            assert row is not None and row.status == SmsStatus.FAILED and "expired" in (row.error or ""), name


async def test_a_late_sent_callback_leaves_a_failed_message_failed(client: Client, world: World) -> None:
    """Twilio's callbacks may arrive out of order: "undelivered" is final, a "sent" after it
    is old news."""
    made = await outbox_message(world, "پیام", status=SmsStatus.SENT, provider_sid="SMlate", attempts=1)
    for reported in ("undelivered", "sent"):
        params = {"MessageSid": "SMlate", "MessageStatus": reported}
        answer = await client.post("/sms/twilio/status", data=params, headers=signed("/sms/twilio/status", params))
        assert answer.status_code == 204
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and row.status == SmsStatus.FAILED


async def report_status(client: Client, sid: str, status: str, **extra: str) -> Any:
    params = {"MessageSid": sid, "MessageStatus": status, **extra}
    return await client.post("/sms/twilio/status", data=params, headers=signed("/sms/twilio/status", params))


async def test_a_status_callback_before_the_worker_writes_the_id_down_is_not_lost(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio may call back "sent" and "delivered" before its answer to the send reaches the
    worker (a slow answer, a busy worker). It does not call back again: had the callback
    found no message with the id and been dropped, the message would stay "sent" for good."""
    from app.sms.backends import OutboundSms, TwilioBackend

    loop = asyncio.get_running_loop()
    real_send = TwilioBackend.send
    answers: list[int] = []

    def send_and_report_first(self: TwilioBackend, message: OutboundSms) -> str:
        sid = real_send(self, message)
        for status in ("sent", "delivered"):  # from the worker's thread, to the app on the test's loop
            answers.append(
                asyncio.run_coroutine_threadsafe(report_status(client, sid, status), loop).result(30).status_code
            )
        return sid

    monkeypatch.setattr(TwilioBackend, "send", send_and_report_first)
    made = await outbox_message(world, "پیام")
    world.container.jobs.enqueue(world.container.jobs.sms, SEND_SMS, made.id, job_id="sms-early-callback")
    await deliver()
    [sent] = standin.wait_for(1)
    assert answers == [204, 204]
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and (row.status, row.provider_sid) == (SmsStatus.DELIVERED, sent["sid"])


async def test_a_status_callback_before_the_id_with_redis_away_is_answered_for_twilio_to_retry(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis away, a callback that came before the worker wrote the message's id down had
    nowhere to wait: 503. The callback URL asks Twilio to retry a 5xx; by its retry the id is
    written, and the status lands without Redis."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    made = await outbox_message(world, "پیام", status=SmsStatus.SENDING, attempts=1)

    def away(*_: object, **__: object) -> None:
        raise RedisConnectionError("Redis away")

    monkeypatch.setattr(client.app.state.container.redis, "pipeline", away)
    early = await report_status(client, "SMearly", "delivered")
    assert early.status_code == 503, early.text
    async with world.container.sessions() as session:  # the worker writes the id down
        row = await session.get(SmsMessage, made.id)
        assert row is not None
        row.provider_sid, row.status = "SMearly", SmsStatus.SENT
        await session.commit()
    retried = await report_status(client, "SMearly", "delivered")
    assert retried.status_code == 204, retried.text
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and row.status == SmsStatus.DELIVERED


async def test_a_status_callback_before_a_retry_finds_the_message_at_twilio_is_not_lost(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, settings: Settings
) -> None:
    """A try that timed out after Twilio took the message: Twilio's callback comes while no
    message of ours has its id. The retry finds the message at Twilio, and what the callback
    said with it."""
    from app.sms.backends import OutboundSms, TwilioBackend

    made = await outbox_message(world, "کد ورود: 135790", "otp", attempts=1, error="ReadTimeout")
    sid = await asyncio.to_thread(TwilioBackend(settings).send, OutboundSms(made.id, made.to, made.body))
    assert (await report_status(client, sid, "undelivered", ErrorCode="30003")).status_code == 204
    world.container.jobs.enqueue(world.container.jobs.codes, SEND_SMS, made.id, job_id="sms-retry-after-callback")
    await deliver()
    assert len(standin.messages) == 1
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and (row.status, row.provider_sid, row.error) == (SmsStatus.FAILED, sid, "30003")


async def test_a_new_phones_first_two_messages_at_once_are_both_answered(world: World, standin: TwilioStandIn) -> None:
    """Both name an ID, and both register it as the phone's first: one row, no 500."""
    office = await world.office()
    channel = world.container.sms_channel

    async def text_in(sid: str) -> bool:
        async with world.container.sessions() as session:
            body = f"BOOK {office} 101 {world.national_id()}"
            return await channel.receive(session, provider_sid=sid, sender="+989121112224", text=body)

    done = await asyncio.gather(text_in("SMfirst1"), text_in("SMfirst2"), return_exceptions=True)
    assert not [o for o in done if isinstance(o, BaseException)], done
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(CitizenPhone)) == 1


async def test_unsigned_or_wrongly_signed_requests_do_nothing(client: Client, world: World) -> None:
    office = await world.office()
    body = f"BOOK {office} 101 0499370899"
    params = {"MessageSid": "SM2", "From": "+989121234567", "To": "+15005550006", "Body": body}
    unsigned = await client.post("/sms/twilio/inbound", data=params)
    assert unsigned.status_code == 403 and unsigned.json()["code"] == "bad_signature"
    forged = await client.post(
        "/sms/twilio/inbound", data={**params, "Body": "CANCEL X"}, headers=signed("/sms/twilio/inbound", params)
    )
    assert forged.status_code == 403
    status = await client.post("/sms/twilio/status", data={"MessageSid": "SM9", "MessageStatus": "failed"})
    assert status.status_code == 403
    assert await count(world, InboundSms) == 0
    assert await count(world, Booking) == 0


async def test_booking_by_sms_in_persian_and_a_repeated_delivery_counts_once(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office()
    fa = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
    day = world.tomorrow().isoformat()
    body = f"نوبت {office.translate(fa)} ۱۰۱ {day.translate(fa)} {'0499370899'.translate(fa)}"
    first = await text(client, body, sid="SMrepeat")
    again = await text(client, body, sid="SMrepeat")
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"].startswith("text/xml")
    assert await count(world, Booking, Booking.status == BookingStatus.BOOKED) == 1
    assert await count(world, InboundSms) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert "کد رهگیری" in reply["body"] and "ساعت ۸:۰۰" in reply["body"]
    # Whose booking it is, masked: the phone's next one, with no ID, goes under this one.
    assert "کد ملی: ******0899" in reply["body"]

    # The phone now has a national ID on file: the next booking needs none.
    standin.clear()
    await text(client, f"book {office} 102", sid="SMsecond")
    await deliver()
    assert await count(world, Booking, Booking.service_code == "102") == 1, [m["body"] for m in standin.messages]


async def test_an_id_given_once_does_not_replace_the_phones_own(client: Client, world: World) -> None:
    """A parent registered on the phone books once for a child: the next booking without an
    ID is the parent's again (it had become the child's, with nothing in the SMS to show it)."""
    office = await world.office()
    parent, child = world.national_id(), world.national_id()
    await text(client, f"ثبت {parent}", sid="SMregister")
    await text(client, f"نوبت {office} 101 {child}", sid="SMchild")
    await text(client, f"نوبت {office} 102", sid="SMparent")
    async with world.container.sessions() as session:
        booked = dict((await session.execute(select(Booking.service_code, Booking.national_id))).all())
    assert booked == {"101": child, "102": parent}


async def test_a_phone_that_answers_every_answer_is_answered_within_its_limit(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A phone with an auto-reply app answers our help text, and we it, for ever: four paid
    segments a turn, ahead of every confirmation in the queue. Past
    NOBAT_SMS_REPLIES_PER_MOBILE its messages are recorded, not answered; another phone is."""
    monkeypatch.setattr(client.app.state.container.sms_channel, "replies_per_mobile", "3/3600")
    for n in range(5):
        assert (await text(client, "پاسخ خودکار: در دسترس نیستم", sid=f"SMloop{n}")).status_code == 200
    assert (await text(client, "سلام", sender="+989127654321", sid="SMother")).status_code == 200
    await deliver()
    replies = standin.wait_for(4)
    assert sorted(m["to"] for m in replies) == ["+989121234567"] * 3 + ["+989127654321"]
    assert await count(world, InboundSms, InboundSms.answered_at.is_not(None)) == 6


async def test_status_cancel_offices_register_and_help(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, morning: dt.datetime
) -> None:
    """(In the morning: today's offices are listed while today has seats ahead.)"""
    office = await world.office(lat=35.70, lon=51.40)
    await world.rebuild()
    await text(client, "ثبت 0499370899", sid="SMreg")
    await text(client, f"BOOK {office} 101 فردا", sid="SMbook")
    async with world.container.sessions() as session:
        code = await session.scalar(select(Booking.tracking_code))
    assert code
    await text(client, f"وضعیت {code.lower()}", sid="SMstatus")
    await text(client, "دفاتر تهران ۱۰۱", sid="SMoffices")
    await text(client, f"CANCEL {code[:5]}-{code[5:]}", sid="SMcancel")
    await text(client, "سلام", sid="SMhello")
    await text(client, "لغو", sid="SMbad")
    await deliver()
    bodies = [m["body"] for m in standin.wait_for(7)]
    assert any("برای این شماره ثبت شد" in b for b in bodies)
    assert any(code in b and "ثبت‌شده" in b for b in bodies)
    assert any(office in b and "خلوت" in b for b in bodies)
    assert any(code in b and "لغو شد" in b for b in bodies)
    assert any(b.startswith("راهنمای نوبت پیامکی") for b in bodies)  # "سلام"
    assert any(b.startswith("کد رهگیری را بنویسید.\nنمونه: لغو") for b in bodies)  # "لغو" alone
    async with world.container.sessions() as session:
        assert await session.scalar(select(Booking.status)) == BookingStatus.CANCELLED


async def test_offices_asked_in_the_evening_are_tomorrows(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 21:00 today's slots have all begun: every office had been answered "busy, none
    today". The reply is tomorrow's, with each office's first free time."""
    tz = Clock("Asia/Tehran").tz
    evening = dt.datetime.combine(dt.datetime.now(tz).date(), dt.time(21, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: evening)
    office = await world.office(lat=35.70, lon=51.40)
    await world.rebuild()
    await text(client, "دفاتر تهران ۱۰۱", sid="SMevening")
    await deliver()
    [reply] = [m["body"] for m in standin.wait_for(1)]
    assert reply.startswith("کم‌ازدحام‌ترین دفاتر فردا:"), reply
    assert f"{office}: " in reply and "خلوت" in reply and "ندارد" not in reply, reply


async def test_offices_lists_the_citys_own_before_a_quieter_one_in_another_place(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, morning: dt.datetime
) -> None:
    """«دفاتر تهران» is the city's offices (issue 5): a town's search weighs the places around
    it too, and a quiet office 15 km off, in another town, came first, its place unnamed."""
    from sqlalchemy import insert

    from app.capacity.plan import DayRule
    from app.offices.models import City, CityClass

    own = await world.office(
        lat=35.70, lon=51.40, rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)]
    )
    other = await world.office(lat=35.83, lon=51.40)
    async with world.container.sessions() as session:
        await session.execute(
            insert(City),
            [{"id": 2, "province_id": 1, "name_fa": "کرج", "name_en": "Karaj", "city_class": CityClass.METROPOLIS,
              "population": 1, "lat": 35.83, "lon": 51.40}],
        )  # fmt: skip
        await session.execute(update(Office).where(Office.code == other).values(city_id=2))
        await session.commit()
    await world.rebuild()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(own, world.national_id(), morning.date()), headers=world.token()
    )
    assert booked.status_code == 201, booked.text  # half its day taken: busier than the other
    await text(client, "دفاتر تهران ۱۰۱", sid="SMcity")
    await deliver()
    [reply] = [m["body"] for m in standin.wait_for(2) if m["body"].startswith("کم‌ازدحام‌ترین")]
    first, second = reply.splitlines()[1:3]
    assert first.startswith(f"{own}: ") and "(" not in first, reply
    assert second.startswith(f"{other}: ") and "(کرج)" in second, reply


async def test_offices_that_take_nobody_are_not_called_busy(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 21:00 with tomorrow closed, the reply is today's, whose slots have all begun: each
    office had been called busy («شلوغ»), its load read as full."""
    tz = Clock("Asia/Tehran").tz
    evening = dt.datetime.combine(dt.datetime.now(tz).date(), dt.time(21, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: evening)
    office = await world.office(lat=35.70, lon=51.40)
    async with world.container.sessions() as session:
        office_id = await session.scalar(select(Office.id).where(Office.code == office))
        tomorrow = evening.date() + dt.timedelta(days=1)
        session.add(CapacityOverride(office_id=office_id, date=tomorrow, rules=encode_rules([]), reason="تعطیل"))
        await session.commit()
    await world.rebuild()
    await text(client, "دفاتر تهران ۱۰۱", sid="SMclosed")
    await deliver()
    [reply] = [m["body"] for m in standin.wait_for(1)]
    assert f"{office}: " in reply and "ندارد" in reply and "شلوغ" not in reply, reply


async def test_a_refused_numbers_failure_is_kept_without_the_number(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office()
    standin.fail_next(1, status=400)
    await client.post(
        "/api/v1/bookings",
        json=booking_body(office, world.national_id(), world.tomorrow()),
        headers=world.token("09121234567"),
    )
    await deliver()
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None and message.error is not None
        assert "is not a valid phone number" in message.error and "1234567" not in message.error


async def test_a_failed_send_is_retried_and_sent_once(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office()
    standin.fail_next(1)
    await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    await deliver()
    assert standin.messages == []
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None and message.status == SmsStatus.QUEUED and message.attempts == 1
        assert message.error and "500" in message.error
    await deliver(scheduled_until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    assert len(standin.wait_for(1)) == 1
    await deliver(scheduled_until=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    # Reminders aside, the confirmation went out exactly once.
    assert sum("نوبت شما ثبت شد" in m["body"] for m in standin.messages) == 1


async def test_a_sign_in_code_that_failed_is_retried_ahead_of_other_messages(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    standin.fail_next(1)
    answer = await client.post("/api/v1/auth/otp", json={"mobile": "09121110777"})
    assert answer.status_code == 202, answer.text
    await deliver()
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage).where(SmsMessage.kind == "otp"))
    assert message is not None and message.status == SmsStatus.QUEUED and message.attempts == 1
    jobs = world.container.jobs
    assert f"sms-{message.id}-try2" in jobs.codes.scheduled_job_registry.get_job_ids()
    assert f"sms-{message.id}-try2" not in jobs.sms.scheduled_job_registry.get_job_ids()


async def test_a_send_that_died_midway_is_not_sent_again(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office()
    await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    await deliver()
    assert len(standin.wait_for(1)) == 1
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None
        # As if the worker was killed after Twilio took it but before the row said so, longer
        # ago than the sweep waits for a try in flight.
        quiet = dt.timedelta(seconds=world.container.settings.sms_stuck_seconds + 1)
        message.status, message.provider_sid = SmsStatus.SENDING, None
        message.updated_at = world.container.clock.now() - quiet
        await session.commit()
        world.container.jobs.enqueue(world.container.jobs.sms, "app.sms.tasks.send_sms", message.id, job_id="again")
    await deliver()
    assert len(standin.messages) == 1
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None and message.status == SmsStatus.SENT and message.provider_sid


async def test_reminders_fire_once_each_and_skip_a_cancelled_booking(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.booking.tasks import send_reminders
    from app.clock import Clock

    office = await world.office()
    day = world.container.clock.today() + dt.timedelta(days=3)
    kept = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token("09121110000")
    )
    owner = world.token("09121119999")
    dropped = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "11:00"), headers=owner
    )
    await client.post(f"/api/v1/bookings/{dropped.json()['tracking_code']}/cancel", headers=owner)
    await deliver()
    standin.clear()

    tz = world.container.clock.tz
    sent: list[int] = []
    for at in (
        dt.datetime.combine(day - dt.timedelta(days=1), dt.time(19, 59), tzinfo=tz),  # not yet evening
        dt.datetime.combine(day - dt.timedelta(days=1), dt.time(20, 0), tzinfo=tz),  # the evening before
        dt.datetime.combine(day - dt.timedelta(days=1), dt.time(20, 1), tzinfo=tz),  # a minute later: nothing new
        dt.datetime.combine(day, dt.time(8, 59), tzinfo=tz),  # 61 minutes before: not yet
        dt.datetime.combine(day, dt.time(9, 0), tzinfo=tz),  # an hour before
        dt.datetime.combine(day, dt.time(9, 10), tzinfo=tz),  # still in the window: already reminded
    ):
        monkeypatch.setattr(Clock, "now", lambda self, at=at: at)
        sent.append(await asyncio.to_thread(send_reminders))
        await deliver()  # sent at that time: the evening's is not sent once tomorrow is today
    assert sent == [0, 1, 0, 0, 1, 0]
    reminders = [m for m in standin.messages if "یادآوری" in m["body"]]
    assert len(reminders) == 2
    assert all(kept.json()["tracking_code"] in m["body"] and m["to"] == "+989121110000" for m in reminders)
    assert "فردا" in reminders[0]["body"] and "یک ساعت دیگر" in reminders[1]["body"]


async def test_an_evening_run_that_reaches_midnight_queues_no_tomorrow(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run begun at 23:59:50 queued its last pages after midnight: their messages, made on
    the booking's own day, lived until the next midnight and said "tomorrow"."""
    from app.booking.reminders import send_due

    office = await world.office()
    day = world.container.clock.today() + dt.timedelta(days=3)
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    tz = world.container.clock.tz
    began = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(23, 59, 50), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: began + dt.timedelta(seconds=20))  # past midnight
    async with world.container.sessions() as session:
        sent = await send_due(session=session, messenger=world.container.messenger, now=began, evening_hour=20)
    assert sent == 0
    async with world.container.sessions() as session:
        assert await session.scalar(select(Booking.reminded_evening_at).where(Booking.date == day)) is None


async def test_a_booking_moved_while_the_evening_run_reads_it_is_reminded_of_its_new_time(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move (a closure at 20:05) commits between the run's read of a page and its marking:
    the reminder had told the old time after the move's own message, and marked the booking,
    so its new time was never reminded. It is left to the next run, which has the new time."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.booking import reminders

    office = await world.office()
    day = world.container.clock.today() + dt.timedelta(days=3)
    made = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert made.status_code == 201, made.text
    evening = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(20, 5), tzinfo=world.container.clock.tz)
    monkeypatch.setattr(Clock, "now", lambda self: evening)  # the run's clock, as the job's is
    real_scalars = AsyncSession.scalars
    moved: list[int] = []

    async def scalars(self: AsyncSession, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if not moved and str(statement).startswith("UPDATE bookings"):
            moved.append(1)
            async with world.container.sessions() as mover:  # the move, committed in between
                await mover.execute(update(Booking).values(slot_time="11:30", reminded_evening_at=None))
                await mover.commit()
        return await real_scalars(self, statement, *args, **kwargs)

    monkeypatch.setattr(AsyncSession, "scalars", scalars)
    jobs = world.container

    async def run() -> list[str]:
        async with jobs.sessions() as session:
            await reminders.send_due(session=session, messenger=jobs.messenger, now=evening, evening_hour=20)
        async with jobs.sessions() as session:
            return list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "reminder_evening")))

    assert await run() == [] and moved
    [reminder] = await run()
    assert "۱۱:۳۰" in reminder and "۱۰:۰۰" not in reminder, reminder


async def test_no_hour_reminder_for_a_booking_made_within_the_hour(
    client: Client, world: World, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.booking.tasks import send_reminders
    from app.clock import Clock

    office = await world.office()
    tz = world.container.clock.tz
    day = world.container.clock.today() + dt.timedelta(days=1)
    booked_at = dt.datetime.combine(day, dt.time(9, 20), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: booked_at)
    made = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, "10:00"), headers=world.token()
    )
    assert made.status_code == 201, made.text
    monkeypatch.setattr(Clock, "now", lambda self: booked_at + dt.timedelta(minutes=1))
    assert await asyncio.to_thread(send_reminders) == 0  # 39 minutes before, booked 40 minutes before


async def test_close_day_marks_no_shows_and_expires_the_waitlist(world: World, deliver: Deliver) -> None:
    from app.booking.tasks import close_day

    office = await world.office()
    yesterday = world.container.clock.today() - dt.timedelta(days=1)
    async with world.container.sessions() as session:
        office_id = 1
        for index, status in enumerate(
            (BookingStatus.BOOKED, BookingStatus.SERVED, BookingStatus.WAITLISTED, BookingStatus.CHECKED_IN)
        ):
            session.add(
                Booking(
                    tracking_code=f"OLD{index:07d}",
                    office_id=office_id,
                    service_code="101",
                    national_id=world.national_id(),
                    mobile="09120000000",
                    date=yesterday,
                    slot_time="10:00",
                    pool="*",
                    status=status,
                )
            )
        await session.commit()
    result = await asyncio.to_thread(close_day)
    assert result["no_shows"] == 1 and result["waitlist_expired"] == 1
    assert result["served"] == 1  # checked in yesterday, never marked served: the citizen came
    async with world.container.sessions() as session:
        statuses = [s.value for s in await session.scalars(select(Booking.status).order_by(Booking.tracking_code))]
    assert statuses == ["no_show", "served", "cancelled", "served"]
    again = await asyncio.to_thread(close_day)
    assert again["no_shows"] == again["served"] == again["waitlist_expired"] == 0 and office


async def test_a_refused_sms_booking_is_answered_not_dropped(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office(services=("101",))
    refused = await text(client, f"BOOK {office} 102 0499370899", sid="SMrefused")
    assert refused.status_code == 200
    assert await count(world, InboundSms) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert "این دفتر این خدمت را ارائه نمی‌دهد" in reply["body"]


async def test_a_booking_message_with_no_date_and_no_free_day_says_so(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """Every day of the horizon tried and full: the answer was the last day's refusal ("full
    that day", or "closed that day" on a Friday), which named no day."""
    office = await world.office(seats=0)
    answered = await text(client, f"BOOK {office} 101 0499370899", sid="SMnoday")
    assert answered.status_code == 200
    await deliver()
    [reply] = standin.wait_for(1)
    assert "نوبت خالی برای این خدمت ندارد" in reply["body"] and "دفاتر" in reply["body"], reply["body"]
    assert await count(world, Booking) == 0


async def test_a_message_with_control_characters_is_carried_out_not_dropped(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """PostgreSQL refuses a NUL in text: the message, stored first, was answered 422, which
    Twilio does not retry, and nobody was answered."""
    office = await world.office()
    texted = await text(client, f"BOOK {office}\x00 101\x07 {world.tomorrow().isoformat()} 0499370899", sid="SMnul")
    assert texted.status_code == 200, texted.text
    assert await count(world, Booking, Booking.status == BookingStatus.BOOKED) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert "کد رهگیری" in reply["body"]


async def test_a_message_that_failed_midway_is_carried_out_when_twilio_retries(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisDown

    from app.booking.service import BookingService

    office = await world.office()
    real_book = BookingService.book
    calls: list[int] = []

    async def book_once_redis_is_back(self: BookingService, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RedisDown("the capacity Redis is down")
        return await real_book(self, **kwargs)

    monkeypatch.setattr(BookingService, "book", book_once_redis_is_back)
    body = f"BOOK {office} 101 {world.tomorrow().isoformat()} 0499370899"
    failed = await text(client, body, sid="SMflaky")
    assert failed.status_code >= 500  # Twilio delivers it again
    assert await count(world, InboundSms, InboundSms.answered_at.is_(None)) == 1
    retried = await text(client, body, sid="SMflaky")
    assert retried.status_code == 200
    assert await count(world, Booking, Booking.status == BookingStatus.BOOKED) == 1
    assert await count(world, InboundSms, InboundSms.answered_at.is_not(None)) == 1
    # Answered now: a further delivery of the same message does nothing.
    again = await text(client, body, sid="SMflaky")
    assert again.status_code == 200 and len(calls) == 2
    await deliver()
    [reply] = standin.wait_for(1)
    assert "کد رهگیری" in reply["body"]
    assert await count(world, Booking) == 1 and await count(world, InboundSms) == 1


async def test_a_message_that_meets_the_recount_is_carried_out_after_it(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The night's recount (or a failover's) refuses a booking for a moment: answered "try
    again later", the citizen had to send it again, and the retries were never made."""
    from app.booking.service import BookingService
    from app.capacity.errors import CapacityRebuilding

    office = await world.office()
    fails_once(monkeypatch, BookingService, "book", CapacityRebuilding())
    body = f"BOOK {office} 101 {world.tomorrow().isoformat()} 0499370899"
    refused = await text(client, body, sid="SMrecount")
    assert refused.status_code >= 500  # delivered again by the provider
    await deliver()
    assert standin.messages == []  # no "try again later"
    assert await count(world, InboundSms, InboundSms.answered_at.is_(None)) == 1
    async with world.container.sessions() as session:  # the minute's job, the retries gone by
        assert await world.container.sms_channel.carry_out_abandoned(session) == 1
    assert await count(world, Booking, Booking.status == BookingStatus.BOOKED) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert "کد رهگیری" in reply["body"]


@pytest.mark.parametrize("how", ["failed", "died"])
async def test_a_message_no_retry_carried_out_is_carried_out_by_the_minutes_job(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Twilio retries a delivery for 15 s at most: one that failed through them (the record
    away), or whose instance was killed mid-message (its claim held for a minute), was lost
    for good, the citizen's booking neither made nor refused. The minute's job carries it
    out once, and a second run does nothing."""
    from redis.exceptions import ConnectionError as RedisDown

    from app.booking.service import BookingService
    from app.sms import channel as sms_channel

    office = await world.office()
    body = f"BOOK {office} 101 {world.tomorrow().isoformat()} 0499370899"
    if how == "failed":
        real_book = BookingService.book

        async def redis_down_once(self: BookingService, **kwargs: Any) -> Any:
            monkeypatch.setattr(BookingService, "book", real_book)
            raise RedisDown("the capacity Redis is down")

        monkeypatch.setattr(BookingService, "book", redis_down_once)
        assert (await text(client, body, sid="SMabandoned")).status_code >= 500  # and no retry comes
    else:  # claimed, then the instance was killed: nothing let go of it
        async with world.container.sessions() as session:
            session.add(
                InboundSms(
                    provider_sid="SMabandoned",
                    from_mobile="09121234567",
                    body=body,
                    command="Book",
                    received_at=world.container.clock.now(),
                    claimed_at=world.container.clock.now(),
                )
            )
            await session.commit()
    jobs = world.container
    if how == "died":
        async with jobs.sessions() as session:
            assert await jobs.sms_channel.carry_out_abandoned(session) == 0  # its claim still held
        monkeypatch.setattr(sms_channel, "_CLAIM_LEASE", dt.timedelta(seconds=-5))  # a minute later
    async with jobs.sessions() as session:  # a failed one was let go: at once
        assert await jobs.sms_channel.carry_out_abandoned(session) == 1
    async with jobs.sessions() as session:
        assert await jobs.sms_channel.carry_out_abandoned(session) == 0  # answered: once
    assert await count(world, Booking, Booking.status == BookingStatus.BOOKED) == 1
    assert await count(world, InboundSms, InboundSms.answered_at.is_not(None)) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert "کد رهگیری" in reply["body"]


async def unanswered(world: World, sid: str, body: str, *, received: dt.datetime, claimed: dt.datetime) -> None:
    """An inbound booking message in the record, never answered, its last claim lapsed."""
    async with world.container.sessions() as session:
        session.add(
            InboundSms(
                provider_sid=sid, from_mobile="09121234567", body=body, command="Book",
                received_at=received, claimed_at=claimed,
            )
        )  # fmt: skip
        await session.commit()


async def test_the_minutes_job_leaves_a_message_an_hour_after_it_came(world: World) -> None:
    """Each failed try claims a message again: counted from its last claim, a message failing
    every minute (a Redis node down for hours) stayed in the hour for ever, and was carried
    out whenever the node came back, its booking or sign-in code hours late. Past the hour it
    is answered once: not done, send it again (else its citizen waits for nothing)."""
    from app.sms import channel as sms_channel

    office = await world.office()
    jobs = world.container
    now = jobs.clock.now()
    body = f"BOOK {office} 101 {world.tomorrow().isoformat()} 0499370899"
    # Tried again four minutes ago, and failed.
    await unanswered(
        world, "SMlongago", body, received=now - dt.timedelta(minutes=61), claimed=now - dt.timedelta(minutes=4)
    )
    for _ in range(2):  # answered "not done, send it again", once
        async with jobs.sessions() as session:
            assert await jobs.sms_channel.carry_out_abandoned(session) == 0
    assert await count(world, Booking) == 0
    assert await count(world, InboundSms, InboundSms.answered_at.is_(None)) == 0
    async with jobs.sessions() as session:
        replies = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "sms_reply")))
    assert replies == [sms_channel._NOT_DONE]


async def test_the_minutes_job_leaves_a_message_whose_delivery_is_still_at_it(world: World) -> None:
    """A «نوبت» with no day tries day after day; under a rush's waits its delivery passed the
    one-minute claim, and the minute's job carried the message out beside it: a cancel was
    answered "cancelled" and "not active". Two minutes in, the delivery still holds it."""
    office = await world.office()
    jobs = world.container
    now = jobs.clock.now()
    body = f"BOOK {office} 101 0499370899"
    await unanswered(
        world, "SMslow", body, received=now - dt.timedelta(minutes=2), claimed=now - dt.timedelta(minutes=2)
    )
    async with jobs.sessions() as session:
        assert await jobs.sms_channel.carry_out_abandoned(session) == 0
    assert await count(world, Booking) == 0


async def test_a_message_carried_out_after_midnight_keeps_its_days(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Tomorrow" in a message that came at 23:50 is the next day, however late the minute's
    job carries it out: parsed on the day of the run after midnight, it booked a day late."""
    office = await world.office()
    jobs = world.container
    today = jobs.clock.today()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0, 10), jobs.clock.tz)
    body = f"BOOK {office} 101 فردا 0499370899"
    await unanswered(
        world, "SMlate", body, received=midnight - dt.timedelta(minutes=20), claimed=midnight - dt.timedelta(minutes=5)
    )
    monkeypatch.setattr(jobs.clock, "now", lambda: midnight)
    async with jobs.sessions() as session:
        assert await jobs.sms_channel.carry_out_abandoned(session) == 1
        booked = (await session.execute(select(Booking.date))).scalars().all()
    assert booked == [today + dt.timedelta(days=1)]


def answers_commit_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The commit of the next inbound message's answer fails (the database away a moment),
    once: the list given back has an item once it has."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.ext.asyncio import AsyncSession

    real_execute, real_commit = AsyncSession.execute, AsyncSession.commit
    failed: list[int] = []

    async def execute(self: AsyncSession, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if str(statement).startswith("UPDATE sms_inbound SET answered_at"):
            self.info["answering"] = True  # the transaction that queues the answer
        return await real_execute(self, statement, *args, **kwargs)

    async def commit_failing_once(self: AsyncSession) -> None:
        if self.info.pop("answering", False) and not failed:
            failed.append(1)
            raise OperationalError("COMMIT", {}, ConnectionResetError("the database went away"))
        await real_commit(self)

    monkeypatch.setattr(AsyncSession, "execute", execute)
    monkeypatch.setattr(AsyncSession, "commit", commit_failing_once)
    return failed


async def test_a_reply_whose_commit_failed_is_sent_when_twilio_retries(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message was carried out, the commit of its answer was not (the database away a
    moment): Twilio's retry, seconds later, answers it. (The message had stayed claimed for a
    minute, and the retry was answered with nothing.)"""
    failed = answers_commit_fails_once(monkeypatch)
    first = await text(client, "سلام", sid="SMhelpagain")
    assert first.status_code >= 500 and failed  # Twilio delivers it again
    assert await count(world, SmsMessage) == 0
    retried = await text(client, "سلام", sid="SMhelpagain")
    assert retried.status_code == 200
    assert await count(world, InboundSms, InboundSms.answered_at.is_not(None)) == 1
    await deliver()
    [reply] = standin.wait_for(1)
    assert reply["body"].startswith("راهنمای نوبت پیامکی")


async def test_a_suspended_national_id_cannot_book_by_sms_either(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    from app.booking.models import Suspension
    from app.locale import jalali_date

    office = await world.office()
    national_id = world.national_id()
    today = world.container.clock.today()
    until = today + dt.timedelta(days=7)
    async with world.container.sessions() as session:
        session.add(Suspension(national_id=national_id, until=until, reason="3 no-shows in 30 days"))
        await session.commit()
    await world.container.capacity.suspend(national_id=national_id, until=until, today=today)
    answered = await text(client, f"نوبت {office} ۱۰۱ {national_id}", sid="SMsuspended")
    assert answered.status_code == 200
    await deliver()
    [reply] = standin.wait_for(1)
    assert "غیبت‌های مکرر" in reply["body"] and jalali_date(until) in reply["body"], reply["body"]
    assert await count(world, Booking) == 0


async def test_more_tries_than_rq_retries_still_end_in_a_send(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.jobs import RETRY_INTERVALS

    attempts = len(RETRY_INTERVALS) + 3  # more than RQ's retries of a job
    monkeypatch.setenv("NOBAT_SMS_MAX_ATTEMPTS", str(attempts))
    office = await world.office()
    standin.fail_next(attempts - 1)
    await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    await deliver()
    for _ in range(attempts):
        if standin.messages:
            break
        await deliver(scheduled_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert len(standin.messages) == 1
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None and message.status == SmsStatus.SENT and message.attempts == attempts


async def test_the_last_try_failing_marks_the_message_failed(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOBAT_SMS_MAX_ATTEMPTS", "2")
    office = await world.office()
    standin.fail_next(5)
    await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    for _ in range(4):
        await deliver(scheduled_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    async with world.container.sessions() as session:
        message = await session.scalar(select(SmsMessage))
        assert message is not None and message.status == SmsStatus.FAILED and message.attempts == 2
    assert standin.messages == []


async def test_the_sweep_finds_lost_retries_and_sends_stuck_past_the_setting(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    from app.jobs import RETRY_INTERVALS
    from app.sms.tasks import sweep

    now = world.container.clock.now()
    stuck = world.container.settings.sms_stuck_seconds
    assert stuck < world.container.settings.otp_ttl_seconds  # a stuck sign-in code still arrives in time
    rows = {
        # status, attempts, last touched: whether the sweep takes it
        "retry-lost": (SmsStatus.QUEUED, 2, now - dt.timedelta(seconds=max(RETRY_INTERVALS) + stuck + 60), True),
        "retry-due": (SmsStatus.QUEUED, 2, now - dt.timedelta(seconds=60), False),
        "stuck": (SmsStatus.SENDING, 1, now - dt.timedelta(seconds=stuck + 5), True),
        "in-flight": (SmsStatus.SENDING, 1, now - dt.timedelta(seconds=5), False),
        # Made as the messenger makes them: committed a moment ago (its enqueue may yet
        # come), and long enough ago that its enqueue was lost.
        "just-made": (SmsStatus.QUEUED, 0, None, False),
        "never-taken": (SmsStatus.QUEUED, 0, None, True),
    }
    async with world.container.sessions() as session:
        for name, (status, attempts, touched, _) in rows.items():
            made = world.container.messenger.message(to="09121234567", body=f"body {name}", kind="test")
            assert made is not None
            made.id, made.status, made.attempts, made.updated_at = name, status, attempts, touched
            if name == "never-taken":
                made.created_at = now - dt.timedelta(minutes=3)
            session.add(made)
        await session.commit()
    assert await asyncio.to_thread(sweep) == 3  # with this deployment's settings (the deliver fixture's environment)
    await deliver()
    bodies = sorted(m["body"] for m in standin.wait_for(3))
    assert bodies == ["body never-taken", "body retry-lost", "body stuck"]
    async with world.container.sessions() as session:
        statuses = {row.id: row.status for row in await session.execute(select(SmsMessage.id, SmsMessage.status))}
    assert statuses == {
        "retry-lost": SmsStatus.SENT,
        "retry-due": SmsStatus.QUEUED,
        "stuck": SmsStatus.SENT,
        "in-flight": SmsStatus.SENDING,
        "just-made": SmsStatus.QUEUED,
        "never-taken": SmsStatus.SENT,
    }


async def test_a_retry_is_not_taken_for_sent_by_an_earlier_message_of_the_same_text(
    world: World, standin: TwilioStandIn, deliver: Deliver, settings: Settings
) -> None:
    """Two help replies to one phone have the same text. The second's first try failed
    before Twilio took it: its retry finds the first reply at Twilio, which is another
    message's, and sends its own."""
    from app.sms.backends import OutboundSms, TwilioBackend

    body = "راهنما: نوبت [کد دفتر] [کد خدمت]"
    async with world.container.sessions() as session:
        first = world.container.messenger.message(to="09121234567", body=body, kind="reply")
        second = world.container.messenger.message(to="09121234567", body=body, kind="reply")
        assert first is not None and second is not None
        second.attempts, second.error = 1, "ConnectError"
        session.add_all([first, second])
        await session.flush()
        first.provider_sid = await asyncio.to_thread(
            TwilioBackend(settings).send, OutboundSms(first.id, first.to, first.body)
        )
        first.status, first.attempts = SmsStatus.SENT, 1
        await session.commit()
    world.container.jobs.enqueue(world.container.jobs.sms, SEND_SMS, second.id, job_id="sms-second-reply")
    await deliver()
    assert len(standin.wait_for(2)) == 2
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, second.id)
        assert row is not None and row.status == SmsStatus.SENT and row.provider_sid != first.provider_sid


async def test_a_retry_the_provider_cannot_answer_about_is_tried_again_later(
    world: World, standin: TwilioStandIn, deliver: Deliver, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio's list fails as a retry asks whether the last try reached it: not sent blind,
    and not left for the sweep (a quarter of an hour): the next try is scheduled."""
    from app.sms.backends import TwilioBackend

    def unanswered(self: TwilioBackend, message: object, since: object) -> list[str]:
        raise ConnectionError("Twilio did not answer")

    monkeypatch.setattr(TwilioBackend, "sent_like", unanswered)
    made = await outbox_message(world, "کد ورود: 654321", "otp", attempts=1)
    world.container.jobs.enqueue(world.container.jobs.codes, SEND_SMS, made.id, job_id="sms-unanswered")
    await deliver()
    assert standin.messages == []
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and (row.status, row.attempts) == (SmsStatus.QUEUED, 2)
        assert row.error is not None and "ConnectionError" in row.error
    assert redis_sync.zcard("rq:scheduled:codes") == 1  # its next try, on its own queue


async def test_the_sweep_puts_a_lost_sign_in_code_ahead_of_other_messages(
    world: World, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.sms import tasks
    from app.sms.tasks import sweep

    now = world.container.clock.now()
    async with world.container.sessions() as session:
        for kind, minutes in (("booking_confirmed", 4), ("otp", 3)):  # the code the younger
            made = world.container.messenger.message(to="09121234567", body=f"a lost {kind}", kind=kind)
            assert made is not None
            made.created_at = now - dt.timedelta(minutes=minutes)  # its enqueue was lost
            session.add(made)
        await session.commit()
    limit = tasks.SWEEP_LIMIT
    monkeypatch.setattr(tasks, "SWEEP_LIMIT", 1)  # one job a sweep: the sign-in code's first
    assert await asyncio.to_thread(sweep) == 1
    assert redis_sync.llen("rq:queue:codes") == 1 and redis_sync.llen("rq:queue:sms") == 0
    # Its job still waits: the next sweep passes it by, to the other (a bound on the messages
    # looked at, not on the jobs enqueued, had looked at the same waiting one every time).
    assert await asyncio.to_thread(sweep) == 1
    assert redis_sync.llen("rq:queue:codes") == 1 and redis_sync.llen("rq:queue:sms") == 1
    monkeypatch.setattr(tasks, "SWEEP_LIMIT", limit)
    # Their jobs still wait (a backlog): the next sweeps add none. (A job a sweep, every 30 s,
    # had fed the backlog it was slowing.)
    assert await asyncio.to_thread(sweep) == 0
    assert redis_sync.llen("rq:queue:codes") == 1 and redis_sync.llen("rq:queue:sms") == 1
    await deliver()  # their jobs run (and end): found again, a message gets a job again
    async with world.container.sessions() as session:
        await session.execute(update(SmsMessage).values(status=SmsStatus.QUEUED, attempts=0))
        await session.commit()
    assert await asyncio.to_thread(sweep) == 2


async def test_a_message_another_job_is_sending_is_not_sent_again(
    world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """A second job for a message in flight (the sweep's copy, or a retry, arriving while the
    first waits for the provider, which has not yet listed it) leaves it to the first."""
    sending = world.container.clock.now() - dt.timedelta(seconds=5)
    made = await outbox_message(world, "in flight", status=SmsStatus.SENDING, attempts=1, updated_at=sending)
    world.container.jobs.enqueue(world.container.jobs.sms, SEND_SMS, made.id, job_id="sms-second-copy")
    await deliver()
    assert standin.messages == []
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and row.status == SmsStatus.SENDING and row.attempts == 1


async def test_a_retry_asks_the_provider_first_when_a_failed_try_reached_it(
    world: World, standin: TwilioStandIn, deliver: Deliver, settings: Settings
) -> None:
    """A try that failed after the provider took the message (its answer timed out) is
    retried: the retry finds it there and sends nothing."""
    from app.sms.backends import OutboundSms, TwilioBackend
    from app.sms.tasks import CODE_ERASED

    made = await outbox_message(world, "کد ورود: 123456", "otp", attempts=1, error="ReadTimeout")  # its next try
    sid = await asyncio.to_thread(TwilioBackend(settings).send, OutboundSms(made.id, made.to, made.body))
    standin.wait_for(1)
    world.container.jobs.enqueue(world.container.jobs.codes, SEND_SMS, made.id, job_id="sms-retry")
    await deliver()
    assert len(standin.messages) == 1
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and row.status == SmsStatus.SENT and row.provider_sid == sid and row.attempts == 1
        assert row.body == CODE_ERASED  # a sign-in code's text leaves the record on this path too


async def test_no_lock_or_transaction_is_held_while_twilio_is_asked(
    world: World, standin: TwilioStandIn, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry asks Twilio's list whether the last try reached it, then sends: each call may
    take 10 s on a slow day, times thousands of messages. Meanwhile the worker holds no
    transaction open and the row is free for other writers (Twilio's status callback among
    them, from a web worker's pooled connection): a FOR UPDATE held over the list call had
    kept them waiting on Twilio."""
    from app.sms.backends import TwilioBackend

    # Each call to Twilio waits, once it is asked, until the test lets it go on.
    gates = {name: (threading.Event(), threading.Event()) for name in ("sent_like", "send")}

    def held(name: str) -> Any:
        real = getattr(TwilioBackend, name)

        def call(self: TwilioBackend, *args: Any) -> Any:
            asked, go = gates[name]
            asked.set()
            go.wait(30)
            return real(self, *args)

        return call

    for name in gates:
        monkeypatch.setattr(TwilioBackend, name, held(name))
    postgres = world.container.settings.database_url.startswith("postgresql")
    made = await outbox_message(world, "کد ورود: 246810", "otp", attempts=1, error="ReadTimeout")
    world.container.jobs.enqueue(world.container.jobs.codes, SEND_SMS, made.id, job_id="sms-slow-twilio")
    worker = asyncio.create_task(deliver())
    try:
        for name, (asked, go) in gates.items():
            assert await asyncio.to_thread(asked.wait, 30), f"Twilio was not asked ({name})"
            async with world.container.sessions() as session:
                if postgres:
                    # Fails, rather than waits for the test's own timeout, if the row is locked.
                    await session.execute(sql("SET LOCAL lock_timeout = '2s'"))
                    open_elsewhere = await session.scalar(
                        sql(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND state LIKE 'idle in transaction%'"
                        )
                    )
                    assert open_elsewhere == 0, f"a transaction is open while Twilio is asked ({name})"
                # As the status callback's write: done now, not after Twilio answers.
                await session.execute(update(SmsMessage).where(SmsMessage.id == made.id).values(error=SmsMessage.error))
                await session.commit()
            go.set()
    finally:
        for _, go in gates.values():
            go.set()
        await worker
    [sent] = standin.wait_for(1)
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, made.id)
        assert row is not None and (row.status, row.attempts, row.provider_sid) == (SmsStatus.SENT, 2, sent["sid"])


async def test_a_worker_builds_the_app_once_for_its_jobs(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """Jobs run in the worker process (SimpleWorker) and share one loop and one set of parts:
    building them per job had cost more than the send."""
    from app.sms import tasks

    office = await world.office()
    for number, mobile in enumerate(("09121110001", "09121110002")):
        booked = await client.post(
            "/api/v1/bookings",
            json=booking_body(office, world.national_id(), world.tomorrow()),
            headers=world.token(mobile),
        )
        assert booked.status_code == 201
        await deliver()
        standin.wait_for(number + 1)
        if number == 0:
            parts, backend = tasks._runtime.container, tasks._runtime.backend
    assert parts is not None and tasks._runtime.container is parts
    assert backend is not None and tasks._runtime.backend is backend  # the Twilio client too


async def test_behind_a_proxy_that_ends_tls_the_forms_visit_cookie_is_secure(client: Client) -> None:
    """The service is public at https (these tests' public_url) while the request reaching it
    is plain http, as behind a proxy that ends TLS: the cookie a form's token is bound to must
    still be Secure (it followed the request's scheme, and never was)."""
    page = await client.get("/signin", headers={"Accept": "text/html"})
    [visit] = [c for c in page.headers.get_list("set-cookie") if c.startswith(f"{VISIT_COOKIE}=")]
    assert "secure" in visit.lower()


async def test_a_waitlist_joined_by_sms_is_recorded_as_sms(client: Client, world: World) -> None:
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert taken.status_code == 201
    await text(client, f"انتظار {office} 101 {day.isoformat()} {world.national_id()}", sid="SMwait")
    async with world.container.sessions() as session:
        waiting = await session.scalar(select(Booking).where(Booking.status == BookingStatus.WAITLISTED))
    assert waiting is not None and waiting.channel == Channel.SMS


async def test_a_phone_past_its_bookings_is_told_so_by_sms(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    office = await world.office(seats=20)
    allowance = parse_limit(world.container.settings.bookings_per_mobile)[0]
    for number in range(allowance + 1):
        assert (await text(client, f"BOOK {office} 101 {world.national_id()}", sid=f"SMfam{number}")).status_code == 200
    assert await count(world, Booking) == allowance
    await deliver()
    replies = [m["body"] for m in standin.wait_for(allowance + 1)]
    assert sum("کد رهگیری" in body for body in replies) == allowance
    assert any("بیش از این مجاز نیست" in body for body in replies), replies


async def test_a_number_whose_web_codes_are_used_up_asks_for_one_by_sms(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """Anyone can ask the web for any number's codes, and so use up its day's, and burn a live
    code with wrong guesses; the phone's holder then texts ``ورود`` and signs in all the same,
    with a code no guess finds and no wrong guess burns. Texts have bounds of their own."""
    mobile = "09121113333"
    settings = world.container.settings
    per_day = parse_limit(settings.otp_per_mobile_day)[0]
    per_while = parse_limit(settings.otp_per_mobile)[0]
    for _ in range(per_day):  # as someone else would, from many addresses, over the day
        await world.container.limiter.hit("otp-mobile-day", mobile, settings.otp_per_mobile_day)
    refused = await client.post("/api/v1/auth/otp", json={"mobile": mobile})
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert "«ورود»" in refused.json()["message_fa"] and "+15005550006" in refused.json()["detail"]
    assert refused.json()["title"] == "Too many requests. Try again a little later."  # the code's own title

    for number in range(per_while + 1):
        assert (await text(client, "ورود", sender="+989121113333", sid=f"SMin{number}")).status_code == 200
    await deliver()
    replies = standin.wait_for(per_while + 1)
    codes = [found[1] for m in replies if (found := re.search(r"کد ورود شما ([0-9A-Z]{5}-[0-9A-Z]{5})", m["body"]))]
    assert len(codes) == per_while and all(m["to"] == "+989121113333" for m in replies)
    assert any(m["body"].startswith("درخواست‌های شما بیش از حد مجاز است") for m in replies)  # the text's own bound
    async with world.container.sessions() as session:
        kinds = (await session.scalars(select(SmsMessage.kind).where(SmsMessage.to == mobile))).all()
    assert sorted(kinds) == ["otp_texted"] * per_while + ["sms_reply"]  # codes go ahead of other messages

    # Someone else's wrong guesses, far past what burns a six-digit code, burn nothing here.
    for guess in range(3 * settings.otp_max_attempts):
        wrong = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": f"ZZZZZ-{guess:05d}"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "otp_wrong", wrong.text
    earlier = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": codes[0]})
    assert earlier.status_code == 400  # each ask replaced the one before
    typed = codes[-1].lower().replace("-", " ")  # as a citizen types it
    signed_in = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": typed})
    assert signed_in.status_code == 200, signed_in.text
    again = await client.post("/api/v1/auth/verify", json={"mobile": mobile, "code": codes[-1]})
    assert again.status_code == 400 and again.json()["code"] == "otp_expired"  # signing in is once
    # The web's own bound on the number is as it was: still used up.
    assert (await client.post("/api/v1/auth/otp", json={"mobile": mobile})).status_code == 429


async def test_a_phone_ends_its_numbers_sign_ins_by_sms(
    client: Client, world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """A lost phone, a computer the citizen no longer sits at: ``خروج`` from the number ends
    every sign-in of it on the website, and no other number's."""
    mine, theirs = world.token("09121114444"), world.token("09121115555")
    probe = "/api/v1/bookings/ABCDEFGHJK/cancel"  # a citizen's 404, no one's 401
    assert (await client.post(probe, headers=mine)).status_code == 404
    assert (await text(client, "ورود", sender="+989121114444", sid="SMin")).status_code == 200
    assert (await client.post("/api/v1/auth/otp", json={"mobile": "09121114444"})).status_code == 202
    await deliver()
    delivered = " ".join(m["body"] for m in standin.wait_for(2))  # on the phone now lost
    web_code = re.search(r"\(([0-9]{6})\)", delivered)
    texted_code = re.search(r"([0-9A-Z]{5}-[0-9A-Z]{5})", delivered)
    assert web_code and texted_code
    standin.clear()
    assert (await text(client, "خروج", sender="+989121114444", sid="SMout")).status_code == 200
    assert (await client.post(probe, headers=mine)).status_code == 401
    for code in (web_code[1], texted_code[1]):  # already delivered: they no longer sign in
        used = await client.post("/api/v1/auth/verify", json={"mobile": "09121114444", "code": code})
        assert used.status_code == 400 and used.json()["code"] == "otp_expired", used.text
    assert (await client.post(probe, headers=theirs)).status_code == 404
    await deliver()
    [reply] = standin.wait_for(1)
    assert reply["to"] == "+989121114444" and "پایان یافت" in reply["body"]


async def test_the_sweep_leaves_a_backlog_alone_and_finds_a_lost_message_behind_it(
    world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A message younger than the oldest job waiting in its queue (less two minutes) may be
    waiting there: left alone. An older one untried has had its job taken off the queue, or
    never had one: sent again. (Left alone while the queue held any job, a lost message would
    have waited all day for a quiet moment.)"""
    from rq.job import Job

    from app.sms.tasks import sweep

    jobs = world.container.jobs
    jobs.sms.enqueue("builtins.print", "a backlog", job_id="backlog")  # never run here
    five_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    jobs.redis.hset(Job.key_for("backlog"), "enqueued_at", five_minutes_ago.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    now = world.container.clock.now()
    made = {}
    async with world.container.sessions() as session:
        for name, minutes in (("waiting", 4), ("lost", 8)):
            message = world.container.messenger.message(to="09121234567", body=name, kind="booking_confirmed")
            assert message is not None
            message.created_at = now - dt.timedelta(minutes=minutes)
            session.add(message)
            made[name] = message.id
        await session.commit()
    assert await asyncio.to_thread(sweep) == 1
    assert redis_sync.exists(Job.key_for(f"sms-{made['lost']}-swept"))
    assert not redis_sync.exists(Job.key_for(f"sms-{made['waiting']}-swept"))
    jobs.sms.remove("backlog")


async def test_a_lost_sign_in_code_is_swept_while_it_still_signs_in_and_a_dead_one_is_not_sent(
    world: World, standin: TwilioStandIn, deliver: Deliver
) -> None:
    """A code's job lost (RQ's Redis away a moment, an instance dead after the commit): the
    sweep took it for lost only two minutes on, the life of a code, and the SMS carried a
    dead code. Swept within seconds now; and a code past its life (a try late in its
    backoff) is not sent at all, while one asked for by text lives its ten minutes."""
    from app.sms.service import SIGN_IN_CODE, TEXTED_SIGN_IN_CODE
    from app.sms.tasks import sweep

    now = world.container.clock.now()
    ttl = world.container.settings.otp_ttl_seconds
    ages = {"lost": (SIGN_IN_CODE, 20), "dead": (SIGN_IN_CODE, ttl + 60), "texted": (TEXTED_SIGN_IN_CODE, ttl + 60)}
    async with world.container.sessions() as session:
        for name, (kind, seconds) in ages.items():
            made = world.container.messenger.message(to="09121234567", body=f"code {name}", kind=kind)
            assert made is not None
            made.id, made.created_at = name, now - dt.timedelta(seconds=seconds)
            session.add(made)
        await session.commit()
    assert await asyncio.to_thread(sweep) == 3
    await deliver()
    assert sorted(m["body"] for m in standin.wait_for(2)) == ["code lost", "code texted"]
    async with world.container.sessions() as session:
        dead = await session.get(SmsMessage, "dead")
        assert dead is not None and dead.status == SmsStatus.FAILED and "expired" in (dead.error or "")
        assert "code dead" not in dead.body  # erased, as a code is once no try will send it

    # Past its life while a try is on its way to the provider: a second job (a retry, the
    # sweep's copy) leaves it to finish, not marked failed under the send that delivers it.
    from app.sms.tasks import _send

    in_flight = await outbox_message(
        world, "code in flight", SIGN_IN_CODE, status=SmsStatus.SENDING, attempts=1,
        created_at=now - dt.timedelta(seconds=ttl + 1), updated_at=world.container.clock.now(),
    )  # fmt: skip
    assert await _send(world.container, object(), in_flight.id) == "in flight"  # type: ignore[arg-type]
    async with world.container.sessions() as session:
        row = await session.get(SmsMessage, in_flight.id)
        assert row is not None and row.status == SmsStatus.SENDING and row.body == "code in flight"


@pytest.mark.parametrize("command", ["book on a day", "book the first free day", "complain"])
async def test_a_message_carried_out_again_after_its_answer_failed_books_or_files_once(
    client: Client,
    world: World,
    standin: TwilioStandIn,
    deliver: Deliver,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """The booking or complaint was committed, the commit of the message's answer was not:
    Twilio's retry carried the message out again. A day given, the citizen was also told
    "already booked"; none given, a seat freed since on an earlier day was booked as well;
    a complaint was filed twice. Each is now made under the message's own key."""
    from app.complaints.models import Complaint

    office = await world.office()
    national_id = world.national_id()
    body = {
        "book on a day": f"نوبت {office} 101 {world.tomorrow().isoformat()} {national_id}",
        "book the first free day": f"نوبت {office} 101 {national_id}",
        "complain": f"شکایت {office} سه ساعت در صف ماندم",
    }[command]
    failed = answers_commit_fails_once(monkeypatch)
    first = await text(client, body, sid="SManswerlost")
    assert first.status_code >= 500 and failed  # Twilio delivers it again
    retried = await text(client, body, sid="SManswerlost")
    assert retried.status_code == 200, retried.text
    if command == "complain":
        assert await count(world, Complaint) == 1
    else:
        assert await count(world, Booking) == 1
    await deliver()
    await asyncio.sleep(0.5)  # a second message, had one been queued
    assert len(standin.messages) == 1, [m["body"] for m in standin.messages]
    assert "کد رهگیری" in standin.messages[0]["body"]


async def test_a_refused_booking_message_does_not_register_its_id(client: Client, world: World) -> None:
    """A new phone's first message named an office that does not exist: it was refused, and
    its national ID registered all the same, for every later message without one."""
    office = await world.office()
    refused = await text(client, f"نوبت 999999 101 {world.national_id()}", sid="SMnosuchoffice")
    assert refused.status_code == 200
    assert await count(world, CitizenPhone) == 0
    await text(client, f"نوبت {office} 101", sid="SMnoid")
    assert await count(world, Booking) == 0
    await text(client, f"نوبت {office} 101 {world.national_id()}", sid="SMbooked")
    assert await count(world, Booking) == await count(world, CitizenPhone) == 1


async def test_a_booking_message_with_no_day_passes_over_a_day_the_citizen_holds_the_service(
    client: Client, world: World, morning: dt.datetime
) -> None:
    """Booked for the service today at one office, the citizen texts for the first free day at
    another: the search ended on today, "already booked that day", naming no day, with
    tomorrow free. That day is passed over, as a full one is."""
    here, there = await world.office(), await world.office()
    national_id = world.national_id()
    today = await client.post(
        "/api/v1/bookings", json=booking_body(here, national_id, morning.date()), headers=world.token("09121234567")
    )
    assert today.status_code == 201, today.text
    answered = await text(client, f"نوبت {there} 101 {national_id}", sid="SMfirstfree")
    assert answered.status_code == 200, answered.text
    async with world.container.sessions() as session:
        days = sorted((await session.execute(select(Booking.date).where(Booking.national_id == national_id))).scalars())
    assert days == [morning.date(), morning.date() + dt.timedelta(days=1)]
    # The same message sent again (the confirmation was slow): the day it holds here is the
    # answer, not a second day booked.
    again = await text(client, f"نوبت {there} 101 {national_id}", sid="SMfirstfreeagain")
    assert again.status_code == 200, again.text
    assert await count(world, Booking, Booking.national_id == national_id) == 2


async def test_a_booking_message_with_no_day_for_a_service_held_here_answers_with_that_booking(
    client: Client, world: World, morning: dt.datetime
) -> None:
    """Held here tomorrow (the dateless message's own booking, a slow confirmation, a seat
    freed today since; or booked on the web), the same «نوبت» with no day booked today too:
    the search found the day held only when it reached it."""
    office, national_id, mobile = await world.office(), world.national_id(), "09121234567"
    tomorrow = morning.date() + dt.timedelta(days=1)
    held = await client.post(
        "/api/v1/bookings", json=booking_body(office, national_id, tomorrow), headers=world.token(mobile)
    )
    assert held.status_code == 201, held.text
    answered = await text(client, f"نوبت {office} 101 {national_id}", sid="SMheldhere")
    assert answered.status_code == 200, answered.text
    active = Booking.national_id == national_id, Booking.status.in_(ACTIVE_STATUSES)
    assert await count(world, Booking, *active) == 1  # today's seat not taken as well
    async with world.container.sessions() as session:
        replies = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "sms_reply")))
    assert len(replies) == 1 and held.json()["tracking_code"] in replies[0], replies
    # From another phone that knows the ID: that one is held, not its tracking code nor its time.
    other = await text(client, f"نوبت {office} 101 {national_id}", sender="+989125550000", sid="SMheldother")
    assert other.status_code == 200, other.text
    assert await count(world, Booking, *active) == 1
    async with world.container.sessions() as session:
        to_other = await session.scalar(
            select(SmsMessage.body).where(SmsMessage.kind == "sms_reply", SmsMessage.to.like("%9125550000"))
        )
    assert to_other and held.json()["tracking_code"] not in to_other and "ثبت است" in to_other, to_other
    assert "ساعت" not in to_other  # nor when its holder will be there


async def test_a_booking_message_with_no_day_after_todays_booking_passed_books_the_next_day(
    client: Client, world: World, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Booked here at 09:00 today and missed it, the citizen texts «نوبت» at 15:00: they were
    told "you have a booking here today at 9:00, no other was made", and tomorrow was never
    tried. A booking whose time has passed is no answer to "book me"."""
    office, national_id, mobile = await world.office(), world.national_id(), "09121234567"
    missed = await client.post(
        "/api/v1/bookings", json=booking_body(office, national_id, morning.date(), "09:00"), headers=world.token(mobile)
    )
    assert missed.status_code == 201, missed.text
    at_three = morning.replace(hour=15)
    monkeypatch.setattr(Clock, "now", lambda self: at_three)
    answered = await text(client, f"نوبت {office} 101 {national_id}", sid="SMpassed")
    assert answered.status_code == 200, answered.text
    async with world.container.sessions() as session:
        days = list(
            await session.scalars(
                select(Booking.date).where(Booking.national_id == national_id, Booking.status.in_(ACTIVE_STATUSES))
            )
        )
        replies = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "sms_reply")))
    assert len(days) == 2 and min(days) == morning.date() and max(days) > morning.date(), days  # the next open day
    assert not any(missed.json()["tracking_code"] in reply for reply in replies), replies

    # Within the grace (the same text again at 09:35, its confirmation slow in the rush), or
    # checked in: not missed, and the answer, not a second day.
    for slot, at, check_in in (
        ("09:30", morning.replace(hour=9, minute=35), False),
        ("10:00", morning.replace(hour=15), True),
    ):
        national_id = world.national_id()
        monkeypatch.setattr(Clock, "now", lambda self: morning)
        held = await client.post(
            "/api/v1/bookings", json=booking_body(office, national_id, morning.date(), slot),
            headers=world.token(mobile),
        )  # fmt: skip
        assert held.status_code == 201, held.text
        monkeypatch.setattr(Clock, "now", lambda self, at=at: at)
        if check_in:
            staff = await staff_of(client, world, office)
            queue = f"/api/v1/staff/offices/{office}/queue/{held.json()['tracking_code']}/check-in"
            assert (await client.post(queue, headers=staff)).status_code == 200
        answered = await text(client, f"نوبت {office} 101 {national_id}", sid=f"SMgrace{int(check_in)}")
        assert answered.status_code == 200, answered.text
        async with world.container.sessions() as session:
            active = await session.scalar(
                select(func.count())
                .select_from(Booking)
                .where(Booking.national_id == national_id, Booking.status.in_(ACTIVE_STATUSES))
            )
        assert active == 1, (at, check_in)


async def test_a_booking_message_with_no_day_for_a_line_the_citizen_is_in_says_so(
    client: Client, world: World, morning: dt.datetime
) -> None:
    """In tomorrow's line at the office, today full: the dateless «نوبت» had been told a
    booking was made and its confirmation on its way. Neither was."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    today, national_id = morning.date(), world.national_id()
    for day in (today, today + dt.timedelta(days=1)):
        taken = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )
        assert taken.status_code == 201, taken.text
    joined = await client.post(
        "/api/v1/waitlist",
        json=booking_body(office, national_id, today + dt.timedelta(days=1), None),
        headers=world.token("09121234567"),
    )
    assert joined.status_code == 201, joined.text
    answered = await text(client, f"نوبت {office} 101 {national_id}", sid="SMinline")
    assert answered.status_code == 200, answered.text
    async with world.container.sessions() as session:
        reply = await session.scalar(select(SmsMessage.body).where(SmsMessage.kind == "sms_reply"))
    assert reply and "فهرست انتظار" in reply and "پیامک تأیید" not in reply, reply
    assert await count(world, Booking, Booking.national_id == national_id) == 1  # the place in line


async def test_a_retrys_claim_is_timed_after_the_provider_is_asked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry asks the provider first (up to 20 s), then claims the message. Its claim was
    timed before the asking: the sweep, which counts a try quiet that long as dead, could
    send a copy while this one was still on its way."""
    import threading

    from app.sms.backends import OutboundSms
    from app.sms.tasks import _send

    made = await outbox_message(world, "یک پیام", attempts=1, error="ReadTimeout")  # its next try
    now = Clock.now
    asked = dt.timedelta(0)
    monkeypatch.setattr(Clock, "now", lambda self: now(self) + asked)
    sending, release = threading.Event(), threading.Event()

    class SlowProvider:
        def sent_like(self, message: OutboundSms, since: dt.datetime) -> list[str]:
            nonlocal asked
            asked = dt.timedelta(seconds=20)  # the provider took its time to answer
            return []

        def send(self, message: OutboundSms) -> str:
            sending.set()
            release.wait(10)
            return "SMslowprovider"

    job = asyncio.create_task(_send(world.container, SlowProvider(), made.id))
    try:
        assert await asyncio.to_thread(sending.wait, 10)
        async with world.container.sessions() as session:
            row = await session.get(SmsMessage, made.id)
            assert row is not None and row.status == SmsStatus.SENDING and row.updated_at is not None
            claimed = world.container.clock.aware(row.updated_at)
        assert claimed >= world.container.clock.now() - dt.timedelta(seconds=1)
    finally:
        release.set()
        assert await job == "sent"


async def test_messages_past_the_kept_days_are_deleted_by_the_nights_job(
    world: World, deliver: Deliver, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their bodies carry tracking codes, national IDs, complaints' words: deleted once
    NOBAT_SMS_KEPT_DAYS have passed, in batches (here of two: the first night meets them
    all), and nothing younger."""
    from rq import Queue

    from app.sms import retention
    from app.sms.tasks import purge_old
    from workers.queues import DEFAULT

    monkeypatch.setattr(retention, "PURGE_BATCH", 2)
    kept = dt.timedelta(days=world.container.settings.sms_kept_days)
    now = world.container.clock.now()
    old, young = now - kept - dt.timedelta(hours=1), now - kept + dt.timedelta(hours=1)
    async with world.container.sessions() as session:
        for number, made in enumerate([old] * 5 + [young] * 2):
            session.add(
                SmsMessage(
                    id=f"m{number}", to="09121234567", body=f"کد پیگیری {number}", kind="booking_confirmed",
                    status=SmsStatus.DELIVERED, created_at=made,
                )
            )  # fmt: skip
            session.add(
                InboundSms(
                    provider_sid=f"SM{number}", from_mobile="09121234567", body="نوبت 010011 101 0499370899",
                    command="Book", received_at=made, answered_at=made,
                )
            )  # fmt: skip
        await session.commit()
    job = Queue(DEFAULT, connection=redis_sync).enqueue(purge_old)
    await deliver()
    assert (job.get_status(refresh=True), job.return_value()) == ("finished", 10)
    async with world.container.sessions() as session:
        assert set(await session.scalars(select(SmsMessage.id))) == {"m5", "m6"}
        assert set(await session.scalars(select(InboundSms.provider_sid))) == {"SM5", "SM6"}


async def test_a_reply_is_sent_when_its_counter_cannot_be_reached(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-mobile reply counter's Redis away: the command was released undone-looking,
    carried out again every minute for an hour, then told "not done"."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    limiter = client.app.state.container.bookings.limiter
    hit = limiter.hit

    async def counter_away(kind: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "sms-reply":
            raise RedisConnectionError("the node is away")
        return await hit(kind, *args, **kwargs)

    monkeypatch.setattr(limiter, "hit", counter_away)
    answered = await text(client, "راهنما", sid="SMcounteraway")
    assert answered.status_code == 200, answered.text
    async with world.container.sessions() as session:
        replies = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "sms_reply")))
        answered_at = await session.scalar(
            select(InboundSms.answered_at).where(InboundSms.provider_sid == "SMcounteraway")
        )
    assert len(replies) == 1 and answered_at is not None
