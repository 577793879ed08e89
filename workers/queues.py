"""Queue names, one place. What a job does lives in its domain's tasks.py."""

CODES = "codes"
"""Sign-in codes: a citizen waits for each with the page open, so workers take these first."""
SMS = "sms"
"""Every other outbound message: confirmations, reminders, replies, complaint steps."""
DEFAULT = "default"
"""Periodic housekeeping: horizon roll, no-shows, overdue complaints."""

ALL = (CODES, DEFAULT, SMS)
"""What a worker listens to, first queue first. Housekeeping before the other messages:
a few short jobs a minute, which a backlog of messages (the evening's hundred thousand
reminders) had held back for as long as it lasted, a blocked office's moves and the
hour-before reminders among them. The workers kept for messages (``MESSAGES``) send them
meanwhile."""
MESSAGES = (CODES, SMS)
"""What a worker kept for messages listens to (``--queues codes,sms``): a housekeeping job
can run for up to half an hour (moving a closed province's bookings), and a worker running
one takes nothing else meanwhile, a sign-in code included."""
