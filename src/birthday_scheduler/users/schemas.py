"""Request and response bodies of the users API (camelCase on the wire, strict validation).

Strict types stop pydantic's lax coercions (0 becoming a date, "1" an integer); unknown fields
are rejected so nothing can be mass-assigned.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, time
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.messages.timemath import parse_offset, zone_for
from birthday_scheduler.users.models import EMAIL_MAX, NAME_MAX, TIMEZONE_MAX

EARLIEST_BIRTH_YEAR = 1900
_DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLEARABLE = frozenset({"anniversaryDate", "sendLocalTime"})


def _clean_name(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _calendar_date(value: object) -> date:
    """`YYYY-MM-DD` or an ISO 8601 date-time; only its calendar date, as written, is used."""
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("must be a string: a date YYYY-MM-DD or an ISO 8601 date-time")
    text = value.strip()
    if not _DATE_PREFIX.match(text):
        raise ValueError("must be a date YYYY-MM-DD or an ISO 8601 date-time")
    try:
        written = date.fromisoformat(text[:10])
        if len(text) > 10:
            datetime.fromisoformat(text)  # the rest must be a valid ISO 8601 time part
    except ValueError:
        raise ValueError("must be a real date YYYY-MM-DD or an ISO 8601 date-time") from None
    if written.year < EARLIEST_BIRTH_YEAR:
        raise ValueError(f"must not be before {EARLIEST_BIRTH_YEAR}")
    return written


def _offset(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError('must be whole minutes east of UTC (e.g. 330) or a string like "+05:30"')
    return parse_offset(value)


_HH_MM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _local_time(value: object) -> time:
    if not isinstance(value, str) or not _HH_MM.match(value):
        raise ValueError('must be a 24-hour local time "HH:MM", e.g. "09:00"')
    return time.fromisoformat(value)


def _known_kinds(value: dict[str, bool]) -> dict[str, bool]:
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        known = ", ".join(sorted(KINDS))
        raise ValueError(f"unknown message kind {unknown[0]!r}; the kinds are {known}")
    return value


def _iana_zone(value: str) -> str:
    zone_for(value, None)  # raises ValueError for an unknown zone
    return value


Name = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=NAME_MAX),
    AfterValidator(_clean_name),
]
Email = Annotated[EmailStr, Field(max_length=EMAIL_MAX)]
BirthDate = Annotated[date, BeforeValidator(_calendar_date)]
Offset = Annotated[int, BeforeValidator(_offset)]
LocalTime = Annotated[time, BeforeValidator(_local_time)]
# Which kinds the user receives, e.g. {"birthday": true, "anniversary": false}.
Notifications = Annotated[dict[str, StrictBool], AfterValidator(_known_kinds)]
ZoneName = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=TIMEZONE_MAX),
    AfterValidator(_iana_zone),
]


class _Body(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, validate_by_name=False, frozen=True
    )


class UserWrite(_Body):
    """POST and PUT: the whole user. Exactly one of timezoneOffset or timezone."""

    first_name: Name
    last_name: Name
    email: Email
    date_of_birth: BirthDate
    timezone_offset: Offset | None = None
    timezone: ZoneName | None = None
    anniversary_date: BirthDate | None = None
    send_local_time: LocalTime | None = None
    notifications: Notifications | None = None

    @model_validator(mode="after")
    def _one_zone(self) -> UserWrite:
        if (self.timezone_offset is None) == (self.timezone is None):
            raise ValueError("give exactly one of timezoneOffset or timezone")
        return self


class UserPatch(_Body):
    """PATCH: any subset. Giving one zone field replaces the other."""

    first_name: Name | None = None
    last_name: Name | None = None
    email: Email | None = None
    date_of_birth: BirthDate | None = None
    timezone_offset: Offset | None = None
    timezone: ZoneName | None = None
    # null clears these two (no anniversary; back to SEND_LOCAL_TIME).
    anniversary_date: BirthDate | None = None
    send_local_time: LocalTime | None = None
    # Merged into the user's: kinds not named keep their setting.
    notifications: Notifications | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [key for key, value in data.items() if value is None and key not in _CLEARABLE]
            if nulls:
                raise ValueError(f"{', '.join(sorted(nulls))} must not be null")
        return data

    @model_validator(mode="after")
    def _one_zone(self) -> UserPatch:
        if self.timezone_offset is not None and self.timezone is not None:
            raise ValueError("give at most one of timezoneOffset or timezone")
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class NextMessage(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    kind: str
    at: datetime = Field(description="UTC instant the message is planned for.")


class UserOut(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: uuid.UUID
    first_name: str
    last_name: str
    email: str
    date_of_birth: date
    timezone: str | None
    timezone_offset: int | None
    anniversary_date: date | None
    send_local_time: str | None = Field(description='"HH:MM"; null means SEND_LOCAL_TIME.')
    notifications: dict[str, bool] = Field(description="Every kind, and whether it is sent.")
    created_at: datetime
    updated_at: datetime
    next_messages: list[NextMessage] = Field(description="Planned messages, earliest first.")
    next_message_at: datetime | None = Field(
        description="UTC instant of the next message of any kind (the first of nextMessages)."
    )


class UserPage(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    data: list[UserOut]
    next_cursor: str | None
