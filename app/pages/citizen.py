"""Citizens' pages: find a less busy office, pick a slot, sign in with the SMS code, book,
look a booking up or cancel it, and file and follow a complaint."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.errors import CodeExpired
from app.auth.service import TEXTED_CODE_SECONDS
from app.booking.errors import BookingNotActive
from app.booking.models import ACTIVE_STATUSES, Booking, BookingStatus
from app.booking.schemas import BookingCreate, WaitlistJoin
from app.booking.service import BookingService, parse_slot
from app.booking.tracking import normalize_tracking_code
from app.capacity.errors import AlreadyBookedThatDay, DuplicateRequest, NoSuchSlot, SeatsAvailable, SlotFull
from app.capacity.service import SlotView
from app.complaints.models import CATEGORY_FA
from app.container import Container
from app.db import Within, read_until
from app.errors import DomainError, IdempotencyKeyReused, InvalidInput, NotFound, ServiceUnavailable, Unauthorized
from app.identity import normalize_mobile, normalize_national_id
from app.locale import parse_date, parse_float
from app.offices import service as offices
from app.offices.service import BookableOffice
from app.pages import iran_map
from app.pages.render import (
    CITIZEN_COOKIE,
    Form,
    check_csrf,
    citizen_mobile,
    day_options,
    form_errors,
    render,
    require_citizen,
    safe_next,
    see_other,
)
from app.web import Deps, Session, client_address, session_cookie

log = logging.getLogger(__name__)

LOOK_AHEAD_DAYS = 4  # today and the three days after it
NEARBY_LIMIT = 10
FIRST_TAP_WAIT_SECONDS = 1.0
"""How long a second tap on "book" waits for the first tap's booking to be in the record
(it is on its way: a group commit takes milliseconds) before it says "still in progress"."""

FORM_CHANGED_FA = "فرم پس از فرستادن تغییر کرده بود. اگر همین را می‌خواهید، دوباره «ثبت نوبت» را بزنید."
IN_PROGRESS_FA = (
    "درخواست قبلی شما هنوز در حال ثبت است. چند لحظه بعد دوباره «ثبت نوبت» را بزنید تا نوبت ثبت‌شده را ببینید؛ "
    "نوبت دوباره گرفته نمی‌شود."
)


def _capitals() -> list[str]:
    return sorted({p.capital_fa for p in iran_map.provinces()})


async def _service_options(container: Deps) -> list[tuple[str, str]]:
    return [(s.code, s.name_fa) for s in await container.offices.services()]


def _coordinate(value: str | None) -> float | None:
    """A position's part as the API reads it (Persian digits and «٫» too); blank: not given."""
    if not (value or "").strip():
        return None
    try:
        return parse_float(value or "", "lat")
    except InvalidInput:
        raise InvalidInput("lat", "Not a position.", detail_fa="موقعیت فرستاده‌شده معتبر نیست.") from None


async def _free_slots(
    container: Deps, session: Session, office: BookableOffice, day: dt.date
) -> tuple[str, list[SlotView]]:
    """The office-day's status and its slots for the service, from the next minute on
    (what booking accepts: a slot that starts this minute has started)."""
    return await container.capacity.bookable_slots(
        sessions=Within(session), office_code=office.code, pool=office.pool, day=day, now=container.clock.now()
    )


def _check_horizon(container: Deps, day: dt.date) -> None:
    container.capacity.check_horizon(day, container.clock.today())


class CitizenPages(Controller):
    path = "/"
    include_in_schema = False

    @get("/")
    async def home(self, request: Request[Any, Any, Any], container: Deps) -> Template:
        return render(
            request,
            container,
            "citizen/home.html",
            services_options=await _service_options(container),
            capitals=_capitals(),
            days=day_options(container),
        )

    @get("/offices")
    async def nearby(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        service: FromQuery[str | None] = None,
        city: FromQuery[str | None] = None,
        lat: FromQuery[str | None] = None,
        lon: FromQuery[str | None] = None,
        date: FromQuery[str | None] = None,
    ) -> Template:
        form = {"service": service or "", "city": city or "", "lat": lat or "", "lon": lon or "", "date": date or ""}
        services_options = await _service_options(container)
        try:
            if not service:
                raise InvalidInput("service", "Choose a service.", detail_fa="یک خدمت را انتخاب کنید.")
            latitude = longitude = None
            if (city or "").strip():
                # A city typed means that city: the position of a search before stays in the
                # form's hidden fields (the script clears them as the city is typed; without
                # it, the city had been ignored, and after a refused position, every city).
                form["lat"] = form["lon"] = ""
            else:
                latitude, longitude = _coordinate(lat), _coordinate(lon)
            if not form["city"].strip() and (latitude is None or longitude is None):
                raise InvalidInput(
                    "city", "Give a city or a position.", detail_fa="نام شهر را بنویسید یا موقعیت خود را بفرستید."
                )
            today = container.clock.today()
            chosen = parse_date(date) if date else today
            # Today is what the form offers first: a citizen searching it after hours (or on
            # a full day) is shown the first day that still has a free seat, not a list of
            # "none left". A later day they picked is kept.
            result = await container.load.nearby_soonest(
                sessions=Within(session),
                service_code=service,
                days=container.capacity.horizon(today)[:LOOK_AHEAD_DAYS] if chosen == today else [chosen],
                lat=latitude,
                lon=longitude,
                city=city if latitude is None else None,
                limit=NEARBY_LIMIT,
            )
        except DomainError as error:
            await session.rollback()
            return render(
                request,
                container,
                "citizen/home.html",
                status=error.status,
                errors=form_errors(error, ["service", "city", "date"], {"lat": "city", "lon": "city"}),
                form=form,
                services_options=services_options,
                capitals=_capitals(),
                days=day_options(container),
            )
        moved_to_later_day = result.date != container.clock.today().isoformat() and not (
            date and parse_date(date).isoformat() == result.date
        )
        form["date"] = result.date
        return render(
            request,
            container,
            "citizen/offices.html",
            result=result,
            moved_to_later_day=moved_to_later_day,
            service_name=dict(services_options).get(result.service_code, result.service_code),
            form=form,
            services_options=services_options,
            capitals=_capitals(),
            days=day_options(container),
        )

    @get("/offices/{code:str}")
    async def office(
        self,
        code: FromPath[str],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        service: FromQuery[str | None] = None,
        date: FromQuery[str | None] = None,
    ) -> Template:
        detail = await offices.get_office(session=session, code=code)
        load = await container.load.office_load(session=session, office_code=detail.code)
        services_options = [(s.code, s.name_fa) for s in detail.services]
        if not service and len(services_options) == 1:
            service = services_options[0][0]
        day: dt.date | None = None
        status = "active"
        slots: list[SlotView] = []
        errors: dict[str, str] = {}
        if service:
            try:
                bookable = await container.offices.bookable(office_code=detail.code, service_code=service)
                if date:
                    day = parse_date(date)
                    _check_horizon(container, day)
                    status, slots = await _free_slots(container, session, bookable, day)
                else:
                    # No day chosen: the first day with a free seat, so the citizen starts from a
                    # page that has something to book.
                    for candidate in container.capacity.horizon(container.clock.today()):
                        status, slots = await _free_slots(container, session, bookable, candidate)
                        day = candidate
                        if any(s.free for s in slots) or status == "blocked":
                            break
                    else:
                        day = container.clock.today()
                        status, slots = await _free_slots(container, session, bookable, day)
            except DomainError as error:
                await session.rollback()
                errors = form_errors(error, ["service", "date"], {"service_code": "service"})
                day = None
        first_free = next((s.time for s in slots if s.free), None)
        return render(
            request,
            container,
            "citizen/office.html",
            status=422 if errors else 200,
            office=detail,
            load=load,
            service=service,
            services_options=services_options,
            days=day_options(container),
            form={"service": service or "", "date": day.isoformat() if day else (date or "")},
            errors=errors,
            day=day,
            # Sought for the citizen (no day asked for) past today: said, as the search says it.
            later_day=bool(not date and day and day != container.clock.today()),
            day_status=status,
            slots=slots,
            free_count=sum(1 for s in slots if s.free),
            first_free=first_free,
        )

    @get("/book")
    async def book_form(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        office: FromQuery[str | None] = None,
        service: FromQuery[str | None] = None,
        date: FromQuery[str | None] = None,
        slot: FromQuery[str | None] = None,
        waitlist: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        require_citizen(request, container)
        if not office or not service or not date:
            return see_other("/")
        if parse_date(date) < container.clock.today():
            # Picked at 23:58, or a sign-in that ended after midnight: the office's page, its
            # days to choose again, as the form's POST does (an "outside the horizon" page).
            return _day_passed(office, service)
        day = _bookable_day(container, date)
        bookable = await container.offices.bookable(office_code=office, service_code=service)
        return render(
            request,
            container,
            "citizen/book.html",
            office=bookable,
            day=day,
            # As the API reads it ("9:30", Persian digits): shown and sent back as "09:30".
            slot=parse_slot(slot) if slot else None,
            waitlist=bool(waitlist),
            idem=secrets.token_urlsafe(16),
        )

    @post("/book")
    async def book(
        self, data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        office, service, date = data.get("office", ""), data.get("service", ""), data.get("date", "")
        slot, waitlist = data.get("slot") or None, bool(data.get("waitlist"))
        back = "/book?" + urlencode({k: v for k, v in {"office": office, "service": service, "date": date,
                                                         "slot": slot or "", "waitlist": "1" if waitlist else ""}.items() if v})  # fmt: skip
        # Signed in first: the form's token is bound to the sign-in, so a sign-in that ended
        # while the form was open had the check refuse it as "expired", not ask for a sign-in.
        mobile = require_citizen(request, container, back=back)
        check_csrf(request, container, data)
        national_id, idem = data.get("national_id", ""), data.get("idem", "")
        if office and service and parse_date(date) < container.clock.today():
            # A form left open overnight, sent the next morning: its day has passed. The
            # office's page, its days to choose again (a bare error page had lost them all).
            return _day_passed(office, service)
        day = _bookable_day(container, date)  # refused as a page: the form below shows the day
        try:
            if waitlist:
                booking = await container.bookings.join_waitlist(
                    session=session,
                    mobile=mobile,
                    request=WaitlistJoin(national_id=national_id, office_code=office, service_code=service, date=date),
                )
            else:
                booked = await container.bookings.book(
                    sessions=Within(session),
                    mobile=mobile,
                    request=BookingCreate(
                        national_id=national_id, office_code=office, service_code=service, date=date, slot=slot
                    ),
                    # One key per form shown: a double tap on "book" books once.
                    idempotency_key=idem or None,
                )
                booking = booked.booking
        except DomainError as error:
            await session.rollback()
            if waitlist and isinstance(error, AlreadyBookedThatDay):
                # A second tap on "join" (or a reload after a slow answer): the first one
                # joined, and this is the line it joined, not an error.
                # Waited for a moment (``FIRST_TAP_WAIT_SECONDS``): the first may not have committed yet.
                joined = WaitlistJoin(national_id=national_id, office_code=office, service_code=service, date=date)
                if code := await read_until(
                    session,
                    lambda: container.bookings.waiting(session=session, mobile=mobile, request=joined),
                    FIRST_TAP_WAIT_SECONDS,
                ):
                    return see_other(f"/bookings/{code}?new=1")
            in_progress = isinstance(error, DuplicateRequest) and bool(idem)
            # A second tap while the first is still booking (its seat taken, its row not yet
            # in the record): the first one's booking, once it is there.
            if in_progress and (code := await _booked_with_key(container.bookings, session, mobile, idem)):
                return see_other(f"/bookings/{code}?new=1")
            bookable = await container.offices.bookable(office_code=office, service_code=service)
            booked_that_day = None
            if isinstance(error, AlreadyBookedThatDay):
                # Their booking that day, to see: a tap on a form shown again (Back, after the
                # booking) had ended on "already booked" without the tracking code.
                booked_that_day = await _booked_that_day(session, mobile, national_id, bookable.service_code, day)
            errors = {"_top": IN_PROGRESS_FA} if in_progress else form_errors(error, ["national_id"])
            shown_slot = _slot_or_none(slot)
            if isinstance(error, SlotFull | NoSuchSlot):
                # The slot that was full or has begun is not asked for again (each tap had failed
                # the same way), but the first free one, named: told "choose another time", the
                # next tap had booked one the citizen never saw (None: the day is full, said so).
                _, left = await _free_slots(container, session, bookable, day)
                shown_slot = next((s.time for s in left if s.free), None)
            if isinstance(error, IdempotencyKeyReused):
                # The form came back from the history with its old key, and something changed
                # (a second child's ID): the API's words meant nothing to a citizen. A new key
                # below makes the next tap a new request.
                errors = {"_top": FORM_CHANGED_FA}
            return render(
                request,
                container,
                "citizen/book.html",
                status=error.status,
                headers=error.headers,  # a 429's or a 503's Retry-After
                errors=errors,
                form={"national_id": national_id},
                office=bookable,
                day=day,
                slot=shown_slot,  # a line with seats free is a booking, below
                waitlist=waitlist and not isinstance(error, SeatsAvailable),
                booked_that_day=booked_that_day,
                # Still in progress, the same key: the next tap is the same request again, and
                # is answered with its booking (a new key had it refused "already booked").
                idem=idem if in_progress else secrets.token_urlsafe(16),
            )
        return see_other(f"/bookings/{booking.tracking_code}?new=1")

    @get("/bookings/{code:str}")
    async def booking(
        self,
        code: FromPath[str],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        new: FromQuery[str | None] = None,
    ) -> Template:
        try:
            found = await container.bookings.get(session=session, tracking_code=code)
        except (NotFound, InvalidInput) as error:
            return render(
                request,
                container,
                "citizen/lookup.html",
                status=error.status,
                errors=form_errors(error, ["tracking_code"]),
                form={"tracking_code": code},
            )
        return render(request, container, "citizen/booking.html", booking=found, new=bool(new))

    @post("/bookings/{code:str}/cancel")
    async def cancel(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        mobile = require_citizen(request, container, back=f"/bookings/{code}")  # before the token: see ``book``
        check_csrf(request, container, data)
        try:
            cancelled = await container.bookings.cancel(session=session, tracking_code=code, mobile=mobile)
        except DomainError as error:
            await session.rollback()
            found = await container.bookings.get(session=session, tracking_code=code)
            # (Not one's own booking is refused before its status is looked at: NotYourBooking.)
            if isinstance(error, BookingNotActive) and found.status == BookingStatus.CANCELLED:
                # A second tap on "cancel" (or a resend after a slow answer): the first one
                # cancelled it, which is what the citizen asked for, not a failure.
                return see_other(f"/bookings/{found.tracking_code}?notice=cancelled")
            return render(
                request,
                container,
                "citizen/booking.html",
                status=error.status,
                errors=form_errors(error, []),
                booking=found,
                new=False,
            )
        return see_other(f"/bookings/{cancelled.tracking_code}?notice=cancelled")

    @get("/lookup")
    async def lookup(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        tracking_code: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        if tracking_code is None:
            return render(request, container, "citizen/lookup.html")
        try:
            found = await container.bookings.get(session=session, tracking_code=tracking_code)
        except (NotFound, InvalidInput) as error:
            return render(
                request,
                container,
                "citizen/lookup.html",
                status=error.status,
                errors=form_errors(error, ["tracking_code"]),
                form={"tracking_code": tracking_code},
            )
        return see_other(f"/bookings/{found.tracking_code}")

    # --- sign-in with the one-time SMS code ---

    @get("/signin")
    async def signin_form(
        self, request: Request[Any, Any, Any], container: Deps, next: FromQuery[str | None] = None
    ) -> Template:
        # Starting over: the number an earlier try left (another citizen's, on an office's
        # shared computer) is not offered to the texted-code form.
        forget = _forget_signin_mobile(request)
        return render(request, container, "citizen/signin.html", step="mobile", next=safe_next(next), cookies=forget)

    @post("/signin")
    async def signin(
        self, data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        check_csrf(request, container, data)
        next_path = safe_next(data.get("next"))
        client = client_address(request, trust_forwarded_for=container.settings.trust_forwarded_for)
        try:
            mobile = await container.auth.request_code(session=session, mobile=data.get("mobile", ""), client=client)
        except DomainError as error:
            await session.rollback()
            try:  # refused more codes: the link to the texted-code form keeps the number
                remembered = [_signin_mobile_cookie(container, normalize_mobile(data.get("mobile", "")))]
            except InvalidInput:  # nor an earlier try's number
                remembered = _forget_signin_mobile(request)
            return render(
                request,
                container,
                "citizen/signin.html",
                status=error.status,
                headers=error.headers,
                cookies=remembered,
                step="mobile",
                next=next_path,
                errors=form_errors(error, ["mobile"]),
                form={"mobile": data.get("mobile", "")},
            )
        return see_other(
            "/signin/code?" + urlencode({"next": next_path}), cookies=[_signin_mobile_cookie(container, mobile)]
        )

    @get("/signin/code")
    async def code_form(
        self,
        request: Request[Any, Any, Any],
        container: Deps,
        mobile: FromQuery[str | None] = None,
        next: FromQuery[str | None] = None,
        texted: FromQuery[str | None] = None,
    ) -> Template | Redirect:
        try:  # ?mobile= is what pages rendered before the cookie link with
            mobile = normalize_mobile(mobile or request.cookies.get(SIGNIN_MOBILE_COOKIE, ""))
        except InvalidInput:
            if texted != "1":
                return see_other("/signin")
            mobile = ""  # a code asked for by text, before any here: the form asks for the number too
        return _code_step(request, container, mobile=mobile, next_path=safe_next(next), texted=texted == "1")

    @post("/signin/code")
    async def verify(self, data: Form, request: Request[Any, Any, Any], container: Deps) -> Template | Redirect:
        mobile, next_path = data.get("mobile", ""), safe_next(data.get("next"))
        if _signed_in_as(request, container, mobile):
            # A second tap after the first signed in (its cookie kept, its page still loading):
            # on where the first was going. The form's token was bound to the visit, not to the
            # sign-in, and had answered "form expired", the booking's slot lost with it.
            return see_other(next_path)
        check_csrf(request, container, data)
        client = client_address(request, trust_forwarded_for=container.settings.trust_forwarded_for)
        try:
            # The form's CSRF token, bound to this browser: its second tap may take the code again.
            again = hashlib.sha256(data.get("_csrf", "").encode()).hexdigest()[:32] if data.get("_csrf") else ""
            token = await container.auth.verify(mobile=mobile, code=data.get("code", ""), client=client, again=again)
        except DomainError as error:
            texted = data.get("texted") == "1"
            # The texted form asked for the number: asked again, as typed. Kept out of sight, a
            # number typed one digit wrong was sent with every later try, each one "expired".
            asked = texted and data.get("ask_mobile") == "1"
            try:
                mobile = "" if asked else normalize_mobile(mobile)
            except InvalidInput:
                mobile = "" if texted else mobile  # the texted form asks for the number again
            fields, aliases = (["code", "mobile"], None) if texted and not mobile else (["code"], {"mobile": "code"})
            errors = form_errors(error, fields, aliases)
            if asked and isinstance(error, CodeExpired) and "mobile" not in errors:
                errors["mobile"] = NO_TEXTED_CODE_FA
            return _code_step(
                request,
                container,
                mobile=mobile,
                next_path=next_path,
                texted=texted,
                status=error.status,
                headers=error.headers,
                errors=errors,
                form={"code": data.get("code", ""), "mobile": data.get("mobile", "")},
            )
        cookie = session_cookie(
            container, CITIZEN_COOKIE, token, max_age=container.settings.token_ttl_seconds, samesite="lax"
        )
        return see_other(next_path, cookies=[cookie, *_forget_signin_mobile(request)])

    @post("/signout")
    async def signout(self, data: Form, request: Request[Any, Any, Any], container: Deps) -> Redirect:
        if citizen_mobile(request, container) is not None:
            # Signed in: not on another site's say-so. Signed out already (the sign-in ran out
            # while the page was open), it is done: the form's token, bound to the sign-in,
            # had answered "form expired".
            check_csrf(request, container, data)
        # Ended on the server too: a copy of the cookie (a shared computer's) signs in no more.
        # Without Redis only this instance refuses it; the citizen is still signed out here.
        try:
            await container.auth.sign_out(request.cookies.get(CITIZEN_COOKIE, ""))
        except RedisError:
            log.warning("a sign-out was not told to the other instances: Redis did not answer")
        response = see_other("/?notice=signed_out")
        _end_sign_in_cookie(request, response)
        return response

    @post("/signout/everywhere")
    async def signout_everywhere(self, data: Form, request: Request[Any, Any, Any], container: Deps) -> Redirect:
        """Every sign-in of the number ends, on every device: a lost phone's, an office
        computer's. Unlike a plain sign-out this has nothing to fall back on without Redis (the
        other instances must hear of it), so that is an error page, not a false "done"."""
        if citizen_mobile(request, container) is not None:  # see ``signout``
            check_csrf(request, container, data)
        try:
            await container.auth.sign_out_everywhere(request.cookies.get(CITIZEN_COOKIE, ""))
        except Unauthorized:
            # Signed out already here (a page left open): only a sign-in may end the others.
            response = see_other("/signin?notice=sign_in_first")
        else:
            response = see_other("/?notice=signed_out_everywhere")
        _end_sign_in_cookie(request, response)
        return response

    # --- complaints ---

    @get("/complaints")
    async def complaints(
        self, request: Request[Any, Any, Any], container: Deps, tracking_code: FromQuery[str | None] = None
    ) -> Template | Redirect:
        if tracking_code is None:
            return render(request, container, "citizen/complaints.html")
        try:
            return see_other(f"/complaints/{normalize_tracking_code(tracking_code)}")
        except InvalidInput as error:
            return render(
                request,
                container,
                "citizen/complaints.html",
                status=error.status,
                errors=form_errors(error, ["tracking_code"]),
                form={"tracking_code": tracking_code},
            )

    @get("/complaints/new")
    async def complaint_form(
        self,
        request: Request[Any, Any, Any],
        container: Deps,
        office: FromQuery[str | None] = None,
        booking: FromQuery[str | None] = None,
        category: FromQuery[str | None] = None,
    ) -> Template:
        require_citizen(request, container)
        return render(
            request,
            container,
            "citizen/complaint_new.html",
            categories=list(CATEGORY_FA.items()),
            form={"office_code": office or "", "booking_tracking_code": booking or "", "category": category or ""},
            # One key per form shown: a double tap on "file" files once.
            idem=secrets.token_urlsafe(16),
        )

    @post("/complaints/new")
    async def file_complaint(
        self, data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        # Signed in before the token is checked (see ``book``), and back to the form with what
        # fits in its address: the description does not (long, and not for a shared
        # computer's history).
        kept = {"office": "office_code", "category": "category", "booking": "booking_tracking_code"}
        back = "/complaints/new?" + urlencode({k: data[f] for k, f in kept.items() if data.get(f)})
        mobile = require_citizen(request, container, back=back.removesuffix("?"))
        check_csrf(request, container, data)
        idem = data.get("idem") or None
        try:
            complaint = await container.complaints.file(
                session=session,
                mobile=mobile,
                office_code=data.get("office_code", ""),
                category=data.get("category", ""),
                description=data.get("description", ""),
                booking_tracking_code=data.get("booking_tracking_code") or None,
                channel="web",
                form_key=idem,
            )
        except (SQLAlchemyError, RedisError, OSError):
            # The record or Redis away (a failover): the error page, and Back fetching the form
            # again (no page is kept), lost up to 2,000 characters the citizen had typed. Shown
            # again with them, and its key: nothing was filed, or the next send finds it.
            log.warning("a complaint form is shown again: the record or Redis did not answer", exc_info=True)
            with contextlib.suppress(Exception):
                await session.rollback()
            return render(
                request,
                container,
                "citizen/complaint_new.html",
                status=503,
                headers={"Retry-After": "5"},
                errors={"_top": ServiceUnavailable.message_fa},
                categories=list(CATEGORY_FA.items()),
                form=data,
                idem=idem or secrets.token_urlsafe(16),
            )
        except DomainError as error:
            await session.rollback()
            return render(
                request,
                container,
                "citizen/complaint_new.html",
                status=error.status,
                errors=form_errors(
                    error,
                    ["office_code", "category", "description", "booking_tracking_code"],
                    {"tracking_code": "booking_tracking_code"},
                ),
                categories=list(CATEGORY_FA.items()),
                form=data,
                # Nothing filed with it (or still being filed: the next send is answered with
                # that complaint), so the form keeps its key; unless it filed another, edited
                # since: sent again, this one is filed too.
                idem=secrets.token_urlsafe(16) if not idem or isinstance(error, IdempotencyKeyReused) else idem,
            )
        return see_other(f"/complaints/{complaint.tracking_code}?notice=complaint_filed&new=1")

    @get("/complaints/{code:str}")
    async def complaint(
        self,
        code: FromPath[str],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        new: FromQuery[str | None] = None,
    ) -> Template:
        mobile = require_citizen(request, container)
        try:
            found = await container.complaints.for_complainant(session=session, tracking_code=code, mobile=mobile)
        except (NotFound, InvalidInput) as error:
            return render(
                request,
                container,
                "citizen/complaints.html",
                status=error.status,
                errors=form_errors(error, ["tracking_code"]),
                form={"tracking_code": code},
            )
        return render(request, container, "citizen/complaint.html", complaint=found, new=bool(new))


def _code_step(
    request: Request[Any, Any, Any],
    container: Container,
    *,
    mobile: str,
    next_path: str,
    texted: bool,
    **context: Any,
) -> Template:
    """The sign-in page's second step: the code sent (or, ``texted``, asked for by texting
    ورود), and how long it lasts (NOBAT_OTP_TTL_SECONDS; TEXTED_CODE_SECONDS)."""
    seconds = TEXTED_CODE_SECONDS if texted else container.settings.otp_ttl_seconds
    return render(
        request,
        container,
        "citizen/signin.html",
        step="code",
        mobile=mobile,
        next=next_path,
        texted=texted,
        code_minutes=max(1, seconds // 60),
        sms_number=container.auth.sms_number,
        demo_sms=container.settings.sms_backend == "console",
        **context,
    )


NO_TEXTED_CODE_FA = "برای این شماره کد معتبری نیست: شماره را بررسی کنید، یا دوباره پیامک «ورود» بفرستید."

SIGNIN_MOBILE_COOKIE = "nobat_signin"
"""The number a sign-in's code was sent to, for the code step. Not in the page's address:
addresses stay in the browser's history (an office's shared computer), in proxies' logs and
in bookmarks. Sent back to the sign-in pages only, not with every request."""
SIGNIN_PATH = "/signin"


def _signin_mobile_cookie(container: Container, mobile: str) -> Cookie:
    lasts = max(container.settings.otp_ttl_seconds, TEXTED_CODE_SECONDS)  # as long as either code
    return session_cookie(container, SIGNIN_MOBILE_COOKIE, mobile, max_age=lasts, samesite="lax", path=SIGNIN_PATH)


def _forget_signin_mobile(request: Request[Any, Any, Any]) -> list[Cookie]:
    """The cookie that drops the number an earlier try left, if the browser has one."""
    if SIGNIN_MOBILE_COOKIE not in request.cookies:
        return []
    return [Cookie(key=SIGNIN_MOBILE_COOKIE, value="", path=SIGNIN_PATH, max_age=0, expires=0)]


def _signed_in_as(request: Request[Any, Any, Any], container: Container, mobile: str) -> bool:
    try:
        return citizen_mobile(request, container) == normalize_mobile(mobile)
    except InvalidInput:
        return False


def _end_sign_in_cookie(request: Request[Any, Any, Any], response: Redirect) -> None:
    """Delete the sign-in cookie the request came with. Only then: a form on another site,
    posted here, comes without it (SameSite=Lax), and was answered with its deletion, which
    the browser took: any site could sign a citizen out in the middle of booking."""
    if CITIZEN_COOKIE in request.cookies:
        response.delete_cookie(CITIZEN_COOKIE, path="/")


def _day_passed(office: str, service: str) -> Redirect:
    page = f"/offices/{quote(office, safe='')}?"
    return see_other(page + urlencode({"service": service, "notice": "day_passed"}))


def _bookable_day(container: Container, date: str) -> dt.date:
    """The form's day, within the booking horizon: a page for a past day offers nothing, and
    a far one (9999-12-31) had no Jalali date to show."""
    day = parse_date(date)
    container.capacity.check_horizon(day, container.clock.today())
    return day


def _slot_or_none(slot: str | None) -> str | None:
    """A slot to show again beside an error: none when the slot itself was the error."""
    try:
        return parse_slot(slot) if slot else None
    except InvalidInput:
        return None


async def _booked_with_key(bookings: BookingService, session: AsyncSession, mobile: str, key: str) -> str | None:
    """The tracking code of the booking a form with this key made, waited for a moment
    (``FIRST_TAP_WAIT_SECONDS``): the request that is making it may not have committed yet."""
    booking = await read_until(
        session, lambda: bookings.by_idempotency_key(session, mobile, key), FIRST_TAP_WAIT_SECONDS
    )
    return None if booking is None else booking.tracking_code


async def _booked_that_day(
    session: AsyncSession, mobile: str, national_id: str, service_code: str, day: dt.date
) -> str | None:
    """The tracking code of the active booking (or place in line) this national ID has for
    the service that day, made from this mobile: never another number's, which the national
    ID alone would give away."""
    try:
        national_id = normalize_national_id(national_id)
    except InvalidInput:
        return None
    return await session.scalar(
        select(Booking.tracking_code)
        .where(
            Booking.mobile == mobile,
            Booking.national_id == national_id,
            Booking.service_code == service_code,
            Booking.date == day,
            Booking.status.in_(ACTIVE_STATUSES),
        )
        .limit(1)
    )
