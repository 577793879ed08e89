"""The national demo network: a synthetic but plausible set of provinces, cities and offices.

Built from the 31 provinces of the 2016 census (``data/provinces.csv``). Only the capitals
are real places; towns and villages get made-up names from common Persian place-name parts
and sit within ~150 km of their capital (on the land side, for the coastal and lake-side
capitals); offices sit within ~3 km of their city centre (up to 12 km in the largest
metropolises, so "nearby" still means something there). The eight metropolises keep their
2016 populations; other capitals get a share of their province. About 74% of people live in cities, as in the census.

Office counts. The documents give ~17,000 offices today and an older split of ~16,000 into
~10,000 rural ICT offices and ~6,000 urban counter offices, plus a planning ratio of one
office per ~20,000 people. The ratio cannot describe the whole network (80 million people
at one per 20,000 is only 4,000 offices), so it is read here as the urban planning norm, a
licensing floor that the real network, like this one, far exceeds. With the defaults
(17,000 offices, split 6/16 urban and 10/16 rural) the generator produces:

- 6,375 counter offices for ~59.1 million city dwellers: one per ~9,300 people, about
  twice as dense as the 1-per-20,000 norm;
- 10,625 rural ICT offices, one per village, for ~20.8 million villagers: one per ~2,000;
- overall one office per ~4,700 people.

Only villages that have an office are generated (the real country has far more).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity.models import CapacityTemplate
from app.capacity.plan import default_template, encode_template
from app.locale import ZWNJ, to_persian_digits
from app.offices.catalogue import OPERATOR_SERVICES, RURAL_SERVICES, SERVICES
from app.offices.models import City, CityClass, Office, OfficeKind, OfficeService, OfficeStatus, Province, Service

Row = dict[str, Any]

PROVINCES_CSV = Path(__file__).parent / "data" / "provinces.csv"

URBAN_SHARE = 0.74
COUNTER_SHARE = 6 / 16  # "~16,000, of which ~10,000 rural and ~6,000 urban"
TOWN_SIZE = 24_000  # average non-capital town: gives ~1,200 cities, close to the census count
OVER_50K = 50_000
SPREAD_KM = 150  # towns and villages lie this close to their capital
MIN_OFFICES = 200  # below this some province would get no town at all

# The eight cities above one million in 2016: the licence-fee "metropolises".
METROPOLISES: dict[str, int] = {
    "Tehran": 8_693_706,
    "Mashhad": 3_001_184,
    "Isfahan": 1_961_260,
    "Karaj": 1_592_492,
    "Shiraz": 1_565_572,
    "Tabriz": 1_558_693,
    "Qom": 1_201_158,
    "Ahvaz": 1_184_788,
}

# Bearings (start, width in degrees clockwise from north) that stay on land near capitals
# close to the Caspian, the Persian Gulf or Lake Urmia. Rough, but keeps villages out of water.
LAND_ARCS: dict[str, tuple[float, float]] = {
    "Gilan": (130, 120),
    "Mazandaran": (100, 160),
    "Golestan": (20, 180),
    "Bushehr": (20, 100),
    "Hormozgan": (280, 160),
    "Khuzestan": (280, 200),
    "West Azerbaijan": (190, 160),
    "East Azerbaijan": (290, 260),
}

# Place-name parts: (Persian, Latin). Joined as "noun + suffix", "name + آباد", optionally
# followed by a qualifier, the way real villages tell a Hasanabad from its neighbour.
_NOUNS = (
    ("باغ", "Bagh"), ("چشمه", "Cheshmeh"), ("ده", "Deh"), ("قلعه", "Qaleh"), ("کوه", "Kuh"),
    ("آب", "Ab"), ("سنگ", "Sang"), ("چنار", "Chenar"), ("گل", "Gol"), ("بید", "Bid"),
    ("انار", "Anar"), ("شاه", "Shah"), ("میان", "Mian"), ("تل", "Tal"), ("دره", "Darreh"),
    ("کاریز", "Kariz"), ("بند", "Band"), ("سبز", "Sabz"), ("زرین", "Zarrin"), ("خرم", "Khorram"),
    ("نصر", "Nasr"), ("مهر", "Mehr"), ("امیر", "Amir"), ("گرم", "Garm"), ("سرد", "Sard"),
    ("آهن", "Ahan"), ("نمک", "Namak"), ("شور", "Shur"), ("پیر", "Pir"), ("کهن", "Kohan"),
)  # fmt: skip
_PERSONS = (
    ("حسن", "Hasan"), ("علی", "Ali"), ("محمد", "Mohammad"), ("احمد", "Ahmad"), ("حسین", "Hosein"),
    ("کریم", "Karim"), ("رحیم", "Rahim"), ("جعفر", "Jafar"), ("قاسم", "Qasem"), ("عباس", "Abbas"),
    ("اکبر", "Akbar"), ("ابراهیم", "Ebrahim"), ("فیروز", "Firuz"), ("یوسف", "Yusef"), ("مراد", "Morad"),
    ("رضا", "Reza"), ("اسماعیل", "Esmail"), ("صالح", "Saleh"), ("دولت", "Dowlat"), ("نعمت", "Nemat"),
    ("حاجی", "Haji"), ("شریف", "Sharif"), ("نظام", "Nezam"), ("خلیل", "Khalil"), ("جلال", "Jalal"),
)  # fmt: skip
_SUFFIXES = (
    ("آباد", "abad"), ("سر", "sar"), ("دشت", "dasht"), ("کنار", "kenar"), ("زار", "zar"),
    ("رود", "rud"), ("ستان", "estan"), ("گاه", "gah"), ("بار", "bar"), ("کوه", "kuh"),
)  # fmt: skip
_QUALIFIERS = (
    ("", ""), ("بالا", "Bala"), ("پایین", "Payin"), ("علیا", "Olya"), ("سفلی", "Sofla"),
    ("نو", "Now"), ("کهنه", "Kohneh"), ("بزرگ", "Bozorg"), ("کوچک", "Kuchak"), ("وسطی", "Vosta"),
    ("شرقی", "Sharqi"), ("غربی", "Gharbi"),
)  # fmt: skip

# Letters that never join the next one; after any other letter a compound needs a ZWNJ.
_NON_JOINING = set("اآدذرزژو")

_STREETS = (
    "امام خمینی", "آزادی", "انقلاب", "ولیعصر", "شهید بهشتی", "طالقانی", "شریعتی", "مطهری",
    "جمهوری", "فردوسی", "حافظ", "سعدی", "کشاورز", "شهدا", "معلم", "پاسداران", "مدرس", "بسیج",
)  # fmt: skip
_LANDMARKS = ("جنب دهیاری", "روبه‌روی مسجد جامع", "جنب مدرسه", "کنار خانهٔ بهداشت", "جنب پاسگاه")


class Dataset(msgspec.Struct, kw_only=True):
    """Rows ready for ``insert(Model)``, with the ids already assigned."""

    seed: int
    provinces: list[Row]
    cities: list[Row]
    services: list[Row]
    offices: list[Row]
    office_services: list[Row]
    templates: dict[str, str]  # office code -> msgspec-encoded WeeklyTemplate


class _ProvinceSource(NamedTuple):
    name_en: str
    name_fa: str
    capital_en: str
    capital_fa: str
    population: int
    lat: float
    lon: float


def _read_provinces() -> list[_ProvinceSource]:
    with PROVINCES_CSV.open(encoding="utf-8", newline="") as f:
        return [
            _ProvinceSource(
                r["province_en"],
                r["province_fa"],
                r["capital_en"],
                r["capital_fa"],
                int(r["population_2016"]),
                float(r["capital_lat"]),
                float(r["capital_lon"]),
            )
            for r in csv.DictReader(f)
        ]


def _join(first: str, second: str) -> str:
    return first + ("" if first[-1] in _NON_JOINING else ZWNJ) + second


def _name_pool() -> list[tuple[str, str]]:
    bases = list(_NOUNS)
    bases += [(_join(fa, sfa), en + sen) for fa, en in _NOUNS for sfa, sen in _SUFFIXES if fa != sfa]
    bases += [(_join(fa, "آباد"), en + "abad") for fa, en in _PERSONS]
    return [(f"{fa} {qfa}".strip(), f"{en} {qen}".strip()) for fa, en in bases for qfa, qen in _QUALIFIERS]


_NAME_POOL = _name_pool()


def _apportion(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder), each >= minimum."""
    rest = total - minimum * len(weights)
    if rest < 0:
        raise ValueError(f"cannot give {len(weights)} parts at least {minimum} out of {total}")
    scale = rest / sum(weights)
    quotas = [w * scale for w in weights]
    shares = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: shares[i] - quotas[i])
    for i in by_remainder[: rest - sum(shares)]:
        shares[i] += 1
    return [minimum + share for share in shares]


def _scatter(
    rng: random.Random, lat: float, lon: float, min_km: float, max_km: float, arc: tuple[float, float]
) -> tuple[float, float]:
    # Uniform over the annulus: the square root keeps points from crowding the centre.
    distance = math.sqrt(min_km**2 + rng.random() * (max_km**2 - min_km**2))
    bearing = math.radians(arc[0] + rng.random() * arc[1])
    north, east = distance * math.cos(bearing), distance * math.sin(bearing)
    new_lat = lat + north / 111.0
    new_lon = lon + east / (111.0 * math.cos(math.radians(lat)))
    return round(new_lat, 5), round(new_lon, 5)


def _office_radius_km(population: int) -> float:
    # ~3 km for a town; a metropolis spreads its offices wider so "nearby" still means something.
    return min(12.0, 3.0 * max(1.0, math.sqrt(population / 500_000)))


def _place_names(rng: random.Random, count: int, capital_fa: str) -> list[tuple[str, str]]:
    pool = [name for name in _NAME_POOL if name[0] != capital_fa]
    names = rng.sample(pool, min(count, len(pool)))
    # More places than names (only with far more offices than the real network): number them.
    round_ = 2
    while len(names) < count:
        extra = rng.sample(pool, min(count - len(names), len(pool)))
        names += [(f"{fa} {to_persian_digits(str(round_))}", f"{en} {round_}") for fa, en in extra]
        round_ += 1
    return names


def _capital_population(rng: random.Random, source: _ProvinceSource) -> int:
    if source.capital_en in METROPOLISES:
        return METROPOLISES[source.capital_en]
    # Real non-metropolis capitals hold a fifth to two fifths of their province, and none reach a million.
    return min(950_000, int(round(source.population * rng.uniform(0.20, 0.38), -2)))


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.provinces: list[Row] = []
        self.cities: list[Row] = []
        self.offices: list[Row] = []
        self.office_services: list[Row] = []
        self.templates: dict[str, str] = {}
        self._encoded: dict[tuple[int, bool], str] = {}
        self._catalogue_rest = [s.code for s in SERVICES if s.code not in OPERATOR_SERVICES]

    def add_province(
        self, source: _ProvinceSource, capital_pop: int, urban_pop: int, counter_offices: int, rural_offices: int
    ) -> None:
        if counter_offices + rural_offices > 9_999:
            raise ValueError(f"{source.name_en} would get more than the 9,999 offices its office codes allow")
        rng = self.rng
        province_id = len(self.provinces) + 1
        code = f"{province_id:02d}"
        self.provinces.append(
            {
                "id": province_id,
                "code": code,
                "name_fa": source.name_fa,
                "name_en": source.name_en,
                "population": source.population,
            }
        )
        arc = LAND_ARCS.get(source.name_en, (0.0, 360.0))
        town_pop = urban_pop - capital_pop
        rural_pop = source.population - urban_pop
        # Every city needs a counter office of its own, so there are fewer towns than offices.
        n_towns = max(1, min(round(town_pop / TOWN_SIZE), counter_offices - 1))
        names = iter(_place_names(rng, n_towns + rural_offices, source.capital_fa))

        capital_class = CityClass.METROPOLIS if source.capital_en in METROPOLISES else CityClass.PROVINCE_CAPITAL
        cities = [
            self._city(
                province_id, source.capital_fa, source.capital_en, capital_class, capital_pop, source.lat, source.lon
            )
        ]
        # Town sizes follow a heavy tail, as real ones do: a few big towns, many small ones.
        weights = [rng.lognormvariate(0.0, 1.1) for _ in range(n_towns)]
        town_pops = sorted(_apportion(town_pop, weights, minimum=min(3_000, town_pop // n_towns)), reverse=True)
        for pop in town_pops:
            fa, en = next(names)
            town_class = CityClass.CITY_OVER_50K if pop > OVER_50K else CityClass.OTHER_CITY
            lat, lon = _scatter(rng, source.lat, source.lon, 8, SPREAD_KM, arc)
            cities.append(self._city(province_id, fa, en, town_class, pop, lat, lon))

        sequence = 0
        per_city = _apportion(counter_offices, [c["population"] for c in cities], minimum=1)
        for city, count in zip(cities, per_city, strict=True):
            for _ in range(count):
                sequence += 1
                self._counter_office(source, f"{code}{sequence:04d}", city, arc)

        if rural_offices:
            weights = [rng.lognormvariate(0.0, 0.6) for _ in range(rural_offices)]
            village_pops = _apportion(rural_pop, weights, minimum=min(150, rural_pop // rural_offices))
            for pop in village_pops:
                fa, en = next(names)
                lat, lon = _scatter(rng, source.lat, source.lon, 3, SPREAD_KM, arc)
                village = self._city(province_id, fa, en, CityClass.VILLAGE, pop, lat, lon)
                sequence += 1
                self._rural_office(source, f"{code}{sequence:04d}", village, arc)

    def _city(
        self,
        province_id: int,
        name_fa: str,
        name_en: str,
        city_class: CityClass,
        population: int,
        lat: float,
        lon: float,
    ) -> Row:
        row = {
            "id": len(self.cities) + 1,
            "province_id": province_id,
            "name_fa": name_fa,
            "name_en": name_en,
            "city_class": city_class,
            "population": population,
            "lat": lat,
            "lon": lon,
        }
        self.cities.append(row)
        return row

    def _counter_office(self, source: _ProvinceSource, code: str, city: Row, arc: tuple[float, float]) -> None:
        rng = self.rng
        if city["city_class"] is CityClass.METROPOLIS:
            counters = rng.choices((2, 3, 4, 5, 6), weights=(1, 2, 3, 2, 2))[0]
        elif city["city_class"] is CityClass.PROVINCE_CAPITAL:
            counters = rng.choices((1, 2, 3, 4, 5), weights=(1, 3, 3, 2, 1))[0]
        else:
            counters = rng.choices((1, 2, 3, 4), weights=(3, 4, 2, 1))[0]
        alley, plaque = to_persian_digits(str(rng.randint(1, 40))), to_persian_digits(str(rng.randint(1, 300)))
        street = rng.choice(_STREETS)
        lat, lon = _scatter(rng, city["lat"], city["lon"], 0, _office_radius_km(city["population"]), arc)
        k = rng.randint(len(self._catalogue_rest) // 2, len(self._catalogue_rest))
        self._office(
            code,
            OfficeKind.COUNTER,
            city,
            counters,
            [*OPERATOR_SERVICES, *sorted(rng.sample(self._catalogue_rest, k))],
            name_fa=f"دفتر پیشخوان خدمات دولت شمارهٔ {to_persian_digits(str(int(code[2:])))}",
            address_fa=f"استان {source.name_fa}، {city['name_fa']}، خیابان {street}، کوچهٔ {alley}، پلاک {plaque}",
            lat=lat,
            lon=lon,
        )

    def _rural_office(self, source: _ProvinceSource, code: str, village: Row, arc: tuple[float, float]) -> None:
        rng = self.rng
        counters = rng.choices((1, 2), weights=(3, 1))[0]
        landmark = rng.choice(_LANDMARKS)
        lat, lon = _scatter(rng, village["lat"], village["lon"], 0, 0.5, arc)
        self._office(
            code,
            OfficeKind.RURAL_ICT,
            village,
            counters,
            list(RURAL_SERVICES),
            name_fa=f"دفتر ICT روستایی {village['name_fa']}",
            address_fa=f"استان {source.name_fa}، روستای {village['name_fa']}، خیابان اصلی، {landmark}",
            lat=lat,
            lon=lon,
        )

    def _office(
        self,
        code: str,
        kind: OfficeKind,
        city: Row,
        counters: int,
        services: list[str],
        *,
        name_fa: str,
        address_fa: str,
        lat: float,
        lon: float,
    ) -> None:
        office_id = len(self.offices) + 1
        self.offices.append(
            {
                "id": office_id,
                "code": code,
                "name_fa": name_fa,
                "kind": kind,
                "city_id": city["id"],
                "address_fa": address_fa,
                "lat": lat,
                "lon": lon,
                "status": OfficeStatus.ACTIVE,
                "cap_percent": 100,
                "counters": counters,
            }
        )
        self.office_services.extend({"office_id": office_id, "service_code": s} for s in services)
        rural = kind is OfficeKind.RURAL_ICT
        # Only a dozen distinct templates exist (counters x rural); encode each once.
        if (counters, rural) not in self._encoded:
            self._encoded[counters, rural] = encode_template(default_template(counters, rural=rural))
        self.templates[code] = self._encoded[counters, rural]


def generate(*, seed: int = 1405, offices: int = 17_000) -> Dataset:
    if offices < MIN_OFFICES:
        raise ValueError(f"need at least {MIN_OFFICES} offices, got {offices}")
    rng = random.Random(seed)
    sources = _read_provinces()
    capitals = [_capital_population(rng, s) for s in sources]
    total_pop = sum(s.population for s in sources)
    # The same share of every province's non-capital people lives in towns, chosen so the
    # national urban share comes out at URBAN_SHARE; provinces dominated by their capital
    # (Tehran, Qom) thus come out more urban, as they are.
    town_share = (URBAN_SHARE * total_pop - sum(capitals)) / (total_pop - sum(capitals))
    urban = [c + round((s.population - c) * town_share) for s, c in zip(sources, capitals, strict=True)]
    rural = [s.population - u for s, u in zip(sources, urban, strict=True)]

    counter_total = round(offices * COUNTER_SHARE)
    counter_offices = _apportion(counter_total, urban, minimum=2)
    rural_offices = _apportion(offices - counter_total, rural)

    builder = _Builder(rng)
    for source, capital, urban_pop, n_counter, n_rural in zip(
        sources, capitals, urban, counter_offices, rural_offices, strict=True
    ):
        builder.add_province(source, capital, urban_pop, n_counter, n_rural)
    return Dataset(
        seed=seed,
        provinces=builder.provinces,
        cities=builder.cities,
        services=[msgspec.structs.asdict(s) for s in SERVICES],
        offices=builder.offices,
        office_services=builder.office_services,
        templates=builder.templates,
    )


def slice_of(dataset: Dataset, *, provinces: int = 1, offices: int = 50) -> Dataset:
    """The first ``provinces`` provinces with at most ``offices`` offices, and only what those offices use."""
    province_rows = dataset.provinces[:provinces]
    province_ids = {p["id"] for p in province_rows}
    province_of_city = {c["id"]: c["province_id"] for c in dataset.cities}
    candidates = [o for o in dataset.offices if province_of_city[o["city_id"]] in province_ids]
    # Evenly spaced picks: offices come capital first, then towns, then villages, so this
    # gives a slice with both kinds of office and more than one city.
    if len(candidates) > offices:
        step = len(candidates) / offices
        candidates = [candidates[int(i * step)] for i in range(offices)]
    office_ids = {o["id"] for o in candidates}
    city_ids = {o["city_id"] for o in candidates}
    office_services = [r for r in dataset.office_services if r["office_id"] in office_ids]
    service_codes = {r["service_code"] for r in office_services}
    return Dataset(
        seed=dataset.seed,
        provinces=province_rows,
        cities=[c for c in dataset.cities if c["id"] in city_ids],
        services=[s for s in dataset.services if s["code"] in service_codes],
        offices=candidates,
        office_services=office_services,
        templates={o["code"]: dataset.templates[o["code"]] for o in candidates},
    )


CHUNK = 5_000


def _chunks(rows: list[Row]) -> Iterator[list[Row]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


async def load(session: AsyncSession, dataset: Dataset) -> None:
    """Insert the whole dataset in foreign-key order; the caller commits."""
    office_ids = {o["code"]: o["id"] for o in dataset.offices}
    templates = [{"office_id": office_ids[code], "template": raw} for code, raw in dataset.templates.items()]
    tables: list[tuple[type[Any], list[Row]]] = [
        (Province, dataset.provinces),
        (City, dataset.cities),
        (Service, dataset.services),
        (Office, dataset.offices),
        (OfficeService, dataset.office_services),
        (CapacityTemplate, templates),
    ]
    for model, rows in tables:
        for chunk in _chunks(rows):
            await session.execute(insert(model), chunk)
