"""Where outbound SMS go: the console (default: logs, and keeps an outbox a developer can
read) or Twilio. Both are called from RQ jobs, so both are synchronous.

Each send is keyed on our message id, and each backend can say whether a message id was
already handed over: a job retried after dying mid-send asks first, and never sends twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

import msgspec
from redis import Redis

from app.capacity.keys import NAMESPACE
from app.identity import mobile_to_e164
from app.settings import Settings

log = logging.getLogger(__name__)

OUTBOX = f"{NAMESPACE}:sms:outbox"
OUTBOX_LENGTH = 10_000


class OutboundSms(msgspec.Struct, frozen=True):
    id: str
    to: str
    body: str


class SmsBackend(Protocol):
    def send(self, message: OutboundSms) -> str:
        """Hand the message over; returns the provider's id for it."""
        ...

    def sent_like(self, message: OutboundSms, since: dt.datetime) -> list[str]:
        """The provider's ids of what it was handed since ``since`` that could be this message
        (a retry after a crash, or after a try whose answer was lost), newest first. The job
        takes the first that no other message of ours holds."""
        ...


class ConsoleBackend:
    """Logs each message and keeps the newest in a Redis list, newest first.

    The outbox is in Redis rather than in memory so that every process (web workers, RQ
    workers, a load test reading codes as a phone would) sees the same messages.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def send(self, message: OutboundSms) -> str:
        # The body is logged, never the number: logs must not carry personal data.
        log.info("sms (console): %s", message.body)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(OUTBOX, msgspec.json.encode(message))
            pipe.ltrim(OUTBOX, 0, OUTBOX_LENGTH - 1)
            pipe.execute()
        return f"console-{message.id}"

    def sent_like(self, message: OutboundSms, since: dt.datetime) -> list[str]:
        for raw in self.redis.lrange(OUTBOX, 0, OUTBOX_LENGTH - 1):
            if msgspec.json.decode(raw, type=OutboundSms).id == message.id:
                return [f"console-{message.id}"]
        return []


STATUS_CALLBACK_PATH = "/sms/twilio/status"


class TwilioBackend:
    def __init__(self, settings: Settings) -> None:
        from app.sms.twilio_client import twilio_client

        self.client = twilio_client(
            settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base_url
        )
        self.sender = settings.twilio_from
        # The fragment is Twilio's connection override (never sent to us): retry a 5xx. A
        # callback that comes before the worker has written the message's id down is kept in
        # Redis; with Redis away it is answered 503, and by Twilio's retry the id may be written.
        self.status_callback = settings.public_url.rstrip("/") + STATUS_CALLBACK_PATH + "#rp=ct,5xx&rc=3"

    def send(self, message: OutboundSms) -> str:
        sender = {"messaging_service_sid": self.sender} if self.sender.startswith("MG") else {"from_": self.sender}
        created = self.client.messages.create(
            to=mobile_to_e164(message.to), body=message.body, status_callback=self.status_callback, **sender
        )
        return str(created.sid)

    def sent_like(self, message: OutboundSms, since: dt.datetime) -> list[str]:
        # Twilio takes no idempotency key on Messages, so look for the same body to the same
        # phone since the message was made: the phone's newest 50, by when Twilio took each.
        # Not filtered by DateSent, which a message Twilio still queues does not have yet:
        # the one most likely to be there after a crash, and then sent twice. The same text
        # may have gone to the phone before as another message (two help replies): the job
        # skips the ids other messages hold.
        return [
            str(sent.sid)
            for sent in self.client.messages.list(to=mobile_to_e164(message.to), limit=50)
            if sent.body == message.body and (sent.date_created is None or sent.date_created >= since)
        ]


def make_backend(settings: Settings, redis: Redis) -> SmsBackend:
    if settings.sms_backend == "twilio":
        return TwilioBackend(settings)
    if settings.sms_backend == "console":
        return ConsoleBackend(redis)
    raise ValueError(f"NOBAT_SMS_BACKEND must be console or twilio, not {settings.sms_backend!r}")
