from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody

from app.booking.schemas import BookingCreate, BookingOut, WaitlistJoin
from app.web import Deps, Session, bearer_token


class BookingsController(Controller):
    path = "/api/v1/bookings"
    tags = ["bookings"]

    @post("/", summary="Book a slot (the earliest free one when no slot is given)")
    async def create(
        self,
        data: JSONBody[BookingCreate],
        request: Request[Any, Any, Any],
        container: Deps,
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
    ) -> Response[BookingOut]:
        mobile = container.auth.mobile_from_token(bearer_token(request))
        booked = await container.bookings.book(
            sessions=container.sessions, mobile=mobile, request=data, idempotency_key=idempotency_key
        )
        headers = {"Idempotent-Replayed": "true"} if booked.replay else {}
        return Response(booked.booking, status_code=201, headers=headers)

    @get("/{tracking_code:str}", summary="Look a booking up by its tracking code")
    async def get(self, tracking_code: FromPath[str], session: Session, container: Deps) -> BookingOut:
        return await container.bookings.get(session=session, tracking_code=tracking_code)

    @post("/{tracking_code:str}/cancel", status_code=200, summary="Cancel a booking; its seat is free at once")
    async def cancel(
        self, tracking_code: FromPath[str], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> BookingOut:
        mobile = container.auth.mobile_from_token(bearer_token(request))
        return await container.bookings.cancel(session=session, tracking_code=tracking_code, mobile=mobile)


class WaitlistController(Controller):
    path = "/api/v1/waitlist"
    tags = ["bookings"]

    @post("/", status_code=201, summary="Join the waitlist of an office that is full that day")
    async def join(
        self, data: JSONBody[WaitlistJoin], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> BookingOut:
        mobile = container.auth.mobile_from_token(bearer_token(request))
        return await container.bookings.join_waitlist(session=session, mobile=mobile, request=data)
