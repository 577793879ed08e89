from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import JSONBody, PathParameter

from app.capacity.crowd_caps import CrowdCapOut
from app.locale import MAX_ID, parse_int
from app.regulator.schemas import ClosureIn, ClosureOut, CrowdCapIn
from app.staff.routes import Staff
from app.web import Deps, Session

# Ids arrive as text and are read here: Persian digits are accepted, and an id no column can
# hold is a 422, not a database error.
Id = Annotated[str, PathParameter(description="The record's id, a whole number; Persian digits are accepted.")]


def _id(value: str, field: str) -> int:
    return parse_int(value, field, minimum=1, maximum=MAX_ID)


class RegulatorCapacityController(Controller):
    """Regulator only (the guild may read): crowd caps and ad-hoc closures."""

    path = "/api/v1/regulator"
    tags = ["regulator"]

    @get("/crowd-caps", summary="Every crowd cap, active and lifted")
    async def caps(self, staff: Staff, session: Session, container: Deps) -> list[CrowdCapOut]:
        return await container.regulator.caps(session=session, staff=staff)

    @post("/crowd-caps", status_code=201, summary="Cap a province's (or every) office at a share of its seats")
    async def add_cap(self, data: JSONBody[CrowdCapIn], staff: Staff, session: Session, container: Deps) -> CrowdCapOut:
        return await container.regulator.add_cap(session=session, staff=staff, data=data)

    @post("/crowd-caps/{cap_id:str}/lift", status_code=200, summary="End a crowd cap now")
    async def lift_cap(self, cap_id: Id, staff: Staff, session: Session, container: Deps) -> CrowdCapOut:
        return await container.regulator.lift_cap(session=session, staff=staff, cap_id=_id(cap_id, "cap_id"))

    @get("/closures", summary="Ad-hoc closures")
    async def closures(self, staff: Staff, session: Session, container: Deps) -> list[ClosureOut]:
        return await container.regulator.closures(session=session, staff=staff)

    @post("/closures", status_code=201, summary="Close a province's (or every) office on a date")
    async def close(self, data: JSONBody[ClosureIn], staff: Staff, session: Session, container: Deps) -> ClosureOut:
        return await container.regulator.close(session=session, staff=staff, data=data)

    @delete("/closures/{closure_id:str}", status_code=204, summary="Reopen: remove a closure")
    async def reopen(self, closure_id: Id, staff: Staff, session: Session, container: Deps) -> None:
        await container.regulator.reopen(session=session, staff=staff, closure_id=_id(closure_id, "closure_id"))
