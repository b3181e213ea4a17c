"""The pure part of `users import`: header rules, row outcomes, ids, and the domain memo that
must leave email validation exactly as it was."""

from __future__ import annotations

import importlib
import uuid
from datetime import UTC, datetime, time

import pytest
from pydantic import TypeAdapter, ValidationError

from birthday_scheduler.errors import FieldProblem
from birthday_scheduler.users import import_rows
from birthday_scheduler.users.schemas import Email

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)
COLUMNS = ("firstName", "lastName", "email", "dateOfBirth", "timezoneOffset")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ([], "must be a header"),
        (["firstName", "lastName", "email", "dateOfBirth", "tz"], "unknown column 'tz'"),
        (["firstName", "lastName", "email", "email", "timezone", "dateOfBirth"], "more than once"),
        (["firstName", "email", "dateOfBirth", "timezone"], "'lastName'"),
        (["firstName", "lastName", "email", "dateOfBirth"], "timezone or a timezoneOffset"),
    ],
)
def test_a_header_that_cannot_be_imported_says_why(header: list[str], message: str) -> None:
    with pytest.raises(import_rows.HeaderError, match=message):
        import_rows.check_header(header)


def test_a_header_in_any_order_with_spaces_is_accepted() -> None:
    header = [" timezone", "dateOfBirth", "email ", "lastName", "firstName"]
    assert import_rows.check_header(header)[0] == "timezone"


def chunk(*rows: list[str]) -> import_rows.PreparedChunk:
    records = [(line, cells) for line, cells in enumerate(rows, start=2)]
    return import_rows.prepare_chunk(records, COLUMNS, time(9), NOW)


def test_rows_become_users_rejections_or_repeats() -> None:
    prepared = chunk(
        ["Ada", "Lovelace", "ada@example.com", "1990-07-01", "330"],
        ["Ada", "Lovelace", "ADA@example.com", "1990-07-01", "+05:30"],
        ["Ada", "Lovelace", "ada.example.com", "1990-07-01", "0"],
        ["Ada", "Lovelace", "bob@example.com", "1990-07-01", "900"],
        ["Ada", "Lovelace"],
    )
    assert [u.email for u in prepared.users] == ["ada@example.com"]
    assert prepared.users[0].timezone_offset_minutes == 330
    assert prepared.repeated_in_chunk == 1
    assert prepared.rejected_rows == 3
    assert [(r.line, r.field) for r in prepared.rejections] == [
        (4, "email"),
        (5, "timezoneOffset"),
        (6, "row"),
    ]
    assert [(s.kind, s.occasion_date.isoformat()) for s in prepared.schedules] == [
        ("birthday", "2026-07-01")
    ]


def test_an_email_reason_that_quotes_the_address_is_cut() -> None:
    """The email validator may quote the address or a label of it (an IDNA error)."""
    cells = ["Ada", "Lovelace", "ada.l@mail.example.com", "1990-07-01", "0"]
    quoted = "'mail' in ada.l@mail.example.com is bad; ada.l is bad; mail.example.com is bad"
    problem = import_rows._scrubbed(FieldProblem("email", quoted), COLUMNS, cells)
    assert problem.reason == "… in … is bad; … is bad; … is bad"
    other = FieldProblem("dateOfBirth", "must not be in the future")
    assert import_rows._scrubbed(other, COLUMNS, cells) == other


def test_ids_are_version_7_and_later_chunks_sort_after_earlier_ones() -> None:
    first = import_rows.time_ordered_prefix(NOW) | import_rows._random_tail()
    later = import_rows.time_ordered_prefix(NOW.replace(second=1)) | import_rows._random_tail()
    assert uuid.UUID(int=first).version == 7
    assert uuid.UUID(int=first).variant == uuid.RFC_4122
    assert later > first


ADDRESSES = [
    "ada@example.com",
    "Ada.Lovelace+tag@Example.COM",
    "postmaster@example.com",
    "user@bücher.de",
    "user@xn--bcher-kva.de",
    "user@exa_mple.com",
    "user@-example.com",
    "user@example",
    "user@[127.0.0.1]",
    "user@localhost",
    "user@" + "a" * 64 + ".com",
    "user@example.com.",
]


def outcome(address: str) -> str:
    try:
        return "ok " + TypeAdapter(Email).validate_python(address)
    except ValidationError as exc:
        return "error " + exc.errors()[0]["msg"]


def test_the_domain_memo_changes_no_outcome_and_is_undone() -> None:
    module = importlib.import_module("email_validator.validate_email")
    original = module.validate_email_domain_name
    plain = [outcome(a) for a in ADDRESSES]
    with import_rows.memoized_email_domains():
        assert module.validate_email_domain_name is not original
        memoized = [outcome(a) for a in ADDRESSES]
        again = [outcome(a) for a in ADDRESSES]  # answered from the memo this time
    assert module.validate_email_domain_name is original
    assert memoized == plain
    assert again == plain
