"""Bulk import, the pure part: a CSV header and rows to new users, their schedules and the
rejected rows. No I/O; importer.py reads the file and writes the database.

Every rule is the API's own: a row is the JSON body of POST /users (its cells under the API's
field names) validated by `UserWrite`, its dates by the service's date check, its reasons
worded by the API's error mapping, and its schedules planned by `planning.new_user_plan`
exactly as POST /users plans a new user. One shortcut: a row whose every cell is in a plain
form (see _plain_row) is read without pydantic, to the values UserWrite gives it; anything
else, and every rejection, goes through UserWrite. tests/unit/test_import_rows.py checks with
Hypothesis that both ways give the same outcome for any row.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, NamedTuple

from pydantic import ValidationError

from birthday_scheduler.api.problems import validation_problem
from birthday_scheduler.errors import FieldProblem, ValidationProblem
from birthday_scheduler.messages import planning
from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.messages.schedules import ScheduleAdvance
from birthday_scheduler.messages.timemath import parse_offset, zone_for
from birthday_scheduler.users import fast_email
from birthday_scheduler.users.models import NAME_MAX
from birthday_scheduler.users.schemas import EARLIEST_BIRTH_YEAR, UserWrite
from birthday_scheduler.users.service import check_dates

# The API's JSON field names, in the order a template file lists them.
COLUMNS = (
    "firstName",
    "lastName",
    "email",
    "dateOfBirth",
    "timezone",
    "timezoneOffset",
    "anniversaryDate",
    "sendLocalTime",
    "notifications",
)
REQUIRED_COLUMNS = ("firstName", "lastName", "email", "dateOfBirth")
ZONE_COLUMNS = ("timezone", "timezoneOffset")
# A bare integer is minutes east of UTC, as the JSON number 330 is; "+05:30" stays a string.
_MINUTES = re.compile(r"-?\d{1,4}")


class HeaderError(ValueError):
    """The header cannot be imported; the message says why in one line."""


def check_header(header: Sequence[str]) -> tuple[str, ...]:
    """The header's column names if they can be imported, else HeaderError."""
    names = tuple(name.strip() for name in header)
    known = ", ".join(COLUMNS)
    if not names or names == ("",):
        raise HeaderError(f"the first line must be a header naming the columns ({known})")
    for name in names:
        if name not in COLUMNS:
            raise HeaderError(
                f"unknown column {name[:40]!r} in the header; the columns are {known}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise HeaderError(f"column {repeated[0]!r} appears more than once in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise HeaderError(f"the header lacks the required column {missing[0]!r}")
    if not any(name in names for name in ZONE_COLUMNS):
        raise HeaderError("the header needs a timezone or a timezoneOffset column (or both)")
    return names


@dataclass(frozen=True)
class Rejection:
    line: int
    field: str
    reason: str


class NewUser(NamedTuple):
    """A valid row, in the users table's column order (importer.py copies these columns)."""

    id: uuid.UUID
    first_name: str
    last_name: str
    email: str
    date_of_birth: date
    timezone: str | None
    timezone_offset_minutes: int | None
    anniversary_date: date | None
    send_local_time: time | None
    notifications: str  # JSON text, as the column stores it
    created_at: datetime
    updated_at: datetime


@dataclass
class PreparedChunk:
    """One chunk of the file: the users to insert (first line of each email in the chunk),
    their schedules, the rejected rows, and rows repeating an email seen earlier in the chunk."""

    users: list[NewUser] = field(default_factory=list)
    schedules: list[ScheduleAdvance] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rejected_rows: int = 0
    repeated_in_chunk: int = 0
    rows: int = 0


Record = tuple[int, list[str]]  # (line number in the file, cells)


def prepare_chunk(
    records: Sequence[Record], columns: Sequence[str], default_send_time: time, now: datetime
) -> PreparedChunk:
    """Validate and plan a chunk of rows, as POST /users would at `now`."""
    chunk = PreparedChunk(rows=len(records))
    seen: set[str] = set()
    width = len(columns)
    id_prefix = time_ordered_prefix(now)
    plans: dict[PlanKey, Plan] = {}
    for line, cells in records:
        if len(cells) != width:
            _reject(
                chunk,
                line,
                [FieldProblem("row", f"has {len(cells)} cells; the header has {width}")],
            )
            continue
        body, problems = _validate(columns, cells, now)
        if body is None:
            _reject(chunk, line, [_scrubbed(p, columns, cells) for p in problems])
            continue
        key = body.email.lower()
        if key in seen:
            chunk.repeated_in_chunk += 1
            continue
        seen.add(key)
        user_id = uuid.UUID(int=id_prefix | _random_tail())
        notifications = body.notifications or {}
        chunk.users.append(
            NewUser(
                user_id,
                body.first_name,
                body.last_name,
                body.email,
                body.date_of_birth,
                body.timezone,
                body.timezone_offset,
                body.anniversary_date,
                body.send_local_time,
                json.dumps(notifications, separators=(",", ":")) if notifications else "{}",
                now,
                now,
            )
        )
        shape = plan_key(body, notifications)
        plan = plans.get(shape)
        if plan is None:  # a chunk of 10,000 users holds far fewer distinct plans
            plan = plans[shape] = plan_new_user(shape, default_send_time, now)
        chunk.schedules.extend(ScheduleAdvance(user_id, *planned) for planned in plan)
    return chunk


def time_ordered_prefix(now: datetime) -> int:
    """The top 64 bits of a UUIDv7 (RFC 9562) for ids made at `now`: milliseconds since the
    epoch, then the version. Ids of later chunks sort after earlier ones, so the primary keys of
    users and message_schedules grow at their right edge instead of at 1,000,000 random places:
    measured on 200,000 rows, with COPY instead of INSERT … SELECT, 12.2 -> 4.2 s of database
    time. The API's uuid4 ids and these are alike to every reader (opaque, unique)."""
    return (int(now.timestamp() * 1000) << 80) | (0x7 << 76)


def _random_tail() -> int:
    # 12 random bits after the version, the RFC 4122 variant, then 62 random bits.
    bits = int.from_bytes(os.urandom(10), "big")
    return ((bits >> 62) & 0xFFF) << 64 | (0b10 << 62) | (bits & _LOW_62)


_LOW_62 = (1 << 62) - 1


class Fields(NamedTuple):
    """A valid row's values, as UserWrite holds them."""

    first_name: str
    last_name: str
    email: str
    date_of_birth: date
    timezone: str | None
    timezone_offset: int | None
    anniversary_date: date | None
    send_local_time: time | None
    notifications: dict[str, bool] | None


PlanKey = tuple[date, str | None, int | None, date | None, time | None, tuple[str, ...]]
Plan = tuple[tuple[str, datetime, date], ...]  # (kind, instant, occasion date) per kind


def plan_key(body: Fields, notifications: dict[str, bool]) -> PlanKey:
    """Everything a new user's plan depends on besides `now`: users sharing it share a plan."""
    enabled = tuple(planning.enabled_kinds(notifications))
    return (
        body.date_of_birth,
        body.timezone,
        body.timezone_offset,
        body.anniversary_date,
        body.send_local_time,
        enabled,
    )


def plan_new_user(key: PlanKey, default_send_time: time, now: datetime) -> Plan:
    """What planning.plan_user writes for a new user: each enabled kind's first occurrence at
    or after `now`; nothing for a kind turned off or a date the user lacks."""
    date_of_birth, timezone, offset, anniversary, send_time, enabled = key
    facts = planning.facts_of(date_of_birth, timezone, offset, anniversary, send_time)
    return tuple(planning.new_user_plan(facts, enabled, default_send_time, now))


def _validate(
    columns: Sequence[str], cells: Sequence[str], now: datetime
) -> tuple[Fields | None, list[FieldProblem]]:
    fields = _plain_row(columns, cells)
    if fields is None:
        fields, problems = _read_with_api(columns, cells)
        if fields is None:
            return None, problems
    try:
        check_dates(fields.date_of_birth, fields.anniversary_date, now)
    except ValidationProblem as exc:
        return None, exc.errors
    return fields, []


def _read_with_api(
    columns: Sequence[str], cells: Sequence[str]
) -> tuple[Fields | None, list[FieldProblem]]:
    """The row as POST /users takes its JSON body: UserWrite's values, or its problems."""
    data: dict[str, Any] = {}
    for name, cell in zip(columns, cells, strict=True):
        if cell == "":
            continue  # an empty cell is an absent field
        if name == "timezoneOffset" and _MINUTES.fullmatch(cell):
            data[name] = int(cell)
        elif name == "notifications":
            try:
                data[name] = json.loads(cell)
            except ValueError:
                return None, [
                    FieldProblem(name, 'must be a JSON object such as {"anniversary": false}')
                ]
        else:
            data[name] = cell
    try:
        body = UserWrite.model_validate(data)
    except ValidationError as exc:
        return None, validation_problem([dict(e) for e in exc.errors()]).errors
    return Fields._make(getattr(body, name) for name in Fields._fields), []


# --- the plain row -------------------------------------------------------------------------
# Each reader takes a non-empty cell and returns the value UserWrite's field gives it, or None
# when the cell is not in the plain form it knows (UserWrite then decides, and words any error).
# They only accept strings on which the API's validators are the identity or a plain parse:
# ASCII digits (the API's \d would take other scripts'), no whitespace to strip at either end.

# A name with nothing to strip (Python's whitespace includes pydantic's) and no control
# character, of 1 to NAME_MAX characters.
_PLAIN_NAME = re.compile(
    rf"[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{{0,{NAME_MAX - 2}}}[^\s\x00-\x1f\x7f])?"
)
_PLAIN_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PLAIN_ZONE = re.compile(r"[A-Za-z0-9/_+-]{1,64}")
_PLAIN_MINUTES = re.compile(r"-?[0-9]{1,4}")
_PLAIN_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _plain_name(cell: str) -> str | None:
    return cell if _PLAIN_NAME.fullmatch(cell) else None


def _plain_date(cell: str) -> date | None:
    if not _PLAIN_DATE.fullmatch(cell):
        return None
    try:
        value = date.fromisoformat(cell)
    except ValueError:
        return None
    return value if value.year >= EARLIEST_BIRTH_YEAR else None


def _plain_zone(cell: str) -> str | None:
    return cell if _PLAIN_ZONE.fullmatch(cell) and _known_zone(cell) else None


@functools.lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        zone_for(name, None)  # the API's check of a zone name
    except ValueError:
        return False
    return True


def _plain_offset(cell: str) -> int | None:
    try:
        return parse_offset(int(cell) if _PLAIN_MINUTES.fullmatch(cell) else cell)
    except ValueError:
        return None


def _plain_time(cell: str) -> time | None:
    match = _PLAIN_TIME.fullmatch(cell)
    return time(int(match[1]), int(match[2])) if match else None


def _plain_notifications(cell: str) -> dict[str, bool] | None:
    try:
        value = json.loads(cell)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if all(key in KINDS and type(flag) is bool for key, flag in value.items()):
        return value
    return None


_PLAIN_READERS: dict[str, Any] = {
    "firstName": _plain_name,
    "lastName": _plain_name,
    "email": fast_email.normalized,
    "dateOfBirth": _plain_date,
    "timezone": _plain_zone,
    "timezoneOffset": _plain_offset,
    "anniversaryDate": _plain_date,
    "sendLocalTime": _plain_time,
    "notifications": _plain_notifications,
}


def _plain_row(columns: Sequence[str], cells: Sequence[str]) -> Fields | None:
    """UserWrite's values for a row whose every given cell is plain and which has every
    required field and exactly one zone; None for any other row."""
    values: dict[str, Any] = {}
    for name, cell in zip(columns, cells, strict=True):
        if cell == "":
            continue  # an empty cell is an absent field
        value = _PLAIN_READERS[name](cell)
        if value is None:
            return None
        values[name] = value
    get = values.get
    first, last, email, born = get("firstName"), get("lastName"), get("email"), get("dateOfBirth")
    zone, offset = get("timezone"), get("timezoneOffset")
    if first is None or last is None or email is None or born is None:
        return None
    if (zone is None) == (offset is None):
        return None
    return Fields(
        first,
        last,
        email,
        born,
        zone,
        offset,
        get("anniversaryDate"),
        get("sendLocalTime"),
        get("notifications"),
    )


def _reject(chunk: PreparedChunk, line: int, problems: Sequence[FieldProblem]) -> None:
    chunk.rejected_rows += 1
    for problem in problems:
        # The API names a rule over the whole body "body"; here it is the row.
        name = "row" if problem.field == "body" else problem.field
        chunk.rejections.append(Rejection(line, name, problem.reason))


def _scrubbed(problem: FieldProblem, columns: Sequence[str], cells: Sequence[str]) -> FieldProblem:
    """The problem with the address cut out of an email's reason: the email validator may quote
    it, or a part or label of it (an IDNA error). The line number identifies the row; the
    report never repeats who it is. Other fields' reasons never quote their value."""
    if problem.field != "email" or "email" not in columns:
        return problem
    value = cells[columns.index("email")].strip()
    local, _, domain = value.rpartition("@")
    pieces = [value, local, domain, *(f"'{label}'" for label in domain.split("."))]
    reason = problem.reason
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 3 and piece in reason:
            reason = reason.replace(piece, "…")
    return FieldProblem(problem.field, reason)


_DOMAIN_CHECK = "validate_email_domain_name"


@contextlib.contextmanager
def memoized_email_domains() -> Iterator[None]:
    """Remember email-validator's check of each domain name for the duration of an import.

    Profiling 1,000,000 rows: UserWrite spends 70% of its time (60 of ~85 µs a row) checking
    the email's domain (IDNA/UTS-46 mapping), though a file repeats a few thousand domains.
    That check is a pure function of its arguments, so each domain is checked by the very same
    function once and its answer reused; a domain it rejects is checked again every time (so
    the error is raised as before). The library's own function is put back afterwards.
    """
    module = importlib.import_module("email_validator.validate_email")
    original = getattr(module, _DOMAIN_CHECK)

    @functools.lru_cache(maxsize=16_384)
    def checked(domain: str, test_environment: bool, globally_deliverable: bool) -> Any:
        return original(
            domain, test_environment=test_environment, globally_deliverable=globally_deliverable
        )

    def memoized(
        domain: str, test_environment: bool = False, globally_deliverable: bool = True
    ) -> Any:
        return dict(checked(domain, test_environment, globally_deliverable))  # callers own it

    setattr(module, _DOMAIN_CHECK, memoized)
    try:
        yield
    finally:
        setattr(module, _DOMAIN_CHECK, original)
