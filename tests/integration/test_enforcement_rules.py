"""The enforcement policy end to end: confirmation time, lifts, who lifts what, and the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from app.capacity import keys
from app.capacity.plan import iranian_weekday
from app.clock import Clock
from app.complaints.models import Complaint
from app.staff.models import AuditEntry
from tests.conftest import Deliver, World, booking_body
from tests.integration.test_complaints import STEPS, appeal, complain, guild, regulator, restrict
from tests.integration.test_console import staff_of

Client = AsyncTestClient[Litestar]


async def confirm(client: Client, reg: dict[str, str], code: str) -> None:
    """Walk a complaint up to a confirmed violation."""
    for step in STEPS[:4]:
        body = {"to": step, "inspector": "بازرس"} if step == "inspector_assigned" else {"to": step}
        moved = await client.post(f"/api/v1/regulator/complaints/{code}/transition", json=body, headers=reg)
        assert moved.status_code == 200, moved.text


async def age_complaints(world: World, days: int) -> None:
    async with world.container.sessions() as session:
        for complaint in await session.scalars(select(Complaint)):
            complaint.created_at -= dt.timedelta(days=days)
        await session.commit()


async def status(client: Client, office: str) -> str:
    return str((await client.get(f"/api/v1/offices/{office}")).json()["status"])


async def test_a_forgery_filed_long_ago_and_confirmed_now_blocks(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    code = (await complain(client, world, office, "09125552001", category="forgery"))["tracking_code"]
    await age_complaints(world, 45)  # the inspection took longer than the window
    await confirm(client, reg, code)
    assert await status(client, office) == "blocked"


async def test_n_substantiated_restrict_counted_by_confirmation_time(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    threshold = world.container.settings.restrict_after_substantiated
    codes = [(await complain(client, world, office, f"091255521{i:02d}"))["tracking_code"] for i in range(threshold)]
    await age_complaints(world, 40)
    for i, code in enumerate(codes):
        assert await status(client, office) == "active", i
        await confirm(client, reg, code)
    assert await status(client, office) == "restricted"
    async with world.container.sessions() as session:
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "office.restrict"))
    assert entry is not None and (entry.actor, entry.actor_role, entry.after) == ("policy", "system", '"restricted"')


async def test_a_lift_wipes_the_slate(client: Client, world: World) -> None:
    office = await world.office()
    gld = await guild(client, world)
    threshold = world.container.settings.restrict_after_received
    for i in range(threshold):
        await complain(client, world, office, f"091255530{i:02d}", category="crowding")
    assert await status(client, office) == "restricted"
    lifted = await client.post(
        f"/api/v1/guild/offices/{office}/lift", json={"reason": "نوبت‌دهی راه افتاد"}, headers=gld
    )
    assert lifted.status_code == 200, lifted.text
    await complain(client, world, office, "09125553100", category="crowding")
    assert await status(client, office) == "active"
    for i in range(1, threshold):
        await complain(client, world, office, f"091255531{i:02d}", category="crowding")
    assert await status(client, office) == "restricted"  # ten new ones do restrict again


async def test_one_citizens_repeated_complaints_count_once(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More than a mobile may file in a day (NOBAT_COMPLAINTS_PER_MOBILE), to show the policy
    # counts citizens, not complaints, whatever that bound.
    monkeypatch.setattr(client.app.state.container.complaints, "per_mobile", "100/86400")
    office = await world.office()
    threshold = world.container.settings.restrict_after_received
    for _ in range(2 * threshold):
        await complain(client, world, office, "09125554000", category="crowding")
    assert await status(client, office) == "active"
    for i in range(1, threshold):
        await complain(client, world, office, f"091255540{i:02d}", category="crowding")
    assert await status(client, office) == "restricted"  # the threshold in citizens


async def test_texts_no_one_types_are_refused_and_change_nothing(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    refused = await client.post(
        "/api/v1/complaints",
        json={"office_code": office, "category": "other", "description": "پول\x00 بیشتر گرفتند"},
        headers=world.token("09125554100"),
    )
    assert refused.status_code == 422 and refused.json()["field"] == "description", refused.text
    code = (await complain(client, world, office, "09125554101"))["tracking_code"]
    for body in (
        {"to": "under_review", "note": "\x07"},
        {"to": "inspector_assigned", "inspector": "ب" * 121},
    ):
        moved = await client.post(f"/api/v1/regulator/complaints/{code}/transition", json=body, headers=reg)
        assert moved.status_code == 422, moved.text
    restricted = await client.post(
        f"/api/v1/regulator/offices/{office}/restrict", json={"reason": "x" * 2001}, headers=reg
    )
    assert restricted.status_code == 422 and restricted.json()["field"] == "reason"
    async with world.container.sessions() as session:
        complaints = list(await session.scalars(select(Complaint)))
    assert [(c.state, c.inspector) for c in complaints] == [("received", None)]
    assert await status(client, office) == "active"


async def test_only_the_regulator_lifts_a_block(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    gld = await guild(client, world)
    code = (await complain(client, world, office, "09125554001", category="forgery"))["tracking_code"]
    await confirm(client, reg, code)
    assert await status(client, office) == "blocked"
    refused = await client.post(f"/api/v1/guild/offices/{office}/lift", json={"reason": "x"}, headers=gld)
    assert refused.status_code == 403 and refused.json()["code"] == "block_lift_regulator_only"
    refused = await client.post(f"/api/v1/regulator/offices/{office}/lift", json={"reason": "x"}, headers=gld)
    assert refused.status_code == 403 and refused.json()["code"] == "block_lift_regulator_only"
    assert await status(client, office) == "blocked"
    lifted = await client.post(f"/api/v1/regulator/offices/{office}/lift", json={"reason": "رأی تعزیرات"}, headers=reg)
    assert lifted.status_code == 200, lifted.text
    assert await status(client, office) == "active"


async def test_restricting_a_blocked_office_is_refused(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    blocked = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "تصمیم"}, headers=reg)
    assert blocked.status_code == 201, blocked.text
    refused = await client.post(f"/api/v1/regulator/offices/{office}/restrict", json={"reason": "ازدحام"}, headers=reg)
    assert refused.status_code == 409 and refused.json()["code"] == "office_is_blocked"
    assert await status(client, office) == "blocked"
    history = (await client.get(f"/api/v1/guild/offices/{office}/history", headers=reg)).json()
    assert [(a["kind"], a["lifted_at"]) for a in history] == [("block", None)]
    booking = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert booking.status_code == 403 and booking.json()["code"] == "office_blocked"
    async with world.container.sessions() as session:
        entries = list(await session.scalars(select(AuditEntry).where(AuditEntry.action.like("office.%"))))
    assert [(e.action, e.actor_role) for e in entries] == [("office.block", "regulator")]


async def test_blocking_a_blocked_office_is_refused_and_its_appeal_still_lifts_it(client: Client, world: World) -> None:
    """Blocked, appealed, then blocked again (a double click, a retry): the second block had
    closed the first as replaced and opened a fresh appeal window, and overturning the
    pending appeal answered "overturned" with the office left blocked."""
    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    block = f"/api/v1/regulator/offices/{office}/block"
    blocked = await client.post(block, json={"reason": "تصمیم"}, headers=reg)
    assert blocked.status_code == 201, blocked.text
    appealed = await appeal(client, staff, office, blocked.json()["id"], "مدارک جعلی نبود")
    assert appealed.status_code == 201, appealed.text
    again = await client.post(block, json={"reason": "تصمیم"}, headers=reg)
    assert again.status_code == 409 and again.json()["code"] == "office_already_blocked", again.text
    assert again.json()["message_fa"]
    history = (await client.get(f"/api/v1/guild/offices/{office}/history", headers=reg)).json()
    assert [(a["id"], a["lifted_at"]) for a in history] == [(blocked.json()["id"], None)]
    decided = await client.post(
        f"/api/v1/regulator/appeals/{appealed.json()['id']}/decide",
        json={"outcome": "overturned", "note": "جعل ثابت نشد"},
        headers=reg,
    )
    assert decided.status_code == 200 and decided.json()["outcome"] == "overturned", decided.text
    assert await status(client, office) == "active"
    async with world.container.sessions() as session:
        entries = list(await session.scalars(select(AuditEntry.action).where(AuditEntry.action.like("office.%"))))
    assert entries == ["office.block", "office.lift"]


async def test_restricting_again_the_same_way_answers_the_first_and_its_appeal_lifts_it(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same restriction sent twice (a double click, a retry after a slow answer) was
    recorded twice: the office won its appeal against the first and stayed restricted by the
    copy, though told "your appeal is upheld"."""
    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    url = f"/api/v1/regulator/offices/{office}/restrict"
    first = await client.post(url, json={"reason": "ازدحام", "cap_percent": 50}, headers=reg)
    assert first.status_code == 201, first.text
    again = await client.post(url, json={"reason": "ازدحام", "cap_percent": 50}, headers=reg)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"], again.text
    appealed = await appeal(client, staff, office, first.json()["id"], "ازدحامی نبود")
    assert appealed.status_code == 201, appealed.text
    decided = await client.post(
        f"/api/v1/regulator/appeals/{appealed.json()['id']}/decide",
        json={"outcome": "overturned", "note": "ثابت نشد"},
        headers=reg,
    )
    assert decided.status_code == 200, decided.text
    assert await status(client, office) == "active"
    other = await client.post(url, json={"reason": "ازدحام", "cap_percent": 30}, headers=reg)  # another decision
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"], other.text
    now = Clock.now
    monkeypatch.setattr(Clock, "now", lambda self: now(self) + dt.timedelta(minutes=11))
    later = await client.post(url, json={"reason": "ازدحام", "cap_percent": 30}, headers=reg)  # not a retry
    assert later.status_code == 201 and later.json()["id"] != other.json()["id"], later.text


async def test_a_policy_block_is_audited(client: Client, world: World) -> None:
    office = await world.office()
    reg = await regulator(client, world)
    code = (await complain(client, world, office, "09125555001", category="forgery"))["tracking_code"]
    await confirm(client, reg, code)
    async with world.container.sessions() as session:
        entries = list(await session.scalars(select(AuditEntry).where(AuditEntry.action == "office.block")))
    assert [(e.actor, e.actor_role, e.target, e.before, e.after) for e in entries] == [
        ("policy", "system", office, '"active"', '"blocked"')
    ]


async def test_the_minutes_job_tells_again_only_what_changed_in_the_last_day(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every office restricted since long ago was told again each minute (thousands, at a
    national scale), and every instance forgot its copies of their days. Only an action
    begun or lifted in the last day is told again."""
    office = await world.office()
    reg = await regulator(client, world)
    restricted = await client.post(
        f"/api/v1/regulator/offices/{office}/restrict", json={"reason": "ازدحام", "cap_percent": 50}, headers=reg
    )
    assert restricted.status_code == 201, restricted.text
    async with world.container.sessions() as session:
        assert await world.container.enforcement.push_statuses(session=session) == 1
    later = Clock.now(world.container.clock) + dt.timedelta(days=1, minutes=1)
    monkeypatch.setattr(Clock, "now", lambda self: later)
    async with world.container.sessions() as session:
        assert await world.container.enforcement.push_statuses(session=session) == 0


async def test_a_status_the_counters_missed_is_told_them_within_a_minute(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block whose telling the counters failed (Redis away a moment after the commit): the
    record says blocked, the counters still sell seats. The minute's job tells them again;
    and a lift the counters missed lets the office take bookings again."""
    from redis.exceptions import ConnectionError as RedisDown

    office = await world.office()
    reg = await regulator(client, world)
    capacity = client.app.state.container.capacity  # the app's own, on the test client's loop
    tell = capacity.refresh_meta

    async def away(**kwargs: Any) -> int:
        raise RedisDown("Redis went away after the commit")

    before = await client.post(  # the day counted into Redis
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert before.status_code == 201, before.text
    monkeypatch.setattr(capacity, "refresh_meta", away)
    blocked = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "تصمیم"}, headers=reg)
    assert blocked.status_code == 503
    assert await status(client, office) == "blocked"  # the record's
    missed = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert missed.status_code == 201  # the counters' (finish_blocks would move it)
    monkeypatch.setattr(capacity, "refresh_meta", tell)
    async with world.container.sessions() as session:
        assert await world.container.enforcement.push_statuses(session=session) == 1
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert refused.status_code == 403 and refused.json()["code"] == "office_blocked"

    monkeypatch.setattr(capacity, "refresh_meta", away)
    lifted = await client.post(f"/api/v1/regulator/offices/{office}/lift", json={"reason": "رفع شد"}, headers=reg)
    assert lifted.status_code == 503 and await status(client, office) == "active"
    monkeypatch.setattr(capacity, "refresh_meta", tell)
    async with world.container.sessions() as session:
        assert await world.container.enforcement.push_statuses(session=session) == 1
    taken = await client.post(  # the earliest free slot: the two above filled the first
        "/api/v1/bookings",
        json=booking_body(office, world.national_id(), world.tomorrow(), None),
        headers=world.token(),
    )
    assert taken.status_code == 201, taken.text


async def test_a_complaint_whose_policy_failed_is_filed_and_the_policy_applied_within_a_minute(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The complaint that reaches the threshold is committed; Redis is away as the policy
    restricts the office. The citizen gets the complaint's 201 (a 503 would have them file it
    again), and the minute's job restricts the office."""
    from redis.exceptions import ConnectionError as RedisDown

    office = await world.office()
    threshold = world.container.settings.restrict_after_received
    for i in range(threshold - 1):
        await complain(client, world, office, f"091255570{i:02d}", category="crowding")
    enforcement = client.app.state.container.enforcement  # the app's own, on the test client's loop
    evaluate = enforcement.evaluate

    async def away(*args: Any, **kwargs: Any) -> Any:
        raise RedisDown("Redis went away")

    monkeypatch.setattr(enforcement, "evaluate", away)
    last = await complain(client, world, office, "09125557099", category="crowding")
    assert last["state"] == "received"
    assert await status(client, office) == "active"
    monkeypatch.setattr(enforcement, "evaluate", evaluate)
    # A run stopped half-way (its time limit cancels it) keeps the note: the office had not
    # been weighed again until its next complaint.
    jobs = world.container.enforcement
    weighs = jobs.evaluate

    async def stopped(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError()

    monkeypatch.setattr(jobs, "evaluate", stopped)
    async with world.container.sessions() as session:
        with pytest.raises(asyncio.CancelledError):
            await jobs.apply_policy(session=session)
    monkeypatch.setattr(jobs, "evaluate", weighs)
    async with world.container.sessions() as session:
        assert await world.container.enforcement.apply_policy(session=session) == 1
        assert await world.container.enforcement.apply_policy(session=session) == 0  # done once
    assert await status(client, office) == "restricted"
    async with world.container.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Complaint)) == threshold


async def test_a_complaint_whose_process_died_before_the_policy_has_it_applied_within_a_minute(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The complaint that reaches the threshold commits, and its process dies before the policy
    runs (a deploy): nothing had noted the office, and it went on unrestricted until some
    later complaint. It is noted before the commit, and the minute's job applies it; a note
    made while the job works on the office is kept for the next run."""
    office = await world.office()
    threshold = world.container.settings.restrict_after_received
    for i in range(threshold - 1):
        await complain(client, world, office, f"091255580{i:02d}", category="crowding")
    jobs = world.container
    async with jobs.sessions() as session:
        assert await jobs.enforcement.apply_policy(session=session) == 0  # below the threshold
    complaints = client.app.state.container.complaints

    async def died(*_: Any) -> None:
        return None

    monkeypatch.setattr(complaints, "_apply_policy", died)
    await complain(client, world, office, "09125558099", category="crowding")
    assert await status(client, office) == "active"
    evaluate = jobs.enforcement.evaluate

    async def noted_meanwhile(session: Any, office_row: Any) -> Any:
        await jobs.enforcement.policy_to_apply(office_row.id)  # another complaint, as the job works
        return await evaluate(session, office_row)

    monkeypatch.setattr(jobs.enforcement, "evaluate", noted_meanwhile)
    async with jobs.sessions() as session:
        assert await jobs.enforcement.apply_policy(session=session) == 1
    assert await status(client, office) == "restricted"
    monkeypatch.setattr(jobs.enforcement, "evaluate", evaluate)
    assert await jobs.redis.smembers(keys.POLICY_TO_APPLY)  # the note made meanwhile waits
    async with jobs.sessions() as session:
        assert await jobs.enforcement.apply_policy(session=session) == 0  # restricted already
    assert not await jobs.redis.smembers(keys.POLICY_TO_APPLY)


async def test_a_complaint_whose_policy_fails_after_the_job_took_its_note_is_noted_again(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The complaint reaching the threshold noted its office; the minute's job took the note
    and weighed the office before the complaint committed (below the threshold still); then
    the request's own weighing failed (the record away a moment). No note was left: the
    office went unrestricted until some later complaint. Noted again on that failure."""
    from sqlalchemy.exc import OperationalError

    office = await world.office()
    threshold = world.container.settings.restrict_after_received
    for i in range(threshold - 1):
        await complain(client, world, office, f"091255570{i:02d}", category="crowding")
    app = client.app.state.container
    note, evaluate = app.enforcement.policy_to_apply, app.enforcement.evaluate

    async def noted_then_taken_by_the_job(office_id: int) -> None:
        monkeypatch.setattr(app.enforcement, "policy_to_apply", note)
        await note(office_id)
        async with app.sessions() as job_session:  # before the complaint's commit: below the threshold
            assert await app.enforcement.apply_policy(session=job_session) == 0

        async def away(*_: Any) -> Any:
            monkeypatch.setattr(app.enforcement, "evaluate", evaluate)
            raise OperationalError("SELECT", {}, Exception("the record went away a moment"))

        monkeypatch.setattr(app.enforcement, "evaluate", away)  # the request's own weighing, next

    monkeypatch.setattr(app.enforcement, "policy_to_apply", noted_then_taken_by_the_job)
    await complain(client, world, office, "09125557099", category="crowding")
    assert await status(client, office) == "active"
    jobs = world.container
    async with jobs.sessions() as session:
        assert await jobs.enforcement.apply_policy(session=session) == 1
    assert await status(client, office) == "restricted"


@pytest.mark.parametrize(
    ("ago", "allowed"), [(dt.timedelta(days=7, hours=-2), True), (dt.timedelta(days=7, hours=2), False)]
)
async def test_an_appeal_is_taken_until_seven_days_after_the_action_to_the_hour(
    client: Client, world: World, ago: dt.timedelta, allowed: bool
) -> None:
    """SQLite hands the action's time back without its zone, Tehran's wall time; read as UTC
    it had given offices three and a half hours more."""
    from app.enforcement.models import OfficeAction
    from tests.integration.test_console import staff_of

    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    action_id = await restrict(client, reg, office)
    async with world.container.sessions() as session:
        action = await session.get(OfficeAction, action_id)
        assert action is not None
        action.started_at = world.container.clock.now() - ago
        await session.commit()
    appealed = await appeal(client, staff, office, action_id)
    assert appealed.status_code == (201 if allowed else 409), appealed.text


async def test_an_appeal_overturned_whose_lift_failed_is_still_pending(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision and the lift are one transaction: the lift failing leaves both undone,
    and the regulator can decide again."""
    from tests.integration.test_console import staff_of

    office = await world.office()
    reg = await regulator(client, world)
    staff = await staff_of(client, world, office)
    appealed = await appeal(client, staff, office, await restrict(client, reg, office))
    enforcement = client.app.state.container.enforcement  # the app's own, on the test client's loop
    open_actions = enforcement._open_actions

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the record failed mid-lift")

    monkeypatch.setattr(enforcement, "_open_actions", failing)
    url = f"/api/v1/regulator/appeals/{appealed.json()['id']}/decide"
    failed = await client.post(url, json={"outcome": "overturned", "note": ""}, headers=reg)
    assert failed.status_code == 500
    assert [a["outcome"] for a in (await client.get("/api/v1/regulator/appeals", headers=reg)).json()] == ["pending"]
    assert await status(client, office) == "restricted"
    monkeypatch.setattr(enforcement, "_open_actions", open_actions)
    decided = await client.post(url, json={"outcome": "overturned", "note": ""}, headers=reg)
    assert decided.status_code == 200, decided.text
    assert await status(client, office) == "active"


async def test_a_forgery_texted_in_is_recategorised_by_the_regulator_and_blocks(client: Client, world: World) -> None:
    """A complaint texted in is filed as "other": the regulator says what it is before the
    violation is confirmed, and a confirmed forgery blocks the office as it would from the
    web. After the confirmation the category is what was fined, and stays."""
    office = await world.office()
    reg = await regulator(client, world)
    async with world.container.sessions() as session:
        await world.container.complaints.sms_complaint(
            session, "09125558001", office, "مدارک مرا جعل کردند", "sms-forgery-texted-in"
        )
        code = await session.scalar(select(Complaint.tracking_code))
    assert code is not None
    url = f"/api/v1/regulator/complaints/{code}/transition"
    unknown = await client.post(url, json={"to": "under_review", "category": "forged"}, headers=reg)
    assert unknown.status_code == 422 and unknown.json()["field"] == "category"
    moved = await client.post(url, json={"to": "under_review", "category": "forgery"}, headers=reg)
    assert moved.status_code == 200 and moved.json()["category"] == "forgery", moved.text
    page = await client.get(f"/watch/complaints/{code}", headers={**reg, "Accept": "text/html"})
    assert 'name="category"' in page.text
    for step in STEPS[1:4]:
        body = {"to": step, "inspector": "بازرس"} if step == "inspector_assigned" else {"to": step}
        assert (await client.post(url, json=body, headers=reg)).status_code == 200
    assert await status(client, office) == "blocked"
    late = await client.post(url, json={"to": "referred_to_tribunal", "category": "other"}, headers=reg)
    assert late.status_code == 422 and late.json()["field"] == "category"
    async with world.container.sessions() as session:
        complaint = await session.scalar(select(Complaint))
        entries = list(await session.scalars(select(AuditEntry).where(AuditEntry.action == "complaint.category")))
    assert complaint is not None and (complaint.category.value, complaint.state.value) == (
        "forgery",
        "violation_confirmed",
    )
    assert [(e.before, e.after) for e in entries] == [('"other"', '"forgery"')]


@pytest.mark.parametrize("path", ["/watch/offices/010001/block", "/watch/complaints/ABCDEFGHJK/transition"])
async def test_a_watch_form_sent_after_its_sign_in_ended_asks_for_a_sign_in(client: Client, path: str) -> None:
    """Its sign-in ran out while the form was open: sent, it asks for a sign-in and comes
    back, as every other form does, not "form expired" (the form's token was bound to it)."""
    sent = await client.post(
        path, data={"_csrf": "bound-to-the-ended-sign-in", "block_reason": "ازدحام"}, follow_redirects=False
    )
    assert sent.status_code == 303, sent.text
    assert sent.headers["location"].startswith("/office/signin?next=")
    # And says the change was not saved: it had come back to the page without a word.
    assert "notice=not_saved" in sent.headers["location"]
    signin = await client.get(sent.headers["location"])
    assert "ذخیره نشد" in signin.text


async def test_a_restricted_offices_clerk_cannot_add_seats_back(client: Client, world: World) -> None:
    """A restriction keeps a share of the office's seats: its clerk raising two seats a slot
    to four had sold as many as before, undoing what only a lift may. Cuts, and a day put
    back up to its weekly template, stay the clerk's."""
    office = await world.office(seats=2)
    await world.rebuild()
    clerk = await staff_of(client, world, office)
    await restrict(client, await regulator(client, world), office, cap=50)
    base = f"/api/v1/staff/offices/{office}"
    day = world.tomorrow().isoformat()

    def every_day(seats: int) -> dict[str, Any]:
        return {
            "days": {
                str(d): [{"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": seats}] for d in range(7)
            }
        }

    def one_day(seats: int) -> dict[str, Any]:
        return {"rules": [{"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": seats}], "reason": "x"}

    before = (await client.get(f"{base}/template", headers=clerk)).json()
    raised = await client.put(f"{base}/template", json=every_day(4), headers=clerk)
    assert raised.status_code == 409 and raised.json()["code"] == "no_more_seats_under_cap", raised.text
    assert (await client.get(f"{base}/template", headers=clerk)).json() == before  # nothing changed
    more = await client.put(f"{base}/overrides/{day}", json=one_day(3), headers=clerk)
    assert more.status_code == 409 and more.json()["days"] == [day], more.text
    assert (await client.put(f"{base}/overrides/{day}", json=one_day(1), headers=clerk)).status_code == 200  # a cut
    back = await client.put(f"{base}/overrides/{day}", json=one_day(2), headers=clerk)  # up to its template
    assert back.status_code == 200, back.text
    assert (await client.delete(f"{base}/overrides/{day}", headers=clerk)).status_code == 200

    # Every date of one weekday in the horizon planned apart, at the template's own seats: a
    # raise of that weekday alone is still refused (else, the overrides cleared, it sold).
    tomorrow = world.tomorrow()
    same_weekday = [tomorrow + dt.timedelta(days=7 * i) for i in range(2)]
    for date in same_weekday:
        planned = await client.put(f"{base}/overrides/{date.isoformat()}", json=one_day(2), headers=clerk)
        assert planned.status_code == 200, planned.text
    weekday = str(iranian_weekday(tomorrow))
    one_weekday = {"days": {**before["days"], weekday: every_day(4)["days"][weekday]}}
    hidden = await client.put(f"{base}/template", json=one_weekday, headers=clerk)
    assert hidden.status_code == 409 and hidden.json()["days"] == [tomorrow.isoformat()], hidden.text


async def test_a_clerk_cannot_add_seats_to_days_under_a_crowd_cap(client: Client, world: World) -> None:
    """A crowd cap over the country lets each office fill half its seats: a clerk doubling
    them sold as many as before, undoing the regulator's order. Days and weekdays the cap
    does not reach are the clerk's to raise."""
    office = await world.office(seats=2)
    await world.rebuild()
    clerk = await staff_of(client, world, office)
    tomorrow = world.tomorrow()
    body = {
        "starts_on": tomorrow.isoformat(),
        "ends_on": tomorrow.isoformat(),
        "percent": 50,
        "reason": "آلودگی هوا",
        "province_code": None,
    }
    capped = await client.post("/api/v1/regulator/crowd-caps", json=body, headers=await regulator(client, world))
    assert capped.status_code == 201, capped.text
    base = f"/api/v1/staff/offices/{office}"
    rules = [{"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 4}]
    more = await client.put(
        f"{base}/overrides/{tomorrow.isoformat()}", json={"rules": rules, "reason": "x"}, headers=clerk
    )
    assert more.status_code == 409 and more.json()["code"] == "no_more_seats_under_cap", more.text
    after = tomorrow + dt.timedelta(days=1)  # not capped
    free = await client.put(
        f"{base}/overrides/{after.isoformat()}", json={"rules": rules, "reason": "x"}, headers=clerk
    )
    assert free.status_code == 200, free.text
    template = (await client.get(f"{base}/template", headers=clerk)).json()["days"]
    for date, refused in ((tomorrow, True), (tomorrow + dt.timedelta(days=3), False)):
        weekday = str(iranian_weekday(date))
        answer = await client.put(f"{base}/template", json={"days": {**template, weekday: rules}}, headers=clerk)
        if refused:
            assert answer.status_code == 409 and answer.json()["days"] == [tomorrow.isoformat()], answer.text
        else:
            assert answer.status_code == 200, answer.text


async def test_a_block_at_two_leaves_the_mornings_bookings_to_the_night(
    client: Client, world: World, deliver: Deliver, morning: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocked at 14:00, the office's 09:00 citizen (served hours before and never clicked, or
    absent) was cancelled with an SMS to book elsewhere, and the night's close, which counts an
    absence from a slot begun before the block, never saw it. A slot begun an hour before is
    past: left to the night. One under way (13:30) is cancelled, a later one moved or cancelled."""
    from app.booking.tasks import close_day
    from tests.integration.test_console import move_clock

    office = await world.office(seats=1)
    today = morning.date()
    codes = {}
    for slot in ("09:00", "13:30", "16:00"):
        booked = await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), today, slot), headers=world.token()
        )
        assert booked.status_code == 201, booked.text
        codes[slot] = booked.json()["tracking_code"]
    move_clock(monkeypatch, morning.replace(hour=14))
    reg = await regulator(client, world)
    blocked = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "جعل"}, headers=reg)
    assert blocked.status_code == 201, blocked.text

    async def status(slot: str) -> str:
        return str((await client.get(f"/api/v1/bookings/{codes[slot]}")).json()["status"])

    assert [await status(slot) for slot in codes] == ["booked", "cancelled", "cancelled"]
    async with world.container.sessions() as session:
        assert await world.container.enforcement.finish_blocks(session=session) == 0  # nothing left to move
    # A booking the block's moves missed (committed just after their look), for 14:30, found by
    # the minute's job at 15:40: begun after the block, the office was shut to it. Cancelled and
    # told, not left to the night (whose close cancels such a one without a word).
    from app.booking.models import Booking, BookingStatus
    from app.booking.tracking import new_tracking_code
    from app.offices.models import Office

    missed = new_tracking_code()
    async with world.container.sessions() as session:
        office_id = await session.scalar(select(Office.id).where(Office.code == office))
        session.add(
            Booking(
                tracking_code=missed, office_id=office_id, service_code="101", national_id=world.national_id(),
                mobile="09120000000", date=today, slot_time="14:30", pool="*", status=BookingStatus.BOOKED,
                created_at=morning,
            )
        )  # fmt: skip
        await session.commit()
    codes["14:30"] = missed
    move_clock(monkeypatch, morning.replace(hour=15, minute=40))
    async with world.container.sessions() as session:
        assert await world.container.enforcement.finish_blocks(session=session) == 1
    assert await status("14:30") == "cancelled" and await status("09:00") == "booked"
    move_clock(monkeypatch, morning.replace(hour=0) + dt.timedelta(days=1))  # the night's close
    await asyncio.to_thread(close_day)
    assert await status("09:00") == "no_show"


async def test_the_guilds_row_counts_the_moves_of_the_block_in_force_not_of_the_history(
    client: Client, world: World
) -> None:
    """Blocked, lifted, blocked again: the row said "since today" beside the moves of the first
    block, summed over the office's history (which its history page shows, action by action)."""
    office = await world.office()
    await world.office()  # a neighbour to move to
    await world.rebuild()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    reg = await regulator(client, world)
    first = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "جعل"}, headers=reg)
    assert first.status_code == 201 and first.json()["bookings_moved"] == 1, first.text
    lifted = await client.post(f"/api/v1/regulator/offices/{office}/lift", json={"reason": "رفع شد"}, headers=reg)
    assert lifted.status_code == 200, lifted.text
    again = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "جعل دوباره"}, headers=reg)
    assert again.status_code == 201, again.text
    rows = (await client.get("/api/v1/guild/offices", headers=reg)).json()
    assert [(r["code"], r["reason"], r["bookings_moved"]) for r in rows] == [(office, "جعل دوباره", 0)]


async def test_a_blocks_moves_send_nobody_to_an_office_the_record_closes_that_day(client: Client, world: World) -> None:
    """A closure of the day whose seats have not yet left Redis (another closure's moves held
    the day's lock): moves read Redis and sent citizens there, to be moved again or cancelled
    by the minute's job, two contradictory SMS each. The record's closures are weighed too."""
    from app.capacity.models import Closure
    from app.offices.models import City, Office

    office = await world.office()
    neighbour = await world.office(lat=35.701, lon=51.401)
    await world.rebuild()
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert booked.status_code == 201, booked.text
    async with world.container.sessions() as session:
        province = await session.scalar(
            select(City.province_id).join(Office, Office.city_id == City.id).where(Office.code == neighbour)
        )
        session.add(Closure(date=day, province_id=province, reason="آلودگی هوا", created_by="regulator"))
        await session.commit()  # recorded; its seats still in Redis
    reg = await regulator(client, world)
    blocked = await client.post(f"/api/v1/regulator/offices/{office}/block", json={"reason": "جعل"}, headers=reg)
    assert blocked.status_code == 201, blocked.text
    assert blocked.json()["bookings_moved"] == 0 and blocked.json()["bookings_cancelled"] == 1


async def test_the_watch_list_shows_every_office_a_page_at_a_time(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The country's thousands of restricted offices, each row with its reason, made one page
    of megabytes for the guild's phone. A page at a time now, the filter kept in its links."""
    import re

    from app.pages import watch

    monkeypatch.setattr(watch, "WATCH_PAGE", 2)
    reg = await regulator(client, world)
    restricted = set()
    for _ in range(5):
        office = await world.office()
        await restrict(client, reg, office)
        restricted.add(office)
    seen: list[str] = []
    links = []
    for number in (1, 2, 3):
        page = await client.get(f"/watch?status=restricted&page={number}", headers={**reg, "Accept": "text/html"})
        assert page.status_code == 200, page.text
        assert "(۵ دفتر)" in page.text  # the whole list's count, on every page
        seen += re.findall(r'<tr data-office="([0-9]+)"', page.text)
        links.append(re.findall(r'href="(/watch\?[^"]*)" rel="(prev|next)"', page.text))
    assert sorted(seen) == sorted(restricted)  # each once, none left out
    assert [[rel for _, rel in found] for found in links] == [["next"], ["prev", "next"], ["prev"]]
    assert all("status=restricted" in href for found in links for href, _ in found)
    past = await client.get("/watch?page=9", headers={**reg, "Accept": "text/html"})
    assert past.status_code == 200 and len(re.findall(r'<tr data-office="', past.text)) == 1  # the last page
