"""Periodic jobs: ``python -m workers.cron`` (RQ's cron scheduler; one leads, any other stands by).

RQ reads a cron expression in the process's local time, whatever the host is set to. So the
process takes the offices' zone (NOBAT_TZ, Asia/Tehran) as its own, and the expressions say
the offices' hours: "midnight" is midnight in Tehran on any host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from rq.cron import CronJob, CronScheduler
from rq.exceptions import StopRequested
from rq.utils import now as rq_now

from app.booking.tasks import close_day, end_spent_lines, fill_waitlists_left, send_reminders
from app.capacity.tasks import NIGHT_LATE, recount
from app.complaints.tasks import flag_overdue
from app.console.tasks import finish_plans
from app.enforcement.tasks import apply_policy, finish_blocks, push_statuses
from app.observability import configure_logging
from app.regulator.tasks import finish_caps, finish_closures
from app.settings import Settings, load_settings
from app.sms.tasks import PERIODIC, carry_out_abandoned, purge_old, sweep
from workers.queues import CODES, DEFAULT

log = logging.getLogger(__name__)

CLOSE_DAY_TIMEOUT = 30 * 60
RECOUNT_TIMEOUT = 30 * 60
"""The night's recount, with bookings paused: 13 s for the country's offices with nobody
booked, 140 s with two million upcoming bookings (loadtests.bench_recount), growing with
them: some 7 minutes at ten million. Stopped at a shorter limit, the pause went on while a
web instance's watch began the whole count again."""
MOVES_TIMEOUT = 30 * 60
"""The time limit of the jobs that move what a block or a closure left (RQ's own is 180 s)."""
COPIES_KEPT = 5
"""A periodic job's copy waits this many of its intervals in its queue at most."""
NIGHT_TTL = int(NIGHT_LATE.total_seconds())
"""How long a night's run (the close, the recount) may wait in its queue: later, it would
meet the morning's first bookings; the close's next run, or the next night, does it."""
FAILURE_TTL = 7 * 24 * 3600
"""How long RQ keeps a failed run and its traceback: over a weekend, not RQ's year (a job
failing each minute had left 1,440 a day in Redis)."""
PERIODIC_JOB: dict[str, Any] = {"meta": {PERIODIC: True}, "failure_ttl": FAILURE_TTL}
"""What every periodic job is registered with: its good ends noted for /metrics (app.sms.tasks)."""


RESTART_SECONDS = 5.0
"""How long the scheduler waits after the job queues' Redis failed before it starts again."""
LEADER_KEY = "nobat:cron:leader"
LEADER_SECONDS = 180
"""How long a scheduler's lead lasts unrenewed: three of its longest sleeps (60 s). Another
scheduler (a deploy's overlap, one started by mistake, a standby) waits until then."""
STANDBY_SECONDS = 15
"""How often a scheduler standing by asks for the lead."""


def main() -> None:
    configure_logging()
    settings = load_settings()
    url = settings.rq_redis_url or settings.redis_url
    if not url:
        raise SystemExit("set RQ_REDIS_URL (or REDIS_URL) to the Redis that holds the job queues")
    run(scheduler(settings, connect(url)))


def connect(url: str) -> Redis:
    # Bounded waits: a connection left half-open by a failover would otherwise hang the
    # scheduler on its next command for good, with no error to start it again.
    return Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


class Scheduler(CronScheduler):
    """RQ's cron scheduler, remembering a signal to stop: one that comes while Redis is away
    makes the scheduler's last words to Redis fail, and that error hides it.

    One scheduler enqueues at a time (``LEADER_KEY``); any other stands by, and takes over
    once the first stops or its lead runs out. Two had enqueued every job twice: two nightly
    recounts, bookings paused nationwide for each."""

    stopping = False
    leading = False
    _lead: Lock | None = None

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True
        super()._request_stop(signum, frame)

    def enqueue_jobs(self) -> list[CronJob]:
        # Standing by, nothing is enqueued and the jobs due lately stay due: on taking over,
        # each is enqueued once. Moved on instead, a scheduler started again after its process
        # died (its lead still held by the dead one, for up to LEADER_SECONDS) had skipped what
        # fell due meanwhile: the night's recount at 03:30, lost sign-in codes' sweep.
        leading = self.leads()
        at = rq_now()
        for job in self._cron_jobs:
            due = job.next_enqueue_time
            if due is None or not job.should_run():
                continue
            # Not one due long ago: a standby of days taking over at 10:00, or a leader whose
            # Redis was away all night, had run the night's close and purge in the rush. A
            # night's job moves on to its last time within the lateness, if any (the close's
            # 02:00 for a Redis back at 02:10, not tomorrow's); standing by, any other to now.
            if at - due > NIGHT_LATE and job.cron:
                job.set_enqueue_time(at - NIGHT_LATE)
            elif at - due > NIGHT_LATE and not leading:
                job.set_enqueue_time(at)
            # Nor a night's job the lead's last holder enqueued already (it stopped at 03:40):
            # the recount run twice paused bookings twice.
            if leading and job.cron and job.should_run() and self._enqueued_since(job, job.next_enqueue_time):
                job.set_enqueue_time(at)
        return super().enqueue_jobs() if leading else []

    def _enqueued_since(self, job: CronJob, due: dt.datetime | None) -> bool:
        """Whether any scheduler enqueued ``job`` at or after ``due`` (RQ's history of it)."""
        last = self.connection.zrange(job.job_history_key, -1, -1, withscores=True)
        return due is not None and bool(last) and float(last[0][1]) >= due.timestamp()

    def calculate_sleep_interval(self) -> float:
        # Standing by, the jobs stay due, and RQ's loop would not sleep at all.
        return super().calculate_sleep_interval() if self.leading else STANDBY_SECONDS

    def leads(self) -> bool:
        """Whether this scheduler leads: its lead renewed, or taken now that nobody holds it."""
        if self._lead is None:
            self._lead = self.connection.lock(LEADER_KEY, timeout=LEADER_SECONDS, blocking=False, thread_local=False)
        try:
            self._lead.reacquire()
            leading = True
        except LockError:  # not held, or held by another scheduler
            leading = bool(self._lead.acquire())
        if leading != self.leading:
            log.warning("this scheduler %s", "leads: it enqueues the jobs" if leading else "stands by: another leads")
        self.leading = leading
        return leading

    def register_death(self, pipeline: Any = None) -> None:
        super().register_death(pipeline)
        if self.leading and self._lead is not None:
            # Handed over now, not when it runs out: a deploy's new scheduler starts at once.
            with contextlib.suppress(RedisError):
                self._lead.release()
            self.leading = False


def run(cron: Scheduler, restart_seconds: float = RESTART_SECONDS) -> None:
    """Run the scheduler until it is told to stop, starting it again whenever the job queues'
    Redis fails: RQ's scheduler dies at the first failed command (its workers ride such an
    outage out), and with it every periodic job, the sweep that re-enqueues lost jobs
    included. Its jobs are idempotent and keep their next times, so the ones due meanwhile
    run as soon as Redis answers."""
    while not cron.stopping:
        try:
            cron.start()
            return  # stopped by a signal
        except StopRequested:  # a signal before the scheduler's loop began
            return
        except RedisError:
            if cron.stopping:
                return
            log.exception("the job queues' Redis failed; the scheduler starts again in %s s", restart_seconds)
        try:
            time.sleep(restart_seconds)
        except StopRequested:  # the signal handlers the scheduler installed
            return


def scheduler(settings: Settings, connection: Redis) -> Scheduler:
    """The deployment's periodic jobs, in the offices' time zone (which this process takes)."""
    os.environ["TZ"] = settings.tz
    time.tzset()
    # The C library reads the zone from the system's zoneinfo, and takes a name it lacks for
    # UTC without a word (an image without tzdata): the night's close would run at 03:30 and
    # the recount at 07:00, pausing bookings as offices open. The app's clock has its own
    # (the pinned tzdata package: app/__init__.py), which the host's must agree with.
    expected = dt.datetime.now(ZoneInfo(settings.tz)).utcoffset()
    if expected is None or time.localtime().tm_gmtoff != expected.total_seconds():
        raise RuntimeError(
            f"this host's zone data for {settings.tz} is missing or differs from the app's: "
            "install or update tzdata (apt-get install tzdata)"
        )
    scheduler = Scheduler(connection=connection, name="nobat")

    def every(func: Any, queue: str, seconds: int, **options: Any) -> None:
        # A copy waits in its queue a few intervals at most (``ttl``): behind a backlog, a
        # copy a minute piled up, and each then did its whole work again, one after the other.
        # Not one interval: behind a job of more than a minute on the one worker taking the
        # queue, each copy would expire before its turn, and the job never run.
        scheduler.register(
            func, queue_name=queue, interval=seconds, ttl=seconds * COPIES_KEPT, **{**PERIODIC_JOB, **options}
        )

    # RQ's cron jobs have no Retry: a run lost to a crash or a Redis blip is simply not
    # retried. So each job here is idempotent and catches up on the next run, and runs often
    # enough that losing one costs little: the sweep, the reminders (each has a window and a
    # "reminded" mark) and the overdue flags look at the record, not at what the last run did.
    # Messages whose enqueue or worker was lost (sign-in codes among them), on the queue
    # workers take first: on the messages' own queue it waited behind their backlog, when it
    # is needed most.
    every(sweep, CODES, 30)
    every(send_reminders, DEFAULT, 60)  # the evening before, an hour before
    # 00:00, 01:00 and 02:00 where the offices are: it only closes past days and adds missing
    # office-days, so the later runs do nothing unless the midnight one was lost. Not every
    # hour: each run walks every office-day of the horizon in Redis, which the daytime rush
    # should not pay. (Written "30 20,21,22" in UTC before: on a host set to Tehran's time it
    # ran at 20:30, closing yesterday's no-shows nearly a day late.)
    # Its own time limit (RQ's is 180 s): 100,000 no-shows take about 20 s, and a night is at
    # most a few times that (loadtests/bench_close_day.py).
    scheduler.register(
        close_day,
        queue_name=DEFAULT,
        cron="0 0,1,2 * * *",
        job_timeout=CLOSE_DAY_TIMEOUT,
        ttl=NIGHT_TTL,
        **PERIODIC_JOB,
    )
    # Redis counted again from the record, once the night's close is done: a seat, hold or
    # place in line that a failure left counted for nobody comes back (nothing else recounts
    # a Redis that came back as it was). Bookings pause for it, at the night's quietest hour.
    if settings.recount_at != "off":
        scheduler.register(
            recount,
            queue_name=DEFAULT,
            cron=settings.recount_at,
            job_timeout=RECOUNT_TIMEOUT,
            ttl=NIGHT_TTL,
            **PERIODIC_JOB,
        )
    # Old messages deleted (NOBAT_SMS_KEPT_DAYS), after the recount, before the morning.
    # Its own time limit: the first night after an upgrade deletes every message kept till then.
    scheduler.register(
        purge_old, queue_name=DEFAULT, cron="15 4 * * *", job_timeout=MOVES_TIMEOUT, ttl=NIGHT_TTL, **PERIODIC_JOB
    )
    every(flag_overdue, DEFAULT, 15 * 60)  # complaints past 72 hours
    # Bookings a block or a closure could not move yet; an official holiday new to the calendar. A province's closure can leave tens
    # of thousands to move: their own limit, as the night's, not RQ's 180 s. A run that
    # outlasts the minute still has the next copies enqueued (RQ's cron does not wait); each
    # finds it under way and ends at once (``run_alone``).
    every(finish_blocks, DEFAULT, 60, job_timeout=MOVES_TIMEOUT)
    every(finish_closures, DEFAULT, 60, job_timeout=MOVES_TIMEOUT)
    # What a block, a restriction or a lift told the counters after its commit, told again:
    # the telling may have failed, or met a recount that had read the record just before.
    every(push_statuses, DEFAULT, 60)
    # Offices complained of: again, if their request failed or died. A block it makes moves the
    # office's bookings: the moves' time limit.
    every(apply_policy, DEFAULT, 60, job_timeout=MOVES_TIMEOUT)
    every(fill_waitlists_left, DEFAULT, 60)  # seats a failed promotion left free
    every(end_spent_lines, DEFAULT, 5 * 60)  # today's lines with no slot ahead: ended, each citizen told
    every(finish_plans, DEFAULT, 60)  # a clerk's change not seen through
    every(finish_caps, DEFAULT, 60)  # a regulator's cap not told the counters
    every(carry_out_abandoned, DEFAULT, 60)  # inbound messages whose delivery died
    return scheduler


if __name__ == "__main__":
    main()
