"""Where outbound SMS go: the console (default, with an outbox a developer can read) or Twilio."""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec
from redis.asyncio import Redis

from app.capacity.keys import NAMESPACE

log = logging.getLogger(__name__)

OUTBOX = f"{NAMESPACE}:sms:outbox"
OUTBOX_LENGTH = 10_000


class OutboundSms(msgspec.Struct, frozen=True):
    to: str
    body: str


class SmsBackend(Protocol):
    async def send(self, message: OutboundSms) -> None: ...


class ConsoleBackend:
    """Logs each message and keeps the newest ones in a Redis list, newest first.

    The outbox is in Redis rather than in memory so that every process (web workers, RQ
    workers, a load test reading codes as a phone would) sees the same messages.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def send(self, message: OutboundSms) -> None:
        # The body is logged, never the number: logs must not carry personal data.
        log.info("sms (console): %s", message.body)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(OUTBOX, msgspec.json.encode(message))
            pipe.ltrim(OUTBOX, 0, OUTBOX_LENGTH - 1)
            await pipe.execute()


async def read_outbox(redis: Redis, *, to: str | None = None, limit: int = 100) -> list[OutboundSms]:
    raw = await redis.lrange(OUTBOX, 0, limit - 1)
    messages = [msgspec.json.decode(item, type=OutboundSms) for item in raw]
    return [m for m in messages if to is None or m.to == to]
