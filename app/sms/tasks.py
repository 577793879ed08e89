"""RQ jobs of the SMS channel. Each takes ids, reloads the row and re-checks its state, so a
job that runs twice, late, or after the world changed does the right thing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from redis import Redis
from sqlalchemy import select

from app.container import Container, build_container
from app.settings import load_settings
from app.sms.backends import OutboundSms, make_backend
from app.sms.models import SmsMessage, SmsStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


def _run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@asynccontextmanager
async def job_context() -> AsyncIterator[Container]:
    """The app's parts for one job, from the same environment the web app reads."""
    settings = load_settings()
    if not settings.redis_url:
        raise RuntimeError("a worker needs REDIS_URL")
    container = build_container(settings, settings.redis_url)
    try:
        yield container
    finally:
        await container.close()


def send_sms(message_id: str) -> str:
    return _run(_send(message_id))


async def _send(message_id: str) -> str:
    async with job_context() as app, app.sessions() as session:
        message = await session.get(SmsMessage, message_id, with_for_update=True)
        if message is None:
            return "missing"
        if message.status in (SmsStatus.SENT, SmsStatus.DELIVERED, SmsStatus.FAILED):
            return message.status.value
        # The console outbox lives beside the job queues, on the plain Redis.
        sync_redis = Redis.from_url(app.settings.rq_redis_url or app.settings.redis_url or "")
        try:
            backend = make_backend(app.settings, sync_redis)
            outbound = OutboundSms(id=message.id, to=message.to, body=message.body)
            if message.status == SmsStatus.SENDING:
                # An earlier try died between handing it over and writing that down.
                since = message.created_at - dt.timedelta(minutes=1)
                if earlier := backend.already_sent(outbound, since):
                    message.status, message.provider_sid = SmsStatus.SENT, earlier
                    await session.commit()
                    return "sent before"
            message.status = SmsStatus.SENDING
            message.attempts += 1
            message.updated_at = app.clock.now()
            await session.commit()
            try:
                sid = await asyncio.to_thread(backend.send, outbound)
            except Exception as error:
                give_up = message.attempts >= app.settings.sms_max_attempts
                message.status = SmsStatus.FAILED if give_up else SmsStatus.QUEUED
                message.error = f"{type(error).__name__}: {error}"[:500]
                await session.commit()
                if give_up:
                    log.error("sms %s failed for good after %d tries", message_id, message.attempts)
                    return "failed"
                raise  # RQ retries with backoff
            message.status, message.provider_sid, message.error = SmsStatus.SENT, sid, None
            message.updated_at = app.clock.now()
            await session.commit()
            return "sent"
        finally:
            sync_redis.close()


def sweep(stuck_after_seconds: int = 600) -> int:
    """Enqueue again the messages no worker will finish on its own: committed but never taken
    (the enqueue after the commit was lost), or left "sending" by a worker that died (RQ
    would not retry it). The job asks the provider before sending, so none goes out twice."""
    return _run(_sweep(stuck_after_seconds))


async def _sweep(stuck_after_seconds: int) -> int:
    async with job_context() as app, app.sessions() as session:
        now = app.clock.now()
        never_taken = (
            (SmsMessage.status == SmsStatus.QUEUED)
            & (SmsMessage.attempts == 0)
            & (SmsMessage.created_at < now - dt.timedelta(minutes=2))
        )
        abandoned = (SmsMessage.status == SmsStatus.SENDING) & (
            SmsMessage.updated_at <= now - dt.timedelta(seconds=stuck_after_seconds)
        )
        ids = list(await session.scalars(select(SmsMessage.id).where(never_taken | abandoned)))
        for message_id in ids:
            # A fresh job id: the old job may sit in RQ's failed or started registry.
            app.jobs.enqueue(
                app.jobs.sms, "app.sms.tasks.send_sms", message_id, job_id=f"sms-{message_id}-{int(now.timestamp())}"
            )
        return len(ids)
