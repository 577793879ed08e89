"""The capacity paths on a real 3-master Redis Cluster: the same Lua scripts, unchanged,
because every key of one office shares a hash slot. RQ keeps its plain Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.asyncio import RedisCluster as AsyncCluster
from redis.cluster import RedisCluster as SyncCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.capacity import keys
from app.capacity.scripts import Scripts
from app.container import Container
from app.offices.directory import OfficeDirectory
from app.redis import AutoPipeline, connect
from app.settings import Settings
from tests.conftest import Served, World, booking_body, health_until, started_app
from tests.servers import RedisCluster

Client = AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    server = RedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield server
    server.stop()


@pytest.fixture
def cluster_sync(cluster: RedisCluster) -> Iterator[SyncCluster]:
    client = SyncCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    client.flushall(target_nodes=SyncCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def settings(settings: Settings, cluster: RedisCluster, cluster_sync: SyncCluster) -> Settings:
    return settings.with_(redis_url=cluster.url, rq_redis_url=settings.redis_url)


def used(redis: SyncCluster, office: str, day: Any, time: str) -> int:
    return int(redis.hget(keys.office_day(office, day), keys.used_field("*", time)) or 0)


async def test_race_of_500_for_10_seats_on_the_cluster(served: Served, world: World, cluster_sync: SyncCluster) -> None:
    offices = [await world.office(seats=10) for _ in range(3)]
    day = world.tomorrow()
    # The offices' keys land on different masters, so every node runs the scripts.
    slots = {SyncCluster.keyslot(cluster_sync, keys.office_day(o, day)) for o in offices}
    assert len(slots) == 3

    async def attempt(office: str) -> Any:
        return await served.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )

    responses = await asyncio.gather(*(attempt(offices[i % 3]) for i in range(500)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 30 and statuses.count(409) == 470
    for office in offices:
        assert used(cluster_sync, office, day, "10:00") == 10


async def test_nearby_and_rebuild_on_the_cluster(client: Client, world: World, cluster_sync: SyncCluster) -> None:
    offices = [await world.office(seats=2, lat=35.70, lon=51.40 + km / 90.4) for km in (1, 3, 6)]
    await world.rebuild()
    day = world.tomorrow()
    for _ in range(2):
        await client.post(
            "/api/v1/bookings", json=booking_body(offices[0], world.national_id(), day), headers=world.token()
        )
    ranked = await client.get(
        "/api/v1/offices/nearby", params={"service": "101", "lat": 35.70, "lon": 51.40, "date": day.isoformat()}
    )
    assert ranked.status_code == 200, ranked.text
    assert [o["code"] for o in ranked.json()["offices"]] == offices

    def snapshot() -> dict[str, Any]:
        return {  # less the id of the count that wrote them, a new one each rebuild
            key.decode(): {f: v for f, v in cluster_sync.hgetall(key).items() if f != b"_count"}
            for key in cluster_sync.scan_iter(match=keys.OFFICE_DAY_PATTERN, target_nodes=SyncCluster.PRIMARIES)
        }

    before = snapshot()
    assert used(cluster_sync, offices[0], day, "10:00") == 2
    cluster_sync.flushall(target_nodes=SyncCluster.PRIMARIES)
    async with world.container.sessions() as session:
        await world.container.capacity.rebuild(session=session, today=world.container.clock.today())
    assert snapshot() == before


async def test_a_changed_office_is_told_to_the_other_instances_on_the_cluster(
    container: Container, world: World
) -> None:
    """The directory's version, epoch and change log share a slot: one script writes them and
    one MGET reads them on a cluster too."""
    assert isinstance(container.redis, AsyncCluster)
    office = await world.office()
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    await container.offices.changed(office)
    current = await other._current_version()
    assert current[0] is not None and current[1] == other._version[1] + 1
    assert await other._changed_since(other._version, current) == {office}


# Keeps one Redis busy for ARGV[1] microseconds, as a slow script or a stalled node would.
BUSY = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""


@pytest.mark.parametrize("kind", ["cluster", "single"])
async def test_a_release_whose_answer_times_out_is_never_sent_again(kind: str, request: pytest.FixtureRequest) -> None:
    """A release that Redis ran but answered late must not run twice: the second run would
    free a seat somebody holds. redis-py 8's cluster client retried timeouts by default."""
    if kind == "cluster":
        url = request.getfixturevalue("cluster").url
        request.getfixturevalue("cluster_sync")  # emptied
    else:
        url = request.getfixturevalue("redis_url")
    office, day = "099001", dt.date(2026, 12, 4)
    day_key = keys.office_day(office, day)
    redis = connect(url, timeout=0.2)
    scripts = Scripts(redis, AutoPipeline(redis))
    release = (
        [day_key, keys.idempotency(office, "-", "-"), keys.waitlist(office, day, "*")],
        ["*", "10:00", ""],
    )
    await redis.hset(day_key, mapping={keys.seats_field("*", "10:00"): 5, keys.used_field("*", "10:00"): 4})
    host, port = _node_of(redis, day_key)
    stall = SyncRedis(host=host, port=port)
    try:
        await scripts.release(keys=release[0], args=["*", "", ""])  # loaded: no SCRIPT LOAD below
        stall.ping()  # connected: the script below starts at once
        busy = asyncio.create_task(asyncio.to_thread(stall.eval, BUSY, 0, 2_000_000))
        await asyncio.sleep(0.3)  # the script running, for 1.7 s more
        with pytest.raises(RedisTimeoutError):  # a 503 for the clerk or citizen
            await scripts.release(*release)
        await busy
        await asyncio.sleep(0.3)  # time for a retry to have landed
        assert int(stall.hget(day_key, keys.used_field("*", "10:00"))) == 3  # ran once, late
    finally:
        stall.close()
        await redis.aclose()


def _node_of(redis: Any, key: str) -> tuple[str, int]:
    if isinstance(redis, AsyncCluster):
        node = redis.get_node_from_key(key)
        return node.host, node.port
    kwargs = redis.connection_pool.connection_kwargs
    return kwargs["host"], kwargs["port"]


async def test_sign_in_by_text_and_sign_out_everywhere_on_the_cluster(
    client: Client, world: World, cluster_sync: SyncCluster
) -> None:
    """A number's web codes and texted code share a slot, so that one node's clock tells
    when each was taken and when the number signed out everywhere."""
    from app.auth.service import _otp_key, _texted_key

    mobiles = [f"0912000{n:04d}" for n in range(8)]
    for mobile in mobiles:
        assert cluster_sync.keyslot(_otp_key(mobile)) == cluster_sync.keyslot(_texted_key(mobile))
    assert len({cluster_sync.keyslot(_otp_key(mobile)) for mobile in mobiles}) > 1
    auth = world.container.auth
    for mobile in mobiles:
        async with world.container.sessions() as session:
            await auth.request_code_by_sms(session=session, mobile=mobile)
            await session.commit()
    tokens = {mobile: {"Authorization": f"Bearer {auth.issue_token(mobile)}"} for mobile in mobiles}
    probe = "/api/v1/bookings/ABCDEFGHJK/cancel"  # a citizen's 404, no one's 401
    answer = await client.post("/api/v1/auth/logout/everywhere", headers=tokens[mobiles[0]])
    assert answer.status_code == 204, answer.text
    assert cluster_sync.exists(_texted_key(mobiles[0])) == 0 and cluster_sync.exists(_texted_key(mobiles[1])) == 1
    assert (await client.post(probe, headers=tokens[mobiles[0]])).status_code == 401
    assert (await client.post(probe, headers=tokens[mobiles[1]])).status_code == 404


async def test_a_cluster_no_node_answers_fails_as_a_redis_error(tmp_path: Path) -> None:
    """redis-py raises its cluster's own failures (no node reachable, a slot no node serves)
    as an error that is not a RedisError: every path that answers Redis going away (a 503, a
    seat given back, the watch pausing bookings) let it through as a 500."""
    from redis.exceptions import RedisError

    down = RedisCluster(tmp_path).start()
    down.stop()
    client = connect(down.url)
    with pytest.raises(RedisError):
        await client.get("anything")
    with pytest.raises(RedisError):
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("anything")
            await pipe.execute()
    await client.aclose()


async def test_a_cluster_of_one_master_is_counted_and_books(settings: Settings, world: World, tmp_path: Path) -> None:
    """A hosted "cluster mode" of one shard: redis-py answers a command sent to every master
    with the one reply alone, not by node, and reading the servers' run ids had failed, so
    the counters were never counted and every booking was 503 for good."""
    one = RedisCluster(tmp_path / "one", masters=1).start()
    try:
        office = await world.office(seats=1)
        with started_app(settings.with_(redis_url=one.url)) as app:
            async with AsyncTestClient(app) as client:
                await health_until(client, 200)
                day = world.tomorrow()
                booked = await client.post(
                    "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
                )
                assert booked.status_code == 201, booked.text
        with SyncCluster(host="127.0.0.1", port=one.nodes[0].port) as redis:
            assert used(redis, office, day, "10:00") == 1
    finally:
        one.stop()


async def test_a_seat_taken_while_the_citizens_hold_met_a_node_away_is_given_back(
    client: Client, world: World, cluster_sync: SyncCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A booking's hold and seat live on different nodes. The hold's node timed out and the
    booking failed (503), while the seat's node had taken the seat: dropped with the first
    error, it was held for nobody until the night's recount."""
    office = await world.office(seats=1)
    day = world.tomorrow()
    await world.rebuild()
    capacity = client.app.state.container.capacity
    alone, hold = capacity.auto._alone, capacity.scripts.hold.sha

    async def hold_node_away(command: tuple[Any, ...]) -> Any:
        if command[:2] == ("EVALSHA", hold):
            raise RedisTimeoutError("Timeout reading from the hold's node")
        return await alone(command)

    monkeypatch.setattr(capacity.auto, "_alone", hold_node_away)
    failed = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert failed.status_code == 503, failed.text
    assert used(cluster_sync, office, day, "10:00") == 0
    monkeypatch.setattr(capacity.auto, "_alone", alone)
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text


async def test_every_script_is_loaded_on_every_node_before_concurrent_calls(
    world: World, cluster: RedisCluster, cluster_sync: SyncCluster
) -> None:
    """On a cluster ``run_many`` sends its calls at once after ``load``: a script left out of
    it (the recount's newest, WRITE_LINE) fell back inside redis-py, dozens at once, and the
    first recount after a deploy or a failover could fail with bookings paused."""
    from redis.commands.core import AsyncScript

    scripts = world.container.capacity.scripts
    registered = [script for script in vars(scripts).values() if isinstance(script, AsyncScript)]
    assert scripts.write_line in registered
    for node in cluster.nodes:  # as a promoted replica, or a restarted node, has them: none
        with SyncRedis(host="127.0.0.1", port=node.port) as redis:
            redis.script_flush()
    await scripts.load()
    for node in cluster.nodes:
        with SyncRedis(host="127.0.0.1", port=node.port) as redis:
            if redis.info("replication")["role"] == "master":
                assert all(redis.script_exists(*(script.sha for script in registered))), node.port


async def test_each_master_that_refuses_writes_pauses_bookings(world: World, cluster: RedisCluster) -> None:
    """The watch's write went to the one master its key's slot is on: another full under
    noeviction refused every booking of the offices it holds, and readiness stayed green."""
    from app.capacity.watch import RedisWatch

    container = world.container
    looks = RedisWatch(capacity=container.capacity, sessions=container.sessions, clock=container.clock, settle=0)
    looks._policy_checked = True  # the policy's look is a test of its own
    await looks.check()
    assert container.capacity.ready
    for node in cluster.nodes:
        with SyncRedis(host="127.0.0.1", port=node.port) as redis:
            redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) // 2)
            try:
                await looks.check()
                assert not container.capacity.ready, node.port
            finally:
                redis.config_set("maxmemory", 0)
        await looks.check()
        assert container.capacity.ready, node.port
    # Keys that no longer reach every master (slots moved between the same masters, a
    # resharding): found so at the next look, and found again.
    cluster_client = container.capacity.redis
    one = cluster_client.get_node_from_key(container.capacity._probes[0]).name
    container.capacity._probes = [container.capacity._probes[0]] * 3
    other = next(node for node in cluster.nodes if not one.endswith(f":{node.port}"))
    with SyncRedis(host="127.0.0.1", port=other.port) as redis:
        redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) // 2)
        try:
            await looks.check()
            assert not container.capacity.ready
        finally:
            redis.config_set("maxmemory", 0)


async def test_the_load_tests_check_reads_every_master_of_a_cluster(
    served: Served, world: World, settings: Settings, cluster_sync: SyncCluster
) -> None:
    """`python -m loadtests.check` against production's Redis: it refused the cluster's URL,
    and a single node's SCAN would have seen one master's office-days."""
    from loadtests.check import check_service

    offices = [await world.office(seats=10) for _ in range(3)]
    day = world.tomorrow()
    assert len({SyncCluster.keyslot(cluster_sync, keys.office_day(o, day)) for o in offices}) == 3
    for office in offices:
        made = await served.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )
        assert made.status_code == 201, made.text
    result = await asyncio.to_thread(check_service, settings)
    assert result.ok and result.seats_booked_sql == 3 and result.seats_used_redis == 3, result.as_dict()
    # And a seat counted there for nobody, on the third master, is seen.
    cluster_sync.hincrby(keys.office_day(offices[2], day), keys.used_field("*", "10:00"), 1)
    assert not (await asyncio.to_thread(check_service, settings)).ok
