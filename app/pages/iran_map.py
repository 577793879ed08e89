"""A map of Iran drawn from what the app ships: each province capital (from
``app/offices/data/provinces.csv``) placed by a plain equirectangular projection, and a
coarse hand-traced outline of the border. No tiles and no map data from elsewhere: the
service runs on closed networks."""

from __future__ import annotations

import csv
import math
from functools import cache

import msgspec

from app.offices.dataset import PROVINCES_CSV

WIDTH = 640
MARGIN = 24
WEST, EAST, SOUTH, NORTH = 43.8, 63.6, 24.9, 39.9
# Squeeze longitudes by the cosine of the middle latitude, so the shape is not stretched.
_LON_SCALE = math.cos(math.radians((SOUTH + NORTH) / 2))
_SCALE = (WIDTH - 2 * MARGIN) / ((EAST - WEST) * _LON_SCALE)
HEIGHT = round((NORTH - SOUTH) * _SCALE + 2 * MARGIN)

# (lat, lon) along the border, clockwise from the north-west corner; a rough trace, good
# enough to place the capitals in a familiar shape and no more.
OUTLINE = (
    (39.4, 44.4), (39.7, 44.8), (39.2, 45.5), (38.9, 46.5), (39.4, 47.6), (38.5, 48.3), (38.4, 48.9),
    (37.5, 49.2), (37.4, 50.1), (36.8, 51.1), (36.7, 52.7), (36.9, 54.0), (37.3, 54.0), (37.5, 55.6),
    (38.1, 57.0), (37.6, 58.5), (37.3, 59.6), (36.6, 61.1), (35.6, 61.3), (34.4, 60.9), (33.5, 60.6),
    (32.6, 60.9), (31.5, 61.8), (30.9, 61.8), (29.8, 60.9), (28.9, 61.6), (28.2, 62.8), (27.2, 63.3),
    (26.5, 62.3), (25.2, 61.6), (25.4, 60.3), (25.6, 58.9), (25.7, 57.3), (27.1, 56.9), (27.2, 56.2),
    (26.7, 55.6), (26.5, 54.8), (27.0, 53.5), (27.8, 52.0), (28.9, 50.9), (29.9, 50.2), (30.2, 49.6),
    (29.9, 48.6), (31.0, 47.7), (32.0, 47.5), (33.0, 46.2), (33.7, 45.9), (34.6, 45.5), (35.6, 46.1),
    (36.0, 45.4), (36.9, 45.0), (37.4, 44.6), (38.3, 44.3),
)  # fmt: skip


class Province(msgspec.Struct, frozen=True):
    name_en: str
    name_fa: str
    capital_fa: str
    lat: float
    lon: float
    x: float
    y: float


class Marker(msgspec.Struct, frozen=True):
    province: Province
    count: int
    radius: float


def project(lat: float, lon: float) -> tuple[float, float]:
    return (
        round(MARGIN + (lon - WEST) * _LON_SCALE * _SCALE, 1),
        round(MARGIN + (NORTH - lat) * _SCALE, 1),
    )


@cache
def provinces() -> tuple[Province, ...]:
    with PROVINCES_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    result = []
    for row in rows:
        lat, lon = float(row["capital_lat"]), float(row["capital_lon"])
        x, y = project(lat, lon)
        result.append(
            Province(
                name_en=row["province_en"],
                name_fa=row["province_fa"],
                capital_fa=row["capital_fa"],
                lat=lat,
                lon=lon,
                x=x,
                y=y,
            )
        )
    return tuple(result)


def outline_points() -> str:
    return " ".join(f"{x},{y}" for x, y in (project(lat, lon) for lat, lon in OUTLINE))


def markers(counts_by_province_fa: dict[str, int]) -> list[Marker]:
    """One marker a province; the area of a circle grows with its count (zero: a small dot)."""
    return [
        Marker(
            province=p,
            count=(n := counts_by_province_fa.get(p.name_fa, 0)),
            radius=round(6 + 5 * math.sqrt(n), 1) if n else 3.0,
        )
        for p in provinces()
    ]
