"""Periodic job of the console domain."""

from __future__ import annotations

from app.sms.tasks import run_in_session


def finish_plans() -> int:
    """Apply the clerks' plan changes their request did not see through
    (app.console.service.Console.finish_plans). The offices done."""
    return run_in_session(lambda app, session: app.console.finish_plans(session=session))
