from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from app.booking.service import parse_idempotency_key
from app.complaints.schemas import ComplaintCreate, ComplaintOut, QueueItem, TransitionIn
from app.locale import parse_int
from app.staff.routes import Staff
from app.web import Deps, Session, bearer_token


class ComplaintsController(Controller):
    """Citizens (signed in with the one-time code) file complaints and follow their own."""

    path = "/api/v1/complaints"
    tags = ["complaints"]

    @post("/", status_code=201, summary="File a complaint about an office")
    async def file(
        self,
        data: JSONBody[ComplaintCreate],
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
    ) -> ComplaintOut:
        mobile = container.auth.mobile_from_token(bearer_token(request))
        return await container.complaints.file(
            session=session,
            mobile=mobile,
            office_code=data.office_code,
            category=data.category,
            description=data.description,
            booking_tracking_code=data.booking_tracking_code,
            channel="web",
            form_key=parse_idempotency_key(idempotency_key),
        )

    @get("/{tracking_code:str}", summary="A complaint and its steps (the complainant only)")
    async def get(
        self, tracking_code: FromPath[str], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> ComplaintOut:
        mobile = container.auth.mobile_from_token(bearer_token(request))
        return await container.complaints.for_complainant(session=session, tracking_code=tracking_code, mobile=mobile)


class RegulatorComplaintsController(Controller):
    """The regulator's complaint queue and the steps it takes (regulator only)."""

    path = "/api/v1/regulator/complaints"
    tags = ["regulator"]

    @get("/", summary="The complaint queue (overdue first)")
    async def queue(
        self,
        staff: Staff,
        session: Session,
        container: Deps,
        step: Annotated[str | None, QueryParameter(name="state")] = None,
        overdue: FromQuery[bool | None] = None,
        province: FromQuery[str | None] = None,
        limit: FromQuery[str] = "100",
        offset: FromQuery[str] = "0",
    ) -> list[QueueItem]:
        # Numbers as text: Persian and Arabic-Indic digits are read like Latin ones.
        return await container.complaints.queue(
            session=session,
            staff=staff,
            state=step,
            overdue=overdue,
            province=province,
            limit=parse_int(limit, "limit"),
            offset=parse_int(offset, "offset"),
        )

    @get("/{tracking_code:str}", summary="One complaint with its steps")
    async def get(self, tracking_code: FromPath[str], staff: Staff, session: Session, container: Deps) -> ComplaintOut:
        return await container.complaints.for_regulator(session=session, staff=staff, tracking_code=tracking_code)

    @post("/{tracking_code:str}/transition", status_code=200, summary="Move a complaint to its next step")
    async def transition(
        self,
        tracking_code: FromPath[str],
        data: JSONBody[TransitionIn],
        staff: Staff,
        session: Session,
        container: Deps,
    ) -> ComplaintOut:
        return await container.complaints.transition(
            session=session,
            staff=staff,
            tracking_code=tracking_code,
            to=data.to,
            note=data.note,
            inspector=data.inspector,
            category=data.category,
        )
