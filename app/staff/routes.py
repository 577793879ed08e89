from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.container import Container
from app.errors import Unauthorized
from app.staff.devices import REMEMBERED_SECONDS
from app.staff.schemas import StaffLogin, StaffMe, StaffSessionOut
from app.staff.service import SignedIn, StaffPrincipal
from app.web import Deps, Session, bearer_token, client_address, json_only, session_cookie

STAFF_COOKIE = "nobat_staff"
"""The session token for the staff web pages; API clients send it as a bearer token instead."""
DEVICE_COOKIE = "nobat_staff_device"
"""The browser's proofs of earlier sign-ins (app.staff.devices): the account's lockout spares it."""


def signed_in_cookies(container: Container, signed: SignedIn) -> list[Cookie]:
    """The session and the browser's proofs of sign-in (app.staff.devices), as the API and
    the sign-in page both set them (the pages and the CSV export read the session cookie)."""
    return [
        session_cookie(
            container,
            STAFF_COOKIE,
            signed.token,
            max_age=container.settings.staff_session_ttl_seconds,
            samesite="strict",
        ),
        session_cookie(container, DEVICE_COOKIE, signed.device, max_age=REMEMBERED_SECONDS, samesite="strict"),
    ]


def staff_token(request: Request[Any, Any, Any]) -> str:
    """The bearer token when the request has an Authorization header, else the cookie ("" if neither)."""
    if request.headers.get("authorization"):
        return bearer_token(request)
    return request.cookies.get(STAFF_COOKIE, "")


READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


async def provide_staff(request: Request[Any, Any, Any], container: Deps) -> StaffPrincipal:
    """Dependency: the signed-in staff, regulator or guild account (401 when there is none).

    The cookie signs in only reads (the CSV export a page links to): a browser sends it with
    any request to this site, a forged one from another site's form too where SameSite is
    not honoured (old browsers, which offices keep). A change through the API takes the
    bearer token, which no other site can make a browser send; the pages' forms carry a
    form token of their own (app.pages.render)."""
    if request.method not in READ_ONLY_METHODS:
        refuse_the_cookie_alone(request)
    return await container.staff.principal(staff_token(request))


def refuse_the_cookie_alone(request: Request[Any, Any, Any]) -> None:
    """A change through the API needs the bearer token (see ``provide_staff``): 401 without it."""
    if request.headers.get("authorization"):
        return
    refused = Unauthorized(
        "Send the session as a bearer token (Authorization: Bearer ...): the cookie signs in reading only.",
        detail_fa="نشست را با سرآیند Authorization بفرستید؛ کوکی فقط برای خواندن پذیرفته می‌شود.",
    )
    refused.headers["WWW-Authenticate"] = "Bearer"  # what to send instead (RFC 6750)
    raise refused


Staff = NamedDependency[StaffPrincipal]
"""What a handler declares (as a parameter named ``staff``) to receive the signed-in account."""


class StaffAuthController(Controller):
    path = "/api/v1/staff"
    tags = ["staff sign-in"]

    @post("/login", status_code=200, guards=[json_only], summary="Sign in with a username and password")
    async def login(
        self, data: JSONBody[StaffLogin], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Response[StaffSessionOut]:
        settings = container.settings
        client = client_address(request, trust_forwarded_for=settings.trust_forwarded_for)
        signed = await container.staff.sign_in(
            session=session,
            username=data.username,
            password=data.password,
            client=client,
            device=request.cookies.get(DEVICE_COOKIE, ""),
        )
        body = StaffSessionOut(
            access_token=signed.token,
            token_type="Bearer",
            expires_in=settings.staff_session_ttl_seconds,
            role=signed.principal.role,
            office_code=signed.principal.office_code,
            username=signed.principal.username,
        )
        return Response(body, status_code=200, cookies=signed_in_cookies(container, signed))

    @post("/logout", status_code=204, summary="End the session (bearer token)")
    async def logout(self, request: Request[Any, Any, Any], container: Deps) -> Response[None]:
        # The cookie alone is refused as for any change: another site's form could otherwise
        # sign a clerk out in the middle of the morning's queue. The pages sign out with their
        # own form token (app.pages.office). Idempotent: a session that already ended is 204.
        refuse_the_cookie_alone(request)
        await container.staff.sign_out(bearer_token(request))
        response = Response(None, status_code=204)
        response.delete_cookie(STAFF_COOKIE, path="/")
        return response

    @get("/me", summary="The signed-in staff, regulator or guild account")
    async def me(self, staff: Staff) -> StaffMe:
        return StaffMe(username=staff.username, role=staff.role, office_code=staff.office_code)
