"""Commands of concurrent requests sharing trips to a real Redis (app.redis.AutoPipeline), and
the booking's scripts on one trip (AutoPipeline.run_scripts)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis import AutoPipeline, EmbeddedRedis, PackedInC, connect


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


async def test_concurrent_commands_share_trips_and_each_gets_its_own_reply(redis: Redis) -> None:
    auto = AutoPipeline(redis)
    key = f"t:{uuid.uuid4().hex}"
    trips = 0
    trip = auto._trip

    async def counting_trip(commands: list[tuple[object, ...]]) -> list[object]:
        nonlocal trips
        trips += 1
        return await trip(commands)

    auto._trip = counting_trip  # type: ignore[method-assign]
    replies = await asyncio.gather(*(auto.execute_many([("INCR", key), ("GET", key)]) for _ in range(50)))
    # INCR and the GET right after it are on the same trip, in order: each pair reads its own
    # increment or a later one, and all 50 increments happened.
    assert sorted(incr for incr, _ in replies) == list(range(1, 51))
    assert all(int(got) >= incr for incr, got in replies)
    assert int(await redis.get(key)) == 50
    # All 50 were queued before the sending task first ran: one trip.
    assert trips == 1

    # One on its way: the ten that come meanwhile go together on the next trip.
    first = asyncio.create_task(auto.execute_many([("INCR", key)]))
    await asyncio.sleep(0)
    await asyncio.gather(first, *(auto.execute_many([("INCR", key)]) for _ in range(10)))
    assert trips == 3 and int(await redis.get(key)) == 61


async def test_a_failed_command_fails_only_its_caller(redis: Redis) -> None:
    auto = AutoPipeline(redis)
    key = f"t:{uuid.uuid4().hex}"
    await redis.set(key, "not a number")
    wrong, kept, right = await asyncio.gather(
        auto.execute_many([("INCR", key)]),
        auto.execute_many([("INCR", key), ("GET", key)], raise_errors=False),
        auto.execute_many([("SET", key + ":ok", "1"), ("GET", key + ":ok")]),
        return_exceptions=True,
    )
    assert isinstance(wrong, ResponseError)
    assert isinstance(kept[0], ResponseError) and kept[1] == "not a number"  # type: ignore[index]
    assert right == ["OK", "1"]  # replies as Redis sends them, without redis-py's callbacks


async def test_a_lost_connection_fails_every_command_of_the_trip_and_the_next_reconnects(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "gone").start()
    client = connect(server.url)
    auto = AutoPipeline(client)
    try:
        assert await auto.execute_many([("PING",)]) == ["PONG"]
        server.stop()
        replies = await asyncio.gather(
            *(auto.execute_many([("PING",), ("PING",)]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(reply, ConnectionError) for reply in replies)
        server = EmbeddedRedis(tmp_path / "back", port=server.port).start()
        assert await auto.execute_many([("SET", "k", "v"), ("GET", "k")]) == ["OK", "v"]
    finally:
        await client.aclose()
        server.stop()


async def test_a_script_redis_forgot_runs_alone_and_the_other_is_not_repeated(redis: Redis) -> None:
    auto = AutoPipeline(redis)
    counter = f"t:{{x}}:{uuid.uuid4().hex}"
    incr = redis.register_script("return redis.call('INCR', KEYS[1])")
    echo = redis.register_script("return ARGV[1]")
    await redis.script_load(incr.script)
    await redis.script_flush()
    await redis.script_load(echo.script)  # echo is known, incr is not
    first, second = await auto.run_scripts([(echo, [counter], ["hi"]), (incr, [counter], [])])
    assert first == "hi" and second == 1
    first, second = await auto.run_scripts([(incr, [counter], []), (echo, [counter], ["again"])])
    assert first == 2 and second == "again"

    # One call alone (an allowance taken by a booking) the same way.
    await redis.script_flush()
    assert await auto.run_script(incr, [counter], []) == 3
    assert await auto.run_script(incr, [counter], []) == 4


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A peer that takes the connection and never answers: a Redis stalled or cut off."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_a_trip_that_times_out_is_a_redis_timeout_and_the_next_trip_reconnects(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "paused").start()
    client = Redis.from_url(server.url, socket_timeout=0.3, connection_class=PackedInC, decode_responses=True)
    other = Redis.from_url(server.url)
    auto = AutoPipeline(client)
    try:
        assert await auto.execute_many([("PING",)]) == ["PONG"]
        await other.execute_command("CLIENT", "PAUSE", "800", "ALL")  # Redis stalls for 0.8 s
        with pytest.raises(RedisTimeoutError):  # a 503 (app.web), not a 500
            await auto.execute_many([("SET", "k", "v")])
        assert auto._connection is not None and not auto._connection.is_connected  # nothing left unread on it
        await asyncio.sleep(0.8)
        assert await auto.execute_many([("GET", "k"), ("PING",)]) in (["v", "PONG"], [None, "PONG"])
    finally:
        await client.aclose()
        await other.aclose()
        server.stop()


async def test_a_stopped_sender_answers_every_caller(silent_server: int) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{silent_server}/0", socket_timeout=30, protocol=2)
    auto = AutoPipeline(client)
    try:
        callers = [asyncio.create_task(auto.execute_many([("PING",)])) for _ in range(3)]
        await asyncio.sleep(0.1)  # the first is on its way, the others wait for the next trip
        assert auto._sending is not None
        auto._sending.cancel()
        replies = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=5)
        assert all(isinstance(reply, ConnectionError) for reply in replies)
    finally:
        await client.aclose()
