"""The regulator's complaint queue: paging bounds, the overdue flag and the province."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import httpx
import pytest
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


async def test_the_queue_page_shows_every_complaint_a_page_at_a_time(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed the first 100 and said nothing of the rest: past them, a complaint
    could be reached only by filtering, and the regulator did not know it was there."""
    from app.pages import watch

    monkeypatch.setattr(watch, "QUEUE_PAGE", 2)
    office = await world.office()
    filed = {(await complain(client, world, office, f"09125558{i:03d}"))["tracking_code"] for i in range(5)}
    reg = await regulator(client, world)
    seen: list[str] = []
    links = []
    for number in (1, 2, 3):
        page = await client.get(f"/watch/complaints?page={number}", headers={**reg, "Accept": "text/html"})
        assert page.status_code == 200, page.text
        seen += re.findall(r'data-complaint="([0-9A-Z]{10})"', page.text)
        links.append(('rel="prev"' in page.text, 'rel="next"' in page.text))
    assert sorted(seen) == sorted(filed)  # each once, none left out
    assert links == [(False, True), (True, True), (True, False)]
    refused = await client.get("/watch/complaints?page=0", headers={**reg, "Accept": "text/html"})
    assert refused.status_code in (400, 422)


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


async def test_a_complaint_answered_while_the_job_flags_it_is_not_left_overdue(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job read the late complaints, the regulator answered one, then the job wrote what
    it had read: an answered complaint flagged overdue, first in the queue for ever."""
    office = await world.office()
    reg = await regulator(client, world)
    code = (await complain(client, world, office, "09125557101"))["tracking_code"]
    async with world.container.sessions() as session:
        complaint = await session.scalar(select(Complaint).where(Complaint.tracking_code == code))
        assert complaint is not None
        complaint.created_at -= dt.timedelta(hours=73)
        await session.commit()

    def answer() -> httpx.Response:
        url = f"/api/v1/regulator/complaints/{code}/transition"
        return asyncio.run(client.post(url, json={"to": "under_review"}, headers=reg))

    async with world.container.sessions() as job:
        commit = job.commit

        async def answered_first() -> None:
            # On a thread of its own: the test client holds the loop it is called on until its
            # answer, and a job that holds the row has the request wait for this commit. It is
            # given a second to land first, as it did between the job's read and its write.
            answering = asyncio.ensure_future(asyncio.to_thread(answer))
            await asyncio.wait([answering], timeout=1)
            await commit()
            answered = await answering
            assert answered.status_code == 200, answered.text

        monkeypatch.setattr(job, "commit", answered_first)
        await world.container.complaints.flag_overdue(session=job)
    overdue = (await client.get("/api/v1/regulator/complaints", params={"overdue": "true"}, headers=reg)).json()
    assert overdue == []
    shown = (await client.get(f"/api/v1/regulator/complaints/{code}", headers=reg)).json()
    assert (shown["state"], shown["overdue"]) == ("under_review", False)


async def test_the_province_is_read_in_persian_digits_too(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    code = (await complain(client, world, office, "09125557201"))["tracking_code"]

    async def listed(province: str) -> list[str]:
        queue = await client.get("/api/v1/regulator/complaints", params={"province": province}, headers=reg)
        assert queue.status_code == 200, queue.text
        return [c["tracking_code"] for c in queue.json()]

    # As typed on a Persian keyboard, as the registry's search and the guild's list read it.
    assert await listed("01") == await listed("۰۱") == await listed("تهران") == [code]
    assert await listed("۰۲") == []


async def test_a_complaint_whose_commit_answer_was_lost_is_not_filed_again_by_its_resend(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit landed and its answer was lost: the form's key was let go, and the resend
    (the page shown again keeps its key) filed the complaint a second time."""
    from sqlalchemy import func
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.ext.asyncio import AsyncSession

    office = await world.office()
    complaints = world.container.complaints
    real_commit, lost = AsyncSession.commit, []

    async def landed_but_lost(self: AsyncSession) -> None:
        await real_commit(self)
        if not lost and any(isinstance(o, Complaint) for o in self.identity_map.values()):
            lost.append(1)
            raise OperationalError("COMMIT", {}, Exception("the connection dropped"))

    form = {
        "mobile": "09125559090",
        "office_code": office,
        "category": "overcharging",
        "description": "بیش از تعرفه پول گرفتند.",
        "booking_tracking_code": None,
        "channel": "web",
        "form_key": "form-1",
    }
    monkeypatch.setattr(AsyncSession, "commit", landed_but_lost)
    async with world.container.sessions() as session:
        with pytest.raises(OperationalError):
            await complaints.file(session=session, **form)
    monkeypatch.undo()
    async with world.container.sessions() as session:
        again = await complaints.file(session=session, **form)
        assert await session.scalar(select(func.count()).select_from(Complaint)) == 1
    assert again.tracking_code
