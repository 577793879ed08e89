from __future__ import annotations

import numpy as np

from app.load.ranking import (
    BLOCKED,
    NO_FREE_SLOT,
    NO_SEATS,
    RESTRICTED,
    Busyness,
    Standing,
    busyness,
    next_free_minute,
    rank,
    stand,
    tier_of,
)

NOW = 8 * 60 + 30  # 08:30; an office's one free slot is at 09:00, half an hour on


def office(
    code: str, *, km: float, used: int = 0, seats: int = 10, status: str = "active", waiting: int = 0
) -> tuple[str, float, Standing]:
    return code, km, stand(status=status, seats=seats, used=used, waiting=waiting, free_times=("09:00",))


def ranked(offices: list[tuple[str, float, Standing]], limit: int, now: str = "08:30") -> list[tuple[str, float]]:
    """(code, score) of the best ``limit``, best first."""
    standings = [standing for _, _, standing in offices]
    codes = [code for code, _, _ in offices]
    found = rank(
        partial=np.array([standing.partial for standing in standings]),
        tier=np.array([tier_of(standing) for standing in standings]),
        next_minute=np.array([next_free_minute(standing.free_times, now) for standing in standings]),
        kms=np.array([km for _, km, _ in offices]),
        code_order=np.argsort(np.argsort(codes)),
        now_minute=NOW,
        limit=limit,
    )
    return [(codes[index], score) for index, score in found]


def codes(offices: list[tuple[str, float, Standing]], limit: int = 2) -> list[str]:
    return [code for code, _ in ranked(offices, limit)]


def score(found: tuple[str, float, Standing]) -> float:
    return ranked([found], 1)[0][1]


def test_nearest_office_full_the_next_one_wins() -> None:
    assert codes([office("near", km=0.5, used=10), office("next", km=3)]) == ["next", "near"]


def test_equal_load_the_nearer_wins() -> None:
    assert codes([office("far", km=9, used=5), office("near", km=2, used=5)]) == ["near", "far"]


def test_restricted_ranks_below_active() -> None:
    assert codes([office("restricted", km=0.2, status="restricted"), office("active", km=20, used=8)]) == [
        "active",
        "restricted",
    ]


def test_a_much_less_busy_office_a_little_further_wins() -> None:
    assert codes([office("busy", km=1, used=9, waiting=12), office("quiet", km=4, used=1)]) == ["quiet", "busy"]


def test_people_waiting_in_the_room_count() -> None:
    assert score(office("crowded", km=1, waiting=15)) > score(office("empty", km=1))


def test_limit_and_no_seats_at_all() -> None:
    assert codes([office(str(i), km=i) for i in range(10)], 3) == ["0", "1", "2"]
    closed = office("closed", km=1, seats=0)
    assert closed[2].load == 1.0 and codes([closed], 1) == ["closed"]


def test_blocked_offices_are_never_shown() -> None:
    assert codes([office("blocked", km=0.1, status="blocked"), office("open", km=30, used=10)]) == ["open"]


def test_an_office_whose_free_slots_have_gone_by_comes_last() -> None:
    early = office("early", km=0.1)  # its one free slot, 09:00, has gone by at 09:10
    later = ("later", 20.0, stand(status="restricted", seats=10, used=9, waiting=0, free_times=("16:00",)))
    assert [code for code, _ in ranked([early, later], 2, now="09:10")] == ["later", "early"]


def test_busyness_levels() -> None:
    assert busyness(0.1, 0) is Busyness.LOW
    assert busyness(0.6, 0) is Busyness.MEDIUM
    assert busyness(0.1, 7) is Busyness.MEDIUM
    assert busyness(0.9, 0) is Busyness.HIGH
    assert busyness(0.0, 20) is Busyness.HIGH


def test_scores_equal_but_for_float_noise_the_nearer_wins() -> None:
    # The same score worked out from different terms: 0.4 x 1/8 + 0.25 x 1/25 = 0.25 x 6/25.
    near, far = office("near", km=1, used=1, seats=8), office("far", km=6, seats=8)
    assert score(far) < score(near)  # by one unit in the last place
    assert codes([far, near]) == ["near", "far"]


def test_ties_in_place_and_score_go_by_code() -> None:
    assert codes([office("b", km=2), office("c", km=2), office("a", km=2)], 3) == ["a", "b", "c"]


def test_a_full_day_keeps_no_free_time() -> None:
    assert stand(status="active", seats=4, used=4, waiting=0, free_times=("09:00",)).free_times == ()
    assert stand(status="active", seats=4, used=5, waiting=0, free_times=("09:00",)).free == 0  # over a cut cap
    kept = stand(status="active", seats=4, used=3, waiting=0, free_times=("09:00",))
    assert (kept.free, kept.load, kept.free_times) == (1, 0.75, ("09:00",))


def test_a_standing_scores_as_its_terms_add_up() -> None:
    standing = stand(status="restricted", seats=8, used=2, waiting=3, free_times=("10:30",))
    [(_, weighed)] = ranked([("1", 5.0, standing)], 1)
    assert weighed == 0.40 * 0.25 + 0.20 * 3 / 15 + 0.15 * 120 / 480 + 0.25 * 5 / 25
    assert tier_of(standing) == RESTRICTED
    assert tier_of(stand(status="active", seats=8, used=8, waiting=0, free_times=())) == NO_SEATS
    assert tier_of(stand(status="blocked", seats=8, used=0, waiting=0, free_times=("10:30",))) == BLOCKED
    assert next_free_minute(("10:30",), "10:30") == NO_FREE_SLOT
