"""Periodic job of the enforcement domain."""

from __future__ import annotations

from app.sms.tasks import run_in_session


def finish_blocks() -> int:
    """Move the bookings a block left at its office (app.enforcement.service.finish_blocks)."""
    return run_in_session(lambda app, session: app.enforcement.finish_blocks(session=session))
