"""The recount (Capacity.rebuild, what `python -m app rebuild` and the 03:30 job run while
bookings pause) with a country's upcoming bookings in the record, timed.

    .venv/bin/python -m loadtests.bench_recount [--bookings 2000000] [--waiting 20000]

Starts a throwaway PostgreSQL cluster and an embedded redis-server, loads the national demo
network and records ``--bookings`` booked seats spread over the horizon's days (each its
own citizen), and ``--waiting`` places in line. Then counts Redis from the record and
prints how long it took, in all and by part: the office-days, the citizens' holds, the lines.
The demo network's figure in docs/performance.md (13 s) has no booking in it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from app.container import build_container
from app.db import create_schema
from app.offices import dataset
from app.redis import EmbeddedRedis
from app.settings import load_settings
from loadtests.bench_close_day import BENCH_SECRET, BOOKINGS
from loadtests.pg_baseline import PgCluster, temp_workdir

# As bench_close_day's, each at one of the morning's slots (the counts are per slot), or none
# for a place in line.
UPCOMING = BOOKINGS.replace(
    "'10:00'",
    "CASE WHEN :status = 'waitlisted' THEN '' ELSE (ARRAY['08:00', '08:30', "
    "'09:00', '09:30', '10:00', '10:30', '11:00', '11:30'])[1 + n % 8] END",
)


async def measure(database_url: str, redis_url: str, bookings: int, waiting: int) -> None:
    settings = load_settings({}).with_(database_url=database_url, redis_url=redis_url, secret_key=BENCH_SECRET)
    container = build_container(settings, redis_url)
    capacity = container.capacity
    try:
        await create_schema(container.engine)
        today = container.clock.today()
        days = capacity.horizon(today)
        async with container.sessions() as session:
            await dataset.load(session, dataset.generate())
            await session.commit()
            started = time.perf_counter()
            per_day = bookings // len(days)
            for number, day in enumerate(days):
                await session.execute(
                    text(UPCOMING),
                    {"tag": f"U{number}-", "first": number * per_day, "count": per_day, "day": day, "status": "booked"},
                )
                await session.commit()
            await session.execute(
                text(UPCOMING),
                {"tag": "W-", "first": 10**9, "count": waiting, "day": days[1], "status": "waitlisted"},
            )
            await session.commit()
        async with container.engine.connect() as connection:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("VACUUM ANALYZE bookings"))
        print(
            f"recorded {per_day * len(days):,} bookings and {waiting:,} places in line: {time.perf_counter() - started:.0f} s"
        )
        async with container.sessions() as session:
            started = time.perf_counter()
            written = await capacity._write_days(session=session, days=days, mode="replace", batch=500)
            counted = time.perf_counter()
            await capacity._rebuild_holds(session=session, today=today)
            held = time.perf_counter()
            await capacity._rebuild_waitlists(session=session, today=today)
            lined = time.perf_counter()
            print(
                f"office-days {written:,}: {counted - started:.1f} s; holds {held - counted:.1f} s; "
                f"lines {lined - held:.1f} s"
            )
        async with container.sessions() as session:
            started = time.perf_counter()
            await capacity.rebuild(session=session, today=today)
            print(f"the whole recount again, as it runs at night: {time.perf_counter() - started:.1f} s")
    finally:
        await container.close()


def main(bookings: int, waiting: int) -> None:
    pg = PgCluster(temp_workdir()).start()
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            asyncio.run(measure(pg.dsn.replace("postgresql://", "postgresql+asyncpg://"), redis.url, bookings, waiting))
        finally:
            redis.stop()
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bookings", type=int, default=2_000_000)
    parser.add_argument("--waiting", type=int, default=20_000)
    arguments = parser.parse_args()
    main(arguments.bookings, arguments.waiting)
