"""The periodic jobs run at the offices' hours whatever zone the host is set to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from redis import Redis

from app.settings import load_settings
from workers.cron import scheduler


@pytest.fixture(autouse=True)
def _host_zone_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    monkeypatch.undo()  # the TZ the test found (or none)
    time.tzset()


@pytest.mark.parametrize("host", ["UTC", "Asia/Tehran", "America/New_York"])
def test_the_day_closes_at_midnight_in_tehran(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("TZ", host)
    time.tzset()
    settings = load_settings({}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    [close_day] = [job for job in jobs if job.func.__name__ == "close_day"]
    runs = close_day.get_next_enqueue_time().astimezone(ZoneInfo("Asia/Tehran"))
    assert (runs.hour, runs.minute) in {(0, 0), (1, 0), (2, 0)}
    assert close_day.job_options["job_timeout"] == 30 * 60  # a country's night, not RQ's 180 s


def test_what_a_block_a_closure_or_a_failed_promotion_left_is_finished_every_minute() -> None:
    settings = load_settings({}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    every = {job.func.__name__: job.interval for job in jobs}
    assert every["finish_blocks"] == 60 and every["finish_closures"] == 60
    assert every["fill_waitlists_left"] == 60 and every["finish_plans"] == 60
    assert every["push_statuses"] == 60  # what a block or a lift failed to tell the counters
    assert every["apply_policy"] == 60  # what a complaint's request failed to apply
    assert every["end_spent_lines"] == 5 * 60  # today's lines with no slot ahead, told
    limits = {job.func.__name__: job.job_options.get("job_timeout") for job in jobs}
    assert limits["finish_blocks"] == limits["finish_closures"] == 30 * 60  # a province's closure, not 180 s
    assert limits["apply_policy"] == 30 * 60  # a block it makes moves the office's bookings


@pytest.mark.parametrize("at", ["30 3 * * *", "off"])
def test_redis_is_recounted_each_night_unless_told_not_to(at: str) -> None:
    settings = load_settings({"NOBAT_RECOUNT_AT": at}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    recounts = [job for job in jobs if job.func.__name__ == "recount"]
    if at == "off":
        assert recounts == []
        return
    [recount] = recounts
    runs = recount.get_next_enqueue_time().astimezone(ZoneInfo("Asia/Tehran"))
    assert (runs.hour, runs.minute) == (3, 30)  # after the night's close (00:00 to 02:00)


def test_a_recount_time_that_is_not_a_cron_expression_fails_at_start() -> None:
    with pytest.raises(ValueError, match="NOBAT_RECOUNT_AT"):
        load_settings({"NOBAT_RECOUNT_AT": "03:30"})


@pytest.mark.parametrize("at", ["30 25 * * *", "30 3 31 2 *"])
def test_a_recount_time_rq_would_refuse_fails_at_start(at: str) -> None:
    """Five fields, but no such hour, or no such day: the scheduler would fail at start,
    every periodic job with it."""
    with pytest.raises(ValueError, match="NOBAT_RECOUNT_AT"):
        load_settings({"NOBAT_RECOUNT_AT": at})


def test_a_host_without_the_zones_data_stops_the_scheduler_rather_than_run_on_utc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The C library takes a zone it has no data for as UTC, without a word."""
    settings = load_settings({}).with_(tz="Asia/Tehran")
    monkeypatch.setattr(time, "localtime", lambda *_: time.gmtime())  # what such a host answers
    with pytest.raises(RuntimeError, match="tzdata"):
        scheduler(settings, Redis.from_url("redis://127.0.0.1:1"))


def test_no_copy_of_a_periodic_job_waits_more_than_a_few_of_its_intervals() -> None:
    """Behind a backlog a copy a minute piled up, each doing the whole work again; kept
    for one interval only, none would outlast a long job on the one worker of its queue."""
    settings = load_settings({}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    for job in jobs:
        ttl = job.job_options.get("ttl")
        assert ttl is not None, job.func.__name__
        if job.interval is not None:
            assert 2 * job.interval <= ttl <= 10 * job.interval, job.func.__name__


def test_the_sweep_is_taken_before_a_backlog_of_messages() -> None:
    """It re-enqueues lost messages, sign-in codes among them: behind the messages' own
    backlog it ran only once that was gone."""
    settings = load_settings({}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    [sweep] = [job for job in jobs if job.func.__name__ == "sweep"]
    assert sweep.queue_name == "codes"


def test_old_messages_are_purged_each_night_before_the_morning() -> None:
    settings = load_settings({}).with_(tz="Asia/Tehran")
    jobs = scheduler(settings, Redis.from_url("redis://127.0.0.1:1")).get_jobs()  # never connects
    [purge] = [job for job in jobs if job.func.__name__ == "purge_old"]
    runs = purge.get_next_enqueue_time().astimezone(ZoneInfo("Asia/Tehran"))
    assert (runs.hour, runs.minute) == (4, 15)  # after the recount (03:30), before the offices open
    assert purge.job_options["job_timeout"] == 30 * 60  # the first night deletes all kept till then
