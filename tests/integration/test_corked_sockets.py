"""The corked protocol (app.serving) under a real uvicorn server and real sockets, on asyncio's
loop and on uvloop (what uvicorn picks in production): large bodies that fill the kernel's
buffers, and pipelined requests, arrive whole and in order."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
import uvloop

from app.redis import free_port
from app.serving import CorkedHttpProtocol

BIG = bytes(range(256)) * (32 * 1024)  # 8 MB: far past what a socket's buffers hold


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = BIG if scope["path"] == "/big" else scope["path"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


async def _served_over_sockets() -> None:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=CorkedHttpProtocol, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("uvicorn did not start in 5 s")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(b"GET /%s HTTP/1.1\r\nHost: nobat\r\n\r\n" % path for path in (b"one", b"big", b"two")))
        await asyncio.sleep(0.2)  # the big answer waits in the kernel while nothing reads it
        assert await _answer(reader) == b"/one"
        assert hashlib.sha256(await _answer(reader)).digest() == hashlib.sha256(BIG).digest()
        assert await _answer(reader) == b"/two"
        writer.write(b"GET /last HTTP/1.1\r\nHost: nobat\r\nConnection: close\r\n\r\n")
        assert await _answer(reader) == b"/last"
        assert await reader.read() == b""  # closed after the answer, not before it
        writer.close()
    finally:
        server.should_exit = True
        await serving


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_big_and_pipelined_answers_arrive_whole_and_in_order(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(_served_over_sockets())
