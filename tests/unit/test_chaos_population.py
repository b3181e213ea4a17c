"""The chaos run's users are due exactly at its wave instants, and its edits move them as said.

The run checks every created user's nextMessageAt against its wave, so a mistake here stops a
run at set-up; these tests find it first, for every minute of the day.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

# chaos/ is a top-level package beside tests/, like bench/, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chaos.population import (
    local_date,
    next_minute,
    offsets_at,
    plan_patch,
    plan_users,
    zones_at,
)

from birthday_scheduler.messages.timemath import next_occurrence, parse_offset, zone_for

NINE = time(9, 0)
minutes = st.integers(min_value=0, max_value=365 * 24 * 60 - 1).map(
    lambda m: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m)
)


@given(minutes)
def test_every_whole_minute_is_nine_o_clock_at_some_offset(instant: datetime) -> None:
    offsets = offsets_at(instant)
    assert offsets
    for offset in offsets:
        local = instant + timedelta(minutes=offset)
        assert local.time() == NINE
        assert -720 <= offset <= 840


def test_the_zones_found_are_at_nine_exactly_then() -> None:
    instant = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    zones = zones_at(instant)
    assert "Africa/Cairo" in zones
    assert "Europe/Berlin" not in zones
    for name in zones:
        assert instant.astimezone(ZoneInfo(name)).time() == NINE
    assert zones_at(instant + timedelta(minutes=7)) == []


@given(minutes, st.integers(min_value=0, max_value=2**32))
def test_the_service_plans_every_user_at_its_wave(instant: datetime, seed: int) -> None:
    before = instant - timedelta(seconds=30)
    users = plan_users([instant], [8], "t", random.Random(seed))
    for user in users:
        minutes_east = None if user.offset is None else parse_offset(user.offset)
        zone = zone_for(user.timezone, minutes_east)
        occurrence = next_occurrence(user.birth, zone, NINE, before)
        assert occurrence.instant == instant
        assert user.birth.year < instant.year


@given(minutes, st.integers(min_value=0, max_value=2**32))
def test_a_zone_edit_moves_the_birthday_to_the_next_wave(instant: datetime, seed: int) -> None:
    later = instant + timedelta(minutes=1)
    rng = random.Random(seed)
    (user,) = plan_users([instant], [1], "t", rng)
    patch = plan_patch(user, later, rng, (0, 1, 0))
    if patch.kind != "zone":  # no offset puts the same birthday at 09:00 a minute later
        return
    assert patch.new_instant == later
    moved = date.fromisoformat(patch.body["dateOfBirth"])
    zone = zone_for(None, parse_offset(patch.body["timezoneOffset"]))
    assert next_occurrence(moved, zone, NINE, instant + timedelta(seconds=2)).instant == later


def test_a_birthday_edit_moves_it_to_tomorrow_and_a_name_edit_keeps_it() -> None:
    instant = datetime(2026, 12, 2, 7, 16, tzinfo=UTC)
    (user,) = plan_users([instant], [1], "t", random.Random(1))
    birthday = plan_patch(user, None, random.Random(1), (0, 0, 1))
    assert birthday.kind == "birthday"
    assert date.fromisoformat(birthday.body["dateOfBirth"]) == user.birth + timedelta(days=1)
    name = plan_patch(user, None, random.Random(1), (1, 0, 0))
    assert (name.kind, name.new_instant) == ("name", None)
    assert set(name.body) == {"lastName"}


def test_waves_are_whole_minutes_after_the_set_up_time() -> None:
    moment = datetime(2026, 12, 2, 7, 15, 42, 5, tzinfo=UTC)
    assert next_minute(moment, timedelta(seconds=10)) == datetime(2026, 12, 2, 7, 16, tzinfo=UTC)
    assert next_minute(moment, timedelta(seconds=18)) == datetime(2026, 12, 2, 7, 17, tzinfo=UTC)
    assert local_date(datetime(2026, 12, 2, 22, 0, tzinfo=UTC), 660) == date(2026, 12, 3)
