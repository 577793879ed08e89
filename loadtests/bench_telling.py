"""In-process cost of telling the changes to the counters (app.capacity.reading), per booking.

    .venv/bin/python -m loadtests.bench_telling [--bookings-per-second 1800] [--seconds 12]

One ``DayReader`` changes that many office-days a second, as a worker's bookings do (the
``changing`` around each, the batched tell to Redis), and another, standing for a second
worker, hears them once a second. Prints this process's CPU per booking for each side, against
a fresh embedded redis-server. Every worker hears every change, its own too: a booking costs
the writer's share once and the hearer's once per worker.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from app.capacity.reading import DayReader
from app.redis import AutoPipeline, EmbeddedRedis

OFFICES = 17_000
HORIZON_DAYS = 14


async def main(per_second: int, seconds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        redis = Redis.from_url(server.url)
        try:
            writer = DayReader(AutoPipeline(redis), ttl=1.0)
            hearer = DayReader(AutoPipeline(redis), ttl=1.0)
            await hearer.sums([], dt.date.today())  # the first look: from here on, changes are heard
            rng = random.Random(1)
            today = dt.date.today()
            for second in range(seconds):
                changes = [
                    (f"{rng.randrange(OFFICES):06d}", today + dt.timedelta(days=rng.randrange(HORIZON_DAYS)))
                    for _ in range(per_second)
                ]
                started = time.process_time()
                for i, office_day in enumerate(changes):
                    with writer.changing([office_day]):
                        pass
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # bookings arrive over the second, not at once
                await writer.told()
                written = time.process_time() - started
                await asyncio.sleep(1.0)  # the hearer's ttl
                started = time.process_time()
                await hearer.sums([], today)
                heard = time.process_time() - started
                print(
                    f"second {second + 1}: the writer {written / per_second * 1e6:.1f} us a booking, "
                    f"the hearer {heard / per_second * 1e6:.1f} us a booking ({heard * 1e3:.1f} ms a look)"
                )
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bookings-per-second", type=int, default=1800)
    parser.add_argument("--seconds", type=int, default=12)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.bookings_per_second, arguments.seconds))
