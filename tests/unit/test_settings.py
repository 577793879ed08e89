"""Settings: read from the environment, refused at start when they cannot work."""

from __future__ import annotations

import pytest

from app.settings import load_settings


def test_the_embedded_default_makes_up_a_secret_key() -> None:
    settings = load_settings({})
    assert settings.database_url.startswith("sqlite") and len(settings.secret_key) >= 32


def test_production_without_a_secret_key_does_not_start() -> None:
    with pytest.raises(ValueError, match="NOBAT_SECRET_KEY"):
        load_settings({"DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat"})
    given = load_settings(
        {
            "DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat",
            "NOBAT_SECRET_KEY": "k" * 40,
            "NOBAT_SMS_BACKEND": "console",
        }
    )
    assert given.secret_key == "k" * 40


def test_production_must_choose_its_sms_backend() -> None:
    """The console backend, the default, prints every message (sign-in codes too) in the log: a
    deployment that forgot the setting sent no SMS, and whoever read the logs could sign in as
    anyone. Chosen on purpose it stays; the embedded SQLite keeps the default."""
    production = {"DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat", "NOBAT_SECRET_KEY": "k" * 40}
    with pytest.raises(ValueError, match="NOBAT_SMS_BACKEND must be set"):
        load_settings(production)
    assert load_settings({**production, "NOBAT_SMS_BACKEND": "console"}).sms_backend == "console"
    assert load_settings({}).sms_backend == "console"


def test_whether_behind_a_proxy_is_read_as_said() -> None:
    """Unset it is None, which the web refuses on PostgreSQL (test_observability.py); workers
    and commands, which read no client address, start without it."""
    production = {
        "DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat",
        "NOBAT_SECRET_KEY": "k" * 40,
        "NOBAT_SMS_BACKEND": "console",
    }
    assert load_settings(production).trust_forwarded_for is None
    assert load_settings({**production, "NOBAT_TRUST_FORWARDED_FOR": "true"}).trust_forwarded_for is True
    assert load_settings({**production, "NOBAT_TRUST_FORWARDED_FOR": "false"}).trust_forwarded_for is False
    with pytest.raises(ValueError, match="NOBAT_TRUST_FORWARDED_FOR"):
        load_settings({**production, "NOBAT_TRUST_FORWARDED_FOR": "yes please"})


def test_a_secret_key_too_short_to_sign_tokens_safely_does_not_start() -> None:
    """A short key is guessed offline from any citizen's token, and a token then made for
    any number books and cancels in its name."""
    for short in ("changeme", "k" * 31):
        with pytest.raises(ValueError, match="NOBAT_SECRET_KEY must be at least 32 bytes"):
            load_settings({"NOBAT_SECRET_KEY": short})
    assert load_settings({"NOBAT_SECRET_KEY": "k" * 32}).secret_key == "k" * 32


def test_a_malformed_value_fails_at_start() -> None:
    with pytest.raises(Exception, match=r"[Hh]orizon|int|NOBAT"):
        load_settings({"NOBAT_HORIZON_DAYS": "fourteen"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOBAT_RESTRICTED_CAP_PERCENT", "150"),
        ("NOBAT_RESTRICTED_CAP_PERCENT", "-1"),
        ("NOBAT_APPEAL_DAYS", "-1"),
        ("NOBAT_COMPLAINT_WINDOW_DAYS", "0"),
        ("NOBAT_FINE_BASE_RIALS", "2000000000"),  # over the cap
        ("NOBAT_RESTRICT_AFTER_RECEIVED", "0"),
    ],
)
def test_a_policy_number_out_of_range_fails_at_start(variable: str, value: str) -> None:
    """Not every minute in the job that applies the policy, while the rest runs on."""
    with pytest.raises(ValueError, match=variable):
        load_settings({variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOBAT_SMS_BACKEND", "Twilio"),
        ("NOBAT_SMS_STUCK_SECONDS", "30"),  # at the send job's timeout: a message still sending, sent again
        ("NOBAT_SMS_MAX_ATTEMPTS", "0"),
        ("NOBAT_REMINDER_EVENING_HOUR", "-1"),
        ("NOBAT_REMINDER_EVENING_HOUR", "24"),
        ("NOBAT_OTP_TTL_SECONDS", "0"),
        ("NOBAT_OTP_MAX_ATTEMPTS", "0"),
    ],
)
def test_an_sms_or_sign_in_number_out_of_range_fails_at_start(variable: str, value: str) -> None:
    """Not in the worker's first job (no message ever left while the web answered ready), nor
    every minute in the reminders' job, nor as a 503 on every sign-in."""
    with pytest.raises(ValueError, match=variable):
        load_settings({variable: value})


def test_twilio_without_its_credentials_fails_at_start() -> None:
    twilio = {"NOBAT_SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t" * 32}
    with pytest.raises(ValueError, match="TWILIO_FROM"):
        load_settings(twilio)
    twilio["NOBAT_PUBLIC_URL"] = "https://nobat.example.ir"
    assert load_settings({**twilio, "TWILIO_FROM": "+15005550006"}).sms_backend == "twilio"


@pytest.mark.parametrize(
    "env",
    [
        {"NOBAT_PUBLIC_URL": "nobat.example.ir"},  # no scheme: every inbound signature failed
        {"NOBAT_PUBLIC_URL": "ftp://nobat.example.ir"},
        # Twilio itself posts to it, over https: left at the default, every SMS was refused.
        {"NOBAT_SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM": "+1"},
        {
            "NOBAT_SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM": "+1",
            "NOBAT_PUBLIC_URL": "http://nobat.example.ir",
        },
    ],
)  # fmt: skip
def test_a_public_address_no_sms_could_reach_fails_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="NOBAT_PUBLIC_URL"):
        load_settings(env)


def test_a_twilio_stand_in_may_reach_us_on_this_machine() -> None:
    """The load test's stand-in (TWILIO_API_BASE_URL) posts to the local address."""
    env = {"NOBAT_SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM": "+1"}
    settings = load_settings({**env, "TWILIO_API_BASE_URL": "http://127.0.0.1:9000"})
    assert settings.public_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NOBAT_HORIZON_DAYS": "0"}, "NOBAT_HORIZON_DAYS"),  # an empty horizon: pages answered 500
        ({"NOBAT_MAX_ACTIVE_BOOKINGS": "0"}, "NOBAT_MAX_ACTIVE_BOOKINGS"),  # nobody could book
        ({"NOBAT_TOKEN_TTL_SECONDS": "-1"}, "NOBAT_TOKEN_TTL_SECONDS"),  # nobody could sign in
        ({"NOBAT_STAFF_MAX_FAILURES": "0"}, "NOBAT_STAFF_MAX_FAILURES"),  # locked at the first slip
        ({"NOBAT_NO_SHOW_GRACE_MINUTES": "-5"}, "NOBAT_NO_SHOW_GRACE_MINUTES"),
        ({"NOBAT_SMS_KEPT_DAYS": "0"}, "NOBAT_SMS_KEPT_DAYS"),  # the night had deleted the day's messages
        ({"NOBAT_STAFF_LOCKOUT_SECONDS": "0"}, "NOBAT_STAFF_LOCKOUT_SECONDS"),  # each wrong password a 503
        ({"NOBAT_COMPLAINT_RESPONSE_HOURS": "0"}, "NOBAT_COMPLAINT_RESPONSE_HOURS"),  # all overdue at once
        ({"NOBAT_SMS_STUCK_SECONDS": "120"}, "NOBAT_SMS_STUCK_SECONDS"),  # a code resent once expired
        ({"NOBAT_HORIZON_DAYS": "two weeks"}, "NOBAT_HORIZON_DAYS"),  # named, not `$.horizon_days`
        ({"NOBAT_OTP_PER_MOBILE": "3per600"}, "NOBAT_OTP_PER_MOBILE"),  # the limit's name said
    ],
)
def test_a_value_out_of_range_stops_the_start_naming_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        load_settings(env)


@pytest.mark.parametrize("zone", ["Asia/Tehrn", "Tehran", "../../etc/passwd"])
def test_a_time_zone_misspelt_fails_at_start_naming_the_setting(zone: str) -> None:
    """It had passed here and stopped the web instance on a nameless ZoneInfoNotFoundError, and
    an RQ worker only at its first job: every sign-in code failed."""
    with pytest.raises(ValueError, match="NOBAT_TZ"):
        load_settings({"NOBAT_TZ": zone})
    assert load_settings({"NOBAT_TZ": "Asia/Tehran"}).tz == "Asia/Tehran"


@pytest.mark.parametrize("value", ["0", "501"])
def test_a_database_pool_out_of_range_fails_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="NOBAT_DB_POOL"):
        load_settings({"NOBAT_DB_POOL": value})


def test_the_database_pool_is_the_engines() -> None:
    """Sized for PostgreSQL's max_connections (or a pooler) across every process. Nothing
    connects: the engine and Redis's client connect on first use."""
    from app.container import build_container

    settings = load_settings(
        {
            "NOBAT_DB_POOL": "5",
            "DATABASE_URL": "postgresql+asyncpg://nobat:secret@127.0.0.1:1/nobat",
            "REDIS_URL": "redis://127.0.0.1:1",
            "NOBAT_SECRET_KEY": "k" * 32,
            "NOBAT_SMS_BACKEND": "console",
            "NOBAT_TRUST_FORWARDED_FOR": "false",
        }
    )
    assert build_container(settings, settings.redis_url).engine.pool.size() == 5  # type: ignore[attr-defined]
