"""Twilio's webhooks: inbound messages and delivery status. Both check X-Twilio-Signature
against NOBAT_PUBLIC_URL + path with Twilio's own validator; an unsigned or wrongly signed
request is refused (403) and changes nothing."""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar import Controller, Request, Response, post
from twilio.request_validator import RequestValidator

from app.errors import Forbidden
from app.sms import delivery
from app.sms.models import SmsStatus
from app.web import Deps, Session, count_request

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

_STATUSES = {
    "sent": SmsStatus.SENT,
    "delivered": SmsStatus.DELIVERED,
    "undelivered": SmsStatus.FAILED,
    "failed": SmsStatus.FAILED,
}


class BadSignature(Forbidden):
    code = "bad_signature"
    message_fa = "امضای درخواست معتبر نیست."
    message_en = "The request signature is not valid."


MAX_BODY = 32 * 1024
"""Bytes of a webhook's form (413 past it). Twilio's are a few KB: an inbound message of 1,600
Persian characters is some 10 KB encoded, with its twenty-odd other fields."""
MAX_FIELDS = 100
"""Fields of a webhook's form: Twilio sends some twenty (forty with ten media)."""


async def _signed_form(request: Request[Any, Any, Any], container: Deps) -> dict[str, str]:
    """The webhook's form, once its signature is Twilio's. These paths are not limited per
    address (one Twilio address carries many citizens), and checking a signature over a form
    of thousands of empty fields took tens of ms of the event loop: such a form is refused
    unchecked, and every refusal counts against its sender's address as an API request."""
    form = await request.form()
    params = {key: str(value) for key, value in form.items()}
    signature = request.headers.get("x-twilio-signature", "")
    token = container.settings.twilio_auth_token
    if token and signature and len(params) <= MAX_FIELDS:
        url = container.settings.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        if RequestValidator(token).validate(url, params, signature):
            return params
        _tell_of_a_bad_signature(url)
    count_request(request, "api")  # 429 past it
    raise BadSignature()


BAD_SIGNATURE_LOGGED_EVERY = 60.0
_bad_signature_logged_at = [-BAD_SIGNATURE_LOGGED_EVERY]  # this process's last line about one


def _tell_of_a_bad_signature(url: str) -> None:
    """A signed webhook that does not check out is a forgery, or every SMS being refused:
    NOBAT_PUBLIC_URL not the address Twilio posts to (Twilio does not retry a 403, and the
    messages were lost without a line in the log). Once a minute at most: forgeries come
    by the thousand."""
    now = time.monotonic()
    if now - _bad_signature_logged_at[0] >= BAD_SIGNATURE_LOGGED_EVERY:
        _bad_signature_logged_at[0] = now
        log.warning("an SMS webhook's signature did not match %s: is NOBAT_PUBLIC_URL Twilio's address for us?", url)


class TwilioWebhooks(Controller):
    path = "/sms/twilio"
    tags = ["sms"]
    include_in_schema = False

    @post("/inbound", status_code=200, request_max_body_size=MAX_BODY)
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

    @post("/status", status_code=204, request_max_body_size=MAX_BODY)
    async def status(self, request: Request[Any, Any, Any], session: Session, container: Deps) -> None:
        params = await _signed_form(request, container)
        status = _STATUSES.get(params.get("MessageStatus", ""))
        sid = params.get("MessageSid", "")
        if status is None or not sid:
            return
        await delivery.report(
            session,
            container.redis,
            sid=sid,
            status=status,
            error=params.get("ErrorCode") or None,
            now=container.clock.now(),
        )
