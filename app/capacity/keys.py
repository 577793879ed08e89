"""Every Redis key name, built in one place.

An office's keys share the hash tag ``{o:CODE}`` so a script touching several of them runs
on one Redis Cluster node; a citizen's keys share ``{c:NATIONAL_ID}``. Nothing outside this
module spells a key.
"""

from __future__ import annotations

import datetime as dt

NAMESPACE = "nobat"


def office_day(office_code: str, day: dt.date) -> str:
    return f"{NAMESPACE}:{{o:{office_code}}}:day:{day.isoformat()}"


def idempotency(office_code: str, owner: str, key: str) -> str:
    return f"{NAMESPACE}:{{o:{office_code}}}:idem:{owner}:{key}"


def waitlist(office_code: str, day: dt.date, pool: str) -> str:
    return f"{NAMESPACE}:{{o:{office_code}}}:wait:{day.isoformat()}:{pool}"


WAITING_NOW = f"{NAMESPACE}:waiting"
"""How many people each office said are waiting in its room right now: one hash, office code
-> "count|reported at (ISO)", so that a nearby search reads all its candidates' in one command
(one key each had been half the commands, and of the time, of a search)."""

GEO_PATTERN = f"{NAMESPACE}:geo:*"
"""The GEO sets of offices that versions before 2026-12-04 kept; a rebuild drops them."""
WAITLIST_PATTERN = f"{NAMESPACE}:{{o:*}}:wait:*"


def parse_waitlist(key: str) -> tuple[str, dt.date, str]:
    """(office code, day, pool) of a waitlist key."""
    tag, _, rest = key.partition("}:wait:")
    day, _, pool = rest.partition(":")
    return tag.rsplit("{o:", 1)[1], dt.date.fromisoformat(day), pool


def citizen_holds(national_id: str) -> str:
    return f"{NAMESPACE}:{{c:{national_id}}}:holds"


CITIZEN_HOLDS_PATTERN = f"{NAMESPACE}:{{c:*}}:holds"
OFFICE_DAY_PATTERN = f"{NAMESPACE}:{{o:*}}:day:*"

DIRECTORY_VERSION = f"{NAMESPACE}:directory_version"
"""Bumped whenever what app.offices.directory holds of an office changes."""

DIRECTORY_CHANGES = f"{NAMESPACE}:{{{DIRECTORY_VERSION}}}:changes"
"""Which office each DIRECTORY_VERSION changed: a sorted set, "version|office code" scored by
the version, the latest ones kept. Its hash tag is the version key's whole name, so that on
a Redis Cluster the two share a slot and one script writes both."""

DIRECTORY_EPOCH = f"{NAMESPACE}:{{{DIRECTORY_VERSION}}}:epoch"
"""A random token set with the first DIRECTORY_VERSION: a different one means Redis lost its
data and the version numbers started again (same slot as the version, for the same script)."""

PLANS_TO_APPLY = f"{NAMESPACE}:plans-to-apply"
"""Offices whose plan was changed in the record and may not be in Redis yet, or whose
bookings it left no room for may not all be moved (app.console.service): a hash, office
code -> "unix time|change id", which the minute's job empties."""


def moves_shown(office_code: str, key: str) -> str:
    """The list of a clerk's save's moves, kept a few minutes for its page (app.pages.office)."""
    return f"{NAMESPACE}:moves-shown:{office_code}:{key}"


CLOSURES_TO_APPLY = f"{NAMESPACE}:closures-to-apply"
"""Closures recorded whose offices' seats may still be in Redis (app.regulator.service): a
hash, closure id -> "unix time|change id", which the minute's job empties."""

CLOSURES_CHANGED = f"{NAMESPACE}:closures-changed"
"""A count, one up after each closure's or reopen's commit, before its own replan: a replan
that saw it move while it wrote reads the calendar again (``Capacity.replan``)."""

HOLIDAYS_FOLLOWED = f"{NAMESPACE}:holidays-followed"
"""The official holidays the counters were last made to follow (app.regulator.service): JSON,
the horizon's first and last day and the holidays between. A release with a new `holidays`
calendar, or NOBAT_OFFICIAL_HOLIDAYS turned, shows as a difference from it."""

HOLIDAY_CALENDARS = f"{NAMESPACE}:holiday-calendars"
"""Hash: each official calendar a process follows ("holidays 0.109", "none") -> when the
minute's job last looked with it (unix seconds): while two are in use (a rollout), nobody
changes which one the counters follow."""

META_CHANGED = f"{NAMESPACE}:meta-changed"
"""A count, one up as each office status or crowd cap committed is told the counters
(``Capacity.refresh_meta``): a day written meanwhile from an earlier read of the record is
told it again by whoever wrote it (a day's creation, a recount, another telling)."""

CAPS_TO_APPLY = f"{NAMESPACE}:caps-to-apply"
"""Crowd caps added or lifted in the record whose offices' counters may not say so yet
(app.capacity.crowd_caps): a hash, cap id -> "unix time|change id", which the minute's job
empties."""

POLICY_TO_APPLY = f"{NAMESPACE}:policy-to-apply"
"""Office ids a complaint or its confirmation was filed against, noted before its commit, whose
enforcement policy the minute's job applies (again: the request applies it too, but may fail
or die after its commit; app.enforcement.service): a set the job empties."""

JOBS_DONE = f"{NAMESPACE}:jobs-done"
"""Hash: each periodic job's name -> when a run of it last ended well (unix seconds), for
/metrics: a job failing every run (or never run) shows as a time that stops moving."""

WAITLISTS_TO_FILL = f"{NAMESPACE}:lines-to-fill"
"""Lines (their ``waitlist`` keys) that may have a free seat in front of them that nobody was
given (a promotion the record failed to take, app.booking.service): a hash, line -> "unix
time|change id", which the minute's job empties as it fills each."""

WAITLISTS_TO_FILL_BEFORE = f"{NAMESPACE}:waitlists-to-fill"
"""The set ``WAITLISTS_TO_FILL`` was until December 2026, taken off as a run began (a run
killed half-way lost the rest): emptied into the hash by the job."""

BOOKINGS_TO_SETTLE = f"{NAMESPACE}:bookings-to-settle"
"""Bookings whose commit's answer was lost, which the record could not place when asked
(app.booking.service): a hash, the tracking code -> the transaction's id (null on SQLite) and
the seat (JSON), which the minute's job frees once the record says the commit did not land."""

PROMOTIONS_TO_SETTLE = f"{NAMESPACE}:promotions-to-settle"
"""Promotions whose commit raised and whose outcome the record could not tell at once
(app.booking.service): a hash, the transaction's id -> the codes given seats and their seats
(JSON), which the minute's job settles once PostgreSQL can say whether it landed."""

DAYS_CHANGED = f"{NAMESPACE}:days-changed"
"""Which office-days changed lately, for the instances' copies of the counters to forget
(app.capacity.reading): a sorted set of ``day_change`` members (or EVERY_DAY_CHANGED, or a
``waiting_change``), scored by Redis's clock in ms when it changed."""

EVERY_DAY_CHANGED = "*"
"""The DAYS_CHANGED member that says every office-day changed (a recount)."""


def day_change(office_code: str, day: dt.date | None) -> str:
    """A DAYS_CHANGED member: "office|YYYY-MM-DD", or "office|" for all the office's days."""
    return f"{office_code}|{day.isoformat() if day else ''}"


WAITING_CHANGE = "waiting:"


def waiting_change(office_code: str) -> str:
    """A DAYS_CHANGED member for a new report of people waiting at the office: "waiting:office".
    An instance of an older version reads it as every day of an office that does not exist
    (it has no "|"), and so forgets nothing."""
    return f"{WAITING_CHANGE}{office_code}"


def parse_day_change(change: str) -> tuple[str, dt.date | None]:
    """(office code, day or None) of a ``day_change`` member; ValueError if it is not one."""
    office_code, _, day = change.partition("|")
    return office_code, dt.date.fromisoformat(day) if day else None


REBUILT_AT = f"{NAMESPACE}:rebuilt_at"
"""Set when counters were last rebuilt from the record; absent after Redis lost its data."""


def seats_field(pool: str, time: str) -> str:
    return f"s|{pool}|{time}"


def used_field(pool: str, time: str) -> str:
    return f"u|{pool}|{time}"


def staff_session(token_digest: str) -> str:
    """A staff, regulator or guild session, named by the SHA-256 of its token (never the token itself)."""
    return f"{NAMESPACE}:staff:session:{token_digest}"


WRITE_PROBE = f"{NAMESPACE}:write-probe"
"""Set by every instance's watch at each look, kept 5 s (``Capacity.probe_writes``): that Redis
takes writes, on each master of a cluster (there ``{n}`` is added, a slot of each)."""
