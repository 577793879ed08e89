"""The nightly close (app.booking.tasks.close_day) on a country's night, timed.

    .venv/bin/python -m loadtests.bench_close_day [--no-shows 100000]

Starts a throwaway PostgreSQL cluster and an embedded redis-server, loads the national demo
network, counts it into Redis, and records yesterday's bookings: ``--no-shows`` never checked
in (a tenth of them by citizens with two no-shows already this month, whom this night
suspends), as many checked in and never marked served, and a tenth as many still on a
waitlist. Then runs the job as the RQ worker would, and prints how long it took and what it
returned. RQ stops a job after 180 s unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from app.booking.tasks import close_day
from app.container import build_container
from app.db import create_schema
from app.offices import dataset
from app.redis import EmbeddedRedis
from app.settings import load_settings
from loadtests.pg_baseline import PgCluster, temp_workdir

BENCH_SECRET = "bench-secret-key-not-for-production-0123456789"

# Yesterday's bookings, made in one statement each: national IDs from the row number (unique
# per citizen, not valid ones: the job does not check them), offices in turn.
BOOKINGS = """
INSERT INTO bookings (tracking_code, office_id, service_code, national_id, mobile, date, slot_time, pool,
                      status, channel, created_at)
SELECT :tag || n, o.office_id, o.service_code, lpad((:first + n)::text, 10, '0'), '09120000000',
       CAST(:day AS DATE), '10:00', '*', :status, 'web', now()
FROM generate_series(1, :count) AS n
JOIN (SELECT office_id, service_code, row_number() OVER () AS k FROM office_services) AS o
  ON o.k = 1 + n % (SELECT count(*) FROM office_services)
"""


async def prepare(database_url: str, redis_url: str, no_shows: int) -> None:
    settings = load_settings({}).with_(database_url=database_url, redis_url=redis_url, secret_key=BENCH_SECRET)
    container = build_container(settings, redis_url)
    try:
        await create_schema(container.engine)
        today = container.clock.today()
        async with container.sessions() as session:
            await dataset.load(session, dataset.generate())
            await session.commit()
            await container.capacity.rebuild(session=session, today=today)
            yesterday = today - dt.timedelta(days=1)
            repeat = no_shows // 10  # citizens with two no-shows already this month
            batches = [
                ("NS", 0, no_shows, yesterday, "booked"),
                ("CI", 10**8, no_shows, yesterday, "checked_in"),
                ("WL", 2 * 10**8, no_shows // 10, yesterday, "waitlisted"),
                ("R1", 0, repeat, today - dt.timedelta(days=5), "no_show"),
                ("R2", 0, repeat, today - dt.timedelta(days=9), "no_show"),
            ]
            for tag, first, count, day, status in batches:
                await session.execute(
                    text(BOOKINGS), {"tag": tag, "first": first, "count": count, "day": day, "status": status}
                )
            await session.commit()
    finally:
        await container.close()


def main(no_shows: int) -> None:
    pg = PgCluster(temp_workdir()).start()
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        database_url = pg.dsn.replace("postgresql://", "postgresql+asyncpg://")
        try:
            asyncio.run(prepare(database_url, redis.url, no_shows))
            os.environ.update(
                DATABASE_URL=database_url,
                REDIS_URL=redis.url,
                NOBAT_SECRET_KEY=BENCH_SECRET,
                NOBAT_SMS_BACKEND="console",
            )
            started = time.perf_counter()
            result = close_day()
            print(f"close_day: {time.perf_counter() - started:.1f} s, {result}")
        finally:
            redis.stop()
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-shows", type=int, default=100_000)
    main(parser.parse_args().no_shows)
