from __future__ import annotations

import msgspec

from app.staff.models import StaffRole


class StaffLogin(msgspec.Struct):
    username: str
    password: str


class StaffSessionOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    role: StaffRole
    office_code: str | None
    username: str


class StaffMe(msgspec.Struct):
    username: str
    role: StaffRole
    office_code: str | None
