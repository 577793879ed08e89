"""Periodic jobs: ``python -m workers.cron`` (one per deployment; RQ's cron scheduler).

Times are UTC: Tehran is UTC+3:30 all year.
"""

from __future__ import annotations

from redis import Redis
from rq.cron import CronScheduler

from app.booking.tasks import close_day, send_reminders
from app.complaints.tasks import flag_overdue
from app.observability import configure_logging
from app.settings import load_settings
from app.sms.tasks import sweep
from workers.queues import DEFAULT, SMS


def main() -> None:
    configure_logging()
    settings = load_settings()
    url = settings.rq_redis_url or settings.redis_url
    if not url:
        raise SystemExit("set RQ_REDIS_URL (or REDIS_URL) to the Redis that holds the job queues")
    scheduler = CronScheduler(connection=Redis.from_url(url), name="nobat")
    scheduler.register(sweep, queue_name=SMS, interval=60)  # messages whose enqueue was lost
    scheduler.register(send_reminders, queue_name=DEFAULT, interval=60)  # the evening before, an hour before
    scheduler.register(close_day, queue_name=DEFAULT, cron="30 20 * * *")  # 00:00 Tehran
    scheduler.register(flag_overdue, queue_name=DEFAULT, interval=15 * 60)  # complaints past 72 hours
    scheduler.start()


if __name__ == "__main__":
    main()
