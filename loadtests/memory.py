"""Redis memory by kind of key, and what a fully booked horizon would need.

The national dataset (day hashes of 17,000 offices x 14 days) is fixed; what
grows is per booking: the citizen's holds, the Idempotency-Key (24 hours), and RQ's jobs (the
confirmation, and two reminders scheduled for the evening before and the hour before,
which stay in Redis until they are due, up to 14 days). Counting keys by kind (SCAN) and
sampling ``MEMORY USAGE`` of each kind gives bytes per kind and per booking.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from redis import Redis

SAMPLE = 300  # keys per kind whose MEMORY USAGE is read


def kind_of(key: str) -> str:
    if key.startswith("nobat:{o:"):
        if ":day:" in key:
            return "capacity: office-day hashes"
        if ":idem:" in key:
            return "capacity: idempotency keys"
        if ":wait:" in key:
            return "capacity: waitlists"
        return "capacity: office, other"
    if key.startswith("nobat:{c:"):
        return "capacity: citizen holds"
    if key.startswith("nobat:sms:outbox"):
        return "console SMS outbox"
    if key.startswith("rq:job:remind-"):
        return "RQ: reminder jobs"
    if key.startswith("rq:job:"):
        return "RQ: other jobs"
    if key.startswith("rq:"):
        return "RQ: queues and registries"
    if key.startswith("bench:"):
        return "bench (references)"
    return "nobat: other (rate limits, sessions, codes)"


def by_kind(redis: Redis) -> dict[str, dict[str, float]]:
    """{kind: {keys, bytes (estimated)}} over every key, plus used_memory."""
    keys: dict[str, list[bytes]] = defaultdict(list)
    for raw in redis.scan_iter(count=10_000):
        keys[kind_of(raw.decode(errors="replace"))].append(raw)
    rng = random.Random(1405)
    result: dict[str, dict[str, float]] = {}
    for kind, names in sorted(keys.items()):
        sample = names if len(names) <= SAMPLE else rng.sample(names, SAMPLE)
        with redis.pipeline(transaction=False) as pipe:
            for name in sample:
                pipe.memory_usage(name, samples=0)
            sizes = [size or 0 for size in pipe.execute()]
        mean = sum(sizes) / len(sizes) if sizes else 0.0
        result[kind] = {"keys": len(names), "bytes": round(mean * len(names))}
    return result


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def projection(
    *,
    dataset_bytes: int,
    after: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]],
    bookings: int,
    seats_total: int,
    horizon_days: int,
) -> dict[str, Any]:
    """Bytes per booking of each growing kind, and the totals for a horizon with every seat sold."""

    def grown(kind: str) -> float:
        return after.get(kind, {}).get("bytes", 0) - before.get(kind, {}).get("bytes", 0)

    if bookings <= 0:
        return {"bookings": 0}
    holds = grown("capacity: citizen holds") / bookings
    idem = grown("capacity: idempotency keys") / bookings
    # Only the reminders wait for days; the other jobs (sign-in codes, confirmations) are
    # dropped an hour after they ran (result_ttl), so they do not add up over the horizon.
    rq_jobs = grown("RQ: reminder jobs") / bookings
    # Holds live as long as the booking (the horizon); idempotency keys 24 hours (one day of
    # bookings); reminder jobs until they are due (the horizon).
    capacity = dataset_bytes + holds * seats_total + idem * seats_total / max(horizon_days, 1)
    return {
        "bookings_measured": bookings,
        "seats_in_horizon": seats_total,
        "bytes_per_booking": {"holds": round(holds), "idempotency": round(idem), "rq_reminders": round(rq_jobs)},
        "capacity_redis_full_horizon_bytes": round(capacity),
        "rq_redis_full_horizon_bytes": round(rq_jobs * seats_total),
    }
