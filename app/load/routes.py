from __future__ import annotations

from litestar import Controller, get
from litestar.params import FromPath, FromQuery

from app.load.schemas import NearbyResult, OfficeLoad
from app.locale import parse_date
from app.web import Deps, Session


class LoadController(Controller):
    path = "/api/v1/offices"
    tags = ["offices"]

    @get("/nearby", summary="Offices offering a service, least busy and near first")
    async def nearby(
        self,
        session: Session,
        container: Deps,
        service: FromQuery[str],
        lat: FromQuery[float | None] = None,
        lon: FromQuery[float | None] = None,
        city: FromQuery[str | None] = None,
        date: FromQuery[str | None] = None,
        limit: FromQuery[int] = 10,
    ) -> NearbyResult:
        return await container.load.nearby(
            session=session,
            service_code=service,
            day=parse_date(date) if date else None,
            lat=lat,
            lon=lon,
            city=city,
            limit=limit,
        )

    @get("/{code:str}/load", summary="Today's load by hour and the number waiting now")
    async def load(self, code: FromPath[str], session: Session, container: Deps) -> OfficeLoad:
        return await container.load.office_load(session=session, office_code=code)
