"""RQ worker entry point: ``python -m workers.worker`` (with RQ's scheduler, for reminders
and retries). RQ keeps its own plain Redis: RQ_REDIS_URL, else REDIS_URL."""

from __future__ import annotations

import sys

from redis import Redis
from rq import SimpleWorker

from app.observability import configure_logging
from app.settings import load_settings
from workers.queues import ALL


class Worker(SimpleWorker):
    """RQ's SimpleWorker, whose listener for commands (stop a job, shut down) wakes once a
    second instead of once a minute.

    RQ's listener thread waits 60 s at a time, and redis-py (8.2) now has the worker's
    shutdown wait for that thread. When the thread reads the reply to the worker's
    UNSUBSCRIBE before the worker tells it to stop, it starts another 60 s wait, for a
    subscription that never comes: the shutdown then takes a minute (a deploy's SIGTERM; in
    the tests, one run in five of a burst worker). A wake-up a second costs nothing."""

    def subscribe(self) -> None:
        # RQ's own subscribe, but for sleep_time (60 there).
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ declares it None
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )


def main() -> None:
    configure_logging()
    settings = load_settings()
    url = settings.rq_redis_url or settings.redis_url
    if not url:
        raise SystemExit("set RQ_REDIS_URL (or REDIS_URL) to the Redis that holds the job queues")
    # Every job's module imported once, here.
    import app.booking.tasks
    import app.complaints.tasks
    import app.console.tasks
    import app.enforcement.tasks
    import app.regulator.tasks
    import app.sms.tasks  # noqa: F401

    # Jobs run in this process, not in a work horse forked for each: the jobs keep one event
    # loop and one set of the app's parts between them (app.sms.tasks), so a message costs its
    # send, not a fork and a new database engine (about 10 messages a second a worker then).
    # RQ's time limit still holds (SIGALRM); a job that kills the process is retried by RQ
    # once the process manager has started it again.
    # --burst: work off what is queued and stop (used by tests and one-off catch-ups).
    Worker(list(ALL), connection=Redis.from_url(url)).work(with_scheduler=True, burst="--burst" in sys.argv)


if __name__ == "__main__":
    main()
