"""uvicorn's HTTP protocol, with each response leaving in one write.

uvicorn writes a response's head as soon as the app sends ``http.response.start``, and its
body in a write of its own: two ``send()`` calls and two TCP segments for every answer,
which the client must read twice. On this project's 2 cores, with wrk on the same machine,
one write instead of two served 28-54% more liveness probes a second, and 10-29% more reads
in the load test (docs/performance.md, fourteenth session). aiohttp made the same change in
2025 (aio-libs/aiohttp#10991); uvicorn declined a change of its own send order
(Kludex/uvicorn#1917), so it is done here, under uvicorn, by holding what the protocol writes
until the event loop's next turn: by then the app has sent its body, and the head and body
go out together.

Served with ``uvicorn --http app.serving:CorkedHttpProtocol`` (``python -m app run`` and the
load tests do so themselves).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

HOLD_AT_MOST = 64 * 1024
"""Bytes held before they go at once: a response's head waits for its body only up to this,
and a stream sent with no turn of the loop piles up no more than this before the real
transport, whose backpressure (``pause_writing``, which uvicorn waits on) sees it."""


class CorkedTransport:
    """A transport that holds writes until the event loop's next turn, then makes them one.

    Everything but writing and closing goes to the real transport. Closing sends what is
    held first; aborting drops it, as an abort drops what the real transport holds.
    """

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._size += len(data)
        if self._size >= HOLD_AT_MOST:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, in one write (a no-op once the connection is closing)."""
        held, self._held, self._size = self._held, [], 0
        if not held or self._transport.is_closing():
            return
        try:
            if len(held) == 1:
                self._transport.write(held[0])
            else:
                self._transport.writelines(held)  # uvloop: one writev, the body not copied
        except Exception:
            # Raised in a callback of the loop's, where nobody would see it, and after uvicorn
            # took the response as sent: the client would wait for it until keep-alive ends.
            log.exception("a response could not be written: its connection is dropped")
            self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    # Asked on every request: spelled out, so that they skip __getattr__.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CorkedTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        corked = CorkedTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, corked))
