"""Periodic job of the enforcement domain."""

from __future__ import annotations

from app.sms.tasks import run_alone


def finish_blocks() -> int:
    """Move the bookings a block left at its office (app.enforcement.service.finish_blocks)."""
    return run_alone("finish-blocks", lambda app, session: app.enforcement.finish_blocks(session=session))


def push_statuses() -> int:
    """Tell the counters every restricted, blocked or lately lifted office's status again
    (app.enforcement.service.push_statuses)."""
    return run_alone("push-statuses", lambda app, session: app.enforcement.push_statuses(session=session))
