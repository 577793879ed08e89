"""The in-memory office directory: bookings ask SQL nothing, yet never act on a stale copy
of what decides where a seat comes from."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import delete, event, select, update

from app.capacity import keys
from app.capacity.plan import DayRule
from app.container import Container
from app.offices import directory as office_directory
from app.offices.directory import OfficeDirectory
from app.offices.errors import OfficeNotFound, ServiceNotFound, ServiceNotOffered
from app.offices.models import Office, OfficeService, Service
from tests.conftest import World, booking_body, rebuild
from tests.integration.test_console import every_day, staff_of

Client = AsyncTestClient[Litestar]


async def test_a_loaded_office_is_booked_without_a_query(container: Container, world: World) -> None:
    office = await world.office()
    directory = OfficeDirectory(sessions=container.sessions, redis=container.redis)
    await directory.load()
    statements: list[str] = []
    event.listen(container.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    found = await directory.bookable(office_code=office, service_code="۱۰۱")
    assert (found.code, found.service_code, found.pool, found.name_fa) == (office, "101", "*", f"دفتر {office}")
    assert statements == []


async def test_an_office_made_after_the_load_is_found_and_errors_come_from_the_record(
    container: Container, world: World
) -> None:
    directory = OfficeDirectory(sessions=container.sessions, redis=container.redis)
    await directory.load()
    office = await world.office(services=("101",))
    assert (await directory.bookable(office_code=office, service_code="101")).code == office
    with pytest.raises(ServiceNotOffered):
        await directory.bookable(office_code=office, service_code="102")
    with pytest.raises(ServiceNotFound):
        await directory.bookable(office_code=office, service_code="999")
    with pytest.raises(OfficeNotFound):
        await directory.bookable(office_code="999999", service_code="101")


async def test_a_template_with_counters_of_its_own_routes_bookings_at_once_everywhere(
    client: Client, container: Container, world: World, redis_sync: SyncRedis
) -> None:
    office = await world.office(seats=3)
    day = world.tomorrow()
    first = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, service="102"), headers=world.token()
    )
    assert first.status_code == 201, first.text  # this instance now holds 102 -> shared seats

    # Another instance, loaded before the change.
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()

    template = every_day(3)
    passport_desk = {"opens": "08:00", "closes": "20:00", "slot_minutes": 30, "seats": 1, "service": "102"}
    for rules in template["days"].values():
        rules.append(passport_desk)
    headers = await staff_of(client, world, office)
    changed = await client.put(f"/api/v1/staff/offices/{office}/template", json=template, headers=headers)
    assert changed.status_code == 200, changed.text

    # This instance: the next booking of service 102 takes the desk's own seat.
    booked = await client.post(
        "/api/v1/bookings",
        json=booking_body(office, world.national_id(), day, service="102"),
        headers=world.token(),
    )
    assert booked.status_code == 201, booked.text
    assert int(redis_sync.hget(keys.office_day(office, day), keys.used_field("102", "10:00")) or 0) == 1

    # The other instance notices the bump and reloads in the background.
    await _caught_up(other, container, office)
    found = await other.bookable(office_code=office, service_code="102")
    assert found.pool == "102"


async def _caught_up(directory: OfficeDirectory, container: Container, office: str) -> None:
    """Let the directory take its next look at the version, and wait for the reload it starts."""
    await directory.bookable(office_code=office, service_code="101")
    for _ in range(200):
        if directory._reloading and directory._reloading.done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the directory did not reload")


async def _rename_on_one_instance(container: Container, world: World, name: str) -> tuple[str, str, OfficeDirectory]:
    """Another instance's directory, loaded; then an office renamed through this one.
    Returns the renamed office, one left untouched, and the other instance's directory."""
    changed, untouched = await world.office(), await world.office()
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    async with container.sessions() as session:
        await session.execute(update(Office).where(Office.code == changed).values(name_fa=name))
        await session.commit()
    await container.offices.changed(changed)
    return changed, untouched, other


async def test_another_instance_reads_again_only_the_office_that_changed(container: Container, world: World) -> None:
    changed, untouched, other = await _rename_on_one_instance(container, world, "دفتر تازه")
    kept = other._offices[untouched]
    await _caught_up(other, container, untouched)

    assert other._offices[changed].name_fa == "دفتر تازه"
    assert other._offices[untouched] is kept  # not read again
    assert other._version[1] == int(await container.redis.get(keys.DIRECTORY_VERSION))


async def test_when_the_log_cannot_say_what_changed_everything_is_read_again(
    container: Container, world: World
) -> None:
    changed, untouched, other = await _rename_on_one_instance(container, world, "دفتر دیگر")
    kept = other._offices[untouched]
    await container.redis.delete(keys.DIRECTORY_CHANGES)  # trimmed, or lost with Redis's data
    await _caught_up(other, container, untouched)

    assert other._offices[changed].name_fa == "دفتر دیگر"
    assert other._offices[untouched] is not kept and other._offices[untouched].code == untouched


async def test_a_change_that_could_not_be_told_is_told_on_a_later_look(
    container: Container, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_change, attempts = office_directory.log_change, []

    async def redis_away_once(redis: Any, office_code: str) -> None:
        attempts.append(office_code)
        if len(attempts) == 1:
            raise RedisConnectionError("Redis is away")
        await log_change(redis, office_code)

    monkeypatch.setattr(office_directory, "log_change", redis_away_once)
    changed, untouched, other = await _rename_on_one_instance(container, world, "دفتر سوم")
    await other.bookable(office_code=untouched, service_code="101")  # a look
    assert other._reloading is None and other._offices[changed].name_fa != "دفتر سوم"  # not told yet

    container.offices._checked_at = 0.0
    await container.offices._keep_fresh()  # this instance's next look tells it
    await _caught_up(other, container, untouched)
    assert other._offices[changed].name_fa == "دفتر سوم" and len(attempts) == 2


async def test_numbers_counted_again_after_redis_lost_its_data_are_not_taken_for_the_old(
    container: Container, world: World
) -> None:
    changed, untouched = await world.office(), await world.office()
    await container.offices.changed(changed)  # so that there is an epoch
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    seen, kept = other._version[1], other._offices[untouched]
    # Redis lost its data; since, the counter has come back to the number this copy saw.
    await container.redis.delete(keys.DIRECTORY_VERSION, keys.DIRECTORY_CHANGES, keys.DIRECTORY_EPOCH)
    await container.redis.set(keys.DIRECTORY_VERSION, seen)
    await container.offices.changed(changed)  # number seen + 1, logged, in a new epoch
    await _caught_up(other, container, untouched)
    # The log holds only seen + 1 and would have looked complete: the epoch says it is not.
    assert other._offices[untouched] is not kept


async def _nearest(directory: OfficeDirectory, service_code: str = "101") -> dict[str, float]:
    found = await directory.nearest(service_code=service_code, lat=35.70, lon=51.40, count=30, radius_km=1000)
    return dict(found)


async def test_a_rebuild_has_every_instance_find_the_offices_imported_since(container: Container, world: World) -> None:
    """Offices come into the record by import, which no instance hears of; the rebuild that
    follows has every instance read the whole registry again, so nearby searches find them."""
    known = await world.office()
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    imported = await world.office(lat=35.71, lon=51.40)
    assert list(await _nearest(other)) == [known]

    await rebuild(container)
    await _caught_up(other, container, known)
    assert list(await _nearest(other)) == [known, imported]


async def test_the_catalogue_is_listed_with_no_query_and_an_imported_service_after_the_rebuild(
    client: Client, container: Container, world: World
) -> None:
    """The home page and ``/api/v1/services`` list the catalogue from the directory (it had
    cost the home page two thirds of its time); a service imported since is listed once the
    rebuild that follows has every instance read the registry again."""
    known = await world.office()
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    statements: list[str] = []
    event.listen(container.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    listed = [service.code for service in await other.services()]
    assert statements == [] and "101" in listed and listed == sorted(listed)
    async with container.sessions() as session:
        session.add(
            Service(code="990", name_fa="خدمت تازه", name_en="New", agency_fa="-", duration_minutes=5, tariff_rials=0)
        )
        await session.commit()
    assert "990" not in [service.code for service in await other.services()]
    await rebuild(container)
    await _caught_up(other, container, known)
    assert "990" in [service.code for service in await other.services()]
    answer = await client.get("/api/v1/services")
    assert answer.status_code == 200 and "101" in [service["code"] for service in answer.json()]


async def test_an_office_that_moved_or_dropped_a_service_is_found_where_it_is_now(
    container: Container, world: World
) -> None:
    moved, untouched = await world.office(lat=35.70, lon=51.41), await world.office(lat=35.70, lon=51.45)
    other = OfficeDirectory(sessions=container.sessions, redis=container.redis, check_every=0)
    await other.load()
    assert list(await _nearest(other, "102")) == [moved, untouched]
    async with container.sessions() as session:
        office_id = await session.scalar(select(Office.id).where(Office.code == moved))
        await session.execute(update(Office).where(Office.id == office_id).values(lon=51.50))
        await session.execute(
            delete(OfficeService).where(OfficeService.office_id == office_id, OfficeService.service_code == "102")
        )
        await session.commit()
    await container.offices.changed(moved)
    await _caught_up(other, container, untouched)

    assert list(await _nearest(other, "101")) == [untouched, moved]
    assert (await _nearest(other, "101"))[moved] == pytest.approx(9.04, abs=0.01)
    assert list(await _nearest(other, "102")) == [untouched]


async def test_a_process_that_loaded_no_registry_finds_offices_at_its_first_search(
    container: Container, world: World
) -> None:
    """A job's process builds its parts and loads no directory: its first search (a block's
    moves, an SMS "offices" carried out by the job) had been answered from the empty copy,
    and the block cancelled every booking it could have moved."""
    office = await world.office()
    fresh = OfficeDirectory(sessions=container.sessions, redis=container.redis)  # as a job's, never loaded
    assert list(await _nearest(fresh)) == [office]


async def test_a_process_that_found_one_service_of_an_office_lists_all_its_pools(
    container: Container, world: World
) -> None:
    """A job's process that booked one service at an office held it as that booking found it
    (no template): the office's other pools were left out of the lines to fill there."""
    office = await world.office(
        rules=[
            DayRule(opens="08:00", closes="12:00", slot_minutes=30, seats=2),
            DayRule(opens="09:00", closes="10:00", slot_minutes=30, seats=1, service="103"),
        ],
        services=("101", "103"),
    )
    fresh = OfficeDirectory(sessions=container.sessions, redis=container.redis)  # as a job's, never loaded
    await fresh.bookable(office_code=office, service_code="101")
    assert (await fresh.pools({office}))[office] >= {"*", "103"}
