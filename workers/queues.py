"""Queue names, one place. What a job does lives in its domain's tasks.py."""

SMS = "sms"
"""Outbound messages: sign-in codes first, they are waited on."""
DEFAULT = "default"
"""Periodic housekeeping: horizon roll, no-shows, overdue complaints."""

ALL = (SMS, DEFAULT)
