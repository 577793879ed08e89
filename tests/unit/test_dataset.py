import math
import re
from collections import Counter

import pytest

from app.capacity.plan import decode_template
from app.offices.catalogue import BY_CODE, OPERATOR_SERVICES, RURAL_SERVICES, SERVICES
from app.offices.dataset import METROPOLISES, Dataset, generate, slice_of
from app.offices.models import CityClass, OfficeKind, OfficeStatus

OFFICE_CODE = re.compile(r"[0-9]{6}", re.ASCII)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate()


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # Equirectangular approximation: good to a few percent over a province.
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    y = math.radians(lat2 - lat1)
    return 6371 * math.hypot(x, y)


def _assert_consistent(ds: Dataset) -> None:
    province_ids = {p["id"] for p in ds.provinces}
    cities = {c["id"]: c for c in ds.cities}
    office_ids = {o["id"] for o in ds.offices}
    service_codes = {s["code"] for s in ds.services}
    assert len(cities) == len(ds.cities)
    assert len(office_ids) == len(ds.offices)
    assert all(c["province_id"] in province_ids for c in ds.cities)
    assert all(o["city_id"] in cities for o in ds.offices)
    assert all(r["office_id"] in office_ids and r["service_code"] in service_codes for r in ds.office_services)
    assert set(ds.templates) == {o["code"] for o in ds.offices}


def test_same_seed_same_output() -> None:
    assert generate(seed=7, offices=2_000) == generate(seed=7, offices=2_000)


def test_other_seed_other_output() -> None:
    assert generate(seed=7, offices=2_000).offices != generate(seed=8, offices=2_000).offices


def test_full_network_has_all_provinces_and_offices(dataset: Dataset) -> None:
    assert len(dataset.offices) == 17_000
    assert [p["code"] for p in dataset.provinces] == [f"{i:02d}" for i in range(1, 32)]
    cities = {c["id"]: c for c in dataset.cities}
    provinces_with_offices = {cities[o["city_id"]]["province_id"] for o in dataset.offices}
    assert provinces_with_offices == {p["id"] for p in dataset.provinces}
    _assert_consistent(dataset)


def test_office_codes_are_six_ascii_digits_led_by_the_province_code(dataset: Dataset) -> None:
    codes = [o["code"] for o in dataset.offices]
    assert len(set(codes)) == len(codes)
    assert all(OFFICE_CODE.fullmatch(code) for code in codes)
    cities = {c["id"]: c for c in dataset.cities}
    province_code = {p["id"]: p["code"] for p in dataset.provinces}
    for office in dataset.offices:
        assert office["code"][:2] == province_code[cities[office["city_id"]]["province_id"]]


def test_every_office_offers_services_from_the_catalogue(dataset: Dataset) -> None:
    offered: dict[int, set[str]] = {}
    for row in dataset.office_services:
        offered.setdefault(row["office_id"], set()).add(row["service_code"])
    assert len(dataset.office_services) == sum(len(codes) for codes in offered.values())  # no duplicate pairs
    for office in dataset.offices:
        codes = offered[office["id"]]
        assert codes <= BY_CODE.keys()
        if office["kind"] is OfficeKind.COUNTER:
            assert len(codes) >= 12
            assert set(OPERATOR_SERVICES) <= codes  # no discrimination between operators
        else:
            assert codes == set(RURAL_SERVICES)


def test_offices_are_active_with_sensible_counters(dataset: Dataset) -> None:
    cities = {c["id"]: c for c in dataset.cities}
    for office in dataset.offices:
        assert office["status"] is OfficeStatus.ACTIVE
        assert office["cap_percent"] == 100
        if office["kind"] is OfficeKind.RURAL_ICT:
            assert 1 <= office["counters"] <= 2
        else:
            assert 1 <= office["counters"] <= 6
    metropolis = [o["counters"] for o in dataset.offices if cities[o["city_id"]]["city_class"] is CityClass.METROPOLIS]
    town = [o["counters"] for o in dataset.offices if cities[o["city_id"]]["city_class"] is CityClass.OTHER_CITY]
    assert sum(metropolis) / len(metropolis) > sum(town) / len(town)


def test_rural_urban_split(dataset: Dataset) -> None:
    kinds = Counter(o["kind"] for o in dataset.offices)
    assert kinds[OfficeKind.RURAL_ICT] / len(dataset.offices) == pytest.approx(10 / 16, abs=0.02)
    cities = {c["id"]: c for c in dataset.cities}
    for office in dataset.offices:
        in_village = cities[office["city_id"]]["city_class"] is CityClass.VILLAGE
        assert in_village == (office["kind"] is OfficeKind.RURAL_ICT)


def test_every_city_has_a_counter_office_and_every_village_one_rural_office(dataset: Dataset) -> None:
    per_city = Counter(o["city_id"] for o in dataset.offices)
    for city in dataset.cities:
        if city["city_class"] is CityClass.VILLAGE:
            assert per_city[city["id"]] == 1
        else:
            assert per_city[city["id"]] >= 1


def test_population_adds_up_and_is_about_three_quarters_urban(dataset: Dataset) -> None:
    for province in dataset.provinces:
        cities = [c for c in dataset.cities if c["province_id"] == province["id"]]
        assert sum(c["population"] for c in cities) == province["population"]
    total = sum(p["population"] for p in dataset.provinces)
    assert total == 79_926_270  # the 2016 census
    urban = sum(c["population"] for c in dataset.cities if c["city_class"] is not CityClass.VILLAGE)
    assert urban / total == pytest.approx(0.74, abs=0.01)


def test_people_per_office_match_the_module_docstring(dataset: Dataset) -> None:
    people = Counter[OfficeKind]()
    offices = Counter(o["kind"] for o in dataset.offices)
    for city in dataset.cities:
        kind = OfficeKind.RURAL_ICT if city["city_class"] is CityClass.VILLAGE else OfficeKind.COUNTER
        people[kind] += city["population"]
    assert 8_500 < people[OfficeKind.COUNTER] / offices[OfficeKind.COUNTER] < 10_000
    assert 1_800 < people[OfficeKind.RURAL_ICT] / offices[OfficeKind.RURAL_ICT] < 2_100


def test_the_eight_metropolises(dataset: Dataset) -> None:
    metropolises = {c["name_en"]: c["population"] for c in dataset.cities if c["city_class"] is CityClass.METROPOLIS}
    assert metropolises == METROPOLISES
    capitals = [c for c in dataset.cities if c["city_class"] is CityClass.PROVINCE_CAPITAL]
    assert len(capitals) == 23
    assert all(c["population"] < 1_000_000 for c in capitals)
    over_50k = [c for c in dataset.cities if c["city_class"] is CityClass.CITY_OVER_50K]
    assert over_50k and all(c["population"] > 50_000 for c in over_50k)
    assert all(c["population"] <= 50_000 for c in dataset.cities if c["city_class"] is CityClass.OTHER_CITY)


def test_city_names_are_unique_per_province_with_a_latin_form(dataset: Dataset) -> None:
    names = Counter((c["province_id"], c["name_fa"]) for c in dataset.cities)
    assert max(names.values()) == 1
    assert all(c["name_en"].isascii() and c["name_en"] for c in dataset.cities)


def test_places_lie_near_their_capital_and_offices_near_their_city(dataset: Dataset) -> None:
    cities = {c["id"]: c for c in dataset.cities}
    capital = {}
    for city in dataset.cities:
        if city["city_class"] in (CityClass.METROPOLIS, CityClass.PROVINCE_CAPITAL):
            capital[city["province_id"]] = city
    for city in dataset.cities:
        centre = capital[city["province_id"]]
        assert _km(city["lat"], city["lon"], centre["lat"], centre["lon"]) < 155
    for office in dataset.offices:
        city = cities[office["city_id"]]
        assert _km(office["lat"], office["lon"], city["lat"], city["lon"]) < 12.5
        assert 24 < office["lat"] < 41 and 43 < office["lon"] < 64  # roughly Iran


def test_templates_follow_the_office(dataset: Dataset) -> None:
    for office in dataset.offices[::97]:
        template = decode_template(dataset.templates[office["code"]])
        saturday = template.days[0][0]
        assert saturday.seats == office["counters"]
        assert saturday.closes == ("14:00" if office["kind"] is OfficeKind.RURAL_ICT else "16:00")
        assert template.days[6] == []


def test_catalogue_codes_and_figures() -> None:
    codes = [s.code for s in SERVICES]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[0-9]{3}", code, re.ASCII) for code in codes)
    assert all(5 <= s.duration_minutes <= 30 for s in SERVICES)
    assert all(10_000 <= s.tariff_rials <= 1_000_000 for s in SERVICES)
    assert set(RURAL_SERVICES) < set(codes)
    assert set(OPERATOR_SERVICES) <= set(RURAL_SERVICES)


def test_small_networks_work_and_tiny_ones_are_refused() -> None:
    small = generate(offices=200)
    assert len(small.offices) == 200
    _assert_consistent(small)
    with pytest.raises(ValueError):
        generate(offices=50)


def test_slice_is_small_and_consistent(dataset: Dataset) -> None:
    part = slice_of(dataset)
    assert [p["code"] for p in part.provinces] == ["01"]
    assert len(part.offices) == 50
    assert {o["code"][:2] for o in part.offices} == {"01"}
    assert {o["kind"] for o in part.offices} == {OfficeKind.COUNTER, OfficeKind.RURAL_ICT}
    _assert_consistent(part)
    # Only what the slice's offices need.
    assert {c["id"] for c in part.cities} == {o["city_id"] for o in part.offices}
    assert {s["code"] for s in part.services} == {r["service_code"] for r in part.office_services}


def test_slice_of_several_provinces(dataset: Dataset) -> None:
    part = slice_of(dataset, provinces=3, offices=300)
    assert len(part.provinces) == 3
    assert len(part.offices) == 300
    assert {o["code"][:2] for o in part.offices} == {"01", "02", "03"}
    _assert_consistent(part)
