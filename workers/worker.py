"""RQ worker entry point: ``python -m workers.worker [--queues codes,sms] [--burst]`` (with
RQ's scheduler, for reminders and retries). RQ keeps its own plain Redis: RQ_REDIS_URL, else
REDIS_URL."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.worker")
    parser.add_argument(
        "--queues",
        type=queues_named,
        default=ALL,
        help=f"the queues to take jobs from, comma-separated (default: all of {','.join(ALL)})",
    )
    # Work off what is queued and stop (used by tests and one-off catch-ups).
    parser.add_argument("--burst", action="store_true")
    return parser.parse_args(argv)


def queues_named(text: str) -> tuple[str, ...]:
    """The queues a ``--queues`` names, in the order workers take them (``ALL``'s): a
    worker given "default,codes" still takes a sign-in code before housekeeping."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if unknown := names - set(ALL):
        raise argparse.ArgumentTypeError(f"no queue named {', '.join(sorted(unknown))} (there are {', '.join(ALL)})")
    if not names:
        raise argparse.ArgumentTypeError("name at least one queue")
    return tuple(name for name in ALL if name in names)


def main() -> None:
    args = parse_args(sys.argv[1:])
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
    Worker(list(args.queues), connection=Redis.from_url(url)).work(with_scheduler=True, burst=args.burst)


if __name__ == "__main__":
    main()
