"""Office staff endpoints: /api/v1/staff/offices/{code}/…, each for that office's own staff
(or the regulator); staff of another office get 403 not_your_office."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from app.booking.schemas import BookingOut
from app.capacity.plan import DayRule, WeeklyTemplate
from app.console.schemas import (
    CapacityChange,
    DayPlanOut,
    FarOverride,
    OverrideIn,
    QueueEntry,
    TemplateIn,
    WaitingIn,
    WalkInIn,
)
from app.errors import InvalidInput
from app.locale import parse_date
from app.staff.routes import Staff
from app.web import Deps, Session


def _weekdays(data: TemplateIn) -> dict[int, list[DayRule]]:
    weekdays: dict[int, list[DayRule]] = {}
    for day, rules in data.days.items():
        try:
            weekday = int(day)
        except ValueError:
            raise InvalidInput("days", "Weekdays are 0 to 6.", detail_fa="روزهای هفته ۰ تا ۶ هستند.") from None
        # "1" and "01" (or "١") are one weekday: kept, the last had silently replaced the first.
        if weekday in weekdays:
            raise InvalidInput("days", f"Weekday {weekday} is given twice.", detail_fa="یک روز هفته دو بار آمده است.")
        weekdays[weekday] = [rule.to_rule() for rule in rules]
    return weekdays


class ConsoleController(Controller):
    path = "/api/v1/staff/offices/{code:str}"
    tags = ["office console"]

    @get("/template", summary="The office's weekly template")
    async def template(self, code: FromPath[str], staff: Staff, session: Session, container: Deps) -> WeeklyTemplate:
        return await container.console.template(session=session, staff=staff, office_code=code)

    @put("/template", summary="Replace the weekly template (applies to the whole horizon at once)")
    async def set_template(
        self,
        code: FromPath[str],
        data: JSONBody[TemplateIn],
        staff: Staff,
        session: Session,
        container: Deps,
        move_overflow: FromQuery[bool] = False,
    ) -> CapacityChange:
        return await container.console.set_template(
            session=session, staff=staff, office_code=code, days=_weekdays(data), move_overflow=move_overflow
        )

    @get("/days", summary="The plan of every day in the horizon, and where it comes from")
    async def days(self, code: FromPath[str], staff: Staff, session: Session, container: Deps) -> list[DayPlanOut]:
        return await container.console.day_plans(session=session, staff=staff, office_code=code)

    @get("/overrides", summary="The days beyond the horizon planned differently")
    async def far_overrides(
        self, code: FromPath[str], staff: Staff, session: Session, container: Deps
    ) -> list[FarOverride]:
        return await container.console.far_overrides(session=session, staff=staff, office_code=code)

    @put("/overrides/{date:str}", summary="Plan one date differently (no rules: closed), up to a year ahead")
    async def set_override(
        self,
        code: FromPath[str],
        date: FromPath[str],
        data: JSONBody[OverrideIn],
        staff: Staff,
        session: Session,
        container: Deps,
        move_overflow: FromQuery[bool] = False,
    ) -> CapacityChange:
        return await container.console.set_override(
            session=session,
            staff=staff,
            office_code=code,
            day=parse_date(date),
            rules=[rule.to_rule() for rule in data.rules],
            reason=data.reason,
            move_overflow=move_overflow,
        )

    @delete("/overrides/{date:str}", status_code=200, summary="Go back to the weekly template on a date")
    async def clear_override(
        self,
        code: FromPath[str],
        date: FromPath[str],
        staff: Staff,
        session: Session,
        container: Deps,
        move_overflow: FromQuery[bool] = False,
    ) -> CapacityChange:
        return await container.console.clear_override(
            session=session, staff=staff, office_code=code, day=parse_date(date), move_overflow=move_overflow
        )

    @get("/queue", summary="The day's bookings by slot (today by default)")
    async def queue(
        self, code: FromPath[str], staff: Staff, session: Session, container: Deps, date: FromQuery[str | None] = None
    ) -> list[QueueEntry]:
        day = parse_date(date) if date else None
        return await container.console.queue(session=session, staff=staff, office_code=code, day=day)

    @post("/queue/{tracking_code:str}/check-in", status_code=200, summary="The citizen has arrived")
    async def check_in(
        self, code: FromPath[str], tracking_code: FromPath[str], staff: Staff, session: Session, container: Deps
    ) -> QueueEntry:
        return await container.console.check_in(
            session=session, staff=staff, office_code=code, tracking_code=tracking_code
        )

    @post("/queue/{tracking_code:str}/served", status_code=200, summary="The citizen was served")
    async def served(
        self, code: FromPath[str], tracking_code: FromPath[str], staff: Staff, session: Session, container: Deps
    ) -> QueueEntry:
        return await container.console.serve(
            session=session, staff=staff, office_code=code, tracking_code=tracking_code
        )

    @post("/queue/{tracking_code:str}/no-show", status_code=200, summary="The citizen did not come")
    async def no_show(
        self, code: FromPath[str], tracking_code: FromPath[str], staff: Staff, session: Session, container: Deps
    ) -> QueueEntry:
        return await container.console.no_show(
            session=session, staff=staff, office_code=code, tracking_code=tracking_code
        )

    @post("/walk-ins", status_code=201, summary="Register a walk-in: takes the next free seat like any booking")
    async def walk_in(
        self, code: FromPath[str], data: JSONBody[WalkInIn], staff: Staff, session: Session, container: Deps
    ) -> BookingOut:
        return await container.console.walk_in(
            session=session,
            staff=staff,
            office_code=code,
            national_id=data.national_id,
            service_code=data.service_code,
            mobile=data.mobile,
        )

    @put("/waiting", status_code=204, summary="How many people are waiting in the office right now")
    async def waiting(
        self, code: FromPath[str], data: JSONBody[WaitingIn], staff: Staff, session: Session, container: Deps
    ) -> None:
        await container.console.report_waiting(session=session, staff=staff, office_code=code, waiting=data.waiting)
