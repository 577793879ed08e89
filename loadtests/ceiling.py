"""The ceiling: how fast the same Redis runs the RESERVE Lua script with nothing in front of it.

Two measurements, both bounded by a count of calls:
- ``redis-benchmark`` (redis-tools) sending EVALSHA RESERVE, pipelined, from C: what one
  Redis core can do, the most any booking path through it could reach;
- a pipelined redis-py client running the Redis half of a real booking, HOLD on the
  citizen's key then RESERVE with an Idempotency-Key, as ``BookingService.book`` does.
Both book on day hashes under ``bench:`` (10^9 seats a slot, the shape of a default day), not
on the service's keys, and delete them afterwards.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis

from app.capacity.scripts import HOLD, RESERVE
from loadtests.bare_reserve import BENCH_PREFIX, bench_day_fields, bench_day_key, day_slots
from loadtests.stack import redis_benchmark_binary

BENCH_OFFICES = 1000
# redis-benchmark replaces __rand_int__ with a 12-digit number below -r: name the bench
# offices the same way so that its random keys hit them.
RAND_WIDTH = 12


def bench_office(number: int) -> str:
    return f"{number:0{RAND_WIDTH}d}"


@dataclass
class Ceiling:
    day: str
    redis_benchmark_reserve: dict[str, Any] = field(default_factory=dict)
    pipelined_hold_reserve: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def reserve_rate(self) -> float:
        """The raw RESERVE rate: redis-benchmark's when it ran, else the pipelined client's."""
        return float(self.redis_benchmark_reserve.get("rps") or self.pipelined_hold_reserve.get("reserve_rps") or 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reserve_rate": round(self.reserve_rate, 1)}


def create_bench_days(redis: Redis, day: dt.date, offices: int = BENCH_OFFICES) -> list[str]:
    codes = [bench_office(i) for i in range(offices)]
    fields = bench_day_fields(day_slots())
    with redis.pipeline(transaction=False) as pipe:
        for code in codes:
            key = bench_day_key(code, day.isoformat())
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, 3 * 86400)  # in case a run dies before cleaning up
        pipe.execute()
    return codes


def drop_bench_keys(redis: Redis) -> int:
    dropped = 0
    batch: list[bytes] = []
    for key in redis.scan_iter(match=f"{BENCH_PREFIX}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            dropped += redis.unlink(*batch)
            batch = []
    if batch:
        dropped += redis.unlink(*batch)
    return dropped


def run_redis_benchmark(
    host: str, port: int, sha: str, day: str, *, calls: int, clients: int, pipeline: int
) -> dict[str, Any]:
    binary = redis_benchmark_binary()
    if binary is None:
        return {"skipped": "redis-benchmark not installed (apt-get install -y redis-tools)"}
    day_key = f"{BENCH_PREFIX}:{{o:__rand_int__}}:day:{day}"
    idem_key = f"{BENCH_PREFIX}:{{o:__rand_int__}}:idem:-"
    wait_key = f"{BENCH_PREFIX}:{{o:__rand_int__}}:wait:{day}:*"
    args = [
        binary, "-h", host, "-p", str(port), "-n", str(calls), "-c", str(clients), "-P", str(pipeline),
        "-r", str(BENCH_OFFICES), "--csv",
        # RESERVE for the earliest free slot, no idempotency key (ARGV[5] = 0).
        "EVALSHA", sha, "3", day_key, idem_key, wait_key, "*", "", "", "BENCHTRACK0", "0",
    ]  # fmt: skip
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"error": done.stderr.strip() or done.stdout.strip()}
    # CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    row = [cell.strip('"') for cell in done.stdout.strip().splitlines()[-1].split(",")]
    return {
        "calls": calls,
        "clients": clients,
        "pipeline": pipeline,
        "rps": float(row[1]),
        "p50_ms": float(row[4]),
        "p99_ms": float(row[6]),
    }


def run_pipelined(redis: Redis, day: dt.date, codes: list[str], *, calls: int, batch: int = 100) -> dict[str, Any]:
    """HOLD then RESERVE (with an idempotency key), ``batch`` bookings per round trip."""
    hold = redis.register_script(HOLD)
    reserve = redis.register_script(RESERVE)
    rng = random.Random(1405)
    today = day.isoformat()
    started = time.perf_counter()
    done = 0
    while done < calls:
        with redis.pipeline(transaction=False) as pipe:
            for number in range(done, min(done + batch, calls)):
                code = rng.choice(codes)
                track = f"B{number:09d}"
                citizen = f"{BENCH_PREFIX}:{{c:{number:010d}}}:holds"
                hold(keys=[citizen], args=[today, today, "101", track, 3, 86400], client=pipe)
                reserve(
                    keys=[
                        bench_day_key(code, today),
                        f"{BENCH_PREFIX}:{{o:{code}}}:idem:{track}",
                        f"{BENCH_PREFIX}:{{o:{code}}}:wait:{today}:*",
                    ],
                    args=["*", "", "", track, 86400],
                    client=pipe,
                )
            replies = pipe.execute()
        done += len(replies) // 2
    seconds = time.perf_counter() - started
    return {"calls": calls, "batch": batch, "bookings_per_s": calls / seconds, "reserve_rps": calls / seconds}


def measure(redis_url: str, *, day: dt.date, calls: int, clients: int = 32, pipeline: int = 16) -> Ceiling:
    redis = Redis.from_url(redis_url)
    try:
        codes = create_bench_days(redis, day)
        sha = str(redis.script_load(RESERVE))
        ceiling = Ceiling(day=day.isoformat())
        host_port = redis.connection_pool.connection_kwargs
        ceiling.redis_benchmark_reserve = run_redis_benchmark(
            str(host_port.get("host", "127.0.0.1")),
            int(host_port.get("port", 6379)),
            sha,
            day.isoformat(),
            calls=calls,
            clients=clients,
            pipeline=pipeline,
        )
        ceiling.pipelined_hold_reserve = run_pipelined(redis, day, codes, calls=max(calls // 4, 1000))
        return ceiling
    finally:
        drop_bench_keys(redis)
        redis.close()
