"""The one place that asks what time it is in Iran (tests move it)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


class Clock:
    def __init__(self, tz: str) -> None:
        self.tz = ZoneInfo(tz)

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz)

    def today(self) -> dt.date:
        return self.now().date()

    def aware(self, written: dt.datetime) -> dt.datetime:
        """A time the app wrote from this clock, as read back: SQLite gives it without its
        zone, as the clock's wall time."""
        return written if written.tzinfo else written.replace(tzinfo=self.tz)
