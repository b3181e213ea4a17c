"""When an occasion's message is due: pure calendar and time-zone arithmetic.

Nothing here reads the clock or does I/O; callers pass the reference instant in. Every instant
returned is timezone-aware UTC, so the rest of the system never handles local wall times.

The rules (see the contract, "When a message is sent"):

* 29 February occasions fall on 28 February in common years.
* A send time inside a spring-forward gap is read with the offset in force before the gap, which
  moves it forward by the gap (02:30 -> 03:30). This is what zoneinfo, java.time and Temporal do
  with ``fold=0``, and it can only make a message later, never earlier.
* A send time inside a fall-back overlap uses the first occurrence (``fold=0``): the earlier of the
  two instants, which is still not before the wall clock first shows the send time.
* The birth year itself has no occurrence: the first one is the first anniversary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, available_timezones

__all__ = [
    "MAX_OFFSET_MINUTES",
    "MIN_OFFSET_MINUTES",
    "Occurrence",
    "next_occurrence",
    "occasion_date",
    "occurrence_in_year",
    "parse_offset",
    "send_instant",
    "zone_for",
]

# UTC-12:00 (Baker Island) to UTC+14:00 (Line Islands): every offset in civil use.
MIN_OFFSET_MINUTES = -720
MAX_OFFSET_MINUTES = 840

# Names the tz database ships that do not name a place: "localtime" is whatever the host is set
# to (so the same user would be scheduled differently on different machines), "posixrules" is
# a template, and "Factory" is the "zone not configured" placeholder.
_NON_ZONE_NAMES = frozenset({"localtime", "posixrules", "Factory"})

# ASCII digits only: `\d` would also accept other scripts' digits, which int() then converts.
_OFFSET_PATTERN = re.compile(r"([+-])([0-9]{2}):([0-9]{2})")


@dataclass(frozen=True)
class Occurrence:
    """One occasion's message: its local calendar date and the UTC instant it is due."""

    local_date: date
    """The occasion's calendar date in the user's zone; with the user and kind, the ledger key."""
    instant: datetime
    """When the message is due, timezone-aware UTC."""


@cache
def _known_zone_names() -> frozenset[str]:
    # Scans the tz database once per process; membership here, rather than trying ZoneInfo(),
    # keeps arbitrary input (paths, "..", NULs) away from the file system.
    return frozenset(available_timezones() - _NON_ZONE_NAMES)


@cache
def _zone_named(name: str) -> ZoneInfo:
    # Only valid names reach here, so the cache is bounded by the size of the tz database.
    return ZoneInfo(name)


def zone_for(timezone_name: str | None, offset_minutes: int | None) -> tzinfo:
    """The zone a user's messages are planned in: an IANA name or a fixed offset, exactly one.

    Raises ValueError when neither or both are given, the name is not in the tz database
    (names are case-sensitive, as in the database), or the offset is out of range.
    """
    if (timezone_name is None) == (offset_minutes is None):
        raise ValueError("exactly one of a time zone name and a UTC offset must be given")
    if timezone_name is not None:
        if timezone_name not in _known_zone_names():
            raise ValueError("unknown time zone name; expected an IANA name such as Europe/Paris")
        return _zone_named(timezone_name)
    assert offset_minutes is not None  # narrowed by the exactly-one check above
    return timezone(timedelta(minutes=_checked_offset(offset_minutes)))


def parse_offset(value: int | str) -> int:
    """Minutes east of UTC from an integer or a ``"+HH:MM"`` / ``"-HH:MM"`` string.

    Raises ValueError with the reason when the value is malformed or outside -12:00..+14:00.
    """
    if isinstance(value, str):
        match = _OFFSET_PATTERN.fullmatch(value)
        if match is None:
            raise ValueError('offset string must look like "+05:30" or "-03:00" (sign, HH:MM)')
        sign, hours, minutes = match.groups()
        if int(minutes) > 59:
            raise ValueError("offset minutes must be between 00 and 59")
        total = int(hours) * 60 + int(minutes)
        return _checked_offset(-total if sign == "-" else total)
    return _checked_offset(value)


def _checked_offset(minutes: object) -> int:
    # bool is a subclass of int; `true` in JSON must not become an offset of one minute.
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise ValueError("offset must be a whole number of minutes east of UTC")
    if not MIN_OFFSET_MINUTES <= minutes <= MAX_OFFSET_MINUTES:
        raise ValueError(
            f"offset must be between {MIN_OFFSET_MINUTES} and {MAX_OFFSET_MINUTES} minutes "
            "(-12:00 to +14:00)"
        )
    return minutes


def occasion_date(anniversary: date, year: int) -> date:
    """The occasion's local calendar date in `year`; 29 February falls on 28 February in common
    years (the last day of the birth month, and before the date people usually celebrate)."""
    try:
        return anniversary.replace(year=year)
    except ValueError:
        if (anniversary.month, anniversary.day) != (2, 29):
            raise  # a year outside 1..9999, not a leap-day question
        return date(year, 2, 28)


def send_instant(local_date: date, send_time: time, zone: tzinfo) -> datetime:
    """The UTC instant at which the wall clock in `zone` shows `send_time` on `local_date`.

    In a spring-forward gap the time is read with the offset in force before the gap (shifted
    forward by the gap); in a fall-back overlap the first occurrence is used. Both follow from
    ``fold=0``, which zoneinfo interprets exactly that way.
    """
    if send_time.tzinfo is not None:
        raise ValueError("send time must be a wall-clock time without a time zone")
    # fold=0 is forced: a caller's time(1, 30, fold=1) would silently pick the later occurrence.
    wall = datetime.combine(local_date, send_time.replace(fold=0), tzinfo=zone)
    return wall.astimezone(UTC)


def occurrence_in_year(anniversary: date, zone: tzinfo, send_time: time, year: int) -> Occurrence:
    """The occasion in local calendar year `year` (whether or not it is in the past)."""
    return _occurrence(anniversary.month, anniversary.day, zone, send_time, year)


@lru_cache(maxsize=65_536)
def _occurrence(month: int, day: int, zone: tzinfo, send_time: time, year: int) -> Occurrence:
    # Users share birthdays and zones, so a due wave repeats the same few thousand answers.
    local_date = occasion_date(date(2000, month, day), year)
    return Occurrence(local_date=local_date, instant=send_instant(local_date, send_time, zone))


def next_occurrence(
    anniversary: date, zone: tzinfo, send_time: time, not_before: datetime
) -> Occurrence:
    """The earliest occurrence due at or after `not_before` (an aware instant).

    An instant exactly equal to `not_before` counts, so a reference taken at the send instant
    still gets that occasion. The birth year has no occurrence.
    """
    if not_before.tzinfo is None or not_before.utcoffset() is None:
        raise ValueError("reference instant must be timezone-aware")
    # Start a year early: a gap shift on 31 December can push an occasion's instant into the next
    # local year, and the reference's local year is the only anchor there is. Occurrences are
    # increasing in the year, so the first one at or after the reference is the answer.
    year = max(not_before.astimezone(zone).year - 1, anniversary.year + 1)
    # Each year's occurrence is roughly a year after the last, so three candidates always suffice;
    # the bound keeps a bug from looping forever.
    for candidate_year in range(year, year + 3):
        occurrence = occurrence_in_year(anniversary, zone, send_time, candidate_year)
        if occurrence.instant >= not_before:
            return occurrence
    raise AssertionError("no occurrence within three years of the reference")  # pragma: no cover
