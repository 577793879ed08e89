"""Periodic job of the regulator domain."""

from __future__ import annotations

from app.sms.tasks import run_in_session


def finish_closures() -> int:
    """Move the bookings a closure left at its offices (app.regulator.service.finish_closures)."""
    return run_in_session(lambda app, session: app.regulator.finish_closures(session=session))
