from __future__ import annotations

import datetime as dt

import pytest

from app.capacity.plan import (
    DayRule,
    WeeklyTemplate,
    decode_template,
    default_template,
    encode_template,
    iranian_weekday,
    pool_for,
    slots_for,
    validate_rules,
)
from app.errors import InvalidInput

SATURDAY = dt.date(2026, 4, 25)  # شنبه ۵ اردیبهشت ۱۴۰۵


def test_iranian_week_starts_on_saturday() -> None:
    assert [iranian_weekday(SATURDAY + dt.timedelta(days=i)) for i in range(7)] == [0, 1, 2, 3, 4, 5, 6]


def test_default_template_closes_friday_and_thursday_afternoon() -> None:
    template = default_template(3)
    assert slots_for(template, SATURDAY + dt.timedelta(days=6)) == []
    thursday = slots_for(template, SATURDAY + dt.timedelta(days=5))
    assert thursday[0].time == "08:00" and thursday[-1].time == "11:30"
    saturday = slots_for(template, SATURDAY)
    assert len(saturday) == 16 and saturday[-1].time == "15:30" and {s.seats for s in saturday} == {3}


def test_a_slot_must_end_by_closing_time() -> None:
    template = WeeklyTemplate(days={0: [DayRule(opens="08:00", closes="09:40", slot_minutes=30, seats=1)]})
    assert [s.time for s in slots_for(template, SATURDAY)] == ["08:00", "08:30", "09:00"]


def test_a_service_with_its_own_counters_has_its_own_pool() -> None:
    template = WeeklyTemplate(
        days={
            0: [
                DayRule(opens="08:00", closes="09:00", seats=2),
                DayRule(opens="08:00", closes="09:00", seats=1, service="120"),
            ]
        }
    )
    assert pool_for(template, "120") == "120"
    assert pool_for(template, "101") == "*"
    pools = {(s.pool, s.time) for s in slots_for(template, SATURDAY)}
    assert pools == {("*", "08:00"), ("*", "08:30"), ("120", "08:00"), ("120", "08:30")}


def test_templates_round_trip_through_json() -> None:
    template = default_template(2, rural=True)
    assert decode_template(encode_template(template)) == template


def test_a_regulator_closure_beats_an_office_override() -> None:
    from app.capacity.plan import Calendar

    template = default_template(2)
    extra = [DayRule(opens="08:00", closes="10:00", seats=1)]
    office, province, other_province = 7, 1, 2
    holiday = SATURDAY + dt.timedelta(days=1)
    calendar = Calendar(
        overrides={(office, SATURDAY): extra, (office, holiday): extra},
        closures={(province, SATURDAY)},
        holidays={holiday},
    )
    # Closed by the regulator for its province: the override does not reopen it.
    assert calendar.source(office_id=office, province_id=province, day=SATURDAY) == "closure"
    assert calendar.slots(office_id=office, province_id=province, template=template, day=SATURDAY) == []
    # Elsewhere the override still applies, and it still beats an official holiday.
    assert calendar.source(office_id=office, province_id=other_province, day=SATURDAY) == "override"
    assert len(calendar.slots(office_id=office, province_id=province, template=template, day=holiday)) == 4
    nationwide = Calendar(overrides={(office, SATURDAY): extra}, closures={(None, SATURDAY)})
    assert nationwide.slots(office_id=office, province_id=other_province, template=template, day=SATURDAY) == []


@pytest.mark.parametrize(
    "rules",
    [
        [DayRule(opens="08:75", closes="12:00")],  # had read as 09:15
        [DayRule(opens="8:00", closes="12:00")],
        [DayRule(opens="08:00", closes="24:30")],
        [DayRule(opens="08:00", closes="12:00", seats=2), DayRule(opens="10:00", closes="14:00", seats=3)],
    ],
)
def test_a_plan_that_cannot_be_meant_is_refused(rules: list[DayRule]) -> None:
    with pytest.raises(InvalidInput):
        validate_rules(rules)


def test_a_plan_of_separate_hours_and_pools_is_taken() -> None:
    validate_rules(
        [
            DayRule(opens="08:00", closes="12:00"),
            DayRule(opens="12:00", closes="24:00"),
            DayRule(opens="08:00", closes="12:00", service="101"),
        ]
    )
