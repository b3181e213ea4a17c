"""Who the chaos run creates, and how it edits them: pure functions of the wave instants.

Every user is made through the API so that 09:00 on their birthday, in their zone, is one of
the run's wave instants (whole UTC minutes a few seconds to a few minutes ahead): the zone is a
fixed offset (as integer minutes or as "+HH:MM") or, where one is at 09:00 at that instant, an
IANA name, and the birthday is the local date there. No row is written behind the API's back.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

SEND_TIME = time(9, 0)
# The API's range of offsets (UTC-12:00 .. UTC+14:00), in minutes east of UTC.
MIN_OFFSET, MAX_OFFSET = -720, 840
# The names the API refuses or that do not name a place.
_NOT_PLACES = ("posix", "right", "localtime", "posixrules", "Factory")
# Share of users given an IANA zone name when one fits the instant.
IANA_SHARE = 0.4

PatchKind = Literal["name", "zone", "birthday"]


@dataclass(frozen=True)
class PlannedUser:
    index: int
    email: str
    first_name: str
    last_name: str
    birth: date
    # Exactly one of the two, as the API takes them; an offset may be minutes or "+HH:MM".
    timezone: str | None
    offset: int | str | None
    instant: datetime
    wave: int

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "firstName": self.first_name,
            "lastName": self.last_name,
            "email": self.email,
            "dateOfBirth": self.birth.isoformat(),
        }
        if self.timezone is not None:
            body["timezone"] = self.timezone
        else:
            body["timezoneOffset"] = self.offset
        return body


@dataclass(frozen=True)
class Patch:
    """A PATCH sent while the user's message is in flight, and what it may make due."""

    kind: PatchKind
    body: dict[str, Any]
    # The instant a zone change re-plans this year's occasion to (a later wave), else None.
    new_instant: datetime | None


def next_minute(moment: datetime, at_least: timedelta) -> datetime:
    """The first whole UTC minute at least `at_least` after `moment`."""
    earliest = moment + at_least
    floor = earliest.replace(second=0, microsecond=0)
    return floor if floor == earliest else floor + timedelta(minutes=1)


def offsets_at(instant: datetime) -> list[int]:
    """Offsets (minutes east of UTC) in which the whole UTC minute `instant` is 09:00."""
    utc = instant.astimezone(UTC)
    base = SEND_TIME.hour * 60 + SEND_TIME.minute - (utc.hour * 60 + utc.minute)
    return [o for o in (base - 1440, base, base + 1440) if MIN_OFFSET <= o <= MAX_OFFSET]


@cache
def _place_zones() -> tuple[str, ...]:
    return tuple(sorted(name for name in available_timezones() if not name.startswith(_NOT_PLACES)))


def zones_at(instant: datetime, names: Iterable[str] | None = None) -> list[str]:
    """IANA zones in which 09:00 on the local date of `instant` is exactly `instant`, read as
    the service reads it (fold=0), so a user there is due at that very instant."""
    if names is None and instant.minute % 15:
        return []  # every zone in use today is a whole number of quarter hours from UTC
    found = []
    for name in _place_zones() if names is None else names:
        zone = ZoneInfo(name)
        local = instant.astimezone(zone)
        if local.time() != SEND_TIME:
            continue
        if datetime.combine(local.date(), SEND_TIME, tzinfo=zone).astimezone(UTC) == instant:
            found.append(name)
    return found


def local_date(instant: datetime, offset_minutes: int) -> date:
    return (instant.astimezone(UTC) + timedelta(minutes=offset_minutes)).date()


def birth_in(occasion: date, rng: random.Random) -> date:
    """A birth date whose birthday is `occasion` (a leap year for 29 February), long past."""
    years = [
        y for y in range(1950, 2006) if occasion.month != 2 or occasion.day != 29 or y % 4 == 0
    ]
    return occasion.replace(year=rng.choice(years))


def _offset_text(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def plan_users(
    waves: Sequence[datetime], per_wave: Sequence[int], tag: str, rng: random.Random
) -> list[PlannedUser]:
    """`per_wave[k]` users due at `waves[k]`; emails carry `tag`, unique to the run."""
    users: list[PlannedUser] = []
    for wave, (instant, count) in enumerate(zip(waves, per_wave, strict=True)):
        offsets = offsets_at(instant)
        zones = zones_at(instant)
        for _ in range(count):
            index = len(users)
            timezone: str | None = None
            offset: int | str | None = None
            if zones and rng.random() < IANA_SHARE:
                timezone = rng.choice(zones)
                occasion = instant.astimezone(ZoneInfo(timezone)).date()
            else:
                minutes = rng.choice(offsets)
                occasion = local_date(instant, minutes)
                offset = _offset_text(minutes) if rng.random() < 0.5 else minutes
            users.append(
                PlannedUser(
                    index=index,
                    email=f"chaos-{tag}-{index}@example.com",
                    first_name=f"Chaos{index}",
                    last_name=f"Run{tag}",
                    birth=birth_in(occasion, rng),
                    timezone=timezone,
                    offset=offset,
                    instant=instant,
                    wave=wave,
                )
            )
    return users


def plan_patch(
    user: PlannedUser, later_wave: datetime | None, rng: random.Random, weights: Sequence[float]
) -> Patch:
    """One edit of `user` made after its instant, while its message is in flight.

    name: a new last name (the occasion stays). zone: a zone in which the birthday's 09:00 is
    `later_wave`, the birth year changed too; the occasion keeps its local date, so whether it
    finishes under its started attempt or is re-planned, exactly one message is due. birthday:
    the next day; due this year only if the occasion had started before the edit.
    """
    kind: PatchKind = rng.choices(("name", "zone", "birthday"), weights=weights)[0]
    if kind == "zone" and later_wave is not None:
        birthday = (user.birth.month, user.birth.day)
        fitting = [
            o for o in offsets_at(later_wave)
            if (local_date(later_wave, o).month, local_date(later_wave, o).day) == birthday
        ]  # fmt: skip
        if fitting:
            minutes = rng.choice(fitting)
            reborn = birth_in(local_date(later_wave, minutes), rng)
            return Patch(
                "zone",
                {"timezoneOffset": _offset_text(minutes), "dateOfBirth": reborn.isoformat()},
                later_wave,
            )
    if kind == "birthday":
        following = user.birth + timedelta(days=1)
        if following.year == user.birth.year and (following.month, following.day) != (2, 29):
            return Patch("birthday", {"dateOfBirth": following.isoformat()}, None)
    return Patch("name", {"lastName": f"Renamed{user.index}"}, None)
