"""Complaints: filed by citizens on the web or by SMS, handled by the regulator in the seven
steps of the documents, each step announced to the complainant by SMS with the tracking
code. A confirmed violation is fined and may restrict or block the office (the policy)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import jdatetime
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.service import IDEMPOTENCY_KEY
from app.booking.tracking import new_tracking_code, normalize_tracking_code
from app.capacity.keys import NAMESPACE
from app.capacity.scripts import as_text
from app.clock import Clock
from app.complaints.errors import ComplaintInProgress, ComplaintNotFound, TooManyComplaints, TransitionNotAllowed
from app.complaints.models import (
    CATEGORY_FA,
    OPEN_STATES,
    STATE_FA,
    TRANSITIONS,
    Category,
    Complaint,
    ComplaintStep,
    State,
)
from app.complaints.schemas import ComplaintOut, QueueItem, StepOut
from app.db import lock_row, read_until
from app.enforcement.models import Fine, OfficeNotice
from app.enforcement.policy import Policy, Verdict, next_fine
from app.enforcement.service import MAX_TEXT, Enforcement
from app.errors import IdempotencyKeyReused, InvalidInput
from app.locale import check_range, check_text, normalize_paragraphs, to_persian_digits
from app.offices.models import City, Office, Province
from app.offices.service import in_province
from app.ratelimit import RateLimiter
from app.sms.service import Messenger
from app.staff.models import StaffRole
from app.staff.service import StaffPrincipal, audit, require_role

MAX_DESCRIPTION = 2000
MAX_INSPECTOR = 120  # the column's length
MAX_PAGE = 100
MAX_OFFSET = 1_000_000

FORM_KEY_SECONDS = 24 * 3600
"""How long a form's key remembers the complaint it filed (``Complaints.file``)."""
FORM_CLAIM_SECONDS = 60
"""How long a form's key is held by a send still filing it: one that died before the record
answered frees the form within this."""
FIRST_SEND_WAIT_SECONDS = 1.0
"""How long a second send of a form waits for the first one's complaint to be committed."""


# In one step: the complaint code an earlier send of the form took its key for, else none,
# and the key is this send's now.
_CLAIM_FORM = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Only this send's claim: a later send's, taken after this one's lapsed, stays.
_LET_GO_OF_FORM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

log = logging.getLogger(__name__)


class Complaints:
    def __init__(
        self,
        *,
        enforcement: Enforcement,
        messenger: Messenger,
        clock: Clock,
        policy: Policy,
        response_hours: int,
        limiter: RateLimiter,
        per_mobile: str,
    ) -> None:
        self.enforcement = enforcement
        self.messenger = messenger
        self.clock = clock
        self.policy = policy
        self.response_hours = response_hours
        self.limiter = limiter
        self.per_mobile = per_mobile  # NOBAT_COMPLAINTS_PER_MOBILE
        self.redis = enforcement.capacity.redis  # the forms' keys

    async def file(
        self,
        *,
        session: AsyncSession,
        mobile: str,
        office_code: str,
        category: str,
        description: str,
        booking_tracking_code: str | None,
        channel: str,
        form_key: str | None = None,
    ) -> ComplaintOut:
        """File a complaint. ``form_key``, the web form's own key (the API's Idempotency-Key, an
        SMS's message id): the same form sent again (a double tap, a resend after a slow
        answer) is answered with the complaint it filed, not filed twice (with a second
        tracking code, SMS and place in the queue)."""
        kind = _category(category)
        # Control characters refused before whitespace is folded; the length is checked after.
        too_long = InvalidInput(
            "description",
            f"Describe what happened in 5 to {MAX_DESCRIPTION} characters.",
            detail_fa=f"شرح ماجرا نباید بیش از {to_persian_digits(str(MAX_DESCRIPTION))} نویسه باشد.",
        )
        if len(description) > 4 * MAX_DESCRIPTION:  # not worth folding
            raise too_long
        text = normalize_paragraphs(
            check_text(description, "description", max_length=4 * MAX_DESCRIPTION, multiline=True, label_fa="شرح ماجرا")
        )
        if len(text) > MAX_DESCRIPTION:
            raise too_long
        if len(text) < 5:
            raise InvalidInput(
                "description",
                f"Describe what happened in 5 to {MAX_DESCRIPTION} characters.",
                detail_fa="شرح ماجرا را بنویسید (دست‌کم ۵ نویسه).",
            )
        booking_code = normalize_tracking_code(booking_tracking_code) if booking_tracking_code else None
        office = await self.enforcement.office(session, office_code)
        now = self.clock.now()
        complaint = Complaint(
            tracking_code=new_tracking_code(),
            office_id=office.id,
            category=kind,
            description=text,
            booking_tracking_code=booking_code,
            mobile=mobile,
            channel=channel,
            state=State.RECEIVED,
            created_at=now,
            updated_at=now,
        )
        form = _form(mobile, form_key)
        # The claim names the complaint and what was sent: the key again with anything else
        # (another office, category, text or booking: a page edited after it was sent, or a
        # client's mistake) is refused; answered with the first, the second would be lost.
        sent = _fingerprint(office.code, kind, text, booking_code)
        claim = f"{complaint.tracking_code}|{sent}"
        if form is not None and (earlier := await self._claim_form(form, claim)):
            earlier_code, _, earlier_sent = earlier.partition("|")
            if earlier_sent and earlier_sent != sent:  # none: claimed before sends were recorded
                raise IdempotencyKeyReused(
                    f"This key already filed another complaint ({earlier_code}); "
                    "send this one with a new key to file it too.",
                    detail_fa=f"این فرم پیش‌تر با نوشته‌های دیگری فرستاده شد و آن شکایت با کد "
                    f"{earlier_code} ثبت شده است. برای ثبت این یکی، دوباره بفرستید.",
                )
            return await self._filed_by_form(session, earlier_code, mobile)
        taken = committing = False
        try:
            # Taken once a complaint is to be filed (a resend of one filed is answered above),
            # and given back if it is not: the limit counts complaints filed, not tries (one
            # whose commit failed, tried again by the SMS job each minute, had used it up).
            # Redis away, it is filed all the same, as a resend is (``_claim_form``).
            try:
                wait = await self.limiter.take("complaint", mobile, self.per_mobile)
            except RedisError:
                log.warning("a complaint filed without its mobile's limit counted: Redis did not answer")
                wait = 0
            else:
                taken = not wait
            if wait:
                raise TooManyComplaints(wait)
            # Before the first write: a slow Redis would hold the transaction's locks.
            await self.enforcement.policy_to_apply(office.id)
            session.add(complaint)
            await session.flush()
            session.add(
                ComplaintStep(
                    complaint_id=complaint.id, at=now, from_state=None, to_state=State.RECEIVED, actor=mobile[-4:]
                )
            )
            self.messenger.queue(
                session,
                to=mobile,
                body=f"شکایت شما از {office.name_fa} ثبت شد. کد رهگیری: {complaint.tracking_code}. "
                f"نتیجهٔ هر مرحله با همین کد پیامک می‌شود.",
                kind="complaint_step",
            )
            committing = True
            await session.commit()
        except BaseException:
            # A commit that raised may have landed (its answer lost): the form's claim is then
            # kept, to lapse in FORM_CLAIM_SECONDS, and a resend meanwhile waits for it or is
            # told it is in progress. Let go, a resend of the form (the 503 page keeps its key)
            # filed the complaint a second time. (The count goes back either way: one more
            # complaint than the limit, at worst, rather than a limit used up by failures.)
            if form is not None and not committing:
                await self._let_go_of_form(form, claim)  # nothing filed: it may be sent again
            if taken:
                try:
                    await self.limiter.give_back("complaint", mobile)
                except RedisError:
                    log.warning("a complaint not filed keeps its mobile's count: Redis did not answer")
            raise
        if form is not None:
            await self._filed_form(form, claim)
        await self._apply_policy(session, office, complaint)
        return await self._out(session, complaint)

    async def _claim_form(self, form: str, claim: str) -> str | None:
        """The claim ("tracking code|what was sent") of an earlier send of the form, filing or
        filed, or None: the form is this send's now. (Redis away, the complaint is filed all the same: a
        complaint filed twice is better than one refused.)"""
        try:
            earlier = await self.redis.eval(_CLAIM_FORM, 1, form, claim, FORM_CLAIM_SECONDS)
        except RedisError:
            log.warning("a complaint form's key was not checked: Redis did not answer")
            return None
        return as_text(earlier) if earlier else None

    async def _filed_form(self, form: str, claim: str) -> None:
        """The complaint is in the record: the form's key answers with it for a day."""
        try:
            await self.redis.set(form, claim, ex=FORM_KEY_SECONDS)
        except RedisError:
            log.warning("a complaint form's key lapses in %s s: Redis did not answer", FORM_CLAIM_SECONDS)

    async def _let_go_of_form(self, form: str, claim: str) -> None:
        try:
            await self.redis.eval(_LET_GO_OF_FORM, 1, form, claim)
        except RedisError:
            log.warning("a complaint form's key lapses in %s s: Redis did not answer", FORM_CLAIM_SECONDS)

    async def _filed_by_form(self, session: AsyncSession, tracking_code: str, mobile: str) -> ComplaintOut:
        """The complaint an earlier send of the form filed, waited for a moment
        (``FIRST_SEND_WAIT_SECONDS``): that send may not have committed it yet."""

        async def filed() -> ComplaintOut | None:
            try:
                return await self.for_complainant(session=session, tracking_code=tracking_code, mobile=mobile)
            except ComplaintNotFound:
                return None

        complaint = await read_until(session, filed, FIRST_SEND_WAIT_SECONDS)
        if complaint is None:
            raise ComplaintInProgress()
        return complaint

    async def _apply_policy(self, session: AsyncSession, office: Office, complaint: Complaint) -> None:
        """The policy, once the complaint (or its step) is committed. Its failure (Redis or the
        record away a moment) must not fail the request: the complaint is in the record, and
        a citizen who retried would file it twice (an SMS's delivery is retried by itself).
        The minute's job applies it then, as it does if this process dies first: the office
        was noted before the commit (Enforcement.policy_to_apply)."""
        code, office_id = office.code, office.id  # a rollback expires the rows
        try:
            verdict = await self.enforcement.evaluate(session, office)
        except Exception:
            await session.rollback()
            # Noted again: the minute's job may have taken the note between it and the commit,
            # and weighed the office without this complaint (uncommitted then).
            await self.enforcement.policy_to_apply(office_id)
            log.warning("the policy for office %s is left to the minute's job", code, exc_info=True)
            verdict = None
        if verdict is not Verdict.NONE:
            await session.refresh(complaint)  # a rollback (a block's moves refused half-way) expired it

    async def sms_complaint(
        self, session: AsyncSession, mobile: str, office_code: str, text: str, key: str
    ) -> str | None:
        """The SMS channel's `شکایت` command: filed as "other", with the citizen's words;
        ``key``, the message's, files it once however often it is delivered."""
        await self.file(
            session=session,
            mobile=mobile,
            office_code=office_code,
            category=Category.OTHER.value,
            description=text,
            booking_tracking_code=None,
            channel="sms",
            form_key=key,
        )
        return None  # filing sends its own SMS with the tracking code

    async def for_complainant(self, *, session: AsyncSession, tracking_code: str, mobile: str) -> ComplaintOut:
        complaint = await self._get(session, tracking_code)
        if complaint.mobile != mobile:
            # The same answer as an unknown code: a complaint is nobody else's business.
            raise ComplaintNotFound()
        return await self._out(session, complaint)

    async def for_regulator(self, *, session: AsyncSession, staff: StaffPrincipal, tracking_code: str) -> ComplaintOut:
        require_role(staff, StaffRole.REGULATOR)
        return await self._out(session, await self._get(session, tracking_code))

    async def queue(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        state: str | None,
        overdue: bool | None,
        province: str | None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[QueueItem]:
        require_role(staff, StaffRole.REGULATOR)
        check_range(limit, "limit", minimum=1, maximum=MAX_PAGE)
        check_range(offset, "offset", minimum=0, maximum=MAX_OFFSET)
        query = (
            select(Complaint, Office.code, Office.name_fa, Province.name_fa)
            .join(Office, Office.id == Complaint.office_id)
            .join(City, City.id == Office.city_id)
            .join(Province, Province.id == City.province_id)
            # One order (the id breaks ties): pages neither repeat nor skip a complaint.
            .order_by(Complaint.overdue.desc(), Complaint.created_at, Complaint.id)
            .limit(limit)
            .offset(offset)
        )
        if state:
            try:
                query = query.where(Complaint.state == State(state))
            except ValueError:
                raise InvalidInput("state", "Unknown state.", detail_fa="وضعیت معتبر نیست.") from None
        else:
            # The open ones named, not the closed ones excluded: the index on the state reads
            # only these, where "not closed" read every complaint ever filed, kept for good.
            query = query.where(Complaint.state.in_(OPEN_STATES))
        if overdue is not None:
            query = query.where(Complaint.overdue == overdue)
        if province:
            query = query.where(in_province(province))  # «۰۱» as 01, as the registry's search reads it
        rows = await session.execute(query)
        return [
            QueueItem(
                tracking_code=c.tracking_code,
                office_code=code,
                office_name_fa=name,
                province_fa=province_fa,
                category=c.category.value,
                state=c.state.value,
                created_at=c.created_at.isoformat(),
                overdue=c.overdue,
                next_states=[s.value for s in TRANSITIONS[c.state]],
            )
            for c, code, name, province_fa in rows
        ]

    async def transition(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        tracking_code: str,
        to: str,
        note: str,
        inspector: str | None,
        category: str | None = None,
    ) -> ComplaintOut:
        """Move the complaint to its next step. ``category``: the regulator's correction of
        what the complaint is about, up to the step that confirms the violation (the fine
        and the policy go by it then). A complaint texted in is filed as "other" and could
        never have counted as the forgery it reported."""
        require_role(staff, StaffRole.REGULATOR)
        check_text(note, "note", max_length=MAX_TEXT, multiline=True, label_fa="یادداشت")
        if inspector:
            check_text(inspector.strip(), "inspector", max_length=MAX_INSPECTOR, label_fa="بازرس")
        complaint = await self._get(session, tracking_code, lock=True)
        if not to.strip():
            if not TRANSITIONS[complaint.state]:  # ended meanwhile: that, not "choose a step"
                raise TransitionNotAllowed(current=complaint.state.value, allowed=[])
            raise InvalidInput("to", "Choose the next step.", detail_fa="مرحلهٔ بعد را انتخاب کنید.")
        try:
            target = State(to)
        except ValueError:
            raise InvalidInput("to", "Unknown state.", detail_fa="مرحلهٔ معتبر نیست.") from None
        if target not in TRANSITIONS[complaint.state]:
            raise TransitionNotAllowed(
                current=complaint.state.value, allowed=[s.value for s in TRANSITIONS[complaint.state]]
            )
        corrected = _category(category) if category else None
        if corrected is not None and corrected is not complaint.category and complaint.state not in RECATEGORIZABLE:
            raise InvalidInput(
                "category",
                "The category is set up to the confirmation of the violation.",
                detail_fa="دستهٔ شکایت را فقط تا پیش از احراز تخلف می‌توان تغییر داد.",
            )
        if target is State.INSPECTOR_ASSIGNED and not (inspector or "").strip():
            raise InvalidInput("inspector", "Name the inspector.", detail_fa="نام بازرس را بنویسید.")

        if target is State.VIOLATION_CONFIRMED:
            # A confirmed violation may block the office, whose bookings are then moved: that
            # must not race a recount of the counters, and must not be left half done by one.
            self.enforcement.capacity.require_ready()
            # Noted before the office is locked (a slow Redis then held its lock), and before
            # the commit, for the minute's job to apply if this request cannot.
            await self.enforcement.policy_to_apply(complaint.office_id)
        now = self.clock.now()
        before = complaint.state
        if corrected is not None and corrected is not complaint.category:
            await audit(
                session, actor=staff, action="complaint.category", target=complaint.tracking_code,
                office_id=complaint.office_id, before=complaint.category.value, after=corrected.value, at=now,
            )  # fmt: skip
            complaint.category = corrected
        complaint.state, complaint.updated_at = target, now
        if complaint.first_response_at is None:
            # Answered: no longer overdue, so it leaves the head of the queue (the lateness
            # stays on the record in created_at and first_response_at).
            complaint.first_response_at, complaint.overdue = now, False
        if target is State.INSPECTOR_ASSIGNED:  # a name sent with any other step is not an assignment
            complaint.inspector = (inspector or "").strip()
        session.add(
            ComplaintStep(
                complaint_id=complaint.id,
                at=now,
                from_state=before.value,
                to_state=target.value,
                actor=staff.username,
                note=note,
            )
        )
        await audit(
            session, actor=staff, action="complaint.transition", target=complaint.tracking_code,
            office_id=complaint.office_id, before=before.value, after=target.value, at=now,
        )  # fmt: skip
        # Locked before the fines so far are read: two of the office's complaints confirmed at
        # once must each see the other's fine (100M, then 200M), not both be "the first".
        office = await lock_row(session, Office, complaint.office_id)
        assert office is not None
        extra = ""
        if target is State.VIOLATION_CONFIRMED:
            amount = await self._fine(session, complaint, now)
            if amount:
                extra = f" جریمهٔ {to_persian_digits(f'{amount:,}')} ریال ثبت شد."
                # The office is told too (its notices page): only the complainant had been.
                text = f"تخلف «{CATEGORY_FA[complaint.category]}» در پی شکایت یک شهروند تأیید شد.{extra}"
                session.add(OfficeNotice(office_id=complaint.office_id, at=now, text=text))
        self.messenger.queue(
            session,
            to=complaint.mobile,
            body=f"شکایت {complaint.tracking_code}: {STATE_FA[target]}.{extra} {_sms_note(note)}".strip(),
            kind="complaint_step",
        )
        await session.commit()
        if target is State.VIOLATION_CONFIRMED:
            await self._apply_policy(session, office, complaint)
        return await self._out(session, complaint)

    async def _fine(self, session: AsyncSession, complaint: Complaint, now: dt.datetime) -> int:
        year = jdatetime.date.fromgregorian(date=now.date()).year
        previous = list(
            await session.scalars(
                select(Fine.amount_rials)
                .where(
                    Fine.office_id == complaint.office_id,
                    Fine.obligation == complaint.category.value,
                    Fine.year == year,
                )
                .order_by(Fine.id)
            )
        )
        amount = next_fine(previous, policy=self.policy)
        if amount:
            session.add(
                Fine(
                    office_id=complaint.office_id,
                    complaint_id=complaint.id,
                    obligation=complaint.category.value,
                    year=year,
                    amount_rials=amount,
                    at=now,
                )
            )
        return amount

    async def flag_overdue(self, *, session: AsyncSession) -> int:
        """Complaints still waiting for a first response after the promised hours."""
        deadline = self.clock.now() - dt.timedelta(hours=self.response_hours)
        # One UPDATE, its conditions checked on each row as it is written. The rows read, then
        # written back at the commit, had flagged a complaint the regulator answered meanwhile
        # (``transition`` clears the flag): under review, overdue and first in the queue for ever.
        flagged = await session.execute(
            update(Complaint)
            .where(
                Complaint.state == State.RECEIVED,
                Complaint.first_response_at.is_(None),
                Complaint.overdue.is_(False),
                Complaint.created_at < deadline,
            )
            .values(overdue=True)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return int(flagged.rowcount)  # type: ignore[attr-defined]

    async def _get(self, session: AsyncSession, tracking_code: str, *, lock: bool = False) -> Complaint:
        """``lock``: until the transaction ends, so that two regulators' steps at once (a
        double click) are one step and a 409, not two steps, two fines and two messages."""
        complaint = await session.scalar(
            select(Complaint).where(Complaint.tracking_code == normalize_tracking_code(tracking_code))
        )
        if complaint is not None and lock:
            complaint = await lock_row(session, Complaint, complaint.id)
        if complaint is None:
            raise ComplaintNotFound()
        return complaint

    async def _out(self, session: AsyncSession, complaint: Complaint) -> ComplaintOut:
        office = await session.get(Office, complaint.office_id)
        assert office is not None
        steps = await session.scalars(
            select(ComplaintStep).where(ComplaintStep.complaint_id == complaint.id).order_by(ComplaintStep.id)
        )
        return ComplaintOut(
            tracking_code=complaint.tracking_code,
            office_code=office.code,
            office_name_fa=office.name_fa,
            category=complaint.category.value,
            category_fa=CATEGORY_FA[complaint.category],
            description=complaint.description,
            state=complaint.state.value,
            state_fa=STATE_FA[complaint.state],
            created_at=complaint.created_at.isoformat(),
            overdue=complaint.overdue,
            steps=[
                StepOut(
                    at=step.at.isoformat(), state=step.to_state, state_fa=STATE_FA[State(step.to_state)], note=step.note
                )
                for step in steps
            ],
        )


RECATEGORIZABLE = (State.RECEIVED, State.UNDER_REVIEW, State.INSPECTOR_ASSIGNED, State.INSPECTION_REPORTED)
"""The steps whose complaint's category the regulator may correct: before a violation is
confirmed, and fined by it."""


def _category(value: str) -> Category:
    try:
        return Category(value)
    except ValueError:
        raise InvalidInput(
            "category",
            "Unknown category; one of: " + ", ".join(c.value for c in Category),
            detail_fa="دستهٔ شکایت معتبر نیست.",
        ) from None


def _fingerprint(office_code: str, category: Category, text: str, booking_code: str | None) -> str:
    """What a complaint form sent, in 32 characters: the same form sent again has the same."""
    sent = "\x1f".join((office_code, category.value, text, booking_code or ""))
    return hashlib.blake2b(sent.encode(), digest_size=16).hexdigest()


def _form(mobile: str, form_key: str | None) -> str | None:
    """The Redis key of a complaint form sent by this mobile; None without a form key, or
    with one no form of ours made (a hand-made request), filed as it is."""
    if form_key is None or not IDEMPOTENCY_KEY.fullmatch(form_key):
        return None
    return f"{NAMESPACE}:complaint-form:{mobile}:{form_key}"


SMS_NOTE_CHARS = 300
"""Of a step's note, what its SMS carries. A note may run to MAX_TEXT (2,000) characters, and
the provider refuses a message over 1,600 (Twilio's error 21617): the complainant had been
told nothing of that step, after every retry."""


def _sms_note(note: str) -> str:
    if len(note) <= SMS_NOTE_CHARS:
        return note
    return note[: SMS_NOTE_CHARS - 1].rstrip() + "… (متن کامل در صفحهٔ پیگیری شکایت)"
