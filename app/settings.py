"""Settings, read once from the environment.

Every knob a deployment may need is here, grouped by concern, with its environment
variable beside it; the README's table is written from this file.
"""

from __future__ import annotations

import os
import secrets
import zoneinfo
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from croniter import croniter

ROOT = Path(__file__).resolve().parent.parent


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # --- storage ---
    database_url: str = ""
    """DATABASE_URL: the system of record. Unset: SQLite at NOBAT_VAR_DIR/nobat.db; PostgreSQL in production."""
    redis_url: str | None = None
    """REDIS_URL: live capacity. Unset: the app starts an embedded redis-server under var/."""
    rq_redis_url: str | None = None
    """RQ_REDIS_URL: the plain Redis that holds the job queues (RQ does not support Redis Cluster).
    Unset: the same Redis as REDIS_URL."""
    var_dir: Path = ROOT / "var"
    """NOBAT_VAR_DIR: where the embedded database and Redis keep their files."""

    # --- public identity ---
    public_url: str = "http://127.0.0.1:8000"
    """NOBAT_PUBLIC_URL: the address citizens and Twilio reach us at (signatures are checked against it)."""
    secret_key: str = ""
    """NOBAT_SECRET_KEY: signs citizen tokens. Unset: a random key per start (tokens die with restarts)."""
    tz: str = "Asia/Tehran"
    """NOBAT_TZ: the time zone every office works in."""

    # --- SMS ---
    sms_backend: str = "console"
    """NOBAT_SMS_BACKEND: `console` prints and keeps an outbox in Redis; `twilio` sends for real."""
    twilio_account_sid: str = ""
    """TWILIO_ACCOUNT_SID."""
    twilio_auth_token: str = ""
    """TWILIO_AUTH_TOKEN: also the key inbound signatures are checked with."""
    twilio_from: str = ""
    """TWILIO_FROM: the number (or messaging service) messages are sent from."""
    twilio_api_base_url: str = ""
    """TWILIO_API_BASE_URL: send to a Twilio-compatible stand-in instead of api.twilio.com."""
    sms_number: str = ""
    """NOBAT_SMS_NUMBER: the number citizens text, named where a message tells them to text it
    (unset: TWILIO_FROM when that is a number, not a messaging service)."""

    sms_max_attempts: int = 6
    """NOBAT_SMS_MAX_ATTEMPTS: tries of one outbound message before it is marked failed (RQ's
    retries of the send job are derived from it: one try, then this many less one)."""
    sms_stuck_seconds: int = 45
    """NOBAT_SMS_STUCK_SECONDS: a message "sending" for longer than this was left by a worker that
    died; the sweep sends it again. Above the send job's timeout, well below a sign-in code's life."""
    sms_kept_days: int = 90
    """NOBAT_SMS_KEPT_DAYS: messages sent and received are deleted this many days after (a
    nightly job): their bodies carry tracking codes, national IDs and complaints' words."""
    reminder_evening_hour: int = 20
    """NOBAT_REMINDER_EVENING_HOUR: the hour (Tehran time) of the reminder the evening before."""

    # --- booking rules ---
    horizon_days: int = 14
    """NOBAT_HORIZON_DAYS: how many days ahead (today included) citizens may book."""
    official_holidays: bool = True
    """NOBAT_OFFICIAL_HOLIDAYS: close offices on Iran's official holidays (the `holidays` package's calendar)."""
    max_active_bookings: int = 3
    """NOBAT_MAX_ACTIVE_BOOKINGS: active bookings one national ID may hold at once."""
    bookings_per_mobile: str = "10/86400"
    """NOBAT_BOOKINGS_PER_MOBILE: bookings one signed-in mobile may make (web and SMS), as
    count/seconds. A phone books for its family, each with their own national ID; without a
    bound, one phone and a list of valid national IDs took a province's seats on a rush
    morning. Only bookings made count: a refused try, or a retry of one made, does not."""
    read_cache_seconds: float = 1.0
    """NOBAT_READ_CACHE_SECONDS: how old the free seats an instance shows (slots, nearby, load)
    may be: each instance keeps what it read, and looks this often for what the others
    changed (app.capacity.reading). Bookings always decide on the live counters. 0 reads
    Redis every time."""
    db_pool: int = 20
    """NOBAT_DB_POOL: the connections each process keeps to PostgreSQL, and as many more at a
    peak (a booking's record goes through the group commit's own few): size PostgreSQL's
    max_connections, or a pooler, for every process's 2 x this + 4 (docs/deployment.md)."""
    rebuild_settle_seconds: float = 5.0
    """NOBAT_REBUILD_SETTLE_SECONDS: when Redis must be recounted from the record, how long
    bookings stay paused before the count starts: every instance notices within a second,
    and the bookings already past the pause commit (or give up) first. Counted before its
    commit, a booking's seat would be sold again."""
    recount_at: str = "30 3 * * *"
    """NOBAT_RECOUNT_AT: when Redis is counted again from the record each night, as a cron
    expression in the offices' time (`off`: never). What a failure left counted for nobody
    (a seat whose give-back met Redis away, a hold, a place in line) comes back; nothing
    else recounts a Redis that came back as it was. Bookings pause for
    NOBAT_REBUILD_SETTLE_SECONDS and the count (13 s for the whole country with nobody booked,
    140 s with two million upcoming bookings: loadtests.bench_recount)."""

    # --- sign-in ---
    otp_ttl_seconds: int = 120
    """NOBAT_OTP_TTL_SECONDS: how long a one-time code lives."""
    otp_max_attempts: int = 5
    """NOBAT_OTP_MAX_ATTEMPTS: guesses that burn a code (a wrong try while the code before it
    is still live is a guess at each)."""
    token_ttl_seconds: int = 24 * 3600
    """NOBAT_TOKEN_TTL_SECONDS: how long a citizen's bearer token is good for."""
    otp_per_mobile: str = "3/600"
    """NOBAT_OTP_PER_MOBILE: codes one mobile may ask for, as count/seconds."""
    otp_per_mobile_day: str = "10/86400"
    """NOBAT_OTP_PER_MOBILE_DAY: and over a day. Each code takes NOBAT_OTP_MAX_ATTEMPTS
    guesses: without it, 3 codes every 10 minutes were 2,160 guesses a day at one number's
    code, a 6% chance a month of taking it over (and 432 messages a day to send it)."""
    sms_replies_per_mobile: str = "20/3600"
    """NOBAT_SMS_REPLIES_PER_MOBILE: answers to inbound messages one mobile gets, as
    count/seconds; past it a message is carried out and recorded, not answered. A phone with
    an auto-reply app had ping-ponged with the help text for ever, four paid segments a turn,
    ahead of every confirmation in the queue."""
    otp_per_address: str = "1000/600"
    """NOBAT_OTP_PER_ADDRESS: codes one client address may ask for (generous: carrier NAT)."""
    otp_web_total: str = "3000/10"
    """NOBAT_OTP_WEB_TOTAL: codes the web may send, every address and instance together, at
    most what the SMS workers can send. Per address alone, a few hundred addresses asking for
    random numbers' codes filled the queue: citizens' codes waited behind them past their
    two minutes, unsent, and each was paid for. Past it, the web asks the citizen to text
    «ورود», which an attacker cannot send for other people's phones."""
    verify_per_address: str = "1200/600"
    """NOBAT_VERIFY_PER_ADDRESS: wrong guesses at live codes one client address may make (a
    sign-in, or a number with no code, counts nothing): it bounds guesses spread over numbers."""
    api_per_address: str = "3000/60"
    """NOBAT_API_PER_ADDRESS: requests to /api one client address may make (generous: carrier NAT)."""
    pages_per_address: str = "3000/60"
    """NOBAT_PAGES_PER_ADDRESS: page requests one client address may make. Generous: a carrier's
    NAT puts hundreds of phones behind one address, and a booking is about eleven pages; at 600
    a minute, the 55th citizen of a rush minute behind it was refused. The per-mobile limits do
    the real limiting; this one stops a single host's flood."""
    trust_forwarded_for: bool | None = None
    """NOBAT_TRUST_FORWARDED_FOR: take the client address from X-Forwarded-For (behind our own
    proxy only). Unset, false; but a web instance on PostgreSQL refuses to start without it
    said either way (app.main): left at false behind the balancer, every client had the
    balancer's address, and the whole country shared one address's allowances."""

    # --- staff, regulator and guild accounts ---
    staff_session_ttl_seconds: int = 8 * 3600
    """NOBAT_STAFF_SESSION_TTL_SECONDS: a staff, regulator or guild session expires after this long."""
    staff_max_failures: int = 5
    """NOBAT_STAFF_MAX_FAILURES: wrong passwords in a row that lock an account."""
    staff_lockout_seconds: int = 15 * 60
    """NOBAT_STAFF_LOCKOUT_SECONDS: how long a locked account stays locked."""
    staff_login_per_address: str = "60/600"
    """NOBAT_STAFF_LOGIN_PER_ADDRESS: sign-in attempts one client address may make."""

    # --- no-shows ---
    no_show_limit: int = 3
    """NOBAT_NO_SHOW_LIMIT: no-shows within the window that suspend a national ID."""
    no_show_window_days: int = 30
    """NOBAT_NO_SHOW_WINDOW_DAYS: the window no-shows are counted in."""
    no_show_suspension_days: int = 7
    """NOBAT_NO_SHOW_SUSPENSION_DAYS: how long web and SMS booking stay suspended."""
    no_show_grace_minutes: int = 15
    """NOBAT_NO_SHOW_GRACE_MINUTES: how long after a slot starts staff may mark its citizen a no-show."""

    # --- complaints and enforcement (the documented policy; see app/enforcement/policy.py) ---
    complaints_per_mobile: str = "5/86400"
    """NOBAT_COMPLAINTS_PER_MOBILE: complaints one signed-in mobile may file (web, API and SMS),
    as count/seconds. Each sends the complainant an SMS and joins the regulator's queue: with
    no bound, one SIM filed thousands an hour, paid for each text, delayed every citizen's
    messages behind them and buried the real complaints."""
    complaint_response_hours: int = 72
    """NOBAT_COMPLAINT_RESPONSE_HOURS: a complaint with no first response by then is flagged overdue."""
    complaint_window_days: int = 30
    """NOBAT_COMPLAINT_WINDOW_DAYS: the rolling window complaints are counted in."""
    restrict_after_substantiated: int = 2
    """NOBAT_RESTRICT_AFTER_SUBSTANTIATED: confirmed violations in the window that restrict an office."""
    restrict_after_received: int = 10
    """NOBAT_RESTRICT_AFTER_RECEIVED: complaints received in the window that restrict an office."""
    restricted_cap_percent: int = 50
    """NOBAT_RESTRICTED_CAP_PERCENT: the share of its seats a restricted office may fill with new bookings."""
    appeal_days: int = 7
    """NOBAT_APPEAL_DAYS: how long an office has to appeal a restriction."""
    fine_base_rials: int = 100_000_000
    """NOBAT_FINE_BASE_RIALS: the first fine for a violated obligation in a year."""
    fine_cap_rials: int = 1_000_000_000
    """NOBAT_FINE_CAP_RIALS: the most one office pays per obligation per year."""

    # --- demo ---
    demo_offices: int = 17000
    """NOBAT_DEMO_OFFICES: offices the demo dataset generates."""

    def with_(self, **changes: object) -> Settings:
        return msgspec.structs.replace(self, **changes)


_ENV = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "rq_redis_url": "RQ_REDIS_URL",
    "var_dir": "NOBAT_VAR_DIR",
    "public_url": "NOBAT_PUBLIC_URL",
    "secret_key": "NOBAT_SECRET_KEY",
    "tz": "NOBAT_TZ",
    "sms_backend": "NOBAT_SMS_BACKEND",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_from": "TWILIO_FROM",
    "twilio_api_base_url": "TWILIO_API_BASE_URL",
    "sms_number": "NOBAT_SMS_NUMBER",
    "sms_max_attempts": "NOBAT_SMS_MAX_ATTEMPTS",
    "sms_stuck_seconds": "NOBAT_SMS_STUCK_SECONDS",
    "sms_kept_days": "NOBAT_SMS_KEPT_DAYS",
    "reminder_evening_hour": "NOBAT_REMINDER_EVENING_HOUR",
    "horizon_days": "NOBAT_HORIZON_DAYS",
    "max_active_bookings": "NOBAT_MAX_ACTIVE_BOOKINGS",
    "bookings_per_mobile": "NOBAT_BOOKINGS_PER_MOBILE",
    "official_holidays": "NOBAT_OFFICIAL_HOLIDAYS",
    "read_cache_seconds": "NOBAT_READ_CACHE_SECONDS",
    "db_pool": "NOBAT_DB_POOL",
    "rebuild_settle_seconds": "NOBAT_REBUILD_SETTLE_SECONDS",
    "recount_at": "NOBAT_RECOUNT_AT",
    "otp_ttl_seconds": "NOBAT_OTP_TTL_SECONDS",
    "otp_max_attempts": "NOBAT_OTP_MAX_ATTEMPTS",
    "token_ttl_seconds": "NOBAT_TOKEN_TTL_SECONDS",
    "otp_per_mobile": "NOBAT_OTP_PER_MOBILE",
    "otp_per_mobile_day": "NOBAT_OTP_PER_MOBILE_DAY",
    "sms_replies_per_mobile": "NOBAT_SMS_REPLIES_PER_MOBILE",
    "otp_per_address": "NOBAT_OTP_PER_ADDRESS",
    "otp_web_total": "NOBAT_OTP_WEB_TOTAL",
    "verify_per_address": "NOBAT_VERIFY_PER_ADDRESS",
    "trust_forwarded_for": "NOBAT_TRUST_FORWARDED_FOR",
    "api_per_address": "NOBAT_API_PER_ADDRESS",
    "pages_per_address": "NOBAT_PAGES_PER_ADDRESS",
    "demo_offices": "NOBAT_DEMO_OFFICES",
    "complaints_per_mobile": "NOBAT_COMPLAINTS_PER_MOBILE",
    "complaint_response_hours": "NOBAT_COMPLAINT_RESPONSE_HOURS",
    "complaint_window_days": "NOBAT_COMPLAINT_WINDOW_DAYS",
    "restrict_after_substantiated": "NOBAT_RESTRICT_AFTER_SUBSTANTIATED",
    "restrict_after_received": "NOBAT_RESTRICT_AFTER_RECEIVED",
    "restricted_cap_percent": "NOBAT_RESTRICTED_CAP_PERCENT",
    "appeal_days": "NOBAT_APPEAL_DAYS",
    "fine_base_rials": "NOBAT_FINE_BASE_RIALS",
    "fine_cap_rials": "NOBAT_FINE_CAP_RIALS",
    "staff_session_ttl_seconds": "NOBAT_STAFF_SESSION_TTL_SECONDS",
    "staff_max_failures": "NOBAT_STAFF_MAX_FAILURES",
    "staff_lockout_seconds": "NOBAT_STAFF_LOCKOUT_SECONDS",
    "staff_login_per_address": "NOBAT_STAFF_LOGIN_PER_ADDRESS",
    "no_show_limit": "NOBAT_NO_SHOW_LIMIT",
    "no_show_window_days": "NOBAT_NO_SHOW_WINDOW_DAYS",
    "no_show_suspension_days": "NOBAT_NO_SHOW_SUSPENSION_DAYS",
    "no_show_grace_minutes": "NOBAT_NO_SHOW_GRACE_MINUTES",
}


SEND_JOB_TIMEOUT = 30
"""Seconds one SMS job may run (the Twilio client gives up on a request after 10; app.jobs
sets it on their queues); the sweep's NOBAT_SMS_STUCK_SECONDS must stay above it."""

MIN_SECRET_BYTES = 32
"""HS256's key: shorter, it is guessed offline from any signed token (RFC 7518, 3.2)."""


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from the environment; a malformed value fails at start, not mid-rush."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {field: env[var] for field, var in _ENV.items() if env.get(var)}
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as error:  # named as the operator wrote it, not as a field
        message = str(error)
        for field, var in _ENV.items():
            message = message.replace(f"`$.{field}`", var)
        raise ValueError(message) from None
    if not settings.database_url:
        settings = settings.with_(database_url=f"sqlite+aiosqlite:///{settings.var_dir / 'nobat.db'}")
    if not settings.secret_key:
        if not settings.database_url.startswith("sqlite"):
            # Production runs several instances: a key made up by each would reject the
            # tokens and codes of the others.
            raise ValueError("NOBAT_SECRET_KEY must be set when DATABASE_URL is not the embedded SQLite")
        settings = settings.with_(secret_key=secrets.token_urlsafe(32))
    if len(settings.secret_key.encode()) < MIN_SECRET_BYTES:
        # It signs every citizen's token: a short one is cracked offline from any token or
        # form, and a token then made for any number books and cancels in its name.
        raise ValueError(
            f"NOBAT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not 0 <= settings.read_cache_seconds <= 60:
        raise ValueError("NOBAT_READ_CACHE_SECONDS must be 0 to 60")
    if not 1 <= settings.db_pool <= 500:
        raise ValueError("NOBAT_DB_POOL must be 1 to 500")
    if not 0 <= settings.rebuild_settle_seconds <= 300:
        raise ValueError("NOBAT_REBUILD_SETTLE_SECONDS must be 0 to 300")
    # Checked as RQ's cron reads it: a value it refuses (`30 25 * * *`) would pass here and
    # stop the scheduler, and every periodic job with it, while the web app ran on.
    if settings.recount_at != "off" and not _runs_sometime(settings.recount_at):
        raise ValueError("NOBAT_RECOUNT_AT must be a cron expression of five fields (`30 3 * * *`), or `off`")
    try:  # named here: a zone misspelt had stopped the web instance on a nameless error, and
        # an RQ worker only at its first job, every sign-in code's included
        zoneinfo.ZoneInfo(settings.tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"NOBAT_TZ is not a time zone the tzdata package knows: {settings.tz!r}") from None
    # The policy's numbers, checked at start: one out of range (a cap of 150%) had failed
    # every restriction the policy made, again each minute, while the rest ran on.
    if not 0 <= settings.restricted_cap_percent <= 99:
        raise ValueError("NOBAT_RESTRICTED_CAP_PERCENT must be 0 to 99")
    if settings.appeal_days < 0 or settings.complaint_window_days < 1:
        raise ValueError("NOBAT_APPEAL_DAYS must be 0 or more, NOBAT_COMPLAINT_WINDOW_DAYS 1 or more")
    if not 0 <= settings.fine_base_rials <= settings.fine_cap_rials:
        raise ValueError("NOBAT_FINE_BASE_RIALS must be 0 to NOBAT_FINE_CAP_RIALS")
    if settings.restrict_after_substantiated < 1 or settings.restrict_after_received < 1:
        raise ValueError("NOBAT_RESTRICT_AFTER_SUBSTANTIATED and NOBAT_RESTRICT_AFTER_RECEIVED must be 1 or more")
    # The SMS channel's, checked here rather than by the worker's first job: a typo had let
    # the web instances start and answer ready while no message ever left.
    if settings.sms_backend not in ("console", "twilio"):
        raise ValueError("NOBAT_SMS_BACKEND must be console or twilio")
    if not env.get("NOBAT_SMS_BACKEND") and not settings.database_url.startswith("sqlite"):
        # The console backend prints every message, sign-in codes too, in the log: a
        # deployment that forgot the setting sent no SMS, and whoever read the logs could
        # sign in as anyone. Chosen on purpose (a load test, a staging run) it may stay.
        raise ValueError(
            "NOBAT_SMS_BACKEND must be set when DATABASE_URL is not the embedded SQLite "
            "(twilio; or console, which prints every message, sign-in codes too, in the log)"
        )
    if settings.sms_backend == "twilio" and not (
        settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from
    ):
        raise ValueError("NOBAT_SMS_BACKEND=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM")
    public = urlsplit(settings.public_url)
    if public.scheme not in ("http", "https") or not public.hostname:
        # Inbound SMS are checked against it: a value without its scheme ("nobat.ir") failed
        # every signature, each message refused without a word.
        raise ValueError("NOBAT_PUBLIC_URL must be an absolute address (https://nobat.example.ir)")
    if (
        settings.sms_backend == "twilio"
        and not settings.twilio_api_base_url
        and (public.scheme != "https" or public.hostname in ("127.0.0.1", "localhost", "::1"))
    ):
        # Twilio posts the citizens' messages to it, over https: left at the default, every
        # message was refused (a signature for an address Twilio never posts to).
        raise ValueError(
            "NOBAT_PUBLIC_URL must be the https address Twilio reaches us at when NOBAT_SMS_BACKEND=twilio"
        )
    if settings.sms_stuck_seconds <= SEND_JOB_TIMEOUT or settings.sms_max_attempts < 1:
        # At or below the send job's timeout, the sweep sends again a message still being sent.
        raise ValueError(
            f"NOBAT_SMS_STUCK_SECONDS must be above {SEND_JOB_TIMEOUT} (the send job's timeout), "
            "NOBAT_SMS_MAX_ATTEMPTS 1 or more"
        )
    if settings.sms_stuck_seconds >= settings.otp_ttl_seconds:
        # A sign-in code left "sending" by a dead worker is sent again after this: not before
        # the code has expired, or the citizen waits for a code that cannot sign in.
        raise ValueError("NOBAT_SMS_STUCK_SECONDS must be below NOBAT_OTP_TTL_SECONDS")
    if not 0 <= settings.reminder_evening_hour <= 23:
        raise ValueError("NOBAT_REMINDER_EVENING_HOUR must be 0 to 23")
    if settings.otp_ttl_seconds < 30 or settings.otp_max_attempts < 1:
        raise ValueError("NOBAT_OTP_TTL_SECONDS must be 30 or more, NOBAT_OTP_MAX_ATTEMPTS 1 or more")
    # Counts and lifetimes that must be at least one: at 0 nobody could book (the horizon, the
    # active bookings), sign in (a token's life) or keep a staff account (a lockout at the
    # first wrong password), and some pages answered 500 (an empty horizon).
    for field in (
        "horizon_days",
        "max_active_bookings",
        "token_ttl_seconds",
        "staff_session_ttl_seconds",
        "staff_max_failures",
        "no_show_limit",
        "no_show_window_days",
        "no_show_suspension_days",
        "sms_kept_days",
        "staff_lockout_seconds",  # at 0, Redis refused the lockout's expiry: every wrong password a 503
        "complaint_response_hours",  # at 0, every complaint was overdue as it came
    ):
        if getattr(settings, field) < 1:
            raise ValueError(f"{_ENV[field]} must be 1 or more")
    if settings.no_show_grace_minutes < 0:
        raise ValueError("NOBAT_NO_SHOW_GRACE_MINUTES must be 0 or more")
    for field in (
        "bookings_per_mobile",
        "otp_per_mobile",
        "otp_per_mobile_day",
        "sms_replies_per_mobile",
        "complaints_per_mobile",
        "otp_per_address",
        "otp_web_total",
        "verify_per_address",
        "staff_login_per_address",
        "api_per_address",
        "pages_per_address",
    ):
        try:
            parse_limit(getattr(settings, field))
        except ValueError as error:
            raise ValueError(f"{_ENV[field]}: {error}") from None
    return settings


def _decode(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def parse_limit(value: str) -> tuple[int, int]:
    """'3/600' -> (3 requests, 600 seconds)."""
    count, _, seconds = value.partition("/")
    try:
        parsed = int(count), int(seconds)
    except ValueError:
        raise ValueError(f"a limit must look like COUNT/SECONDS, not {value!r}") from None
    if parsed[0] < 1 or parsed[1] < 1:
        raise ValueError(f"a limit must be positive, not {value!r}")
    return parsed


def _runs_sometime(expression: str) -> bool:
    """Whether a cron expression has five fields and a next run, as RQ's cron asks of it when
    the scheduler starts (``30 3 31 2 *`` is well formed, and never comes)."""
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        return False
    try:
        croniter(expression).get_next()
    except ValueError:  # croniter's CroniterBadDateError
        return False
    return True
