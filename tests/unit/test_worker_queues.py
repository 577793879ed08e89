"""Which queues a worker takes jobs from (``python -m workers.worker --queues``)."""

from __future__ import annotations

import pytest

from workers.queues import ALL, CODES, DEFAULT, MESSAGES, SMS
from workers.worker import parse_args


def test_a_worker_takes_every_queue_unless_told():
    args = parse_args([])
    assert args.queues == ALL
    assert args.burst is False


def test_housekeeping_is_taken_before_a_backlog_of_messages():
    assert ALL == (CODES, DEFAULT, SMS)


def test_the_queues_named_are_taken_codes_first_whatever_order_they_are_named_in():
    assert parse_args(["--queues", "default, codes"]).queues == (CODES, DEFAULT)
    assert parse_args(["--queues", "sms,codes", "--burst"]).queues == MESSAGES == (CODES, SMS)
    assert parse_args(["--queues", "sms,sms"]).queues == (SMS,)


@pytest.mark.parametrize("named", ["codez", "codes,mail", "", ", ,"])
def test_a_queue_that_does_not_exist_stops_the_worker_with_its_name(named, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--queues", named])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--queues" in error
    if named.strip(", "):
        unknown = "codez" if named == "codez" else "mail"
        assert f"no queue named {unknown} (there are codes, default, sms)" in error
    else:
        assert "name at least one queue" in error
