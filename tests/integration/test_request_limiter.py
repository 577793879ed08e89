"""The per-address limit on every request (app.ratelimit.RequestLimiter) across instances,
against a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.errors import RateLimited
from app.ratelimit import RequestLimiter
from app.redis import EmbeddedRedis

# The limiter counts in fixed windows of wall-clock time: the tests use hour-long ones, so that
# a window ending between two hits (a count starting again) is one run in thousands, not one
# in fifty as with minutes.


async def test_one_instance_counts_exactly_and_says_when_to_come_back(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    limiter = RequestLimiter(redis)
    subject = uuid.uuid4().hex
    try:
        for _ in range(3):
            limiter.hit("api", subject, "3/3600")
        with pytest.raises(RateLimited) as refused:
            limiter.hit("api", subject, "3/3600")
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 3600
        limiter.hit("api", "someone-else-" + subject, "3/3600")  # each address its own count
    finally:
        await limiter.close()
        await redis.aclose()


async def test_instances_share_the_limit_once_they_have_added_up(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    first, second = RequestLimiter(redis, flush_every=0.05), RequestLimiter(redis, flush_every=0.05)
    subject = uuid.uuid4().hex
    try:
        for _ in range(3):
            first.hit("api", subject, "5/3600")
        await asyncio.sleep(0.5)  # first has added its 3
        second.hit("api", subject, "5/3600")  # learns the total at its flush
        await asyncio.sleep(0.5)
        second.hit("api", subject, "5/3600")
        with pytest.raises(RateLimited):
            second.hit("api", subject, "5/3600")
        # first hears of second's hits at its own next flush: until then it admits one more
        # (the lag the limiter documents), after it none.
        first.hit("api", subject, "5/3600")
        await asyncio.sleep(0.5)
        with pytest.raises(RateLimited):
            first.hit("api", subject, "5/3600")
    finally:
        await first.close()
        await second.close()
        await redis.aclose()


async def test_hits_made_while_a_flush_is_on_its_way_are_added_by_the_next(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    limiter = RequestLimiter(redis, flush_every=0.05)
    subject = uuid.uuid4().hex
    try:
        limiter.hit("pages", subject, "100/60")
        flushing = asyncio.create_task(limiter.flush())
        limiter.hit("pages", subject, "100/60")
        await flushing
        await asyncio.sleep(0.2)
        counted = [await redis.hget(key, subject) async for key in redis.scan_iter(match="*:rl:pages:*")]
        assert [n for n in counted if n is not None] == [b"2"]
    finally:
        await limiter.close()
        await redis.aclose()


async def test_counts_a_flush_could_not_add_are_added_by_the_next(tmp_path: Path) -> None:
    """Redis away for a moment: the hits stay counted here and reach Redis once it is back."""
    server = EmbeddedRedis(tmp_path / "away").start()
    redis = Redis.from_url(server.url)
    limiter = RequestLimiter(redis, flush_every=3600)  # flushed by hand below
    subject = uuid.uuid4().hex
    try:
        limiter.hit("api", subject, "10/60")
        limiter.hit("api", subject, "10/60")
        port = server.port
        server.stop()
        with pytest.raises(RedisError):
            await limiter.flush()
        limiter.hit("api", subject, "10/60")
        server = EmbeddedRedis(tmp_path / "back", port=port).start()
        await limiter.flush()
        counted = [await redis.hget(key, subject) async for key in redis.scan_iter(match="*:rl:api:*")]
        assert counted == [b"3"]
    finally:
        await limiter.close()
        await redis.aclose()
        server.stop()
