"""The regulator's complaint queue: paging bounds and the overdue flag."""

from __future__ import annotations

import datetime as dt

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.complaints.models import Complaint
from tests.conftest import World
from tests.integration.test_complaints import complain, regulator

Client = AsyncTestClient[Litestar]


async def test_paging_is_bounded(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    for i in range(3):
        await complain(client, world, office, f"09125556{i:03d}")
    for params, field in [
        ({"limit": -1}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": 10**12}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 1_000_001}, "offset"),
        ({"offset": 10**15}, "offset"),
    ]:
        response = await client.get("/api/v1/regulator/complaints", params=params, headers=reg)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["field"] == field and response.json()["message_fa"]
    page = await client.get("/api/v1/regulator/complaints", params={"limit": 2, "offset": 1}, headers=reg)
    assert page.status_code == 200 and len(page.json()) == 2


async def test_the_first_response_clears_the_overdue_flag(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    answered = (await complain(client, world, office, "09125557001"))["tracking_code"]
    waiting = (await complain(client, world, office, "09125557002"))["tracking_code"]
    async with world.container.sessions() as session:
        for complaint in await session.scalars(select(Complaint)):
            complaint.created_at -= dt.timedelta(hours=73)
        await session.commit()
        assert await world.container.complaints.flag_overdue(session=session) == 2
    queue = (await client.get("/api/v1/regulator/complaints", headers=reg)).json()
    assert [(c["tracking_code"], c["overdue"]) for c in queue] == [(answered, True), (waiting, True)]
    moved = await client.post(
        f"/api/v1/regulator/complaints/{answered}/transition", json={"to": "under_review"}, headers=reg
    )
    assert moved.status_code == 200 and moved.json()["overdue"] is False
    overdue = (await client.get("/api/v1/regulator/complaints?overdue=true", headers=reg)).json()
    assert [c["tracking_code"] for c in overdue] == [waiting]
    queue = (await client.get("/api/v1/regulator/complaints", headers=reg)).json()
    assert [(c["tracking_code"], c["overdue"]) for c in queue] == [(waiting, True), (answered, False)]
