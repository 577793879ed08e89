"""Periodic job of the regulator domain."""

from __future__ import annotations

from app.sms.tasks import run_alone


def finish_closures() -> int:
    """Move the bookings a closure, or an official holiday new to the calendar, left at its offices
    (app.regulator.service.finish_closures)."""
    return run_alone("finish-closures", lambda app, session: app.regulator.finish_closures(session=session))


def finish_caps() -> int:
    """Tell the counters of the crowd caps whose request could not (app.capacity.crowd_caps.finish)."""
    return run_alone("finish-caps", lambda app, session: app.regulator.finish_caps(session=session))
