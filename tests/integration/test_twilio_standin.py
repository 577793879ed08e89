"""The real twilio client, built by app.sms.twilio_client, sending through the local Twilio stand-in."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.rest.api.v2010.account.message import MessageInstance

from app.sms.twilio_client import twilio_client
from loadtests.twilio_standin import TwilioStandIn

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "test-token"
SENDER = "+15005550006"
MOBILE = "+989121234567"
CALLBACK = "http://127.0.0.1:9/sms/twilio/status"


@pytest.fixture
def standin() -> Iterator[TwilioStandIn]:
    with TwilioStandIn() as running:
        yield running


@pytest.fixture
def twilio(standin: TwilioStandIn) -> Client:
    return twilio_client(ACCOUNT_SID, AUTH_TOKEN, standin.base_url)


def send(twilio: Client, to: str = MOBILE, body: str = "سلام ۱۲۳") -> MessageInstance:
    return twilio.messages.create(to=to, from_=SENDER, body=body, status_callback=CALLBACK)


def test_create_reaches_the_standin(standin: TwilioStandIn, twilio: Client) -> None:
    message = send(twilio)

    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued"
    assert message.body == "سلام ۱۲۳"
    assert message.num_segments == "1"
    assert isinstance(message.date_created, datetime)
    assert standin.wait_for(1) == [
        {
            "sid": message.sid,
            "to": MOBILE,
            "from_": SENDER,
            "body": "سلام ۱۲۳",
            "status_callback": CALLBACK,
            "account_sid": ACCOUNT_SID,
        }
    ]


def test_fail_next_makes_create_raise_once(standin: TwilioStandIn, twilio: Client) -> None:
    standin.fail_next(1)

    with pytest.raises(TwilioRestException) as failed:
        send(twilio)
    assert failed.value.status == 500
    assert failed.value.code == 20500

    send(twilio)
    assert len(standin.messages) == 1


def test_fail_next_with_another_status(standin: TwilioStandIn, twilio: Client) -> None:
    standin.fail_next(2, status=429)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as failed:
            send(twilio)
        assert failed.value.status == 429
    send(twilio)


def test_list_and_fetch(standin: TwilioStandIn, twilio: Client) -> None:
    first = send(twilio)
    send(twilio, to="+989351112233")

    listed = twilio.messages.list(to=MOBILE)
    assert [message.sid for message in listed] == [first.sid]

    fetched = twilio.messages(first.sid).fetch()
    assert (fetched.sid, fetched.to, fetched.body) == (first.sid, MOBILE, "سلام ۱۲۳")

    with pytest.raises(TwilioRestException) as missing:
        twilio.messages("SM" + "0" * 32).fetch()
    assert missing.value.status == 404


def test_a_message_still_queued_matches_no_date_sent_filter(twilio: Client) -> None:
    """As at Twilio: a queued message has no DateSent yet, so a DateSent filter misses it."""
    queued = send(twilio)
    assert queued.date_sent is None and queued.date_created is not None
    assert twilio.messages.list(to=MOBILE, date_sent_after=datetime(2020, 1, 1)) == []
    assert [m.sid for m in twilio.messages.list(to=MOBILE)] == [queued.sid]


def test_list_follows_pages_through_the_standin(standin: TwilioStandIn, twilio: Client) -> None:
    sent = [send(twilio, body=f"code {n}").sid for n in range(5)]

    listed = twilio.messages.list(page_size=2)

    assert [message.sid for message in listed] == sent[::-1]  # newest first, as Twilio


def test_missing_auth_is_refused(standin: TwilioStandIn) -> None:
    request = urllib.request.Request(
        f"{standin.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data=b"To=%2B989121234567&From=%2B15005550006&Body=hi",
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["code"] == 20003
    assert standin.messages == []


def test_invalid_create_is_a_twilio_error(twilio: Client) -> None:
    with pytest.raises(TwilioRestException) as invalid:
        twilio.messages.create(to=MOBILE, body="no sender")
    assert (invalid.value.status, invalid.value.code) == (400, 21603)


def test_edge_and_region_do_not_rewrite_the_host(standin: TwilioStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_EDGE", "frankfurt")
    monkeypatch.setenv("TWILIO_REGION", "de1")

    send(twilio_client(ACCOUNT_SID, AUTH_TOKEN, standin.base_url))

    assert len(standin.messages) == 1


def test_empty_base_url_means_twilio() -> None:
    client = twilio_client(ACCOUNT_SID, AUTH_TOKEN, "")
    assert client.api.base_url == "https://api.twilio.com"


def test_wait_for_times_out(standin: TwilioStandIn) -> None:
    with pytest.raises(TimeoutError):
        standin.wait_for(1, timeout=0.05)


def test_clear_forgets_messages(standin: TwilioStandIn, twilio: Client) -> None:
    send(twilio)
    standin.clear()
    assert standin.messages == []
    assert twilio.messages.list() == []
