"""The enforcement policy, as pure functions over counts (the numbers are settings).

- Restrict an office (new bookings capped at ``restricted_cap_percent`` of its seats, and
  ranked below active offices in the nearby search) when, within the rolling window of
  ``complaint_window_days``, it has ``restrict_after_substantiated`` confirmed violations or
  ``restrict_after_received`` complaints received (from as many citizens: one mobile's
  repeated complaints count once); or when the regulator decides so.
- Block an office (no new bookings; its upcoming bookings are moved) when a forgery
  complaint is confirmed, or when the regulator decides so.
- Fines: each confirmed violation is fined. The first of an obligation in a (Jalali) year
  is ``fine_base_rials``; each repeat at least doubles the one before; the year's total per
  obligation never exceeds ``fine_cap_rials`` (the legal ceiling wins over the doubling).
"""

from __future__ import annotations

import enum

import msgspec


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    window_days: int = 30
    restrict_after_substantiated: int = 2
    restrict_after_received: int = 10
    restricted_cap_percent: int = 50
    fine_base_rials: int = 100_000_000
    fine_cap_rials: int = 1_000_000_000


class Verdict(enum.StrEnum):
    NONE = "none"
    RESTRICT = "restrict"
    BLOCK = "block"


def verdict(*, policy: Policy, received: int, substantiated: int, forgery_confirmed: bool) -> Verdict:
    if forgery_confirmed:
        return Verdict.BLOCK
    if substantiated >= policy.restrict_after_substantiated or received >= policy.restrict_after_received:
        return Verdict.RESTRICT
    return Verdict.NONE


def next_fine(previous: list[int], *, policy: Policy) -> int:
    """The fine for one more violation of an obligation, given this year's earlier fines for it."""
    paid = sum(previous)
    if paid >= policy.fine_cap_rials:
        return 0
    amount = policy.fine_base_rials if not previous else 2 * previous[-1]
    return min(amount, policy.fine_cap_rials - paid)
