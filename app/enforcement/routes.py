from __future__ import annotations

import asyncio
from typing import TypeVar

from litestar import Controller, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from app.enforcement.models import ActionKind
from app.enforcement.schemas import (
    ActionIn,
    ActionOut,
    AppealDecisionIn,
    AppealIn,
    AppealOut,
    LiftIn,
    NoticeOut,
    WatchedOffice,
)
from app.enforcement.service import watched_csv, watched_xlsx
from app.locale import MAX_ID, parse_int
from app.staff.routes import Staff
from app.web import Deps, Session

Body = TypeVar("Body", str, bytes)


class RegulatorActionsController(Controller):
    """The regulator's decisions on offices (lifting: the guild too)."""

    path = "/api/v1/regulator"
    tags = ["regulator"]

    @post("/offices/{code:str}/restrict", status_code=201, summary="Restrict an office (regulator)")
    async def restrict(
        self, code: FromPath[str], data: JSONBody[ActionIn], staff: Staff, session: Session, container: Deps
    ) -> ActionOut:
        return await container.enforcement.decide(
            session=session,
            staff=staff,
            office_code=code,
            kind=ActionKind.RESTRICT,
            reason=data.reason,
            cap=data.cap_percent,
        )

    @post("/offices/{code:str}/block", status_code=201, summary="Block an office and move its bookings (regulator)")
    async def block(
        self, code: FromPath[str], data: JSONBody[ActionIn], staff: Staff, session: Session, container: Deps
    ) -> ActionOut:
        return await container.enforcement.decide(
            session=session, staff=staff, office_code=code, kind=ActionKind.BLOCK, reason=data.reason, cap=None
        )

    @post("/offices/{code:str}/lift", status_code=200, summary="Lift a restriction or block (regulator, guild)")
    async def lift(
        self, code: FromPath[str], data: JSONBody[LiftIn], staff: Staff, session: Session, container: Deps
    ) -> ActionOut:
        return await container.enforcement.lift(session=session, staff=staff, office_code=code, reason=data.reason)

    @get("/appeals", summary="Appeals of offices (regulator, guild); ?office=CODE, ?outcome=pending")
    async def appeals(
        self,
        staff: Staff,
        session: Session,
        container: Deps,
        office: FromQuery[str | None] = None,
        outcome: FromQuery[str | None] = None,
    ) -> list[AppealOut]:
        return await container.enforcement.appeals(session=session, staff=staff, office_code=office, outcome=outcome)

    @post("/appeals/{appeal_id:str}/decide", status_code=200, summary="Uphold or overturn an appeal (regulator)")
    async def decide(
        self,
        appeal_id: FromPath[str],
        data: JSONBody[AppealDecisionIn],
        staff: Staff,
        session: Session,
        container: Deps,
    ) -> AppealOut:
        return await container.enforcement.decide_appeal(
            session=session,
            staff=staff,
            appeal_id=parse_int(appeal_id, "appeal_id", minimum=1, maximum=MAX_ID),
            outcome=data.outcome,
            note=data.note,
        )


class GuildController(Controller):
    """The national guild's view (read-mostly; the regulator sees it too)."""

    path = "/api/v1/guild"
    tags = ["guild"]

    @get("/offices", summary="Restricted and blocked offices")
    async def offices(
        self,
        staff: Staff,
        session: Session,
        container: Deps,
        province: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> list[WatchedOffice]:
        return await container.enforcement.watched(session=session, staff=staff, province=province, status=status)

    @get("/offices.csv", summary="The same, as CSV")
    async def offices_csv(
        self,
        staff: Staff,
        session: Session,
        container: Deps,
        province: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Response[str]:
        offices = await container.enforcement.watched(session=session, staff=staff, province=province, status=status)
        return _download(watched_csv(offices), "text/csv", "restricted-offices.csv")  # Litestar adds the charset

    @get("/offices.xlsx", summary="The same, as a spreadsheet (codes as text, right to left)")
    async def offices_xlsx(
        self,
        staff: Staff,
        session: Session,
        container: Deps,
        province: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        offices = await container.enforcement.watched(session=session, staff=staff, province=province, status=status)
        made = await asyncio.to_thread(watched_xlsx, offices)  # seconds for the whole country: off the loop
        return _download(
            made, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "restricted-offices.xlsx"
        )

    @get("/offices/{code:str}/history", summary="An office's restrictions and blocks")
    async def history(self, code: FromPath[str], staff: Staff, session: Session, container: Deps) -> list[ActionOut]:
        return await container.enforcement.history(session=session, staff=staff, office_code=code)

    @post("/offices/{code:str}/lift", status_code=200, summary="Lift a restriction when the office complies")
    async def lift(
        self, code: FromPath[str], data: JSONBody[LiftIn], staff: Staff, session: Session, container: Deps
    ) -> ActionOut:
        return await container.enforcement.lift(session=session, staff=staff, office_code=code, reason=data.reason)


class OfficeEnforcementController(Controller):
    """What an office sees of enforcement: notices, and its appeals."""

    path = "/api/v1/staff/offices/{code:str}"
    tags = ["office console"]

    @get("/notices", summary="Messages to the office (restricted, lifted, appeal decided)")
    async def notices(self, code: FromPath[str], staff: Staff, session: Session, container: Deps) -> list[NoticeOut]:
        return await container.enforcement.notices(session=session, staff=staff, office_code=code)

    @get("/actions", summary="The office's restrictions and blocks")
    async def actions(self, code: FromPath[str], staff: Staff, session: Session, container: Deps) -> list[ActionOut]:
        return await container.enforcement.history(session=session, staff=staff, office_code=code)

    @post("/appeals", status_code=201, summary="Appeal a restriction (within 7 days)")
    async def appeal(
        self, code: FromPath[str], data: JSONBody[AppealIn], staff: Staff, session: Session, container: Deps
    ) -> AppealOut:
        return await container.enforcement.appeal(
            session=session, staff=staff, office_code=code, action_id=data.action_id, text=data.text
        )


def _download(body: Body, media_type: str, filename: str) -> Response[Body]:
    """A file the browser saves, as the guild's exports are."""
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
