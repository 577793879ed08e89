from __future__ import annotations

import datetime as dt
from typing import Annotated

from litestar import Controller, get
from litestar.params import FromPath, FromQuery, QueryParameter

from app.locale import MAX_ID, jalali_date, jalali_time, parse_date, parse_int
from app.offices import service
from app.offices.schemas import DaySlots, OfficeDetail, OfficePage, ServiceOut, SlotOut
from app.web import Deps, Session

# Numbers arrive as text so that Persian and Arabic-Indic digits are read, not refused (400).
Limit = Annotated[
    str, QueryParameter(description="Page size, a whole number 1 to 100; Persian or Arabic-Indic digits are accepted.")
]
Offset = Annotated[
    str, QueryParameter(description="How many offices to skip, 0 or more; Persian or Arabic-Indic digits are accepted.")
]


class OfficesController(Controller):
    path = "/api/v1"
    tags = ["offices"]

    @get("/services", summary="The national service catalogue")
    async def services(self, container: Deps) -> list[ServiceOut]:
        return await container.offices.services()

    @get("/offices", summary="Find offices by province, city and service")
    async def offices(
        self,
        session: Session,
        province: FromQuery[str | None] = None,
        city: FromQuery[str | None] = None,
        service_code: Annotated[str | None, QueryParameter(name="service")] = None,
        limit: Limit = "20",
        offset: Offset = "0",
    ) -> OfficePage:
        return await service.search_offices(
            session=session,
            province=province,
            city=city,
            service=service_code,
            limit=parse_int(limit, "limit", minimum=1, maximum=service.MAX_PAGE),
            offset=parse_int(offset, "offset", minimum=0, maximum=MAX_ID),
        )

    @get("/offices/{code:str}", summary="One office, its services and opening hours")
    async def office(self, code: FromPath[str], session: Session) -> OfficeDetail:
        return await service.get_office(session=session, code=code)

    @get("/offices/{code:str}/slots", summary="An office's slots for one service on one day")
    async def slots(
        self,
        code: FromPath[str],
        container: Deps,
        service_code: Annotated[str, QueryParameter(name="service")],
        date: FromQuery[str | None] = None,
    ) -> DaySlots:
        now = container.clock.now()
        day = parse_date(date) if date else now.date()
        container.capacity.check_horizon(day, now.date())
        office = await container.offices.bookable(office_code=code, service_code=service_code)
        status, slots = await container.capacity.bookable_slots(
            sessions=container.sessions, office_code=office.code, pool=office.pool, day=day, now=now
        )
        return DaySlots(
            office_code=office.code,
            service_code=office.service_code,
            date=day.isoformat(),
            date_fa=jalali_date(day),
            status=status,
            slots=[
                SlotOut(time=s.time, seats=s.seats, free=s.free, label_fa=jalali_time(dt.time.fromisoformat(s.time)))
                for s in slots
            ],
        )
