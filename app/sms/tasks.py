"""RQ jobs of the SMS channel. Each takes ids, reloads the row and re-checks its state, so a
job that runs twice, late, or after the world changed does the right thing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import TEXTED_CODE_SECONDS
from app.booking.reminders import EVENING_REMINDER, HOUR_LATE_MINUTES, HOUR_REMINDER
from app.capacity import keys
from app.container import Container, build_container
from app.db import JOB_STATEMENT_SECONDS
from app.jobs import RETRY_INTERVALS, backoff
from app.observability import mask
from app.redis import renewed_lock
from app.settings import load_settings
from app.sms import delivery
from app.sms.backends import OutboundSms, SmsBackend, make_backend
from app.sms.models import SmsMessage, SmsStatus
from app.sms.retention import purge_before
from app.sms.service import SEND_SMS, SIGN_IN_CODE, SIGN_IN_CODES, TEXTED_SIGN_IN_CODE

log = logging.getLogger(__name__)
SWEEP_MARGIN = dt.timedelta(minutes=2)
"""How long before the oldest job waiting in its queue a message must have been made for the
sweep to take its job for lost (commit to enqueue is milliseconds; this covers the clocks)."""
CODE_SWEEP_MARGIN = dt.timedelta(seconds=15)
"""The same for sign-in codes, whose queue is drained first and whose jobs are quick: two
minutes, the life of a code, had a lost one swept when it could sign in no more."""
SWEEP_LIMIT = 5000
"""Jobs a sweep enqueues at most (every 30 s): a bound on one run's work after an outage."""
SWEEP_READ_LIMIT = 50_000
"""Messages a sweep reads at most, sign-in codes first, then oldest first: a bound on its memory.
Those still waiting in a queue are not read at all, so what is read is what a lost enqueue or
a dead worker left: after an outage, more than a run enqueues."""

T = TypeVar("T")

LIMIT_MARGIN = 2.0
"""Seconds before RQ's time limit that a job's coroutine is cancelled."""
HANDOVER_WAIT = 5.0
"""Seconds a job waits at its end for its messages' enqueue (two tries against a Redis that
does not answer); the sweep sends what is left."""


class _Runtime:
    """One event loop, one set of the app's parts and one SMS backend per worker process,
    kept from job to job. Building them for each job (engines, Redis clients, the Twilio
    client) had cost more than sending the message; they are built again only if the
    environment's settings change (tests run many deployments in one process)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.container: Container | None = None
        self.backend: SmsBackend | None = None
        self._backend_redis: Redis | None = None

    def run(self, coro: Awaitable[T]) -> T:
        if self.loop is None or self.loop.is_closed():
            self.loop = asyncio.new_event_loop()
            self.container = None  # its connections belonged to the old loop
        # Ended by a cancel a moment before RQ's time limit. RQ's own stop raises in whatever
        # frame runs: inside a step's ``except Exception`` (one office's failure must not keep
        # the others waiting) it was swallowed, and the job ran on past its limit.
        job = get_current_job()
        limit = job.timeout if job is not None and job.timeout is not None and job.timeout > 0 else None
        if limit is not None:
            coro = asyncio.wait_for(coro, max(limit - LIMIT_MARGIN, LIMIT_MARGIN))
        task = asyncio.ensure_future(coro, loop=self.loop)
        errors_before = _ERRORS_LOGGED.count
        try:
            result = self.loop.run_until_complete(task)
        except BaseException:
            # A job stopped from outside (RQ's time limit raises in whatever frame runs, most
            # often the loop's wait for I/O) leaves its task pending: cancelled here, not
            # resumed during the worker's next jobs with its locks still held.
            task.cancel()
            with suppress(BaseException):
                self.loop.run_until_complete(task)
            raise
        if job is not None and job.meta.get(PERIODIC) and not job.meta.get(SKIPPED):
            if _ERRORS_LOGGED.count == errors_before:
                _ended_well(job)
            else:
                # A job that goes on past one office's or one day's failure (so that the others
                # do not wait) ends normally: noted, its time moved every minute while every
                # item failed, and nobody was paged.
                log.warning("%s logged errors: its good end is not noted", job.func_name)
        return result

    async def parts(self) -> Container:
        settings = load_settings()
        if not settings.redis_url:
            raise RuntimeError("a worker needs REDIS_URL")
        # The secret aside: on the embedded defaults each read makes one up, and every job
        # had built the parts again (a worker verifies no token).
        if self.container is None or settings.with_(secret_key=self.container.settings.secret_key) != (
            self.container.settings
        ):
            if self.container is not None:
                await self.container.close()
            if self._backend_redis is not None:
                self._backend_redis.close()
            self.container = build_container(settings, settings.redis_url, statement_seconds=JOB_STATEMENT_SECONDS)
            # The console outbox lives beside the job queues, on the plain Redis.
            self._backend_redis = Redis.from_url(settings.rq_redis_url or settings.redis_url)
            self.backend = make_backend(settings, self._backend_redis)
        return self.container


PERIODIC = "periodic"
"""A job's meta flag (workers.cron): each run that ends well is noted in ``keys.JOBS_DONE``."""
SKIPPED = "skipped"
"""Set (in this process) on a run that did nothing, its last run under way (``run_alone``): not
a good end. Noted as one, a job outrunning its time limit every time looked alive, each
minute's copy finding it under way."""


class _ErrorCount(logging.Handler):
    """Counts the error lines logged in this process (a worker runs one job at a time)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


_ERRORS_LOGGED = _ErrorCount()
logging.getLogger().addHandler(_ERRORS_LOGGED)


def _ended_well(job: Job) -> None:
    """Note the periodic job's good end, for /metrics (``nobat_job_last_success_timestamp``):
    a job failing each run, or no longer run, is seen as its time stops moving, where its
    tracebacks sat in RQ's failed jobs and nothing paged anyone."""
    name = (job.func_name or "").rpartition(".")[2]
    try:
        job.connection.hset(keys.JOBS_DONE, name, int(time.time()))
    except RedisError:
        log.warning("the good end of %s was not noted: Redis did not answer", name)


_runtime = _Runtime()


def run_job(coro: Awaitable[T]) -> T:
    """Run a job's coroutine on this worker process's loop (RQ job functions are sync)."""
    return _runtime.run(coro)


@asynccontextmanager
async def job_context() -> AsyncIterator[Container]:
    """The app's parts for one job, from the same environment the web app reads."""
    container = await _runtime.parts()
    try:
        yield container
    finally:
        try:
            # The loop stops when the job ends: what it changed is told before, not at the next job.
            await container.capacity.reads.told()
        finally:
            # And its messages are enqueued before it ends (a worker stopped after it would
            # drop them, for the sweep to find minutes later).
            if container.messenger.unsent():
                await asyncio.to_thread(container.messenger.wait_sent, HANDOVER_WAIT)


def run_in_session(step: Callable[[Container, AsyncSession], Awaitable[T]]) -> T:
    """Run a job that is one call with the app's parts and a session of its own (most
    periodic jobs: ``lambda app, session: app.regulator.finish_closures(session=session)``)."""

    async def job() -> T:
        async with job_context() as app, app.sessions() as session:
            return await step(app, session)

    return run_job(job())


def skip_this_run() -> None:
    """Mark the periodic run under way as one that did nothing (not a good end)."""
    if (job := get_current_job()) is not None:
        job.meta[SKIPPED] = True


def scheduled_run() -> bool:
    """Whether the job under way is a periodic run (workers.cron), not one enqueued by hand."""
    job = get_current_job()
    return job is not None and bool(job.meta.get(PERIODIC))


def run_alone(name: str, step: Callable[[Container, AsyncSession], Awaitable[int]]) -> int:
    """``run_in_session``, one run at a time in the deployment: RQ's cron enqueues a periodic
    job on time whether its last run has ended or not, and idle workers would each take a
    copy. A run that finds another under way (by ``name``) does nothing: 0."""

    async def job() -> int:
        async with job_context() as app:
            lock = f"{keys.NAMESPACE}:job-running:{name}"
            async with renewed_lock(app.capacity.redis, lock, uuid.uuid4().hex, seconds=30) as held:
                if not held:
                    skip_this_run()
                    return 0
                async with app.sessions() as session:
                    return await step(app, session)

    return run_job(job())


def send_sms(message_id: str) -> str:
    return run_job(_send_all([message_id]))[0]


def send_sms_batch(message_ids: list[str]) -> list[str]:
    """Send the messages of one group commit, each on its own (one failing does not hold
    the others back: it schedules its own next try)."""
    return run_job(_send_all(message_ids))


async def _send_all(message_ids: list[str]) -> list[str]:
    async with job_context() as app:
        assert _runtime.backend is not None  # made with the app's parts
        return [await _send(app, _runtime.backend, message_id) for message_id in message_ids]


async def _send(app: Container, backend: SmsBackend, message_id: str) -> str:
    """Read the message, ask Twilio (a retry), claim it, send it, write down how it ended:
    each step on the record a short transaction of its own, none open while Twilio is asked."""
    async with app.sessions() as session:
        message = await session.get(SmsMessage, message_id)
        # A plain read, its transaction ended at once (the session keeps what it read): nothing
        # of the record is held while Twilio is asked, up to 10 s a call. A FOR UPDATE held
        # over that call had kept every other writer of the row waiting for Twilio, each with
        # a pooled connection, and this one idle in its transaction. What changes meanwhile is
        # caught by the claims below, compare-and-sets on the status and tries read here.
        await session.commit()
        if message is None:
            return "missing"
        if message.status in (SmsStatus.SENT, SmsStatus.DELIVERED, SmsStatus.FAILED):
            return message.status.value
        outbound = OutboundSms(id=message.id, to=message.to, body=message.body)
        seen = (message.status, message.attempts)
        now = app.clock.now()
        if message.status == SmsStatus.SENDING:
            # Another job may be sending it this moment (the sweep's copy, or a retry, came
            # while it waits for the provider), or one died doing so: only a try quiet for as
            # long as the sweep waits counts as dead. The sweep sends the message if it is.
            quiet = dt.timedelta(seconds=app.settings.sms_stuck_seconds)
            if message.updated_at is not None and app.clock.aware(message.updated_at) > now - quiet:
                return "in flight"
        unasked: Exception | None = None
        if message.attempts:
            # An earlier try may have reached the provider though it failed (a timeout after
            # Twilio took it) or died before writing it down: asked first, so none goes twice.
            since = app.clock.aware(message.created_at) - dt.timedelta(minutes=1)
            try:
                earlier = await _sent_before(session, backend, outbound, since)
            except Exception as error:  # the provider could not say: this try fails (below)
                earlier, unasked = None, error
            if earlier:
                sent = {"status": SmsStatus.SENT, "provider_sid": earlier, **_erased(message.kind)}
                if not await _claim(session, message_id, seen, **sent):
                    return "taken by another job"
                await delivery.apply_kept(session, app.redis, earlier, app.clock.now())
                return "sent before"
        ends = _life_ends(app, message.kind, app.clock.aware(message.created_at))
        if ends is not None and now > ends:
            # Past its life it signs nobody in: sent (a lost job swept late, the last of its
            # tries), it would only have the citizen type a dead code, and be paid for. A
            # reminder likewise: "tomorrow" read after midnight, "in an hour" after the slot
            # began. (Asked after the in-flight and sent-before checks: a try on its way is
            # left to finish.)
            expired = {"status": SmsStatus.FAILED, "error": "expired before it could be sent", **_erased(message.kind)}
            if not await _claim(session, message_id, seen, **expired):
                return "taken by another job"
            log.warning("sms %s: a %s expired before it could be sent", message_id, message.kind)
            return "expired"
        # Claimed only if no other job changed it since it was read (no row lock is held, and
        # SQLite takes none), and committed before Twilio is handed it. Its time is read now,
        # not before the provider was asked (up to 20 s): the sweep counts a try as dead
        # from it, and would have sent a copy while this one was still on its way.
        claimed = app.clock.now()
        if not await _claim(
            session, message_id, seen, status=SmsStatus.SENDING, attempts=seen[1] + 1, updated_at=claimed
        ):
            return "taken by another job"
        attempts, kind = seen[1] + 1, message.kind
        queue = app.messenger.queue_for(kind)
        try:
            if unasked is not None:  # not sent without asking: failed, as a send that failed
                raise unasked
            sid = await asyncio.to_thread(backend.send, outbound)
        except Exception as error:
            give_up = attempts >= app.settings.sms_max_attempts
            # Twilio's texts name the number ("The 'To' number +98912... is not valid"):
            # masked, as in the logs, for whoever reads the failures.
            reason = mask(f"{type(error).__name__}: {error}")[:500]
            status = SmsStatus.FAILED if give_up else SmsStatus.QUEUED
            erased = _erased(kind) if give_up else {}
            if not await _settle(app, session, message_id, attempts, status=status, error=reason, **erased):
                return "settled by another job"
            if give_up:
                log.error("sms %s failed for good after %d tries", message_id, attempts)
                return "failed"
            # The next try is scheduled here, not by RQ's Retry, so that NOBAT_SMS_MAX_ATTEMPTS
            # alone says how many tries there are. If this enqueue is lost, the sweep
            # finds the message (queued, tried, quiet for longer than any backoff).
            log.warning("sms %s try %d failed: %s", message_id, attempts, reason)
            app.jobs.enqueue_at(
                app.clock.now() + dt.timedelta(seconds=backoff(attempts)),
                queue,
                SEND_SMS,
                message_id,
                job_id=f"sms-{message_id}-try{attempts + 1}",
            )
            return "retry scheduled"
        await _settle(app, session, message_id, attempts, status=SmsStatus.SENT, provider_sid=sid, **_erased(kind))
        # Twilio may have called back before its answer came: what it said is applied now.
        await delivery.apply_kept(session, app.redis, sid, app.clock.now())
        return "sent"


async def _sent_before(
    session: AsyncSession, backend: SmsBackend, message: OutboundSms, since: dt.datetime
) -> str | None:
    """The provider's id of this message, if it was handed over before: the newest of those
    like it (``SmsBackend.sent_like``) that no other message of ours holds."""
    like = await asyncio.to_thread(backend.sent_like, message, since)
    if not like:
        return None
    held = set(
        await session.scalars(
            select(SmsMessage.provider_sid).where(SmsMessage.provider_sid.in_(like), SmsMessage.id != message.id)
        )
    )
    return next((sid for sid in like if sid not in held), None)


async def _claim(session: AsyncSession, message_id: str, seen: tuple[SmsStatus, int], **values: object) -> bool:
    """Write ``values`` if the message is still as it was read (``seen``: its status and
    tries), and commit; False when another job got there first."""
    status, attempts = seen
    result = await session.execute(
        update(SmsMessage)
        .where(SmsMessage.id == message_id, SmsMessage.status == status, SmsMessage.attempts == attempts)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


CODE_ERASED = "نوبت: کد ورود (پس از ارسال از سامانه پاک شد)"
"""A sign-in code's body once it is sent or given up on. Kept, a live code sat in the record,
its replicas and backups, where anyone who could read them could sign in as the citizen
(Redis keeps only a keyed digest of it)."""


def _life_ends(app: Container, kind: str, created: dt.datetime) -> dt.datetime | None:
    """When a message of this kind made at ``created`` stops being true, and is not sent
    after: a sign-in code once it signs in no more (``AuthService``); the evening's reminder
    ("tomorrow at ...") at midnight; the hour's ("in an hour") 45 minutes after it was made,
    by when its slot may have begun (``app.booking.reminders``; the message does not keep
    the slot's time). None: any time."""
    seconds = {SIGN_IN_CODE: app.settings.otp_ttl_seconds, TEXTED_SIGN_IN_CODE: TEXTED_CODE_SECONDS}.get(kind)
    if seconds is not None:
        return created + dt.timedelta(seconds=seconds)
    if kind == EVENING_REMINDER:
        local = created.astimezone(app.clock.tz)
        return dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=app.clock.tz)
    if kind == HOUR_REMINDER:  # made 45 to 60 minutes before the slot: gone by then, at the latest
        return created + dt.timedelta(minutes=60 - HOUR_LATE_MINUTES)
    return None


def _erased(kind: str) -> dict[str, str]:
    """What a message's settling also writes: a sign-in code's text is no longer needed once
    no try will send it again."""
    return {"body": CODE_ERASED} if kind in SIGN_IN_CODES else {}


async def _settle(
    app: Container, session: AsyncSession, message_id: str, attempts: int, *, status: SmsStatus, **values: object
) -> bool:
    """Write down how our try ended, unless another job settled the message meanwhile (the
    sweep took it for abandoned while this one waited on the provider): never overwrite a
    "sent" with our "queued"."""
    result = await session.execute(
        update(SmsMessage)
        .where(SmsMessage.id == message_id, SmsMessage.status == SmsStatus.SENDING, SmsMessage.attempts == attempts)
        .values(status=status, updated_at=app.clock.now(), error=values.pop("error", None), **values)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def carry_out_abandoned() -> int:
    """Inbound messages never answered whose delivery died (``SmsChannel.carry_out_abandoned``)."""
    return run_alone("sms-abandoned", lambda app, session: app.sms_channel.carry_out_abandoned(session))


def purge_old() -> int:
    """Messages sent and received more than NOBAT_SMS_KEPT_DAYS ago, deleted (app.sms.retention)."""

    async def step(app: Container, session: AsyncSession) -> int:
        kept = dt.timedelta(days=app.settings.sms_kept_days)
        return await purge_before(session, app.clock.now() - kept)

    return run_alone("sms-purge", step)


def sweep(stuck_after_seconds: int | None = None) -> int:
    """Enqueue again the messages no worker will finish on its own: committed but never taken
    (the enqueue after the commit was lost), tried and due again but with no job left (the
    enqueue of the next try was lost), or left "sending" by a worker that died (RQ would not
    retry it) for longer than NOBAT_SMS_STUCK_SECONDS. The job asks the provider before
    sending, so none goes out twice. One run at a time (RQ's cron enqueues it every 30 s
    whether the last has ended or not)."""
    return run_alone("sms-sweep", lambda app, session: _sweep(app, session, stuck_after_seconds))


async def _sweep(app: Container, session: AsyncSession, stuck_after_seconds: int | None) -> int:
    now = app.clock.now()
    stuck = app.settings.sms_stuck_seconds if stuck_after_seconds is None else stuck_after_seconds
    # Made two minutes before the oldest job still waiting in its queue was enqueued (or
    # before now, none waiting), a message still untried has had its job taken off the
    # queue, or never had one. Under a backlog (the evening's reminders, nationwide) the
    # younger ones are most likely waiting there: a job for each, every 30 s, had fed the
    # backlog they were slowing. (Left alone while the queue held any job at all, a lost one
    # would have waited all day for a quiet moment.)
    never_taken = (
        (SmsMessage.status == SmsStatus.QUEUED)
        & (SmsMessage.attempts == 0)
        & (
            (
                SmsMessage.kind.in_(SIGN_IN_CODES)
                & (SmsMessage.created_at < _taken_before(app.jobs.codes, now, CODE_SWEEP_MARGIN))
            )
            | (
                SmsMessage.kind.not_in(SIGN_IN_CODES)
                & (SmsMessage.created_at < _taken_before(app.jobs.sms, now, SWEEP_MARGIN))
            )
        )
    )
    # A message waiting for its next try was last touched at most one backoff ago.
    retry_lost = (
        (SmsMessage.status == SmsStatus.QUEUED)
        & (SmsMessage.attempts > 0)
        & (SmsMessage.updated_at < now - dt.timedelta(seconds=max(RETRY_INTERVALS) + stuck))
    )
    abandoned = (SmsMessage.status == SmsStatus.SENDING) & (SmsMessage.updated_at <= now - dt.timedelta(seconds=stuck))
    found = (
        await session.execute(
            select(SmsMessage.id, SmsMessage.kind)
            .where(never_taken | retry_lost | abandoned)
            .order_by(SmsMessage.kind.not_in(SIGN_IN_CODES), SmsMessage.created_at)  # sign-in codes first
            .limit(SWEEP_READ_LIMIT)
        )
    ).all()
    enqueued = 0
    for start in range(0, len(found), 1000):
        chunk = found[start : start + 1000]
        # One sweep job per message, waiting or not there at all.
        job_ids = [f"sms-{message_id}-swept" for message_id, _ in chunk]
        jobs = Job.fetch_many(job_ids, connection=app.jobs.redis)  # one trip
        for (message_id, kind), job_id, job in zip(chunk, job_ids, jobs, strict=True):
            if job is not None:
                if job.get_status(refresh=False) in WAITING:
                    continue
                job.delete()  # it ran and ended (and leaves its queue's registries): enqueued again
            # On its kind's queue: a sign-in code found here must not wait behind every confirmation.
            app.jobs.enqueue(app.messenger.queue_for(kind), SEND_SMS, message_id, job_id=job_id)
            enqueued += 1
            if enqueued == SWEEP_LIMIT:
                return enqueued
    return enqueued


def _taken_before(queue: Queue, now: dt.datetime, margin: dt.timedelta) -> dt.datetime:
    """Messages made before this have had their job, if any, taken off ``queue`` (RQ takes
    the oldest first): ``margin`` before its oldest waiting job was enqueued, or before now."""
    oldest = now
    for job_id in queue.get_job_ids(0, 1):
        with suppress(NoSuchJobError):
            enqueued = Job.fetch(job_id, connection=queue.connection).enqueued_at
            if enqueued is not None:
                oldest = min(oldest, enqueued.astimezone(now.tzinfo))
    return oldest - margin


WAITING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
"""RQ's statuses of a job yet to run, or running."""
