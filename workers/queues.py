"""Queue names, one place. What a job does lives in its domain's tasks.py."""

CODES = "codes"
"""Sign-in codes: a citizen waits for each with the page open, so workers take these first."""
SMS = "sms"
"""Every other outbound message: confirmations, reminders, replies, complaint steps."""
DEFAULT = "default"
"""Periodic housekeeping: horizon roll, no-shows, overdue complaints."""

ALL = (CODES, SMS, DEFAULT)
"""What a worker listens to, first queue first."""
