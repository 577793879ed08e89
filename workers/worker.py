"""RQ worker entry point: ``python -m workers.worker`` (RQ keeps its own plain Redis: RQ_REDIS_URL)."""

from __future__ import annotations

import os

from redis import Redis
from rq import Worker

from workers.queues import ALL


def main() -> None:
    url = os.environ.get("RQ_REDIS_URL") or os.environ.get("REDIS_URL")
    if not url:
        raise SystemExit("set RQ_REDIS_URL (or REDIS_URL) to the Redis that holds the job queues")
    Worker(list(ALL), connection=Redis.from_url(url)).work(with_scheduler=True)


if __name__ == "__main__":
    main()
