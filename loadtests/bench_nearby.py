"""In-process timing of the nearby search over the full national dataset.

    .venv/bin/python -m loadtests.bench_nearby [--searches 3000] [--warm 0] [--at-once 1] [--parts]

Builds the 17,000-office demo network in a temporary SQLite file, counts it into a fresh
embedded redis-server, loads the office directory as the app does at start, then times
LoadService.nearby (the nearest offices from the directory's k-d trees, one pipelined read of
the candidates, the ranking, the winners' names from the directory) from random points
around random cities, for today or, on a Friday (closed), tomorrow. Prints p50/p95/p99 in milliseconds, and the CPU time per search of
this process and of redis-server. ``--warm N``: N searches first, not timed, as a running
instance has made before (its copies of the counters filled). ``--at-once N``: N searches at a
time on the event loop, as a busy worker has them (latencies are then each batch's). ``--parts``: also the wall time of the search's parts
(the nearest offices, their counters read, the cards), each timed around its call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.capacity.plan import iranian_weekday
from app.container import build_container
from app.db import create_schema
from app.offices import dataset
from app.offices.models import City
from app.redis import EmbeddedRedis
from app.settings import load_settings

FRIDAY = 6  # app.capacity.plan counts the week from Saturday


PARTS = (
    ("the nearest offices (OfficeDirectory.nearest)", "app.offices.directory", "OfficeDirectory", "nearest"),
    ("the counters read (DayReader.sums)", "app.capacity.reading", "DayReader", "sums"),
    ("the cards (OfficeDirectory.cards)", "app.offices.directory", "OfficeDirectory", "cards"),
)


def _time_parts() -> dict[str, list[float]]:
    """Wrap each of PARTS (coroutines) to add its calls' wall time (s) to the list returned."""
    import functools
    import importlib

    spent: dict[str, list[float]] = {}
    for label, module, cls, name in PARTS:
        owner = getattr(importlib.import_module(module), cls)
        call, times = getattr(owner, name), spent.setdefault(label, [])

        async def timed(*args: Any, _call: Any = call, _times: list[float] = times, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await _call(*args, **kwargs)
            finally:
                _times.append(time.perf_counter() - started)

        setattr(owner, name, functools.wraps(call)(timed))
    return spent


async def main(searches: int, parts: bool = False, warm: int = 0, at_once: int = 1) -> None:
    spent = _time_parts() if parts else {}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        settings = load_settings({}).with_(database_url=f"sqlite+aiosqlite:///{tmp}/bench.db", redis_url=server.url)
        container = build_container(settings, server.url)
        try:
            await create_schema(container.engine)
            async with container.sessions() as session:
                await dataset.load(session, dataset.generate())
                await session.commit()
                started = time.perf_counter()
                await container.capacity.rebuild(session=session, today=container.clock.today())
                print(
                    f"rebuild of 17,000 offices x {settings.horizon_days} days: {time.perf_counter() - started:.1f} s"
                )
                cities = (await session.execute(select(City.lat, City.lon))).all()
            await container.offices.load()  # as the app does at start
            memory = await container.redis.info("memory")
            print(f"redis used_memory: {memory['used_memory_human']}")
            rng = random.Random(1)
            services = ["101", "102", "104", "110", "115"]
            day = container.clock.today()
            if iranian_weekday(day) == FRIDAY:
                # A closed day's counters are nearly empty and read twice as cheaply.
                day += dt.timedelta(days=1)
            print(f"searching for {day:%A %Y-%m-%d}")

            async def search() -> None:
                lat, lon = rng.choice(cities)
                await container.load.nearby(
                    sessions=container.sessions,
                    service_code=rng.choice(services),
                    day=day,
                    lat=lat + rng.uniform(-0.05, 0.05),
                    lon=lon + rng.uniform(-0.05, 0.05),
                    city=None,
                    limit=10,
                )

            for _ in range(warm // at_once):
                await asyncio.gather(*(search() for _ in range(at_once)))
            for times in spent.values():
                times.clear()
            timings = []
            redis_cpu, app_cpu = await _redis_cpu(container.redis), time.process_time()
            for _ in range(searches // at_once):
                started = time.perf_counter()
                await asyncio.gather(*(search() for _ in range(at_once)))
                timings.append((time.perf_counter() - started) * 1000)
            searches = searches // at_once * at_once
            app_cpu, redis_cpu = time.process_time() - app_cpu, await _redis_cpu(container.redis) - redis_cpu
            timings.sort()
            q = statistics.quantiles(timings, n=100)
            print(
                f"nearby x {searches}: p50 {q[49]:.2f} ms, p95 {q[94]:.2f} ms, p99 {q[98]:.2f} ms, max {timings[-1]:.2f} ms"
            )
            # Under load the two share the cores: CPU per search, not latency, sets the rate.
            print(
                f"CPU per search: this process {app_cpu / searches * 1e6:.0f} us, "
                f"redis-server {redis_cpu / searches * 1e6:.0f} us"
            )
            for label, times in spent.items():
                print(f"{label}: {sum(times) / searches * 1e6:.0f} us a search ({len(times)} calls)")
        finally:
            await container.close()
            server.stop()


async def _redis_cpu(redis: Any) -> float:
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--searches", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=0, help="searches first, not timed")
    parser.add_argument("--at-once", type=int, default=1, help="searches at a time on the event loop")
    parser.add_argument("--parts", action="store_true", help="also time the search's parts")
    args = parser.parse_args()
    asyncio.run(main(args.searches, args.parts, args.warm, args.at_once))
