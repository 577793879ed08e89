"""Demo accounts, so the staff, regulator and guild pages can be tried on a fresh start."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.staff.models import StaffAccount, StaffRole
from app.staff.service import StaffAuth


async def ensure_demo_accounts(
    session: AsyncSession, staff: StaffAuth, office_codes: list[str]
) -> list[tuple[str, str, str]]:
    """Create the demo accounts that are missing (not committed): ``staff-CODE`` for each office
    given, ``regulator`` and ``guild``. Returns (username, password, office code or role) for
    every one of them, to print. Each new account costs one argon2 hash (~0.1 s): give a few
    offices, not the whole network."""
    wanted: list[tuple[str, str, StaffRole, str | None]] = [
        (f"staff-{code}".lower(), f"demo-{code}-pass", StaffRole.OFFICE_STAFF, code) for code in office_codes
    ]
    wanted.append(("regulator", "regulator-demo-pass", StaffRole.REGULATOR, None))
    wanted.append(("guild", "guild-demo-pass", StaffRole.GUILD, None))
    existing = set(
        await session.scalars(select(StaffAccount.username).where(StaffAccount.username.in_([w[0] for w in wanted])))
    )
    rows: list[tuple[str, str, str]] = []
    for username, password, role, office_code in wanted:
        if username not in existing:
            await staff.create_account(
                session=session, username=username, password=password, role=role, office_code=office_code
            )
        rows.append((username, password, office_code or role.value))
    return rows
