"""Twilio's webhooks: inbound messages and delivery status. Both check X-Twilio-Signature
against NOBAT_PUBLIC_URL + path with Twilio's own validator; an unsigned or wrongly signed
request is refused (403) and changes nothing."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from app.errors import Forbidden
from app.sms.models import SmsMessage, SmsStatus
from app.web import Deps, Session

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

_STATUSES = {
    "sent": SmsStatus.SENT,
    "delivered": SmsStatus.DELIVERED,
    "undelivered": SmsStatus.FAILED,
    "failed": SmsStatus.FAILED,
}
_FINAL = (SmsStatus.DELIVERED, SmsStatus.FAILED)


class BadSignature(Forbidden):
    code = "bad_signature"
    message_fa = "امضای درخواست معتبر نیست."
    message_en = "The request signature is not valid."


async def _signed_form(request: Request[Any, Any, Any], container: Deps) -> dict[str, str]:
    form = await request.form()
    params = {key: str(value) for key, value in form.items()}
    url = container.settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature", "")
    token = container.settings.twilio_auth_token
    if not token or not signature or not RequestValidator(token).validate(url, params, signature):
        raise BadSignature()
    return params


class TwilioWebhooks(Controller):
    path = "/sms/twilio"
    tags = ["sms"]
    include_in_schema = False

    @post("/inbound", status_code=200)
    async def inbound(self, request: Request[Any, Any, Any], session: Session, container: Deps) -> Response[str]:
        params = await _signed_form(request, container)
        await container.sms_channel.receive(
            session,
            provider_sid=params.get("MessageSid", ""),
            sender=params.get("From", ""),
            text=params.get("Body", ""),
        )
        # The answer goes out through the outbound queue (tracked, retried), not as TwiML.
        return Response(EMPTY_TWIML, media_type="text/xml")

    @post("/status", status_code=204)
    async def status(self, request: Request[Any, Any, Any], session: Session, container: Deps) -> None:
        params = await _signed_form(request, container)
        status = _STATUSES.get(params.get("MessageStatus", ""))
        sid = params.get("MessageSid", "")
        if status is None or not sid:
            return
        message = await session.scalar(select(SmsMessage).where(SmsMessage.provider_sid == sid))
        # Callbacks may come out of order: a late "sent" must not undo "delivered" or "failed"
        # (Twilio's final statuses).
        if message is not None and message.status not in _FINAL:
            message.status = status
            message.error = params.get("ErrorCode") or None
            message.updated_at = container.clock.now()
