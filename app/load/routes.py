from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import FromPath, FromQuery, QueryParameter

from app.load.schemas import NearbyResult, OfficeLoad
from app.load.service import MAX_LIMIT
from app.locale import parse_date, parse_float, parse_int
from app.web import Deps, Session

# Numbers arrive as text so that Persian and Arabic-Indic digits (and «٫» as the decimal
# point) are read, not refused with a 400.
_DIGITS = "Persian or Arabic-Indic digits, and «٫» as the decimal point, are accepted."
Latitude = Annotated[str | None, QueryParameter(description=f"Latitude in degrees, -90 to 90. {_DIGITS}")]
Longitude = Annotated[str | None, QueryParameter(description=f"Longitude in degrees, -180 to 180. {_DIGITS}")]
Limit = Annotated[
    str, QueryParameter(description="How many offices, a whole number 1 to 50; Persian digits are accepted.")
]


def _coordinate(value: str | None, field: str, bound: float) -> float | None:
    # Blank as not given, as the search page reads it: a form that sends "lat=&lon=&city=…"
    # asks by city.
    if value is None or not value.strip():
        return None
    return parse_float(value, field, minimum=-bound, maximum=bound)


class LoadController(Controller):
    path = "/api/v1/offices"
    tags = ["offices"]

    @get("/nearby", summary="Offices offering a service, least busy and near first")
    async def nearby(
        self,
        container: Deps,
        service: FromQuery[str],
        lat: Latitude = None,
        lon: Longitude = None,
        city: FromQuery[str | None] = None,
        date: FromQuery[str | None] = None,
        limit: Limit = "10",
    ) -> NearbyResult:
        return await container.load.nearby(
            sessions=container.sessions,
            service_code=service,
            day=parse_date(date) if date else None,
            lat=_coordinate(lat, "lat", 90),
            lon=_coordinate(lon, "lon", 180),
            city=city or None,
            limit=parse_int(limit, "limit", minimum=1, maximum=MAX_LIMIT),
        )

    @get("/{code:str}/load", summary="Today's load by hour and the number waiting now")
    async def load(self, code: FromPath[str], session: Session, container: Deps) -> OfficeLoad:
        return await container.load.office_load(session=session, office_code=code)
