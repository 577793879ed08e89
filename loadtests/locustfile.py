"""Locust scenarios over the service's real paths. Started by ``python -m loadtests.run``.

The runner writes a fixture (``NOBAT_LOADTEST_FIXTURE``: the service's address, the Redis
holding the console SMS outbox, the network, the hot offices and their staff accounts) and
picks the user classes of a scenario:

- rush: ``RushCitizen`` signs in with the SMS code (read from the outbox as a phone would),
  waits for the opening moment (everyone signed in, or a deadline), searches nearby and books
  in the same few hot offices at once; refused, it books the best office the nearby search
  offered, or joins the waitlist; booked, it looks its booking up, sometimes cancels, then
  books for the next member of the family (same phone, another national ID).
  ``StaffClerk`` (one per hot office) checks citizens in, reports people waiting and
  changes the day's capacity while the rush is on.
- steady: ``SteadyCitizen`` browses and books across the whole national network,
  ``SmsCitizen`` books, asks and cancels by signed Twilio webhooks, clerks at work.
- sms: ``SmsCitizen`` only. staff: the rush with its clerks (``RushCitizen``, ``StaffClerk``): check-ins
  and capacity changes while citizens book.

Every loop is bounded: the runner gives Locust a run time, and each wait (for an SMS, for
the opening) has its own deadline. Every response is tallied by endpoint, status and
problem ``code`` into the outcomes file the runner reads; only what a correct service
should never answer (5xx, no answer, 400/401/422/429) counts as a Locust failure. How long
each SMS took to reach its phone is written there too, apart from the HTTP statistics.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import functools
import itertools
import json
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from redis import Redis
from twilio.request_validator import RequestValidator

from app.identity import generate_national_id
from loadtests.report import nearest_rank

FIXTURE: dict[str, Any] = json.loads(open(os.environ["NOBAT_LOADTEST_FIXTURE"]).read())  # noqa: SIM115
OUTBOX = "nobat:sms:outbox"
OTP_CODE = re.compile(r"\(([0-9]{6})\)")  # "... کد ورود شما ۱۲۳۴۵۶ (123456) است"
TRACKING = re.compile(r"کد رهگیری: ([0-9A-Z]{10})")
CODE_LIKE = re.compile(r"\b[0-9A-Z]{10}\b")  # a tracking code, however a message writes it
ANY_TEXT = re.compile(r".")
# How long a phone waits for its code before giving up: the SMS queue is part of what is measured.
SMS_WAIT_SECONDS = float(FIXTURE.get("sms_wait_seconds", 120))
INBOUND = "/sms/twilio/inbound"

# What a correct service may answer besides 2xx: refusals a citizen or clerk can cause.
# Anything else (5xx, 0 = no answer, 400, 401, 422, 429) is a failure of the run.
DOMAIN_OUTCOMES = {403, 404, 409, 410}
# A phone that has made the bookings it may (NOBAT_BOOKINGS_PER_MOBILE) is refused the next:
# the service keeping its rule, not failing.
PHONE_USED_UP = "too_many_bookings_from_mobile"
FAMILY = 5  # the bookings an SMS phone texts for before the next phone's turn
# Clerks reach the staff instance (docs/deployment.md); it is the citizens' one when the
# runner starts none.
STAFF_URL = FIXTURE.get("staff_url") or FIXTURE["base_url"]

_outcomes: collections.Counter[str] = collections.Counter()
_sms_seconds: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
_sms_lost: collections.Counter[str] = collections.Counter()
_outcomes_lock = threading.Lock()
_serial = itertools.count(1)


@functools.cache
def outbox() -> Redis:
    # One client per Locust process; gevent makes its socket reads cooperative.
    return Redis.from_url(FIXTURE["redis_url"], socket_timeout=5)


def inbox(phone: str) -> list[tuple[str, str]]:
    """What a phone has received, newest first, as (message id, body): from the console outbox in
    Redis, or from the Twilio stand-in's Messages list when the service sends through Twilio."""
    last10 = phone[-10:]
    if FIXTURE["sms_inbox"] == "twilio":
        account = FIXTURE["twilio_account_sid"]
        query = urlencode({"To": "+98" + last10, "PageSize": 20})
        request = urllib.request.Request(
            f"{FIXTURE['standin_url']}/2010-04-01/Accounts/{account}/Messages.json?{query}",
            headers={"Authorization": "Basic " + base64.b64encode(f"{account}:x".encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return [(m["sid"], m["body"]) for m in json.load(response)["messages"]]
    wanted = last10.encode()
    found = []
    for raw in outbox().lrange(OUTBOX, 0, 999):
        # Cheap test first: most of the outbox is other people's messages.
        if wanted in raw:
            message = json.loads(raw)
            if message["to"][-10:] == last10:
                found.append((message["id"], message["body"]))
    return found


def wait_for_sms(
    phone: str,
    pattern: re.Pattern[str],
    *,
    seen: set[str],
    deadline: float,
    ignore: Callable[[str], bool] = lambda body: False,
) -> re.Match[str] | None:
    """The first new message to ``phone`` matching ``pattern`` (and not ``ignore``d),
    polling until ``deadline``."""
    while time.time() < deadline:
        for message_id, body in inbox(phone):
            if message_id not in seen and not ignore(body) and (match := pattern.search(body)):
                return match
        gevent.sleep(0.25)
    return None


def report_sms(name: str, since: float, error: Exception | None = None) -> None:
    """How long an SMS took to reach the phone: kept apart from Locust's HTTP statistics
    (whose aggregate percentiles it would swamp) and written with the outcomes."""
    with _outcomes_lock:
        if error is None:
            _sms_seconds[name].append(time.time() - since)
        else:
            _sms_lost[name] += 1


def _sms_summary() -> dict[str, dict[str, float | None]]:
    summary = {}
    for name in set(_sms_seconds) | set(_sms_lost):
        times = sorted(_sms_seconds[name])
        summary[name] = {
            "delivered": len(times),
            "not_delivered": _sms_lost[name],
            "p50_s": nearest_rank(times, 0.50),
            "p95_s": nearest_rank(times, 0.95),
            "p99_s": nearest_rank(times, 0.99),
            "max_s": nearest_rank(times, 1.0),
        }
    return summary


def tally(key: str) -> None:
    with _outcomes_lock:
        _outcomes[key] += 1


_confirmed: list[str] = []
"""Tracking codes of the bookings the service confirmed (a 201, an SMS with its code): after
the run each must be in the record, cancelled or not (loadtests.run): none lost."""


def confirmed(tracking_code: str) -> None:
    with _outcomes_lock:
        _confirmed.append(tracking_code)


@events.quitting.add_listener
def _write_outcomes(environment: Environment, **_: Any) -> None:
    rush = {"opened_at": RushCitizen.opened_at, "ended_at": time.time(), "signed_in": RushCitizen.ready}
    with open(FIXTURE["outcomes_file"], "w") as out:
        json.dump(
            {"tally": dict(_outcomes), "rush": rush, "sms": _sms_summary(), "confirmed": _confirmed},
            out,
            indent=1,
            sort_keys=True,
        )


def problem_code(response: Any) -> str:
    try:
        return str(response.json().get("code", ""))
    except Exception:
        return ""


def today() -> dt.date:
    return dt.date.fromisoformat(FIXTURE["today"])


def horizon_day(rng: random.Random) -> dt.date:
    return today() + dt.timedelta(days=rng.randrange(1, FIXTURE["horizon_days"]))


def new_mobile(rng: random.Random) -> str:
    # A distinct number per simulated phone: the serial keeps parallel users apart.
    return f"0912{(next(_serial) * 7919 + rng.randrange(1000)) % 10**7:07d}"


def client_address(rng: random.Random) -> str:
    # Carrier NAT addresses; the service trusts X-Forwarded-For in a load test (see stack.py).
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


class Citizen(FastHttpUser):
    """What every citizen does: talk to the API from a phone, sign in with the SMS code."""

    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.address = client_address(self.rng)
        self.token = ""
        self.mobile = ""
        self.national_id = ""

    def headers(self, *, auth: bool = False, **extra: str) -> dict[str, str]:
        headers = {"X-Forwarded-For": self.address, **extra}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(self, method: str, path: str, name: str, *, auth: bool = False, ours: bool = False, **kw: Any) -> Any:
        """One request, tallied by status and problem code; a failure only if a correct service
        would not answer so. ``ours``: a booking this user was confirmed, which a 404 loses."""
        extra_headers = kw.pop("headers", {})
        with self.client.request(
            method, path, name=name, headers=self.headers(auth=auth, **extra_headers), catch_response=True, **kw
        ) as response:
            status = response.status_code or 0
            code = problem_code(response) if status >= 400 else ""
            tally(f"{method} {name} {status}{' ' + code if code else ''}")
            if ours and status == 404:
                response.failure("a booking confirmed with 201 is not in the record")
            elif 200 <= status < 300 or status in DOMAIN_OUTCOMES or code == PHONE_USED_UP:
                response.success()
            else:
                response.failure(f"{status} {code}".strip())
            return response

    def sign_in(self) -> bool:
        """A new person: a phone number, a national ID, and the code the phone receives."""
        self.mobile = new_mobile(self.rng)
        self.national_id = generate_national_id(self.rng)
        self.address = client_address(self.rng)
        asked = time.time()
        response = self.call("POST", "/api/v1/auth/otp", "/api/v1/auth/otp", json={"mobile": self.mobile})
        if response.status_code != 202:
            return False
        code = self.read_code(asked)
        if code is None:
            return False
        verified = self.call(
            "POST", "/api/v1/auth/verify", "/api/v1/auth/verify", json={"mobile": self.mobile, "code": code}
        )
        if verified.status_code != 200:
            return False
        self.token = verified.json()["access_token"]
        return True

    def read_code(self, asked: float) -> str | None:
        """Wait for this phone's code, as the phone would; report how long the SMS took."""
        found = wait_for_sms(self.mobile, OTP_CODE, seen=set(), deadline=asked + SMS_WAIT_SECONDS)
        if found is None:
            report_sms("sign-in code", asked, TimeoutError(f"no code within {SMS_WAIT_SECONDS:.0f} s"))
            return None
        report_sms("sign-in code", asked)
        return found[1]

    def book(self, office: str, day: dt.date, slot: str | None = None, service: str = "101") -> Any:
        body: dict[str, Any] = {
            "national_id": self.national_id,
            "office_code": office,
            "service_code": service,
            "date": day.isoformat(),
        }
        if slot:
            body["slot"] = slot
        key = f"lt-{self.mobile}-{self.rng.getrandbits(40):x}"
        response = self.call(
            "POST", "/api/v1/bookings", "/api/v1/bookings", auth=True, json=body, headers={"Idempotency-Key": key}
        )
        if response.status_code == 429 and problem_code(response) == PHONE_USED_UP:
            self.token = ""  # this phone has made its bookings: the next is another citizen's, signed in anew
        return response


class RushCitizen(Citizen):
    """The morning rush: everyone at the same few offices at the same moment.

    Each citizen signs in once; the booking window opens when every one of them has (or at
    a deadline), and they all press "book" together. After each booking the same phone books
    again for another member of the family (another national ID), as people do in a rush.
    """

    wait_time = between(0.1, 0.5)
    ready = 0  # citizens signed in (gevent runs one greenlet at a time: a plain counter is safe)
    opened_at = 0.0

    def on_start(self) -> None:
        super().on_start()
        self.signed_in = self.sign_in()
        RushCitizen.ready += self.signed_in

    def wait_for_opening(self) -> None:
        """Until everyone has signed in, or the deadline: the same moment for all of them."""
        if RushCitizen.opened_at:
            return
        while RushCitizen.ready < FIXTURE["rush_users"] and time.time() < FIXTURE["rush_opens_by"]:
            gevent.sleep(0.1)
        if not RushCitizen.opened_at:
            RushCitizen.opened_at = time.time()
            # The rush lasts --duration seconds from the opening, however long signing in took.
            runner = self.environment.runner
            if runner is not None:
                gevent.spawn_later(FIXTURE["rush_seconds"], runner.quit)

    @task
    def rush(self) -> None:
        if not self.signed_in or not self.token:
            self.signed_in = self.sign_in()
            if not RushCitizen.opened_at:  # the next citizen after a phone's last booking is not one more waited for
                RushCitizen.ready += self.signed_in
            return
        self.wait_for_opening()
        hot = self.rng.choice(FIXTURE["hot_offices"])
        day = dt.date.fromisoformat(FIXTURE["rush_day"])
        lat = hot["lat"] + self.rng.uniform(-0.02, 0.02)
        lon = hot["lon"] + self.rng.uniform(-0.02, 0.02)
        nearby = self.call(
            "GET",
            f"/api/v1/offices/nearby?service=101&lat={lat:.5f}&lon={lon:.5f}&date={day.isoformat()}&limit=10",
            "/api/v1/offices/nearby",
        )
        booked = self.book(hot["code"], day)
        if booked.status_code == 409 and nearby.status_code == 200:
            # Full: take what the nearby search offered, least busy first.
            offers = [
                o for o in nearby.json().get("offices", []) if o.get("next_free_slot") and o["code"] != hot["code"]
            ]
            for offer in offers[:3]:
                booked = self.book(offer["code"], day, offer["next_free_slot"])
                if booked.status_code != 409:
                    break
            else:
                if self.rng.random() < 0.2:
                    self.call(
                        "POST",
                        "/api/v1/waitlist",
                        "/api/v1/waitlist",
                        auth=True,
                        json={
                            "national_id": self.national_id,
                            "office_code": hot["code"],
                            "service_code": "101",
                            "date": day.isoformat(),
                        },
                    )
        if booked.status_code == 201:
            tracking = booked.json()["tracking_code"]
            confirmed(tracking)
            self.call("GET", f"/api/v1/bookings/{tracking}", "/api/v1/bookings/{code}", ours=True)
            if self.rng.random() < 0.1:
                # A change of plan: the seat goes back (to the waitlist first).
                self.call("POST", f"/api/v1/bookings/{tracking}/cancel", "/api/v1/bookings/{code}/cancel", auth=True)
        # Next, the same phone books for another member of the family.
        self.national_id = generate_national_id(self.rng)


class SteadyCitizen(Citizen):
    """An ordinary day across the country: mostly looking, sometimes booking or cancelling."""

    wait_time = between(1, 4)
    weight = 8

    def on_start(self) -> None:
        super().on_start()
        self.bookings: list[str] = []
        self.office = self.pick_office()

    def pick_office(self) -> list[Any]:
        return self.rng.choice(FIXTURE["offices"])  # [code, lat, lon, province, [services]]

    def service_of(self, office: list[Any]) -> str:
        return self.rng.choice(office[4])

    @task(1)
    def services(self) -> None:
        self.call("GET", "/api/v1/services", "/api/v1/services")

    @task(2)
    def search(self) -> None:
        office = self.pick_office()
        self.call(
            "GET",
            f"/api/v1/offices?province={office[3]}&service={self.service_of(office)}&limit=20",
            "/api/v1/offices",
        )

    @task(3)
    def office_detail(self) -> None:
        self.office = self.pick_office()
        self.call("GET", f"/api/v1/offices/{self.office[0]}", "/api/v1/offices/{code}")

    @task(6)
    def slots(self) -> None:
        day = horizon_day(self.rng)
        self.call(
            "GET",
            f"/api/v1/offices/{self.office[0]}/slots?service={self.service_of(self.office)}&date={day.isoformat()}",
            "/api/v1/offices/{code}/slots",
        )

    @task(4)
    def nearby(self) -> None:
        _, lat, lon = self.rng.choice(FIXTURE["cities"])
        lat += self.rng.uniform(-0.05, 0.05)
        lon += self.rng.uniform(-0.05, 0.05)
        service = self.rng.choice(FIXTURE["common_services"])
        self.call(
            "GET", f"/api/v1/offices/nearby?service={service}&lat={lat:.5f}&lon={lon:.5f}", "/api/v1/offices/nearby"
        )

    @task(1)
    def office_load(self) -> None:
        self.call("GET", f"/api/v1/offices/{self.office[0]}/load", "/api/v1/offices/{code}/load")

    @task(2)
    def book_one(self) -> None:
        if not self.token and not self.sign_in():
            return
        if len(self.bookings) >= 3:
            self.cancel_one()
        booked = self.book(self.office[0], horizon_day(self.rng), service=self.service_of(self.office))
        if booked.status_code == 201:
            self.bookings.append(booked.json()["tracking_code"])
            confirmed(self.bookings[-1])

    @task(1)
    def look_up(self) -> None:
        if self.bookings:
            code = self.rng.choice(self.bookings)
            self.call("GET", f"/api/v1/bookings/{code}", "/api/v1/bookings/{code}", ours=True)

    @task(1)
    def cancel_one(self) -> None:
        if self.bookings:
            code = self.bookings.pop(self.rng.randrange(len(self.bookings)))
            self.call("POST", f"/api/v1/bookings/{code}/cancel", "/api/v1/bookings/{code}/cancel", auth=True)


class SmsCitizen(FastHttpUser):
    """A basic phone: texts the service number; Twilio posts each text to our webhook, signed."""

    wait_time = between(2, 6)
    weight = 2
    network_timeout = 30.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.phone = "+98" + new_mobile(self.rng)[1:]
        self.national_id = generate_national_id(self.rng)
        self.texted = 0
        self.validator = RequestValidator(FIXTURE["twilio_token"])
        self.codes: list[str] = []
        self.known: set[str] = set()  # every tracking code this user was given

    def text(self, body: str, name: str) -> None:
        params = {
            "MessageSid": f"SMlt{self.rng.getrandbits(96):024x}",
            "AccountSid": FIXTURE["twilio_account_sid"],
            "From": self.phone,
            "To": "+15005550006",
            "Body": body,
        }
        signature = self.validator.compute_signature(FIXTURE["public_url"] + INBOUND, params)
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        with self.client.post(
            INBOUND, name=f"{INBOUND} ({name})", data=urlencode(params), headers=headers, catch_response=True
        ) as response:
            status = response.status_code or 0
            tally(f"POST {INBOUND} ({name}) {status}")
            if status == 200:
                response.success()
            else:
                response.failure(f"{status} {problem_code(response)}".strip())

    def ask(self, body: str, name: str, ignore: Callable[[str], bool] = lambda body: False) -> re.Match[str] | None:
        """Text ``body`` and wait for its answer, as the phone's owner would before the next
        text: an answer left unread (a status, a cancel) was taken for the next booking's, and
        that booking's confirmation, never read, escaped the lost-booking check."""
        seen = {message_id for message_id, _ in inbox(self.phone)}
        sent = time.time()
        self.text(body, name)
        reply = wait_for_sms(self.phone, ANY_TEXT, seen=seen, deadline=sent + SMS_WAIT_SECONDS, ignore=ignore)
        report_sms(f"reply to a text ({name})", sent, None if reply is not None else TimeoutError("no reply"))
        return reply

    def about_known(self, body: str) -> bool:
        return any(code in self.known for code in CODE_LIKE.findall(body))

    def persian(self, text: str) -> str:
        # Half the phones type Persian digits.
        return text.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")) if self.rng.random() < 0.5 else text

    @task(4)
    def book(self) -> None:
        office = self.rng.choice(FIXTURE["offices"])
        day = horizon_day(self.rng)
        keyword = self.rng.choice(["نوبت", "BOOK", "book"])
        # The answer comes by SMS: a confirmation with the tracking code, or why not.
        reply = self.ask(
            self.persian(f"{keyword} {office[0]} {self.rng.choice(office[4])} {day.isoformat()} {self.national_id}"),
            "book",
            # Not a message about a booking this user knows already (a clerk's move of it, a
            # late answer): the answer to a booking text names a new one, or none.
            ignore=self.about_known,
        )
        if reply is not None and (code := TRACKING.search(reply.string)):
            self.codes.append(code[1])
            self.known.add(code[1])
            confirmed(code[1])
        # The next booking is another person's (one national ID may hold 3 at most), and
        # after a family's, from another phone (one phone may make only so many).
        self.national_id = generate_national_id(self.rng)
        self.texted += 1
        if self.texted % FAMILY == 0:
            self.phone = "+98" + new_mobile(self.rng)[1:]

    @task(1)
    def offices(self) -> None:
        name, _, _ = self.rng.choice(FIXTURE["cities"])
        self.ask(f"دفاتر {name} {self.rng.choice(FIXTURE['common_services'])}", "offices")

    @task(1)
    def status_or_cancel(self) -> None:
        if self.codes:
            code = self.codes.pop()
            self.ask(f"وضعیت {code}", "status")
            if self.rng.random() < 0.5:
                self.ask(f"لغو {code}", "cancel")


class StaffClerk(FastHttpUser):
    """The clerk at a hot office during the rush: check-ins, people waiting, capacity changes."""

    wait_time = between(1, 3)
    fixed_count = len(FIXTURE["hot_offices"])
    network_timeout = 60.0
    _assigned = itertools.count()

    def on_start(self) -> None:
        self.rng = random.Random()
        self.office = FIXTURE["hot_offices"][next(self._assigned) % len(FIXTURE["hot_offices"])]
        self.address = client_address(self.rng)
        self.token = ""
        self.raised = False
        response = self.staff_call(
            "POST",
            f"{STAFF_URL}/api/v1/staff/login",
            "/api/v1/staff/login",
            json={"username": self.office["staff_user"], "password": self.office["staff_password"]},
            auth=False,
        )
        if response.status_code == 200:
            self.token = response.json()["access_token"]
        template = self.staff_call("GET", self.path("/template"), "/api/v1/staff/offices/{code}/template")
        day = dt.date.fromisoformat(FIXTURE["rush_day"])
        weekday = str((day.weekday() + 2) % 7)  # 0 = Saturday, as app.capacity.plan
        self.rules = template.json().get("days", {}).get(weekday, []) if template.status_code == 200 else []

    def path(self, rest: str) -> str:
        return f"{STAFF_URL}/api/v1/staff/offices/{self.office['code']}{rest}"

    def staff_call(self, method: str, path: str, name: str, *, auth: bool = True, **kw: Any) -> Any:
        headers = {"X-Forwarded-For": self.address}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        with self.client.request(method, path, name=name, headers=headers, catch_response=True, **kw) as response:
            status = response.status_code or 0
            code = problem_code(response) if status >= 400 else ""
            tally(f"{method} {name} {status}{' ' + code if code else ''}")
            if 200 <= status < 300 or status in DOMAIN_OUTCOMES:
                response.success()
            else:
                response.failure(f"{status} {code}".strip())
            return response

    @task(6)
    def check_in(self) -> None:
        queue = self.staff_call("GET", self.path("/queue"), "/api/v1/staff/offices/{code}/queue")
        if queue.status_code != 200:
            return
        waiting = [entry["tracking_code"] for entry in queue.json() if entry["status"] == "booked"]
        for code in self.rng.sample(waiting, min(3, len(waiting))):
            self.staff_call(
                "POST", self.path(f"/queue/{code}/check-in"), "/api/v1/staff/offices/{code}/queue/{tracking}/check-in"
            )

    @task(2)
    def report_waiting(self) -> None:
        self.staff_call(
            "PUT",
            self.path("/waiting"),
            "/api/v1/staff/offices/{code}/waiting",
            json={"waiting": self.rng.randrange(40)},
        )

    @task(3)  # often enough that a run measures a couple of dozen changes, not a handful
    def change_capacity(self) -> None:
        """Open a counter more for the rush day, later close it again (moving whoever no longer fits)."""
        if not self.rules:
            return
        day = FIXTURE["rush_day"]
        name = "/api/v1/staff/offices/{code}/overrides/{date}"
        if not self.raised:
            rules = [{**rule, "seats": min(100, rule["seats"] + 1)} for rule in self.rules]
            body = {"rules": rules, "reason": "load test: one more counter for the rush"}
            response = self.staff_call("PUT", self.path(f"/overrides/{day}"), name, json=body)
            self.raised = response.status_code == 200
        else:
            response = self.staff_call("DELETE", self.path(f"/overrides/{day}"), name)
            if response.status_code == 409:
                response = self.staff_call(
                    "DELETE", self.path(f"/overrides/{day}?move_overflow=true"), name + "?move_overflow"
                )
            self.raised = response.status_code != 200

    @task(1)
    def days(self) -> None:
        self.staff_call("GET", self.path("/days"), "/api/v1/staff/offices/{code}/days")
