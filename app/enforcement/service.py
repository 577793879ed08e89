"""Enforcement: restricting, blocking and lifting offices, appeals, and what the guild sees.

A status change is written to the record, then pushed into every day of the office in
Redis (``Capacity.refresh_meta``), so the reserve script applies it to the very next
booking. Blocking moves the office's upcoming bookings to the least busy nearby offices
the same day; whoever cannot be placed is told and cancelled, never silently lost.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager

from redis.exceptions import RedisError
from sqlalchemy import Select, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import Booking, BookingStatus
from app.booking.relocation import Relocator, past_slots
from app.booking.service import BookingService
from app.capacity import keys
from app.capacity.errors import CapacityRebuilding
from app.capacity.service import Capacity
from app.clock import Clock
from app.complaints.models import Category, Complaint, ComplaintStep, State
from app.db import lock_row
from app.enforcement.errors import (
    ActionNotFound,
    AppealDecided,
    AppealNotAllowed,
    AppealNotFound,
    BlockLiftRegulatorOnly,
    OfficeAlreadyBlocked,
    OfficeChangedSince,
    OfficeIsBlocked,
    OfficeNotRestricted,
)
from app.enforcement.models import ActionKind, Appeal, AppealOutcome, OfficeAction, OfficeNotice
from app.enforcement.policy import Policy, Verdict, verdict
from app.enforcement.schemas import ActionOut, AppealOut, NoticeOut, WatchedOffice
from app.errors import InvalidInput
from app.locale import MAX_ID, check_range, check_text
from app.offices.errors import OfficeNotFound
from app.offices.models import City, Office, OfficeStatus, Province
from app.offices.service import in_province, normalize_code
from app.redis import renewed_lock
from app.staff.models import AuditEntry, StaffRole
from app.staff.service import StaffPrincipal, audit, require_office, require_role

log = logging.getLogger(__name__)

RESTORED = "restriction.restored"
"""The audit entry of a restriction a block's end opened again (``_restore_replaced``)."""
REPLACED_BY_A_BLOCK = "replaced by a block"
"""A restriction's lift reason when a block replaced it (a block overturned opens it again)."""

MOVES_LOCK = f"{keys.NAMESPACE}:block-moves"
SAME_DECISION_WITHIN = dt.timedelta(minutes=10)
"""A restriction sent again within this long, the same in every way, is taken for a retry."""
MAX_TEXT = 2000  # a reason, an appeal, a decision's note: what the regulator reads, and SMS quote

# Who the audit log names when the policy acts on its own (no staff member decided).
POLICY_ACTOR = StaffPrincipal(
    account_id=0, username="policy", role=StaffRole.REGULATOR, office_id=None, office_code=None
)


class Enforcement:
    def __init__(
        self,
        *,
        capacity: Capacity,
        bookings: BookingService,
        relocator: Relocator,
        clock: Clock,
        policy: Policy,
        appeal_days: int,
    ) -> None:
        self.capacity = capacity
        self.bookings = bookings
        self.relocator = relocator
        self.clock = clock
        self.policy = policy
        self.appeal_days = appeal_days

    async def office(self, session: AsyncSession, code: str, *, lock: bool = False) -> Office:
        """``lock``: the office as it is now, locked until the transaction ends (``_locked``)."""
        office = await session.scalar(select(Office).where(Office.code == normalize_code(code, "office_code")))
        if office is None:
            raise OfficeNotFound()
        return await _locked(session, office.id) if lock else office

    # --- the policy ---

    async def evaluate(self, session: AsyncSession, office: Office) -> Verdict:
        """Apply the policy to an office's complaints in the window; returns what it did.

        A complaint counts as received when it was filed, and as substantiated when its
        violation was confirmed (an inspection may take longer than the window, and a
        forgery confirmed today must block today). Nothing from before the office's last
        lift counts again: the lift settled it.
        """
        office = await _locked(session, office.id)
        if office.status == OfficeStatus.BLOCKED:
            await session.commit()  # the lock goes with nothing decided
            return Verdict.NONE
        since = self.clock.now() - dt.timedelta(days=self.policy.window_days)
        # Compared in SQL, not in Python: SQLite hands the stored time back without its zone.
        last_lift = await session.scalar(
            select(func.max(OfficeAction.lifted_at)).where(OfficeAction.office_id == office.id)
        )
        filed = [Complaint.office_id == office.id, Complaint.created_at >= since]
        confirmed = [
            Complaint.office_id == office.id,
            ComplaintStep.to_state == State.VIOLATION_CONFIRMED.value,
            ComplaintStep.at >= since,
        ]
        if last_lift is not None:
            filed.append(Complaint.created_at > last_lift)
            confirmed.append(ComplaintStep.at > last_lift)
        # Citizens, not complaints: one mobile filing ten times must not restrict an office.
        received = await session.scalar(select(func.count(func.distinct(Complaint.mobile))).where(*filed)) or 0
        substantiated = list(
            await session.scalars(
                select(Complaint.category)
                .join(ComplaintStep, ComplaintStep.complaint_id == Complaint.id)
                .where(*confirmed)
            )
        )
        decision = verdict(
            policy=self.policy,
            received=received,
            substantiated=len(substantiated),
            forgery_confirmed=Category.FORGERY in substantiated,
        )
        if decision is Verdict.BLOCK:
            await self.block(session, office, reason="جعل مدارک (تخلف احرازشده)", by=None)
        elif decision is Verdict.RESTRICT and office.status == OfficeStatus.ACTIVE:
            reason = f"شکایت {received} شهروند و {len(substantiated)} تخلف احرازشده در {self.policy.window_days} روز"
            await self.restrict(session, office, reason=reason, by=None, cap=self.policy.restricted_cap_percent)
        else:
            await session.commit()  # the lock goes with nothing decided
            return Verdict.NONE
        return decision

    async def _audit(
        self, session: AsyncSession, office: Office, *, by: StaffPrincipal | None, action: str, before: str
    ) -> None:
        entry = await audit(
            session, actor=by or POLICY_ACTOR, action=action, target=office.code, office_id=office.id,
            before=before, after=office.status.value, at=self.clock.now(),
        )  # fmt: skip
        if by is None:
            entry.actor_role = "system"

    # --- actions ---

    async def restrict(
        self, session: AsyncSession, office: Office, *, reason: str, by: StaffPrincipal | None, cap: int
    ) -> OfficeAction:
        """Restrict an office; ``by`` is the regulator who decided, None for the policy."""
        if not 0 <= cap <= 99:
            # 100 restricts nothing, yet marked the office restricted: its clerk could add no seat.
            raise InvalidInput("cap_percent", "cap_percent must be 0 to 99.", detail_fa="درصد باید بین ۰ و ۹۹ باشد.")
        office = await _locked(session, office.id)
        if office.status == OfficeStatus.BLOCKED:
            # A restriction would reopen the office to bookings behind the block's back.
            raise OfficeIsBlocked()
        # The same decision again (a double click, a retry after a slow answer) is answered
        # with the one recorded, seen through once more below (the first's telling may have
        # failed after its commit): recorded twice, the copy stayed open when an appeal against
        # the first was won, the office still restricted.
        action = await self._same_restriction(session, office, cap, reason, by)
        if action is None:
            now = self.clock.now()
            before = office.status.value
            action = OfficeAction(
                office_id=office.id,
                kind=ActionKind.RESTRICT,
                reason=reason,
                source="regulator" if by else "policy",
                actor=(by or POLICY_ACTOR).username,
                cap_percent=cap,
                started_at=now,
            )
            session.add(action)
            office.status, office.cap_percent = OfficeStatus.RESTRICTED, cap
            session.add(
                OfficeNotice(
                    office_id=office.id,
                    at=now,
                    text=f"نوبت‌دهی دفتر محدود شد ({cap}٪ ظرفیت). دلیل: {reason}. مهلت اعتراض {self.appeal_days} روز است.",
                )
            )
            await self._audit(session, office, by=by, action="office.restrict", before=before)
        await session.commit()  # the office's lock let go
        await self.capacity.refresh_meta(session=session, today=self.clock.today(), codes=[office.code])
        # A higher cap than before makes room, which the lines take first (while anyone waits,
        # nobody else may): left unfilled, the day sold nothing until a cancel came.
        await self._lines_after_change(session, office, action)
        return action

    async def block(
        self, session: AsyncSession, office: Office, *, reason: str, by: StaffPrincipal | None
    ) -> OfficeAction:
        """Block an office and move its bookings; ``by`` is the regulator, None for the policy."""
        office = await _locked(session, office.id)
        if office.status == OfficeStatus.BLOCKED:
            # A second block (a double click, a retry) would close the first as replaced and
            # open a fresh appeal window: the appeal pending against the first, overturned,
            # would then lift nothing.
            raise OfficeAlreadyBlocked()
        now = self.clock.now()
        before = office.status.value
        actor = by.username if by else "policy"
        for open_action in await self._open_actions(session, office.id):
            open_action.lifted_at, open_action.lifted_by, open_action.lift_reason = now, actor, REPLACED_BY_A_BLOCK
        action = OfficeAction(
            office_id=office.id,
            kind=ActionKind.BLOCK,
            reason=reason,
            source="regulator" if by else "policy",
            actor=actor,
            started_at=now,
        )
        session.add(action)
        office.status = OfficeStatus.BLOCKED
        session.add(OfficeNotice(office_id=office.id, at=now, text=f"دفتر مسدود شد. دلیل: {reason}"))
        await self._audit(session, office, by=by, action="office.block", before=before)
        await session.commit()
        # From here the reserve script refuses the office; then its bookings are moved.
        await self.capacity.refresh_meta(session=session, today=self.clock.today(), codes=[office.code])
        async with self._moving(office.code) as held:
            if not held:  # the minute's job is moving them already (blocked again after a lift)
                return action
            try:
                action.bookings_moved, action.bookings_cancelled = await self._move_bookings_away(session, office)
            except CapacityRebuilding as paused:
                # The block is recorded; the moves would race the recount. ``finish_blocks``
                # moves them within a minute of its end. Rolled back here too: refused before
                # its first write, the relocator leaves the office's lock held.
                await session.rollback()
                for row in (office, action):  # read again: the rollback expired them
                    await session.refresh(row)
                if isinstance(paused, _MovedBeforeARecount):  # the moves committed: counted
                    action.bookings_moved, action.bookings_cancelled = paused.moved, paused.unplaced
                    await session.commit()
                log.warning("office %s blocked; its bookings move after the recount", office.code)
                return action
            await session.commit()
        return action

    async def finish_blocks(self, *, session: AsyncSession) -> int:
        """Move the bookings still at blocked offices: those a block could not move (capacity
        paused for a recount, the record or Redis away, the process stopped half-way). Run
        every minute (workers.cron); the bookings moved or cancelled. Without it they would
        stay booked at an office that takes nobody, and a second block is the only repair."""
        if not await self.capacity.is_built():
            return 0  # paused for a recount: the next run
        left = select(Booking.office_id).where(
            Booking.date >= self.clock.today(),
            Booking.status.in_((BookingStatus.BOOKED, BookingStatus.WAITLISTED)),
        )  # a past booking left for the night has its office looked at again: a few, each minute
        offices = (
            await session.execute(
                select(Office.id, Office.code)
                .where(Office.status == OfficeStatus.BLOCKED, Office.id.in_(left))
                .order_by(Office.id)
            )
        ).all()
        done = 0
        for office_id, code in offices:
            try:
                done += await self._finish_block(session, office_id)
            except CapacityRebuilding:
                await session.rollback()
                break  # a recount began: the next run
            except Exception:  # one office's failure must not keep the others waiting
                await session.rollback()
                log.exception("the bookings left at blocked office %s wait for the next run", code)
        return done

    async def policy_to_apply(self, office_id: int) -> None:
        """Note, before a complaint or its confirmation commits, that the office's policy is to
        be applied: the request applies it after its commit, and the minute's job
        (``apply_policy``) again, so that a request that failed there or whose process died
        first (a deploy, a forgery confirmed and the block never made) loses nothing. Best
        effort: Redis away, the request's own try is all there is."""
        try:
            await self.capacity.redis.sadd(keys.POLICY_TO_APPLY, office_id)
        except RedisError:
            log.error("office %d's policy is applied by its request only: Redis did not answer", office_id)

    async def apply_policy(self, *, session: AsyncSession) -> int:
        """The policy for the offices noted by ``policy_to_apply``; the offices it restricted
        or blocked. Run every minute (workers.cron): one look at an empty set when no
        complaint came. Each is taken off before it is applied: one noted again meanwhile
        stays for the next run (taken off after, that note was lost)."""
        applied = 0
        for raw in await self.capacity.redis.smembers(keys.POLICY_TO_APPLY):
            await self.capacity.redis.srem(keys.POLICY_TO_APPLY, raw)
            try:
                office_id = int(raw)
            except ValueError:  # not ours (a hand's SADD): one bad member must not stop every run
                log.error("a policy note that is not an office id, dropped: %r", raw)
                continue
            try:
                office = await session.get(Office, office_id)
                if office is not None:
                    applied += await self.evaluate(session, office) is not Verdict.NONE
            except Exception:  # one office's failure must not keep the others waiting
                await session.rollback()
                log.exception("office %d's policy waits for the next run", office_id)
                await self.capacity.redis.sadd(keys.POLICY_TO_APPLY, raw)
            except BaseException:
                # Stopped half-way (the job's time limit cancels it): noted again, or the
                # office would not be weighed until its next complaint.
                with contextlib.suppress(RedisError):
                    await self.capacity.redis.sadd(keys.POLICY_TO_APPLY, raw)
                raise
        return applied

    async def push_statuses(self, *, session: AsyncSession) -> int:
        """Tell the counters again the status and cap of every office restricted, blocked or
        lifted in the last day; the offices told. A block, a restriction or a lift reaches the
        counters only after its commit: a Redis error then, or a recount that had read the
        record a moment before, would leave them saying otherwise (a blocked office taking
        bookings, a lifted one none) until the next recount. Run every minute
        (workers.cron). Not every office restricted since long ago: each minute, thousands
        told again what they had, and every instance's copies of their days forgotten."""
        if not await self.capacity.is_built():
            return 0  # a recount reads them from the record itself
        day_ago = self.clock.now() - dt.timedelta(days=1)
        changed = select(OfficeAction.office_id).where(
            (OfficeAction.started_at >= day_ago) | (OfficeAction.lifted_at >= day_ago)
        )
        codes = list(await session.scalars(select(Office.code).where(Office.id.in_(changed))))
        offices_told = 0
        if codes:
            told = await self.capacity.refresh_meta(session=session, today=self.clock.today(), codes=codes)
            offices_told = told.offices
            if told.eased:  # a lift or a higher cap told only now: their lines take the room it made
                await self.bookings.fill_waitlists(session=session, office_codes=told.eased)
        # The lines a restriction shut whose own request could not end them (a recount, Redis
        # or the record away after its commit): at 0%, or restricted or lifted back to a
        # restriction in the last day. Only offices with someone in line are locked (each lock
        # is a write on SQLite).
        waiting = select(Booking.id).where(
            Booking.office_id == Office.id,
            Booking.date >= self.clock.today(),
            Booking.status == BookingStatus.WAITLISTED,
        )
        shut = select(Office.id).where(
            Office.status == OfficeStatus.RESTRICTED,
            (Office.cap_percent == 0) | Office.id.in_(changed),
            waiting.exists(),
        )
        for office_id in list(await session.scalars(shut)):
            await self._end_lines(session, office_id)
        return offices_told

    async def _finish_block(self, session: AsyncSession, office_id: int) -> int:
        office = await session.get(Office, office_id, populate_existing=True)  # lifted meanwhile?
        if office is None or office.status is not OfficeStatus.BLOCKED:
            return 0
        async with self._moving(office.code) as held:
            if not held:  # the block itself is moving them
                return 0
            code, paused = office.code, None
            try:
                moved, cancelled = await self._move_bookings_away(session, office)
            except _MovedBeforeARecount as moved_first:  # counted, then the next run's
                await session.rollback()
                moved, cancelled, paused = moved_first.moved, moved_first.unplaced, moved_first
            for action in await self._open_actions(session, office_id):
                if action.kind is ActionKind.BLOCK:
                    action.bookings_moved += moved
                    action.bookings_cancelled += cancelled
            await session.commit()
        log.info("moved the bookings left at blocked office %s", code, extra={"moved": moved})
        if paused is not None:
            raise paused
        return moved + cancelled

    def _moving(self, office_code: str) -> AbstractAsyncContextManager[bool]:
        """The lock a block and ``finish_blocks`` take to move an office's bookings: moved by
        both at once, each takes seats the other then finds gone, and cancels citizens who
        had somewhere to go."""
        return renewed_lock(self.capacity.redis, f"{MOVES_LOCK}:{office_code}", uuid.uuid4().hex, seconds=30)

    async def _move_bookings_away(self, session: AsyncSession, office: Office) -> tuple[int, int]:
        """Move the blocked office's upcoming bookings, then cancel those with no seat to move;
        (moved, cancelled). Each step reads the office locked, in the transaction that writes
        it: a lift committed first stops it, and a lift that comes during it waits for its
        commit and finds it done. Nobody is moved off, or cancelled at, an office no longer
        blocked (read once before the moves, a lift during them had answered "active" while
        every citizen was sent away with an SMS saying the office was blocked)."""
        now = self.clock.now()
        blocked_at = max(
            (
                self.clock.aware(a.started_at)
                for a in await self._open_actions(session, office.id)
                if a.kind is ActionKind.BLOCK
            ),
            default=now,
        )
        upcoming = list(
            await session.scalars(
                select(Booking)
                .where(
                    Booking.office_id == office.id,
                    Booking.status.in_((BookingStatus.BOOKED, BookingStatus.WAITLISTED)),
                    Booking.date >= now.date(),
                    ~past_slots(now, blocked_at),
                )
                .order_by(Booking.date, Booking.slot_time, Booking.id)
            )
        )
        why = f"به دلیل مسدود شدن {office.name_fa}،"
        started = now.strftime("%H:%M")
        to_cancel: list[Booking] = []
        to_move: list[Booking] = []
        for booking in upcoming:
            # A waitlist entry (or a slot already under way) has no seat to move.
            seatless = booking.status == BookingStatus.WAITLISTED or (
                booking.date == now.date() and booking.slot_time <= started
            )
            (to_cancel if seatless else to_move).append(booking)
        results = await self.relocator.relocate(
            session=session,
            bookings=to_move,
            from_office=office,
            same_office=False,
            why_fa=why,
            still_wanted=lambda: self._still_blocked(session, office),
        )  # its commit lets the office go: a lift may come between the two steps
        moved = sum(result.moved for result in results)
        if to_cancel and not await self._still_blocked(session, office):
            await session.commit()  # nothing written: lets the office's lock go
            to_cancel = []
        if not to_cancel:
            return moved, len(results) - moved
        try:
            cancelled = await self.bookings.cancel_seatless(
                session,
                [(booking, office.code) for booking in to_cancel],
                now=now,
                why_fa=why,
                advice_fa="لطفاً از دفتر دیگری نوبت بگیرید.",
            )
        except CapacityRebuilding:
            raise _MovedBeforeARecount(moved, len(results) - moved) from None
        return moved, len(results) - moved + len(cancelled)

    async def _still_blocked(self, session: AsyncSession, office: Office) -> bool:
        """Whether the office is still blocked, read locked until the transaction ends (the
        moves' own, which the relocator or the cancellations commit)."""
        return (await _locked(session, office.id)).status is OfficeStatus.BLOCKED

    async def lift(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, reason: str, seen: str | None = None
    ) -> ActionOut:
        """Close every open action of the office. ``seen``: the id of the latest open action the
        lifter saw (a page's form): another now (a block, or a harder restriction, made since),
        nothing is lifted."""
        require_role(staff, StaffRole.REGULATOR, StaffRole.GUILD)
        if not check_text(reason, "reason", max_length=MAX_TEXT, multiline=True, label_fa="دلیل").strip():
            raise InvalidInput(
                "reason", "Say why (for example: it now takes appointments).", detail_fa="دلیل را بنویسید."
            )
        office = await self.office(session, office_code, lock=True)
        actions = await self._open_actions(session, office.id)
        if office.status == OfficeStatus.ACTIVE or not actions:
            raise OfficeNotRestricted()
        if seen is not None and seen != str(max(action.id for action in actions)):
            # A restricted office's page left open while the policy blocked it (a forgery
            # confirmed): its lift form had lifted the block the regulator never saw.
            raise OfficeChangedSince()
        blocked = office.status == OfficeStatus.BLOCKED or any(a.kind is ActionKind.BLOCK for a in actions)
        if blocked and staff.role is not StaffRole.REGULATOR:
            # A block is the regulator's sanction (forgery, or its own decision); the guild
            # vouches for compliance with the appointment rules, which lifts restrictions only.
            raise BlockLiftRegulatorOnly()
        for block in (a for a in actions if a.kind is ActionKind.BLOCK):
            # As an overturned appeal does: the block lifted, the restriction it replaced
            # stands, and is lifted on its own when the office complies with it too. Lifted
            # with the block, an office restricted for ten citizens' complaints came back at
            # full capacity, and those complaints could never restrict it again.
            await self._restore_replaced(session, block, by=staff)
        await self._lift(session, office, actions, by=staff, reason=reason.strip())
        return _action_out(actions[-1], office.code)

    async def _lift(
        self, session: AsyncSession, office: Office, actions: list[OfficeAction], *, by: StaffPrincipal, reason: str
    ) -> None:
        """Close these actions. The office is active again only when no other stays open: an
        appeal overturns the one action it was against, not a later one. The caller holds the
        office locked (``lift``, ``decide_appeal``)."""
        now = self.clock.now()
        for action in actions:
            action.lifted_at, action.lifted_by, action.lift_reason = now, by.username, reason
        still_open = await self._open_actions(session, office.id)  # the query flushes the lifts first
        before = office.status.value
        if not still_open:
            office.status, office.cap_percent = OfficeStatus.ACTIVE, 100
            session.add(OfficeNotice(office_id=office.id, at=now, text=f"محدودیت دفتر برداشته شد. {reason}"))
        elif all(a.kind is ActionKind.RESTRICT for a in still_open) and still_open[-1].cap_percent is not None:
            # Restricted again since (a regulator's later decision), or still (the restriction
            # a block overturned had replaced): the latest one's cap holds, 0% (a restriction
            # that takes nobody) included.
            cap = still_open[-1].cap_percent
            if office.status is OfficeStatus.BLOCKED:
                text = f"انسداد دفتر برداشته شد؛ محدودیت پیشین ({cap}٪ ظرفیت) برقرار است. {reason}"
                session.add(OfficeNotice(office_id=office.id, at=now, text=text))
            office.status, office.cap_percent = OfficeStatus.RESTRICTED, cap
        await audit(
            session, actor=by, action="office.lift", target=office.code, office_id=office.id, before=before,
            after=office.status.value, at=now,
        )  # fmt: skip
        await session.commit()
        await self.capacity.refresh_meta(session=session, today=self.clock.today(), codes=[office.code])
        await self._lines_after_change(session, office, *actions)

    async def _lines_after_change(self, session: AsyncSession, office: Office, *answered: OfficeAction) -> None:
        """Give the room a lighter sanction made to the office's lines; and, restricted, end
        those of the days it lets sell nothing. Their promotions may roll the session back (a
        recount begun), which expires what it had loaded: the office and ``answered``, what the
        caller answers with, are read again (read lazily, they were an error, and a decision
        already recorded answered 500)."""
        # Read before any rollback expires them.
        office_id, code, restricted, cap = (
            office.id,
            office.code,
            office.status == OfficeStatus.RESTRICTED,
            office.cap_percent,
        )
        if not restricted or cap > 0:
            await self.bookings.fill_waitlists(session=session, office_codes={code})
        if restricted:
            await self._end_lines(session, office_id)
        for row in (office, *answered):
            await session.refresh(row)

    async def _end_lines(self, session: AsyncSession, office_id: int) -> None:
        """A restriction to 0%, or to a share of a small day that rounds to no seat, sells none,
        a freed one included: nobody in those days' lines would ever be called
        (``BookingService.end_shut_lines``). Read with the office locked until that commits: a
        lift that came first keeps them in line, one that comes waits. A recount begun meanwhile
        refuses it (rolled back): the decision is recorded, not failed, and the minute's job
        (``push_statuses``) ends the lines of a 0% restriction once the recount is done."""
        office = await _locked(session, office_id)
        code, why_fa = office.code, f"به دلیل توقف نوبت‌دهی {office.name_fa}،"
        try:
            await self.bookings.end_shut_lines(session=session, office_codes={code}, why_fa=why_fa)
        except (CapacityRebuilding, RedisError, SQLAlchemyError, OSError):
            await session.rollback()
            log.warning("the lines office %s shut are ended by the minute's job", code, exc_info=True)

    async def decide(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str,
        kind: ActionKind,
        reason: str,
        cap: int | None,
    ) -> ActionOut:
        """A regulator's decision to restrict or block an office."""
        require_role(staff, StaffRole.REGULATOR)
        if not check_text(reason, "reason", max_length=MAX_TEXT, multiline=True, label_fa="دلیل").strip():
            raise InvalidInput("reason", "Give the reason.", detail_fa="دلیل را بنویسید.")
        self.capacity.require_ready()  # a block's moves and a cap must not race a recount
        office = await self.office(session, office_code)
        if kind is ActionKind.BLOCK:
            action = await self.block(session, office, reason=reason.strip(), by=staff)
        else:
            cap = self.policy.restricted_cap_percent if cap is None else cap
            action = await self.restrict(session, office, reason=reason.strip(), by=staff, cap=cap)
        return _action_out(action, office.code)

    async def _same_restriction(
        self, session: AsyncSession, office: Office, cap: int, reason: str, by: StaffPrincipal | None
    ) -> OfficeAction | None:
        """The office's latest open action, if it is this decision sent again: a restriction at
        ``cap`` for ``reason`` by the same hand, minutes ago (the same order weeks later is a
        decision of its own, with its own notice and appeal window)."""
        if office.status != OfficeStatus.RESTRICTED:
            return None
        open_actions = await self._open_actions(session, office.id)
        latest = open_actions[-1] if open_actions else None
        if latest is None or latest.kind != ActionKind.RESTRICT or (latest.cap_percent, latest.reason) != (cap, reason):
            return None
        recent = self.clock.aware(latest.started_at) > self.clock.now() - SAME_DECISION_WITHIN
        return latest if recent and latest.actor == (by or POLICY_ACTOR).username else None

    async def _open_actions(self, session: AsyncSession, office_id: int) -> list[OfficeAction]:
        return list(
            await session.scalars(
                select(OfficeAction)
                .where(OfficeAction.office_id == office_id, OfficeAction.lifted_at.is_(None))
                .order_by(OfficeAction.id)
            )
        )

    # --- appeals ---

    async def appeal(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, action_id: int, text: str
    ) -> AppealOut:
        require_office(staff, office_code)
        # The office's own staff only: a regulator, who decides it, filing it had used up
        # the office's one appeal of the action.
        require_role(staff, StaffRole.OFFICE_STAFF)
        # The office, then the action (the order every path takes them in), locked before the
        # action's appeals are counted: two filed at once (a double click) are one.
        # Bounded as a path's id is: past the column's range, PostgreSQL refused it field-less.
        check_range(action_id, "action_id", minimum=1, maximum=MAX_ID)
        office = await self.office(session, office_code, lock=True)
        action = await lock_row(session, OfficeAction, action_id)
        if action is None or action.office_id != office.id:
            raise ActionNotFound()
        if not check_text(text, "text", max_length=MAX_TEXT, multiline=True, label_fa="متن اعتراض").strip():
            raise InvalidInput("text", "Write the appeal.", detail_fa="متن اعتراض را بنویسید.")
        now = self.clock.now()
        already = await session.scalar(select(func.count()).select_from(Appeal).where(Appeal.action_id == action.id))
        deadline = await self._appeal_deadline(session, action)
        if action.lifted_at is not None or now > deadline or already:
            raise AppealNotAllowed(deadline=deadline.isoformat())
        appeal = Appeal(
            action_id=action.id, office_id=office.id, text=text.strip(), filed_by=staff.username, filed_at=now
        )
        session.add(appeal)
        await audit(
            session, actor=staff, action="appeal.file", target=str(action.id), office_id=office.id, before=None,
            after=text.strip(), at=now,
        )  # fmt: skip
        await session.commit()
        return _appeal_out(appeal, office.code)

    async def decide_appeal(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        appeal_id: int,
        outcome: str,
        note: str,
        office_code: str | None = None,
    ) -> AppealOut:
        """``office_code``: the office the decision was made from (its page); another's appeal
        is not found there."""
        require_role(staff, StaffRole.REGULATOR)
        check_text(note, "note", max_length=MAX_TEXT, multiline=True, label_fa="دلیل تصمیم")
        from_office = None if office_code is None else (await self.office(session, office_code)).id
        # Locked before its outcome is read: two decisions at once (upheld, and overturned)
        # are one decision and a 409.
        appeal = await lock_row(session, Appeal, appeal_id)
        if appeal is None or from_office not in (None, appeal.office_id):
            raise AppealNotFound()
        if appeal.outcome is not AppealOutcome.PENDING:
            raise AppealDecided()
        try:
            decided = AppealOutcome(outcome)
        except ValueError:
            decided = AppealOutcome.PENDING
        if decided is AppealOutcome.PENDING:
            raise InvalidInput(
                "outcome", "outcome is upheld or overturned.", detail_fa="نتیجه باید upheld یا overturned باشد."
            )
        now = self.clock.now()
        appeal.outcome, appeal.decided_by, appeal.decided_at, appeal.decision_note = decided, staff.username, now, note
        office = await _locked(session, appeal.office_id)
        action = await session.get(OfficeAction, appeal.action_id)
        assert action is not None
        # Only the action appealed against is undone, and only while it is still in force: a
        # restriction replaced by a block since must not take the block with it.
        undo = decided is AppealOutcome.OVERTURNED and action.lifted_at is None
        if decided is not AppealOutcome.OVERTURNED:
            verdict_fa = "رد شد"
        else:
            verdict_fa = "پذیرفته شد و محدودیت برداشته می‌شود" if undo else "پذیرفته شد"
        session.add(OfficeNotice(office_id=office.id, at=now, text=f"اعتراض شما {verdict_fa}. {note}"))
        await audit(
            session, actor=staff, action="appeal.decide", target=str(appeal.id), office_id=office.id,
            before="pending", after=decided.value, at=now,
        )  # fmt: skip
        answer = _appeal_out(appeal, office.code)  # as decided: the lift's fill may expire the row
        if undo and action.kind is ActionKind.BLOCK:
            await self._restore_replaced(session, action, by=staff)
        if undo:
            # The decision commits with the lift, in one transaction: committed apart, a lift
            # that failed left the appeal "overturned" and the restriction standing, and a
            # retry was refused as already decided.
            await self._lift(session, office, [action], by=staff, reason=f"اعتراض پذیرفته شد. {note}".strip())
        else:
            await session.commit()
        return answer

    async def lift_restores(self, *, session: AsyncSession, office_code: str) -> bool:
        """Whether lifting the office now opens again a restriction its block replaced (the
        lift form says so): asked as ``_restore_replaced`` finds them."""
        office = await self.office(session, office_code)
        for action in await self._open_actions(session, office.id):
            if action.kind is ActionKind.BLOCK and list(await session.scalars(_replaced_by(action))):
                return True
        return False

    async def _restore_replaced(self, session: AsyncSession, block: OfficeAction, *, by: StaffPrincipal) -> None:
        """Open again the restrictions a block had replaced, as the block is lifted or overturned
        on appeal: the lift or the appeal was of the block. Lifted with it, an office restricted
        for ten citizens' complaints (or by the regulator, its own appeal upheld) came back at
        full capacity, and the complaints before the overturn no longer counted. Not one whose
        own appeal was overturned meanwhile (it would have been lifted, had the block not
        replaced it). Each is audited as restored: its days to appeal count from then."""
        now = self.clock.now()
        for action in await session.scalars(_replaced_by(block)):
            action.lifted_at, action.lifted_by, action.lift_reason = None, None, None
            await audit(
                session, actor=by, action=RESTORED, target=str(action.id), office_id=action.office_id, before=None,
                after=None, at=now,
            )  # fmt: skip

    async def office_appeals(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str
    ) -> tuple[dict[int, AppealOut], set[int]]:
        """The office's appeals, by the action each is against (what its staff filed, and how
        each was decided), and the actions its staff may still appeal (in force, none filed,
        within their days, as ``appeal`` decides): their notices page."""
        require_office(staff, office_code)
        office = await self.office(session, office_code)
        rows = await session.scalars(select(Appeal).where(Appeal.office_id == office.id).order_by(Appeal.id))
        appeals = {appeal.action_id: _appeal_out(appeal, office.code) for appeal in rows}
        now = self.clock.now()
        appealable = {
            action.id
            for action in await self._open_actions(session, office.id)
            if action.id not in appeals and now <= await self._appeal_deadline(session, action)
        }
        return appeals, appealable

    async def _appeal_deadline(self, session: AsyncSession, action: OfficeAction) -> dt.datetime:
        """Its days from when it began, or from when a block's end restored it: a restriction
        a block replaced could not be appealed while the block stood, and had come back with
        its days gone."""
        days = dt.timedelta(days=self.appeal_days)
        began = self.clock.aware(action.started_at)
        now = self.clock.now()
        if action.kind is not ActionKind.RESTRICT or now <= began + days:
            return began + days  # a block is never restored; within its days, they are its own
        # Only a restore within the last days can open them again: the office's entries read
        # from then, not from when it began (every check-in of months is one).
        restored = await session.scalar(
            select(func.max(AuditEntry.at)).where(
                AuditEntry.office_id == action.office_id,
                AuditEntry.at >= max(began, now - days).astimezone(dt.UTC),  # as audit() writes it
                AuditEntry.action == RESTORED,
                AuditEntry.target == str(action.id),
            )
        )
        if restored is None:
            return began + days
        # Written in UTC (audit()); SQLite gives it back without its zone.
        at = restored.replace(tzinfo=dt.UTC) if restored.tzinfo is None else restored
        return max(began, at.astimezone(self.clock.tz)) + days

    async def appeals(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str | None = None,
        outcome: str | None = None,
    ) -> list[AppealOut]:
        """Appeals, oldest first; narrowed to one office's, or to those awaiting a decision
        (``outcome="pending"``): the regulator's work, which the whole list buries in years."""
        require_role(staff, StaffRole.REGULATOR, StaffRole.GUILD)
        query = select(Appeal, Office.code).join(Office, Office.id == Appeal.office_id).order_by(Appeal.id)
        if office_code is not None:
            query = query.where(Appeal.office_id == (await self.office(session, office_code)).id)
        if outcome is not None:
            try:
                query = query.where(Appeal.outcome == AppealOutcome(outcome.strip().lower()))
            except ValueError:
                raise InvalidInput(
                    "outcome",
                    "outcome is pending, upheld or overturned.",
                    detail_fa="نتیجه باید pending، upheld یا overturned باشد.",
                ) from None
        return [_appeal_out(appeal, code) for appeal, code in await session.execute(query)]

    async def notices(self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str) -> list[NoticeOut]:
        require_office(staff, office_code)
        office = await self.office(session, office_code)
        rows = await session.scalars(
            select(OfficeNotice).where(OfficeNotice.office_id == office.id).order_by(OfficeNotice.id.desc()).limit(50)
        )
        return [NoticeOut(at=n.at.isoformat(), text=n.text) for n in rows]

    # --- what the guild and the regulator watch ---

    async def watched(
        self, *, session: AsyncSession, staff: StaffPrincipal, province: str | None = None, status: str | None = None
    ) -> list[WatchedOffice]:
        require_role(staff, StaffRole.REGULATOR, StaffRole.GUILD)
        statuses = [OfficeStatus.RESTRICTED, OfficeStatus.BLOCKED]
        if status:
            # Only these: "active" had listed all 17,000 offices, on a page meant for a few.
            chosen = [s for s in statuses if s.value == status.strip().lower()]
            if not chosen:
                raise InvalidInput(
                    "status", "status is restricted or blocked.", detail_fa="وضعیت باید restricted یا blocked باشد."
                )
            statuses = chosen
        query = (
            select(Office, City.name_fa, Province.name_fa, Province.code)
            .join(City, City.id == Office.city_id)
            .join(Province, Province.id == City.province_id)
            .where(Office.status.in_(statuses))
            .order_by(Province.code, Office.code)
        )
        if province:
            query = query.where(in_province(province))
        rows = (await session.execute(query)).all()
        ids = [office.id for office, *_ in rows]
        if not ids:
            return []
        # The latest action in force says why the office is as it is; the first, since when:
        # restricted by the policy on the 1st and again by the regulator on the 5th, it has
        # been restricted since the 1st.
        actions: dict[int, OfficeAction] = {}
        first: dict[int, OfficeAction] = {}
        moved: Counter[int] = Counter()
        cancelled: Counter[int] = Counter()
        # The actions in force: a block lifted in January, its 500 moves with it, is the office
        # history's (``history``), not today's row.
        blocks_began: dict[int, set[dt.datetime]] = defaultdict(set)  # the blocks in force, by when
        for action in await session.scalars(
            select(OfficeAction)
            .where(OfficeAction.office_id.in_(ids), OfficeAction.lifted_at.is_(None))
            .order_by(OfficeAction.id)
        ):
            if action.kind is ActionKind.BLOCK:
                blocks_began[action.office_id].add(action.started_at)
            moved[action.office_id] += action.bookings_moved
            cancelled[action.office_id] += action.bookings_cancelled
            first.setdefault(action.office_id, action)
            actions[action.office_id] = action
        complaints: dict[int, Counter[str]] = defaultdict(Counter)
        for office_id, category, count in await session.execute(
            select(Complaint.office_id, Complaint.category, func.count())
            .where(Complaint.office_id.in_(ids))
            .group_by(Complaint.office_id, Complaint.category)
        ):
            complaints[office_id][Category(category).value] = count
        appeals: dict[int, str] = {}
        awaiting: set[int] = set()  # offices with an appeal awaiting its decision
        for appeal, action in await session.execute(
            select(Appeal, OfficeAction)
            .join(OfficeAction, OfficeAction.id == Appeal.action_id)
            .where(Appeal.office_id.in_(ids))
            .order_by(Appeal.id)
        ):
            appeals[appeal.action_id] = appeal.outcome.value
            # Against an action in force, or a restriction a block in force replaced (back when
            # the block ends); not one lifted since, which nobody will decide any more.
            replaced = action.lift_reason == REPLACED_BY_A_BLOCK and action.lifted_at in blocks_began[action.office_id]
            if appeal.outcome is AppealOutcome.PENDING and (action.lifted_at is None or replaced):
                awaiting.add(appeal.office_id)
        result = []
        for office, city_fa, province_fa, province_code in rows:
            current, since = actions.get(office.id), first.get(office.id)
            # Pending if any of the office's appeals awaits its decision, not only the latest
            # action's: the first one's had been shown nowhere once a second action was made,
            # and one against a restriction a block replaced (no longer in force, and back
            # when the block ends) while the block stood.
            appeal_state = "pending" if office.id in awaiting else appeals.get(current.id) if current else None
            result.append(
                WatchedOffice(
                    code=office.code,
                    name_fa=office.name_fa,
                    province_fa=province_fa,
                    province_code=province_code,
                    city_fa=city_fa,
                    status=office.status.value,
                    # In the offices' time, on either record: PostgreSQL's came back in UTC, and
                    # the guild's spreadsheet showed each block three and a half hours off.
                    since=self.clock.aware(since.started_at).astimezone(self.clock.tz).isoformat() if since else None,
                    reason=current.reason if current else None,
                    source=current.source if current else None,
                    cap_percent=office.cap_percent if office.status == OfficeStatus.RESTRICTED else 0,
                    complaints_by_category=dict(complaints[office.id]),
                    complaints_total=sum(complaints[office.id].values()),
                    bookings_moved=moved[office.id],
                    bookings_cancelled=cancelled[office.id],
                    appeal=appeal_state,
                )
            )
        return result

    async def history(self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str) -> list[ActionOut]:
        if staff.role is StaffRole.OFFICE_STAFF:
            require_office(staff, office_code)
        office = await self.office(session, office_code)
        actions = await session.scalars(
            select(OfficeAction).where(OfficeAction.office_id == office.id).order_by(OfficeAction.id)
        )
        return [_action_out(action, office.code) for action in actions]


CSV_COLUMNS = [
    "code", "name_fa", "province_code", "province_fa", "city_fa", "status", "since", "reason", "source",
    "cap_percent", "complaints_total", "bookings_moved", "bookings_cancelled", "appeal",
]  # fmt: skip


def watched_table(offices: list[WatchedOffice]) -> Iterator[list[object]]:
    """The guild's list as a table: the header, then a row for each office (values as they
    are; each format writes them its own way)."""
    categories = [c.value for c in Category]
    yield [*CSV_COLUMNS, *(f"complaints_{c}" for c in categories)]
    for office in offices:
        yield [getattr(office, column) for column in CSV_COLUMNS] + [
            office.complaints_by_category.get(c, 0) for c in categories
        ]


def watched_csv(offices: list[WatchedOffice]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows([_cell(value) for value in row] for row in watched_table(offices))
    # A byte-order mark so Excel opens the Persian text as UTF-8.
    return "\ufeff" + out.getvalue()


def watched_xlsx(offices: list[WatchedOffice]) -> bytes:
    """``watched_table`` as a spreadsheet, what the guild opens it in: the codes stay text
    (the CSV's office "010001" read as 10001 in Excel, its province "01" as 1), the sheet
    reads right to left, and no text someone typed is taken for a formula."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    sheet = book.create_sheet("offices")
    sheet.sheet_view.rightToLeft = True

    def cell(value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = WriteOnlyCell(sheet, value="" if value is None else str(value))
        text.data_type = "s"  # as typed: "=..." is not run, "010001" keeps its zero
        return text

    for row in watched_table(offices):
        sheet.append([cell(value) for value in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _cell(value: object) -> object:
    """A value as the guild's spreadsheet should read it: text (a reason someone typed) that
    begins as a formula would begin is kept as text, not run (OWASP's CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _action_out(action: OfficeAction, office_code: str) -> ActionOut:
    return ActionOut(
        id=action.id,
        office_code=office_code,
        kind=action.kind.value,
        reason=action.reason,
        source=action.source,
        actor=action.actor,
        cap_percent=action.cap_percent,
        started_at=action.started_at.isoformat(),
        lifted_at=action.lifted_at.isoformat() if action.lifted_at else None,
        lift_reason=action.lift_reason,
        bookings_moved=action.bookings_moved,
        bookings_cancelled=action.bookings_cancelled,
    )


def _appeal_out(appeal: Appeal, office_code: str) -> AppealOut:
    return AppealOut(
        id=appeal.id,
        action_id=appeal.action_id,
        office_code=office_code,
        text=appeal.text,
        filed_by=appeal.filed_by,
        filed_at=appeal.filed_at.isoformat(),
        outcome=appeal.outcome.value,
        decided_by=appeal.decided_by,
        decision_note=appeal.decision_note,
    )


class _MovedBeforeARecount(CapacityRebuilding):
    """A block's moves committed, then its line's cancellations met a recount begun: the
    moves (and those with no seat, cancelled with them) are counted, the line is the next
    run's."""

    def __init__(self, moved: int, unplaced: int) -> None:
        super().__init__()
        self.moved, self.unplaced = moved, unplaced


def _replaced_by(block: OfficeAction) -> Select[OfficeAction]:
    """The restrictions the block replaced, less any overturned on appeal meanwhile."""
    overturned = select(Appeal.action_id).where(Appeal.outcome == AppealOutcome.OVERTURNED)
    return select(OfficeAction).where(
        OfficeAction.office_id == block.office_id,
        OfficeAction.kind == ActionKind.RESTRICT,
        OfficeAction.lift_reason == REPLACED_BY_A_BLOCK,
        OfficeAction.lifted_at == block.started_at,
        OfficeAction.id.not_in(overturned),
    )


async def _locked(session: AsyncSession, office_id: int) -> Office:
    """The office as the record has it now, locked until the transaction ends: a status read
    earlier in the request (a complaint's, while a regulator blocked the office) must not
    decide, or a restriction could reopen a blocked office behind the block's back."""
    locked = await lock_row(session, Office, office_id)
    if locked is None:
        raise OfficeNotFound()
    return locked
