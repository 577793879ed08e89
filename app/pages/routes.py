"""The pages, gathered under one router whose errors are pages too (the API's stay JSON)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, Router
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.response import Template
from litestar.types import ControllerRouterHandler

from app.errors import PROBLEM_TYPE_BASE, DomainError, Unauthorized
from app.pages import COMPRESSED
from app.pages.citizen import CitizenPages
from app.pages.office import OfficePages
from app.pages.render import SECURITY_HEADERS, SignInRequired, here, is_staff_area, see_other
from app.pages.watch import WatchPages
from app.web import INTERNAL_ERROR_FA, PROBLEMS, problem_for

log = logging.getLogger(__name__)

TITLES = {
    400: "درخواست نادرست",
    401: "ورود لازم است",
    403: "دسترسی ندارید",
    404: "پیدا نشد",
    405: "این کار ممکن نیست",
    409: "این کار اکنون ممکن نیست",
    422: "مقدار نادرست",
    429: "درخواست‌های زیاد",
    500: "خطای سامانه",
    503: "سامانه موقتاً در دسترس نیست",
}


def _page(
    request: Request[Any, Any, Any], status: int, message: str, headers: dict[str, str] | None = None
) -> Template:
    staff_area = is_staff_area(request)
    return Template(
        template_name="error.html",
        context={
            "layout": "staff_base.html" if staff_area else "base.html",
            "title": TITLES.get(status, "خطا"),
            "message": message,
            "back": "/office" if staff_area else "/",
            # Error pages carry no forms (the CSRF token is for forms) and no session details.
            "csrf": "",
            "path": request.url.path,
            "citizen": None,
            "staff": None,
            "errors": {},
            "form": {},
            "notice": None,
        },
        status_code=status,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def _domain_error(request: Request[Any, Any, Any], error: DomainError) -> Response[Any]:
    if isinstance(error, Unauthorized):
        # A session that ended between two clicks: sign in again and come back here.
        target = "/office/signin" if is_staff_area(request) else "/signin"
        back = here(request) if request.method == "GET" else ("/office" if is_staff_area(request) else "/")
        return see_other(f"{target}?{urlencode({'next': back})}")
    return _page(request, error.status, error.detail_fa, error.headers)


def _sign_in(request: Request[Any, Any, Any], error: SignInRequired) -> Response[Any]:
    return see_other(error.url)


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    if isinstance(error, NotFoundException):
        return _page(request, 404, "صفحه‌ای با این نشانی نیست.")
    if error.status_code == 400:
        return _page(request, 400, "درخواست ناقص یا نادرست است. صفحه را دوباره باز کنید.")
    return _page(request, error.status_code, "درخواست پذیرفته نشد.", error.headers)


def _failure(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """A failure of what is under a page (the database or Redis away or busy, a value the
    database cannot hold, a bug) as a page, with the status and the Persian message the API
    gives it (app.web.PROBLEMS). Registered here for each kind the API maps: Litestar takes
    the handler of an error's nearest class over every layer, so the app's for DBAPIError
    would otherwise answer a citizen's page with JSON."""
    problem = problem_for(error)
    message = (
        problem.extra.get("message_fa", INTERNAL_ERROR_FA) if isinstance(problem.extra, dict) else INTERNAL_ERROR_FA
    )
    return _page(request, problem.status_code, message, dict(problem.headers or {}))


# Paths that belong to the API and the machines, whose errors stay RFC 9457 JSON.
API_PREFIXES = ("/api/", "/sms/", "/health", "/schema", "/static/", "/metrics")


def _wants_page(request: Request[Any, Any, Any]) -> bool:
    return "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(API_PREFIXES)


def not_found(request: Request[Any, Any, Any], error: NotFoundException) -> Response[Any]:
    """An app-level handler for paths no route matches (the router's handlers never see
    those): a Persian page for a browser, the usual problem JSON for everyone else.
    Wire it in ``create_app`` with ``exception_handlers={NotFoundException: not_found}``."""
    if _wants_page(request):
        return _page(request, 404, "صفحه‌ای با این نشانی نیست.")
    return ProblemDetailsException(
        status_code=404,
        detail=error.detail,
        title=error.detail,
        type_=PROBLEM_TYPE_BASE + "not_found",
        extra={"code": "not_found", "message_fa": "پیدا نشد.", "message_en": error.detail},
    ).to_response(request)


def method_not_allowed(request: Request[Any, Any, Any], error: MethodNotAllowedException) -> Response[Any]:
    """Like ``not_found``, for a page's address asked the wrong way (a sign-out or cancel
    link typed or bookmarked, which only its form may send): also refused while routing,
    where only the app's handlers see it."""
    if _wants_page(request):
        return _page(request, 405, "این صفحه را باید از دکمهٔ خودش باز کنید.", error.headers)
    return problem_for(error).to_response(request)


PAGES = Router(
    path="/",
    route_handlers=[CitizenPages, OfficePages, WatchPages],
    include_in_schema=False,
    middleware=[COMPRESSED],
    exception_handlers={
        **dict.fromkeys(PROBLEMS, _failure),
        DomainError: _domain_error,
        SignInRequired: _sign_in,
        HTTPException: _http_error,
    },
)

PAGE_CONTROLLERS: list[ControllerRouterHandler] = [PAGES]
