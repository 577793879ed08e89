"""The offices nearest a point, found in memory.

A nearby search used to ask Redis for its candidates (GEOSEARCH on a GEO set per service):
one more round trip per search, and a third of redis-server's CPU in a rush of searches.
Offices move only when the registry changes, and every instance already holds the registry
(app.offices.directory), so the candidates are found there, with no trip at all.

Each service's offices sit in the cells of a latitude/longitude grid. A search looks at the
cells around the point ring by ring, and stops once it holds ``count`` offices nearer than
anything outside the rings can be. One grid size does not suit the whole country: 30 offices
are a few 2 km cells away in Tehran, but 50 km away in the countryside, where fine rings would
be thousands of empty cells, and coarse cells in Tehran hold a thousand offices to measure. So
a search tries fine cells for a few rings, then coarser ones, and the coarsest goes as far
as it must (past a point, over every cell left). Where even the next grid's cell around the
point holds fewer offices than wanted, the finer grid is not tried at all: its rings would
come up short.

Distances are great-circle (haversine) on the Earth radius Redis uses, so they read as
GEOSEARCH's did. Longitudes do not wrap round at 180 degrees: Iran is far from it, and a
search from outside Iran is refused before it gets here (app.load.service).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EARTH_RADIUS_KM = 6372.797560856
"""Redis's (geohash_helper.c)."""

# (cell size in degrees, rings tried before the next, coarser grid; None: as far as needed).
# Chosen by timing searches over the national demo network (tests/unit/test_nearest.py
# checks the answers): about 70 us from around a random city, 50 us in Tehran, 200 us from
# a random point of the map. The grids of its 26 services take 44 MB and 0.5 s to build.
TIERS: tuple[tuple[float, int | None], ...] = ((0.02, 3), (0.1, 5), (0.5, None))

Entry = tuple[float, float, float, str]
"""An office as the grids hold it: latitude and longitude in radians, the cosine of its
latitude (half of every distance to it), its code. A plain tuple of atoms, which the garbage
collector stops tracking: an instance holds a quarter of a million of them."""

Cell = int
"""A grid's cell (i, j), i counted in cells north of the equator and j east of Greenwich, as
one number, i * _SPAN + j: an instance holds about 300,000 cells, and a number is a third of
the memory of a pair."""
_SPAN = 1 << 20  # more cells than a grid has round the Earth (18,000 at 0.02 degrees)
Found = list[tuple[float, str]]  # (haversine of the distance, office code)


def haversine(angle: float) -> float:
    return math.sin(angle / 2) ** 2


def km_of(hav: float) -> float:
    """The distance whose haversine (of the central angle) is ``hav``."""
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, hav)))


class _Grid:
    def __init__(self, size_degrees: float, rings: int | None) -> None:
        self.size = math.radians(size_degrees)
        self.rings = rings
        self.cells: dict[Cell, tuple[Entry, ...]] = {}

    def indices(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self.size), math.floor(lon / self.size)

    def cell(self, lat: float, lon: float) -> Cell:
        i, j = self.indices(lat, lon)
        return i * _SPAN + j

    def fill(self, entries: Iterable[Entry]) -> None:
        cells: dict[Cell, list[Entry]] = {}
        for entry in entries:
            cells.setdefault(self.cell(entry[0], entry[1]), []).append(entry)
        self.cells = {cell: tuple(found) for cell, found in cells.items()}

    def put(self, entry: Entry) -> None:
        cell = self.cell(entry[0], entry[1])
        self.cells[cell] = (*self.cells.get(cell, ()), entry)

    def drop(self, entry: Entry) -> None:
        cell = self.cell(entry[0], entry[1])
        kept = tuple(e for e in self.cells.get(cell, ()) if e[3] != entry[3])
        if kept:
            self.cells[cell] = kept
        else:
            self.cells.pop(cell, None)

    def search(self, lat: float, lon: float, count: int, within: float) -> Found | None:
        """Offices within haversine ``within`` of the point, among them its ``count`` nearest;
        None when this grid's rings run out before it can tell (the next grid goes on)."""
        i, j = self.indices(lat, lon)
        cos_lat = math.cos(lat)
        found: Found = []
        ring = 0
        while True:
            if self.rings is None and 8 * ring > len(self.cells):
                # The ring has more cells than the grid holds offices' cells: measure what is
                # left of the grid, and be done.
                for cell, left in self.cells.items():
                    ci, cj = divmod(cell + _SPAN // 2, _SPAN)
                    if max(abs(ci - i), abs(cj - _SPAN // 2 - j)) >= ring:
                        _measure(left, lat, lon, cos_lat, found)
                return [f for f in found if f[0] <= within]
            for cell in _ring(i, j, ring):
                if entries := self.cells.get(cell, ()):
                    _measure(entries, lat, lon, cos_lat, found)
            reach = self._reach(lat, lon, i, j, ring)
            if reach >= within:
                return [f for f in found if f[0] <= within]
            if len(found) >= count and sum(1 for hav, _ in found if hav <= reach) >= count:
                return [f for f in found if f[0] <= within]
            if self.rings is not None and ring >= self.rings:
                return None
            ring += 1

    def _reach(self, lat: float, lon: float, i: int, j: int, ring: int) -> float:
        """The haversine every office outside rings 0..``ring`` is at least from the point.

        Such an office is further north or south than the rings' edge, and so at least that
        latitude away; or it lies within their latitudes, further east or west, and
        hav(d) = hav(dlat) + cos(lat1) cos(lat2) hav(dlon) >= cos(highest)^2 hav(dlon)."""
        south, north = (i - ring) * self.size, (i + ring + 1) * self.size
        west, east = (j - ring) * self.size, (j + ring + 1) * self.size
        highest = min(math.pi / 2, max(abs(south), abs(north)))
        return min(
            haversine(min(lat - south, north - lat)),
            math.cos(highest) ** 2 * haversine(min(lon - west, east - lon)),
        )


def _ring(i: int, j: int, ring: int) -> Iterable[Cell]:
    """The cells at exactly ``ring`` steps (across or diagonally) from cell (i, j)."""
    centre = i * _SPAN + j
    if ring == 0:
        yield centre
        return
    for di in range(-ring, ring + 1):
        yield centre + di * _SPAN - ring
        yield centre + di * _SPAN + ring
    for dj in range(-ring + 1, ring):
        yield centre - ring * _SPAN + dj
        yield centre + ring * _SPAN + dj


def _measure(entries: tuple[Entry, ...], lat: float, lon: float, cos_lat: float, found: Found) -> None:
    sin = math.sin
    for lat2, lon2, cos_lat2, code in entries:
        found.append((sin((lat2 - lat) / 2) ** 2 + cos_lat * cos_lat2 * sin((lon2 - lon) / 2) ** 2, code))


def place(code: str, lat: float, lon: float) -> Entry:
    """An office at a latitude and longitude in degrees, as an index holds it: made once per
    office, and shared by the indexes of all its services."""
    lat, lon = math.radians(lat), math.radians(lon)
    return lat, lon, math.cos(lat), code


class GeoIndex:
    """The offices offering one service, by position."""

    def __init__(self, offices: Iterable[Entry] = ()) -> None:
        self._grids = [_Grid(size, rings) for size, rings in TIERS]
        self._entries: dict[str, Entry] = {entry[3]: entry for entry in offices}
        for grid in self._grids:
            grid.fill(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: Entry) -> None:
        """Add an office (``place``), or move it."""
        self.remove(entry[3])
        self._entries[entry[3]] = entry
        for grid in self._grids:
            grid.put(entry)

    def remove(self, code: str) -> None:
        entry = self._entries.pop(code, None)
        if entry is not None:
            for grid in self._grids:
                grid.drop(entry)

    def nearest(self, lat: float, lon: float, *, count: int, radius_km: float) -> list[tuple[str, float]]:
        """Up to ``count`` offices within ``radius_km`` of the point, nearest first, with
        their distances in km."""
        lat, lon = math.radians(lat), math.radians(lon)
        within = haversine(min(radius_km / EARTH_RADIUS_KM, math.pi))  # past half way round, everywhere
        found: Found | None = None
        for grid, coarser in zip(self._grids, [*self._grids[1:], None], strict=True):
            if coarser is not None and len(coarser.cells.get(coarser.cell(lat, lon), ())) < count:
                continue
            found = grid.search(lat, lon, count, within)
            if found is not None:
                break
        assert found is not None  # the last grid always answers
        found.sort()
        return [(code, km_of(hav)) for hav, code in found[:count]]
