"""The guild's and the regulator's pages: restricted and blocked offices (table, map, CSV),
an office's history with restrict/block/lift, and the regulator's complaint queue."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template

from app.complaints.models import CATEGORY_FA, STATE_FA, TRANSITIONS, Category, State
from app.complaints.service import MAX_OFFSET as MAX_QUEUE_OFFSET
from app.complaints.service import RECATEGORIZABLE
from app.enforcement.models import ActionKind
from app.errors import DomainError, Forbidden, InvalidInput, NotFound
from app.locale import MAX_ID, parse_int
from app.offices import service as offices
from app.pages import iran_map
from app.pages.render import (
    OFFICE_STATUS_FA,
    Form,
    check_csrf,
    form_errors,
    render,
    require_staff,
    see_other,
    to_int,
)
from app.staff.models import StaffRole
from app.staff.service import StaffPrincipal
from app.web import Deps, Session

ACTIONS = ("restrict", "block", "lift")
QUEUE_PAGE = 50
"""Complaints a page of the regulator's queue shows."""
WATCH_PAGE = 100
"""Offices a page of the watch list shows: the country's thousands, restricted over a bad
month, had made one page of megabytes, each row with its reason (up to 2,000 letters)."""


def _province_options() -> list[tuple[str, str]]:
    return sorted(((p.name_en, p.name_fa) for p in iran_map.provinces()), key=lambda option: option[1])


class WatchPages(Controller):
    path = "/watch"
    include_in_schema = False

    @get("/")
    async def offices(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        province: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        page: FromQuery[str] = "1",
    ) -> Template:
        staff = await require_staff(request, container)
        errors: dict[str, str] = {}
        number = parse_int(page, "page", minimum=1, maximum=1_000_000)
        try:
            watched = await container.enforcement.watched(
                session=session, staff=staff, province=province or None, status=status or None
            )
            # The map shows every province (the status filter applies, the province one does not).
            nationwide = (
                watched
                if not province
                else await container.enforcement.watched(session=session, staff=staff, status=status or None)
            )
        except InvalidInput as error:
            errors = form_errors(error, ["province", "status"])
            number = 1
            watched = nationwide = await container.enforcement.watched(session=session, staff=staff)
        counts = Counter(office.province_fa for office in nationwide)
        query = urlencode({k: v for k, v in {"province": province, "status": status}.items() if v})
        last = max(1, -(-len(watched) // WATCH_PAGE))
        number = min(number, last)

        kept = {name: value for name, value in {"province": province, "status": status}.items() if value and not errors}

        def page_link(to: int) -> str:
            return "/watch?" + urlencode({**kept, "page": to})

        return render(
            request,
            container,
            "watch/offices.html",
            status=422 if errors else 200,
            staff=staff,
            watched=watched[(number - 1) * WATCH_PAGE : number * WATCH_PAGE],
            watched_total=len(watched),
            page=number,
            previous_page=page_link(number - 1) if number > 1 else None,
            next_page=page_link(number + 1) if number < last else None,
            markers=iran_map.markers(dict(counts)),
            map_width=iran_map.WIDTH,
            map_height=iran_map.HEIGHT,
            outline=iran_map.outline_points(),
            province_options=_province_options(),
            status_options=[("restricted", OFFICE_STATUS_FA["restricted"]), ("blocked", OFFICE_STATUS_FA["blocked"])],
            csv_url="/api/v1/guild/offices.csv" + (f"?{query}" if query else ""),
            xlsx_url="/api/v1/guild/offices.xlsx" + (f"?{query}" if query else ""),
            category_fa={c.value: label for c, label in CATEGORY_FA.items()},
            errors=errors,
            form={"province": province or "", "status": status or ""},
        )

    @get("/office")
    async def find_office(
        self, request: Request[Any, Any, Any], container: Deps, code: FromQuery[str | None] = None
    ) -> Redirect:
        """The "go to an office" form of the watch list."""
        await require_staff(request, container)
        return see_other(f"/watch/offices/{(code or '').strip()}" if (code or "").strip() else "/watch")

    async def _office_page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        *,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Template:
        if staff.role is StaffRole.OFFICE_STAFF:
            raise Forbidden(detail_fa="این صفحه برای کانون و نهاد ناظر است.")
        detail = await offices.get_office(session=session, code=code)
        history = await container.enforcement.history(session=session, staff=staff, office_code=detail.code)
        appeals = await container.enforcement.appeals(session=session, staff=staff, office_code=detail.code)
        return render(
            request,
            container,
            "watch/office.html",
            status=status,
            staff=staff,
            office=detail,
            history=history,
            appeals={appeal.action_id: appeal for appeal in appeals},
            lift_restores=await container.enforcement.lift_restores(session=session, office_code=detail.code),
            errors=errors or {},
            form=form or {"restrict_cap": str(container.settings.restricted_cap_percent)},
        )

    async def _refused(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        error: DomainError,
        errors: dict[str, str],
        data: dict[str, str],
    ) -> Template:
        """The office's page again, a form's refusal (``errors``) shown, what was typed kept."""
        await session.rollback()
        return await self._office_page(
            request, session, container, staff, code, errors=errors, form=dict(data), status=error.status
        )

    @get("/offices/{code:str}")
    async def office(
        self, code: FromPath[str], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template:
        staff = await require_staff(request, container)
        return await self._office_page(request, session, container, staff, code)

    @post("/offices/{code:str}/{action:str}")
    async def act(
        self,
        code: FromPath[str],
        action: FromPath[str],
        data: Form,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
    ) -> Template | Redirect:
        # Signed in first, as every form's check (app.pages.citizen): a sign-in that ended while
        # the form was open asks for a sign-in, not "form expired".
        staff = await require_staff(request, container, back=f"/watch/offices/{code}")
        check_csrf(request, container, data)
        if action not in ACTIONS:
            raise Forbidden("Unknown action.", detail_fa="چنین کاری تعریف نشده است.")
        reason = data.get(f"{action}_reason", "")
        try:
            if action == "lift":
                await container.enforcement.lift(
                    session=session, staff=staff, office_code=code, reason=reason, seen=data.get("lift_seen") or None
                )
            else:
                cap = data.get("restrict_cap", "").strip() if action == "restrict" else ""
                await container.enforcement.decide(
                    session=session,
                    staff=staff,
                    office_code=code,
                    kind=ActionKind.RESTRICT if action == "restrict" else ActionKind.BLOCK,
                    reason=reason,
                    cap=to_int(cap, "restrict_cap", "سقف را به درصد بنویسید.") if cap else None,
                )
        except DomainError as error:
            fields, aliases = [f"{action}_reason", "restrict_cap"], {"reason": f"{action}_reason"}
            errors = form_errors(error, fields, aliases, top=f"{action}_top")
            return await self._refused(request, session, container, staff, code, error, errors, data)
        notice = {"restrict": "restricted", "block": "blocked", "lift": "lifted"}[action]
        return see_other(f"/watch/offices/{code}?notice={notice}")

    @post("/offices/{code:str}/appeals/{appeal_id:str}")
    async def decide_appeal(
        self,
        code: FromPath[str],
        appeal_id: FromPath[str],
        data: Form,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
    ) -> Template | Redirect:
        """The regulator's decision on an office's appeal, from the office's page, where the
        action appealed against is shown beside it."""
        staff = await require_staff(request, container, back=f"/watch/offices/{code}")
        check_csrf(request, container, data)
        number = parse_int(appeal_id, "appeal_id", minimum=1, maximum=MAX_ID)
        note = f"note_{number}"
        try:
            decided = await container.enforcement.decide_appeal(
                session=session,
                staff=staff,
                appeal_id=number,
                outcome=data.get("outcome", ""),
                note=data.get(note, ""),
                office_code=code,  # another office's appeal: decided from its own page only
            )
        except DomainError as error:
            errors = form_errors(error, [note], {"note": note}, top=f"appeal_{number}_top")
            return await self._refused(request, session, container, staff, code, error, errors, data)
        return see_other(f"/watch/offices/{code}?notice=appeal_{decided.outcome}")

    # --- the regulator's complaint queue ---

    @get("/complaints")
    async def complaints(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        step: Annotated[str | None, QueryParameter(name="state")] = None,
        overdue: FromQuery[str | None] = None,
        province: FromQuery[str | None] = None,
        page: FromQuery[str] = "1",
    ) -> Template:
        state = step  # `state` is a name Litestar reserves for handler parameters
        staff = await require_staff(request, container)
        errors: dict[str, str] = {}
        # In pages: the queue had shown its first 100 and said nothing of the rest.
        number = parse_int(page, "page", minimum=1, maximum=MAX_QUEUE_OFFSET // QUEUE_PAGE)
        try:
            queue = await container.complaints.queue(
                session=session,
                staff=staff,
                state=state or None,
                overdue=True if overdue == "on" else None,
                province=province or None,
                limit=QUEUE_PAGE + 1,  # one more: whether a next page has any
                offset=(number - 1) * QUEUE_PAGE,
            )
        except InvalidInput as error:
            errors = form_errors(error, ["state"])
            number = 1
            queue = await container.complaints.queue(
                session=session, staff=staff, state=None, overdue=None, province=None, limit=QUEUE_PAGE + 1
            )
        filters = {"state": state or "", "overdue": overdue or "", "province": province or ""}
        kept = {name: value for name, value in filters.items() if value and not errors}

        def page_link(to: int) -> str:
            return "/watch/complaints?" + urlencode({**kept, "page": to})

        return render(
            request,
            container,
            "watch/complaints.html",
            status=422 if errors else 200,
            staff=staff,
            queue=queue[:QUEUE_PAGE],
            page=number,
            previous_page=page_link(number - 1) if number > 1 else None,
            next_page=page_link(number + 1) if len(queue) > QUEUE_PAGE else None,
            state_options=[(s.value, label) for s, label in STATE_FA.items()],
            province_options=[(name_fa, name_fa) for _, name_fa in _province_options()],
            state_fa={s.value: label for s, label in STATE_FA.items()},
            category_fa={c.value: label for c, label in CATEGORY_FA.items()},
            response_hours=container.settings.complaint_response_hours,  # NOBAT_COMPLAINT_RESPONSE_HOURS
            errors=errors,
            form=filters,
        )

    async def _complaint_page(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        container: Deps,
        staff: StaffPrincipal,
        code: str,
        *,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> Template:
        complaint = await container.complaints.for_regulator(session=session, staff=staff, tracking_code=code)
        return render(
            request,
            container,
            "watch/complaint.html",
            status=status,
            staff=staff,
            complaint=complaint,
            next_states=[(s.value, STATE_FA[s]) for s in TRANSITIONS[State(complaint.state)]],
            # Corrected up to the confirmation: the fine and the policy go by it then.
            categories=[(c.value, CATEGORY_FA[c]) for c in Category]
            if State(complaint.state) in RECATEGORIZABLE
            else [],
            errors=errors or {},
            form=form or {},
        )

    @get("/complaints/{code:str}")
    async def complaint(
        self, code: FromPath[str], request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template:
        staff = await require_staff(request, container)
        return await self._complaint_page(request, session, container, staff, code)

    @post("/complaints/{code:str}/transition")
    async def transition(
        self, code: FromPath[str], data: Form, request: Request[Any, Any, Any], session: Session, container: Deps
    ) -> Template | Redirect:
        staff = await require_staff(request, container, back=f"/watch/complaints/{code}")
        check_csrf(request, container, data)
        try:
            complaint = await container.complaints.transition(
                session=session,
                staff=staff,
                tracking_code=code,
                to=data.get("to", ""),
                note=data.get("note", "").strip(),
                inspector=data.get("inspector") or None,
                category=data.get("category") or None,
            )
        except NotFound:
            raise
        except DomainError as error:
            await session.rollback()
            return await self._complaint_page(
                request,
                session,
                container,
                staff,
                code,
                errors=form_errors(error, ["to", "note", "inspector", "category"]),
                form=dict(data),
                status=error.status,
            )
        return see_other(f"/watch/complaints/{complaint.tracking_code}?notice=transition")
