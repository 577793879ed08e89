"""The registry API over a slice of the national demo network."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.capacity import keys
from app.capacity.watch import rebuild_lock
from app.container import Container
from app.locale import to_persian_digits
from app.offices import dataset
from tests.conftest import health_until

Client = AsyncTestClient[Litestar]


@pytest.fixture
async def demo(container: Container) -> dataset.Dataset:
    data = dataset.slice_of(dataset.generate(offices=2000), provinces=2, offices=60)
    async with container.sessions() as session:
        await dataset.load(session, data)
        await session.commit()
    return data


async def test_services_catalogue(client: Client, demo: dataset.Dataset) -> None:
    response = await client.get("/api/v1/services")
    assert response.status_code == 200
    services = response.json()
    assert len(services) == len(demo.services) >= 20
    assert all(s["name_fa"] and s["duration_minutes"] > 0 for s in services)


async def test_find_offices_by_province_city_and_service(client: Client, demo: dataset.Dataset) -> None:
    everything = (await client.get("/api/v1/offices?limit=100")).json()
    assert everything["total"] == len(demo.offices)
    first = everything["items"][0]
    province = first["city"]["province_fa"]
    by_province = (await client.get("/api/v1/offices", params={"province": province, "limit": 100})).json()
    there = [o["code"] for o in everything["items"] if o["city"]["province_fa"] == province]
    assert [o["code"] for o in by_province["items"]] == there and by_province["total"] == len(there)
    assert 0 < len(there) < everything["total"]  # a filter that was ignored would list them all
    by_city = (await client.get("/api/v1/offices", params={"city": first["city"]["name_fa"], "limit": 100})).json()
    assert first["code"] in {o["code"] for o in by_city["items"]}
    offering = Counter(s["service_code"] for s in demo.office_services)
    some = next(code for code, n in sorted(offering.items()) if 0 < n < len(demo.offices))  # not every office's
    by_service = (await client.get("/api/v1/offices", params={"service": to_persian_digits(some), "limit": 100})).json()
    assert by_service["total"] == offering[some], some
    paged = (await client.get("/api/v1/offices", params={"limit": 5, "offset": 5})).json()
    assert [o["code"] for o in paged["items"]] == [o["code"] for o in everything["items"][5:10]]
    bad = await client.get("/api/v1/offices", params={"limit": 1000})
    assert bad.status_code == 422 and bad.json()["field"] == "limit"


async def test_a_city_is_found_however_its_zwnj_is_typed(client: Client, demo: dataset.Dataset) -> None:
    """«شاه‌رود» is spelled with a ZWNJ; most phones type a space, or nothing, and a name
    copied out of right-to-left text comes wrapped in marks nobody sees."""
    offices_in = {o["city_id"] for o in demo.offices}
    city = next(c for c in demo.cities if "\u200c" in c["name_fa"] and c["id"] in offices_in)
    exact = (await client.get("/api/v1/offices", params={"city": city["name_fa"]})).json()
    assert exact["total"] >= 1
    spelled = city["name_fa"]
    for typed in (spelled.replace("\u200c", " "), spelled.replace("\u200c", ""), f"\u200f{spelled}\u200f"):
        assert (await client.get("/api/v1/offices", params={"city": typed})).json() == exact, typed
    spaced = city["name_en"].upper().replace(" ", "")
    assert (await client.get("/api/v1/offices", params={"city": spaced})).json() == exact
    assert (await client.get("/api/v1/offices", params={"city": spelled[:3]})).json()["total"] == 0  # no prefixes

    service = next(s["service_code"] for s in demo.office_services)
    nearby = await client.get(
        "/api/v1/offices/nearby", params={"service": service, "city": spelled.replace("\u200c", " ")}
    )
    assert nearby.status_code == 200, nearby.text
    assert (nearby.json()["origin_lat"], nearby.json()["origin_lon"]) == (city["lat"], city["lon"])


async def test_one_office_and_its_slots(client: Client, demo: dataset.Dataset, container: Container) -> None:
    listing = (await client.get("/api/v1/offices", params={"service": "101"})).json()
    code = listing["items"][0]["code"]
    office = await client.get(f"/api/v1/offices/{code}")
    assert office.status_code == 200
    detail = office.json()
    assert "101" in {s["code"] for s in detail["services"]}
    assert detail["opening_hours"][0]["weekday_fa"] == "شنبه"
    # The next Saturday is a working day in every demo template.
    today = container.clock.today()
    saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7 or 7)
    slots = await client.get(f"/api/v1/offices/{code}/slots", params={"service": "101", "date": saturday.isoformat()})
    assert slots.status_code == 200, slots.text
    body = slots.json()
    assert body["date_fa"].startswith("شنبه")
    assert body["slots"][0]["time"] == "08:00" and body["slots"][0]["free"] == body["slots"][0]["seats"] > 0
    friday = saturday + dt.timedelta(days=6)
    closed = (
        await client.get(f"/api/v1/offices/{code}/slots", params={"service": "101", "date": friday.isoformat()})
    ).json()
    assert closed["slots"] == []
    missing = await client.get("/api/v1/offices/999999")
    assert missing.status_code == 404 and missing.json()["code"] == "office_not_found"
    far = await client.get(
        f"/api/v1/offices/{code}/slots", params={"service": "101", "date": (today + dt.timedelta(days=40)).isoformat()}
    )
    assert far.status_code == 422


async def test_health(client: Client, container: Container) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await health_until(client, 200)  # the app's first count may still be going
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok", "capacity": "ok"}
    # While another instance counts Redis again from the record, bookings wait here, and so
    # should the load balancer. (Setting the flag by hand raced the app's own watch, which
    # looks once a second and set it back.)
    async with rebuild_lock(container.redis, "another instance") as held:
        assert held
        await container.redis.delete(keys.REBUILT_AT)
        rebuilding = await health_until(client, 503)
    assert rebuilding.json()["capacity"] == "rebuilding" and rebuilding.headers["Retry-After"]
    await health_until(client, 200)  # the watch counts again itself once the lock is free
    schema = await client.get("/schema/openapi.json")
    assert "/api/v1/bookings" in schema.json()["paths"]
