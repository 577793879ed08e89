"""Ranking offices for a citizen: the least busy office that is near enough wins.

Pure functions; the service feeds them what Redis says about each candidate.

An office's score (lower is better) weighs, each term scaled to 0..1:
    0.40 x load            seats taken that day / seats (under any cap)
  + 0.20 x waiting now     people in the room, saturating at 15
  + 0.15 x wait for slot   minutes until its next free slot, saturating at 8 hours
  + 0.25 x distance        km, saturating at 25 km
Offices are first put in tiers, then sorted by score inside a tier:
  1. active offices with a free slot,
  2. restricted offices with a free slot (complaints restricted them: steer people away),
  3. offices with no free slot that day (shown so people see why, never first).
Blocked offices are never candidates. Ties go to the nearer office.
"""

from __future__ import annotations

import enum

import msgspec

WEIGHT_LOAD = 0.40
WEIGHT_WAITING = 0.20
WEIGHT_SOON = 0.15
WEIGHT_DISTANCE = 0.25
WAITING_SATURATES = 15
SOON_SATURATES_MINUTES = 8 * 60
DISTANCE_SATURATES_KM = 25.0


class Busyness(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


BUSYNESS_FA = {Busyness.LOW: "خلوت", Busyness.MEDIUM: "نیمه‌شلوغ", Busyness.HIGH: "شلوغ"}


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    office_code: str
    distance_km: float
    status: str  # active or restricted
    seats: int  # bookable seats that day (after any cap)
    used: int
    waiting: int  # people in the room now, as the office last said
    next_free: str | None  # "HH:MM" of the next slot with a seat, None when none
    minutes_to_next_free: float | None

    @property
    def free(self) -> int:
        return max(0, self.seats - self.used)

    @property
    def load(self) -> float:
        return 1.0 if self.seats <= 0 else min(1.0, self.used / self.seats)


def busyness(load: float, waiting: int) -> Busyness:
    if load >= 0.85 or waiting >= 15:
        return Busyness.HIGH
    if load >= 0.5 or waiting >= 6:
        return Busyness.MEDIUM
    return Busyness.LOW


def score(candidate: Candidate) -> float:
    soon = (
        1.0
        if candidate.minutes_to_next_free is None
        else min(1.0, max(0.0, candidate.minutes_to_next_free) / SOON_SATURATES_MINUTES)
    )
    return (
        WEIGHT_LOAD * candidate.load
        + WEIGHT_WAITING * min(1.0, candidate.waiting / WAITING_SATURATES)
        + WEIGHT_SOON * soon
        + WEIGHT_DISTANCE * min(1.0, candidate.distance_km / DISTANCE_SATURATES_KM)
    )


def tier(candidate: Candidate) -> int:
    if candidate.next_free is None or candidate.free == 0:
        return 2
    return 1 if candidate.status == "restricted" else 0


def rank(candidates: list[Candidate], limit: int) -> list[Candidate]:
    ordered = sorted(candidates, key=lambda c: (tier(c), round(score(c), 6), c.distance_km, c.office_code))
    return ordered[:limit]
