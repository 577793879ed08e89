"""uvicorn's HTTP protocol, with each response leaving in one write.

uvicorn writes a response's head as soon as the app sends ``http.response.start``, and its
body in a write of its own: two ``send()`` calls and two TCP segments for every answer,
which the client must read twice. On this project's 2 cores, with wrk on the same machine,
one write instead of two answered a liveness probe 40% faster and a nearby search 15-25%
faster (docs/performance.md, fourteenth session). aiohttp made the same
change in 2025 (aio-libs/aiohttp#10991); uvicorn declined a change of its own send order
(Kludex/uvicorn#1917), so it is done here, under uvicorn, by holding what the protocol
writes until the event loop's next turn: by then the app has sent its body, and the head and
body go out together.

Served with ``uvicorn --http app.serving:CorkedHttpProtocol`` (``python -m app run`` and the
load tests do so themselves).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport:
    """A transport that holds writes until the event loop's next turn, then makes them one.

    Everything but writing and closing goes to the real transport. Closing sends what is
    held first; aborting drops it, as an abort drops what the real transport holds.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, in one write (a no-op once the connection is closing)."""
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

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
