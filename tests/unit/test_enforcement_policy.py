from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.enforcement.policy import Policy, Verdict, next_fine, verdict

POLICY = Policy(restrict_after_substantiated=2, restrict_after_received=10)


def test_thresholds() -> None:
    assert verdict(policy=POLICY, received=9, substantiated=1, forgery_confirmed=False) is Verdict.NONE
    assert verdict(policy=POLICY, received=10, substantiated=0, forgery_confirmed=False) is Verdict.RESTRICT
    assert verdict(policy=POLICY, received=2, substantiated=2, forgery_confirmed=False) is Verdict.RESTRICT
    assert verdict(policy=POLICY, received=1, substantiated=1, forgery_confirmed=True) is Verdict.BLOCK


def test_fines_double_and_stop_at_the_yearly_cap() -> None:
    fines: list[int] = []
    for _ in range(6):
        fines.append(next_fine(fines, policy=POLICY))
    m = 1_000_000
    assert fines == [100 * m, 200 * m, 400 * m, 300 * m, 0, 0]
    assert sum(fines) == 1_000 * m


@given(st.integers(min_value=1, max_value=500_000_000), st.integers(min_value=1, max_value=20))
def test_never_over_the_cap_and_at_least_double_until_it(base: int, repeats: int) -> None:
    policy = Policy(fine_base_rials=base)
    fines: list[int] = []
    for _ in range(repeats):
        fine = next_fine(fines, policy=policy)
        if fines and sum(fines) + 2 * fines[-1] <= policy.fine_cap_rials:
            assert fine >= 2 * fines[-1]
        fines.append(fine)
    assert sum(fines) <= policy.fine_cap_rials
