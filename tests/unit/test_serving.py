"""Each response leaves in one write (app.serving), in order, and nothing held is lost on close.

Driven as uvicorn's own tests drive a protocol: bytes in through ``data_received``, what it
writes recorded by a transport that stands in for the socket."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.serving import HOLD_AT_MOST, CorkedHttpProtocol, CorkedTransport

GET = b"GET /%s HTTP/1.1\r\nHost: nobat\r\n\r\n"


class Socket:
    """What the protocol hands the kernel: each write, and when it closed."""

    def __init__(self, *, full_at: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.full_at = full_at  # bytes the kernel takes before the writer is told to wait
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))
        if self.full_at is not None and sum(map(len, self.writes)) >= self.full_at:
            self.full_at = None
            self.protocol.pause_writing()  # as a real transport does past its high-water mark

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))  # one writev

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers each path with its own name, in the two messages every ASGI response is."""
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def streamed(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"transfer-encoding", b"chunked")]})
    for part in (b"one", b"two"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(0.01)  # a stream's parts are apart in time
    await send({"type": "http.response.body", "body": b""})


async def _served(requests: bytes, asgi: Any = app, socket: Socket | None = None) -> Socket:
    config = Config(app=asgi, http=CorkedHttpProtocol, lifespan="off", access_log=False)
    config.load()
    protocol = CorkedHttpProtocol(config=config, server_state=ServerState(), app_state={})
    socket = socket or Socket()
    socket.protocol = protocol
    protocol.connection_made(socket)  # type: ignore[arg-type]
    protocol.data_received(requests)
    for _ in range(50):
        await asyncio.sleep(0.005)
    return socket


async def test_a_response_leaves_in_one_write() -> None:
    socket = await _served(GET % b"one")
    assert len(socket.writes) == 1  # uvicorn alone: the head, then the body
    head, body = socket.writes[0].split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"/one"


async def test_pipelined_requests_are_answered_in_order() -> None:
    socket = await _served(GET % b"one" + GET % b"two" + GET % b"three")
    answers = b"".join(socket.writes)
    assert [part.rsplit(b"\r\n\r\n", 1)[-1][:6] for part in answers.split(b"HTTP/1.1 ")[1:]] == [
        b"/one",
        b"/two",
        b"/three",
    ]
    assert len(socket.writes) == 3


async def test_what_is_held_is_written_before_the_connection_closes() -> None:
    socket = await _served(b"GET /last HTTP/1.1\r\nHost: nobat\r\nConnection: close\r\n\r\n")
    assert socket.closed
    assert len(socket.writes) == 1 and socket.writes[0].endswith(b"/last")


async def test_a_stream_goes_out_as_it_comes() -> None:
    socket = await _served(GET % b"stream", streamed)
    assert len(socket.writes) == 3  # the head with the first part, the second, the end
    assert socket.writes[0].startswith(b"HTTP/1.1 200 OK") and socket.writes[0].endswith(b"3\r\none\r\n")
    assert socket.writes[1:] == [b"3\r\ntwo\r\n", b"0\r\n\r\n"]


async def test_a_burst_is_held_only_so_far_and_meets_the_sockets_backpressure() -> None:
    """A stream's parts sent with no turn of the loop go out once 64 KiB are held, so that a
    full socket makes the app wait (uvicorn's drain) instead of piling the stream up here."""
    part, parts, sent = b"x" * 40_000, 20, []

    async def burst(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"800000")]})
        for number in range(parts):
            await send({"type": "http.response.body", "body": part, "more_body": number < parts - 1})
            sent.append(number)

    socket = await _served(GET % b"burst", burst, Socket(full_at=200_000))
    assert max(map(len, socket.writes)) < HOLD_AT_MOST + len(part)
    assert len(sent) < parts  # waiting for the socket to drain
    socket.protocol.resume_writing()
    for _ in range(10):
        await asyncio.sleep(0.005)
    assert len(sent) == parts
    assert b"".join(socket.writes).endswith(part * parts)


async def test_a_write_that_raises_drops_the_connection() -> None:
    """Raised where nobody would see it (the loop's next turn), after uvicorn took the
    answer as sent: the client is not left waiting for it until keep-alive ends."""
    socket = Socket()
    corked = CorkedTransport(socket, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"head")
    corked.write(b"body")
    socket.writelines = None  # type: ignore[assignment,method-assign]  # calling it raises TypeError
    await asyncio.sleep(0)
    assert socket.aborted and socket.writes == []


async def test_closing_abort_and_eof() -> None:
    loop = asyncio.get_running_loop()
    socket = Socket()
    corked = CorkedTransport(socket, loop)  # type: ignore[arg-type]
    corked.write(b"a")
    corked.writelines([b"b", b""])
    corked.write_eof()
    assert socket.writes == [b"ab", b"<eof>"]
    corked.write(b"c")
    corked.abort()  # an abort drops what is held, as the kernel's buffer would be
    await asyncio.sleep(0)
    assert socket.aborted and socket.writes == [b"ab", b"<eof>"]
    gone = CorkedTransport(Socket(), loop)  # type: ignore[arg-type]
    gone.write(b"late")
    gone._transport.close()  # the peer went away before the loop's next turn
    await asyncio.sleep(0)
    assert gone._transport.writes == []  # type: ignore[attr-defined]
    assert corked.get_extra_info("peername") == ("127.0.0.1", 50000)  # the rest goes through
