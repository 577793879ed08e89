"""The recount's first step for the citizens' holds (``Capacity._rebuild_holds``), timed.

    .venv/bin/python -m loadtests.bench_holds_drop [--holds 100000]

Fills an embedded redis-server with ``--holds`` citizens' hold keys, then drops them as
the recount did before (an awaited DEL a key) and as it does now (a page of keys unlinked
in one pipelined trip, ``Capacity.drop_holds``), and prints how long each took.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from app.capacity import keys
from app.capacity.service import HOLDS_PER_TRIP, Capacity
from app.clock import Clock
from app.redis import EmbeddedRedis


async def _fill(redis: Redis, holds: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(holds):
            pipe.hset(keys.citizen_holds(f"{n:010d}"), "ABCDEFGHJK", "2026-12-07|101")
        await pipe.execute()


async def _one_trip_a_key(redis: Redis) -> None:
    async for key in redis.scan_iter(match=keys.CITIZEN_HOLDS_PATTERN, count=HOLDS_PER_TRIP):
        await redis.delete(key)


async def main(holds: int) -> None:
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="nobat-holds-"))).start()
    redis = Redis.from_url(server.url)
    capacity = Capacity(redis, clock=Clock("UTC"), horizon_days=14)  # no day is read
    try:
        for name, drop in (("one trip a key", _one_trip_a_key(redis)), ("a page a trip", capacity.drop_holds())):
            await _fill(redis, holds)
            started = time.perf_counter()
            await drop
            print(
                f"{name}: {holds:,} holds dropped in {time.perf_counter() - started:.2f} s, {await redis.dbsize()} left"
            )
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().holds))
