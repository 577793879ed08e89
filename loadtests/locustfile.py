"""Rush scenario: citizens sign in with the SMS code, look at slots and book in a few hot offices.

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 200 -r 50 -t 30s

The codes are read from the console backend's outbox in Redis (NOBAT_LOADTEST_REDIS_URL),
as a phone would receive them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re

from locust import HttpUser, between, task
from redis import Redis

from app.identity import generate_national_id

HOT_OFFICES = os.environ.get("NOBAT_HOT_OFFICES", "010001,010002,010003").split(",")
OUTBOX = "nobat:sms:outbox"
_CODE = re.compile(r"\(([0-9]{6})\)")


class Citizen(HttpUser):
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.mobile = "0912" + f"{self.rng.randrange(10**7):07d}"
        self.national_id = generate_national_id(self.rng)
        self.client.post("/api/v1/auth/otp", json={"mobile": self.mobile})
        outbox = Redis.from_url(os.environ.get("NOBAT_LOADTEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
        code = ""
        for raw in outbox.lrange(OUTBOX, 0, 500):
            message = json.loads(raw)
            if message["to"] == self.mobile and (found := _CODE.search(message["body"])):
                code = found[1]
                break
        response = self.client.post("/api/v1/auth/verify", json={"mobile": self.mobile, "code": code})
        self.headers = {"Authorization": f"Bearer {response.json().get('access_token', '')}"}

    @task(3)
    def slots(self) -> None:
        office = self.rng.choice(HOT_OFFICES)
        day = (dt.date.today() + dt.timedelta(days=1)).isoformat()
        self.client.get(f"/api/v1/offices/{office}/slots?service=101&date={day}", name="/offices/{code}/slots")

    @task(1)
    def book(self) -> None:
        office = self.rng.choice(HOT_OFFICES)
        day = (dt.date.today() + dt.timedelta(days=1)).isoformat()
        body = {"national_id": self.national_id, "office_code": office, "service_code": "101", "date": day}
        with self.client.post("/api/v1/bookings", json=body, headers=self.headers, catch_response=True) as response:
            if response.status_code in (201, 409):
                response.success()
