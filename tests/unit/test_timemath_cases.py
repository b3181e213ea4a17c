"""Named cases for the send-time math, each with its literal expected UTC instant."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from birthday_scheduler.messages.timemath import (
    Occurrence,
    next_occurrence,
    occasion_date,
    occurrence_in_year,
    parse_offset,
    send_instant,
    zone_for,
)

NINE = time(9, 0)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone_name", "local_date", "send_time", "expected"),
    [
        # New York springs forward at 02:00 EST -> 03:00 EDT (07:00Z); 02:30 does not exist.
        ("America/New_York", date(2026, 3, 8), time(1, 30), utc(2026, 3, 8, 6, 30)),
        ("America/New_York", date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7, 30)),
        ("America/New_York", date(2026, 3, 8), NINE, utc(2026, 3, 8, 13, 0)),
        # New York falls back at 02:00 EDT -> 01:00 EST (06:00Z); 01:30 happens twice.
        ("America/New_York", date(2026, 11, 1), time(1, 30), utc(2026, 11, 1, 5, 30)),
        ("America/New_York", date(2026, 11, 1), time(2, 30), utc(2026, 11, 1, 7, 30)),
        ("America/New_York", date(2026, 11, 1), NINE, utc(2026, 11, 1, 14, 0)),
        # London springs forward at 01:00 GMT -> 02:00 BST; 01:30 does not exist.
        ("Europe/London", date(2026, 3, 29), time(1, 30), utc(2026, 3, 29, 1, 30)),
        ("Europe/London", date(2026, 3, 29), NINE, utc(2026, 3, 29, 8, 0)),
        # London falls back at 02:00 BST -> 01:00 GMT; 01:30 happens twice.
        ("Europe/London", date(2026, 10, 25), time(1, 30), utc(2026, 10, 25, 0, 30)),
        ("Europe/London", date(2026, 10, 25), NINE, utc(2026, 10, 25, 9, 0)),
        # Sydney falls back on the first Sunday of April at 03:00 AEDT -> 02:00 AEST.
        ("Australia/Sydney", date(2026, 4, 5), time(2, 30), utc(2026, 4, 4, 15, 30)),
        ("Australia/Sydney", date(2026, 4, 5), NINE, utc(2026, 4, 4, 23, 0)),
        # Sydney springs forward on the first Sunday of October at 02:00 AEST -> 03:00 AEDT.
        ("Australia/Sydney", date(2026, 10, 4), time(2, 30), utc(2026, 10, 3, 16, 30)),
        ("Australia/Sydney", date(2026, 10, 4), NINE, utc(2026, 10, 3, 22, 0)),
        # Quarter-hour and extreme offsets.
        ("Asia/Kathmandu", date(2026, 6, 15), NINE, utc(2026, 6, 15, 3, 15)),
        ("Pacific/Chatham", date(2026, 6, 15), NINE, utc(2026, 6, 14, 20, 15)),  # +12:45
        ("Pacific/Chatham", date(2026, 1, 15), NINE, utc(2026, 1, 14, 19, 15)),  # +13:45
        ("Pacific/Kiritimati", date(2026, 1, 1), NINE, utc(2025, 12, 31, 19, 0)),  # +14
        ("Pacific/Pago_Pago", date(2026, 12, 31), NINE, utc(2026, 12, 31, 20, 0)),  # -11
        # Samoa skipped 30 December 2011 entirely; the message goes out 24 hours "later" in
        # wall time, at the same instant the old offset would have given.
        ("Pacific/Apia", date(2011, 12, 30), NINE, utc(2011, 12, 30, 19, 0)),
    ],
)
def test_send_instant_in_named_zones(
    zone_name: str, local_date: date, send_time: time, expected: datetime
) -> None:
    assert send_instant(local_date, send_time, ZoneInfo(zone_name)) == expected


@pytest.mark.parametrize(
    ("offset", "local_date", "expected"),
    [
        (-720, date(2026, 12, 31), utc(2026, 12, 31, 21, 0)),
        (0, date(2026, 6, 15), utc(2026, 6, 15, 9, 0)),
        (330, date(2026, 6, 15), utc(2026, 6, 15, 3, 30)),
        (840, date(2027, 1, 1), utc(2026, 12, 31, 19, 0)),
    ],
)
def test_send_instant_at_fixed_offsets(offset: int, local_date: date, expected: datetime) -> None:
    assert send_instant(local_date, NINE, zone_for(None, offset)) == expected


def test_send_instant_ignores_a_callers_fold() -> None:
    # time(fold=1) would otherwise silently pick the later of the two 01:30s.
    second = time(1, 30, fold=1)
    zone = ZoneInfo("America/New_York")
    assert send_instant(date(2026, 11, 1), second, zone) == utc(2026, 11, 1, 5, 30)


def test_send_instant_rejects_an_aware_send_time() -> None:
    with pytest.raises(ValueError, match="without a time zone"):
        send_instant(date(2026, 1, 1), time(9, 0, tzinfo=UTC), UTC)


@pytest.mark.parametrize(
    ("birth", "year", "expected"),
    [
        (date(2000, 2, 29), 2027, date(2027, 2, 28)),
        (date(2000, 2, 29), 2028, date(2028, 2, 29)),
        (date(2000, 2, 29), 2100, date(2100, 2, 28)),  # divisible by 100, not by 400
        (date(2000, 2, 29), 2400, date(2400, 2, 29)),
        (date(1990, 2, 28), 2028, date(2028, 2, 28)),
        (date(1990, 3, 1), 2027, date(2027, 3, 1)),
        (date(1990, 12, 31), 2026, date(2026, 12, 31)),
    ],
)
def test_occasion_date(birth: date, year: int, expected: date) -> None:
    assert occasion_date(birth, year) == expected


def test_leap_day_birthday_in_common_and_leap_years() -> None:
    zone = ZoneInfo("Europe/Paris")
    birth = date(2000, 2, 29)
    assert occurrence_in_year(birth, zone, NINE, 2027) == Occurrence(
        date(2027, 2, 28), utc(2027, 2, 28, 8, 0)
    )
    assert occurrence_in_year(birth, zone, NINE, 2028) == Occurrence(
        date(2028, 2, 29), utc(2028, 2, 29, 8, 0)
    )
    after_2027 = next_occurrence(birth, zone, NINE, utc(2027, 2, 28, 8, 0, 1))
    assert after_2027 == Occurrence(date(2028, 2, 29), utc(2028, 2, 29, 8, 0))


NEW_YORK = ZoneInfo("America/New_York")
TODAY = date(2026, 6, 15)
TODAYS_INSTANT = utc(2026, 6, 15, 13, 0)  # 09:00 EDT


def test_user_created_after_todays_send_instant_gets_next_years() -> None:
    found = next_occurrence(date(1990, 6, 15), NEW_YORK, NINE, utc(2026, 6, 15, 13, 0, 1))
    assert found == Occurrence(date(2027, 6, 15), utc(2027, 6, 15, 13, 0))


def test_user_created_one_second_before_todays_send_instant_gets_todays() -> None:
    found = next_occurrence(date(1990, 6, 15), NEW_YORK, NINE, utc(2026, 6, 15, 12, 59, 59))
    assert found == Occurrence(TODAY, TODAYS_INSTANT)


def test_reference_exactly_at_the_send_instant_returns_it() -> None:
    assert next_occurrence(date(1990, 6, 15), NEW_YORK, NINE, TODAYS_INSTANT) == Occurrence(
        TODAY, TODAYS_INSTANT
    )


def test_reference_in_another_zone_is_compared_as_an_instant() -> None:
    # 09:00 EDT is 15:00 in Paris; a Paris-stamped reference a second earlier still counts.
    paris_reference = datetime(2026, 6, 15, 14, 59, 59, tzinfo=ZoneInfo("Europe/Paris"))
    found = next_occurrence(date(1990, 6, 15), NEW_YORK, NINE, paris_reference)
    assert found == Occurrence(TODAY, TODAYS_INSTANT)


def test_occasion_already_due_in_the_next_utc_year_is_found() -> None:
    # At 18:00Z on 31 December it is already 08:00 on 1 January in Kiritimati.
    found = next_occurrence(
        date(1990, 1, 1), ZoneInfo("Pacific/Kiritimati"), NINE, utc(2025, 12, 31, 18, 0)
    )
    assert found == Occurrence(date(2026, 1, 1), utc(2025, 12, 31, 19, 0))


def test_occasion_at_minus_twelve_in_the_previous_local_year_is_found() -> None:
    # At 06:00Z on 1 January 2027 it is still 18:00 on 31 December 2026 at -12:00.
    found = next_occurrence(
        date(1990, 12, 31), zone_for(None, -720), time(20, 0), utc(2027, 1, 1, 6)
    )
    assert found == Occurrence(date(2026, 12, 31), utc(2027, 1, 1, 8, 0))


def test_birth_year_itself_has_no_occurrence() -> None:
    # Registered on the day of birth, before 09:00: the first message is the first birthday.
    found = next_occurrence(date(2026, 6, 15), NEW_YORK, NINE, utc(2026, 6, 15, 4, 0))
    assert found == Occurrence(date(2027, 6, 15), utc(2027, 6, 15, 13, 0))


def test_next_occurrence_rejects_a_naive_reference() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_occurrence(date(1990, 6, 15), NEW_YORK, NINE, datetime(2026, 6, 15))


def test_peer_failure_sending_up_to_an_hour_early() -> None:
    """Reading a gap time with the offset after the gap, or a date with today's offset,
    sends an hour before 09:00 local. Neither may happen."""
    # In the gap: 02:30 with EDT would be 06:30Z, i.e. 01:30 EST, an hour early.
    gap = send_instant(date(2026, 3, 8), time(2, 30), NEW_YORK)
    assert gap == utc(2026, 3, 8, 7, 30)
    assert gap.astimezone(NEW_YORK).time() >= time(2, 30)
    # A winter birthday planned in summer must use winter's offset: EDT would give 13:00Z,
    # i.e. 08:00 EST on the day.
    winter = next_occurrence(date(1990, 1, 15), NEW_YORK, NINE, utc(2026, 7, 1))
    assert winter.instant == utc(2027, 1, 15, 14, 0)
    assert winter.instant.astimezone(NEW_YORK).time() == NINE


@pytest.mark.parametrize("offset", range(555, 841, 15))
def test_peer_failure_never_sending_to_zones_east_of_plus_nine(offset: int) -> None:
    """East of +09:00, 09:00 local on the birthday is still the previous day in UTC: a scheduler
    that looks for "birthday == today's UTC date" never sends to these users."""
    zone = zone_for(None, offset)
    found = next_occurrence(date(1990, 6, 15), zone, NINE, utc(2026, 6, 13))
    assert found.local_date == date(2026, 6, 15)
    assert found.instant == utc(2026, 6, 15, 9) - timedelta(minutes=offset)
    if offset > 540:
        assert found.instant.date() == date(2026, 6, 14)
    assert found.instant.astimezone(zone).replace(tzinfo=None) == datetime(2026, 6, 15, 9)


def test_peer_failure_never_sending_to_zones_east_of_plus_nine_named_zones() -> None:
    expected = {
        "Asia/Tokyo": utc(2026, 6, 15, 0, 0),  # +09:00, the boundary itself
        "Australia/Sydney": utc(2026, 6, 14, 23, 0),  # +10:00
        "Pacific/Auckland": utc(2026, 6, 14, 21, 0),  # +12:00
        "Pacific/Chatham": utc(2026, 6, 14, 20, 15),  # +12:45
        "Pacific/Tongatapu": utc(2026, 6, 14, 20, 0),  # +13:00
        "Pacific/Kiritimati": utc(2026, 6, 14, 19, 0),  # +14:00
    }
    for name, instant in expected.items():
        zone = zone_for(name, None)
        assert next_occurrence(date(1990, 6, 15), zone, NINE, utc(2026, 6, 13)) == Occurrence(
            date(2026, 6, 15), instant
        ), name


# --- parsing and choosing the zone ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (-720, -720),
        (840, 840),
        (345, 345),
        ("+05:30", 330),
        ("-03:00", -180),
        ("+14:00", 840),
        ("-12:00", -720),
        ("+00:00", 0),
        ("-00:00", 0),
        ("+05:45", 345),
        ("-09:30", -570),
        ("+12:59", 779),
    ],
)
def test_parse_offset_accepts(value: int | str, expected: int) -> None:
    assert parse_offset(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-721, "between -720 and 840"),
        (841, "between -720 and 840"),
        ("+14:01", "between -720 and 840"),
        ("-12:30", "between -720 and 840"),
        ("+15:00", "between -720 and 840"),
        ("+05:60", "00 and 59"),
        ("05:30", "look like"),
        ("+5:30", "look like"),
        ("+0530", "look like"),
        ("+05:30 ", "look like"),
        ("UTC+05:30", "look like"),
        ("", "look like"),
        ("330", "look like"),
        ("+\u0660\u0665:30", "look like"),  # Arabic-Indic digits
        (True, "whole number"),
        (5.5, "whole number"),
    ],
)
def test_parse_offset_rejects(value: int | str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_offset(value)


def test_zone_for_a_name_is_the_zoneinfo_zone_and_cached() -> None:
    zone = zone_for("America/New_York", None)
    assert zone == ZoneInfo("America/New_York")
    assert zone_for("America/New_York", None) is zone


def test_zone_for_an_offset_is_a_fixed_offset() -> None:
    assert zone_for(None, 345) == timezone(timedelta(hours=5, minutes=45))
    assert zone_for(None, -720) == timezone(timedelta(hours=-12))
    assert zone_for(None, 0).utcoffset(None) == timedelta(0)


@pytest.mark.parametrize(
    ("name", "offset", "reason"),
    [
        (None, None, "exactly one"),
        ("Europe/Paris", 60, "exactly one"),
        ("Mars/Olympus_Mons", None, "unknown time zone"),
        ("america/new_york", None, "unknown time zone"),  # the database is case-sensitive
        ("", None, "unknown time zone"),
        ("../../etc/passwd", None, "unknown time zone"),
        ("/etc/localtime", None, "unknown time zone"),
        ("localtime", None, "unknown time zone"),  # the host's zone, not a place
        ("Factory", None, "unknown time zone"),
        (None, 841, "between -720 and 840"),
        (None, -721, "between -720 and 840"),
    ],
)
def test_zone_for_rejects(name: str | None, offset: int | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        zone_for(name, offset)
