"""Ranking offices for a citizen: the least busy office that is near enough wins.

Pure functions; the service feeds them what Redis says about each candidate: once per
change to its counters (``stand``, kept by app.load.standings), and once per search (``weigh``,
with the distance and the clock).

An office's score (lower is better) weighs, each term scaled to 0..1:
    0.40 x load            seats taken that day / seats (under any cap; today, of the slots
                           not yet begun)
  + 0.20 x waiting now     people in the room, saturating at 15
  + 0.15 x wait for slot   minutes until its next free slot, saturating at 8 hours
  + 0.25 x distance        km / 25, not saturating: past 25 km further still counts (a
                           village's search reaches 150 km and more, and an empty office
                           140 km away had outranked a half-full one 4 km away)
Offices are first put in tiers, then sorted by score inside a tier:
  1. active offices with a free slot,
  2. restricted offices with a free slot (complaints restricted them: steer people away),
  3. offices with no free slot that day (shown so people see why, never first),
  4. offices that take nobody that day (a day off, a regulator's closure).
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
DISTANCE_SCALE_KM = 25.0
"""The distance worth the whole distance weight; twice as far counts twice as much."""


NEVER = "~"
"""A ``changes_at`` after every "HH:MM": the standing changes with its counters alone."""


class Busyness(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


BUSYNESS_FA = {Busyness.LOW: "خلوت", Busyness.MEDIUM: "نیمه‌شلوغ", Busyness.HIGH: "شلوغ"}


class Standing(msgspec.Struct, frozen=True, gc=False):
    """An office's day for one service as its counters say, before distance and the clock.
    Instances keep tens of thousands (app.load.standings): ``gc=False`` keeps them out of the
    garbage collector's passes, as plain tuples are (a NamedTuple's had stopped a worker for
    40-75 ms at a time; it holds no other object that could make a cycle)."""

    status: str  # active, restricted or blocked
    free: int  # seats left that day (under any cap)
    load: float  # share of the day's bookable seats taken, 0..1
    waiting: int  # people in the room now, as the office last said
    partial: float  # the score's terms that only the counters move: load and waiting
    free_times: tuple[str, ...]  # "HH:MM" of its slots with a seat left; none when the day is full
    open: bool  # false: no slot of the day has a seat (a day off, a closure), full or not
    # "HH:MM" when the next of the day's slots begins (the first, for a day ahead): these sums,
    # of the slots ahead, change with it. NEVER: none left. Compared on the clock's face, not
    # timed: the clock may jump.
    changes_at: str


class Candidate(msgspec.Struct, frozen=True, order=True):
    """An office as the ranking weighs it, made by ``weigh``. Candidates compare best first:
    their first fields are the ranking's order, compared in C by ``sorted`` (a key function
    in Python, and the score worked out again for the answer, had been a sixth of a search)."""

    tier: int
    ranked_score: float  # the score to 6 places: sums that differ only in float noise are a tie
    distance_km: float  # ties go to the nearer office,
    office_code: str  # and then by code
    score: float
    status: str  # active or restricted
    free: int  # seats left that day (under any cap)
    load: float  # share of the day's bookable seats taken, 0..1
    waiting: int  # people in the room now, as the office last said
    next_free: str | None  # "HH:MM" of the next slot with a seat, None when none
    open: bool  # false: it takes nobody that day


def busyness(load: float, waiting: int) -> Busyness:
    if load >= 0.85 or waiting >= 15:
        return Busyness.HIGH
    if load >= 0.5 or waiting >= 6:
        return Busyness.MEDIUM
    return Busyness.LOW


def stand(
    *,
    status: str,
    seats: int,
    used: int,
    waiting: int,
    free_times: tuple[str, ...],
    open: bool,
    changes_at: str = NEVER,
) -> Standing:
    """An office's standing from its counters (``seats``: bookable that day, after any cap;
    today, in the slots not yet begun).
    Each share is saturated by a comparison, not ``min``: the builtins' calls had been a third
    of weighing an office."""
    free = seats - used if seats > used else 0
    load = used / seats if seats > 0 and used < seats else 1.0
    partial = WEIGHT_LOAD * load + WEIGHT_WAITING * (
        waiting / WAITING_SATURATES if waiting < WAITING_SATURATES else 1.0
    )
    return Standing(status, free, load, waiting, partial, free_times if free else (), open, changes_at)


def weigh(
    office_code: str,
    distance_km: float,
    standing: Standing,
    next_free: str | None,
    minutes_to_next_free: float | None,
) -> Candidate:
    """An office's tier and score for one search: its standing, how far it is, and how soon its
    next free slot (``next_free``, None when it has none left) comes. Made thirty times a search."""
    minutes = minutes_to_next_free
    if minutes is None or minutes >= SOON_SATURATES_MINUTES:
        soon = 1.0
    else:
        soon = minutes / SOON_SATURATES_MINUTES if minutes > 0 else 0.0
    score = standing.partial + WEIGHT_SOON * soon + WEIGHT_DISTANCE * distance_km / DISTANCE_SCALE_KM
    status, free = standing.status, standing.free
    if not standing.open:
        tier = 3
    elif next_free is None or free == 0:
        tier = 2
    else:
        tier = 1 if status == "restricted" else 0
    return Candidate(
        tier,
        round(score, 6),
        distance_km,
        office_code,
        score,
        status,
        free,
        standing.load,
        standing.waiting,
        next_free,
        standing.open,
    )


def rank(candidates: list[Candidate], limit: int) -> list[Candidate]:
    return sorted(candidates)[:limit]
