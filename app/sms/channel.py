"""The SMS channel: what a citizen can do by text message, with a basic phone.

Each inbound message is parsed (``app.sms.parser``), carried out through the same services
the web uses, and answered by SMS through the outbound queue. A message the provider
delivers twice (same message id) is carried out once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy import Select, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import CitizenAuth
from app.booking.models import ACTIVE_STATUSES, SEAT_STATUSES, Booking, BookingStatus, Channel
from app.booking.schemas import BookingCreate, WaitlistJoin
from app.booking.service import BookingService, when_fa
from app.capacity.errors import AlreadyBookedThatDay, DayFull, OfficeClosed
from app.clock import Clock
from app.db import RECORD_AWAY, Within
from app.errors import DomainError, RateLimited, ServiceUnavailable
from app.identity import normalize_mobile
from app.load.service import CITY_RADIUS_KM, SEARCH_RADII_KM, LoadService
from app.locale import jalali_date, strip_controls, to_persian_digits
from app.offices.models import Office
from app.sms import parser
from app.sms.models import CitizenPhone, InboundSms
from app.sms.service import Messenger

log = logging.getLogger(__name__)

_CLAIM_LEASE = dt.timedelta(minutes=3)
"""How long a delivery carrying out a message keeps others off it. Replies take seconds, but a
«نوبت» with no day tries up to the horizon's days, each perhaps loading its day from the
record: under a rush's pool and statement waits that passed a one-minute lease, and the
minute's job carried the message out beside it («لغو» answered "cancelled" and "not active").
A delivery that fails lets go at once (``_release``): only a killed instance's waits this out."""
ABANDONED_FOR = dt.timedelta(hours=1)
"""A message never answered is carried out by the minute's job for this long after it came;
then it is answered "not done, send it again" (``_give_up``), once."""
ABANDONED_PER_RUN = 500

ComplaintHandler = Callable[[AsyncSession, str, str, str, str], Awaitable[str | None]]
"""(session, mobile, office code, text, the message's key) -> the reply; the complaints domain
provides it."""

_STATUS_FA = {
    "waitlisted": "در فهرست انتظار",
    "booked": "ثبت‌شده",
    "checked_in": "حاضر در دفتر",
    "served": "انجام‌شده",
    "no_show": "غایب",
    "cancelled": "لغوشده",
}


OFFICES_WEIGHED = 10
"""Offices a «دفاتر» search ranks, for three of the city's own to be among them."""


class SmsChannel:
    def __init__(
        self,
        *,
        bookings: BookingService,
        load: LoadService,
        auth: CitizenAuth,
        messenger: Messenger,
        clock: Clock,
        horizon_days: int,
        replies_per_mobile: str,
        no_show_grace: dt.timedelta = dt.timedelta(minutes=15),
    ) -> None:
        self.bookings = bookings
        self.load = load
        self.auth = auth
        self.messenger = messenger
        self.clock = clock
        self.horizon_days = horizon_days
        self.replies_per_mobile = replies_per_mobile
        self.no_show_grace = no_show_grace  # a booking is missed once its slot and this have passed
        self.complaints: ComplaintHandler | None = None

    async def receive(
        self,
        session: AsyncSession,
        *,
        provider_sid: str,
        sender: str,
        text: str,
        received_on: dt.date | None = None,
    ) -> bool:
        """Carry out one inbound message; False when it was a repeat delivery (nothing done).

        A repeat of a message that was never answered (carrying it out failed with Redis or
        the database down, and the provider retries) is carried out again; one that was
        answered, or that another delivery is carrying out right now, is not. ``received_on``:
        the day it came, when it is carried out later (its "today" and "tomorrow" are that
        day's, not the day of a run after midnight).
        """
        try:
            mobile = normalize_mobile(sender)
        except DomainError:
            return True  # not an Iranian mobile: nobody we can answer
        # Control characters are no command's; and PostgreSQL refuses a NUL in text: the
        # message, stored first, was answered 422 and dropped (Twilio retries no 4xx). Those a
        # complaint's text may hold are kept (app.locale), and no other reaches it to refuse.
        text = strip_controls(text)
        asked_on = received_on or self.clock.today()
        command = parser.parse(text, today=asked_on)
        if not await self._claim(session, provider_sid, mobile, text, command):
            return False
        try:
            try:
                reply = await self._carry_out(session, mobile, command, _message_key(provider_sid), asked_on)
            except ServiceUnavailable:
                # A moment's (the night's recount, a failover): not the citizen's answer. Let
                # go below, it is carried out again by the provider's retry or the minute's job,
                # where a reply of "try again" had them send it again themselves.
                raise
            except DomainError as error:
                await session.rollback()
                reply = error.detail_fa
            if reply and await self._may_answer(mobile):
                self.messenger.queue(session, to=mobile, body=reply, kind="sms_reply")
            # In the transaction that queues the answer: answered once, or not at all.
            await session.execute(
                update(InboundSms).where(InboundSms.provider_sid == provider_sid).values(answered_at=self.clock.now())
            )
            await session.commit()
        except Exception:
            # Not answered until that commit: a failure of the commit itself lets go too (a
            # claim held for _CLAIM_LEASE had the provider's retries, seconds later, answered
            # with nothing). Released only if unanswered: a commit whose answer was lost may
            # have landed.
            await self._release(session, provider_sid)
            raise  # a 5xx: the provider delivers it again, and the retry carries it out
        return True

    async def _claim(
        self, session: AsyncSession, provider_sid: str, mobile: str, text: str, command: parser.Command
    ) -> bool:
        now = self.clock.now()
        session.add(
            InboundSms(
                provider_sid=provider_sid,
                from_mobile=mobile,
                body=text[:1600],
                command=type(command).__name__,
                # By the app's clock, as the minute's job reads it (the database's differs on SQLite).
                received_at=now,
                claimed_at=now,
            )
        )
        try:
            # Committed first: a repeated delivery is refused here even while the first is
            # still being carried out, and a refused command is still received once.
            await session.commit()
            return True
        except IntegrityError:
            await session.rollback()
        # Delivered before: take it over only if it was never answered and no delivery is
        # on it now (one that died without letting go counts as gone after a while).
        taken = await session.execute(
            update(InboundSms)
            .where(
                InboundSms.provider_sid == provider_sid,
                InboundSms.answered_at.is_(None),
                or_(InboundSms.claimed_at.is_(None), InboundSms.claimed_at < now - _CLAIM_LEASE),
            )
            .values(claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return bool(taken.rowcount == 1)  # type: ignore[attr-defined]

    async def _may_answer(self, mobile: str) -> bool:
        """Within NOBAT_SMS_REPLIES_PER_MOBILE (what a booking or a cancel sends of its own is
        not counted here: it has limits of its own)."""
        try:
            await self.bookings.limiter.hit("sms-reply", mobile, self.replies_per_mobile)
        except RateLimited:
            log.warning("inbound sms from %s not answered: over NOBAT_SMS_REPLIES_PER_MOBILE", mobile)
            return False
        except RedisError:
            # Answered uncounted: raised, the command done was released and carried out
            # again every minute, and one mobile's counter on a node away held back every
            # citizen's "not done" notice (``_give_up``'s rollback).
            log.warning("an sms reply sent without its mobile's count: Redis did not answer")
        return True

    async def carry_out_abandoned(self, session: AsyncSession) -> int:
        """The minute's job: carry out the messages received and never answered, whose
        delivery died or failed and whose claim has lapsed. Twilio retries a delivery for
        15 s at most, and a claim lasts _CLAIM_LEASE: an instance killed mid-message (or the
        record away for the retries' 15 s) had lost it for good, the citizen's booking
        neither made nor refused. Each is carried out once (``receive``'s claim), under its
        own key (a booking it made before its answer was lost is not made twice); those received
        more than ABANDONED_FOR ago are left (a booking asked for an hour ago is no longer
        asked for). Counted from when it came, not from its last claim: each failed try
        claims it again, and a message failing every minute (a Redis node down for hours)
        was carried out whenever the node came back, its code or booking hours late.
        The messages carried out."""
        now = self.clock.now()
        rows = (
            await session.execute(
                select(InboundSms.provider_sid, InboundSms.from_mobile, InboundSms.body, InboundSms.received_at)
                .where(
                    InboundSms.answered_at.is_(None),
                    InboundSms.received_at > now - ABANDONED_FOR,
                    InboundSms.claimed_at < now - _CLAIM_LEASE,
                )
                # The least lately tried first: each try's failure claims it again, so those
                # that keep failing (a Redis node down) go behind the others.
                .order_by(InboundSms.claimed_at)
                .limit(ABANDONED_PER_RUN)
            )
        ).all()
        await session.commit()
        done = 0
        for provider_sid, mobile, body, received_at in rows:
            received_on = self.clock.aware(received_at).astimezone(self.clock.tz).date()
            try:
                done += await self.receive(
                    session, provider_sid=provider_sid, sender=mobile, text=body, received_on=received_on
                )
            except Exception:  # one message's failure must not keep the others waiting
                log.exception("abandoned inbound sms %s waits for the next run", provider_sid)
        await self._give_up(session, now)
        return done

    async def _give_up(self, session: AsyncSession, now: dt.datetime) -> None:
        """Answer the messages no try carried out within ABANDONED_FOR (Redis or the record
        away all that while, a recount begun again and again): not done, send it again. Left
        unanswered, the citizen waited for a reply that never came. Each once: marked answered
        with its reply, in one commit. Those that came up to a day before are looked at (a job
        that did not run for a while still answers them)."""
        try:
            given_up = (
                await session.execute(
                    update(InboundSms)
                    .where(
                        InboundSms.answered_at.is_(None),
                        InboundSms.received_at <= now - ABANDONED_FOR,
                        InboundSms.received_at > now - dt.timedelta(days=1),
                        InboundSms.claimed_at < now - _CLAIM_LEASE,
                    )
                    .values(answered_at=now)
                    .returning(InboundSms.from_mobile)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            for (mobile,) in given_up:
                if await self._may_answer(mobile):
                    self.messenger.queue(session, to=mobile, body=_NOT_DONE, kind="sms_reply")
            await session.commit()
        except Exception:
            await session.rollback()
            log.warning("messages not carried out within the hour wait for the next run", exc_info=True)

    async def _release(self, session: AsyncSession, provider_sid: str) -> None:
        """Let the provider's retry carry the message out at once (best effort: the record
        may be what failed; the claim then lapses after _CLAIM_LEASE). Dated, not emptied:
        the minute's job carries out what no retry did (``carry_out_abandoned``)."""
        try:
            await session.rollback()
            await session.execute(
                update(InboundSms)
                .where(InboundSms.provider_sid == provider_sid, InboundSms.answered_at.is_(None))
                .values(claimed_at=self.clock.now() - _CLAIM_LEASE - dt.timedelta(seconds=1))
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        except Exception:
            log.warning("could not release inbound sms %s for its retry", provider_sid, exc_info=True)
            with contextlib.suppress(Exception):
                await session.rollback()

    async def _carry_out(
        self, session: AsyncSession, mobile: str, command: parser.Command, key: str, asked_on: dt.date
    ) -> str | None:
        """``key``: the message's own, which its booking or complaint is made under: a delivery
        carried out again (the commit of its answer failed after theirs) makes neither twice.
        ``asked_on``: the day the message came, a dateless line's day."""
        match command:
            case parser.Book():
                return await self._book(session, mobile, command, key)
            case parser.Wait():
                national_id = await self._national_id(session, mobile, command.national_id)
                if national_id is None:
                    return _NEED_ID
                await self.bookings.join_waitlist(
                    session=session,
                    mobile=mobile,
                    request=WaitlistJoin(
                        national_id=national_id,
                        office_code=command.office_code,
                        service_code=command.service_code,
                        date=(command.day or asked_on).isoformat(),
                    ),
                    channel=Channel.SMS,
                )
                await self._first_id(session, mobile, command.national_id)
                return None  # joining sends its own message
            case parser.Offices():
                # Today's, or tomorrow's once today has no free seat left there (as the search
                # page does): at 21:00 every office had answered "busy, none today".
                today = self.clock.today()
                result = await self.load.nearby_soonest(
                    sessions=Within(session),
                    service_code=command.service_code,
                    days=self.load.capacity.horizon(today)[:2],
                    lat=None,
                    lon=None,
                    city=command.city,
                    limit=OFFICES_WEIGHED,
                )
                day_fa = "امروز" if result.date == today.isoformat() else "فردا"
                if not result.offices:
                    return "در این شهر دفتری با این خدمت پیدا نشد."
                # The city's own before the places around it (a town's search weighs the villages
                # around it too, and a quiet village office 18 km away had come before the town's),
                # within the ranking's rule that an office with a free slot comes before one with
                # none; the others within the first search radius only, each with its place's name.
                inside = [o for o in result.offices if o.distance_km <= CITY_RADIUS_KM]
                around = [o for o in result.offices if o not in inside and o.distance_km <= SEARCH_RADII_KM[0]]
                ranked = sorted(inside + around, key=lambda o: (o.next_free_slot is None, o not in inside))
                chosen = ranked[:3] or result.offices[:3]  # a remote place: the nearest, wherever
                # An office with no slot left that day has no busyness to tell: its load reads as
                # full, and one closed, or past its last slot, had been called busy («شلوغ»).
                lines = [
                    f"{o.code}: {o.name_fa}{'' if o in inside else f' ({o.city_fa})'}، "
                    f"{f'{o.busyness_fa}، ' if o.next_free_slot else ''}"
                    f"نوبت بعدی {o.next_free_slot_fa or f'{day_fa} ندارد'}"
                    for o in chosen
                ]
                return f"کم‌ازدحام‌ترین دفاتر {day_fa}:\n" + "\n".join(lines)
            case parser.Cancel():
                await self.bookings.cancel(session=session, tracking_code=command.tracking_code, mobile=mobile)
                return None  # the cancellation sends its own message
            case parser.Status():
                booking = await self.bookings.get(session=session, tracking_code=command.tracking_code)
                return (
                    f"نوبت {booking.tracking_code}: {_STATUS_FA.get(booking.status, booking.status)}\n"
                    f"{booking.office_name_fa}\n{booking.when_fa}"
                )
            case parser.Complain():
                if self.complaints is None:
                    return "ثبت شکایت با پیامک هنوز فعال نیست؛ از سامانهٔ نوبت استفاده کنید."
                return await self.complaints(session, mobile, command.office_code, command.text, key)
            case parser.Register():
                await self._remember(session, mobile, command.national_id)
                return f"کد ملی {to_persian_digits(command.national_id[-4:])}**** برای این شماره ثبت شد."
            case parser.SignIn():
                await self.auth.request_code_by_sms(session=session, mobile=mobile)
                return None  # the code is the answer, sent ahead of other messages
            case parser.SignOut():
                await self.auth.sign_out_everywhere_by_sms(mobile)
                return "همهٔ ورودهای این شماره به سایت نوبت پایان یافت."
            case parser.Help():
                return command.answer_fa()

    async def _book(self, session: AsyncSession, mobile: str, command: parser.Book, key: str) -> str | None:
        national_id = await self._national_id(session, mobile, command.national_id)
        if national_id is None:
            return _NEED_ID
        if await self.bookings.by_idempotency_key(session, mobile, key) is not None:
            return None  # booked by this message before: its confirmation went out then
        # No date: the first day, from today on, with a free slot.
        now = self.clock.now()
        today, missed_to = now.date(), self._missed_to(now)
        if command.day is None:
            # Held here already (the same message sent again, its confirmation slow): that
            # booking is the answer. The search had booked an earlier day freed since as well.
            held = await self._held_here(session, national_id, command, now=now)
            if held is not None:
                return _held_answer(held, mobile)
        days = [command.day] if command.day else [today + dt.timedelta(days=i) for i in range(self.horizon_days)]
        for day in days:
            try:
                await self.bookings.book(
                    sessions=Within(session),
                    mobile=mobile,
                    request=BookingCreate(
                        national_id=national_id,
                        office_code=command.office_code,
                        service_code=command.service_code,
                        date=day.isoformat(),
                    ),
                    idempotency_key=key,
                    channel=Channel.SMS,
                )
                await self._first_id(session, mobile, command.national_id)
                return None  # the booking sends its own confirmation, with the tracking code
            except (DayFull, OfficeClosed, AlreadyBookedThatDay) as error:
                if command.day:
                    raise
                # With no day asked for, a day the citizen holds the service at another office
                # is passed over as a full one is: it had ended the search on "already booked
                # that day", naming no day, with tomorrow free. Held anywhere else (here: a
                # copy of this message delivered twice at once, its booking not committed
                # yet) the search ends on that day, not on a second one.
                if isinstance(error, AlreadyBookedThatDay):
                    that_day = await self._held_on(session, national_id, command, day)
                    # Today's booking missed (its time and the grace gone, nobody checked in)
                    # is no answer to "book me": the search goes on to the next day.
                    missed = [b for b, _ in that_day if b.status is BookingStatus.BOOKED and b.slot_time <= missed_to]
                    if day == today and that_day and len(missed) == len(that_day):
                        continue
                    if all(code == command.office_code for _, code in that_day):
                        return await self._held_that_day(session, day, mobile, next((b for b, _ in that_day), None))
        # Every day of the horizon full or closed: the last day's refusal ("full that day",
        # "closed that day") named no day, and the citizen could not tell all were tried.
        await session.rollback()
        return (
            f"این دفتر تا {jalali_date(days[-1])} نوبت خالی برای این خدمت ندارد. "
            f"دفترهای خلوت شهرتان را با پیامک «دفاتر نام‌شهر {to_persian_digits(command.service_code)}» بپرسید."
        )

    async def _held_here(
        self, session: AsyncSession, national_id: str, command: parser.Book, *, now: dt.datetime
    ) -> Booking | None:
        """The citizen's first booked seat (not a place in line) for the command's service at
        its office, not missed (today's, missed at 09:00, answered "you have a booking at
        09:00" at 15:00, and tomorrow never tried). A booking whose slot began within the
        grace, or checked in, is not missed: the same text again at 10:32 for 10:30 is
        answered with it, not booked a second time."""
        today, missed_to = now.date(), self._missed_to(now)
        booking: Booking | None = await session.scalar(
            _holdings(national_id, command)
            .where(
                Office.code == command.office_code,
                (Booking.date > today)
                | (
                    (Booking.date == today)
                    & ((Booking.slot_time > missed_to) | (Booking.status == BookingStatus.CHECKED_IN))
                ),
                Booking.status.in_(SEAT_STATUSES),
            )
            .order_by(Booking.date)
            .limit(1)
        )
        return booking

    def _missed_to(self, now: dt.datetime) -> str:
        """Today's slots up to this time ("HH:MM"; "": none) are missed if nobody checked in:
        begun, and their grace gone, as a clerk may mark them absent."""
        cutoff = now - self.no_show_grace
        return cutoff.strftime("%H:%M") if cutoff.date() == now.date() else ""

    async def _held_on(
        self, session: AsyncSession, national_id: str, command: parser.Book, day: dt.date
    ) -> list[tuple[Booking, str]]:
        """The citizen's active bookings and places in line for the command's service on
        ``day``, each with its office's code."""
        rows = await session.execute(
            _holdings(national_id, command).where(Booking.date == day, Booking.status.in_(ACTIVE_STATUSES))
        )
        return [(booking, code) for booking, code in rows]

    async def _held_that_day(self, session: AsyncSession, day: dt.date, mobile: str, held: Booking | None) -> str:
        """The answer for a day the search found held, and at no other office in the record:
        the place in this office's line, the booking, or (neither in the record yet: another
        booking message for the ID committing at this moment) the day."""
        if held is None:
            # Not in the record (yet): a booking of that day committing now, here or at another
            # office, or a hold left for later. Nothing said of where.
            answer = (
                f"برای این کد ملی در {jalali_date(day)} نوبتی در دست ثبت است؛ "
                "اگر تا چند دقیقهٔ دیگر پیامکی نرسید، دوباره بفرستید."
            )
        elif held.status is BookingStatus.WAITLISTED:
            day_fa = f" برای {jalali_date(day)}" if held.mobile == mobile else ""  # as for a seat: not to another phone
            answer = f"این کد ملی در فهرست انتظار این دفتر{day_fa} است؛ نوبت دیگری گرفته نشد."
        else:
            answer = _held_answer(held, mobile)
        await session.rollback()  # after the row is read: it expires the row
        return answer

    async def _national_id(self, session: AsyncSession, mobile: str, given: str | None) -> str | None:
        """The national ID a booking message books for: the one it gives, else the phone's."""
        if given:
            return given
        return await session.scalar(select(CitizenPhone.national_id).where(CitizenPhone.mobile == mobile))

    async def _first_id(self, session: AsyncSession, mobile: str, given: str | None) -> None:
        """Once a booking or join is made: the first ID a phone books with becomes its registered
        one; a later one is for that message only (a parent booking once for a child must not
        have every later booking made for the child). ``ثبت`` changes the registered ID.
        Registered before, a refused message (a wrong office code) registered its ID all the
        same. Its failure is logged: the booking is made, and is the answer."""
        if not given:
            return
        try:
            await self._remember(session, mobile, given, replace=False)
        except RECORD_AWAY:
            await session.rollback()
            log.warning("a phone's first national ID was not registered", exc_info=True)

    async def _remember(self, session: AsyncSession, mobile: str, national_id: str, *, replace: bool = True) -> None:
        """Register the phone's ID; ``replace=False``: unless it has one. In one statement, so
        that two of a new phone's first messages at once do not both insert (the second had
        failed on the key, a 500, and the citizen got no answer)."""
        values = {"mobile": mobile, "national_id": national_id, "updated_at": self.clock.now()}
        insert = postgres_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        statement = insert(CitizenPhone).values(values)
        if replace:
            statement = statement.on_conflict_do_update(
                index_elements=[CitizenPhone.mobile],
                set_={"national_id": national_id, "updated_at": values["updated_at"]},
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=[CitizenPhone.mobile])
        await session.execute(statement)
        await session.commit()


def _holdings(national_id: str, command: parser.Book) -> Select[Booking, str]:
    """The citizen's bookings of the command's service, any office, any status, with its code."""
    return (
        select(Booking, Office.code)
        .join(Office, Office.id == Booking.office_id)
        .where(Booking.national_id == national_id, Booking.service_code == command.service_code)
    )


def _held_answer(held: Booking, mobile: str) -> str:
    """A dateless «نوبت» for a service the citizen holds at that office already: the booking,
    to the phone that made it. Another phone, which may know the national ID alone, learns only
    that there is one: not its tracking code, nor when its holder will be where."""
    if held.mobile != mobile:
        return "برای این کد ملی در این دفتر نوبت این خدمت ثبت است؛ نوبت دیگری گرفته نشد."
    return (
        f"برای این کد ملی در این دفتر برای {when_fa(held)} نوبت با کد رهگیری {held.tracking_code} ثبت است؛ "
        "نوبت دیگری گرفته نشد."
    )


def _message_key(provider_sid: str) -> str:
    """The key a message's booking (an Idempotency-Key) or complaint (a form key) is made
    under: of a shape both accept, whatever the provider's ids look like."""
    return "sms-" + hashlib.blake2b(provider_sid.encode(), digest_size=16).hexdigest()


_NOT_DONE = "پیام شما به دلیل اختلال در سامانه انجام نشد. لطفاً دوباره بفرستید."
_NEED_ID = "کد ملی را هم بفرستید، مثلاً: نوبت ۰۱۰۰۰۱ ۱۰۱ ۰۴۹۹۳۷۰۸۹۹ — یا یک بار بفرستید: ثبت [کد ملی]"
