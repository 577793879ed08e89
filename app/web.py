"""Shared HTTP plumbing: the error-to-response mapping, the request's client and citizen."""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from app.container import Container
from app.errors import (
    PROBLEM_TYPE_BASE,
    DomainError,
    InvalidInput,
    NotJson,
    ServiceUnavailable,
    Unauthorized,
    problem_body,
)

log = logging.getLogger(__name__)


def _from_domain(error: DomainError) -> ProblemDetailsException:
    body = problem_body(error)
    return ProblemDetailsException(
        status_code=error.status,
        detail=body.pop("detail"),
        title=body.pop("title"),
        type_=body.pop("type"),
        headers=error.headers or None,
        extra={k: v for k, v in body.items() if k != "status"},
    )


def _from_http(error: HTTPException) -> ProblemDetailsException:
    if isinstance(error, ValidationException) or error.status_code == 400:
        code, fa = "malformed_request", "درخواست ناقص یا نادرست است."
    elif isinstance(error, NotFoundException):
        code, fa = "not_found", "پیدا نشد."
    elif error.status_code == 405:
        code, fa = "method_not_allowed", "این روش برای این نشانی پذیرفته نیست."
    elif error.status_code == 413:
        code, fa = "too_large", "درخواست بیش از اندازه بزرگ است."
    else:
        code, fa = f"http_{error.status_code}", "درخواست پذیرفته نشد."
    extra: dict[str, Any] = {"code": code, "message_fa": fa, "message_en": error.detail}
    if error.extra:
        extra["errors"] = error.extra
    return ProblemDetailsException(
        status_code=error.status_code,
        detail=error.detail,
        title=error.detail,
        type_=PROBLEM_TYPE_BASE + code,
        headers=error.headers,
        extra=extra,
    )


def _unavailable(error: Exception) -> ProblemDetailsException:
    # Which dependency, by the error's module: "TimeoutError" alone was Redis's, the pool's
    # (every connection taken) or PostgreSQL's connect, and the engineer could not tell.
    kind = type(error)
    log.warning("dependency unavailable: %s.%s: %s", kind.__module__, kind.__name__, str(error)[:200])
    return _from_domain(ServiceUnavailable())


# SQLSTATEs that mean "the database is away", not "the query is wrong": connection
# exceptions, shutdowns, too many connections, a database closed to connections.
_AWAY = ("08", "57P01", "57P02", "57P03", "53300", "55000")
# A transaction PostgreSQL aborted for losing a race with another (a deadlock, a
# serialization failure): nothing of it committed, and the same request again succeeds.
# A 500 had had a clerk or regulator report a bug for a change that only needed a retry.
_RACE_LOST = ("40P01", "40001")


def _database(error: DBAPIError) -> ProblemDetailsException:
    # A lost connection is the database being away (503, try again); a value the database
    # cannot hold (SQLSTATE class 22, or the driver's overflow) is the input's fault (422);
    # anything else is ours.
    cause = error.orig
    sqlstate = str(getattr(cause, "sqlstate", "") or getattr(getattr(cause, "__cause__", None), "sqlstate", "") or "")
    if (
        error.connection_invalidated
        or isinstance(error, (OperationalError, InterfaceError))
        or sqlstate.startswith(_AWAY + _RACE_LOST)
    ):
        return _unavailable(error)
    if sqlstate.startswith("22") or _caused_by_overflow(error.orig):
        return _unstorable(error)
    return _internal(error)


def _caused_by_overflow(error: BaseException | None) -> bool:
    seen = error
    for _ in range(5):  # asyncpg's OverflowError sits two causes under SQLAlchemy's adapted error
        if seen is None:
            return False
        if isinstance(seen, OverflowError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unstorable(error: Exception) -> ProblemDetailsException:
    """The safety net under the edge's bounds: a number or text the database cannot hold
    (SQLite's OverflowError, PostgreSQL's data exceptions) is a bad input, not a 500."""
    log.warning("value the database cannot hold reached it: %s", type(error).__name__)
    return ProblemDetailsException(
        status_code=422,
        detail=InvalidInput.message_en,
        title=InvalidInput.message_en,
        type_=PROBLEM_TYPE_BASE + InvalidInput.code,
        extra={"code": InvalidInput.code, "message_fa": InvalidInput.message_fa, "message_en": InvalidInput.message_en},
    )


def session_cookie(
    container: Container,
    key: str,
    value: str,
    *,
    max_age: int | None,
    samesite: Literal["lax", "strict"],
    path: str = "/",
) -> Cookie:
    """An HttpOnly cookie of ours (``max_age`` None: until the browser closes)."""
    return Cookie(
        key=key,
        value=value,
        path=path,
        max_age=max_age,
        httponly=True,
        samesite=samesite,
        # Secure whenever we are served over HTTPS; the plain-HTTP demo would never get it back.
        # The scheme as the settings' check reads it: "HTTPS://" passed it, and sent no cookie Secure.
        secure=urlsplit(container.settings.public_url).scheme == "https",
    )


INTERNAL_ERROR_FA = "خطایی در سامانه رخ داد و ثبت شد. لطفاً دوباره تلاش کنید."
"""What a citizen reads of an unexpected failure, from the API and the pages alike."""


def _internal(error: Exception) -> ProblemDetailsException:
    log.exception("unhandled error", exc_info=error)
    return ProblemDetailsException(
        status_code=500,
        detail="Something went wrong on our side; it has been logged.",
        title="Internal error",
        type_=PROBLEM_TYPE_BASE + "internal_error",
        extra={
            "code": "internal_error",
            "message_fa": INTERNAL_ERROR_FA,
            "message_en": "Something went wrong on our side; it has been logged.",
        },
    )


def _driver_unavailable() -> dict[type[Exception], Any]:
    """asyncpg raises some refusals at connect time unwrapped: the database is away (503)."""
    try:
        from asyncpg import exceptions as pg
    except ImportError:
        return {}
    kinds = (
        pg.PostgresConnectionError,
        pg.CannotConnectNowError,
        pg.TooManyConnectionsError,
        pg.ObjectNotInPrerequisiteStateError,  # "database is not currently accepting connections"
        pg.InterfaceError,
    )
    return dict.fromkeys(kinds, _unavailable)


PROBLEMS: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
    **_driver_unavailable(),
    DomainError: _from_domain,
    HTTPException: _from_http,
    RedisError: _unavailable,
    DBAPIError: _database,
    OverflowError: _unstorable,
    OperationalError: _unavailable,
    InterfaceError: _unavailable,
    # Every connection of the pool in use for its whole wait (a rush): busy, not broken.
    PoolTimeout: _unavailable,
    Exception: _internal,
    ConnectionError: _unavailable,
    # asyncpg raises these unwrapped as it connects: the server took no packets in time (a
    # dead host, a failover), or its name did not resolve (DNS during a failover).
    TimeoutError: _unavailable,
    socket.gaierror: _unavailable,
}
"""Each kind of failure and its answer, looked up by the failure's nearest class."""


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(enable_for_all_http_exceptions=True, exception_to_problem_detail_map=PROBLEMS)
    )


def problem_for(error: Exception) -> ProblemDetailsException:
    """The API's answer to a failure, for a page to say the same (app.pages.routes)."""
    for kind in type(error).__mro__:
        if (answer := PROBLEMS.get(kind)) is not None:
            return answer(error)
    return _internal(error)


def count_request(request: Request[Any, Any, Any], kind: Literal["api", "pages"]) -> None:
    """Count one request against its client address's limit (NOBAT_API_PER_ADDRESS or
    NOBAT_PAGES_PER_ADDRESS, across all instances: app.ratelimit); 429 past it."""
    container = request.app.state.container
    settings = container.settings
    address = client_address(request, trust_forwarded_for=settings.trust_forwarded_for)
    container.requests.hit(kind, address, settings.api_per_address if kind == "api" else settings.pages_per_address)


def client_address(request: Request[Any, Any, Any], *, trust_forwarded_for: bool | None) -> str:
    """The citizen's address as the per-address limits count it (``limit_key``). Behind our
    balancer (``trust_forwarded_for``) it is the last X-Forwarded-For entry, the one the
    balancer appended: whatever came before it the client wrote itself, and taking the first
    let anyone name a new address on each request and pass every limit. Of several
    X-Forwarded-For lines, the last: a balancer may add a line of its own (HAProxy's ``option
    forwardfor``) after the client's. Read from the raw headers: on every request, building
    Litestar's headers object for it had been a fiftieth of a slots read."""
    if trust_forwarded_for:
        forwarded = b""
        for name, value in request.scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded = value
        if forwarded:
            return limit_key(forwarded.decode("latin-1").rsplit(",", 1)[-1].strip() or "unknown")
    return limit_key(request.client.host) if request.client else "unknown"


def limit_key(address: str) -> str:
    """The one key of every address a client can take at will: an IPv6 one's /64 network (a
    phone, a home, is given a whole /64, and a new address in it on each request had passed
    every per-address limit), an IPv4 one without the port a balancer may append, an
    IPv4-mapped IPv6 one as the IPv4 it is. An IPv4 address alone, the most common, is
    itself, untouched (this runs on every request)."""
    colons = address.count(":")
    if colons == 0:
        return address
    if colons == 1:  # 203.0.113.7:51234
        return address.partition(":")[0]
    if len(address) > 64:  # no address is this long: one key for all such junk, and none cached
        return "unknown"
    return _key_of(address)


@functools.lru_cache(maxsize=4096)
def _key_of(address: str) -> str:
    text = address
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].partition("]")[0]
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])  # without a link-local zone
    except ValueError:
        return address  # not an address (a balancer's "unknown"): counted as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def bearer_token(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


# Explicit markers for what handlers receive (Litestar 3 drops inferred dependencies).
Session = NamedDependency[AsyncSession]
Deps = NamedDependency[Container]


def json_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Refuse a body not sent as JSON, on the routes no credential guards (sign-in): a page on
    any website may have its visitors' browsers POST one without asking us first (no CORS
    preflight), as text/plain, a form, or bytes with no Content-Type at all, all read as JSON.
    It could then send sign-in codes to any number, or spread password guesses, from thousands
    of addresses the per-address limits count apart. A guard, not a before_request hook: a
    route's hook replaces the app's (the per-address limit)."""
    kind = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise NotJson()
