"""Office staff pages: sign-in, today's queue (check-in, served, no-show, walk-ins, the
waiting count), the weekly template and date overrides, and the office's notices."""

from __future__ import annotations

import hashlib
import secrets
from functools import partial
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from redis.exceptions import RedisError

from app.capacity import keys
from app.capacity.errors import AlreadyBookedThatDay
from app.capacity.plan import DayRule, iranian_weekday, validate_rules
from app.console.errors import CapacityBelowBookings, TemplateChanged
from app.console.schemas import CapacityChange, MovedBooking
from app.container import Container
from app.errors import DomainError, Forbidden, InvalidInput
from app.load.schemas import OfficeLoad
from app.locale import WEEKDAY_NAMES, normalize_digits, parse_date, to_persian_digits
from app.offices import service as offices
from app.offices.service import normalize_code
from app.pages.render import (
    NOTICE_FA,
    TOP,
    Form,
    FormCheck,
    check_csrf,
    day_options,
    form_errors,
    render,
    require_staff,
    safe_next,
    see_other,
    staff_principal,
    to_int,
)
from app.staff.models import StaffRole
from app.staff.routes import DEVICE_COOKIE, STAFF_COOKIE, signed_in_cookies
from app.staff.service import StaffPrincipal
from app.web import Deps, Session, client_address

QUEUE_ACTIONS = {"check-in": "checked_in", "served": "served", "no-show": "no_show"}
PAST_DAYS_IN_QUEUE = 7  # yesterday's no-shows are worth a look; last month's are not
# What the forms show of saved numbers is in Persian digits, as the rest of the page; what a
# clerk typed is shown back as typed. Either kind of digit is read (normalize_digits).
# No day and no kind chosen for the clerk: "closed" and the list's first day (today) had been
# sent by a form whose hours were typed and its choices left as they were, closing today.
OVERRIDE_DEFAULTS = {"o_kind": "", "o_opens": "۰۸:۰۰", "o_closes": "۱۲:۰۰", "o_slot": "۳۰", "o_seats": "۲"}


def _reported(load: OfficeLoad) -> str:
    """The waiting count as the form shows it: the last report's, or none when it is too old."""
    return to_persian_digits(str(load.waiting_now)) if load.waiting_reported_at else ""


def _no_show_terms(container: Deps) -> str:
    """What a no-show mark may bring, from the settings (the «نیامد» button's question)."""
    settings = container.settings
    return (
        f"{to_persian_digits(str(settings.no_show_limit))} غیبت در "
        f"{to_persian_digits(str(settings.no_show_window_days))} روز نوبت‌گیری این کد ملی را "
        f"{to_persian_digits(str(settings.no_show_suspension_days))} روز می‌بندد."
    )


def _home(principal: StaffPrincipal) -> str:
    if principal.role.value == "office_staff" and principal.office_code:
        return f"/office/{principal.office_code}/queue"
    return "/watch"


def _template_form(days: dict[int, list[DayRule]]) -> dict[str, str]:
    """The editor's fields for the shared-seat rule of each weekday (d0_opens … d6_seats)."""
    form: dict[str, str] = {}
    for weekday in range(7):
        shared = next((r for r in days.get(weekday, []) if r.service is None), None)
        if shared is not None:
            form[f"d{weekday}_open"] = "on"
        rule = shared or DayRule(opens="08:00", closes="16:00", slot_minutes=30, seats=2)
        form |= {
            f"d{weekday}_opens": to_persian_digits(rule.opens),
            f"d{weekday}_closes": to_persian_digits(rule.closes),
            f"d{weekday}_slot": to_persian_digits(str(rule.slot_minutes)),
            f"d{weekday}_seats": to_persian_digits(str(rule.seats)),
        }
    return form


async def _own_counters(
    container: Container, office_code: str, days: dict[int, list[DayRule]]
) -> dict[int, list[DayRule]]:
    """Each weekday's rules of a service's own counter, which the page's forms keep as they
    are: only for services the office still offers (a stale one would have every save
    refused, with no way to remove it from the page). ``office_code`` as the address has it:
    read as the console reads it, or a code typed in Persian digits found no office here,
    and the save dropped every such counter."""
    office_code = normalize_code(office_code, "office_code")
    offered = (await container.offices.pools({office_code}))[office_code]
    return {
        weekday: [rule for rule in rules if rule.service is not None and rule.service in offered]
        for weekday, rules in days.items()
    }


def _more_shared(days: dict[int, list[DayRule]]) -> dict[int, list[DayRule]]:
    """Each weekday's shared-seat rules after the first (an afternoon shift after a lunch
    break, set through the API): the editor shows and edits the first only, and keeps these
    as they are while the day stays open. Dropped, every weekday's afternoon was gone at the
    next save, its citizens moved or cancelled."""
    return {weekday: [rule for rule in rules if rule.service is None][1:] for weekday, rules in days.items()}


def _rule(data: dict[str, str], prefix: str) -> DayRule:
    """One day's rule from the fields PREFIX_opens, _closes, _slot, _seats; errors name those fields."""
    check = FormCheck()
    slot = check(lambda: to_int(data.get(f"{prefix}_slot"), f"{prefix}_slot", "طول نوبت را به دقیقه بنویسید."))
    seats = check(lambda: to_int(data.get(f"{prefix}_seats"), f"{prefix}_seats", "ظرفیت هر نوبت را به عدد بنویسید."))
    check.done()
    assert slot is not None and seats is not None  # done() raised otherwise
    rule = DayRule(
        opens=normalize_digits(data.get(f"{prefix}_opens", "")).strip(),
        closes=normalize_digits(data.get(f"{prefix}_closes", "")).strip(),
        slot_minutes=slot,
        seats=seats,
    )
    try:
        validate_rules([rule])
    except InvalidInput as error:
        field = {"slot_minutes": "slot"}.get(error.field, error.field)
        raise InvalidInput(f"{prefix}_{field}", error.detail_en, detail_fa=error.detail_fa) from None
    return rule


class OfficePages(Controller):
    path = "/office"
    include_in_schema = False

    @get("/")
    async def start(self, request: Request[Any, Any, Any], container: Deps) -> Redirect:
        principal = await staff_principal(request, container)
        return see_other(_home(principal) if principal else "/office/signin")

    @get("/signin")
    async def signin_form(
        self, request: Request[Any, Any, Any], container: Deps, next: FromQuery[str | None] = None
    ) -> Template:
        return render(
            request, container, "office/signin.html", next=safe_next(next, ""), staff=None, **_lock_terms(container)
        )

    @post("/signin")
    async def signin(
        self, data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        check_csrf(request, container, data)
        settings = container.settings
        client = client_address(request, trust_forwarded_for=settings.trust_forwarded_for)
        try:
            signed = await container.staff.sign_in(
                session=session,
                username=data.get("username", ""),
                password=data.get("password", ""),
                client=client,
                device=request.cookies.get(DEVICE_COOKIE, ""),
            )
        except DomainError as error:
            await session.rollback()
            return render(
                request,
                container,
                "office/signin.html",
                status=error.status,
                headers=error.headers,  # a lock's or a limit's Retry-After
                errors=form_errors(error, ["username", "password"]),
                form={"username": data.get("username", "")},
                next=safe_next(data.get("next"), ""),
                staff=None,
                **_lock_terms(container),
            )
        return see_other(
            safe_next(data.get("next"), _home(signed.principal)), cookies=signed_in_cookies(container, signed)
        )

    @post("/signout")
    async def signout(self, data: Form, request: Request[Any, Any, Any], container: Deps) -> Redirect:
        check_csrf(request, container, data)
        await container.staff.sign_out(request.cookies.get(STAFF_COOKIE, ""))
        response = see_other("/office/signin?notice=signed_out")
        response.delete_cookie(STAFF_COOKIE, path="/")
        return response

    # --- today's queue ---

    async def _queue_page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        *,
        date: str | None,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
        highlight: str | None = None,
    ) -> Template:
        errors = dict(errors or {})
        today = container.clock.today()
        day = today
        if date:
            try:
                day = parse_date(date)
            except InvalidInput as error:
                errors |= form_errors(error, ["date"])
        try:
            entries = await container.console.queue(session=session, staff=staff, office_code=code, day=day)
        except InvalidInput as error:  # a day too far back or ahead: today's, with the error
            errors |= form_errors(error, ["date"])
            day = today
            entries = await container.console.queue(session=session, staff=staff, office_code=code, day=day)
        detail = await offices.get_office(session=session, code=code)
        load = await container.load.office_load(session=session, office_code=detail.code)
        return render(
            request,
            container,
            "office/queue.html",
            status=status,
            staff=staff,
            office=detail,
            load=load,
            day=day,
            is_today=day == today,
            entries=entries,
            days=day_options(container, past_days=PAST_DAYS_IN_QUEUE),
            services_options=[(s.code, s.name_fa) for s in detail.services],
            errors=errors,
            # No report in the last two hours (``WAITING_REPORT_SECONDS``): an empty field and
            # a hint saying so, not a «۰» the clerk would take for the public's figure.
            form={"date": day.isoformat(), "waiting": _reported(load), **(form or {})},
            highlight=highlight or request.query_params.get("tracking"),
            no_show_terms=_no_show_terms(container),
        )

    @get("/{code:str}/queue")
    async def queue(
        self,
        code: FromPath[str],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        date: FromQuery[str | None] = None,
    ) -> Template:
        staff = await require_staff(request, container)
        return await self._queue_page(request, session, container, staff, code, date=date)

    @post("/{code:str}/queue/{tracking_code:str}/{action:str}")
    async def queue_action(
        self,
        code: FromPath[str],
        tracking_code: FromPath[str],
        action: FromPath[str],
        data: Form,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/queue")
        check_csrf(request, container, data)
        steps = {
            "check-in": container.console.check_in,
            "served": container.console.serve,
            "no-show": container.console.no_show,
        }
        if action not in steps:
            raise Forbidden("Unknown queue action.", detail_fa="چنین کاری در صف تعریف نشده است.")
        try:
            entry = await steps[action](session=session, staff=staff, office_code=code, tracking_code=tracking_code)
        except DomainError as error:
            await session.rollback()
            # Named, and its row marked: on a long queue the clerk had been left at the top
            # with "not possible now" and no word of which booking.
            errors = {key: f"{tracking_code}: {text}" for key, text in form_errors(error, []).items()}
            return await self._queue_page(
                request, session, container, staff, code, date=None, errors=errors, status=error.status,
                highlight=tracking_code,
            )  # fmt: skip
        query = urlencode({"notice": QUEUE_ACTIONS[action], "tracking": entry.tracking_code})
        # Back at the row acted on: the page had opened at its top, the 35th row off-screen.
        return see_other(f"/office/{code}/queue?{query}#t-{entry.tracking_code}")

    @post("/{code:str}/walk-ins")
    async def walk_in(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/queue")
        check_csrf(request, container, data)
        try:
            booking = await container.console.walk_in(
                session=session,
                staff=staff,
                office_code=code,
                national_id=data.get("national_id", ""),
                service_code=data.get("service_code", ""),
                mobile=data.get("mobile") or None,
            )
        except DomainError as error:
            await session.rollback()
            done = None
            if isinstance(error, AlreadyBookedThatDay):
                done = await container.console.walk_in_today(
                    session=session,
                    staff=staff,
                    office_code=code,
                    national_id=data.get("national_id", ""),
                    service_code=data.get("service_code", ""),
                )
            if done:
                # A second tap (or the citizen already in today's queue): their row, not a
                # refusal that had the clerk turn them away or try again.
                query = urlencode({"notice": "walk_in_already", "tracking": done})
                return see_other(f"/office/{code}/queue?{query}#t-{done}")
            fields = ["national_id", "service_code", "mobile"]
            errors = form_errors(error, fields, {"service": "service_code"}, top="walk_in_top")
            return await self._queue_page(
                request,
                session,
                container,
                staff,
                code,
                date=None,
                errors=errors,
                form={k: data.get(k, "") for k in ("national_id", "service_code", "mobile")},
                status=error.status,
            )
        query = urlencode({"notice": "walk_in", "tracking": booking.tracking_code})
        return see_other(f"/office/{code}/queue?{query}#t-{booking.tracking_code}")

    @post("/{code:str}/waiting")
    async def waiting(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/queue")
        check_csrf(request, container, data)
        try:
            count = to_int(data.get("waiting"), "waiting", "تعداد منتظران را به عدد بنویسید.")
            await container.console.report_waiting(session=session, staff=staff, office_code=code, waiting=count)
        except DomainError as error:
            await session.rollback()
            return await self._queue_page(
                request,
                session,
                container,
                staff,
                code,
                date=None,
                errors=form_errors(error, ["waiting"]),
                form={"waiting": data.get("waiting", "")},
                status=error.status,
            )
        return see_other(f"/office/{code}/queue?notice=waiting")

    # --- capacity: the weekly template, date overrides, the horizon's day plans ---

    async def _capacity_page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        *,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        refusal: dict[str, Any] | None = None,
        status: int = 200,
        moved: list[MovedBooking] | None = None,
        notice: str | None = None,
    ) -> Template:
        template = await container.console.template(session=session, staff=staff, office_code=code)
        plans = await container.console.day_plans(session=session, staff=staff, office_code=code)
        far_overrides = await container.console.far_overrides(session=session, staff=staff, office_code=code)
        detail = await offices.get_office(session=session, code=code)
        more_shared = _more_shared(template.days)
        context: dict[str, Any] = {"notice": NOTICE_FA[notice]} if notice else {}
        return render(
            request,
            container,
            "office/capacity.html",
            status=status,
            staff=staff,
            office=detail,
            plans=plans,
            far_overrides=far_overrides,
            weekdays=list(enumerate(WEEKDAY_NAMES)),
            other_rules={w: [r for r in rules if r.service] + more_shared[w] for w, rules in template.days.items()},
            days=day_options(container),
            errors=errors or {},
            form=form if form is not None else {**_template_form(template.days), **OVERRIDE_DEFAULTS},
            refusal=refusal,
            version=_template_version(template.days),
            moved=moved or [],
            **context,
        )

    @get("/{code:str}/capacity")
    async def capacity(
        self,
        code: FromPath[str],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        moves: FromQuery[str | None] = None,
    ) -> Template:
        staff = await require_staff(request, container)
        shown = await _moves_shown(container, code, moves) if moves else None
        return await self._capacity_page(request, session, container, staff, code, moved=shown)

    async def _refused(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        error: DomainError,
        data: dict[str, str],
        *,
        form_name: str,
        fields: list[str],
        aliases: dict[str, str] | None = None,
    ) -> Template:
        await session.rollback()
        errors = form_errors(error, fields, aliases, top=f"{form_name}_top")
        refusal = None
        if isinstance(error, CapacityBelowBookings):
            refusal = {"form": form_name, "slots": error.extra.get("slots", []), "date": data.get("clear_date")}
        # Keep what was typed in the form that failed; the other form shows the saved plan.
        template = await container.console.template(session=session, staff=staff, office_code=code)
        form = {**_template_form(template.days), **OVERRIDE_DEFAULTS}
        form |= {k: v for k, v in data.items() if k.startswith("o_" if form_name == "override" else "d")}
        if form_name == "template":
            for weekday in range(7):
                if f"d{weekday}_open" not in data:
                    form.pop(f"d{weekday}_open", None)
        return await self._capacity_page(
            request, session, container, staff, code, errors=errors, form=form, refusal=refusal, status=error.status
        )

    @post("/{code:str}/capacity/template")
    async def save_template(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/capacity")
        check_csrf(request, container, data)
        fields = [f"d{w}_{part}" for w in range(7) for part in ("opens", "closes", "slot", "seats")]
        try:
            current = await container.console.template(session=session, staff=staff, office_code=code)
            if data.get("version") and data["version"] != _template_version(current.days):
                # Changed since this form was shown (another clerk, the regulator): saved, it
                # had put back every weekday it showed, and with «move» ticked moved or
                # cancelled the bookings of hours nobody meant to close. The plan as it is now.
                return await self._capacity_page(
                    request,
                    session,
                    container,
                    staff,
                    code,
                    errors={"template_top": TemplateChanged.message_fa},
                    status=409,
                )
            # Counters of a service's own (a passport desk, say) are kept as they are: the
            # editor changes the shared seats only.
            own_counters = await _own_counters(container, code, current.days)
            more_shared = _more_shared(current.days)
            days: dict[int, list[DayRule]] = {}
            check = FormCheck()  # every weekday's errors at once
            for weekday in range(7):
                own = own_counters.get(weekday, [])
                shared = []
                if data.get(f"d{weekday}_open") == "on":  # closed: every shared span of the day
                    rule = check(partial(_rule, data, f"d{weekday}"))
                    shared = [rule, *more_shared.get(weekday, [])] if rule else []
                days[weekday] = shared + own
            check.done()
            change = await container.console.set_template(
                session=session,
                staff=staff,
                office_code=code,
                days=days,
                move_overflow=data.get("move") == "on",
                seen=current,  # and again under the office's lock: two saves at once
            )
        except DomainError as error:
            return await self._refused(
                request, session, container, staff, code, error, data, form_name="template", fields=fields
            )
        return await self._saved(request, session, container, staff, code, change, "template")

    @post("/{code:str}/capacity/overrides")
    async def save_override(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/capacity")
        check_csrf(request, container, data)
        fields = ["o_date", "o_date_far", "o_kind", "o_opens", "o_closes", "o_slot", "o_seats", "o_reason"]
        far = data.get("o_date_far", "").strip()  # a day past the list's, typed (Jalali or ISO)
        try:
            check = FormCheck()  # the day, the choice and the hours' errors at once
            day = None
            if not far and not data.get("o_date"):
                check.fail(InvalidInput("o_date", "Choose the day.", detail_fa="روز را انتخاب کنید."))
            else:
                day = check(lambda: parse_date(far, "o_date_far") if far else parse_date(data["o_date"], "o_date"))
            if data.get("o_kind") not in ("closed", "hours"):
                check.fail(
                    InvalidInput(
                        "o_kind",
                        "Choose whether the office is closed that day or keeps special hours.",
                        detail_fa="بگویید دفتر آن روز تعطیل است یا ساعت کاری ویژه دارد.",
                    )
                )
            hours = check(lambda: _rule(data, "o")) if data.get("o_kind") == "hours" else None
            check.done()
            assert day is not None  # done() raised otherwise
            rules = []
            if hours is not None:
                # A day's override replaces all its rules: a service's own counters (a passport
                # desk) are kept from the template, as the template editor keeps them; dropped,
                # its bookings were moved away and nobody could book it that day.
                current = await container.console.template(session=session, staff=staff, office_code=code)
                own = await _own_counters(container, code, current.days)
                rules = [hours, *own.get(iranian_weekday(day), [])]
            change = await container.console.set_override(
                session=session,
                staff=staff,
                office_code=code,
                day=day,
                rules=rules,
                reason=data.get("o_reason", "").strip(),
                move_overflow=data.get("o_move") == "on",
            )
        except DomainError as error:
            return await self._refused(
                request, session, container, staff, code, error, data, form_name="override", fields=fields,
                aliases={"date": "o_date_far" if far else "o_date"},
            )  # fmt: skip
        return await self._saved(request, session, container, staff, code, change, "override")

    @post("/{code:str}/capacity/overrides/{date:str}/clear")
    async def clear_override(
        self,
        code: FromPath[str],
        date: FromPath[str],
        data: Form,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/office/{code}/capacity")
        check_csrf(request, container, data)
        try:
            change = await container.console.clear_override(
                session=session,
                staff=staff,
                office_code=code,
                day=parse_date(date),
                move_overflow=data.get("move") == "on",
            )
        except DomainError as error:
            return await self._refused(
                request, session, container, staff, code, error, {"clear_date": date}, form_name="clear", fields=[]
            )
        return await self._saved(request, session, container, staff, code, change, "override_cleared")

    async def _saved(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        change: CapacityChange,
        notice: str,
    ) -> Template | Redirect:
        """After a save, the page again; with the bookings it moved or cancelled listed, when
        there were any: the clerk had been told nothing of them (a walk-in with no mobile,
        moved away from the queue with no SMS, was simply gone from it). Redirected, the list
        kept a few minutes under a key of its own: the page reloaded does not save again."""
        query = {"notice": notice}
        if change.moved:
            key = secrets.token_urlsafe(12)
            try:
                await container.redis.set(
                    keys.moves_shown(code, key), msgspec.json.encode(change.moved), ex=MOVES_SHOWN_SECONDS
                )
            except RedisError:  # shown at once instead
                return await self._capacity_page(
                    request, session, container, staff, code, moved=change.moved, notice=notice
                )
            query["moves"] = key
        return see_other(f"/office/{code}/capacity?{urlencode(query)}")

    # --- what the regulator and the policy told the office ---

    @get("/{code:str}/notices")
    async def notices(
        self, code: FromPath[str], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template:
        staff = await require_staff(request, container)
        return await self._notices_page(request, session, container, staff, code)

    async def _notices_page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        *,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Template:
        notices = await container.enforcement.notices(session=session, staff=staff, office_code=code)
        history = await container.enforcement.history(session=session, staff=staff, office_code=code)
        appeals, appealable = await container.enforcement.office_appeals(session=session, staff=staff, office_code=code)
        detail = await offices.get_office(session=session, code=code)
        return render(
            request,
            container,
            "office/notices.html",
            status=status,
            staff=staff,
            office=detail,
            notices=notices,
            history=history,
            appeals=appeals,
            appealable=appealable if staff.role is StaffRole.OFFICE_STAFF else set(),
            errors=errors or {},
            form=form or {},
        )

    @post("/{code:str}/appeals")
    async def appeal(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        """An appeal against a restriction or a block, from the page the notice of it is on
        (its "seven days to appeal"): through the API alone, which a browser's session may
        only read, a clerk could not appeal at all."""
        staff = await require_staff(request, container, back=f"/office/{code}/notices")
        check_csrf(request, container, data)
        action = data.get("action_id", "")
        try:
            await container.enforcement.appeal(
                session=session,
                staff=staff,
                office_code=code,
                action_id=to_int(action, "action_id", "این اقدام شناخته نشد."),
                text=data.get(f"text_{action}", ""),
            )
        except DomainError as error:
            await session.rollback()
            return await self._notices_page(
                request,
                session,
                container,
                staff,
                code,
                # Each action's form has a text of its own: its error goes beside it; any other
                # (the days gone by, the action lifted meanwhile) at the top of the page, which
                # shows whether or not that action's form is still drawn.
                errors={
                    (TOP if key == TOP else f"text_{action}"): text
                    for key, text in form_errors(error, ["text"]).items()
                },
                form={f"text_{action}": data.get(f"text_{action}", "")},
                status=error.status,
            )
        return see_other(f"/office/{code}/notices?notice=appeal_filed")


def _template_version(days: dict[int, list[DayRule]]) -> str:
    """A digest of the weekly template as a page shows it: sent back with the form, a change
    saved meanwhile by someone else is found, not overwritten."""
    plain = {str(weekday): rules for weekday, rules in sorted(days.items())}
    return hashlib.sha256(msgspec.json.encode(plain)).hexdigest()[:16]


MOVES_SHOWN_SECONDS = 600
"""How long the list of a save's moves can be shown again (``OfficePages._saved``)."""


async def _moves_shown(container: Deps, office_code: str, key: str) -> list[MovedBooking] | None:
    """A save's moves, kept for its page; None when gone (or Redis does not answer)."""
    try:
        raw = await container.redis.get(keys.moves_shown(office_code, key[:40]))
    except RedisError:
        return None
    return None if raw is None else msgspec.json.decode(raw, type=list[MovedBooking])


def _lock_terms(container: Deps) -> dict[str, Any]:
    """The lockout the sign-in page tells of, as the deployment sets it (it said 5 and 15 always)."""
    settings = container.settings
    return {"lock_tries": settings.staff_max_failures, "lock_minutes": max(1, settings.staff_lockout_seconds // 60)}
