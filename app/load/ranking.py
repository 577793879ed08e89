"""Ranking offices for a citizen: the least busy office that is near enough wins.

Pure functions; the service feeds them what Redis says about each candidate: once per
change to its counters (``stand``, ``tier_of`` and ``next_free_minute``, kept by
app.load.standings), and once per search (``rank``, with the distances and the clock).

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
import math
from bisect import bisect_right

import msgspec
import numpy as np

from app.capacity.plan import minute_of

WEIGHT_LOAD = 0.40
WEIGHT_WAITING = 0.20
WEIGHT_SOON = 0.15
WEIGHT_DISTANCE = 0.25
WAITING_SATURATES = 15
SOON_SATURATES_MINUTES = 8 * 60
DISTANCE_SATURATES_KM = 25.0

ACTIVE, RESTRICTED, NO_SEATS, BLOCKED = 0, 1, 2, 3
"""The tiers, best first (``tier_of``); blocked offices are never candidates."""
NO_FREE_SLOT = math.inf
"""``next_free_minute`` of a day with no free slot left."""


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


def busyness(load: float, waiting: int) -> Busyness:
    if load >= 0.85 or waiting >= 15:
        return Busyness.HIGH
    if load >= 0.5 or waiting >= 6:
        return Busyness.MEDIUM
    return Busyness.LOW


def stand(*, status: str, seats: int, used: int, waiting: int, free_times: tuple[str, ...]) -> Standing:
    """An office's standing from its counters (``seats``: bookable that day, after any cap).
    Each share is saturated by a comparison, not ``min``: the builtins' calls had been a third
    of weighing an office."""
    free = seats - used if seats > used else 0
    load = used / seats if seats > 0 and used < seats else 1.0
    partial = WEIGHT_LOAD * load + WEIGHT_WAITING * (
        waiting / WAITING_SATURATES if waiting < WAITING_SATURATES else 1.0
    )
    return Standing(status, free, load, waiting, partial, free_times if free else ())


def tier_of(standing: Standing) -> int:
    """The tier an office's standing puts it in (``BLOCKED``: never a candidate), before the
    clock: an office whose free slots have all gone by today drops to NO_SEATS in the search."""
    if standing.status == "blocked":
        return BLOCKED
    if not standing.free:
        return NO_SEATS
    return RESTRICTED if standing.status == "restricted" else ACTIVE


def next_free_minute(free_times: tuple[str, ...], not_before: str) -> float:
    """Minutes after midnight of the first free slot after ``not_before`` ("HH:MM", or "" for
    any); ``NO_FREE_SLOT`` when none is left."""
    first = bisect_right(free_times, not_before)
    return minute_of(free_times[first]) if first < len(free_times) else NO_FREE_SLOT


def rank(
    *,
    partial: np.ndarray,
    tier: np.ndarray,
    next_minute: np.ndarray,
    kms: np.ndarray,
    code_order: np.ndarray,
    now_minute: float,
    limit: int,
) -> list[tuple[int, float]]:
    """The best ``limit`` offices of one search, best first, as (index into the arrays, score);
    blocked ones never. The arrays hold each office's standing (``partial`` and ``tier_of``),
    the minute of its next free slot (``next_free_minute``), how far it is, and its code's
    place among the codes; ``now_minute`` is the clock in minutes after the day's midnight.

    Worked out over arrays, not office by office: thirty offices' terms, tiers and order cost
    a search a dozen calls into numpy, where weighing each in Python had been a third of it."""
    # Ufuncs, not np.clip and np.round: their Python wrappers had cost more than the sums.
    soon = (next_minute - now_minute) / SOON_SATURATES_MINUTES  # none left: inf
    np.minimum(np.maximum(soon, 0.0, out=soon), 1.0, out=soon)
    near = kms / DISTANCE_SATURATES_KM
    np.minimum(near, 1.0, out=near)
    score = partial + WEIGHT_SOON * soon + WEIGHT_DISTANCE * near
    tiers = np.where(next_minute == NO_FREE_SLOT, np.maximum(tier, NO_SEATS), tier)
    # The score in millionths: sums that differ only in float noise are a tie, and go to the
    # nearer office, and then by code.
    order = np.lexsort((code_order, kms, np.rint(score * 1e6), tiers)).tolist()
    tiers_of, scores = tiers.tolist(), score.tolist()
    return [(index, scores[index]) for index in order if tiers_of[index] != BLOCKED][:limit]
