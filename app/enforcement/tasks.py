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


def apply_policy() -> int:
    """Apply the policy to the offices whose complaint's request could not
    (app.enforcement.service.apply_policy)."""
    return run_alone("apply-policy", lambda app, session: app.enforcement.apply_policy(session=session))
