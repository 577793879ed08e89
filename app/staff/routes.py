from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.staff.devices import REMEMBERED_SECONDS
from app.staff.schemas import StaffLogin, StaffMe, StaffSessionOut
from app.staff.service import StaffPrincipal
from app.web import Deps, Session, bearer_token, client_address

STAFF_COOKIE = "nobat_staff"
"""The session token for the staff web pages; API clients send it as a bearer token instead."""
DEVICE_COOKIE = "nobat_staff_device"
"""The browser's proofs of earlier sign-ins (app.staff.devices): the account's lockout spares it."""


def staff_token(request: Request[Any, Any, Any]) -> str:
    """The bearer token when the request has an Authorization header, else the cookie ("" if neither)."""
    if request.headers.get("authorization"):
        return bearer_token(request)
    return request.cookies.get(STAFF_COOKIE, "")


async def provide_staff(request: Request[Any, Any, Any], container: Deps) -> StaffPrincipal:
    """Dependency: the signed-in staff, regulator or guild account (401 when there is none)."""
    return await container.staff.principal(staff_token(request))


Staff = NamedDependency[StaffPrincipal]
"""What a handler declares (as a parameter named ``staff``) to receive the signed-in account."""


class StaffAuthController(Controller):
    path = "/api/v1/staff"
    tags = ["staff sign-in"]

    @post("/login", status_code=200, summary="Sign in with a username and password")
    async def login(
        self, data: JSONBody[StaffLogin], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Response[StaffSessionOut]:
        settings = container.settings
        client = client_address(request, trust_forwarded_for=settings.trust_forwarded_for)
        token, principal, device = await container.staff.sign_in(
            session=session,
            username=data.username,
            password=data.password,
            client=client,
            device=request.cookies.get(DEVICE_COOKIE, ""),
        )
        body = StaffSessionOut(
            access_token=token,
            token_type="Bearer",
            expires_in=settings.staff_session_ttl_seconds,
            role=principal.role,
            office_code=principal.office_code,
            username=principal.username,
        )
        # Secure whenever we are served over HTTPS; the plain-HTTP demo would never get it back.
        secure = settings.public_url.startswith("https://")
        cookies = [
            Cookie(key=key, value=value, path="/", max_age=max_age, httponly=True, samesite="strict", secure=secure)
            for key, value, max_age in (
                (STAFF_COOKIE, token, settings.staff_session_ttl_seconds),
                (DEVICE_COOKIE, device, REMEMBERED_SECONDS),
            )
        ]
        return Response(body, status_code=200, cookies=cookies)

    @post("/logout", status_code=204, summary="End the session (bearer token or cookie)")
    async def logout(self, request: Request[Any, Any, Any], container: Deps) -> Response[None]:
        # Idempotent: signing out of a session that already ended is not an error.
        await container.staff.sign_out(staff_token(request))
        response = Response(None, status_code=204)
        response.delete_cookie(STAFF_COOKIE, path="/")
        return response

    @get("/me", summary="The signed-in staff, regulator or guild account")
    async def me(self, staff: Staff) -> StaffMe:
        return StaffMe(username=staff.username, role=staff.role, office_code=staff.office_code)
