"""RQ worker entry point: ``python -m workers.worker`` (with RQ's scheduler, for reminders
and retries). RQ keeps its own plain Redis: RQ_REDIS_URL, else REDIS_URL."""

from __future__ import annotations

import sys

from redis import Redis
from rq import Worker

from app.observability import configure_logging
from app.settings import load_settings
from workers.queues import ALL


def main() -> None:
    configure_logging()
    settings = load_settings()
    url = settings.rq_redis_url or settings.redis_url
    if not url:
        raise SystemExit("set RQ_REDIS_URL (or REDIS_URL) to the Redis that holds the job queues")
    # Import every job's module once, here: each job runs in a forked work horse, which then
    # inherits them instead of importing the whole app again (half a second a message).
    import app.booking.tasks
    import app.complaints.tasks
    import app.sms.tasks  # noqa: F401

    # --burst: work off what is queued and stop (used by tests and one-off catch-ups).
    Worker(list(ALL), connection=Redis.from_url(url)).work(with_scheduler=True, burst="--burst" in sys.argv)


if __name__ == "__main__":
    main()
