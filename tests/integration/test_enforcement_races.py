"""Two staff decisions at once on one complaint, appeal or office: each decision is taken
once, on the record as it is now, on SQLite (no row locks) and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.complaints.errors import TransitionNotAllowed
from app.complaints.models import ComplaintStep, State
from app.enforcement.errors import AppealDecided, AppealNotAllowed, OfficeIsBlocked
from app.enforcement.models import Fine
from app.offices.models import Office, OfficeStatus
from app.sms.models import SmsMessage
from app.staff.models import StaffRole
from app.staff.service import StaffPrincipal
from tests.conftest import World
from tests.integration.test_complaints import STEPS, appeal, complain, regulator, restrict
from tests.integration.test_console import staff_of

Client = AsyncTestClient[Litestar]
REGULATOR = StaffPrincipal(
    account_id=0, username="regulator-x", role=StaffRole.REGULATOR, office_id=None, office_code=None
)


def meet_at_audit(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Each request waits at its audit row (after its checks, before its commit) until the
    other has come too, or a second has passed: without a lock both pass their checks on the
    same record; with one, the second waits for the first to commit and never comes."""
    import importlib

    owner = importlib.import_module(module)
    audit: Callable[..., Awaitable[Any]] = owner.audit
    arrived = []
    both = asyncio.Event()

    async def meet(*args: Any, **kwargs: Any) -> Any:
        arrived.append(True)
        if len(arrived) == 2:
            both.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both.wait(), 1)
        return await audit(*args, **kwargs)

    monkeypatch.setattr(owner, "audit", meet)


async def up_to_the_report(client: Client, reg: dict[str, str], code: str) -> None:
    for step in STEPS[:3]:
        body = {"to": step, "inspector": "بازرس"} if step == "inspector_assigned" else {"to": step}
        moved = await client.post(f"/api/v1/regulator/complaints/{code}/transition", json=body, headers=reg)
        assert moved.status_code == 200, moved.text


async def at_once(world: World, *calls: Callable[[AsyncSession], Awaitable[Any]]) -> list[Any]:
    """Each call on a session of its own, all at once (as two requests); what each returned
    or raised. (Through the test client the requests would run one after the other.)"""

    async def run(call: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with world.container.sessions() as session:
            return await call(session)

    return await asyncio.gather(*(run(call) for call in calls), return_exceptions=True)


def one_taken(outcomes: list[Any], refused: type[Exception]) -> Any:
    """The one outcome that went through; the other was refused with ``refused``."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], refused), outcomes
    return next(o for o in outcomes if not isinstance(o, BaseException))


async def test_a_violation_confirmed_twice_at_once_is_confirmed_and_fined_once(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    code = (await complain(client, world, office, "09125553001"))["tracking_code"]
    await up_to_the_report(client, reg, code)
    meet_at_audit(monkeypatch, "app.complaints.service")
    complaints = world.container.complaints

    def confirm(session: AsyncSession) -> Awaitable[Any]:
        return complaints.transition(
            session=session, staff=REGULATOR, tracking_code=code, to="violation_confirmed", note="", inspector=None
        )

    one_taken(await at_once(world, confirm, confirm), TransitionNotAllowed)
    async with world.container.sessions() as session:
        fines = list(await session.scalars(select(Fine.amount_rials)))
        steps = list(await session.scalars(select(ComplaintStep.to_state)))
        told = list(await session.scalars(select(SmsMessage.body).where(SmsMessage.kind == "complaint_step")))
    assert fines == [100_000_000]
    assert steps.count(State.VIOLATION_CONFIRMED.value) == 1
    assert sum("جریمه" in body for body in told) == 1


async def test_two_of_an_offices_violations_confirmed_at_once_are_fined_first_and_second(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    codes = [(await complain(client, world, office, f"0912555310{i}"))["tracking_code"] for i in range(2)]
    for code in codes:
        await up_to_the_report(client, reg, code)
    meet_at_audit(monkeypatch, "app.complaints.service")
    complaints = world.container.complaints

    def confirm(code: str) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda session: complaints.transition(
            session=session, staff=REGULATOR, tracking_code=code, to="violation_confirmed", note="", inspector=None
        )

    outcomes = await at_once(world, *(confirm(code) for code in codes))
    assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
    async with world.container.sessions() as session:
        fines = sorted(await session.scalars(select(Fine.amount_rials)))
    assert fines == [100_000_000, 200_000_000]  # the second doubles the first, as one after the other


async def test_an_appeal_decided_twice_at_once_is_decided_once(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    appealed = await appeal(client, staff, office, await restrict(client, reg, office, cap=30))
    assert appealed.status_code == 201, appealed.text
    meet_at_audit(monkeypatch, "app.enforcement.service")
    enforcement, appeal_id = world.container.enforcement, appealed.json()["id"]

    def decide(outcome: str) -> Callable[[AsyncSession], Awaitable[Any]]:
        return lambda session: enforcement.decide_appeal(
            session=session, staff=REGULATOR, appeal_id=appeal_id, outcome=outcome, note=""
        )

    decided = one_taken(await at_once(world, decide("upheld"), decide("overturned")), AppealDecided)
    listed = (await client.get("/api/v1/regulator/appeals", headers=reg)).json()
    assert [a["outcome"] for a in listed] == [decided.outcome]
    office_now = (await client.get(f"/api/v1/offices/{office}")).json()["status"]
    assert office_now == ("active" if decided.outcome == "overturned" else "restricted")


async def test_an_appeal_filed_twice_at_once_is_filed_once(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    await staff_of(client, world, office)
    action_id = await restrict(client, reg, office)
    meet_at_audit(monkeypatch, "app.enforcement.service")
    enforcement = world.container.enforcement
    clerk = StaffPrincipal(
        account_id=0, username=f"staff-{office}", role=StaffRole.OFFICE_STAFF, office_id=None, office_code=office
    )

    def file(session: AsyncSession) -> Awaitable[Any]:
        return enforcement.appeal(session=session, staff=clerk, office_code=office, action_id=action_id, text="رفع شد")

    one_taken(await at_once(world, file, file), AppealNotAllowed)
    assert len((await client.get("/api/v1/regulator/appeals", headers=reg)).json()) == 1


async def test_a_restriction_decided_on_a_stale_read_of_the_office_leaves_its_block(
    client: Client, world: World
) -> None:
    """A complaint's request read the office active; meanwhile a regulator blocked it. The
    policy's restriction must see the block, not reopen the office at 50% behind it."""
    office = await world.office()
    reg = await regulator(client, world)
    async with world.container.sessions() as session:
        stale = await session.scalar(select(Office).where(Office.code == office))
        assert stale is not None and stale.status == OfficeStatus.ACTIVE
        await session.commit()
        blocked = await client.post(
            f"/api/v1/regulator/offices/{office}/block", json={"reason": "جعل مدارک"}, headers=reg
        )
        assert blocked.status_code == 201, blocked.text
        with pytest.raises(OfficeIsBlocked):
            await world.container.enforcement.restrict(session, stale, reason="شکایت‌ها", by=None, cap=50)
    assert (await client.get(f"/api/v1/offices/{office}")).json()["status"] == "blocked"


async def test_overturning_a_later_restriction_keeps_an_earlier_one_at_zero(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    await restrict(client, reg, office, cap=0)
    appealed = await appeal(client, staff, office, await restrict(client, reg, office, cap=50))
    decided = await client.post(
        f"/api/v1/regulator/appeals/{appealed.json()['id']}/decide",
        json={"outcome": "overturned", "note": ""},
        headers=reg,
    )
    assert decided.status_code == 200, decided.text
    async with world.container.sessions() as session:
        now = await session.scalar(select(Office).where(Office.code == office))
    assert now is not None and (now.status, now.cap_percent) == (OfficeStatus.RESTRICTED, 0)
