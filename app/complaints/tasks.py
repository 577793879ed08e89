"""Periodic job of the complaints domain."""

from __future__ import annotations

from app.sms.tasks import run_in_session


def flag_overdue() -> int:
    """Flag complaints with no first response within the promised hours (72 by default)."""
    return run_in_session(lambda app, session: app.complaints.flag_overdue(session=session))
