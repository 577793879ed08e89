"""Real servers for the tests, started from the packages the test command installs:
a throwaway PostgreSQL cluster and a 3-master Redis Cluster, both on loopback."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from app.redis import EmbeddedRedis, free_port, redis_server_binary


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError("no PostgreSQL server: the test command installs the `postgresql` package")
    return found[-1]


class Postgres:
    """A PostgreSQL cluster in a temporary directory, as the `postgres` user when we are root."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its parents are private to root, and the server runs
        # as `postgres`, which must reach its own directory.
        self.directory = Path(tempfile.mkdtemp(prefix="nobat-pg-"))
        self.directory.chmod(0o755)
        self.port = free_port()
        self.data = self.directory / "data"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://nobat:nobat@127.0.0.1:{self.port}/postgres"

    def start(self) -> Postgres:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        password_file = self.directory / "pw"
        password_file.write_text("nobat\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", "nobat", "--pwfile", str(password_file),
            "-A", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8",
        )  # fmt: skip
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} "
            # Throwaway data: durability buys nothing here and costs seconds per test run.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too. Both below
    Linux's ephemeral ports (32768 and up), which any client's connection may take meanwhile."""
    for _ in range(200):
        port = random.randint(10000, 22000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisCluster:
    """Three masters (or as many as asked) with no replicas, each a redis-server child on a
    loopback port."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(
                directory / f"node{i}",
                port=_cluster_port(),
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf"],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        cli = str(Path(redis_server_binary()).with_name("redis-cli"))
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        if len(self.nodes) == 1:  # redis-cli creates clusters of three masters or more
            slots = [str(slot) for slot in range(16384)]
            command = [cli, "-p", str(self.nodes[0].port), "cluster", "addslots", *slots]
        else:
            command = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(command, check=True, capture_output=True)
        # Every node, not the first only: the others learn the slots by gossip a moment
        # later, and answered CLUSTERDOWN meanwhile (a test's first bookings refused 503, on
        # a machine busy with the rest of the suite).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self._info(cli, node) for node in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ready")

    @staticmethod
    def _info(cli: str, node: EmbeddedRedis) -> str:
        command = [cli, "-p", str(node.port), "cluster", "info"]
        return subprocess.run(command, check=False, capture_output=True, text=True).stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
