"""What every page shares: the Jinja environment and its Persian filters, the CSRF token,
the sessions behind the cookies, form errors, and the one ``render`` call handlers make."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from litestar import Request
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from app.container import Container
from app.errors import DomainError, Forbidden, InvalidFields, InvalidInput, Unauthorized
from app.identity import mask_mobile
from app.locale import jalali_date, jalali_time, normalize_digits, to_persian_digits
from app.pages.assets import asset_url
from app.staff.routes import STAFF_COOKIE
from app.staff.service import StaffPrincipal
from app.web import session_cookie

CITIZEN_COOKIE = "nobat_citizen"
"""The citizen's bearer token (from the one-time SMS code), for the pages."""
VISIT_COOKIE = "nobat_visit"
"""A random value that binds the CSRF token of forms shown before anyone signs in."""
CSRF_FIELD = "_csrf"

_VISIT_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")

# Every page: nothing from elsewhere (the service runs on closed networks too), no framing,
# no tracking codes leaking through the Referer header, and no copy kept by the browser: on
# an office's shared computer, Back after a sign-out had shown the last citizen's bookings
# and complaints from its cache. (The assets under /static are cached: app.pages; and so are
# the PUBLIC_PAGES.)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; font-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

# --- Persian labels of the states the services report in English ---

BOOKING_STATUS_FA = {
    "waitlisted": "در فهرست انتظار",
    "booked": "ثبت‌شده",
    "checked_in": "حاضر شد",
    "served": "خدمت گرفت",
    "no_show": "غایب",
    "cancelled": "لغوشده",
}
CHANNEL_FA = {"web": "وب", "sms": "پیامک", "walk_in": "حضوری"}
OFFICE_STATUS_FA = {"active": "فعال", "restricted": "محدود", "blocked": "مسدود"}
DAY_SOURCE_FA = {
    "template": "برنامهٔ هفتگی",
    "override": "برنامهٔ ویژهٔ همین روز",
    "holiday": "تعطیل رسمی",
    "closure": "تعطیل به دستور نهاد ناظر",
}
ACTION_KIND_FA = {"restrict": "محدودسازی", "block": "مسدودسازی"}
ACTION_SOURCE_FA = {"policy": "خودکار (بر پایهٔ شکایت‌ها)", "regulator": "تصمیم نهاد ناظر"}
APPEAL_FA = {"pending": "در انتظار تصمیم", "upheld": "رد شد", "overturned": "پذیرفته شد"}
ROLE_FA = {"office_staff": "کارکنان دفتر", "regulator": "نهاد ناظر", "guild": "کانون صنفی"}


# Messages a page shows after a POST redirected to it (?notice=KEY): fixed texts, so a link
# cannot put words of its own on our pages.
NOTICE_FA = {
    "signed_in": "وارد شدید.",
    "signed_out": "از حساب خود خارج شدید.",
    "signed_out_everywhere": "از حساب خود در همهٔ دستگاه‌ها خارج شدید.",
    "sign_in_first": "برای خروج از همهٔ دستگاه‌ها، نخست وارد شوید.",
    "cancelled": "نوبت لغو شد و جای آن آزاد شد.",
    "complaint_filed": "شکایت ثبت شد. کد رهگیری پیامک هم می‌شود.",
    "checked_in": "حضور ثبت شد.",
    "served": "خدمت‌رسانی ثبت شد.",
    "no_show": "غیبت ثبت شد.",
    "walk_in": "مراجعهٔ حضوری در نخستین زمان خالی امروز ثبت شد.",
    "walk_in_already": "این کد ملی برای این خدمت امروز در همین صف است؛ ردیف آن نشان داده شد.",
    "waiting": "تعداد منتظران ثبت شد.",
    "template": "برنامهٔ هفتگی ذخیره شد و برای همهٔ روزهای پیش رو اعمال شد.",
    "override": "برنامهٔ ویژهٔ آن روز ذخیره شد.",
    "override_cleared": "برنامهٔ ویژه برداشته شد و آن روز طبق برنامهٔ هفتگی است.",
    "restricted": "دفتر محدود شد.",
    "blocked": "دفتر مسدود شد و نوبت‌های آینده‌اش جابه‌جا شد.",
    "lifted": "محدودیت دفتر برداشته شد.",
    "appeal_upheld": "اعتراض رد شد و به دفتر خبر داده شد.",
    "appeal_overturned": "اعتراض پذیرفته شد و به دفتر خبر داده شد.",
    "not_saved": "نشست شما پایان یافته بود و آخرین کار ذخیره نشد. پس از ورود، دوباره انجامش دهید.",
    "day_passed": "روز آن فرم گذشته است و نوبتی ثبت نشد. روز و زمان را دوباره انتخاب کنید.",
    "appeal_filed": "اعتراض ثبت شد و نتیجهٔ آن در همین صفحه دیده می‌شود.",
    "transition": "مرحلهٔ تازهٔ شکایت ثبت شد و به شاکی پیامک می‌شود.",
}


# --- filters ---


def fa(value: object) -> str:
    """Persian digits (and the Persian thousands separator for integers)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return to_persian_digits(f"{value:,}").replace(",", "٬")
    if isinstance(value, float):
        return to_persian_digits(f"{value:.1f}").replace(".", "٫")
    return to_persian_digits(str(value))


def jdate(value: str | dt.date | None) -> str:
    if not value:
        return ""
    day = value if isinstance(value, dt.date) else dt.date.fromisoformat(value[:10])
    return jalali_date(day)


def jtime(value: str | None) -> str:
    return jalali_time(dt.time.fromisoformat(value)) if value else ""


@pass_context
def jdatetime(context: Context, value: str | dt.datetime | None) -> str:
    """An ISO timestamp, in the offices' time zone, as a Jalali date and time."""
    if not value:
        return ""
    tz = context.get("tz") or ZoneInfo("Asia/Tehran")
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        # SQLite keeps the wall-clock time without its offset; the times these pages show
        # (actions, complaints, notices) are all written from the clock, in the offices' zone.
        moment = moment.replace(tzinfo=tz)
    local = moment.astimezone(tz)
    return f"{jalali_date(local.date())}، ساعت {jalali_time(local.time())}"


def environment(directory: Path) -> Environment:
    env = Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fa=fa, jdate=jdate, jtime=jtime, jdatetime=jdatetime)
    env.globals.update(
        BOOKING_STATUS_FA=BOOKING_STATUS_FA,
        CHANNEL_FA=CHANNEL_FA,
        OFFICE_STATUS_FA=OFFICE_STATUS_FA,
        DAY_SOURCE_FA=DAY_SOURCE_FA,
        ACTION_KIND_FA=ACTION_KIND_FA,
        ACTION_SOURCE_FA=ACTION_SOURCE_FA,
        APPEAL_FA=APPEAL_FA,
        ROLE_FA=ROLE_FA,
        CSRF_FIELD=CSRF_FIELD,
        asset=asset_url,
    )
    return env


# --- who is signed in ---


def citizen_mobile(request: Request[Any, Any, Any], container: Container) -> str | None:
    token = request.cookies.get(CITIZEN_COOKIE)
    if not token:
        return None
    try:
        return container.auth.mobile_from_token(token)
    except Unauthorized:
        return None


async def staff_principal(request: Request[Any, Any, Any], container: Container) -> StaffPrincipal | None:
    try:
        return await container.staff.principal(request.cookies.get(STAFF_COOKIE, ""))
    except Unauthorized:
        return None


# --- CSRF: a token per session, in a hidden field of every POST form ---


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    message_fa = "این فرم منقضی شده یا از جای دیگری فرستاده شده است. صفحه را دوباره باز کنید و دوباره تلاش کنید."
    message_en = "The form expired or was sent from elsewhere. Open the page again and retry."


def _binding(request: Request[Any, Any, Any], container: Container, staff_area: bool) -> tuple[str, Cookie | None]:
    """What the token is bound to: the session cookie of the area (citizen or staff) when
    there is one, else a random visit cookie, set now if the browser has none yet."""
    session = request.cookies.get(STAFF_COOKIE if staff_area else CITIZEN_COOKIE)
    if session:
        return f"session:{session}", None
    visit = request.cookies.get(VISIT_COOKIE, "")
    if _VISIT_RE.fullmatch(visit):
        return f"visit:{visit}", None
    visit = secrets.token_urlsafe(24)
    return f"visit:{visit}", session_cookie(container, VISIT_COOKIE, visit, max_age=None, samesite="lax")


def _token(container: Container, binding: str, staff_area: bool) -> str:
    message = f"csrf:{'staff' if staff_area else 'citizen'}:{binding}".encode()
    return hmac.new(container.settings.secret_key.encode(), message, hashlib.sha256).hexdigest()


def check_csrf(request: Request[Any, Any, Any], container: Container, data: Mapping[str, str]) -> None:
    """Raise CsrfRejected unless the form carries this session's token."""
    binding, fresh = _binding(request, container, is_staff_area(request))
    sent = data.get(CSRF_FIELD, "")
    if fresh is not None or not isinstance(sent, str):
        raise CsrfRejected()
    if not hmac.compare_digest(sent.encode(), _token(container, binding, is_staff_area(request)).encode()):
        raise CsrfRejected()


def is_staff_area(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    return path.startswith(("/office/", "/watch/")) or path in ("/office", "/watch")


# --- rendering ---


def render(
    request: Request[Any, Any, Any],
    container: Container,
    template: str,
    *,
    status: int = 200,
    cookies: Iterable[Cookie] = (),
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> Template:
    staff_area = is_staff_area(request)
    binding, fresh = _binding(request, container, staff_area)
    mobile = None if staff_area else citizen_mobile(request, container)
    base: dict[str, Any] = {
        "csrf": _token(container, binding, staff_area),
        "tz": container.clock.tz,
        "path": request.url.path,
        "citizen": mask_mobile(mobile) if mobile else None,
        "errors": {},
        "form": {},
        "notice": NOTICE_FA.get(request.query_params.get("notice", "")),
    }
    base.update(context)
    all_cookies = [*cookies, *([fresh] if fresh else [])]
    kept = {"Cache-Control": "private, no-cache"} if template in PUBLIC_PAGES and not mobile and not staff_area else {}
    return Template(
        template_name=template,
        context=base,
        status_code=status,
        cookies=all_cookies,
        headers={**SECURITY_HEADERS, **kept, **(headers or {})},  # a refusal's Retry-After, say
    )


PUBLIC_PAGES = frozenset({"citizen/home.html", "citizen/offices.html", "citizen/office.html"})
"""Pages with nothing of anyone's on them (shown to a visitor not signed in): the browser may
keep them (``private, no-cache``), so that Back from an office's page on a slow line shows the
results again at once, where ``no-store`` had fetched them again and run the search anew."""


def see_other(path: str, *, cookies: Iterable[Cookie] = ()) -> Redirect:
    """POST-redirect-GET (303), or a redirect to a page that needs a sign-in first."""
    return Redirect(path=path, status_code=303, cookies=list(cookies))


def safe_next(value: str | None, default: str = "/") -> str:
    """Only a path on this site: never "//host" or a scheme (an open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or any(c in value for c in "\r\n"):
        return default
    return value


# --- form errors beside their fields ---

# Errors without a field that still belong beside one on our forms.
FIELD_OF_CODE = {
    "city_not_found": "city",
    "service_not_found": "service",
    "service_not_offered": "service",
    "office_not_found": "office_code",
    "booking_not_found": "tracking_code",
    "complaint_not_found": "tracking_code",
    "otp_wrong": "code",
    "otp_expired": "code",
}

TOP = "_top"
Checked = TypeVar("Checked")


def form_errors(
    error: DomainError, fields: Iterable[str], aliases: Mapping[str, str] | None = None, *, top: str = TOP
) -> dict[str, str]:
    """The error as {field: Persian message}; on the form's top (``top``: "_top", or that of
    one form of several on a page) when it names no field of this form."""
    known = set(fields)
    errors: dict[str, str] = {}
    for each in error.each if isinstance(error, InvalidFields) else [error]:
        field = each.field if isinstance(each, InvalidInput) else FIELD_OF_CODE.get(each.code, "")
        field = (aliases or {}).get(field, field)
        errors.setdefault(field if field in known else top, each.detail_fa)  # the first of any one place
    return errors


class FormCheck:
    """A form's field checks, all run before one error names every field that failed
    (``InvalidFields``): told of one at a time, a clerk sent the form again for each."""

    def __init__(self) -> None:
        self.failed: list[InvalidInput] = []

    def __call__(self, check: Callable[[], Checked]) -> Checked | None:
        """``check()``'s value; None, its error kept, if it failed."""
        try:
            return check()
        except InvalidInput as error:
            self.fail(error)
            return None

    def fail(self, error: InvalidInput) -> None:
        self.failed += error.each if isinstance(error, InvalidFields) else [error]

    def done(self) -> None:
        """Raise what failed: the one error, or all of them."""
        if len(self.failed) == 1:
            raise self.failed[0]
        if self.failed:
            raise InvalidFields(self.failed)


# --- the rest of what handlers share ---

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
"""A posted HTML form, as the page handlers receive it."""


class SignInRequired(Exception):
    """Raised by a page that needs a signed-in citizen or staff member; becomes a redirect."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def here(request: Request[Any, Any, Any]) -> str:
    """This request's path and query, to come back to after signing in."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def require_citizen(request: Request[Any, Any, Any], container: Container, *, back: str | None = None) -> str:
    """The signed-in citizen's mobile; otherwise off to the sign-in page (and back afterwards)."""
    mobile = citizen_mobile(request, container)
    if mobile is None:
        raise SignInRequired("/signin?" + urlencode({"next": back or here(request)}))
    return mobile


async def require_staff(
    request: Request[Any, Any, Any], container: Container, *, back: str | None = None
) -> StaffPrincipal:
    principal = await staff_principal(request, container)
    if principal is None:
        query = {"next": back or here(request)}
        if request.method == "POST":
            # A change sent after the session ended (a walk-in, a no-show, a week's plan):
            # the sign-in page says it was not saved, where it had come back without a word.
            query["notice"] = "not_saved"
        raise SignInRequired("/office/signin?" + urlencode(query))
    return principal


def day_options(container: Container, *, past_days: int = 0) -> list[tuple[str, str]]:
    """(ISO date, Persian label) for each day of the booking horizon (and a few past ones)."""
    today = container.clock.today()
    options = []
    for offset in range(-past_days, container.settings.horizon_days):
        day = today + dt.timedelta(days=offset)
        prefix = {0: "امروز، ", 1: "فردا، "}.get(offset, "")
        options.append((day.isoformat(), prefix + jalali_date(day)))
    return options


def to_int(value: str | None, field: str, detail_fa: str) -> int:
    try:
        return int(normalize_digits(value or "").strip())
    except ValueError:
        raise InvalidInput(field, f"{field} must be a whole number.", detail_fa=detail_fa) from None
