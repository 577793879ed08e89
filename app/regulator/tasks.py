"""Periodic job of the regulator domain."""

from __future__ import annotations

from app.sms.tasks import run_alone


def finish_closures() -> int:
    """Move the bookings a closure left at its offices (app.regulator.service.finish_closures)."""
    return run_alone("finish-closures", lambda app, session: app.regulator.finish_closures(session=session))
