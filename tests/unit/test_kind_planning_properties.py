"""Properties of planning per kind and per user send time, over every tz database zone.

`first_open_occurrence` is what a create or an edit plans; plan_due's advance is what a tick
plans next. Both are checked against zoneinfo read the other way (instant -> wall clock).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import given, settings
from hypothesis import strategies as st

from birthday_scheduler.messages.kinds import ANNIVERSARY, BIRTHDAY, PlanningFacts
from birthday_scheduler.messages.planning import PlanningPolicy, first_open_occurrence, plan_due
from birthday_scheduler.messages.schedules import DueSchedule
from birthday_scheduler.messages.timemath import occasion_date, occurrence_in_year, zone_for


def _accepted(name: str) -> bool:
    try:
        zone_for(name, None)
    except ValueError:
        return False
    return True


# Only names the service accepts: tzdata also ships placeholders ("Factory", "posixrules")
# that the API refuses and a tick would dead-letter, which is not what these tests are about.
ACCEPTED_ZONE_NAMES = sorted(name for name in available_timezones() if _accepted(name))
zones: st.SearchStrategy[tzinfo] = st.one_of(
    st.sampled_from(ACCEPTED_ZONE_NAMES).map(ZoneInfo),
    st.integers(min_value=-720, max_value=840).map(lambda m: timezone(timedelta(minutes=m))),
)
# "HH:MM", as the API takes it; None is SEND_LOCAL_TIME.
user_send_times = st.one_of(
    st.none(), st.builds(time, st.integers(0, 23), st.integers(0, 59)), st.just(time(2, 30))
)
anniversaries = st.one_of(
    st.just(date(2000, 2, 29)), st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31))
)
nows = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 12, 1), timezones=st.just(UTC)
)
DEFAULT = time(9, 0)
POLICY = PlanningPolicy(DEFAULT, timedelta(hours=72), timedelta(seconds=300), timedelta(30))
EVERY = settings(max_examples=400, deadline=None)


def _local(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


@EVERY
@given(zone=zones, anniversary=anniversaries, send=user_send_times, now=nows)
def test_an_anniversary_is_planned_on_its_day_at_the_users_time_never_early(
    zone: tzinfo, anniversary: date, send: time | None, now: datetime
) -> None:
    facts = PlanningFacts(date(1980, 5, 5), zone, anniversary, send)
    occurrence = first_open_occurrence(ANNIVERSARY, facts, DEFAULT, now)
    assert occurrence is not None
    wanted = send or DEFAULT
    assert occurrence.instant >= now  # never back-dated
    assert occurrence.local_date.year > anniversary.year  # none in the anniversary's own year
    assert occurrence.local_date == occasion_date(anniversary, occurrence.local_date.year)
    wall = _local(occurrence.instant, zone)
    # At the user's wall-clock time, or shifted forward by a spring-forward gap: never before.
    assert wall >= datetime.combine(occurrence.local_date, wanted)
    assert wall - datetime.combine(occurrence.local_date, wanted) <= timedelta(hours=3)
    # ... and it is the first such occurrence: the year before is past, or has none.
    year_before = occurrence.local_date.year - 1
    if year_before > anniversary.year:
        previous = occurrence_in_year(anniversary, zone, wanted, year_before)
        assert previous.instant < now


@EVERY
@given(zone=zones, send=user_send_times, now=nows, done=st.sets(st.integers(1990, 2092)))
def test_a_started_year_is_never_planned_again_for_any_kind(
    zone: tzinfo, send: time | None, now: datetime, done: set[int]
) -> None:
    facts = PlanningFacts(date(1970, 3, 1), zone, date(1999, 10, 31), send)
    for kind in (BIRTHDAY, ANNIVERSARY):
        occurrence = first_open_occurrence(kind, facts, DEFAULT, now, done)
        assert occurrence is not None
        assert occurrence.local_date.year not in done
        assert occurrence.instant >= now


@EVERY
@given(zone=zones, anniversary=anniversaries, send=user_send_times, year=st.integers(2031, 2090))
def test_a_tick_advances_each_kind_to_next_years_instant_at_the_users_time(
    zone: tzinfo, anniversary: date, send: time | None, year: int
) -> None:
    facts = PlanningFacts(date(1980, 5, 5), zone, anniversary, send)
    current = first_open_occurrence(
        ANNIVERSARY, facts, DEFAULT, datetime(year, 1, 1, tzinfo=UTC) - timedelta(days=1)
    )
    assert current is not None
    schedule = DueSchedule(
        uuid.uuid4(),
        "anniversary",
        current.instant,
        current.local_date,
        date(1980, 5, 5),
        zone.key if isinstance(zone, ZoneInfo) else None,
        None if isinstance(zone, ZoneInfo) else _offset_minutes(zone),
        anniversary,
        send,
    )
    plan = plan_due([schedule], POLICY, current.instant)
    [advance] = plan.advances
    following = first_open_occurrence(
        ANNIVERSARY, facts, DEFAULT, current.instant + timedelta(seconds=1)
    )
    assert following is not None
    assert (advance.next_fire_at, advance.occasion_date) == (
        following.instant,
        following.local_date,
    )
    assert advance.occasion_date.year == current.local_date.year + 1


def _offset_minutes(zone: tzinfo) -> int:
    offset = zone.utcoffset(None)
    assert offset is not None
    return int(offset.total_seconds() // 60)
