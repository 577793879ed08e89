from __future__ import annotations

import contextlib
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.params import JSONBody

from app.auth.schemas import OtpRequest, OtpSent, OtpVerify, TokenIssued
from app.errors import Unauthorized
from app.web import Deps, Session, bearer_token, client_address, json_only


class CitizenAuthController(Controller):
    path = "/api/v1/auth"
    tags = ["sign-in"]

    @post("/otp", status_code=202, guards=[json_only], summary="Send a one-time sign-in code by SMS")
    async def request_code(
        self, data: JSONBody[OtpRequest], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> OtpSent:
        client = client_address(request, trust_forwarded_for=container.settings.trust_forwarded_for)
        mobile = await container.auth.request_code(session=session, mobile=data.mobile, client=client)
        return OtpSent(mobile=mobile, expires_in=container.settings.otp_ttl_seconds)

    @post("/verify", status_code=200, guards=[json_only], summary="Trade the one-time code for a bearer token")
    async def verify(self, data: JSONBody[OtpVerify], request: Request[Any, Any, Any], container: Deps) -> TokenIssued:
        client = client_address(request, trust_forwarded_for=container.settings.trust_forwarded_for)
        token = await container.auth.verify(mobile=data.mobile, code=data.code, client=client)
        return TokenIssued(access_token=token, token_type="Bearer", expires_in=container.settings.token_ttl_seconds)

    @post("/logout", status_code=204, summary="Sign out: the bearer token stops working on every instance")
    async def logout(self, request: Request[Any, Any, Any], container: Deps) -> Response[None]:
        # Idempotent, like the staff's: signing out of a token that no longer signs in (or of
        # none) is not an error.
        with contextlib.suppress(Unauthorized):  # no bearer token
            await container.auth.sign_out(bearer_token(request))
        return Response(None, status_code=204)

    @post(
        "/logout/everywhere",
        status_code=204,
        summary="Sign out on every device: every token of the number issued until now stops working",
    )
    async def logout_everywhere(self, request: Request[Any, Any, Any], container: Deps) -> None:
        # Unlike /logout, a token that does not sign in is refused (401): nothing is ended.
        await container.auth.sign_out_everywhere(bearer_token(request))
