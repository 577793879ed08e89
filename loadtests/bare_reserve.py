"""Reference (1): a bare Litestar endpoint that only runs the RESERVE Lua script.

    REDIS_URL=redis://127.0.0.1:PORT/0 .venv/bin/python -m uvicorn --factory \
        loadtests.bare_reserve:app_from_env --workers 2 --port 8001 --http app.serving:CorkedHttpProtocol

It is what a booking would cost if it were nothing but "take a seat in Redis": the same web
stack (uvicorn workers, Litestar, msgspec), the same JSON body, the same Lua script from
``app.capacity.scripts`` on a day hash of the same shape, and nothing else: no sign-in
token, no citizen limits, no SQL, no SMS. The full booking path is reported as a fraction of it.

The day hashes it books in are not the service's: they live under ``bench:`` (see
``bench_day_key``), hold 10^9 seats per slot so that every call succeeds, and are deleted
after the run, so the correctness check of the service never sees them.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Response, post
from litestar.datastructures import State
from litestar.params import HeaderParameter, JSONBody
from redis.asyncio import Redis
from redis.typing import EncodableT

from app.booking.tracking import new_tracking_code
from app.capacity.scripts import RESERVE, as_text

BENCH_PREFIX = "bench"
BENCH_SEATS = 10**9
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


def bench_day_key(office_code: str, day: str) -> str:
    # The same shape as app.capacity.keys.office_day, under another namespace.
    return f"{BENCH_PREFIX}:{{o:{office_code}}}:day:{day}"


def bench_idempotency_key(office_code: str, key: str) -> str:
    return f"{BENCH_PREFIX}:{{o:{office_code}}}:idem:{key}"


def bench_day_fields(slots: list[str], pool: str = "*") -> dict[EncodableT, EncodableT]:
    """A day hash like the service's (status, cap, seats per slot) with seats that never run out."""
    fields: dict[EncodableT, EncodableT] = {"_status": "active", "_cap": 100}
    for time in slots:
        fields[f"s|{pool}|{time}"] = BENCH_SEATS
    return fields


def day_slots(opens: int = 8 * 60, closes: int = 16 * 60, minutes: int = 30) -> list[str]:
    """The slot times of a default day (08:00 to 16:00, every 30 minutes)."""
    return [f"{m // 60:02d}:{m % 60:02d}" for m in range(opens, closes, minutes)]


class ReserveIn(msgspec.Struct, forbid_unknown_fields=True):
    office_code: str
    date: str
    slot: str | None = None
    pool: str = "*"


class ReserveOut(msgspec.Struct):
    slot: str
    tracking_code: str


@post("/reserve", status_code=201)
async def reserve(
    data: JSONBody[ReserveIn],
    state: State,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[Any]:
    dt.date.fromisoformat(data.date)  # the service parses the date too
    tracking_code = new_tracking_code()
    reply = await state.reserve(
        keys=[
            bench_day_key(data.office_code, data.date),
            bench_idempotency_key(data.office_code, idempotency_key or "-"),
            f"{BENCH_PREFIX}:{{o:{data.office_code}}}:wait:{data.date}:{data.pool}",
        ],
        args=[data.pool, data.slot or "", "", tracking_code, IDEMPOTENCY_TTL_SECONDS if idempotency_key else 0],
    )
    outcome, slot, code = as_text(reply[0]), reply[1], reply[2]  # (and on OK, the day's count id)
    if outcome != "OK":
        return Response({"code": outcome.lower()}, status_code=409)
    return Response(ReserveOut(slot=as_text(slot), tracking_code=as_text(code)), status_code=201)


def create_app(redis_url: str) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        app.state.reserve = redis.register_script(RESERVE)
        try:
            yield
        finally:
            await redis.aclose()

    return Litestar(route_handlers=[reserve], lifespan=[lifespan], openapi_config=None, debug=False)


def app_from_env() -> Litestar:
    """Entry point for uvicorn (``--factory loadtests.bare_reserve:app_from_env``)."""
    return create_app(os.environ["REDIS_URL"])
