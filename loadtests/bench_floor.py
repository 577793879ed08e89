"""The floor under every request: CPU per request through the ASGI entry, with no server
and no sockets, of nobat's whole stack on a route that does no work, against the same
route on a bare Litestar app.

    .venv/bin/python -m loadtests.bench_floor [--requests 20000]

nobat starts on its embedded defaults (a throwaway var directory: its own SQLite file and
redis-server). What the two print apart is what nobat's middleware, request limit hook and
plugins cost a request; what the bare figure leaves of a worker's CPU per request under wrk
is the server's (uvicorn, asyncio's transport, the kernel).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

import uvloop
from litestar import Litestar, get

WARM_UP = 500


@get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def cpu_per_request(app: Any, path: str, requests: int) -> float:
    """Microseconds of this process's CPU per GET of ``path``, between the app's startup and
    shutdown (its lifespan), after ``WARM_UP`` requests."""
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def lifespan_send(message: dict[str, Any]) -> None:
        await replies.put(message)

    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, lifespan_send)
    )
    await startup.put({"type": "lifespan.startup"})
    if (started := await replies.get())["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    async def call() -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"nobat"), (b"x-forwarded-for", b"10.1.2.3")],
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        await app(scope, receive, send)

    for _ in range(WARM_UP):
        await call()
    cpu = time.process_time()
    for _ in range(requests):
        await call()
    cpu = time.process_time() - cpu
    await startup.put({"type": "lifespan.shutdown"})
    await replies.get()
    await lifespan
    if set(statuses) != {200}:
        raise RuntimeError(f"answers other than 200: {statuses}")
    return cpu / requests * 1e6


async def main(requests: int, rounds: int) -> None:
    # The two take turns, and the least of each is kept: the machine's speed moves by a
    # third within minutes, and a turn that met a slow moment says nothing of the code.
    bare, nobat = [], []
    with tempfile.TemporaryDirectory() as var_dir:
        os.environ["NOBAT_VAR_DIR"] = var_dir
        from app.main import create_app

        for _ in range(rounds):
            bare.append(
                await cpu_per_request(Litestar([live], logging_config=None, debug=False), "/health/live", requests)
            )
            nobat.append(await cpu_per_request(create_app(), "/health/live", requests))
    print(
        f"CPU per request of GET /health/live, least of {rounds} turns: "
        f"bare Litestar {min(bare):.0f} us, nobat {min(nobat):.0f} us"
    )
    print(f"  every turn: bare {', '.join(f'{x:.0f}' for x in bare)}; nobat {', '.join(f'{x:.0f}' for x in nobat)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    uvloop.run(main(arguments.requests, arguments.rounds))
