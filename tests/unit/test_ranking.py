from __future__ import annotations

from app.load.ranking import Busyness, Candidate, busyness, rank, stand, weigh


def office(
    code: str, *, km: float, used: int = 0, seats: int = 10, status: str = "active", waiting: int = 0
) -> Candidate:
    standing = stand(status=status, seats=seats, used=used, waiting=waiting, free_times=("09:00",), open=True)
    free = bool(standing.free_times)
    return weigh(code, km, standing, "09:00" if free else None, 30 if free else None)


def codes(candidates: list[Candidate]) -> list[str]:
    return [c.office_code for c in candidates]


def test_nearest_office_full_the_next_one_wins() -> None:
    assert codes(rank([office("near", km=0.5, used=10), office("next", km=3)], 2)) == ["next", "near"]


def test_equal_load_the_nearer_wins() -> None:
    assert codes(rank([office("far", km=9, used=5), office("near", km=2, used=5)], 2)) == ["near", "far"]


def test_restricted_ranks_below_active() -> None:
    ranked = rank([office("restricted", km=0.2, status="restricted"), office("active", km=20, used=8)], 2)
    assert codes(ranked) == ["active", "restricted"]


def test_a_much_less_busy_office_a_little_further_wins() -> None:
    assert codes(rank([office("busy", km=1, used=9, waiting=12), office("quiet", km=4, used=1)], 2)) == [
        "quiet",
        "busy",
    ]


def test_people_waiting_in_the_room_count() -> None:
    assert office("crowded", km=1, waiting=15).score > office("empty", km=1).score


def test_limit_and_no_seats_at_all() -> None:
    ranked = rank([office(str(i), km=i) for i in range(10)], 3)
    assert codes(ranked) == ["0", "1", "2"]
    assert rank([office("closed", km=1, seats=0)], 1)[0].load == 1.0


def test_busyness_levels() -> None:
    assert busyness(0.1, 0) is Busyness.LOW
    assert busyness(0.6, 0) is Busyness.MEDIUM
    assert busyness(0.1, 7) is Busyness.MEDIUM
    assert busyness(0.9, 0) is Busyness.HIGH
    assert busyness(0.0, 20) is Busyness.HIGH


def test_scores_equal_but_for_float_noise_the_nearer_wins() -> None:
    # The same score worked out from different terms: 0.4 x 1/8 + 0.25 x 1/25 = 0.25 x 6/25.
    near, far = office("near", km=1, used=1, seats=8), office("far", km=6, seats=8)
    assert far.score < near.score  # by one unit in the last place
    assert codes(rank([far, near], 2)) == ["near", "far"]


def test_a_full_day_keeps_no_free_time() -> None:
    assert stand(status="active", seats=4, used=4, waiting=0, free_times=("09:00",), open=True).free_times == ()
    assert (
        stand(status="active", seats=4, used=5, waiting=0, free_times=("09:00",), open=True).free == 0
    )  # over a cut cap
    kept = stand(status="active", seats=4, used=3, waiting=0, free_times=("09:00",), open=True)
    assert (kept.free, kept.load, kept.free_times) == (1, 0.75, ("09:00",))


def test_a_standing_weighed_scores_as_its_terms_add_up() -> None:
    standing = stand(status="restricted", seats=8, used=2, waiting=3, free_times=("10:00",), open=True)
    weighed = weigh("1", 5.0, standing, "10:00", 120)
    assert weighed.score == 0.40 * 0.25 + 0.20 * 3 / 15 + 0.15 * 120 / 480 + 0.25 * 5 / 25
    assert (weighed.tier, weighed.status, weighed.free, weighed.waiting) == (1, "restricted", 6, 3)
    assert weigh("1", 30.0, standing, None, None).tier == 2  # no free slot left today: last


def test_an_office_closed_that_day_ranks_after_a_full_one() -> None:
    """A closed day (a day off, a regulator's closure) is no busier than a full one: it is shut,
    and says so (``open``). A full office may still free a seat; a closed one never will."""
    closed = weigh(
        "closed", 0.1, stand(status="active", seats=0, used=0, waiting=0, free_times=(), open=False), None, None
    )
    full = office("full", km=20, used=10)
    assert codes(rank([closed, full], 2)) == ["full", "closed"]
    assert not closed.open and full.open


def test_past_the_distance_scale_further_still_counts() -> None:
    """A village's search widens to 150 km and more; with distance saturated at 25 km, an
    empty office 140 km away outranked a half-full one 4 km away, and an office 700 km away
    weighed the same as one 140 km away (and a block's moves sent citizens that far)."""
    near, far, farther = (
        office("near", km=4, used=18, seats=32, waiting=3),
        office("far", km=140),
        office("farther", km=700),
    )
    assert codes(rank([farther, far, near], 3)) == ["near", "far", "farther"]
