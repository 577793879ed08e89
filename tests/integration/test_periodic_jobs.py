"""The minute's jobs as cron enqueues them, run by an RQ worker of the test's deployment."""

from __future__ import annotations

from redis import Redis as SyncRedis
from rq import Queue

from app.booking.tasks import fill_waitlists_left
from app.complaints.tasks import flag_overdue
from app.console.tasks import finish_plans
from app.enforcement.tasks import finish_blocks
from app.regulator.tasks import finish_closures
from tests.conftest import Deliver, World
from workers.queues import DEFAULT


async def test_the_periodic_jobs_run_in_a_worker(world: World, redis_sync: SyncRedis, deliver: Deliver) -> None:
    """Each is one service call with the job's own parts and session (``run_in_session``):
    with nothing left to do, each answers 0."""
    await world.rebuild()
    queue = Queue(DEFAULT, connection=redis_sync)
    jobs = [
        queue.enqueue(job) for job in (fill_waitlists_left, finish_plans, finish_blocks, finish_closures, flag_overdue)
    ]
    await deliver()
    assert [(job.get_status(refresh=True), job.return_value()) for job in jobs] == [("finished", 0)] * len(jobs)
