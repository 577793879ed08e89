"""The minute's jobs as cron enqueues them, run by an RQ worker of the test's deployment."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue

from app.booking.tasks import end_spent_lines, fill_waitlists_left
from app.capacity import keys
from app.capacity.tasks import recount
from app.complaints.tasks import flag_overdue
from app.console.tasks import finish_plans
from app.enforcement.tasks import apply_policy, finish_blocks, push_statuses
from app.redis import EmbeddedRedis
from app.regulator.tasks import finish_caps, finish_closures
from app.sms.tasks import carry_out_abandoned, job_context, run_alone, run_job
from tests.conftest import Deliver, World
from workers.queues import DEFAULT


async def test_the_periodic_jobs_run_in_a_worker(world: World, redis_sync: SyncRedis, deliver: Deliver) -> None:
    """Each is one service call with the job's own parts and session (``run_in_session``):
    with nothing left to do, each answers 0."""
    await world.rebuild()
    queue = Queue(DEFAULT, connection=redis_sync)
    jobs = [
        queue.enqueue(job)
        for job in (
            fill_waitlists_left,
            finish_plans,
            finish_blocks,
            finish_closures,
            finish_caps,
            flag_overdue,
            push_statuses,
            apply_policy,
            carry_out_abandoned,
            end_spent_lines,
        )
    ]
    await deliver()
    assert [(job.get_status(refresh=True), job.return_value()) for job in jobs] == [("finished", 0)] * len(jobs)


async def test_a_periodic_jobs_good_end_is_on_the_metrics_and_a_failed_one_is_not(
    client: Any, world: World, redis_sync: SyncRedis, deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job failing every run left its tracebacks in RQ's failed jobs for a year, and nothing
    paged anyone: no-shows, suspensions, reminders silently not done. Each good end of a
    periodic job is noted, and /metrics shows when, per job; a failed run notes nothing."""
    from workers.cron import PERIODIC_JOB

    await world.rebuild()
    queue = Queue(DEFAULT, connection=redis_sync)
    done = queue.enqueue(flag_overdue, **PERIODIC_JOB)
    failed = queue.enqueue(fails_on_its_loop, **PERIODIC_JOB)
    # One that goes on past each item's failure ends normally, every item failed: not a good
    # end either (finish_blocks, finish_closures... had noted one every minute).
    items_failed = queue.enqueue(logs_each_items_failure, **PERIODIC_JOB)
    # A copy that finds its last run under way does nothing: no good end (a run outlasting
    # its time limit each time had looked alive, the next minute's copy noted instead).
    redis_sync.set(f"{keys.NAMESPACE}:job-running:test-once", "another run", ex=60)
    skipped = queue.enqueue(once_at_a_time, **PERIODIC_JOB)
    unmarked = queue.enqueue(push_statuses)  # not registered as periodic: not noted
    before = int(time.time())
    await deliver()
    assert done.get_status(refresh=True) == "finished" and unmarked.get_status(refresh=True) == "finished"
    assert failed.get_status(refresh=True) == "failed"
    assert items_failed.get_status(refresh=True) == "finished"
    assert skipped.get_status(refresh=True) == "finished" and skipped.return_value() == 0
    assert failed.failure_ttl == PERIODIC_JOB["failure_ttl"]  # kept a week, not RQ's year
    noted = {name.decode(): int(at) for name, at in redis_sync.hgetall(keys.JOBS_DONE).items()}
    assert list(noted) == ["flag_overdue"] and noted["flag_overdue"] >= before
    metrics = (await client.get("/metrics")).text
    shown = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("nobat_job_last_success_timestamp_seconds{")
    }
    assert shown == {"flag_overdue": noted["flag_overdue"]}


def logs_each_items_failure() -> int:
    """A periodic job that logs each item's failure and goes on to the next, as the minute's
    jobs do (one office's failure must not keep the others waiting)."""

    async def body() -> int:
        try:
            raise RuntimeError("one office's moves failed")
        except RuntimeError:
            logging.getLogger("app.enforcement.service").exception("office 010001's moves wait for the next run")
        return 0

    return run_job(body())


def fails_on_its_loop() -> int:
    """A periodic job whose run fails (the record away, a bug)."""

    async def body() -> int:
        raise RuntimeError("the record went away")

    return run_job(body())


async def test_the_nights_recount_gives_back_what_a_failure_left_counted_for_nobody(
    world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A seat whose give-back met Redis away stays counted (the safe side), a hold too: only
    a recount gives them back, and nothing recounted a Redis that came back as it was."""
    office = await world.office(seats=2)
    await world.rebuild()
    day = world.tomorrow()
    field = keys.used_field("*", "10:00")
    await world.container.capacity.day_view(office_code=office, day=day)  # the day in Redis
    redis_sync.hincrby(keys.office_day(office, day), field, 1)  # counted for nobody
    stranded = keys.citizen_holds(world.national_id())
    redis_sync.hset(stranded, "NOBODY0001", f"{day.isoformat()}|101")
    job = Queue(DEFAULT, connection=redis_sync).enqueue(recount)
    await deliver()
    assert job.get_status(refresh=True) == "finished", job.latest_result()
    assert job.return_value() > 0  # office-days written
    assert int(redis_sync.hget(keys.office_day(office, day), field) or 0) == 0
    assert not redis_sync.exists(stranded)
    assert redis_sync.get(keys.REBUILT_AT)  # bookings go on


@pytest.mark.parametrize(("at", "runs"), [((3, 30), True), ((4, 10), True), ((9, 0), False)])
async def test_the_nights_recount_come_in_the_morning_waits_for_the_next_night(
    world: World,
    redis_sync: SyncRedis,
    deliver: Deliver,
    monkeypatch: pytest.MonkeyPatch,
    at: tuple[int, int],
    runs: bool,
) -> None:
    """The job queues' Redis away all night, the scheduler, started again at 09:00, enqueued
    the overdue recount at once: bookings paused nationwide in the morning rush. A recount
    enqueued by hand (an operator's) runs at any hour."""
    import datetime as dt

    from app.clock import Clock
    from workers.cron import PERIODIC_JOB

    await world.office()
    await world.rebuild()
    tz = world.container.clock.tz
    moment = dt.datetime.combine(world.container.clock.today(), dt.time(*at), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: moment)
    monkeypatch.setenv("NOBAT_REBUILD_SETTLE_SECONDS", "0")  # nothing in flight to wait for
    marker = redis_sync.get(keys.REBUILT_AT)
    queue = Queue(DEFAULT, connection=redis_sync)
    scheduled = queue.enqueue(recount, **PERIODIC_JOB)
    await deliver()
    assert scheduled.get_status(refresh=True) == "finished"
    assert (scheduled.return_value() > 0) is runs
    assert (redis_sync.get(keys.REBUILT_AT) != marker) is runs
    assert redis_sync.hexists(keys.JOBS_DONE, "recount") is runs  # skipped: not a good end
    by_hand = queue.enqueue(recount)
    await deliver()
    assert by_hand.return_value() > 0


def change_an_office() -> None:
    """A job that changes an office's counters (as a closure's end does), and nothing else."""

    async def body() -> None:
        async with job_context() as app:
            with app.capacity.reads.changing([("990104", None)]):
                pass

    run_job(body())


async def test_a_job_tells_its_changes_before_it_ends(world: World, redis_sync: SyncRedis, deliver: Deliver) -> None:
    """The job's loop stops when it ends: had the telling waited for the next job, the web
    instances would have shown the old counters until then (up to ``KEEP_SECONDS``)."""
    redis_sync.zrem(keys.DAYS_CHANGED, "990104|")
    job = Queue(DEFAULT, connection=redis_sync).enqueue(change_an_office)
    await deliver()
    assert job.get_status(refresh=True) == "finished"
    assert redis_sync.zscore(keys.DAYS_CHANGED, "990104|") is not None


async def _one(app: object, session: object) -> int:
    return 1


def once_at_a_time() -> int:
    return run_alone("test-once", _one)


async def test_a_job_run_alone_does_nothing_while_its_last_run_is_under_way(
    world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """RQ's cron enqueues a periodic job every minute whether its last run has ended or not
    (the moves a block or a closure left can take longer): the copy ends at once."""
    queue = Queue(DEFAULT, connection=redis_sync)
    lock = f"{keys.NAMESPACE}:job-running:test-once"
    redis_sync.set(lock, "the run under way", px=30_000)
    under_way = queue.enqueue(once_at_a_time)
    await deliver()
    redis_sync.delete(lock)
    alone = queue.enqueue(once_at_a_time)
    await deliver()
    assert [job.return_value() for job in (under_way, alone)] == [0, 1]
    assert not redis_sync.exists(lock)  # let go once done


async def test_a_note_that_is_not_one_is_dropped_and_stops_no_job(
    world: World, redis_sync: SyncRedis, deliver: Deliver
) -> None:
    """A field or change the jobs cannot read (a hand's HSET, a half-written note) made each
    run of its job raise, so no later change in that hash reached Redis again."""
    office = await world.office()
    await world.rebuild()
    bad = {
        keys.PLANS_TO_APPLY: {"990104": "yesterday|x"},
        keys.CAPS_TO_APPLY: {"not-a-cap": "1.0|x", "7": "soon"},
        keys.CLOSURES_TO_APPLY: {"closure-1": "1.0|x"},
    }
    for noted_in, fields in bad.items():
        redis_sync.hset(noted_in, mapping=fields)
    redis_sync.sadd(keys.POLICY_TO_APPLY, "not-an-office")
    # Beside them, a good note, long due: applied, not dropped with the bad ones.
    redis_sync.hset(keys.PLANS_TO_APPLY, office, "1.0|")
    queue = Queue(DEFAULT, connection=redis_sync)
    jobs = [queue.enqueue(job) for job in (finish_plans, finish_caps, finish_closures, apply_policy)]
    await deliver()
    assert [(job.get_status(refresh=True), job.return_value()) for job in jobs] == [
        ("finished", n) for n in (1, 0, 0, 0)
    ]
    assert [redis_sync.hlen(noted_in) for noted_in in bad] == [0, 0, 0]
    assert not redis_sync.exists(keys.POLICY_TO_APPLY)


def test_the_scheduler_rides_out_an_outage_of_the_job_queues_redis(tmp_path: Path) -> None:
    """RQ's scheduler dies at the first command its Redis fails; with it went every periodic
    job (the reminders, the night's close, the sweep that re-enqueues lost jobs) until
    someone started it again. It starts again by itself once Redis answers, and stops on
    SIGTERM."""
    server = EmbeddedRedis(tmp_path / "queues").start()

    def scheduling(every: int) -> subprocess.Popen[bytes]:
        program = (
            "from app.sms.tasks import sweep\n"
            "from workers import cron\n"
            f"scheduler = cron.Scheduler(connection=cron.connect({server.url!r}), name='probe')\n"
            f"scheduler.register(sweep, queue_name='probe', interval={every})\n"
            "cron.run(scheduler, restart_seconds=0.5)\n"
        )
        return subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).parents[2])

    process = scheduling(every=1)
    try:

        def enqueued_within(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with contextlib.suppress(RedisConnectionError), SyncRedis.from_url(server.url) as redis:
                    if redis.llen("rq:queue:probe"):
                        return True
                time.sleep(0.2)
            return False

        assert enqueued_within(20)
        server.stop()
        time.sleep(3)  # the scheduler meets the outage
        assert process.poll() is None
        server.start()  # the same port, no data
        assert enqueued_within(20)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0

        # Told to stop while Redis is away (asleep until its next job, it has not met the
        # outage yet), it stops: its last words to Redis fail, and had been taken for one more
        # outage to ride out, until a SIGKILL.
        with SyncRedis.from_url(server.url) as redis:
            redis.delete("rq:queue:probe")
        process = scheduling(every=60)
        assert enqueued_within(20)
        server.stop()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()


def test_one_scheduler_enqueues_and_another_stands_by_until_it_stops(tmp_path: Path) -> None:
    """Two schedulers (a deploy's overlap, one started by mistake) had enqueued every job
    twice: two nightly recounts, bookings paused nationwide for each. One leads; the other
    enqueues nothing, and takes over, with what fell due meanwhile, when the first stops or
    its lead runs out (a scheduler started again after its process died, the lead still the
    dead one's, had skipped the night's recount)."""
    import datetime as dt

    from rq.utils import now as rq_now

    from app.sms.tasks import sweep
    from workers import cron

    server = EmbeddedRedis(tmp_path / "queues").start()
    try:
        with SyncRedis.from_url(server.url) as redis:
            first, second = (cron.Scheduler(connection=redis, name=name) for name in ("first", "second"))
            for scheduler in (first, second):
                scheduler.register(sweep, queue_name="probe", interval=60)
                scheduler.register_birth()  # as start() does
            assert len(first.enqueue_jobs()) == 1 and first.leading
            assert second.enqueue_jobs() == [] and not second.leading
            assert redis.llen("rq:queue:probe") == 1
            [job] = second.get_jobs()
            # Still due, for when it takes over (the night's recount, if it came meanwhile),
            # and it asks again in a while, not in a spin.
            assert job.should_run() and second.calculate_sleep_interval() == cron.STANDBY_SECONDS

            # A night's job due long ago (a standby of days) is moved on, not run at 10:00 in
            # the rush on taking over; one due lately (a minute's, the recount at 03:30 for a
            # scheduler started again at 03:31) stays due.
            nightly = second.register(sweep, queue_name="probe", cron="0 0 * * *", name="nightly")
            lately = second.register(sweep, queue_name="probe", cron="30 3 * * *", name="lately")
            already = second.register(sweep, queue_name="probe", cron="45 3 * * *", name="already")
            nightly.next_enqueue_time = rq_now() - cron.NIGHT_LATE - dt.timedelta(minutes=1)
            lately.next_enqueue_time = already.next_enqueue_time = rq_now() - dt.timedelta(minutes=10)
            # The leader enqueued "already" when it fell due, then stopped (a deploy at 03:40).
            redis.zadd(already.job_history_key, {"by-the-leader": (already.next_enqueue_time.timestamp() + 1)})
            assert second.enqueue_jobs() == [] and not nightly.should_run() and lately.should_run()

            first.register_death()  # stopped: handed over at its next ask
            assert len(second.enqueue_jobs()) == 2 and second.leading and not first.leads()  # the sweep and "lately"
            assert redis.llen("rq:queue:probe") == 3 and not job.should_run() and not lately.should_run()
            assert not already.should_run()  # moved on, not run a second time

            # Leading, a night's job due long ago (the job queues' Redis away all night) is moved
            # on, not run at 09:00 in the rush.
            nightly.next_enqueue_time = rq_now() - cron.NIGHT_LATE - dt.timedelta(minutes=1)
            assert second.enqueue_jobs() == [] and not nightly.should_run()
            # But to its last time within the lateness, run then (the close's 02:00 for a Redis
            # back at 02:10, not skipped to tomorrow's), and not if already run.
            often = second.register(sweep, queue_name="probe", cron="*/10 * * * *", name="often")
            often.next_enqueue_time = rq_now() - dt.timedelta(hours=2)
            assert [j.name for j in second.enqueue_jobs()] == ["often"]
            again = second.register(sweep, queue_name="probe", cron="*/10 * * * *", name="again")
            again.next_enqueue_time = rq_now() - dt.timedelta(hours=2)
            redis.zadd(again.job_history_key, {"by-the-leader": rq_now().timestamp()})
            assert second.enqueue_jobs() == [] and not again.should_run()
            redis.pexpire(cron.LEADER_KEY, 1)  # the second dies without a word: its lead runs out
            time.sleep(0.05)
            assert first.leads() and not second.leads()
    finally:
        server.stop()
